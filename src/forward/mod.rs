//! Batching, queueing, retry and delivery to the API: what `collect` and
//! `replay` share. They differ only in their source, in [`ForwardOptions`]
//! and in the queue behind the batcher.
//!
//! ```text
//! readings ─▶ Batcher ─(size or linger)─▶ dyn Queue ─▶ Dispatcher ─▶ API
//!             batch.rs                    queue.rs      dispatch.rs
//!                                           ▲   │ lease      │ verdict
//!                                           │   └────────────┤
//!                                 give back └────────────────┤ retry
//!                                 ack ◀──────────────────────┘ delivered / set aside (dead_letter.rs)
//! ```
//!
//! One task ([`worker`]) owns the batcher, the queue and the dispatcher, so
//! there are no locks on the hot path; POSTs run as child tasks and spool
//! I/O on the spool's own thread, so neither a slow API nor a slow disk
//! stalls the runtime that reads MQTT. The queue is [`Tiered`] for collect
//! (memory until the first failure, then the on-disk spool until drained)
//! and a plain [`MemoryQueue`] for replay (the file is its own spool).
//! Counters live in one place, [`ForwardStats`]; the report is a snapshot
//! of it.

mod batch;
mod dead_letter;
mod dispatch;
mod queue;
mod spool_queue;
mod tiered;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use batch::{Batch, BatchKind, Batcher, merge};
pub use dead_letter::{DeadLetter, DeadLetters};
pub use dispatch::{HTTP_RETRY_CAP, PROBE_EVERY};
pub use queue::{Lease, Len, MemoryQueue, Pushed, Queue, QueueError, QueueFuture, Tier};
pub use spool_queue::SpoolQueue;
pub use tiered::Tiered;

use crate::api::ApiClient;
use crate::reading::Reading;
use crate::state_dir::{StateDir, StateDirError, StateLock};

/// What to do when the in-memory queue is full and there is no spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Live data keeps flowing: the oldest batch is dropped (counted).
    DropOldest,
    /// A file can wait: stop taking readings until there is room.
    Wait,
}

/// Measurements per POST: `--batch-size`'s default.
pub const BATCH_SIZE: u32 = 1000;
/// How long a batch may wait to fill: `--linger-ms`'s default, in ms.
pub const LINGER_MS: u64 = 250;
/// Measurements held in memory: `--queue-max`'s default.
pub const QUEUE_MAX: u64 = 100_000;
/// The first wait after a failed POST (it doubles up to `--retry-max`).
pub const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// `--retry-max`'s default.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// How the forwarder batches and retries. [`Default`] is what
/// `pv3 collect` runs with when no flag says otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOptions {
    /// Measurements per POST (live and drained alike).
    pub batch_size: usize,
    /// How long a batch may wait to fill before it is sent anyway.
    pub linger: Duration,
    /// POSTs in flight at once while the API is healthy.
    pub concurrency: usize,
    /// Measurements held in memory (open, queued and in flight).
    pub queue_limit: usize,
    /// What to do past `queue_limit` without a spool.
    pub overflow: Overflow,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Send alarm states to the alarms endpoint.
    pub send_alarms: bool,
    /// Stop when nothing has been delivered for this long while failing
    /// (replay: a backfill should not hang forever). `None`: never.
    pub give_up: Option<Duration>,
    /// Stop at once when the API answers as if `--api-url` were wrong
    /// (404, 405, a redirect, a page that is not its JSON): replay has a
    /// person waiting; collect keeps retrying until the owner fixes it.
    pub fail_fast: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            batch_size: BATCH_SIZE as usize,
            linger: Duration::from_millis(LINGER_MS),
            concurrency: 1,
            queue_limit: QUEUE_MAX as usize,
            overflow: Overflow::DropOldest,
            retry_initial: RETRY_INITIAL,
            retry_max: RETRY_MAX,
            send_alarms: true,
            give_up: None,
            fail_fast: false,
        }
    }
}

/// Live counters, readable while the forwarder runs (status line, status
/// file): the one place they are kept.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Measurements the API accepted.
    pub delivered: AtomicU64,
    /// Alarm updates the API accepted.
    pub alarms_delivered: AtomicU64,
    /// Measurements held in memory (open batches, queued, in flight).
    pub queued: AtomicU64,
    /// Measurements the API refused for good (set aside).
    pub rejected: AtomicU64,
    /// Of those delivered, measurements the API's answer said it did not
    /// create (`201 {"created": n}` with n below what was sent). Not sent
    /// again: the API said it took the batch, and a resend could store
    /// what it did create twice.
    pub not_created: AtomicU64,
    /// Measurements dropped for lack of room.
    pub dropped: AtomicU64,
    /// POSTs that failed and will be retried.
    pub failed_attempts: AtomicU64,
    /// POSTs started.
    pub posts: AtomicU64,
    /// Measurements written to the spool, in all.
    pub spooled: AtomicU64,
    /// Batches the spool holds now.
    pub spool_batches: AtomicU64,
    /// Measurements the spool holds now.
    pub spool_measurements: AtomicU64,
    /// Bytes the spool holds now.
    pub spool_bytes: AtomicU64,
    /// Unix milliseconds of the last 2xx (0: never).
    pub last_delivery_ms: AtomicU64,
    /// Unix milliseconds since the API has been failing (0: it is not).
    pub failing_since_ms: AtomicU64,
}

impl ForwardStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }
}

/// What the forwarder did, once it has finished.
#[derive(Debug, Default)]
pub struct ForwardReport {
    /// Measurements delivered.
    pub delivered: u64,
    /// Alarm updates delivered.
    pub alarms_delivered: u64,
    /// Measurements set aside.
    pub rejected: u64,
    /// Of those delivered, measurements the API said it did not create.
    pub not_created: u64,
    /// Measurements dropped.
    pub dropped: u64,
    /// Batches not delivered when it stopped (grace period over, gave up,
    /// or a spool that would not take them).
    pub undelivered: Vec<Batch>,
    /// It stopped because the API failed for longer than `give_up`, or
    /// answered as if misconfigured with `fail_fast`.
    pub gave_up: bool,
    /// Why it gave up, for the summary.
    pub gave_up_because: Option<String>,
    /// Measurements left in the spool for the next start.
    pub left_in_spool: u64,
}

impl ForwardReport {
    /// Measurements in [`Self::undelivered`].
    pub fn undelivered_measurements(&self) -> u64 {
        self.undelivered.iter().map(|b| b.count as u64).sum()
    }
    /// Alarm updates in [`Self::undelivered`].
    pub fn undelivered_alarms(&self) -> u64 {
        self.undelivered
            .iter()
            .filter(|b| b.kind == BatchKind::Alarms)
            .count() as u64
    }
    /// Everything handed to it reached the API.
    pub fn is_complete(&self) -> bool {
        self.rejected == 0 && self.dropped == 0 && self.undelivered.is_empty()
    }
}

/// What goes into the forwarding task.
enum Input {
    /// A reading to deliver.
    Reading(Reading),
    /// Answer once everything handed over before is settled (delivered,
    /// set aside or dropped): open batches are sealed at once.
    Flush(oneshot::Sender<()>),
}

/// The forwarder no longer takes readings.
#[derive(Debug, thiserror::Error)]
#[error("the forwarder has stopped")]
pub struct Stopped;

/// Where collect keeps what the API has not taken yet: the locked state
/// directory, its spool (on its own thread) and its dead letters.
pub struct Storage {
    _lock: StateLock,
    spool: SpoolQueue,
    dead_letters: Arc<DeadLetters>,
}

impl Storage {
    /// Locks `dir` (created if missing) and opens a spool left by an
    /// earlier run, if there is one.
    pub fn open(dir: &StateDir, max_bytes: u64) -> Result<Storage, StorageError> {
        let lock = dir.lock()?;
        let dead_letters = Arc::new(DeadLetters::new(dir.dead_letters()));
        let spool =
            SpoolQueue::open(dir, max_bytes, dead_letters.clone()).map_err(StorageError::Spool)?;
        Ok(Storage {
            _lock: lock,
            spool,
            dead_letters,
        })
    }
}

/// Why [`Storage::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The directory is in use or cannot be used.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The spool cannot be opened.
    #[error("{0:#}")]
    Spool(anyhow::Error),
}

/// Handle to the forwarding task.
pub struct Forwarder {
    tx: Option<mpsc::Sender<Input>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<ForwardReport>,
    stats: Arc<ForwardStats>,
}

impl Forwarder {
    /// Forwards to `api` from memory only (replay).
    pub fn start(api: ApiClient, opts: ForwardOptions) -> Self {
        let queue: Box<dyn Queue> = match opts.overflow {
            Overflow::DropOldest => Box::new(MemoryQueue::bounded(opts.queue_limit as u64)),
            Overflow::Wait => Box::new(MemoryQueue::new()),
        };
        Self::with_queue(api, opts, queue, None)
    }

    /// Forwards to `api` through memory and, from the first failure, the
    /// spool in `storage` (collect).
    pub fn start_with(api: ApiClient, opts: ForwardOptions, storage: Storage) -> Self {
        if !storage.spool.is_empty() {
            info!(
                "{} measurements from an earlier run wait in {}: sending them first",
                storage.spool.len().measurements,
                storage.spool.path().display()
            );
        }
        let queue = Tiered::new(opts.queue_limit as u64, Box::new(storage.spool));
        Self::spawn(
            api,
            opts,
            Box::new(queue),
            Some(storage.dead_letters),
            Some(storage._lock),
        )
    }

    /// Forwards through any queue: what the two above do, open for tests
    /// (a queue that is slow on purpose, say). `dead_letters`: where refused
    /// batches go (logged only without).
    pub fn with_queue(
        api: ApiClient,
        opts: ForwardOptions,
        queue: Box<dyn Queue>,
        dead_letters: Option<Arc<DeadLetters>>,
    ) -> Self {
        Self::spawn(api, opts, queue, dead_letters, None)
    }

    fn spawn(
        api: ApiClient,
        opts: ForwardOptions,
        queue: Box<dyn Queue>,
        dead_letters: Option<Arc<DeadLetters>>,
        lock: Option<StateLock>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(ForwardStats::default());
        let parts = worker::Parts {
            api,
            opts,
            queue,
            dead_letters,
            lock,
        };
        let worker = worker::Worker::new(parts, stats.clone());
        let task = tokio::spawn(worker.run(rx, stop_rx));
        Forwarder {
            tx: Some(tx),
            stop,
            task,
            stats,
        }
    }

    /// Queues a reading. Waits only while the queue has no room (replay's
    /// [`Overflow::Wait`], or a worker busy with a slow disk).
    pub async fn send(&self, reading: Reading) -> Result<(), Stopped> {
        match &self.tx {
            Some(tx) => tx.send(Input::Reading(reading)).await.map_err(|_| Stopped),
            None => Err(Stopped),
        }
    }

    /// A handle for feeding readings from a plain thread (replay reads
    /// files outside the async runtime). [`Self::finish`] waits until every
    /// such handle is dropped.
    pub fn sender(&self) -> Option<ForwardSender> {
        self.tx.clone().map(ForwardSender)
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<ForwardStats> {
        self.stats.clone()
    }

    /// [`Self::finish`] with no grace period, cut short when `stop`
    /// resolves (a signal): what is not delivered then comes back in the
    /// report.
    pub async fn finish_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> ForwardReport {
        drop(self.tx.take());
        let joined = tokio::select! {
            joined = &mut self.task => joined,
            () = stop => {
                let _ = self.stop.send(true);
                (&mut self.task).await
            }
        };
        joined.unwrap_or_else(|e| {
            warn!("forwarding task failed: {e}");
            ForwardReport::default()
        })
    }

    /// Stops taking readings, sends what is queued, and returns the report.
    /// With a grace period, whatever is not delivered by then is spooled
    /// (collect) or returned in [`ForwardReport::undelivered`] (replay).
    pub async fn finish(mut self, grace: Option<Duration>) -> ForwardReport {
        drop(self.tx.take());
        let joined = match grace {
            None => (&mut self.task).await,
            Some(grace) => match tokio::time::timeout(grace, &mut self.task).await {
                Ok(joined) => joined,
                Err(_) => {
                    let _ = self.stop.send(true);
                    (&mut self.task).await
                }
            },
        };
        joined.unwrap_or_else(|e| {
            warn!("forwarding task failed: {e}");
            ForwardReport::default()
        })
    }
}

/// See [`Forwarder::sender`].
#[derive(Clone)]
pub struct ForwardSender(mpsc::Sender<Input>);

impl ForwardSender {
    /// Queues a reading, blocking the thread while the queue is full.
    /// Must not be called from async code.
    pub fn blocking_send(&self, reading: Reading) -> Result<(), Stopped> {
        self.0
            .blocking_send(Input::Reading(reading))
            .map_err(|_| Stopped)
    }

    /// Queues a reading, waiting while the queue is full.
    pub async fn send(&self, reading: Reading) -> Result<(), Stopped> {
        self.0
            .send(Input::Reading(reading))
            .await
            .map_err(|_| Stopped)
    }

    /// Waits for room for one reading, without giving it up yet: a wait cut
    /// short (a signal) leaves the reading with the caller, to be counted.
    pub async fn reserve(&self) -> Result<Room<'_>, Stopped> {
        self.0.reserve().await.map(Room).map_err(|_| Stopped)
    }

    /// Resolves once everything sent before has been delivered, set aside
    /// or dropped (what the API holds can then be asked for). Open batches
    /// are sent at once, not after `linger`.
    pub async fn flush(&self) -> Result<(), Stopped> {
        let (done, settled) = oneshot::channel();
        self.0.send(Input::Flush(done)).await.map_err(|_| Stopped)?;
        settled.await.map_err(|_| Stopped)
    }
}

/// Room for one reading in the forwarder (see [`ForwardSender::reserve`]).
pub struct Room<'a>(mpsc::Permit<'a, Input>);

impl Room<'_> {
    /// Hands the reading over.
    pub fn send(self, reading: Reading) {
        self.0.send(Input::Reading(reading));
    }
}
