//! Known messages and what the decoder must make of them.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

pub const DEVICE: &str = "PV001001DEV";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One record of a pv3 capture file.
#[derive(Debug, Clone)]
pub struct Record {
    pub ts: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Reads a pv3 capture (test fixtures are well-formed: panics otherwise).
pub fn read_capture(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).expect("read fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("fixture line is JSON");
            let payload = match (v.get("payload_b64"), v.get("payload")) {
                (Some(b64), _) => base64::engine::general_purpose::STANDARD
                    .decode(b64.as_str().expect("b64 string"))
                    .expect("valid base64"),
                (None, Some(p)) => p.as_str().expect("payload string").as_bytes().to_vec(),
                (None, None) => panic!("fixture line without payload"),
            };
            Record {
                ts: v["ts"].as_str().expect("ts").to_owned(),
                topic: v["topic"].as_str().expect("topic").to_owned(),
                payload,
            }
        })
        .collect()
}

/// `tests/fixtures/every-topic.jsonl`: one message of every topic.
pub fn every_topic() -> Vec<Record> {
    read_capture(&fixture("every-topic.jsonl"))
}

/// What `every-topic.jsonl` decodes to: (suffix, metric, value, unit).
pub const EVERY_TOPIC_EXPECTED: &[(&str, &str, f64, &str)] = &[
    ("bms/soc", "soc", 97.0, "%"),
    ("bms/soc", "soc_module_4", 82.0, "%"),
    ("inverter/measurements", "battery_voltage", 49.8, "V"),
    ("inverter/measurements", "battery_current", -11.9, "A"),
    ("inverter/measurements", "battery_capacity", 77.0, "%"),
    ("inverter/measurements", "grid_voltage", 225.8, "V"),
    ("inverter/measurements", "grid_frequency", 50.0, "Hz"),
    ("inverter/measurements", "grid_power_inverter", -395.25, "W"),
    ("inverter/measurements", "output_voltage", 230.1, "V"),
    ("inverter/measurements", "output_frequency", 50.01, "Hz"),
    ("inverter/measurements", "output_active_power", 150.0, "W"),
    (
        "inverter/measurements",
        "output_apparent_power",
        180.5,
        "VA",
    ),
    ("inverter/alarms", "inverter_temp", 38.0, "C"),
    ("inverter/alarms", "boost_temp", 41.0, "C"),
    ("inverter/alarms", "inner_temp", 35.5, "C"),
    ("inverter/alarms", "alarm_count", 1.0, ""),
    ("inverter/charge", "battery_power", 591.0, "W"),
    ("pylontech/info", "soh", 92.0, "%"),
    ("pylontech/info", "soh_min", 91.0, "%"),
    ("pylontech/info", "cycle_count_avg", 844.0, "cycles"),
    ("pylontech/info", "cycle_count_max", 877.0, "cycles"),
    ("pylontech/info", "cell_temp_avg", 20.1, "C"),
    ("pylontech/info", "cell_temp_max", 20.9, "C"),
    ("pylontech/info", "cell_temp_min", 19.4, "C"),
    ("pylontech/info", "bms_temp_avg", 20.3, "C"),
    ("pylontech/info", "bms_temp_max", 20.8, "C"),
    ("pylontech/info", "cell_voltage_max", 3317.0, "mV"),
    ("pylontech/info", "cell_voltage_min", 3315.0, "mV"),
    ("pylontech/info", "module_voltage_avg", 49.746, "V"),
    ("pylontech/info", "battery_current_total", -10.23, "A"),
    ("pylontech/info", "charge_voltage_limit", 53.25, "V"),
    ("pylontech/info", "discharge_voltage_limit", 45.0, "V"),
    ("pylontech/info", "charge_current_limit", 60.0, "A"),
    ("pylontech/info", "discharge_current_limit", 150.0, "A"),
    ("ffr/measurements", "house_power", 11.736, "W"),
    ("ffr/measurements", "grid_power", -406.464, "W"),
    ("ffr/measurements", "aux_power", -1.48, "W"),
    ("schedule/event", "schedule_event", 2.0, ""),
    ("schedule/event", "schedule_setpoint", 3000.0, "W"),
    ("m4/maxpower", "max_charge_power", 4792.0, "W"),
    ("m4/maxpower", "max_discharge_power", -6750.0, "W"),
    ("eps/status", "eps_reserve", 20.0, "%"),
    ("eps/status", "eps_mode", 1.0, ""),
    ("eps_schedule/event", "eps_schedule_reserve", 20.0, "%"),
    ("eps_schedule/event", "eps_schedule_event", 1.0, ""),
    ("ffrcontroller/state", "ffr_controller_state", 0.0, ""),
    ("safetycheck/state", "safetycheck_State", 1.0, ""),
    ("safetycheck/state", "safetycheck_Result", 0.0, ""),
    (
        "safetycheck/measurements",
        "safetycheck_power_rating",
        5000.0,
        "W",
    ),
    (
        "safetycheck/measurements",
        "safetycheck_max_charge_power",
        4800.0,
        "W",
    ),
    (
        "safetycheck/measurements",
        "safetycheck_max_discharge_power",
        6750.0,
        "W",
    ),
];

/// The alarm states `every-topic.jsonl` carries.
pub fn every_topic_alarms() -> Value {
    serde_json::json!({"battery_low": true, "fan_lock": false, "pv_loss": false})
}

/// Sorted `(device, topic, metric, value bits, unit)` keys of measurement
/// objects (as the recording API or `--dry-run --format jsonl` gives them),
/// for comparing multisets exactly.
pub fn measurement_keys(items: &[Value]) -> Vec<(String, String, String, u64, String)> {
    let mut keys: Vec<_> = items
        .iter()
        .map(|m| {
            (
                m["device_id"].as_str().unwrap_or("?").to_owned(),
                m["source_topic"].as_str().unwrap_or("?").to_owned(),
                m["metric_name"].as_str().unwrap_or("?").to_owned(),
                m["metric_value"].as_f64().map_or(0, f64::to_bits),
                m["unit"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// The keys [`EVERY_TOPIC_EXPECTED`] stands for, for `device`.
pub fn every_topic_expected_keys(device: &str) -> Vec<(String, String, String, u64, String)> {
    let items: Vec<Value> = EVERY_TOPIC_EXPECTED
        .iter()
        .map(|(suffix, metric, value, unit)| {
            serde_json::json!({
                "device_id": device,
                "source_topic": format!("pv/PV3/{device}/{suffix}"),
                "metric_name": metric,
                "metric_value": value,
                "unit": unit,
            })
        })
        .collect();
    measurement_keys(&items)
}
