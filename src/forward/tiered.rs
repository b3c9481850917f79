//! The tiered rule: memory until the first failure, the spool until it is
//! drained.
//!
//! On the healthy path nothing touches the disk (SD cards wear out). A batch
//! given back (its POST failed), or memory passing its bound, switches to
//! *spooling*: what waits in memory goes to the spool first, then every
//! batch after it, and leases come from the spool, oldest first, until it is
//! empty. A batch the spool refuses (a full or failing disk) stays in
//! memory, counted, within the bound, and is offered to the spool again
//! (ahead of newer batches, to keep their order) with the next push. On
//! close, memory goes to the spool so the next start sends it.

use tracing::{error, info, warn};

use super::batch::Batch;
use super::queue::{Lease, Len, MemoryQueue, Pushed, Queue, QueueError, QueueFuture, Tier};
use crate::ratelimit::{RateLimiter, suppressed_note};

/// How long a batch may wait in memory, unacknowledged, before it is
/// spooled whatever the reason (a failing, hanging or slow API).
pub const SPOOL_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the disk is left alone after a write to the spool failed.
const DISK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// See the module docs.
pub struct Tiered {
    memory: MemoryQueue,
    spool: Box<dyn Queue>,
    spooling: bool,
    /// Measurements memory may hold.
    limit: u64,
    /// Spool what has waited longer than this, unacknowledged.
    max_age: std::time::Duration,
    limiter: RateLimiter,
    /// When a write to the spool last failed, while it keeps failing.
    disk_failed_at: Option<std::time::Instant>,
    /// Counts of spills made while taking, reported with the next push.
    carry: Pushed,
}

impl Tiered {
    /// Memory bounded by `limit` measurements in front of `spool`. Starts
    /// spooling when the spool holds something from an earlier run.
    pub fn new(limit: u64, spool: Box<dyn Queue>) -> Tiered {
        let spooling = !spool.is_empty();
        Tiered {
            memory: MemoryQueue::new(),
            spool,
            spooling,
            limit,
            max_age: SPOOL_AFTER,
            limiter: RateLimiter::new(crate::ratelimit::WINDOW),
            disk_failed_at: None,
            carry: Pushed::default(),
        }
    }

    /// Spools what memory has held unacknowledged for longer than `age`
    /// (default [`SPOOL_AFTER`]).
    pub fn spool_after(mut self, age: std::time::Duration) -> Tiered {
        self.max_age = age;
        self
    }

    /// Memory has held something unacknowledged for too long (a slow or
    /// hanging API): bound what a power cut could take.
    fn too_old(&self) -> bool {
        self.memory
            .oldest_age()
            .is_some_and(|age| age > self.max_age)
    }

    /// Sending from the spool.
    pub fn spooling(&self) -> bool {
        self.spooling
    }

    /// Moves what waits in memory (and `more`) to the spool; what the spool
    /// refuses stays in memory, the oldest dropped past the bound.
    /// After a failed write the disk is left alone for [`DISK_RETRY`]
    /// (batches wait in memory meanwhile, in order), so a full disk costs
    /// one failed commit a second, not one per batch and per lease.
    async fn spill(&mut self, more: Vec<Batch>) -> Pushed {
        if self
            .disk_failed_at
            .is_some_and(|t| t.elapsed() < DISK_RETRY)
        {
            self.memory.push_now(more);
            return Pushed {
                evicted: self.memory.evict_over(self.limit),
                ..Pushed::default()
            };
        }
        let mut batches = self.memory.drain_unleased();
        batches.extend(more);
        let n: u64 = batches.iter().map(|b| b.count as u64).sum();
        let mut pushed = self.spool.push(batches).await;
        self.disk_failed_at = pushed.error.is_some().then(std::time::Instant::now);
        if let Some(e) = &pushed.error {
            if let Some(k) = self.limiter.allow("spool write") {
                error!(
                    "cannot write to the spool ({e}): keeping {} measurements in memory (up to --queue-max){}",
                    n,
                    suppressed_note(k)
                );
            }
            let refused = std::mem::take(&mut pushed.refused);
            self.memory.push_now(refused);
            pushed.evicted = pushed.evicted.plus(self.memory.evict_over(self.limit));
        }
        pushed
    }

    async fn start_spooling(&mut self, reason: &str, more: Vec<Batch>) -> Pushed {
        if !self.spooling {
            self.spooling = true;
            let waiting =
                self.memory.len().measurements + more.iter().map(|b| b.count as u64).sum::<u64>();
            info!("{reason}: spooling to disk ({waiting} measurements so far)");
        }
        self.spill(more).await
    }
}

impl Queue for Tiered {
    fn push(&mut self, batches: Vec<Batch>) -> QueueFuture<'_, Pushed> {
        Box::pin(async move {
            let mut pushed = std::mem::take(&mut self.carry);
            if self.spooling {
                pushed.absorb(self.spill(batches).await);
            } else {
                self.memory.push_now(batches);
                if self.memory.len().measurements > self.limit {
                    pushed.absorb(
                        self.start_spooling("in-memory queue full", Vec::new())
                            .await,
                    );
                } else if self.too_old() {
                    let why = format!(
                        "readings unacknowledged for over {:.0} s",
                        self.max_age.as_secs_f64()
                    );
                    pushed.absorb(self.start_spooling(&why, Vec::new()).await);
                }
            }
            pushed
        })
    }

    fn take(&mut self, max: usize) -> QueueFuture<'_, Result<Option<Lease>, QueueError>> {
        Box::pin(async move {
            if !self.spooling {
                return Ok(self.memory.take_now(max));
            }
            // What the spool refused waits in memory: retry it first.
            if !self.memory.nothing_waiting() {
                let spilled = self.spill(Vec::new()).await;
                self.carry.absorb(spilled);
            }
            match self.spool.take(max).await {
                Ok(Some(lease)) => return Ok(Some(lease)),
                Ok(None) => {}
                Err(e) => {
                    if let Some(k) = self.limiter.allow("spool read") {
                        warn!("cannot read the spool ({e}){}", suppressed_note(k));
                    }
                    if self.memory.nothing_waiting() {
                        return Err(e);
                    }
                }
            }
            if let Some(lease) = self.memory.take_now(max) {
                return Ok(Some(lease));
            }
            if self.spool.is_empty() && self.memory.is_empty() {
                self.spooling = false;
                info!("spool drained: back to the memory path");
            }
            Ok(None)
        })
    }

    fn ack(&mut self, lease: Lease) -> QueueFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            match lease.tier {
                Tier::Memory => {
                    self.memory.ack_now(&lease);
                    Ok(())
                }
                Tier::Spool => self.spool.ack(lease).await,
            }
        })
    }

    fn give_back(&mut self, lease: Lease) -> QueueFuture<'_, Pushed> {
        Box::pin(async move {
            let mut pushed = std::mem::take(&mut self.carry);
            match lease.tier {
                Tier::Memory => {
                    self.memory.give_back_now(lease);
                    pushed.absorb(self.start_spooling("API unavailable", Vec::new()).await);
                }
                Tier::Spool => pushed.absorb(self.spool.give_back(lease).await),
            }
            pushed
        })
    }

    fn len(&self) -> Len {
        self.memory.len().plus(self.spool.len())
    }

    fn durable(&self) -> bool {
        true
    }

    fn take_set_aside(&mut self) -> u64 {
        self.spool.take_set_aside()
    }

    fn in_memory(&self) -> Len {
        self.memory.len()
    }

    fn close(mut self: Box<Self>) -> QueueFuture<'static, Vec<Batch>> {
        Box::pin(async move {
            let waiting = self.memory.drain_unleased();
            let mut left = Vec::new();
            if !waiting.is_empty() {
                let pushed = self.spool.push(waiting).await;
                if let Some(e) = pushed.error {
                    error!(
                        "cannot write to the spool ({e}): {} measurements held in memory are lost",
                        pushed.refused.iter().map(|b| b.count).sum::<usize>()
                    );
                }
                left = pushed.refused;
            }
            left.extend(self.spool.close().await);
            left
        })
    }
}
