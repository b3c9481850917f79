//! Energy counters: kWh totals integrated, per device, from the decoded
//! power readings (the P3 publishes power only; Home Assistant's Energy
//! dashboard and Prometheus want energy).
//!
//! | counter | from |
//! |---|---|
//! | `grid_import_energy` | `grid_power` when > 0 |
//! | `grid_export_energy` | −`grid_power` when < 0 |
//! | `battery_discharge_energy` | `battery_power` when > 0 |
//! | `battery_charge_energy` | −`battery_power` when < 0 |
//! | `house_energy` | `house_power` when > 0 |
//!
//! The rule, exactly (tests and `docs/home-assistant.md` rely on it):
//!
//! - Between two consecutive readings of one power source, by their
//!   timestamps (receive times live, capture times in replay), power is taken
//!   to change linearly (the trapezoidal rule). A segment whose ends have
//!   opposite signs is split where the line crosses zero, so an
//!   import/export swing puts the right triangle into each counter.
//! - No segment longer than [`MAX_GAP_SECS`]: after an outage the next
//!   reading starts afresh (a counter must not invent energy over a gap),
//!   and so does a reading older than the last one (a clock step back).
//! - A power no P3 can produce (non-finite, or more than
//!   [`MAX_PLAUSIBLE_WATTS`] either way) is not integrated, and counted
//!   ([`Energy::implausible`]): two readings of `1e300` W would otherwise
//!   leave a total nothing can ever bring back.
//! - Totals only ever grow. They are kept in the state directory
//!   ([`EnergyFile`]) so that a restart continues them; what collect
//!   publishes is only ever what a save made durable (`cmd/collect`), so a
//!   power cut cannot make a published total go back.
//!
//! A capture is integrated in time order, each reading once, by
//! [`InTimeOrder`]: replaying `cat a a`, or a capture whose lines are out
//! of order, gives the energy of the readings themselves.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::decode::metric;
use crate::reading::{Measurement, Origin, Reading, Timestamp};

mod file;
mod ordered;

pub use file::{EnergyFile, Loaded};
pub use ordered::InTimeOrder;

/// Longest stretch between two readings that is integrated, in seconds.
pub const MAX_GAP_SECS: f64 = 60.0;

/// The largest power, either way, that the counters take as real: ten times
/// what a P3's inverter can do (about 6.75 kW out, 4.8 kW in), and still
/// below anything a home's supply carries. Beyond it a reading is a fault
/// of the data, not energy.
pub const MAX_PLAUSIBLE_WATTS: f64 = 50_000.0;

/// The `source_topic` of the readings the counters produce: they come from
/// pv3, not from a P3 topic.
pub const ENERGY_TOPIC: &str = "pv3/energy";

/// One of the five energy counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Energy taken from the grid.
    GridImport,
    /// Energy sent to the grid.
    GridExport,
    /// Energy taken out of the battery.
    BatteryDischarge,
    /// Energy put into the battery.
    BatteryCharge,
    /// Energy the house used.
    House,
}

impl Counter {
    /// All counters, in the order of the table above.
    pub const ALL: [Counter; 5] = [
        Counter::GridImport,
        Counter::GridExport,
        Counter::BatteryDischarge,
        Counter::BatteryCharge,
        Counter::House,
    ];

    /// The metric name the counter is published under.
    pub const fn metric(self) -> &'static str {
        match self {
            Counter::GridImport => metric::GRID_IMPORT_ENERGY,
            Counter::GridExport => metric::GRID_EXPORT_ENERGY,
            Counter::BatteryDischarge => metric::BATTERY_DISCHARGE_ENERGY,
            Counter::BatteryCharge => metric::BATTERY_CHARGE_ENERGY,
            Counter::House => metric::HOUSE_ENERGY,
        }
    }

    /// The counter published as `metric`, if it is one.
    pub fn from_metric(metric: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.metric() == metric)
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The unit of every counter.
pub const ENERGY_UNIT: &str = "kWh";

/// The power sources the counters integrate: (metric, counter fed by the
/// positive part, counter fed by the negative part).
const SOURCES: [(&str, Counter, Option<Counter>); 3] = [
    (
        metric::GRID_POWER,
        Counter::GridImport,
        Some(Counter::GridExport),
    ),
    (
        metric::BATTERY_POWER,
        Counter::BatteryDischarge,
        Some(Counter::BatteryCharge),
    ),
    (metric::HOUSE_POWER, Counter::House, None),
];

/// One device's five totals, in kWh.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals([f64; 5]);

impl Totals {
    /// The total of `counter`, in kWh.
    pub fn get(&self, counter: Counter) -> f64 {
        self.0[counter.index()]
    }

    /// Each counter with its total, in the order of [`Counter::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (Counter, f64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self.get(c)))
    }
}

/// `grid_import_energy 0.001234, grid_export_energy 0.000000, ...`: each
/// counter in kWh to the milliwatt-hour (six decimals), for summaries.
impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (counter, kwh)) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {kwh:.6}", counter.metric())?;
        }
        Ok(())
    }
}

/// What a device's counters remember between readings.
#[derive(Clone, Debug, Default)]
struct DeviceEnergy {
    totals: Totals,
    /// The last reading of each source in [`SOURCES`]: (time, watts).
    last: [Option<(Timestamp, f64)>; 3],
}

/// The counters of every device seen, and the integration state.
#[derive(Clone, Debug, Default)]
pub struct Energy {
    devices: BTreeMap<Arc<str>, DeviceEnergy>,
    /// Whether anything changed since [`Energy::mark_saved`].
    dirty: bool,
    /// Power readings refused as impossible, in all.
    implausible: u64,
}

impl Energy {
    /// All counters at zero.
    pub fn new() -> Energy {
        Energy::default()
    }

    /// Continues from saved totals (see [`EnergyFile::load`]).
    pub fn from_totals(saved: BTreeMap<String, Totals>) -> Energy {
        let devices = saved
            .into_iter()
            .map(|(device, totals)| {
                let state = DeviceEnergy {
                    totals,
                    ..DeviceEnergy::default()
                };
                (Arc::from(device), state)
            })
            .collect();
        Energy {
            devices,
            dirty: false,
            implausible: 0,
        }
    }

    /// Feeds one reading; `true` when it carried a power the counters
    /// integrate (the device's totals are then known, if not grown: the
    /// outputs publish them from the first power reading on).
    pub fn observe(&mut self, reading: &Reading) -> bool {
        let mut fed = false;
        for m in &reading.measurements {
            if source_of(&m.metric).is_some() {
                fed = true;
                self.observe_power(
                    &reading.origin.device_id,
                    &m.metric,
                    m.value,
                    reading.timestamp,
                );
            }
        }
        fed
    }

    /// Feeds one value of `metric` (ignored unless it is a power source),
    /// in watts, at `at`; `true` when a total grew. A power no P3 can
    /// produce is counted in [`Energy::implausible`] and otherwise ignored:
    /// the next segment runs from the reading before it.
    pub fn observe_power(&mut self, device: &str, metric: &str, watts: f64, at: Timestamp) -> bool {
        let Some(source) = source_of(metric) else {
            return false;
        };
        if !is_plausible(watts) {
            self.implausible += 1;
            return false;
        }
        let state = match self.devices.get_mut(device) {
            Some(state) => state,
            None => self.devices.entry(Arc::from(device)).or_default(),
        };
        let previous = state.last[source].replace((at, watts));
        let Some((t0, p0)) = previous else {
            return false;
        };
        let seconds = at.seconds_since(t0);
        if seconds <= 0.0 || seconds > MAX_GAP_SECS {
            return false;
        }
        let hours = seconds / 3600.0;
        let (_, positive, negative) = SOURCES[source];
        let mut grew = false;
        let mut add = |counter: Counter, kwh: f64| {
            if kwh > 0.0 && kwh.is_finite() {
                state.totals.0[counter.index()] += kwh;
                grew = true;
            }
        };
        add(positive, positive_part(p0, watts) * hours / 1000.0);
        if let Some(negative) = negative {
            add(negative, positive_part(-p0, -watts) * hours / 1000.0);
        }
        self.dirty |= grew;
        grew
    }

    /// The totals of `device`, if it has been seen (or was saved).
    pub fn totals(&self, device: &str) -> Option<Totals> {
        self.devices.get(device).map(|d| d.totals)
    }

    /// Every device with its totals, sorted by device id.
    pub fn all(&self) -> impl Iterator<Item = (&str, Totals)> + '_ {
        self.devices.iter().map(|(d, s)| (&**d, s.totals))
    }

    /// The totals of `device` as a reading stamped `at`, for the outputs.
    pub fn reading(&self, device: &Arc<str>, at: Timestamp) -> Option<Reading> {
        Some(Energy::totals_reading(device, self.totals(device)?, at))
    }

    /// `totals` of `device` as a reading stamped `at`, for the outputs.
    pub fn totals_reading(device: &Arc<str>, totals: Totals, at: Timestamp) -> Reading {
        Reading {
            origin: Origin {
                device_id: device.clone(),
                topic: Arc::from(ENERGY_TOPIC),
            },
            timestamp: at,
            measurements: totals
                .iter()
                .map(|(c, kwh)| Measurement::new(c.metric(), kwh, ENERGY_UNIT))
                .collect(),
            alarms: None,
        }
    }

    /// Power readings refused so far because no P3 can produce them.
    pub fn implausible(&self) -> u64 {
        self.implausible
    }

    /// Whether a total grew since the last [`Energy::mark_saved`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Notes that the current totals are saved.
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }
}

/// The index in [`SOURCES`] of the power `metric`, if it is one.
fn source_of(metric: &str) -> Option<usize> {
    SOURCES.iter().position(|(m, _, _)| *m == metric)
}

/// Whether a P3 could have produced `watts`.
fn is_plausible(watts: f64) -> bool {
    watts.is_finite() && watts.abs() <= MAX_PLAUSIBLE_WATTS
}

/// The integral over one segment of the positive part of a power that goes
/// linearly from `p0` to `p1`, per unit of time (so: × duration).
fn positive_part(p0: f64, p1: f64) -> f64 {
    match (p0 >= 0.0, p1 >= 0.0) {
        (true, true) => (p0 + p1) / 2.0,
        (false, false) => 0.0,
        _ => {
            // One end above zero, one below: the triangle above the axis.
            let (hi, lo) = if p0 > p1 { (p0, p1) } else { (p1, p0) };
            let share = hi / (hi - lo);
            hi / 2.0 * share
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DEV: &str = "PV001001DEV";

    pub(crate) fn at(secs: f64) -> Timestamp {
        Timestamp::from_unix_micros(1_800_000_000_000_000 + (secs * 1e6) as i64)
    }

    pub(crate) fn feed(energy: &mut Energy, metric: &str, points: &[(f64, f64)]) {
        for &(t, w) in points {
            energy.observe_power(DEV, metric, w, at(t));
        }
    }

    pub(crate) fn total(energy: &Energy, c: Counter) -> f64 {
        energy.totals(DEV).map_or(0.0, |t| t.get(c))
    }

    pub(crate) fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn constant_power_for_an_hour_is_its_watts_in_wh() {
        let mut e = Energy::new();
        let points: Vec<(f64, f64)> = (0..=360).map(|i| (f64::from(i) * 10.0, 1200.0)).collect();
        feed(&mut e, "grid_power", &points);
        assert!(close(total(&e, Counter::GridImport), 1.2));
        assert_eq!(total(&e, Counter::GridExport), 0.0);
    }

    #[test]
    fn a_sign_change_splits_the_segment_at_zero() {
        let mut e = Energy::new();
        // +1000 W to −1000 W over 36 s: 18 s above zero, 18 s below, each
        // a triangle of 1000 W × 18 s / 2 = 9000 J = 2.5 Wh.
        feed(&mut e, "battery_power", &[(0.0, 1000.0), (36.0, -1000.0)]);
        assert!(close(total(&e, Counter::BatteryDischarge), 0.0025));
        assert!(close(total(&e, Counter::BatteryCharge), 0.0025));
        // Uneven: +3000 → −1000 over 36 s crosses at 27 s.
        let mut e = Energy::new();
        feed(&mut e, "grid_power", &[(0.0, 3000.0), (36.0, -1000.0)]);
        assert!(close(
            total(&e, Counter::GridImport),
            3000.0 * 27.0 / 2.0 / 3.6e6
        ));
        assert!(close(
            total(&e, Counter::GridExport),
            1000.0 * 9.0 / 2.0 / 3.6e6
        ));
    }

    #[test]
    fn nothing_is_integrated_across_a_gap_or_a_step_back() {
        let mut e = Energy::new();
        feed(
            &mut e,
            "house_power",
            &[(0.0, 360.0), (10.0, 360.0), (130.0, 360.0), (140.0, 360.0)],
        );
        // Two 10 s segments of 360 W: 2 Wh; the 120 s gap adds nothing.
        assert!(close(total(&e, Counter::House), 0.002));
        feed(&mut e, "house_power", &[(100.0, 360.0), (110.0, 360.0)]);
        assert!(close(total(&e, Counter::House), 0.003));
        // Exactly 60 s still counts.
        feed(&mut e, "house_power", &[(170.0, 360.0)]);
        assert!(close(total(&e, Counter::House), 0.009));
    }

    #[test]
    fn house_power_below_zero_adds_nothing_and_other_metrics_are_ignored() {
        let mut e = Energy::new();
        feed(&mut e, "house_power", &[(0.0, -50.0), (10.0, -50.0)]);
        feed(
            &mut e,
            "grid_power_inverter",
            &[(0.0, 500.0), (10.0, 500.0)],
        );
        assert_eq!(total(&e, Counter::House), 0.0);
        assert_eq!(total(&e, Counter::GridImport), 0.0);
        assert!(!e.is_dirty());
    }

    #[test]
    fn power_no_p3_can_produce_is_counted_not_integrated() {
        let mut e = Energy::new();
        feed(
            &mut e,
            "battery_power",
            &[
                (0.0, 1000.0),
                (5.0, 1e300),
                (6.0, f64::INFINITY),
                (7.0, -MAX_PLAUSIBLE_WATTS - 1.0),
                (10.0, 1000.0),
            ],
        );
        // The plausible readings alone: 1000 W for 10 s.
        assert!(close(
            total(&e, Counter::BatteryDischarge),
            1000.0 * 10.0 / 3.6e6
        ));
        assert_eq!(total(&e, Counter::BatteryCharge), 0.0);
        assert_eq!(e.implausible(), 3);
        // The limit itself is real power.
        feed(&mut e, "battery_power", &[(20.0, MAX_PLAUSIBLE_WATTS)]);
        assert_eq!(e.implausible(), 3);
    }

    #[test]
    fn devices_are_kept_apart() {
        let mut e = Energy::new();
        e.observe_power("A", "grid_power", 100.0, at(0.0));
        e.observe_power("B", "grid_power", 100.0, at(5.0));
        e.observe_power("A", "grid_power", 100.0, at(36.0));
        assert!(close(
            e.totals("A").map_or(0.0, |t| t.get(Counter::GridImport)),
            0.001
        ));
        assert_eq!(e.totals("B").map(|t| t.get(Counter::GridImport)), Some(0.0));
    }
}
