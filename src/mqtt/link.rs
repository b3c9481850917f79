//! The poll loop: one connection's life, from connect to loss, and the
//! wait before the next.

use super::*;

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
pub(super) struct Link {
    pub(super) endpoint: String,
    pub(super) address: (String, u16),
    pub(super) filters: Vec<String>,
    pub(super) backoff: Backoff,
    /// Errors since the link was last healthy: the first is a warning, the
    /// rest are debug lines, so an absent broker does not flood the journal.
    pub(super) failures: u32,
    /// When the current connection was acknowledged.
    pub(super) up_since: Option<tokio::time::Instant>,
    /// "Packet too large" has been explained (once per run is enough).
    pub(super) told_too_large: bool,
    pub(super) connected: Arc<AtomicBool>,
    pub(super) subscribed: watch::Sender<bool>,
}

/// What the poll loop does after an event.
enum Next {
    Continue,
    /// Stop for good.
    Stop,
}

pub(super) async fn poll_loop(
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
