//! `pv3 collect`: MQTT → decode → SOC filter → API, until SIGINT/SIGTERM.
//!
//! Besides the pipeline, collect is the long-running service: it keeps the
//! spool and `status.json` in the state directory, and talks to systemd
//! (READY once subscribed, WATCHDOG only while messages flow, STOPPING).

use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use tracing::{info, trace, warn};

use crate::cli::CollectArgs;
use crate::forward::{ForwardOptions, ForwardStats, Forwarder, Overflow, Storage};
use crate::mqtt::{self, Message};
use crate::output::{Format, Printer, is_broken_pipe};
use crate::pipeline::Pipeline;
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::Timestamp;
use crate::status::{self, Counters, Status};

/// How often `status.json` is rewritten.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// `status.json`'s interval: [`STATUS_EVERY`], or `PV3_STATUS_INTERVAL_MS`
/// (undocumented: the integration tests wait on the file, not on logs).
fn status_every() -> Duration {
    std::env::var("PV3_STATUS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(STATUS_EVERY, Duration::from_millis)
}

/// Where decoded readings go.
enum Sink {
    Api(Forwarder),
    Print(Printer<BufWriter<std::io::Stdout>>),
}

pub async fn run(args: CollectArgs) -> Result<()> {
    let mut settings = super::mqtt_settings(&args.mqtt, "collect");
    settings.stale_after = Some(args.stale_after);
    let filter = match &args.share_group {
        Some(group) => format!(
            "$share/{group}/{}",
            crate::topic::device_filter(&args.device.device_id)
        ),
        None => crate::topic::device_filter(&args.device.device_id),
    };
    let mut state_dir = None;
    let mut sink = if args.dry_run {
        let format = args.format.unwrap_or_else(Format::default_for_stdout);
        Sink::Print(Printer::new(BufWriter::new(std::io::stdout()), format))
    } else {
        let api = super::api_client(&args.api)?;
        let state = crate::state_dir::StateDir::resolve(args.state.state_dir.as_deref())
            .ok_or_else(|| {
                super::ConfigError(anyhow::anyhow!(
                    "no state directory: pass --state-dir DIR (or set HOME)"
                ))
            })?;
        // Another collector on it is a mistake (exit 2), an I/O fault is not
        // (exit 1): the lock tells them apart before Storage takes it again.
        drop(state.lock()?);
        let dir = state.path().to_owned();
        let storage = Storage::open(&dir, args.spool_max_mb.saturating_mul(1024 * 1024))?;
        state_dir = Some(dir);
        Sink::Api(Forwarder::start_with(
            api,
            ForwardOptions {
                batch_size: args.batch_size as usize,
                linger: Duration::from_millis(args.linger_ms),
                concurrency: 1,
                queue_limit: usize::try_from(args.queue_max).unwrap_or(usize::MAX),
                overflow: Overflow::DropOldest,
                retry_initial: Duration::from_millis(500),
                retry_max: args.delivery.retry_max,
                send_alarms: true,
                give_up: None,
            },
            Some(storage),
        ))
    };
    let mut subscription =
        mqtt::subscribe(&settings, vec![filter.clone()]).map_err(super::ConfigError)?;
    info!(
        "pv3 collect {}: {} ({filter}) → {}",
        env!("CARGO_PKG_VERSION"),
        settings.endpoint(),
        match &sink {
            Sink::Api(_) => args.api.api_url.to_string(),
            Sink::Print(_) => "stdout (dry run)".to_string(),
        }
    );

    let mut pipeline = Pipeline::new(args.delivery.soc_threshold, None);
    let mut warnings = RateLimiter::new(Duration::from_secs(60));
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let stats_every = if args.stats_interval.is_zero() {
        Duration::from_secs(u64::from(u32::MAX))
    } else {
        args.stats_interval
    };
    let mut stats_timer =
        tokio::time::interval_at(tokio::time::Instant::now() + stats_every, stats_every);
    let mut status = StatusWriter::new(
        state_dir,
        settings.endpoint(),
        subscription.connected_flag(),
    );
    let mut status_timer = tokio::time::interval(status_every());
    let mut subscribed = subscription.subscribed();
    let watchdog_every = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut watchdog_timer =
        tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut last_message: Option<tokio::time::Instant> = None;

    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down: no more messages taken");
                break;
            }
            msg = subscription.recv() => {
                let Some(msg) = msg else { break };
                last_message = Some(tokio::time::Instant::now());
                status.last_message = Some(msg.received);
                if !handle(&msg, &mut pipeline, &mut sink, &mut warnings).await {
                    break;
                }
            }
            Ok(()) = subscribed.changed() => {
                if *subscribed.borrow_and_update() {
                    status.subscriptions += 1;
                    status.write(&pipeline, &sink);
                    notify_systemd(&[sd_notify::NotifyState::Ready]);
                }
            }
            _ = watchdog_timer.tick(), if watchdog_every.is_some() => {
                // Only while data flows: a silent P3 gets us restarted.
                if last_message.is_some_and(|t| t.elapsed() < args.stale_after) {
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                }
            }
            _ = status_timer.tick() => status.write(&pipeline, &sink),
            _ = stats_timer.tick() => log_progress(&pipeline, &sink),
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    subscription.close().await;

    match sink {
        Sink::Api(forwarder) => {
            let stats = forwarder.stats();
            let report = forwarder.finish(Some(args.shutdown_grace)).await;
            status.connected.store(false, Ordering::Relaxed);
            status.write_stats(&pipeline, &stats);
            let lost = report.undelivered_measurements();
            info!(
                "stopped: {} messages received, {} measurements delivered, {} rejected, {} dropped, {} left in the spool for the next start",
                pipeline.counts.messages(),
                report.delivered,
                report.rejected,
                report.dropped,
                report.left_in_spool
            );
            if !report.undelivered.is_empty() {
                warn!(
                    "{lost} measurements and {} alarm updates were still queued when the {:.0} s shutdown grace ran out, and are lost",
                    report.undelivered_alarms(),
                    args.shutdown_grace.as_secs_f64()
                );
            }
        }
        Sink::Print(mut printer) => {
            if let Err(e) = printer.flush()
                && !is_broken_pipe(&e)
            {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Decodes one message and hands it to the sink. `false` when output has
/// gone away (a closed pipe in a dry run) and collect should stop.
async fn handle(
    msg: &Message,
    pipeline: &mut Pipeline,
    sink: &mut Sink,
    warnings: &mut RateLimiter,
) -> bool {
    trace!("received {} ({} bytes)", msg.topic, msg.payload.len());
    let reading = match pipeline.process(&msg.topic, &msg.payload, msg.received) {
        Ok(Some(reading)) => reading,
        Ok(None) => return true,
        Err(e) => {
            let key = crate::topic::P3Topic::parse(&msg.topic).map_or("", |t| t.suffix);
            if let Some(n) = warnings.allow(key) {
                warn!("skipped a message: {e}{}", suppressed_note(n));
            }
            return true;
        }
    };
    match sink {
        Sink::Api(forwarder) => forwarder.send(reading).await.is_ok(),
        Sink::Print(printer) => match printer.print(&reading).and_then(|()| printer.flush()) {
            Ok(()) => true,
            Err(e) => {
                if !is_broken_pipe(&e) {
                    warn!("cannot write to stdout: {e}");
                }
                false
            }
        },
    }
}

fn log_progress(pipeline: &Pipeline, sink: &Sink) {
    let c = &pipeline.counts;
    match sink {
        Sink::Api(forwarder) => {
            let s = forwarder.stats();
            info!(
                "received {} messages ({} decode errors); delivered {} measurements, {} queued, {} failed ({} rejected, {} dropped)",
                c.messages(),
                c.errors,
                ForwardStats::get(&s.delivered),
                ForwardStats::get(&s.queued),
                ForwardStats::get(&s.rejected) + ForwardStats::get(&s.dropped),
                ForwardStats::get(&s.rejected),
                ForwardStats::get(&s.dropped),
            );
        }
        Sink::Print(_) => info!(
            "received {} messages ({} decode errors), {} measurements printed",
            c.messages(),
            c.errors,
            c.measurements
        ),
    }
}

/// Tells systemd, when it is listening (`NOTIFY_SOCKET`); a no-op otherwise.
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        warn!("cannot notify systemd: {e}");
    }
}

/// Keeps `status.json` current (API mode only: a dry run has no state).
struct StatusWriter {
    dir: Option<PathBuf>,
    base: Status,
    connected: Arc<AtomicBool>,
    last_message: Option<Timestamp>,
    subscriptions: u64,
    failed_once: bool,
}

impl StatusWriter {
    fn new(dir: Option<PathBuf>, broker: String, connected: Arc<AtomicBool>) -> Self {
        let now = Timestamp::now().to_rfc3339();
        StatusWriter {
            dir,
            base: Status {
                version: 1,
                pid: std::process::id(),
                pv3_version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: now.clone(),
                updated_at: now,
                broker,
                ..Status::default()
            },
            connected,
            last_message: None,
            subscriptions: 0,
            failed_once: false,
        }
    }

    fn write(&mut self, pipeline: &Pipeline, sink: &Sink) {
        if let Sink::Api(forwarder) = sink {
            self.write_stats(pipeline, &forwarder.stats());
        }
    }

    fn write_stats(&mut self, pipeline: &Pipeline, stats: &ForwardStats) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let get = ForwardStats::get;
        let last_delivery = get(&stats.last_delivery_ms);
        let status = Status {
            updated_at: Timestamp::now().to_rfc3339(),
            broker_connected: self.connected.load(Ordering::Relaxed),
            subscriptions: self.subscriptions,
            last_message_at: self.last_message.map(Timestamp::to_rfc3339),
            last_delivery_at: (last_delivery > 0).then(|| {
                Timestamp::from_unix_micros(i64::try_from(last_delivery).unwrap_or(0) * 1000)
                    .to_rfc3339()
            }),
            counters: Counters {
                received: pipeline.counts.messages(),
                delivered: get(&stats.delivered),
                spooled: get(&stats.spooled),
                dropped: get(&stats.dropped),
                rejected: get(&stats.rejected),
                decode_errors: pipeline.counts.errors,
            },
            spool_batches: get(&stats.spool_batches),
            spool_measurements: get(&stats.spool_measurements),
            spool_bytes: get(&stats.spool_bytes),
            ..self.base.clone()
        };
        if let Err(e) = status::write(&dir, &status) {
            // Once: a read-only state dir should not flood the journal.
            if !self.failed_once {
                warn!("{e:#}");
                self.failed_once = true;
            }
        }
    }
}
