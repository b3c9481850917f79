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
//! a slow or dead API never stops readings from being accepted. What is
//! still queued when the task is stopped comes back in [`ForwardReport`], so
//! that a caller can keep it (the spool) instead of losing it.

use std::collections::{HashMap, VecDeque};
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

/// Handle to the forwarding task.
pub struct Forwarder {
    tx: Option<mpsc::Sender<Reading>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<ForwardReport>,
    stats: Arc<ForwardStats>,
}

impl Forwarder {
    pub fn start(api: ApiClient, opts: ForwardOptions) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(ForwardStats::default());
        let worker = Worker {
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

struct Worker {
    api: ApiClient,
    opts: ForwardOptions,
    stats: Arc<ForwardStats>,
    open: HashMap<Arc<str>, OpenBatch>,
    ready: VecDeque<Batch>,
    inflight: JoinSet<Result<(), PostError>>,
    inflight_batches: HashMap<tokio::task::Id, Batch>,
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
            if !input_open && self.ready.is_empty() && self.inflight.is_empty() {
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
            if let (Some(limit), Some(since)) = (self.opts.give_up, self.failing_since) {
                if since.elapsed() >= limit {
                    error!(
                        "giving up: the API has taken nothing for {:.0} s; {} measurements undelivered",
                        limit.as_secs_f64(),
                        self.queued
                    );
                    self.report.gave_up = true;
                    break;
                }
            }
        }
        self.seal_all();
        self.inflight.abort_all();
        let mut undelivered: Vec<Batch> = self.inflight_batches.drain().map(|(_, b)| b).collect();
        undelivered.extend(self.ready.drain(..));
        self.report.undelivered = undelivered;
        self.stats.queued.store(0, Ordering::Relaxed);
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
        if let (true, Some(alarms)) = (self.opts.send_alarms, &reading.alarms) {
            if let Ok(body) = serde_json::to_vec(alarms) {
                self.ready.push_back(Batch {
                    device: device.clone(),
                    kind: BatchKind::Alarms,
                    body: Bytes::from(body),
                    count: 0,
                });
            }
        }
        self.enforce_limit();
        self.publish_queued();
    }

    fn seal(&mut self, device: Arc<str>) {
        if let Some(mut open) = self.open.remove(&device) {
            open.body.push(b']');
            self.ready.push_back(Batch {
                device,
                kind: BatchKind::Measurements,
                body: Bytes::from(open.body),
                count: open.count,
            });
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

    /// Drops the oldest ready batches while over the limit (live data only;
    /// with [`Overflow::Wait`] the input simply stops).
    fn enforce_limit(&mut self) {
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
            let api = self.api.clone();
            let (device, body, kind) = (batch.device.clone(), batch.body.clone(), batch.kind);
            let handle = self.inflight.spawn(async move {
                match kind {
                    BatchKind::Measurements => api.post_measurements(&device, body).await,
                    BatchKind::Alarms => api.post_alarms(&device, body).await,
                }
            });
            self.stats.posts.fetch_add(1, Ordering::Relaxed);
            self.inflight_batches.insert(handle.id(), batch);
        }
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
        let Some(batch) = self.inflight_batches.remove(&id) else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(since) = self.failing_since.take() {
                    info!(
                        "API is taking data again after {:.0} s; {} measurements queued",
                        since.elapsed().as_secs_f64(),
                        self.queued
                    );
                }
                self.backoff.reset();
                self.settle(&batch);
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
                self.settle(&batch);
                self.report.rejected += batch.count as u64;
                self.stats
                    .rejected
                    .fetch_add(batch.count as u64, Ordering::Relaxed);
                if let Some(n) = self.limiter.allow(&format!("rejected {status}")) {
                    warn!(
                        "API refused a batch for device {} with HTTP {status} ({} measurements set aside): {body}{}",
                        batch.device,
                        batch.count,
                        suppressed_note(n)
                    );
                }
            }
            Err(err) => {
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
                    PostError::Unauthorized { status, body } => format!(
                        "API answered HTTP {status} ({body}): check --api-token / API_TOKEN; data is kept and retried"
                    ),
                    other => format!("API not taking data ({other})"),
                };
                if first {
                    warn!(
                        "{what}; retrying in {:.1} s, {} measurements queued",
                        delay.as_secs_f64(),
                        self.queued
                    );
                } else if let Some(n) = self.limiter.allow("transient") {
                    warn!(
                        "{what}; still retrying (next in {:.1} s), {} measurements queued{}",
                        delay.as_secs_f64(),
                        self.queued,
                        suppressed_note(n)
                    );
                } else {
                    debug!("{what}; retry in {:.1} s", delay.as_secs_f64());
                }
                self.ready.push_front(batch);
                let until = Instant::now() + delay;
                self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
            }
        }
    }

    /// A batch has left the queue for good (delivered or set aside).
    fn settle(&mut self, batch: &Batch) {
        self.queued = self.queued.saturating_sub(batch.count);
        self.publish_queued();
    }

    fn publish_queued(&self) {
        self.stats
            .queued
            .store(self.queued as u64, Ordering::Relaxed);
    }
}
