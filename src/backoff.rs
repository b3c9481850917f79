//! Exponential backoff with jitter, for API retries and MQTT reconnects.
//!
//! "Equal jitter": each delay is half the exponential step plus a random
//! share of the other half, so a fleet of Pis that lost the same API at the
//! same moment do not all come back in lock-step, and no delay is ever near
//! zero (no hot loop while the other side is down).

use std::time::Duration;

/// The delays between retries of one thing (an API, a broker connection):
/// longer after each failure, short again after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Steps start at `initial` (at least 1 ms) and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next delay; each call doubles the step up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt.min(30)))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Starts again from `initial`: call it after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap_and_never_vanish() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_millis(100 * (1u64 << i.min(20))).min(Duration::from_secs(2));
            assert!(
                *d >= step / 2 && *d <= step,
                "attempt {i}: {d:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
