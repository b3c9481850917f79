//! Logging set-up: `tracing` to stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) lines carry no timestamp and no
//! colour, since journald adds its own time and shows escapes literally.
//! `NO_COLOR` (<https://no-color.org>) turns colour off everywhere: in the
//! log, and in the progress bars, which [`stderr_is_styled`] turns off.
//!
//! While a full-screen view owns the terminal (`pv3 watch`), a log line on
//! stderr would be drawn over it: [`hold`] keeps lines in memory instead
//! (the view shows the newest), and [`release`] prints them once the
//! terminal is back.

use std::collections::VecDeque;
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Lines kept while held; older ones are dropped (and counted).
const HELD_MAX: usize = 200;

/// Lines kept while the terminal is taken; `None` when not held.
static HELD: Mutex<Option<Held>> = Mutex::new(None);

#[derive(Default)]
struct Held {
    lines: VecDeque<String>,
    dropped: u64,
}

fn held() -> std::sync::MutexGuard<'static, Option<Held>> {
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// From now on, keep log lines in memory (the newest [`HELD_MAX`]) instead
/// of writing them to stderr.
pub fn hold() {
    held().get_or_insert_with(Held::default);
}

/// Writes the lines kept since [`hold`] to stderr, and writes there again
/// from now on. Harmless when not held.
pub fn release() {
    let Some(kept) = held().take() else { return };
    let mut err = io::stderr().lock();
    if kept.dropped > 0 {
        let _ = writeln!(err, "({} earlier log lines not kept)", kept.dropped);
    }
    for line in kept.lines {
        let _ = err.write_all(line.as_bytes());
    }
    let _ = err.flush();
}

/// The newest line kept since [`hold`], without colour codes or its
/// newline: what a full-screen view shows of the log.
pub fn newest_held() -> Option<String> {
    let guard = held();
    let line = guard.as_ref()?.lines.back()?;
    Some(strip_ansi(line).trim_end().to_owned())
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// stderr, or the held lines: `tracing`'s formatter writes each event
/// with one `write` call, so a call is a line.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut guard = held();
            if let Some(kept) = guard.as_mut() {
                if kept.lines.len() >= HELD_MAX {
                    kept.lines.pop_front();
                    kept.dropped += 1;
                }
                kept.lines
                    .push_back(String::from_utf8_lossy(buf).into_owned());
                return Ok(buf.len());
            }
        }
        io::stderr().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// `verbosity`: 0 normal (info), 1 `-v` (debug), 2+ `-vv` (trace, and
/// debug from libraries), -1 `-q` (warnings), -2 `-qq` (errors only).
/// `RUST_LOG`, when set, wins.
pub fn init(verbosity: i8) {
    let ours = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let theirs = if verbosity >= 2 { "debug" } else { "warn" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{theirs},pv3={ours}")));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_target(verbosity >= 1)
        .with_ansi(!under_journald && stderr_is_styled());
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if under_journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// `NO_COLOR` is set to something (an empty value does not count, as
/// no-color.org says).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// May stderr carry escape sequences: colour in the log, progress bars and
/// spinners? Only on a terminal, and not with `NO_COLOR`: people set it
/// where escapes show up literally (a screen reader, a captured session),
/// and a progress bar can only redraw itself with escapes, so it goes too
/// (the summary at the end still says everything).
pub fn stderr_is_styled() -> bool {
    !no_color() && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped_for_the_view() {
        assert_eq!(
            strip_ansi("\u{1b}[33m WARN\u{1b}[0m reconnecting in 2s\n"),
            " WARN reconnecting in 2s\n"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
