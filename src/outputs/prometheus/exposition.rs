//! The text exposition format, and what a scrape returns.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Health, OutputStats};
use crate::forward::ForwardStats;
use crate::reading::Timestamp;

use super::*;

/// Writes the text format: one `# HELP` and one `# TYPE` per family, then
/// its samples, families one after the other (the format requires a
/// family's lines to be together).
pub(super) struct Exposition {
    pub(super) out: String,
}

impl Exposition {
    pub(super) fn header(&mut self, name: &str, kind: &str, help: &str) {
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

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
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
    pub(super) fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the format wants it: `\`, `"` and newline escaped.
pub(super) fn escape_label(out: &mut String, text: &str) {
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
pub(super) fn escape_help(out: &mut String, text: &str) {
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
pub(super) fn write_value(out: &mut String, value: f64) {
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
pub(super) fn age_seconds(now_ms: i64, then_ms: u64) -> Option<f64> {
    let then = i64::try_from(then_ms).ok().filter(|&t| t > 0)?;
    Some(now_ms.saturating_sub(then).max(0) as f64 / 1000.0)
}

/// Everything a scrape returns, rendered now.
pub(super) fn render(shared: &Shared) -> String {
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
pub(super) fn render_health(
    x: &mut Exposition,
    health: &Health,
    own: &Arc<OutputStats>,
    now_ms: i64,
) {
    let input = health.input();
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
        input.counts.messages() as f64,
    );
    x.single(
        "pv3_decode_errors_total",
        "counter",
        "Messages whose payload could not be decoded",
        input.counts.errors as f64,
    );
    let last_ms = input
        .last_message
        .map_or(0, |t| u64::try_from(t.unix_millis()).unwrap_or(0));
    if let Some(age) = age_seconds(now_ms, last_ms) {
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
    render_outputs(x, health, own, now_ms);
}

/// The outputs' counters, one sample per output name.
fn render_outputs(x: &mut Exposition, health: &Health, own: &Arc<OutputStats>, now_ms: i64) {
    // The outputs' list, with this output's own counters whether or not
    // collect put them in it; one entry per name, the first, since two
    // samples with one label set would make the exposition invalid.
    let mut outputs: Vec<&Arc<OutputStats>> = Vec::with_capacity(health.outputs.len() + 1);
    for o in health.outputs.iter().chain(std::iter::once(own)) {
        if !outputs.iter().any(|seen| seen.name == o.name) {
            outputs.push(o);
        }
    }
    let get = |c: &std::sync::atomic::AtomicU64| Some(c.load(Ordering::Relaxed) as f64);
    per_output(
        x,
        &outputs,
        (
            "pv3_output_connected",
            "gauge",
            "1 while the output is connected to its destination (Prometheus: listening)",
        ),
        |o| {
            Some(if o.connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            })
        },
    );
    per_output(
        x,
        &outputs,
        (
            "pv3_output_delivering",
            "gauge",
            "1 while what the output publishes comes back from its broker, 0 when it does not (absent while not known)",
        ),
        |o| o.delivering().map(|d| if d { 1.0 } else { 0.0 }),
    );
    per_output(
        x,
        &outputs,
        (
            "pv3_output_published_total",
            "counter",
            "Messages the output published (Prometheus: scrapes answered before this one)",
        ),
        |o| get(&o.published),
    );
    per_output(
        x,
        &outputs,
        (
            "pv3_output_dropped_total",
            "counter",
            "Values the output replaced by newer ones or gave up before they went out",
        ),
        |o| get(&o.dropped),
    );
    per_output(
        x,
        &outputs,
        (
            "pv3_output_last_publish_age_seconds",
            "gauge",
            "Seconds since the output last published (Prometheus: since the previous scrape)",
        ),
        |o| age_seconds(now_ms, o.last_ms.load(Ordering::Relaxed)),
    );
}

/// One family (name, type, help) with a sample per output labelled by its
/// name; outputs without a value are left out, and so is the whole family
/// when none has one.
fn per_output(
    x: &mut Exposition,
    outputs: &[&Arc<OutputStats>],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&OutputStats) -> Option<f64>,
) {
    let samples: Vec<(&str, f64)> = outputs
        .iter()
        .filter_map(|o| Some((o.name, value(o)?)))
        .collect();
    if samples.is_empty() {
        return;
    }
    x.header(name, kind, help);
    for (output, v) in samples {
        x.sample(name, &[("output", output)], v);
    }
}

/// The API output's counters (see [`ForwardStats`]).
pub(super) fn render_api(x: &mut Exposition, api: &ForwardStats, now_ms: i64) {
    let get = |c: &std::sync::atomic::AtomicU64| ForwardStats::get(c) as f64;
    let families: [(&str, &str, &str, f64); 10] = [
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
            "pv3_api_measurements_not_created_total",
            "counter",
            "Measurements in POSTs PV3 Monitor answered 201 to but said it did not create",
            get(&api.not_created),
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
