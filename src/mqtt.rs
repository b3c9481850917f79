//! The MQTT side: connection options, the event loop, backoff and
//! resubscription.
//!
//! rumqttc reconnects when its event loop is polled again after an error;
//! this module adds what a service needs around that: a jittered,
//! exponential delay between attempts (never a hot loop while the broker is
//! down), a fresh SUBSCRIBE after every CONNACK (a clean session forgets
//! them), clear log lines, and a channel of received messages stamped with
//! their receive time. The poll task never awaits a client call (rumqttc's
//! request channel is drained by that same task: awaiting it there can
//! deadlock); it only uses `try_*` calls.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::reading::Timestamp;
use crate::secret::Secret;

/// Largest packet accepted from the broker. rumqttc's default (10 KiB)
/// drops the connection on a larger payload; P3 payloads are small, but a
/// broker shared with other devices may carry big ones.
pub const MAX_PACKET_SIZE: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_id: String,
    pub keep_alive: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Connected but no message for this long: drop the link and reconnect
    /// (a broker that accepts connections but has stopped forwarding).
    pub stale_after: Option<Duration>,
}

impl MqttSettings {
    /// `host:port` for messages.
    pub fn endpoint(&self) -> String {
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

/// The filter that covers one device (`+` for every device).
pub fn device_filter(device: &str) -> String {
    format!("pv/PV3/{device}/#")
}

/// One received PUBLISH.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub received: Timestamp,
}

/// A live subscription: messages arrive on [`Subscription::recv`] across
/// reconnects until [`Subscription::close`].
pub struct Subscription {
    rx: mpsc::Receiver<Message>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    connected: Arc<AtomicBool>,
    subscribed: watch::Receiver<bool>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Are more messages already waiting?
    pub fn has_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Becomes `true` at the first SUBACK (systemd's READY=1).
    pub fn subscribed(&self) -> watch::Receiver<bool> {
        self.subscribed.clone()
    }

    /// A flag that is `true` while the broker link is up, for status
    /// reporting.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Disconnects politely (bounded wait) and stops the event loop.
    pub async fn close(mut self) {
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
pub fn client_options(settings: &MqttSettings) -> Result<MqttOptions> {
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
    let (tx, rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let (subscribed_tx, subscribed) = watch::channel(false);
    let connected = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(poll_loop(
        options,
        filters,
        settings.endpoint(),
        Backoff::new(settings.reconnect_initial, settings.reconnect_max),
        settings.stale_after,
        tx,
        stop_rx,
        connected.clone(),
        subscribed_tx,
    ));
    Ok(Subscription {
        rx,
        stop,
        task,
        connected,
        subscribed,
    })
}

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    options: MqttOptions,
    filters: Vec<String>,
    endpoint: String,
    mut backoff: Backoff,
    stale_after: Option<Duration>,
    tx: mpsc::Sender<Message>,
    mut stop: watch::Receiver<bool>,
    connected: Arc<AtomicBool>,
    subscribed: watch::Sender<bool>,
) {
    // Errors since the link was last up: the first is a warning, the rest
    // are debug lines, so an absent broker does not flood the journal.
    let mut failures: u32 = 0;
    // Each pass is one client; the stale-link watchdog starts a new one.
    loop {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), 64);
        let mut last_heard = tokio::time::Instant::now();
        let far = Duration::from_secs(u64::from(u32::MAX));
        loop {
            let stale_at = last_heard + stale_after.unwrap_or(far);
            let is_up = connected.load(Ordering::Relaxed);
            let event = tokio::select! {
                event = eventloop.poll() => event,
                _ = tokio::time::sleep_until(stale_at), if is_up && stale_after.is_some() => {
                    warn!(
                        "MQTT broker {endpoint}: connected but no message for {:.0} s: reconnecting",
                        stale_after.unwrap_or(far).as_secs_f64()
                    );
                    connected.store(false, Ordering::Relaxed);
                    let _ = client.try_disconnect();
                    break;
                }
                _ = stop.changed() => {
                    let _ = client.try_disconnect();
                    // Let the event loop send the DISCONNECT, briefly.
                    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                    connected.store(false, Ordering::Relaxed);
                    return;
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected.store(true, Ordering::Relaxed);
                    last_heard = tokio::time::Instant::now();
                    if failures > 0 {
                        info!(
                            "connected to MQTT broker {endpoint} after {failures} failed attempts"
                        );
                    } else {
                        info!("connected to MQTT broker {endpoint}");
                    }
                    failures = 0;
                    backoff.reset();
                    let subs = filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(subs) {
                        warn!("cannot queue SUBSCRIBE: {e}");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused: Vec<&str> = ack
                        .return_codes
                        .iter()
                        .zip(&filters)
                        .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, f)| f.as_str())
                        .collect();
                    if refused.is_empty() {
                        info!("subscribed to {}", filters.join(", "));
                        subscribed.send_replace(true);
                    } else {
                        warn!(
                            "broker {endpoint} refused the subscription to {} (check its ACL for this user)",
                            refused.join(", ")
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    last_heard = tokio::time::Instant::now();
                    let msg = Message {
                        received: Timestamp::now(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        topic: p.topic,
                        payload: p.payload,
                    };
                    if tx.send(msg).await.is_err() {
                        return; // nobody is listening any more
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    connected.store(false, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    let what = describe(&e);
                    if failures == 0 {
                        warn!(
                            "MQTT broker {endpoint}: {what}; reconnecting in {:.1} s (and on, with backoff)",
                            delay.as_secs_f64()
                        );
                    } else {
                        debug!(
                            "MQTT broker {endpoint}: {what}; retry in {:.1} s",
                            delay.as_secs_f64()
                        );
                    }
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
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

/// Does `topic` match the MQTT filter `filter`? `+` matches one level, `#`
/// the rest (including the parent level), and wildcards at the start do not
/// match `$`-topics, as brokers do.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does every topic that `inner` matches also match `outer`?
fn filter_covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The filters without duplicates and without those another one covers:
/// some brokers deliver a message once per matching subscription.
pub fn minimal_filters(filters: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for (n, f) in filters.iter().enumerate() {
        // Dropped when another covers it strictly, or an earlier one is
        // equivalent.
        let covered = filters.iter().enumerate().any(|(m, other)| {
            m != n && filter_covers(other, f) && (m < n || !filter_covers(f, other))
        });
        if !covered && !kept.contains(f) {
            kept.push(f.clone());
        }
    }
    kept
}

/// Checks an MQTT subscription filter: `#` only last and alone in its
/// level, `+` alone in its level, not empty.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "'{filter}': '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("'{filter}': '+' must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_broker() {
        let cases = [
            ("pv/PV3/#", "pv/PV3/X/bms/soc", true),
            ("pv/PV3/#", "pv/PV3", true),
            ("pv/PV3/+/bms/soc", "pv/PV3/X/bms/soc", true),
            ("pv/PV3/+/bms/soc", "pv/PV3/X/bms/soc/extra", false),
            ("pv/PV3/+/#", "pv/PV3/X/inverter/alarms", true),
            ("pv/PV3/+", "pv/PV3/X/bms", false),
            ("pv/PV3/X/bms/soc", "pv/PV3/X/bms/soc", true),
            ("pv/PV3/X/bms/soc", "pv/PV3/Y/bms/soc", false),
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("+/+", "a/", true),
            ("a/+", "a", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(topic_matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn overlapping_filters_are_reduced() {
        let f = |v: &[&str]| minimal_filters(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(f(&["pv/PV3/+/#", "pv/PV3/X/bms/soc"]), ["pv/PV3/+/#"]);
        assert_eq!(f(&["a/b", "a/b"]), ["a/b"]);
        assert_eq!(f(&["a/+", "a/#"]), ["a/#"]);
        assert_eq!(f(&["a/+", "b/+"]), ["a/+", "b/+"]);
        assert_eq!(f(&["#", "$SYS/#"]), ["#", "$SYS/#"]);
        assert_eq!(f(&["a/#", "a"]), ["a/#"]);
        assert_eq!(f(&["a/+/c", "a/b/+"]), ["a/+/c", "a/b/+"]);
    }

    #[test]
    fn filters_are_validated() {
        assert!(validate_filter("pv/PV3/+/#").is_ok());
        assert!(validate_filter("#").is_ok());
        assert!(validate_filter("").is_err());
        assert!(validate_filter("pv/#/soc").is_err());
        assert!(validate_filter("pv/P#").is_err());
        assert!(validate_filter("pv/a+/x").is_err());
    }

    #[test]
    fn client_ids_name_the_command() {
        let id = default_client_id("collect");
        assert!(id.starts_with("pv3-collect-") && id.len() == "pv3-collect-".len() + 8);
        assert_ne!(id, default_client_id("collect"));
    }
}
