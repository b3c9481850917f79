//! On a terminal pv3 colours its log, draws progress bars and spinners, and
//! clap colours its errors; with `NO_COLOR` set, nothing it writes holds an
//! escape sequence. Each command runs on a pseudo-terminal twice: without
//! `NO_COLOR` (it must then use escapes, or the check proves nothing) and
//! with it.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::api::RecordingApi;
use support::proc::Pv3;
use support::pty::{PtyRun, run_on_pty};

const T: Duration = Duration::from_secs(60);

/// pv3 `args` on a pseudo-terminal, `NO_COLOR` set to `no_color` (or unset).
async fn on_pty(args: Vec<String>, no_color: Option<&'static str>) -> PtyRun {
    tokio::task::spawn_blocking(move || {
        let mut cmd: Command = Pv3::cmd();
        cmd.args(&args)
            .env_remove("NO_COLOR")
            .env_remove("JOURNAL_STREAM")
            .env("TERM", "xterm-256color");
        if let Some(value) = no_color {
            cmd.env("NO_COLOR", value);
        }
        run_on_pty(&mut cmd, T)
    })
    .await
    .expect("pty thread")
}

fn escapes(run: &PtyRun) -> usize {
    run.output.iter().filter(|&&b| b == 0x1b).count()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_color_means_no_escape_sequences_on_a_terminal() {
    let api = RecordingApi::start().await;
    let closed = support::free_port().to_string();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/p3-sample.jsonl");
    // (what, arguments, uses escapes without NO_COLOR)
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        (
            "log lines and hints (devices, no broker)",
            strings(&[
                "devices",
                "--mqtt-host",
                "127.0.0.1",
                "--mqtt-port",
                &closed,
                "--wait",
                "0.3",
            ]),
            true,
        ),
        (
            "a spinner, log lines and the summary table (sniff, no broker)",
            strings(&[
                "sniff",
                "--mqtt-host",
                "127.0.0.1",
                "--mqtt-port",
                &closed,
                "--duration",
                "0.5",
            ]),
            true,
        ),
        (
            "a progress bar and log lines (replay to the API)",
            strings(&[
                "replay",
                sample.to_str().expect("utf-8 path"),
                "--api-url",
                &api.url(),
            ]),
            true,
        ),
        (
            "clap's usage error",
            strings(&["devices", "--wait", "0"]),
            true,
        ),
        // Tables are never coloured: plain on a terminal, with or without.
        (
            "the check table (check-api)",
            strings(&["check-api", "--api-url", &api.url()]),
            false,
        ),
    ];
    for (what, args, styled_without) in cases {
        let styled = on_pty(args.clone(), None).await;
        if styled_without {
            assert!(
                escapes(&styled) > 0,
                "{what}: no escape sequence even without NO_COLOR, so this case proves nothing:\n{}",
                styled.text()
            );
        } else {
            assert_eq!(escapes(&styled), 0, "{what}:\n{:?}", styled.text());
            assert!(
                styled.text().contains("╭"),
                "{what}: no table:\n{}",
                styled.text()
            );
        }
        let plain = on_pty(args.clone(), Some("1")).await;
        assert_eq!(
            plain.status.code(),
            styled.status.code(),
            "{what}: NO_COLOR changed the outcome:\n{}",
            plain.text()
        );
        assert_eq!(
            escapes(&plain),
            0,
            "{what}: escape sequences with NO_COLOR=1:\n{:?}",
            plain.text()
        );
        // An empty NO_COLOR does not count (no-color.org).
        let empty = on_pty(args, Some("")).await;
        assert_eq!(
            escapes(&empty) > 0,
            styled_without,
            "{what}: NO_COLOR= (empty) is not NO_COLOR:\n{:?}",
            empty.text()
        );
    }
}
