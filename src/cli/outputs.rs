//! collect's outputs beside the API, and the broker they publish to.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::*;

/// collect's outputs beside the PV3 Monitor API (`docs/home-assistant.md`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Outputs")]
pub struct OutputArgs {
    /// Do not send to the PV3 Monitor API (needs --publish, --ha or
    /// --metrics-listen)
    #[arg(long, env = "NO_API")]
    pub no_api: bool,

    /// Publish each value as a plain number on PREFIX/DEVICE/METRIC
    /// (evcc, Telegraf, Node-RED)
    #[arg(long, env = "PUBLISH")]
    pub publish: bool,

    /// Topic prefix of --publish
    #[arg(long, env = "PUBLISH_PREFIX", default_value = "pv3", value_name = "P",
          value_parser = Quoted(parse_topic_prefix))]
    pub publish_prefix: String,

    /// At most one state per value per SECS, the latest at the end; an
    /// unchanged value every 5 minutes (0: every reading)
    #[arg(long, env = "PUBLISH_INTERVAL", default_value = "10", value_name = "SECS",
          value_parser = parse_secs_or_zero)]
    pub publish_interval: Duration,

    /// Home Assistant MQTT discovery (implies --publish)
    #[arg(long, env = "HA_DISCOVERY")]
    pub ha: bool,

    /// Home Assistant's discovery prefix
    #[arg(long, env = "HA_PREFIX", default_value = "homeassistant", value_name = "P",
          value_parser = Quoted(parse_topic_prefix))]
    pub ha_prefix: String,

    /// Serve Prometheus metrics on http://ADDR:PORT/metrics
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The broker of --publish and --ha. Without --out-mqtt-host: the source
/// broker, each setting overridable. With it: another broker, whose
/// settings start from MQTT's defaults (the P3 broker's credentials are
/// not sent to it).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output broker")]
pub struct OutMqttArgs {
    /// Broker of --publish/--ha [default: the source broker]
    #[arg(long, env = "OUT_MQTT_HOST", value_name = "HOST")]
    pub out_mqtt_host: Option<String>,

    /// [default: --mqtt-port, or 1883 (8883 with TLS) for another host]
    #[arg(long, env = "OUT_MQTT_PORT", value_name = "PORT")]
    pub out_mqtt_port: Option<u16>,

    /// User name on the output broker
    #[arg(long, env = "OUT_MQTT_USERNAME", value_name = "USER")]
    pub out_mqtt_username: Option<String>,

    /// Never shown in --help or logs
    #[arg(
        long,
        env = "OUT_MQTT_PASSWORD",
        value_name = "PASS",
        hide_env_values = true
    )]
    pub out_mqtt_password: Option<Secret>,

    /// TLS to the output broker
    #[arg(long, env = "OUT_MQTT_TLS")]
    pub out_mqtt_tls: bool,

    /// CA certificate (PEM) of the output broker; implies --out-mqtt-tls
    #[arg(long = "out-mqtt-ca", env = "OUT_MQTT_CA_FILE", value_name = "FILE")]
    pub out_mqtt_ca: Option<PathBuf>,

    /// [default: --mqtt-client-id + "-out", else pv3-publish-<random>]
    #[arg(long, env = "OUT_MQTT_CLIENT_ID", value_name = "ID",
          value_parser = Quoted(parse_client_id))]
    pub out_mqtt_client_id: Option<String>,
}
