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

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Closed, Health, Output, OutputFuture, OutputStats};
use crate::reading::Reading;

mod exposition;
mod http;
mod store;
#[cfg(test)]
mod tests;

use exposition::*;
use http::*;
use store::*;

/// The content type of the text exposition format this output writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most bytes of request line and headers read from a client. A scraper
/// sends a few hundred; anything past this is answered 431 and closed, so a
/// client cannot make the server hold more than this per connection.
pub const MAX_HEAD: usize = 8 * 1024;

/// Longest a connection may take, from accept to the last byte written (a
/// client that reads its answer slowly is cut off then).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a client may take to send its whole request head, from accept.
/// A scraper sends it at once; a client that connects and says nothing (or
/// dribbles) is closed after this, so it holds its slot for no longer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections served at once. Past this the server stops accepting until
/// one ends (the kernel's backlog holds the rest, first come first
/// served), so a flood of idle connections costs at most this many tasks
/// and 8 KiB buffers (512 KiB), and each is gone within [`HEAD_TIMEOUT`].
/// A scrape behind N idle clients that reconnect as soon as they are
/// closed therefore waits about (N − 64) / 64 × 2 s: none for 48 (issue
/// 19), 2–4 s measured for 128, 4–6 s for 192 (the backlog, 128, is full
/// beyond that); Prometheus gives up after 10 s.
pub const MAX_CONNECTIONS: usize = 64;

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
    "pv3_api_measurements_not_created_total",
    "pv3_api_failed_attempts_total",
    "pv3_api_measurements_queued",
    "pv3_api_spool_measurements",
    "pv3_api_spool_bytes",
    "pv3_api_last_delivery_age_seconds",
    "pv3_output_connected",
    "pv3_output_delivering",
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
