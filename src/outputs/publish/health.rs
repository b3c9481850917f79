//! pv3's own health in Home Assistant, beside the P3's entities (as
//! Zigbee2MQTT's bridge entities): a "pv3" device whose entities say
//! whether PV3 Monitor's API answers, how many readings wait (memory and
//! spool), how many were dropped, when the API last took a batch, how big
//! the spool is, when the P3 was last heard and which pv3 this is.
//!
//! They are published every publish interval (every second with
//! `--publish-interval 0`), retained. Their availability is pv3's own: the
//! last will where the connection has one for the instance (`--device-id
//! +`), else `<root>/status`, set `offline` at a clean stop, with
//! `expire_after` covering a `kill -9`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::discovery::{Names, origin};
use super::naming::{device_part, level};
use crate::forward::ForwardStats;
use crate::outputs::Health;
use crate::reading::Timestamp;

/// What one health entity is.
struct Entity {
    /// Its id within the pv3 device (topic level, object id).
    id: &'static str,
    component: &'static str,
    name: &'static str,
    device_class: Option<&'static str>,
    unit: Option<&'static str>,
    state_class: Option<&'static str>,
    /// Only with the API output on.
    api: bool,
}

const fn entity(
    id: &'static str,
    component: &'static str,
    name: &'static str,
    (device_class, unit, state_class): (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    ),
    api: bool,
) -> Entity {
    Entity {
        id,
        component,
        name,
        device_class,
        unit,
        state_class,
        api,
    }
}

/// The health entities, in the order a device page lists them.
const ENTITIES: &[Entity] = &[
    entity(
        "api",
        "binary_sensor",
        "PV3 Monitor API",
        (Some("connectivity"), None, None),
        true,
    ),
    entity(
        "waiting",
        "sensor",
        "Readings waiting",
        (None, Some("readings"), Some("measurement")),
        true,
    ),
    entity(
        "dropped",
        "sensor",
        "Readings dropped",
        (None, Some("readings"), Some("total_increasing")),
        true,
    ),
    entity(
        "last_delivery",
        "sensor",
        "Last delivery",
        (Some("timestamp"), None, None),
        true,
    ),
    entity(
        "spool",
        "sensor",
        "Spool size",
        (Some("data_size"), Some("B"), Some("measurement")),
        true,
    ),
    entity(
        "last_message",
        "sensor",
        "Last P3 message",
        (Some("timestamp"), None, None),
        false,
    ),
    entity("version", "sensor", "Version", (None, None, None), false),
];

/// The pv3 device's topics and ids, and when its states next go out.
pub(super) struct HealthDevice {
    /// `<prefix>/<device>/pv3`, or `<prefix>/pv3` for `--device-id +`.
    root: String,
    /// Discovery's node id and the device's identifier.
    node: String,
    /// `pv3 (PV001001DEV)`, or `pv3`.
    label: String,
    /// The entity ids' stem: `p3_pv001001dev_pv3`, or `pv3`.
    stem: String,
    /// Where availability is said.
    availability: String,
    /// Whether `availability` is the connection's will (nothing to say at
    /// connect and stop: the output does it).
    will: bool,
    every: Duration,
    expire_after: u64,
    api: bool,
    next_at: Option<Instant>,
    /// The configs went out on this connection.
    pub(super) announced: bool,
}

impl HealthDevice {
    /// The health device of an output for `device` (`None`: every device).
    pub(super) fn new(
        names: &Names,
        device: Option<&str>,
        interval: Duration,
        api: bool,
    ) -> HealthDevice {
        let every = interval.max(Duration::from_secs(1));
        let node = node_id(device);
        let (root, label, stem) = match device {
            Some(d) => (
                format!("{}/{}/pv3", names.prefix, level(d)),
                format!("pv3 ({d})"),
                format!("p3_{}_pv3", device_part(d)),
            ),
            None => (
                format!("{}/pv3", names.prefix),
                "pv3".to_string(),
                "pv3".to_string(),
            ),
        };
        let (availability, will) = if names.instance_will {
            (names.will_topic.clone(), true)
        } else {
            (format!("{root}/status"), false)
        };
        HealthDevice {
            root,
            node,
            label,
            stem,
            availability,
            will,
            every,
            expire_after: (every.as_secs() * 3).max(30),
            api,
            next_at: None,
            announced: false,
        }
    }

    fn entities(&self) -> impl Iterator<Item = &'static Entity> + '_ {
        ENTITIES.iter().filter(|e| self.api || !e.api)
    }

    /// Whether the states are due at `now` (then the next is scheduled).
    pub(super) fn due(&mut self, now: Instant) -> bool {
        if self.next_at.is_some_and(|t| now < t) {
            return false;
        }
        self.next_at = Some(now + self.every);
        true
    }

    /// Everything goes out again (a new connection, Home Assistant back).
    pub(super) fn again(&mut self) {
        self.next_at = None;
        self.announced = false;
    }

    /// The availability topic pv3 says `online`/`offline` on itself, when
    /// the will does not.
    pub(super) fn status_topic(&self) -> Option<&str> {
        (!self.will).then_some(self.availability.as_str())
    }

    /// The discovery configs: (topic, payload).
    pub(super) fn configs(&self, names: &Names) -> Vec<(String, String)> {
        self.entities()
            .map(|e| {
                let topic = format!(
                    "{}/{}/{}/{}/config",
                    names.ha_prefix, e.component, self.node, e.id
                );
                (topic, self.config(e).to_string())
            })
            .collect()
    }

    fn config(&self, e: &Entity) -> Value {
        let mut c = Map::new();
        let mut put = |k: &str, v: Value| {
            c.insert(k.to_string(), v);
        };
        put("name", json!(e.name));
        put("unique_id", json!(format!("{}_{}", self.node, e.id)));
        put(
            "default_entity_id",
            json!(format!("{}.{}_{}", e.component, self.stem, e.id)),
        );
        put("state_topic", json!(format!("{}/{}", self.root, e.id)));
        put("availability_topic", json!(self.availability));
        put("payload_available", json!("online"));
        put("payload_not_available", json!("offline"));
        put("expire_after", json!(self.expire_after));
        put("entity_category", json!("diagnostic"));
        if let Some(class) = e.device_class {
            put("device_class", json!(class));
        }
        if let Some(unit) = e.unit {
            put("unit_of_measurement", json!(unit));
        }
        if let Some(class) = e.state_class {
            put("state_class", json!(class));
        }
        if e.component == "binary_sensor" {
            put("payload_on", json!("ON"));
            put("payload_off", json!("OFF"));
        }
        put(
            "device",
            json!({
                "identifiers": [self.node],
                "name": self.label,
                "manufacturer": "pv3",
                "model": "collector",
                "sw_version": env!("CARGO_PKG_VERSION"),
            }),
        );
        put("origin", origin());
        Value::Object(c)
    }

    /// The states now: (topic, payload), those with a value.
    pub(super) fn states(&self, health: &Health) -> Vec<(String, String)> {
        let api = health.api.as_deref();
        let input = health.input();
        self.entities()
            .filter_map(|e| {
                let value = match e.id {
                    "api" => api.map(|s| {
                        let failing = ForwardStats::get(&s.failing_since_ms) > 0;
                        if failing { "OFF" } else { "ON" }.to_string()
                    }),
                    "waiting" => api.map(|s| {
                        let get = ForwardStats::get;
                        (get(&s.queued) + get(&s.spool_measurements)).to_string()
                    }),
                    "dropped" => api.map(|s| ForwardStats::get(&s.dropped).to_string()),
                    "last_delivery" => api.and_then(|s| {
                        let ms = s.last_delivery_ms.load(Ordering::Relaxed);
                        (ms > 0).then(|| millis_text(ms))
                    }),
                    "spool" => api.map(|s| ForwardStats::get(&s.spool_bytes).to_string()),
                    "last_message" => input.last_message.map(Timestamp::to_rfc3339),
                    "version" => Some(env!("CARGO_PKG_VERSION").to_string()),
                    _ => None,
                }?;
                Some((format!("{}/{}", self.root, e.id), value))
            })
            .collect()
    }
}

/// Discovery's node id of the pv3 device beside `device` (`None`: every
/// device): `pv3_<device>_collector`, or `pv3_collector`.
pub(super) fn node_id(device: Option<&str>) -> String {
    match device {
        Some(d) => format!("pv3_{}_collector", device_part(d)),
        None => "pv3_collector".to_string(),
    }
}

/// Unix milliseconds as RFC 3339.
fn millis_text(ms: u64) -> String {
    let micros = i64::try_from(ms).unwrap_or(0).saturating_mul(1000);
    Timestamp::from_unix_micros(micros).to_rfc3339()
}

/// For tests and docs: the health entities' ids and components.
#[cfg(test)]
pub(super) fn ids() -> Vec<(&'static str, &'static str)> {
    ENTITIES.iter().map(|e| (e.component, e.id)).collect()
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
    fn one_device_s_health_sits_under_its_topics_and_ids() {
        let h = HealthDevice::new(&names(), Some("PV001001DEV"), Duration::from_secs(10), true);
        let configs = h.configs(&names());
        assert_eq!(configs.len(), ids().len());
        let (topic, text) = &configs[0];
        assert_eq!(
            topic,
            "homeassistant/binary_sensor/pv3_pv001001dev_collector/api/config"
        );
        let c: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(c["device_class"], "connectivity");
        assert_eq!(c["state_topic"], "pv3/PV001001DEV/pv3/api");
        assert_eq!(
            c["default_entity_id"],
            "binary_sensor.p3_pv001001dev_pv3_api"
        );
        assert_eq!(c["availability_topic"], "pv3/PV001001DEV/pv3/status");
        assert_eq!(c["expire_after"], 30);
        assert_eq!(h.status_topic(), Some("pv3/PV001001DEV/pv3/status"));
        // Without the API, its entities are left out.
        let no_api = HealthDevice::new(&names(), Some("PV001001DEV"), Duration::ZERO, false);
        let ids: Vec<String> = no_api
            .configs(&names())
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
    }
}
