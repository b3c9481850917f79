//! The `pv3` binary: parse, set up logging, run, turn the outcome into an
//! exit code. Everything else is in the library.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use pv3::cli::{Cli, Command};
use pv3::cmd;

fn main() -> ExitCode {
    // Bad usage exits here with clap's message and code 2. The matches are
    // kept: install-service asks them which settings were given.
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| usage_error(e));
    let cli = Cli::from_arg_matches(&matches)
        .unwrap_or_else(|e| usage_error(e.format(&mut Cli::command())));
    // `pv3 addon` sets the log level from its options file: it starts the
    // log itself, once it has read it.
    if !matches!(cli.command, Command::Addon) {
        pv3::logging::init(cli.verbosity());
    }
    // The long-running commands (collect, sniff, watch) move a few messages a
    // second: one thread spares the Pi the cross-thread wake-ups (measured:
    // about a fifth of collect's CPU at the P3's cadence). replay and the
    // rest use every core.
    let builder = match cli.command {
        Command::Collect(_) | Command::Addon | Command::Sniff(_) | Command::Watch(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)));
            b
        }
    };
    let runtime = match { builder }.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pv3: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pv3: error: {e:#}");
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}

/// Exits with clap's message and code, except that a URL quoted in it (a
/// bad `--api-url`) never shows its password.
fn usage_error(e: clap::Error) -> ! {
    let text = e.render().to_string();
    if let std::borrow::Cow::Owned(masked) = pv3::secret::mask_url_passwords(&text) {
        eprint!("{masked}");
        std::process::exit(e.exit_code());
    }
    e.exit()
}
