//! `collect --publish/--ha`: flat state topics, Home Assistant discovery,
//! availability, the rate rule and the energy counters, seen the way Home
//! Assistant sees them: as a subscriber on a real broker (in-process, and
//! Mosquitto when installed).

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::Value;

use support::api::RecordingApi;
use support::broker::{InProcessBroker, Publisher, TestBroker};
use support::collect::{CollectRun, Collector};
use support::fixtures::{DEVICE, EVERY_TOPIC_EXPECTED, every_topic};
use support::on_both_brokers;
use support::proc::{replay_to_broker, run_pv3};
use support::topics::{State, Topics};

const ENERGY: [&str; 5] = [
    "grid_import_energy",
    "grid_export_energy",
    "battery_discharge_energy",
    "battery_charge_energy",
    "house_energy",
];
const ALARMS: [(&str, &str); 3] = [
    ("battery_low", "ON"),
    ("fan_lock", "OFF"),
    ("pv_loss", "OFF"),
];

fn status_topic() -> String {
    format!("pv3/{DEVICE}/status")
}

fn node() -> String {
    format!("pv3_{}", DEVICE.to_lowercase())
}

/// Object ids are the metric names in lower case (`safetycheck_State`).
fn sensor_config(metric: &str) -> String {
    format!(
        "homeassistant/sensor/{}/{}/config",
        node(),
        metric.to_lowercase()
    )
}

fn alarm_config(flag: &str) -> String {
    format!("homeassistant/binary_sensor/{}/alarm_{flag}/config", node())
}

/// `collect --ha` with no API.
fn ha_collect(port: u16) -> CollectRun {
    CollectRun::new(port).args(&["--no-api", "--ha"])
}

async fn publish_every_topic(port: u16) {
    let publisher = Publisher::connect(port).await;
    for record in every_topic() {
        publisher
            .publish(&record.topic, record.payload, QoS::AtLeastOnce, false)
            .await;
    }
}

/// Every metric `every-topic.jsonl` decodes to, once.
fn metrics() -> BTreeSet<&'static str> {
    EVERY_TOPIC_EXPECTED.iter().map(|(_, m, _, _)| *m).collect()
}

/// Every config topic the every-topic messages must announce.
fn every_config_topic() -> Vec<String> {
    let mut topics: Vec<String> = metrics()
        .into_iter()
        .chain(ENERGY)
        .map(sensor_config)
        .collect();
    topics.extend(ALARMS.iter().map(|(flag, _)| alarm_config(flag)));
    topics
}

fn config(state: &State, topic: &str) -> Option<Value> {
    state
        .latest(topic)
        .filter(|p| !p.is_empty())
        .and_then(|p| serde_json::from_str(p).ok())
}

/// Waits until every config and every flat state of the every-topic
/// messages is on the broker, and the device's status is `online`.
async fn wait_announced(topics: &Topics) {
    wait_announced_with(topics, "online").await;
}

/// [`wait_announced`], with the device's status `status`.
async fn wait_announced_with(topics: &Topics, status: &str) {
    let configs = every_config_topic();
    topics
        .wait(
            &format!("every discovery config and flat state, status {status}"),
            |s| {
                configs.iter().all(|t| config(s, t).is_some())
                    && metrics().iter().all(|m| {
                        s.latest(&format!("pv3/{DEVICE}/{}", m.to_lowercase()))
                            .is_some()
                    })
                    && s.latest(&status_topic()) == Some(status)
            },
        )
        .await;
}

// --------------------------------------------------------------------------

on_both_brokers!(every_topic_is_announced_with_the_fields_home_assistant_needs);
async fn every_topic_is_announced_with_the_fields_home_assistant_needs(broker: TestBroker) {
    let port = broker.port();
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = ha_collect(port).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    wait_announced(&topics).await;

    // Every flat topic holds the decoded value, as plain text, under the
    // metric's name in lower case (`safetycheck_State`: `safetycheck_state`).
    for (_, metric, value, _) in EVERY_TOPIC_EXPECTED {
        let text = topics
            .latest(&format!("pv3/{DEVICE}/{}", metric.to_lowercase()))
            .expect("published");
        assert_eq!(text.parse::<f64>().ok(), Some(*value), "{metric} = {text}");
    }
    for (flag, on) in ALARMS {
        assert_eq!(
            topics
                .latest(&format!("pv3/{DEVICE}/alarm/{flag}"))
                .as_deref(),
            Some(on)
        );
    }
    // One power reading each: the counters exist, at zero.
    for counter in ENERGY {
        assert_eq!(
            topics.latest(&format!("pv3/{DEVICE}/{counter}")).as_deref(),
            Some("0")
        );
    }

    // Every config: a unique id from device and metric, the flat state
    // topic without a template, availability, the device.
    let state_by_config = topics.with(|s| {
        every_config_topic()
            .iter()
            .map(|t| (t.clone(), config(s, t).expect("config")))
            .collect::<BTreeMap<_, _>>()
    });
    // Beside them, pv3's own health device: without the API, its version
    // and when the P3 was last heard.
    let health_node = format!("{}_collector", node());
    let (health, p3): (Vec<String>, Vec<String>) = topics.with(|s| {
        s.live_under("homeassistant/")
            .into_keys()
            .partition(|t| t.split('/').nth(2) == Some(health_node.as_str()))
    });
    assert_eq!(
        p3.len(),
        state_by_config.len(),
        "no config beyond the expected ones"
    );
    assert_eq!(health.len(), 2, "{health:?}");
    for (topic, c) in &state_by_config {
        let object = topic.split('/').nth(3).expect("object id");
        assert_eq!(c["unique_id"], format!("{}_{object}", node()), "{topic}");
        let state_topic = c["state_topic"].as_str().expect("state_topic");
        assert!(
            topics.latest(state_topic).is_some(),
            "{topic}: state topic {state_topic} holds nothing"
        );
        // A template only where a code's number becomes its name.
        let is_enum = c["device_class"] == "enum";
        assert_eq!(c.get("value_template").is_some(), is_enum, "{topic}");
        if is_enum {
            assert!(c["options"].as_array().is_some_and(|o| !o.is_empty()));
            assert!(c.get("unit_of_measurement").is_none(), "{topic}");
            assert!(c.get("state_class").is_none(), "{topic}");
        }
        assert_eq!(c["availability"][0]["topic"], status_topic(), "{topic}");
        // The entity id docs and dashboards name: device and object id.
        let component = topic.split('/').nth(1).expect("component");
        assert_eq!(
            c["default_entity_id"],
            format!("{component}.p3_{}_{object}", DEVICE.to_lowercase()),
            "{topic}"
        );
        assert_eq!(
            c["device"]["sw_version"],
            format!("pv3 {}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(c["device"]["identifiers"][0], node(), "{topic}");
        assert_eq!(c["device"]["manufacturer"], "Powervault");
        assert_eq!(c["device"]["model"], "P3");
        assert_eq!(c["origin"]["name"], "pv3");
        assert!(c["expire_after"].as_u64().is_some_and(|s| s > 0));
    }
    // Field by field for one entity of each kind.
    let fields = |t: &str| {
        let c = &state_by_config[t];
        (
            c["unit_of_measurement"].clone(),
            c["device_class"].clone(),
            c["state_class"].clone(),
            c["entity_category"].clone(),
        )
    };
    let s = |v: &str| Value::String(v.into());
    assert_eq!(
        fields(&sensor_config("grid_power")),
        (s("W"), s("power"), s("measurement"), Value::Null)
    );
    assert_eq!(
        fields(&sensor_config("grid_import_energy")),
        (s("kWh"), s("energy"), s("total_increasing"), Value::Null)
    );
    assert_eq!(
        fields(&sensor_config("inverter_temp")),
        (s("°C"), s("temperature"), s("measurement"), Value::Null)
    );
    assert_eq!(
        fields(&sensor_config("soc")),
        (s("%"), s("battery"), s("measurement"), Value::Null)
    );
    assert_eq!(
        fields(&sensor_config("alarm_count")).3,
        s("diagnostic"),
        "alarm_count is diagnostic"
    );
    // Codes with a known meaning are named states; counts that can dip
    // are measurements.
    let schedule = &state_by_config[&sensor_config("schedule_event")];
    assert_eq!(schedule["device_class"], "enum");
    assert_eq!(
        schedule["options"],
        serde_json::json!([
            "Idle",
            "Charge",
            "Discharge",
            "Force charge",
            "Force discharge"
        ])
    );
    let eps = &state_by_config[&sensor_config("eps_mode")];
    assert_eq!(eps["options"], serde_json::json!(["Disabled", "Enabled"]));
    assert_eq!(
        fields(&sensor_config("cycle_count_avg")).2,
        s("measurement"),
        "an average of cycle counts can dip"
    );
    // Names for people: no raw P3 field, no "alarm" after a problem.
    for (topic, c) in &state_by_config {
        let name = c["name"].as_str().expect("a name");
        assert!(!name.contains('_'), "{topic}: a raw name {name:?}");
        assert!(!name.to_lowercase().ends_with("alarm"), "{topic}: {name:?}");
    }
    assert_eq!(
        state_by_config[&sensor_config("safetycheck_State")]["name"],
        "Safety check state"
    );
    let alarm = &state_by_config[&alarm_config("battery_low")];
    assert_eq!(alarm["name"], "Battery low");
    assert_eq!(alarm["device_class"], "problem");
    assert_eq!(alarm["payload_on"], "ON");
    assert_eq!(alarm["payload_off"], "OFF");
    assert_eq!(
        alarm["state_topic"],
        format!("pv3/{DEVICE}/alarm/battery_low")
    );

    check_entity_table(&state_by_config);

    // SIGTERM: offline, retained.
    let state_dir = pv3.state_dir().to_owned();
    pv3.stop().await;
    topics.wait_for(&status_topic(), "offline").await;

    // A restart announces the same entities under the same ids.
    let pv3 = ha_collect(port).state_dir(&state_dir).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    let configs = every_config_topic();
    topics
        .wait("every config announced again", |s| {
            configs
                .iter()
                .all(|t| s.history.get(t).is_some_and(|h| h.len() >= 2))
                && s.latest(&status_topic()) == Some("online")
        })
        .await;
    for t in &configs {
        let history = topics.history(t);
        let ids: BTreeSet<String> = history
            .iter()
            .filter_map(|h| serde_json::from_str::<Value>(&h.payload).ok())
            .map(|c| c["unique_id"].to_string())
            .collect();
        assert_eq!(ids.len(), 1, "{t}: unique ids {ids:?}");
    }
    pv3.stop().await;
    topics.wait_for(&status_topic(), "offline").await;

    // What a subscriber arriving now sees: retained configs, states and
    // availability, none of them empty.
    let late = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    wait_announced_with(&late, "offline").await;
    assert!(
        late.with(|s| s.history.values().flatten().all(|m| m.retained)),
        "everything pv3 publishes is retained"
    );
}

on_both_brokers!(sigkill_shows_offline_through_the_last_will);
async fn sigkill_shows_offline_through_the_last_will(broker: TestBroker) {
    let port = broker.port();
    let topics = Topics::watch(port, &["pv3/#"]).await;
    let pv3 = ha_collect(port).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    topics.wait_for(&status_topic(), "online").await;
    pv3.kill().await;
    topics.wait_for(&status_topic(), "offline").await;
}

on_both_brokers!(home_assistants_birth_message_announces_everything_again);
async fn home_assistants_birth_message_announces_everything_again(broker: TestBroker) {
    let port = broker.port();
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = ha_collect(port).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    wait_announced(&topics).await;
    // A broker that lost its retained messages (no persistence), then Home
    // Assistant restarting.
    let publisher = Publisher::connect(port).await;
    let soc = sensor_config("soc");
    publisher.publish(&soc, "", QoS::AtLeastOnce, true).await;
    topics
        .wait("the config cleared", |s| s.latest(&soc) == Some(""))
        .await;
    publisher
        .publish("homeassistant/status", "online", QoS::AtLeastOnce, false)
        .await;
    topics
        .wait("the config announced again", |s| config(s, &soc).is_some())
        .await;
    pv3.stop().await;
}

/// Issue 20: the sample capture (every alarm flag a P3 sends) replayed
/// through `--ha`: no entity is named with a raw P3 field or flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_through_ha_names_every_entity_for_people() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let topics = Topics::watch(port, &["homeassistant/#"]).await;
    let pv3 = ha_collect(port).spawn();
    pv3.subscribed(1).await;
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/p3-sample.jsonl");
    replay_to_broker(sample, port, &["--speed", "max"]);
    // 23 flags in the sample, each a binary sensor.
    topics
        .wait("every flag announced", |s| {
            s.live_under("homeassistant/binary_sensor/").len() >= 23
        })
        .await;
    pv3.stop().await;
    let configs = topics.with(|s| s.live_under("homeassistant/"));
    for (topic, text) in &configs {
        let c: Value = serde_json::from_str(text).expect("a JSON config");
        let name = c["name"].as_str().expect("a name");
        assert!(!name.contains('_'), "{topic}: a raw name {name:?}");
        assert!(!name.to_lowercase().ends_with("alarm"), "{topic}: {name:?}");
        assert!(
            name.chars().next().is_some_and(char::is_uppercase),
            "{topic}: {name:?}"
        );
    }
}

/// The entity ids a text names (`sensor.p3_…`, `binary_sensor.p3_…`).
fn entity_ids_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| {
            w.strip_prefix("sensor.")
                .or_else(|| w.strip_prefix("binary_sensor."))
                .is_some_and(|id| !id.is_empty())
        })
        .map(str::to_owned)
        .collect()
}

/// Issue 22: every entity the ready dashboard names is one `collect --ha`
/// announces, for the sample capture (every topic and flag a P3 sends) with
/// the API on (pv3's own health entities).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_only_entities_pv3_announces() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/dashboard.yaml");
    let text = std::fs::read_to_string(path).expect("docs/dashboard.yaml");
    let named = entity_ids_in(&text);
    assert!(named.len() >= 30, "the scan finds the ids: {named:?}");
    if let Some(python) = crate::addon::python() {
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import sys, yaml; yaml.safe_load(open(sys.argv[1]))",
                path,
            ])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let api = RecordingApi::start().await;
    let topics = Topics::watch(port, &["homeassistant/#"]).await;
    let pv3 = CollectRun::new(port).api(&api).args(&["--ha"]).spawn();
    pv3.subscribed(1).await;
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/p3-sample.jsonl");
    replay_to_broker(sample, port, &["--speed", "max"]);
    let announced = || -> BTreeSet<String> {
        topics.with(|s| {
            s.live_under("homeassistant/")
                .values()
                .filter_map(|c| serde_json::from_str::<Value>(c).ok())
                .filter_map(|c| c["default_entity_id"].as_str().map(str::to_owned))
                .collect()
        })
    };
    let all_there =
        support::wait_for(support::topics::WAIT, || named.is_subset(&announced())).await;
    let now = announced();
    let missing: Vec<&String> = named.difference(&now).collect();
    assert!(
        all_there,
        "the dashboard names entities pv3 does not announce: {missing:?}"
    );
    pv3.stop().await;
}

on_both_brokers!(ha_remove_clears_every_retained_topic);
async fn ha_remove_clears_every_retained_topic(broker: TestBroker) {
    let port = broker.port();
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = ha_collect(port).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    wait_announced(&topics).await;
    pv3.stop().await;
    // Someone else's entity under the same prefix stays.
    let publisher = Publisher::connect(port).await;
    let other = "homeassistant/sensor/other_node/power/config";
    publisher.publish(other, "{}", QoS::AtLeastOnce, true).await;
    topics.wait_for(other, "{}").await;

    let port_text = port.to_string();
    let out = run_pv3(
        &[
            "collect",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &port_text,
            // The collect it undoes, as it was run, with --ha-remove.
            "--no-api",
            "--ha",
            "--ha-remove",
        ],
        &[],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("removed"), "{stderr}");
    topics
        .wait("every pv3 topic cleared", |s| {
            // Nothing retained is left; the output's probe (issue 22) was
            // never retained, so there is nothing to clear.
            s.live_under("pv3/")
                .keys()
                .all(|t| t.starts_with("pv3/_probe/"))
                && s.live_under("homeassistant/").keys().collect::<Vec<_>>() == vec![other]
        })
        .await;
}

/// `battery_power` readings, as `inverter/charge` messages.
async fn charge(publisher: &Publisher, watts: i64) {
    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
    publisher
        .publish(
            &topic,
            format!("{{\"power\":{watts}}}"),
            QoS::AtLeastOnce,
            false,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_one_state_per_interval_and_a_heartbeat_when_unchanged() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let topic = format!("pv3/{DEVICE}/battery_power");
    let topics = Topics::watch(port, &[topic.as_str()]).await;
    let pv3 = CollectRun::new(port)
        .args(&["--no-api", "--publish", "--publish-interval", "1"])
        .env("PV3_PUBLISH_HEARTBEAT_MS", "1500")
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(port).await;

    // 10 readings a second, each different, for 3 seconds.
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for i in 0..30 {
        pace.tick().await;
        charge(&publisher, 100 + i * 10).await;
    }
    // The value at the end of the burst goes out (at the interval's end).
    topics.wait_for(&topic, "390").await;
    let elapsed = started.elapsed().as_secs_f64();
    let states = topics.history(&topic);
    assert!(
        states.len() >= 2 && states.len() as f64 <= elapsed / 1.0 + 1.0,
        "{} states in {elapsed:.2} s with a 1 s interval: {:?}",
        states.len(),
        states.iter().map(|s| &s.payload).collect::<Vec<_>>()
    );

    // Unchanged at 10 readings a second: a heartbeat, no more.
    let before = states.len();
    let started = Instant::now();
    let mut beats = 0;
    while beats < 2 {
        pace.tick().await;
        charge(&publisher, 390).await;
        beats = topics.history(&topic).len() - before;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let new: Vec<String> = topics.history(&topic)[before..]
        .iter()
        .map(|s| s.payload.clone())
        .collect();
    assert!(new.iter().all(|p| p == "390"), "{new:?}");
    assert!(
        new.len() as f64 <= elapsed / 1.5 + 1.0,
        "{} heartbeats in {elapsed:.2} s with a 1.5 s heartbeat",
        new.len()
    );
    pv3.stop().await;
}

/// A capture of `ffr/measurements` (house and grid power) and
/// `inverter/charge` (battery power) at the given seconds.
fn power_capture(grid: &[(u32, i64)], battery: &[(u32, i64)], house_w: i64) -> String {
    let ts = |s: u32| format!("2026-11-27T10:{:02}:{:02}.000Z", s / 60, s % 60);
    let mut lines = Vec::new();
    for (s, w) in grid {
        let payload = format!(
            "[{{\"channel\":\"LOCAL\",\"measurement\":\"Power\",\"type\":\"Active\",\"value\":{}}},\
             {{\"channel\":\"HOUSE\",\"measurement\":\"Power\",\"type\":\"Active\",\"value\":{}}}]",
            house_w * 1000,
            w * 1000
        );
        lines.push((
            *s,
            serde_json::json!({"ts": ts(*s), "topic": format!("pv/PV3/{DEVICE}/ffr/measurements"), "payload": payload}),
        ));
    }
    for (s, w) in battery {
        lines.push((
            *s,
            serde_json::json!({"ts": ts(*s), "topic": format!("pv/PV3/{DEVICE}/inverter/charge"), "payload": format!("{{\"power\":{w}}}")}),
        ));
    }
    lines.sort_by_key(|(s, _)| *s);
    lines
        .iter()
        .map(|(_, l)| format!("{l}\n"))
        .collect::<String>()
}

/// The totals of replay's energy line.
fn energy_line(stderr: &str) -> BTreeMap<String, f64> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("energy of {DEVICE}")))
        .unwrap_or_else(|| panic!("no energy line in:\n{stderr}"));
    let (_, totals) = line.split_once(": ").expect("totals");
    totals
        .split(", ")
        .map(|part| {
            let (name, kwh) = part.rsplit_once(' ').expect("name value");
            (name.to_string(), kwh.parse::<f64>().expect("number"))
        })
        .collect()
}

#[test]
fn energy_counters_match_a_hand_calculation() {
    // Grid: 1200 W import for 60 s; then +1200/−1200 alternating every
    // 10 s for three segments; a 2-minute gap; then −1200 W for 10 s.
    let grid = [
        (0, 1200),
        (10, 1200),
        (20, 1200),
        (30, 1200),
        (40, 1200),
        (50, 1200),
        (60, 1200),
        (70, -1200),
        (80, 1200),
        (90, -1200),
        (210, -1200),
        (220, -1200),
    ];
    // Battery: +500/−500 alternating every 10 s, four segments.
    let battery = [(0, 500), (10, -500), (20, 500), (30, -500), (40, 500)];
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("profile.jsonl");
    std::fs::write(&file, power_capture(&grid, &battery, 360)).expect("write");
    let out = run_pv3(
        &[
            "replay",
            file.to_str().expect("utf-8"),
            "--dry-run",
            "--format",
            "jsonl",
        ],
        &[],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got = energy_line(&stderr);

    // By hand, in joules, then kWh (÷ 3.6e6):
    // import: 1200 W × 60 s = 72000 J; each of the three crossing segments
    //   is two triangles of 1200 W × 5 s / 2 = 3000 J, one each way.
    // export: 3 × 3000 J, plus 1200 W × 10 s after the gap; the gap adds 0.
    // battery: four crossing segments of 500 W × 5 s / 2 = 1250 J each way.
    // house: 360 W for 90 s, then 10 s after the gap.
    let kwh = |joules: f64| joules / 3.6e6;
    let expected = [
        ("grid_import_energy", kwh(72_000.0 + 3.0 * 3000.0)),
        ("grid_export_energy", kwh(3.0 * 3000.0 + 12_000.0)),
        ("battery_discharge_energy", kwh(4.0 * 1250.0)),
        ("battery_charge_energy", kwh(4.0 * 1250.0)),
        ("house_energy", kwh(360.0 * 100.0)),
    ];
    for (name, want) in expected {
        let have = got[name];
        assert!(
            (have - want).abs() < 5e-7,
            "{name}: {have} kWh, by hand {want} kWh"
        );
    }
}

/// The `battery_charge_energy` state on the broker, as a number.
fn charged(topics: &Topics) -> Option<f64> {
    topics
        .latest(&format!("pv3/{DEVICE}/battery_charge_energy"))
        .and_then(|t| t.parse().ok())
}

/// The `battery_charge_energy` total in `energy.json`.
fn saved(pv3: &Collector) -> Option<f64> {
    let bytes = std::fs::read(pv3.state_dir().join("energy.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["devices"][DEVICE]["battery_charge_energy"].as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_totals_survive_a_restart_and_a_sigkill_and_never_decrease() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let topics = Topics::watch(port, &["pv3/#"]).await;
    let state = support::scratch_dir("energy");
    let start = || {
        CollectRun::new(port)
            .args(&["--no-api", "--publish", "--publish-interval", "0"])
            .env("PV3_ENERGY_SAVE_MS", "100")
            .state_dir(&state)
            .spawn()
    };
    let publisher = Publisher::connect(port).await;
    // Charging at 20 kW, the most these counters take as real is 50 kW.
    let energy_topic = format!("pv3/{DEVICE}/battery_charge_energy");
    let feed_until_above = |floor: f64| {
        let (publisher, topics, energy_topic) = (&publisher, &topics, &energy_topic);
        async move {
            while charged(topics).is_none_or(|v| v <= floor) {
                let before = topics.history(energy_topic).len();
                charge(publisher, -20_000).await;
                topics
                    .wait("a new energy state", |s| {
                        s.history
                            .get(energy_topic)
                            .is_some_and(|h| h.len() > before)
                    })
                    .await;
            }
            charged(topics).expect("a total")
        }
    };

    let pv3 = start();
    pv3.subscribed(1).await;
    let first = feed_until_above(0.0).await;
    pv3.stop().await;
    let after_stop = std::fs::read(state.join("energy.json")).expect("saved at the stop");
    let v: Value = serde_json::from_slice(&after_stop).expect("json");
    let kept = v["devices"][DEVICE]["battery_charge_energy"]
        .as_f64()
        .expect("total");
    // Flat topics carry the total rounded to the millionth (a mWh): the
    // saved total may be up to half of that below what was published.
    assert!(kept + 5e-7 >= first, "saved {kept} < published {first}");

    // Restart: continues from the saved total, never below it.
    let pv3 = start();
    pv3.subscribed(1).await;
    let second = feed_until_above(kept).await;
    // SIGKILL once the periodic save has caught up with what was published.
    support::wait_for(Duration::from_secs(30), || {
        saved(&pv3).is_some_and(|s| s + 5e-7 >= second)
    })
    .await;
    assert!(saved(&pv3).is_some_and(|s| s + 5e-7 >= second));
    pv3.kill().await;

    let pv3 = start();
    pv3.subscribed(1).await;
    let before = topics.history(&energy_topic).len();
    charge(&publisher, -20_000).await;
    topics
        .wait("the total after the SIGKILL", |s| {
            s.history
                .get(&energy_topic)
                .is_some_and(|h| h.len() > before)
        })
        .await;
    let third = charged(&topics).expect("a total");
    assert!(third >= second, "{third} after SIGKILL < {second} before");
    let all: Vec<f64> = topics
        .history(&energy_topic)
        .iter()
        .filter_map(|s| s.payload.parse().ok())
        .collect();
    assert!(
        all.windows(2).all(|w| w[1] >= w[0]),
        "the total went down: {all:?}"
    );
    pv3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_api_only_status_and_counters_are_written() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = ha_collect(port).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    wait_announced(&topics).await;
    // Energy that grows, so the counters' file is written too.
    let publisher = Publisher::connect(port).await;
    charge(&publisher, -1000).await;
    charge(&publisher, -1000).await;
    let status = pv3
        .wait_status("the mqtt output in status.json", |s| {
            s["outputs"][0]["name"] == "mqtt"
                && s["outputs"][0]["connected"] == true
                && s["outputs"][0]["last_at"].is_string()
        })
        .await;
    assert_eq!(status["no_api"], true, "{status}");

    // check-api reads it back into a row of its own.
    let state = pv3.state_dir().to_str().expect("utf-8").to_owned();
    let api = RecordingApi::start().await;
    let out = run_pv3(
        &[
            "check-api",
            "--api-url",
            &api.url(),
            "--state-dir",
            &state,
            "--format",
            "json",
        ],
        &[],
        None,
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    let row = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "collector outputs")
        .unwrap_or_else(|| panic!("no outputs row: {report}"))
        .clone();
    assert_eq!(row["status"], "pass", "{row}");
    assert!(
        row["detail"]
            .as_str()
            .is_some_and(|d| d.contains("mqtt: connected, last publish")),
        "{row}"
    );
    let delivery = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "collector delivery")
        .expect("delivery row")
        .clone();
    assert_eq!(delivery["status"], "skip", "{delivery}");

    let dir = pv3.state_dir().to_owned();
    let stderr = pv3.stop().await;
    assert!(stderr.contains("stopped: "), "a stop line:\n{stderr}");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = ["status.json", "energy.json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(files, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_keeps_flowing_while_the_api_is_down() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let api = RecordingApi::start().await;
    api.fail_all(503);
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = CollectRun::new(port).api(&api).args(&["--ha"]).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    wait_announced(&topics).await;
    // The API was tried and refused meanwhile: the readings wait for it.
    assert!(!api.requests().is_empty());
    assert!(api.measurements().is_empty());
    let publisher = Publisher::connect(port).await;
    charge(&publisher, 777).await;
    topics
        .wait_for(&format!("pv3/{DEVICE}/battery_power"), "777")
        .await;
    api.recover();
    pv3.delivered(EVERY_TOPIC_EXPECTED.len() as u64 + 1).await;
    pv3.stop().await;
}

#[test]
fn output_flags_that_cannot_work_are_refused_before_anything_starts() {
    for (args, says) in [
        (
            vec!["collect", "--no-api"],
            "--no-api leaves collect nothing",
        ),
        (
            vec!["collect", "--publish", "--publish-prefix", "pv3/#"],
            "is not a topic prefix",
        ),
        (
            vec!["collect", "--metrics-listen", "localhost"],
            "--metrics-listen",
        ),
        (vec!["collect", "--ha", "--dry-run"], "cannot be used with"),
    ] {
        let out = run_pv3(&args, &[], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("connected"), "{args:?}: started: {stderr}");
    }
}

/// The body of `GET http://addr/metrics`, or `None` while nothing listens.
async fn scrape(addr: &str) -> Option<String> {
    let response = support::api::http_client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?;
    assert_eq!(response.status(), 200);
    response.text().await.ok()
}

/// The value of the sample line that starts with `series` (name and
/// labels exactly as written).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_serves_the_decoded_values_on_metrics_beside_home_assistant() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = ha_collect(port).args(&["--metrics-listen", &addr]).spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    wait_announced(&topics).await;
    // Every output got each reading before the flat topics showed it
    // (collect hands a reading to all outputs before taking the next).
    let body = scrape(&addr).await.expect("listening");
    let soc = format!("pv3_soc_percent{{device=\"{DEVICE}\"}}");
    assert_eq!(sample(&body, &soc), Some(97.0), "{body}");
    let grid = format!("pv3_grid_power_watts{{device=\"{DEVICE}\"}}");
    assert_eq!(sample(&body, &grid), Some(-406.464));
    let temp = format!("pv3_inverter_temp_celsius{{device=\"{DEVICE}\"}}");
    assert_eq!(sample(&body, &temp), Some(38.0));
    assert_eq!(sample(&body, "pv3_messages_received_total"), Some(15.0));
    let energy = format!("pv3_grid_import_energy_joules_total{{device=\"{DEVICE}\"}}");
    assert_eq!(sample(&body, &energy), Some(0.0));
    // status.json and check-api see the scrape.
    pv3.wait_status("the prometheus output scraped", |s| {
        s["outputs"].as_array().is_some_and(|o| {
            o.iter()
                .any(|o| o["name"] == "prometheus" && o["last_at"].is_string())
        })
    })
    .await;
    pv3.stop().await;
    assert!(
        scrape(&addr).await.is_none(),
        "still listening after the stop"
    );
}

const DOC: &str = "docs/home-assistant.md";
const TABLE_START: &str = "<!-- entities: generated by tests/it/home_assistant.rs; PV3_UPDATE_GENERATED=1 cargo test --test it home_assistant:: -->";
const TABLE_END: &str = "<!-- end of entities -->";

/// The entity table of `docs/home-assistant.md` lists exactly the entities
/// announced; `PV3_UPDATE_GENERATED=1` rewrites it.
fn check_entity_table(configs: &BTreeMap<String, Value>) {
    let text = |v: &Value| v.as_str().map_or(String::new(), |s| format!("`{s}`"));
    let mut rows: Vec<(String, String)> = configs
        .iter()
        .map(|(topic, c)| {
            let component = topic.split('/').nth(1).unwrap_or("?");
            let object = topic.split('/').nth(3).unwrap_or("?");
            let row = format!(
                "| `{object}` | {} | {} | {} | {} | {} | {} |",
                c["name"].as_str().unwrap_or("?"),
                component,
                text(&c["unit_of_measurement"]),
                text(&c["device_class"]),
                text(&c["state_class"]),
                text(&c["entity_category"]),
            );
            (format!("{component}/{object}"), row)
        })
        .collect();
    rows.sort();
    let mut table = String::from(
        "| object id | name | component | unit | device class | state class | category |\n|---|---|---|---|---|---|---|\n",
    );
    for (_, row) in rows {
        table.push_str(&row);
        table.push('\n');
    }
    support::generated::check_block(
        DOC,
        TABLE_START,
        TABLE_END,
        &table,
        "PV3_UPDATE_GENERATED=1 cargo test --test it home_assistant::",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_output_broker_costs_the_api_nothing() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let api = RecordingApi::start().await;
    // Nothing listens there: the output broker is down for the whole run.
    let dead = support::free_port().to_string();
    let pv3 = CollectRun::new(port)
        .api(&api)
        .args(&[
            "--ha",
            "--metrics-listen",
            &format!("127.0.0.1:{}", support::free_port()),
            "--out-mqtt-host",
            "127.0.0.1",
            "--out-mqtt-port",
            &dead,
        ])
        .spawn();
    pv3.subscribed(1).await;
    publish_every_topic(port).await;
    api.wait_for_measurements(EVERY_TOPIC_EXPECTED.len(), Duration::from_secs(30))
        .await;
    let status = pv3
        .wait_status("the outputs in status.json", |s| {
            s["outputs"].as_array().is_some_and(|o| o.len() == 2)
        })
        .await;
    let mqtt = &status["outputs"][0];
    assert_eq!(mqtt["name"], "mqtt", "{status}");
    assert_eq!(mqtt["connected"], false, "{status}");
    assert_eq!(status["outputs"][1]["name"], "prometheus", "{status}");
    assert_eq!(status["outputs"][1]["connected"], true, "{status}");
    let stderr = pv3.stop().await;
    assert!(
        stderr.contains(&format!("output broker 127.0.0.1:{dead}")),
        "the output broker's trouble is logged:\n{stderr}"
    );
    assert_eq!(api.measurements().len(), EVERY_TOPIC_EXPECTED.len());
}
