//! The `pv3` binary: parse, set up logging, run, turn the outcome into an
//! exit code. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;

use pv3::cli::Cli;
use pv3::cmd::{self, ConfigError};

fn main() -> ExitCode {
    // Bad usage exits here with clap's message and code 2.
    let cli = Cli::parse();
    pv3::logging::init(cli.verbosity());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pv3: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pv3: error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
