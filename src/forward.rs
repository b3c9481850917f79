//! Batching, retry and delivery to the API: what `collect` and `replay`
//! share. They differ only in their source and in [`ForwardOptions`].
//!
//! One task owns all the state, so there are no locks on the hot path:
//!
//! ```text
//! readings ─▶ open batch per device ─(size or linger)─▶ ready queue ─▶ POSTs in flight
//!                                                          ▲                  │
//!                                                          └── transient ─────┘
//! ```
//!
//! A batch is serialised once, when it is opened and filled, so a retry
//! resends the same bytes and the queue's memory is the JSON it will send.
//! The task never waits on the network itself: POSTs run as child tasks, so
//! a slow or dead API never stops readings from being accepted.
//!
//! With [`Storage`] (collect), the healthy path stays in memory (nothing is
//! written: SD cards wear out). The first transient failure, or the memory
//! queue passing its bound, switches to *spooling*: what is in memory and
//! every batch after it go to the on-disk [`Spool`] in order, and are sent
//! from there one at a time, each removed only after a 2xx. Once the spool is
//! empty, the memory path resumes. On stop, whatever is still in memory is
//! spooled, so the next start sends it. Batches the API refuses for good go
//! to `rejected.jsonl`. Without storage (replay: the file is its own
//! spool), what is still queued at a stop comes back in [`ForwardReport`].

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use crate::api::{ApiClient, PostError};
use crate::backoff::Backoff;
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::{ApiMeasurement, Reading};
use crate::spool::Spool;

/// What to do when the in-memory queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Live data keeps flowing: the oldest ready batch is dropped (counted).
    DropOldest,
    /// A file can wait: stop taking readings until there is room.
    Wait,
}

#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// Measurements per POST.
    pub batch_size: usize,
    /// How long a batch may wait to fill before it is sent anyway.
    pub linger: Duration,
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// Measurements held in memory (open, ready and in flight).
    pub queue_limit: usize,
    pub overflow: Overflow,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Send alarm states to the alarms endpoint.
    pub send_alarms: bool,
    /// Stop when nothing has been delivered for this long while failing
    /// (replay: a backfill should not hang forever). `None`: never.
    pub give_up: Option<Duration>,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            batch_size: 500,
            linger: Duration::from_millis(250),
            concurrency: 1,
            queue_limit: 100_000,
            overflow: Overflow::DropOldest,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            send_alarms: true,
            give_up: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    Measurements,
    Alarms,
}

/// One POST's worth: a JSON body ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    pub device: Arc<str>,
    pub kind: BatchKind,
    pub body: Bytes,
    /// Measurements in the body (alarm batches: 0).
    pub count: usize,
}

/// Live counters, readable while the forwarder runs (status line, status
/// file).
#[derive(Debug, Default)]
pub struct ForwardStats {
    pub delivered: AtomicU64,
    pub alarms_delivered: AtomicU64,
    pub queued: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub posts: AtomicU64,
    /// Measurements written to the spool, in all.
    pub spooled: AtomicU64,
    /// What the spool holds now.
    pub spool_batches: AtomicU64,
    pub spool_measurements: AtomicU64,
    pub spool_bytes: AtomicU64,
    /// Unix milliseconds of the last 2xx (0: never).
    pub last_delivery_ms: AtomicU64,
}

impl ForwardStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the forwarder did, once it has finished.
#[derive(Debug, Default)]
pub struct ForwardReport {
    pub delivered: u64,
    pub alarms_delivered: u64,
    pub rejected: u64,
    pub dropped: u64,
    /// Batches not delivered when it stopped (grace period over, or gave up).
    pub undelivered: Vec<Batch>,
    /// It stopped because the API failed for longer than `give_up`.
    pub gave_up: bool,
    /// Measurements left in the spool for the next start.
    pub left_in_spool: u64,
}

impl ForwardReport {
    pub fn undelivered_measurements(&self) -> u64 {
        self.undelivered.iter().map(|b| b.count as u64).sum()
    }
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

#[derive(Debug, thiserror::Error)]
#[error("the forwarder has stopped")]
pub struct Stopped;

/// `rejected.jsonl` stops growing here (a misbehaving API must not fill the
/// SD card with dead letters).
const MAX_DEAD_LETTER_BYTES: u64 = 64 << 20;

/// Where collect keeps what the API has not taken yet: the state
/// directory. The spool file exists only while it holds something: it is
/// created at the first failure and deleted once drained, so the healthy
/// path writes nothing to disk (and redb files, which do not shrink, never
/// keep an outage's worth of space).
pub struct Storage {
    /// The state directory, open and `flock`ed for as long as collect runs:
    /// two collectors on one state dir would send everything twice.
    _lock: std::fs::File,
    dir: PathBuf,
    max_bytes: u64,
    spool: Option<Spool>,
    /// The dead-letter file for batches the API refused.
    rejected: PathBuf,
}

impl Storage {
    /// Uses `dir` (created if missing); opens a spool left by an earlier
    /// run, if there is one.
    pub fn open(dir: &std::path::Path, max_bytes: u64) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create state directory {}: {e} (see --state-dir)",
                dir.display()
            )
        })?;
        let lock = std::fs::File::open(dir)
            .map_err(|e| anyhow::anyhow!("cannot open state directory {}: {e}", dir.display()))?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => anyhow::anyhow!(
                    "state directory {} is in use: is another pv3 collect running with it? (see --state-dir)",
                    dir.display()
                ),
                std::fs::TryLockError::Error(e) => {
                    anyhow::anyhow!("cannot lock state directory {}: {e}", dir.display())
                }
            });
        }
        let spool = if dir.join(crate::spool::FILE_NAME).exists() {
            Some(Spool::open(dir, max_bytes)?)
        } else {
            None
        };
        Ok(Storage {
            _lock: lock,
            dir: dir.to_owned(),
            max_bytes,
            spool,
            rejected: dir.join("rejected.jsonl"),
        })
    }

    fn spool(&self) -> Option<&Spool> {
        self.spool.as_ref()
    }

    fn spool_mut(&mut self) -> anyhow::Result<&mut Spool> {
        if self.spool.is_none() {
            self.spool = Some(Spool::open(&self.dir, self.max_bytes)?);
        }
        self.spool
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("spool unavailable"))
    }

    /// Deletes the spool file once it is empty.
    fn close_if_empty(&mut self) {
        if self.spool.as_ref().is_some_and(Spool::is_empty)
            && let Some(spool) = self.spool.take()
        {
            let path = spool.path().to_owned();
            drop(spool);
            if let Err(e) = std::fs::remove_file(&path) {
                warn!("cannot remove the empty spool {}: {e}", path.display());
            }
        }
    }

    fn measurements(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::measurements)
    }
}

/// Handle to the forwarding task.
pub struct Forwarder {
    tx: Option<mpsc::Sender<Reading>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<ForwardReport>,
    stats: Arc<ForwardStats>,
}

impl Forwarder {
    pub fn start(api: ApiClient, opts: ForwardOptions) -> Self {
        Self::start_with(api, opts, None)
    }

    /// [`Self::start`] with a spool and a dead-letter file.
    pub fn start_with(api: ApiClient, opts: ForwardOptions, storage: Option<Storage>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(ForwardStats::default());
        let spooling = storage
            .as_ref()
            .and_then(Storage::spool)
            .is_some_and(|s| !s.is_empty());
        if let Some(spool) = storage.as_ref().and_then(Storage::spool)
            && spooling
        {
            info!(
                "{} measurements from an earlier run wait in {}: sending them first",
                spool.measurements(),
                spool.path().display()
            );
        }
        let worker = Worker {
            storage,
            spooling,
            backoff: Backoff::new(opts.retry_initial, opts.retry_max),
            api,
            opts: ForwardOptions {
                batch_size: opts.batch_size.max(1),
                concurrency: opts.concurrency.max(1),
                ..opts
            },
            stats: stats.clone(),
            open: HashMap::new(),
            ready: VecDeque::new(),
            inflight: JoinSet::new(),
            inflight_batches: HashMap::new(),
            queued: 0,
            paused_until: None,
            failing_since: None,
            report: ForwardReport::default(),
            limiter: RateLimiter::new(Duration::from_secs(60)),
        };
        worker.publish_spool();
        let task = tokio::spawn(worker.run(rx, stop_rx));
        Forwarder {
            tx: Some(tx),
            stop,
            task,
            stats,
        }
    }

    /// Queues a reading. Waits only when the queue is full and the overflow
    /// policy is [`Overflow::Wait`].
    pub async fn send(&self, reading: Reading) -> Result<(), Stopped> {
        match &self.tx {
            Some(tx) => tx.send(reading).await.map_err(|_| Stopped),
            None => Err(Stopped),
        }
    }

    /// A handle for feeding readings from a plain thread (replay reads
    /// files outside the async runtime). [`Self::finish`] waits until every
    /// such handle is dropped.
    pub fn sender(&self) -> Option<ForwardSender> {
        self.tx.clone().map(ForwardSender)
    }

    pub fn stats(&self) -> Arc<ForwardStats> {
        self.stats.clone()
    }

    /// Stops taking readings, sends what is queued, and returns the report.
    /// With a grace period, whatever is not delivered by then is returned in
    /// [`ForwardReport::undelivered`] instead of being waited for.
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
pub struct ForwardSender(mpsc::Sender<Reading>);

impl ForwardSender {
    /// Queues a reading, blocking the thread while the queue is full.
    /// Must not be called from async code.
    pub fn blocking_send(&self, reading: Reading) -> Result<(), Stopped> {
        self.0.blocking_send(reading).map_err(|_| Stopped)
    }
}

struct OpenBatch {
    body: Vec<u8>,
    count: usize,
    deadline: Instant,
}

/// Where an in-flight batch came from.
#[derive(Clone, PartialEq, Eq)]
enum Source {
    Memory,
    /// The spool, under these keys (several spooled batches of one device
    /// are sent as one POST): removed from it on a final answer.
    Spool(Vec<u64>),
}

/// Spooled batches read at once when draining.
const DRAIN_LOOKAHEAD: usize = 64;

struct Worker {
    storage: Option<Storage>,
    /// Sending from the spool (see the module docs).
    spooling: bool,
    api: ApiClient,
    opts: ForwardOptions,
    stats: Arc<ForwardStats>,
    open: HashMap<Arc<str>, OpenBatch>,
    ready: VecDeque<Batch>,
    inflight: JoinSet<Result<(), PostError>>,
    inflight_batches: HashMap<tokio::task::Id, (Batch, Source)>,
    /// Measurements held: open + ready + in flight.
    queued: usize,
    backoff: Backoff,
    /// No new POSTs before this (backing off after a failure).
    paused_until: Option<Instant>,
    /// Set while the API is failing; one POST at a time then.
    failing_since: Option<Instant>,
    report: ForwardReport,
    limiter: RateLimiter,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Reading>,
        mut stop: watch::Receiver<bool>,
    ) -> ForwardReport {
        let mut input_open = true;
        loop {
            self.dispatch();
            if !input_open && self.ready.is_empty() && self.inflight.is_empty() && !self.spooling {
                break;
            }
            if !input_open && self.spooling {
                // Stopping while the API is away: the spool keeps the rest.
                break;
            }
            let linger = self.open.values().map(|b| b.deadline).min();
            let accepting = input_open
                && (self.opts.overflow == Overflow::DropOldest
                    || self.queued < self.opts.queue_limit);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(done) = self.inflight.join_next_with_id(), if !self.inflight.is_empty() => {
                    self.complete(done);
                }
                reading = rx.recv(), if accepting => match reading {
                    Some(reading) => {
                        self.add(reading);
                        // Take what else is waiting without a trip through select.
                        while self.opts.overflow == Overflow::DropOldest
                            || self.queued < self.opts.queue_limit
                        {
                            match rx.try_recv() {
                                Ok(reading) => self.add(reading),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        input_open = false;
                        self.seal_all();
                    }
                },
                _ = sleep_until(linger.unwrap_or(far)), if linger.is_some() => self.seal_due(),
                _ = sleep_until(self.paused_until.unwrap_or(far)), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
            }
            if let (Some(limit), Some(since)) = (self.opts.give_up, self.failing_since)
                && since.elapsed() >= limit
            {
                error!(
                    "giving up: the API has taken nothing for {:.0} s; {} measurements undelivered",
                    limit.as_secs_f64(),
                    self.queued
                );
                self.report.gave_up = true;
                break;
            }
        }
        self.seal_all();
        self.inflight.abort_all();
        let mut undelivered: Vec<Batch> = self
            .inflight_batches
            .drain()
            .filter(|(_, (_, source))| matches!(source, Source::Memory))
            .map(|(_, (batch, _))| batch)
            .collect();
        undelivered.extend(self.ready.drain(..));
        if self.storage.is_some() {
            // Keep it for the next start (in flight ones may arrive twice:
            // at-least-once).
            self.spool_batches(undelivered);
            self.report.left_in_spool = self.spooled_measurements();
        } else {
            self.report.undelivered = undelivered;
        }
        self.queued = 0;
        self.publish_queued();
        self.report
    }

    fn add(&mut self, reading: Reading) {
        let device = &reading.origin.device_id;
        for m in &reading.measurements {
            let open = self
                .open
                .entry(device.clone())
                .or_insert_with(|| OpenBatch {
                    body: Vec::with_capacity(256 * self.opts.batch_size.min(1000)),
                    count: 0,
                    deadline: Instant::now() + self.opts.linger,
                });
            open.body.push(if open.count == 0 { b'[' } else { b',' });
            let item = ApiMeasurement {
                measurement: m,
                timestamp: reading.timestamp,
                source_topic: &reading.origin.topic,
            };
            // Serialising finite numbers and strings into a Vec cannot fail.
            if serde_json::to_writer(&mut open.body, &item).is_err() {
                continue;
            }
            open.count += 1;
            self.queued += 1;
            if open.count >= self.opts.batch_size {
                self.seal(device.clone());
            }
        }
        if let (true, Some(alarms)) = (self.opts.send_alarms, &reading.alarms)
            && let Ok(body) = serde_json::to_vec(alarms)
        {
            self.enqueue(Batch {
                device: device.clone(),
                kind: BatchKind::Alarms,
                body: Bytes::from(body),
                count: 0,
            });
        }
        self.enforce_limit();
        self.publish_queued();
    }

    fn seal(&mut self, device: Arc<str>) {
        if let Some(mut open) = self.open.remove(&device) {
            open.body.push(b']');
            self.enqueue(Batch {
                device,
                kind: BatchKind::Measurements,
                body: Bytes::from(open.body),
                count: open.count,
            });
        }
    }

    /// A sealed batch joins the queue: in memory, or behind the others in
    /// the spool while spooling.
    fn enqueue(&mut self, batch: Batch) {
        if self.spooling {
            self.spool_batches(vec![batch]);
        } else {
            self.ready.push_back(batch);
        }
    }

    fn seal_due(&mut self) {
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .open
            .iter()
            .filter(|(_, b)| b.deadline <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for device in due {
            self.seal(device);
        }
    }

    fn seal_all(&mut self) {
        let all: Vec<Arc<str>> = self.open.keys().cloned().collect();
        for device in all {
            self.seal(device);
        }
    }

    /// Starts spooling (when there is a spool): what waits in memory goes
    /// to disk first, then everything after it.
    fn start_spooling(&mut self, reason: &str) {
        if self.spooling || self.storage.is_none() {
            return;
        }
        self.spooling = true;
        let waiting: Vec<Batch> = self.ready.drain(..).collect();
        let n: usize = waiting.iter().map(|b| b.count).sum();
        if let Some(storage) = &self.storage {
            info!(
                "{reason}: spooling to {} ({n} measurements so far)",
                storage.dir.join(crate::spool::FILE_NAME).display()
            );
        }
        self.spool_batches(waiting);
    }

    /// Writes batches to the spool; on a write failure (disk full, say) they
    /// stay in memory, with a loud error, rather than vanish.
    fn spool_batches(&mut self, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let Some(storage) = self.storage.as_mut() else {
            self.ready.extend(batches);
            return;
        };
        let n: usize = batches.iter().map(|b| b.count).sum();
        match storage.spool_mut().and_then(|spool| spool.push(&batches)) {
            Ok(evicted) => {
                debug!(
                    "spooled {n} measurements; the spool holds {}",
                    storage.measurements()
                );
                self.queued = self.queued.saturating_sub(n);
                self.stats.spooled.fetch_add(n as u64, Ordering::Relaxed);
                if evicted.batches > 0 {
                    self.report.dropped += evicted.measurements;
                    self.stats
                        .dropped
                        .fetch_add(evicted.measurements, Ordering::Relaxed);
                    if let Some(k) = self.limiter.allow("spool full") {
                        warn!(
                            "spool full (--spool-max-mb): dropped the oldest {} measurements, {} dropped so far{}",
                            evicted.measurements,
                            self.report.dropped,
                            suppressed_note(k)
                        );
                    }
                }
            }
            Err(e) => {
                if let Some(k) = self.limiter.allow("spool write") {
                    error!(
                        "cannot write to the spool ({e:#}): keeping {n} measurements in memory only{}",
                        suppressed_note(k)
                    );
                }
                self.ready.extend(batches);
                self.enforce_limit();
            }
        }
        self.publish_spool();
        self.publish_queued();
    }

    /// Over the memory bound: spool if there is a spool, else drop the
    /// oldest ready batches (live data only; with [`Overflow::Wait`] the
    /// input simply stops).
    fn enforce_limit(&mut self) {
        if self.queued <= self.opts.queue_limit {
            return;
        }
        if self.storage.is_some() && !self.spooling {
            self.start_spooling("in-memory queue full");
            return;
        }
        if self.opts.overflow != Overflow::DropOldest {
            return;
        }
        let mut dropped = 0;
        while self.queued > self.opts.queue_limit {
            let Some(oldest) = self.ready.pop_front() else {
                break;
            };
            self.queued -= oldest.count;
            dropped += oldest.count as u64;
        }
        if dropped > 0 {
            self.report.dropped += dropped;
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            if let Some(n) = self.limiter.allow("dropped") {
                warn!(
                    "in-memory queue full ({} measurements): dropped the oldest {dropped}, {} dropped so far{}",
                    self.opts.queue_limit,
                    self.report.dropped,
                    suppressed_note(n)
                );
            }
        }
    }

    fn dispatch(&mut self) {
        if self.paused_until.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.paused_until = None;
        if self.spooling {
            self.dispatch_from_spool();
            return;
        }
        // While the API is failing, probe with one request at a time.
        let limit = if self.failing_since.is_some() {
            1
        } else {
            self.opts.concurrency
        };
        while self.inflight.len() < limit {
            let Some(batch) = self.ready.pop_front() else {
                break;
            };
            self.spawn_post(batch, Source::Memory);
        }
    }

    /// One batch at a time from the spool, oldest first: order is kept, and
    /// nothing else is in flight to race it.
    fn dispatch_from_spool(&mut self) {
        if !self.inflight.is_empty() {
            return;
        }
        let Some(storage) = self.storage.as_mut() else {
            return;
        };
        // No spool file: nothing spooled (do not create one just to look).
        let oldest = storage
            .spool
            .as_mut()
            .map_or(Ok(Vec::new()), |spool| spool.oldest(DRAIN_LOOKAHEAD));
        match oldest {
            Ok(batches) => match merge_oldest(batches, self.opts.batch_size.max(1000)) {
                Some((keys, batch)) => self.spawn_post(batch, Source::Spool(keys)),
                // Batches the spool could not take (a write error) wait in
                // memory: send those before leaving spool mode.
                None => match self.ready.pop_front() {
                    Some(batch) => self.spawn_post(batch, Source::Memory),
                    None => {
                        self.spooling = false;
                        info!("spool drained: back to the memory path");
                        if let Some(storage) = self.storage.as_mut() {
                            storage.close_if_empty();
                        }
                        self.publish_spool();
                    }
                },
            },
            Err(e) => {
                if let Some(k) = self.limiter.allow("spool read") {
                    error!("cannot read the spool ({e:#}){}", suppressed_note(k));
                }
                let delay = self.backoff.next_delay();
                self.paused_until = Some(Instant::now() + delay);
            }
        }
    }

    fn spawn_post(&mut self, batch: Batch, source: Source) {
        let api = self.api.clone();
        let (device, body, kind) = (batch.device.clone(), batch.body.clone(), batch.kind);
        let handle = self.inflight.spawn(async move {
            match kind {
                BatchKind::Measurements => api.post_measurements(&device, body).await,
                BatchKind::Alarms => api.post_alarms(&device, body).await,
            }
        });
        self.stats.posts.fetch_add(1, Ordering::Relaxed);
        self.inflight_batches.insert(handle.id(), (batch, source));
    }

    fn complete(
        &mut self,
        done: Result<(tokio::task::Id, Result<(), PostError>), tokio::task::JoinError>,
    ) {
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(e) => (
                e.id(),
                Err(PostError::Transient {
                    reason: format!("request task failed: {e}"),
                    retry_after: None,
                }),
            ),
        };
        let Some((batch, source)) = self.inflight_batches.remove(&id) else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(since) = self.failing_since.take() {
                    info!(
                        "API is taking data again after {:.0} s; {} measurements queued",
                        since.elapsed().as_secs_f64(),
                        self.queued + self.spooled_measurements() as usize
                    );
                }
                self.backoff.reset();
                self.settle(&batch, source);
                let now_ms = crate::reading::Timestamp::now().unix_micros() / 1000;
                self.stats
                    .last_delivery_ms
                    .store(u64::try_from(now_ms).unwrap_or(0), Ordering::Relaxed);
                match batch.kind {
                    BatchKind::Measurements => {
                        self.report.delivered += batch.count as u64;
                        self.stats
                            .delivered
                            .fetch_add(batch.count as u64, Ordering::Relaxed);
                    }
                    BatchKind::Alarms => {
                        self.report.alarms_delivered += 1;
                        self.stats.alarms_delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(PostError::Rejected { status, body }) => {
                self.settle(&batch, source);
                self.report.rejected += batch.count as u64;
                self.stats
                    .rejected
                    .fetch_add(batch.count as u64, Ordering::Relaxed);
                let kept = self.dead_letter(&batch, status, &body);
                if let Some(n) = self.limiter.allow(&format!("rejected {status}")) {
                    warn!(
                        "API refused a batch for device {} with HTTP {status} ({} measurements set aside{}): {body}{}",
                        batch.device,
                        batch.count,
                        kept,
                        suppressed_note(n)
                    );
                }
            }
            Err(err) => self.failed(batch, source, err),
        }
    }

    /// A transient or authorisation failure: back off, keep the batch.
    fn failed(&mut self, batch: Batch, source: Source, err: PostError) {
        let retry_after = match &err {
            PostError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        };
        let delay = retry_after
            .unwrap_or_else(|| self.backoff.next_delay())
            .min(self.opts.retry_max);
        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let first = self.failing_since.is_none();
        self.failing_since.get_or_insert_with(Instant::now);
        let what = match &err {
            PostError::Misconfigured { status, body, hint } => {
                format!("API answered HTTP {status} ({body}): {hint}; data is kept and retried")
            }
            other => format!("API not taking data ({other})"),
        };
        let queued = self.queued + self.spooled_measurements() as usize;
        if first {
            warn!(
                "{what}; retrying in {:.1} s, {queued} measurements queued",
                delay.as_secs_f64()
            );
        } else if let Some(n) = self.limiter.allow("transient") {
            warn!(
                "{what}; still retrying (next in {:.1} s), {queued} measurements queued{}",
                delay.as_secs_f64(),
                suppressed_note(n)
            );
        } else {
            debug!("{what}; retry in {:.1} s", delay.as_secs_f64());
        }
        match source {
            // Still in the spool: it is retried from there.
            Source::Spool(_) => {}
            Source::Memory if self.spooling => self.spool_batches(vec![batch]),
            Source::Memory => {
                self.ready.push_front(batch);
                self.start_spooling("API unavailable");
            }
        }
        let until = Instant::now() + delay;
        self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
    }

    /// Appends a refused batch to `rejected.jsonl`; " (in <path>)" on
    /// success, for the log line.
    fn dead_letter(&mut self, batch: &Batch, status: u16, response: &str) -> String {
        let Some(storage) = &self.storage else {
            return String::new();
        };
        let size = std::fs::metadata(&storage.rejected).map_or(0, |m| m.len());
        if size >= MAX_DEAD_LETTER_BYTES {
            if let Some(k) = self.limiter.allow("dead letters full") {
                error!(
                    "{} has reached {} MiB: refused batches are no longer kept (move it away to start a new one){}",
                    storage.rejected.display(),
                    MAX_DEAD_LETTER_BYTES >> 20,
                    suppressed_note(k)
                );
            }
            return String::new();
        }
        #[derive(serde::Serialize)]
        struct Rejected<'a> {
            rejected_at: crate::reading::Timestamp,
            device_id: &'a str,
            endpoint: &'a str,
            status: u16,
            response: &'a str,
            body: &'a serde_json::value::RawValue,
        }
        let raw = std::str::from_utf8(&batch.body)
            .ok()
            .and_then(|text| serde_json::value::RawValue::from_string(text.to_owned()).ok());
        let Some(raw) = raw else {
            return String::new();
        };
        let line = Rejected {
            rejected_at: crate::reading::Timestamp::now(),
            device_id: &batch.device,
            endpoint: match batch.kind {
                BatchKind::Measurements => "measurements/batch",
                BatchKind::Alarms => "alarms",
            },
            status,
            response,
            body: &raw,
        };
        let written = serde_json::to_vec(&line)
            .map_err(std::io::Error::other)
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&storage.rejected)?;
                std::io::Write::write_all(&mut file, &bytes)?;
                file.sync_data()
            });
        match written {
            Ok(()) => format!(" in {}", storage.rejected.display()),
            Err(e) => {
                error!("cannot write {}: {e}", storage.rejected.display());
                String::new()
            }
        }
    }

    /// A batch has left the queue for good (delivered or set aside).
    fn settle(&mut self, batch: &Batch, source: Source) {
        match source {
            Source::Memory => self.queued = self.queued.saturating_sub(batch.count),
            Source::Spool(key) => {
                if let Some(storage) = self.storage.as_mut()
                    && let Err(e) = storage.spool_mut().and_then(|spool| spool.remove_all(&key))
                {
                    error!(
                        "cannot remove a delivered batch from the spool ({e:#}): it may be sent again"
                    );
                }
                self.publish_spool();
            }
        }
        self.publish_queued();
    }

    fn spooled_measurements(&self) -> u64 {
        self.storage.as_ref().map_or(0, Storage::measurements)
    }

    fn publish_queued(&self) {
        self.stats
            .queued
            .store(self.queued as u64, Ordering::Relaxed);
    }

    fn publish_spool(&self) {
        let spool = self.storage.as_ref().and_then(Storage::spool);
        self.stats
            .spool_batches
            .store(spool.map_or(0, Spool::batches), Ordering::Relaxed);
        self.stats
            .spool_measurements
            .store(spool.map_or(0, Spool::measurements), Ordering::Relaxed);
        self.stats
            .spool_bytes
            .store(spool.map_or(0, Spool::bytes), Ordering::Relaxed);
    }
}

/// The oldest spooled batch, with the ones right after it for the same
/// device merged in (up to `max` measurements): spooled batches are sealed
/// every linger interval, so an outage leaves many small ones, and sending
/// them one POST each would make draining slow. Order is kept: merging stops
/// at the first batch of another device or kind.
fn merge_oldest(batches: Vec<(u64, Batch)>, max: usize) -> Option<(Vec<u64>, Batch)> {
    let mut batches = batches.into_iter();
    let (key, first) = batches.next()?;
    if first.kind != BatchKind::Measurements {
        return Some((vec![key], first));
    }
    let mut keys = vec![key];
    let mut parts = vec![first.body.clone()];
    let mut count = first.count;
    for (key, next) in batches {
        if next.kind != BatchKind::Measurements
            || next.device != first.device
            || count + next.count > max
        {
            break;
        }
        keys.push(key);
        count += next.count;
        parts.push(next.body);
    }
    if keys.len() == 1 {
        return Some((keys, first));
    }
    // Each body is a JSON array: join their insides.
    let mut body = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    body.push(b'[');
    for (i, part) in parts.iter().enumerate() {
        let inner = part
            .strip_prefix(b"[")
            .and_then(|p| p.strip_suffix(b"]"))
            .unwrap_or(part);
        if inner.is_empty() {
            continue;
        }
        if i > 0 && body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(inner);
    }
    body.push(b']');
    Some((
        keys,
        Batch {
            device: first.device,
            kind: BatchKind::Measurements,
            body: Bytes::from(body),
            count,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(device: &str, kind: BatchKind, body: &str, count: usize) -> Batch {
        Batch {
            device: Arc::from(device),
            kind,
            body: Bytes::from(body.to_owned()),
            count,
        }
    }

    #[test]
    fn spooled_batches_of_one_device_drain_as_one_post() {
        let m = BatchKind::Measurements;
        let merged = merge_oldest(
            vec![
                (1, batch("A", m, "[1,2]", 2)),
                (2, batch("A", m, "[3]", 1)),
                (3, batch("B", m, "[4]", 1)),
                (4, batch("A", m, "[5]", 1)),
            ],
            1000,
        )
        .expect("a batch");
        assert_eq!(merged.0, [1, 2]);
        assert_eq!(&merged.1.body[..], b"[1,2,3]");
        assert_eq!(merged.1.count, 3);
        let v: serde_json::Value = serde_json::from_slice(&merged.1.body).expect("valid JSON");
        assert_eq!(v, serde_json::json!([1, 2, 3]));
    }

    #[test]
    fn merging_respects_the_size_and_never_mixes_alarms() {
        let m = BatchKind::Measurements;
        let a = BatchKind::Alarms;
        let merged = merge_oldest(
            vec![(1, batch("A", m, "[1]", 1)), (2, batch("A", m, "[2,3]", 2))],
            2,
        )
        .expect("a batch");
        assert_eq!(merged.0, [1]);
        let merged = merge_oldest(
            vec![(1, batch("A", a, "{}", 0)), (2, batch("A", m, "[2]", 1))],
            10,
        )
        .expect("a batch");
        assert_eq!((merged.0, merged.1.kind), (vec![1], a));
        let merged = merge_oldest(
            vec![(1, batch("A", m, "[1]", 1)), (2, batch("A", a, "{}", 0))],
            10,
        )
        .expect("a batch");
        assert_eq!(merged.0, [1]);
        assert!(merge_oldest(Vec::new(), 10).is_none());
    }
}
