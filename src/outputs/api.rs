//! The PV3 Monitor API output: the forwarder, with its spool.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Closed, Output, OutputFuture, owned};
use crate::forward::{ForwardStats, Forwarder};
use crate::reading::Reading;

/// Sends readings to the API through a [`Forwarder`].
pub struct ApiOutput {
    forwarder: Forwarder,
    grace: Duration,
}

impl ApiOutput {
    /// Wraps a running forwarder; at the stop, whatever is not delivered
    /// within `grace` is spooled for the next start.
    pub fn new(forwarder: Forwarder, grace: Duration) -> ApiOutput {
        ApiOutput { forwarder, grace }
    }

    /// The forwarder's live counters (status.json reads them).
    pub fn stats(&self) -> Arc<ForwardStats> {
        self.forwarder.stats()
    }
}

impl Output for ApiOutput {
    fn name(&self) -> &'static str {
        "api"
    }

    fn send(&mut self, reading: Arc<Reading>) -> OutputFuture<'_, Result<(), Closed>> {
        Box::pin(async move {
            self.forwarder
                .send(owned(reading))
                .await
                .map_err(|_| Closed("api"))
        })
    }

    fn progress(&self) -> Option<String> {
        let s = self.forwarder.stats();
        let get = ForwardStats::get;
        Some(format!(
            "delivered {} measurements, {} queued, {} in the spool, {} failed ({} rejected, {} dropped)",
            get(&s.delivered),
            get(&s.queued),
            get(&s.spool_measurements),
            get(&s.rejected) + get(&s.dropped),
            get(&s.rejected),
            get(&s.dropped),
        ))
    }

    fn finish(self: Box<Self>, received: u64) -> OutputFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let report = self.forwarder.finish(Some(self.grace)).await;
            let not_created = match report.not_created {
                0 => String::new(),
                n => format!(" ({n} of them not created by the API, by its own count)"),
            };
            info!(
                "stopped: {received} messages received, {} measurements delivered{not_created}, {} rejected, {} dropped, {} left in the spool for the next start",
                report.delivered, report.rejected, report.dropped, report.left_in_spool
            );
            if !report.undelivered.is_empty() {
                warn!(
                    "{} measurements and {} alarm updates could not be kept when the {:.0} s shutdown grace ran out, and are lost",
                    report.undelivered_measurements(),
                    report.undelivered_alarms(),
                    self.grace.as_secs_f64()
                );
            }
            Ok(())
        })
    }
}
