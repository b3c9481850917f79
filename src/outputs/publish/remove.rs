//! `collect --ha-remove`: clear what `--ha` and `--publish` left retained
//! on the output broker, so Home Assistant forgets the entities.
//!
//! pv3 keeps no list of what it announced: it asks the broker. It
//! subscribes to the discovery topics of the device's node (`pv3_<device>`,
//! every `pv3_*` node for `+`) and to the flat topics, collects the
//! retained messages the broker sends back, and publishes an empty retained
//! message on each (MQTT's way to delete one; Home Assistant removes an
//! entity whose config is emptied). This also finds what an older version
//! announced.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, bail};
use rumqttc::QoS;
use tokio::time::Instant;
use tracing::info;

use super::discovery::{NODE_PREFIX, node_id};
use super::naming::level;
use crate::mqtt::{Connection, ConnectionEvent, MqttSettings, Plan, Role};

/// After the subscription is acknowledged, retained messages are taken to
/// be complete once none has come for this long.
const QUIET: Duration = Duration::from_millis(1500);

/// The longest the whole clean-up may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Clears the retained discovery configs under `ha_prefix` and the flat
/// topics under `prefix` for `device` (`None`: every device). Returns how
/// many topics were cleared.
pub async fn remove(
    settings: &MqttSettings,
    prefix: &str,
    ha_prefix: &str,
    device: Option<&str>,
) -> Result<usize> {
    let node = device.map_or_else(|| "+".to_string(), node_id);
    let flat = match device {
        Some(d) => format!("{prefix}/{}/#", level(d)),
        None => format!("{prefix}/#"),
    };
    // pv3's own device beside the P3's has a node of its own (for `+`,
    // the `+` node filter covers it).
    let mut filters = vec![format!("{ha_prefix}/+/{node}/+/config"), flat];
    if device.is_some() {
        let health = super::health::node_id(device);
        filters.push(format!("{ha_prefix}/+/{health}/+/config"));
    }
    let plan = Plan::publisher(Role::Output).subscribing(filters);
    let mut session = Session {
        connection: Connection::open(settings, plan)?,
        endpoint: settings.endpoint(),
        deadline: Instant::now() + LIMIT,
    };
    let outcome = session
        .retained(|topic| ours(topic, ha_prefix, device.is_none()))
        .await;
    let found = match outcome {
        Ok(found) => found,
        Err(e) => {
            session.connection.close(Duration::from_secs(1)).await;
            return Err(e);
        }
    };
    // Discovery configs first: Home Assistant drops the entities, then
    // their states go.
    let (configs, states): (Vec<_>, Vec<_>) = found
        .iter()
        .partition(|t| t.starts_with(&format!("{ha_prefix}/")));
    let cleared = session.clear(configs.iter().chain(&states).copied()).await;
    let endpoint = session.endpoint.clone();
    session.connection.close(Duration::from_secs(2)).await;
    cleared?;
    info!(
        "removed {} Home Assistant entities and {} retained topics from {endpoint}",
        configs.len(),
        states.len(),
    );
    Ok(found.len())
}

/// One connection to the output broker, and when the clean-up gives up.
struct Session {
    connection: Connection,
    endpoint: String,
    deadline: Instant,
}

impl Session {
    /// Collects the topics of the retained messages the broker sends on the
    /// subscription that `keep` accepts, until none has come for [`QUIET`].
    /// A lost connection ends it: a clean-up is a one-off, not a service.
    async fn retained(&mut self, keep: impl Fn(&str) -> bool) -> Result<BTreeSet<String>> {
        let endpoint = &self.endpoint;
        let mut found = BTreeSet::new();
        let mut quiet_from: Option<Instant> = None;
        loop {
            let until = quiet_from.map_or(self.deadline, |t| (t + QUIET).min(self.deadline));
            let event = tokio::select! {
                event = self.connection.next() => event,
                _ = tokio::time::sleep_until(until) => break,
            };
            match event {
                Some(ConnectionEvent::Subscribed) => quiet_from = Some(Instant::now()),
                Some(ConnectionEvent::Message(p)) => {
                    if p.retain && !p.payload.is_empty() && keep(&p.topic) {
                        found.insert(p.topic);
                    }
                    if quiet_from.is_some() {
                        quiet_from = Some(Instant::now());
                    }
                }
                Some(ConnectionEvent::Lost { why, .. }) => bail!("output broker {endpoint}: {why}"),
                Some(_) => {}
                None => bail!("output broker {endpoint}: the connection stopped"),
            }
        }
        if quiet_from.is_none() {
            bail!("output broker {endpoint}: no answer to the subscription within {LIMIT:?}");
        }
        Ok(found)
    }

    /// Publishes an empty retained message on each topic and waits until
    /// every one is acknowledged: rumqttc holds back publishes past its
    /// in-flight window until acks come in, and a DISCONNECT sent
    /// meanwhile would leave them unsent.
    async fn clear<'t>(&mut self, topics: impl Iterator<Item = &'t String>) -> Result<()> {
        let endpoint = &self.endpoint;
        let mut total = 0;
        for topic in topics {
            self.connection.client().try_publish(
                topic.as_str(),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )?;
            total += 1;
        }
        let mut acked = 0;
        while acked < total {
            let event = tokio::select! {
                event = self.connection.next() => event,
                _ = tokio::time::sleep_until(self.deadline) => bail!(
                    "output broker {endpoint}: timed out clearing topics ({acked} of {total} acknowledged)"
                ),
            };
            match event {
                Some(ConnectionEvent::Acked(_)) => acked += 1,
                Some(ConnectionEvent::Lost { why, .. }) => {
                    bail!("output broker {endpoint}: {why} ({acked} of {total} topics cleared)")
                }
                Some(_) => {}
                None => bail!("output broker {endpoint}: the connection stopped"),
            }
        }
        Ok(())
    }
}

/// With `+`, the discovery filter matched every node: keep pv3's only.
fn ours(topic: &str, ha_prefix: &str, any_device: bool) -> bool {
    let Some(rest) = topic
        .strip_prefix(ha_prefix)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return true; // a flat topic under our own prefix
    };
    !any_device
        || rest
            .split('/')
            .nth(1)
            .is_some_and(|node| node.starts_with(NODE_PREFIX))
}
