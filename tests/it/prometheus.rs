//! The Prometheus output end to end: the bundled sample capture through the
//! real decoder into `PrometheusOutput`, scraped over loopback HTTP with a
//! real client, and read back with a real text-format parser
//! (`prometheus-parse`), plus `promtool check metrics` when it is installed
//! (Debian's `prometheus` package; `PV3_REQUIRE_PROMTOOL=1` makes it
//! mandatory).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};
use pv3::capture::CaptureReader;
use pv3::energy::Energy;
use pv3::forward::ForwardStats;
use pv3::outputs::{Health, Output, OutputStats, PrometheusOutput};
use pv3::pipeline::{DecodeCounts, Pipeline};
use pv3::reading::{AlarmStates, Measurement, Origin, Reading, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEVICE: &str = "PV001001DEV";
/// A second device, fed only the first part of the capture so that its
/// last values differ from the first device's.
const SECOND: &str = "PV002002DEV";
const SECOND_RECORDS: usize = 400;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn http() -> reqwest::Client {
    // reqwest is built without a TLS provider of its own: install ring's,
    // even for plain http (see tls.rs).
    pv3::tls::ensure_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build reqwest client")
}

/// What was fed to the output, to compare the scrape with.
#[derive(Default)]
struct Fed {
    /// (device, metric) → (last value, unit).
    last: BTreeMap<(String, String), (f64, &'static str)>,
    /// device → its last alarm flags.
    alarms: BTreeMap<String, AlarmStates>,
    messages: u64,
    decode_errors: u64,
}

impl Fed {
    fn note(&mut self, reading: &Reading) {
        let device = reading.origin.device_id.to_string();
        for m in &reading.measurements {
            self.last
                .insert((device.clone(), m.metric.to_string()), (m.value, m.unit));
        }
        if let Some(flags) = &reading.alarms {
            self.alarms.insert(device, flags.clone());
        }
    }
}

/// Runs the first `limit` records of the sample capture through a
/// pipeline (with `device` as the override, if any) and the energy
/// counters into `out`, then the counters' reading.
async fn feed_sample(
    out: &mut PrometheusOutput,
    device: Option<&str>,
    limit: usize,
    fed: &mut Fed,
) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/p3-sample.jsonl");
    let file = File::open(path).expect("open the sample capture");
    let mut reader = CaptureReader::new(BufReader::new(file));
    let mut pipeline = Pipeline::new(0.0, device);
    let mut energy = Energy::new();
    let mut last: Option<(Arc<str>, Timestamp)> = None;
    let mut n = 0;
    while n < limit {
        let Some(record) = reader.next_record().expect("read the capture") else {
            break;
        };
        let record = record.expect("every sample line is a record");
        n += 1;
        fed.messages += 1;
        match pipeline.process(&record.topic, &record.payload, record.ts) {
            Ok(Some(reading)) => {
                energy.observe(&reading);
                last = Some((reading.origin.device_id.clone(), reading.timestamp));
                fed.note(&reading);
                out.send(Arc::new(reading)).await.expect("send");
            }
            Ok(None) => {}
            Err(_) => fed.decode_errors += 1,
        }
    }
    let (device, at) = last.expect("the capture decodes");
    let counters = energy.reading(&device, at).expect("energy of the device");
    assert!(
        counters.measurements.iter().any(|m| m.value > 0.0),
        "the sample should integrate some energy"
    );
    fed.note(&counters);
    out.send(Arc::new(counters)).await.expect("send energy");
}

/// The output fed with both devices, and what went in. `health` as given,
/// with its input counters set from the feed.
async fn fed_output(health: Arc<Health>) -> (PrometheusOutput, Fed) {
    let mut out = PrometheusOutput::bind(loopback(), health.clone())
        .await
        .expect("bind");
    assert_eq!(out.name(), "prometheus");
    assert!(out.wants_derived(), "it must receive the energy counters");
    let mut fed = Fed::default();
    feed_sample(&mut out, None, usize::MAX, &mut fed).await;
    feed_sample(&mut out, Some(SECOND), SECOND_RECORDS, &mut fed).await;
    // What collect would have counted: every message, some not decoded,
    // received when the test said (or now).
    let counts = DecodeCounts {
        decoded: fed.messages - fed.decode_errors,
        errors: fed.decode_errors,
        ..DecodeCounts::default()
    };
    let last = health.input().last_message.unwrap_or_else(Timestamp::now);
    health.heard(counts, last);
    (out, fed)
}

async fn scrape(addr: SocketAddr) -> String {
    let response = http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/plain; version=0.0.4; charset=utf-8"[..])
    );
    response.text().await.expect("body")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The exposition read line by line, strictly: every line is a HELP, a
/// TYPE or a sample; each family has one HELP and one TYPE before its
/// samples, and its samples together; no series twice. Returns family
/// name → type. (`prometheus-parse` skips what it cannot read; this makes
/// sure there was nothing to skip.)
fn check_structure(text: &str) -> BTreeMap<String, String> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types = BTreeMap::new();
    let mut helped = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(valid_name(name), "bad name in {line:?}");
            assert!(helped.insert(name.to_string()), "second HELP: {line:?}");
            if let Some(previous) = current.replace(name.to_string()) {
                finished.insert(previous);
            }
            assert!(!finished.contains(name), "family {name} split: {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap_or_default(), parts.next());
            assert_eq!(current.as_deref(), Some(name), "TYPE after its HELP");
            assert!(
                matches!(kind, Some("counter" | "gauge")),
                "type of {line:?}"
            );
            assert!(parts.next().is_none(), "{line:?}");
            let kind = kind.unwrap_or_default().to_string();
            assert!(
                types.insert(name.to_string(), kind).is_none(),
                "second TYPE: {line:?}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let LineInfo::Sample {
            metric_name,
            labels,
            value,
            timestamp,
        } = LineInfo::parse(line)
        else {
            panic!("not a sample line: {line:?}");
        };
        assert!(valid_name(metric_name), "bad name in {line:?}");
        assert_eq!(
            current.as_deref(),
            Some(metric_name),
            "sample outside its family: {line:?}"
        );
        assert!(types.contains_key(metric_name), "sample before TYPE");
        assert!(timestamp.is_none(), "no timestamps: {line:?}");
        assert!(value.parse::<f64>().is_ok(), "value of {line:?}");
        assert!(
            series.insert((metric_name.to_string(), labels.map(str::to_string))),
            "series twice: {line:?}"
        );
    }
    assert_eq!(helped.len(), types.len(), "a HELP without a TYPE");
    types
}

/// Every sample, parsed by `prometheus-parse`: (name, labels) → (value,
/// type as the parser understood it).
fn parse(text: &str) -> HashMap<(String, BTreeMap<String, String>), Value> {
    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("prometheus-parse reads it");
    let sample_lines = text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "the parser kept every sample"
    );
    let mut samples = HashMap::new();
    for s in scrape.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for label in labels.keys() {
            assert!(valid_name(label) && !label.contains(':'), "label {label}");
        }
        assert!(
            scrape.docs.contains_key(&s.metric),
            "{} has a HELP",
            s.metric
        );
        samples.insert((s.metric, labels), s.value);
    }
    samples
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("not a number: {other:?}"),
    }
}

/// The name the naming guide gives a metric in `unit`, its value in the
/// base unit, and whether it is a counter: the test's own table, not the
/// code's, so that a change of naming shows up here.
fn guide_name(metric: &str, unit: &str) -> (String, fn(f64) -> f64, bool) {
    fn same(v: f64) -> f64 {
        v
    }
    let (suffix, to_base, counter): (&str, fn(f64) -> f64, bool) = match unit {
        "W" => ("watts", same, false),
        "VA" => ("volt_amperes", same, false),
        "V" => ("volts", same, false),
        "mV" => ("volts", |mv| mv / 1000.0, false),
        "A" => ("amperes", same, false),
        "Hz" => ("hertz", same, false),
        "C" => ("celsius", same, false),
        "%" => ("percent", same, false),
        "kWh" => ("joules", |kwh| kwh * 3.6e6, true),
        "" | "cycles" => ("", same, false),
        other => panic!("unit {other:?} is not in this test's table: add it"),
    };
    assert!(
        metric
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{metric}"
    );
    // `_count` belongs to histograms and summaries.
    let metric = if metric == "alarm_count" {
        "alarms_active"
    } else {
        metric
    };
    let mut name = format!("pv3_{}", metric.to_ascii_lowercase());
    if !suffix.is_empty() && !name.ends_with(suffix) {
        name.push('_');
        name.push_str(suffix);
    }
    if counter {
        name.push_str("_total");
    }
    (name, to_base, counter)
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool(text: &str) {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("PV3_REQUIRE_PROMTOOL").is_none(),
            "PV3_REQUIRE_PROMTOOL is set but promtool is not installed"
        );
        eprintln!("promtool not installed: only prometheus-parse checked the exposition");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_parse_follow_the_naming_guide_and_equal_the_decoded_values() {
    let api = Arc::new(ForwardStats::default());
    for (counter, n) in [
        (&api.delivered, 123),
        (&api.alarms_delivered, 9),
        (&api.spooled, 7),
        (&api.dropped, 2),
        (&api.rejected, 3),
        (&api.not_created, 11),
        (&api.failed_attempts, 4),
        (&api.queued, 8),
        (&api.spool_measurements, 5),
        (&api.spool_bytes, 6000),
    ] {
        counter.store(n, Ordering::Relaxed);
    }
    let mqtt = OutputStats::new("mqtt");
    mqtt.set_connected(true);
    mqtt.published(42);
    mqtt.dropped(1);
    let health = Arc::new(Health::new(Some(api), vec![mqtt]));
    // Ten seconds ago: the age can only be at least that.
    let ten_seconds_ago = Timestamp::now().unix_micros() - 10_000_000;
    health.heard(
        DecodeCounts::default(),
        Timestamp::from_unix_micros(ten_seconds_ago),
    );
    let (out, fed) = fed_output(health).await;

    let text = scrape(out.local_addr()).await;
    let types = check_structure(&text);
    let samples = parse(&text);
    promtool(&text);

    // The naming guide: `_total` on counters and only there.
    for (name, kind) in &types {
        assert!(name.starts_with("pv3_"), "{name}");
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}"
        );
        for reserved in ["_count", "_sum", "_bucket"] {
            assert!(
                !name.ends_with(reserved),
                "{name}: {reserved} is a histogram's"
            );
        }
        assert_eq!(name, &name.to_ascii_lowercase(), "snake case");
    }
    for name in [
        "pv3_grid_power_watts",
        "pv3_soc_percent",
        "pv3_inverter_temp_celsius",
        "pv3_cell_voltage_max_volts",
        "pv3_grid_import_energy_joules_total",
        "pv3_house_energy_joules_total",
    ] {
        assert!(types.contains_key(name), "{name} missing");
    }

    // Every decoded value, for both devices: the last one fed, scaled to
    // the base unit. And nothing else with a device label.
    let mut expected_series = HashSet::new();
    for ((device, metric), (value, unit)) in &fed.last {
        let (name, to_base, counter) = guide_name(metric, unit);
        let key = (name.clone(), labels(&[("device", device)]));
        let got = samples
            .get(&key)
            .unwrap_or_else(|| panic!("{name}{{device={device}}} missing ({metric} {unit})"));
        assert_eq!(
            types.get(&name).map(String::as_str),
            Some(if counter { "counter" } else { "gauge" }),
            "{name}"
        );
        assert!(
            matches!(got, Value::Counter(_) | Value::Gauge(_)),
            "{name}: {got:?}"
        );
        assert_eq!(number(got), to_base(*value), "{name} of {device}");
        expected_series.insert(key);
    }
    assert!(fed.last.len() > 60, "the sample covers most metrics");
    for (device, flags) in &fed.alarms {
        for (flag, on) in flags {
            let key = (
                "pv3_alarm".to_string(),
                labels(&[("device", device), ("flag", flag)]),
            );
            let got = samples.get(&key).map(number);
            assert_eq!(got, Some(if *on { 1.0 } else { 0.0 }), "{flag} of {device}");
            expected_series.insert(key);
        }
    }
    assert_eq!(fed.alarms.len(), 2, "alarms from both devices");
    for key in samples.keys().filter(|(_, l)| l.contains_key("device")) {
        assert!(expected_series.contains(key), "unexpected series {key:?}");
    }
    // The energy counters, by hand: kWh × 3.6e6.
    let import = &fed.last[&(DEVICE.to_string(), "grid_import_energy".to_string())];
    assert_eq!(
        number(
            &samples[&(
                "pv3_grid_import_energy_joules_total".to_string(),
                labels(&[("device", DEVICE)])
            )]
        ),
        import.0 * 3.6e6
    );
    assert_ne!(
        fed.last[&(DEVICE.to_string(), "soc".to_string())],
        fed.last[&(SECOND.to_string(), "soc".to_string())],
        "the devices' last values differ, so a mix-up would show"
    );

    // pv3's own health.
    let value = |name: &str, pairs: &[(&str, &str)]| {
        samples
            .get(&(name.to_string(), labels(pairs)))
            .map(number)
            .unwrap_or_else(|| panic!("{name} {pairs:?} missing"))
    };
    assert_eq!(
        value("pv3_messages_received_total", &[]),
        fed.messages as f64
    );
    assert_eq!(
        value("pv3_decode_errors_total", &[]),
        fed.decode_errors as f64
    );
    assert!(value("pv3_last_message_age_seconds", &[]) >= 10.0);
    for (name, n) in [
        ("pv3_api_measurements_delivered_total", 123.0),
        ("pv3_api_alarm_updates_delivered_total", 9.0),
        ("pv3_api_measurements_spooled_total", 7.0),
        ("pv3_api_measurements_dropped_total", 2.0),
        ("pv3_api_measurements_rejected_total", 3.0),
        ("pv3_api_measurements_not_created_total", 11.0),
        ("pv3_api_failed_attempts_total", 4.0),
        ("pv3_api_measurements_queued", 8.0),
        ("pv3_api_spool_measurements", 5.0),
        ("pv3_api_spool_bytes", 6000.0),
    ] {
        assert_eq!(value(name, &[]), n, "{name}");
    }
    assert!(
        !types.contains_key("pv3_api_last_delivery_age_seconds"),
        "no delivery yet, no age"
    );
    assert_eq!(value("pv3_output_connected", &[("output", "mqtt")]), 1.0);
    assert_eq!(
        value("pv3_output_published_total", &[("output", "mqtt")]),
        42.0
    );
    assert_eq!(
        value("pv3_output_dropped_total", &[("output", "mqtt")]),
        1.0
    );
    assert!(value("pv3_output_last_publish_age_seconds", &[("output", "mqtt")]) >= 0.0);
    // Its own counters, though collect did not list them: no scrape
    // before this one, and the sample's names collide with nothing.
    assert_eq!(
        value("pv3_output_connected", &[("output", "prometheus")]),
        1.0
    );
    assert_eq!(
        value("pv3_output_published_total", &[("output", "prometheus")]),
        0.0
    );
    assert_eq!(
        value("pv3_output_dropped_total", &[("output", "prometheus")]),
        0.0
    );
    assert_eq!(
        value("pv3_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    // A second scrape sees the first, and stats() is the same counter.
    let second = scrape(out.local_addr()).await;
    let second = parse(&second);
    let own = ("output".to_string(), "prometheus".to_string());
    let own = |name: &str| {
        second
            .get(&(name.to_string(), BTreeMap::from([own.clone()])))
            .map(number)
    };
    assert_eq!(own("pv3_output_published_total"), Some(1.0));
    assert!(own("pv3_output_last_publish_age_seconds").is_some_and(|age| age >= 0.0));
    let stats = out.stats();
    assert_eq!(stats.published.load(Ordering::Relaxed), 2);
    let boxed: Box<dyn Output> = Box::new(out);
    assert!(boxed.progress().is_some_and(|p| p.contains("2 scrapes")));
    boxed.finish(0).await.expect("finish");
    assert!(!stats.connected.load(Ordering::Relaxed));
}

#[tokio::test]
async fn outputs_are_listed_once_each_whoever_listed_them() {
    // collect cannot list this output's stats before binding it; if it
    // lists another output of the same name, one of them is shown, never
    // two samples of one series.
    let other = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let health = Arc::new(Health::new(
        None,
        vec![other.stats(), OutputStats::new("mqtt")],
    ));
    let out = PrometheusOutput::bind(loopback(), health)
        .await
        .expect("bind");
    let text = scrape(out.local_addr()).await;
    check_structure(&text);
    parse(&text);
    assert_eq!(
        text.matches("pv3_output_connected{output=\"prometheus\"}")
            .count(),
        1
    );
    assert!(text.contains("pv3_output_connected{output=\"mqtt\"} 0\n"));
}

#[tokio::test]
async fn labels_with_quotes_backslashes_and_newlines_are_escaped() {
    let mut out = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let reading = Reading {
        origin: Origin {
            device_id: Arc::from("we\"ird\\dev\nice"),
            topic: Arc::from("pv/PV3/x/inverter/charge"),
        },
        timestamp: Timestamp::now(),
        measurements: vec![Measurement::new("battery_power", 591.0, "W")],
        alarms: Some(AlarmStates::from([("odd\"flag".to_string(), true)])),
    };
    out.send(Arc::new(reading)).await.expect("send");
    let text = scrape(out.local_addr()).await;
    check_structure(&text);
    assert!(
        text.contains("pv3_battery_power_watts{device=\"we\\\"ird\\\\dev\\nice\"} 591\n"),
        "{text}"
    );
    assert!(text.contains("flag=\"odd\\\"flag\"} 1\n"), "{text}");
    promtool(&text);
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let out = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let addr = out.local_addr();
    let client = http();
    let response = client
        .get(format!("http://{addr}/nope"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let response = client
        .post(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"GET, HEAD"[..])
    );
    let response = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("body").contains("/metrics"));
    let response = client
        .head(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let length: usize = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    assert!(length > 0);
    assert!(response.bytes().await.expect("body").is_empty());
    // Only GET /metrics counts as a scrape.
    assert_eq!(out.stats().published.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_request_head_over_8_kib_is_answered_431() {
    let out = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let mut stream = TcpStream::connect(out.local_addr()).await.expect("connect");
    // Exactly the limit and no blank line: the server reads all of it, so
    // its close is a clean one.
    let mut head = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    head.resize(8 * 1024, b'a');
    stream.write_all(&head).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
}

#[tokio::test]
async fn a_busy_address_fails_bind_with_an_error_naming_it() {
    let first = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let addr = first.local_addr();
    let error = match PrometheusOutput::bind(addr, Arc::new(Health::default())).await {
        Ok(_) => panic!("a second listener on {addr}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains(&addr.to_string()), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
}

#[tokio::test]
async fn clients_that_never_send_a_request_do_not_block_a_scrape() {
    let out = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let addr = out.local_addr();
    // All connection slots but one taken by clients that say nothing, or
    // half a request.
    let mut idle = Vec::new();
    for i in 0..15 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 1 {
            stream.write_all(b"GET /metr").await.expect("write");
        }
        idle.push(stream);
    }
    let text = scrape(addr).await;
    check_structure(&text);
    assert!(text.contains("pv3_output_published_total{output=\"prometheus\"} 0\n"));
    drop(idle);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_timeout() {
    // Waits for the server's close (2 s), not for a time: the minute is
    // only there so that a server that never closes fails the test rather
    // than hanging it.
    let out = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let mut stream = TcpStream::connect(out.local_addr()).await.expect("connect");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes a silent connection");
    assert_eq!(read.expect("read"), 0, "closed without an answer");
}

#[tokio::test]
async fn finish_stops_listening() {
    let out = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let addr = out.local_addr();
    let stats = out.stats();
    assert!(stats.connected.load(Ordering::Relaxed));
    let boxed: Box<dyn Output> = Box::new(out);
    boxed.finish(0).await.expect("finish");
    assert!(!stats.connected.load(Ordering::Relaxed));
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn the_docs_list_every_family() {
    let api = Arc::new(ForwardStats::default());
    api.last_delivery_ms.store(1, Ordering::Relaxed);
    let health = Arc::new(Health::new(Some(api), Vec::new()));
    health.heard(DecodeCounts::default(), Timestamp::from_unix_micros(1000));
    let (out, _) = fed_output(health).await;
    // Once scraped, so that the age of the last scrape is there too.
    scrape(out.local_addr()).await;
    let text = scrape(out.local_addr()).await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/prometheus.md"))
        .expect("read docs/prometheus.md");
    let missing: Vec<String> = check_structure(&text)
        .into_keys()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/prometheus.md does not list: {missing:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_keep_scrapes_out() {
    let out = PrometheusOutput::bind(loopback(), Arc::new(Health::default()))
        .await
        .expect("bind");
    let addr = out.local_addr();
    // 48 clients that connect and say nothing, each reconnecting as soon
    // as the server closes it.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..48 {
        flood.spawn(async move {
            loop {
                match TcpStream::connect(addr).await {
                    Ok(mut stream) => {
                        let mut buf = [0u8; 64];
                        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }
    // Prometheus' default scrape timeout is 10 s: every scrape must be
    // answered within it.
    pv3::tls::ensure_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for n in 0..10 {
        let response = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("scrape {n} not answered within 10 s: {e}"));
        assert_eq!(response.status(), 200, "scrape {n}");
    }
    flood.abort_all();
}
