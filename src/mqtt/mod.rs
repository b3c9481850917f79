//! The MQTT side: connection settings and options, the one connection
//! driver ([`driver`]: the event loop, reconnects with backoff,
//! resubscription, a clean disconnect), subscriptions with their bounded
//! receive queue, and the publishing connection of `replay --to-mqtt`.
//! Topic names and filters are [`crate::topic`]'s business.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::reading::Timestamp;
use crate::secret::Secret;

/// The first wait before a reconnect (it doubles up to `--mqtt-reconnect-max`).
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(500);

/// Largest packet accepted from the broker. rumqttc's default (10 KiB)
/// drops the connection on a larger payload; P3 payloads are small, but a
/// broker shared with other devices may carry big ones.
pub(crate) const MAX_PACKET_SIZE: usize = 16 * 1024 * 1024;

mod driver;
mod publisher;
mod queue;

pub(crate) use driver::{Connection, Event as ConnectionEvent, Plan, Role};
pub(crate) use publisher::Publisher;
use queue::{QUEUE_BYTES, QUEUE_MESSAGES, QueueTx, Queued, queue};

/// How to reach the broker, and how to behave towards it.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<Secret>,
    /// Connect over TLS.
    pub tls: bool,
    /// PEM file of the CA to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// MQTT client id.
    pub client_id: String,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// First delay before reconnecting; it doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Connected but no message for this long: drop the link and reconnect
    /// (a broker that accepts connections but has stopped forwarding).
    pub stale_after: Option<Duration>,
}

impl MqttSettings {
    /// `host:port` for messages.
    pub(crate) fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A client id of the form `pv3-<command>-<random>`.
pub fn default_client_id(command: &str) -> String {
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(8)
        .collect();
    format!("pv3-{command}-{}", suffix.to_lowercase())
}

/// One received PUBLISH.
#[derive(Debug, Clone)]
pub struct Message {
    /// The full topic.
    pub topic: String,
    /// The payload, as received.
    pub payload: Bytes,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Sent by the broker as a retained message.
    pub retain: bool,
    /// When pv3 received it (UTC).
    pub received: Timestamp,
}

impl Message {
    /// What it costs in the queue: its topic and payload.
    fn bytes(&self) -> usize {
        self.topic.len().saturating_add(self.payload.len())
    }
}

/// A live subscription: messages arrive on [`Subscription::recv`] across
/// reconnects until [`Subscription::close`].
pub struct Subscription {
    rx: mpsc::Receiver<Queued>,
    connection: Connection,
}

impl Subscription {
    /// The next message; `None` once the connection has stopped.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await.map(|queued| queued.message)
    }

    /// Are more messages already waiting?
    pub(crate) fn has_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Becomes `true` at the first SUBACK (systemd's READY=1).
    pub(crate) fn subscribed(&self) -> watch::Receiver<bool> {
        self.connection.subscribed()
    }

    /// A flag that is `true` while the broker link is up, for status
    /// reporting.
    pub(crate) fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connection.connected_flag()
    }

    /// Disconnects politely (bounded wait) and stops the connection.
    pub(crate) async fn close(self) {
        self.connection.close(Duration::from_secs(2)).await;
    }
}

/// rumqttc options for `settings`: clean session, the raised packet limit,
/// credentials and TLS. Fails only on a CA file that cannot be used.
pub(crate) fn client_options(settings: &MqttSettings) -> Result<MqttOptions> {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
    if let Some(user) = &settings.username {
        let password = settings
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        options.set_credentials(user, password);
    }
    if settings.tls {
        let config = crate::tls::client_config(settings.ca_file.as_deref())?;
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    }
    Ok(options)
}

/// Connects (in the background, retrying forever) and subscribes to
/// `filters` after every connect. Fails only on settings that can never
/// work (a bad CA file).
pub fn subscribe(settings: &MqttSettings, filters: Vec<String>) -> Result<Subscription> {
    let (sink, rx) = queue(QUEUE_MESSAGES, QUEUE_BYTES);
    let plan = Plan::subscriber(filters, sink, settings.stale_after);
    Ok(Subscription {
        rx,
        connection: Connection::open(settings, plan)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_name_the_command() {
        let id = default_client_id("collect");
        assert!(id.starts_with("pv3-collect-") && id.len() == "pv3-collect-".len() + 8);
        assert_ne!(id, default_client_id("collect"));
    }
}
