//! The MQTT side: connection options, the event loop, backoff and
//! resubscription, and a publishing connection for replay.
//!
//! rumqttc reconnects when its event loop is polled again after an error;
//! this module adds what a service needs around that: a jittered,
//! exponential delay between attempts (never a hot loop while the broker is
//! down), a fresh SUBSCRIBE after every CONNACK (a clean session forgets
//! them), clear log lines, and a queue of received messages stamped with
//! their receive time, bounded by count and by bytes. The poll task never
//! awaits a client call (rumqttc's request channel is drained by that same
//! task: awaiting it there can deadlock); it only uses `try_*` calls.
//! Topic names and filters are [`crate::topic`]'s business.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::reading::Timestamp;
use crate::secret::Secret;

/// Largest packet accepted from the broker. rumqttc's default (10 KiB)
/// drops the connection on a larger payload; P3 payloads are small, but a
/// broker shared with other devices may carry big ones.
pub(crate) const MAX_PACKET_SIZE: usize = 16 * 1024 * 1024;

/// Messages that may wait between the poll task and the consumer.
const QUEUE_MESSAGES: usize = 1024;

/// Bytes (topic and payload) those messages may hold together. Without it,
/// 1024 messages of up to [`MAX_PACKET_SIZE`] could pin 16 GiB; 64 MiB
/// still takes four of the largest, or thousands of the P3's sub-kilobyte
/// ones, so it never binds at the P3's cadence.
///
/// A full queue makes the poll task wait for room: it then stops reading
/// the socket, and TCP pushes back on the broker. Dropping instead would
/// lose readings, which collect promises not to. The wait is on the queue
/// alone, never on a client call, and gives way to a stop. The consumer
/// (decode, then a hand-off to the forwarder) takes microseconds per
/// message, so the queue fills only if the consumer is stuck.
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

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

/// A message in the queue with its share of the byte budget, given back
/// when the consumer takes it.
struct Queued {
    message: Message,
    _bytes: OwnedSemaphorePermit,
}

/// The poll task's end of the queue (see [`QUEUE_BYTES`]).
struct QueueTx {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

/// The consumer is gone.
struct Closed;

impl QueueTx {
    /// Waits until there is room by count and by bytes, then queues
    /// `message`. One larger than the whole budget waits for an empty
    /// queue.
    async fn push(&self, message: Message) -> Result<(), Closed> {
        let cost = message.bytes().min(self.budget);
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Queued {
                message,
                _bytes: permit,
            })
            .await
            .map_err(|_| Closed)
    }
}

/// A queue of at most `messages` messages holding at most `bytes` bytes.
fn queue(messages: usize, bytes: usize) -> (QueueTx, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(messages);
    let budget = bytes.min(u32::MAX as usize);
    let tx = QueueTx {
        tx,
        bytes: Arc::new(Semaphore::new(budget)),
        budget,
    };
    (tx, rx)
}

/// A live subscription: messages arrive on [`Subscription::recv`] across
/// reconnects until [`Subscription::close`].
pub struct Subscription {
    rx: mpsc::Receiver<Queued>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    connected: Arc<AtomicBool>,
    subscribed: watch::Receiver<bool>,
}

impl Subscription {
    /// The next message; `None` once the event loop has stopped.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await.map(|queued| queued.message)
    }

    /// Are more messages already waiting?
    pub(crate) fn has_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Becomes `true` at the first SUBACK (systemd's READY=1).
    pub(crate) fn subscribed(&self) -> watch::Receiver<bool> {
        self.subscribed.clone()
    }

    /// A flag that is `true` while the broker link is up, for status
    /// reporting.
    pub(crate) fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Disconnects politely (bounded wait) and stops the event loop.
    pub(crate) async fn close(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
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
    let options = client_options(settings)?;
    let (tx, rx) = queue(QUEUE_MESSAGES, QUEUE_BYTES);
    let (stop, stop_rx) = watch::channel(false);
    let (subscribed_tx, subscribed) = watch::channel(false);
    let connected = Arc::new(AtomicBool::new(false));
    let link = Link {
        endpoint: settings.endpoint(),
        address: (settings.host.clone(), settings.port),
        filters,
        backoff: Backoff::new(settings.reconnect_initial, settings.reconnect_max),
        failures: 0,
        up_since: None,
        told_too_large: false,
        connected: connected.clone(),
        subscribed: subscribed_tx,
    };
    let task = tokio::spawn(poll_loop(options, link, settings.stale_after, tx, stop_rx));
    Ok(Subscription {
        rx,
        stop,
        task,
        connected,
        subscribed,
    })
}

/// A link must stay up this long before reconnect backoff starts again
/// from its first step: a broker that drops every connection at once (a
/// retained message too large for us, say) then gets ever longer waits, not
/// a reconnect three times a second.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// While waiting to reconnect after the broker could not be reached, see
/// this often whether it accepts TCP connections again: a broker back from
/// an outage is used within about a second, whatever the backoff.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One subscription's connection state across reconnects.
struct Link {
    endpoint: String,
    address: (String, u16),
    filters: Vec<String>,
    backoff: Backoff,
    /// Errors since the link was last healthy: the first is a warning, the
    /// rest are debug lines, so an absent broker does not flood the journal.
    failures: u32,
    /// When the current connection was acknowledged.
    up_since: Option<tokio::time::Instant>,
    /// "Packet too large" has been explained (once per run is enough).
    told_too_large: bool,
    connected: Arc<AtomicBool>,
    subscribed: watch::Sender<bool>,
}

/// What the poll loop does after an event.
enum Next {
    Continue,
    /// Stop for good.
    Stop,
}

async fn poll_loop(
    options: MqttOptions,
    mut link: Link,
    stale_after: Option<Duration>,
    tx: QueueTx,
    mut stop: watch::Receiver<bool>,
) {
    let far = Duration::from_secs(u64::from(u32::MAX));
    // Each pass is one client; the stale-link watchdog starts a new one.
    loop {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), 64);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let stale_at = last_heard + stale_after.unwrap_or(far);
            let is_up = link.connected.load(Ordering::Relaxed);
            let event = tokio::select! {
                event = eventloop.poll() => event,
                _ = tokio::time::sleep_until(stale_at), if is_up && stale_after.is_some() => {
                    warn!(
                        "MQTT broker {}: connected but no message for {:.0} s: reconnecting",
                        link.endpoint,
                        stale_after.unwrap_or(far).as_secs_f64()
                    );
                    link.connected.store(false, Ordering::Relaxed);
                    let _ = client.try_disconnect();
                    break;
                }
                _ = stop.changed() => {
                    disconnect(&client, &mut eventloop, &link.connected).await;
                    return;
                }
            };
            let next = match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    last_heard = tokio::time::Instant::now();
                    link.on_connack(&client);
                    Next::Continue
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    link.on_suback(&ack);
                    Next::Continue
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    last_heard = tokio::time::Instant::now();
                    link.healthy();
                    deliver(p, &tx, &mut stop, &client, &mut eventloop, &link).await
                }
                Ok(_) => Next::Continue,
                Err(e) => link.on_error(&e, &mut stop).await,
            };
            if let Next::Stop = next {
                return;
            }
        }
    }
}

/// Hands a message to the subscriber, waiting while its queue is full (but
/// never past a stop).
async fn deliver(
    p: rumqttc::Publish,
    tx: &QueueTx,
    stop: &mut watch::Receiver<bool>,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    link: &Link,
) -> Next {
    let msg = Message {
        received: Timestamp::now(),
        qos: p.qos as u8,
        retain: p.retain,
        topic: p.topic,
        payload: p.payload,
    };
    tokio::select! {
        pushed = tx.push(msg) => if pushed.is_err() {
            return Next::Stop; // nobody is listening any more
        },
        _ = stop.changed() => {
            disconnect(client, eventloop, &link.connected).await;
            return Next::Stop;
        }
    }
    Next::Continue
}

impl Link {
    fn on_connack(&mut self, client: &AsyncClient) {
        self.connected.store(true, Ordering::Relaxed);
        self.up_since = Some(tokio::time::Instant::now());
        if self.failures > 0 {
            info!(
                "connected to MQTT broker {} after {} failed attempts",
                self.endpoint, self.failures
            );
        } else {
            info!("connected to MQTT broker {}", self.endpoint);
        }
        let subs = self
            .filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        if let Err(e) = client.try_subscribe_many(subs) {
            warn!("cannot queue SUBSCRIBE: {e}");
        }
    }

    fn on_suback(&self, ack: &rumqttc::SubAck) {
        let refused: Vec<&str> = ack
            .return_codes
            .iter()
            .zip(&self.filters)
            .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(_, f)| f.as_str())
            .collect();
        if refused.is_empty() {
            info!("subscribed to {}", self.filters.join(", "));
            self.subscribed.send_replace(true);
        } else {
            warn!(
                "broker {} refused the subscription to {} (check its ACL for this user)",
                self.endpoint,
                refused.join(", ")
            );
        }
    }

    /// Up long enough: the next failure starts the backoff afresh.
    fn healthy(&mut self) {
        if self.up_since.is_some_and(|t| t.elapsed() >= HEALTHY_AFTER) {
            self.backoff.reset();
            self.failures = 0;
        }
    }

    /// A failed or lost link: say so (once loudly), then wait before the
    /// event loop tries again. `Next::Stop` if stopped meanwhile.
    async fn on_error(&mut self, e: &ConnectionError, stop: &mut watch::Receiver<bool>) -> Next {
        self.connected.store(false, Ordering::Relaxed);
        self.healthy();
        self.up_since = None;
        let delay = self.backoff.next_delay();
        let what = describe(e);
        if let Some(size) = too_large(e) {
            if !self.told_too_large {
                self.told_too_large = true;
                warn!("{}", too_large_hint(&self.endpoint, size, &self.filters));
            }
        } else if self.failures == 0 {
            warn!(
                "MQTT broker {}: {what}; reconnecting in {:.1} s (and on, with backoff)",
                self.endpoint,
                delay.as_secs_f64()
            );
        }
        debug!(
            "MQTT broker {}: {what}; retry in {:.1} s",
            self.endpoint,
            delay.as_secs_f64()
        );
        self.failures = self.failures.saturating_add(1);
        // Only a broker that could not be reached is probed: one that
        // accepts and then drops us would turn the probe into a hot loop.
        let probe = matches!(e, ConnectionError::Io(_)).then_some(&self.address);
        if wait_to_reconnect(delay, probe, stop).await {
            Next::Stop
        } else {
            Next::Continue
        }
    }
}

/// Sleeps `delay`, cut short when `probe`'s TCP port accepts a connection
/// again; true when stopped meanwhile.
async fn wait_to_reconnect(
    delay: Duration,
    probe: Option<&(String, u16)>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        let step = match probe {
            Some(_) => until.min(tokio::time::Instant::now() + PROBE_EVERY),
            None => until,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(step) => {}
            _ = stop.changed() => return true,
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        if let Some((host, port)) = probe {
            let attempt = tokio::net::TcpStream::connect((host.as_str(), *port));
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_EVERY, attempt).await {
                return false;
            }
        }
    }
}

/// The size of a packet over our limit, if that is what `e` is.
fn too_large(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

/// What to say about a packet over the limit. The topic is not known (the
/// packet is refused before it is read); it is most likely a retained
/// message, sent again at every connect.
fn too_large_hint(endpoint: &str, size: usize, filters: &[String]) -> String {
    format!(
        "MQTT broker {endpoint} sent a message of {:.1} MiB, larger than the {} MiB packet limit, and the link was dropped. \
         If it is a retained message it comes back at every connect: find it with \
         `mosquitto_sub -h HOST -v -t '{}' --retained-only -W 5 | cut -c1-200` and clear it with \
         `mosquitto_pub -h HOST -r -n -t TOPIC`; reconnects back off meanwhile",
        size as f64 / 1048576.0,
        MAX_PACKET_SIZE >> 20,
        filters.first().map_or("pv/PV3/+/#", String::as_str)
    )
}

/// Asks for a polite DISCONNECT and lets the event loop send it, briefly.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop, connected: &AtomicBool) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    connected.store(false, Ordering::Relaxed);
}

/// A connection that only publishes (replay `--to-mqtt`), with the options
/// of [`client_options`]. It makes one attempt and never reconnects: a
/// reconnect would silently drop what rumqttc had in flight, so any
/// connection error ends it, and [`Publisher::failed`] says why.
pub(crate) struct Publisher {
    client: AsyncClient,
    task: JoinHandle<()>,
    failure: mpsc::Receiver<String>,
}

impl Publisher {
    /// Starts connecting in the background. Fails only on settings that
    /// can never work (a bad CA file).
    pub(crate) fn connect(settings: &MqttSettings) -> Result<Publisher> {
        let options = client_options(settings)?;
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let endpoint = settings.endpoint();
        let (fail, failure) = mpsc::channel(1);
        // The event loop runs on its own task; publishing awaits the client.
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        let _ = fail.try_send(format!("MQTT broker {endpoint}: {}", describe(&e)));
                        return;
                    }
                }
            }
        });
        Ok(Publisher {
            client,
            task,
            failure,
        })
    }

    /// Queues one PUBLISH, waiting while rumqttc's request queue is full.
    pub(crate) async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<()> {
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .context("cannot publish")
    }

    /// Resolves when the connection has failed, with the reason.
    pub(crate) async fn failed(&mut self) -> String {
        self.failure
            .recv()
            .await
            .unwrap_or_else(|| "MQTT connection closed".into())
    }

    /// Sends DISCONNECT after every queued PUBLISH and waits up to `timeout`
    /// for it to go out (requests leave in order: once it is out, so is
    /// everything before it). The error says why not.
    pub(crate) async fn finish(mut self, timeout: Duration) -> Result<(), String> {
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(timeout, &mut self.task).await.is_err() {
            self.task.abort();
            return Err("timed out sending the last messages".into());
        }
        match self.failure.try_recv() {
            Ok(reason) => Err(reason),
            Err(_) => Ok(()),
        }
    }
}

/// One line for a connection error, with the hint an owner needs.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "connection refused by the broker ({code:?}): check --mqtt-username/--mqtt-password"
        ),
        ConnectionError::Io(io) => format!("{io}"),
        other => {
            let text = other.to_string();
            if text.contains("NotValidForName") {
                format!(
                    "{text}: the certificate is not for this host name; use the name it was issued for in --mqtt-host"
                )
            } else if text.contains("certificate") {
                format!(
                    "{text}: pass the CA that signed the broker's certificate with --mqtt-ca FILE"
                )
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `bytes` bytes, topic and payload together.
    fn message(bytes: usize) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::from(vec![b'x'; bytes - 1]),
            qos: 0,
            retain: false,
            received: Timestamp::from_unix_micros(0),
        }
    }

    /// Polls `future` once: is it still waiting?
    fn waits<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        future.poll(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_bytes_as_well_as_count() {
        let (tx, mut rx) = queue(10, 100);
        assert!(tx.push(message(60)).await.is_ok());
        // 120 bytes would be over: the second waits, though the count is
        // far from full.
        let second = tx.push(message(60));
        tokio::pin!(second);
        assert!(waits(second.as_mut()));
        let first = rx.recv().await.expect("the first message");
        assert!(
            waits(second.as_mut()),
            "its bytes are free once it is dropped"
        );
        drop(first);
        assert!(second.await.is_ok());
        // Larger than the whole budget: waits for an empty queue, then goes.
        let big = tx.push(message(1_000));
        tokio::pin!(big);
        assert!(waits(big.as_mut()));
        drop(rx.recv().await);
        assert!(big.await.is_ok());
        assert_eq!(rx.recv().await.map(|q| q.message.payload.len()), Some(999));
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_count() {
        let (tx, mut rx) = queue(2, 1_000);
        assert!(tx.push(message(1)).await.is_ok());
        assert!(tx.push(message(1)).await.is_ok());
        let third = tx.push(message(1));
        tokio::pin!(third);
        assert!(waits(third.as_mut()));
        drop(rx.recv().await);
        assert!(third.await.is_ok());
        // Once the consumer is gone, pushing fails instead of waiting.
        drop(rx);
        assert!(tx.push(message(1)).await.is_err());
    }

    #[test]
    fn client_ids_name_the_command() {
        let id = default_client_id("collect");
        assert!(id.starts_with("pv3-collect-") && id.len() == "pv3-collect-".len() + 8);
        assert_ne!(id, default_client_id("collect"));
    }
}
