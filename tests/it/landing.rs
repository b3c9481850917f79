//! Issue 22: an output that proves it lands, and pv3's own health in Home
//! Assistant. A broker can take what pv3 publishes and deliver none of it
//! (the P3's own broker is read-only for local clients; an ACL), and the
//! old setup pointed Home Assistant straight at the P3's broker: pv3 must
//! say so, and show it in `status.json` and `/metrics`.

use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::Value;

use crate::support;
use support::api::RecordingApi;
use support::broker::{InProcessBroker, Mosquitto, Publisher};
use support::collect::{CollectRun, Collector};
use support::fixtures::DEVICE;
use support::topics::Topics;

const T: Duration = Duration::from_secs(20);

/// What the warning says.
const NOT_ARRIVING: &str = "what pv3 publishes does not arrive";

/// `collect --no-api --ha` reading `source`, publishing to `output`, with
/// `/metrics` on `metrics`.
fn collect_to(source: u16, output: u16, metrics: &str) -> Collector {
    let output = output.to_string();
    CollectRun::new(source)
        .args(&[
            "--no-api",
            "--ha",
            "--out-mqtt-host",
            "127.0.0.1",
            "--out-mqtt-port",
            &output,
            "--metrics-listen",
            metrics,
        ])
        .spawn()
}

/// The `mqtt` output in status.json once `delivering` is known.
async fn delivering(pv3: &Collector) -> Value {
    let status = pv3
        .wait_status("the mqtt output's delivering known", |s| {
            s["outputs"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["name"] == "mqtt"))
                .is_some_and(|o| o["delivering"].is_boolean())
        })
        .await;
    let outputs = status["outputs"].as_array().cloned().unwrap_or_default();
    outputs
        .into_iter()
        .find(|o| o["name"] == "mqtt")
        .unwrap_or(Value::Null)
}

/// `pv3_output_delivering{output="mqtt"}` on `/metrics`.
async fn delivering_metric(addr: &str) -> Option<f64> {
    let body = support::api::http_client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines().find_map(|l| {
        l.strip_prefix("pv3_output_delivering{output=\"mqtt\"} ")?
            .parse()
            .ok()
    })
}

/// Checks the warning, status.json and `/metrics` of a collector whose
/// output broker does not deliver what it publishes.
async fn said_not_delivering(pv3: Collector, metrics: &str) {
    let started = Instant::now();
    assert!(
        pv3.wait_for_stderr(NOT_ARRIVING, T).await,
        "no warning:\n{}",
        pv3.stderr()
    );
    eprintln!(
        "the warning came {:.1} s after the wait began",
        started.elapsed().as_secs_f64()
    );
    let stderr = pv3.stderr();
    assert!(
        stderr.contains("--out-mqtt-host"),
        "the fix is named: {stderr}"
    );
    assert!(stderr.contains("read-only"), "the likely cause: {stderr}");
    let mqtt = delivering(&pv3).await;
    assert_eq!(mqtt["delivering"], false, "{mqtt}");
    assert_eq!(mqtt["connected"], true, "{mqtt}");
    assert_eq!(delivering_metric(metrics).await, Some(0.0));
    let stderr = pv3.stop().await;
    assert_eq!(stderr.matches(NOT_ARRIVING).count(), 1, "once: {stderr}");
}

/// A Mosquitto whose ACL lets clients only read: pv3's messages go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_broker_whose_acl_refuses_pv3s_publishes_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read #\n").expect("acl file");
    let acl_line = format!("acl_file {}\n", acl.display());
    let Some(output) = Mosquitto::start_with(&acl_line).await else {
        return; // no Mosquitto here (CI requires it)
    };
    let source = InProcessBroker::start().await;
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let pv3 = collect_to(source.port(), output.port(), &metrics);
    said_not_delivering(pv3, &metrics).await;
}

/// A broker that takes pv3's publishes and drops them without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_broker_that_silently_drops_pv3s_publishes_is_named() {
    let output = InProcessBroker::start().await;
    // The outputs' client id is pv3-publish-<random>.
    output.drop_publishes_from("pv3-publish-");
    let source = InProcessBroker::start().await;
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let pv3 = collect_to(source.port(), output.port(), &metrics);
    said_not_delivering(pv3, &metrics).await;
}

/// Against a broker that delivers: no warning, and the output delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_broker_that_delivers_gets_no_warning() {
    let output = InProcessBroker::start().await;
    let source = InProcessBroker::start().await;
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let pv3 = collect_to(source.port(), output.port(), &metrics);
    let mqtt = delivering(&pv3).await;
    assert_eq!(mqtt["delivering"], true, "{mqtt}");
    assert_eq!(delivering_metric(&metrics).await, Some(1.0));
    let stderr = pv3.stop().await;
    assert!(!stderr.contains(NOT_ARRIVING), "{stderr}");
}

/// The `api` health entity's state topic.
fn api_topic() -> String {
    format!("pv3/{DEVICE}/pv3/api")
}

/// A `battery_power` reading.
async fn charge(publisher: &Publisher, watts: i64) {
    publisher
        .publish(
            &format!("pv/PV3/{DEVICE}/inverter/charge"),
            format!("{{\"power\":{watts}}}"),
            QoS::AtLeastOnce,
            false,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pv3_s_own_health_follows_the_api_in_home_assistant() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let api = RecordingApi::start().await;
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = CollectRun::new(port)
        .api(&api)
        .args(&["--ha", "--publish-interval", "1"])
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(port).await;
    charge(&publisher, 500).await;
    api.wait_for_measurements(1, T).await;

    // The pv3 device: its entities and their classes.
    let node = format!("pv3_{}_collector", DEVICE.to_lowercase());
    let config = |component: &str, id: &str| -> Value {
        let topic = format!("homeassistant/{component}/{node}/{id}/config");
        let text = topics.latest(&topic).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    topics
        .wait("the health entities announced", |s| {
            s.latest(&format!("homeassistant/sensor/{node}/version/config"))
                .is_some()
        })
        .await;
    let api_config = config("binary_sensor", "api");
    assert_eq!(api_config["device_class"], "connectivity", "{api_config}");
    assert_eq!(
        api_config["default_entity_id"],
        format!("binary_sensor.p3_{}_pv3_api", DEVICE.to_lowercase())
    );
    assert_eq!(
        api_config["device"]["sw_version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        config("sensor", "last_delivery")["device_class"],
        "timestamp"
    );
    assert_eq!(
        config("sensor", "last_message")["device_class"],
        "timestamp"
    );
    assert_eq!(config("sensor", "spool")["device_class"], "data_size");
    assert_eq!(
        config("sensor", "dropped")["state_class"],
        "total_increasing"
    );
    assert_eq!(config("sensor", "waiting")["state_class"], "measurement");
    topics
        .wait("the API up", |s| s.latest(&api_topic()) == Some("ON"))
        .await;
    // One health tick publishes the API's state before the version: wait for
    // the version rather than assume it came with the API's state.
    topics
        .wait("pv3's version", |s| {
            s.latest(&format!("pv3/{DEVICE}/pv3/version")) == Some(env!("CARGO_PKG_VERSION"))
        })
        .await;
    topics
        .wait("a delivery time", |s| {
            s.latest(&format!("pv3/{DEVICE}/pv3/last_delivery"))
                .is_some_and(|t| t.ends_with('Z'))
        })
        .await;

    // The API goes down: the entity says so, and readings wait.
    api.fail_all(503);
    charge(&publisher, 600).await;
    topics
        .wait("the API down", |s| s.latest(&api_topic()) == Some("OFF"))
        .await;
    topics
        .wait("readings waiting", |s| {
            s.latest(&format!("pv3/{DEVICE}/pv3/waiting"))
                .and_then(|w| w.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
        .await;
    // And back.
    api.recover();
    topics
        .wait("the API back", |s| s.latest(&api_topic()) == Some("ON"))
        .await;
    pv3.stop().await;
    topics
        .wait_for(&format!("pv3/{DEVICE}/pv3/status"), "offline")
        .await;
}
