//! Finding the P3: `pv3 devices` lists what publishes on a broker, and
//! `collect` with a wrong `--device-id` says which id does publish (in its
//! log, in `status.json`, and in check-api's collector row). Each test runs
//! against the in-process broker and a real Mosquitto.

use crate::support;

use std::process::Output;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;
use tokio::task::JoinHandle;

use support::api::RecordingApi;
use support::broker::{Publisher, TestBroker};
use support::collect::CollectRun;
use support::on_both_brokers;
use support::proc::{run_pv3, run_pv3_async, show};

/// Waits end on the event; this only bounds them.
const T: Duration = Duration::from_secs(30);

/// Two P3s, as their brokers carry them: (device, soc raw, battery W, grid CT mW).
const FLEET: &[(&str, i64, i64, i64)] = &[
    ("PV001002ABC", 9700, 591, -413_800),
    ("PV009009XYZ", 5250, -1200, 2_500_000),
];

/// P3s publishing their SOC, battery power and CT clamp every 50 ms, the
/// way a P3 keeps publishing, until dropped.
struct FakeP3s(JoinHandle<()>);

impl FakeP3s {
    async fn start(port: u16, fleet: &'static [(&'static str, i64, i64, i64)]) -> FakeP3s {
        let publisher = Publisher::connect(port).await;
        FakeP3s(tokio::spawn(async move {
            loop {
                for (device, soc, power, grid) in fleet {
                    let messages = [
                        (
                            "bms/soc",
                            format!(r#"[{{"measurement":"StateOfCharge","value":{soc}}}]"#),
                        ),
                        ("inverter/charge", format!(r#"{{"power":{power}}}"#)),
                        (
                            "ffr/measurements",
                            format!(
                                r#"[{{"channel":"HOUSE","measurement":"Power","type":"Active","value":{grid}}}]"#
                            ),
                        ),
                    ];
                    for (suffix, payload) in messages {
                        publisher
                            .publish(
                                &format!("pv/PV3/{device}/{suffix}"),
                                payload,
                                QoS::AtMostOnce,
                                false,
                            )
                            .await;
                    }
                }
                // A P3's cadence, not a wait for an event.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }
}

impl Drop for FakeP3s {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `pv3 devices` against the broker on `port`, run to its end.
async fn devices(port: u16, extra: &[&str]) -> Output {
    let port = port.to_string();
    let mut args = vec!["devices", "--mqtt-host", "127.0.0.1", "--mqtt-port", &port];
    args.extend_from_slice(extra);
    run_pv3_async(&args, &[]).await
}

// --------------------------------------------------------------------------

on_both_brokers!(devices_lists_both_p3s_with_their_values_decoded);
async fn devices_lists_both_p3s_with_their_values_decoded(broker: TestBroker) {
    let _p3s = FakeP3s::start(broker.port(), FLEET).await;

    let out = devices(broker.port(), &["--wait", "1", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ids: Vec<&str> = lines
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert_eq!(ids, ["PV001002ABC", "PV009009XYZ"], "{}", show(&out));
    assert_eq!(
        lines[0]["headline"],
        serde_json::json!({"soc": 97.0, "battery_power": 591.0, "grid_power": -413.8})
    );
    assert_eq!(
        lines[1]["headline"],
        serde_json::json!({"soc": 52.5, "battery_power": -1200.0, "grid_power": 2500.0})
    );
    for device in &lines {
        let topics = device["topics"].as_object().expect("topics");
        let names: Vec<&str> = topics.keys().map(String::as_str).collect();
        assert_eq!(names, ["bms/soc", "ffr/measurements", "inverter/charge"]);
        for (name, t) in topics {
            assert!(
                t["messages"].as_u64().is_some_and(|n| n >= 1),
                "{name}: {t}"
            );
            assert!(t["age_s"].as_f64().is_some_and(|a| a >= 0.0), "{name}: {t}");
        }
    }

    // The table says the same for people, and how to collect each.
    let out = devices(broker.port(), &["--wait", "1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "PV001002ABC: ",
        "SOC 97.0 %, battery 591.0 W (discharging), grid -413.8 W (exporting)",
        "PV009009XYZ: ",
        "SOC 52.5 %, battery -1200.0 W (charging), grid 2500.0 W (importing)",
        "│ inverter/charge ",
        "pv3 collect --device-id PV001002ABC",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
}

on_both_brokers!(devices_on_an_empty_broker_exits_1_with_hints);
async fn devices_on_an_empty_broker_exits_1_with_hints(broker: TestBroker) {
    let out = devices(broker.port(), &["--wait", "0.5"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(out.stdout.is_empty(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for hint in [
        "is this the P3's broker?",
        "--mqtt-host 127.0.0.1 and --mqtt-port",
        "--wait 30",
        &format!(
            "pv3: error: no P3 published on 127.0.0.1:{} in 0.5 s",
            broker.port()
        ),
    ] {
        assert!(err.contains(hint), "no {hint:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_without_a_broker_names_host_port_and_credentials() {
    let port = support::free_port();
    let out = devices(port, &["--wait", "0.5"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for hint in [
        &format!("could not connect to the MQTT broker 127.0.0.1:{port}"),
        "--mqtt-host: is 127.0.0.1 the P3's LAN address?",
        "--mqtt-port: the P3's broker listens on 1883",
        "--mqtt-username/--mqtt-password",
    ] {
        assert!(err.contains(hint), "no {hint:?} in:\n{err}");
    }
}

#[test]
fn devices_refuses_bad_flags_before_connecting() {
    for bad in [["--wait", "0"], ["--format", "yaml"]] {
        let out = run_pv3(
            &[
                "devices",
                "--mqtt-host",
                "127.0.0.1",
                "--mqtt-port",
                "9",
                bad[0],
                bad[1],
            ],
            &[],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("listening"),
            "{}",
            show(&out)
        );
    }
}

// ---- collect with the wrong device id ----------------------------------

/// collect for `device`, told to look around 300 ms after subscribing.
fn collect_for(
    device: &str,
    broker: &TestBroker,
    api: &RecordingApi,
) -> support::collect::Collector {
    CollectRun::new(broker.port())
        .api(api)
        .args(&["--device-id", device])
        .env("PV3_DEVICE_HINT_AFTER_MS", "300")
        .spawn()
}

fn hint_of(status: &Value) -> Option<&str> {
    status["device_hint"].as_str()
}

on_both_brokers!(collect_with_a_wrong_device_id_names_the_right_one);
async fn collect_with_a_wrong_device_id_names_the_right_one(broker: TestBroker) {
    let api = RecordingApi::start().await;
    let _p3 = FakeP3s::start(broker.port(), &FLEET[..1]).await;
    let pv3 = collect_for("PV001002ABD", &broker, &api);
    let said = "no messages for PV001002ABD in 0.3 s of subscribing; messages are flowing for \
                PV001002ABC — did you mean --device-id PV001002ABC?";
    let status = pv3
        .wait_status("a device hint", |s| hint_of(s).is_some())
        .await;
    assert!(
        hint_of(&status).is_some_and(|h| h.starts_with(said)),
        "{status}"
    );
    assert!(pv3.wait_for_stderr(said, T).await, "{}", pv3.stderr());

    // check-api's collector row carries the same hint.
    let dir = pv3.state_dir().to_str().expect("utf-8").to_owned();
    let url = api.url();
    let out = tokio::task::spawn_blocking(move || {
        run_pv3(
            &[
                "check-api",
                "--api-url",
                &url,
                "--state-dir",
                &dir,
                "--format",
                "json",
            ],
            &[],
            None,
        )
    })
    .await
    .expect("check-api thread");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check-api --format json: {e}\n{}", show(&out)));
    let row = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "collector MQTT"))
        .unwrap_or_else(|| panic!("no collector MQTT row: {report}"));
    assert_eq!(row["status"], "warn", "{row}");
    assert!(
        row["detail"]
            .as_str()
            .is_some_and(|d| d.contains("did you mean --device-id PV001002ABC?")),
        "{row}"
    );
    pv3.stop().await;
    assert!(
        api.measurements().is_empty(),
        "another device's data was posted"
    );
}

on_both_brokers!(collect_on_a_broker_without_p3s_asks_whether_it_is_the_p3s);
async fn collect_on_a_broker_without_p3s_asks_whether_it_is_the_p3s(broker: TestBroker) {
    let api = RecordingApi::start().await;
    let pv3 = collect_for("PV001002ABD", &broker, &api);
    let status = pv3
        .wait_status("a device hint", |s| hint_of(s).is_some())
        .await;
    assert!(
        hint_of(&status).is_some_and(|h| h.contains(
            "no messages for PV001002ABD in 0.3 s of subscribing, and nothing at all on pv/PV3/: is this the P3's broker?"
        )),
        "{status}"
    );
    // The device turns up after all: the hint is withdrawn.
    let publisher = Publisher::connect(broker.port()).await;
    publisher
        .publish(
            "pv/PV3/PV001002ABD/inverter/charge",
            r#"{"power":5}"#,
            QoS::AtLeastOnce,
            false,
        )
        .await;
    pv3.wait_status("the hint withdrawn", |s| {
        hint_of(s).is_none() && s["counters"]["received"] == 1
    })
    .await;
    pv3.stop().await;
}
