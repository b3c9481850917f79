//! `pv3 watch`: the view drawn on ratatui's test backend at fixed points
//! of the sample capture (checked against what `replay --dry-run` decodes
//! there, and snapshotted), `--once` against both brokers, and the terminal
//! given back after a signal and after an error, in a pseudo-terminal.
//!
//! The snapshots are `tests/snapshots/watch__*.snap` (`INSTA_UPDATE=always
//! cargo test --test it watch::` after a deliberate change to the view);
//! `docs/watch.md` holds two of them, regenerated with
//! `PV3_UPDATE_GENERATED=1 cargo test --test it watch::`.

use crate::support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};
use rumqttc::QoS;
use serde_json::Value;

use pv3::cmd::watch::{Source, Theme, View, WatchState, draw};
use pv3::energy::Energy;
use pv3::pipeline::Pipeline;
use pv3::reading::Timestamp;
use support::broker::{Publisher, TestBroker};
use support::fixtures::{DEVICE, Record, read_capture};
use support::on_both_brokers;
use support::proc::{PV3_BIN, Pv3Process, hermetic, run_pv3};

/// Generous: these machines are shared and slow. Waits end on the event.
const T: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sample() -> Vec<Record> {
    read_capture(&repo().join("examples/p3-sample.jsonl"))
}

fn ts(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).expect("RFC 3339")
}

fn suffix(topic: &str) -> &str {
    topic.splitn(4, '/').nth(3).unwrap_or("")
}

/// Writes `records` as a pv3 capture.
fn write_capture(path: &Path, records: &[Record]) {
    let mut text = String::new();
    for r in records {
        let mut line = serde_json::json!({"ts": r.ts, "topic": r.topic, "qos": 0, "retain": false});
        match std::str::from_utf8(&r.payload) {
            Ok(p) => line["payload"] = Value::from(p),
            Err(_) => {
                line["payload_b64"] =
                    Value::from(base64::engine::general_purpose::STANDARD.encode(&r.payload))
            }
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("write capture");
}

/// What `pv3 replay --dry-run --format jsonl` decodes from `records`: the
/// last value of each metric (value, unit), the last alarm states, and the
/// energy totals its power readings integrate to.
struct Decoded {
    last: BTreeMap<String, (f64, String)>,
    alarms: BTreeMap<String, bool>,
    energy: Energy,
}

impl Decoded {
    fn v(&self, metric: &str) -> f64 {
        self.last
            .get(metric)
            .unwrap_or_else(|| panic!("replay decoded no {metric}"))
            .0
    }

    fn kwh(&self, metric: &str) -> f64 {
        let totals = self.energy.totals(DEVICE).expect("power readings");
        totals
            .iter()
            .find(|(c, _)| c.metric() == metric)
            .map(|(_, kwh)| kwh)
            .expect("a counter")
    }
}

fn replay_decodes(records: &[Record]) -> Decoded {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.jsonl");
    write_capture(&path, records);
    let out = run_pv3(
        &[
            "replay",
            path.to_str().expect("utf-8"),
            "--dry-run",
            "--format",
            "jsonl",
        ],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut decoded = Decoded {
        last: BTreeMap::new(),
        alarms: BTreeMap::new(),
        energy: Energy::new(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        if let Some(alarms) = v["alarms"].as_object() {
            decoded.alarms = alarms
                .iter()
                .map(|(k, on)| (k.clone(), on.as_bool().expect("bool")))
                .collect();
            continue;
        }
        let metric = v["metric_name"].as_str().expect("metric").to_owned();
        let value = v["metric_value"].as_f64().expect("value");
        let at = ts(v["timestamp"].as_str().expect("timestamp"));
        decoded.energy.observe_power(DEVICE, &metric, value, at);
        let unit = v["unit"].as_str().expect("unit").to_owned();
        decoded.last.insert(metric, (value, unit));
    }
    decoded
}

// ---- the view, drawn --------------------------------------------------------

/// One fixed point of a (crafted) capture: the records up to it, and the
/// time the view is drawn for.
struct Point {
    name: &'static str,
    records: Vec<Record>,
    now: Timestamp,
}

/// 61 s in, with `inverter/measurements` silent for the last 20 s (it
/// usually comes every 2 s): stale.
fn one_minute_in() -> Point {
    let now = "2026-11-27T15:05:30.000Z";
    let silent_from = "2026-11-27T15:05:10.000Z";
    let records = sample()
        .into_iter()
        .filter(|r| r.ts.as_str() < now)
        .filter(|r| !(suffix(&r.topic) == "inverter/measurements" && r.ts.as_str() >= silent_from))
        .collect();
    Point {
        name: "one_minute_in",
        records,
        now: ts(now),
    }
}

/// The whole capture, and then one more alarms message, crafted: the
/// battery_low of the sample cleared, over_temperature raised.
fn at_the_end() -> Point {
    let mut records = sample();
    let last_alarms = records
        .iter()
        .rev()
        .find(|r| suffix(&r.topic) == "inverter/alarms")
        .expect("the sample has alarms")
        .clone();
    let mut payload: serde_json::Map<String, Value> =
        serde_json::from_slice(&last_alarms.payload).expect("JSON object");
    payload.insert("battery_low".into(), Value::from("0"));
    payload.insert("over_temperature".into(), Value::from("1"));
    records.push(Record {
        ts: "2026-11-27T15:07:28.800Z".into(),
        topic: last_alarms.topic.clone(),
        payload: serde_json::to_vec(&payload).expect("JSON"),
    });
    Point {
        name: "at_the_end",
        records,
        now: ts("2026-11-27T15:07:29.000Z"),
    }
}

fn state_of(point: &Point) -> WatchState {
    let mut state = WatchState::new();
    let mut pipeline = Pipeline::new(1.0, None);
    for r in &point.records {
        // The sample's one truncated payload is a decode error: skipped.
        let _ = state.message(&mut pipeline, &r.topic, &r.payload, ts(&r.ts));
    }
    state
}

fn render(point: &Point, width: u16, height: u16, theme: Theme) -> Buffer {
    let state = state_of(point);
    let view = View {
        state: &state,
        device: Some(DEVICE),
        now: point.now,
        source: Source::Capture {
            name: "p3-sample.jsonl".into(),
            speed: "×1".into(),
            ended: false,
        },
        paused: false,
        help: false,
        note: None,
        theme,
    };
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    terminal.draw(|frame| draw(frame, &view)).expect("draw");
    terminal.backend().buffer().clone()
}

/// The buffer's text, one line per row, trailing blanks trimmed.
fn text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut lines = Vec::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        lines.push(line.trim_end().to_owned());
    }
    lines.join("\n")
}

/// Where `needle` starts in the buffer (column, row).
fn find(buffer: &Buffer, needle: &str) -> Option<(u16, u16)> {
    let rows: Vec<String> = text(buffer).lines().map(str::to_owned).collect();
    for (y, row) in rows.iter().enumerate() {
        if let Some(byte) = row.find(needle) {
            let x = row[..byte].chars().count();
            return Some((x as u16, y as u16));
        }
    }
    None
}

/// The view's way of writing numbers: the contract these tests hold it to.
fn n(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text[1..].to_string()
    } else {
        text
    }
}

fn w(v: f64) -> String {
    format!("{} W", n(v, if v.abs() < 999.95 { 1 } else { 0 }))
}

/// The rows every size shows, each `(label, value)` as `replay` decodes
/// the point: label on the left of the row, value at its right.
fn expected_rows(d: &Decoded, roomy: bool) -> Vec<(String, String)> {
    let (g, h, b) = (d.v("grid_power"), d.v("house_power"), d.v("battery_power"));
    let balance = h - g - b;
    let modules: Vec<String> = (0..4)
        .map(|i| n(d.v(&format!("soc_module_{i}")), 1))
        .collect();
    let schedule = match d.v("schedule_event") {
        0.0 => "idle",
        1.0 => "charge",
        2.0 => "discharge",
        3.0 => "force charge",
        _ => "force discharge",
    };
    let mut rows = vec![
        (
            if g < 0.0 {
                "Grid export"
            } else {
                "Grid import"
            }
            .to_string(),
            w(g.abs()),
        ),
        ("House".into(), w(h)),
        (
            if b > 0.0 {
                "Battery discharge"
            } else {
                "Battery charge"
            }
            .to_string(),
            w(b.abs()),
        ),
        (
            if balance > 0.0 {
                "Solar / other"
            } else {
                "Unmetered load"
            }
            .to_string(),
            w(balance.abs()),
        ),
        ("SOC".into(), format!("{} %", n(d.v("soc"), 1))),
        ("Modules".into(), modules.join(" ")),
        (
            "Health".into(),
            format!("{} % (min {})", n(d.v("soh"), 0), n(d.v("soh_min"), 0)),
        ),
        (
            "Cycles".into(),
            format!(
                "{} (max {})",
                n(d.v("cycle_count_avg"), 0),
                n(d.v("cycle_count_max"), 0)
            ),
        ),
        (
            "Cell spread".into(),
            format!(
                "{} mV ({}–{})",
                n(d.v("cell_voltage_max") - d.v("cell_voltage_min"), 0),
                n(d.v("cell_voltage_min"), 0),
                n(d.v("cell_voltage_max"), 0)
            ),
        ),
        (
            "Cell temp".into(),
            format!(
                "{}–{} °C",
                n(d.v("cell_temp_min"), 1),
                n(d.v("cell_temp_max"), 1)
            ),
        ),
        (
            "BMS temp".into(),
            format!(
                "{} (max {}) °C",
                n(d.v("bms_temp_avg"), 1),
                n(d.v("bms_temp_max"), 1)
            ),
        ),
        (
            "Grid".into(),
            format!(
                "{} V {} Hz",
                n(d.v("grid_voltage"), 1),
                n(d.v("grid_frequency"), 2)
            ),
        ),
        (
            "Output".into(),
            format!(
                "{} V {} Hz",
                n(d.v("output_voltage"), 1),
                n(d.v("output_frequency"), 2)
            ),
        ),
        (
            "Inverter temp".into(),
            format!("{} °C", n(d.v("inverter_temp"), 1)),
        ),
        (
            "Boost/inner".into(),
            format!("{}/{} °C", n(d.v("boost_temp"), 1), n(d.v("inner_temp"), 1)),
        ),
        (
            "Schedule".into(),
            format!("{schedule} {} W", n(d.v("schedule_setpoint"), 0)),
        ),
        (
            "EPS".into(),
            format!(
                "{}, reserve {} %",
                if d.v("eps_mode") == 1.0 { "on" } else { "off" },
                n(d.v("eps_reserve"), 0)
            ),
        ),
        (
            "Max chg/dis".into(),
            format!(
                "{}/{} W",
                n(d.v("max_charge_power").abs(), 0),
                n(d.v("max_discharge_power").abs(), 0)
            ),
        ),
        (
            "House".into(),
            format!("{} kWh", n(d.kwh("house_energy"), 3)),
        ),
    ];
    let kwh = |m: &str| n(d.kwh(m), 3);
    if roomy {
        rows.extend([
            (
                "Grid import".into(),
                format!("{} kWh", kwh("grid_import_energy")),
            ),
            (
                "Grid export".into(),
                format!("{} kWh", kwh("grid_export_energy")),
            ),
            (
                "Battery charge".into(),
                format!("{} kWh", kwh("battery_charge_energy")),
            ),
            (
                "Battery discharge".into(),
                format!("{} kWh", kwh("battery_discharge_energy")),
            ),
            ("Inverter grid".into(), w(d.v("grid_power_inverter"))),
            ("AUX1".into(), w(d.v("aux_power"))),
            (
                "Battery DC".into(),
                format!(
                    "{} V {} A",
                    n(d.v("battery_voltage"), 1),
                    n(d.v("battery_current"), 1)
                ),
            ),
            (
                "Usable capacity".into(),
                format!("{} %", n(d.v("battery_capacity"), 0)),
            ),
            (
                "BMS DC".into(),
                format!(
                    "{} V {} A",
                    n(d.v("module_voltage_avg"), 2),
                    n(d.v("battery_current_total"), 2)
                ),
            ),
            (
                "Output power".into(),
                format!(
                    "{} {} VA",
                    w(d.v("output_active_power")),
                    n(d.v("output_apparent_power"), 0)
                ),
            ),
        ]);
    } else {
        rows.extend([
            (
                "Grid in/out".into(),
                format!(
                    "{}/{} kWh",
                    kwh("grid_import_energy"),
                    kwh("grid_export_energy")
                ),
            ),
            (
                "Battery in/out".into(),
                format!(
                    "{}/{} kWh",
                    kwh("battery_charge_energy"),
                    kwh("battery_discharge_energy")
                ),
            ),
        ]);
    }
    rows
}

/// Whether some row of the screen reads `label`, then blanks, then
/// `value` (a panel row), anywhere on the line.
fn has_row(screen: &str, label: &str, value: &str) -> bool {
    screen.lines().any(|line| {
        line.match_indices(label).any(|(i, _)| {
            let rest = &line[i + label.len()..];
            // The SOC gauge's bar sits between its label and its value.
            let trimmed = rest.trim_start_matches([' ', '█', '░']);
            trimmed.len() < rest.len() && trimmed.starts_with(value)
        })
    })
}

fn check_point(point: &Point, width: u16, height: u16) {
    let roomy = width >= 120;
    let decoded = replay_decodes(&point.records);
    let buffer = render(point, width, height, Theme::new(true));
    let screen = text(&buffer);
    for (label, value) in expected_rows(&decoded, roomy) {
        assert!(
            has_row(&screen, &label, &value),
            "{} at {width}×{height}: no row \"{label} … {value}\" on\n{screen}",
            point.name
        );
    }
    // Every panel is there.
    for title in [
        " Power ",
        " Battery ",
        " Inverter ",
        " Last 15 min ",
        " Energy since 15:04:29 UTC ",
        " Topics, last seen ",
    ] {
        assert!(screen.contains(title), "no {title} panel on\n{screen}");
    }
    let clock = point.now.to_rfc3339()[11..19].to_string();
    assert!(screen.lines().next().is_some_and(|l| l.contains(&clock)));

    // The active alarms, in the red band; cleared ones gone.
    let active: Vec<&str> = decoded
        .alarms
        .iter()
        .filter(|(_, on)| **on)
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(!active.is_empty(), "each point has an active alarm");
    let band: String = screen.lines().nth(1).expect("the band").to_owned();
    let noun = if active.len() == 1 { "ALARM" } else { "ALARMS" };
    assert_eq!(
        band.trim(),
        format!("{} {noun}: {}", active.len(), active.join(", "))
    );
    for (flag, on) in &decoded.alarms {
        assert_eq!(band.contains(flag.as_str()), *on, "{flag} in {band:?}");
    }
    for x in 0..width {
        let cell = &buffer[(x, 1)];
        assert_eq!(cell.bg, Color::Red, "band cell {x}");
    }
}

fn stale_row_is_dimmed(point: &Point, width: u16, height: u16, stale: &str, fresh: &str) {
    let buffer = render(point, width, height, Theme::new(true));
    let screen = text(&buffer);
    let (x, y) = find(&buffer, stale).unwrap_or_else(|| panic!("no {stale} on\n{screen}"));
    assert!(
        buffer[(x, y)].modifier.contains(Modifier::DIM),
        "{stale} is stale and should be dimmed"
    );
    let (x, y) = find(&buffer, fresh).unwrap_or_else(|| panic!("no {fresh} on\n{screen}"));
    assert!(
        !buffer[(x, y)].modifier.contains(Modifier::DIM),
        "{fresh} is fresh"
    );
}

#[test]
fn one_minute_in_at_80x24_shows_what_replay_decodes() {
    let point = one_minute_in();
    check_point(&point, 80, 24);
    stale_row_is_dimmed(&point, 80, 24, "inverter ", "charge ");
    insta::assert_snapshot!(
        "compact_one_minute_in",
        text(&render(&point, 80, 24, Theme::new(true)))
    );
}

#[test]
fn one_minute_in_at_160x48_shows_what_replay_decodes() {
    let point = one_minute_in();
    check_point(&point, 160, 48);
    stale_row_is_dimmed(&point, 160, 48, "inverter/measurements", "inverter/charge");
    insta::assert_snapshot!(
        "roomy_one_minute_in",
        text(&render(&point, 160, 48, Theme::new(true)))
    );
}

#[test]
fn at_the_end_at_80x24_shows_what_replay_decodes() {
    let point = at_the_end();
    check_point(&point, 80, 24);
    insta::assert_snapshot!(
        "compact_at_the_end",
        text(&render(&point, 80, 24, Theme::new(true)))
    );
}

#[test]
fn at_the_end_at_160x48_shows_what_replay_decodes() {
    let point = at_the_end();
    check_point(&point, 160, 48);
    insta::assert_snapshot!(
        "roomy_at_the_end",
        text(&render(&point, 160, 48, Theme::new(true)))
    );
}

#[test]
fn no_color_keeps_emphasis_but_has_no_colour() {
    let point = one_minute_in();
    let buffer = render(&point, 80, 24, Theme::new(false));
    for cell in buffer.content() {
        assert_eq!((cell.fg, cell.bg), (Color::Reset, Color::Reset), "{cell:?}");
    }
    assert!(buffer[(0, 1)].modifier.contains(Modifier::REVERSED));
    // Same text as with colour, but for the chart's legend marks.
    let coloured = text(&render(&point, 80, 24, Theme::new(true)));
    let plain = text(&buffer);
    assert_eq!(coloured.lines().count(), plain.lines().count());
    assert_eq!(
        coloured.lines().take(9).collect::<Vec<_>>(),
        plain.lines().take(9).collect::<Vec<_>>()
    );
}

#[test]
fn a_terminal_smaller_than_80x24_is_told_so() {
    let buffer = render(&at_the_end(), 79, 24, Theme::new(true));
    assert!(text(&buffer).contains("needs 80×24; this terminal is 79×24"));
}

/// `docs/watch.md` shows the view as the render test draws it; the blocks
/// between its `<!-- render: NAME -->` markers are the snapshots' text.
#[test]
fn the_docs_show_the_view_as_drawn() {
    let update = support::generated::updating();
    let path = repo().join("docs/watch.md");
    let doc = std::fs::read_to_string(&path).expect("docs/watch.md");
    let point = at_the_end();
    let mut expected = doc.clone();
    for (name, width, height) in [("80x24", 80, 24), ("160x48", 160, 48)] {
        let marker = format!("<!-- render: {name} -->\n```text\n");
        let start = expected
            .find(&marker)
            .unwrap_or_else(|| panic!("docs/watch.md has no {marker:?}"))
            + marker.len();
        let end = start + expected[start..].find("```").expect("the block is closed");
        let drawn = text(&render(&point, width, height, Theme::new(true))) + "\n";
        expected.replace_range(start..end, &drawn);
    }
    if update {
        std::fs::write(&path, &expected).expect("write docs/watch.md");
        return;
    }
    assert!(
        doc == expected,
        "docs/watch.md is out of date with the view; regenerate with \
         `PV3_UPDATE_GENERATED=1 cargo test --test it watch::docs`"
    );
}

// ---- --once -------------------------------------------------------------------

/// The sample's first minute without `safetycheck/measurements`, then one
/// `safetycheck/measurements`: the last topic family to arrive, so the
/// data settles on the last message.
fn settling_sequence() -> Vec<Record> {
    let records = sample();
    let last = records
        .iter()
        .find(|r| suffix(&r.topic) == "safetycheck/measurements")
        .expect("in the sample")
        .clone();
    let mut sequence: Vec<Record> = records
        .into_iter()
        .filter(|r| r.ts.as_str() < "2026-11-27T15:05:29.000Z")
        .filter(|r| suffix(&r.topic) != "safetycheck/measurements")
        .collect();
    sequence.push(last);
    sequence
}

/// The snapshot's metrics equal the decoded last values (and units), and
/// it has the energy counters besides.
fn assert_snapshot_matches(snapshot: &Value, decoded: &Decoded) {
    assert_eq!(snapshot["device_id"], DEVICE);
    let metrics = snapshot["metrics"].as_object().expect("metrics");
    let mut seen: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for (name, m) in metrics {
        let value = m["value"].as_f64().expect("value");
        let unit = m["unit"].as_str().expect("unit").to_owned();
        assert!(
            Timestamp::parse_rfc3339(m["timestamp"].as_str().expect("timestamp")).is_ok(),
            "{m}"
        );
        if name.ends_with("_energy") {
            assert_eq!(unit, "kWh");
            assert!(value >= 0.0, "{name} {value}");
            continue;
        }
        seen.insert(name.clone(), (value, unit));
    }
    assert_eq!(seen, decoded.last, "the newest value of every metric");
    for counter in [
        "grid_import_energy",
        "grid_export_energy",
        "battery_charge_energy",
        "battery_discharge_energy",
        "house_energy",
    ] {
        assert!(metrics.contains_key(counter), "no {counter}");
    }
    let active: Vec<&str> = decoded
        .alarms
        .iter()
        .filter(|(_, on)| **on)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(snapshot["alarms_active"], serde_json::json!(active));
    assert!(snapshot["stale"].is_array());
}

on_both_brokers!(once_json_has_the_last_value_of_every_topic);
async fn once_json_has_the_last_value_of_every_topic(broker: TestBroker) {
    let port = broker.port().to_string();
    let mut pv3 = Pv3Process::spawn(
        &[
            "watch",
            "--once",
            "--format",
            "json",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &port,
            "--wait",
            "120",
        ],
        &[],
    );
    assert!(
        pv3.wait_for_stderr("subscribed to", T).await,
        "{}",
        pv3.stderr()
    );
    let sequence = settling_sequence();
    let publisher = Publisher::connect(broker.port()).await;
    for r in &sequence {
        publisher
            .publish(&r.topic, r.payload.clone(), QoS::AtLeastOnce, false)
            .await;
    }
    // It settles on the last message and exits, long before --wait.
    let status = pv3.wait_exit(T).await.expect("watch --once exits");
    assert!(status.success(), "{}", pv3.stderr());
    let lines = pv3.stdout_lines();
    assert_eq!(lines.len(), 1, "one line per device: {lines:?}");
    let snapshot: Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_snapshot_matches(&snapshot, &replay_decodes(&sequence));
    // Received, not captured, times: the test's own clock.
    let time = ts(snapshot["time"].as_str().expect("time"));
    assert!(time.seconds_since(Timestamp::now()).abs() < 600.0);
}

on_both_brokers!(once_without_data_exits_1);
async fn once_without_data_exits_1(broker: TestBroker) {
    let port = broker.port().to_string();
    let mut pv3 = Pv3Process::spawn(
        &[
            "watch",
            "--once",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &port,
            "--wait",
            "1",
        ],
        &[],
    );
    let status = pv3.wait_exit(T).await.expect("exits after --wait");
    assert_eq!(status.code(), Some(1), "{}", pv3.stderr());
    assert!(pv3.stdout().is_empty());
    assert!(
        pv3.stderr()
            .contains("no data from PV001001DEV on 127.0.0.1:"),
        "{}",
        pv3.stderr()
    );
}

#[test]
fn once_from_a_capture_is_its_last_state() {
    let point = at_the_end();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.jsonl");
    write_capture(&path, &point.records);
    let out = run_pv3(
        &[
            "watch",
            path.to_str().expect("utf-8"),
            "--once",
            "--format",
            "json",
        ],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let decoded = replay_decodes(&point.records);
    assert_snapshot_matches(&snapshot, &decoded);
    assert_eq!(snapshot["time"], "2026-11-27T15:07:28.800Z");
    assert_eq!(
        snapshot["alarms_active"],
        serde_json::json!(["over_temperature"])
    );
    // Counted by the shared energy counters' rule, as replay's readings
    // integrate: exactly.
    let metrics = &snapshot["metrics"];
    for counter in [
        "grid_export_energy",
        "battery_discharge_energy",
        "house_energy",
    ] {
        assert_eq!(
            metrics[counter]["value"].as_f64(),
            Some(decoded.kwh(counter)),
            "{counter}"
        );
    }
}

#[test]
fn without_a_terminal_watch_prints_a_table_once() {
    // stdout is a pipe here: no screen, a snapshot.
    let out = run_pv3(
        &["watch", "-"],
        &[],
        Some(&std::fs::read(repo().join("examples/p3-sample.jsonl")).expect("sample")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("PV001001DEV at 2026-11-27T15:07:28.695Z: alarms active: battery_low"),
        "{table}"
    );
    for row in [
        "│ soc ",
        "│ grid_power ",
        "│ house_energy ",
        "│ inverter/charge ",
    ] {
        assert!(table.contains(row), "no {row:?} in\n{table}");
    }
    // Another device, asked for: nothing of it in the capture.
    let out = run_pv3(
        &["watch", "examples/p3-sample.jsonl", "--device-id", "OTHER"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no data of device OTHER in p3-sample.jsonl")
    );
}

#[test]
fn bad_flags_are_refused_before_anything_starts() {
    for args in [
        &["watch", "--speed", "2"][..],
        &["watch", "x.jsonl", "--wait", "3"],
        &["watch", "x.jsonl", "--once", "--speed", "2"],
        &["watch", "--format", "yaml"],
        &["watch", "--wait", "0"],
    ] {
        let out = run_pv3(args, &[], None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
    }
    let out = run_pv3(&["watch", "/nonexistent.jsonl"], &[], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent.jsonl"));
}

// ---- the terminal, given back ------------------------------------------------

/// pv3 in a pseudo-terminal of 80×24 (rustix's openpt: the crate is in the
/// tree already): stdin, stdout and stderr are the terminal's far end, as
/// in a shell; everything it writes is collected.
struct InPty {
    child: Child,
    master: Arc<OwnedFd>,
    /// A far end kept open, to read the terminal's modes after pv3 exits.
    slave: OwnedFd,
    output: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

const ENTER_ALT: &[u8] = b"\x1b[?1049h";
const LEAVE_ALT: &[u8] = b"\x1b[?1049l";

impl InPty {
    fn spawn(args: &[&str]) -> InPty {
        use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, unlockpt};
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = openpt(flags).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let slave = ioctl_tiocgptpeer(&master, flags).expect("the terminal's far end");
        rustix::termios::tcsetwinsize(
            &master,
            rustix::termios::Winsize {
                ws_row: 24,
                ws_col: 80,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .expect("window size");
        assert!(cooked(&slave), "a new terminal starts in cooked mode");
        let end = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let mut cmd = Command::new(PV3_BIN);
        hermetic(&mut cmd)
            .args(args)
            .env("TERM", "xterm-256color")
            .current_dir(repo())
            .stdin(end(&slave))
            .stdout(end(&slave))
            .stderr(end(&slave));
        let child = cmd.spawn().expect("spawn pv3");
        let master = Arc::new(master);
        let output = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        {
            let (master, output) = (master.clone(), output.clone());
            std::thread::spawn(move || {
                let mut file = std::fs::File::from(master.try_clone().expect("dup"));
                let mut buf = [0u8; 4096];
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let (lock, ready) = &*output;
                    support::lock(lock).extend_from_slice(&buf[..n]);
                    ready.notify_all();
                }
            });
        }
        InPty {
            child,
            master,
            slave,
            output,
        }
    }

    fn output(&self) -> Vec<u8> {
        support::lock(&self.output.0).clone()
    }

    /// Waits (woken by each read) until the output satisfies `pred`.
    fn wait_output(&self, pred: impl Fn(&[u8]) -> bool) -> bool {
        let (lock, ready) = &*self.output;
        let deadline = Instant::now() + T;
        let mut out = support::lock(lock);
        loop {
            if pred(&out) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            out = ready
                .wait_timeout(out, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn type_keys(&self, keys: &[u8]) {
        rustix::io::write(&*self.master, keys).expect("type");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pv3 did not exit; it wrote:\n{}",
                String::from_utf8_lossy(&self.output())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for InPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Canonical input with echo: what a shell expects back.
fn cooked(terminal: &OwnedFd) -> bool {
    use rustix::termios::LocalModes;
    let modes = rustix::termios::tcgetattr(terminal)
        .expect("tcgetattr")
        .local_modes;
    modes.contains(LocalModes::ICANON | LocalModes::ECHO)
}

fn position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The view was up (the alternate screen entered, the device drawn), and
/// then the alternate screen was left.
fn was_given_back(output: &[u8]) -> bool {
    match (position(output, ENTER_ALT), position(output, LEAVE_ALT)) {
        (Some(enter), Some(leave)) => enter < leave,
        _ => false,
    }
}

fn drawn(output: &[u8]) -> bool {
    position(output, ENTER_ALT).is_some() && position(output, b"PV001001DEV").is_some()
}

#[test]
fn sigterm_gives_the_terminal_back() {
    let mut pty = InPty::spawn(&["watch", "examples/p3-sample.jsonl"]);
    assert!(
        pty.wait_output(drawn),
        "{}",
        String::from_utf8_lossy(&pty.output())
    );
    assert!(!cooked(&pty.slave), "raw mode while the view is up");
    let pid = pty.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.expect("kill").success());
    let status = pty.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(pty.wait_output(was_given_back));
    assert!(cooked(&pty.slave), "raw mode is off again");
    let output = pty.output();
    let leave = position(&output, LEAVE_ALT).expect("left");
    assert!(
        position(&output[leave..], b"\x1b[?25h").is_some(),
        "the cursor is shown again"
    );
}

#[test]
fn an_error_gives_the_terminal_back_then_says_what_failed() {
    // A file that opens but cannot be read: the kernel answers EIO for an
    // unmapped address of /proc/self/mem, as a failing disk would.
    let mut pty = InPty::spawn(&["watch", "/proc/self/mem"]);
    let status = pty.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        pty.wait_output(|o| was_given_back(o) && position(o, b"cannot read the capture").is_some()),
        "{}",
        String::from_utf8_lossy(&pty.output())
    );
    let output = pty.output();
    let leave = position(&output, LEAVE_ALT).expect("left");
    let error = position(&output, b"pv3: error: cannot read the capture").expect("the error");
    assert!(leave < error, "the error is printed on the normal screen");
    assert!(cooked(&pty.slave), "raw mode is off again");
}

#[test]
fn q_quits_and_gives_the_terminal_back() {
    let mut pty = InPty::spawn(&["watch", "examples/p3-sample.jsonl", "--speed", "max"]);
    assert!(pty.wait_output(drawn));
    pty.type_keys(b"q");
    assert!(pty.wait_exit().success());
    assert!(pty.wait_output(was_given_back));
    assert!(cooked(&pty.slave));
}
