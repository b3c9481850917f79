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
//! - Totals only ever grow. They are kept in the state directory
//!   ([`EnergyFile`]) so that a restart continues them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::reading::{Measurement, Origin, Reading, Timestamp};

/// Longest stretch between two readings that is integrated, in seconds.
pub const MAX_GAP_SECS: f64 = 60.0;

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
            Counter::GridImport => "grid_import_energy",
            Counter::GridExport => "grid_export_energy",
            Counter::BatteryDischarge => "battery_discharge_energy",
            Counter::BatteryCharge => "battery_charge_energy",
            Counter::House => "house_energy",
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
    ("grid_power", Counter::GridImport, Some(Counter::GridExport)),
    (
        "battery_power",
        Counter::BatteryDischarge,
        Some(Counter::BatteryCharge),
    ),
    ("house_power", Counter::House, None),
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
        }
    }

    /// Feeds one reading; `true` when it carried a power the counters
    /// integrate (the device's totals are then known, if not grown: the
    /// outputs publish them from the first power reading on).
    pub fn observe(&mut self, reading: &Reading) -> bool {
        let mut fed = false;
        for m in &reading.measurements {
            if SOURCES.iter().any(|(metric, _, _)| *metric == m.metric) {
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
    /// in watts, at `at`; `true` when a total grew.
    pub fn observe_power(&mut self, device: &str, metric: &str, watts: f64, at: Timestamp) -> bool {
        let Some(source) = SOURCES.iter().position(|(m, _, _)| *m == metric) else {
            return false;
        };
        if !watts.is_finite() {
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
        let totals = self.totals(device)?;
        Some(Reading {
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
        })
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

/// The counters' file in the state directory (`energy.json`): written
/// atomically (temporary file, fsync, rename), read back at start.
#[derive(Debug, Clone)]
pub struct EnergyFile {
    path: PathBuf,
}

/// The file's shape.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    updated_at: String,
    /// device id → counter metric → kWh.
    devices: BTreeMap<String, BTreeMap<String, f64>>,
}

/// What [`EnergyFile::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// The saved totals.
    Totals(BTreeMap<String, Totals>),
    /// No file yet: a first start.
    Missing,
    /// A file that could not be read; moved aside to the path given (when
    /// that worked), and the counters start at zero.
    Corrupt {
        /// Why it could not be read.
        reason: String,
        /// Where it was moved.
        moved_to: Option<PathBuf>,
    },
}

impl EnergyFile {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> EnergyFile {
        EnergyFile { path: path.into() }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the saved totals. Negative or non-finite totals, or unknown
    /// counter names, make the file corrupt: counters never go down, so
    /// nothing trustworthy wrote them.
    pub fn load(&self) -> Loaded {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return self.corrupt(format!("cannot read it: {e}")),
        };
        match parse(&bytes) {
            Ok(totals) => Loaded::Totals(totals),
            Err(reason) => self.corrupt(reason),
        }
    }

    fn corrupt(&self, reason: String) -> Loaded {
        let secs = Timestamp::now().unix_micros().div_euclid(1_000_000);
        let aside = self.path.with_extension(format!("json.corrupt-{secs}"));
        let moved_to = std::fs::rename(&self.path, &aside).ok().map(|()| aside);
        Loaded::Corrupt { reason, moved_to }
    }

    /// Writes `energy`'s totals, replacing the file atomically.
    pub fn save(&self, energy: &Energy) -> Result<()> {
        let saved = Saved {
            version: 1,
            updated_at: Timestamp::now().to_rfc3339(),
            devices: energy
                .all()
                .map(|(device, totals)| {
                    let counters = totals
                        .iter()
                        .map(|(c, kwh)| (c.metric().to_string(), kwh))
                        .collect();
                    (device.to_string(), counters)
                })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&saved).context("cannot encode the totals")?;
        text.push(b'\n');
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "energy.json".into());
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&text)?;
            // Once a minute at most: worth an fsync, so that a power cut
            // leaves the old file or the new one, never an empty one.
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &self.path)
        };
        write().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Totals>, String> {
    let saved: Saved = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if saved.version != 1 {
        return Err(format!(
            "version {} is not one this pv3 reads",
            saved.version
        ));
    }
    let mut out = BTreeMap::new();
    for (device, counters) in saved.devices {
        let mut totals = Totals::default();
        for (metric, kwh) in counters {
            let counter =
                Counter::from_metric(&metric).ok_or_else(|| format!("unknown counter {metric}"))?;
            if !kwh.is_finite() || kwh < 0.0 {
                return Err(format!("{device} {metric} is {kwh}"));
            }
            totals.0[counter.index()] = kwh;
        }
        out.insert(device, totals);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "PV001001DEV";

    fn at(secs: f64) -> Timestamp {
        Timestamp::from_unix_micros(1_800_000_000_000_000 + (secs * 1e6) as i64)
    }

    fn feed(energy: &mut Energy, metric: &str, points: &[(f64, f64)]) {
        for &(t, w) in points {
            energy.observe_power(DEV, metric, w, at(t));
        }
    }

    fn total(energy: &Energy, c: Counter) -> f64 {
        energy.totals(DEV).map_or(0.0, |t| t.get(c))
    }

    fn close(a: f64, b: f64) -> bool {
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

    #[test]
    fn totals_round_trip_through_the_file_and_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = EnergyFile::new(dir.path().join("energy.json"));
        assert!(matches!(file.load(), Loaded::Missing));
        let mut e = Energy::new();
        feed(&mut e, "grid_power", &[(0.0, 3600.0), (10.0, 3600.0)]);
        file.save(&e).expect("save");
        let Loaded::Totals(saved) = file.load() else {
            panic!("saved totals expected")
        };
        let mut again = Energy::from_totals(saved);
        assert!(close(
            again
                .totals(DEV)
                .map_or(0.0, |t| t.get(Counter::GridImport)),
            0.01
        ));
        feed(&mut again, "grid_power", &[(20.0, 3600.0), (30.0, 3600.0)]);
        assert!(close(total(&again, Counter::GridImport), 0.02));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_counting_starts_at_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("energy.json");
        for bad in [
            &b"{not json"[..],
            br#"{"version":1,"updated_at":"","devices":{"A":{"grid_import_energy":-1}}}"#,
            br#"{"version":1,"updated_at":"","devices":{"A":{"bogus":1}}}"#,
            br#"{"version":9,"updated_at":"","devices":{}}"#,
        ] {
            std::fs::write(&path, bad).expect("write");
            match EnergyFile::new(&path).load() {
                Loaded::Corrupt { moved_to, .. } => {
                    let moved = moved_to.expect("moved aside");
                    assert_eq!(std::fs::read(&moved).expect("kept"), bad);
                    std::fs::remove_file(moved).expect("clean up");
                }
                other => panic!("corrupt expected, got {other:?}"),
            }
            assert!(!path.exists());
        }
    }
}
