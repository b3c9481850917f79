//! `pv3 watch` and `pv3 devices`: the commands that show what the P3 sends.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::*;

/// `watch --once --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotFormat {
    /// A table per device, for people.
    Table,
    /// One JSON object per device, one per line.
    Json,
}

/// `pv3 watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Play this capture (pv3 or mosquitto_sub -F %j/%J) instead of the
    /// live broker; - for stdin. Every device in it unless --device-id
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Pace of FILE: max, or N times the recorded pace
    #[arg(long, value_name = "max|N", default_value = "1", value_parser = parse_speed,
          requires = "file", conflicts_with = "once")]
    pub speed: Speed,

    /// Print one snapshot and exit, without the screen
    #[arg(long)]
    pub once: bool,

    /// With --once: the longest wait for every topic to be seen, in seconds
    #[arg(long, default_value = "15", value_name = "SECS", value_parser = parse_secs,
          conflicts_with = "file")]
    pub wait: Duration,

    /// The snapshot's format; implies --once
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<SnapshotFormat>,

    // Groups last: a group's help heading carries over to what follows it.
    /// The MQTT broker.
    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `devices --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevicesFormat {
    /// A block per device, for people.
    Table,
    /// One JSON object per device, one per line.
    Json,
}

/// `pv3 devices`.
#[derive(Debug, Clone, Args)]
pub struct DevicesArgs {
    /// How long to listen once subscribed, in seconds (connecting may take
    /// as long again)
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub wait: Duration,

    /// Output: a block per device for people, or JSON Lines for scripts
    #[arg(long, value_enum, default_value = "table", value_name = "FORMAT")]
    pub format: DevicesFormat,

    // Groups last: a group's help heading carries over to what follows it.
    /// The MQTT broker.
    #[command(flatten)]
    pub mqtt: MqttArgs,
}
