//! The output's connection: the task's loop, what is sent, and what happens
//! when the broker drops it.
//!
//! - **One poll, never cancelled.** rumqttc's `EventLoop::poll` connects
//!   when it has no connection, and a connect cut short starts again from
//!   scratch. The loop used to poll inside a `select!` with a 250 ms tick:
//!   against a broker that accepts TCP but never sends CONNACK, every tick
//!   abandoned the attempt (and left a socket open on the broker) before
//!   rumqttc's handshake timeout could fire, so nothing was ever said. Now
//!   one poll future owns the event loop until it completes.
//! - **Backoff like the source link.** A connection must stay up
//!   [`HEALTHY_AFTER`] before the reconnect delay starts again from its first
//!   step: a broker that drops pv3 right after each connect gets ever longer
//!   waits, not a reconnect a second.
//! - **A message the broker refuses.** With MQTT 3.1.1 a broker refuses a
//!   PUBLISH by closing the connection (Mosquitto: a topic with a control
//!   character, a packet over its `max_packet_size`). After a connection
//!   lost within [`HEALTHY_AFTER`] of its CONNACK, the next one is
//!   *careful*: one message at a time, QoS 1,
//!   the next only once the broker has acknowledged the last; so when it
//!   drops pv3 again, the message it was reading is known. A message that
//!   has killed the connection [`KILLS`] times is dropped (counted, and
//!   named in a warning) and not sent again until pv3 restarts. Once
//!   everything due has been acknowledged, publishing is quick again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, NetworkOptions, Outgoing, Packet, QoS,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Inbox, OutputStats, Publisher};
use crate::backoff::Backoff;

/// How long a connection must stay up before the reconnect backoff starts
/// again from its first step (as the source link, `mqtt::link`).
pub(super) const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// How many times a message may kill the connection before it is dropped.
pub(super) const KILLS: u8 = 2;

/// How long the TCP connect, TLS and MQTT handshake may take together
/// (rumqttc's connection timeout, set explicitly so the warning can say it).
const HANDSHAKE_SECS: u64 = 5;

/// How often due values are looked for between readings.
const TICK: Duration = Duration::from_millis(250);

/// rumqttc's network options for the output: the handshake timeout.
pub(super) fn network_options() -> NetworkOptions {
    let mut options = NetworkOptions::new();
    options.set_connection_timeout(HANDSHAKE_SECS);
    options
}

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

/// One connection's life across reconnects: the backoff and the log.
struct Link {
    endpoint: String,
    backoff: Backoff,
    /// Failures since the link was last healthy: the first is a warning.
    failures: u32,
    /// When the current connection was acknowledged.
    up_since: Option<Instant>,
}

impl Link {
    fn connected(&mut self) {
        self.up_since = Some(Instant::now());
        if self.failures > 0 {
            info!(
                "output broker {}: connected after {} failed attempts",
                self.endpoint, self.failures
            );
        } else {
            info!("output broker {}: connected", self.endpoint);
        }
    }

    /// Whether the connection (if there is one) is younger than
    /// [`HEALTHY_AFTER`].
    fn young(&self) -> bool {
        self.up_since.is_some_and(|t| t.elapsed() < HEALTHY_AFTER)
    }

    /// A failed attempt or a lost connection: says so (loudly the first
    /// time) and returns the wait before the next attempt.
    fn failed(&mut self, e: &ConnectionError) -> Duration {
        let was_up = self.up_since.take();
        if was_up.is_some_and(|t| t.elapsed() >= HEALTHY_AFTER) {
            self.backoff.reset();
            self.failures = 0;
        }
        let delay = self.backoff.next_delay();
        let what = match e {
            ConnectionError::NetworkTimeout if was_up.is_none() => format!(
                "no CONNACK within {HANDSHAKE_SECS} s: it did not answer the MQTT handshake \
                 (is this an MQTT port? TLS needs --out-mqtt-tls)"
            ),
            e => e.to_string(),
        };
        if self.failures == 0 {
            warn!(
                "output broker {}: {what}; reconnecting in {:.1} s (and on, with backoff)",
                self.endpoint,
                delay.as_secs_f64()
            );
        }
        debug!(
            "output broker {}: {what}; retry in {:.1} s",
            self.endpoint,
            delay.as_secs_f64()
        );
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// The event loop and what its poll gave.
type Polled = (EventLoop, Result<Event, ConnectionError>);

/// A poll that owns the event loop, so that nothing cancels it.
type Polling = Pin<Box<dyn Future<Output = Polled> + Send>>;

fn poll(mut eventloop: EventLoop) -> Polling {
    Box::pin(async move {
        let event = eventloop.poll().await;
        (eventloop, event)
    })
}

/// The task: the event loop, the inbox and the clock, until stopped.
pub(super) async fn run(
    mut p: Publisher,
    eventloop: EventLoop,
    inbox: Arc<Inbox>,
    mut stop: watch::Receiver<bool>,
    backoff: Backoff,
) {
    let mut link = Link {
        endpoint: p.endpoint.clone(),
        backoff,
        failures: 0,
        up_since: None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut polling = poll(eventloop);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                p.take(&inbox);
                p.flush(Instant::now());
                goodbye(&mut p, polling).await;
                return;
            }
            (eventloop, event) = &mut polling => {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        link.connected();
                        p.on_connect();
                    }
                    Ok(Event::Incoming(Packet::Publish(m))) => p.on_message(&m.topic, &m.payload),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => p.on_sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => p.on_puback(ack.pkid),
                    Ok(_) => {}
                    Err(e) => {
                        p.connection_lost(link.young());
                        let delay = link.failed(&e);
                        if wait(delay, &mut p, &inbox, &mut stop).await {
                            return;
                        }
                    }
                }
                polling = poll(eventloop);
            }
            _ = inbox.notify.notified() => {
                p.take(&inbox);
                p.flush(Instant::now());
            }
            _ = tick.tick() => p.flush(Instant::now()),
        }
    }
}

/// Waits `delay` before the next connection attempt, still taking readings
/// in (so that the newest values go out after the reconnect); true when
/// stopped meanwhile.
async fn wait(
    delay: Duration,
    p: &mut Publisher,
    inbox: &Inbox,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let until = Instant::now() + delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return false,
            _ = stop.changed() => return true,
            _ = inbox.notify.notified() => p.take(inbox),
        }
    }
}

/// A clean stop: every device `offline` (retained), then DISCONNECT (so
/// the broker does not send the will as well), briefly awaited.
async fn goodbye(p: &mut Publisher, mut polling: Polling) {
    if !p.out.connected {
        return;
    }
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
    let _ = client.try_disconnect();
    let drain = async {
        loop {
            match polling.await {
                (_, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) => return,
                (eventloop, Ok(_)) => polling = poll(eventloop),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    p.out.stats.set_connected(false);
}
