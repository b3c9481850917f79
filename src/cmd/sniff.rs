//! `pv3 sniff`: capture raw MQTT traffic, losslessly, as JSON Lines.
//!
//! Each message becomes one whole line, flushed as soon as no other message
//! is waiting (so `tail -f` sees it at once, and a burst costs one write,
//! not one per message). Decoding happens only to count, per topic, what the
//! decoder makes of the traffic: the table on exit shows what it does not
//! cover yet.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tabled::settings::Style;
use tabled::{Table, Tabled};
use tracing::{info, warn};

use crate::ratelimit::{RateLimiter, suppressed_note};

use crate::capture;
use crate::cli::SniffArgs;
use crate::decode::{self, Outcome};
use crate::mqtt::{self, Message};
use crate::output::is_broken_pipe;
use crate::topic::{self, P3Topic};

/// Rows kept in the summary; traffic on more topics than this (a `#`
/// subscription on a busy broker) is lumped into one row.
const MAX_ROWS: usize = 1000;

#[derive(Default)]
struct TopicCounts {
    messages: u64,
    decoded: u64,
    nothing: u64,
    errors: u64,
    unknown: bool,
}

struct Summary {
    rows: BTreeMap<String, TopicCounts>,
    total: u64,
    warnings: RateLimiter,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            rows: BTreeMap::new(),
            total: 0,
            warnings: RateLimiter::new(crate::ratelimit::WINDOW),
        }
    }
}

impl Summary {
    fn count(&mut self, msg: &Message) {
        self.total += 1;
        let (key, kind) = match decode::decode(&msg.topic, &msg.payload) {
            Ok(Outcome::Foreign) => (msg.topic.clone(), Kind::Nothing),
            Ok(Outcome::Unknown { suffix, .. }) => (suffix.to_owned(), Kind::Unknown),
            Ok(Outcome::Decoded {
                suffix, decoded, ..
            }) => (
                suffix.to_owned(),
                if decoded.is_empty() {
                    Kind::Nothing
                } else {
                    Kind::Decoded
                },
            ),
            Err(e) => {
                let key = P3Topic::parse(&e.topic)
                    .map_or_else(|| e.topic.clone(), |t| t.suffix.to_owned());
                // Captured all the same: the capture is lossless.
                if let Some(n) = self.warnings.allow(&key) {
                    warn!("cannot decode (captured anyway): {e}{}", suppressed_note(n));
                }
                (key, Kind::Error)
            }
        };
        let key = if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            "(other topics)".to_owned()
        } else {
            key
        };
        let row = self.rows.entry(key).or_default();
        row.messages += 1;
        match kind {
            Kind::Decoded => row.decoded += 1,
            Kind::Nothing => row.nothing += 1,
            Kind::Unknown => {
                row.nothing += 1;
                row.unknown = true;
            }
            Kind::Error => row.errors += 1,
        }
    }

    fn table(&self) -> String {
        #[derive(Tabled)]
        struct Row<'a> {
            topic: &'a str,
            messages: u64,
            decoded: u64,
            #[tabled(rename = "decoded to nothing")]
            nothing: u64,
            #[tabled(rename = "decode errors")]
            errors: u64,
            note: &'static str,
        }
        let rows = self.rows.iter().map(|(topic, c)| Row {
            topic,
            messages: c.messages,
            decoded: c.decoded,
            nothing: c.nothing,
            errors: c.errors,
            note: if c.unknown {
                "not covered by the decoder"
            } else if decode::is_decoded(topic) || topic == "(other topics)" {
                ""
            } else {
                "not a P3 topic"
            },
        });
        let mut table = Table::new(rows);
        table.with(Style::rounded());
        table.to_string()
    }
}

/// How one message counts in the summary.
enum Kind {
    Decoded,
    Nothing,
    Unknown,
    Error,
}

/// Where the capture goes: a file opened for appending, or stdout.
type Output = BufWriter<Box<dyn Write + Send>>;

/// Runs `pv3 sniff`.
pub(crate) async fn run(args: SniffArgs) -> Result<()> {
    let (mut out, mut subscription) = start(&args)?;
    let spinner = spinner();
    let started = Instant::now();
    let mut summary = Summary::default();
    let write_error = receive(
        &args,
        &mut subscription,
        &mut out,
        &mut summary,
        spinner.as_ref(),
        started,
    )
    .await;
    finish(subscription, spinner, started, &summary, write_error).await
}

/// Opens the output before subscribing, so a capture file that cannot be
/// opened fails the command before anything connects to the broker.
fn start(args: &SniffArgs) -> Result<(Output, mqtt::Subscription)> {
    let settings = super::mqtt_settings(&args.mqtt, "sniff");
    let filters = if args.topics.is_empty() {
        vec![topic::device_filter(&args.device.device_id)]
    } else {
        topic::minimal_filters(&args.topics)
    };
    // Lines go out whole: each is written to the buffer in one piece, and
    // the buffer is flushed between lines, never inside one.
    let out: Output = BufWriter::with_capacity(
        64 * 1024,
        match &args.output {
            Some(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {} for appending", path.display()))?,
            ),
            None => Box::new(io::stdout()),
        },
    );
    let subscription = mqtt::subscribe(&settings, filters.clone()).map_err(super::ConfigError)?;
    info!(
        "pv3 sniff: {} ({}) → {}",
        settings.endpoint(),
        filters.join(", "),
        args.output
            .as_ref()
            .map_or_else(|| "stdout".to_string(), |p| p.display().to_string())
    );
    Ok((out, subscription))
}

/// Captures and counts messages until a signal, `--duration`, `--count` or
/// the end of the subscription. A write error stops it at once and is
/// returned rather than raised, so the summary is still shown.
async fn receive(
    args: &SniffArgs,
    subscription: &mut mqtt::Subscription,
    out: &mut Output,
    summary: &mut Summary,
    spinner: Option<&ProgressBar>,
    started: Instant,
) -> Option<io::Error> {
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let deadline = tokio::time::sleep(
        args.duration
            .unwrap_or(Duration::from_secs(u64::from(u32::MAX))),
    );
    tokio::pin!(deadline);
    let mut line = Vec::with_capacity(1024);
    let mut unflushed = false;

    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = &mut deadline => break,
            msg = subscription.recv() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        if !args.topics.is_empty() && !args.topics.iter().any(|f| topic::matches(f, &msg.topic)) {
            continue; // a broker may deliver more than was asked for
        }
        if let Err(e) = write_capture_line(out, &mut line, &msg) {
            return Some(e);
        }
        unflushed = true;
        summary.count(&msg);
        if let Some(sp) = spinner {
            let rate = summary.total as f64 / started.elapsed().as_secs_f64().max(0.001);
            sp.set_message(format!("{} messages, {rate:.1}/s", summary.total));
        }
        if args.count.is_some_and(|n| summary.total >= n) {
            break;
        }
        // Flushing only when nothing else is waiting keeps a burst to one
        // write while a quiet stream still reaches `tail -f` at once.
        if !subscription.has_pending() {
            if let Err(e) = out.flush() {
                return Some(e);
            }
            unflushed = false;
        }
    }
    if unflushed { out.flush().err() } else { None }
}

/// Writes one message as one whole capture line; `line` is reused so a
/// message costs no allocation once it has grown to fit.
fn write_capture_line(out: &mut Output, line: &mut Vec<u8>, msg: &Message) -> io::Result<()> {
    line.clear();
    capture::write_line(
        line,
        msg.received,
        &msg.topic,
        msg.qos,
        msg.retain,
        &msg.payload,
    );
    out.write_all(line)
}

/// Closes the subscription and prints the summary, even after a write
/// error, so what was captured is still accounted for. A broken pipe
/// (`| head`) is a normal way to stop and is not an error.
async fn finish(
    subscription: mqtt::Subscription,
    spinner: Option<ProgressBar>,
    started: Instant,
    summary: &Summary,
    write_error: Option<io::Error>,
) -> Result<()> {
    if let Some(sp) = spinner {
        sp.finish_and_clear();
    }
    subscription.close().await;
    eprintln!(
        "{} messages in {:.1} s\n{}",
        summary.total,
        started.elapsed().as_secs_f64(),
        summary.table()
    );
    match write_error {
        Some(e) if !is_broken_pipe(&e) => Err(e).context("cannot write the capture"),
        _ => Ok(()),
    }
}

/// A spinner with the message count and rate, only on a terminal (and not
/// with `NO_COLOR`), so a redirected stderr gets the log lines and the
/// summary and nothing else.
fn spinner() -> Option<ProgressBar> {
    if !crate::logging::stderr_is_styled() {
        return None;
    }
    let sp = ProgressBar::new_spinner();
    sp.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    sp.enable_steady_tick(Duration::from_millis(120));
    sp.set_message("waiting for messages");
    Some(sp)
}
