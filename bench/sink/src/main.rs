//! A counting HTTP/1.1 sink that stands in for the PV3 Monitor API in pv3's
//! benchmarks (`bench/bench.sh`). Loopback only.
//!
//! Every POST body is parsed as JSON and every measurement in it counted, so
//! "zero loss" is checked against what actually arrived, not assumed:
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/devices/{id}/measurements/batch` (JSON array) | 201, counts each element with a string `metric_name` and a numeric `metric_value`; a body that is not such an array: 422 (counted as `bad`) |
//! | `POST /api/devices/{id}/measurements` (one object) | 201, counts 1 |
//! | `POST /api/devices/{id}/alarms` (object of booleans) | 201, counts 1 alarm update |
//! | `GET /api/devices/{id}/history?metrics=a,b&start=T&end=T` | with `--history` only (404 without, as before): what the real backend answers, see below |
//! | `GET /count` | `{"measurements","requests","alarms","failed","bad","bytes","first_ns","last_ns","failing","queries","rows_returned","stored"}` |
//! | `POST /reset` | zeroes the counters (and, with `--history`, forgets what was stored) |
//! | `POST /fail?on=1` / `?on=0` | answer every API POST (and history GET) with 503 (not counted) / back to 201 |
//! | `GET /health` | 200 |
//!
//! `first_ns`/`last_ns` are the Unix times (ns) of the first and last 2xx API
//! answer since the last reset, so a script can time delivery precisely
//! without polling. `--fail-while-file PATH` also answers 503 while PATH
//! exists. On SIGINT/SIGTERM the counters are printed as JSON on stdout.
//!
//! `--history` makes it remember what it was sent, for `pv3 replay`'s
//! backfill (which asks before each window what the API already holds): per
//! device, per metric (interned), the rows' timestamps (µs, kept sorted) and
//! values, 16 bytes a measurement, so a few million fit in well under
//! 100 MB. Like the real backend it has no unique key: a measurement sent
//! twice is stored twice. `GET .../history` answers as the real backend does
//! (spec "Reads for backfill", `tests/it/support/api.rs` `history`): `200` with
//! a JSON array of `{"id","device_id","metric_name","metric_value","unit",
//! "source_topic","timestamp"}` for the listed metrics with
//! `start <= timestamp <= end` (both inclusive; 24 hours up to now when left
//! out), ordered by timestamp, timestamps as Python's `isoformat()` writes
//! them (`2026-11-27T14:19:27.357000+00:00`); `422` without `metrics` or with
//! a bad time. Deviations nobody reads: `id` numbers the rows of the answer,
//! and `unit`/`source_topic` are the last ones seen for that metric, not kept
//! per row. `queries`, `rows_returned` and `stored` in `/count` count it.
//!
//! Plain tokio with a minimal HTTP/1.1 reader (Content-Length and chunked
//! bodies, keep-alive, pipelining, `Expect: 100-continue`): nothing here
//! should ever be the bottleneck of a benchmark.

use std::borrow::Cow;
use std::path::PathBuf;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static MEASUREMENTS: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static ALARMS: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static FIRST_NS: AtomicU64 = AtomicU64::new(0);
static LAST_NS: AtomicU64 = AtomicU64::new(0);
static FAILING: AtomicBool = AtomicBool::new(false);
static QUERIES: AtomicU64 = AtomicU64::new(0);
static ROWS_RETURNED: AtomicU64 = AtomicU64::new(0);
/// `--history`: what was sent, by device. `None` without the flag.
static STORE: Mutex<Option<Store>> = Mutex::new(None);

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 256 * 1024 * 1024;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn counts_json() -> String {
    format!(
        "{{\"measurements\":{},\"requests\":{},\"alarms\":{},\"failed\":{},\"bad\":{},\"bytes\":{},\"first_ns\":{},\"last_ns\":{},\"failing\":{},\"queries\":{},\"rows_returned\":{},\"stored\":{}}}",
        MEASUREMENTS.load(Relaxed),
        REQUESTS.load(Relaxed),
        ALARMS.load(Relaxed),
        FAILED.load(Relaxed),
        BAD.load(Relaxed),
        BYTES.load(Relaxed),
        FIRST_NS.load(Relaxed),
        LAST_NS.load(Relaxed),
        FAILING.load(Relaxed),
        QUERIES.load(Relaxed),
        ROWS_RETURNED.load(Relaxed),
        stored(),
    )
}

/// Measurements stored (`--history`), 0 without it.
fn stored() -> u64 {
    let store = STORE.lock().unwrap_or_else(|e| e.into_inner());
    store.as_ref().map_or(0, |s| {
        s.devices
            .values()
            .flat_map(|d| &d.series)
            .map(|x| x.ts.len() as u64)
            .sum()
    })
}

fn reset() {
    for c in [
        &MEASUREMENTS,
        &REQUESTS,
        &ALARMS,
        &FAILED,
        &BAD,
        &BYTES,
        &FIRST_NS,
        &LAST_NS,
        &QUERIES,
        &ROWS_RETURNED,
    ] {
        c.store(0, Relaxed);
    }
    let mut store = STORE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = store.as_mut() {
        *s = Store::default();
    }
}

/// One API measurement; other fields are parsed (so the body must be valid
/// JSON) and ignored.
#[derive(Deserialize)]
struct Measurement<'a> {
    #[serde(borrow)]
    metric_name: Cow<'a, str>,
    metric_value: f64,
    #[allow(dead_code)]
    #[serde(default)]
    timestamp: IgnoredAny,
}

/// One API measurement as `--history` keeps it.
#[derive(Deserialize)]
struct Row<'a> {
    #[serde(borrow)]
    metric_name: Cow<'a, str>,
    metric_value: f64,
    #[serde(borrow, default)]
    unit: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source_topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
}

/// What `--history` remembers.
#[derive(Default)]
struct Store {
    devices: HashMap<String, DeviceStore>,
}

#[derive(Default)]
struct DeviceStore {
    /// Metric name -> index into `series`.
    index: HashMap<String, u32>,
    series: Vec<Series>,
}

/// One metric of one device: timestamps (µs since the epoch, sorted; equal
/// ones in arrival order) and the values beside them, with the last unit
/// and topic seen.
struct Series {
    name: String,
    unit: Option<String>,
    topic: Option<String>,
    ts: Vec<i64>,
    val: Vec<f64>,
}

impl DeviceStore {
    fn series(&mut self, row: &Row<'_>) -> &mut Series {
        let i = match self.index.get(row.metric_name.as_ref()) {
            Some(&i) => i as usize,
            None => {
                self.series.push(Series {
                    name: row.metric_name.to_string(),
                    unit: None,
                    topic: None,
                    ts: Vec::new(),
                    val: Vec::new(),
                });
                let i = self.series.len() - 1;
                self.index.insert(row.metric_name.to_string(), i as u32);
                i
            }
        };
        let s = &mut self.series[i];
        if s.unit.as_deref() != row.unit.as_deref() {
            s.unit = row.unit.as_deref().map(str::to_owned);
        }
        if s.topic.as_deref() != row.source_topic.as_deref() {
            s.topic = row.source_topic.as_deref().map(str::to_owned);
        }
        s
    }
}

fn json_str(s: Option<&str>) -> String {
    serde_json::to_string(&s).unwrap_or_else(|_| "null".into())
}

impl Series {
    /// Inserts in timestamp order (after equal ones). Rows mostly arrive in
    /// order, so this is mostly a push.
    fn insert(&mut self, ts: i64, value: f64) {
        if self.ts.last().is_none_or(|&last| last <= ts) {
            self.ts.push(ts);
            self.val.push(value);
        } else {
            let at = self.ts.partition_point(|&t| t <= ts);
            self.ts.insert(at, ts);
            self.val.insert(at, value);
        }
    }
}

/// Stores a batch (`--history`); `false` when a timestamp is not a time
/// (the real backend answers 422 then, storing nothing).
fn store_rows(device: &str, rows: &[Row<'_>]) -> bool {
    let now = (now_ns() / 1000) as i64;
    let mut times = Vec::with_capacity(rows.len());
    for row in rows {
        match row.timestamp.as_deref() {
            None => times.push(now),
            Some(text) => match parse_rfc3339_micros(text) {
                Some(t) => times.push(t),
                None => return false,
            },
        }
    }
    let device = percent_decode(device);
    let mut store = STORE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(store) = store.as_mut() else {
        return true;
    };
    let dev = store.devices.entry(device).or_default();
    for (row, ts) in rows.iter().zip(times) {
        dev.series(row).insert(ts, row.metric_value);
    }
    true
}

/// `GET /api/devices/{id}/history?metrics=a,b&start=T&end=T`.
fn history(device: &str, query: &str) -> (u16, &'static str, String) {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(&v.replace('+', " ")))
    };
    let Some(metrics) = param("metrics") else {
        return (
            422,
            "Unprocessable Entity",
            "{\"detail\":\"metrics: field required\"}".into(),
        );
    };
    let now = (now_ns() / 1000) as i64;
    let bound = |name: &str, default: i64| match param(name) {
        Some(text) => parse_rfc3339_micros(&text).ok_or(()),
        None => Ok(default),
    };
    let (Ok(start), Ok(end)) = (bound("start", now - 86_400_000_000), bound("end", now)) else {
        return (
            422,
            "Unprocessable Entity",
            "{\"detail\":\"start/end: invalid datetime\"}".into(),
        );
    };
    QUERIES.fetch_add(1, Relaxed);
    let device = percent_decode(device);
    let store = STORE.lock().unwrap_or_else(|e| e.into_inner());
    let dev = store.as_ref().and_then(|s| s.devices.get(&device));
    // (timestamp, series, position): every row asked for, in time order.
    let mut rows: Vec<(i64, u32, u32)> = Vec::new();
    if let Some(dev) = dev {
        let mut seen: Vec<u32> = Vec::new();
        for name in metrics.split(',') {
            let Some(&i) = dev.index.get(name) else {
                continue;
            };
            if seen.contains(&i) {
                continue; // a metric listed twice is still one metric
            }
            seen.push(i);
            let s = &dev.series[i as usize];
            let lo = s.ts.partition_point(|&t| t < start);
            let hi = s.ts.partition_point(|&t| t <= end);
            rows.extend((lo..hi.max(lo)).map(|p| (s.ts[p], i, p as u32)));
        }
    }
    rows.sort_by_key(|&(t, _, _)| t); // stable: series order for equal times
    let device_json = json_str(Some(&device));
    // `"metric_name":..,"unit":..,"source_topic":..` of each series.
    let fields: Vec<String> = dev.map_or_else(Vec::new, |d| {
        d.series
            .iter()
            .map(|s| {
                format!(
                    "\"metric_name\":{},\"unit\":{},\"source_topic\":{}",
                    json_str(Some(&s.name)),
                    json_str(s.unit.as_deref()),
                    json_str(s.topic.as_deref())
                )
            })
            .collect()
    });
    let mut out = String::with_capacity(2 + rows.len() * 200);
    out.push('[');
    for (n, &(t, i, p)) in rows.iter().enumerate() {
        let s = &dev.expect("rows come from a device").series[i as usize];
        if n > 0 {
            out.push(',');
        }
        let value = s.val[p as usize];
        let _ = write!(
            out,
            "{{\"id\":{},\"device_id\":{device_json},{},\"metric_value\":{},\"timestamp\":\"",
            n + 1,
            fields[i as usize],
            serde_json::to_string(&value).unwrap_or_else(|_| "null".into())
        );
        python_isoformat(&mut out, t);
        out.push_str("\"}");
    }
    out.push(']');
    ROWS_RETURNED.fetch_add(rows.len() as u64, Relaxed);
    (200, "OK", out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3339 / ISO 8601 (`Z`, `+hh:mm`, `+hhmm`, or no zone: UTC) to µs
/// since the epoch; digits past the microsecond are cut.
fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || !s.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        for (k, c) in frac.bytes().take(6).take(n).enumerate() {
            micros += i64::from(c - b'0') * 10i64.pow(5 - k as u32);
        }
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let off = &rest[1..];
            let (h, m) = off
                .split_once(':')
                .unwrap_or((off.get(..2)?, off.get(2..)?));
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// `2026-11-27T14:19:27.357000+00:00`, as Python's `isoformat()` writes a
/// UTC datetime with microseconds (what the real backend answers).
fn python_isoformat(out: &mut String, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}+00:00",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
}

struct Config {
    fail_file: Option<PathBuf>,
    /// `--history`: remember what was sent and answer `GET .../history`.
    history: bool,
}

fn failing(cfg: &Config) -> bool {
    FAILING.load(Relaxed) || cfg.fail_file.as_ref().is_some_and(|p| p.exists())
}

/// What an API path is.
enum Endpoint<'a> {
    Batch(&'a str),
    Single(&'a str),
    Alarms(&'a str),
    History(&'a str),
}

fn api_endpoint(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix("/api/devices/")?;
    let (device, tail) = rest.split_once('/')?;
    match tail {
        "measurements/batch" => Some(Endpoint::Batch(device)),
        "measurements" => Some(Endpoint::Single(device)),
        "alarms" => Some(Endpoint::Alarms(device)),
        "history" => Some(Endpoint::History(device)),
        _ => None,
    }
}

/// Handles one request; returns (status, reason, body).
fn handle(cfg: &Config, method: &str, target: &str, body: &[u8]) -> (u16, &'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/count") => return (200, "OK", counts_json()),
        ("GET", "/health") => return (200, "OK", "{\"status\":\"healthy\"}".into()),
        ("POST", "/reset") => {
            reset();
            return (200, "OK", counts_json());
        }
        ("POST", "/fail") => {
            let on = query.split('&').any(|kv| kv == "on=1" || kv == "on=true");
            FAILING.store(on, Relaxed);
            return (200, "OK", counts_json());
        }
        _ => {}
    }
    let Some(endpoint) = api_endpoint(path).filter(|e| match e {
        Endpoint::History(_) => method == "GET" && cfg.history,
        _ => method == "POST",
    }) else {
        return (404, "Not Found", "{\"detail\":\"Not Found\"}".into());
    };
    if failing(cfg) {
        FAILED.fetch_add(1, Relaxed);
        return (
            503,
            "Service Unavailable",
            "{\"detail\":\"failing on purpose\"}".into(),
        );
    }
    let (device, created, alarms) = match endpoint {
        Endpoint::History(device) => return history(device, query),
        Endpoint::Batch(device) if cfg.history => match serde_json::from_slice::<Vec<Row<'_>>>(body) {
            Ok(list) if list.iter().all(|m| !m.metric_name.is_empty()) => {
                if !store_rows(device, &list) {
                    return bad();
                }
                (device, list.len() as u64, 0)
            }
            _ => return bad(),
        },
        Endpoint::Single(device) if cfg.history => match serde_json::from_slice::<Row<'_>>(body) {
            Ok(m) if !m.metric_name.is_empty() && m.metric_value.is_finite() => {
                if !store_rows(device, std::slice::from_ref(&m)) {
                    return bad();
                }
                (device, 1, 0)
            }
            _ => return bad(),
        },
        Endpoint::Batch(device) => match serde_json::from_slice::<Vec<Measurement<'_>>>(body) {
            Ok(list) if list.iter().all(|m| !m.metric_name.is_empty()) => {
                (device, list.len() as u64, 0)
            }
            _ => return bad(),
        },
        Endpoint::Single(device) => match serde_json::from_slice::<Measurement<'_>>(body) {
            Ok(m) if !m.metric_name.is_empty() && m.metric_value.is_finite() => (device, 1, 0),
            _ => return bad(),
        },
        Endpoint::Alarms(device) => {
            match serde_json::from_slice::<std::collections::HashMap<Cow<'_, str>, bool>>(body) {
                Ok(_) => (device, 0, 1),
                Err(_) => return bad(),
            }
        }
    };
    MEASUREMENTS.fetch_add(created, Relaxed);
    ALARMS.fetch_add(alarms, Relaxed);
    REQUESTS.fetch_add(1, Relaxed);
    BYTES.fetch_add(body.len() as u64, Relaxed);
    let now = now_ns();
    let _ = FIRST_NS.compare_exchange(0, now, Relaxed, Relaxed);
    LAST_NS.fetch_max(now, Relaxed);
    let answer = if alarms > 0 {
        format!("{{\"device_id\":\"{device}\",\"alarms_updated\":1,\"events_created\":0}}")
    } else {
        format!("{{\"created\":{created},\"device_id\":\"{device}\"}}")
    };
    (201, "Created", answer)
}

fn bad() -> (u16, &'static str, String) {
    BAD.fetch_add(1, Relaxed);
    (
        422,
        "Unprocessable Entity",
        "{\"detail\":\"body is not what the API takes\"}".into(),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; `false` at EOF.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
    Ok(stream.read_buf(buf).await? > 0)
}

async fn serve(cfg: &Config, mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut body: Vec<u8> = Vec::new();
    loop {
        // The head.
        let mut scanned = 0;
        let head_end = loop {
            if let Some(i) = find(&buf[scanned..], b"\r\n\r\n") {
                break scanned + i + 4;
            }
            scanned = buf.len().saturating_sub(3);
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            if !fill(&mut stream, &mut buf).await? {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_owned();
        let target = request_line.next().unwrap_or("/").to_owned();
        let http10 = request_line.next() == Some("HTTP/1.0");
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = http10;
        let mut expect_continue = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    close = true;
                } else if v.contains("keep-alive") {
                    close = false;
                }
            } else if name.eq_ignore_ascii_case("expect") {
                expect_continue = value.eq_ignore_ascii_case("100-continue");
            }
        }
        buf.drain(..head_end);
        if expect_continue {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        // The body.
        body.clear();
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&buf, b"\r\n") {
                        break i;
                    }
                    if !fill(&mut stream, &mut buf).await? {
                        return Ok(());
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]);
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(size_text, 16) else {
                    return Ok(());
                };
                buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        if let Some(i) = find(&buf, b"\r\n") {
                            let empty = i == 0;
                            buf.drain(..i + 2);
                            if empty {
                                break;
                            }
                            continue;
                        }
                        if !fill(&mut stream, &mut buf).await? {
                            return Ok(());
                        }
                    }
                    break;
                }
                if body.len() + size > MAX_BODY {
                    return Ok(());
                }
                while buf.len() < size + 2 {
                    if !fill(&mut stream, &mut buf).await? {
                        return Ok(());
                    }
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
            }
        } else {
            if content_length > MAX_BODY {
                return Ok(());
            }
            while buf.len() < content_length {
                if !fill(&mut stream, &mut buf).await? {
                    return Ok(());
                }
            }
            body.extend_from_slice(&buf[..content_length]);
            buf.drain(..content_length);
        }
        let (status, reason, answer) = handle(cfg, &method, &target, &body);
        out.clear();
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
                answer.len(),
                if close { "connection: close\r\n" } else { "" }
            )
            .as_bytes(),
        );
        out.extend_from_slice(answer.as_bytes());
        stream.write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: pv3-bench-sink [--addr 127.0.0.1:0] [--port-file PATH] [--fail-while-file PATH] [--threads N] [--history]"
    );
    std::process::exit(2);
}

fn main() {
    let mut addr = "127.0.0.1:0".to_string();
    let mut port_file: Option<PathBuf> = None;
    let mut fail_file: Option<PathBuf> = None;
    let mut threads = 1usize;
    let mut history = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--addr" => addr = value(),
            "--port-file" => port_file = Some(value().into()),
            "--fail-while-file" | "--fail-until-file" => fail_file = Some(value().into()),
            "--threads" => threads = value().parse().unwrap_or_else(|_| usage()),
            "--history" => history = true,
            _ => usage(),
        }
    }
    if !addr.starts_with("127.") && !addr.starts_with("[::1]") && !addr.starts_with("localhost") {
        eprintln!("pv3-bench-sink listens on loopback only, not {addr}");
        std::process::exit(2);
    }
    if history {
        *STORE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Store::default());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        let local = listener.local_addr().expect("local addr");
        if let Some(path) = &port_file {
            // Written whole then renamed, so a reader never sees half a port.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{}\n", local.port())).expect("write port file");
            std::fs::rename(&tmp, path).expect("rename port file");
        }
        eprintln!("pv3-bench-sink listening on http://{local}");
        let cfg: &'static Config = Box::leak(Box::new(Config { fail_file, history }));
        let accept = async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(async move {
                            let _ = serve(cfg, stream).await;
                        });
                    }
                    Err(e) => eprintln!("accept: {e}"),
                }
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = accept => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        println!("{}", counts_json());
    });
}
