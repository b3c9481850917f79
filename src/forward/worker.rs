//! The forwarding task: one loop that moves readings from the input channel
//! through the batcher into the queue, leases from the queue to the
//! dispatcher, and verdicts back to the queue. See the parent module.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, warn};

use super::batch::{Batch, Batcher};
use super::dead_letter::{DeadLetter, DeadLetters};
use super::dispatch::{Dispatcher, Verdict};
use super::queue::{Lease, Pushed, Queue};
use super::{ForwardOptions, ForwardReport, ForwardStats, Input, Overflow};
use crate::api::ApiClient;
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::Timestamp;
use crate::state_dir::StateLock;

/// How soon to look at the queue again after it could not be read.
const TAKE_RETRY: Duration = Duration::from_secs(1);

/// What a worker is made of.
pub(super) struct Parts {
    pub api: ApiClient,
    pub opts: ForwardOptions,
    pub queue: Box<dyn Queue>,
    pub dead_letters: Option<Arc<DeadLetters>>,
    /// Held until the worker has finished with the state directory.
    pub lock: Option<StateLock>,
}

pub(super) struct Worker {
    opts: ForwardOptions,
    batcher: Batcher,
    queue: Box<dyn Queue>,
    dispatcher: Dispatcher,
    dead_letters: Option<Arc<DeadLetters>>,
    stats: Arc<ForwardStats>,
    limiter: RateLimiter,
    gave_up: bool,
    gave_up_because: Option<String>,
    /// Measurements per POST: `--batch-size`, lowered for good after a 413.
    post_limit: usize,
    /// While isolating a refused item in a merged POST: at most this many.
    bisect: Option<usize>,
    /// The queue could not be read (a disk error): look again then.
    retry_take: Option<Instant>,
    /// Waiting for everything handed over before them to be settled.
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Batches (by [`Batch::fingerprint`]) whose POST timed out and whose
    /// fate the API's history has not told yet: never POSTed again before
    /// it has, so a stalled API stores one at most twice.
    unknown_fate: HashSet<u64>,
    _lock: Option<StateLock>,
}

impl Worker {
    pub(super) fn new(parts: Parts, stats: Arc<ForwardStats>) -> Worker {
        let opts = ForwardOptions {
            batch_size: parts.opts.batch_size.max(1),
            concurrency: parts.opts.concurrency.max(1),
            ..parts.opts
        };
        let worker = Worker {
            batcher: Batcher::new(opts.batch_size, opts.linger, opts.send_alarms),
            dispatcher: Dispatcher::new(
                parts.api,
                opts.concurrency,
                (opts.retry_initial, opts.retry_max),
            ),
            queue: parts.queue,
            dead_letters: parts.dead_letters,
            stats,
            limiter: RateLimiter::new(crate::ratelimit::WINDOW),
            gave_up: false,
            gave_up_because: None,
            post_limit: opts.batch_size,
            bisect: None,
            retry_take: None,
            flushes: Vec::new(),
            unknown_fate: HashSet::new(),
            _lock: parts.lock,
            opts,
        };
        worker.publish();
        worker
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut stop: watch::Receiver<bool>,
    ) -> ForwardReport {
        let mut input_open = true;
        loop {
            self.dispatch().await;
            self.answer_flushes();
            if !input_open && self.drained() {
                break;
            }
            let deadline = self.batcher.next_deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                event = self.dispatcher.next_event() => {
                    if let Some((lease, verdict)) = event {
                        self.settle(lease, verdict).await;
                    }
                }
                input = rx.recv(), if input_open && self.has_room() => match input {
                    Some(input) => self.accept(input, &mut rx).await,
                    None => {
                        input_open = false;
                        self.seal(true).await;
                    }
                },
                _ = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    self.seal(false).await;
                }
                _ = sleep_until(self.retry_take.unwrap_or(far)), if self.retry_take.is_some() => {
                    self.retry_take = None;
                }
            }
            if self.giving_up() {
                break;
            }
        }
        self.shutdown(rx).await
    }

    /// Input closed: may it stop? Once memory is empty (whatever is left is
    /// in the spool) and no delivery that could still succeed is in flight.
    fn drained(&self) -> bool {
        self.batcher.held() == 0
            && self.queue.in_memory().batches == 0
            && (self.dispatcher.idle() || self.dispatcher.failing_since().is_some())
    }

    /// Replay waits for room; collect never refuses a reading (its queue
    /// spools or drops, counted).
    fn has_room(&self) -> bool {
        self.opts.overflow == Overflow::DropOldest
            || self.queue.in_memory().measurements as usize + self.batcher.held()
                < self.opts.queue_limit
    }

    /// Takes a reading, and whatever else is waiting, into the batcher; a
    /// flush seals what is open.
    async fn accept(&mut self, input: Input, rx: &mut mpsc::Receiver<Input>) {
        let mut sealed = Vec::new();
        let mut next = Some(input);
        while let Some(input) = next.take() {
            match input {
                Input::Reading(reading) => self.batcher.add(&reading, &mut sealed),
                Input::Flush(done) => {
                    self.batcher.seal_due(true, &mut sealed);
                    self.flushes.push(done);
                }
            }
            if self.has_room() {
                next = rx.try_recv().ok();
            }
        }
        self.push(sealed).await;
    }

    /// Answers the flushes once nothing is open, queued or in flight.
    fn answer_flushes(&mut self) {
        if !self.flushes.is_empty()
            && self.batcher.held() == 0
            && self.queue.is_empty()
            && self.dispatcher.idle()
        {
            for done in self.flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }

    async fn seal(&mut self, all: bool) {
        let mut sealed = Vec::new();
        self.batcher.seal_due(all, &mut sealed);
        self.push(sealed).await;
    }

    async fn push(&mut self, batches: Vec<Batch>) {
        if !batches.is_empty() {
            let pushed = self.queue.push(batches).await;
            self.count_push(pushed);
        }
        self.publish();
    }

    fn count_push(&mut self, pushed: Pushed) {
        if pushed.stored > 0 {
            ForwardStats::add(&self.stats.spooled, pushed.stored);
            let on_disk = self.queue.len().minus(self.queue.in_memory()).measurements;
            debug!(
                "spooled {} measurements; the spool holds {on_disk}",
                pushed.stored
            );
        }
        let dropped = pushed.evicted.measurements;
        if dropped > 0 {
            ForwardStats::add(&self.stats.dropped, dropped);
            let which = if pushed.error.is_none() && self.queue.durable() {
                "spool full (--spool-max-mb)"
            } else {
                "in-memory queue full (--queue-max)"
            };
            if let Some(k) = self.limiter.allow("dropped") {
                warn!(
                    "{which}: dropped the oldest {dropped} measurements, {} dropped so far{}",
                    ForwardStats::get(&self.stats.dropped),
                    suppressed_note(k)
                );
            }
        }
        // What a memory-only queue refuses cannot happen; a spool's refusals
        // are the tiered queue's to keep. Anything left here is lost: count it.
        let refused: u64 = pushed.refused.iter().map(|b| b.count as u64).sum();
        if refused > 0 {
            ForwardStats::add(&self.stats.dropped, refused);
        }
    }

    /// Starts POSTs while the dispatcher has room and the queue has leases.
    async fn dispatch(&mut self) {
        while self.dispatcher.has_capacity() {
            let max = self
                .bisect
                .map_or(self.post_limit, |b| b.min(self.post_limit));
            match self.queue.take(max).await {
                Ok(Some(lease)) if self.fate_unknown(&lease) => {
                    self.dispatcher.check(lease, false);
                }
                Ok(Some(lease)) => self.dispatcher.send(lease),
                Ok(None) => break,
                Err(e) => {
                    if let Some(k) = self.limiter.allow("take") {
                        error!("cannot read the queue ({e}){}", suppressed_note(k));
                    }
                    self.retry_take = Some(Instant::now() + TAKE_RETRY);
                    break;
                }
            }
        }
        let unreadable = self.queue.take_set_aside();
        if unreadable > 0 {
            ForwardStats::add(&self.stats.rejected, unreadable);
        }
        ForwardStats::set(&self.stats.posts, self.dispatcher.posts);
        ForwardStats::set(&self.stats.failed_attempts, self.dispatcher.failures);
        let failing = match self.dispatcher.failing_since() {
            None => 0,
            Some(since) => {
                let ago = i64::try_from(since.elapsed().as_millis()).unwrap_or(0);
                let ms = Timestamp::now().unix_micros() / 1000 - ago;
                u64::try_from(ms).unwrap_or(1).max(1)
            }
        };
        // Kept, not recomputed, while it goes on: the same start each time.
        if (failing == 0) != (ForwardStats::get(&self.stats.failing_since_ms) == 0) {
            ForwardStats::set(&self.stats.failing_since_ms, failing);
        }
        self.publish();
    }

    /// Acts on a verdict.
    async fn settle(&mut self, lease: Lease, verdict: Verdict) {
        match verdict {
            Verdict::Delivered { created } => {
                let now_ms = Timestamp::now().unix_micros() / 1000;
                ForwardStats::set(
                    &self.stats.last_delivery_ms,
                    u64::try_from(now_ms).unwrap_or(0),
                );
                let n = lease.batch.count as u64;
                match lease.batch.kind {
                    super::BatchKind::Measurements => {
                        ForwardStats::add(&self.stats.delivered, n);
                        self.created_fewer(&lease.batch, created);
                    }
                    super::BatchKind::Alarms => {
                        ForwardStats::add(&self.stats.alarms_delivered, 1);
                    }
                }
                self.bisect = None;
                self.ack(lease).await;
            }
            Verdict::SetAside { .. } if lease.parts.len() > 1 => {
                // One part may be the bad one: send fewer at a time until it
                // is alone, so the good ones are not set aside with it.
                self.bisect = Some((lease.batch.count / 2).max(1));
                let pushed = self.queue.give_back(lease).await;
                self.count_push(pushed);
            }
            Verdict::TooLarge { body } => self.too_large(lease, body).await,
            Verdict::Unknown if lease.batch.kind == super::BatchKind::Measurements => {
                // Ask before sending again, now and at every retry until
                // the API answers: it may be stored already.
                self.unknown_fate
                    .extend(lease.parts.iter().map(Batch::fingerprint));
                self.dispatcher.check(lease, true);
            }
            Verdict::Unknown => {
                let pushed = self.queue.give_back(lease).await;
                self.count_push(pushed);
            }
            Verdict::Checked(held) => self.after_check(lease, held).await,
            Verdict::SetAside { status, body } => {
                self.set_aside(&lease.batch, status, &body).await;
                ForwardStats::add(&self.stats.rejected, lease.batch.count as u64);
                self.ack(lease).await;
            }
            Verdict::Retry => {
                let pushed = self.queue.give_back(lease).await;
                self.count_push(pushed);
            }
        }
        self.publish();
    }

    /// A 2xx whose `{"created": k}` is below the `n` measurements sent: the
    /// API says it stored fewer. Counted and warned about, not sent again
    /// (it said it took the batch: a resend could store the k twice).
    fn created_fewer(&mut self, batch: &Batch, created: Option<u64>) {
        let sent = batch.count as u64;
        let Some(created) = created.filter(|&k| k < sent) else {
            return;
        };
        ForwardStats::add(&self.stats.not_created, sent - created);
        if let Some(k) = self.limiter.allow("created fewer") {
            warn!(
                "the API answered {{\"created\": {created}}} to a batch of {sent} measurements for device {}: it says it created {created} of {sent}; the rest is counted as not created and not sent again (a resend could store twice what it did create); {} not created so far{}",
                batch.device,
                ForwardStats::get(&self.stats.not_created),
                suppressed_note(k)
            );
        }
    }

    /// Does the lease hold a batch whose last POST timed out, unchecked?
    fn fate_unknown(&self, lease: &Lease) -> bool {
        !self.unknown_fate.is_empty()
            && lease
                .parts
                .iter()
                .any(|p| self.unknown_fate.contains(&p.fingerprint()))
    }

    /// The API said what it holds of a lease whose POST timed out: what it
    /// holds counts as delivered, only the rest goes again. Without an
    /// answer, it waits (and is spooled, for collect) until the history
    /// answers: sending it blind could store it once more per retry.
    async fn after_check(&mut self, lease: Lease, held: Result<HashSet<(String, i64)>, String>) {
        let held = match held {
            Ok(held) => held,
            Err(why) => {
                self.dispatcher.check_failed(&why);
                let pushed = self.queue.give_back(lease).await;
                self.count_push(pushed);
                return;
            }
        };
        for part in &lease.parts {
            self.unknown_fate.remove(&part.fingerprint());
        }
        let Some(items) = lease.batch.items() else {
            let pushed = self.queue.give_back(lease).await;
            self.count_push(pushed);
            return;
        };
        let (there, missing): (Vec<_>, Vec<_>) = items
            .iter()
            .partition(|i| held.contains(&(i.metric.clone(), i.millis)));
        if there.is_empty() {
            let pushed = self.queue.give_back(lease).await;
            self.count_push(pushed);
            return;
        }
        ForwardStats::add(&self.stats.delivered, there.len() as u64);
        let rest = (!missing.is_empty()).then(|| {
            let raws: Vec<_> = missing.iter().map(|i| i.raw).collect();
            Batch::of_items(lease.batch.device.clone(), &raws)
        });
        debug!(
            "a POST that timed out had arrived: {} of {} measurements held by the API",
            there.len(),
            items.len()
        );
        drop(items);
        if let Some(rest) = rest {
            let pushed = self.queue.push(vec![rest]).await;
            self.count_push(pushed);
        }
        self.ack(lease).await;
    }

    /// A 413: fewer measurements per POST from now on; a single batch is
    /// cut in two; a single measurement cannot be made smaller (set aside).
    async fn too_large(&mut self, lease: Lease, body: String) {
        let n = lease.batch.count;
        let halves = match lease.parts.as_slice() {
            [one] => one.halves(),
            _ => None,
        };
        if n > 1 && self.post_limit > n / 2 {
            self.post_limit = (n / 2).max(1);
            warn!(
                "the API (or a proxy before it) refused {n} measurements in one POST as too large (HTTP 413): sending at most {} per POST from now on (lower --batch-size to match)",
                self.post_limit
            );
        }
        if lease.parts.len() > 1 {
            let pushed = self.queue.give_back(lease).await;
            self.count_push(pushed);
        } else if let Some((front, back)) = halves {
            let pushed = self.queue.push(vec![front, back]).await;
            let refused = !pushed.refused.is_empty();
            self.count_push(pushed);
            if !refused {
                self.ack(lease).await;
            }
        } else {
            self.set_aside(&lease.batch, 413, &body).await;
            ForwardStats::add(&self.stats.rejected, n as u64);
            self.ack(lease).await;
        }
    }

    async fn ack(&mut self, lease: Lease) {
        if let Err(e) = self.queue.ack(lease).await
            && let Some(k) = self.limiter.allow("ack")
        {
            error!(
                "cannot remove a delivered batch from the spool ({e}): it may be sent again{}",
                suppressed_note(k)
            );
        }
    }

    /// Writes a refused batch to the dead letters, off the runtime.
    async fn set_aside(&mut self, batch: &Batch, status: u16, body: &str) {
        let kept = match &self.dead_letters {
            Some(letters) => {
                let (letters, batch, response) = (letters.clone(), batch.clone(), body.to_owned());
                let written = tokio::task::spawn_blocking(move || {
                    letters
                        .write_or_log(&DeadLetter::Refused {
                            batch: &batch,
                            status,
                            response: &response,
                        })
                        .then(|| format!(" in {}", letters.path().display()))
                })
                .await;
                written.ok().flatten().unwrap_or_default()
            }
            None => String::new(),
        };
        if let Some(n) = self.limiter.allow(&format!("rejected {status}")) {
            warn!(
                "API refused a batch for device {} with HTTP {status} ({} measurements set aside{kept}): {body}{}",
                batch.device,
                batch.count,
                suppressed_note(n)
            );
        }
    }

    fn giving_up(&mut self) -> bool {
        if self.opts.fail_fast
            && let Some(why) = self.dispatcher.misconfigured.clone()
        {
            error!("giving up at once: {why}");
            self.gave_up = true;
            self.gave_up_because = Some(why);
            return true;
        }
        let (Some(limit), Some(since)) = (self.opts.give_up, self.dispatcher.failing_since())
        else {
            return false;
        };
        if since.elapsed() < limit {
            return false;
        }
        error!(
            "giving up: the API has taken nothing for {:.0} s; {} measurements undelivered",
            limit.as_secs_f64(),
            self.queue.len().measurements + self.batcher.held() as u64
        );
        self.gave_up = true;
        self.gave_up_because = Some(format!(
            "the API has taken nothing for {:.0} s (see --give-up)",
            limit.as_secs_f64()
        ));
        true
    }

    /// Stops: takes what was handed over but not yet taken (so it is
    /// spooled, or reported undelivered, not dropped uncounted), seals what
    /// is open, takes back what is in flight, and closes the queue (a
    /// durable queue keeps the rest for the next start).
    async fn shutdown(mut self, mut rx: mpsc::Receiver<Input>) -> ForwardReport {
        let mut sealed = Vec::new();
        // Closed first: a sender racing the stop gets its reading back.
        rx.close();
        while let Ok(input) = rx.try_recv() {
            if let Input::Reading(reading) = input {
                self.batcher.add(&reading, &mut sealed);
            }
        }
        self.batcher.seal_due(true, &mut sealed);
        if !sealed.is_empty() {
            let pushed = self.queue.push(sealed).await;
            self.count_push(pushed);
        }
        for lease in self.dispatcher.abort_all() {
            // In flight at the stop: it may have arrived (at-least-once).
            let pushed = self.queue.give_back(lease).await;
            self.count_push(pushed);
        }
        let held = self.queue.len().measurements;
        let durable = self.queue.durable();
        let undelivered = self.queue.close().await;
        let lost: u64 = undelivered.iter().map(|b| b.count as u64).sum();
        if durable && lost > 0 {
            // Neither delivered nor kept: say so in every count.
            ForwardStats::add(&self.stats.dropped, lost);
        }
        let s = &self.stats;
        ForwardStats::set(&s.queued, 0);
        ForwardReport {
            delivered: ForwardStats::get(&s.delivered),
            alarms_delivered: ForwardStats::get(&s.alarms_delivered),
            rejected: ForwardStats::get(&s.rejected),
            not_created: ForwardStats::get(&s.not_created),
            dropped: ForwardStats::get(&s.dropped),
            undelivered,
            gave_up: self.gave_up,
            gave_up_because: self.gave_up_because,
            left_in_spool: if durable { held - lost.min(held) } else { 0 },
        }
    }

    /// Publishes the queue's size to the stats.
    fn publish(&self) {
        let memory = self.queue.in_memory();
        let spool = self.queue.len().minus(memory);
        let s = &self.stats;
        ForwardStats::set(&s.queued, memory.measurements + self.batcher.held() as u64);
        ForwardStats::set(&s.spool_batches, spool.batches);
        ForwardStats::set(&s.spool_measurements, spool.measurements);
        ForwardStats::set(&s.spool_bytes, spool.bytes);
    }
}
