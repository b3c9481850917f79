//! `status.json` of a running collector.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;
use tracing::warn;

use crate::forward::ForwardStats;
use crate::outputs::{Health, OutputStats};
use crate::reading::Timestamp;
use crate::status::{self, Counters, Status};

/// Keeps `status.json` current (not in a dry run: it has no state). What
/// it writes comes from [`Health`], the counters every report reads; the
/// write itself (a file and a rename) runs off the runtime's thread.
pub(super) struct StatusWriter {
    dir: Option<PathBuf>,
    /// What never changes while the collector runs.
    base: Status,
    /// The MQTT link's state, kept by the subscription.
    connected: Arc<AtomicBool>,
    health: Arc<Health>,
    /// The outputs' counters (the API's are in `health`).
    outputs: Vec<Arc<OutputStats>>,
    subscriptions: u64,
    writing: Option<JoinHandle<()>>,
    /// A write failed already: a read-only state directory is said once.
    failed_once: Arc<AtomicBool>,
}

impl StatusWriter {
    pub(super) fn new(
        dir: Option<PathBuf>,
        broker: String,
        connected: Arc<AtomicBool>,
        health: Arc<Health>,
        outputs: Vec<Arc<OutputStats>>,
        no_api: bool,
    ) -> Self {
        let now = Timestamp::now().to_rfc3339();
        StatusWriter {
            dir,
            base: Status {
                version: 1,
                pid: std::process::id(),
                boot_id: status::boot_id(),
                pv3_version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: now.clone(),
                updated_at: now,
                broker,
                no_api,
                ..Status::default()
            },
            connected,
            health,
            outputs,
            subscriptions: 0,
            writing: None,
            failed_once: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The broker confirmed a subscription (one per connection).
    pub(super) fn subscribed(&mut self) {
        self.subscriptions += 1;
    }

    /// `--no-api`: nothing goes to the API.
    pub(super) fn no_api(&self) -> bool {
        self.base.no_api
    }

    /// The MQTT link is down for good (the stop).
    pub(super) fn disconnected(&self) {
        self.connected.store(false, Ordering::Relaxed);
    }

    /// What `status.json` says now.
    fn status(&self, device_hint: Option<String>) -> Status {
        let stats = self.health.api.clone().unwrap_or_default();
        let get = ForwardStats::get;
        let input = self.health.input();
        let last_delivery = get(&stats.last_delivery_ms);
        Status {
            updated_at: Timestamp::now().to_rfc3339(),
            broker_connected: self.connected.load(Ordering::Relaxed),
            subscriptions: self.subscriptions,
            last_message_at: input.last_message.map(Timestamp::to_rfc3339),
            last_delivery_at: (last_delivery > 0).then(|| {
                Timestamp::from_unix_micros(i64::try_from(last_delivery).unwrap_or(0) * 1000)
                    .to_rfc3339()
            }),
            counters: Counters {
                received: input.counts.messages(),
                delivered: get(&stats.delivered),
                spooled: get(&stats.spooled),
                dropped: get(&stats.dropped),
                rejected: get(&stats.rejected),
                not_created: get(&stats.not_created),
                decode_errors: input.counts.errors,
            },
            spool_batches: get(&stats.spool_batches),
            spool_measurements: get(&stats.spool_measurements),
            spool_bytes: get(&stats.spool_bytes),
            outputs: self.outputs.iter().map(|o| o.report()).collect(),
            device_hint,
            ..self.base.clone()
        }
    }

    /// Writes the file in the background, unless the last write is still
    /// under way (a slow SD card: the next tick writes again).
    pub(super) fn write(&mut self, device_hint: Option<String>) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let status = self.status(device_hint);
        let failed_once = self.failed_once.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = status::write(&dir, &status)
                && !failed_once.swap(true, Ordering::Relaxed)
            {
                warn!("{e:#}");
            }
        }));
    }

    /// Writes the file and waits for it: the last status, at the stop.
    pub(super) async fn write_now(&mut self, device_hint: Option<String>) {
        if let Some(running) = self.writing.take() {
            let _ = running.await;
        }
        self.write(device_hint);
        if let Some(running) = self.writing.take() {
            let _ = running.await;
        }
    }
}
