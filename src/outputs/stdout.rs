//! Standard output: `collect --dry-run` prints what it would send.

use std::io::BufWriter;
use std::sync::Arc;

use tracing::warn;

use super::{Closed, Output, OutputFuture};
use crate::output::{Format, Printer, is_broken_pipe};
use crate::reading::Reading;

/// Prints readings (JSON Lines or a table) to standard output.
pub struct StdoutOutput {
    printer: Printer<BufWriter<std::io::Stdout>>,
    measurements: u64,
}

impl StdoutOutput {
    /// Prints in `format`.
    pub fn new(format: Format) -> StdoutOutput {
        StdoutOutput {
            printer: Printer::new(BufWriter::new(std::io::stdout()), format),
            measurements: 0,
        }
    }
}

impl Output for StdoutOutput {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn send(&mut self, reading: Arc<Reading>) -> OutputFuture<'_, Result<(), Closed>> {
        // A line at a time to a pipe: the reader sees each reading at once.
        let printed = self
            .printer
            .print(&reading)
            .and_then(|()| self.printer.flush());
        self.measurements += reading.measurements.len() as u64;
        Box::pin(async move {
            printed.map_err(|e| {
                if !is_broken_pipe(&e) {
                    warn!("cannot write to stdout: {e}");
                }
                Closed("stdout")
            })
        })
    }

    fn progress(&self) -> Option<String> {
        Some(format!("{} measurements printed", self.measurements))
    }

    fn finish(mut self: Box<Self>, _received: u64) -> OutputFuture<'static, anyhow::Result<()>> {
        let flushed = self.printer.flush();
        Box::pin(async move {
            match flushed {
                Err(e) if !is_broken_pipe(&e) => Err(e.into()),
                _ => Ok(()),
            }
        })
    }
}
