//! The checks that talk to the API, one request or two each, every one
//! bounded by `--api-timeout`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use super::{BODY_LIMIT, Check, CheckResult, Outcome, PROBE_METRIC, parse_time, shorten};
use crate::api::{ApiClient, PostError, describe_error};
use crate::cli::CheckApiArgs;
use crate::human::human_secs;
use crate::reading::Timestamp;

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

/// Runs the checks that talk to the API.
pub(super) struct Checker<'a> {
    client: ApiClient,
    args: &'a CheckApiArgs,
    /// Strings never to print (the token, a password in the URL).
    secrets: Vec<String>,
}

impl<'a> Checker<'a> {
    /// A checker using `client`; the token and any password in the URL are
    /// never printed.
    pub(super) fn new(client: ApiClient, args: &'a CheckApiArgs) -> Checker<'a> {
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

    /// The checks against the API, in order: whether it is reachable, then
    /// (when it is) the rest, each skipped when it is not.
    pub(super) async fn run(&self) -> Vec<CheckResult> {
        let reachable = self.reachable().await;
        let up = reachable.status != Outcome::Fail;
        let mut results = vec![reachable];
        let mut next = vec![
            Check::Health,
            Check::ApiVersion,
            Check::DeviceKnown,
            Check::FreshData,
        ];
        if self.args.write {
            next.push(Check::WriteRoundTrip);
        }
        let mut healthy = false;
        for check in next {
            let result = if up {
                self.one(check, healthy).await
            } else {
                CheckResult::new(check, Outcome::Skip, "API not reachable")
            };
            healthy |= check == Check::Health && result.status == Outcome::Pass;
            results.push(result);
        }
        results
    }

    /// One check; `healthy`: `/health` has answered "healthy", so a data
    /// request that fails points at the database behind the API.
    async fn one(&self, check: Check, healthy: bool) -> CheckResult {
        match check {
            Check::ApiReachable => self.reachable().await,
            Check::Health => self.health().await,
            Check::ApiVersion => self.version().await,
            Check::DeviceKnown => self.device(healthy).await,
            Check::FreshData => self.fresh_data(healthy).await,
            Check::WriteRoundTrip => self.write_probe().await,
            Check::CollectorRunning
            | Check::CollectorMqtt
            | Check::CollectorDelivery
            | Check::CollectorOutputs => {
                CheckResult::new(check, Outcome::Skip, "not a check of the API")
            }
        }
    }

    /// `text` with every secret replaced by `***`.
    pub(super) fn scrub(&self, text: &str) -> String {
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
    async fn reachable(&self) -> CheckResult {
        const NAME: Check = Check::ApiReachable;
        let url = self.client.base();
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let start = Instant::now();
        let addr = match tokio::time::timeout(self.timeout(), connect(&host, port)).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(detail)) => {
                return CheckResult::new(NAME, Outcome::Fail, detail).timed(start.elapsed());
            }
            Err(_) => {
                return CheckResult::new(
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
            return CheckResult::new(NAME, Outcome::Pass, format!("{resolved} connected"))
                .timed(start.elapsed());
        }
        match self.get(&[]).await {
            (_, Ok(_)) => CheckResult::new(NAME, Outcome::Pass, format!("{resolved} and TLS connected"))
                .timed(start.elapsed()),
            (_, Err(e)) => CheckResult::new(
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
    async fn health(&self) -> CheckResult {
        const NAME: Check = Check::Health;
        let (elapsed, answer) = self.get(&["health"]).await;
        let check = match answer {
            Err(e) => CheckResult::new(NAME, Outcome::Fail, e),
            Ok(a) if a.status != 200 => CheckResult::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(a) => match a.json() {
                None => CheckResult::new(
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
                            CheckResult::new(NAME, Outcome::Pass, format!("healthy{mqtt}"))
                        }
                        Some(other) => CheckResult::new(
                            NAME,
                            Outcome::Fail,
                            format!("status is \"{other}\", not \"healthy\"{mqtt}"),
                        ),
                        None => CheckResult::new(
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
    async fn version(&self) -> CheckResult {
        const NAME: Check = Check::ApiVersion;
        let (elapsed, answer) = self.get(&[]).await;
        let check = match answer {
            Err(e) => CheckResult::new(NAME, Outcome::Fail, e),
            Ok(a) if a.status != 200 => CheckResult::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(a) => {
                let v = a.json().unwrap_or(Value::Null);
                let name = v.get("name").and_then(Value::as_str);
                let version = v.get("version").and_then(Value::as_str).unwrap_or("?");
                match name {
                    Some("PV3 Monitor API") => {
                        CheckResult::new(NAME, Outcome::Pass, format!("PV3 Monitor API {version}"))
                    }
                    Some(other) => CheckResult::new(
                        NAME,
                        Outcome::Warn,
                        format!("\"{other}\" {version}, not PV3 Monitor API: check --api-url"),
                    ),
                    None => CheckResult::new(
                        NAME,
                        Outcome::Warn,
                        format!("no name in the answer, is this PV3 Monitor? {}", a.text()),
                    ),
                }
            }
        };
        check.timed(elapsed)
    }

    /// A data request that got no HTTP answer (reset, timed out): when
    /// `/health` answers, the API is up and its database is the likely
    /// cause, so say so.
    fn data_failure(&self, e: String, healthy: bool) -> String {
        if !healthy {
            return e;
        }
        let e = if e.starts_with("timed out") {
            format!(
                "{e} (no answer within --api-timeout {})",
                human_secs(self.timeout().as_secs_f64())
            )
        } else {
            e
        };
        format!(
            "{e}: /health answers, so the API is up but cannot read its data: most likely its database (PostgreSQL/TimescaleDB) is down or stalled; see the backend's logs"
        )
    }

    /// `GET /api/devices/{id}`: 404 means nothing was ever stored for it;
    /// a 200 must be this device, and its last data is shown.
    async fn device(&self, healthy: bool) -> CheckResult {
        const NAME: Check = Check::DeviceKnown;
        let id = self.device_id();
        let (elapsed, answer) = self.get(&["api", "devices", id]).await;
        let check = match answer {
            Err(e) => CheckResult::new(NAME, Outcome::Fail, self.data_failure(e, healthy)),
            Ok(a) if a.status == 404 && self.base_ends_in_api() => CheckResult::new(
                NAME,
                Outcome::Fail,
                format!(
                    "HTTP 404: --api-url {} ends in /api, and pv3 adds /api itself: give the base URL, like http://host:8800",
                    crate::secret::shown_url(self.client.base())
                ),
            ),
            Ok(a) if a.status == 404 => CheckResult::new(
                NAME,
                Outcome::Fail,
                format!(
                    "no data ever received for device {id}: is the collector running, with this --device-id?"
                ),
            ),
            Ok(a) if a.status != 200 => CheckResult::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(a) => known_device(id, &a),
        };
        check.timed(elapsed)
    }

    /// A base URL like `http://host:8800/api`: pv3 adds `/api` itself.
    fn base_ends_in_api(&self) -> bool {
        self.client
            .base()
            .path()
            .trim_end_matches('/')
            .ends_with("/api")
    }

    /// `GET /api/devices/{id}/current`: the newest timestamp and its age.
    async fn fresh_data(&self, healthy: bool) -> CheckResult {
        const NAME: Check = Check::FreshData;
        let id = self.device_id();
        let (elapsed, answer) = self.get(&["api", "devices", id, "current"]).await;
        let check = match answer {
            Err(e) => CheckResult::new(NAME, Outcome::Fail, self.data_failure(e, healthy)),
            Ok(a) if a.status == 404 => CheckResult::new(
                NAME,
                Outcome::Fail,
                format!("no measurements for {id}: the collector has delivered nothing yet"),
            ),
            Ok(a) if a.status != 200 => CheckResult::new(NAME, Outcome::Fail, http_failure(&a)),
            Ok(a) => {
                let ts = a.json().and_then(|v| {
                    v.get("timestamp")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                match ts {
                    None => CheckResult::new(
                        NAME,
                        Outcome::Fail,
                        format!("no timestamp in the answer: {}", a.text()),
                    ),
                    Some(text) => match parse_time(&text) {
                        None => CheckResult::new(
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

    fn judge_age(&self, name: Check, text: &str, ts: Timestamp) -> CheckResult {
        let age = Timestamp::now().seconds_since(ts);
        let max = self.args.max_age.as_secs_f64();
        if age > max {
            CheckResult::new(
                name,
                Outcome::Warn,
                format!(
                    "newest {text}, {} old (over --max-age {}): is the collector running?",
                    human_secs(age),
                    human_secs(max)
                ),
            )
        } else if age < -60.0 {
            CheckResult::new(
                name,
                Outcome::Warn,
                format!(
                    "newest {text} is {} in the future: the clocks of the collector and this machine differ",
                    human_secs(-age)
                ),
            )
        } else {
            CheckResult::new(
                name,
                Outcome::Pass,
                format!("newest {text}, {} old", human_secs(age.max(0.0))),
            )
        }
    }

    /// `--write`: POST one probe measurement, then read it back.
    async fn write_probe(&self) -> CheckResult {
        const NAME: Check = Check::WriteRoundTrip;
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
            return CheckResult::new(NAME, Outcome::Fail, detail).timed(start.elapsed());
        }
        let (_, answer) = self
            .get(&["api", "devices", id, "metrics", PROBE_METRIC])
            .await;
        read_back(answer, value).timed(start.elapsed())
    }
}

/// A 200 for `GET /api/devices/{id}`: the device, with what the API says
/// of it (its last data, how many measurements), or a failure naming what
/// came instead.
fn known_device(id: &str, a: &Answer) -> CheckResult {
    const NAME: Check = Check::DeviceKnown;
    let json = a.json();
    let device = json.as_ref().and_then(Value::as_object);
    let named = device
        .and_then(|d| d.get("device_id"))
        .and_then(Value::as_str);
    let Some(device) = device.filter(|_| named == Some(id)) else {
        let got = match named {
            Some(other) => format!("device {other}"),
            None if a.body.is_empty() => "an empty answer".to_owned(),
            None => a.text(),
        };
        return CheckResult::new(
            NAME,
            Outcome::Fail,
            format!("HTTP 200 with {got}, not device {id}: is --api-url the PV3 Monitor API?"),
        );
    };
    let mut seen = Vec::new();
    if let Some(text) = device.get("last_seen").and_then(Value::as_str) {
        seen.push(match parse_time(text) {
            Some(ts) => format!(
                "last data {text} ({} ago)",
                human_secs(Timestamp::now().seconds_since(ts).max(0.0))
            ),
            None => format!("last data {text}"),
        });
    }
    if let Some(n) = device.get("measurement_count").and_then(Value::as_u64) {
        seen.push(format!("{n} measurements"));
    }
    let detail = if seen.is_empty() {
        format!("{id} is known to the API (its answer names no last data time)")
    } else {
        format!("{id} is known to the API: {}", seen.join(", "))
    };
    CheckResult::new(NAME, Outcome::Pass, detail)
}

/// The `--write` probe read back: the value posted, or why not.
fn read_back(answer: Result<Answer, String>, value: f64) -> CheckResult {
    const NAME: Check = Check::WriteRoundTrip;
    match answer {
        Err(e) => CheckResult::new(
            NAME,
            Outcome::Fail,
            format!("POST accepted, read back: {e}"),
        ),
        Ok(a) if a.status != 200 => CheckResult::new(
            NAME,
            Outcome::Fail,
            format!("POST accepted, but reading it back: {}", http_failure(&a)),
        ),
        Ok(a) => {
            let got = a
                .json()
                .and_then(|v| v.get("metric_value").and_then(Value::as_f64));
            match got {
                Some(got) if got == value => CheckResult::new(
                    NAME,
                    Outcome::Pass,
                    format!("wrote {PROBE_METRIC}={value} and read it back"),
                ),
                Some(got) => CheckResult::new(
                    NAME,
                    Outcome::Fail,
                    format!(
                        "wrote {PROBE_METRIC}={value} but read back {got}: the API did not store it (or another check-api ran at once)"
                    ),
                ),
                None => CheckResult::new(
                    NAME,
                    Outcome::Fail,
                    format!("POST accepted, read back no metric_value: {}", a.text()),
                ),
            }
        }
    }
}

/// Resolves `host` and opens a TCP connection to the first address that
/// takes one; the error is one line.
async fn connect(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
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
        500..=599 => format!(
            "HTTP {}{body}: the API answers but cannot read its data: most likely its database (PostgreSQL/TimescaleDB) is down; see the backend's logs",
            a.status
        ),
        code => format!("HTTP {code}{body}"),
    }
}
