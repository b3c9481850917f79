//! `status.json` of a running collector.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use crate::forward::ForwardStats;
use crate::outputs::{Health, OutputStats};
use crate::pipeline::Pipeline;
use crate::reading::Timestamp;
use crate::status::{self, Counters, Status};

/// Keeps `status.json` current (API mode only: a dry run has no state).
pub(super) struct StatusWriter {
    dir: Option<PathBuf>,
    pub(super) base: Status,
    pub(super) connected: Arc<AtomicBool>,
    /// The API's counters.
    health: Arc<Health>,
    /// The other outputs' counters.
    outputs: Vec<Arc<OutputStats>>,
    pub(super) last_message: Option<Timestamp>,
    pub(super) subscriptions: u64,
    failed_once: bool,
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
            last_message: None,
            subscriptions: 0,
            failed_once: false,
        }
    }

    pub(super) fn write(&mut self, pipeline: &Pipeline, device_hint: Option<String>) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let stats = self.health.api.clone().unwrap_or_default();
        let get = ForwardStats::get;
        let last_delivery = get(&stats.last_delivery_ms);
        let status = Status {
            updated_at: Timestamp::now().to_rfc3339(),
            broker_connected: self.connected.load(Ordering::Relaxed),
            subscriptions: self.subscriptions,
            last_message_at: self.last_message.map(Timestamp::to_rfc3339),
            last_delivery_at: (last_delivery > 0).then(|| {
                Timestamp::from_unix_micros(i64::try_from(last_delivery).unwrap_or(0) * 1000)
                    .to_rfc3339()
            }),
            counters: Counters {
                received: pipeline.counts.messages(),
                delivered: get(&stats.delivered),
                spooled: get(&stats.spooled),
                dropped: get(&stats.dropped),
                rejected: get(&stats.rejected),
                not_created: get(&stats.not_created),
                decode_errors: pipeline.counts.errors,
            },
            spool_batches: get(&stats.spool_batches),
            spool_measurements: get(&stats.spool_measurements),
            spool_bytes: get(&stats.spool_bytes),
            outputs: self.outputs.iter().map(|o| o.report()).collect(),
            device_hint,
            ..self.base.clone()
        };
        if let Err(e) = status::write(&dir, &status) {
            // Once: a read-only state dir should not flood the journal.
            if !self.failed_once {
                warn!("{e:#}");
                self.failed_once = true;
            }
        }
    }
}
