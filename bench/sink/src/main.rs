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
//! | `GET /count` | `{"measurements","requests","alarms","failed","bad","bytes","first_ns","last_ns"}` |
//! | `POST /reset` | zeroes the counters |
//! | `POST /fail?on=1` / `?on=0` | answer every API POST with 503 (not counted) / back to 201 |
//! | `GET /health` | 200 |
//!
//! `first_ns`/`last_ns` are the Unix times (ns) of the first and last 2xx API
//! answer since the last reset, so a script can time delivery precisely
//! without polling. `--fail-while-file PATH` also answers 503 while PATH
//! exists. On SIGINT/SIGTERM the counters are printed as JSON on stdout.
//!
//! Plain tokio with a minimal HTTP/1.1 reader (Content-Length and chunked
//! bodies, keep-alive, pipelining, `Expect: 100-continue`): nothing here
//! should ever be the bottleneck of a benchmark.

use std::borrow::Cow;
use std::path::PathBuf;
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

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 256 * 1024 * 1024;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn counts_json() -> String {
    format!(
        "{{\"measurements\":{},\"requests\":{},\"alarms\":{},\"failed\":{},\"bad\":{},\"bytes\":{},\"first_ns\":{},\"last_ns\":{},\"failing\":{}}}",
        MEASUREMENTS.load(Relaxed),
        REQUESTS.load(Relaxed),
        ALARMS.load(Relaxed),
        FAILED.load(Relaxed),
        BAD.load(Relaxed),
        BYTES.load(Relaxed),
        FIRST_NS.load(Relaxed),
        LAST_NS.load(Relaxed),
        FAILING.load(Relaxed),
    )
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
    ] {
        c.store(0, Relaxed);
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

struct Config {
    fail_file: Option<PathBuf>,
}

fn failing(cfg: &Config) -> bool {
    FAILING.load(Relaxed) || cfg.fail_file.as_ref().is_some_and(|p| p.exists())
}

/// What an API path is.
enum Endpoint<'a> {
    Batch(&'a str),
    Single(&'a str),
    Alarms(&'a str),
}

fn api_endpoint(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix("/api/devices/")?;
    let (device, tail) = rest.split_once('/')?;
    match tail {
        "measurements/batch" => Some(Endpoint::Batch(device)),
        "measurements" => Some(Endpoint::Single(device)),
        "alarms" => Some(Endpoint::Alarms(device)),
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
    let Some(endpoint) = api_endpoint(path).filter(|_| method == "POST") else {
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
        "usage: pv3-bench-sink [--addr 127.0.0.1:0] [--port-file PATH] [--fail-while-file PATH] [--threads N]"
    );
    std::process::exit(2);
}

fn main() {
    let mut addr = "127.0.0.1:0".to_string();
    let mut port_file: Option<PathBuf> = None;
    let mut fail_file: Option<PathBuf> = None;
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--addr" => addr = value(),
            "--port-file" => port_file = Some(value().into()),
            "--fail-while-file" | "--fail-until-file" => fail_file = Some(value().into()),
            "--threads" => threads = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if !addr.starts_with("127.") && !addr.starts_with("[::1]") && !addr.starts_with("localhost") {
        eprintln!("pv3-bench-sink listens on loopback only, not {addr}");
        std::process::exit(2);
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
        let cfg: &'static Config = Box::leak(Box::new(Config { fail_file }));
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
