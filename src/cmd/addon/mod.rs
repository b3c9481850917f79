//! `pv3 addon`: the Home Assistant add-on's start. The add-on's image runs
//! it with no arguments (the Supervisor passes none, and the image has no
//! shell); it turns the add-on's settings into a `pv3 collect` and hands
//! that back to the dispatcher, which runs collect as `pv3 collect` would.
//!
//! - the options: `/data/options.json` ([`options`]), each option a collect
//!   flag, parsed by collect's own clap definition (so every check and
//!   message is collect's), the state in `/data`;
//! - the output broker: the Supervisor's MQTT service ([`supervisor`]),
//!   unless an `out_mqtt_*` option names one;
//! - the device: `device_id`, or the one P3 heard on its broker ([`device`]).
//!
//! Anything wrong is one line in the add-on's log and an exit: 2 for a
//! setting to fix (collect's convention), 1 for a Supervisor that cannot be
//! asked. Test knobs: `PV3_ADDON_DATA` (instead of `/data`),
//! `PV3_SUPERVISOR_URL` (instead of `http://supervisor`),
//! `PV3_SUPERVISOR_TIMEOUT_MS`, `PV3_DEVICE_LISTEN_MS`.

mod device;
pub mod options;
mod supervisor;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Parser;
use clap::error::ContextKind;
use tracing::warn;

use crate::cli::{Cli, CollectArgs, Command};
use crate::cmd::ConfigError;
use options::Options;
use supervisor::MqttService;

/// Where the Supervisor mounts the add-on's own directory: options in,
/// state (spool, energy totals, status) kept across restarts and updates.
const DATA_DIR: &str = "/data";
/// The Supervisor, as add-ons reach it.
const SUPERVISOR_URL: &str = "http://supervisor";
/// How long the Supervisor may take to answer.
const SUPERVISOR_TIMEOUT: Duration = Duration::from_secs(10);

/// The `collect` the add-on's options describe, ready to run; `None` when a
/// stop signal came first. Starts the log (at the options' `log_level`,
/// moved by `-v`/`-q`: `verbosity`).
pub async fn prepare(verbosity: i8) -> Result<Option<CollectArgs>> {
    let data = data_dir();
    let file = data.join("options.json");
    // Only a file that is not there gets the hint: one that cannot be read
    // (a user without access to /data) is an error that says so.
    let missing = std::fs::metadata(&file).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    if missing {
        return Err(ConfigError(anyhow!(
            "pv3 addon starts the Home Assistant add-on from {} (not found); \
             elsewhere run collect instead: pv3 collect --mqtt-host P3-ADDRESS --no-api --ha \
             --out-mqtt-host BROKER (pv3 collect --help)",
            file.display()
        ))
        .into());
    }
    let options = Options::read(&file)?;
    crate::logging::init(options.verbosity()?.saturating_add(verbosity));
    for key in options.unknown() {
        warn!(
            "{}: ignoring {key}: not an option of pv3 {}",
            file.display(),
            env!("CARGO_PKG_VERSION")
        );
    }
    if !options.is_set("mqtt_host") {
        return Err(ConfigError(anyhow!(
            "option mqtt_host is not set: the P3's address on your network, like 192.168.1.215"
        ))
        .into());
    }
    let mut argv = options.collect_argv(&data)?;
    let first = parse(&argv)?;
    if first.outputs.no_api && !first.outputs.ha && first.outputs.metrics_listen.is_none() {
        return Err(ConfigError(anyhow!(
            "nothing to send the P3's data to: set api_url (PV3 Monitor), turn ha_discovery on, \
             or set metrics_port"
        ))
        .into());
    }
    if first.outputs.ha && !options::OUTPUT_BROKER.iter().any(|o| options.is_set(o)) {
        match output_broker().await? {
            Ok(flags) => argv.extend(flags),
            Err(why) => without_discovery(&mut argv, &options, &why)?,
        }
    }
    if !options.is_set("device_id") {
        match device::detect(&first.mqtt).await? {
            Some(id) => argv.extend(["--device-id".to_owned(), id]),
            None => return Ok(None),
        }
    }
    parse(&argv).map(Some)
}

/// `/data`, or `PV3_ADDON_DATA`.
fn data_dir() -> PathBuf {
    std::env::var_os("PV3_ADDON_DATA")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DATA_DIR), PathBuf::from)
}

/// The `--out-mqtt-*` flags for the Supervisor's broker, or why there is
/// none (no broker add-on, no token): `Err` inside is not a failure.
async fn output_broker() -> Result<Result<Vec<String>, String>> {
    let token = ["SUPERVISOR_TOKEN", "HASSIO_TOKEN"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty()));
    let Some(token) = token else {
        return Ok(Err(
            "SUPERVISOR_TOKEN is not set, so the Supervisor cannot be asked for it".into(),
        ));
    };
    let base = std::env::var("PV3_SUPERVISOR_URL").unwrap_or_else(|_| SUPERVISOR_URL.into());
    let timeout = crate::knobs::interval_from_env("PV3_SUPERVISOR_TIMEOUT_MS", SUPERVISOR_TIMEOUT);
    Ok(
        match supervisor::mqtt_service(&base, &token, timeout).await? {
            MqttService::Provided(broker) => Ok(broker.flags()),
            MqttService::NotProvided(why) => Err(format!("the Supervisor says: {why}")),
        },
    )
}

/// No broker for Home Assistant's discovery: go on without it (one
/// warning) when there is something else to do, else stop. `ha_discovery`
/// defaults to on, so the options cannot say whether the owner chose it.
fn without_discovery(argv: &mut Vec<String>, options: &Options, why: &str) -> Result<()> {
    argv.retain(|a| a != "--ha");
    let other = options.is_set("api_url") || options.is_set("metrics_port");
    if !other {
        return Err(ConfigError(anyhow!(
            "Home Assistant discovery has no MQTT broker ({why}): install and start the \
             Mosquitto broker add-on, or set out_mqtt_host; with no api_url or metrics_port \
             there is nothing else to do"
        ))
        .into());
    }
    warn!(
        "Home Assistant discovery is off: no MQTT broker ({why}); install and start the \
         Mosquitto broker add-on, or set out_mqtt_host"
    );
    Ok(())
}

/// collect's arguments from `argv`, checked by its own clap definition. A
/// mistake is one line that names the option it came from.
fn parse(argv: &[String]) -> Result<CollectArgs> {
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Collect(args),
            ..
        }) => Ok(args),
        Ok(_) => Err(anyhow!(
            "internal: the add-on's command line is not a collect"
        )),
        Err(e) => Err(ConfigError(anyhow!(clap_line(&e))).into()),
    }
}

/// clap's message on one line (no usage, no "For more information"),
/// after the option the offending flag came from.
fn clap_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    // A URL in it (a bad api_url) never shows its password.
    let first = crate::secret::mask_url_passwords(
        rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: "),
    )
    .into_owned();
    // The flag: clap's context names it ("--mqtt-port <PORT>"), or a value
    // parser's own message starts with it ("--device-id: ...").
    let arg = e
        .get(ContextKind::InvalidArg)
        .map(|arg| arg.to_string())
        .unwrap_or_else(|| first.clone());
    let flag = arg
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches(':');
    let option = Options::option_of(flag);
    match option {
        Some(name) => format!("option {name}: {first}"),
        None => format!("the add-on's options: {first}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn argv(json: &str) -> Vec<String> {
        Options::parse(Path::new("/data/options.json"), json.as_bytes())
            .expect("options")
            .collect_argv(Path::new("/data"))
            .expect("argv")
    }

    #[test]
    fn a_bad_value_is_collect_s_message_on_one_line_naming_the_option() {
        let e = parse(&argv(
            r#"{"mqtt_host": "h", "mqtt_port": 99999, "ha_discovery": true}"#,
        ))
        .expect_err("a port out of range");
        let line = e.to_string();
        assert!(
            line.starts_with("option mqtt_port: invalid value '99999' for '--mqtt-port <PORT>'"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(crate::cmd::exit_code(&e), 2);
        let e = parse(&argv(r#"{"mqtt_host": "h", "api_url": "nowhere"}"#)).expect_err("no URL");
        assert!(
            e.to_string()
                .starts_with("option api_url: invalid value 'nowhere'"),
            "{e}"
        );
        // A password in a URL clap could not take is not shown.
        let e = parse(&argv(
            r#"{"mqtt_host": "h", "api_url": "ftp://me:s3cret@pv3.lan"}"#,
        ))
        .expect_err("not http");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().starts_with("option api_url:"), "{e}");
        // A value parser's own message names the flag first.
        let e = parse(&argv(r#"{"mqtt_host": "h", "device_id": "PV/1"}"#)).expect_err("a /");
        assert!(e.to_string().starts_with("option device_id: "), "{e}");
    }

    #[test]
    fn good_options_parse_as_collect() {
        let args = parse(&argv(
            r#"{"mqtt_host": "h", "device_id": "PV001002ABC", "ha_discovery": true,
                "publish_interval": 30, "metrics_port": 9800, "log_level": "info"}"#,
        ))
        .expect("valid");
        assert_eq!(args.mqtt.mqtt_host, "h");
        assert_eq!(args.device.device_id, "PV001002ABC");
        assert!(args.outputs.ha && args.outputs.no_api);
        assert_eq!(args.outputs.publish_interval, Duration::from_secs(30));
        assert_eq!(args.state.state_dir.as_deref(), Some(Path::new("/data")));
        assert_eq!(args.outputs.metrics_listen.map(|a| a.port()), Some(9800));
    }
}
