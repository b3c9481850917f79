//! `pv3 check-api`: is data flowing? One row per check, each with a mark,
//! a detail and its latency, so an owner can tell in one command where the
//! chain from P3 to dashboard is broken.
//!
//! Checks run one after the other, each bounded by `--api-timeout`; when the
//! API cannot be reached at all the checks that need it are shown as
//! skipped instead of each waiting for its own timeout. The token never
//! appears in the output: details that could echo it (an error body from a
//! proxy) are scrubbed.

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use tabled::settings::object::Columns;
use tabled::settings::{Style, Width};
use tabled::{Table, Tabled};

use crate::api::{ApiClient, PostError, describe_error};
use crate::cli::{CheckApiArgs, CheckFormat};
use crate::output::is_broken_pipe;
use crate::reading::Timestamp;
use crate::state_dir::StateDir;
use crate::status::{self, Status};

/// The metric `--write` posts and reads back.
pub const PROBE_METRIC: &str = "pv3_check_probe";

/// A collector whose status file is older than this is not running: it
/// rewrites the file every few seconds.
const COLLECTOR_STALE_SECS: f64 = 60.0;

/// Detail column width in the table; longer details wrap.
const DETAIL_WIDTH: usize = 72;

/// How much of an answer is read; the API's answers are small.
const BODY_LIMIT: usize = 1024 * 1024;

/// State directory of the system service (`StateDirectory=pv3`), looked at
/// when no `--state-dir` is given and the user's own has no status.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl Outcome {
    pub fn mark(self) -> &'static str {
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
pub struct Check {
    pub name: &'static str,
    pub status: Outcome,
    pub detail: String,
    /// `None` for skipped and local checks.
    pub latency_ms: Option<f64>,
}

impl Check {
    fn new(name: &'static str, status: Outcome, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            latency_ms: None,
        }
    }

    fn timed(mut self, elapsed: Duration) -> Check {
        self.latency_ms = Some((elapsed.as_secs_f64() * 10_000.0).round() / 10.0);
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: !checks.iter().any(|c| c.status == Outcome::Fail),
            checks,
        }
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.status == outcome).count()
    }
}

pub async fn run(args: CheckApiArgs) -> Result<()> {
    let client = super::api_client(&args.api)?;
    let checker = Checker::new(client, &args);
    let report = checker.run().await;
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
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
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
pub fn render_table(report: &Report) -> String {
    let rows = report.checks.iter().map(|c| Row {
        mark: c.status.mark(),
        check: c.name,
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

/// A finished HTTP exchange.
struct Answer {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body on one line, shortened; an HTML page (a proxy's, or not
    /// the API at all) only named.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if text.starts_with('<') {
            return "(an HTML page)".to_owned();
        }
        shorten(&text, 120)
    }
}

struct Checker<'a> {
    client: ApiClient,
    args: &'a CheckApiArgs,
    /// Strings never to print (the token, a password in the URL).
    secrets: Vec<String>,
}

impl<'a> Checker<'a> {
    fn new(client: ApiClient, args: &'a CheckApiArgs) -> Checker<'a> {
        let mut secrets = Vec::new();
        if let Some(token) = &args.api.api_token {
            secrets.push(token.expose().to_owned());
        }
        if let Some(password) = args.api.api_url.password() {
            secrets.push(password.to_owned());
        }
        secrets.retain(|s| s.len() >= 3);
        Checker {
            client,
            args,
            secrets,
        }
    }

    async fn run(&self) -> Report {
        let mut checks = Vec::new();
        let reachable = self.reachable().await;
        let up = reachable.status != Outcome::Fail;
        checks.push(reachable);
        let mut api_checks = vec!["health", "API version", "device known", "fresh data"];
        if self.args.write {
            api_checks.push("write round trip");
        }
        if up {
            checks.push(self.health().await);
            checks.push(self.version().await);
            checks.push(self.device().await);
            checks.push(self.fresh_data().await);
            if self.args.write {
                checks.push(self.write_probe().await);
            }
        } else {
            for name in api_checks {
                checks.push(Check::new(name, Outcome::Skip, "API not reachable"));
            }
        }
        checks.extend(self.collector());
        for check in &mut checks {
            check.detail = self.scrub(&check.detail);
        }
        Report::new(checks)
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }

    fn timeout(&self) -> Duration {
        self.args.api.api_timeout
    }

    fn device_id(&self) -> &str {
        &self.args.device_id
    }

    /// GET a path under the base URL; the error is one line.
    async fn get(&self, segments: &[&str]) -> (Duration, Result<Answer, String>) {
        let start = Instant::now();
        let result = async {
            let mut resp = self
                .client
                .get(segments)
                .await
                .map_err(|e| describe_error(&e))?;
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            while body.len() < BODY_LIMIT {
                match resp.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(e) => return Err(format!("reading the answer: {}", describe_error(&e))),
                }
            }
            Ok(Answer {
                status,
                location,
                body,
            })
        }
        .await;
        (start.elapsed(), result)
    }

    /// "API reachable": resolve the host, open a TCP connection and, for
    /// https, complete a request so that the TLS handshake is proven too.
    async fn reachable(&self) -> Check {
        const NAME: &str = "API reachable";
        let url = self.client.base();
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let start = Instant::now();
        let connect = async {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|e| format!("cannot resolve {host}: {e}: check --api-url"))?
                    .collect(),
            };
            let mut last_error = format!("{host} resolves to no address");
            for addr in &addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => return Ok(*addr),
                    Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
                }
            }
            Err(format!(
                "{last_error}: is PV3 Monitor running there? (check --api-url)"
            ))
        };
        let addr = match tokio::time::timeout(self.timeout(), connect).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(detail)) => {
                return Check::new(NAME, Outcome::Fail, detail).timed(start.elapsed());
            }
            Err(_) => {
                return Check::new(
                    NAME,
                    Outcome::Fail,
                    format!(
                        "no connection to {host}:{port} within {:.0} s: is the host up and the port open?",
                        self.timeout().as_secs_f64()
                    ),
                )
                .timed(start.elapsed());
            }
        };
        let resolved = if host.parse::<IpAddr>().is_ok() {
            format!("TCP to {addr}")
        } else {
            format!("{host} → {addr}, TCP")
        };
        if url.scheme() != "https" {
            return Check::new(NAME, Outcome::Pass, format!("{resolved} connected"))
                .timed(start.elapsed());
        }
        match self.get(&[]).await {
            (_, Ok(_)) => Check::new(NAME, Outcome::Pass, format!("{resolved} and TLS connected"))
                .timed(start.elapsed()),
            (_, Err(e)) => Check::new(
                NAME,
                Outcome::Fail,
                format!(
                    "{resolved} connected, but HTTPS failed: {e}: is the server plain http, or its certificate not trusted here?"
                ),
            )
            .timed(start.elapsed()),
        }
    }

    /// `GET /health`: `status` must be "healthy"; the backend's own MQTT
    /// link is only reported.
    async fn health(&self) -> Check {
        const NAME: &str = "health";
        let (elapsed, answer) = self.get(&["health"]).await;
        let check = match answer {
            Err(e) => Check::new(NAME, Outcome::Fail, e),
            Ok(a) if a.status != 200 => Check::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(a) => match a.json() {
                None => Check::new(
                    NAME,
                    Outcome::Fail,
                    format!("answer is not JSON: {}", a.text()),
                ),
                Some(v) => {
                    let mqtt = match v.get("mqtt_connected").and_then(Value::as_bool) {
                        Some(true) => "; the backend's own MQTT link is up",
                        Some(false) => "; the backend's own MQTT link is down (informational)",
                        None => "",
                    };
                    match v.get("status").and_then(Value::as_str) {
                        Some("healthy") => {
                            Check::new(NAME, Outcome::Pass, format!("healthy{mqtt}"))
                        }
                        Some(other) => Check::new(
                            NAME,
                            Outcome::Fail,
                            format!("status is \"{other}\", not \"healthy\"{mqtt}"),
                        ),
                        None => Check::new(
                            NAME,
                            Outcome::Fail,
                            format!("no status in the answer: {}", a.text()),
                        ),
                    }
                }
            },
        };
        check.timed(elapsed)
    }

    /// `GET /`: name and version.
    async fn version(&self) -> Check {
        const NAME: &str = "API version";
        let (elapsed, answer) = self.get(&[]).await;
        let check = match answer {
            Err(e) => Check::new(NAME, Outcome::Fail, e),
            Ok(a) if a.status != 200 => Check::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(a) => {
                let v = a.json().unwrap_or(Value::Null);
                let name = v.get("name").and_then(Value::as_str);
                let version = v.get("version").and_then(Value::as_str).unwrap_or("?");
                match name {
                    Some("PV3 Monitor API") => {
                        Check::new(NAME, Outcome::Pass, format!("PV3 Monitor API {version}"))
                    }
                    Some(other) => Check::new(
                        NAME,
                        Outcome::Warn,
                        format!("\"{other}\" {version}, not PV3 Monitor API: check --api-url"),
                    ),
                    None => Check::new(
                        NAME,
                        Outcome::Warn,
                        format!("no name in the answer, is this PV3 Monitor? {}", a.text()),
                    ),
                }
            }
        };
        check.timed(elapsed)
    }

    /// `GET /api/devices/{id}`: 404 means nothing was ever stored for it.
    async fn device(&self) -> Check {
        const NAME: &str = "device known";
        let id = self.device_id();
        let (elapsed, answer) = self.get(&["api", "devices", id]).await;
        let check = match answer {
            Err(e) => Check::new(NAME, Outcome::Fail, e),
            Ok(a) if a.status == 404 => Check::new(
                NAME,
                Outcome::Fail,
                format!(
                    "no data ever received for device {id}: is the collector running, with this --device-id?"
                ),
            ),
            Ok(a) if a.status != 200 => Check::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(_) => Check::new(NAME, Outcome::Pass, format!("{id} is known to the API")),
        };
        check.timed(elapsed)
    }

    /// `GET /api/devices/{id}/current`: the newest timestamp and its age.
    async fn fresh_data(&self) -> Check {
        const NAME: &str = "fresh data";
        let id = self.device_id();
        let (elapsed, answer) = self.get(&["api", "devices", id, "current"]).await;
        let check = match answer {
            Err(e) => Check::new(NAME, Outcome::Fail, e),
            Ok(a) if a.status == 404 => Check::new(
                NAME,
                Outcome::Fail,
                format!("no measurements for {id}: the collector has delivered nothing yet"),
            ),
            Ok(a) if a.status != 200 => Check::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(a) => {
                let ts = a.json().and_then(|v| {
                    v.get("timestamp")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                match ts {
                    None => Check::new(
                        NAME,
                        Outcome::Fail,
                        format!("no timestamp in the answer: {}", a.text()),
                    ),
                    Some(text) => match parse_time(&text) {
                        None => Check::new(
                            NAME,
                            Outcome::Fail,
                            format!("timestamp \"{text}\" is not an RFC 3339 time"),
                        ),
                        Some(ts) => self.judge_age(NAME, &text, ts),
                    },
                }
            }
        };
        check.timed(elapsed)
    }

    fn judge_age(&self, name: &'static str, text: &str, ts: Timestamp) -> Check {
        let age = Timestamp::now().seconds_since(ts);
        let max = self.args.max_age.as_secs_f64();
        if age > max {
            Check::new(
                name,
                Outcome::Warn,
                format!(
                    "newest {text}, {} old (over --max-age {}): is the collector running?",
                    human_secs(age),
                    human_secs(max)
                ),
            )
        } else if age < -60.0 {
            Check::new(
                name,
                Outcome::Warn,
                format!(
                    "newest {text} is {} in the future: the clocks of the collector and this machine differ",
                    human_secs(-age)
                ),
            )
        } else {
            Check::new(
                name,
                Outcome::Pass,
                format!("newest {text}, {} old", human_secs(age.max(0.0))),
            )
        }
    }

    /// `--write`: POST one probe measurement, then read it back.
    async fn write_probe(&self) -> Check {
        const NAME: &str = "write round trip";
        let id = self.device_id();
        let value = f64::from(fastrand::u32(1..1_000_000_000));
        let timestamp = Timestamp::now().to_rfc3339();
        let body = json!([{
            "metric_name": PROBE_METRIC,
            "metric_value": value,
            "unit": null,
            "source_topic": null,
            "timestamp": timestamp,
        }]);
        let start = Instant::now();
        let posted = self
            .client
            .post_measurements(id, Bytes::from(body.to_string()))
            .await;
        if let Err(e) = posted {
            let detail = match e {
                PostError::Misconfigured { status, body, hint } => {
                    format!("POST answered HTTP {status} {body}: {hint}")
                }
                other => format!("POST failed: {other}"),
            };
            return Check::new(NAME, Outcome::Fail, detail).timed(start.elapsed());
        }
        let (_, answer) = self
            .get(&["api", "devices", id, "metrics", PROBE_METRIC])
            .await;
        let check = match answer {
            Err(e) => Check::new(
                NAME,
                Outcome::Fail,
                format!("POST accepted, read back: {e}"),
            ),
            Ok(a) if a.status != 200 => Check::new(
                NAME,
                Outcome::Fail,
                format!("POST accepted, but reading it back: {}", http_failure(&a)),
            ),
            Ok(a) => {
                let got = a
                    .json()
                    .and_then(|v| v.get("metric_value").and_then(Value::as_f64));
                match got {
                    Some(got) if got == value => Check::new(
                        NAME,
                        Outcome::Pass,
                        format!("wrote {PROBE_METRIC}={value} and read it back"),
                    ),
                    Some(got) => Check::new(
                        NAME,
                        Outcome::Fail,
                        format!(
                            "wrote {PROBE_METRIC}={value} but read back {got}: the API did not store it (or another check-api ran at once)"
                        ),
                    ),
                    None => Check::new(
                        NAME,
                        Outcome::Fail,
                        format!("POST accepted, read back no metric_value: {}", a.text()),
                    ),
                }
            }
        };
        check.timed(start.elapsed())
    }

    /// The collector's `status.json`, when there is one: from `--state-dir`
    /// or `$STATE_DIRECTORY`, else the user's state directory, else the
    /// system service's.
    fn collector(&self) -> Vec<Check> {
        let given = self.args.state.state_dir.as_deref();
        let mut dirs: Vec<PathBuf> = StateDir::resolve(given)
            .map(|d| d.path().to_owned())
            .into_iter()
            .collect();
        if given.is_none() {
            dirs.push(PathBuf::from(crate::state_dir::SERVICE_DIR));
        }
        for dir in dirs {
            match status::read(&dir) {
                Ok(Some(status)) => return self.judge_collector(&dir, &status),
                Ok(None) => {}
                Err(e) => {
                    let denied = e
                        .root_cause()
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == ErrorKind::PermissionDenied);
                    if denied && given.is_none() {
                        return vec![Check::new(
                            "collector running",
                            Outcome::Skip,
                            format!(
                                "{} is readable by root only: run with sudo to include the service's status",
                                status::path(&dir).display()
                            ),
                        )];
                    }
                    return vec![Check::new(
                        "collector running",
                        Outcome::Fail,
                        format!("{e:#}"),
                    )];
                }
            }
        }
        Vec::new()
    }

    fn judge_collector(&self, dir: &Path, s: &Status) -> Vec<Check> {
        let now = Timestamp::now();
        let file = status::path(dir);
        let age_of = |text: &Option<String>| {
            text.as_deref()
                .and_then(parse_time)
                .map(|t| now.seconds_since(t).max(0.0))
        };
        let Some(updated) = age_of(&Some(s.updated_at.clone())) else {
            return vec![Check::new(
                "collector running",
                Outcome::Fail,
                format!(
                    "{} has no readable updated_at (\"{}\")",
                    file.display(),
                    s.updated_at
                ),
            )];
        };
        if updated > COLLECTOR_STALE_SECS {
            let not_running = format!(
                "{} last updated {} ago: the collector is not running (systemctl status pv3-collector)",
                file.display(),
                human_secs(updated)
            );
            return vec![
                Check::new("collector running", Outcome::Fail, not_running),
                Check::new("collector MQTT", Outcome::Skip, "collector not running"),
                Check::new("collector delivery", Outcome::Skip, "collector not running"),
            ];
        }
        let uptime = age_of(&Some(s.started_at.clone()))
            .map(|a| format!(", up {}", human_secs(a)))
            .unwrap_or_default();
        let running = Check::new(
            "collector running",
            Outcome::Pass,
            format!(
                "pid {}, pv3 {}{uptime}, {} updated {} ago",
                s.pid,
                s.pv3_version,
                status::FILE_NAME,
                human_secs(updated)
            ),
        );

        let last_message = match age_of(&s.last_message_at) {
            Some(age) => format!("last message {} ago", human_secs(age)),
            None => "no message yet".to_owned(),
        };
        let max_age = self.args.max_age.as_secs_f64();
        let mqtt = if !s.broker_connected {
            Check::new(
                "collector MQTT",
                Outcome::Warn,
                format!(
                    "not connected to {} ({last_message}): is the P3 on, and --mqtt-host right?",
                    s.broker
                ),
            )
        } else if age_of(&s.last_message_at).is_some_and(|age| age > max_age) {
            Check::new(
                "collector MQTT",
                Outcome::Warn,
                format!(
                    "connected to {}, but {last_message} (over --max-age): is --device-id right?",
                    s.broker
                ),
            )
        } else {
            Check::new(
                "collector MQTT",
                Outcome::Pass,
                format!("connected to {}, {last_message}", s.broker),
            )
        };

        let last_delivery = match age_of(&s.last_delivery_at) {
            Some(age) => format!("last delivery {} ago", human_secs(age)),
            None => "nothing delivered yet".to_owned(),
        };
        let c = &s.counters;
        let detail = format!(
            "{last_delivery}; spool {} batches ({} measurements); {} dropped, {} rejected",
            s.spool_batches, s.spool_measurements, c.dropped, c.rejected
        );
        let mut problems = Vec::new();
        if s.spool_batches > 0 || s.spool_measurements > 0 {
            problems.push("the spool is waiting for the API");
        }
        if c.dropped > 0 {
            problems.push("readings were dropped because the queue or spool was full");
        }
        if c.rejected > 0 {
            problems.push("the API refused some (see rejected.jsonl in the state directory)");
        }
        let delivery = if problems.is_empty() {
            Check::new("collector delivery", Outcome::Pass, detail)
        } else {
            Check::new(
                "collector delivery",
                Outcome::Warn,
                format!("{detail}: {}", problems.join("; ")),
            )
        };
        vec![running, mqtt, delivery]
    }
}

/// One line for a non-success answer, with a hint where there is an
/// obvious one.
fn http_failure(a: &Answer) -> String {
    let body = a.text();
    let body = if body.is_empty() {
        String::new()
    } else {
        format!(" {body}")
    };
    match a.status {
        401 | 403 => format!(
            "HTTP {}{body}: the server (or a proxy) wants a valid token: set --api-token or API_TOKEN",
            a.status
        ),
        300..=399 => format!(
            "HTTP {} redirect to {}: use that as --api-url",
            a.status,
            a.location.as_deref().unwrap_or("?")
        ),
        404 => format!("HTTP 404{body}: is --api-url the API's base URL?"),
        code => format!("HTTP {code}{body}"),
    }
}

/// RFC 3339; a time without a zone (some backends drop it) is taken as UTC.
fn parse_time(text: &str) -> Option<Timestamp> {
    Timestamp::parse_rfc3339(text)
        .or_else(|_| Timestamp::parse_rfc3339(&format!("{text}Z")))
        .or_else(|_| Timestamp::parse_rfc3339(&format!("{}Z", text.replacen(' ', "T", 1))))
        .ok()
}

/// "0.4 s", "12 s", "5 min", "3 h 5 min", "2 d 4 h".
pub fn human_secs(secs: f64) -> String {
    if secs < 10.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
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
    fn ages_read_well() {
        assert_eq!(human_secs(0.42), "0.4 s");
        assert_eq!(human_secs(42.0), "42 s");
        assert_eq!(human_secs(600.0), "10 min");
        assert_eq!(human_secs(3.0 * 3600.0 + 300.0), "3 h 5 min");
        assert_eq!(human_secs(2.0 * 86_400.0 + 4.0 * 3600.0), "2 d 4 h");
    }

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
            Check::new("a", Outcome::Pass, ""),
            Check::new("b", Outcome::Warn, ""),
            Check::new("c", Outcome::Skip, ""),
        ]);
        assert!(report.ok);
        let report = Report::new(vec![Check::new("a", Outcome::Fail, "")]);
        assert!(!report.ok);
        assert!(render_table(&report).ends_with("1 failed\n"));
    }
}
