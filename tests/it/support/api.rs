//! Recording HTTP/1.1 server that mimics the PV3 Monitor API.
//!
//! Written directly on `tokio::net::TcpListener`: keep-alive, Content-Length
//! and chunked request bodies, `Expect: 100-continue`.
//!
//! State lives in a shared store (`Arc`) so that a server restarted with
//! [`RecordingApi::restart`] or [`RecordingApi::start_on_with`] keeps
//! recording into the same lists: records from before and after the restart
//! can be read from either handle.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{TaskSet, bind_reuse, lock};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Raw request target, including any query string.
    pub path: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
    pub status_returned: u16,
}

impl Request {
    /// First header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body parsed as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

#[derive(Default)]
struct Faults {
    fail_next: usize,
    fail_next_status: u16,
    fail_all: Option<u16>,
    delay: Duration,
    retry_after: Option<u64>,
    /// POST bodies larger than this get 413, as from a proxy's size limit.
    max_body: Option<usize>,
    /// Every POST gets `200` with an HTML page (a captive portal, a
    /// misrouted proxy) and is not recorded.
    html: bool,
    /// Every `GET /api/...` gets this status (the backend's database is
    /// down: `/` and `/health` still answer).
    fail_reads: Option<u16>,
    /// Every `GET /api/...` gets its connection reset, unanswered.
    reset_reads: bool,
    /// Delay before each `GET /api/...` is answered (a stalled database).
    read_delay: Duration,
    /// Every `GET /api/...` gets `200` with this body (not the API's own).
    read_answer: Option<Value>,
    /// Delay applied to POSTs only (a database slow to write).
    post_delay: Duration,
    /// Armed: the next POST starts a stall of this long.
    stall_next_post: Option<Duration>,
    /// Every request arriving before this waits until then (a stalled
    /// database: all of it answers at once when it is back).
    stalled_until: Option<tokio::time::Instant>,
    /// A batch POST stores at most this many of its measurements and
    /// answers `201 {"created": <that many>}`.
    created_at_most: Option<usize>,
}

#[derive(Clone, Debug)]
struct Row {
    device: String,
    value: Value,
    /// Arrival sequence number (ties / missing timestamps).
    seq: u64,
}

#[derive(Default)]
struct Data {
    requests: Vec<Request>,
    /// Measurements from accepted batch requests (with `device_id`).
    measurements: Vec<Value>,
    /// Measurements pre-loaded with `seed_measurement` (GET endpoints only).
    seeded: Vec<Value>,
    alarms: Vec<(String, Value)>,
    faults: Faults,
    /// Requests read but not yet answered (waiting out a delay).
    in_progress: usize,
}

struct Store {
    data: Mutex<Data>,
    /// Bumped whenever a request is recorded.
    changes: watch::Sender<u64>,
}

impl Store {
    fn new() -> Arc<Store> {
        let (changes, _) = watch::channel(0);
        Arc::new(Store {
            data: Mutex::new(Data::default()),
            changes,
        })
    }
}

/// The recording API server. Fault injection applies to POST requests only.
pub struct RecordingApi {
    port: u16,
    store: Arc<Store>,
    conns: Arc<TaskSet>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl RecordingApi {
    /// Starts on 127.0.0.1 with an OS-assigned port and an empty store.
    pub async fn start() -> RecordingApi {
        Self::start_on(0).await
    }

    /// Starts on 127.0.0.1:`port` (SO_REUSEADDR) with an empty store.
    pub async fn start_on(port: u16) -> RecordingApi {
        Self::launch(port, Store::new()).await
    }

    /// Starts on `port` sharing `previous`'s store (records, data and fault
    /// settings): use after `previous.stop()` to bring "the same" API back.
    pub async fn start_on_with(port: u16, previous: &RecordingApi) -> RecordingApi {
        Self::launch(port, Arc::clone(&previous.store)).await
    }

    /// Stops (if running) and starts again on the same port, same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        *self = Self::launch(self.port, Arc::clone(&self.store)).await;
    }

    async fn launch(port: u16, store: Arc<Store>) -> RecordingApi {
        let listener = match bind_reuse(port) {
            Ok(l) => l,
            Err(e) => panic!("RecordingApi: bind 127.0.0.1:{port}: {e}"),
        };
        let port = listener
            .local_addr()
            .expect("RecordingApi: local_addr")
            .port();
        let conns = TaskSet::new();
        let accept_store = Arc::clone(&store);
        let accept_conns = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let store = Arc::clone(&accept_store);
                accept_conns.spawn(async move { serve_conn(stream, store).await });
            }
        });
        RecordingApi {
            port,
            store,
            conns,
            accept: Mutex::new(Some(accept)),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops listening and drops every connection; connections are refused
    /// afterwards.
    pub async fn stop(&self) {
        let accept = lock(&self.accept).take();
        if let Some(handle) = accept {
            handle.abort();
            let _ = handle.await;
        }
        self.conns.abort_all();
        if !self.conns.wait_empty(Duration::from_secs(10)).await {
            panic!("RecordingApi: connection tasks did not stop");
        }
    }

    // ---- records -------------------------------------------------------

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.store.data).requests.clone()
    }

    /// Requests with the given method whose path starts with `prefix`.
    pub fn requests_to(&self, method: &str, prefix: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .collect()
    }

    /// Measurement objects of accepted (2xx) batch requests, in arrival
    /// order, each with an added `device_id`. Seeded data is not included.
    pub fn measurements(&self) -> Vec<Value> {
        lock(&self.store.data).measurements.clone()
    }

    /// (device, value) of each stored measurement, in arrival order.
    pub fn device_values(&self) -> Vec<(String, f64)> {
        self.measurements()
            .iter()
            .map(|m| {
                (
                    m["device_id"].as_str().unwrap_or("?").to_string(),
                    m["metric_value"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    }

    /// Alarm objects of accepted alarm requests: `(device_id, alarm)`. An
    /// array body yields one entry per element, an object with an `alarms`
    /// array one per element of it, any other object one entry.
    pub fn alarms(&self) -> Vec<(String, Value)> {
        lock(&self.store.data).alarms.clone()
    }

    /// Clears requests, measurements, alarms and seeded data (not faults).
    pub fn clear(&self) {
        let mut d = lock(&self.store.data);
        d.requests.clear();
        d.measurements.clear();
        d.seeded.clear();
        d.alarms.clear();
    }

    // ---- fault injection ------------------------------------------------

    /// The next `n` POST requests get `status` with `{"detail":"injected"}`.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut d = lock(&self.store.data);
        d.faults.fail_next = n;
        d.faults.fail_next_status = status;
    }

    /// Every POST request gets `status` until [`Self::recover`].
    pub fn fail_all(&self, status: u16) {
        lock(&self.store.data).faults.fail_all = Some(status);
    }

    /// Clears `fail_all` and any remaining `fail_next`.
    pub fn recover(&self) {
        let mut d = lock(&self.store.data);
        d.faults.fail_all = None;
        d.faults.fail_next = 0;
    }

    /// Delay applied before processing (and answering) each request. The
    /// request is recorded after the delay.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.store.data).faults.delay = delay;
    }

    /// POST bodies over `bytes` get `413 Payload Too Large` (`None`: no limit).
    pub fn set_max_body(&self, bytes: Option<usize>) {
        lock(&self.store.data).faults.max_body = bytes;
    }

    /// Every `GET /api/...` gets `status` (`None`: back to normal), as when
    /// the backend is up and its database is not.
    pub fn fail_reads(&self, status: Option<u16>) {
        lock(&self.store.data).faults.fail_reads = status;
    }

    /// The next POST to arrive starts a stall of `length`: every request
    /// arriving until it ends (that POST included: /health, history,
    /// POSTs) is answered, and a POST stored, only when it ends, whether
    /// its client still waits or not.
    pub fn stall_next_post(&self, length: Duration) {
        lock(&self.store.data).faults.stall_next_post = Some(length);
    }

    /// Every `GET /api/...` has its connection reset (RST) without an
    /// answer, as a backend whose database connection dies mid-request.
    pub fn reset_reads(&self, on: bool) {
        lock(&self.store.data).faults.reset_reads = on;
    }

    /// Delay before each `GET /api/...` is answered (`/`, `/health` and
    /// POSTs are not delayed): a database that stalls reads.
    pub fn set_read_delay(&self, delay: Duration) {
        lock(&self.store.data).faults.read_delay = delay;
    }

    /// Every `GET /api/...` gets `200` with `body` (`None`: back to
    /// normal), as from something that is not PV3 Monitor.
    pub fn answer_reads(&self, body: Option<Value>) {
        lock(&self.store.data).faults.read_answer = body;
    }

    /// Each batch POST stores at most `n` of its measurements (the first)
    /// and says so: `201 {"created": n}` (`None`: back to normal).
    pub fn create_at_most(&self, n: Option<usize>) {
        lock(&self.store.data).faults.created_at_most = n;
    }

    /// Every POST gets `200 OK` with an HTML page until turned off.
    pub fn answer_html(&self, on: bool) {
        lock(&self.store.data).faults.html = on;
    }

    /// Delay before each POST is processed (and answered): it is stored
    /// after the delay even if the client has given up by then, as a real
    /// backend does.
    pub fn set_post_delay(&self, delay: Duration) {
        lock(&self.store.data).faults.post_delay = delay;
    }

    /// Adds `Retry-After: secs` to injected failures.
    pub fn set_retry_after(&self, secs: Option<u64>) {
        lock(&self.store.data).faults.retry_after = secs;
    }

    /// Pre-loads a measurement visible to the GET endpoints only.
    pub fn seed_measurement(
        &self,
        device: &str,
        metric: &str,
        value: f64,
        unit: &str,
        timestamp_rfc3339: &str,
    ) {
        lock(&self.store.data).seeded.push(json!({
            "device_id": device,
            "metric_name": metric,
            "metric_value": value,
            "unit": unit,
            "timestamp": timestamp_rfc3339,
        }));
    }

    // ---- waiting ---------------------------------------------------------

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Data) -> Option<T>,
    ) -> Result<T, usize>
    where
        T: Sized,
    {
        let mut rx = self.store.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(&lock(&self.store.data)) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let d = lock(&self.store.data);
                    return check(&d).ok_or(d.measurements.len());
                }
            }
        }
    }

    /// Returns all accepted measurements as soon as there are at least `n`;
    /// panics (with what arrived) after `timeout`.
    pub async fn wait_for_measurements(&self, n: usize, timeout: Duration) -> Vec<Value> {
        match self.try_wait_for_measurements(n, timeout).await {
            Some(v) => v,
            None => {
                let got = self.measurements();
                let reqs: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} -> {}", r.method, r.path, r.status_returned))
                    .collect();
                panic!(
                    "RecordingApi: expected at least {n} measurements within {timeout:?}, got {}; requests: {reqs:?}; measurements: {got:?}",
                    got.len()
                );
            }
        }
    }

    /// Like [`Self::wait_for_measurements`] but returns None on timeout.
    pub async fn try_wait_for_measurements(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Option<Vec<Value>> {
        self.wait_until(timeout, |d| {
            (d.measurements.len() >= n).then(|| d.measurements.clone())
        })
        .await
        .ok()
    }

    /// Returns all requests as soon as there are at least `n`; panics after
    /// `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        match self
            .wait_until(timeout, |d| {
                (d.requests.len() >= n).then(|| d.requests.clone())
            })
            .await
        {
            Ok(v) => v,
            Err(_) => {
                let got: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} -> {}", r.method, r.path, r.status_returned))
                    .collect();
                panic!(
                    "RecordingApi: expected at least {n} requests within {timeout:?}, got {}: {got:?}",
                    got.len()
                );
            }
        }
    }

    /// Waits until no request is waiting out a delay (each has been
    /// answered, and a POST stored, whether its client still waited or
    /// not); panics after `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) {
        if self
            .wait_until(timeout, |d| (d.in_progress == 0).then_some(()))
            .await
            .is_err()
        {
            panic!("RecordingApi: requests still waiting after {timeout:?}");
        }
    }

    /// Waits for at least `n` recorded alarms; panics after `timeout`.
    pub async fn wait_for_alarms(&self, n: usize, timeout: Duration) -> Vec<(String, Value)> {
        match self
            .wait_until(timeout, |d| (d.alarms.len() >= n).then(|| d.alarms.clone()))
            .await
        {
            Ok(v) => v,
            Err(_) => panic!(
                "RecordingApi: expected at least {n} alarms within {timeout:?}, got {}",
                self.alarms().len()
            ),
        }
    }
}

impl Drop for RecordingApi {
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.accept).take() {
            handle.abort();
        }
        self.conns.abort_all();
    }
}

/// A reqwest client for plain-http tests (10 s timeout). reqwest is built
/// with `rustls-no-provider`, which panics at `Client::build` unless a
/// process-wide crypto provider is installed, even for plain http: this
/// installs rustls' ring provider first (idempotent).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

// ---------------------------------------------------------------------------
// HTTP handling
// ---------------------------------------------------------------------------

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; false on EOF/error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads exactly `n` bytes from `buf` + stream, consuming them from `buf`.
async fn take_bytes(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !fill(stream, buf).await {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

async fn take_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(pos) = find(buf, b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).collect();
            return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
        }
        if buf.len() > MAX_HEAD || !fill(stream, buf).await {
            return None;
        }
    }
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = take_line(stream, buf).await?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).ok()?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                if take_line(stream, buf).await?.is_empty() {
                    return Some(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return None;
        }
        body.extend(take_bytes(stream, buf, size).await?);
        take_bytes(stream, buf, 2).await?;
    }
}

struct Response {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
    /// Send this HTML page instead of `body`.
    html: Option<&'static str>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

async fn serve_conn(mut stream: TcpStream, store: Arc<Store>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Request head.
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos;
            }
            if buf.len() > MAX_HEAD || !fill(&mut stream, &mut buf).await {
                return;
            }
        };
        let head: Vec<u8> = buf.drain(..head_end + 4).collect();
        let head = String::from_utf8_lossy(&head[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(path), version) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_string(), path.to_string());
        let http10 = version == Some("HTTP/1.0");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let connection = header("connection").unwrap_or_default();
        let keep_alive = if http10 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        let chunked = header("transfer-encoding").is_some_and(|te| te.contains("chunked"));
        let content_length: usize = match header("content-length") {
            Some(v) => match v.parse() {
                Ok(n) if n <= MAX_BODY => n,
                _ => return,
            },
            None => 0,
        };
        if header("expect").is_some_and(|e| e.contains("100-continue"))
            && stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let body = if chunked {
            read_chunked(&mut stream, &mut buf).await
        } else {
            take_bytes(&mut stream, &mut buf, content_length).await
        };
        let Some(body) = body else { return };

        let api_read = method == "GET" && path.starts_with("/api/");
        let (delay, reset) = {
            let mut d = lock(&store.data);
            d.in_progress += 1;
            let now = tokio::time::Instant::now();
            if method == "POST"
                && let Some(length) = d.faults.stall_next_post.take()
            {
                d.faults.stalled_until = Some(now + length);
            }
            let stall = d
                .faults
                .stalled_until
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
            let extra = match method.as_str() {
                "POST" => d.faults.post_delay,
                _ if api_read => d.faults.read_delay,
                _ => Duration::ZERO,
            };
            (
                d.faults.delay + extra + stall,
                api_read && d.faults.reset_reads,
            )
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if reset {
            lock(&store.data).in_progress -= 1;
            store.changes.send_modify(|v| *v = v.wrapping_add(1));
            // RST, not FIN: the client sees "connection reset".
            let _ = stream.set_zero_linger();
            return;
        }

        let resp = {
            let mut data = lock(&store.data);
            data.in_progress -= 1;
            let resp = respond(&mut data, &method, &path, &body);
            data.requests.push(Request {
                method,
                path,
                headers,
                body,
                status_returned: resp.status,
            });
            resp
        };
        store.changes.send_modify(|v| *v = v.wrapping_add(1));

        let (content_type, body_bytes) = match resp.html {
            Some(page) => ("text/html", page.as_bytes().to_vec()),
            None => (
                "application/json",
                serde_json::to_vec(&resp.body).unwrap_or_default(),
            ),
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: {}\r\n",
            resp.status,
            reason(resp.status),
            body_bytes.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        if let Some(secs) = resp.retry_after {
            out.push_str(&format!("retry-after: {secs}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&body_bytes);
        if stream.write_all(&out).await.is_err() || !keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
    }
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

fn detail(status: u16, msg: &str) -> Response {
    Response {
        status,
        body: json!({ "detail": msg }),
        retry_after: None,
        html: None,
    }
}

fn ok(status: u16, body: Value) -> Response {
    Response {
        status,
        body,
        retry_after: None,
        html: None,
    }
}

fn validate_batch(body: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("body must be a JSON array of measurements".into());
    };
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(format!("item {i} is not an object"));
        };
        if !obj.get("metric_name").is_some_and(Value::is_string) {
            return Err(format!("item {i}: metric_name must be a string"));
        }
        match obj.get("metric_value").and_then(Value::as_f64) {
            Some(v) if v.is_finite() => {}
            _ => return Err(format!("item {i}: metric_value must be a finite number")),
        }
    }
    Ok(items)
}

fn respond(data: &mut Data, method: &str, target: &str, body: &[u8]) -> Response {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let segs: Vec<&str> = if segs == [""] { Vec::new() } else { segs };

    if method == "GET"
        && segs.first() == Some(&"api")
        && let Some(status) = data.faults.fail_reads
    {
        return detail(status, "Internal Server Error");
    }
    if method == "GET"
        && segs.first() == Some(&"api")
        && let Some(body) = &data.faults.read_answer
    {
        return ok(200, body.clone());
    }
    if method == "POST" {
        let injected = if data.faults.fail_next > 0 {
            data.faults.fail_next -= 1;
            Some(data.faults.fail_next_status)
        } else {
            data.faults.fail_all
        };
        if let Some(status) = injected {
            return Response {
                status,
                body: json!({ "detail": "injected" }),
                retry_after: data.faults.retry_after,
                html: None,
            };
        }
        if data.faults.max_body.is_some_and(|max| body.len() > max) {
            return detail(413, "Payload Too Large");
        }
        if data.faults.html {
            return Response {
                status: 200,
                body: Value::Null,
                retry_after: None,
                html: Some("<html><body>Welcome! Please log in.</body></html>"),
            };
        }
    }

    match (method, segs.as_slice()) {
        ("GET", []) => ok(
            200,
            json!({"name": "PV3 Monitor API", "version": "0.1.0", "status": "running"}),
        ),
        ("GET", ["health"]) => ok(200, json!({"status": "healthy", "mqtt_connected": true})),
        ("POST", ["api", "devices", id, "measurements", "batch"]) => {
            let device = percent_decode(id);
            match validate_batch(body) {
                Ok(items) => {
                    let n = items
                        .len()
                        .min(data.faults.created_at_most.unwrap_or(usize::MAX));
                    for mut item in items.into_iter().take(n) {
                        if let Value::Object(obj) = &mut item {
                            obj.insert("device_id".into(), Value::String(device.clone()));
                        }
                        data.measurements.push(item);
                    }
                    ok(201, json!({"created": n, "device_id": device}))
                }
                Err(msg) => detail(422, &msg),
            }
        }
        ("POST", ["api", "devices", id, "alarms"]) => {
            let device = percent_decode(id);
            let value: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return detail(422, &format!("body is not valid JSON: {e}")),
            };
            let items: Vec<Value> = match value {
                Value::Array(items) => items,
                Value::Object(mut obj) => match obj.remove("alarms") {
                    Some(Value::Array(items)) => items,
                    Some(other) => {
                        obj.insert("alarms".into(), other);
                        vec![Value::Object(obj)]
                    }
                    None => vec![Value::Object(obj)],
                },
                _ => return detail(422, "body must be a JSON object or array"),
            };
            let n = items.len();
            data.alarms
                .extend(items.into_iter().map(|a| (device.clone(), a)));
            ok(
                201,
                json!({"device_id": device, "alarms_updated": n, "events_created": 0}),
            )
        }
        ("GET", ["api", "devices"]) => {
            let rows = all_rows(data);
            let mut devices: BTreeMap<String, (usize, Option<Row>)> = BTreeMap::new();
            for row in rows {
                let entry = devices.entry(row.device.clone()).or_insert((0, None));
                entry.0 += 1;
                if entry.1.as_ref().is_none_or(|best| newer(&row, best)) {
                    entry.1 = Some(row);
                }
            }
            let list: Vec<Value> = devices
                .into_iter()
                .map(|(id, (count, last))| device_json(&id, count, last.as_ref()))
                .collect();
            ok(200, Value::Array(list))
        }
        ("GET", ["api", "devices", id]) => {
            let device = percent_decode(id);
            let rows: Vec<Row> = all_rows(data)
                .into_iter()
                .filter(|r| r.device == device)
                .collect();
            if rows.is_empty() {
                return detail(404, "Device not found");
            }
            let last = newest(rows.iter());
            ok(200, device_json(&device, rows.len(), last))
        }
        ("GET", ["api", "devices", id, "current"]) => {
            let device = percent_decode(id);
            let rows: Vec<Row> = all_rows(data)
                .into_iter()
                .filter(|r| r.device == device)
                .collect();
            if rows.is_empty() {
                return detail(404, "No measurements found");
            }
            let mut per_metric: BTreeMap<String, Row> = BTreeMap::new();
            for row in rows {
                let name = metric_name(&row.value);
                match per_metric.get(&name) {
                    Some(best) if !newer(&row, best) => {}
                    _ => {
                        per_metric.insert(name, row);
                    }
                }
            }
            let mut obj = serde_json::Map::new();
            let newest_row = newest(per_metric.values());
            let ts = newest_row
                .and_then(|r| r.value.get("timestamp").cloned())
                .unwrap_or(Value::Null);
            for (name, row) in &per_metric {
                obj.insert(
                    name.clone(),
                    row.value
                        .get("metric_value")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
            }
            obj.insert("timestamp".into(), ts);
            ok(200, Value::Object(obj))
        }
        ("GET", ["api", "devices", id, "metrics", metric]) => {
            let device = percent_decode(id);
            let metric = percent_decode(metric);
            let rows: Vec<Row> = all_rows(data)
                .into_iter()
                .filter(|r| r.device == device && metric_name(&r.value) == metric)
                .collect();
            match newest(rows.iter()) {
                Some(row) => ok(
                    200,
                    json!({
                        "metric_name": metric,
                        "metric_value": row.value.get("metric_value").cloned().unwrap_or(Value::Null),
                        "unit": row.value.get("unit").cloned().unwrap_or(Value::Null),
                        "timestamp": row.value.get("timestamp").cloned().unwrap_or(Value::Null),
                    }),
                ),
                None => detail(404, "No measurements found"),
            }
        }
        ("GET", ["api", "devices", id, "history"]) => {
            let device = percent_decode(id);
            history(data, &device, target)
        }
        _ => detail(404, "Not Found"),
    }
}

/// `GET /api/devices/{id}/history?metrics=a,b&start=T&end=T` as the real
/// backend answers it: rows of the listed metrics with `start <= timestamp
/// <= end` (inclusive; the last 24 hours when left out), ordered by time,
/// timestamps at microsecond precision in Python's `+00:00` form.
fn history(data: &Data, device: &str, target: &str) -> Response {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(&v.replace('+', " ")))
    };
    let Some(metrics) = param("metrics") else {
        return detail(422, "metrics: field required");
    };
    let metrics: Vec<&str> = metrics.split(',').collect();
    let now = super::now_nanos();
    let bound = |name: &str, default: i128| match param(name) {
        Some(text) => parse_rfc3339_nanos(&text).ok_or(()),
        None => Ok(default),
    };
    let (Ok(start), Ok(end)) = (
        bound("start", now - 86_400 * 1_000_000_000),
        bound("end", now),
    ) else {
        return detail(422, "start/end: invalid datetime");
    };
    let mut rows: Vec<(i128, Value)> = all_rows(data)
        .into_iter()
        .filter(|r| r.device == device && metrics.contains(&metric_name(&r.value).as_str()))
        .filter_map(|r| {
            let ts = r.value.get("timestamp")?.as_str()?;
            // Stored with microsecond precision.
            let micros = parse_rfc3339_nanos(ts)? / 1000;
            Some((micros * 1000, r.value))
        })
        .filter(|(ns, _)| (start..=end).contains(ns))
        .collect();
    rows.sort_by_key(|(ns, _)| *ns);
    let list: Vec<Value> = rows
        .into_iter()
        .enumerate()
        .map(|(i, (ns, v))| {
            json!({
                "id": i + 1,
                "device_id": device,
                "metric_name": v.get("metric_name").cloned().unwrap_or(Value::Null),
                "metric_value": v.get("metric_value").cloned().unwrap_or(Value::Null),
                "unit": v.get("unit").cloned().unwrap_or(Value::Null),
                "source_topic": v.get("source_topic").cloned().unwrap_or(Value::Null),
                "timestamp": python_isoformat(ns),
            })
        })
        .collect();
    ok(200, Value::Array(list))
}

/// `2026-11-27T14:19:27.357000+00:00`, as Python's `isoformat()` writes a
/// UTC datetime with microseconds.
fn python_isoformat(nanos: i128) -> String {
    let Ok(dt) = time::OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return String::new();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond()
    )
}

fn metric_name(v: &Value) -> String {
    v.get("metric_name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn device_json(id: &str, count: usize, last: Option<&Row>) -> Value {
    json!({
        "device_id": id,
        "measurement_count": count,
        "last_seen": last.and_then(|r| r.value.get("timestamp").cloned()).unwrap_or(Value::Null),
    })
}

/// Seeded rows first, then accepted rows, numbered in that order.
fn all_rows(data: &Data) -> Vec<Row> {
    data.seeded
        .iter()
        .chain(data.measurements.iter())
        .enumerate()
        .map(|(i, v)| Row {
            device: v
                .get("device_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            value: v.clone(),
            seq: i as u64,
        })
        .collect()
}

fn sort_key(row: &Row) -> (Option<i128>, u64) {
    let ts = row
        .value
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339_nanos);
    (ts, row.seq)
}

fn newer(a: &Row, b: &Row) -> bool {
    sort_key(a) > sort_key(b)
}

fn newest<'a>(rows: impl Iterator<Item = &'a Row>) -> Option<&'a Row> {
    rows.max_by_key(|r| sort_key(r))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into nanoseconds since the
/// Unix epoch. Lenient: `t`/space separator, lowercase `z`, missing offset
/// taken as UTC.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
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
    let mut nanos: i128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return None;
        }
        let mut padded = digits.clone();
        padded.truncate(9);
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().ok()?;
        rest = &frac[digits.len()..];
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
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
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
    Some(secs as i128 * 1_000_000_000 + nanos)
}
