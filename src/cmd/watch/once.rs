//! `watch --once` (and `watch` without a terminal on stdout): no screen;
//! wait until the data has settled, print one snapshot per device, exit.
//!
//! Settled means every topic family the decoder knows has been seen once
//! for every device seen (the P3 sends them all, the slowest every 60 s),
//! or `--wait` has passed. From a capture: the state at its last record.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use tabled::settings::Style;
use tabled::{Table, Tabled};
use tracing::{info, warn};

use crate::capture::CaptureReader;
use crate::cli::{SnapshotFormat, WatchArgs};
use crate::decode;
use crate::mqtt;
use crate::output::is_broken_pipe;
use crate::reading::Timestamp;
use crate::topic::{ANY_DEVICE, P3Topic, device_filter};

use super::Feed;
use super::state::{Snapshot, WatchState};

/// Bad capture lines reported one by one; past this only counted.
const BAD_LINES_SHOWN: u64 = 20;

/// Subscribes, waits for the data to settle (or `--wait`), prints.
pub(super) async fn live(args: &WatchArgs, format: SnapshotFormat) -> Result<()> {
    let settings = super::super::mqtt_settings(&args.mqtt, "watch");
    let device = &args.device.device_id;
    let mut subscription = mqtt::subscribe(&settings, vec![device_filter(device)])
        .map_err(super::super::ConfigError)?;
    info!(
        "pv3 watch --once: {} ({}), at most {} s",
        settings.endpoint(),
        device_filter(device),
        args.wait.as_secs_f64()
    );
    let mut feed = Feed::new(None);
    let deadline = tokio::time::sleep(args.wait);
    tokio::pin!(deadline);
    let shutdown = super::super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut shutdown => break,
            msg = subscription.recv() => {
                let Some(msg) = msg else { break };
                feed.message(&msg.topic, &msg.payload, msg.received);
                if settled(&feed.state) {
                    break;
                }
            }
        }
    }
    subscription.close().await;
    let now = Timestamp::now();
    if !feed.state.has_data() {
        let whose = if device == ANY_DEVICE {
            "any device".to_string()
        } else {
            device.clone()
        };
        bail!(
            "no data from {whose} on {} within {} s (is --mqtt-host right, and the P3 on?)",
            settings.endpoint(),
            args.wait.as_secs_f64()
        );
    }
    print(&feed.state, now, format)
}

/// Every known topic family seen for every device seen (and a device seen).
fn settled(state: &WatchState) -> bool {
    let mut any = false;
    for id in state.device_ids() {
        any = true;
        let Some(device) = state.device(id) else {
            return false;
        };
        if !decode::decoded_suffixes().all(|s| device.has_family(s)) {
            return false;
        }
    }
    any
}

/// Reads the whole capture; prints the state at its last record.
pub(super) async fn from_capture(
    path: &Path,
    only: Option<String>,
    format: SnapshotFormat,
) -> Result<()> {
    let (input, _, _) = crate::capture::open_input(path)?;
    let name = super::capture_name(path);
    let filter = only.clone();
    let task = tokio::task::spawn_blocking(move || -> Result<(Feed, Option<Timestamp>)> {
        let mut reader = CaptureReader::new(input);
        let mut feed = Feed::new(filter);
        let mut last = None;
        let mut bad = 0u64;
        while let Some(item) = reader.next_record().context("cannot read the capture")? {
            match item {
                Ok(record) => {
                    if feed.message(&record.topic, &record.payload, record.ts) {
                        last = Some(record.ts);
                    }
                }
                Err(e) => {
                    bad += 1;
                    if bad <= BAD_LINES_SHOWN {
                        warn!("skipped {e}");
                    }
                }
            }
        }
        Ok((feed, last))
    });
    let (feed, last) = task.await.context("the capture reader failed")??;
    match last {
        Some(now) if feed.state.has_data() => print(&feed.state, now, format),
        _ => match only {
            Some(device) => bail!("no data of device {device} in {name}"),
            None => bail!("no data in {name} that pv3 can decode"),
        },
    }
}

/// Prints one snapshot per device with data, at `now`.
fn print(state: &WatchState, now: Timestamp, format: SnapshotFormat) -> Result<()> {
    let snapshots: Vec<Snapshot> = state
        .device_ids()
        .filter_map(|id| state.snapshot(id, now))
        .collect();
    let mut text = String::new();
    for snapshot in &snapshots {
        match format {
            SnapshotFormat::Json => {
                text.push_str(&serde_json::to_string(snapshot).context("cannot encode")?);
                text.push('\n');
            }
            SnapshotFormat::Table => {
                text.push_str(&table(state, snapshot));
                text.push('\n');
            }
        }
    }
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("cannot write the snapshot"),
        _ => Ok(()),
    }
}

fn table(state: &WatchState, snapshot: &Snapshot) -> String {
    #[derive(Tabled)]
    struct Row {
        metric: String,
        value: String,
        unit: &'static str,
        age: String,
        topic: String,
    }
    let device = state.device(&snapshot.device_id);
    let rows = snapshot.metrics.iter().map(|(metric, m)| Row {
        metric: metric.clone(),
        // Energy to the watt-hour: its float sums are noise past that.
        value: if m.unit == crate::energy::ENERGY_UNIT {
            format!("{:.3}", m.value)
        } else {
            m.value.to_string()
        },
        unit: m.unit,
        age: format!("{:.1} s", snapshot.time.seconds_since(m.timestamp).max(0.0)),
        topic: device
            .and_then(|d| d.get(metric))
            .and_then(|l| P3Topic::parse(&l.topic).map(|t| t.suffix.to_owned()))
            .unwrap_or_else(|| "(energy since start)".into()),
    });
    let mut table = Table::new(rows);
    table.with(Style::rounded());
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    format!(
        "{} at {}: alarms active: {}; stale topics: {}\n{table}",
        snapshot.device_id,
        snapshot.time,
        list(&snapshot.alarms_active),
        list(&snapshot.stale),
    )
}
