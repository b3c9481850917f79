//! The Home Assistant add-on: `pv3 addon` started the way the Supervisor
//! starts the add-on's container (an options file in its data directory,
//! `SUPERVISOR_TOKEN` set, the Supervisor's API answering `GET
//! /services/mqtt`), and the add-on's files in `ha-addon/pv3/` held to the
//! community add-on linter, to pv3's version and to collect's flags.
//!
//! The linter and the YAML checks need python3 with jsonschema and PyYAML;
//! without them they skip, with the reason, unless
//! `PV3_REQUIRE_ADDON_LINT=1` (CI) makes that a failure.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use support::api::RecordingApi;
use support::broker::{InProcessBroker, Publisher, publish_charges};
use support::collect::Collector;
use support::fixtures::DEVICE;
use support::proc::{Pv3, Pv3Process, show};
use support::supervisor::{Answer, Supervisor};

/// Generous: shared, slow machines. Waits end on the event.
const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "supervisor-token-for-pv3";
const USER: &str = "addons";
const PASSWORD: &str = "generated-by-mosquitto";

fn addon_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ha-addon/pv3")
}

/// A data directory holding `options`, as the Supervisor writes it.
fn data_dir(options: &Value) -> PathBuf {
    let dir = support::scratch_dir("addon-data");
    std::fs::write(dir.join("options.json"), options.to_string()).expect("write options.json");
    dir
}

/// `pv3 addon` as the Supervisor starts it: no arguments, the data
/// directory, the token and the Supervisor's address in the environment.
fn addon(data: &Path, supervisor: Option<&Supervisor>, envs: &[(&str, &str)]) -> Command {
    let mut cmd = Pv3::cmd();
    cmd.arg("addon")
        .env_remove("SUPERVISOR_TOKEN")
        .env_remove("HASSIO_TOKEN")
        .env("PV3_ADDON_DATA", data)
        .env("PV3_STATUS_INTERVAL_MS", "50")
        .env("SUPERVISOR_TOKEN", TOKEN);
    match supervisor {
        Some(s) => cmd.env("PV3_SUPERVISOR_URL", s.url()),
        // Nothing listens there.
        None => cmd.env(
            "PV3_SUPERVISOR_URL",
            format!("http://127.0.0.1:{}", support::free_port()),
        ),
    };
    cmd.envs(envs.iter().copied());
    cmd
}

/// Runs `cmd` to its end (off the runtime's threads).
async fn finish(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run pv3 addon"))
        .await
        .expect("runner thread")
}

/// The lines of stderr that say anything.
fn said(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Exactly one line on stderr, and it holds each of `words`; the exit code.
fn one_line(out: &Output, words: &[&str]) -> Option<i32> {
    let lines = said(out);
    assert_eq!(lines.len(), 1, "one line, not:\n{}", show(out));
    for word in words {
        assert!(lines[0].contains(word), "no {word:?} in:\n{}", show(out));
    }
    out.status.code()
}

fn config_topic(device: &str, metric: &str) -> String {
    format!(
        "homeassistant/sensor/pv3_{}/{metric}/config",
        device.to_lowercase()
    )
}

/// Waits until the broker holds a retained message on `topic`.
async fn retained_on(broker: &InProcessBroker, topic: &str, run: &Pv3Process) {
    let there = support::wait_for(T, || {
        broker.retained().contains_key(topic) || run.stderr_closed()
    })
    .await;
    assert!(
        there && broker.retained().contains_key(topic),
        "nothing retained on {topic}; retained: {:?}",
        broker.retained().keys().collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_s_broker_gets_the_discovery_with_its_login() {
    let p3 = InProcessBroker::start().await;
    let mosquitto = InProcessBroker::start_with_login(USER, PASSWORD).await;
    let supervisor =
        Supervisor::start(Answer::mqtt("127.0.0.1", mosquitto.port(), USER, PASSWORD)).await;
    let data = data_dir(&json!({
        "mqtt_host": "127.0.0.1", "mqtt_port": p3.port(), "device_id": DEVICE,
        "ha_discovery": true, "log_level": "info"
    }));
    let run = Pv3Process::spawn_cmd(&mut addon(&data, Some(&supervisor), &[]));
    let collector = Collector::adopt(run, data.clone());
    collector.subscribed(1).await;
    publish_charges(p3.port(), 0..3).await;
    retained_on(
        &mosquitto,
        &config_topic(DEVICE, "battery_power"),
        &collector,
    )
    .await;
    retained_on(
        &mosquitto,
        &format!("pv3/{DEVICE}/battery_power"),
        &collector,
    )
    .await;

    // Asked once, with the token; connected with the service's login only.
    let asked = supervisor.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].line, "GET /services/mqtt");
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    let logins = mosquitto.logins();
    assert!(!logins.is_empty());
    assert!(
        logins
            .iter()
            .all(|l| l == &Some((USER.into(), PASSWORD.into()))),
        "{logins:?}"
    );
    // Nothing was published on the P3's own broker.
    assert!(p3.retained().is_empty(), "{:?}", p3.retained().keys());
    // The state is in the data directory: the energy totals and the status.
    collector.received(3).await;
    collector.stop().await;
    assert!(
        data.join("energy.json").is_file(),
        "no energy.json in {}",
        data.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_broker_in_the_options_wins_and_the_supervisor_is_not_asked() {
    let p3 = InProcessBroker::start().await;
    let other = InProcessBroker::start_with_login("me", "mine").await;
    let supervisor = Supervisor::start(Answer::error(500, "should not be asked")).await;
    let data = data_dir(&json!({
        "mqtt_host": "127.0.0.1", "mqtt_port": p3.port(), "device_id": DEVICE,
        "ha_discovery": true, "out_mqtt_host": "127.0.0.1", "out_mqtt_port": other.port(),
        "out_mqtt_username": "me", "out_mqtt_password": "mine"
    }));
    let run = Pv3Process::spawn_cmd(&mut addon(&data, Some(&supervisor), &[]));
    let collector = Collector::adopt(run, data);
    collector.subscribed(1).await;
    publish_charges(p3.port(), 0..2).await;
    retained_on(&other, &config_topic(DEVICE, "battery_power"), &collector).await;
    assert!(supervisor.requests().is_empty());
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mosquitto_discovery_is_off_with_one_warning_and_the_api_still_fed() {
    let p3 = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    let supervisor = Supervisor::start(Answer::no_mqtt()).await;
    let data = data_dir(&json!({
        "mqtt_host": "127.0.0.1", "mqtt_port": p3.port(), "device_id": DEVICE,
        "api_url": api.url(), "ha_discovery": true
    }));
    let run = Pv3Process::spawn_cmd(&mut addon(&data, Some(&supervisor), &[]));
    let collector = Collector::adopt(run, data);
    collector.subscribed(1).await;
    publish_charges(p3.port(), 0..3).await;
    api.wait_for_measurements(3, T).await;
    let log = collector.stop().await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Home Assistant discovery is off"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("Service not enabled"), "{log}");
    assert!(p3.retained().is_empty(), "{:?}", p3.retained().keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mosquitto_and_nothing_else_to_do_it_stops_with_one_line() {
    let supervisor = Supervisor::start(Answer::no_mqtt()).await;
    let data =
        data_dir(&json!({"mqtt_host": "127.0.0.1", "device_id": DEVICE, "ha_discovery": true}));
    let out = finish(addon(&data, Some(&supervisor), &[])).await;
    let code = one_line(
        &out,
        &["no MQTT broker", "Mosquitto", "Service not enabled"],
    );
    assert_eq!(code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_options_file_is_one_line_and_no_start() {
    let supervisor = Supervisor::start(Answer::error(500, "not asked")).await;
    let data = support::scratch_dir("addon-data");
    std::fs::write(data.join("options.json"), "{\"mqtt_host\": \"127.0.0.1\", ").expect("write");
    let out = finish(addon(&data, Some(&supervisor), &[])).await;
    let code = one_line(&out, &["options.json", "not valid JSON"]);
    assert_eq!(code, Some(2));
    assert!(supervisor.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_option_is_collect_s_message_on_one_line_naming_the_option() {
    let supervisor = Supervisor::start(Answer::error(500, "not asked")).await;
    for (options, words) in [
        (
            json!({"mqtt_host": "127.0.0.1", "device_id": DEVICE, "api_url": "pv3-monitor:8800"}),
            vec!["option api_url", "invalid value 'pv3-monitor:8800'"],
        ),
        (
            json!({"mqtt_host": "127.0.0.1", "device_id": "PV/1", "ha_discovery": true}),
            vec!["option device_id", "PV/1", "not a device id"],
        ),
        (
            json!({"mqtt_host": "127.0.0.1", "device_id": DEVICE, "log_level": "loud"}),
            vec!["option log_level", "'loud'"],
        ),
        (
            json!({"device_id": DEVICE, "ha_discovery": true}),
            vec!["option mqtt_host is not set", "the P3's address"],
        ),
        (
            json!({"mqtt_host": "127.0.0.1", "device_id": DEVICE, "ha_discovery": false}),
            vec!["nothing to send", "api_url", "ha_discovery", "metrics_port"],
        ),
    ] {
        let data = data_dir(&options);
        let out = finish(addon(&data, Some(&supervisor), &[])).await;
        assert_eq!(one_line(&out, &words), Some(2), "{options}");
    }
    assert!(supervisor.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_refusing_the_token_is_one_line_and_exit_1() {
    let supervisor = Supervisor::start(Answer::error(401, "Unauthorized")).await;
    let data =
        data_dir(&json!({"mqtt_host": "127.0.0.1", "device_id": DEVICE, "ha_discovery": true}));
    let out = finish(addon(&data, Some(&supervisor), &[])).await;
    let code = one_line(
        &out,
        &[
            "Supervisor refused the add-on's token",
            "401",
            "/services/mqtt",
        ],
    );
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_answering_nothing_is_one_line_and_exit_1() {
    let data =
        data_dir(&json!({"mqtt_host": "127.0.0.1", "device_id": DEVICE, "ha_discovery": true}));
    // Nothing listens.
    let out = finish(addon(&data, None, &[])).await;
    assert_eq!(
        one_line(&out, &["cannot ask the Supervisor", "cannot connect"]),
        Some(1)
    );
    // It listens, reads, and never answers.
    let silent = Supervisor::start(Answer::Nothing).await;
    let out = finish(addon(
        &data,
        Some(&silent),
        &[("PV3_SUPERVISOR_TIMEOUT_MS", "300")],
    ))
    .await;
    assert_eq!(
        one_line(&out, &["cannot ask the Supervisor", "timed out"]),
        Some(1)
    );
    assert_eq!(silent.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_an_addon_it_says_how_to_run_collect() {
    let empty = support::scratch_dir("addon-data");
    let mut cmd = addon(&empty, None, &[]);
    cmd.env_remove("SUPERVISOR_TOKEN");
    let out = finish(cmd).await;
    assert_eq!(
        one_line(&out, &["options.json", "pv3 collect --mqtt-host"]),
        Some(2)
    );
}

/// Publishes a `bms/soc` message for each of `devices` every 100 ms until
/// dropped.
struct P3s(tokio::task::JoinHandle<()>);

impl P3s {
    async fn publish(port: u16, devices: &[&str]) -> P3s {
        let publisher = Publisher::connect(port).await;
        let topics: Vec<String> = devices
            .iter()
            .map(|d| format!("pv/PV3/{d}/bms/soc"))
            .collect();
        P3s(tokio::spawn(async move {
            loop {
                for topic in &topics {
                    publisher
                        .publish(
                            topic,
                            r#"[{"measurement":"StateOfCharge","value":9700}]"#,
                            rumqttc::QoS::AtMostOnce,
                            false,
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }
}

impl Drop for P3s {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_device_id_the_one_p3_publishing_is_used() {
    let p3 = InProcessBroker::start().await;
    let mosquitto = InProcessBroker::start_with_login(USER, PASSWORD).await;
    let supervisor =
        Supervisor::start(Answer::mqtt("127.0.0.1", mosquitto.port(), USER, PASSWORD)).await;
    let _publishing = P3s::publish(p3.port(), &["PV001002ABC"]).await;
    let data =
        data_dir(&json!({"mqtt_host": "127.0.0.1", "mqtt_port": p3.port(), "ha_discovery": true}));
    let run = Pv3Process::spawn_cmd(&mut addon(
        &data,
        Some(&supervisor),
        &[("PV3_DEVICE_LISTEN_MS", "1500")],
    ));
    assert!(
        run.wait_for_stderr("device_id: PV001002ABC, the one P3 publishing", T)
            .await,
        "{}",
        run.stderr()
    );
    retained_on(&mosquitto, &config_topic("PV001002ABC", "soc"), &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_device_id_two_p3s_or_none_is_one_line_saying_what_was_heard() {
    let p3 = InProcessBroker::start().await;
    let supervisor = Supervisor::start(Answer::mqtt("127.0.0.1", 1, USER, PASSWORD)).await;
    let data =
        data_dir(&json!({"mqtt_host": "127.0.0.1", "mqtt_port": p3.port(), "ha_discovery": true}));
    let listen = [("PV3_DEVICE_LISTEN_MS", "1000")];

    let out = finish(addon(&data, Some(&supervisor), &listen)).await;
    let broker = format!("127.0.0.1:{}", p3.port());
    let mut lines = said(&out);
    let last = lines.pop().unwrap_or_default();
    assert!(
        last.contains(&format!("no P3 published on {broker}")) && last.contains("mqtt_host"),
        "{}",
        show(&out)
    );
    // Before it, the listen's own lines only: no second error.
    assert!(lines.iter().all(|l| l.contains(" INFO ")), "{}", show(&out));
    assert_eq!(out.status.code(), Some(1));

    let _publishing = P3s::publish(p3.port(), &["PV001002ABC", "PV001003XYZ"]).await;
    let out = finish(addon(&data, Some(&supervisor), &listen)).await;
    let last = said(&out).pop().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "2 P3s publish on {broker}: PV001002ABC, PV001003XYZ"
        )) && last.contains("set device_id"),
        "{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------
// The add-on's files
// ---------------------------------------------------------------------------

/// python3 with jsonschema and yaml, or why not (a failure under
/// `PV3_REQUIRE_ADDON_LINT=1`).
pub(crate) fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import jsonschema, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("python3");
    }
    let why = "python3 with jsonschema and PyYAML is not installed (apt-get install python3-jsonschema python3-yaml)";
    assert!(
        std::env::var("PV3_REQUIRE_ADDON_LINT").as_deref() != Ok("1"),
        "PV3_REQUIRE_ADDON_LINT=1, but {why}"
    );
    eprintln!("skipped: {why}");
    None
}

/// A YAML file as JSON (through PyYAML's safe loader).
pub(crate) fn yaml(python: &str, path: &Path) -> Value {
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}: {}", path.display(), show(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

#[test]
fn the_addon_passes_the_community_addon_linter() {
    let Some(python) = python() else { return };
    let linter = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/addon-linter");
    let out = Command::new(python)
        .arg(linter.join("run_linter.py"))
        .arg(addon_dir())
        .output()
        .expect("run the linter");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the linter failed:\n{}", show(&out));
    assert!(
        !stdout.contains("::error") && !stdout.contains("::warning"),
        "{stdout}"
    );
}

#[test]
fn the_addon_s_version_is_the_crate_s() {
    let config = std::fs::read_to_string(addon_dir().join("config.yaml")).expect("config.yaml");
    let quoted = format!("version: \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        config.lines().any(|l| l == quoted),
        "config.yaml has no line `{quoted}`"
    );
}

#[test]
fn every_option_has_a_translation_and_becomes_one_of_collect_s_flags() {
    use clap::CommandFactory;
    use pv3::cmd::addon::options::{Becomes, OPTIONS};

    let Some(python) = python() else { return };
    let config = yaml(python, &addon_dir().join("config.yaml"));
    let schema: BTreeSet<&str> = config["schema"]
        .as_object()
        .expect("a schema")
        .keys()
        .map(String::as_str)
        .collect();
    let options: BTreeSet<&str> = config["options"]
        .as_object()
        .expect("options")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        options.is_subset(&schema),
        "{options:?} not all in {schema:?}"
    );
    let known: BTreeSet<&str> = OPTIONS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        schema, known,
        "config.yaml's schema against pv3 addon's options"
    );

    let translations = yaml(python, &addon_dir().join("translations/en.yaml"));
    for name in &schema {
        let t = &translations["configuration"][name];
        assert!(
            t["name"].as_str().is_some_and(|s| !s.is_empty())
                && t["description"].as_str().is_some_and(|s| !s.is_empty()),
            "translations/en.yaml: no name and description for {name}"
        );
    }

    let cli = pv3::cli::Cli::command();
    let collect = cli.find_subcommand("collect").expect("collect");
    let flags: BTreeSet<String> = collect
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    for (name, becomes) in OPTIONS {
        let flag = match becomes {
            Becomes::Value(f) | Becomes::Switch(f) | Becomes::ListenPort(f) => *f,
            Becomes::LogLevel => continue,
        };
        assert!(
            flags.contains(flag),
            "{name} becomes {flag}, which collect does not take"
        );
    }
}
