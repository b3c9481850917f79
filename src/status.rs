//! `status.json`: what a running collector says about itself, replaced
//! atomically every few seconds in the state directory. `check-api` reads
//! it; people can `cat` it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::state_dir::STATUS_FILE as FILE_NAME;

/// What `status.json` holds: who wrote it, the broker connection, the last
/// activity, the counters and the spool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Format version of this file.
    pub version: u32,
    /// The collector's process id.
    pub pid: u32,
    /// The kernel's boot id when the collector started (Linux): a reader on
    /// the same machine and boot can check `pid` for life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The version of pv3 that wrote the file.
    pub pv3_version: String,
    /// When the collector started (RFC 3339 UTC, like every time here).
    pub started_at: String,
    /// When the file was last written; `check-api` judges staleness by it.
    pub updated_at: String,
    /// The MQTT broker, as `host:port`.
    pub broker: String,
    /// Whether the MQTT connection is up.
    pub broker_connected: bool,
    /// Subscriptions confirmed by the broker since start (one per
    /// connection: it goes up again after each reconnect).
    #[serde(default)]
    pub subscriptions: u64,
    /// When the last MQTT message arrived; `None` for never.
    pub last_message_at: Option<String>,
    /// When the API last accepted a batch; `None` for never.
    pub last_delivery_at: Option<String>,
    /// Totals since start.
    pub counters: Counters,
    /// Batches waiting in the on-disk spool.
    pub spool_batches: u64,
    /// Measurements in those batches.
    pub spool_measurements: u64,
    /// Bytes the spool holds.
    pub spool_bytes: u64,
    /// `--no-api`: the collector sends nothing to the API, so its delivery
    /// counters stay at zero.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_api: bool,
    /// The outputs beside the API (`--publish`/`--ha`, `--metrics-listen`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputReport>,
    /// Nothing arrives for the configured device: what `pv/PV3/+/#`
    /// carries instead ("did you mean --device-id ...?"). Absent while
    /// the device is heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_hint: Option<String>,
}

/// This machine's boot id (`/proc/sys/kernel/random/boot_id`), where there
/// is one.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Is `pid` a running pv3 on this machine? `None` when it cannot tell (no
/// `/proc`).
pub fn pid_is_pv3(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    Some(comm.is_some_and(|c| c.trim_end() == "pv3"))
}

/// The collector's totals since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// MQTT messages received.
    pub received: u64,
    /// Measurements the API accepted.
    pub delivered: u64,
    /// Measurements written to the spool.
    pub spooled: u64,
    /// Measurements dropped because memory or the spool was full.
    pub dropped: u64,
    /// Measurements the API refused (see rejected.jsonl).
    pub rejected: u64,
    /// Of those delivered, measurements the API's answer said it did not
    /// create (`{"created": n}` below what was sent).
    #[serde(default)]
    pub not_created: u64,
    /// Messages that could not be decoded.
    pub decode_errors: u64,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Writes `status` to `dir/status.json` through a temporary file and a
/// rename, so a reader never sees half a file.
pub fn write(dir: &Path, status: &Status) -> Result<()> {
    let tmp = dir.join(".status.json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut file, status).context("cannot encode the status")?;
    file.write_all(b"\n")?;
    // No fsync: the file is rewritten every few seconds, and sparing the
    // SD card matters more than a status surviving power loss.
    drop(file);
    std::fs::rename(&tmp, path(dir))
        .with_context(|| format!("cannot replace {}", path(dir).display()))
}

/// Reads `dir/status.json`; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<Status>> {
    let p = path(dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a pv3 status file", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// One output as `status.json` shows it (check-api reads it back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputReport {
    /// `mqtt` or `prometheus`.
    pub name: String,
    /// Connected (MQTT) or listening (Prometheus).
    pub connected: bool,
    /// Messages published (MQTT) or scrapes answered (Prometheus).
    pub published: u64,
    /// Whether what it publishes comes back from the broker (MQTT: its
    /// probe); absent while not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivering: Option<bool>,
    /// Values replaced or given up before they went out.
    pub dropped: u64,
    /// The last publish or scrape, RFC 3339.
    pub last_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("no file is fine"), None);
        let status = Status {
            version: 1,
            pid: 42,
            broker: "127.0.0.1:1883".into(),
            counters: Counters {
                received: 7,
                ..Counters::default()
            },
            ..Status::default()
        };
        write(dir.path(), &status).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(status));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [FILE_NAME], "no temporary file left behind");
    }
}
