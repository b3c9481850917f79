//! `pv3 replay` as a backfill that can run twice (issue 11): against the
//! recording API, which answers `/history` as the real backend does.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pv3::reading::Timestamp;

use support::api::RecordingApi;
use support::fixtures::DEVICE;
use support::proc::{Pv3Process, run_pv3};

const T: Duration = Duration::from_secs(30);

/// 2026-11-27T00:00:00Z, in microseconds.
const BASE: i64 = 1_795_737_600_000_000;

/// A capture of battery_power readings `range`, reading `i` at BASE + i
/// seconds (so two captures over overlapping ranges overlap exactly).
fn capture(dir: &Path, name: &str, range: std::ops::Range<i64>) -> PathBuf {
    write_capture(dir, name, &lines(range, |_| 0))
}

/// The capture lines of battery_power readings `range`: reading `i` (value
/// `i`) at BASE + i seconds + 123 ms + `shift(i)` milliseconds.
fn lines(range: std::ops::Range<i64>, shift: impl Fn(i64) -> i64) -> Vec<String> {
    range
        .map(|i| {
            let micros = BASE + i * 1_000_000 + 123_000 + shift(i) * 1000;
            let ts = Timestamp::from_unix_micros(micros).to_rfc3339();
            format!(
                "{{\"ts\":\"{ts}\",\"topic\":\"pv/PV3/{DEVICE}/inverter/charge\",\"qos\":0,\"retain\":false,\"payload\":\"{{\\\"power\\\":{i}}}\"}}\n"
            )
        })
        .collect()
}

fn write_capture(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.concat()).expect("write capture");
    path
}

fn replay(api: &RecordingApi, file: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let url = api.url();
    let mut args = vec![
        "replay",
        file.to_str().expect("utf-8"),
        "--api-url",
        &url,
        "--retry-max",
        "0.2",
    ];
    args.extend_from_slice(extra);
    let out = run_pv3(&args, &[], None);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How often the API stored each value.
fn tally(api: &RecordingApi) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for m in api.measurements() {
        if let Some(v) = m["metric_value"].as_f64() {
            *seen.entry(v as i64).or_default() += 1;
        }
    }
    seen
}

fn once_each(api: &RecordingApi, range: std::ops::Range<i64>) {
    let seen = tally(api);
    let expected: BTreeMap<i64, usize> = range.map(|i| (i, 1)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_capture_replayed_twice_is_stored_once() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = capture(dir.path(), "a.jsonl", 0..2000);
    let (code, stderr) = replay(&api, &file, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("2000 measurements delivered, 0 already in the API"),
        "{stderr}"
    );
    let (code, stderr) = replay(&api, &file, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("0 measurements delivered, 2000 already in the API"),
        "{stderr}"
    );
    once_each(&api, 0..2000);
    let queries = api.requests_to("GET", &format!("/api/devices/{DEVICE}/history"));
    // One per 300 s window of capture time: 2000 s, 7 windows, per run.
    assert_eq!(queries.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_captures_store_their_union_once() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yesterday = capture(dir.path(), "yesterday.jsonl", 0..1500);
    let today = capture(dir.path(), "today.jsonl", 1000..3000);
    assert_eq!(replay(&api, &yesterday, &[]).0, Some(0));
    let (code, stderr) = replay(&api, &today, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("1500 measurements delivered, 500 already in the API"),
        "{stderr}"
    );
    once_each(&api, 0..3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_skip_existing_sends_everything_again() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = capture(dir.path(), "a.jsonl", 0..300);
    assert_eq!(replay(&api, &file, &[]).0, Some(0));
    let (code, stderr) = replay(&api, &file, &["--no-skip-existing"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(tally(&api).values().all(|n| *n == 2), "stored twice");
    assert!(
        api.requests_to("GET", &format!("/api/devices/{DEVICE}/history"))
            .len()
            == 1,
        "no history query with --no-skip-existing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_run_again_stores_each_once() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // 600 s of capture at 20x: half a minute, interrupted early.
    let file = capture(dir.path(), "a.jsonl", 0..600);
    let url = api.url();
    let mut first = Pv3Process::spawn(
        &[
            "replay",
            file.to_str().expect("utf-8"),
            "--api-url",
            &url,
            "--speed",
            "20",
        ],
        &[],
    );
    api.wait_for_measurements(40, T).await;
    first.sigint();
    let status = first.wait_exit(T).await.expect("stops");
    let stderr = first.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("resume with --since"), "{stderr}");
    let partial = api.measurements().len();
    assert!(partial < 600, "interrupted early: {partial}");

    // Run again from the start (or from the resume point: either way).
    let (code, stderr) = replay(&api, &file, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("{partial} already in the API")),
        "{stderr}"
    );
    once_each(&api, 0..600);
}

/// With the API down, a signal stops replay promptly, with a summary and
/// exit code 1.
async fn a_signal_stops_a_replay_waiting_for_the_api(sigterm: bool) {
    let api = RecordingApi::start().await;
    api.stop().await; // connections refused
    let dir = tempfile::tempdir().expect("tempdir");
    let file = capture(dir.path(), "a.jsonl", 0..500);
    let url = api.url();
    let mut replay = Pv3Process::spawn(
        &["replay", file.to_str().expect("utf-8"), "--api-url", &url],
        &[],
    );
    // Waiting for the API: it has tried at least once.
    assert!(
        support::wait_for(T, || replay.stderr().contains("cannot ask the API")).await,
        "{}",
        replay.stderr()
    );
    let signalled = Instant::now();
    if sigterm {
        replay.sigterm();
    } else {
        replay.sigint();
    }
    let status = replay
        .wait_exit(Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("still running 3 s after the signal:\n{}", replay.stderr()));
    eprintln!(
        "stopped {:.2} s after the signal",
        signalled.elapsed().as_secs_f64()
    );
    let stderr = replay.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("replay of"), "a summary: {stderr}");
    // Nothing was delivered: everything decoded is undelivered (all 500,
    // unless the signal came before the reader had read them all, which
    // the summary then says).
    let decoded = number_before(&stderr, " measurements decoded");
    assert_eq!(number_before(&stderr, " undelivered;"), decoded, "{stderr}");
    assert!(
        decoded == 500 || stderr.contains("not read to its end"),
        "{stderr}"
    );
    assert!(stderr.contains("resume with --since"), "{stderr}");
}

/// The number just before `marker` in a summary line.
fn number_before(text: &str, marker: &str) -> u64 {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker}: {text}"));
    text[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number before {marker}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_a_replay_waiting_for_the_api() {
    a_signal_stops_a_replay_waiting_for_the_api(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_replay_waiting_for_the_api() {
    a_signal_stops_a_replay_waiting_for_the_api(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_base_url_fails_at_once_with_the_hint() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = capture(dir.path(), "a.jsonl", 0..100);
    let url = format!("{}/api", api.url());
    let started = Instant::now();
    let out = run_pv3(
        &["replay", file.to_str().expect("utf-8"), "--api-url", &url],
        &[],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--api-url"), "{stderr}");
    assert!(stderr.contains("100 undelivered"), "{stderr}");
    // Well inside --give-up (300 s): it did not retry the 404s.
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
}

#[test]
fn a_capture_with_nothing_usable_is_an_error_for_a_backfill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk.jsonl");
    std::fs::write(&path, "not json\n{\"also\": \"not a record\"}\n").expect("write");
    let url = format!("http://127.0.0.1:{}", support::free_port());
    let out = run_pv3(
        &["replay", path.to_str().expect("utf-8"), "--api-url", &url],
        &[],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing to send"), "{stderr}");
}

/// Issue 10, defect 8: a replay that gives up accounts for every
/// measurement (delivered + undelivered = decoded) and says where to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_gives_up_accounts_for_every_measurement() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = capture(dir.path(), "a.jsonl", 0..5000);
    let url = api.url();
    let mut first = Pv3Process::spawn(
        &[
            "replay",
            file.to_str().expect("utf-8"),
            "--api-url",
            &url,
            "--batch-size",
            "100",
            "--give-up",
            "2",
            "--retry-max",
            "0.2",
        ],
        &[],
    );
    // Part of it arrives, then the API fails for good.
    api.wait_for_measurements(300, T).await;
    api.fail_all(503);
    let status = first.wait_exit(T).await.expect("gives up");
    let stderr = first.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let stored = api.measurements().len() as u64;
    let number = |marker: &str| number_before(&stderr, marker);
    let decoded = number(" measurements decoded");
    let delivered = number(" measurements delivered");
    let undelivered = number(" undelivered;");
    assert_eq!(delivered, stored, "{stderr}");
    assert_eq!(delivered + undelivered, decoded, "{stderr}");
    if decoded < 5000 {
        assert!(stderr.contains("not read to its end"), "{stderr}");
    }
    assert!(stderr.contains("resume with --since"), "{stderr}");
    // Resuming from there with the API back stores the rest, once.
    api.recover();
    let since = stderr
        .split("resume with --since ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a time");
    let (code, stderr) = replay(&api, &file, &["--since", since]);
    assert_eq!(code, Some(0), "{stderr}");
    once_each(&api, 0..5000);
}

/// Issue 19: a `201 {"created": n}` with fewer than were sent is reported in
/// the summary (and not sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_says_it_created_fewer_is_reported_in_the_summary() {
    let api = RecordingApi::start().await;
    api.create_at_most(Some(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = capture(dir.path(), "a.jsonl", 0..10);
    let (code, stderr) = replay(&api, &file, &["--batch-size", "5", "--concurrency", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("10 measurements delivered"), "{stderr}");
    assert!(
        stderr.contains("the API said it created 8 fewer than it was sent"),
        "{stderr}"
    );
    assert_eq!(api.requests_to("POST", "/api/devices").len(), 2);
    assert_eq!(api.measurements().len(), 2);
}

/// Issue 19: `cat a a > b; pv3 replay b` stored every measurement twice
/// (skip-existing only asked what the API held before the run). A small
/// capture (both copies in one window of capture time) and a larger one
/// (the second copy in later windows than the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_holding_every_record_twice_stores_each_once() {
    for n in [100, 1500] {
        let api = RecordingApi::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let once = lines(0..n, |_| 0);
        let file = write_capture(dir.path(), "twice.jsonl", &[once.clone(), once].concat());
        let (code, stderr) = replay(&api, &file, &[]);
        assert_eq!(code, Some(0), "{stderr}");
        once_each(&api, 0..n);
        let n = n as u64;
        assert_eq!(
            number_before(&stderr, " measurements delivered"),
            n,
            "{stderr}"
        );
        let skipped = number_before(&stderr, " already in the API")
            + number_before(&stderr, " repeated in the capture");
        assert_eq!(skipped, n, "{stderr}");
        // The second copy of the larger one is in windows of its own: it
        // was checked against the API once the first copy was stored.
        assert_eq!(
            stderr.contains("waits for what was sent"),
            n > 300,
            "{stderr}"
        );
    }
}

/// Issue 19: a `pv3 sniff` capture taken beside a live `collect` holds the
/// same readings 1–5 ms apart (two processes' receive times); replaying it
/// after the collector's data stored near-duplicates. A reading matches one
/// already stored when metric and value are equal and the times differ by
/// less than 250 ms, before or after; 300 ms apart is another reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sniff_taken_beside_collect_adds_nothing() {
    let n = 700;
    let collected = lines(0..n, |_| 0);
    let sniffed = lines(0..n, |i| (i % 11) - 5);
    let dir = tempfile::tempdir().expect("tempdir");

    // The collector's readings are in the API; the sniff adds nothing.
    let api = RecordingApi::start().await;
    let file = write_capture(dir.path(), "collected.jsonl", &collected);
    assert_eq!(replay(&api, &file, &[]).0, Some(0));
    let file = write_capture(dir.path(), "sniffed.jsonl", &sniffed);
    let (code, stderr) = replay(&api, &file, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("0 measurements delivered, {n} already in the API")),
        "{stderr}"
    );
    once_each(&api, 0..n);

    // Both in one file, one after the other or line by line: once each.
    let interleaved: Vec<String> = collected
        .iter()
        .zip(&sniffed)
        .flat_map(|(a, b)| [b.clone(), a.clone()])
        .collect();
    for (name, both) in [
        ("after.jsonl", [collected.clone(), sniffed.clone()].concat()),
        ("interleaved.jsonl", interleaved),
    ] {
        let api = RecordingApi::start().await;
        let file = write_capture(dir.path(), name, &both);
        let (code, stderr) = replay(&api, &file, &[]);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        once_each(&api, 0..n);
    }

    // 300 ms apart: beyond the tolerance, stored.
    let api = RecordingApi::start().await;
    let file = write_capture(dir.path(), "collected.jsonl", &collected);
    assert_eq!(replay(&api, &file, &[]).0, Some(0));
    let later = write_capture(dir.path(), "later.jsonl", &lines(0..n, |_| 300));
    let (code, stderr) = replay(&api, &later, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("{n} measurements delivered, 0 already in the API")),
        "{stderr}"
    );
}

/// The `--since` a summary says to resume with.
fn resume_since(stderr: &str) -> String {
    stderr
        .split("resume with --since ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no resume hint: {stderr}"))
        .trim_end_matches(';')
        .to_owned()
}

/// Issue 19: after Ctrl-C the printed `resume with --since T` could be later
/// than readings handed to the forwarder but not yet batched: resuming with
/// it left 1 of 2321 never stored. Interrupted at several points, resumed
/// with the printed `--since`: every measurement stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumed_with_its_since_stores_each_once() {
    let n = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = capture(dir.path(), "a.jsonl", 0..n);
    let path = file.to_str().expect("utf-8");
    // Paced, so that the signal finds windows part read, part handed over.
    for at in [350, 700, 1000, 1300] {
        let api = RecordingApi::start().await;
        let url = api.url();
        let mut first =
            Pv3Process::spawn(&["replay", path, "--api-url", &url, "--speed", "300"], &[]);
        api.wait_for_measurements(at, T).await;
        first.sigint();
        let status = first.wait_exit(T).await.expect("stops");
        let stderr = first.stderr();
        if status.code() == Some(0) {
            continue; // finished before the signal: nothing to resume
        }
        assert_eq!(status.code(), Some(1), "{stderr}");
        let since = resume_since(&stderr);
        let (code, again) = replay(&api, &file, &["--since", &since]);
        assert_eq!(code, Some(0), "{again}");
        let seen = tally(&api);
        let missing: Vec<i64> = (0..n).filter(|i| !seen.contains_key(i)).collect();
        let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            missing.is_empty() && twice.is_empty(),
            "interrupted after {at}, resumed from {since}: never stored {missing:?}, stored more than once {twice:?}\n{stderr}\n{again}"
        );
    }
}

/// Issue 19: an API that stalls longer than `--api-timeout` stored some
/// batches 3, 4 and 5 times. After a POST times out, every retry asks
/// `/history` first, so a stall of 30 s at `--api-timeout 3` stores a batch
/// at most twice, and everything at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_api_stores_a_batch_at_most_twice() {
    let api = RecordingApi::start().await;
    // The whole API (its database) stalls for 30 s from the first POST.
    api.stall_next_post(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 2000;
    let file = capture(dir.path(), "a.jsonl", 0..n);
    let (code, stderr) = replay(&api, &file, &["--api-timeout", "3", "--batch-size", "100"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("timed out"), "the stall was seen: {stderr}");
    // Every POST sent during the stall is stored when it ends.
    api.wait_idle(Duration::from_secs(60)).await;
    let seen = tally(&api);
    let missing: Vec<i64> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    let over: Vec<_> = seen.iter().filter(|(_, c)| **c > 2).collect();
    let twice = seen.values().filter(|c| **c == 2).count();
    println!("after a 30 s stall: {twice} of {n} measurements stored twice");
    assert!(missing.is_empty(), "never stored: {missing:?}\n{stderr}");
    assert!(
        over.is_empty(),
        "{} stored more than twice: {over:?}\n{stderr}",
        over.len()
    );
}

/// The resume hint is a `--since` only for a capture in time order: in one
/// that is not, what was not read may be older than anything read.
#[test]
fn a_capture_out_of_time_order_gets_no_since() {
    let dir = tempfile::tempdir().expect("tempdir");
    let forwards = lines(0..100, |_| 0);
    let mut backwards = forwards.clone();
    backwards.reverse();
    // Nothing listens: the replay gives up after a second, resume hint and all.
    let url = format!("http://127.0.0.1:{}", support::free_port());
    for (name, capture, in_order) in [
        ("forwards.jsonl", forwards, true),
        ("backwards.jsonl", backwards, false),
    ] {
        let file = write_capture(dir.path(), name, &capture);
        let out = run_pv3(
            &[
                "replay",
                file.to_str().expect("utf-8"),
                "--api-url",
                &url,
                "--give-up",
                "1",
            ],
            &[],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.contains("resume with --since"), in_order, "{stderr}");
        assert_eq!(stderr.contains("not in time order"), !in_order, "{stderr}");
    }
}
