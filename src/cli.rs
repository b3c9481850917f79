//! The command line: clap derive types only. The names here are a stable
//! interface (`shared/spec/cli.md`): scripts, unit files and habits depend on
//! them. Add options freely; never rename one.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use reqwest::Url;

use crate::output::Format;
use crate::secret::Secret;

mod outputs;
mod parse;
mod views;

pub use outputs::{OutMqttArgs, OutputArgs};
pub use views::{DevicesArgs, DevicesFormat, SnapshotFormat, WatchArgs};

use parse::{
    Quoted, parse_client_id, parse_device_id, parse_device_id_exact, parse_filter, parse_secs,
    parse_secs_or_zero, parse_share_group, parse_speed, parse_threshold, parse_time,
    parse_topic_prefix,
};

#[derive(Debug, Parser)]
#[command(
    name = "pv3",
    version,
    about = "Toolkit for the Powervault P3 home battery: live forwarding, capture and replay",
    after_help = "Examples:\n  \
        pv3 collect --mqtt-host 192.168.1.215 --api-url http://localhost:8800\n  \
        pv3 collect --dry-run                 print what would be sent\n\n\
        Connection options also read MQTT_HOST, MQTT_PORT, P3_DEVICE_ID, API_URL, ...\n\
        (see `pv3 <command> --help`).",
    propagate_version = true
)]
/// The whole command line: global flags and one subcommand.
pub struct Cli {
    /// More log detail (-v debug, -vv trace)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less log detail (-q warnings only, -qq errors only)
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Log detail asked for: 0 is the default (info), each -v one more,
    /// each -q one less.
    pub fn verbosity(&self) -> i8 {
        i8::try_from(self.verbose).unwrap_or(i8::MAX) - i8::try_from(self.quiet).unwrap_or(i8::MAX)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the P3s publishing on a broker: find your device id
    #[command(after_help = "Examples:\n  \
        pv3 devices --mqtt-host 192.168.1.215\n  \
        pv3 devices --wait 30                 listen longer\n  \
        pv3 devices --format json | jq -r .device_id\n\n\
        Listens on pv/PV3/+/# and prints each device seen: its topics, its last\n\
        message and its SOC, battery and grid power. Exit code 1 when none.")]
    Devices(DevicesArgs),

    /// Forward live P3 data from MQTT to the PV3 Monitor API
    #[command(after_help = "Examples:\n  \
        pv3 collect --mqtt-host 192.168.1.215 --api-url http://pi.local:8800\n  \
        pv3 collect --device-id +             every P3 on the broker\n  \
        pv3 collect --dry-run --format jsonl  show what would be sent, send nothing\n  \
        pv3 collect --ha --out-mqtt-host homeassistant.local   Home Assistant too\n  \
        pv3 collect --no-api --ha --metrics-listen 0.0.0.0:9800   no PV3 Monitor")]
    Collect(CollectArgs),

    /// Capture raw MQTT traffic as JSON Lines (stdout or -o FILE)
    #[command(after_help = "Examples:\n  \
        pv3 sniff > capture.jsonl              until Ctrl-C\n  \
        pv3 sniff -o capture.jsonl --duration 600\n  \
        pv3 sniff --count 20 --topic 'pv/PV3/+/bms/#'\n\n\
        On exit a per-topic table on stderr shows what the decoder made of each topic.")]
    Sniff(SniffArgs),

    /// Decode a capture and send it to the API (or print it with --dry-run)
    #[command(after_help = "Examples:\n  \
        pv3 replay capture.jsonl --dry-run     look at what is in it\n  \
        pv3 replay capture.jsonl               backfill the API\n  \
        pv3 replay old.jsonl --since 2026-11-01T00:00:00Z --until 2026-11-02T00:00:00Z\n  \
        pv3 replay capture.jsonl --to-mqtt --mqtt-host 127.0.0.1   feed a test broker\n\n\
        Reads pv3 captures and mosquitto_sub -F %j / -F %J output; - reads stdin.")]
    Replay(ReplayArgs),

    /// The battery live in the terminal: power flow, charge, alarms, history
    #[command(after_help = "Examples:\n  \
        pv3 watch --mqtt-host 192.168.1.215\n  \
        pv3 watch --device-id +                every P3 on the broker (d switches)\n  \
        pv3 watch yesterday.jsonl --speed 10   play a capture, ten times faster\n  \
        pv3 watch --once --format json | jq .metrics.soc.value\n\n\
        Keys: q quit, d next device, p pause, ? help. Without a terminal on\n\
        stdout it prints one snapshot, as with --once.")]
    Watch(WatchArgs),

    /// Check the API end to end, and the local collector's status
    #[command(after_help = "Examples:\n  \
        pv3 check-api --api-url http://pi.local:8800\n  \
        pv3 check-api --write                  also POST a probe and read it back\n  \
        pv3 check-api --format json | jq .ok\n\n\
        Exit code 0 when no check failed (warnings do not fail), 1 otherwise.")]
    CheckApi(CheckApiArgs),

    /// Install `pv3 collect` as a hardened systemd service
    #[command(after_help = "Examples:\n  \
        sudo pv3 install-service --mqtt-host 192.168.1.215 --api-url http://localhost:8800\n  \
        pv3 install-service --dry-run           show the files and commands, change nothing\n  \
        pv3 install-service --user              a user service, no root needed\n  \
        sudo pv3 install-service --uninstall    stop and remove it (state kept)\n\n\
        Settings given as flags or MQTT_*/API_*/P3_DEVICE_ID variables go to the\n\
        env file; running it again keeps the settings not given again.")]
    InstallService(InstallServiceArgs),

    /// The Home Assistant add-on's start: collect, set up from
    /// /data/options.json and the Supervisor (docs/addon.md)
    #[command(hide = true)]
    Addon,

    /// Print a shell completion script
    #[command(after_help = "Examples:\n  \
        pv3 completions bash > ~/.local/share/bash-completion/completions/pv3\n  \
        pv3 completions zsh > ~/.zfunc/_pv3\n  \
        pv3 completions fish > ~/.config/fish/completions/pv3.fish")]
    Completions(CompletionsArgs),
}

/// Broker connection: shared by every command that talks MQTT.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "MQTT")]
pub struct MqttArgs {
    /// Broker host (the P3's LAN address)
    #[arg(
        long,
        env = "MQTT_HOST",
        default_value = "192.168.1.215",
        value_name = "HOST"
    )]
    pub mqtt_host: String,

    /// Broker port [default: 1883, or 8883 with --mqtt-tls]
    #[arg(long, env = "MQTT_PORT", value_name = "PORT")]
    pub mqtt_port: Option<u16>,

    /// User name, for a broker that asks for one
    #[arg(long, env = "MQTT_USERNAME", value_name = "USER")]
    pub mqtt_username: Option<String>,

    /// Never shown in --help or logs
    #[arg(
        long,
        env = "MQTT_PASSWORD",
        value_name = "PASS",
        hide_env_values = true
    )]
    pub mqtt_password: Option<Secret>,

    /// Connect with TLS
    #[arg(long, env = "MQTT_TLS")]
    pub mqtt_tls: bool,

    /// CA certificate (PEM) for TLS; implies --mqtt-tls [default: the system's roots]
    #[arg(long = "mqtt-ca", env = "MQTT_CA_FILE", value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,

    /// [default: pv3-<command>-<random>]
    #[arg(long, env = "MQTT_CLIENT_ID", value_name = "ID", value_parser = Quoted(parse_client_id))]
    pub mqtt_client_id: Option<String>,

    /// Longest wait between reconnect attempts, in seconds
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
    pub mqtt_reconnect_max: Duration,
}

/// Which P3 to listen to: collect and sniff.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "MQTT")]
pub struct DeviceArgs {
    /// Device id, or + for every device on the broker
    #[arg(long, env = "P3_DEVICE_ID", default_value = "PV001001DEV", value_name = "ID",
          value_parser = Quoted(parse_device_id))]
    pub device_id: String,
}

/// The device id collect posts under: collect and install-service.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "PV3 Monitor API")]
pub struct ApiDeviceArgs {
    /// Post under this device id instead of the topic's (the dashboard's
    /// configured id); one P3 only
    #[arg(long, env = "API_DEVICE_ID", value_name = "ID", value_parser = Quoted(parse_device_id_exact))]
    pub api_device_id: Option<String>,
}

/// Where collect keeps its spool and status file (check-api reads it).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "State")]
pub struct StateArgs {
    /// Spool and status directory [default: $STATE_DIRECTORY (systemd), else
    /// ~/.local/state/pv3]
    #[arg(long, env = "STATE_DIRECTORY", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// API connection: shared by every command that talks to PV3 Monitor.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "API")]
pub struct ApiArgs {
    /// PV3 Monitor base URL
    #[arg(long, env = "API_URL", default_value = "http://localhost:8800", value_name = "URL",
          value_parser = crate::api::parse_api_url)]
    pub api_url: Url,

    /// Sent as `Authorization: Bearer`; never shown or logged
    #[arg(long, env = "API_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,

    /// Per-request timeout, in seconds
    #[arg(long, env = "API_TIMEOUT", default_value = "10", value_name = "SECS",
          value_parser = parse_secs)]
    pub api_timeout: Duration,
}

/// Batching and retry: shared by collect and replay.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliveryArgs {
    /// Longest wait between retries of a failed POST, in seconds
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = parse_secs)]
    pub retry_max: Duration,

    /// SOC filter threshold in percentage points (0 turns it off)
    #[arg(long, default_value = "1.0", value_name = "PCT", value_parser = parse_threshold)]
    pub soc_threshold: f64,
}

/// `pv3 collect`.
#[derive(Debug, Clone, Args)]
pub struct CollectArgs {
    /// Print what would be sent; send nothing
    #[arg(long, conflicts_with_all = ["no_api", "publish", "ha", "metrics_listen"])]
    pub dry_run: bool,

    /// Remove every entity --ha announced for --device-id (+: every P3),
    /// with the retained topics of --publish, then exit; add it to the
    /// collect command it undoes
    #[arg(long, conflicts_with = "dry_run")]
    pub ha_remove: bool,

    /// Output of --dry-run [default: table on a terminal, else jsonl]
    #[arg(long, value_enum, value_name = "FORMAT", requires = "dry_run")]
    pub format: Option<Format>,

    /// Largest on-disk spool, in MiB; when full the oldest readings are
    /// dropped (and counted)
    #[arg(long, default_value = "1024", value_name = "MB",
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub spool_max_mb: u64,

    /// Subscribe through the MQTT shared subscription $share/NAME/...: the
    /// collectors of one group split the traffic between them
    #[arg(long, value_name = "NAME", value_parser = Quoted(parse_share_group))]
    pub share_group: Option<String>,

    /// Reconnect when connected but silent this long, in seconds
    #[arg(long, default_value = "120", value_name = "SECS", value_parser = parse_secs)]
    pub stale_after: Duration,

    /// Measurements per POST
    #[arg(long, default_value_t = crate::forward::BATCH_SIZE, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Send a batch after this long even if not full, in milliseconds
    #[arg(long, default_value_t = crate::forward::LINGER_MS, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub linger_ms: u64,

    /// Measurements held in memory while the API is unreachable or slow;
    /// past it they all go to the on-disk spool (see --spool-max-mb)
    #[arg(long, default_value_t = crate::forward::QUEUE_MAX, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_max: u64,

    /// On SIGINT/SIGTERM, how long to keep delivering what is queued, in seconds
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_secs)]
    pub shutdown_grace: Duration,

    /// Seconds between progress lines in the log (0: never)
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = parse_secs_or_zero)]
    pub stats_interval: Duration,

    /// The MQTT broker.
    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,

    /// The PV3 Monitor API.
    #[command(flatten)]
    pub api: ApiArgs,

    /// Which device id the API sees.
    #[command(flatten)]
    pub api_device: ApiDeviceArgs,

    /// Batching, retries and the SOC filter.
    #[command(flatten)]
    pub delivery: DeliveryArgs,

    /// The state directory.
    #[command(flatten)]
    pub state: StateArgs,

    /// Outputs beside the API.
    #[command(flatten)]
    pub outputs: OutputArgs,

    /// The broker the outputs publish to.
    #[command(flatten)]
    pub out_mqtt: OutMqttArgs,
}

/// `pv3 sniff`.
#[derive(Debug, Clone, Args)]
pub struct SniffArgs {
    /// Append to FILE instead of writing to stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Stop after N messages
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after this many seconds
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// Subscribe to FILTER instead of the device's topics (repeatable; MQTT
    /// wildcards + and #)
    #[arg(long = "topic", value_name = "FILTER", value_parser = parse_filter)]
    pub topics: Vec<String>,

    /// The MQTT broker.
    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `--speed`: `max`, or a multiple of the recorded pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the destination takes it.
    Max,
    /// This many times the recorded pace (2.0: twice as fast).
    Times(f64),
}

/// `pv3 replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Capture file (pv3 or mosquitto_sub -F %j/%J); - for stdin
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print the decoded data; send nothing
    #[arg(long, conflicts_with = "to_mqtt")]
    pub dry_run: bool,

    /// Output of --dry-run [default: table on a terminal, else jsonl]
    #[arg(long, value_enum, value_name = "FORMAT", requires = "dry_run")]
    pub format: Option<Format>,

    /// Also send alarm states (the API stamps alarm events with its own
    /// clock, so old states would create events at the wrong time)
    #[arg(long)]
    pub alarms: bool,

    /// Republish the raw messages to an MQTT broker instead (qos and retain
    /// as recorded)
    #[arg(long)]
    pub to_mqtt: bool,

    /// Pace: max, or N times the recorded pace [default: max, 1 with --to-mqtt]
    #[arg(long, value_name = "max|N", value_parser = parse_speed)]
    pub speed: Option<Speed>,

    /// Only records at or after this time (RFC 3339)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<crate::reading::Timestamp>,

    /// Only records before this time (RFC 3339)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<crate::reading::Timestamp>,

    /// Only topics matching FILTER (repeatable; MQTT wildcards)
    #[arg(long = "topic", value_name = "FILTER", value_parser = parse_filter)]
    pub topics: Vec<String>,

    /// Use this device id instead of the one in each topic
    #[arg(long, value_name = "ID", value_parser = Quoted(parse_device_id_exact))]
    pub device_id: Option<String>,

    /// Measurements per POST
    #[arg(long, default_value_t = crate::forward::BATCH_SIZE, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// POSTs in flight at once
    #[arg(long, default_value = "4", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,

    /// Give up when the API has taken nothing for this long, in seconds
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = parse_secs)]
    pub give_up: Duration,

    /// Send everything, even what the API already holds (by default each
    /// window of the capture is checked against the API's history first)
    #[arg(long)]
    pub no_skip_existing: bool,

    /// The PV3 Monitor API.
    #[command(flatten)]
    pub api: ApiArgs,

    /// Batching, retries and the SOC filter.
    #[command(flatten)]
    pub delivery: DeliveryArgs,

    /// The MQTT broker.
    #[command(flatten)]
    pub mqtt: MqttArgs,
}

/// `check-api --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    /// A table for people.
    Table,
    /// One JSON object: {"ok": bool, "checks": [...]}.
    Json,
}

/// `pv3 check-api`.
#[derive(Debug, Clone, Args)]
pub struct CheckApiArgs {
    /// The device whose data is checked
    #[arg(long, env = "P3_DEVICE_ID", default_value = "PV001001DEV", value_name = "ID",
          value_parser = Quoted(parse_device_id_exact))]
    pub device_id: String,

    /// Output: a table for people, or JSON for scripts
    #[arg(long, value_enum, default_value = "table", value_name = "FORMAT")]
    pub format: CheckFormat,

    /// Also POST a probe measurement (metric pv3_check_probe) and read it
    /// back; it stays in the database and counts as fresh data
    #[arg(long)]
    pub write: bool,

    /// Warn when the newest data is older than this, in seconds
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = parse_secs)]
    pub max_age: Duration,

    // Groups last: a group's help heading carries over to what follows it.
    /// The state directory.
    #[command(flatten)]
    pub state: StateArgs,

    /// The PV3 Monitor API.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `pv3 install-service`.
#[derive(Debug, Clone, Args)]
pub struct InstallServiceArgs {
    /// Print each file it would write and each command it would run; change
    /// nothing (secrets shown as ***)
    #[arg(long)]
    pub dry_run: bool,

    /// Stop, disable and remove the service and its env file (state kept)
    #[arg(long)]
    pub uninstall: bool,

    /// With --uninstall: also delete the state directory (spool, status)
    #[arg(long, requires = "uninstall")]
    pub purge: bool,

    /// A user service (~/.config/systemd/user, systemctl --user): no root
    #[arg(long)]
    pub user: bool,

    /// The pv3 binary the service runs [default: this one]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,

    /// Tests: write every file under DIR and run no systemctl (print it)
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,

    /// Tests: behave as if not run as root
    #[arg(long, hide = true)]
    pub pretend_non_root: bool,

    // Groups last: a group's help heading carries over to what follows it.
    /// The MQTT broker.
    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,

    /// The PV3 Monitor API.
    #[command(flatten)]
    pub api: ApiArgs,

    /// The device id the API sees.
    #[command(flatten)]
    pub api_device: ApiDeviceArgs,

    /// Outputs beside the API.
    #[command(flatten)]
    pub outputs: OutputArgs,

    /// The broker the outputs publish to.
    #[command(flatten)]
    pub out_mqtt: OutMqttArgs,
}

/// What `pv3 completions` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionTarget {
    /// Save as /usr/share/bash-completion/completions/pv3
    Bash,
    /// Save as _pv3 in a directory of $fpath
    Zsh,
    /// Save as ~/.config/fish/completions/pv3.fish
    Fish,
    /// Evaluate it from ~/.config/elvish/rc.elv
    Elvish,
    /// Dot-source it from $PROFILE
    Powershell,
    /// The man page (roff), for packaging: docs/pv3.1.
    #[value(hide = true)]
    Man,
}

/// `pv3 completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionTarget,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
