//! The full-screen session: the terminal taken (raw mode, alternate
//! screen) and given back on every way out, keys, the redraw pace, and a
//! capture's playback clock.
//!
//! The terminal is given back by [`Screen`]'s `Drop` (a normal return, an
//! error, a signal: each leaves the loop and drops it) and by a panic hook
//! (so the panic's message lands on the normal screen, not the alternate
//! one that is about to vanish). Log lines are held in memory while the
//! screen is up and printed after it (see [`crate::logging::hold`]).
//!
//! Redraws: never per message. A frame is drawn at most every
//! [`FRAME`], and only when something changed (a message, or the second
//! shown in the ages), or at once after a key or a resize.

use std::io::{self, Stdout};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::{Hide, Show};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::capture::{CaptureReader, Record};
use crate::cli::{Speed, WatchArgs};
use crate::logging;
use crate::mqtt;
use crate::reading::Timestamp;
use crate::topic::device_filter;

use super::render::{self, Source, Theme, View};
use super::state::WatchState;
use super::{Feed, capture_name};

/// The shortest time between two frames: at most this many redraws a
/// second, however fast messages come.
pub(super) const FRAME: Duration = Duration::from_millis(500);

/// Whether the terminal is taken (raw mode, alternate screen).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The terminal, taken for the view; given back when dropped.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn take() -> Result<Screen> {
        install_panic_hook();
        enable_raw_mode().context("cannot switch the terminal to raw mode")?;
        TAKEN.store(true, Ordering::SeqCst);
        logging::hold();
        let screen = (|| -> io::Result<Screen> {
            execute!(io::stdout(), EnterAlternateScreen, Hide)?;
            let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
            Ok(Screen { terminal })
        })();
        screen.map_err(|e| {
            give_back();
            anyhow::Error::new(e).context("cannot draw on the terminal")
        })
    }

    fn draw(&mut self, view: &View<'_>) -> Result<()> {
        self.terminal
            .draw(|frame| render::draw(frame, view))
            .context("cannot draw on the terminal")?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        give_back();
    }
}

/// Leaves the alternate screen, shows the cursor, ends raw mode, prints
/// the held log lines. Does nothing when the terminal is not taken, so
/// the panic hook and `Drop` can both call it.
fn give_back() {
    if TAKEN.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
        let _ = disable_raw_mode();
        logging::release();
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            give_back();
            previous(info);
        }));
    });
}

/// What the key thread reports.
enum Input {
    Key(KeyEvent),
    Resize,
    Failed(String),
}

/// Reads keys on a thread of its own (crossterm's reads block); it ends
/// when the loop stops listening, or with the process.
fn spawn_keys() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(64);
    let spawned = std::thread::Builder::new()
        .name("pv3-keys".into())
        .spawn(move || {
            loop {
                let input = match event::read() {
                    Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => Input::Key(key),
                    Ok(Event::Resize(..)) => Input::Resize,
                    Ok(_) => continue,
                    Err(e) => Input::Failed(e.to_string()),
                };
                let failed = matches!(input, Input::Failed(_));
                if tx.blocking_send(input).is_err() || failed {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot read keys: {e}");
    }
    rx
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Quit,
    NextDevice,
    Pause,
    Help,
    Nothing,
}

fn action(key: &KeyEvent) -> Action {
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('d' | 'D') => Action::NextDevice,
        KeyCode::Char('p' | 'P' | ' ') => Action::Pause,
        KeyCode::Char('?' | 'h' | 'H') => Action::Help,
        _ => Action::Nothing,
    }
}

/// The session's state beside the data.
struct App {
    feed: Feed,
    /// What is drawn while paused live (data keeps coming in behind).
    frozen: Option<(WatchState, Timestamp)>,
    paused: bool,
    help: bool,
    device: Option<Arc<str>>,
    theme: Theme,
    /// A message came since the last frame.
    dirty: bool,
    /// The whole second of the last frame's clock.
    drawn_second: i64,
    /// Frames drawn and messages taken, for the closing debug line.
    frames: u64,
    messages: u64,
    started: Instant,
}

impl App {
    fn new(feed: Feed) -> App {
        App {
            feed,
            frozen: None,
            paused: false,
            help: false,
            device: None,
            theme: Theme::from_env(),
            dirty: true,
            drawn_second: i64::MIN,
            frames: 0,
            messages: 0,
            started: Instant::now(),
        }
    }

    /// Handles a key; `true` to quit.
    fn key(&mut self, key: &KeyEvent, now: Timestamp) -> bool {
        match action(key) {
            Action::Quit => return true,
            Action::NextDevice => {
                let ids: Vec<&Arc<str>> = self.feed.state.device_ids().collect();
                let next = match &self.device {
                    Some(current) => ids
                        .iter()
                        .position(|d| *d == current)
                        .map_or(0, |i| (i + 1) % ids.len().max(1)),
                    None => 0,
                };
                self.device = ids.get(next).map(|d| (*d).clone());
            }
            Action::Pause => {
                self.paused = !self.paused;
                self.frozen = self.paused.then(|| (self.feed.state.clone(), now));
            }
            Action::Help => self.help = !self.help,
            Action::Nothing => {}
        }
        false
    }

    /// Takes one message; marks a frame due when it was for a device shown.
    fn message(&mut self, topic: &str, payload: &[u8], at: Timestamp) {
        self.messages += 1;
        if self.feed.message(topic, payload, at) {
            self.dirty = true;
        }
    }

    /// Says (at debug level) how many frames were drawn for how many
    /// messages: the redraw pace, for the benchmark.
    fn log_pace(&self) {
        debug!(
            "{} frames for {} messages in {:.1} s",
            self.frames,
            self.messages,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A frame is due: something changed, or the clock's second did.
    fn wants_frame(&self, now: Timestamp) -> bool {
        self.dirty || now.unix_micros().div_euclid(1_000_000) != self.drawn_second
    }

    fn draw(&mut self, screen: &mut Screen, now: Timestamp, source: Source) -> Result<()> {
        if self.device.is_none() {
            self.device = self.feed.state.device_ids().next().cloned();
        }
        let (state, now) = match &self.frozen {
            Some((state, at)) => (state, *at),
            None => (&self.feed.state, now),
        };
        let view = View {
            state,
            device: self.device.as_deref(),
            now,
            source,
            paused: self.paused,
            help: self.help,
            note: logging::newest_held().map(|l| without_time(&l)),
            theme: self.theme,
        };
        screen.draw(&view)?;
        self.dirty = false;
        self.frames += 1;
        self.drawn_second = now.unix_micros().div_euclid(1_000_000);
        Ok(())
    }
}

/// A log line without its leading timestamp (the view has a clock).
fn without_time(line: &str) -> String {
    let line = line.trim();
    match line.split_once(' ') {
        Some((first, rest)) if first.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.trim().to_string()
        }
        _ => line.to_string(),
    }
}

/// SIGINT, SIGTERM or SIGHUP: each ends the session the same way.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            tokio::select! {
                _ = super::super::shutdown_signal() => {}
                _ = hangup.recv() => {}
            }
            return;
        }
    }
    super::super::shutdown_signal().await;
}

/// The live view of a broker's devices.
pub(super) async fn live(args: &WatchArgs) -> Result<()> {
    let settings = super::super::mqtt_settings(&args.mqtt, "watch");
    let filter = device_filter(&args.device.device_id);
    let mut subscription =
        mqtt::subscribe(&settings, vec![filter.clone()]).map_err(super::super::ConfigError)?;
    let connected = subscription.connected_flag();
    let endpoint = settings.endpoint();
    let mut screen = Screen::take()?;
    info!("pv3 watch: {endpoint} ({filter})");
    let mut keys = spawn_keys();
    let mut app = App::new(Feed::new(None));
    let mut frames = tokio::time::interval(FRAME);
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = signal();
    tokio::pin!(stop);
    let source = || Source::Live {
        endpoint: endpoint.clone(),
        connected: connected.load(Ordering::Relaxed),
    };
    let outcome = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            input = keys.recv() => match input {
                Some(Input::Key(key)) => {
                    if app.key(&key, Timestamp::now()) {
                        break Ok(());
                    }
                    app.draw(&mut screen, Timestamp::now(), source())?;
                }
                Some(Input::Resize) => app.draw(&mut screen, Timestamp::now(), source())?,
                Some(Input::Failed(e)) => break Err(anyhow::anyhow!("cannot read keys: {e}")),
                None => break Err(anyhow::anyhow!("the key reader stopped")),
            },
            msg = subscription.recv() => {
                let Some(msg) = msg else { break Ok(()) };
                app.message(&msg.topic, &msg.payload, msg.received);
            }
            _ = frames.tick() => {
                let now = Timestamp::now();
                if !app.paused && app.wants_frame(now) {
                    app.draw(&mut screen, now, source())?;
                }
            }
        }
    };
    app.log_pace();
    drop(screen);
    subscription.close().await;
    outcome
}

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
    let (input, _, _) = super::super::replay::open_input(path)?;
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

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn keys_map_to_actions() {
        let none = KeyModifiers::NONE;
        assert_eq!(action(&key(KeyCode::Char('q'), none)), Action::Quit);
        assert_eq!(action(&key(KeyCode::Esc, none)), Action::Quit);
        assert_eq!(
            action(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert_eq!(action(&key(KeyCode::Char('c'), none)), Action::Nothing);
        assert_eq!(action(&key(KeyCode::Char('d'), none)), Action::NextDevice);
        assert_eq!(action(&key(KeyCode::Char('p'), none)), Action::Pause);
        assert_eq!(action(&key(KeyCode::Char('?'), none)), Action::Help);
    }

    #[test]
    fn log_lines_lose_their_time() {
        assert_eq!(
            without_time("2026-11-30T17:00:00.123456Z  WARN reconnecting in 2s"),
            "WARN reconnecting in 2s"
        );
        assert_eq!(without_time(" INFO hello"), "INFO hello");
    }

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
