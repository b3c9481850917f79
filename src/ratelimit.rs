//! Rate-limited warnings: the same decode error every second must not flood
//! the journal on a Pi's SD card, but nothing may vanish silently either, so
//! each key logs at most once per window and the next log line says how many
//! were suppressed in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a warning may repeat: once a minute, everywhere in pv3.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Keys beyond this are forgotten wholesale (hostile topics could otherwise
/// grow the map without bound).
const MAX_KEYS: usize = 1024;

/// One log line per key per window, counting what it held back.
pub struct RateLimiter {
    window: Duration,
    keys: HashMap<String, (Instant, u64)>,
}

impl RateLimiter {
    /// At most one line per key every `window`.
    pub fn new(window: Duration) -> Self {
        RateLimiter {
            window,
            keys: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be logged now, with how
    /// many were suppressed since the last one; `None` to stay quiet.
    pub fn allow(&mut self, key: &str) -> Option<u64> {
        let now = Instant::now();
        if let Some((last, suppressed)) = self.keys.get_mut(key) {
            if now.duration_since(*last) < self.window {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if self.keys.len() >= MAX_KEYS {
            self.keys.clear();
        }
        self.keys.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

/// " (N similar suppressed)" or "".
pub fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_hit_in_window_is_suppressed_and_counted() {
        let mut rl = RateLimiter::new(Duration::from_millis(0));
        assert_eq!(rl.allow("a"), Some(0));
        assert_eq!(rl.allow("a"), Some(0));
        let mut rl = RateLimiter::new(Duration::from_secs(3600));
        assert_eq!(rl.allow("a"), Some(0));
        assert_eq!(rl.allow("a"), None);
        assert_eq!(rl.allow("a"), None);
        assert_eq!(rl.allow("b"), Some(0));
        rl.window = Duration::ZERO;
        assert_eq!(rl.allow("a"), Some(2));
        assert_eq!(suppressed_note(2), " (2 similar suppressed)");
    }
}
