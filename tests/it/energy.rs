//! The energy counters' promise: no total pv3 publishes, exposes on
//! `/metrics` or writes is ever lower than one it published, exposed or
//! wrote before (Home Assistant reads a drop of a `total_increasing` sensor
//! as a meter reset and counts the whole total again), whatever happens in
//! between: a clean stop, a `kill -9`, a failed write of `energy.json`.

use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;

use crate::support;
use support::broker::{InProcessBroker, Publisher};
use support::collect::{CollectRun, Collector};
use support::fixtures::DEVICE;
use support::proc::run_pv3;
use support::topics::Topics;

/// The flat topic of the total these tests drive.
fn charge_topic() -> String {
    format!("pv3/{DEVICE}/battery_charge_energy")
}

/// The same total on `/metrics`, in joules.
fn charge_series() -> String {
    format!("pv3_battery_charge_energy_joules_total{{device=\"{DEVICE}\"}}")
}

/// `{"power": watts}` on the P3's battery power topic.
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

/// The body of `GET http://addr/metrics`.
async fn scrape(addr: &str) -> String {
    let response = support::api::http_client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("a body")
}

/// The value of the sample line that starts with `series`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The `battery_charge_energy` total in `energy.json`.
fn saved(state: &std::path::Path) -> Option<f64> {
    let bytes = std::fs::read(state.join("energy.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["devices"][DEVICE]["battery_charge_energy"].as_f64()
}

/// One collector's life in the test: started on the state directory,
/// fed charging readings that it has all taken, scraped.
struct Life {
    pv3: Collector,
    addr: String,
}

impl Life {
    async fn start(port: u16, state: &std::path::Path) -> Life {
        let addr = format!("127.0.0.1:{}", support::free_port());
        let pv3 = CollectRun::new(port)
            .args(&[
                "--no-api",
                "--publish",
                "--publish-interval",
                "0",
                "--metrics-listen",
                &addr,
            ])
            // A save an hour: what is published in between is what the
            // last save wrote, or the test catches it.
            .env("PV3_ENERGY_SAVE_MS", "3600000")
            .state_dir(state)
            .spawn();
        pv3.subscribed(1).await;
        Life { pv3, addr }
    }

    /// Charging at 20 kW (a P3 can: see `MAX_PLAUSIBLE_WATTS`), `n`
    /// readings a few milliseconds apart, all taken.
    async fn feed(&self, publisher: &Publisher, n: u64) {
        let before = support::collect::number(
            &self.pv3.status().unwrap_or(Value::Null),
            "counters.received",
        )
        .unwrap_or(0);
        for _ in 0..n {
            charge(publisher, -20_000).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.pv3
            .wait_status("the readings taken", |s| {
                support::collect::number(s, "counters.received").is_some_and(|v| v >= before + n)
            })
            .await;
    }

    async fn scraped(&self) -> f64 {
        let body = scrape(&self.addr).await;
        sample(&body, &charge_series()).unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_never_go_back_across_stops_kills_and_a_failed_write() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let topics = Topics::watch(port, &["pv3/#"]).await;
    let publisher = Publisher::connect(port).await;
    let state = support::scratch_dir("energy-never-back");
    let mut scraped = Vec::new();

    // 1. A clean stop: saved, and published no higher than saved.
    let life = Life::start(port, &state).await;
    life.feed(&publisher, 20).await;
    scraped.push(life.scraped().await);
    life.pv3.stop().await;
    let first = saved(&state).expect("energy.json after a clean stop");
    assert!(first > 0.0, "20 kW for a while must count: {first}");

    // 2. A stop whose write fails (a directory where the temporary file
    //    goes): nothing published above what the file holds.
    let blocker = state.join(".energy.json.tmp");
    std::fs::create_dir(&blocker).expect("block the write");
    let life = Life::start(port, &state).await;
    life.feed(&publisher, 20).await;
    scraped.push(life.scraped().await);
    let stderr = life.pv3.stop().await;
    assert!(stderr.contains("cannot write"), "{stderr}");
    std::fs::remove_dir(&blocker).expect("unblock");

    // 3. kill -9 between saves.
    let life = Life::start(port, &state).await;
    life.feed(&publisher, 20).await;
    scraped.push(life.scraped().await);
    life.pv3.kill().await;

    // 4. And once more, to see what the restart publishes and exposes.
    let life = Life::start(port, &state).await;
    life.feed(&publisher, 3).await;
    scraped.push(life.scraped().await);
    life.pv3.stop().await;

    let published: Vec<f64> = topics
        .history(&charge_topic())
        .iter()
        .map(|s| s.payload.parse().expect("a number"))
        .collect();
    assert!(
        published.windows(2).all(|w| w[1] >= w[0]),
        "a published total went down: {published:?}"
    );
    assert!(
        scraped.windows(2).all(|w| w[1] >= w[0]),
        "a scraped total went down: {scraped:?}"
    );
    let last = saved(&state).expect("energy.json at the end");
    let most = published.iter().copied().fold(0.0, f64::max);
    assert!(most > 0.0, "something was published: {published:?}");
    // Flat topics carry the total rounded to the millionth (a mWh).
    assert!(last + 5e-7 >= most, "saved {last} < published {most}");
    assert!(
        last * 3.6e6 >= scraped.iter().copied().fold(0.0, f64::max) - 1e-6,
        "saved {last} kWh < scraped {scraped:?} J"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_no_p3_can_produce_is_not_integrated_and_is_counted() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let publisher = Publisher::connect(port).await;
    let state = support::scratch_dir("energy-implausible");
    let pv3 = CollectRun::new(port)
        .args(&["--no-api", "--publish"])
        .state_dir(&state)
        .spawn();
    pv3.subscribed(1).await;
    // Two readings of 1e300 W (the case), then 1.797e308 W.
    for power in ["1e300", "1e300", "1.797e308", "-1e300"] {
        publisher
            .publish(
                &format!("pv/PV3/{DEVICE}/inverter/charge"),
                format!("{{\"power\":{power}}}"),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    pv3.received(4).await;
    let stderr = pv3.stop().await;
    // Nothing grew, so nothing needed saving; a file, if any, holds zero.
    if let Ok(bytes) = std::fs::read(state.join("energy.json")) {
        let v: Value = serde_json::from_slice(&bytes).expect("JSON");
        for counter in ["battery_discharge_energy", "battery_charge_energy"] {
            assert_eq!(
                v["devices"][DEVICE][counter].as_f64(),
                Some(0.0),
                "{counter}: {v}"
            );
        }
    }
    assert!(
        stderr.contains("4 power readings outside what a P3 can do"),
        "{stderr}"
    );
}

/// The energy line of `replay --dry-run`'s summary, per counter.
fn replay_energy(capture: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.jsonl");
    std::fs::write(&path, capture).expect("write the capture");
    let path = path.to_str().expect("utf-8").to_owned();
    let out = run_pv3(
        &["replay", &path, "--dry-run", "--format", "jsonl"],
        &[],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
        .lines()
        .find(|l| l.starts_with("energy of "))
        .unwrap_or_else(|| panic!("no energy line in {stderr}"))
        .to_owned()
}

#[test]
fn replay_integrates_in_time_order_and_ignores_repeated_readings() {
    let sample = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/p3-sample.jsonl"
    ))
    .expect("the sample capture");
    let once = replay_energy(&sample);
    assert!(!once.contains("grid_export_energy 0.000000"), "{once}");
    // `cat a a`: every reading twice.
    let twice = [&sample[..], &sample[..]].concat();
    assert_eq!(replay_energy(&twice), once);
    // Lines in reverse: the same readings, out of order.
    let mut lines: Vec<&[u8]> = sample
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines.reverse();
    let reversed = lines.join(&b'\n');
    assert_eq!(replay_energy(&reversed), once);
}
