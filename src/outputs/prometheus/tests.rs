//! Unit tests of the Prometheus output.

use super::*;
use crate::energy::ENERGY_TOPIC;
use crate::forward::ForwardStats;
use crate::reading::{AlarmStates, Timestamp};
use crate::reading::{Measurement, Origin};

fn reading(device: &str, measurements: Vec<Measurement>) -> Reading {
    Reading {
        origin: Origin {
            device_id: Arc::from(device),
            topic: Arc::from("pv/PV3/x/inverter/measurements"),
        },
        timestamp: Timestamp::from_unix_micros(1_800_000_000_000_000),
        measurements,
        alarms: None,
    }
}

fn shared() -> Shared {
    Shared {
        latest: Mutex::new(Latest::new()),
        health: Arc::new(Health::default()),
        stats: OutputStats::new("prometheus"),
    }
}

#[test]
fn label_values_and_help_are_escaped_per_the_format() {
    let mut out = String::new();
    escape_label(&mut out, "a\\b\"c\nd");
    assert_eq!(out, r#"a\\b\"c\nd"#);
    let mut out = String::new();
    escape_help(&mut out, "a\\b\"c\nd");
    assert_eq!(out, "a\\\\b\"c\\nd");
    let mut x = Exposition { out: String::new() };
    x.sample(
        "pv3_x",
        &[("device", "we\"ird\\dev\n"), ("flag", "ok")],
        1.5,
    );
    assert_eq!(
        x.out,
        "pv3_x{device=\"we\\\"ird\\\\dev\\n\",flag=\"ok\"} 1.5\n"
    );
}

#[test]
fn values_use_the_formats_spellings() {
    let text = |v: f64| {
        let mut s = String::new();
        write_value(&mut s, v);
        s
    };
    assert_eq!(text(3317.0), "3317");
    assert_eq!(text(-0.25), "-0.25");
    assert_eq!(text(f64::NAN), "NaN");
    assert_eq!(text(f64::INFINITY), "+Inf");
    assert_eq!(text(f64::NEG_INFINITY), "-Inf");
    assert_eq!(text(0.1 + 0.2).parse::<f64>().ok(), Some(0.1 + 0.2));
}

#[test]
fn the_first_metric_to_claim_a_name_keeps_it() {
    let s = shared();
    let mut latest = s.latest();
    // `cell_voltage_max` in mV and `cell_voltage_max_volts` in V map
    // onto one name with the same type: the second is refused.
    let (dropped, warnings) = latest.update(&reading(
        "D",
        vec![
            Measurement::new("cell_voltage_max", 3317.0, "mV"),
            Measurement::new("cell_voltage_max_volts", 9.0, "V"),
        ],
    ));
    assert_eq!(dropped, 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("pv3_cell_voltage_max_volts"));
    // A gauge onto a counter's name (different types): refused too,
    // and the counter is kept.
    let (dropped, _) = latest.update(&reading(
        "D",
        vec![
            Measurement::new("grid_import_energy", 2.0, "kWh"),
            Measurement::new("grid_import_energy_joules_total", 5.0, ""),
        ],
    ));
    assert_eq!(dropped, 1);
    // pv3's own names are taken from the start.
    let (dropped, warnings) =
        latest.update(&reading("D", vec![Measurement::new("alarm", 1.0, "")]));
    assert_eq!((dropped, warnings.len()), (1, 1));
    // A refused pair warns once, then is only counted.
    let (dropped, warnings) = latest.update(&reading(
        "D",
        vec![Measurement::new("cell_voltage_max_volts", 9.0, "V")],
    ));
    assert_eq!((dropped, warnings.len()), (1, 0));
    drop(latest);
    let text = render(&s);
    assert!(text.contains("pv3_cell_voltage_max_volts{device=\"D\"} 3.317\n"));
    assert_eq!(Scale::of(0.001).apply(3316.0), 3.316);
    assert_eq!(Scale::of(3.6e6), Scale::Times(3.6e6));
    assert!(text.contains("# TYPE pv3_grid_import_energy_joules_total counter\n"));
    assert!(text.contains("pv3_grid_import_energy_joules_total{device=\"D\"} 7200000\n"));
    assert_eq!(
        text.matches("# TYPE pv3_cell_voltage_max_volts ").count(),
        1
    );
    assert!(!text.contains("pv3_alarm{"));
}

#[test]
fn series_are_bounded() {
    let s = shared();
    let mut latest = s.latest();
    let many: Vec<Measurement> = (0..100)
        .map(|i| Measurement::new(format!("m{i}"), 1.0, "W"))
        .collect();
    let mut dropped = 0;
    for d in 0..(MAX_SERIES / 100 + 1) {
        dropped += latest.update(&reading(&format!("dev{d}"), many.clone())).0;
    }
    assert_eq!(latest.series, MAX_SERIES);
    assert_eq!(dropped, 100);
}

#[test]
fn alarms_replace_the_devices_previous_flags() {
    let s = shared();
    let mut r = reading("D", vec![]);
    r.alarms = Some(AlarmStates::from([
        ("battery_low".to_string(), true),
        ("fan_lock".to_string(), false),
    ]));
    s.latest().update(&r);
    r.alarms = Some(AlarmStates::from([("battery_low".to_string(), false)]));
    s.latest().update(&r);
    assert_eq!(s.latest().series, 1);
    let text = render(&s);
    assert!(text.contains("pv3_alarm{device=\"D\",flag=\"battery_low\"} 0\n"));
    assert!(!text.contains("fan_lock"));
}

#[test]
fn every_name_written_for_pv3_itself_is_reserved() {
    let health = Health::new(Some(Arc::new(ForwardStats::default())), Vec::new());
    health.heard(
        crate::pipeline::DecodeCounts::default(),
        crate::reading::Timestamp::from_unix_micros(1000),
    );
    if let Some(api) = &health.api {
        api.last_delivery_ms.store(1, Ordering::Relaxed);
    }
    let s = Shared {
        health: Arc::new(health),
        ..shared()
    };
    s.stats.published(1);
    s.stats.set_delivering(Some(true));
    let mut r = reading("D", vec![]);
    r.origin.topic = Arc::from(ENERGY_TOPIC);
    r.alarms = Some(AlarmStates::from([("x".to_string(), true)]));
    s.latest().update(&r);
    let text = render(&s);
    let written: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(written.len(), RESERVED.len(), "{written:?}");
    for name in written {
        assert!(RESERVED.contains(&name), "{name} is not in RESERVED");
    }
}

#[test]
fn request_lines_are_read_strictly() {
    assert_eq!(
        request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some(("GET", "/metrics"))
    );
    assert_eq!(
        request_line(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
        Some(("HEAD", "/metrics"))
    );
    assert_eq!(request_line(b"GET /metrics\r\n\r\n"), None);
    assert_eq!(request_line(b"PRI * HTTP/2.0\r\n\r\n"), None);
    assert_eq!(request_line(b"GET  /metrics HTTP/1.1\r\n\r\n"), None);
    assert_eq!(request_line(b"\xff /metrics HTTP/1.1\r\n\r\n"), None);
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
}

#[test]
fn answers_by_path_and_method() {
    let s = shared();
    let status = |head: &[u8]| answer(head, &s).status;
    assert_eq!(status(b"GET /metrics HTTP/1.1\r\n\r\n"), 200);
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 200);
    assert_eq!(status(b"GET /other HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(status(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(status(b"garbage\r\n\r\n"), 400);
    let head = answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", &s);
    let text = String::from_utf8_lossy(&head.bytes);
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    // Only the GET counted as a scrape.
    assert_eq!(s.stats.published.load(Ordering::Relaxed), 1);
}

#[test]
fn a_value_that_is_not_finite_once_scaled_is_dropped_not_exposed() {
    let s = shared();
    let (dropped, _) = s.latest().update(&reading(
        "PV1",
        vec![
            // 1e303 kWh is finite; in joules it is not.
            Measurement::new("grid_import_energy", 1e303, "kWh"),
            Measurement::new("grid_power", f64::NAN, "W"),
            Measurement::new("battery_power", f64::INFINITY, "W"),
            Measurement::new("soc", 97.0, "%"),
        ],
    ));
    assert_eq!(dropped, 3);
    let body = render(&s);
    assert!(
        body.contains("pv3_soc_percent{device=\"PV1\"} 97"),
        "{body}"
    );
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
    }
}
