//! Which readings a backfill has accounted for, to tell a repeat from a new
//! reading.
//!
//! Two measurements are **one reading** when they have the same device, the
//! same metric, the same value (compared exactly, as `f64`: pv3 writes the
//! shortest text that reads back to the same number, and reads the API's
//! answer the same way) and times less than [`SAME_READING`] apart. Exact
//! repeats (a capture holding a record twice) are the 0 ms case; a `pv3
//! sniff` taken beside `collect` holds the same readings with receive times
//! 1–5 ms apart.
//!
//! Why 250 ms: the P3 never publishes one metric twice in less than about a
//! second (the shortest interval between two readings of one metric in
//! `examples/p3-sample.jsonl` is 962 ms: `battery_power` and the other
//! `inverter/charge` and `ffr/measurements` values). Under half of that, no
//! stored row can match two different readings of the P3, while two
//! processes' receive times (a few ms apart, tens under load, or two
//! machines' NTP clocks) fit well inside it.

use std::collections::HashMap;
use std::time::Duration;

use crate::reading::Timestamp;

/// Times closer than this (either way) are the same reading; see the
/// module docs.
pub(crate) const SAME_READING: Duration = Duration::from_millis(250);

/// The tolerance in microseconds.
const TOLERANCE_US: i64 = SAME_READING.as_micros() as i64;

/// Readings by device, metric and value: their times in microseconds,
/// sorted. Looked up without allocating.
#[derive(Debug, Default)]
pub(super) struct Seen {
    devices: HashMap<String, HashMap<String, HashMap<u64, Vec<i64>>>>,
}

/// Equal values, equal keys: `-0.0` is `0.0`.
fn value_key(value: f64) -> u64 {
    if value == 0.0 { 0 } else { value.to_bits() }
}

impl Seen {
    /// Remembers a reading.
    pub(super) fn insert(&mut self, device: &str, metric: &str, value: f64, at: Timestamp) {
        self.add_new(device, metric, value, at, false);
    }

    /// Remembers a reading unless it holds the same one already; true when
    /// it was new. (One lookup where `holds` and `insert` would take two.)
    pub(super) fn insert_new(
        &mut self,
        device: &str,
        metric: &str,
        value: f64,
        at: Timestamp,
    ) -> bool {
        self.add_new(device, metric, value, at, true)
    }

    fn add_new(
        &mut self,
        device: &str,
        metric: &str,
        value: f64,
        at: Timestamp,
        check: bool,
    ) -> bool {
        let metrics = match self.devices.get_mut(device) {
            Some(metrics) => metrics,
            None => self.devices.entry(device.to_owned()).or_default(),
        };
        let values = match metrics.get_mut(metric) {
            Some(values) => values,
            None => metrics.entry(metric.to_owned()).or_default(),
        };
        let times = values.entry(value_key(value)).or_default();
        let at = at.unix_micros();
        if check && near(times, at) {
            return false;
        }
        // Captures are mostly in time order: a push, rarely an insert.
        if times.last().is_none_or(|&last| last <= at) {
            times.push(at);
        } else {
            let i = times.partition_point(|&t| t <= at);
            times.insert(i, at);
        }
        true
    }

    /// Is there a reading of this device, metric and value less than
    /// [`SAME_READING`] from `at`?
    pub(super) fn holds(&self, device: &str, metric: &str, value: f64, at: Timestamp) -> bool {
        if self.devices.is_empty() {
            return false;
        }
        self.devices
            .get(device)
            .and_then(|m| m.get(metric))
            .and_then(|v| v.get(&value_key(value)))
            .is_some_and(|times| near(times, at.unix_micros()))
    }
}

/// Does `times` (sorted) hold one less than [`SAME_READING`] from `at`?
fn near(times: &[i64], at: i64) -> bool {
    let first_after = times.partition_point(|&t| t <= at.saturating_sub(TOLERANCE_US));
    times
        .get(first_after)
        .is_some_and(|&t| t < at.saturating_add(TOLERANCE_US))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_micros(1_795_737_600_000_000 + ms * 1000)
    }

    #[test]
    fn the_same_reading_is_within_the_tolerance_either_way() {
        let mut seen = Seen::default();
        seen.insert("D", "soc", 97.5, at(1000));
        for ms in [1000, 999, 1001, 995, 1005, 751, 1249] {
            assert!(seen.holds("D", "soc", 97.5, at(ms)), "{ms}");
        }
        for ms in [750, 1250, 700, 1300, 0, 2000] {
            assert!(!seen.holds("D", "soc", 97.5, at(ms)), "{ms}");
        }
    }

    #[test]
    fn device_metric_and_value_must_all_be_equal() {
        let mut seen = Seen::default();
        seen.insert("D", "soc", 97.5, at(0));
        assert!(!seen.holds("E", "soc", 97.5, at(0)));
        assert!(!seen.holds("D", "soc_raw", 97.5, at(0)));
        assert!(!seen.holds("D", "soc", 97.500_000_000_000_01, at(0)));
        seen.insert("D", "grid_power", -0.0, at(0));
        assert!(seen.holds("D", "grid_power", 0.0, at(0)));
    }

    #[test]
    fn insert_new_tells_a_repeat() {
        let mut seen = Seen::default();
        assert!(seen.insert_new("D", "soc", 1.0, at(1000)));
        assert!(!seen.insert_new("D", "soc", 1.0, at(1003)));
        assert!(!seen.insert_new("D", "soc", 1.0, at(900)));
        assert!(seen.insert_new("D", "soc", 1.0, at(1300)));
        assert!(seen.insert_new("D", "soc", 2.0, at(1000)));
        assert!(seen.holds("D", "soc", 1.0, at(1500)));
        assert!(!seen.holds("D", "soc", 1.0, at(1600)));
    }

    #[test]
    fn times_out_of_order_are_found() {
        let mut seen = Seen::default();
        for ms in [5000, 1000, 3000, 9000, 7000] {
            seen.insert("D", "soc", 1.0, at(ms));
        }
        for ms in [1000, 3100, 5200, 6900, 9249] {
            assert!(seen.holds("D", "soc", 1.0, at(ms)), "{ms}");
        }
        for ms in [0, 2000, 4000, 6000, 8000, 10_000] {
            assert!(!seen.holds("D", "soc", 1.0, at(ms)), "{ms}");
        }
    }
}
