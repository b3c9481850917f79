//! The SOC filter: the one stateful stage between decoding and the sinks.
//!
//! The P3 occasionally publishes a system SOC that is far from the truth for
//! one reading. The filter holds such a jump back (sending the raw value as
//! `soc_raw` and the last good value as `soc`) until the next reading
//! confirms it. Unlike the old collector it recovers from real jumps, and a
//! gap of five minutes resets it. The rules are in `p3-topics.md`; the tests
//! below walk through each one.
//!
//! It runs per device, on each reading's own timestamp, so that live
//! collection and replay of a capture give the same answer.

use std::collections::HashMap;

use crate::decode::metric;
use crate::reading::{Measurement, Timestamp};

/// Readings this far apart (seconds) are never compared: the older value says
/// nothing about the newer one any more.
const GAP_SECONDS: f64 = 300.0;

/// Floating-point slack, so that a step of exactly the threshold is not a jump.
const TOLERANCE: f64 = 1e-9;

/// Devices tracked at once. With `--device-id +` anyone who can publish on
/// the broker can invent devices; past this the table starts afresh (each
/// device's next reading is then accepted as a first one).
const MAX_DEVICES: usize = 4096;

#[derive(Debug)]
struct DeviceState {
    accepted: f64,
    accepted_at: Timestamp,
    held_back: Option<f64>,
}

/// Per-device SOC jump filter. `threshold == 0` turns it off.
#[derive(Debug)]
pub struct SocFilter {
    threshold: f64,
    devices: HashMap<String, DeviceState>,
}

impl SocFilter {
    /// `threshold` in percentage points; 0 (or anything not above 0) turns
    /// the filter off.
    pub fn new(threshold: f64) -> Self {
        SocFilter {
            threshold: if threshold.is_finite() && threshold > 0.0 {
                threshold
            } else {
                0.0
            },
            devices: HashMap::new(),
        }
    }

    fn is_enabled(&self) -> bool {
        self.threshold > 0.0
    }

    /// Filters the `soc` readings among `measurements` (in place), appending a
    /// `soc_raw` for each one held back. Other metrics, `soc_module_*`
    /// included, pass untouched.
    pub fn apply(&mut self, device: &str, at: Timestamp, measurements: &mut Vec<Measurement>) {
        if !self.is_enabled() {
            return;
        }
        let mut raw = Vec::new();
        for m in measurements.iter_mut().filter(|m| m.metric == metric::SOC) {
            if let Some(substituted) = self.judge(device, at, m.value) {
                raw.push(Measurement::new(metric::SOC_RAW, m.value, m.unit));
                m.value = substituted;
            }
        }
        measurements.extend(raw);
    }

    /// Judges one `soc` value: `None` to accept it, `Some(v)` to send `v` in
    /// its place (the jump is held back).
    fn judge(&mut self, device: &str, at: Timestamp, value: f64) -> Option<f64> {
        let limit = self.threshold + TOLERANCE;
        let Some(state) = self.devices.get_mut(device) else {
            if self.devices.len() >= MAX_DEVICES {
                self.devices.clear();
            }
            self.devices.insert(
                device.to_owned(),
                DeviceState {
                    accepted: value,
                    accepted_at: at,
                    held_back: None,
                },
            );
            return None;
        };
        let gap = at.seconds_since(state.accepted_at) >= GAP_SECONDS;
        let close_to_accepted = (value - state.accepted).abs() <= limit;
        let confirms_jump = state.held_back.is_some_and(|h| (value - h).abs() <= limit);
        if gap || close_to_accepted || confirms_jump {
            state.accepted = value;
            state.accepted_at = at;
            state.held_back = None;
            None
        } else {
            state.held_back = Some(value);
            Some(state.accepted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> Timestamp {
        Timestamp::from_unix_micros(1_700_000_000_000_000 + (seconds * 1e6) as i64)
    }

    /// Runs a sequence of (time, soc) through the filter and returns, per
    /// reading, (soc sent, soc_raw sent).
    fn run(filter: &mut SocFilter, device: &str, seq: &[(f64, f64)]) -> Vec<(f64, Option<f64>)> {
        seq.iter()
            .map(|&(t, v)| {
                let mut ms = vec![Measurement::new("soc", v, "%")];
                filter.apply(device, at(t), &mut ms);
                let soc = ms.iter().find(|m| m.metric == "soc").map(|m| m.value);
                let raw = ms.iter().find(|m| m.metric == "soc_raw").map(|m| m.value);
                assert_eq!(ms.len(), 1 + usize::from(raw.is_some()));
                (soc.expect("soc always sent"), raw)
            })
            .collect()
    }

    #[test]
    fn first_reading_is_accepted_and_small_steps_pass() {
        let mut f = SocFilter::new(1.0);
        let out = run(
            &mut f,
            "A",
            &[(0.0, 50.0), (10.0, 50.5), (20.0, 51.5), (30.0, 50.5)],
        );
        assert_eq!(
            out,
            vec![(50.0, None), (50.5, None), (51.5, None), (50.5, None)]
        );
    }

    #[test]
    fn a_step_of_exactly_the_threshold_is_not_a_jump() {
        let mut f = SocFilter::new(1.0);
        // 97.3 - 96.3 is 1.0000000000000142 in binary floating point.
        let out = run(
            &mut f,
            "A",
            &[(0.0, 96.3), (10.0, 97.3), (20.0, 96.3), (30.0, 95.2)],
        );
        assert_eq!(
            out,
            vec![(96.3, None), (97.3, None), (96.3, None), (96.3, Some(95.2))]
        );
        let mut f = SocFilter::new(0.1);
        let out = run(&mut f, "A", &[(0.0, 0.7), (10.0, 0.8), (20.0, 0.9)]);
        assert_eq!(out, vec![(0.7, None), (0.8, None), (0.9, None)]);
    }

    #[test]
    fn an_outlier_is_held_back_and_the_next_good_reading_accepted() {
        let mut f = SocFilter::new(1.0);
        let out = run(&mut f, "A", &[(0.0, 97.0), (10.0, 87.0), (20.0, 97.0)]);
        assert_eq!(out, vec![(97.0, None), (97.0, Some(87.0)), (97.0, None)]);
    }

    #[test]
    fn a_real_jump_is_accepted_once_confirmed() {
        // The old collector rejected every reading after this forever.
        let mut f = SocFilter::new(1.0);
        let out = run(
            &mut f,
            "A",
            &[
                (0.0, 40.0),
                (10.0, 60.0),
                (20.0, 60.5),
                (30.0, 61.0),
                (40.0, 40.0),
            ],
        );
        assert_eq!(
            out,
            vec![
                (40.0, None),
                (40.0, Some(60.0)),
                (60.5, None),
                (61.0, None),
                (61.0, Some(40.0)),
            ]
        );
    }

    #[test]
    fn each_rejection_replaces_the_held_back_value() {
        let mut f = SocFilter::new(1.0);
        let out = run(
            &mut f,
            "A",
            &[
                (0.0, 50.0),
                (10.0, 70.0),
                (20.0, 30.0),
                (30.0, 70.0),
                (40.0, 30.5),
            ],
        );
        assert_eq!(
            out,
            vec![
                (50.0, None),
                (50.0, Some(70.0)),
                (50.0, Some(30.0)),
                // 70 is no longer the held-back value: 30 replaced it.
                (50.0, Some(70.0)),
                (50.0, Some(30.5)),
            ]
        );
    }

    #[test]
    fn a_gap_of_five_minutes_accepts_anything() {
        let mut f = SocFilter::new(1.0);
        let out = run(&mut f, "A", &[(0.0, 80.0), (299.9, 20.0), (300.0, 20.0)]);
        // 299.9 s: still compared (held back); 300 s after the last accepted
        // reading: accepted whatever its value (and here it also confirms).
        assert_eq!(out, vec![(80.0, None), (80.0, Some(20.0)), (20.0, None)]);
    }

    #[test]
    fn substituted_values_do_not_reset_the_gap_clock() {
        let mut f = SocFilter::new(1.0);
        let out = run(
            &mut f,
            "A",
            &[(0.0, 80.0), (200.0, 10.0), (250.0, 50.0), (300.0, 30.0)],
        );
        assert_eq!(
            out,
            vec![
                (80.0, None),
                (80.0, Some(10.0)),
                (80.0, Some(50.0)),
                (30.0, None)
            ]
        );
    }

    #[test]
    fn devices_are_filtered_independently() {
        let mut f = SocFilter::new(1.0);
        assert_eq!(run(&mut f, "A", &[(0.0, 90.0)]), vec![(90.0, None)]);
        assert_eq!(run(&mut f, "B", &[(1.0, 10.0)]), vec![(10.0, None)]);
        assert_eq!(run(&mut f, "A", &[(2.0, 10.0)]), vec![(90.0, Some(10.0))]);
    }

    #[test]
    fn zero_threshold_turns_the_filter_off() {
        let mut f = SocFilter::new(0.0);
        let out = run(&mut f, "A", &[(0.0, 90.0), (1.0, 10.0), (2.0, 90.0)]);
        assert_eq!(out, vec![(90.0, None), (10.0, None), (90.0, None)]);
    }

    #[test]
    fn module_soc_and_other_metrics_pass_untouched() {
        let mut f = SocFilter::new(1.0);
        let mut ms = vec![Measurement::new("soc", 90.0, "%")];
        f.apply("A", at(0.0), &mut ms);
        let mut ms = vec![
            Measurement::new("soc_module_4", 10.0, "%"),
            Measurement::new("battery_power", 500.0, "W"),
        ];
        let before = ms.clone();
        f.apply("A", at(1.0), &mut ms);
        assert_eq!(ms, before);
        // And the module reading did not become the reference value.
        let mut ms = vec![Measurement::new("soc", 90.5, "%")];
        f.apply("A", at(2.0), &mut ms);
        assert_eq!(ms, vec![Measurement::new("soc", 90.5, "%")]);
    }

    #[test]
    fn invented_devices_cannot_grow_the_table_without_bound() {
        let mut f = SocFilter::new(1.0);
        for n in 0..(MAX_DEVICES * 3) {
            let mut ms = vec![Measurement::new("soc", 50.0, "%")];
            f.apply(&format!("DEV{n}"), at(0.0), &mut ms);
        }
        assert!(f.devices.len() <= MAX_DEVICES);
    }

    #[test]
    fn time_going_backwards_is_not_a_gap() {
        let mut f = SocFilter::new(1.0);
        let out = run(&mut f, "A", &[(1000.0, 50.0), (0.0, 10.0)]);
        assert_eq!(out, vec![(50.0, None), (50.0, Some(10.0))]);
    }
}
