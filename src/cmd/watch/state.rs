//! What the view knows: a plain struct fed decoded [`Reading`]s (and the
//! topic of every message, decoded or not), with no I/O, no clock and no
//! terminal. The screen, `--once` and the render tests all read it.
//!
//! Per device it keeps the newest value of every metric, the newest alarm
//! states, when each topic family was last seen and how often it usually
//! comes, a bounded ring of the last 15 minutes of power and SOC for the
//! chart, and the energy totals since the start (the shared
//! [`Energy`] counters, not a copy of their rule).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::decode::DecodeError;
use crate::decode::metric;
use crate::energy::{ENERGY_UNIT, Energy, Totals};
use crate::pipeline::Pipeline;
use crate::reading::{AlarmStates, Reading, Timestamp};
use crate::topic::{MAX_DEVICES, P3Topic};

/// How far back the chart reaches, in seconds.
pub const HISTORY_SECS: f64 = 15.0 * 60.0;

/// Seconds of data time between two points of the chart's ring.
pub const HISTORY_STEP_SECS: f64 = 2.0;

/// The ring's capacity: 15 minutes at one point per step, and one more.
pub const HISTORY_POINTS: usize = (HISTORY_SECS / HISTORY_STEP_SECS) as usize + 1;

/// Messages of one family closer together than this are one burst (the
/// aggregate SOC and the four module SOCs arrive within ~0.1 s): the usual
/// interval is measured between bursts.
const BURST_SECS: f64 = 0.25;

/// A family is stale when its last message is older than this many times
/// its usual interval.
pub const STALE_FACTOR: f64 = 3.0;

/// The shortest usual interval assumed: a family that came twice within a
/// burst is not stale a second later.
const MIN_INTERVAL_SECS: f64 = 1.0;

/// The usual interval of a family seen in one burst only: the P3's slowest
/// topics come every 60 s.
const UNKNOWN_INTERVAL_SECS: f64 = 60.0;

/// Gaps between bursts remembered per family; their median is the usual
/// interval, so one outage does not change it.
const GAPS_KEPT: usize = 15;

/// The newest value of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// The value, as decoded (after the SOC filter).
    pub value: f64,
    /// The unit the decoder gives it.
    pub unit: &'static str,
    /// When it was received (live) or captured (a capture).
    pub at: Timestamp,
    /// The full topic it came from.
    pub topic: Arc<str>,
}

/// When one topic family (`bms/soc`, `inverter/charge`, ...) was seen.
#[derive(Debug, Clone)]
pub struct Family {
    /// When its last message came.
    pub last: Timestamp,
    /// Messages seen.
    pub messages: u64,
    /// When the current burst started.
    burst_start: Timestamp,
    /// Seconds between the starts of recent bursts.
    gaps: VecDeque<f64>,
}

impl Family {
    fn new(at: Timestamp) -> Family {
        Family {
            last: at,
            messages: 1,
            burst_start: at,
            gaps: VecDeque::with_capacity(GAPS_KEPT),
        }
    }

    fn saw(&mut self, at: Timestamp) {
        self.messages += 1;
        let since_last = at.seconds_since(self.last);
        if since_last < 0.0 {
            // A clock step back: start measuring again from here.
            self.burst_start = at;
        } else if since_last > BURST_SECS {
            if self.gaps.len() == GAPS_KEPT {
                self.gaps.pop_front();
            }
            self.gaps.push_back(at.seconds_since(self.burst_start));
            self.burst_start = at;
        }
        self.last = at;
    }

    /// The usual seconds between its messages (bursts): the median of the
    /// recent gaps; `None` before a second burst.
    pub fn interval(&self) -> Option<f64> {
        if self.gaps.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.gaps.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some(sorted[sorted.len() / 2])
    }

    /// Older than [`STALE_FACTOR`] × its usual interval at `now`.
    pub fn is_stale(&self, now: Timestamp) -> bool {
        let usual = self
            .interval()
            .unwrap_or(UNKNOWN_INTERVAL_SECS)
            .max(MIN_INTERVAL_SECS);
        now.seconds_since(self.last) > STALE_FACTOR * usual
    }
}

/// One point of the chart: the newest value of each series at `at`
/// (NaN before the first value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Data time of the point.
    pub at: Timestamp,
    /// `grid_power`, W (+ import).
    pub grid: f64,
    /// `house_power`, W.
    pub house: f64,
    /// `battery_power`, W (+ discharging).
    pub battery: f64,
    /// `soc`, %.
    pub soc: f64,
}

/// Everything known about one device.
#[derive(Debug, Clone)]
pub struct DeviceView {
    metrics: BTreeMap<Cow<'static, str>, Latest>,
    alarms: Option<(AlarmStates, Timestamp)>,
    families: BTreeMap<String, Family>,
    history: VecDeque<Sample>,
    /// The first message of the device.
    pub first: Timestamp,
    /// The newest reading that fed the energy counters.
    pub energy_at: Option<Timestamp>,
}

impl DeviceView {
    fn new(at: Timestamp) -> DeviceView {
        DeviceView {
            metrics: BTreeMap::new(),
            alarms: None,
            families: BTreeMap::new(),
            history: VecDeque::with_capacity(HISTORY_POINTS),
            first: at,
            energy_at: None,
        }
    }

    /// The newest value of `metric`.
    pub fn get(&self, metric: &str) -> Option<&Latest> {
        self.metrics.get(metric)
    }

    /// The newest value of `metric`, the number only.
    pub fn value(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).map(|l| l.value)
    }

    /// Every metric seen, by name.
    pub fn metrics(&self) -> impl Iterator<Item = (&str, &Latest)> + '_ {
        self.metrics.iter().map(|(k, v)| (&**k, v))
    }

    /// The newest alarm states and when they came; `None` before the first
    /// `inverter/alarms` message with flags.
    pub fn alarms(&self) -> Option<&(AlarmStates, Timestamp)> {
        self.alarms.as_ref()
    }

    /// The flags active in the newest alarm states, sorted.
    pub fn active_alarms(&self) -> Vec<&str> {
        self.alarms.as_ref().map_or_else(Vec::new, |(states, _)| {
            states
                .iter()
                .filter(|(_, on)| **on)
                .map(|(k, _)| k.as_str())
                .collect()
        })
    }

    /// Every topic family seen, by suffix.
    pub fn families(&self) -> impl Iterator<Item = (&str, &Family)> + '_ {
        self.families.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether a message of the topic family `suffix` has come.
    pub fn has_family(&self, suffix: &str) -> bool {
        self.families.contains_key(suffix)
    }

    /// The families older than their usual interval allows at `now`.
    pub fn stale(&self, now: Timestamp) -> Vec<&str> {
        self.families()
            .filter(|(_, f)| f.is_stale(now))
            .map(|(k, _)| k)
            .collect()
    }

    /// The chart's points, oldest first.
    pub fn history(&self) -> &VecDeque<Sample> {
        &self.history
    }

    /// Per-module SOCs (`soc_module_N`), by module number.
    pub fn module_socs(&self) -> Vec<(u32, f64)> {
        let mut modules: Vec<(u32, f64)> = self
            .metrics
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("soc_module_")?.parse().ok()?, v.value)))
            .collect();
        modules.sort_by_key(|(n, _)| *n);
        modules
    }

    fn record(&mut self, reading: &Reading) {
        for m in &reading.measurements {
            let latest = Latest {
                value: m.value,
                unit: m.unit,
                at: reading.timestamp,
                topic: reading.origin.topic.clone(),
            };
            match self.metrics.get_mut(&*m.metric) {
                Some(slot) => *slot = latest,
                None => {
                    self.metrics.insert(m.metric.clone(), latest);
                }
            }
        }
        if let Some(alarms) = &reading.alarms {
            self.alarms = Some((alarms.clone(), reading.timestamp));
        }
        self.sample(reading.timestamp);
    }

    /// Adds a point to the ring when a step has passed since the last one.
    fn sample(&mut self, at: Timestamp) {
        if let Some(last) = self.history.back() {
            let since = at.seconds_since(last.at);
            if since < 0.0 {
                // A clock step back: the old points are in another time.
                self.history.clear();
            } else if since < HISTORY_STEP_SECS {
                return;
            }
        }
        let value = |metric: &str| self.value(metric).unwrap_or(f64::NAN);
        let point = Sample {
            at,
            grid: value(metric::GRID_POWER),
            house: value(metric::HOUSE_POWER),
            battery: value(metric::BATTERY_POWER),
            soc: value(metric::SOC),
        };
        while self.history.len() >= HISTORY_POINTS
            || self
                .history
                .front()
                .is_some_and(|p| at.seconds_since(p.at) > HISTORY_SECS)
        {
            self.history.pop_front();
        }
        self.history.push_back(point);
    }
}

/// The view's knowledge of every device seen.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    devices: BTreeMap<Arc<str>, DeviceView>,
    energy: Energy,
}

impl WatchState {
    /// Nothing seen yet.
    pub fn new() -> WatchState {
        WatchState::default()
    }

    /// Notes a message on `topic` at `at`, decoded or not, for the topic
    /// families' last-seen times. Not a P3 topic: ignored.
    pub fn saw(&mut self, topic: &str, at: Timestamp) {
        let Some(p3) = P3Topic::parse(topic) else {
            return;
        };
        // Bounded like the pipeline: past the cap, new ids are not kept.
        if !self.devices.contains_key(p3.device) && self.devices.len() >= MAX_DEVICES {
            return;
        }
        let device = match self.devices.get_mut(p3.device) {
            Some(device) => device,
            None => self
                .devices
                .entry(Arc::from(p3.device))
                .or_insert_with(|| DeviceView::new(at)),
        };
        match device.families.get_mut(p3.suffix) {
            Some(family) => family.saw(at),
            None => {
                device
                    .families
                    .insert(p3.suffix.to_owned(), Family::new(at));
            }
        }
    }

    /// Feeds one decoded reading.
    pub fn observe(&mut self, reading: &Reading) {
        let id = &reading.origin.device_id;
        if !self.devices.contains_key(&**id) && self.devices.len() >= MAX_DEVICES {
            return;
        }
        let device = match self.devices.get_mut(&**id) {
            Some(device) => device,
            None => self
                .devices
                .entry(id.clone())
                .or_insert_with(|| DeviceView::new(reading.timestamp)),
        };
        device.record(reading);
        // The counters say whether the reading carried a power they take.
        if self.energy.observe(reading) {
            device.energy_at = Some(reading.timestamp);
        }
    }

    /// One message through `pipeline` into the state: [`Self::saw`], then
    /// [`Self::observe`] of what it decodes to. A payload the decoder
    /// cannot read still counts as seen.
    pub fn message(
        &mut self,
        pipeline: &mut Pipeline,
        topic: &str,
        payload: &[u8],
        at: Timestamp,
    ) -> Result<(), DecodeError> {
        self.saw(topic, at);
        if let Some(reading) = pipeline.process(topic, payload, at)? {
            self.observe(&reading);
        }
        Ok(())
    }

    /// The devices seen, sorted by id.
    pub fn device_ids(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.devices.keys()
    }

    /// What is known about `device`.
    pub fn device(&self, device: &str) -> Option<&DeviceView> {
        self.devices.get(device)
    }

    /// Whether any decoded reading of any device has come.
    pub fn has_data(&self) -> bool {
        self.devices.values().any(|d| !d.metrics.is_empty())
    }

    /// The energy totals of `device` since the start.
    pub fn energy(&self, device: &str) -> Option<Totals> {
        self.energy.totals(device)
    }

    /// `device` as `--once --format json` prints it, at `now`; `None` when
    /// nothing of it decoded.
    pub fn snapshot(&self, device: &str, now: Timestamp) -> Option<Snapshot> {
        let view = self.devices.get(device)?;
        if view.metrics.is_empty() {
            return None;
        }
        let mut metrics: BTreeMap<String, MetricValue> = view
            .metrics()
            .map(|(name, l)| {
                let value = MetricValue {
                    value: l.value,
                    unit: l.unit,
                    timestamp: l.at,
                };
                (name.to_owned(), value)
            })
            .collect();
        if let (Some(totals), Some(at)) = (self.energy(device), view.energy_at) {
            for (counter, kwh) in totals.iter() {
                let value = MetricValue {
                    value: kwh,
                    unit: ENERGY_UNIT,
                    timestamp: at,
                };
                metrics.insert(counter.metric().to_owned(), value);
            }
        }
        Some(Snapshot {
            device_id: device.to_owned(),
            time: now,
            metrics,
            alarms_active: view
                .active_alarms()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            stale: view.stale(now).into_iter().map(str::to_owned).collect(),
        })
    }
}

/// One device at one moment: the `--once --format json` line
/// (`shared/spec/cli.md`).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The device.
    pub device_id: String,
    /// When the snapshot was taken.
    pub time: Timestamp,
    /// The newest value of every metric seen, energy counters included.
    pub metrics: BTreeMap<String, MetricValue>,
    /// Alarm flags active in the newest alarm states.
    pub alarms_active: Vec<String>,
    /// Topic families older than their usual interval allows.
    pub stale: Vec<String>,
}

/// One metric's newest value in a [`Snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct MetricValue {
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// When it came.
    pub timestamp: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Measurement, Origin};

    const DEV: &str = "PV001001DEV";

    fn at(secs: f64) -> Timestamp {
        Timestamp::from_unix_micros(1_800_000_000_000_000 + (secs * 1e6) as i64)
    }

    fn reading(secs: f64, metric: &'static str, value: f64) -> Reading {
        Reading {
            origin: Origin {
                device_id: Arc::from(DEV),
                topic: Arc::from(format!("pv/PV3/{DEV}/x")),
            },
            timestamp: at(secs),
            measurements: vec![Measurement::new(metric, value, "W")],
            alarms: None,
        }
    }

    fn topic(suffix: &str) -> String {
        format!("pv/PV3/{DEV}/{suffix}")
    }

    #[test]
    fn the_usual_interval_is_between_bursts_and_ignores_one_outage() {
        let mut state = WatchState::new();
        // The aggregate and four module SOCs every 5 s, 0.02 s apart.
        for burst in 0..6 {
            for i in 0..5 {
                state.saw(
                    &topic("bms/soc"),
                    at(f64::from(burst) * 5.0 + f64::from(i) * 0.02),
                );
            }
        }
        // One outage of 60 s, then the cadence again.
        state.saw(&topic("bms/soc"), at(85.0));
        state.saw(&topic("bms/soc"), at(90.0));
        let device = state.device(DEV).expect("seen");
        let (_, soc) = device.families().next().expect("a family");
        assert_eq!(soc.messages, 32);
        let interval = soc.interval().expect("known");
        assert!((interval - 5.0).abs() < 0.1, "{interval}");
        assert!(!soc.is_stale(at(104.0)));
        assert!(soc.is_stale(at(105.5)));
    }

    #[test]
    fn a_family_seen_once_is_stale_after_three_minutes() {
        let mut state = WatchState::new();
        state.saw(&topic("safetycheck/state"), at(0.0));
        let device = state.device(DEV).expect("seen");
        assert!(device.stale(at(179.0)).is_empty());
        assert_eq!(device.stale(at(181.0)), ["safetycheck/state"]);
    }

    #[test]
    fn the_history_ring_is_bounded_by_time_and_count() {
        let mut state = WatchState::new();
        // An hour of readings every second.
        for s in 0..3600 {
            state.observe(&reading(f64::from(s), "grid_power", f64::from(s)));
        }
        let history = state.device(DEV).expect("seen").history();
        assert!(history.len() <= HISTORY_POINTS, "{}", history.len());
        let (first, last) = (history[0].at, history[history.len() - 1].at);
        assert!(last.seconds_since(first) <= HISTORY_SECS);
        assert_eq!(last, at(3598.0));
        assert!(history.iter().all(|p| p.soc.is_nan()));
        // A clock step back starts the chart again.
        state.observe(&reading(10.0, "grid_power", 1.0));
        assert_eq!(state.device(DEV).expect("seen").history().len(), 1);
    }

    #[test]
    fn device_ids_past_the_cap_are_not_kept() {
        let mut state = WatchState::new();
        let mut pipeline = Pipeline::new(1.0, None);
        for n in 0..MAX_DEVICES + 5 {
            let topic = format!("pv/PV3/D{n}/inverter/charge");
            let payload = br#"{"power":5}"#;
            state
                .message(&mut pipeline, &topic, payload, at(1.0))
                .expect("decodes");
            state.saw(&format!("pv/PV3/E{n}/x"), at(1.0));
        }
        assert_eq!(state.device_ids().count(), MAX_DEVICES);
        assert_eq!(pipeline.counts.too_many_devices, 5);
    }

    #[test]
    fn cleared_alarms_are_gone_and_energy_is_shared() {
        let mut state = WatchState::new();
        let mut alarms = Reading {
            alarms: Some(AlarmStates::from([
                ("battery_low".to_string(), true),
                ("fan_lock".to_string(), false),
            ])),
            ..reading(0.0, "alarm_count", 1.0)
        };
        state.observe(&alarms);
        assert_eq!(
            state.device(DEV).expect("seen").active_alarms(),
            ["battery_low"]
        );
        alarms.alarms = Some(AlarmStates::from([("battery_low".to_string(), false)]));
        state.observe(&alarms);
        assert!(state.device(DEV).expect("seen").active_alarms().is_empty());

        // 3600 W for 10 s is 0.01 kWh, by the shared counters' rule.
        state.observe(&reading(0.0, "grid_power", 3600.0));
        state.observe(&reading(10.0, "grid_power", 3600.0));
        let snapshot = state.snapshot(DEV, at(10.0)).expect("data");
        let import = &snapshot.metrics["grid_import_energy"];
        assert!((import.value - 0.01).abs() < 1e-12);
        assert_eq!((import.unit, import.timestamp), ("kWh", at(10.0)));
        assert_eq!(snapshot.metrics["grid_power"].value, 3600.0);
    }
}
