//! The checks of the local collector, from the `status.json` it rewrites
//! every few seconds in its state directory.

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use super::{Check, CheckResult, Outcome, parse_time};
use crate::human::human_secs;
use crate::reading::Timestamp;
use crate::state_dir::{SERVICE_DIR, STATUS_FILE, StateDir};
use crate::status::{self, Status};

/// A collector whose status file is older than this is not running: it
/// rewrites the file every few seconds.
const COLLECTOR_STALE_SECS: f64 = 60.0;

/// The collector's rows, when there is a status file: from `given`
/// (`--state-dir` or `$STATE_DIRECTORY`), else the user's state directory,
/// else the system service's. None when there is no status file at all.
pub(super) fn checks(given: Option<&Path>, max_age: Duration) -> Vec<CheckResult> {
    let mut dirs: Vec<StateDir> = StateDir::resolve(given).into_iter().collect();
    if given.is_none() {
        dirs.push(StateDir::new(SERVICE_DIR));
    }
    for dir in &dirs {
        match status::read(dir.path()) {
            Ok(Some(status)) => return judge(dir, &status, max_age.as_secs_f64()),
            Ok(None) => {}
            Err(e) => {
                let denied = e
                    .root_cause()
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == ErrorKind::PermissionDenied);
                if denied && given.is_none() {
                    return vec![CheckResult::new(
                        Check::CollectorRunning,
                        Outcome::Skip,
                        format!(
                            "{} is readable by root only: run with sudo to include the service's status",
                            dir.status().display()
                        ),
                    )];
                }
                return vec![CheckResult::new(
                    Check::CollectorRunning,
                    Outcome::Fail,
                    format!("{e:#}"),
                )];
            }
        }
    }
    Vec::new()
}

/// Seconds since the RFC 3339 time `text`, never negative; `None` when
/// there is no time or it does not parse.
fn age(now: Timestamp, text: Option<&str>) -> Option<f64> {
    text.and_then(parse_time)
        .map(|t| now.seconds_since(t).max(0.0))
}

/// Running, MQTT and delivery rows; only the first when the status file
/// cannot say whether the collector runs.
fn judge(dir: &StateDir, s: &Status, max_age: f64) -> Vec<CheckResult> {
    let now = Timestamp::now();
    let file = dir.status();
    let Some(updated) = age(now, Some(&s.updated_at)) else {
        return vec![CheckResult::new(
            Check::CollectorRunning,
            Outcome::Fail,
            format!(
                "{} has no readable updated_at (\"{}\")",
                file.display(),
                s.updated_at
            ),
        )];
    };
    let dead = s.boot_id.is_some()
        && s.boot_id == status::boot_id()
        && status::pid_is_pv3(s.pid) == Some(false);
    if dead || updated > COLLECTOR_STALE_SECS {
        let why = if dead {
            format!(
                "pid {} of {} (updated {} ago) is gone",
                s.pid,
                file.display(),
                human_secs(updated)
            )
        } else {
            format!(
                "{} last updated {} ago",
                file.display(),
                human_secs(updated)
            )
        };
        let not_running = format!(
            "{why}: the collector is not running (systemctl status pv3-collector; journalctl -u pv3-collector -e says why it stopped)"
        );
        return vec![
            CheckResult::new(Check::CollectorRunning, Outcome::Fail, not_running),
            CheckResult::new(Check::CollectorMqtt, Outcome::Skip, "collector not running"),
            CheckResult::new(
                Check::CollectorDelivery,
                Outcome::Skip,
                "collector not running",
            ),
        ];
    }
    let uptime = age(now, Some(&s.started_at))
        .map(|a| format!(", up {}", human_secs(a)))
        .unwrap_or_default();
    let running = CheckResult::new(
        Check::CollectorRunning,
        Outcome::Pass,
        format!(
            "pid {}, pv3 {}{uptime}, {STATUS_FILE} updated {} ago",
            s.pid,
            s.pv3_version,
            human_secs(updated)
        ),
    );
    let mut rows = vec![running, mqtt(s, now, max_age), delivery(dir, s, now)];
    if !s.outputs.is_empty() {
        rows.push(outputs(s, now));
    }
    rows
}

/// Each output beside the API: connected (or listening), and when it last
/// published (or was scraped).
fn outputs(s: &Status, now: Timestamp) -> CheckResult {
    let mut parts = Vec::new();
    let mut down = Vec::new();
    for o in &s.outputs {
        let (up, verb, never) = match o.name.as_str() {
            "prometheus" => ("listening", "last scrape", "not scraped yet"),
            _ => ("connected", "last publish", "nothing published yet"),
        };
        let last = match age(now, o.last_at.as_deref()) {
            Some(a) => format!("{verb} {} ago", human_secs(a)),
            None => never.to_owned(),
        };
        let state = match (o.connected, o.delivering) {
            (false, _) => "not connected",
            (true, Some(false)) => "connected, but what it publishes does not arrive",
            (true, _) => up,
        };
        let dropped = if o.dropped > 0 {
            format!(", {} dropped", o.dropped)
        } else {
            String::new()
        };
        parts.push(format!("{}: {state}, {last}{dropped}", o.name));
        if !o.connected || o.delivering == Some(false) {
            down.push(o.name.as_str());
        }
    }
    let detail = parts.join("; ");
    if down.is_empty() {
        CheckResult::new(Check::CollectorOutputs, Outcome::Pass, detail)
    } else {
        CheckResult::new(
            Check::CollectorOutputs,
            Outcome::Warn,
            format!(
                "{detail}: {} does not reach its destination (see the collector's log)",
                down.join(", ")
            ),
        )
    }
}

/// Connected to the broker, and hearing from the P3?
fn mqtt(s: &Status, now: Timestamp, max_age: f64) -> CheckResult {
    let message_age = age(now, s.last_message_at.as_deref());
    let last_message = match message_age {
        Some(age) => format!("last message {} ago", human_secs(age)),
        None => "no message yet".to_owned(),
    };
    if !s.broker_connected {
        CheckResult::new(
            Check::CollectorMqtt,
            Outcome::Warn,
            format!(
                "not connected to {} ({last_message}): is the P3 on, and --mqtt-host right?",
                s.broker
            ),
        )
    } else if let Some(hint) = &s.device_hint {
        CheckResult::new(
            Check::CollectorMqtt,
            Outcome::Warn,
            format!("connected to {}, but {hint}", s.broker),
        )
    } else if message_age.is_some_and(|age| age > max_age) {
        CheckResult::new(
            Check::CollectorMqtt,
            Outcome::Warn,
            format!(
                "connected to {}, but {last_message} (over --max-age): is --device-id right?",
                s.broker
            ),
        )
    } else {
        CheckResult::new(
            Check::CollectorMqtt,
            Outcome::Pass,
            format!("connected to {}, {last_message}", s.broker),
        )
    }
}

/// Delivering, with nothing waiting, dropped or refused?
fn delivery(dir: &StateDir, s: &Status, now: Timestamp) -> CheckResult {
    if s.no_api {
        return CheckResult::new(
            Check::CollectorDelivery,
            Outcome::Skip,
            "the collector runs with --no-api",
        );
    }
    let last_delivery = match age(now, s.last_delivery_at.as_deref()) {
        Some(age) => format!("last delivery {} ago", human_secs(age)),
        None => "nothing delivered yet".to_owned(),
    };
    let c = &s.counters;
    let mut detail = format!(
        "{last_delivery}; spool {} batches ({} measurements); {} dropped, {} rejected",
        s.spool_batches, s.spool_measurements, c.dropped, c.rejected
    );
    if c.not_created > 0 {
        detail.push_str(&format!(
            ", {} not created (by the API's own count)",
            c.not_created
        ));
    }
    let mut problems = Vec::new();
    if s.spool_batches > 0 || s.spool_measurements > 0 {
        problems.push("the spool is waiting for the API".to_owned());
    }
    if c.dropped > 0 {
        problems.push("readings were dropped because the queue or spool was full".to_owned());
    }
    if c.not_created > 0 {
        problems.push("the API said it created fewer measurements than it took".to_owned());
    }
    if c.rejected > 0 {
        problems.push(format!(
            "the API refused some (see {})",
            dir.dead_letters().display()
        ));
    }
    if problems.is_empty() {
        CheckResult::new(Check::CollectorDelivery, Outcome::Pass, detail)
    } else {
        CheckResult::new(
            Check::CollectorDelivery,
            Outcome::Warn,
            format!("{detail}: {}", problems.join("; ")),
        )
    }
}
