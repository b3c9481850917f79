//! `pv3 replay`: a capture → decode → API (or stdout, or an MQTT broker).
//!
//! The file is read on a plain thread, line by line with one buffer, so a
//! capture of any size replays in flat memory: the forwarder's bounded
//! queue pushes back on the reader ([`Overflow::Wait`]) instead of growing.
//! Measurements carry their capture time, never "now".

use std::io::{self, BufRead, BufWriter, IsTerminal};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::capture::{CaptureReader, LineError, Record};
use crate::cli::{ReplayArgs, Speed};
use crate::energy::{Energy, InTimeOrder};
use crate::forward::ForwardReport;
use crate::mqtt::Publisher;
use crate::output::{Format, Printer, is_broken_pipe};
use crate::pipeline::{DecodeCounts, Pipeline};
use crate::reading::Timestamp;
use crate::topic;

mod backfill;
mod into_api;
mod seen;

use backfill::BackfillCounts;

/// Bad lines reported one by one; past this only counted (and summed up).
const BAD_LINES_SHOWN: u64 = 20;

/// What reading the capture found.
#[derive(Debug, Default, Clone)]
struct SourceCounts {
    records: u64,
    bad_lines: u64,
    filtered_out: u64,
    /// The capture time of the last record handed on.
    last: Option<Timestamp>,
    /// The latest capture time handed on.
    latest: Option<Timestamp>,
    /// A record handed on was older than one before it: what was not read
    /// may be older than anything read, and no `--since` is safe.
    out_of_order: bool,
}

/// Filtered, paced records from a capture.
struct Source {
    reader: CaptureReader<Box<dyn BufRead + Send>>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    topics: Vec<String>,
    speed: Option<f64>,
    /// (capture time, wall time) of the first record, for pacing.
    origin: Option<(Timestamp, Instant)>,
    counts: SourceCounts,
    progress: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
}

impl Source {
    /// The next record to replay; `None` at the end or when stopped.
    fn next(&mut self) -> Result<Option<Record>> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let item = self
                .reader
                .next_record()
                .context("cannot read the capture")?;
            if let Some(bar) = &self.progress
                && self.counts.records.is_multiple_of(1024)
            {
                bar.set_position(self.reader.bytes_read());
            }
            let record = match item {
                None => return Ok(None),
                Some(Ok(record)) => record,
                Some(Err(e)) => {
                    self.bad_line(&e);
                    continue;
                }
            };
            self.counts.records += 1;
            if self.since.is_some_and(|t| record.ts < t)
                || self.until.is_some_and(|t| record.ts >= t)
                || (!self.topics.is_empty()
                    && !self.topics.iter().any(|f| topic::matches(f, &record.topic)))
            {
                self.counts.filtered_out += 1;
                continue;
            }
            self.pace(record.ts);
            let c = &mut self.counts;
            c.out_of_order |= c.latest.is_some_and(|t| record.ts < t);
            c.latest = c.latest.max(Some(record.ts));
            c.last = Some(record.ts);
            return Ok(Some(record));
        }
    }

    fn bad_line(&mut self, e: &LineError) {
        self.counts.bad_lines += 1;
        let shown = self.counts.bad_lines <= BAD_LINES_SHOWN;
        let truncated = matches!(e, LineError::Truncated { .. });
        if shown || truncated {
            let text = format!("skipped {e}");
            match &self.progress {
                Some(bar) => bar.suspend(|| warn!("{text}")),
                None => warn!("{text}"),
            }
        }
        if self.counts.bad_lines == BAD_LINES_SHOWN + 1 {
            warn!("more bad lines: counting them without a line each");
        }
    }

    /// Sleeps until `ts` is due at the chosen speed.
    fn pace(&mut self, ts: Timestamp) {
        let Some(speed) = self.speed else { return };
        let (t0, w0) = *self.origin.get_or_insert((ts, Instant::now()));
        let ahead = ts.seconds_since(t0) / speed;
        if ahead <= 0.0 {
            return;
        }
        let due = w0 + Duration::from_secs_f64(ahead.min(1e9));
        // Sleep in slices so that Ctrl-C is not held up by a long gap.
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(200)));
        }
    }
}

/// Runs `pv3 replay`.
pub(crate) async fn run(args: ReplayArgs) -> Result<()> {
    let (input, size, name) = crate::capture::open_input(&args.file)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (signal_tx, signal) = watch::channel(false);
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            warn!("interrupted: stopping the replay");
            stop.store(true, Ordering::Relaxed);
            signal_tx.send_replace(true);
        });
    }
    let dry_run_format = args
        .dry_run
        .then(|| args.format.unwrap_or_else(Format::default_for_stdout));
    // A bar would tangle with a table printed to the same terminal.
    let progress = (crate::logging::stderr_is_styled()
        && !(dry_run_format.is_some() && io::stdout().is_terminal()))
    .then(|| progress_bar(size));
    let speed = match args.speed {
        Some(Speed::Max) => None,
        Some(Speed::Times(n)) => Some(n),
        None if args.to_mqtt => Some(1.0),
        None => None,
    };
    let source = Source {
        reader: CaptureReader::new(input),
        since: args.since,
        until: args.until,
        topics: args.topics.clone(),
        speed,
        origin: None,
        counts: SourceCounts::default(),
        progress: progress.clone(),
        stop: stop.clone(),
    };

    let outcome = if let Some(format) = dry_run_format {
        dry_run(source, format, &args).await
    } else if args.to_mqtt {
        to_mqtt(source, &args, signal.clone()).await
    } else {
        into_api::to_api(source, &args, signal).await
    };
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let summary = outcome?;
    eprintln!("replay of {name}: {summary}");
    for (device, totals) in summary.energy.iter().flat_map(Energy::all) {
        eprintln!("energy of {device} in kWh, from capture times: {totals}");
    }
    if let Some(n) = summary.energy.as_ref().map(Energy::implausible)
        && n > 0
    {
        eprintln!("{n} power readings outside what a P3 can do were not integrated");
    }
    if let Some(problem) = summary.problem() {
        bail!("{problem}");
    }
    Ok(())
}

/// Everything the summary line reports.
struct Summary {
    source: SourceCounts,
    decode: Option<DecodeCounts>,
    delivery: Option<ForwardReport>,
    backfill: Option<Backfilled>,
    published: Option<u64>,
    /// The energy counters over the capture (dry run).
    energy: Option<Energy>,
}

/// What a replay into the API did with every measurement it decoded.
struct Backfilled {
    counts: BackfillCounts,
    /// Decoded, and neither delivered, nor set aside, nor already there.
    not_sent: u64,
    /// The capture was read to its end.
    read_to_end: bool,
    /// The capture time to resume from, when something was left.
    resume: Option<Timestamp>,
    /// Why it stopped early.
    stopped: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.source;
        write!(
            f,
            "{} records read, {} bad lines skipped, {} filtered out",
            s.records, s.bad_lines, s.filtered_out
        )?;
        if let Some(d) = &self.decode {
            write!(
                f,
                "; {} measurements decoded from {} messages ({} decode errors, {} with nothing to send, {} unusable items skipped)",
                d.measurements,
                d.decoded,
                d.errors,
                d.empty + d.unknown + d.foreign,
                d.skipped_items
            )?;
        }
        if let (Some(r), Some(b)) = (&self.delivery, &self.backfill) {
            write!(
                f,
                "; {} measurements delivered, {} already in the API (skipped), {} repeated in the capture (skipped), {} rejected, {} undelivered; {} alarm updates",
                r.delivered,
                b.counts.skipped,
                b.counts.repeated,
                r.rejected,
                b.not_sent,
                r.alarms_delivered,
            )?;
            if r.not_created > 0 {
                write!(
                    f,
                    "; the API said it created {} fewer than it was sent",
                    r.not_created
                )?;
            }
            if b.counts.queries > 0 {
                write!(
                    f,
                    "; {} history queries ({:.1} s)",
                    b.counts.queries,
                    b.counts.query_time.as_secs_f64()
                )?;
            }
            if b.counts.flushes > 0 {
                write!(
                    f,
                    "; {} waits for what was sent to be stored, before asking about a part the capture held twice",
                    b.counts.flushes
                )?;
            }
            if !b.read_to_end {
                write!(f, "; the capture was not read to its end")?;
            }
            match b.resume {
                Some(ts) if !s.out_of_order => {
                    write!(f, "; resume with --since {}", ts.to_rfc3339())?;
                }
                Some(_) => write!(
                    f,
                    "; the capture is not in time order, so no --since can resume it: run the same command again (what the API holds is skipped)"
                )?,
                None => {}
            }
        }
        if let Some(n) = self.published {
            write!(f, "; {n} messages republished")?;
        }
        Ok(())
    }
}

impl Summary {
    /// Why the replay did not deliver everything, if it did not.
    fn problem(&self) -> Option<String> {
        let (r, b) = (self.delivery.as_ref()?, self.backfill.as_ref()?);
        let decoded = self.decode.map_or(0, |d| d.decoded);
        if decoded == 0 && b.read_to_end {
            return Some("nothing to send: the capture holds no record pv3 can decode".to_string());
        }
        if r.rejected == 0 && b.not_sent == 0 && b.read_to_end {
            return None;
        }
        let why = b
            .stopped
            .clone()
            .or_else(|| r.gave_up_because.clone())
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        Some(format!(
            "not everything was delivered: {} measurements rejected by the API, {} undelivered{}{why}",
            r.rejected,
            b.not_sent,
            if b.read_to_end {
                ""
            } else {
                ", capture not read to its end"
            }
        ))
    }
}

fn new_pipeline(args: &ReplayArgs) -> Pipeline {
    Pipeline::new(args.delivery.soc_threshold, args.device_id.as_deref())
}

/// Decodes one record, warning (rate-limited by count) on errors.
fn decode_record(pipeline: &mut Pipeline, record: &Record) -> Option<crate::reading::Reading> {
    match pipeline.process(&record.topic, &record.payload, record.ts) {
        Ok(reading) => reading,
        Err(e) => {
            if pipeline.counts.errors <= BAD_LINES_SHOWN {
                warn!("skipped a message from {}: {e}", record.ts);
            }
            None
        }
    }
}

async fn dry_run(mut source: Source, format: Format, args: &ReplayArgs) -> Result<Summary> {
    let mut pipeline = new_pipeline(args);
    let mut energy = InTimeOrder::new();
    let handle = tokio::task::spawn_blocking(move || -> Result<Summary> {
        let stdout = io::stdout().lock();
        let mut printer = Printer::new(BufWriter::with_capacity(64 * 1024, stdout), format);
        let result = (|| -> Result<()> {
            while let Some(record) = source.next()? {
                if let Some(reading) = decode_record(&mut pipeline, &record) {
                    energy.observe(&reading);
                    printer.print(&reading)?;
                }
            }
            printer.flush()?;
            Ok(())
        })();
        if let Err(e) = result {
            let broken_pipe = e.downcast_ref::<io::Error>().is_some_and(is_broken_pipe);
            if !broken_pipe {
                return Err(e);
            }
        }
        Ok(Summary {
            source: source.counts,
            decode: Some(pipeline.counts),
            delivery: None,
            backfill: None,
            published: None,
            energy: Some(energy.integrate()),
        })
    });
    handle.await.context("replay thread failed")?
}

/// `--to-mqtt`: the raw messages to a broker, reconnecting like collect
/// and confirmed one by one ([`Publisher`]), so a broker restart loses none.
async fn to_mqtt(
    mut source: Source,
    args: &ReplayArgs,
    mut signal: watch::Receiver<bool>,
) -> Result<Summary> {
    let settings = super::mqtt_settings(&args.mqtt, "replay");
    let mut publisher = Publisher::connect(&settings).map_err(super::ConfigError)?;
    let (tx, mut rx) = mpsc::channel::<Record>(1024);
    let device = args.device_id.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<SourceCounts> {
        while let Some(record) = source.next()? {
            if tx.blocking_send(record).is_err() {
                break;
            }
        }
        Ok(source.counts)
    });
    let mut interrupted = false;
    loop {
        let record = tokio::select! {
            record = rx.recv() => record,
            _ = signal.wait_for(|s| *s) => None,
        };
        let Some(record) = record else { break };
        let topic = match &device {
            Some(device) => topic::with_device(&record.topic, device).into_owned(),
            None => record.topic,
        };
        tokio::select! {
            () = publisher.publish(topic, record.retain, record.payload) => {}
            _ = signal.wait_for(|s| *s) => break,
        }
    }
    if *signal.borrow() {
        interrupted = true;
    }
    drop(rx);
    // After a Ctrl-C, what is in flight gets a moment, not half a minute.
    let wait = if interrupted { 2 } else { 30 };
    let (published, unconfirmed) = publisher.finish(Duration::from_secs(wait)).await;
    let counts = reader.await.context("replay thread failed")??;
    if let Some(reason) = unconfirmed {
        bail!("{reason} (after {published} messages)");
    }
    Ok(Summary {
        source: counts,
        decode: None,
        delivery: None,
        backfill: None,
        published: Some(published),
        energy: None,
    })
}

fn progress_bar(size: Option<u64>) -> ProgressBar {
    match size {
        Some(len) => {
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        }
    }
}
