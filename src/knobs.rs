//! The undocumented knobs with which the integration tests shorten
//! intervals that are minutes long in production. A leaf module: anything
//! may read a knob, and a knob depends on nothing.

use std::time::Duration;

/// `default`, or the milliseconds in the environment variable `var`: the
/// undocumented knobs with which tests shorten collect's intervals
/// (`PV3_STATUS_INTERVAL_MS`, `PV3_DEVICE_HINT_AFTER_MS`,
/// `PV3_PUBLISH_HEARTBEAT_MS`, `PV3_ENERGY_SAVE_MS`).
pub fn interval_from_env(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(default, Duration::from_millis)
}
