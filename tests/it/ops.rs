//! Operations: `pv3 check-api` against a recording API (healthy, stale,
//! empty, failing, absent, slow) and a collector's status file;
//! `pv3 install-service` in dry-run and under a temporary root, checked with
//! `systemd-analyze` when it is installed; the generated completions and man
//! page against what the binary generates now.
//!
//! Regenerate the checked-in completions and man page after changing the
//! command line: `PV3_UPDATE_GENERATED=1 cargo test --test it ops::generated`.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pv3::reading::Timestamp;
use pv3::status::{Counters, Status};
use support::api::RecordingApi;
use support::files_under;
use support::fixtures::DEVICE;
use support::proc::{PV3_BIN, run_pv3, run_pv3_async, show};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rfc3339_ago(secs: i64) -> String {
    let now = Timestamp::now().unix_micros();
    Timestamp::from_unix_micros(now - secs * 1_000_000).to_rfc3339()
}

/// `check-api --format json` against `url`, with an empty state directory
/// unless `extra` gives one; returns (exit code, report, output).
async fn check_json(url: &str, extra: &[&str]) -> (Option<i32>, Value, Output) {
    let empty = tempfile::tempdir().expect("tempdir");
    let empty_dir = empty.path().to_string_lossy().into_owned();
    let mut args = vec![
        "check-api",
        "--api-url",
        url,
        "--device-id",
        DEVICE,
        "--format",
        "json",
        "--api-timeout",
        "5",
    ];
    if !extra.contains(&"--state-dir") {
        args.extend(["--state-dir", &empty_dir]);
    }
    args.extend_from_slice(extra);
    let out = run_pv3_async(&args, &[]).await;
    let report: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => panic!("--format json is not JSON ({e}):\n{}", show(&out)),
    };
    no_panic(&out);
    (out.status.code(), report, out)
}

fn no_panic(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "pv3 panicked:\n{}",
        show(out)
    );
}

/// The status of the check named `name`.
fn status_of<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .expect("checks is an array")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_else(|| panic!("no check named {name:?} in {report:#}"))
}

fn detail_of<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .expect("checks is an array")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_else(|| panic!("no check named {name:?} in {report:#}"))
}

const API_CHECKS: &[&str] = &[
    "API reachable",
    "health",
    "API version",
    "device known",
    "fresh data",
];

// ---- check-api ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_passes_against_a_healthy_api_with_fresh_data() {
    let api = RecordingApi::start().await;
    api.seed_measurement(DEVICE, "soc", 97.0, "%", &rfc3339_ago(5));
    let (code, report, out) = check_json(&api.url(), &[]).await;
    assert_eq!(code, Some(0), "{}", show(&out));
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().expect("array");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, API_CHECKS, "no collector rows without a status file");
    for c in checks {
        assert_eq!(c["status"], "pass", "{c}");
        assert!(c["latency_ms"].as_f64().is_some(), "latency: {c}");
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
    }
    assert!(detail_of(&report, "API version").contains("PV3 Monitor API 0.1.0"));
    for path in ["/health", "/", "/api/devices/PV001001DEV/current"] {
        assert!(
            api.requests()
                .iter()
                .any(|r| r.method == "GET" && r.path == path),
            "no GET {path}: {:?}",
            api.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
        );
    }
    assert!(
        api.requests_to("POST", "/").is_empty(),
        "no write without --write"
    );

    // The table: a row per check with its mark, then a summary.
    let empty = tempfile::tempdir().expect("tempdir");
    let url = api.url();
    let state = empty.path().to_string_lossy().into_owned();
    let out = run_pv3_async(
        &["check-api", "--api-url", &url, "--state-dir", &state],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    for name in API_CHECKS {
        let row = text
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{text}"));
        assert!(row.contains('✓'), "{name} not passed:\n{text}");
    }
    assert!(text.contains("5 passed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_data_is_a_warning_not_a_failure() {
    let api = RecordingApi::start().await;
    api.seed_measurement(DEVICE, "soc", 50.0, "%", &rfc3339_ago(2 * 3600));
    let (code, report, out) = check_json(&api.url(), &[]).await;
    assert_eq!(code, Some(0), "warnings alone do not fail:\n{}", show(&out));
    assert_eq!(report["ok"], true);
    assert_eq!(status_of(&report, "fresh data"), "warn");
    assert!(
        detail_of(&report, "fresh data").contains("2 h 0 min old"),
        "{report:#}"
    );
    // A tighter --max-age makes five-second-old data stale too.
    api.clear();
    api.seed_measurement(DEVICE, "soc", 50.0, "%", &rfc3339_ago(60));
    let (_, report, _) = check_json(&api.url(), &["--max-age", "30"]).await;
    assert_eq!(status_of(&report, "fresh data"), "warn");
    let (_, report, _) = check_json(&api.url(), &["--max-age", "120"]).await;
    assert_eq!(status_of(&report, "fresh data"), "pass");
}

/// The device row says what the API answered: the device's last data and
/// how much it holds, or that a 200 was not this device at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_row_says_what_the_api_answered() {
    let api = RecordingApi::start().await;
    let newest = rfc3339_ago(3);
    api.seed_measurement(DEVICE, "soc", 97.0, "%", &rfc3339_ago(10));
    api.seed_measurement(DEVICE, "battery_power", 590.0, "W", &newest);
    let (code, report, out) = check_json(&api.url(), &[]).await;
    assert_eq!(code, Some(0), "{}", show(&out));
    let detail = detail_of(&report, "device known");
    assert!(detail.contains(&newest), "the last data time: {detail}");
    assert!(detail.contains("2 measurements"), "{detail}");

    // A 200 that is not this device (another id, or not a device at all).
    for body in [
        serde_json::json!({"device_id": "PV999999DEV", "measurement_count": 5}),
        serde_json::json!({"status": "ok"}),
        serde_json::json!([1, 2, 3]),
    ] {
        api.answer_reads(Some(body.clone()));
        let (code, report, out) = check_json(&api.url(), &[]).await;
        assert_eq!(code, Some(1), "{body}: {}", show(&out));
        assert_eq!(
            status_of(&report, "device known"),
            "fail",
            "{body}: {report:#}"
        );
        let detail = detail_of(&report, "device known");
        assert!(detail.contains("HTTP 200"), "{body}: {detail}");
        assert!(
            detail.contains(&format!("not device {DEVICE}")),
            "{body}: {detail}"
        );
    }
}

/// `check-api --format json` with `--api-timeout 1`.
async fn check_json_quick(url: &str) -> (Option<i32>, Value, Output) {
    let empty = tempfile::tempdir().expect("tempdir");
    let state = empty.path().to_string_lossy().into_owned();
    let args = [
        "check-api",
        "--api-url",
        url,
        "--device-id",
        DEVICE,
        "--format",
        "json",
        "--api-timeout",
        "1",
        "--state-dir",
        &state,
    ];
    let out = run_pv3_async(&args, &[]).await;
    let report: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => panic!("--format json is not JSON ({e}):\n{}", show(&out)),
    };
    no_panic(&out);
    (out.status.code(), report, out)
}

/// `/health` answers but reading data fails without an HTTP status (the
/// connection reset, or no answer in time): the data rows name the
/// database, not only the transport error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_rows_name_the_database_when_reads_reset_or_stall() {
    let api = RecordingApi::start().await;
    api.seed_measurement(DEVICE, "soc", 50.0, "%", &rfc3339_ago(1));
    for fault in ["reset", "stall"] {
        match fault {
            "reset" => api.reset_reads(true),
            _ => api.set_read_delay(Duration::from_secs(5)),
        }
        let (code, report, out) = check_json_quick(&api.url()).await;
        assert_eq!(code, Some(1), "{fault}: {}", show(&out));
        assert_eq!(status_of(&report, "health"), "pass", "{fault}: {report:#}");
        for row in ["device known", "fresh data"] {
            assert_eq!(status_of(&report, row), "fail", "{fault}: {report:#}");
            let detail = detail_of(&report, row);
            assert!(detail.contains("database"), "{fault}, {row}: {detail}");
            assert!(
                detail.contains("/health answers"),
                "{fault}, {row}: {detail}"
            );
        }
        api.reset_reads(false);
        api.set_read_delay(Duration::ZERO);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_data_fails() {
    let api = RecordingApi::start().await;
    api.seed_measurement("OTHER0001", "soc", 50.0, "%", &rfc3339_ago(1));
    let (code, report, out) = check_json(&api.url(), &[]).await;
    assert_eq!(code, Some(1), "{}", show(&out));
    assert_eq!(report["ok"], false);
    assert_eq!(status_of(&report, "API reachable"), "pass");
    assert_eq!(status_of(&report, "health"), "pass");
    assert_eq!(status_of(&report, "device known"), "fail");
    assert!(detail_of(&report, "device known").contains("no data ever received"));
    assert_eq!(status_of(&report, "fresh data"), "fail");
    let err = stderr(&out);
    assert!(
        err.lines().count() == 1 && err.contains("2 of 5 checks failed"),
        "one line on stderr: {err}"
    );
}

/// Answers every request with HTTP 500 (the recording API injects faults
/// into POSTs only).
async fn always_500() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = br#"{"detail":"database is down"}"#;
                let head = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_answering_500_fails_each_check_with_the_status() {
    let port = always_500().await;
    let url = format!("http://127.0.0.1:{port}");
    let (code, report, out) = check_json(&url, &[]).await;
    assert_eq!(code, Some(1), "{}", show(&out));
    assert_eq!(status_of(&report, "API reachable"), "pass");
    for name in ["health", "API version", "device known", "fresh data"] {
        assert_eq!(status_of(&report, name), "fail", "{name}: {report:#}");
        assert!(
            detail_of(&report, name).contains("HTTP 500"),
            "{name}: {report:#}"
        );
    }
    assert!(detail_of(&report, "health").contains("database is down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_api_fails_fast_with_every_row_shown() {
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let empty = tempfile::tempdir().expect("tempdir");
    let state = empty.path().to_string_lossy().into_owned();
    let start = Instant::now();
    let out = run_pv3_async(
        &["check-api", "--api-url", &url, "--state-dir", &state],
        &[],
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    no_panic(&out);
    let text = stdout(&out);
    for name in API_CHECKS {
        assert!(text.contains(name), "row {name} missing:\n{text}");
    }
    let reachable = text
        .lines()
        .find(|l| l.contains("API reachable"))
        .expect("row");
    assert!(
        reachable.contains('✗') && reachable.contains("refused"),
        "{text}"
    );
    assert!(text.contains("1 failed, 4 skipped"), "{text}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", show(&out));

    let (code, report, _) = check_json(&url, &["--write"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(status_of(&report, "write round trip"), "skip");
    assert_eq!(report["checks"][1]["latency_ms"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_api_is_bounded_by_the_timeout() {
    let api = RecordingApi::start().await;
    api.seed_measurement(DEVICE, "soc", 50.0, "%", &rfc3339_ago(1));
    api.set_delay(Duration::from_secs(60));
    let empty = tempfile::tempdir().expect("tempdir");
    let state = empty.path().to_string_lossy().into_owned();
    let url = api.url();
    let start = Instant::now();
    let out = run_pv3_async(
        &[
            "check-api",
            "--api-url",
            &url,
            "--state-dir",
            &state,
            "--api-timeout",
            "0.5",
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    // Four requests of at most 0.5 s each, plus start-up.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status_of(&report, "API reachable"), "pass");
    assert_eq!(status_of(&report, "health"), "fail");
    assert!(
        detail_of(&report, "health").contains("timed out"),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_round_trips_a_probe() {
    let api = RecordingApi::start().await;
    api.seed_measurement(DEVICE, "soc", 50.0, "%", &rfc3339_ago(1));
    let (code, report, out) = check_json(&api.url(), &["--write"]).await;
    assert_eq!(code, Some(0), "{}", show(&out));
    assert_eq!(status_of(&report, "write round trip"), "pass");
    let probes: Vec<Value> = api
        .measurements()
        .into_iter()
        .filter(|m| m["metric_name"] == "pv3_check_probe")
        .collect();
    assert_eq!(probes.len(), 1, "{probes:?}");
    let value = probes[0]["metric_value"].as_f64().expect("number");
    assert!(
        detail_of(&report, "write round trip").contains(&format!("{value}")),
        "{report:#}"
    );
    let ts = probes[0]["timestamp"].as_str().expect("timestamp");
    let age = Timestamp::now().seconds_since(Timestamp::parse_rfc3339(ts).expect("RFC 3339"));
    assert!((0.0..30.0).contains(&age), "probe stamped now: {ts}");

    // A refused POST fails the row.
    api.fail_all(422);
    let (code, report, _) = check_json(&api.url(), &["--write"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(status_of(&report, "write round trip"), "fail");
    assert!(detail_of(&report, "write round trip").contains("422"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_but_never_printed() {
    let api = RecordingApi::start().await;
    let token = "s3cr3t-token-value";
    let url = api.url();
    let empty = tempfile::tempdir().expect("tempdir");
    let state = empty.path().to_string_lossy().into_owned();
    for format in ["table", "json"] {
        let out = run_pv3_async(
            &[
                "check-api",
                "--api-url",
                &url,
                "--state-dir",
                &state,
                "--write",
                "--format",
                format,
                "-vv",
            ],
            &[("API_TOKEN", token)],
        )
        .await;
        let all = show(&out);
        assert!(!all.contains(token), "token printed:\n{all}");
    }
    let requests = api.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
}

fn status_file(updated_secs_ago: i64) -> Status {
    Status {
        version: 1,
        pid: 4242,
        pv3_version: "0.1.0".into(),
        started_at: rfc3339_ago(3600),
        updated_at: rfc3339_ago(updated_secs_ago),
        broker: "127.0.0.1:1883".into(),
        broker_connected: true,
        last_message_at: Some(rfc3339_ago(2)),
        last_delivery_at: Some(rfc3339_ago(3)),
        counters: Counters {
            received: 1000,
            delivered: 5000,
            ..Counters::default()
        },
        ..Status::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collectors_status_file_adds_rows() {
    let api = RecordingApi::start().await;
    api.seed_measurement(DEVICE, "soc", 50.0, "%", &rfc3339_ago(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_string_lossy().into_owned();
    let rows = ["collector running", "collector MQTT", "collector delivery"];

    // Running and healthy.
    pv3::status::write(dir.path(), &status_file(2)).expect("write status");
    let (code, report, out) = check_json(&api.url(), &["--state-dir", &state]).await;
    assert_eq!(code, Some(0), "{}", show(&out));
    for row in rows {
        assert_eq!(status_of(&report, row), "pass", "{row}: {report:#}");
    }
    assert!(detail_of(&report, "collector running").contains("pid 4242"));
    assert!(detail_of(&report, "collector MQTT").contains("127.0.0.1:1883"));

    // Disconnected, spooling, dropping: warnings, still exit 0.
    let mut troubled = status_file(2);
    troubled.broker_connected = false;
    troubled.spool_batches = 3;
    troubled.spool_measurements = 1500;
    troubled.counters.dropped = 7;
    troubled.counters.rejected = 2;
    troubled.counters.not_created = 4;
    pv3::status::write(dir.path(), &troubled).expect("write status");
    let (code, report, out) = check_json(&api.url(), &["--state-dir", &state]).await;
    assert_eq!(code, Some(0), "{}", show(&out));
    assert_eq!(status_of(&report, "collector running"), "pass");
    assert_eq!(status_of(&report, "collector MQTT"), "warn");
    assert_eq!(status_of(&report, "collector delivery"), "warn");
    let delivery = detail_of(&report, "collector delivery");
    for part in [
        "3 batches",
        "1500 measurements",
        "7 dropped",
        "2 rejected",
        "4 not created",
    ] {
        assert!(delivery.contains(part), "{part}: {delivery}");
    }

    // Not updated for five minutes: the collector is not running.
    pv3::status::write(dir.path(), &status_file(300)).expect("write status");
    let (code, report, out) = check_json(&api.url(), &["--state-dir", &state]).await;
    assert_eq!(code, Some(1), "{}", show(&out));
    assert_eq!(status_of(&report, "collector running"), "fail");
    assert!(detail_of(&report, "collector running").contains("not running"));
    assert_eq!(status_of(&report, "collector MQTT"), "skip");
    assert_eq!(status_of(&report, "collector delivery"), "skip");

    // The state directory also comes from STATE_DIRECTORY (systemd's,
    // possibly a list), and the status is read with the API down.
    pv3::status::write(dir.path(), &status_file(1)).expect("write status");
    let url = format!("http://127.0.0.1:{}", support::free_port());
    let list = format!("{state}:/nonexistent");
    let out = run_pv3_async(
        &["check-api", "--api-url", &url, "--format", "json"],
        &[("STATE_DIRECTORY", list.as_str())],
    )
    .await;
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status_of(&report, "collector running"), "pass");
    assert_eq!(status_of(&report, "health"), "skip");
}

// ---- install-service ---------------------------------------------------

/// Secrets that go into the env file; printed only as ***.
const PASSWORD: &str = "p@ss \"w0rd\" $HOME `x` \\ #1";
const TOKEN: &str = "tok-123456789";

fn bin_path() -> String {
    std::fs::canonicalize(PV3_BIN)
        .expect("the pv3 binary")
        .to_string_lossy()
        .into_owned()
}

fn install(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut all = vec!["install-service"];
    all.extend_from_slice(args);
    let out = run_pv3(&all, envs, None);
    no_panic(&out);
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_service_dry_run_prints_everything_and_touches_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let bin = bin_path();
    for extra in [
        &["--root", root_dir.as_str()][..],
        &["--pretend-non-root"][..],
    ] {
        let mut args = vec![
            "--dry-run",
            "--mqtt-host",
            "127.0.0.1",
            "--api-token",
            TOKEN,
            "--binary",
            &bin,
        ];
        args.extend_from_slice(extra);
        let out = install(&args, &[("MQTT_PASSWORD", PASSWORD), ("MQTT_PORT", "1884")]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        let text = stdout(&out);
        for line in [
            "[Service]".to_owned(),
            "Type=notify".to_owned(),
            format!("ExecStart={bin} collect"),
            "EnvironmentFile=-/etc/pv3/collector.env".to_owned(),
            "DynamicUser=yes".to_owned(),
            "MQTT_HOST=127.0.0.1".to_owned(),
            "MQTT_PORT=1884".to_owned(),
            "MQTT_PASSWORD=***".to_owned(),
            "API_TOKEN=***".to_owned(),
            "systemctl daemon-reload".to_owned(),
            "systemctl enable --now --no-block pv3-collector.service".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(text.contains("/etc/systemd/system/pv3-collector.service"));
        assert!(text.contains("journalctl -u pv3-collector -f"));
        let all = show(&out);
        assert!(!all.contains(PASSWORD) && !all.contains(TOKEN), "{all}");
        assert!(
            files_under(root.path()).is_empty(),
            "dry run wrote {:?}",
            files_under(root.path())
        );
    }
}

/// The old Python collector's unit, as an owner of the hand-written setup
/// has it (kevin-bird/powervault-p3-local), with their own settings.
const OLD_UNIT: &str = "[Unit]\nDescription=PV3 MQTT Data Collector\nAfter=network.target\n\n\
    [Service]\nType=simple\nUser=kevin\nWorkingDirectory=/home/kevin/pv3-monitor/collector\n\
    Environment=\"MQTT_HOST=10.0.0.7\"\nEnvironment=\"MQTT_PORT=1884\"\n\
    Environment=\"P3_DEVICE_ID=PV123456DEV\"\nEnvironment=\"API_URL=http://nas.local:8800\"\n\
    Environment=\"PYTHONUNBUFFERED=1\"\n\
    ExecStart=/usr/bin/python3 /home/kevin/pv3-monitor/collector/mqtt_collector.py\n\
    Restart=always\nRestartSec=10\n\n[Install]\nWantedBy=multi-user.target\n\n";

#[test]
fn install_service_over_the_old_python_collector_keeps_it_and_its_settings() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("units dir");
    let unit = units.join("pv3-collector.service");
    std::fs::write(&unit, OLD_UNIT).expect("the old unit");
    let bin = bin_path();

    // The old settings carry over; a flag given now still wins.
    let out = install(
        &["--root", &root_dir, "--binary", &bin, "--mqtt-port", "1885"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    let backup = units.join("pv3-collector.service.before-pv3");
    assert!(
        text.contains("as /etc/systemd/system/pv3-collector.service.before-pv3"),
        "{text}"
    );
    assert!(text.contains("mqtt_collector.py"), "{text}");
    assert!(
        text.contains("carried its settings over: MQTT_HOST, MQTT_PORT, P3_DEVICE_ID, API_URL")
            || text.contains("carried its settings over: MQTT_HOST, P3_DEVICE_ID, API_URL"),
        "{text}"
    );
    // There was no env file before: nothing is "kept from" one.
    assert!(!text.contains("previous env file"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&backup).expect("the copy"),
        OLD_UNIT,
        "kept as it was"
    );
    let unit_text = std::fs::read_to_string(&unit).expect("pv3's unit");
    assert!(
        unit_text.contains(&format!("ExecStart={bin} collect")),
        "{unit_text}"
    );
    assert!(
        text.contains("systemctl restart --no-block pv3-collector.service"),
        "{text}"
    );
    let values = source_env(&root.path().join("etc/pv3/collector.env"));
    assert_eq!(get(&values, "MQTT_HOST"), Some("10.0.0.7"));
    assert_eq!(get(&values, "MQTT_PORT"), Some("1885"), "the flag wins");
    assert_eq!(get(&values, "P3_DEVICE_ID"), Some("PV123456DEV"));
    assert_eq!(get(&values, "API_URL"), Some("http://nas.local:8800"));
    assert_eq!(get(&values, "PYTHONUNBUFFERED"), None, "not pv3's");

    // Installing again: the unit is pv3's now, and the copy stays as it is.
    let out = install(&["--root", &root_dir, "--binary", &bin], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!stdout(&out).contains("before-pv3"), "{}", stdout(&out));
    assert_eq!(
        std::fs::read_to_string(&backup).expect("the copy"),
        OLD_UNIT
    );
    assert_eq!(
        get(
            &source_env(&root.path().join("etc/pv3/collector.env")),
            "MQTT_HOST"
        ),
        Some("10.0.0.7")
    );
}

#[test]
fn install_service_writes_updates_and_removes_under_a_root() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let bin = bin_path();
    let unit = root.path().join("etc/systemd/system/pv3-collector.service");
    let env = root.path().join("etc/pv3/collector.env");

    let out = install(
        &[
            "--root",
            &root_dir,
            "--binary",
            &bin,
            "--api-url",
            "http://127.0.0.1:8800",
            "--api-token",
            TOKEN,
            "--device-id",
            "PV009009DEV",
        ],
        &[
            ("MQTT_HOST", "127.0.0.1"),
            ("MQTT_PASSWORD", PASSWORD),
            ("MQTT_USERNAME", "owner"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("would run: systemctl enable --now --no-block pv3-collector.service"),
        "{text}"
    );
    assert!(text.contains("journalctl -u pv3-collector -f"), "{text}");
    assert!(!show(&out).contains(PASSWORD) && !show(&out).contains(TOKEN));
    let unit_text = std::fs::read_to_string(&unit).expect("unit written");
    assert!(unit_text.contains(&format!("ExecStart={bin} collect")));
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&env), 0o600, "env file holds secrets");
    assert_eq!(mode(env.parent().expect("dir")), 0o700);
    let values = source_env(&env);
    assert_eq!(get(&values, "MQTT_HOST"), Some("127.0.0.1"));
    assert_eq!(get(&values, "MQTT_USERNAME"), Some("owner"));
    assert_eq!(get(&values, "MQTT_PASSWORD"), Some(PASSWORD));
    assert_eq!(get(&values, "API_TOKEN"), Some(TOKEN));
    assert_eq!(get(&values, "API_URL"), Some("http://127.0.0.1:8800/"));
    assert_eq!(get(&values, "P3_DEVICE_ID"), Some("PV009009DEV"));
    assert_eq!(
        get(&values, "API_TIMEOUT"),
        None,
        "defaults are not written"
    );
    assert_eq!(get(&values, "MQTT_TLS"), None);

    // Again, with a new host: updated in place, the rest kept.
    let out = install(
        &[
            "--root",
            &root_dir,
            "--binary",
            &bin,
            "--mqtt-host",
            "127.0.0.2",
            "--mqtt-tls",
        ],
        &[("API_TIMEOUT", "3")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("would run: systemctl restart --no-block pv3-collector.service"),
        "{text}"
    );
    assert!(text.contains("kept from the previous env file"), "{text}");
    let values = source_env(&env);
    assert_eq!(get(&values, "MQTT_HOST"), Some("127.0.0.2"));
    assert_eq!(get(&values, "MQTT_TLS"), Some("true"));
    assert_eq!(get(&values, "API_TIMEOUT"), Some("3"));
    assert_eq!(get(&values, "MQTT_PASSWORD"), Some(PASSWORD), "kept");
    assert_eq!(get(&values, "API_TOKEN"), Some(TOKEN), "kept");
    assert_eq!(mode(&env), 0o600);
    assert_eq!(
        files_under(root.path()).len(),
        2,
        "{:?}",
        files_under(root.path())
    );

    // Uninstall: both files go, state stays without --purge.
    let state = root.path().join("var/lib/private/pv3");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("status.json"), "{}").expect("status");
    let out = install(&["--root", &root_dir, "--uninstall"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("would run: systemctl disable --now pv3-collector.service"));
    assert!(!unit.exists() && !env.exists(), "{}", show(&out));
    assert!(state.join("status.json").exists(), "state kept");
    let out = install(&["--root", &root_dir, "--uninstall", "--purge"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("not installed"), "{}", show(&out));
    assert!(!state.exists(), "purged");
}

#[test]
fn install_service_uninstall_dry_run_lists_the_plan_and_removes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let bin = bin_path();
    let out = install(&["--root", &root_dir, "--binary", &bin], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let before = files_under(root.path());
    let out = install(&["--root", &root_dir, "--uninstall", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    for line in [
        "systemctl disable --now pv3-collector.service",
        "/etc/systemd/system/pv3-collector.service",
        "/etc/pv3/collector.env",
        "systemctl daemon-reload",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert_eq!(
        files_under(root.path()),
        before,
        "a dry run removes nothing"
    );
}

#[test]
fn install_service_runs_the_packaged_binary_when_dpkg_put_it_there() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let bin = bin_path();
    let unit = root.path().join("etc/systemd/system/pv3-collector.service");
    let exec_start = || {
        let text = std::fs::read_to_string(&unit).expect("unit written");
        text.lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart= line")
            .to_owned()
    };
    let packaged = root.path().join("usr/bin/pv3");
    std::fs::create_dir_all(packaged.parent().expect("usr/bin")).expect("usr/bin");
    std::fs::copy(PV3_BIN, &packaged).expect("copy pv3");

    // A /usr/bin/pv3 that dpkg does not list is someone else's: not used.
    let out = install(&["--root", &root_dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(exec_start(), format!("{bin} collect"));

    // The pv3 package installed it (dpkg-query says so): the service runs
    // it, so that apt upgrades the service too. A dpkg database under the
    // root: the package's status and its file list.
    if support::broker::find_executable("dpkg-query").is_none() {
        eprintln!("the packaged binary not checked: no dpkg-query (not a Debian system)");
        return;
    }
    let dpkg = root.path().join("var/lib/dpkg");
    std::fs::create_dir_all(dpkg.join("info")).expect("dpkg info dir");
    std::fs::write(
        dpkg.join("status"),
        "Package: pv3\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.1.0-1\n\
         Maintainer: pv3 <pv3@example.org>\nDescription: pv3\n",
    )
    .expect("status");
    std::fs::write(
        dpkg.join("info/pv3.list"),
        "/.\n/usr\n/usr/bin\n/usr/bin/pv3\n",
    )
    .expect("list");
    let out = install(&["--root", &root_dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(exec_start(), "/usr/bin/pv3 collect");
    assert!(
        stderr(&out).contains("the service runs /usr/bin/pv3, which the pv3 package installed"),
        "{}",
        show(&out)
    );

    // --binary still chooses.
    let out = install(&["--root", &root_dir, "--binary", &bin], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(exec_start(), format!("{bin} collect"));
}

#[test]
fn install_service_user_unit_goes_to_the_users_config() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let bin = bin_path();
    let out = install(
        &[
            "--user",
            "--root",
            &root_dir,
            "--binary",
            &bin,
            "--mqtt-host",
            "127.0.0.1",
        ],
        &[("HOME", "/home/owner"), ("XDG_CONFIG_HOME", "")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let unit = root
        .path()
        .join("home/owner/.config/systemd/user/pv3-collector.service");
    let env = root.path().join("home/owner/.config/pv3/collector.env");
    let unit_text = std::fs::read_to_string(&unit).expect("user unit");
    assert!(unit_text.contains("EnvironmentFile=-/home/owner/.config/pv3/collector.env"));
    assert!(unit_text.contains("WantedBy=default.target"));
    assert!(!unit_text.contains("DynamicUser"), "not for user units");
    assert_eq!(mode(&env), 0o600);
    let text = stdout(&out);
    assert!(
        text.contains("would run: systemctl --user enable --now --no-block pv3-collector.service")
    );
    assert!(
        text.contains("journalctl --user -u pv3-collector -f"),
        "{text}"
    );
}

#[test]
fn install_service_refuses_without_root() {
    let bin = bin_path();
    let out = install(&["--binary", &bin, "--pretend-non-root"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("sudo") && err.contains("--user"), "{err}");
    assert!(stdout(&out).is_empty());
    let out = install(&["--uninstall", "--pretend-non-root"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // Really not root (a developer's machine): the same, without pretending.
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        let out = install(&["--binary", &bin], &[]);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(stderr(&out).contains("sudo"));
    }
}

/// A new option of `collect` cannot be forgotten by install-service: going
/// by clap's own description of both commands, each option of `collect`
/// either goes to the env file, under the variable install-service takes it
/// from, or is on install-service's skip list with a reason.
#[test]
fn every_collect_option_reaches_the_service_or_is_skipped_on_purpose() {
    use clap::CommandFactory;
    use pv3::cmd::install_service::{Coverage, coverage};

    let cli = pv3::cli::Cli::command();
    let sub = |name: &str| {
        cli.find_subcommand(name)
            .unwrap_or_else(|| panic!("no {name} subcommand"))
    };
    let (collect, install) = (sub("collect"), sub("install-service"));
    let coverage = coverage();
    let mut in_env_file = 0;
    for arg in collect.get_arguments() {
        let flag = format!(
            "--{}",
            arg.get_long().expect("collect takes no positionals")
        );
        let how = coverage
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, how)| how)
            .unwrap_or_else(|| panic!("{flag} is not covered: {coverage:?}"));
        let Coverage::EnvFile(key) = how else {
            assert_ne!(
                how,
                &Coverage::Forgotten,
                "{flag}: give it an env = ... or add it to SKIPPED in src/cmd/install_service/settings.rs"
            );
            continue;
        };
        in_env_file += 1;
        let setter = install
            .get_arguments()
            .find(|a| a.get_env().and_then(|v| v.to_str()) == Some(key.as_str()))
            .unwrap_or_else(|| {
                panic!("{flag} ({key}) goes to the env file, but install-service has no option to set it: flatten its group into InstallServiceArgs")
            });
        assert_eq!(setter.get_id(), arg.get_id(), "{key}");
        assert!(
            setter.get_value_parser().type_id() == arg.get_value_parser().type_id(),
            "{flag}: install-service parses it to another type than collect"
        );
    }
    assert!(in_env_file >= 11, "{coverage:?}");
}

/// The env file as `sh` reads it: systemd's EnvironmentFile= quoting is
/// the same for what pv3 writes.
fn source_env(path: &Path) -> Vec<(String, String)> {
    let script = r#"set -a; . "$1"; for k in MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD MQTT_TLS MQTT_CA_FILE MQTT_CLIENT_ID P3_DEVICE_ID API_URL API_TOKEN API_TIMEOUT; do eval "v=\${$k-__unset__}"; printf '%s=%s\0' "$k" "$v"; done"#;
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(path)
        .env_clear()
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(_, v)| *v != "__unset__")
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn get<'a>(values: &'a [(String, String)], key: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_unit_passes_systemd_analyze() {
    if !have("systemd-analyze") {
        // CI installs it and sets PV3_REQUIRE_MOSQUITTO: a skip there would
        // prove nothing.
        assert!(
            std::env::var_os("PV3_REQUIRE_MOSQUITTO").is_none(),
            "systemd-analyze is required in CI (apt-get install systemd)"
        );
        eprintln!("systemd-analyze is not installed: skipping");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let bin = bin_path();
    let out = install(&["--root", &root_dir, "--binary", &bin], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let unit = root.path().join("etc/systemd/system/pv3-collector.service");

    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let complaints: Vec<String> = String::from_utf8_lossy(&verify.stderr)
        .lines()
        .filter(|l| l.contains("pv3-collector"))
        .map(str::to_owned)
        .collect();
    assert!(
        verify.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security output:\n{text}\n{}",
                String::from_utf8_lossy(&security.stderr)
            )
        });
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");

    // The user unit: `systemd-analyze --user` needs a runtime directory.
    let home = tempfile::tempdir().expect("tempdir");
    let runtime = tempfile::tempdir().expect("tempdir");
    let home_dir = home.path().to_string_lossy().into_owned();
    let out = install(
        &["--user", "--root", &root_dir, "--binary", &bin],
        &[("HOME", home_dir.as_str()), ("XDG_CONFIG_HOME", "")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let user_unit = root
        .path()
        .join(home.path().strip_prefix("/").expect("absolute"))
        .join(".config/systemd/user/pv3-collector.service");
    let verify = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(&user_unit)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env("HOME", home.path())
        .output()
        .expect("systemd-analyze --user verify");
    let err = String::from_utf8_lossy(&verify.stderr);
    if err.contains("Failed to initialize manager") {
        eprintln!("systemd-analyze --user cannot run here: {err}");
        return;
    }
    assert!(
        verify.status.success() && !err.contains("pv3-collector"),
        "systemd-analyze --user verify: {}\n{err}",
        verify.status
    );
}

// ---- generated files ---------------------------------------------------

#[test]
fn generated_files_are_up_to_date() {
    let update = support::generated::updating();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for (target, rel) in pv3::cmd::completions::GENERATED {
        let name = clap::ValueEnum::to_possible_value(target)
            .expect("a visible value")
            .get_name()
            .to_owned();
        let out = run_pv3(&["completions", &name], &[], None);
        assert!(
            out.status.success(),
            "pv3 completions {name}: {}",
            show(&out)
        );
        assert!(out.stdout.len() > 1000, "pv3 completions {name} is short");
        let path = repo.join(rel);
        if update {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("create dir");
            }
            std::fs::write(&path, &out.stdout).expect("write generated file");
            continue;
        }
        match std::fs::read(&path) {
            Ok(on_disk) if on_disk == out.stdout => {}
            _ => stale.push(*rel),
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with the command line: {stale:?}; regenerate with \
         `PV3_UPDATE_GENERATED=1 cargo test --test it ops::generated` and commit them"
    );
    if which("bash") {
        let status = Command::new("bash")
            .arg("-n")
            .arg(repo.join("completions/pv3.bash"))
            .status()
            .expect("bash -n");
        assert!(status.success(), "completions/pv3.bash does not parse");
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_tells_a_killed_collector_at_once() {
    let broker = support::broker::InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_string_lossy().into_owned();
    let collector = support::collect::CollectRun::new(broker.port())
        .api(&api)
        .state_dir(dir.path())
        .spawn();
    collector.subscribed(1).await;
    let (_, report, _) = check_json(&api.url(), &["--state-dir", &state]).await;
    assert_eq!(
        status_of(&report, "collector running"),
        "pass",
        "{report:#}"
    );

    collector.kill().await;
    // status.json is seconds old, but its process is gone.
    let (code, report, out) = check_json(&api.url(), &["--state-dir", &state]).await;
    assert_eq!(code, Some(1), "{}", show(&out));
    assert_eq!(
        status_of(&report, "collector running"),
        "fail",
        "{report:#}"
    );
    let detail = detail_of(&report, "collector running");
    assert!(detail.contains("not running"), "{detail}");
    assert!(detail.contains("journalctl"), "{detail}");
    assert_eq!(status_of(&report, "collector MQTT"), "skip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_names_the_likely_cause() {
    let api = RecordingApi::start().await;
    api.seed_measurement(DEVICE, "soc", 50.0, "%", &rfc3339_ago(1));

    // The backend is up (/, /health answer) but its database is down.
    api.fail_reads(Some(500));
    let (code, report, out) = check_json(&api.url(), &[]).await;
    assert_eq!(code, Some(1), "{}", show(&out));
    assert_eq!(status_of(&report, "health"), "pass", "{report:#}");
    for row in ["device known", "fresh data"] {
        assert_eq!(status_of(&report, row), "fail", "{report:#}");
        assert!(
            detail_of(&report, row).contains("database"),
            "{row}: {report:#}"
        );
    }
    api.fail_reads(None);

    // A base URL with /api on the end: pv3 adds /api itself.
    let url = format!("{}/api", api.url());
    let (code, report, out) = check_json(&url, &[]).await;
    assert_eq!(code, Some(1), "{}", show(&out));
    let detail = detail_of(&report, "device known");
    assert!(detail.contains("base URL"), "{detail}");
    assert!(!detail.contains("collector running"), "{detail}");
}

// ---- a password in --api-url ----------------------------------------------

/// A password inside `--api-url`, which the recording API ignores.
const URL_PASSWORD: &str = "hunter2-in-the-url";

fn url_with_password(port: u16) -> String {
    format!("http://pv3user:{URL_PASSWORD}@127.0.0.1:{port}")
}

fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(URL_PASSWORD),
        "{what} shows the password:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_never_shows_a_password_in_the_api_url() {
    let broker = support::broker::InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let mut pv3 = support::collect::CollectRun::new(broker.port())
        .api_url(url_with_password(api.port()))
        .global_args(&["-vv"])
        .spawn();
    pv3.subscribed(1).await;
    support::broker::publish_charges(broker.port(), 0..3).await;
    pv3.delivered(3).await;
    // The API goes away: the failure is logged, with its URL or not.
    api.stop().await;
    support::broker::publish_charges(broker.port(), 3..6).await;
    assert!(
        pv3.wait_for_stderr_lines(
            1,
            |l| l.contains("API not taking data"),
            Duration::from_secs(30)
        )
        .await,
        "{}",
        pv3.stderr()
    );
    let status = std::fs::read_to_string(pv3.state_dir().join("status.json")).expect("status");
    assert!(status.contains("\"delivered\""), "{status}");
    assert_no_password("status.json", &status);
    pv3.stop_in_place().await;
    assert_no_password("collect's log", &pv3.stderr());
    assert!(
        pv3.stderr().contains("pv3user:***@127.0.0.1"),
        "{}",
        pv3.stderr()
    );
    assert_no_password("collect's stdout", &pv3.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_never_shows_a_password_in_the_api_url() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a.jsonl");
    let ts = Timestamp::now().to_rfc3339();
    std::fs::write(
        &file,
        format!(
            "{{\"ts\":\"{ts}\",\"topic\":\"pv/PV3/{DEVICE}/inverter/charge\",\"qos\":0,\"retain\":false,\"payload\":\"{{\\\"power\\\":5}}\"}}\n"
        ),
    )
    .expect("write capture");
    let file = file.to_str().expect("utf-8");
    // Delivered, then against a closed port (errors), then an URL clap
    // refuses.
    let closed = url_with_password(support::free_port());
    let bad = format!("http://pv3user:{URL_PASSWORD}@127.0.0.1:notaport");
    for (url, code) in [(url_with_password(api.port()), 0), (closed, 1), (bad, 2)] {
        let out = run_pv3_async(
            &["-vv", "replay", file, "--api-url", &url, "--give-up", "1"],
            &[],
        )
        .await;
        assert_eq!(out.status.code(), Some(code), "{}", show(&out));
        assert_no_password("replay", &show(&out));
        if code != 2 {
            assert!(
                stderr(&out).contains("pv3user:***@127.0.0.1"),
                "{}",
                show(&out)
            );
        }
    }
    assert_eq!(api.measurements().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_never_shows_a_password_in_the_api_url() {
    let api = RecordingApi::start().await;
    let empty = tempfile::tempdir().expect("tempdir");
    let state = empty.path().to_string_lossy().into_owned();
    let urls = [
        url_with_password(api.port()),
        // Ends in /api: the device row names the URL.
        format!("{}/api", url_with_password(api.port())),
        url_with_password(support::free_port()),
    ];
    for url in &urls {
        for format in ["table", "json"] {
            let out = run_pv3_async(
                &[
                    "-vv",
                    "check-api",
                    "--api-url",
                    url,
                    "--state-dir",
                    &state,
                    "--format",
                    format,
                ],
                &[],
            )
            .await;
            no_panic(&out);
            assert_no_password("check-api", &show(&out));
        }
    }
}

#[test]
fn install_service_writes_a_password_in_the_api_url_but_never_shows_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_dir = root.path().to_string_lossy().into_owned();
    let bin = bin_path();
    let url = url_with_password(8800);
    for dry_run in [true, false] {
        let mut args = vec!["--root", &root_dir, "--binary", &bin, "--api-url", &url];
        if dry_run {
            args.push("--dry-run");
        }
        let out = install(&args, &[("MQTT_HOST", "127.0.0.1")]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        assert_no_password("install-service", &show(&out));
        if dry_run {
            assert!(
                stdout(&out).contains("API_URL=\"http://pv3user:***@127.0.0.1:8800/\""),
                "{}",
                show(&out)
            );
        }
    }
    let env = root.path().join("etc/pv3/collector.env");
    let values = source_env(&env);
    assert_eq!(
        get(&values, "API_URL"),
        Some(format!("{url}/").as_str()),
        "the service gets the URL as given"
    );
}
