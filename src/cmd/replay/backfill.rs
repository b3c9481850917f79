//! Replay into the API: a backfill that can run twice.
//!
//! The PV3 Monitor backend keeps every row it is sent (no unique key), so a
//! capture replayed twice would double every chart. Before a window of the
//! capture is sent (up to [`WINDOW_SPAN`] of capture time or
//! [`WINDOW_MEASUREMENTS`] measurements, so memory stays flat on a
//! month-long capture), the API is asked which (metric, timestamp) pairs it
//! already holds for that window (`GET .../history`), and only the rest is
//! sent. An API without the history endpoint (404/405) gets everything,
//! with a warning.
//!
//! ```text
//! reader thread ──windows──▶ this task: ask history, filter ──readings──▶ forwarder
//! ```
//!
//! A signal stops it in every state: the reader stops at the next record,
//! this task at once (even while waiting for the API), and the forwarder
//! gives back what it has not delivered. The summary then names the
//! capture time to resume from, and a re-run sends nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::api::{ApiClient, HistoryError};
use crate::backoff::Backoff;
use crate::forward::ForwardSender;
use crate::reading::{Reading, Timestamp};

/// Capture time one history query covers, at most.
pub(super) const WINDOW_SPAN: Duration = Duration::from_secs(300);
/// Measurements one window holds, at most.
pub(super) const WINDOW_MEASUREMENTS: usize = 20_000;

/// Readings of a stretch of the capture, in capture order.
#[derive(Default)]
pub(super) struct Window {
    pub(super) readings: Vec<Reading>,
    measurements: usize,
    first: Option<Timestamp>,
}

impl Window {
    /// Adds a reading; true when the window is full and should be sent.
    pub(super) fn add(&mut self, reading: Reading) -> bool {
        let first = *self.first.get_or_insert(reading.timestamp);
        self.measurements += reading.measurements.len();
        let span = reading.timestamp.seconds_since(first);
        self.readings.push(reading);
        self.measurements >= WINDOW_MEASUREMENTS || span >= WINDOW_SPAN.as_secs_f64()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// The earliest capture time in it.
    pub(super) fn earliest(&self) -> Option<Timestamp> {
        self.readings.iter().map(|r| r.timestamp).min()
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
        let readings = match self.filter(window).await {
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

    /// The window without what the API already holds. On a stop, the whole
    /// window comes back with the reason.
    async fn filter(&mut self, window: Window) -> Result<Vec<Reading>, (Stop, Vec<Reading>)> {
        if !self.skip_existing || window.is_empty() {
            return Ok(window.readings);
        }
        // device → metric → milliseconds held: looked up without allocating.
        let mut present: HashMap<String, HashMap<String, HashSet<i64>>> = HashMap::new();
        for (device, (metrics, start, end)) in spans(&window.readings) {
            let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
            match self.history(&device, &metrics, start, end).await {
                Ok(Some(rows)) => {
                    let held = present.entry(device).or_default();
                    for (metric, ms) in rows {
                        held.entry(metric).or_default().insert(ms);
                    }
                }
                Ok(None) => return Ok(window.readings), // no history endpoint
                Err(stop) => return Err((stop, window.readings)),
            }
        }
        let mut kept = Vec::with_capacity(window.readings.len());
        for mut reading in window.readings {
            let ms = reading.timestamp.unix_millis();
            let before = reading.measurements.len();
            if let Some(held) = present.get(&*reading.origin.device_id) {
                reading.measurements.retain(|m| {
                    !held
                        .get(m.metric.as_ref())
                        .is_some_and(|times| times.contains(&ms))
                });
            }
            self.counts.skipped += (before - reading.measurements.len()) as u64;
            if !reading.measurements.is_empty() || reading.alarms.is_some() {
                kept.push(reading);
            }
        }
        Ok(kept)
    }

    /// `Ok(None)`: the API has no history endpoint (skipping is off from
    /// now on). Retries a failing query until `--give-up`, or a signal.
    async fn history(
        &mut self,
        device: &str,
        metrics: &[&str],
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Option<Vec<(String, i64)>>, Stop> {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.retry_max);
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
