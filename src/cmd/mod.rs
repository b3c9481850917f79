//! One module per subcommand, each a `run(args) -> Result`, plus the set-up
//! they share (connection settings from flags, shutdown signals).

pub mod check_api;
pub mod collect;
pub mod completions;
pub mod install_service;
pub mod replay;
pub mod sniff;

use std::time::Duration;

use anyhow::Result;

use crate::api::ApiClient;
use crate::cli::{ApiArgs, Cli, Command, MqttArgs};
use crate::mqtt::{self, MqttSettings};

/// A configuration problem found after argument parsing (a CA file that
/// does not parse, say): exit code 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Runs the chosen command; `matches` is what clap parsed into `cli`.
pub async fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    match cli.command {
        Command::Collect(args) => collect::run(args).await,
        Command::Sniff(args) => sniff::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::CheckApi(args) => check_api::run(args).await,
        Command::InstallService(args) => install_service::run(args, matches),
        Command::Completions(args) => completions::run(args),
    }
}

/// MQTT settings from the shared flags; `command` names the client id.
pub fn mqtt_settings(args: &MqttArgs, command: &str) -> MqttSettings {
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
        reconnect_initial: Duration::from_millis(500),
        reconnect_max: args.mqtt_reconnect_max,
        stale_after: None,
    }
}

pub fn api_client(args: &ApiArgs) -> Result<ApiClient> {
    ApiClient::new(
        args.api_url.clone(),
        args.api_token.as_ref(),
        args.api_timeout,
    )
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
