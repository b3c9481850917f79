//! A capture played into the view: the capture's own clock, at `--speed`,
//! paused with the view, stopped at the last record.

use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::capture::{CaptureReader, Record};
use crate::cli::Speed;
use crate::reading::Timestamp;

use super::render::Source;
use super::terminal::{App, FRAME, Input, Screen, signal, spawn_keys};
use super::{Feed, capture_name};

/// A capture's clock: capture time runs at `speed` × wall time from an
/// anchor (the first record, or the moment of resuming), stands still while
/// paused, and stops at the last record when the capture ends.
struct Player {
    /// `None`: as fast as records can be read.
    speed: Option<f64>,
    anchor: Option<(Timestamp, Instant)>,
    paused_at: Option<Timestamp>,
    pending: Option<Record>,
    /// The capture time of the last record applied.
    last: Option<Timestamp>,
    eof: bool,
}

impl Player {
    fn new(speed: Speed) -> Player {
        Player {
            speed: match speed {
                Speed::Max => None,
                Speed::Times(n) => Some(n),
            },
            anchor: None,
            paused_at: None,
            pending: None,
            last: None,
            eof: false,
        }
    }

    fn ended(&self) -> bool {
        self.eof && self.pending.is_none()
    }

    /// The capture time now.
    fn now(&self) -> Timestamp {
        if let Some(at) = self.paused_at {
            return at;
        }
        let fallback = self.last.unwrap_or_else(Timestamp::now);
        match (self.speed, self.anchor) {
            (Some(speed), Some((t0, w0))) if !self.ended() => {
                let ahead = w0.elapsed().as_secs_f64() * speed * 1e6;
                let at = Timestamp::from_unix_micros(t0.unix_micros().saturating_add(ahead as i64));
                // Never past the next record: it is applied at its time.
                match &self.pending {
                    Some(next) => at.min(next.ts).max(fallback),
                    None => at.max(fallback),
                }
            }
            _ => fallback,
        }
    }

    /// A record read; it is applied when [`Self::due`].
    fn arrive(&mut self, record: Record) {
        if self.anchor.is_none() {
            self.anchor = Some((record.ts, Instant::now()));
        }
        self.pending = Some(record);
    }

    /// When the pending record is due.
    fn due(&self) -> Instant {
        match (self.speed, self.anchor, &self.pending) {
            (Some(speed), Some((t0, w0)), Some(next)) => {
                let ahead = next.ts.seconds_since(t0) / speed;
                if ahead > 0.0 {
                    w0 + Duration::from_secs_f64(ahead.min(1e9))
                } else {
                    w0
                }
            }
            _ => Instant::now(),
        }
    }

    fn pause(&mut self, paused: bool) {
        if paused {
            self.paused_at = Some(self.now());
        } else if let Some(at) = self.paused_at.take() {
            self.anchor = Some((at, Instant::now()));
        }
    }
}

/// A capture played into the view.
pub(super) async fn play(path: &Path, only: Option<String>, speed: Speed) -> Result<()> {
    if path == Path::new("-") && std::io::IsTerminal::is_terminal(&io::stdin()) {
        bail!(
            "watch - reads a capture from stdin, but stdin is this terminal: pipe one in \
             (pv3 sniff | pv3 watch -) or name the file"
        );
    }
    let (input, _, _) = crate::capture::open_input(path)?;
    let name = capture_name(path);
    let speed_text = match speed {
        Speed::Max => "at max speed".to_string(),
        Speed::Times(n) => format!("×{n}"),
    };
    let mut records = read_capture(input)?;
    let mut screen = Screen::take()?;
    let mut keys = spawn_keys();
    let mut app = App::new(Feed::new(only));
    let mut player = Player::new(speed);
    let mut frames = tokio::time::interval(FRAME);
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = signal();
    tokio::pin!(stop);
    let source = |player: &Player| Source::Capture {
        name: name.clone(),
        speed: speed_text.clone(),
        ended: player.ended(),
    };
    let outcome = loop {
        let due = player.due();
        tokio::select! {
            _ = &mut stop => break Ok(()),
            input = keys.recv() => match input {
                Some(Input::Key(key)) => {
                    if app.key(&key, player.now()) {
                        break Ok(());
                    }
                    player.pause(app.paused);
                    app.frozen = None; // the capture's clock stands still instead
                    app.draw(&mut screen, player.now(), source(&player))?;
                }
                Some(Input::Resize) => app.draw(&mut screen, player.now(), source(&player))?,
                Some(Input::Failed(e)) => break Err(anyhow::anyhow!("cannot read keys: {e}")),
                None => break Err(anyhow::anyhow!("the key reader stopped")),
            },
            record = records.recv(), if player.pending.is_none() && !player.eof => match record {
                Some(Ok(record)) => player.arrive(record),
                Some(Err(e)) => break Err(e),
                None => {
                    player.eof = true;
                    app.dirty = true;
                }
            },
            _ = tokio::time::sleep_until(due), if player.pending.is_some() && !app.paused => {
                if let Some(record) = player.pending.take() {
                    player.last = Some(player.last.map_or(record.ts, |t| t.max(record.ts)));
                    app.message(&record.topic, &record.payload, record.ts);
                }
            }
            _ = frames.tick() => {
                let now = player.now();
                if app.wants_frame(now) {
                    app.draw(&mut screen, now, source(&player))?;
                }
            }
        }
    };
    app.log_pace();
    drop(screen);
    outcome
}

/// Reads the capture on a thread of its own, record by record, into a
/// bounded channel (so a capture of any size plays in flat memory). Bad
/// lines are skipped with a warning; a read error ends it. A plain thread,
/// not the runtime's blocking pool: the runtime waits for those at exit,
/// and a reader of an idle pipe (`pv3 sniff | pv3 watch -`) would hold up
/// `q`.
fn read_capture(
    input: Box<dyn io::BufRead + Send>,
) -> Result<mpsc::Receiver<Result<Record, anyhow::Error>>> {
    let (tx, rx) = mpsc::channel(1024);
    let read = move || {
        let mut reader = CaptureReader::new(input);
        let mut bad = 0u64;
        loop {
            let item = match reader.next_record() {
                Ok(Some(Ok(record))) => Ok(record),
                Ok(Some(Err(e))) => {
                    bad += 1;
                    if bad <= 20 {
                        warn!("skipped {e}");
                    }
                    continue;
                }
                Ok(None) => break,
                Err(e) => Err(anyhow::Error::new(e).context("cannot read the capture")),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
    };
    std::thread::Builder::new()
        .name("pv3-capture".into())
        .spawn(read)
        .context("cannot start the capture reader")?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_playback_clock_stops_when_paused_and_at_the_end() {
        let mut player = Player::new(Speed::Times(1.0));
        let t0 = Timestamp::from_unix_micros(1_800_000_000_000_000);
        let record = |ts| Record {
            ts,
            topic: "pv/PV3/D/inverter/charge".into(),
            qos: 0,
            retain: false,
            payload: b"{}".to_vec(),
        };
        player.arrive(record(t0));
        assert!(player.due() <= Instant::now());
        player.last = player.pending.take().map(|r| r.ts);
        player.arrive(record(Timestamp::from_unix_micros(
            t0.unix_micros() + 3_600_000_000,
        )));
        // The clock never runs past the next record.
        assert!(player.now() >= t0);
        player.pause(true);
        let paused = player.now();
        player.pause(false);
        assert!(player.now() >= paused);
        player.pending = None;
        player.eof = true;
        assert!(player.ended());
        assert_eq!(player.now(), t0);
    }
}
