//! Prometheus output: `/metrics` in the text exposition format (0.0.4),
//! served by a small HTTP server of its own.
//!
//! Prometheus pulls, so this output is a latest-value store, not a queue:
//! [`Output::send`] overwrites the last value of each (device, metric) under
//! a `std` mutex and returns (it never awaits), and a scrape renders what is
//! there at that moment. Nothing is buffered, so nothing can back up into
//! collect; a scrape that never comes costs nothing.
//!
//! The server is hand-rolled on tokio rather than built on hyper: it answers
//! two paths with one GET each, `hyper`'s server side is not in the tree
//! (only reqwest's client), and a few dozen lines with hard limits are easier
//! to bound than a framework: at most [`MAX_HEAD`] bytes of request head,
//! [`CONNECTION_TIMEOUT`] per connection, [`MAX_CONNECTIONS`] at once, and
//! `Connection: close` on every answer (a scrape every 15 s gains nothing
//! from keep-alive and a kept connection is one more thing to bound).
//!
//! Names follow the official naming guide through
//! [`metric_info::prometheus_name`]: `pv3_` + the metric + the base unit
//! (`pv3_grid_power_watts`, values scaled by [`MetricInfo::prom_scale`]:
//! millivolts become volts, kWh become joules) + `_total` on counters only.
//! See `docs/prometheus.md` for the list.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, trace, warn};

use super::{Closed, Health, Output, OutputFuture, OutputStats};
use crate::forward::ForwardStats;
use crate::metric_info::{self, MetricInfo};
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::{AlarmStates, Reading, Timestamp};

/// The content type of the text exposition format this output writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most bytes of request line and headers read from a client. A scraper
/// sends a few hundred; anything past this is answered 431 and closed, so a
/// client cannot make the server hold more than this per connection.
pub const MAX_HEAD: usize = 8 * 1024;

/// Longest a connection may take, from accept to the last byte written. A
/// client that connects and says nothing (or reads nothing) is closed after
/// this, so it holds its slot for no longer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once. Past this the server stops accepting until
/// one ends (the kernel's backlog holds the rest), so a flood of idle
/// connections costs at most this many tasks and buffers, and each of them
/// is gone within [`CONNECTION_TIMEOUT`].
pub const MAX_CONNECTIONS: usize = 16;

/// Most series (device × metric, device × alarm flag) kept. The P3 has
/// about a hundred per device; a broker that invents devices or
/// `safetycheck_<key>` names cannot grow `/metrics` past this. A new series
/// beyond it is dropped and counted.
pub const MAX_SERIES: usize = 10_000;

/// Most distinct (metric, unit) pairs remembered; beyond it an unknown pair
/// is dropped and counted without being remembered (same reason).
const MAX_ROUTES: usize = 2_048;

/// How long the accept loop pauses after an accept error. Such errors
/// (out of file descriptors, above all) repeat at once until something is
/// freed, and there is no event that says when: without a pause the loop
/// would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The names this output writes for pv3's own health and the alarms. A
/// decoded metric that maps onto one of them is refused (see
/// [`Latest::route`]), so a family never has two writers.
const RESERVED: &[&str] = &[
    "pv3_build_info",
    "pv3_messages_received_total",
    "pv3_decode_errors_total",
    "pv3_last_message_age_seconds",
    "pv3_api_measurements_delivered_total",
    "pv3_api_alarm_updates_delivered_total",
    "pv3_api_measurements_spooled_total",
    "pv3_api_measurements_dropped_total",
    "pv3_api_measurements_rejected_total",
    "pv3_api_failed_attempts_total",
    "pv3_api_measurements_queued",
    "pv3_api_spool_measurements",
    "pv3_api_spool_bytes",
    "pv3_api_last_delivery_age_seconds",
    "pv3_output_connected",
    "pv3_output_published_total",
    "pv3_output_dropped_total",
    "pv3_output_last_publish_age_seconds",
    "pv3_alarm",
];

/// Serves `/metrics` with the latest value of every metric of every device.
pub struct PrometheusOutput {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Dropping it (with the output) stops the server as well.
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// What `send` writes and the server reads.
struct Shared {
    latest: Mutex<Latest>,
    health: Arc<Health>,
    stats: Arc<OutputStats>,
}

impl Shared {
    /// The store. A panic while it was held (none is expected: no I/O and
    /// no outside data is trusted in there) leaves plain values behind, so
    /// the poison is ignored rather than taking `/metrics` down for good.
    fn latest(&self) -> MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PrometheusOutput {
    /// Binds `addr` at once, so that a bad or busy address stops collect
    /// before it starts (the error is one line and names the address), then
    /// serves in a task of its own until [`Output::finish`] or a drop.
    /// `health` is read at every scrape. Its `outputs` list need not hold
    /// this output's own [`OutputStats`] (it cannot, before this call):
    /// they are added unless an output named `prometheus` is listed, and
    /// each name is shown once (see [`PrometheusOutput::stats`]).
    pub async fn bind(addr: SocketAddr, health: Arc<Health>) -> anyhow::Result<PrometheusOutput> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow!("cannot listen for Prometheus scrapes on {addr}: {e}"))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| anyhow!("cannot listen for Prometheus scrapes on {addr}: {e}"))?;
        let stats = OutputStats::new("prometheus");
        stats.set_connected(true);
        let shared = Arc::new(Shared {
            latest: Mutex::new(Latest::new()),
            health,
            stats,
        });
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(serve(listener, shared.clone(), stopped));
        info!("prometheus: serving http://{local_addr}/metrics");
        Ok(PrometheusOutput {
            shared,
            local_addr,
            stop,
            server,
        })
    }

    /// The address it listens on (the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its counters: `published` counts scrapes answered, `dropped` values
    /// refused (a name taken by another metric, or past the 10,000 series kept),
    /// `connected` whether it is listening. The same `Arc` as
    /// [`Output::stats`], available before the output is boxed.
    pub fn stats(&self) -> Arc<OutputStats> {
        self.shared.stats.clone()
    }

    /// The exposition a scrape would get now.
    pub fn render(&self) -> String {
        render(&self.shared)
    }
}

impl Output for PrometheusOutput {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn send(&mut self, reading: Arc<Reading>) -> OutputFuture<'_, Result<(), Closed>> {
        let (dropped, refused) = self.shared.latest().update(&reading);
        if dropped > 0 {
            self.shared.stats.dropped(dropped);
        }
        // Logged after the lock is released: a slow stderr must not hold up
        // a scrape. Each refused name comes up once, when it is first seen.
        for line in refused {
            warn!("prometheus: {line}");
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn progress(&self) -> Option<String> {
        let series = self.shared.latest().series;
        Some(format!(
            "{} scrapes answered on {}, {series} series",
            self.shared.stats.published.load(Ordering::Relaxed),
            self.local_addr
        ))
    }

    fn wants_derived(&self) -> bool {
        // The energy counters are what a Prometheus user graphs with
        // `increase()`; the P3 itself only publishes power.
        true
    }

    fn stats(&self) -> Option<Arc<OutputStats>> {
        Some(self.shared.stats.clone())
    }

    fn finish(self: Box<Self>, _received: u64) -> OutputFuture<'static, anyhow::Result<()>> {
        let PrometheusOutput {
            shared,
            local_addr,
            stop,
            server,
        } = *self;
        Box::pin(async move {
            // The server may have stopped already (it only does on a panic);
            // then there is no one to tell.
            let _ = stop.send(());
            let ended = server.await;
            shared.stats.set_connected(false);
            info!(
                "prometheus: stopped listening on {local_addr} after {} scrapes",
                shared.stats.published.load(Ordering::Relaxed)
            );
            ended.map_err(|e| anyhow!("the Prometheus server failed: {e}"))
        })
    }
}

// ---------------------------------------------------------------------------
// The store of latest values
// ---------------------------------------------------------------------------

/// Where a (metric, unit) pair goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Into the family at this index.
    Family(usize),
    /// Nowhere: its name belongs to another metric (or to pv3's own).
    Refused,
}

/// One metric family: a name, its type and one sample per device.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    counter: bool,
    /// From the decoded value to the base unit: `value * scale`, or
    /// `value / divisor` when the scale is a fraction (mV → V), which gives
    /// the correctly rounded 3.316 rather than 3.3160000000000003.
    scale: Scale,
    samples: BTreeMap<Arc<str>, f64>,
}

/// The latest value of everything, and which metric owns which name.
#[derive(Debug)]
struct Latest {
    /// unit → metric → route: a lookup per measurement without allocating.
    routes: HashMap<&'static str, HashMap<String, Route>>,
    routes_len: usize,
    /// Family name → who holds it, for the warning about the one refused.
    owners: HashMap<String, String>,
    families: Vec<Family>,
    /// Each device's flags from its last alarms message (each message
    /// carries every flag, so it replaces the previous set).
    alarms: BTreeMap<Arc<str>, AlarmStates>,
    /// Samples held in `families` and `alarms`.
    series: usize,
    /// Whether the "full" warning has been given.
    warned_full: bool,
}

impl Latest {
    fn new() -> Latest {
        let owners = RESERVED
            .iter()
            .map(|name| (name.to_string(), "pv3's own metrics".to_string()))
            .collect();
        Latest {
            routes: HashMap::new(),
            routes_len: 0,
            owners,
            families: Vec::new(),
            alarms: BTreeMap::new(),
            series: 0,
            warned_full: false,
        }
    }

    /// Stores `reading`'s values; returns how many were dropped and a
    /// warning for each name refused for the first time (or the first time
    /// the store is full).
    fn update(&mut self, reading: &Reading) -> (u64, Vec<String>) {
        let device = &reading.origin.device_id;
        let mut dropped = 0;
        let mut warnings = Vec::new();
        for m in &reading.measurements {
            let Some(Route::Family(index)) = self.route(&m.metric, m.unit, &mut warnings) else {
                dropped += 1;
                continue;
            };
            let family = &mut self.families[index];
            let value = family.scale.apply(m.value);
            if let Some(slot) = family.samples.get_mut(&**device) {
                *slot = value;
            } else if self.series < MAX_SERIES {
                family.samples.insert(device.clone(), value);
                self.series += 1;
            } else {
                dropped += 1;
                self.full(&mut warnings);
            }
        }
        if let Some(flags) = &reading.alarms {
            let before = self.alarms.get(&**device).map_or(0, |f| f.len());
            let after = self.series - before + flags.len();
            if after <= MAX_SERIES {
                self.alarms.insert(device.clone(), flags.clone());
                self.series = after;
            } else {
                dropped += flags.len() as u64;
                self.full(&mut warnings);
            }
        }
        (dropped, warnings)
    }

    fn full(&mut self, warnings: &mut Vec<String>) {
        if !self.warned_full {
            self.warned_full = true;
            warnings.push(format!(
                "{MAX_SERIES} series held: new ones are left out of /metrics (counted as dropped)"
            ));
        }
    }

    /// The route of `metric` in `unit`, deciding it on first sight: the
    /// first (metric, unit) to map onto a name owns it for the life of the
    /// process; any other that maps onto the same name (same type or not)
    /// is refused, because two writers of one family would either make its
    /// values flap between two meanings or, with different types, make the
    /// whole exposition invalid. `None`: not remembered (too many pairs).
    fn route(
        &mut self,
        metric: &str,
        unit: &'static str,
        warnings: &mut Vec<String>,
    ) -> Option<Route> {
        if let Some(route) = self.routes.get(unit).and_then(|m| m.get(metric)) {
            return Some(*route);
        }
        if self.routes_len >= MAX_ROUTES {
            self.full(warnings);
            return None;
        }
        let info = metric_info::info(metric, unit);
        let name = metric_info::prometheus_name(metric, &info);
        let route = match self.owners.get(&name) {
            Some(owner) => {
                warnings.push(format!(
                    "{metric} ({unit:?}) would be exposed as {name}, a name already taken by {owner}; it is left out of /metrics (counted as dropped)"
                ));
                Route::Refused
            }
            None => {
                self.owners
                    .insert(name.clone(), format!("{metric} ({unit:?})"));
                self.families.push(family(metric, unit, &info, name));
                Route::Family(self.families.len() - 1)
            }
        };
        self.routes
            .entry(unit)
            .or_default()
            .insert(metric.to_owned(), route);
        self.routes_len += 1;
        Some(route)
    }
}

/// A new, empty family for `metric`.
fn family(metric: &str, unit: &str, info: &MetricInfo, name: String) -> Family {
    let base = match info.prom_suffix {
        "" => String::new(),
        suffix => format!(", in {}", suffix.replace('_', "-")),
    };
    let help = if info.prom_counter {
        format!("Energy counter {metric} integrated by pv3 from the P3's power readings{base}")
    } else if unit.is_empty() || info.prom_scale == 1.0 {
        format!("P3 metric {metric}{base}")
    } else {
        format!("P3 metric {metric} (published in {unit}){base}")
    };
    Family {
        name,
        help,
        counter: info.prom_counter,
        scale: Scale::of(info.prom_scale),
        samples: BTreeMap::new(),
    }
}

/// A conversion to the base unit (see [`Family::scale`]).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    Times(f64),
    DividedBy(f64),
}

impl Scale {
    fn of(factor: f64) -> Scale {
        let divisor = (1.0 / factor).round();
        if factor > 0.0 && factor < 1.0 && divisor * factor == 1.0 {
            Scale::DividedBy(divisor)
        } else {
            Scale::Times(factor)
        }
    }

    fn apply(self, value: f64) -> f64 {
        match self {
            Scale::Times(factor) => value * factor,
            Scale::DividedBy(divisor) => value / divisor,
        }
    }
}

// ---------------------------------------------------------------------------
// The exposition
// ---------------------------------------------------------------------------

/// Writes the text format: one `# HELP` and one `# TYPE` per family, then
/// its samples, families one after the other (the format requires a
/// family's lines to be together).
struct Exposition {
    out: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(&mut self.out, help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind);
        self.out.push('\n');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label(&mut self.out, text);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the format wants it: `\`, `"` and newline escaped.
fn escape_label(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A `# HELP` text as the format wants it: `\` and newline escaped.
fn escape_help(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value: Rust's shortest round-trip decimal (which Go's
/// `ParseFloat` reads back exactly), with the format's spellings of the
/// non-finite values.
fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        // Writing to a String cannot fail.
        let _ = write!(out, "{value}");
    }
}

/// Seconds from `then_ms` (Unix milliseconds, 0 for never) to `now_ms`;
/// `None` for never. Never negative (a clock stepped back reads 0).
fn age_seconds(now_ms: i64, then_ms: u64) -> Option<f64> {
    let then = i64::try_from(then_ms).ok().filter(|&t| t > 0)?;
    Some(now_ms.saturating_sub(then).max(0) as f64 / 1000.0)
}

/// Everything a scrape returns, rendered now.
fn render(shared: &Shared) -> String {
    let now_ms = Timestamp::now().unix_millis();
    let mut x = Exposition {
        out: String::with_capacity(16 * 1024),
    };
    render_health(&mut x, &shared.health, &shared.stats, now_ms);
    // The lock is held while formatting into memory only: a few hundred
    // series take microseconds, and no socket is touched under it.
    let latest = shared.latest();
    let mut families: Vec<&Family> = latest
        .families
        .iter()
        .filter(|f| !f.samples.is_empty())
        .collect();
    families.sort_by(|a, b| a.name.cmp(&b.name));
    for family in families {
        let kind = if family.counter { "counter" } else { "gauge" };
        x.header(&family.name, kind, &family.help);
        for (device, value) in &family.samples {
            x.sample(&family.name, &[("device", device)], *value);
        }
    }
    if latest.alarms.values().any(|flags| !flags.is_empty()) {
        x.header(
            "pv3_alarm",
            "gauge",
            "Alarm flags from the P3's last inverter/alarms message: 1 active, 0 clear",
        );
        for (device, flags) in &latest.alarms {
            for (flag, on) in flags {
                let value = if *on { 1.0 } else { 0.0 };
                x.sample("pv3_alarm", &[("device", device), ("flag", flag)], value);
            }
        }
    }
    drop(latest);
    x.out
}

/// pv3's own health: its input, the API output, the other outputs.
fn render_health(x: &mut Exposition, health: &Health, own: &Arc<OutputStats>, now_ms: i64) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    x.header(
        "pv3_build_info",
        "gauge",
        "Always 1; the version label says which pv3 is running",
    );
    x.sample(
        "pv3_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    x.single(
        "pv3_messages_received_total",
        "counter",
        "Messages received from the P3's MQTT broker",
        get(&health.received),
    );
    x.single(
        "pv3_decode_errors_total",
        "counter",
        "Messages whose payload could not be decoded",
        get(&health.decode_errors),
    );
    if let Some(age) = age_seconds(now_ms, health.last_message_ms.load(Ordering::Relaxed)) {
        x.single(
            "pv3_last_message_age_seconds",
            "gauge",
            "Seconds since the last message from the P3 (absent until the first)",
            age,
        );
    }
    if let Some(api) = &health.api {
        render_api(x, api, now_ms);
    }
    // The outputs' list, with this output's own counters whether or not
    // collect put them in it; one entry per name, the first, since two
    // samples with one label set would make the exposition invalid.
    let mut outputs: Vec<&Arc<OutputStats>> = Vec::with_capacity(health.outputs.len() + 1);
    for o in health.outputs.iter().chain(std::iter::once(own)) {
        if !outputs.iter().any(|seen| seen.name == o.name) {
            outputs.push(o);
        }
    }
    x.header(
        "pv3_output_connected",
        "gauge",
        "1 while the output is connected to its destination (Prometheus: listening)",
    );
    for o in &outputs {
        let up = if o.connected.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        };
        x.sample("pv3_output_connected", &[("output", o.name)], up);
    }
    x.header(
        "pv3_output_published_total",
        "counter",
        "Messages the output published (Prometheus: scrapes answered before this one)",
    );
    for o in &outputs {
        x.sample(
            "pv3_output_published_total",
            &[("output", o.name)],
            get(&o.published),
        );
    }
    x.header(
        "pv3_output_dropped_total",
        "counter",
        "Values the output replaced by newer ones or gave up before they went out",
    );
    for o in &outputs {
        x.sample(
            "pv3_output_dropped_total",
            &[("output", o.name)],
            get(&o.dropped),
        );
    }
    let ages: Vec<(&str, f64)> = outputs
        .iter()
        .filter_map(|o| {
            Some((
                o.name,
                age_seconds(now_ms, o.last_ms.load(Ordering::Relaxed))?,
            ))
        })
        .collect();
    if !ages.is_empty() {
        x.header(
            "pv3_output_last_publish_age_seconds",
            "gauge",
            "Seconds since the output last published (Prometheus: since the previous scrape)",
        );
        for (name, age) in ages {
            x.sample(
                "pv3_output_last_publish_age_seconds",
                &[("output", name)],
                age,
            );
        }
    }
}

/// The API output's counters (see [`ForwardStats`]).
fn render_api(x: &mut Exposition, api: &ForwardStats, now_ms: i64) {
    let get = |c: &std::sync::atomic::AtomicU64| ForwardStats::get(c) as f64;
    let families: [(&str, &str, &str, f64); 9] = [
        (
            "pv3_api_measurements_delivered_total",
            "counter",
            "Measurements PV3 Monitor accepted",
            get(&api.delivered),
        ),
        (
            "pv3_api_alarm_updates_delivered_total",
            "counter",
            "Alarm updates PV3 Monitor accepted",
            get(&api.alarms_delivered),
        ),
        (
            "pv3_api_measurements_spooled_total",
            "counter",
            "Measurements written to the on-disk spool while the API was unreachable or slow",
            get(&api.spooled),
        ),
        (
            "pv3_api_measurements_dropped_total",
            "counter",
            "Measurements dropped for lack of room",
            get(&api.dropped),
        ),
        (
            "pv3_api_measurements_rejected_total",
            "counter",
            "Measurements PV3 Monitor refused for good (set aside in rejected.jsonl)",
            get(&api.rejected),
        ),
        (
            "pv3_api_failed_attempts_total",
            "counter",
            "POSTs to PV3 Monitor that failed and were retried",
            get(&api.failed_attempts),
        ),
        (
            "pv3_api_measurements_queued",
            "gauge",
            "Measurements held in memory for PV3 Monitor (batches open, queued, in flight)",
            get(&api.queued),
        ),
        (
            "pv3_api_spool_measurements",
            "gauge",
            "Measurements waiting in the on-disk spool",
            get(&api.spool_measurements),
        ),
        (
            "pv3_api_spool_bytes",
            "gauge",
            "Size of what waits in the on-disk spool",
            get(&api.spool_bytes),
        ),
    ];
    for (name, kind, help, value) in families {
        x.single(name, kind, help, value);
    }
    if let Some(age) = age_seconds(now_ms, ForwardStats::get(&api.last_delivery_ms)) {
        x.single(
            "pv3_api_last_delivery_age_seconds",
            "gauge",
            "Seconds since PV3 Monitor last accepted a POST (absent until the first)",
            age,
        );
    }
}

// ---------------------------------------------------------------------------
// The HTTP server
// ---------------------------------------------------------------------------

/// Accepts until told to stop (or until the output is dropped), each
/// connection in a task of its own, at most [`MAX_CONNECTIONS`] at once.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut warnings = RateLimiter::new(Duration::from_secs(60));
    loop {
        // Finished connections are reaped here, so the set holds at most
        // the live ones.
        while connections.try_join_next().is_some() {}
        // A permit before the accept: when all are taken, new connections
        // wait in the kernel's backlog, not in memory here.
        let permit = tokio::select! {
            _ = &mut stop => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if let Some(n) = warnings.allow("accept") {
                        warn!("prometheus: cannot accept a connection: {e}{}", suppressed_note(n));
                    }
                    tokio::select! {
                        _ = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            },
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            connection(stream, &shared).await;
        });
    }
    shared.stats.set_connected(false);
    // Scrapes in progress are cut: at a stop there is nothing left to wait
    // for, and each would otherwise hold the stop for up to 5 s.
    connections.shutdown().await;
}

/// One connection: one request, one answer, closed, all within
/// [`CONNECTION_TIMEOUT`].
async fn connection(mut stream: TcpStream, shared: &Shared) {
    match tokio::time::timeout(CONNECTION_TIMEOUT, exchange(&mut stream, shared)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("prometheus: connection ended early: {e}"),
        Err(_) => debug!(
            "prometheus: connection closed after {} s without a complete exchange",
            CONNECTION_TIMEOUT.as_secs()
        ),
    }
}

/// Reads the request head (at most [`MAX_HEAD`] bytes), answers, closes.
async fn exchange(stream: &mut TcpStream, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    let response = loop {
        if let Some(end) = head_end(&buf[..filled]) {
            break answer(&buf[..end], shared);
        }
        if filled == MAX_HEAD {
            break Response::text(
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
            );
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            // Closed before a whole request: nothing to answer.
            return Ok(());
        }
        filled += n;
    };
    stream.write_all(&response.bytes).await?;
    trace!("prometheus: answered {}", response.status);
    stream.shutdown().await
}

/// Where the request head ends (after its blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A whole response, head and body, ready to write.
#[derive(Debug)]
struct Response {
    status: u16,
    bytes: Vec<u8>,
}

impl Response {
    fn new(
        status: u16,
        reason: &str,
        content_type: &str,
        extra: &str,
        body: &str,
        head: bool,
    ) -> Response {
        let mut bytes = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if !head {
            bytes.extend_from_slice(body.as_bytes());
        }
        Response { status, bytes }
    }

    fn text(status: u16, reason: &str, body: &str) -> Response {
        Response::new(status, reason, "text/plain; charset=utf-8", "", body, false)
    }
}

/// The answer to the request whose head is `head`.
fn answer(head: &[u8], shared: &Shared) -> Response {
    let Some((method, path)) = request_line(head) else {
        return Response::text(400, "Bad Request", "bad request\n");
    };
    let is_head = method == "HEAD";
    let allowed = method == "GET" || is_head;
    match path {
        "/metrics" | "/" if !allowed => Response::new(
            405,
            "Method Not Allowed",
            "text/plain; charset=utf-8",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n",
            false,
        ),
        "/metrics" => {
            let body = render(shared);
            if !is_head {
                // Counted once rendered and before the answer goes out: a
                // scrape shows the scrapes before it (and the age of the
                // last one, not a useless 0 for itself), and the next
                // scrape always sees this one counted.
                shared.stats.published(1);
            }
            Response::new(200, "OK", CONTENT_TYPE, "", &body, is_head)
        }
        "/" => Response::new(
            200,
            "OK",
            "text/plain; charset=utf-8",
            "",
            "pv3: Powervault P3 metrics for Prometheus are at /metrics\n",
            is_head,
        ),
        _ => Response::text(404, "Not Found", "not found: the metrics are at /metrics\n"),
    }
}

/// The method and the path (without a query) of an HTTP/1.x request line.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::ENERGY_TOPIC;
    use crate::reading::{Measurement, Origin};

    fn reading(device: &str, measurements: Vec<Measurement>) -> Reading {
        Reading {
            origin: Origin {
                device_id: Arc::from(device),
                topic: Arc::from("pv/PV3/x/inverter/measurements"),
            },
            timestamp: Timestamp::from_unix_micros(1_800_000_000_000_000),
            measurements,
            alarms: None,
        }
    }

    fn shared() -> Shared {
        Shared {
            latest: Mutex::new(Latest::new()),
            health: Arc::new(Health::default()),
            stats: OutputStats::new("prometheus"),
        }
    }

    #[test]
    fn label_values_and_help_are_escaped_per_the_format() {
        let mut out = String::new();
        escape_label(&mut out, "a\\b\"c\nd");
        assert_eq!(out, r#"a\\b\"c\nd"#);
        let mut out = String::new();
        escape_help(&mut out, "a\\b\"c\nd");
        assert_eq!(out, "a\\\\b\"c\\nd");
        let mut x = Exposition { out: String::new() };
        x.sample(
            "pv3_x",
            &[("device", "we\"ird\\dev\n"), ("flag", "ok")],
            1.5,
        );
        assert_eq!(
            x.out,
            "pv3_x{device=\"we\\\"ird\\\\dev\\n\",flag=\"ok\"} 1.5\n"
        );
    }

    #[test]
    fn values_use_the_formats_spellings() {
        let text = |v: f64| {
            let mut s = String::new();
            write_value(&mut s, v);
            s
        };
        assert_eq!(text(3317.0), "3317");
        assert_eq!(text(-0.25), "-0.25");
        assert_eq!(text(f64::NAN), "NaN");
        assert_eq!(text(f64::INFINITY), "+Inf");
        assert_eq!(text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(text(0.1 + 0.2).parse::<f64>().ok(), Some(0.1 + 0.2));
    }

    #[test]
    fn the_first_metric_to_claim_a_name_keeps_it() {
        let s = shared();
        let mut latest = s.latest();
        // `cell_voltage_max` in mV and `cell_voltage_max_volts` in V map
        // onto one name with the same type: the second is refused.
        let (dropped, warnings) = latest.update(&reading(
            "D",
            vec![
                Measurement::new("cell_voltage_max", 3317.0, "mV"),
                Measurement::new("cell_voltage_max_volts", 9.0, "V"),
            ],
        ));
        assert_eq!(dropped, 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("pv3_cell_voltage_max_volts"));
        // A gauge onto a counter's name (different types): refused too,
        // and the counter is kept.
        let (dropped, _) = latest.update(&reading(
            "D",
            vec![
                Measurement::new("grid_import_energy", 2.0, "kWh"),
                Measurement::new("grid_import_energy_joules_total", 5.0, ""),
            ],
        ));
        assert_eq!(dropped, 1);
        // pv3's own names are taken from the start.
        let (dropped, warnings) =
            latest.update(&reading("D", vec![Measurement::new("alarm", 1.0, "")]));
        assert_eq!((dropped, warnings.len()), (1, 1));
        // A refused pair warns once, then is only counted.
        let (dropped, warnings) = latest.update(&reading(
            "D",
            vec![Measurement::new("cell_voltage_max_volts", 9.0, "V")],
        ));
        assert_eq!((dropped, warnings.len()), (1, 0));
        drop(latest);
        let text = render(&s);
        assert!(text.contains("pv3_cell_voltage_max_volts{device=\"D\"} 3.317\n"));
        assert_eq!(Scale::of(0.001).apply(3316.0), 3.316);
        assert_eq!(Scale::of(3.6e6), Scale::Times(3.6e6));
        assert!(text.contains("# TYPE pv3_grid_import_energy_joules_total counter\n"));
        assert!(text.contains("pv3_grid_import_energy_joules_total{device=\"D\"} 7200000\n"));
        assert_eq!(
            text.matches("# TYPE pv3_cell_voltage_max_volts ").count(),
            1
        );
        assert!(!text.contains("pv3_alarm{"));
    }

    #[test]
    fn series_are_bounded() {
        let s = shared();
        let mut latest = s.latest();
        let many: Vec<Measurement> = (0..100)
            .map(|i| Measurement::new(format!("m{i}"), 1.0, "W"))
            .collect();
        let mut dropped = 0;
        for d in 0..(MAX_SERIES / 100 + 1) {
            dropped += latest.update(&reading(&format!("dev{d}"), many.clone())).0;
        }
        assert_eq!(latest.series, MAX_SERIES);
        assert_eq!(dropped, 100);
    }

    #[test]
    fn alarms_replace_the_devices_previous_flags() {
        let s = shared();
        let mut r = reading("D", vec![]);
        r.alarms = Some(AlarmStates::from([
            ("battery_low".to_string(), true),
            ("fan_lock".to_string(), false),
        ]));
        s.latest().update(&r);
        r.alarms = Some(AlarmStates::from([("battery_low".to_string(), false)]));
        s.latest().update(&r);
        assert_eq!(s.latest().series, 1);
        let text = render(&s);
        assert!(text.contains("pv3_alarm{device=\"D\",flag=\"battery_low\"} 0\n"));
        assert!(!text.contains("fan_lock"));
    }

    #[test]
    fn every_name_written_for_pv3_itself_is_reserved() {
        let health = Health {
            api: Some(Arc::new(ForwardStats::default())),
            ..Health::default()
        };
        health.last_message_ms.store(1, Ordering::Relaxed);
        if let Some(api) = &health.api {
            api.last_delivery_ms.store(1, Ordering::Relaxed);
        }
        let s = Shared {
            health: Arc::new(health),
            ..shared()
        };
        s.stats.published(1);
        let mut r = reading("D", vec![]);
        r.origin.topic = Arc::from(ENERGY_TOPIC);
        r.alarms = Some(AlarmStates::from([("x".to_string(), true)]));
        s.latest().update(&r);
        let text = render(&s);
        let written: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(written.len(), RESERVED.len(), "{written:?}");
        for name in written {
            assert!(RESERVED.contains(&name), "{name} is not in RESERVED");
        }
    }

    #[test]
    fn request_lines_are_read_strictly() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_line(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Some(("HEAD", "/metrics"))
        );
        assert_eq!(request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_line(b"PRI * HTTP/2.0\r\n\r\n"), None);
        assert_eq!(request_line(b"GET  /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line(b"\xff /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn answers_by_path_and_method() {
        let s = shared();
        let status = |head: &[u8]| answer(head, &s).status;
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status(b"GET /other HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status(b"garbage\r\n\r\n"), 400);
        let head = answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", &s);
        let text = String::from_utf8_lossy(&head.bytes);
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        // Only the GET counted as a scrape.
        assert_eq!(s.stats.published.load(Ordering::Relaxed), 1);
    }
}
