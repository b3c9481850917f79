//! When a value goes out: the rate rule of the flat topics.
//!
//! A value is published
//! - the first time it is seen;
//! - when it has changed (by at least its resolution, see
//!   [`MetricInfo::resolution`](crate::metric_info::MetricInfo)) and the
//!   last publish is at least the interval old: one state per interval at
//!   most, and the latest value at the end of a burst of changes;
//! - with an interval of 0, on every reading;
//! - unchanged, once per heartbeat while its device is sending, so that
//!   Home Assistant's `expire_after` only fires when the P3 (or pv3) has
//!   gone quiet.

use std::time::Duration;

use tokio::time::Instant;

/// The interval and the heartbeat.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rate {
    /// At most one publish per this, unless 0 (every reading).
    pub(super) interval: Duration,
    /// At least one publish per this while the device sends; never shorter
    /// than the interval.
    pub(super) heartbeat: Duration,
}

/// One value's publishing state.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    /// The latest value received.
    pub(super) value: f64,
    /// Changes smaller than this are not changes (0: any difference is).
    resolution: f64,
    /// A reading arrived since the last publish.
    fresh: bool,
    /// The value last published, and when.
    published: Option<(f64, Instant)>,
}

impl Slot {
    pub(super) fn new(value: f64, resolution: f64) -> Slot {
        Slot {
            value,
            resolution,
            fresh: true,
            published: None,
        }
    }

    /// A new reading of the value.
    pub(super) fn update(&mut self, value: f64) {
        self.value = value;
        self.fresh = true;
    }

    fn changed(&self, last: f64) -> bool {
        if self.resolution > 0.0 {
            // A hair of slack: 49.76 − 49.75 is 0.00999… in binary.
            (self.value - last).abs() + 1e-9 >= self.resolution
        } else {
            self.value.to_bits() != last.to_bits()
        }
    }

    /// Whether the value should go out at `now`; `alive`: its device sent
    /// something recently (heartbeats only then).
    pub(super) fn due(&self, rate: Rate, now: Instant, alive: bool) -> bool {
        let Some((last, at)) = self.published else {
            return true;
        };
        let since = now.saturating_duration_since(at);
        let changed = if rate.interval.is_zero() {
            self.fresh
        } else {
            self.changed(last) && since >= rate.interval
        };
        changed || (alive && since >= rate.heartbeat)
    }

    /// The value went out at `now`.
    pub(super) fn published(&mut self, now: Instant) {
        self.published = Some((self.value, now));
        self.fresh = false;
    }

    /// Forget the last publish: the next check publishes (a reconnect, Home
    /// Assistant's birth message).
    pub(super) fn republish(&mut self) {
        self.published = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        interval: Duration::from_secs(10),
        heartbeat: Duration::from_secs(300),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn first_value_goes_out_then_at_most_one_per_interval() {
        let t0 = Instant::now();
        let mut slot = Slot::new(100.0, 1.0);
        assert!(slot.due(RATE, t0, true));
        slot.published(t0);
        slot.update(150.0);
        assert!(!slot.due(RATE, t0 + secs(9), true));
        assert!(slot.due(RATE, t0 + secs(10), true));
        slot.published(t0 + secs(10));
        // Back and forth within the interval: only the state at its end.
        slot.update(100.0);
        slot.update(150.0);
        assert!(!slot.due(RATE, t0 + secs(25), true));
    }

    #[test]
    fn changes_below_the_resolution_wait_for_the_heartbeat() {
        let t0 = Instant::now();
        let mut slot = Slot::new(100.0, 1.0);
        slot.published(t0);
        slot.update(100.6);
        assert!(!slot.due(RATE, t0 + secs(60), true));
        assert!(slot.due(RATE, t0 + secs(300), true));
        // A silent device gets no heartbeat.
        assert!(!slot.due(RATE, t0 + secs(300), false));
        let mut volts = Slot::new(49.75, 0.01);
        volts.published(t0);
        volts.update(49.76);
        assert!(volts.due(RATE, t0 + secs(10), true));
    }

    #[test]
    fn interval_zero_publishes_every_reading() {
        let rate = Rate {
            interval: Duration::ZERO,
            ..RATE
        };
        let t0 = Instant::now();
        let mut slot = Slot::new(5.0, 1.0);
        slot.published(t0);
        assert!(!slot.due(rate, t0, true));
        slot.update(5.0);
        assert!(slot.due(rate, t0, true));
    }
}
