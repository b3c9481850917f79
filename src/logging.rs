//! Logging set-up: `tracing` to stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) lines carry no timestamp and no
//! colour, since journald adds its own time and shows escapes literally.
//! `NO_COLOR` (<https://no-color.org>) turns colour off everywhere: in the
//! log, and in the progress bars, which [`stderr_is_styled`] turns off.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
        .with_writer(std::io::stderr)
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
