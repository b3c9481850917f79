//! Which P3s publish on a broker: a short listen on `pv/PV3/+/#`, tallied
//! per device. `pv3 devices` prints it; collect's wrong-device hint
//! ([`crate::device_hint`]) looks at it once.
//!
//! The tally keeps, per device, each topic suffix with its message count and
//! the time of its last message, and the newest headline values (SOC,
//! battery power, grid power) as the one decoder reads them. It is bounded:
//! a broker with thousands of devices or topics under `pv/PV3/` costs a
//! fixed amount of memory, the rest lumped into one row.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Result;

use crate::decode::metric;
use crate::decode::{self, Outcome};
use crate::mqtt::{self, Message, MqttSettings};
use crate::reading::Timestamp;
use crate::topic::{self, MAX_DEVICES, P3Topic};

/// Topic rows kept per device; more are lumped into [`OTHER_TOPICS`].
const MAX_TOPICS: usize = 100;
/// The row that holds a device's topics past [`MAX_TOPICS`].
pub const OTHER_TOPICS: &str = "(other topics)";

/// One topic of one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicTally {
    /// Messages received on it.
    pub messages: u64,
    /// When the last of them arrived.
    pub last: Timestamp,
}

/// The values an owner recognises a P3 by: the newest of each seen.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Headline {
    /// `soc`, in %.
    pub soc: Option<f64>,
    /// `battery_power`, in W (positive: discharging).
    pub battery_power: Option<f64>,
    /// `grid_power` (the CT clamp), in W (positive: importing).
    pub grid_power: Option<f64>,
}

/// What one device published while we listened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceTally {
    /// Per topic suffix (`bms/soc`), in name order.
    pub topics: BTreeMap<String, TopicTally>,
    /// The headline values.
    pub headline: Headline,
}

impl DeviceTally {
    /// Messages on every topic.
    pub fn messages(&self) -> u64 {
        self.topics.values().map(|t| t.messages).sum()
    }

    /// When its last message arrived (`None`: never, which a tallied
    /// device cannot be).
    pub fn last(&self) -> Option<Timestamp> {
        self.topics.values().map(|t| t.last).max()
    }
}

/// Every device seen, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    /// By device id, in id order.
    pub devices: BTreeMap<String, DeviceTally>,
    /// Messages of devices past [`MAX_DEVICES`], counted only.
    pub unlisted: u64,
}

impl Census {
    /// Counts one message; anything that is not `pv/PV3/<device>/<suffix>`
    /// is ignored.
    pub fn record(&mut self, topic: &str, payload: &[u8], received: Timestamp) {
        let Some(p3) = P3Topic::parse(topic) else {
            return;
        };
        if self.devices.len() >= MAX_DEVICES && !self.devices.contains_key(p3.device) {
            self.unlisted += 1;
            return;
        }
        let device = self.devices.entry(p3.device.to_owned()).or_default();
        let key = if device.topics.len() >= MAX_TOPICS && !device.topics.contains_key(p3.suffix) {
            OTHER_TOPICS
        } else {
            p3.suffix
        };
        let tally = device.topics.entry(key.to_owned()).or_insert(TopicTally {
            messages: 0,
            last: received,
        });
        tally.messages += 1;
        tally.last = tally.last.max(received);
        // Undecodable payloads still count as traffic; they just carry no
        // headline value.
        if let Ok(Outcome::Decoded { decoded, .. }) = decode::decode(topic, payload) {
            for m in &decoded.measurements {
                let slot = match &*m.metric {
                    metric::SOC => &mut device.headline.soc,
                    metric::BATTERY_POWER => &mut device.headline.battery_power,
                    metric::GRID_POWER => &mut device.headline.grid_power,
                    _ => continue,
                };
                *slot = Some(m.value);
            }
        }
    }

    /// Counts a received message.
    pub fn record_message(&mut self, msg: &Message) {
        self.record(&msg.topic, &msg.payload, msg.received);
    }

    /// No device seen at all.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.unlisted == 0
    }
}

/// How far a listen got with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No connection within the wait.
    NotConnected,
    /// Connected, but the subscription was not confirmed (refused by the
    /// broker's ACL, as a rule).
    NotSubscribed,
    /// Subscribed: the census is what the broker carried.
    Subscribed,
}

/// What a listen found.
#[derive(Debug, Clone)]
pub struct Listened {
    /// How far it got with the broker.
    pub reach: Reach,
    /// What was heard.
    pub census: Census,
    /// How long it listened once subscribed.
    pub listened: Duration,
}

/// Subscribes to every P3's topics and listens for `wait` once the
/// subscription is confirmed (connecting may take up to `wait` too), or
/// until `stop` resolves. Fails only on settings that can never work (a
/// bad CA file).
pub async fn listen(
    settings: &MqttSettings,
    wait: Duration,
    stop: impl Future<Output = ()>,
) -> Result<Listened> {
    let filter = topic::device_filter(topic::ANY_DEVICE);
    let mut subscription = mqtt::subscribe(settings, vec![filter])?;
    let connected = subscription.connected_flag();
    let mut subscribed = subscription.subscribed();
    let mut census = Census::default();
    tokio::pin!(stop);

    // First the connection and the SUBACK, bounded by `wait`.
    let connect_by = tokio::time::sleep(wait);
    tokio::pin!(connect_by);
    let mut reach = loop {
        if *subscribed.borrow_and_update() {
            break Reach::Subscribed;
        }
        tokio::select! {
            _ = &mut stop => break Reach::NotSubscribed,
            _ = &mut connect_by => break Reach::NotSubscribed,
            changed = subscribed.changed() => if changed.is_err() {
                break Reach::NotSubscribed;
            },
            msg = subscription.recv() => match msg {
                Some(msg) => census.record_message(&msg),
                None => break Reach::NotSubscribed,
            },
        }
    };
    if reach != Reach::Subscribed
        && !connected.load(std::sync::atomic::Ordering::Relaxed)
        && census.is_empty()
    {
        reach = Reach::NotConnected;
    }

    // Then the listen itself.
    let started = tokio::time::Instant::now();
    if reach == Reach::Subscribed {
        let listen_for = tokio::time::sleep(wait);
        tokio::pin!(listen_for);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = &mut listen_for => break,
                msg = subscription.recv() => match msg {
                    Some(msg) => census.record_message(&msg),
                    None => break,
                },
            }
        }
    }
    let listened = started.elapsed();
    subscription.close().await;
    Ok(Listened {
        reach,
        census,
        listened,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_micros(secs * 1_000_000)
    }

    #[test]
    fn tallies_topics_and_headline_values_per_device() {
        let mut c = Census::default();
        c.record(
            "pv/PV3/PVA/bms/soc",
            br#"[{"measurement":"StateOfCharge","value":9700}]"#,
            at(1),
        );
        c.record(
            "pv/PV3/PVA/bms/soc",
            br#"[{"measurement":"StateOfCharge","value":9650}]"#,
            at(3),
        );
        c.record("pv/PV3/PVA/inverter/charge", br#"{"power":591}"#, at(2));
        c.record(
            "pv/PV3/PVB/ffr/measurements",
            br#"[{"channel":"HOUSE","measurement":"Power","type":"Active","value":-413800}]"#,
            at(4),
        );
        c.record("pv/PV3/PVB/m4/pylontech_alerts", b"not json", at(5));
        c.record("other/topic", b"{}", at(6));
        c.record("pv/PV3/PVC", b"{}", at(6));
        let ids: Vec<&str> = c.devices.keys().map(String::as_str).collect();
        assert_eq!(ids, ["PVA", "PVB"]);
        let a = &c.devices["PVA"];
        assert_eq!(
            a.topics["bms/soc"],
            TopicTally {
                messages: 2,
                last: at(3)
            }
        );
        assert_eq!(a.messages(), 3);
        assert_eq!(a.last(), Some(at(3)));
        assert_eq!(
            a.headline,
            Headline {
                soc: Some(96.5),
                battery_power: Some(591.0),
                grid_power: None
            }
        );
        let b = &c.devices["PVB"];
        assert_eq!(b.headline.grid_power, Some(-413.8));
        assert_eq!(b.topics["m4/pylontech_alerts"].messages, 1);
    }

    #[test]
    fn a_flood_of_devices_and_topics_stays_bounded() {
        let mut c = Census::default();
        for i in 0..MAX_DEVICES + 5 {
            c.record(&format!("pv/PV3/D{i}/x"), b"", at(1));
        }
        assert_eq!(c.devices.len(), MAX_DEVICES);
        assert_eq!(c.unlisted, 5);
        for i in 0..MAX_TOPICS + 3 {
            c.record(&format!("pv/PV3/D0/t{i}"), b"", at(1));
        }
        let d0 = &c.devices["D0"];
        assert_eq!(d0.topics.len(), MAX_TOPICS + 1);
        assert_eq!(d0.topics[OTHER_TOPICS].messages, 4);
    }
}
