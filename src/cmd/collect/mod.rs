//! `pv3 collect`: MQTT → decode → SOC filter → API, until SIGINT/SIGTERM.
//!
//! Besides the pipeline, collect is the long-running service: it keeps the
//! spool and `status.json` in the state directory, and talks to systemd
//! (READY once subscribed, WATCHDOG only while messages flow, STOPPING).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{info, trace, warn};

use crate::cli::CollectArgs;
use crate::device_hint::DeviceHint;
use crate::energy::EnergyFile;
use crate::forward::{ForwardOptions, Forwarder, Overflow, Storage, StorageError};
use crate::mqtt::{self, Message};
use crate::output::Format;
use crate::outputs::publish::HEARTBEAT;
use crate::outputs::{
    ApiOutput, Health, Output, OutputStats, PrometheusOutput, PublishOptions, PublishOutput,
    StdoutOutput,
};
use crate::pipeline::Pipeline;
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::Timestamp;
use crate::state_dir::{StateDir, StateLock};

mod energy;
mod status;

use energy::{ENERGY_LOOK_EVERY, EnergyKeeper, energy_save_every};
use status::StatusWriter;

/// How often `status.json` is rewritten.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// `status.json`'s interval: [`STATUS_EVERY`], or `PV3_STATUS_INTERVAL_MS`
/// (undocumented: the integration tests wait on the file, not on logs).
fn status_every() -> Duration {
    crate::knobs::interval_from_env("PV3_STATUS_INTERVAL_MS", STATUS_EVERY)
}

/// `pv3 collect`: runs until SIGINT or SIGTERM. Bad settings come back as a
/// [`ConfigError`](super::ConfigError) (exit code 2).
pub async fn run(args: CollectArgs) -> Result<()> {
    if args.ha_remove {
        return remove_announced(&args).await;
    }
    check_outputs(&args)?;
    let mut settings = super::mqtt_settings(&args.mqtt, "collect");
    settings.stale_after = Some(args.stale_after);
    let filter = match &args.share_group {
        Some(group) => format!(
            "$share/{group}/{}",
            crate::topic::device_filter(&args.device.device_id)
        ),
        None => crate::topic::device_filter(&args.device.device_id),
    };
    let opened = open_outputs(&args).await?;
    let subscription =
        mqtt::subscribe(&settings, vec![filter.clone()]).map_err(super::ConfigError)?;
    info!(
        "pv3 collect {}: {} ({filter}) → {}{}",
        env!("CARGO_PKG_VERSION"),
        settings.endpoint(),
        opened.destinations.join(", "),
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
        opened.state_dir,
        settings.endpoint(),
        subscription.connected_flag(),
        opened.health.clone(),
        opened.outputs.iter().filter_map(|o| o.stats()).collect(),
        args.outputs.no_api,
    );
    let mut collector = Collector {
        pipeline,
        outputs: opened.outputs,
        energy: opened.energy,
        health: opened.health,
        status,
        hint,
        warnings: RateLimiter::new(crate::ratelimit::WINDOW),
        _lock: opened.lock,
    };
    collector.serve(subscription, &args).await;
    collector.finish().await
}

/// Refuses output flags that cannot work together, before anything starts.
fn check_outputs(args: &CollectArgs) -> Result<()> {
    let o = &args.outputs;
    if o.no_api && !(o.publish || o.ha || o.metrics_listen.is_some()) {
        return Err(super::ConfigError(anyhow::anyhow!(
            "--no-api leaves collect nothing to send to: add --publish, --ha or --metrics-listen"
        ))
        .into());
    }
    Ok(())
}

/// `--ha-remove`: clears what `--ha`/`--publish` announced, then exits.
async fn remove_announced(args: &CollectArgs) -> Result<()> {
    let settings = super::out_mqtt_settings(&args.mqtt, &args.out_mqtt);
    let device = published_device(args);
    let cleared = crate::outputs::publish::remove(
        &settings,
        &args.outputs.publish_prefix,
        &args.outputs.ha_prefix,
        device.as_deref(),
    )
    .await?;
    if cleared == 0 {
        info!(
            "nothing to remove: no retained pv3 topics for {} on {}",
            device.as_deref().unwrap_or("any device"),
            settings.endpoint()
        );
    }
    Ok(())
}

/// The one device the outputs publish (the id readings carry), or `None`
/// for `--device-id +`.
fn published_device(args: &CollectArgs) -> Option<String> {
    match &args.api_device.api_device_id {
        Some(id) => Some(id.clone()),
        None => Some(args.device.device_id.clone()).filter(|d| d != "+"),
    }
}

/// What the flags opened: the outputs and what they need kept.
struct Opened {
    outputs: Vec<Box<dyn Output>>,
    /// For status.json (none in a dry run).
    state_dir: Option<PathBuf>,
    /// The directory's lock when no spool holds it (`--no-api`).
    lock: Option<StateLock>,
    energy: Option<EnergyKeeper>,
    health: Arc<Health>,
    /// Where readings go, for the first log line.
    destinations: Vec<String>,
}

async fn open_outputs(args: &CollectArgs) -> Result<Opened> {
    if args.dry_run {
        let format = args.format.unwrap_or_else(Format::default_for_stdout);
        return Ok(Opened {
            outputs: vec![Box::new(StdoutOutput::new(format))],
            state_dir: None,
            lock: None,
            energy: None,
            health: Arc::new(Health::default()),
            destinations: vec!["stdout (dry run)".into()],
        });
    }
    let dir = StateDir::resolve(args.state.state_dir.as_deref()).ok_or_else(|| {
        super::ConfigError(anyhow::anyhow!(
            "no state directory: pass --state-dir DIR (or set HOME)"
        ))
    })?;
    let mut outputs: Vec<Box<dyn Output>> = Vec::new();
    let mut destinations = Vec::new();
    let mut lock = None;
    let mut api_stats = None;
    if args.outputs.no_api {
        // No spool to take the lock: two collectors must still not share
        // the energy counters' file.
        lock = Some(dir.lock()?);
    } else {
        let output = open_api(args, &dir)?;
        api_stats = Some(output.stats());
        outputs.push(Box::new(output));
        destinations.push(crate::secret::shown_url(&args.api.api_url));
    }
    let publishing = args.outputs.publish || args.outputs.ha;
    let publish_stats = publishing.then(|| OutputStats::new("mqtt"));
    // Before the publish output: it shows pv3's health in Home Assistant.
    let health = Arc::new(Health::new(
        api_stats,
        publish_stats.iter().cloned().collect(),
    ));
    if let Some(stats) = publish_stats {
        let (output, destination) = open_publish(args, stats, health.clone())?;
        destinations.push(destination);
        outputs.push(Box::new(output));
    }
    if let Some(addr) = args.outputs.metrics_listen {
        // Bound now: a busy address stops collect before it subscribes.
        let output = PrometheusOutput::bind(addr, health.clone())
            .await
            .map_err(super::ConfigError)?;
        destinations.push(format!("http://{}/metrics", output.local_addr()));
        outputs.push(Box::new(output));
    }
    let energy = if outputs.iter().any(|o| o.wants_derived()) {
        Some(EnergyKeeper::open(
            EnergyFile::new(dir.energy()),
            energy_save_every(),
        ))
    } else {
        None
    };
    Ok(Opened {
        outputs,
        state_dir: Some(dir.path().to_owned()),
        lock,
        energy,
        health,
        destinations,
    })
}

/// The PV3 Monitor API output, with its spool in `dir`.
fn open_api(args: &CollectArgs, dir: &StateDir) -> Result<ApiOutput> {
    let api = super::api_client(&args.api)?;
    let max_bytes = args.spool_max_mb.saturating_mul(1024 * 1024);
    let storage = match Storage::open(dir, max_bytes) {
        Ok(storage) => storage,
        // In use: exit 2 (see cmd::exit_code); an I/O fault: exit 1.
        Err(StorageError::StateDir(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    let forwarder = Forwarder::start_with(api, forward_options(args), storage);
    Ok(ApiOutput::new(forwarder, args.shutdown_grace))
}

/// The flat topics (and Home Assistant discovery with `--ha`), and where
/// they go, for the start line.
fn open_publish(
    args: &CollectArgs,
    stats: Arc<OutputStats>,
    health: Arc<Health>,
) -> Result<(PublishOutput, String)> {
    let settings = super::out_mqtt_settings(&args.mqtt, &args.out_mqtt);
    let output = PublishOutput::start(PublishOptions {
        stats,
        health,
        prefix: args.outputs.publish_prefix.clone(),
        ha_prefix: args.outputs.ha.then(|| args.outputs.ha_prefix.clone()),
        interval: args.outputs.publish_interval,
        heartbeat: publish_heartbeat(),
        stale_after: args.stale_after,
        device: published_device(args),
        settings: settings.clone(),
    })
    .map_err(super::ConfigError)?;
    let what = if args.outputs.ha {
        "Home Assistant"
    } else {
        "flat topics"
    };
    Ok((output, format!("{what} on {}", settings.endpoint())))
}

/// The flat topics' heartbeat: [`HEARTBEAT`], or `PV3_PUBLISH_HEARTBEAT_MS`
/// (undocumented: tests see a heartbeat without waiting five minutes).
fn publish_heartbeat() -> Duration {
    crate::knobs::interval_from_env("PV3_PUBLISH_HEARTBEAT_MS", HEARTBEAT)
}

/// The running collector: messages in, readings out, a status kept.
struct Collector {
    pipeline: Pipeline,
    outputs: Vec<Box<dyn Output>>,
    energy: Option<EnergyKeeper>,
    health: Arc<Health>,
    status: StatusWriter,
    warnings: RateLimiter,
    _lock: Option<StateLock>,
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
        let mut energy_timer = tokio::time::interval(energy_save_every().min(ENERGY_LOOK_EVERY));
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
                        self.status.subscribed();
                        // On disk before READY: whoever waits for READY
                        // finds the subscription in status.json.
                        self.status.write_now(self.hint.text()).await;
                        notify_systemd(&[sd_notify::NotifyState::Ready]);
                    }
                }
                _ = watchdog_timer.tick(), if watchdog_every.is_some() => {
                    // Only while data flows: a silent P3 gets us restarted.
                    let last = self.health.input().last_heard;
                    if last.is_some_and(|t| t.elapsed() < args.stale_after) {
                        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
                _ = status_timer.tick() => self.status.write(self.hint.text()),
                _ = energy_timer.tick(), if self.energy.is_some() => {
                    if let Some(keeper) = &mut self.energy {
                        keeper.save_when_due();
                    }
                }
                _ = stats_timer.tick() => log_progress(&self.health, &self.outputs),
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
        self.hint.heard();
        let other_before = self.pipeline.counts.other_device;
        let processed = self
            .pipeline
            .process(&msg.topic, &msg.payload, msg.received);
        self.health.heard(self.pipeline.counts, msg.received);
        let reading = match processed {
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
        let derived = self
            .energy
            .as_mut()
            .and_then(|keeper| keeper.observe(&reading))
            .map(Arc::new);
        for output in self.outputs.iter_mut() {
            if output.send(reading.clone()).await.is_err() {
                return false;
            }
            if let Some(derived) = &derived
                && output.wants_derived()
                && output.send(derived.clone()).await.is_err()
            {
                return false;
            }
        }
        true
    }

    /// The energy counters saved for the last time, and their totals handed
    /// to the outputs that take them, so that what was published last is
    /// what the next start continues from.
    async fn save_energy(&mut self) {
        let Some(keeper) = &mut self.energy else {
            return;
        };
        keeper.save_now().await;
        if keeper.implausible() > 0 {
            warn!(
                "{} power readings outside what a P3 can do were not integrated into the energy counters",
                keeper.implausible()
            );
        }
        for reading in keeper.durable_readings(Timestamp::now()) {
            let reading = Arc::new(reading);
            for output in self.outputs.iter_mut().filter(|o| o.wants_derived()) {
                let _ = output.send(reading.clone()).await;
            }
        }
    }

    /// Stops every output (each says what became of its data) and writes
    /// the last status.
    async fn finish(mut self) -> Result<()> {
        self.save_energy().await;
        let received = self.health.input().counts.messages();
        let mut result = Ok(());
        for output in std::mem::take(&mut self.outputs) {
            let name = output.name();
            if let Err(e) = output.finish(received).await {
                warn!("output {name}: {e:#}");
                result = Err(e);
            }
        }
        if self.status.no_api() {
            info!("stopped: {received} messages received");
        }
        self.status.disconnected();
        self.status.write_now(self.hint.text()).await;
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
        retry_initial: crate::forward::RETRY_INITIAL,
        retry_max: args.delivery.retry_max,
        send_alarms: true,
        give_up: None,
        fail_fast: false,
    }
}

fn log_progress(health: &Health, outputs: &[Box<dyn Output>]) {
    let c = health.input().counts;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn the_forwarders_defaults_are_collects() {
        let Ok(Cli {
            command: Command::Collect(args),
            ..
        }) = Cli::try_parse_from(["pv3", "collect"])
        else {
            panic!("`pv3 collect` parses");
        };
        assert_eq!(forward_options(&args), ForwardOptions::default());
    }
}
