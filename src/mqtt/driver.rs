//! The one MQTT connection driver: every command and output that talks to
//! a broker (collect's subscription, the publish output, `--ha-remove`,
//! `devices`, `watch`, `sniff`, `replay --to-mqtt`) opens a [`Connection`],
//! and only this module polls rumqttc's event loop.
//!
//! The driver owns the event loop on a task of its own and never cancels a
//! poll for anything but a stop or a stale link (a connect cut short starts
//! from scratch, and a broker that accepts TCP but never answers would
//! never be named). Around rumqttc it adds what a service needs:
//!
//! - **Reconnects with backoff**: a jittered, exponential delay between
//!   attempts; it starts again from its first step only after a connection
//!   has stayed up [`HEALTHY_AFTER`], so a broker that drops pv3 right after
//!   each connect gets ever longer waits, not a reconnect loop. While the
//!   broker cannot be reached, its port is probed every [`PROBE_EVERY`], so
//!   a broker back from an outage is used within about a second.
//! - **One warning** for the first failure, naming the broker and the fix
//!   (credentials, TLS, a handshake that never came); the rest are debug
//!   lines, so an absent broker does not flood the journal.
//! - **Subscriptions again after every CONNACK** (a clean session forgets
//!   them), and a SUBACK that refuses one is named.
//! - **A stale link is rebuilt**: connected but silent for `stale_after`.
//! - **A clean end**: DISCONNECT after what was queued, briefly awaited.
//!
//! Received messages go to a byte-bounded queue ([`super::queue`]; a full
//! one holds the socket, so TCP pushes back on the broker) or, for the
//! connections that act on them, to the [`Event`] stream with the rest of
//! what happens (connected, packets written and acknowledged, lost).
//! Nothing here awaits a client call: rumqttc's request channel is drained
//! by this same task.

use super::*;

/// A link must stay up this long before reconnect backoff starts again
/// from its first step.
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// While waiting to reconnect after the broker could not be reached, see
/// this often whether it accepts TCP connections again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long the TCP connect, TLS and MQTT handshake may take together.
const HANDSHAKE_SECS: u64 = 5;

/// Which broker a connection talks to, for the log and the hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The P3's broker, read with the `--mqtt-*` options.
    Source,
    /// The broker the outputs publish to (`--out-mqtt-*`).
    Output,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Source => "MQTT broker",
            Role::Output => "output broker",
        }
    }

    fn flag(self, option: &str) -> String {
        match self {
            Role::Source => format!("--mqtt-{option}"),
            Role::Output => format!("--out-mqtt-{option}"),
        }
    }

    fn connected(self, endpoint: &str, failures: u32) {
        let after = match failures {
            0 => String::new(),
            n => format!(" after {n} failed attempts"),
        };
        match self {
            Role::Source => info!("connected to MQTT broker {endpoint}{after}"),
            Role::Output => info!("output broker {endpoint}: connected{after}"),
        }
    }
}

/// What a connection is for.
pub(crate) struct Plan {
    /// Which broker, for the log.
    role: Role,
    /// Subscribed to again after every CONNACK, at QoS 1.
    filters: Vec<String>,
    /// The connection's last will.
    will: Option<LastWill>,
    /// Connected but no message for this long: a new connection.
    stale_after: Option<Duration>,
    /// Received messages go here (awaited), instead of the event stream.
    sink: Option<QueueTx>,
    /// Whether the owner reads [`Connection::next`]: without it, events
    /// are not kept (they would pile up unread).
    events: bool,
    /// rumqttc's request queue: how many requests may wait.
    requests: usize,
}

impl Plan {
    /// A connection that publishes, and watches what happens to what it
    /// publishes on [`Connection::next`].
    pub(crate) fn publisher(role: Role) -> Plan {
        Plan {
            role,
            filters: Vec::new(),
            will: None,
            stale_after: None,
            sink: None,
            events: true,
            requests: 4096,
        }
    }

    /// A subscription whose messages go to `sink`, rebuilt when silent for
    /// `stale_after`; no events.
    pub(super) fn subscriber(
        filters: Vec<String>,
        sink: QueueTx,
        stale_after: Option<Duration>,
    ) -> Plan {
        Plan {
            role: Role::Source,
            filters,
            will: None,
            stale_after,
            sink: Some(sink),
            events: false,
            requests: 64,
        }
    }

    /// Also subscribes to `filters` after every CONNACK; what arrives on
    /// them comes as [`Event::Message`].
    pub(crate) fn subscribing(mut self, filters: Vec<String>) -> Plan {
        self.filters = filters;
        self
    }

    /// With this last will.
    pub(crate) fn will(mut self, will: LastWill) -> Plan {
        self.will = Some(will);
        self
    }

    /// With room for this many requests in rumqttc's queue.
    pub(crate) fn requests(mut self, requests: usize) -> Plan {
        self.requests = requests;
        self
    }
}

/// What happened on a connection.
#[derive(Debug)]
pub(crate) enum Event {
    /// CONNACK: a new session (it remembers nothing of the last one).
    Connected,
    /// Every filter of the plan granted.
    Subscribed,
    /// A PUBLISH from the broker (when the plan has no sink).
    Message(rumqttc::Publish),
    /// One of ours written to the socket, with its packet id (0: QoS 0).
    Sent(u16),
    /// The broker's PUBACK for a packet id.
    Acked(u16),
    /// The connection failed or was lost; `young`: it had been up less
    /// than [`HEALTHY_AFTER`]. Whatever was queued or unacknowledged is
    /// gone with it (clean session).
    Lost {
        /// Up, but not for long.
        young: bool,
        /// What went wrong, in one line.
        why: String,
    },
}

/// An open connection: the client for requests, the events, and the task
/// that drives it. See the module docs.
pub(crate) struct Connection {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Event>,
    connected: Arc<AtomicBool>,
    subscribed: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Connection {
    /// Starts connecting in the background, retrying for ever. Fails only
    /// on settings that can never work (a CA file that cannot be used).
    pub(crate) fn open(settings: &MqttSettings, plan: Plan) -> Result<Connection> {
        let mut options = client_options(settings)?;
        if let Some(will) = plan.will.clone() {
            options.set_last_will(will);
        }
        let (client, mut eventloop) = AsyncClient::new(options, plan.requests);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(HANDSHAKE_SECS);
        eventloop.set_network_options(network);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let connected = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            role: plan.role,
            endpoint: settings.endpoint(),
            address: (settings.host.clone(), settings.port),
            filters: plan.filters,
            stale_after: plan.stale_after,
            sink: plan.sink,
            events: plan.events.then_some(events_tx),
            client: client.clone(),
            backoff: Backoff::new(settings.reconnect_initial, settings.reconnect_max),
            failures: 0,
            up_since: None,
            told_too_large: false,
            connected: connected.clone(),
            subscribed: subscribed_tx,
        };
        let task = tokio::spawn(driver.run(eventloop, stop_rx));
        Ok(Connection {
            client,
            events,
            connected,
            subscribed,
            stop,
            task,
        })
    }

    /// The client, for requests (`try_*` calls; see the module docs).
    pub(crate) fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// The next event; `None` once the driver has stopped (or when the
    /// plan asked for none).
    pub(crate) async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// `true` while connected, for status reports.
    pub(crate) fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Becomes `true` at the first SUBACK that grants every filter.
    pub(crate) fn subscribed(&self) -> watch::Receiver<bool> {
        self.subscribed.clone()
    }

    /// A clean end: DISCONNECT after every request queued so far (so the
    /// broker does not send the will), awaited up to `within`.
    pub(crate) async fn close(mut self, within: Duration) {
        if self.connected.load(Ordering::Relaxed) {
            let _ = self.client.try_disconnect();
        }
        let _ = self.stop.send(true);
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            self.task.abort();
        }
        self.connected.store(false, Ordering::Relaxed);
    }
}

/// The task's state across reconnects.
struct Driver {
    role: Role,
    endpoint: String,
    address: (String, u16),
    filters: Vec<String>,
    stale_after: Option<Duration>,
    sink: Option<QueueTx>,
    events: Option<mpsc::UnboundedSender<Event>>,
    client: AsyncClient,
    backoff: Backoff,
    /// Errors since the link was last healthy: the first is a warning.
    failures: u32,
    /// When the current connection was acknowledged.
    up_since: Option<tokio::time::Instant>,
    /// "Packet too large" has been explained (once per run is enough).
    told_too_large: bool,
    connected: Arc<AtomicBool>,
    subscribed: watch::Sender<bool>,
}

/// What the loop does after an event.
enum Next {
    Continue,
    Stop,
}

impl Driver {
    async fn run(mut self, mut eventloop: EventLoop, mut stop: watch::Receiver<bool>) {
        let far = Duration::from_secs(u64::from(u32::MAX));
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let is_up = self.connected.load(Ordering::Relaxed);
            let stale_at = last_heard + self.stale_after.unwrap_or(far);
            let event = tokio::select! {
                event = eventloop.poll() => event,
                _ = tokio::time::sleep_until(stale_at), if is_up && self.stale_after.is_some() => {
                    warn!(
                        "{} {}: connected but no message for {:.0} s: reconnecting",
                        self.role.name(),
                        self.endpoint,
                        self.stale_after.unwrap_or(far).as_secs_f64()
                    );
                    self.lost("no message for too long".into());
                    // Drops the socket; the next poll connects afresh.
                    eventloop.clean();
                    forget_stale(&mut eventloop);
                    continue;
                }
                _ = stop.changed() => {
                    self.drain(&mut eventloop).await;
                    return;
                }
            };
            let next = match event {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    last_heard = tokio::time::Instant::now();
                    self.on_connack();
                    Next::Continue
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                    self.on_suback(&ack);
                    Next::Continue
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    last_heard = tokio::time::Instant::now();
                    self.on_message(p, &mut stop).await
                }
                Ok(rumqttc::Event::Incoming(Packet::PubAck(ack))) => {
                    self.emit(Event::Acked(ack.pkid));
                    Next::Continue
                }
                Ok(rumqttc::Event::Outgoing(Outgoing::Publish(pkid))) => {
                    self.emit(Event::Sent(pkid));
                    Next::Continue
                }
                Ok(_) => Next::Continue,
                Err(e) => {
                    forget_stale(&mut eventloop);
                    self.on_error(&e, &mut stop).await
                }
            };
            if let Next::Stop = next {
                return;
            }
        }
    }

    fn emit(&self, event: super::driver::Event) {
        if let Some(events) = &self.events {
            // The owner may be gone at a stop: nothing to tell then.
            let _ = events.send(event);
        }
    }

    fn on_connack(&mut self) {
        self.connected.store(true, Ordering::Relaxed);
        self.up_since = Some(tokio::time::Instant::now());
        self.role.connected(&self.endpoint, self.failures);
        if !self.filters.is_empty() {
            let subs = self
                .filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
            if let Err(e) = self.client.try_subscribe_many(subs) {
                warn!("cannot queue SUBSCRIBE: {e}");
            }
        }
        self.emit(Event::Connected);
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
            if self.role == Role::Source {
                info!("subscribed to {}", self.filters.join(", "));
            }
            self.subscribed.send_replace(true);
            self.emit(Event::Subscribed);
        } else {
            warn!(
                "{} {} refused the subscription to {} (check its ACL for this user)",
                self.role.name(),
                self.endpoint,
                refused.join(", ")
            );
        }
    }

    /// A received PUBLISH: into the sink (waiting while it is full, but
    /// never past a stop), or onto the event stream.
    async fn on_message(&mut self, p: rumqttc::Publish, stop: &mut watch::Receiver<bool>) -> Next {
        let Some(sink) = &self.sink else {
            self.emit(Event::Message(p));
            return Next::Continue;
        };
        let message = Message {
            received: Timestamp::now(),
            qos: p.qos as u8,
            retain: p.retain,
            topic: p.topic,
            payload: p.payload,
        };
        tokio::select! {
            pushed = sink.push(message) => match pushed {
                Ok(()) => Next::Continue,
                Err(_) => Next::Stop, // nobody is listening any more
            },
            _ = stop.changed() => Next::Stop,
        }
    }

    /// The link is down: flags and the event.
    fn lost(&mut self, why: String) {
        let young = self.up_since.is_some_and(|t| t.elapsed() < HEALTHY_AFTER);
        self.connected.store(false, Ordering::Relaxed);
        self.emit(Event::Lost { young, why });
    }

    /// A failed or lost link: say so (loudly the first time), then wait
    /// before the event loop tries again. `Next::Stop` if stopped meanwhile.
    async fn on_error(&mut self, e: &ConnectionError, stop: &mut watch::Receiver<bool>) -> Next {
        let was_up = self.up_since.is_some();
        if self.up_since.is_some_and(|t| t.elapsed() >= HEALTHY_AFTER) {
            self.backoff.reset();
            self.failures = 0;
        }
        let what = describe(e, self.role, was_up);
        self.lost(what.clone());
        self.up_since = None;
        let delay = self.backoff.next_delay();
        let name = self.role.name();
        if let Some(size) = too_large(e) {
            if !self.told_too_large {
                self.told_too_large = true;
                warn!(
                    "{}",
                    too_large_hint(name, &self.endpoint, size, &self.filters)
                );
            }
        } else if self.failures == 0 {
            warn!(
                "{name} {}: {what}; reconnecting in {:.1} s (and on, with backoff)",
                self.endpoint,
                delay.as_secs_f64()
            );
        }
        debug!(
            "{name} {}: {what}; retry in {:.1} s",
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

    /// At a stop: lets what is queued (a DISCONNECT last) go out, briefly.
    async fn drain(&mut self, eventloop: &mut EventLoop) {
        if self.connected.load(Ordering::Relaxed) {
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                let polled = tokio::time::timeout_at(until, eventloop.poll()).await;
                match polled {
                    Ok(Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) | Err(_)) | Err(_) => {
                        break;
                    }
                    Ok(Ok(_)) => {}
                }
            }
        }
        self.connected.store(false, Ordering::Relaxed);
    }
}

/// Drops what rumqttc read or wrote on a connection now lost and has not
/// handed out yet, but the messages it received: rumqttc would hand those
/// acknowledgements and packet ids out after the next CONNACK, where they
/// would be taken for the new session's (a clean session starts its packet
/// ids again, so an old PUBACK could confirm a new message).
fn forget_stale(eventloop: &mut EventLoop) {
    eventloop
        .state
        .events
        .retain(|e| matches!(e, rumqttc::Event::Incoming(Packet::Publish(_))));
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

/// One line for a connection error, with the hint an owner needs.
fn describe(e: &ConnectionError, role: Role, was_up: bool) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "connection refused by the broker ({code:?}): check {}/{}",
            role.flag("username"),
            role.flag("password")
        ),
        ConnectionError::NetworkTimeout if !was_up => format!(
            "no CONNACK within {HANDSHAKE_SECS} s: it did not answer the MQTT handshake \
             (is this an MQTT port? TLS needs {})",
            role.flag("tls")
        ),
        ConnectionError::Io(io) => format!("{io}"),
        other => {
            let text = other.to_string();
            if text.contains("NotValidForName") {
                format!(
                    "{text}: the certificate is not for this host name; use the name it was issued for in {}",
                    role.flag("host")
                )
            } else if text.contains("certificate") {
                format!(
                    "{text}: pass the CA that signed the broker's certificate with {} FILE",
                    role.flag("ca")
                )
            } else {
                text
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
fn too_large_hint(name: &str, endpoint: &str, size: usize, filters: &[String]) -> String {
    format!(
        "{name} {endpoint} sent a message of {:.1} MiB, larger than the {} MiB packet limit, and the link was dropped. \
         If it is a retained message it comes back at every connect: find it with \
         `mosquitto_sub -h HOST -v -t '{}' --retained-only -W 5 | cut -c1-200` and clear it with \
         `mosquitto_pub -h HOST -r -n -t TOPIC`; reconnects back off meanwhile",
        size as f64 / 1048576.0,
        MAX_PACKET_SIZE >> 20,
        filters.first().map_or("pv/PV3/+/#", String::as_str)
    )
}
