//! Does what the output publishes arrive? A broker can take pv3's messages
//! and deliver none: the P3's own broker is read-only for local clients,
//! and a Mosquitto ACL that forbids a user to publish drops its messages
//! without a word (MQTT 3.1.1 has no way to say no but to disconnect). So
//! after each connection is subscribed, the output publishes a probe on a
//! topic of its own and waits for it to come back; silence for
//! [`PROBE_WAIT`] is one clear warning naming the likely cause and the fix,
//! and the output is marked not delivering in `status.json`, check-api and
//! `/metrics`. The probe goes again every [`PROBE_AGAIN`], so a fixed ACL is
//! noticed without a restart.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tokio::time::Instant;
use tracing::{info, warn};

use super::OutputStats;

/// How long the probe may take to come back.
pub(super) const PROBE_WAIT: Duration = Duration::from_secs(5);

/// How often the probe goes again while connected.
const PROBE_AGAIN: Duration = Duration::from_secs(60);

/// The probe of one output connection; see the module docs.
pub(super) struct Probe {
    topic: String,
    /// The probe waiting to come back: its payload and when it went.
    outstanding: Option<(String, Instant)>,
    /// When the next probe goes (while subscribed).
    next_at: Option<Instant>,
    sent: u64,
    /// What the log last said: delivering or not.
    said: Option<bool>,
    endpoint: String,
    stats: Arc<OutputStats>,
}

impl Probe {
    /// A probe on `<prefix>/_probe/<nonce>` (a topic of this run's own).
    pub(super) fn new(prefix: &str, endpoint: String, stats: Arc<OutputStats>) -> Probe {
        let nonce: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(8)
            .collect();
        Probe {
            topic: format!("{prefix}/_probe/{}", nonce.to_lowercase()),
            outstanding: None,
            next_at: None,
            sent: 0,
            said: None,
            endpoint,
            stats,
        }
    }

    /// The topic the connection subscribes to, to hear the probe.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// The subscription is granted: the first probe goes now.
    pub(super) fn subscribed(&mut self, client: &AsyncClient) {
        self.send(client, Instant::now());
    }

    /// The connection is gone: what it knew no longer holds.
    pub(super) fn lost(&mut self) {
        self.outstanding = None;
        self.next_at = None;
        self.stats.set_delivering(None);
    }

    /// A message on the connection; `true` when it was the probe.
    pub(super) fn heard(&mut self, topic: &str, payload: &[u8]) -> bool {
        if topic != self.topic {
            return false;
        }
        let ours = self
            .outstanding
            .as_ref()
            .is_some_and(|(p, _)| p.as_bytes() == payload);
        if ours {
            self.outstanding = None;
            self.verdict(true);
        }
        true
    }

    /// The clock: a probe unanswered for [`PROBE_WAIT`] is a verdict; the
    /// next one goes when due.
    pub(super) fn tick(&mut self, client: &AsyncClient, now: Instant) {
        if let Some((_, at)) = &self.outstanding
            && now.saturating_duration_since(*at) >= PROBE_WAIT
        {
            self.outstanding = None;
            self.verdict(false);
        }
        if self.outstanding.is_none() && self.next_at.is_some_and(|t| now >= t) {
            self.send(client, now);
        }
    }

    fn send(&mut self, client: &AsyncClient, now: Instant) {
        self.sent += 1;
        let payload = format!("pv3 probe {}", self.sent);
        // Not retained: nobody else needs it, and nothing is left behind.
        if client
            .try_publish(self.topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .is_ok()
        {
            self.outstanding = Some((payload, now));
        }
        self.next_at = Some(now + PROBE_AGAIN);
    }

    fn verdict(&mut self, arrived: bool) {
        self.stats.set_delivering(Some(arrived));
        if self.said == Some(arrived) {
            return;
        }
        match (arrived, self.said) {
            (false, _) => warn!(
                "output broker {}: what pv3 publishes does not arrive (its probe on {} did not come back within {} s): \
                 the broker takes pv3's messages but delivers none. The P3's own broker is read-only for local \
                 clients, and an ACL can forbid this user to publish: point the outputs at Home Assistant's \
                 broker with --out-mqtt-host (and --out-mqtt-username/--out-mqtt-password)",
                self.endpoint,
                self.topic,
                PROBE_WAIT.as_secs()
            ),
            (true, Some(false)) => info!(
                "output broker {}: what pv3 publishes arrives again",
                self.endpoint
            ),
            (true, _) => {}
        }
        self.said = Some(arrived);
    }
}
