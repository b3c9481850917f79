//! `pv3 collect` end to end: a real broker (in-process, and Mosquitto when
//! installed) carries messages to the pv3 binary, and a recording HTTP server
//! on loopback receives what it sends.

use crate::support;

use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;

use support::api::{RecordingApi, parse_rfc3339_nanos};
use support::broker::{InProcessBroker, Publisher, TestBroker};
use support::collect::{CollectRun, Collector};
use support::fixtures::{
    DEVICE, EVERY_TOPIC_EXPECTED, every_topic, every_topic_alarms, every_topic_expected_keys,
    measurement_keys,
};
use support::proc::run_pv3;
use support::{now_nanos, on_both_brokers};

/// Generous: these machines are shared and slow. Waits end on the event,
/// not on this.
const T: Duration = Duration::from_secs(20);

/// `collect` from `broker_port` to `api`, with the harness's defaults.
fn collect(broker_port: u16, api: &RecordingApi) -> CollectRun {
    CollectRun::new(broker_port).api(api)
}

fn charge(power: i64) -> Vec<u8> {
    format!(r#"{{"power":{power}}}"#).into_bytes()
}

fn values_of(items: &[Value], metric: &str) -> Vec<f64> {
    items
        .iter()
        .filter(|m| m["metric_name"] == metric)
        .filter_map(|m| m["metric_value"].as_f64())
        .collect()
}

// --------------------------------------------------------------------------

on_both_brokers!(every_topic_reaches_the_api_exactly);
async fn every_topic_reaches_the_api_exactly(broker: TestBroker) {
    let api = RecordingApi::start().await;
    let pv3 = collect(broker.port(), &api).spawn();
    pv3.subscribed(1).await;

    let publisher = Publisher::connect(broker.port()).await;
    let before = now_nanos();
    for record in every_topic() {
        publisher
            .publish(&record.topic, record.payload, QoS::AtLeastOnce, false)
            .await;
    }
    api.wait_for_measurements(EVERY_TOPIC_EXPECTED.len(), T)
        .await;
    api.wait_for_alarms(1, T).await;
    let stderr = pv3.stop().await;
    let after = now_nanos();

    // Exactly the expected measurements: none missing, none extra.
    let got = api.measurements();
    assert_eq!(measurement_keys(&got), every_topic_expected_keys(DEVICE));
    for m in &got {
        let fields: Vec<&String> = m.as_object().expect("object").keys().collect();
        assert_eq!(
            fields.len(),
            6,
            "metric_name, metric_value, unit, source_topic, timestamp (+ device_id from the URL): {m}"
        );
        let ts = m["timestamp"].as_str().expect("timestamp is a string");
        assert!(ts.ends_with('Z'), "UTC timestamp: {ts}");
        let nanos = parse_rfc3339_nanos(ts).expect("RFC 3339");
        // Stamped at receipt (millisecond precision, truncated).
        assert!(
            nanos >= before - 1_000_000 && nanos <= after,
            "timestamp {ts} outside the test's window"
        );
    }
    assert_eq!(
        api.alarms(),
        vec![(DEVICE.to_string(), every_topic_alarms())]
    );
    for req in api.requests() {
        assert_eq!(req.method, "POST");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("authorization"), None);
        assert!(
            req.path == format!("/api/devices/{DEVICE}/measurements/batch")
                || req.path == format!("/api/devices/{DEVICE}/alarms"),
            "unexpected request {}",
            req.path
        );
    }
    assert!(!stderr.contains("WARN"), "no warnings expected:\n{stderr}");
}

on_both_brokers!(every_device_with_plus_posts_to_each_devices_url);
async fn every_device_with_plus_posts_to_each_devices_url(broker: TestBroker) {
    let api = RecordingApi::start().await;
    // The old unit file's environment variables, not flags.
    let pv3 = collect(broker.port(), &api)
        .settings_in_env()
        .env("P3_DEVICE_ID", "+")
        .spawn();
    pv3.subscribed(1).await;
    assert!(
        pv3.wait_for_stderr("subscribed to pv/PV3/+/#", T).await,
        "{}",
        pv3.stderr()
    );
    let publisher = Publisher::connect(broker.port()).await;
    publisher
        .publish(
            "pv/PV3/DEVA/inverter/charge",
            charge(100),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    publisher
        .publish(
            "pv/PV3/DEVB/inverter/charge",
            charge(200),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    publisher
        .publish("other/topic", charge(300), QoS::AtLeastOnce, false)
        .await;
    api.wait_for_measurements(2, T).await;
    pv3.stop().await;

    let mut by_device = api.device_values();
    by_device.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_device,
        vec![("DEVA".to_string(), 100.0), ("DEVB".to_string(), 200.0)]
    );
    let mut paths: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/devices/DEVA/measurements/batch",
            "/api/devices/DEVB/measurements/batch"
        ]
    );
}

on_both_brokers!(a_broker_that_appears_later_is_picked_up);
async fn a_broker_that_appears_later_is_picked_up(mut broker: TestBroker) {
    let api = RecordingApi::start().await;
    broker.stop().await;
    let pv3 = collect(broker.port(), &api).spawn();
    assert!(
        pv3.wait_for_stderr("reconnecting in", T).await,
        "no reconnect warning:\n{}",
        pv3.stderr()
    );
    broker.restart().await;
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    publisher
        .publish(
            &format!("pv/PV3/{DEVICE}/inverter/charge"),
            charge(42),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    let got = api.wait_for_measurements(1, T).await;
    assert_eq!(values_of(&got, "battery_power"), [42.0]);
    let stderr = pv3.stop().await;
    // Backoff, not a hot loop: a handful of attempts, each logged once.
    assert_eq!(
        stderr.matches("reconnecting in").count(),
        1,
        "one warning per outage:\n{stderr}"
    );
}

on_both_brokers!(an_api_answering_503_loses_nothing);
async fn an_api_answering_503_loses_nothing(broker: TestBroker) {
    let api = RecordingApi::start().await;
    api.fail_all(503);
    let pv3 = collect(broker.port(), &api).linger_ms(20).spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
    for power in 0..20 {
        publisher
            .publish(&topic, charge(power), QoS::AtLeastOnce, false)
            .await;
    }
    // Several refused attempts, then the API comes back.
    api.wait_for_requests(3, T).await;
    assert!(api.measurements().is_empty());
    api.recover();
    let got = api.wait_for_measurements(20, T).await;
    // The API has them; wait until collect has its answer too, or SIGTERM
    // may abandon that POST (at-least-once) before the recovery is logged.
    pv3.delivered(20).await;
    let stderr = pv3.stop().await;

    // Every reading, once, in the order received.
    let expected: Vec<f64> = (0..20).map(f64::from).collect();
    assert_eq!(values_of(&api.measurements(), "battery_power"), expected);
    assert_eq!(got.len(), 20);
    assert!(stderr.contains("API not taking data"), "{stderr}");
    assert!(stderr.contains("API is taking data again"), "{stderr}");
}

on_both_brokers!(a_one_megabyte_payload_does_not_break_the_link);
async fn a_one_megabyte_payload_does_not_break_the_link(broker: TestBroker) {
    let api = RecordingApi::start().await;
    let pv3 = collect(broker.port(), &api).spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    let big = vec![b'x'; 1 << 20];
    publisher
        .publish(
            &format!("pv/PV3/{DEVICE}/m4/pylontech_alerts"),
            big.clone(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    publisher
        .publish(
            &format!("pv/PV3/{DEVICE}/bms/soc"),
            big,
            QoS::AtLeastOnce,
            false,
        )
        .await;
    publisher
        .publish(
            &format!("pv/PV3/{DEVICE}/inverter/charge"),
            charge(7),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    let got = api.wait_for_measurements(1, T).await;
    assert_eq!(values_of(&got, "battery_power"), [7.0]);
    let stderr = pv3.stop().await;
    assert!(
        !stderr.contains("reconnecting"),
        "the link must survive:\n{stderr}"
    );
    // Refused unread: a megabyte is more than any P3 message.
    assert!(
        stderr.contains(&format!(
            "bms/soc: payload of {} bytes is larger than any P3 message",
            1 << 20
        )),
        "{stderr}"
    );
}

// ----------------------------------------------- in-process broker only --

/// Issue 19: `201 {"created": 0}` was counted as delivered without a word.
/// Now a warning, and a count in status.json and the stop line; the batch
/// is not sent again (the API said it took it: a resend could store it
/// twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_says_it_created_fewer_than_it_was_sent_is_warned_and_counted() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.create_at_most(Some(0));
    let mut pv3 = collect(broker.port(), &api).spawn();
    pv3.subscribed(1).await;
    support::broker::publish_charges(broker.port(), 0..3).await;
    let status = pv3
        .wait_status("3 measurements not created", |s| {
            support::collect::number(s, "counters.not_created") == Some(3)
        })
        .await;
    assert_eq!(
        support::collect::number(&status, "counters.delivered"),
        Some(3),
        "{status}"
    );
    let stderr = pv3.stop_in_place().await;
    assert!(
        stderr.contains("created 0 of") && stderr.contains("not sent again"),
        "a warning: {stderr}"
    );
    assert!(
        stderr.contains("3 of them not created by the API"),
        "the stop line: {stderr}"
    );
    assert_eq!(
        api.requests_to("POST", "/api/devices").len(),
        1,
        "not sent again"
    );
}

/// A collector holding three battery power readings (1, 2, 3 W) that only
/// a stop can flush: its linger is far beyond any test.
async fn three_readings_queued(
    broker: &InProcessBroker,
    api: &RecordingApi,
    args: &[&str],
) -> Collector {
    let pv3 = collect(broker.port(), api)
        .linger_ms(60_000)
        .args(args)
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
    for power in [1, 2, 3] {
        publisher
            .publish(&topic, charge(power), QoS::AtLeastOnce, false)
            .await;
    }
    pv3.received(3).await;
    assert!(api.requests().is_empty());
    pv3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_what_is_queued_and_exits_0() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let pv3 = three_readings_queued(&broker, &api, &[]).await;
    pv3.stop().await;
    assert_eq!(
        values_of(&api.measurements(), "battery_power"),
        [1.0, 2.0, 3.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_stops_like_sigterm_and_delivers_what_is_queued() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let pv3 = three_readings_queued(&broker, &api, &["--publish"]).await;
    let state = pv3.state_dir().to_owned();
    let stderr = pv3.hang_up().await;
    assert_eq!(
        values_of(&api.measurements(), "battery_power"),
        [1.0, 2.0, 3.0]
    );
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(
        stderr.contains("3 measurements delivered"),
        "no stop line: {stderr}"
    );
    assert!(state.join("energy.json").exists(), "energy.json not saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ids_past_a_thousand_are_skipped_counted_and_named_once() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let pv3 = collect(broker.port(), &api)
        .args(&["--device-id", "+"])
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    let ids = 1003;
    for n in 0..ids {
        publisher
            .publish(
                &format!("pv/PV3/D{n:04}/inverter/charge"),
                charge(n),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    pv3.received(ids as u64).await;
    api.wait_for_measurements(1000, T).await;
    pv3.delivered(1000).await;
    let stderr = pv3.stop().await;
    let devices: std::collections::BTreeSet<String> = api
        .requests_to("POST", "/api/devices/")
        .iter()
        .filter_map(|r| r.path.split('/').nth(3).map(str::to_owned))
        .collect();
    let last = devices.iter().next_back();
    assert_eq!(devices.len(), 1000, "the last: {last:?}");
    assert!(!devices.contains("D1000"), "the last: {last:?}");
    let warnings = stderr.matches("more than 1000 P3 device ids").count();
    assert_eq!(warnings, 1, "{stderr}");
    assert!(stderr.contains("1003 messages received"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_jsonl_and_sends_nothing() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let mut pv3 = collect(broker.port(), &api)
        .dry_run()
        .args(&["--format", "jsonl"])
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    for record in every_topic() {
        publisher
            .publish(&record.topic, record.payload, QoS::AtLeastOnce, false)
            .await;
    }
    let lines = EVERY_TOPIC_EXPECTED.len() + 1; // + the alarm states line
    assert!(
        pv3.wait_for_stdout_lines(lines, T).await,
        "{}",
        pv3.stdout()
    );
    pv3.stop_in_place().await;
    let stdout = pv3.stdout();
    assert!(api.requests().is_empty(), "a dry run sends nothing");
    let items: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let (alarms, measurements): (Vec<Value>, Vec<Value>) =
        items.into_iter().partition(|v| v.get("alarms").is_some());
    assert_eq!(
        measurement_keys(&measurements),
        every_topic_expected_keys(DEVICE)
    );
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0]["alarms"], every_topic_alarms());
    assert_eq!(alarms[0]["device_id"], DEVICE);
    assert_eq!(
        alarms[0]["source_topic"],
        format!("pv/PV3/{DEVICE}/inverter/alarms")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_422_is_logged_with_its_body_and_set_aside() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.fail_next(1, 422);
    let pv3 = collect(broker.port(), &api).linger_ms(10).spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
    publisher
        .publish(&topic, charge(1), QoS::AtLeastOnce, false)
        .await;
    api.wait_for_requests(1, T).await;
    publisher
        .publish(&topic, charge(2), QoS::AtLeastOnce, false)
        .await;
    let got = api.wait_for_measurements(1, T).await;
    let stderr = pv3.stop().await;
    assert_eq!(values_of(&got, "battery_power"), [2.0]);
    // Not retried: two requests in all.
    assert_eq!(api.requests().len(), 2);
    assert!(stderr.contains("HTTP 422"), "{stderr}");
    assert!(
        stderr.contains("injected"),
        "the response body is logged: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_is_skipped_and_the_next_one_goes_through() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let pv3 = collect(broker.port(), &api).spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
    for bad in [&b"NaN"[..], b"[1,2", b"\xff\xfe", b"\"a string\""] {
        publisher
            .publish(&topic, bad, QoS::AtLeastOnce, false)
            .await;
    }
    publisher
        .publish(&topic, charge(5), QoS::AtLeastOnce, false)
        .await;
    let got = api.wait_for_measurements(1, T).await;
    let stderr = pv3.stop().await;
    assert_eq!(values_of(&got, "battery_power"), [5.0]);
    // Rate-limited: one line for the topic, the rest counted.
    assert_eq!(stderr.matches("skipped a message").count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_is_sent_and_never_logged() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.fail_next(1, 401);
    let pv3 = collect(broker.port(), &api)
        .linger_ms(10)
        .args(&["-vv"])
        .env("API_TOKEN", "s3cret-t0ken")
        .env("MQTT_PASSWORD", "mqtt-pa55")
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    publisher
        .publish(
            &format!("pv/PV3/{DEVICE}/inverter/charge"),
            charge(9),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    let got = api.wait_for_measurements(1, T).await;
    let stderr = pv3.stop().await;
    assert_eq!(values_of(&got, "battery_power"), [9.0]);
    let requests = api.requests();
    assert_eq!(requests.len(), 2, "the 401 is retried, not dropped");
    for req in &requests {
        assert_eq!(req.header("authorization"), Some("Bearer s3cret-t0ken"));
    }
    assert!(
        stderr.contains("--api-token"),
        "401 names the fix: {stderr}"
    );
    assert!(!stderr.contains("s3cret"), "token leaked:\n{stderr}");
    assert!(!stderr.contains("mqtt-pa55"), "password leaked:\n{stderr}");
}

#[test]
fn bad_flags_are_refused_before_anything_starts() {
    let cases: &[(&[&str], &str)] = &[
        (&["collect", "--mqtt-port", "99999"], "--mqtt-port"),
        (&["collect", "--device-id", "a/b"], "--device-id"),
        (&["collect", "--api-url", "ftp://x"], "--api-url"),
        (&["collect", "--api-timeout", "0"], "--api-timeout"),
        (&["collect", "--soc-threshold", "NaN"], "--soc-threshold"),
        (&["collect", "--batch-size", "0"], "--batch-size"),
        (&["collect", "--format", "jsonl"], "--dry-run"),
    ];
    for (args, names) in cases {
        let out = run_pv3(args, &[], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(names),
            "{args:?} should name {names}: {stderr}"
        );
    }
    let out = run_pv3(&["collect"], &[("MQTT_PORT", "not-a-port")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mqtt-port"));
}

#[test]
fn help_hides_secret_env_values() {
    let out = run_pv3(
        &["collect", "--help"],
        &[
            ("API_TOKEN", "s3cret-t0ken"),
            ("MQTT_PASSWORD", "mqtt-pa55"),
        ],
        None,
    );
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("--api-token"));
    assert!(
        !help.contains("s3cret") && !help.contains("mqtt-pa55"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_device_id_posts_one_p3_under_the_dashboards_id() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let pv3 = CollectRun::new(broker.port())
        .api(&api)
        .args(&["--device-id", "+"])
        .env("API_DEVICE_ID", "DASHBOARD01")
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(broker.port()).await;
    for (device, power) in [("PVAAA", 1), ("PVBBB", 2), ("PVAAA", 3)] {
        publisher
            .publish(
                &format!("pv/PV3/{device}/inverter/charge"),
                format!("{{\"power\":{power}}}"),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    api.wait_for_measurements(2, T).await;
    pv3.received(3).await;
    let stderr = pv3.stop().await;
    assert_eq!(
        api.device_values(),
        [
            ("DASHBOARD01".to_string(), 1.0),
            ("DASHBOARD01".to_string(), 3.0)
        ]
    );
    assert!(
        stderr.contains("skipped pv/PV3/PVBBB/inverter/charge"),
        "{stderr}"
    );
    assert!(stderr.contains("as device DASHBOARD01"), "{stderr}");
}
