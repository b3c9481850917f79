//! Replay into the API: a backfill that can run twice, and sends each
//! reading once.
//!
//! The PV3 Monitor backend keeps every row it is sent (no unique key), so a
//! capture replayed twice would double every chart. Before a window of the
//! capture is sent (less than [`WINDOW_SPAN`] of capture time and at most
//! [`WINDOW_MEASUREMENTS`] measurements, so memory stays flat on a
//! month-long capture, in time order or not), the API is asked what it
//! already holds for that window, widened by [`SAME_READING`] each side
//! (`GET .../history`), and only the rest is sent. What counts as the same
//! reading (device, metric, value, times under [`SAME_READING`] apart) is
//! in [`super::seen`].
//!
//! Within one run, a reading seen before in the capture is sent once. The
//! window itself and the one before it are compared in memory (the
//! forwarder may not have delivered them yet). An earlier window the new
//! one overlaps in time (a capture holding a record twice, days apart in
//! the file) is covered by the history query, provided what was handed to
//! the forwarder is stored first: when the new window's time overlaps an
//! earlier one's (other than the last), the forwarder is flushed (waited
//! for until it has delivered everything) before the API is asked. A
//! capture in time order never waits. An API without the history endpoint
//! (404/405), or `--no-skip-existing`, gets everything but the repeats the
//! two windows in memory catch, with a warning.
//!
//! ```text
//! reader thread ──windows──▶ this task: ask history, filter ──readings──▶ forwarder
//! ```
//!
//! A signal stops it in every state: the reader stops at the next record,
//! this task at once (even while waiting for the API), and the forwarder
//! gives back what it has not delivered. The summary then names the
//! capture time to resume from, and a re-run sends nothing twice.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::api::{ApiClient, HistoryError};
use crate::backoff::Backoff;
use crate::forward::ForwardSender;
use crate::reading::{Reading, Timestamp};

use super::seen::{SAME_READING, Seen};

/// Capture time one window spans, less than (and so one history query).
pub(super) const WINDOW_SPAN: Duration = Duration::from_secs(300);
/// Measurements one window holds, at most.
pub(super) const WINDOW_MEASUREMENTS: usize = 20_000;

/// Readings of a stretch of the capture, in capture order.
#[derive(Default)]
pub(super) struct Window {
    pub(super) readings: Vec<Reading>,
    measurements: usize,
    /// The earliest and latest capture times in it.
    span: Option<(Timestamp, Timestamp)>,
}

impl Window {
    /// Would a reading at `ts` keep the window under [`WINDOW_SPAN`]? (A
    /// capture that jumps back in time starts a new window.)
    pub(super) fn fits(&self, ts: Timestamp) -> bool {
        self.span
            .is_none_or(|(lo, hi)| hi.max(ts).seconds_since(lo.min(ts)) < WINDOW_SPAN.as_secs_f64())
    }

    /// Adds a reading (see [`Self::fits`] first).
    pub(super) fn add(&mut self, reading: Reading) {
        let ts = reading.timestamp;
        self.span = Some(
            self.span
                .map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))),
        );
        self.measurements += reading.measurements.len();
        self.readings.push(reading);
    }

    /// Full: to be sent.
    pub(super) fn full(&self) -> bool {
        self.measurements >= WINDOW_MEASUREMENTS
    }

    pub(super) fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// The earliest capture time in it.
    pub(super) fn earliest(&self) -> Option<Timestamp> {
        self.span.map(|(lo, _)| lo)
    }

    pub(super) fn measurements(&self) -> usize {
        self.measurements
    }
}

/// What the backfill did besides sending.
#[derive(Debug, Default, Clone)]
pub(super) struct BackfillCounts {
    /// Measurements not sent because the API already held them.
    pub(super) skipped: u64,
    /// Measurements not sent because the capture held them before (the
    /// same reading; see [`super::seen`]).
    pub(super) repeated: u64,
    /// Times the forwarder was waited for, so that the API could be asked
    /// about a window overlapping an earlier one.
    pub(super) flushes: u64,
    /// History queries made, and the time they took.
    pub(super) queries: u64,
    pub(super) query_time: Duration,
    /// Measurements read but not handed to the forwarder (stopped first).
    pub(super) not_handed: u64,
    /// The earliest capture time among those.
    pub(super) earliest_not_handed: Option<Timestamp>,
}

/// Why the backfill stopped early.
#[derive(Debug)]
pub(super) enum Stop {
    /// A signal.
    Signal,
    /// The forwarder stopped taking readings (it gave up).
    Forwarder,
    /// The history queries kept failing for `--give-up`.
    History(String),
}

/// The task between the reader and the forwarder; see the module docs.
pub(super) struct Backfill {
    pub(super) api: ApiClient,
    /// Check the API's history first (`--no-skip-existing` turns it off; an
    /// API without the endpoint too).
    pub(super) skip_existing: bool,
    pub(super) give_up: Duration,
    pub(super) retry_max: Duration,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) counts: BackfillCounts,
    /// What the last window handed over (it may not be stored yet).
    pub(super) recent: Seen,
    /// The capture time the last window spans.
    pub(super) last_span: Option<(Timestamp, Timestamp)>,
    /// The capture time the windows before it span, since the forwarder
    /// was last flushed: what may not be stored yet.
    pub(super) older_span: Option<(Timestamp, Timestamp)>,
}

impl Backfill {
    /// Filters and forwards every window until the reader is done or
    /// something stops it. Windows not handed over are counted.
    pub(super) async fn run(
        &mut self,
        mut windows: mpsc::Receiver<Window>,
        forwarder: ForwardSender,
    ) -> Option<Stop> {
        let mut stopped = None;
        while let Some(window) = windows.recv().await {
            if stopped.is_some() {
                self.not_handed(&window.readings);
                continue;
            }
            match self.forward(window, &forwarder).await {
                Ok(()) => {}
                Err(stop) => {
                    stopped = Some(stop);
                    // Let the reader see it: no more windows are taken.
                    windows.close();
                }
            }
        }
        stopped
    }

    /// One window: ask, filter, hand over. The readings not handed over
    /// when it stops are counted.
    async fn forward(&mut self, window: Window, forwarder: &ForwardSender) -> Result<(), Stop> {
        let readings = match self.filter(window, forwarder).await {
            Ok(readings) => readings,
            Err((stop, readings)) => {
                self.not_handed(&readings);
                return Err(stop);
            }
        };
        let mut readings = readings.into_iter();
        while let Some(reading) = readings.next() {
            let stopped = self.stopped();
            // Room first, the reading after: a stop while waiting leaves
            // the reading here, counted with the rest (and in the resume
            // hint), not dropped with the wait.
            let room = tokio::select! {
                biased;
                () = stopped => Err(Stop::Signal),
                room = forwarder.reserve() => room.map_err(|_| Stop::Forwarder),
            };
            match room {
                Ok(permit) => permit.send(reading),
                Err(stop) => {
                    let rest: Vec<Reading> = std::iter::once(reading).chain(readings).collect();
                    self.not_handed(&rest);
                    return Err(stop);
                }
            }
        }
        Ok(())
    }

    /// The window without what the API already holds and what the capture
    /// held before. On a stop, the whole window comes back with the reason.
    async fn filter(
        &mut self,
        window: Window,
        forwarder: &ForwardSender,
    ) -> Result<Vec<Reading>, (Stop, Vec<Reading>)> {
        let span = window.span;
        let held = match self.held(span, &window.readings, forwarder).await {
            Ok(held) => held,
            Err(stop) => return Err((stop, window.readings)),
        };
        let mut kept_seen = Seen::default();
        let mut kept = Vec::with_capacity(window.readings.len());
        for mut reading in window.readings {
            let (at, before) = (reading.timestamp, reading.measurements.len());
            let device = &*reading.origin.device_id;
            let mut in_api = 0;
            reading.measurements.retain(|m| {
                let (metric, value) = (m.metric.as_ref(), m.value);
                if held.holds(device, metric, value, at) {
                    in_api += 1;
                    false
                } else {
                    !self.recent.holds(device, metric, value, at)
                        && kept_seen.insert_new(device, metric, value, at)
                }
            });
            self.counts.skipped += in_api;
            self.counts.repeated += (before - reading.measurements.len()) as u64 - in_api;
            if !reading.measurements.is_empty() || reading.alarms.is_some() {
                kept.push(reading);
            }
        }
        // This window is the last one now; the one before joins the older.
        self.older_span = union(self.older_span, self.last_span);
        self.last_span = span;
        self.recent = kept_seen;
        Ok(kept)
    }

    /// What the API holds over the window's time, widened by
    /// [`SAME_READING`] each side. When that time overlaps a window handed
    /// over before the last one, the forwarder is flushed first, so that
    /// what it held is stored, and seen, too.
    async fn held(
        &mut self,
        span: Option<(Timestamp, Timestamp)>,
        readings: &[Reading],
        forwarder: &ForwardSender,
    ) -> Result<Seen, Stop> {
        let mut held = Seen::default();
        let Some((lo, hi)) = span.filter(|_| self.skip_existing) else {
            return Ok(held);
        };
        let (lo, hi) = (widen(lo, -1), widen(hi, 1));
        if self.older_span.is_some_and(|(a, b)| a <= hi && lo <= b) {
            debug!(
                "this window overlaps an earlier one: waiting until the forwarder has delivered it"
            );
            let stopped = self.stopped();
            tokio::select! {
                biased;
                () = stopped => return Err(Stop::Signal),
                flushed = forwarder.flush() => flushed.map_err(|_| Stop::Forwarder)?,
            }
            self.counts.flushes += 1;
            self.older_span = None;
        }
        for (device, (metrics, start, end)) in spans(readings) {
            let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
            let (start, end) = (widen(start, -1), widen(end, 1));
            match self.history(&device, &metrics, start, end).await? {
                Some(rows) => {
                    for row in rows {
                        if let Some(value) = row.value {
                            held.insert(&device, &row.metric, value, row.at);
                        }
                    }
                }
                None => break, // no history endpoint: skipping is off
            }
        }
        Ok(held)
    }

    /// `Ok(None)`: the API has no history endpoint (skipping is off from
    /// now on). Retries a failing query until `--give-up`, or a signal.
    async fn history(
        &mut self,
        device: &str,
        metrics: &[&str],
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Option<Vec<crate::api::HistoryRow>>, Stop> {
        let mut backoff = Backoff::new(crate::forward::RETRY_INITIAL, self.retry_max);
        let first_try = Instant::now();
        loop {
            let asked = Instant::now();
            let answer = self.api.history(device, metrics, start, end).await;
            self.counts.queries += 1;
            self.counts.query_time += asked.elapsed();
            let why = match answer {
                Ok(rows) => return Ok(Some(rows)),
                Err(HistoryError::Unsupported(status)) => {
                    warn!(
                        "the API has no history endpoint (HTTP {status}): sending everything; a capture replayed twice will be stored twice"
                    );
                    self.skip_existing = false;
                    return Ok(None);
                }
                Err(HistoryError::Failed(why)) => why,
            };
            if first_try.elapsed() >= self.give_up {
                return Err(Stop::History(format!(
                    "cannot ask the API what it holds: {why} (for {:.0} s, see --give-up)",
                    self.give_up.as_secs_f64()
                )));
            }
            let delay = backoff.next_delay();
            info!(
                "cannot ask the API what it holds ({why}); again in {:.1} s",
                delay.as_secs_f64()
            );
            let stopped = self.stopped();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped => return Err(Stop::Signal),
            }
        }
    }

    /// Resolves once a signal has stopped the replay.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }

    fn not_handed(&mut self, readings: &[Reading]) {
        for r in readings {
            self.counts.not_handed += r.measurements.len() as u64;
            let earliest = self.counts.earliest_not_handed.get_or_insert(r.timestamp);
            *earliest = (*earliest).min(r.timestamp);
        }
    }
}

/// `ts` moved by [`SAME_READING`] (`sign` -1: earlier, 1: later).
fn widen(ts: Timestamp, sign: i64) -> Timestamp {
    let by = SAME_READING.as_micros() as i64;
    Timestamp::from_unix_micros(ts.unix_micros().saturating_add(sign * by))
}

/// The span covering both.
fn union(
    a: Option<(Timestamp, Timestamp)>,
    b: Option<(Timestamp, Timestamp)>,
) -> Option<(Timestamp, Timestamp)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (a, b) => a.or(b),
    }
}

/// Per device: the metrics in `readings` and the capture-time span they
/// cover.
fn spans(readings: &[Reading]) -> BTreeMap<String, (Vec<String>, Timestamp, Timestamp)> {
    let mut spans: BTreeMap<String, (HashSet<String>, Timestamp, Timestamp)> = BTreeMap::new();
    for r in readings {
        if r.measurements.is_empty() {
            continue;
        }
        let entry = spans
            .entry(r.origin.device_id.to_string())
            .or_insert_with(|| (HashSet::new(), r.timestamp, r.timestamp));
        entry
            .0
            .extend(r.measurements.iter().map(|m| m.metric.to_string()));
        entry.1 = entry.1.min(r.timestamp);
        entry.2 = entry.2.max(r.timestamp);
    }
    spans
        .into_iter()
        .map(|(d, (metrics, start, end))| {
            let mut metrics: Vec<String> = metrics.into_iter().collect();
            metrics.sort();
            (d, (metrics, start, end))
        })
        .collect()
}
