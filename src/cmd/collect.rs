//! `pv3 collect`: MQTT → decode → SOC filter → API, until SIGINT/SIGTERM.

use std::io::BufWriter;
use std::time::Duration;

use anyhow::Result;
use tracing::{info, trace, warn};

use crate::cli::CollectArgs;
use crate::forward::{ForwardOptions, ForwardStats, Forwarder, Overflow};
use crate::mqtt::{self, Message};
use crate::output::{Format, Printer, is_broken_pipe};
use crate::pipeline::Pipeline;
use crate::ratelimit::{RateLimiter, suppressed_note};

/// Where decoded readings go.
enum Sink {
    Api(Forwarder),
    Print(Printer<BufWriter<std::io::Stdout>>),
}

pub async fn run(args: CollectArgs) -> Result<()> {
    let settings = super::mqtt_settings(&args.mqtt, "collect");
    let filter = mqtt::device_filter(&args.device.device_id);
    let mut sink = if args.dry_run {
        let format = args.format.unwrap_or_else(Format::default_for_stdout);
        Sink::Print(Printer::new(BufWriter::new(std::io::stdout()), format))
    } else {
        let api = super::api_client(&args.api)?;
        Sink::Api(Forwarder::start(
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
        ))
    };
    let mut subscription = mqtt::subscribe(&settings, vec![filter.clone()])
        .map_err(|e| super::ConfigError(format!("{e:#}")))?;
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

    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down: no more messages taken");
                break;
            }
            msg = subscription.recv() => {
                let Some(msg) = msg else { break };
                if !handle(&msg, &mut pipeline, &mut sink, &mut warnings).await {
                    break;
                }
            }
            _ = stats_timer.tick() => log_progress(&pipeline, &sink),
        }
    }
    subscription.close().await;

    match sink {
        Sink::Api(forwarder) => {
            let report = forwarder.finish(Some(args.shutdown_grace)).await;
            let lost = report.undelivered_measurements();
            info!(
                "stopped: {} messages received, {} measurements delivered, {} rejected, {} dropped",
                pipeline.counts.messages(),
                report.delivered,
                report.rejected,
                report.dropped
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
            if let Err(e) = printer.flush() {
                if !is_broken_pipe(&e) {
                    return Err(e.into());
                }
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
            let key = crate::decode::split_topic(&msg.topic).map_or("", |(_, suffix)| suffix);
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
