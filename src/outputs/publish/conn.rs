//! The output's connection: the task's loop, what is sent, and what happens
//! when the broker drops it.
//!
//! The connection itself (polling, reconnects with backoff, the log, the
//! last will, resubscribing to Home Assistant's birth topic) is the one
//! driver's, [`crate::mqtt::Connection`]; this task reacts to its events.
//!
//! - **A message the broker refuses.** With MQTT 3.1.1 a broker refuses a
//!   PUBLISH by closing the connection (Mosquitto: a topic with a control
//!   character, a packet over its `max_packet_size`). After a connection
//!   lost within 30 s of its CONNACK (the driver's `HEALTHY_AFTER`), the
//!   next one is
//!   *careful*: one message at a time, QoS 1,
//!   the next only once the broker has acknowledged the last; so when it
//!   drops pv3 again, the message it was reading is known. A message that
//!   has killed the connection [`KILLS`] times is dropped (counted, and
//!   named in a warning) and not sent again until pv3 restarts. Once
//!   everything due has been acknowledged, publishing is quick again.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inbox, OutputStats, Publisher};
use crate::mqtt::{Connection, ConnectionEvent};

/// How many times a message may kill the connection before it is dropped.
pub(super) const KILLS: u8 = 2;

/// How often due values are looked for between readings.
const TICK: Duration = Duration::from_millis(250);

/// What a queued message is, to find it again when it kills the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Which {
    /// A device's availability.
    Status(Arc<str>),
    /// The discovery config of a device's value (by its suffix).
    Config(Arc<str>, String),
    /// The flat state of a device's value (by its suffix).
    State(Arc<str>, String),
    /// pv3's own availability.
    Other,
}

/// A message sent in careful mode and not yet acknowledged.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub(super) which: Which,
    pub(super) topic: String,
    pub(super) bytes: usize,
    /// Its packet id, once rumqttc has written it.
    pub(super) pkid: Option<u16>,
}

/// How often a message has killed the connection, and whether it is given
/// up for this run.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Strikes {
    pub(super) kills: u8,
    pub(super) refused: bool,
}

/// The sending side of the connection.
pub(super) struct Out {
    pub(super) client: AsyncClient,
    pub(super) stats: Arc<OutputStats>,
    /// CONNACK received and the connection not lost since.
    pub(super) connected: bool,
    /// One message at a time, each acknowledged before the next (see the
    /// module docs).
    pub(super) careful: bool,
    /// In careful mode, the message awaiting its PUBACK.
    pub(super) pending: Option<Sent>,
}

impl Out {
    /// Queues one retained PUBLISH and counts it; false when it cannot go
    /// now (rumqttc's queue is full, or in careful mode a message is still
    /// unacknowledged): the value stays due and goes out on a later pass.
    pub(super) fn put(
        &mut self,
        which: impl FnOnce() -> Which,
        topic: String,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
    ) -> bool {
        if self.careful && self.pending.is_some() {
            return false;
        }
        let payload = payload.into();
        let sent = self.careful.then(|| Sent {
            which: which(),
            topic: topic.clone(),
            bytes: topic.len() + payload.len(),
            pkid: None,
        });
        let qos = if self.careful { QoS::AtLeastOnce } else { qos };
        let queued = self.client.try_publish(topic, qos, true, payload).is_ok();
        if queued {
            self.stats.published(1);
            self.pending = sent;
        }
        queued
    }
}

/// The task: the connection's events, the inbox and the clock, until
/// stopped.
pub(super) async fn run(
    mut p: Publisher,
    mut connection: Connection,
    inbox: Arc<Inbox>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                p.take(&inbox);
                p.flush(Instant::now());
                goodbye(&mut p, connection).await;
                return;
            }
            event = connection.next() => match event {
                Some(ConnectionEvent::Connected) => p.on_connect(),
                Some(ConnectionEvent::Message(m)) => {
                    if !p.probe.heard(&m.topic, &m.payload) {
                        p.on_message(&m.topic, &m.payload);
                    }
                }
                Some(ConnectionEvent::Sent(pkid)) => p.on_sent(pkid),
                Some(ConnectionEvent::Acked(pkid)) => p.on_puback(pkid),
                Some(ConnectionEvent::Lost { young, .. }) => {
                    p.connection_lost(young);
                    p.probe.lost();
                }
                Some(ConnectionEvent::Subscribed) => p.probe.subscribed(&p.out.client),
                // The driver only stops when told to.
                None => return,
            },
            _ = inbox.notify.notified() => {
                p.take(&inbox);
                p.flush(Instant::now());
            }
            _ = tick.tick() => {
                let now = Instant::now();
                p.flush(now);
                p.probe.tick(&p.out.client, now);
            }
        }
    }
}

/// A clean stop: every device `offline` (retained), then DISCONNECT (so
/// the broker does not send the will as well), briefly awaited.
async fn goodbye(p: &mut Publisher, connection: Connection) {
    if p.out.connected {
        let client = &p.out.client;
        let offline = |topic: String| {
            if client
                .try_publish(topic, QoS::AtLeastOnce, true, "offline")
                .is_ok()
            {
                p.out.stats.published(1);
            }
        };
        for (id, device) in &p.devices {
            if !device.status.refused {
                offline(p.names.device_status(id));
            }
        }
        if p.names.instance_will {
            offline(p.names.will_topic.clone());
        }
        if let Some(topic) = p.health.as_ref().and_then(|(d, _)| d.status_topic()) {
            offline(topic.to_owned());
        }
    }
    connection.close(Duration::from_secs(2)).await;
    p.out.stats.set_connected(false);
}
