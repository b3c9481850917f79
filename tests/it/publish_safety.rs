//! `collect --publish/--ha` against hostile input: field names, alarm
//! flags and device ids that no MQTT topic may hold, flags that would build
//! such topics, a broker that refuses what pv3 sends, one that never answers
//! the handshake, values no number can show. Seen from outside, on a real
//! Mosquitto where it matters (Mosquitto drops a client that publishes to a
//! topic with a control character; the in-process broker does not check).

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;

use support::broker::{Mosquitto, Publisher};
use support::collect::{CollectRun, Collector, WAIT};
use support::fixtures::DEVICE;
use support::topics::{State, Topics};

/// Lines of collect's log that say the output broker (re)connected.
fn output_connects(pv3: &Collector) -> usize {
    pv3.stderr()
        .lines()
        .filter(|l| l.contains("output broker") && l.contains(": connected"))
        .count()
}

/// The retained discovery configs seen so far, by topic.
fn configs(s: &State) -> Vec<(String, Value)> {
    s.live_under("homeassistant/")
        .into_iter()
        .filter_map(|(t, p)| Some((t, serde_json::from_str(&p).ok()?)))
        .collect()
}

/// The config whose entity name starts with `name`, and the latest payload
/// of its state topic.
fn entity(s: &State, name: &str) -> Option<(Value, Option<String>)> {
    let (_, c) = configs(s)
        .into_iter()
        .find(|(_, c)| c["name"].as_str().is_some_and(|n| n.starts_with(name)))?;
    let state = s.latest(c["state_topic"].as_str()?).map(str::to_owned);
    Some((c, state))
}

/// A topic Mosquitto accepts from a publisher: no control character (C0,
/// DEL, C1), no non-character, no wildcard, at most 65,535 bytes.
fn valid_topic(topic: &str) -> bool {
    topic.len() <= 65_535
        && !topic.contains(['+', '#'])
        && !topic.chars().any(|c| {
            c.is_control()
                || ('\u{fdd0}'..='\u{fdef}').contains(&c)
                || (c as u32 & 0xfffe) == 0xfffe
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_name_or_alarm_flag_with_a_control_character_costs_no_reconnect() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let port = broker.port();
    // Retained on the P3's broker: they come back at every start.
    let publisher = Publisher::connect(port).await;
    let p3 = |suffix: &str| format!("pv/PV3/{DEVICE}/{suffix}");
    publisher
        .publish(
            &p3("safetycheck/state"),
            r#"{"a\nb":1,"State":2}"#,
            QoS::AtLeastOnce,
            true,
        )
        .await;
    publisher
        .publish(
            &p3("inverter/alarms"),
            r#"{"x\u0001y":"1","fan_lock":"0"}"#,
            QoS::AtLeastOnce,
            true,
        )
        .await;
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = CollectRun::new(port).args(&["--no-api", "--ha"]).spawn();
    pv3.subscribed(1).await;
    publisher
        .publish(
            &p3("inverter/charge"),
            r#"{"power":500}"#,
            QoS::AtLeastOnce,
            false,
        )
        .await;

    // Every entity announced, its state on its own topic, or the output
    // looping on reconnects: whichever comes first.
    let announced = |s: &State| {
        [
            ("Safety check a b", "1"),
            ("Safety check state", "2"),
            ("X y", "ON"),
            ("Fan locked", "OFF"),
            ("Battery power", "500"),
        ]
        .iter()
        .all(|(name, value)| entity(s, name).is_some_and(|(_, v)| v.as_deref() == Some(*value)))
    };
    support::wait_for(WAIT, || {
        topics.with(announced) || output_connects(&pv3) >= 3
    })
    .await;
    assert_eq!(
        output_connects(&pv3),
        1,
        "the output reconnected:\n{}",
        pv3.stderr()
    );
    assert!(topics.with(announced), "not every entity came through");

    // The connection still carries news after the hostile entities.
    publisher
        .publish(
            &p3("inverter/charge"),
            r#"{"power":600}"#,
            QoS::AtLeastOnce,
            false,
        )
        .await;
    topics
        .wait_for(&format!("pv3/{DEVICE}/battery_power"), "600")
        .await;
    assert_eq!(output_connects(&pv3), 1, "{}", pv3.stderr());
    let status = topics.history(&format!("pv3/{DEVICE}/status"));
    assert!(
        status.iter().all(|s| s.payload == "online"),
        "availability flapped: {status:?}"
    );
    // Each hostile name has a topic of its own, distinct from the others.
    let state_topics: BTreeSet<String> = topics.with(|s| {
        configs(s)
            .iter()
            .filter_map(|(_, c)| c["state_topic"].as_str().map(str::to_owned))
            .collect()
    });
    assert_eq!(state_topics.len(), topics.with(|s| configs(s).len()));
    assert!(
        state_topics.iter().all(|t| valid_topic(t)),
        "{state_topics:?}"
    );
    pv3.stop().await;
}

support::on_both_brokers!(devices_whose_ids_sanitise_alike_keep_their_own_entities);
async fn devices_whose_ids_sanitise_alike_keep_their_own_entities(
    broker: support::broker::TestBroker,
) {
    let port = broker.port();
    let devices = ["PV001001DEV", "pv001001dev", "A B", "a_b"];
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = CollectRun::new(port)
        .args(&["--no-api", "--ha", "--device-id", "+"])
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(port).await;
    for (i, device) in devices.iter().enumerate() {
        let payload = format!(r#"{{"power":{}}}"#, 100 + i);
        publisher
            .publish(
                &format!("pv/PV3/{device}/inverter/charge"),
                payload,
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    // Every device's battery power config has gone out (whatever topic it
    // went to), and every state.
    let announced = |s: &State| {
        let pairs: BTreeSet<(&String, String)> = s
            .history
            .iter()
            .filter(|(t, _)| t.ends_with("/battery_power/config"))
            .flat_map(|(t, h)| {
                h.iter().filter_map(move |m| {
                    let c: Value = serde_json::from_str(&m.payload).ok()?;
                    Some((t, c["device"]["serial_number"].to_string()))
                })
            })
            .collect();
        pairs.len() >= devices.len()
            && devices.iter().enumerate().all(|(i, d)| {
                s.latest(&format!("pv3/{d}/battery_power")) == Some(&(100 + i).to_string())
            })
    };
    topics.wait("every device's battery power", announced).await;
    let all = topics.with(configs);
    let mut unique_ids = BTreeSet::new();
    let mut nodes = BTreeSet::new();
    for (i, device) in devices.iter().enumerate() {
        let found: Vec<&(String, Value)> = all
            .iter()
            .filter(|(_, c)| {
                c["device"]["serial_number"] == *device && c["name"] == "Battery power"
            })
            .collect();
        assert_eq!(found.len(), 1, "{device}: configs {all:#?}");
        let (topic, c) = found[0];
        let state_topic = c["state_topic"].as_str().expect("state_topic");
        assert_eq!(
            topics.latest(state_topic),
            Some((100 + i).to_string()),
            "{device}: {topic} points at {state_topic}"
        );
        let status = c["availability"][0]["topic"].as_str().expect("status");
        assert_eq!(topics.latest(status).as_deref(), Some("online"), "{status}");
        unique_ids.insert(c["unique_id"].to_string());
        nodes.insert(c["device"]["identifiers"][0].to_string());
    }
    assert_eq!(unique_ids.len(), devices.len(), "{unique_ids:?}");
    assert_eq!(nodes.len(), devices.len(), "{nodes:?}");
    // The P3's own id keeps the ids it always had.
    assert!(nodes.contains("\"pv3_pv001001dev\""), "{nodes:?}");
    pv3.stop().await;
}

/// Runs pv3 with `args` and `envs`, expecting a refusal: its exit code and
/// stderr, or `None` when it was still running after a few seconds (it
/// accepted the flags and started; it is killed).
async fn refused(args: &[&str], envs: &[(&str, &str)]) -> Option<(Option<i32>, String)> {
    let mut pv3 = support::proc::Pv3Process::spawn(args, envs);
    let status = pv3.wait_exit(Duration::from_secs(10)).await;
    let stderr = pv3.stderr();
    if status.is_none() {
        pv3.kill();
        eprintln!("{args:?} started:\n{stderr}");
    }
    status.map(|s| (s.code(), stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_and_client_ids_mqtt_cannot_carry_are_refused_before_anything_starts() {
    let port = support::free_port().to_string();
    let cases: &[(&str, &str, &str)] = &[
        ("--publish-prefix", "pv\u{1}3", "is not a topic prefix"),
        ("--publish-prefix", "pv\n3", "is not a topic prefix"),
        ("--publish-prefix", "pv\u{7f}", "is not a topic prefix"),
        (
            "--ha-prefix",
            "home\u{85}assistant",
            "is not a topic prefix",
        ),
        ("--ha-prefix", "home\u{fdd0}", "is not a topic prefix"),
        ("--publish-prefix", "$SYS/pv3", "is not a topic prefix"),
        ("--publish-prefix", "pv3//x", "is not a topic prefix"),
        ("--publish-prefix", "pv3/+", "is not a topic prefix"),
        ("--out-mqtt-client-id", "pv3\u{1}", "is not a client id"),
        ("--mqtt-client-id", "pv3\nout", "is not a client id"),
    ];
    for (flag, value, says) in cases {
        let args = [
            "collect",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &port,
            "--no-api",
            "--ha",
            flag,
            value,
        ];
        let (code, stderr) = refused(&args, &[])
            .await
            .unwrap_or_else(|| panic!("{flag} {value:?} was accepted"));
        assert_eq!(code, Some(2), "{flag} {value:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(flag) && first.contains(says),
            "{flag} {value:?}: {stderr}"
        );
        assert!(
            !stderr.chars().any(|c| c.is_control() && c != '\n'),
            "{flag} {value:?}: the error carries the raw character: {stderr:?}"
        );
    }
    // The same from the environment (the systemd unit's way).
    let args = [
        "collect",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        &port,
        "--no-api",
        "--publish",
    ];
    let (code, stderr) = refused(&args, &[("PUBLISH_PREFIX", "pv\u{1}3")])
        .await
        .expect("PUBLISH_PREFIX with a control character was accepted");
    assert_eq!(code, Some(2), "{stderr}");
}

/// The body of `GET http://addr/metrics`.
async fn scrape(addr: &str) -> String {
    let response = support::api::http_client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_reading_is_published_and_scraped_as_a_finite_number() {
    let broker = support::broker::InProcessBroker::start().await;
    let port = broker.port();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let topics = Topics::watch(port, &["pv3/#"]).await;
    let pv3 = CollectRun::new(port)
        .args(&["--no-api", "--publish", "--publish-interval", "0"])
        .args(&["--metrics-listen", &addr])
        .spawn();
    pv3.subscribed(1).await;
    let publisher = Publisher::connect(port).await;
    // The CT clamp's power in mW: 1.797e308 is a finite JSON number, and
    // 1.797e305 W once decoded.
    let grid = r#"[{"channel":"HOUSE","measurement":"Power","type":"Active","value":1.797e308}]"#;
    publisher
        .publish(
            &format!("pv/PV3/{DEVICE}/ffr/measurements"),
            grid,
            QoS::AtLeastOnce,
            false,
        )
        .await;
    let topic = format!("pv3/{DEVICE}/grid_power");
    topics
        .wait("the grid power", |s| s.latest(&topic).is_some())
        .await;
    let text = topics.latest(&topic).expect("published");
    let value: f64 = text.parse().unwrap_or(f64::NAN);
    assert!(
        value.is_finite() && (value / 1.797e305 - 1.0).abs() < 1e-9,
        "{topic} = {text:?}"
    );
    let numbers_finite = |s: &State| {
        s.history
            .iter()
            .flat_map(|(t, h)| h.iter().map(move |m| (t, &m.payload)))
            // Availability, pv3's own health (times, its version) and
            // its probe are not the P3's numbers.
            .filter(|(t, _)| !t.ends_with("/status"))
            .filter(|(t, _)| !t.contains("/pv3/") && !t.contains("/_probe/"))
            .all(|(_, p)| p.parse::<f64>().is_ok_and(f64::is_finite))
    };
    assert!(
        topics.with(numbers_finite),
        "a flat topic holds no finite number"
    );
    let body = scrape(&addr).await;
    let series = format!("pv3_grid_power_watts{{device=\"{DEVICE}\"}} ");
    let sample = body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"));
    assert_eq!(sample.parse::<f64>().ok(), Some(1.797e305), "{sample}");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok_and(f64::is_finite),
            "not a finite sample: {line}"
        );
    }
    pv3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_broker_that_never_answers_the_handshake_is_named_within_seconds() {
    let broker = support::broker::InProcessBroker::start().await;
    // Accepts TCP connections, reads nothing, says nothing, keeps them open.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            conns.push(stream);
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let out_port = silent_port.to_string();
    let pv3 = CollectRun::new(broker.port())
        .args(&["--no-api", "--publish"])
        .args(&["--out-mqtt-host", "127.0.0.1", "--out-mqtt-port", &out_port])
        .spawn();
    pv3.subscribed(1).await;
    let endpoint = format!("output broker 127.0.0.1:{silent_port}");
    // The spec says within 10 s; the wait is generous, the log line is
    // what counts.
    let named = pv3
        .wait_for_stderr_lines(
            1,
            |l| l.contains(&endpoint) && l.contains("CONNACK"),
            Duration::from_secs(20),
        )
        .await;
    assert!(
        named,
        "the silent output broker is not named:\n{}",
        pv3.stderr()
    );
    // One attempt waited for its answer (and perhaps the next begun), not
    // a new connection every few hundred milliseconds.
    let attempts = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=3).contains(&attempts),
        "{attempts} connections to the silent broker"
    );
    let status = pv3
        .wait_status("the mqtt output listed", |s| {
            s["outputs"][0]["name"] == "mqtt"
        })
        .await;
    assert_eq!(status["outputs"][0]["connected"], false, "{status}");
    pv3.stop().await;
    held.abort();
}

/// The reconnect delays the output's debug lines give, in order.
fn output_retry_delays(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.contains("output broker"))
        .filter_map(|l| l.split("retry in ").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_broker_refuses_costs_one_counted_drop_not_a_reconnect_loop() {
    // Mosquitto drops a client that sends a packet over max_packet_size;
    // every message pv3 sends fits but the config of the entity below (the
    // largest other config is under 900 bytes; this one, with an 88-byte
    // key in five of its fields, is over 1,100).
    let Some(broker) = Mosquitto::start_with("max_packet_size 1000").await else {
        return;
    };
    let port = broker.port();
    let key = "K".repeat(88);
    let publisher = Publisher::connect(port).await;
    let p3 = |suffix: &str| format!("pv/PV3/{DEVICE}/{suffix}");
    publisher
        .publish(
            &p3("safetycheck/state"),
            format!(r#"{{"State":1,"{key}":2}}"#),
            QoS::AtLeastOnce,
            true,
        )
        .await;
    let topics = Topics::watch(port, &["pv3/#", "homeassistant/#"]).await;
    let pv3 = CollectRun::new(port)
        .global_args(&["-v"])
        .reconnect_max("5")
        .args(&["--no-api", "--ha"])
        .spawn();
    pv3.subscribed(1).await;
    publisher
        .publish(
            &p3("inverter/charge"),
            r#"{"power":5}"#,
            QoS::AtLeastOnce,
            false,
        )
        .await;
    // Flat topics in lower case (issue 20).
    let long_state = format!("pv3/{DEVICE}/safetycheck_{}", key.to_lowercase());
    let settled = |s: &State| {
        entity(s, "Safety check state").is_some_and(|(_, v)| v.as_deref() == Some("1"))
            && entity(s, "Battery power").is_some_and(|(_, v)| v.as_deref() == Some("5"))
            && s.latest(&long_state) == Some("2")
    };
    let dropped = || {
        pv3.status()
            .and_then(|s| s["outputs"][0]["dropped"].as_u64())
            .unwrap_or(0)
    };
    support::wait_for(WAIT, || {
        (topics.with(settled) && dropped() >= 1) || output_connects(&pv3) >= 6
    })
    .await;
    let stderr = pv3.stderr();
    let connects = output_connects(&pv3);
    assert!(
        connects <= 4,
        "{connects} output connections: a reconnect loop\n{stderr}"
    );
    assert!(topics.with(settled), "not every other value came through");
    assert_eq!(dropped(), 1, "one counted drop");
    let config = format!("safetycheck_{}/config", key.to_lowercase());
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&config)),
        "the refused message is named:\n{stderr}"
    );
    assert!(
        topics.with(|s| s
            .latest(&format!("homeassistant/sensor/pv3_pv001001dev/{config}"))
            .is_none()),
        "the broker took the oversized config after all?"
    );
    // Backed off, as the source link does: each wait at least the last.
    let delays = output_retry_delays(&stderr);
    assert!(
        delays.len() >= 2 && delays.windows(2).all(|w| w[1] >= w[0]),
        "reconnect delays {delays:?}\n{stderr}"
    );
    // And the connection stays up and carries news.
    publisher
        .publish(
            &p3("inverter/charge"),
            r#"{"power":6}"#,
            QoS::AtLeastOnce,
            false,
        )
        .await;
    topics
        .wait_for(&format!("pv3/{DEVICE}/battery_power"), "6")
        .await;
    assert_eq!(output_connects(&pv3), connects, "{}", pv3.stderr());
    pv3.stop().await;
}
