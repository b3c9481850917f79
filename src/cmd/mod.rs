//! One module per subcommand, each a `run(args) -> Result`, plus the set-up
//! they share (connection settings from flags, shutdown signals).

pub mod addon;
pub(crate) mod check_api;
pub(crate) mod collect;
pub mod completions;
mod devices;
pub mod install_service;
mod replay;
mod sniff;
pub mod watch;

use std::time::Duration;

use anyhow::Result;

use crate::api::ApiClient;
use crate::cli::{ApiArgs, Cli, Command, MqttArgs, OutMqttArgs};
use crate::mqtt::{self, MqttSettings};
use crate::state_dir::StateDirError;

/// A configuration mistake found after argument parsing (a CA file that
/// does not parse, a token no HTTP header can carry): exit code 2, like
/// clap's own usage errors. It wraps the error that says what is wrong, so
/// `{:#}` still prints the whole chain; faults of the system (I/O on the
/// state directory, the network) are not wrapped and exit 1.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ConfigError(pub anyhow::Error);

/// The process's exit code for a command that failed: 2 for a
/// configuration mistake ([`ConfigError`], or a state directory another
/// collector holds), 1 for anything else.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let mistake = error.chain().any(|cause| {
        cause.is::<ConfigError>() || matches!(cause.downcast_ref(), Some(StateDirError::InUse(_)))
    });
    if mistake { 2 } else { 1 }
}

/// Runs the chosen command; `matches` is what clap parsed into `cli`.
pub async fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    let verbosity = cli.verbosity();
    match cli.command {
        // The add-on's options make a collect, run as `pv3 collect` runs.
        Command::Addon => match addon::prepare(verbosity).await? {
            Some(args) => collect::run(args).await,
            None => Ok(()),
        },
        Command::Devices(args) => devices::run(args).await,
        Command::Collect(args) => collect::run(args).await,
        Command::Sniff(args) => sniff::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::CheckApi(args) => check_api::run(args).await,
        Command::InstallService(args) => install_service::run(args, matches),
        Command::Completions(args) => completions::run(args),
        Command::Watch(args) => watch::run(args, matches).await,
    }
}

/// MQTT settings from the shared flags; `command` names the client id.
pub(crate) fn mqtt_settings(args: &MqttArgs, command: &str) -> MqttSettings {
    // A CA file only makes sense with TLS: giving one asks for it.
    let tls = args.mqtt_tls || args.mqtt_ca.is_some();
    MqttSettings {
        host: args.mqtt_host.clone(),
        port: args.mqtt_port.unwrap_or(if tls { 8883 } else { 1883 }),
        username: args.mqtt_username.clone(),
        password: args.mqtt_password.clone(),
        tls,
        ca_file: args.mqtt_ca.clone(),
        client_id: args
            .mqtt_client_id
            .clone()
            .unwrap_or_else(|| mqtt::default_client_id(command)),
        keep_alive: Duration::from_secs(30),
        reconnect_initial: mqtt::RECONNECT_INITIAL,
        reconnect_max: args.mqtt_reconnect_max,
        stale_after: None,
    }
}

/// The output broker of `collect --publish/--ha`: the source broker with
/// the `--out-mqtt-*` overrides, or, with `--out-mqtt-host`, another broker
/// that gets none of the source broker's credentials or TLS settings.
pub(crate) fn out_mqtt_settings(source: &MqttArgs, out: &OutMqttArgs) -> MqttSettings {
    let base = mqtt_settings(source, "publish");
    let same_broker = out.out_mqtt_host.is_none();
    let tls = out.out_mqtt_tls || out.out_mqtt_ca.is_some() || (same_broker && base.tls);
    let port = out.out_mqtt_port.unwrap_or(if same_broker {
        base.port
    } else if tls {
        8883
    } else {
        1883
    });
    let client_id = match (&out.out_mqtt_client_id, &source.mqtt_client_id) {
        (Some(id), _) => id.clone(),
        (None, Some(id)) => format!("{id}-out"),
        (None, None) => base.client_id.clone(),
    };
    fn inherit<T: Clone>(given: &Option<T>, from: &Option<T>, same_broker: bool) -> Option<T> {
        given
            .clone()
            .or_else(|| from.clone().filter(|_| same_broker))
    }
    MqttSettings {
        host: out.out_mqtt_host.clone().unwrap_or(base.host.clone()),
        port,
        username: inherit(&out.out_mqtt_username, &base.username, same_broker),
        password: inherit(&out.out_mqtt_password, &base.password, same_broker),
        tls,
        ca_file: inherit(&out.out_mqtt_ca, &base.ca_file, same_broker),
        client_id,
        ..base
    }
}

/// The API client from the shared flags. It fails only on flags it cannot
/// use (a token no HTTP header can carry): a [`ConfigError`].
pub(crate) fn api_client(args: &ApiArgs) -> Result<ApiClient> {
    ApiClient::new(
        args.api_url.clone(),
        args.api_token.as_ref(),
        args.api_timeout,
    )
    .map_err(|e| ConfigError(e).into())
}

/// Resolves on the first SIGINT, SIGTERM or SIGHUP. SIGHUP (a closed SSH
/// session, a closed terminal) would otherwise end the process on the spot,
/// with no stop line, no last save and what was queued lost: it is a stop
/// like the others.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        /// The next `kind`, or never when it cannot be listened for.
        async fn next(kind: SignalKind) {
            match signal(kind) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = next(SignalKind::terminate()) => {}
            () = next(SignalKind::hangup()) => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use anyhow::{Context, anyhow};

    use super::*;

    #[test]
    fn configuration_mistakes_exit_2_and_keep_their_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let mistake = anyhow::Error::new(ConfigError(
            anyhow::Error::new(io).context("cannot read CA file /etc/ca.pem"),
        ));
        assert_eq!(exit_code(&mistake), 2);
        assert_eq!(
            format!("{mistake:#}"),
            "cannot read CA file /etc/ca.pem: No such file or directory"
        );
        // Context added on the way up keeps the exit code.
        assert_eq!(exit_code(&mistake.context("cannot start")), 2);
        let in_use = anyhow::Error::new(StateDirError::InUse(PathBuf::from("/s")));
        assert_eq!(exit_code(&in_use), 2);
    }

    #[test]
    fn faults_of_the_system_exit_1() {
        let fault = anyhow::Error::new(StateDirError::Io {
            path: PathBuf::from("/s"),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        });
        assert_eq!(exit_code(&fault), 1);
        let spool: Result<()> = Err(anyhow!("disk I/O error")).context("cannot open the spool");
        assert_eq!(exit_code(&spool.expect_err("an error")), 1);
    }
}
