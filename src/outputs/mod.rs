//! Where `collect` sends decoded readings: a list of [`Output`]s, each
//! handed every reading in turn.
//!
//! Today there are two: the PV3 Monitor API ([`ApiOutput`], the default,
//! through the forwarder with its spool) and standard output
//! ([`StdoutOutput`], `--dry-run`). To add one (flat MQTT topics, Home
//! Assistant discovery, a Prometheus endpoint), implement [`Output`] in a
//! file of its own here and push it onto the list in `cmd/collect.rs`.
//!
//! The contract that keeps outputs independent: [`Output::send`] must
//! return promptly whatever the state of its destination. An output does
//! its network and disk work in a task or thread of its own behind a
//! bounded buffer, and decides for itself what a full buffer means: the API
//! output, which must not lose data, waits (its buffer holds 1,024 readings
//! in front of a queue that spools to disk, so it fills only if the disk
//! itself stalls for minutes); an output of latest values (MQTT state
//! topics, Prometheus) should keep the newest and count what it dropped,
//! never wait. An output that fails must never slow or lose another.

mod api;
mod prometheus;
pub mod publish;
mod stats;
mod stdout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use api::ApiOutput;
pub use prometheus::PrometheusOutput;
pub use publish::{PublishOptions, PublishOutput};
pub use stats::{Health, OutputStats};
pub use stdout::StdoutOutput;

use crate::reading::Reading;

/// An output operation in progress.
pub type OutputFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The output is gone for good (its consumer stopped: a closed pipe, a
/// stopped forwarder); collect should stop.
#[derive(Debug, thiserror::Error)]
#[error("output {0} has stopped")]
pub struct Closed(pub &'static str);

/// A destination for decoded readings; see the module docs.
pub trait Output: Send {
    /// A short name for logs ("api", "stdout").
    fn name(&self) -> &'static str;
    /// Hands over one reading. Returns promptly (see the module docs).
    fn send(&mut self, reading: Arc<Reading>) -> OutputFuture<'_, Result<(), Closed>>;
    /// One line for the periodic progress log, if it has anything to say.
    fn progress(&self) -> Option<String>;
    /// Whether it takes the readings pv3 derives itself (the energy
    /// counters, [`crate::energy`]) as well as the decoded ones. The API
    /// output does not: PV3 Monitor computes its own daily totals.
    fn wants_derived(&self) -> bool {
        false
    }
    /// Its live counters, for `status.json` and `/metrics` (the API
    /// output's are [`ApiOutput::stats`]).
    fn stats(&self) -> Option<Arc<OutputStats>> {
        None
    }
    /// Stops: flushes or persists what it holds and says what became of
    /// it. `received`: messages collect received in all, for the stop line.
    fn finish(self: Box<Self>, received: u64) -> OutputFuture<'static, anyhow::Result<()>>;
}

/// Takes the reading out of its `Arc` when this is the last holder (one
/// output: no copy), else copies it.
pub(crate) fn owned(reading: Arc<Reading>) -> Reading {
    Arc::try_unwrap(reading).unwrap_or_else(|shared| (*shared).clone())
}
