//! `pv3 collect`: MQTT → decode → SOC filter → API, until SIGINT/SIGTERM.
//!
//! Besides the pipeline, collect is the long-running service: it keeps the
//! spool and `status.json` in the state directory, and talks to systemd
//! (READY once subscribed, WATCHDOG only while messages flow, STOPPING).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use tracing::{info, trace, warn};

use crate::cli::CollectArgs;
use crate::device_hint::DeviceHint;
use crate::forward::{ForwardOptions, ForwardStats, Forwarder, Overflow, Storage, StorageError};
use crate::mqtt::{self, Message};
use crate::output::Format;
use crate::outputs::{ApiOutput, Output, StdoutOutput};
use crate::pipeline::Pipeline;
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::Timestamp;
use crate::state_dir::StateDir;
use crate::status::{self, Counters, Status};

/// How often `status.json` is rewritten.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// `status.json`'s interval: [`STATUS_EVERY`], or `PV3_STATUS_INTERVAL_MS`
/// (undocumented: the integration tests wait on the file, not on logs).
fn status_every() -> Duration {
    super::interval_from_env("PV3_STATUS_INTERVAL_MS", STATUS_EVERY)
}

/// `pv3 collect`: runs until SIGINT or SIGTERM. Bad settings come back as a
/// [`ConfigError`](super::ConfigError) (exit code 2).
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
    let (outputs, state_dir, api_stats) = open_outputs(&args)?;
    let subscription =
        mqtt::subscribe(&settings, vec![filter.clone()]).map_err(super::ConfigError)?;
    info!(
        "pv3 collect {}: {} ({filter}) → {}{}",
        env!("CARGO_PKG_VERSION"),
        settings.endpoint(),
        if args.dry_run {
            "stdout (dry run)".to_string()
        } else {
            args.api.api_url.to_string()
        },
        args.api_device
            .api_device_id
            .as_deref()
            .map(|id| format!(" as device {id}"))
            .unwrap_or_default()
    );
    let hint = DeviceHint::start(&settings, &args.device.device_id, subscription.subscribed());
    let pipeline = match &args.api_device.api_device_id {
        Some(id) => Pipeline::mapping_one_device(args.delivery.soc_threshold, id),
        None => Pipeline::new(args.delivery.soc_threshold, None),
    };
    let status = StatusWriter::new(
        state_dir,
        settings.endpoint(),
        subscription.connected_flag(),
        api_stats,
    );
    let mut collector = Collector {
        pipeline,
        outputs,
        status,
        hint,
        warnings: RateLimiter::new(Duration::from_secs(60)),
        last_message: None,
    };
    collector.serve(subscription, &args).await;
    collector.finish().await
}

/// The outputs the flags ask for, with the state directory and the API
/// output's counters (none in a dry run).
type Opened = (
    Vec<Box<dyn Output>>,
    Option<PathBuf>,
    Option<Arc<ForwardStats>>,
);

fn open_outputs(args: &CollectArgs) -> Result<Opened> {
    if args.dry_run {
        let format = args.format.unwrap_or_else(Format::default_for_stdout);
        return Ok((vec![Box::new(StdoutOutput::new(format))], None, None));
    }
    let api = super::api_client(&args.api)?;
    let dir = StateDir::resolve(args.state.state_dir.as_deref()).ok_or_else(|| {
        super::ConfigError(anyhow::anyhow!(
            "no state directory: pass --state-dir DIR (or set HOME)"
        ))
    })?;
    let max_bytes = args.spool_max_mb.saturating_mul(1024 * 1024);
    let storage = match Storage::open(&dir, max_bytes) {
        Ok(storage) => storage,
        // In use: exit 2 (see cmd::exit_code); an I/O fault: exit 1.
        Err(StorageError::StateDir(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    let forwarder = Forwarder::start_with(api, forward_options(args), storage);
    let output = ApiOutput::new(forwarder, args.shutdown_grace);
    let stats = output.stats();
    Ok((
        vec![Box::new(output)],
        Some(dir.path().to_owned()),
        Some(stats),
    ))
}

/// The running collector: messages in, readings out, a status kept.
struct Collector {
    pipeline: Pipeline,
    outputs: Vec<Box<dyn Output>>,
    status: StatusWriter,
    warnings: RateLimiter,
    last_message: Option<tokio::time::Instant>,
    /// Says so when nothing arrives for the device (a wrong --device-id).
    hint: DeviceHint,
}

impl Collector {
    /// Takes messages until a signal (or an output that has gone away),
    /// keeping `status.json`, the progress log and systemd informed.
    async fn serve(&mut self, mut subscription: mqtt::Subscription, args: &CollectArgs) {
        let shutdown = super::shutdown_signal();
        tokio::pin!(shutdown);
        let stats_every = if args.stats_interval.is_zero() {
            Duration::from_secs(u64::from(u32::MAX))
        } else {
            args.stats_interval
        };
        let mut stats_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + stats_every, stats_every);
        let mut status_timer = tokio::time::interval(status_every());
        let mut subscribed = subscription.subscribed();
        let watchdog_every = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut watchdog_timer =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    info!("shutting down: no more messages taken");
                    break;
                }
                msg = subscription.recv() => {
                    let Some(msg) = msg else { break };
                    if !self.handle(&msg).await {
                        break;
                    }
                }
                Ok(()) = subscribed.changed() => {
                    if *subscribed.borrow_and_update() {
                        self.status.subscriptions += 1;
                        self.status.write(&self.pipeline, self.hint.text());
                        notify_systemd(&[sd_notify::NotifyState::Ready]);
                    }
                }
                _ = watchdog_timer.tick(), if watchdog_every.is_some() => {
                    // Only while data flows: a silent P3 gets us restarted.
                    if self.last_message.is_some_and(|t| t.elapsed() < args.stale_after) {
                        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
                _ = status_timer.tick() => self.status.write(&self.pipeline, self.hint.text()),
                _ = stats_timer.tick() => log_progress(&self.pipeline, &self.outputs),
            }
        }
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        subscription.close().await;
    }

    /// Decodes one message and hands it to every output. `false` when an
    /// output has gone away (a closed pipe in a dry run) and collect should
    /// stop.
    async fn handle(&mut self, msg: &Message) -> bool {
        trace!("received {} ({} bytes)", msg.topic, msg.payload.len());
        self.last_message = Some(tokio::time::Instant::now());
        self.status.last_message = Some(msg.received);
        self.hint.heard();
        let other_before = self.pipeline.counts.other_device;
        let reading = match self
            .pipeline
            .process(&msg.topic, &msg.payload, msg.received)
        {
            Ok(Some(reading)) => Arc::new(reading),
            Ok(None) => {
                if self.pipeline.counts.other_device > other_before
                    && let Some(n) = self.warnings.allow("other device")
                {
                    warn!(
                        "skipped {}: --api-device-id maps one P3 onto one dashboard device, and this is a second one (run a collector per P3, each with its own --device-id){}",
                        msg.topic,
                        suppressed_note(n)
                    );
                }
                return true;
            }
            Err(e) => {
                let key = crate::topic::P3Topic::parse(&msg.topic).map_or("", |t| t.suffix);
                if let Some(n) = self.warnings.allow(key) {
                    warn!("skipped a message: {e}{}", suppressed_note(n));
                }
                return true;
            }
        };
        for output in self.outputs.iter_mut() {
            if output.send(reading.clone()).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Stops every output (each says what became of its data) and writes
    /// the last status.
    async fn finish(mut self) -> Result<()> {
        let received = self.pipeline.counts.messages();
        let mut result = Ok(());
        for output in std::mem::take(&mut self.outputs) {
            let name = output.name();
            if let Err(e) = output.finish(received).await {
                warn!("output {name}: {e:#}");
                result = Err(e);
            }
        }
        self.status.connected.store(false, Ordering::Relaxed);
        self.status.write(&self.pipeline, self.hint.text());
        result
    }
}

fn forward_options(args: &CollectArgs) -> ForwardOptions {
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
        fail_fast: false,
    }
}

fn log_progress(pipeline: &Pipeline, outputs: &[Box<dyn Output>]) {
    let c = &pipeline.counts;
    let said: Vec<String> = outputs
        .iter()
        .filter_map(|o| o.progress().map(|p| format!("{}: {p}", o.name())))
        .collect();
    info!(
        "received {} messages ({} decode errors); {}",
        c.messages(),
        c.errors,
        said.join("; ")
    );
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
    /// The API output's counters (none in a dry run).
    stats: Option<Arc<ForwardStats>>,
    last_message: Option<Timestamp>,
    subscriptions: u64,
    failed_once: bool,
}

impl StatusWriter {
    fn new(
        dir: Option<PathBuf>,
        broker: String,
        connected: Arc<AtomicBool>,
        stats: Option<Arc<ForwardStats>>,
    ) -> Self {
        let now = Timestamp::now().to_rfc3339();
        StatusWriter {
            dir,
            base: Status {
                version: 1,
                pid: std::process::id(),
                boot_id: status::boot_id(),
                pv3_version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: now.clone(),
                updated_at: now,
                broker,
                ..Status::default()
            },
            connected,
            stats,
            last_message: None,
            subscriptions: 0,
            failed_once: false,
        }
    }

    fn write(&mut self, pipeline: &Pipeline, device_hint: Option<String>) {
        let (Some(dir), Some(stats)) = (self.dir.clone(), self.stats.clone()) else {
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
            device_hint,
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
