//! The queue interface between the batcher and the API, and its memory
//! implementation.
//!
//! Shaped like Telegraf's output buffer: batches are *pushed* at the back;
//! the dispatcher *takes* a [`Lease`] (the oldest batches, merged into one
//! POST), and then either *acknowledges* it (delivered or set aside: gone
//! for good) or *gives it back* (not delivered: it goes back to the front).
//! Implementations: [`MemoryQueue`] here, the on-disk
//! [`SpoolQueue`](super::spool_queue::SpoolQueue), and the tiered rule
//! between them ([`Tiered`](super::tiered::Tiered)). One test suite
//! (`tests/it/queue.rs`) runs against each.
//!
//! Methods return boxed futures so that the forwarder holds a
//! `Box<dyn Queue>` and a test can wrap any implementation (to make it slow,
//! say) without the forwarder knowing.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use super::batch::{Batch, merge};

/// A queue operation in progress.
pub type QueueFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How much a queue holds (leased batches included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Len {
    /// Batches (one POST each, before merging).
    pub batches: u64,
    /// Measurements in them.
    pub measurements: u64,
    /// Bytes of their bodies.
    pub bytes: u64,
}

impl Len {
    /// The size of `batches`.
    pub fn of(batches: &[Batch]) -> Len {
        let mut len = Len::default();
        for b in batches {
            len.add(b);
        }
        len
    }

    /// Both together.
    pub fn plus(self, other: Len) -> Len {
        Len {
            batches: self.batches + other.batches,
            measurements: self.measurements + other.measurements,
            bytes: self.bytes + other.bytes,
        }
    }

    /// This less `other`, never below zero.
    pub fn minus(self, other: Len) -> Len {
        Len {
            batches: self.batches.saturating_sub(other.batches),
            measurements: self.measurements.saturating_sub(other.measurements),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }

    pub(crate) fn add(&mut self, b: &Batch) {
        self.batches += 1;
        self.measurements += b.count as u64;
        self.bytes += b.body.len() as u64;
    }

    pub(crate) fn sub(&mut self, b: &Batch) {
        self.batches = self.batches.saturating_sub(1);
        self.measurements = self.measurements.saturating_sub(b.count as u64);
        self.bytes = self.bytes.saturating_sub(b.body.len() as u64);
    }
}

/// What a push did besides queueing.
#[derive(Debug, Default)]
#[must_use]
pub struct Pushed {
    /// Dropped to stay within the queue's limit (the oldest first).
    pub evicted: Len,
    /// Not stored at all (a disk error): the caller still owns these.
    pub refused: Vec<Batch>,
    /// Why they were refused.
    pub error: Option<String>,
    /// Measurements written durably (to the spool) by this push.
    pub stored: u64,
}

impl Pushed {
    /// Adds `other`'s counts (not its refused batches) to these.
    pub fn absorb(&mut self, other: Pushed) {
        self.evicted = self.evicted.plus(other.evicted);
        self.stored += other.stored;
        if other.error.is_some() {
            self.error = other.error;
        }
    }
}

/// Where a lease came from (the tiered queue routes acknowledgements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// [`MemoryQueue`].
    Memory,
    /// The on-disk spool.
    Spool,
}

/// Batches taken from a queue: sent as one POST, then acknowledged or given
/// back.
#[derive(Debug)]
pub struct Lease {
    /// What to send: the parts merged into one body.
    pub batch: Batch,
    /// The queue's keys of the parts, oldest first.
    pub keys: Vec<u64>,
    /// The parts as they were queued (given back as they were).
    pub parts: Vec<Batch>,
    /// Which queue made it.
    pub tier: Tier,
}

impl Lease {
    /// A lease over `parts` (non-empty, each joining the first).
    pub fn new(parts: Vec<(u64, Batch)>, tier: Tier) -> Option<Lease> {
        let (keys, parts): (Vec<u64>, Vec<Batch>) = parts.into_iter().unzip();
        let batch = merge(parts.clone())?;
        Some(Lease {
            batch,
            keys,
            parts,
            tier,
        })
    }

    /// Its size, counted by parts.
    pub fn len(&self) -> Len {
        Len::of(&self.parts)
    }
}

/// Takes the longest run of batches from the front of `items` that can go
/// in one POST of at most `max` measurements (always at least one).
pub(crate) fn take_run<T>(items: &mut VecDeque<(T, Batch)>, max: usize) -> Option<Vec<(T, Batch)>> {
    let first = items.pop_front()?;
    let mut count = first.1.count;
    let mut run = vec![first];
    while let Some((_, next)) = items.front() {
        if !run[0].1.run_takes(count, next, max) {
            break;
        }
        count += next.count;
        run.extend(items.pop_front());
    }
    Some(run)
}

/// Error from a queue that could not do what it was asked (disk trouble).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// The queue interface; see the module docs.
pub trait Queue: Send {
    /// Appends batches at the back.
    fn push(&mut self, batches: Vec<Batch>) -> QueueFuture<'_, Pushed>;
    /// The oldest batches not leased yet, merged up to `max` measurements.
    fn take(&mut self, max: usize) -> QueueFuture<'_, Result<Option<Lease>, QueueError>>;
    /// The lease is done with (delivered or set aside): remove it for good.
    fn ack(&mut self, lease: Lease) -> QueueFuture<'_, Result<(), QueueError>>;
    /// The lease was not delivered: back to the front, in order. Returns
    /// what that caused (the tiered queue spools then).
    fn give_back(&mut self, lease: Lease) -> QueueFuture<'_, Pushed>;
    /// What it holds, leased batches included.
    fn len(&self) -> Len;
    /// Is nothing held?
    fn is_empty(&self) -> bool {
        self.len().batches == 0
    }
    /// Held in memory only (lost on a crash), leased batches included.
    fn in_memory(&self) -> Len;
    /// Does what it holds outlive the process?
    fn durable(&self) -> bool {
        false
    }
    /// Measurements set aside since last asked because they could not be
    /// read back (a damaged spool record, kept in the dead letters).
    fn take_set_aside(&mut self) -> u64 {
        0
    }
    /// Stops: persists what it can and returns what it could not (for the
    /// report; a durable queue returns nothing).
    fn close(self: Box<Self>) -> QueueFuture<'static, Vec<Batch>>;
}

/// Batches in memory, oldest first; optionally bounded, dropping the oldest.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    items: VecDeque<(u64, Batch)>,
    /// When each batch held (leased ones too) was pushed, by key: keys
    /// grow with time, so the first is the oldest.
    born: std::collections::BTreeMap<u64, std::time::Instant>,
    next_key: u64,
    /// Held, leased included.
    len: Len,
    /// Drop the oldest unleased batches past this many measurements.
    limit: Option<u64>,
}

impl MemoryQueue {
    /// An unbounded queue (the caller keeps it bounded).
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }

    /// A queue that drops its oldest batches past `limit` measurements.
    pub fn bounded(limit: u64) -> MemoryQueue {
        MemoryQueue {
            limit: Some(limit),
            ..MemoryQueue::default()
        }
    }

    /// Appends without waiting; returns what had to be dropped.
    pub fn push_now(&mut self, batches: Vec<Batch>) -> Len {
        let now = std::time::Instant::now();
        for batch in batches {
            self.len.add(&batch);
            self.born.insert(self.next_key, now);
            self.items.push_back((self.next_key, batch));
            self.next_key += 1;
        }
        match self.limit {
            Some(limit) => self.evict_over(limit),
            None => Len::default(),
        }
    }

    /// Drops the oldest batches not leased while it holds more than `limit`
    /// measurements; returns what it dropped.
    pub fn evict_over(&mut self, limit: u64) -> Len {
        let mut evicted = Len::default();
        while self.len.measurements > limit {
            let Some((key, oldest)) = self.items.pop_front() else {
                break;
            };
            self.born.remove(&key);
            self.len.sub(&oldest);
            evicted.add(&oldest);
        }
        evicted
    }

    /// Takes without waiting.
    pub fn take_now(&mut self, max: usize) -> Option<Lease> {
        Lease::new(take_run(&mut self.items, max)?, Tier::Memory)
    }

    /// Gives back without waiting.
    pub fn give_back_now(&mut self, lease: Lease) {
        for item in lease.keys.into_iter().zip(lease.parts).rev() {
            self.items.push_front(item);
        }
    }

    /// Acknowledges without waiting.
    pub fn ack_now(&mut self, lease: &Lease) {
        for part in &lease.parts {
            self.len.sub(part);
        }
        for key in &lease.keys {
            self.born.remove(key);
        }
    }

    /// How long the oldest batch held (leased or not) has waited.
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        self.born.first_key_value().map(|(_, t)| t.elapsed())
    }

    /// Removes every batch not leased, oldest first.
    pub fn drain_unleased(&mut self) -> Vec<Batch> {
        let mut batches = Vec::with_capacity(self.items.len());
        for (key, b) in self.items.drain(..) {
            self.born.remove(&key);
            self.len.sub(&b);
            batches.push(b);
        }
        batches
    }

    /// Nothing waiting to be leased (leases may be out).
    pub fn nothing_waiting(&self) -> bool {
        self.items.is_empty()
    }
}

impl Queue for MemoryQueue {
    fn push(&mut self, batches: Vec<Batch>) -> QueueFuture<'_, Pushed> {
        let evicted = self.push_now(batches);
        Box::pin(async move {
            Pushed {
                evicted,
                ..Pushed::default()
            }
        })
    }

    fn take(&mut self, max: usize) -> QueueFuture<'_, Result<Option<Lease>, QueueError>> {
        let lease = self.take_now(max);
        Box::pin(async move { Ok(lease) })
    }

    fn ack(&mut self, lease: Lease) -> QueueFuture<'_, Result<(), QueueError>> {
        self.ack_now(&lease);
        Box::pin(async { Ok(()) })
    }

    fn give_back(&mut self, lease: Lease) -> QueueFuture<'_, Pushed> {
        self.give_back_now(lease);
        Box::pin(async { Pushed::default() })
    }

    fn len(&self) -> Len {
        self.len
    }

    fn in_memory(&self) -> Len {
        self.len
    }

    fn close(mut self: Box<Self>) -> QueueFuture<'static, Vec<Batch>> {
        let left = self.drain_unleased();
        Box::pin(async move { left })
    }
}
