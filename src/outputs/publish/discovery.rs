//! Topic names and Home Assistant discovery configs: pure functions of the
//! device id, the metric and the options, so that a restart (or another
//! version of pv3) announces the same entities under the same ids.

use serde_json::{Map, Value, json};

use super::labels::{alarm_name, metric_name, state_template, states};
use super::naming::{device_part, level, object_part};
use crate::metric_info::{self, MetricInfo};

/// The names the output publishes under.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// Flat topics' prefix (`pv3`).
    pub(crate) prefix: String,
    /// Home Assistant's discovery prefix (`homeassistant`).
    pub(crate) ha_prefix: String,
    /// The availability topic that is also the connection's last will.
    pub(crate) will_topic: String,
    /// Whether `will_topic` is pv3's own (one per instance, for `+`) rather
    /// than the device's status topic.
    pub(crate) instance_will: bool,
}

/// What a published value is: a number or an alarm flag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Key {
    /// A metric, with the unit the decoder gives it.
    Metric(String, &'static str),
    /// An inverter alarm flag.
    Alarm(String),
}

/// What every node id pv3 announces starts with.
pub(crate) const NODE_PREFIX: &str = "pv3_";

/// Discovery's node id for a device: `pv3_<device>` (see [`device_part`]).
pub(crate) fn node_id(device: &str) -> String {
    format!("{NODE_PREFIX}{}", device_part(device))
}

/// The object id of `key` within its device's node.
fn object_id(key: &Key) -> String {
    match key {
        Key::Metric(metric, _) => object_part(metric),
        Key::Alarm(flag) => format!("alarm_{}", object_part(flag)),
    }
}

/// Home Assistant's component for `key`.
fn component(key: &Key) -> &'static str {
    match key {
        Key::Metric(..) => "sensor",
        Key::Alarm(_) => "binary_sensor",
    }
}

/// The entity id Home Assistant gives `key` when it first sees it
/// (`sensor.p3_pv001001dev_battery_power`): from the device id and the
/// metric's name, never from the entity's display name, so docs and
/// dashboards can name it and a renamed entity keeps it.
pub(crate) fn entity_id(device: &str, key: &Key) -> String {
    format!(
        "{}.p3_{}_{}",
        component(key),
        device_part(device),
        object_id(key)
    )
}

impl Names {
    /// `<ha_prefix>/status`, where Home Assistant says it came online.
    pub(crate) fn birth_topic(&self) -> String {
        format!("{}/status", self.ha_prefix)
    }

    /// `<prefix>/<device>/status`: `online` while the device's data flows.
    pub(crate) fn device_status(&self, device: &str) -> String {
        format!("{}/{}/status", self.prefix, level(device))
    }

    /// The flat state topic of `key`.
    pub(crate) fn state_topic(&self, device: &str, key: &Key) -> String {
        match key {
            // Lower case, as the object ids (`safetycheck_State` is
            // `.../safetycheck_state`).
            Key::Metric(metric, _) => format!(
                "{}/{}/{}",
                self.prefix,
                level(device),
                level(&metric.to_lowercase())
            ),
            Key::Alarm(flag) => format!("{}/{}/alarm/{}", self.prefix, level(device), level(flag)),
        }
    }

    /// `<ha_prefix>/<component>/<node_id>/<object_id>/config`.
    pub(crate) fn config_topic(&self, device: &str, key: &Key) -> String {
        format!(
            "{}/{}/{}/{}/config",
            self.ha_prefix,
            component(key),
            node_id(device),
            object_id(key)
        )
    }

    /// The discovery config of `key` (see `docs/home-assistant.md`).
    pub(crate) fn config(&self, device: &str, key: &Key, expire_after: u64) -> Value {
        let node = node_id(device);
        let mut availability = vec![json!({ "topic": self.device_status(device) })];
        if self.instance_will {
            availability.push(json!({ "topic": self.will_topic }));
        }
        let mut config = Map::new();
        let mut put = |k: &str, v: Value| {
            config.insert(k.to_string(), v);
        };
        put("state_topic", json!(self.state_topic(device, key)));
        put("availability", Value::Array(availability));
        put("availability_mode", json!("all"));
        put("payload_available", json!("online"));
        put("payload_not_available", json!("offline"));
        put("expire_after", json!(expire_after));
        put(
            "device",
            json!({
                "identifiers": [node],
                "name": format!("P3 {device}"),
                "manufacturer": "Powervault",
                "model": "P3",
                "serial_number": device,
                // The P3 publishes no firmware version: what feeds it.
                "sw_version": format!("pv3 {}", env!("CARGO_PKG_VERSION")),
            }),
        );
        put("origin", origin());
        put("unique_id", json!(format!("{node}_{}", object_id(key))));
        put("default_entity_id", json!(entity_id(device, key)));
        match key {
            Key::Metric(metric, unit) => {
                let info = metric_info::info(metric, unit);
                put("name", json!(metric_name(metric)));
                match states(metric) {
                    Some(states) => enum_fields(&mut put, states, info.diagnostic),
                    None => sensor_fields(&mut put, &info),
                }
            }
            Key::Alarm(flag) => {
                put("name", json!(alarm_name(flag)));
                put("device_class", json!("problem"));
                put("entity_category", json!("diagnostic"));
                put("payload_on", json!("ON"));
                put("payload_off", json!("OFF"));
            }
        }
        Value::Object(config)
    }
}

/// A code with named states: `device_class: enum` with its `options`, the
/// flat topic's number turned into the name by a template; no unit and no
/// state class (Home Assistant refuses either on an enum).
fn enum_fields(put: &mut impl FnMut(&str, Value), states: &[(&str, &str)], diagnostic: bool) {
    put("device_class", json!("enum"));
    let options: Vec<&str> = states.iter().map(|(_, name)| *name).collect();
    put("options", json!(options));
    put("value_template", json!(state_template(states)));
    if diagnostic {
        put("entity_category", json!("diagnostic"));
    }
}

/// Discovery's `origin`: pv3, its version and where to ask.
pub(crate) fn origin() -> Value {
    let mut origin = json!({ "name": "pv3", "sw_version": env!("CARGO_PKG_VERSION") });
    let repository = env!("CARGO_PKG_REPOSITORY");
    if !repository.is_empty() {
        origin["support_url"] = json!(repository);
    }
    origin
}

fn sensor_fields(put: &mut impl FnMut(&str, Value), info: &MetricInfo) {
    if let Some(unit) = info.ha_unit {
        put("unit_of_measurement", json!(unit));
    }
    if let Some(class) = info.device_class {
        put("device_class", json!(class));
    }
    if let Some(class) = info.state_class {
        put("state_class", json!(class));
    }
    if info.diagnostic {
        put("entity_category", json!("diagnostic"));
    }
    if info.resolution > 0.0 {
        let digits = (-info.resolution.log10()).round().max(0.0);
        put("suggested_display_precision", json!(digits as u32));
    }
}

/// A value as a flat topic's payload: plain decimal text, rounded to a
/// millionth so that float noise (`0.30000000000000004`) never shows.
/// From a billion on the value is written as it is: rounding goes through
/// `value * 1e6`, which is no longer exact there and overflows to
/// infinity past about 1.8e302 (a finite reading published as `inf`).
/// Callers never pass a non-finite value (see `Publisher::take`).
pub(crate) fn payload(value: f64) -> String {
    let rounded = if value.abs() < 1e9 {
        (value * 1e6).round() / 1e6
    } else {
        value
    };
    if rounded == 0.0 {
        return "0".to_string();
    }
    format!("{rounded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            prefix: "pv3".into(),
            ha_prefix: "homeassistant".into(),
            will_topic: "pv3/PV001001DEV/status".into(),
            instance_will: false,
        }
    }

    #[test]
    fn payloads_are_plain_numbers() {
        assert_eq!(payload(97.0), "97");
        assert_eq!(payload(-413.793), "-413.793");
        assert_eq!(payload(0.1 + 0.2), "0.3");
        assert_eq!(payload(-0.0), "0");
        assert_eq!(payload(12_345_678_901.5), "12345678901.5");
        for huge in [1.797e305, f64::MAX, -f64::MAX] {
            assert_eq!(payload(huge).parse::<f64>().ok(), Some(huge), "{huge}");
        }
    }

    #[test]
    fn names_are_stable_and_safe() {
        let n = names();
        let key = Key::Metric("grid_power".into(), "W");
        assert_eq!(
            n.state_topic("PV001001DEV", &key),
            "pv3/PV001001DEV/grid_power"
        );
        assert_eq!(
            n.config_topic("PV001001DEV", &key),
            "homeassistant/sensor/pv3_pv001001dev/grid_power/config"
        );
        let alarm = Key::Alarm("fan_lock".into());
        assert_eq!(
            n.state_topic("PV001001DEV", &alarm),
            "pv3/PV001001DEV/alarm/fan_lock"
        );
        assert_eq!(
            n.config_topic("PV001001DEV", &alarm),
            "homeassistant/binary_sensor/pv3_pv001001dev/alarm_fan_lock/config"
        );
        // Sanitised and hashed, apart from `safetycheck_a_b_c` (see naming).
        let odd = Key::Metric("safetycheck_a/b+c".into(), "");
        assert_eq!(
            n.state_topic("PV1", &odd),
            "pv3/PV1/safetycheck_a_b_c_56db9e2b"
        );
        let flag = Key::Alarm("x\u{1}y".into());
        assert_eq!(n.state_topic("PV1", &flag), "pv3/PV1/alarm/x_y_c0908168");
        assert_eq!(
            n.config_topic("PV1", &flag),
            "homeassistant/binary_sensor/pv3_pv1/alarm_x_y_c0908168/config"
        );
        // Flat topics in lower case, as the object ids (issue 20).
        let state = Key::Metric("safetycheck_State".into(), "");
        assert_eq!(n.state_topic("PV1", &state), "pv3/PV1/safetycheck_state");
        assert_eq!(
            n.config_topic("PV1", &state),
            "homeassistant/sensor/pv3_pv1/safetycheck_state/config"
        );
    }

    #[test]
    fn ids_are_unique_per_device_id_as_written() {
        let n = names();
        let key = Key::Metric("grid_power".into(), "W");
        let ids = |device: &str| {
            let c = n.config(device, &key, 900);
            (
                c["unique_id"].as_str().unwrap_or_default().to_owned(),
                c["device"]["identifiers"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                n.config_topic(device, &key),
                c["state_topic"].as_str().unwrap_or_default().to_owned(),
            )
        };
        // Today's ids for the P3's own (upper-case) ids: nobody's history
        // breaks.
        assert_eq!(
            ids("PV001001DEV"),
            (
                "pv3_pv001001dev_grid_power".into(),
                "pv3_pv001001dev".into(),
                "homeassistant/sensor/pv3_pv001001dev/grid_power/config".into(),
                "pv3/PV001001DEV/grid_power".into()
            )
        );
        for (a, b) in [
            ("PV001001DEV", "pv001001dev"),
            ("A B", "a_b"),
            ("A/B", "A_B"),
        ] {
            let (a_ids, b_ids) = (ids(a), ids(b));
            assert_ne!(a_ids.0, b_ids.0, "{a:?} {b:?}");
            assert_ne!(a_ids.1, b_ids.1, "{a:?} {b:?}");
            assert_ne!(a_ids.2, b_ids.2, "{a:?} {b:?}");
            assert_ne!(a_ids.3, b_ids.3, "{a:?} {b:?}");
        }
        assert_eq!(n.device_status("A/B"), "pv3/A_B_5ac6d3f8/status");
    }

    #[test]
    fn a_temperature_config_uses_home_assistants_unit() {
        let c = names().config("PV1", &Key::Metric("inverter_temp".into(), "C"), 900);
        assert_eq!(c["unit_of_measurement"], "°C");
        assert_eq!(c["device_class"], "temperature");
        assert_eq!(c["state_class"], "measurement");
        assert_eq!(c["unique_id"], "pv3_pv1_inverter_temp");
        assert!(c.get("value_template").is_none());
    }
}
