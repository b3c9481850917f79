//! The full-screen session: the terminal taken (raw mode, alternate
//! screen) and given back on every way out, keys, the redraw pace, and the
//! live view's loop (a capture's is in `playback.rs`).
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{Context, Result};
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

use crate::cli::WatchArgs;
use crate::logging;
use crate::mqtt;
use crate::reading::Timestamp;
use crate::topic::device_filter;

use super::Feed;
use super::render::{self, Source, Theme, View};
use super::state::WatchState;

/// The shortest time between two frames: at most this many redraws a
/// second, however fast messages come.
pub(super) const FRAME: Duration = Duration::from_millis(500);

/// Whether the terminal is taken (raw mode, alternate screen).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The terminal, taken for the view; given back when dropped.
pub(super) struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    pub(super) fn take() -> Result<Screen> {
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

    pub(super) fn draw(&mut self, view: &View<'_>) -> Result<()> {
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
pub(super) enum Input {
    Key(KeyEvent),
    Resize,
    Failed(String),
}

/// Reads keys on a thread of its own (crossterm's reads block); it ends
/// when the loop stops listening, or with the process.
pub(super) fn spawn_keys() -> mpsc::Receiver<Input> {
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
pub(super) struct App {
    pub(super) feed: Feed,
    /// What is drawn while paused live (data keeps coming in behind).
    pub(super) frozen: Option<(WatchState, Timestamp)>,
    pub(super) paused: bool,
    help: bool,
    device: Option<Arc<str>>,
    theme: Theme,
    /// A message came since the last frame.
    pub(super) dirty: bool,
    /// The whole second of the last frame's clock.
    drawn_second: i64,
    /// Frames drawn and messages taken, for the closing debug line.
    frames: u64,
    messages: u64,
    started: Instant,
}

impl App {
    pub(super) fn new(feed: Feed) -> App {
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
    pub(super) fn key(&mut self, key: &KeyEvent, now: Timestamp) -> bool {
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
    pub(super) fn message(&mut self, topic: &str, payload: &[u8], at: Timestamp) {
        self.messages += 1;
        if self.feed.message(topic, payload, at) {
            self.dirty = true;
        }
    }

    /// Says (at debug level) how many frames were drawn for how many
    /// messages: the redraw pace, for the benchmark.
    pub(super) fn log_pace(&self) {
        debug!(
            "{} frames for {} messages in {:.1} s",
            self.frames,
            self.messages,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A frame is due: something changed, or the clock's second did.
    pub(super) fn wants_frame(&self, now: Timestamp) -> bool {
        self.dirty || now.unix_micros().div_euclid(1_000_000) != self.drawn_second
    }

    pub(super) fn draw(
        &mut self,
        screen: &mut Screen,
        now: Timestamp,
        source: Source,
    ) -> Result<()> {
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
pub(super) async fn signal() {
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
}
