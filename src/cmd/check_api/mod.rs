//! `pv3 check-api`: is data flowing? One row per check, each with a mark,
//! a detail and its latency, so an owner can tell in one command where the
//! chain from P3 to dashboard is broken.
//!
//! Checks run one after the other, each bounded by `--api-timeout`; when the
//! API cannot be reached at all the checks that need it are shown as
//! skipped instead of each waiting for its own timeout. The token never
//! appears in the output: details that could echo it (an error body from a
//! proxy) are scrubbed.
//!
//! [`Check`] names every check; [`api`] runs those that talk to the API,
//! [`collector`] those that read the local collector's status file.

mod api;
mod collector;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Serialize, Serializer};
use tabled::settings::object::Columns;
use tabled::settings::{Style, Width};
use tabled::{Table, Tabled};

use crate::cli::{CheckApiArgs, CheckFormat};
use crate::reading::Timestamp;

/// The metric `--write` posts and reads back.
const PROBE_METRIC: &str = "pv3_check_probe";

/// Detail column width in the table; longer details wrap.
const DETAIL_WIDTH: usize = 72;

/// How much of an answer is read; the API's answers are small.
const BODY_LIMIT: usize = 1024 * 1024;

/// Every check, in the order the report shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// DNS, TCP and (for https) TLS to `--api-url`.
    ApiReachable,
    /// `GET /health` says "healthy".
    Health,
    /// `GET /` names PV3 Monitor.
    ApiVersion,
    /// The API has data for `--device-id`.
    DeviceKnown,
    /// Its newest data is younger than `--max-age`.
    FreshData,
    /// `--write`: a probe posted and read back.
    WriteRoundTrip,
    /// The collector's status file is fresh.
    CollectorRunning,
    /// The collector is connected and hears from the P3.
    CollectorMqtt,
    /// The collector delivers, with nothing waiting, dropped or refused.
    CollectorDelivery,
    /// The collector's outputs beside the API publish or are scraped.
    CollectorOutputs,
}

impl Check {
    /// The name in the table and in `--format json` (scripts match on it).
    fn name(self) -> &'static str {
        match self {
            Check::ApiReachable => "API reachable",
            Check::Health => "health",
            Check::ApiVersion => "API version",
            Check::DeviceKnown => "device known",
            Check::FreshData => "fresh data",
            Check::WriteRoundTrip => "write round trip",
            Check::CollectorRunning => "collector running",
            Check::CollectorMqtt => "collector MQTT",
            Check::CollectorDelivery => "collector delivery",
            Check::CollectorOutputs => "collector outputs",
        }
    }
}

impl Serialize for Check {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl Outcome {
    fn mark(self) -> &'static str {
        match self {
            Outcome::Pass => "✓",
            Outcome::Warn => "!",
            Outcome::Fail => "✗",
            Outcome::Skip => "-",
        }
    }
}

/// One row of the report (and one object of `--format json`'s `checks`).
#[derive(Debug, Clone, Serialize)]
struct CheckResult {
    name: Check,
    status: Outcome,
    detail: String,
    /// `None` for skipped and local checks.
    latency_ms: Option<f64>,
}

impl CheckResult {
    fn new(name: Check, status: Outcome, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status,
            detail: detail.into(),
            latency_ms: None,
        }
    }

    fn timed(mut self, elapsed: Duration) -> CheckResult {
        self.latency_ms = Some((elapsed.as_secs_f64() * 10_000.0).round() / 10.0);
        self
    }
}

/// Every row, and whether none failed.
#[derive(Debug, Clone, Serialize)]
struct Report {
    ok: bool,
    checks: Vec<CheckResult>,
}

impl Report {
    fn new(checks: Vec<CheckResult>) -> Report {
        Report {
            ok: !checks.iter().any(|c| c.status == Outcome::Fail),
            checks,
        }
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.status == outcome).count()
    }
}

/// Runs every check and prints the report; an error when one failed.
pub async fn run(args: CheckApiArgs) -> Result<()> {
    let client = super::api_client(&args.api)?;
    let checker = api::Checker::new(client, &args);
    let mut checks = checker.run().await;
    checks.extend(collector::checks(
        args.state.state_dir.as_deref(),
        args.max_age,
    ));
    for check in &mut checks {
        check.detail = checker.scrub(&check.detail);
    }
    let report = Report::new(checks);
    print(&report, args.format)?;
    if !report.ok {
        bail!(
            "{} of {} checks failed",
            report.count(Outcome::Fail),
            report.checks.len()
        );
    }
    Ok(())
}

fn print(report: &Report, format: CheckFormat) -> Result<()> {
    let text = match format {
        CheckFormat::Json => {
            let mut text =
                serde_json::to_string_pretty(report).context("cannot encode the report")?;
            text.push('\n');
            text
        }
        CheckFormat::Table => render_table(report),
    };
    crate::output::print_stdout(text.as_bytes())
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "")]
    mark: &'static str,
    check: &'static str,
    detail: String,
    #[tabled(rename = "ms")]
    latency: String,
}

/// The table, then one summary line.
fn render_table(report: &Report) -> String {
    let rows = report.checks.iter().map(|c| Row {
        mark: c.status.mark(),
        check: c.name.name(),
        detail: c.detail.clone(),
        latency: match c.latency_ms {
            Some(ms) if ms < 10.0 => format!("{ms:.1}"),
            Some(ms) => format!("{ms:.0}"),
            None => String::new(),
        },
    });
    let mut table = Table::new(rows);
    table.with(Style::rounded());
    table.modify(Columns::one(2), Width::wrap(DETAIL_WIDTH).keep_words(true));
    let mut parts = Vec::new();
    for (outcome, one, many) in [
        (Outcome::Fail, "failed", "failed"),
        (Outcome::Warn, "warning", "warnings"),
        (Outcome::Pass, "passed", "passed"),
        (Outcome::Skip, "skipped", "skipped"),
    ] {
        match report.count(outcome) {
            0 => {}
            1 => parts.push(format!("1 {one}")),
            n => parts.push(format!("{n} {many}")),
        }
    }
    format!("{table}\n{}\n", parts.join(", "))
}

/// RFC 3339; a time without a zone (some backends drop it) is taken as UTC.
fn parse_time(text: &str) -> Option<Timestamp> {
    Timestamp::parse_rfc3339(text)
        .or_else(|_| Timestamp::parse_rfc3339(&format!("{text}Z")))
        .or_else(|_| Timestamp::parse_rfc3339(&format!("{}Z", text.replacen(' ', "T", 1))))
        .ok()
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_without_a_zone_are_utc() {
        let z = parse_time("2026-11-27T14:19:27.357Z").expect("rfc3339");
        assert_eq!(parse_time("2026-11-27T14:19:27.357"), Some(z));
        assert_eq!(parse_time("2026-11-27 14:19:27.357"), Some(z));
        assert_eq!(parse_time("2026-11-27T16:19:27.357+02:00"), Some(z));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn warnings_alone_are_ok() {
        let report = Report::new(vec![
            CheckResult::new(Check::Health, Outcome::Pass, ""),
            CheckResult::new(Check::FreshData, Outcome::Warn, ""),
            CheckResult::new(Check::WriteRoundTrip, Outcome::Skip, ""),
        ]);
        assert!(report.ok);
        let report = Report::new(vec![CheckResult::new(Check::Health, Outcome::Fail, "")]);
        assert!(!report.ok);
        assert!(render_table(&report).ends_with("1 failed\n"));
    }

    #[test]
    fn checks_go_to_json_by_their_names() {
        let report = Report::new(vec![CheckResult::new(
            Check::CollectorMqtt,
            Outcome::Warn,
            "x",
        )]);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"ok": true, "checks": [
                {"name": "collector MQTT", "status": "warn", "detail": "x", "latency_ms": null}
            ]})
        );
    }
}
