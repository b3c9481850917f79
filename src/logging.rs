//! Logging set-up: `tracing` to stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) lines carry no timestamp and no
//! colour, since journald adds its own time and shows escapes literally.

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
        .with_ansi(!under_journald && std::io::stderr().is_terminal());
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if under_journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}
