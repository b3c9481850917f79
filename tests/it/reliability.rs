//! "A reading that reached pv3 reaches the API": outages, kills, restarts,
//! a cut broker link, a full spool, refused batches, hostile input.
//! Every test checks that every reading arrives, in order.

use crate::support;

use std::path::Path;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;

use support::api::RecordingApi;
use support::broker::{InProcessBroker, Publisher, TestBroker, publish_charges};
use support::collect::{CollectRun, number};
use support::fixtures::DEVICE;
use support::on_both_brokers;
use support::proxy::TcpProxy;

const T: Duration = Duration::from_secs(30);

/// `collect` keeping its state in `state`, with debug logs (shown when a
/// test fails).
fn collect(broker_port: u16, api_url: &str, state: &Path) -> CollectRun {
    CollectRun::new(broker_port)
        .api_url(api_url)
        .state_dir(state)
        .env("RUST_LOG", "pv3=debug")
}

fn powers(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .filter(|m| m["metric_name"] == "battery_power")
        .filter_map(|m| m["metric_value"].as_f64())
        .map(|v| v as i64)
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthy_path_writes_only_the_status_file() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    publish_charges(broker.port(), 0..50).await;
    api.wait_for_measurements(50, T).await;
    let stderr = pv3.stop().await;
    assert!(!stderr.contains("spooling"), "{stderr}");
    assert_eq!(files_in(state.path()), ["status.json"]);
    let status: Value =
        serde_json::from_slice(&std::fs::read(state.path().join("status.json")).expect("read"))
            .expect("json");
    assert_eq!(status["counters"]["received"], 50);
    assert_eq!(status["counters"]["delivered"], 50);
    assert_eq!(status["spool_measurements"], 0);
    assert!(status["last_delivery_at"].is_string(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_refusing_connections_for_a_while_loses_nothing() {
    let broker = InProcessBroker::start().await;
    let mut api = RecordingApi::start().await;
    api.stop().await;
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    publish_charges(broker.port(), 0..100).await;
    pv3.spool_holds(100).await;
    assert!(files_in(state.path()).contains(&"spool.redb".to_string()));
    api.restart().await;
    api.wait_for_measurements(100, T).await;
    pv3.spool_drained().await;
    publish_charges(broker.port(), 100..110).await;
    api.wait_for_measurements(110, T).await;
    pv3.stop().await;
    assert_eq!(powers(&api.measurements()), (0..110).collect::<Vec<_>>());
    // Drained spools are deleted: nothing left on the SD card.
    assert_eq!(files_in(state.path()), ["status.json"]);
}

on_both_brokers!(a_503_outage_spools_and_drains_in_order);
async fn a_503_outage_spools_and_drains_in_order(broker: TestBroker) {
    let api = RecordingApi::start().await;
    api.fail_all(503);
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    publish_charges(broker.port(), 0..60).await;
    pv3.spool_holds(60).await;
    api.recover();
    api.wait_for_measurements(60, T).await;
    let stderr = pv3.stop().await;
    assert_eq!(powers(&api.measurements()), (0..60).collect::<Vec<_>>());
    assert!(stderr.contains("spooling to"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_full_spool_then_restart_delivers_everything() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.fail_all(503);
    let state = tempfile::tempdir().expect("tempdir");
    let first = collect(broker.port(), &api.url(), state.path()).spawn();
    first.subscribed(1).await;
    publish_charges(broker.port(), 0..80).await;
    first.spool_holds(80).await;
    first.kill().await;

    api.recover();
    let second = collect(broker.port(), &api.url(), state.path()).spawn();
    api.wait_for_measurements(80, T).await;
    second.subscribed(1).await;
    publish_charges(broker.port(), 80..90).await;
    api.wait_for_measurements(90, T).await;
    let stderr = second.stop().await;
    assert!(stderr.contains("from an earlier run"), "{stderr}");
    assert_eq!(powers(&api.measurements()), (0..90).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_outage_keeps_memory_in_the_spool() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.fail_all(503);
    let state = tempfile::tempdir().expect("tempdir");
    // A long linger: the last readings are still in memory at SIGTERM.
    let first = collect(broker.port(), &api.url(), state.path())
        .linger_ms(60_000)
        .args(&["--batch-size", "10"])
        .spawn();
    first.subscribed(1).await;
    publish_charges(broker.port(), 0..25).await;
    // 20 in two full batches (one failed, then spooled), 5 in memory.
    first.spool_holds(20).await;
    first.received(25).await;
    let stderr = first.stop().await;
    assert!(stderr.contains("25 left in the spool"), "{stderr}");

    api.recover();
    let second = collect(broker.port(), &api.url(), state.path()).spawn();
    api.wait_for_measurements(25, T).await;
    second.stop().await;
    assert_eq!(powers(&api.measurements()), (0..25).collect::<Vec<_>>());
}

on_both_brokers!(a_cut_broker_link_is_restored);
async fn a_cut_broker_link_is_restored(broker: TestBroker) {
    let api = RecordingApi::start().await;
    let proxy = TcpProxy::start(broker.port()).await;
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(proxy.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    publish_charges(broker.port(), 0..10).await;
    api.wait_for_measurements(10, T).await;
    proxy.cut();
    pv3.wait_status("a lost broker link", |s| s["broker_connected"] == false)
        .await;
    proxy.restore();
    pv3.subscribed(2).await;
    publish_charges(broker.port(), 10..20).await;
    api.wait_for_measurements(20, T).await;
    pv3.stop().await;
    assert_eq!(powers(&api.measurements()), (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mosquitto_restart_is_survived() {
    let Some(mut broker) = TestBroker::mosquitto().await else {
        return;
    };
    let api = RecordingApi::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    publish_charges(broker.port(), 0..5).await;
    api.wait_for_measurements(5, T).await;
    broker.restart().await;
    pv3.subscribed(2).await;
    publish_charges(broker.port(), 5..10).await;
    api.wait_for_measurements(10, T).await;
    pv3.stop().await;
    assert_eq!(powers(&api.measurements()), (0..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_reconnected_by_the_watchdog() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path())
        .args(&["--stale-after", "0.5"])
        .spawn();
    pv3.subscribed(2).await;
    // Logged before the second subscription; the wait only covers the
    // reader thread catching up with the pipe.
    assert!(
        pv3.wait_for_stderr("connected but no message", T).await,
        "{}",
        pv3.stderr()
    );
    publish_charges(broker.port(), 0..3).await;
    api.wait_for_measurements(3, T).await;
    pv3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_and_says_how_many() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.fail_all(503);
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path())
        .args(&["--spool-max-mb", "1", "--batch-size", "100"])
        .spawn();
    pv3.subscribed(1).await;
    // 100 CT readings a message, ~150 bytes of JSON each: 100 messages
    // ≈ 1.5 MB, past the 1 MiB limit.
    let item = r#"{"channel":"LOCAL","measurement":"Power","type":"Active","value":VALUE}"#;
    let publisher = Publisher::connect(broker.port()).await;
    for m in 0..100 {
        let items: Vec<String> = (0..100)
            .map(|i| item.replace("VALUE", &((m * 100 + i) * 1000).to_string()))
            .collect();
        publisher
            .publish(
                &format!("pv/PV3/{DEVICE}/ffr/measurements"),
                format!("[{}]", items.join(",")),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    pv3.wait_status("a full spool and all 100 messages in", |s| {
        number(s, "counters.dropped").is_some_and(|n| n > 0)
            && number(s, "counters.received") == Some(100)
    })
    .await;
    api.recover();
    let stderr_so_far = pv3.stderr();
    // Wait until drained, then compare what arrived with what was dropped.
    pv3.spool_drained().await;
    let stderr = pv3.stop().await;
    assert!(stderr.contains("spool full"), "{stderr}");
    let dropped: u64 = stderr
        .lines()
        .find(|l| l.contains("stopped:"))
        .and_then(|l| l.split(" rejected, ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count:\n{stderr}"));
    assert!(dropped > 0, "{stderr_so_far}");
    let got: Vec<i64> = api
        .measurements()
        .iter()
        .filter_map(|m| m["metric_value"].as_f64())
        .map(|v| v as i64)
        .collect();
    assert_eq!(
        got.len() as u64 + dropped,
        10_000,
        "delivered + dropped = all"
    );
    // The oldest were dropped: what arrived is the newest, in order.
    let first = 10_000 - got.len() as i64;
    assert_eq!(got, (first..10_000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_422_goes_to_rejected_jsonl_and_delivery_goes_on() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.fail_next(1, 422);
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    publish_charges(broker.port(), 0..1).await;
    api.wait_for_requests(1, T).await;
    publish_charges(broker.port(), 1..3).await;
    api.wait_for_measurements(2, T).await;
    pv3.stop().await;
    assert_eq!(powers(&api.measurements()), [1, 2]);
    let text = std::fs::read_to_string(state.path().join("rejected.jsonl")).expect("dead letters");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 422);
    assert_eq!(lines[0]["device_id"], DEVICE);
    assert!(
        lines[0]["response"]
            .as_str()
            .unwrap_or("")
            .contains("injected")
    );
    assert_eq!(powers(lines[0]["body"].as_array().expect("the batch")), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_is_moved_aside_and_collection_goes_on() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        state.path().join("spool.redb"),
        b"torn write, not a database",
    )
    .expect("write");
    let pv3 = collect(broker.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    publish_charges(broker.port(), 0..3).await;
    api.wait_for_measurements(3, T).await;
    let stderr = pv3.stop().await;
    assert!(stderr.contains("moved aside"), "{stderr}");
    assert!(
        files_in(state.path())
            .iter()
            .any(|f| f.starts_with("spool.redb.corrupt-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_bad_messages_do_not_take_collect_down() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let pv3 = collect(broker.port(), &api.url(), state.path()).spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    let hostile: Vec<Vec<u8>> = vec![
        b"NaN".to_vec(),
        b"{\"power\":\"NaN\"}".to_vec(),
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
        vec![0xff; 1000],
        format!("{{\"power\":1{}}}", "0".repeat(400)).into_bytes(),
        b"\"just a string\"".to_vec(),
    ];
    for n in 0..3000 {
        let payload = hostile[n % hostile.len()].clone();
        let suffix = ["inverter/charge", "bms/soc", "inverter/alarms"][n % 3];
        publisher
            .publish(
                &format!("pv/PV3/{DEVICE}/{suffix}"),
                payload,
                QoS::AtMostOnce,
                false,
            )
            .await;
    }
    publish_charges(broker.port(), 0..3).await;
    api.wait_for_measurements(3, T).await;
    let stderr = pv3.stop().await;
    assert_eq!(powers(&api.measurements()), [0, 1, 2]);
    // Rate-limited: at most one line per topic a minute.
    let lines = stderr.matches("skipped a message").count();
    assert!((1..=3).contains(&lines), "{lines} warning lines:\n{stderr}");
}

on_both_brokers!(two_collectors_in_a_share_group_split_the_traffic);
async fn two_collectors_in_a_share_group_split_the_traffic(broker: TestBroker) {
    let api = RecordingApi::start().await;
    let (state_a, state_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let group = ["--share-group", "pv3"];
    let a = collect(broker.port(), &api.url(), state_a.path())
        .args(&group)
        .spawn();
    let b = collect(broker.port(), &api.url(), state_b.path())
        .args(&group)
        .spawn();
    a.subscribed(1).await;
    b.subscribed(1).await;
    assert!(
        a.wait_for_stderr("$share/pv3/pv/PV3/", T).await,
        "{}",
        a.stderr()
    );
    publish_charges(broker.port(), 0..200).await;
    api.wait_for_measurements(200, T).await;
    let (stderr_a, stderr_b) = (a.stop().await, b.stop().await);
    // Every reading exactly once, across the two.
    let mut got = powers(&api.measurements());
    got.sort_unstable();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    // Each took a share.
    let delivered = |stderr: &str| -> u64 {
        stderr
            .lines()
            .find(|l| l.contains("stopped:"))
            .and_then(|l| l.split("messages received, ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no delivered count:\n{stderr}"))
    };
    let (da, db) = (delivered(&stderr_a), delivered(&stderr_b));
    assert_eq!(da + db, 200);
    assert!(da > 0 && db > 0, "a took {da}, b took {db}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_collector_on_the_same_state_dir_is_refused() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let first = collect(broker.port(), &api.url(), state.path()).spawn();
    first.subscribed(1).await;
    let mut second = collect(broker.port(), &api.url(), state.path()).spawn();
    let status = second.wait_exit(T).await.expect("refused at once");
    assert_eq!(status.code(), Some(2), "{}", second.stderr());
    assert!(
        second.stderr().contains("is another pv3 collect running"),
        "{}",
        second.stderr()
    );
    first.stop().await;
}

/// What pv3 told "systemd": the datagrams on a NOTIFY_SOCKET of our own.
struct FakeSystemd {
    socket: std::os::unix::net::UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        FakeSystemd {
            socket,
            _dir: dir,
            path,
        }
    }

    /// The next message, waiting at most `timeout` (blocking read with a
    /// timeout: the event, not a sleep).
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("set timeout");
        let mut buf = [0u8; 4096];
        self.socket
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_only_while_data_flows_and_stopping() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let systemd = FakeSystemd::new();
    let socket = systemd.path.to_str().expect("utf-8");
    let mut pv3 = collect(broker.port(), &api.url(), state.path())
        .env("NOTIFY_SOCKET", socket)
        // A 0.4 s watchdog: pv3 pings every 0.2 s, but only while messages
        // flow.
        .env("WATCHDOG_USEC", "400000")
        .spawn();
    let ready = tokio::task::block_in_place(|| systemd.next(T));
    assert_eq!(ready.as_deref(), Some("READY=1\n"), "{}", pv3.stderr());
    // status.json is written before READY is sent, so it is there to read
    // (the log line, from another thread's pipe, may not be yet).
    let subscriptions = pv3.status().and_then(|s| number(&s, "subscriptions"));
    assert!(
        subscriptions.is_some_and(|n| n >= 1),
        "READY only once subscribed: {subscriptions:?}"
    );
    // No data yet: no watchdog pings (a silent P3 gets the service restarted).
    let quiet = tokio::task::block_in_place(|| systemd.next(Duration::from_secs(1)));
    assert_eq!(quiet, None, "a watchdog ping before any message");
    publish_charges(broker.port(), 0..1).await;
    let ping = tokio::task::block_in_place(|| systemd.next(T));
    assert_eq!(ping.as_deref(), Some("WATCHDOG=1\n"));
    api.wait_for_measurements(1, T).await;
    pv3.sigterm();
    let stopping = tokio::task::block_in_place(|| {
        loop {
            match systemd.next(T) {
                Some(m) if m == "WATCHDOG=1\n" => continue,
                other => break other,
            }
        }
    });
    assert_eq!(stopping.as_deref(), Some("STOPPING=1\n"));
    assert!(pv3.wait_exit(T).await.expect("exits").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_retained_message_is_named_and_reconnects_back_off() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    // 17 MiB, over pv3's 16 MiB packet limit: every connect receives it
    // again right after subscribing.
    broker.set_retained(
        &format!("pv/PV3/{DEVICE}/bms/module/dump"),
        bytes::Bytes::from(vec![b'x'; 17 << 20]),
    );
    let pv3 = CollectRun::new(broker.port())
        .api(&api)
        .reconnect_max("8")
        .global_args(&["-vv"])
        .spawn();
    // Four failed links in a row...
    assert!(
        support::wait_for(T, || broker.connects() >= 4).await,
        "{}",
        pv3.stderr()
    );
    let stderr = pv3.stop().await;
    // ...named, with the size and what to do, once.
    assert!(stderr.contains("larger than the 16 MiB"), "{stderr}");
    assert!(
        stderr.contains("mosquitto_pub -h HOST -r -n -t"),
        "{stderr}"
    );
    // The waits between them grow: no reconnect loop at a fixed rate.
    let delays: Vec<f64> = stderr
        .lines()
        .filter_map(|l| l.split(" in ").nth(1))
        .filter_map(|rest| rest.split(" s").next())
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert!(delays.len() >= 3, "{delays:?}\n{stderr}");
    // Jittered ("equal jitter": each wait is half its step plus a random
    // share of the other half), so consecutive waits may be equal; over
    // three doublings they must have at least doubled.
    let (first, last) = (delays[0], delays[delays.len() - 1]);
    assert!(last >= first * 2.0, "{delays:?}");
}
