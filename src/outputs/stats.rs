//! Live counters of the outputs beside the API, and what collect knows of
//! its input, shared with `status.json` and Prometheus's `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::forward::ForwardStats;
use crate::reading::Timestamp;
use crate::status::OutputReport;

/// One output's counters (MQTT publishing, Prometheus). Updated by the
/// output's own task, read by anyone.
#[derive(Debug)]
pub struct OutputStats {
    /// The output's name (`mqtt`, `prometheus`).
    pub name: &'static str,
    /// Connected to its destination (the output broker) or listening.
    pub connected: AtomicBool,
    /// Messages published (MQTT) or scrapes answered (Prometheus).
    pub published: AtomicU64,
    /// Values that could not be handed on and were replaced by newer ones
    /// or given up (a latest-value output never waits, see `outputs`).
    pub dropped: AtomicU64,
    /// Unix milliseconds of the last publish or scrape (0: never).
    pub last_ms: AtomicU64,
}

impl OutputStats {
    /// Zeroed counters for the output `name`.
    pub fn new(name: &'static str) -> Arc<OutputStats> {
        Arc::new(OutputStats {
            name,
            connected: AtomicBool::new(false),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Counts `n` published messages (or one scrape) now.
    pub fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
        let now = u64::try_from(Timestamp::now().unix_millis()).unwrap_or(0);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Counts `n` values dropped.
    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Records whether the output is connected.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// A snapshot for `status.json`.
    pub fn report(&self) -> OutputReport {
        let last = self.last_ms.load(Ordering::Relaxed);
        OutputReport {
            name: self.name.to_string(),
            connected: self.connected.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_at: (last > 0).then(|| {
                Timestamp::from_unix_micros(i64::try_from(last).unwrap_or(0).saturating_mul(1000))
                    .to_rfc3339()
            }),
        }
    }
}

/// What collect knows about its input and the API, for `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    /// Messages received from the P3's broker.
    pub received: AtomicU64,
    /// Messages that could not be decoded.
    pub decode_errors: AtomicU64,
    /// Unix milliseconds of the last P3 message (0: none yet).
    pub last_message_ms: AtomicU64,
    /// The API output's counters, when it is on.
    pub api: Option<Arc<ForwardStats>>,
    /// The other outputs' counters.
    pub outputs: Vec<Arc<OutputStats>>,
}
