//! `pv3 replay` into the API: the reader thread cuts the capture into
//! windows, the backfill ([`super::backfill`]) filters them, the forwarder
//! delivers; then every measurement decoded is accounted for.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::backfill::{Backfill, BackfillCounts, Stop, Window};
use super::{Backfilled, Source, SourceCounts, Summary, decode_record, new_pipeline};
use crate::cli::ReplayArgs;
use crate::forward::{ForwardOptions, ForwardReport, Forwarder, Overflow};
use crate::pipeline::DecodeCounts;
use crate::reading::Timestamp;

/// Replays `source` into the API.
pub(super) async fn to_api(
    mut source: Source,
    args: &ReplayArgs,
    signal: watch::Receiver<bool>,
) -> Result<Summary> {
    let api = crate::cmd::api_client(&args.api)?;
    let forwarder = Forwarder::start(api.clone(), replay_options(args));
    let Some(sender) = forwarder.sender() else {
        bail!("the forwarder did not start");
    };
    info!(
        "replaying into {}",
        crate::secret::shown_url(&args.api.api_url)
    );
    let mut pipeline = new_pipeline(args);
    let (windows_tx, windows) = mpsc::channel::<Window>(1);
    let reader = tokio::task::spawn_blocking(move || -> Result<ReadOutcome> {
        let mut window = Window::default();
        let mut lost = Window::default();
        let mut eof = true;
        // Hands the window over; what the backfill no longer takes is lost.
        let hand = |window: &mut Window, lost: &mut Window| {
            let full = std::mem::take(window);
            match windows_tx.blocking_send(full) {
                Ok(()) => true,
                Err(refused) => {
                    *lost = refused.0; // the backfill stopped
                    false
                }
            }
        };
        while let Some(record) = source.next()? {
            let Some(reading) = decode_record(&mut pipeline, &record) else {
                continue;
            };
            if !window.fits(reading.timestamp) && !hand(&mut window, &mut lost) {
                lost.add(reading);
                eof = false;
                break;
            }
            window.add(reading);
            if window.full() && !hand(&mut window, &mut lost) {
                eof = false;
                break;
            }
        }
        if eof && !window.is_empty() {
            hand(&mut window, &mut lost);
        }
        let eof = eof && !source.stop.load(Ordering::Relaxed);
        Ok(ReadOutcome {
            source: source.counts,
            decode: pipeline.counts,
            lost,
            eof,
        })
    });
    let mut backfill = Backfill {
        api,
        skip_existing: !args.no_skip_existing,
        give_up: args.give_up,
        retry_max: args.delivery.retry_max,
        stop: signal.clone(),
        counts: BackfillCounts::default(),
        recent: Default::default(),
        last_span: None,
        older_span: None,
    };
    let stopped = backfill.run(windows, sender).await;
    let mut signal = signal;
    let report = forwarder
        .finish_until(async move {
            let _ = signal.wait_for(|s| *s).await;
        })
        .await;
    let read = reader.await.context("replay thread failed")??;
    Ok(summarise(read, report, backfill.counts, stopped))
}

/// What the reader thread read.
struct ReadOutcome {
    source: SourceCounts,
    decode: DecodeCounts,
    /// Decoded but never handed over (the backfill had stopped).
    lost: Window,
    /// Read to the end of the capture.
    eof: bool,
}

fn replay_options(args: &ReplayArgs) -> ForwardOptions {
    let batch_size = args.batch_size as usize;
    let concurrency = args.concurrency as usize;
    ForwardOptions {
        batch_size,
        linger: Duration::from_millis(250),
        concurrency,
        // Enough to keep every POST slot busy with full batches.
        queue_limit: batch_size * (concurrency + 2),
        overflow: Overflow::Wait,
        retry_initial: crate::forward::RETRY_INITIAL,
        retry_max: args.delivery.retry_max,
        send_alarms: args.alarms,
        give_up: Some(args.give_up),
        // A wrong --api-url will not fix itself while a person waits.
        fail_fast: true,
    }
}

/// Accounts for every measurement decoded: delivered, already there,
/// rejected, or not sent (and from when to resume).
fn summarise(
    read: ReadOutcome,
    report: ForwardReport,
    mut counts: BackfillCounts,
    stopped: Option<Stop>,
) -> Summary {
    counts.not_handed += read.lost.measurements() as u64;
    let done = report.delivered + report.rejected + counts.skipped + counts.repeated;
    let not_sent = read.decode.measurements.saturating_sub(done);
    let resume = [
        counts.earliest_not_handed,
        read.lost.earliest(),
        earliest_in(&report.undelivered),
    ]
    .into_iter()
    .flatten()
    .min();
    let stopped = stopped.map(|s| match s {
        Stop::Signal => "interrupted".to_string(),
        Stop::Forwarder => report
            .gave_up_because
            .clone()
            .unwrap_or_else(|| "the forwarder stopped".into()),
        Stop::History(why) => why,
    });
    Summary {
        source: read.source.clone(),
        decode: Some(read.decode),
        backfill: Some(Backfilled {
            counts,
            not_sent,
            read_to_end: read.eof,
            // Nothing pending but not read to the end: from the last record
            // read (what was sent again is skipped as already there).
            resume: resume.or(if read.eof { None } else { read.source.last }),
            stopped,
        }),
        delivery: Some(report),
        published: None,
        energy: None,
    }
}

/// The earliest measurement timestamp in batches' bodies.
fn earliest_in(batches: &[crate::forward::Batch]) -> Option<Timestamp> {
    #[derive(serde::Deserialize)]
    struct Item {
        timestamp: Option<String>,
    }
    batches
        .iter()
        .filter_map(|b| serde_json::from_slice::<Vec<Item>>(&b.body).ok())
        .flatten()
        .filter_map(|i| Timestamp::parse_rfc3339(i.timestamp.as_deref()?).ok())
        .min()
}
