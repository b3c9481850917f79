//! Live counters of the outputs beside the API, and what collect knows of
//! its input, shared with `status.json` and Prometheus's `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::forward::ForwardStats;
use crate::pipeline::DecodeCounts;
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
    /// Whether what the output publishes arrives (an MQTT output checks
    /// its own messages come back): [`UNKNOWN`], [`DELIVERING`] or
    /// [`NOT_DELIVERING`].
    delivering: AtomicU8,
}

/// Not (yet) known whether the output's messages arrive.
const UNKNOWN: u8 = 0;
/// The output's messages arrive.
const DELIVERING: u8 = 1;
/// The output's messages do not arrive (a broker that drops them).
const NOT_DELIVERING: u8 = 2;

impl OutputStats {
    /// Zeroed counters for the output `name`.
    pub fn new(name: &'static str) -> Arc<OutputStats> {
        Arc::new(OutputStats {
            name,
            connected: AtomicBool::new(false),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            delivering: AtomicU8::new(UNKNOWN),
        })
    }

    /// Records whether what the output publishes arrives (`None`: not
    /// known, as after a reconnect).
    pub fn set_delivering(&self, arriving: Option<bool>) {
        let value = match arriving {
            None => UNKNOWN,
            Some(true) => DELIVERING,
            Some(false) => NOT_DELIVERING,
        };
        self.delivering.store(value, Ordering::Relaxed);
    }

    /// Whether what the output publishes arrives, if known.
    pub fn delivering(&self) -> Option<bool> {
        match self.delivering.load(Ordering::Relaxed) {
            DELIVERING => Some(true),
            NOT_DELIVERING => Some(false),
            _ => None,
        }
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
            delivering: self.delivering(),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_at: (last > 0).then(|| {
                Timestamp::from_unix_micros(i64::try_from(last).unwrap_or(0).saturating_mul(1000))
                    .to_rfc3339()
            }),
        }
    }
}

/// What collect knows about its input and its outputs: the one copy of
/// its counters that `status.json`, `/metrics`, the progress line and the
/// stop line all read.
#[derive(Debug, Default)]
pub struct Health {
    input: Mutex<Input>,
    /// The API output's counters, when it is on.
    pub api: Option<Arc<ForwardStats>>,
    /// The other outputs' counters.
    pub outputs: Vec<Arc<OutputStats>>,
}

/// collect's input: what the pipeline counted, and the last message.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Input {
    /// The pipeline's counts, as of the last message.
    pub counts: DecodeCounts,
    /// When the last message was received (wall clock, for reports).
    pub last_message: Option<Timestamp>,
    /// The same moment on the monotonic clock (ages that a clock step,
    /// such as a Pi's first NTP sync, must not upset: the watchdog).
    pub last_heard: Option<Instant>,
}

impl Health {
    /// The API's and the other outputs' counters, nothing heard yet.
    pub fn new(api: Option<Arc<ForwardStats>>, outputs: Vec<Arc<OutputStats>>) -> Health {
        Health {
            input: Mutex::default(),
            api,
            outputs,
        }
    }

    /// One message taken: the pipeline's counts after it, and its time.
    pub fn heard(&self, counts: DecodeCounts, at: Timestamp) {
        *self.input.lock().unwrap_or_else(PoisonError::into_inner) = Input {
            counts,
            last_message: Some(at),
            last_heard: Some(Instant::now()),
        };
    }

    /// A snapshot of the input's counters and last message.
    pub fn input(&self) -> Input {
        *self.input.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
