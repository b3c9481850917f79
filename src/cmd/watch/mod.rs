//! `pv3 watch`: the battery live in the terminal, from a broker or a
//! capture, through the same decoder and SOC filter as every command.
//!
//! - `state.rs`: what the view knows, a plain struct fed readings;
//! - `render.rs`: drawing it with ratatui (a pure function of the state);
//! - `terminal.rs`: the full-screen session: the terminal taken and always
//!   given back, keys, the redraw pace, the live loop;
//! - `playback.rs`: a capture played into the view, on its own clock;
//! - `once.rs`: `--once`: wait for the data to settle, print a snapshot.

mod once;
mod playback;
pub mod render;
pub mod state;
mod terminal;

use std::io::{self, IsTerminal};
use std::path::Path;

use anyhow::Result;
use tracing::warn;

use crate::cli::{SnapshotFormat, WatchArgs};
use crate::pipeline::Pipeline;
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::Timestamp;
use crate::topic::{ANY_DEVICE, P3Topic};

pub use render::{Source, Theme, View, draw};
pub use state::WatchState;

/// The SOC filter's threshold: the default of collect and replay, so the
/// view shows what they send.
const SOC_THRESHOLD: f64 = 1.0;

/// Runs `pv3 watch`; `matches` tells whether `--device-id` was given.
pub(crate) async fn run(args: WatchArgs, matches: &clap::ArgMatches) -> Result<()> {
    let once = args.once || args.format.is_some() || !io::stdout().is_terminal();
    let format = args.format.unwrap_or(SnapshotFormat::Table);
    match &args.file {
        Some(file) => {
            // A capture shows every device in it unless one is asked for.
            let asked = matches
                .subcommand_matches("watch")
                .and_then(|m| m.value_source("device_id"))
                .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
            let only = (asked && args.device.device_id != ANY_DEVICE)
                .then(|| args.device.device_id.clone());
            if once {
                once::from_capture(file, only, format).await
            } else {
                playback::play(file, only, args.speed).await
            }
        }
        None if once => once::live(&args, format).await,
        None => terminal::live(&args).await,
    }
}

/// Messages into the state: the pipeline, a device filter for captures,
/// and rate-limited warnings for what cannot be decoded.
struct Feed {
    state: WatchState,
    pipeline: Pipeline,
    only: Option<String>,
    warnings: RateLimiter,
}

impl Feed {
    fn new(only: Option<String>) -> Feed {
        Feed {
            state: WatchState::new(),
            pipeline: Pipeline::new(SOC_THRESHOLD, None),
            only,
            warnings: RateLimiter::new(crate::ratelimit::WINDOW),
        }
    }

    /// One message; `true` when it was for a device shown.
    fn message(&mut self, topic: &str, payload: &[u8], at: Timestamp) -> bool {
        if let Some(only) = &self.only
            && P3Topic::parse(topic).is_none_or(|t| t.device != only)
        {
            return false;
        }
        if let Err(e) = self.state.message(&mut self.pipeline, topic, payload, at) {
            let key = P3Topic::parse(topic).map_or(topic, |t| t.suffix);
            if let Some(n) = self.warnings.allow(key) {
                warn!("cannot decode: {e}{}", suppressed_note(n));
            }
        }
        true
    }
}

/// The capture's name for the header and messages.
fn capture_name(path: &Path) -> String {
    if path == Path::new("-") {
        return "stdin".into();
    }
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
