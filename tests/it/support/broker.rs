//! MQTT brokers for tests: a minimal in-process MQTT 3.1.1 broker built on
//! rumqttc's codec, a wrapper around a real `mosquitto`, and rumqttc-based
//! [`Publisher`] / [`Subscriber`] helpers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, Event, MqttOptions, Outgoing, PubAck, PubComp, PubRec,
    Publish, QoS, SubAck, SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{TaskSet, bind_reuse, lock};

/// Largest MQTT packet accepted / sent by the harness (16 MiB).
pub const MAX_PACKET: usize = 16 * 1024 * 1024;
/// The largest packet the broker sends (Mosquitto's default is 256 MiB).
pub const MAX_WRITE: usize = 64 * 1024 * 1024;

/// Default bound for harness-internal waits (connect, ack).
const HARNESS_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Topic matching
// ---------------------------------------------------------------------------

/// MQTT topic-filter matching: `+` matches exactly one level, `#` matches any
/// number of levels including the parent (`a/#` matches `a`), and topics
/// starting with `$` are not matched by filters starting with a wildcard.
/// Publishes `{"power": n}` on the test device's `inverter/charge` for each
/// `n` in `range` (one battery_power reading each, a sequence number).
pub async fn publish_charges(port: u16, range: std::ops::Range<i64>) {
    let publisher = Publisher::connect(port).await;
    let topic = format!("pv/PV3/{}/inverter/charge", super::fixtures::DEVICE);
    for power in range {
        publisher
            .publish(
                &topic,
                format!("{{\"power\":{power}}}"),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
}

pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) => {
                if f != t {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Validates a (non-shared) topic filter per MQTT 3.1.1 §4.7.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| {
        if level.contains('#') {
            *level == "#" && i == last
        } else if level.contains('+') {
            *level == "+"
        } else {
            true
        }
    })
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`.
fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, inner) = rest.split_once('/')?;
    Some((group, inner))
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    fn rank(q: QoS) -> u8 {
        match q {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }
    }
    if rank(a) <= rank(b) { a } else { b }
}

// ---------------------------------------------------------------------------
// In-process broker
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Sub {
    /// Filter exactly as subscribed (e.g. `$share/g/a/+`).
    raw: String,
    /// Shared-subscription group, if any.
    group: Option<String>,
    /// Filter used for matching (without the `$share/<group>/` prefix).
    filter: String,
    qos: QoS,
}

struct ClientEntry {
    tx: mpsc::UnboundedSender<Packet>,
    client_id: Option<String>,
    clean_session: bool,
    subs: Vec<Sub>,
    next_pkid: u16,
}

impl ClientEntry {
    fn pkid(&mut self) -> u16 {
        self.next_pkid = if self.next_pkid == u16::MAX {
            1
        } else {
            self.next_pkid + 1
        };
        self.next_pkid
    }
}

/// A PUBLISH received by the in-process broker from a client.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub payload: Bytes,
}

#[derive(Default)]
struct BrokerState {
    clients: BTreeMap<u64, ClientEntry>,
    retained: BTreeMap<String, Publish>,
    /// Persistent sessions (clean_session = false) of disconnected clients.
    sessions: HashMap<String, Vec<Sub>>,
    /// Round-robin counters of shared subscriptions, by (group, filter).
    round_robin: HashMap<(String, String), usize>,
    messages: Vec<ReceivedMessage>,
    /// Publishes from clients whose id starts with this are acknowledged
    /// and dropped, as an ACL that forbids them to publish does.
    drop_from: Option<String>,
}

struct BrokerShared {
    state: Mutex<BrokerState>,
    received: AtomicUsize,
    connects: AtomicUsize,
    /// The user name and password every CONNECT must carry (`None`: anyone).
    login: Option<(String, String)>,
    /// What each CONNECT carried, in order.
    logins: Mutex<Vec<Option<(String, String)>>>,
    next_conn: AtomicU64,
    /// Bumped on every subscription change and every received PUBLISH.
    changes: watch::Sender<u64>,
    conns: Arc<TaskSet>,
}

impl BrokerShared {
    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Minimal MQTT 3.1.1 broker running on the current tokio runtime.
///
/// Supports CONNECT, SUBSCRIBE (granted QoS = min(requested, 1)), UNSUBSCRIBE,
/// PUBLISH QoS 0/1 (QoS 2 is acknowledged with PUBREC/PUBCOMP and routed at
/// QoS ≤ 1), wildcards, `$share/<group>/<filter>` round-robin shared
/// subscriptions, retained messages, last wills, PINGREQ, DISCONNECT, session takeover
/// by client id and (non-queuing) persistent sessions for
/// `clean_session = false`. Packets up to 16 MiB.
pub struct InProcessBroker {
    port: u16,
    shared: Arc<BrokerShared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl InProcessBroker {
    /// Starts on 127.0.0.1 with an OS-assigned port.
    pub async fn start() -> InProcessBroker {
        Self::try_start_on(0)
            .await
            .expect("in-process broker: bind 127.0.0.1:0")
    }

    /// Starts on 127.0.0.1:`port` (SO_REUSEADDR). Panics if the port is taken.
    pub async fn start_on(port: u16) -> InProcessBroker {
        match Self::try_start_on(port).await {
            Ok(b) => b,
            Err(e) => panic!("in-process broker: bind 127.0.0.1:{port}: {e}"),
        }
    }

    /// Like [`Self::start`], but refusing (CONNACK "bad user name or
    /// password", then closing) every CONNECT without this login.
    pub async fn start_with_login(username: &str, password: &str) -> InProcessBroker {
        Self::try_start_with(0, Some((username.to_owned(), password.to_owned())))
            .await
            .expect("in-process broker: bind 127.0.0.1:0")
    }

    /// Like [`Self::start_on`] but returns the bind error.
    pub async fn try_start_on(port: u16) -> std::io::Result<InProcessBroker> {
        Self::try_start_with(port, None).await
    }

    async fn try_start_with(
        port: u16,
        login: Option<(String, String)>,
    ) -> std::io::Result<InProcessBroker> {
        let listener = bind_reuse(port)?;
        let port = listener.local_addr()?.port();
        let (changes, _) = watch::channel(0u64);
        let shared = Arc::new(BrokerShared {
            state: Mutex::new(BrokerState::default()),
            received: AtomicUsize::new(0),
            connects: AtomicUsize::new(0),
            login,
            logins: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            changes,
            conns: TaskSet::new(),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn_shared = Arc::clone(&accept_shared);
                accept_shared
                    .conns
                    .spawn(async move { serve_client(stream, conn_shared).await });
            }
        });
        Ok(InProcessBroker {
            port,
            shared,
            accept: Mutex::new(Some(accept)),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name and password of each CONNECT so far, in order.
    pub fn logins(&self) -> Vec<Option<(String, String)>> {
        lock(&self.shared.logins).clone()
    }

    /// Current filters of all connected clients (shared ones as `$share/g/f`).
    pub fn subscriptions(&self) -> Vec<String> {
        let state = lock(&self.shared.state);
        state
            .clients
            .values()
            .flat_map(|c| c.subs.iter().map(|s| s.raw.clone()))
            .collect()
    }

    /// Number of currently connected (CONNECTed) clients.
    pub fn client_count(&self) -> usize {
        lock(&self.shared.state)
            .clients
            .values()
            .filter(|c| c.client_id.is_some())
            .count()
    }

    /// Waits until some client holds a subscription to exactly `filter`.
    pub async fn wait_for_subscription(&self, filter: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.subscriptions().iter().any(|s| s == filter))
            .await
    }

    /// Number of PUBLISH packets received from clients.
    pub fn received(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst)
    }

    /// Number of CONNECT packets accepted so far (counts reconnects).
    pub fn connects(&self) -> usize {
        self.shared.connects.load(Ordering::SeqCst)
    }

    /// Every PUBLISH received from clients, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.state).messages.clone()
    }

    /// Waits until at least `n` PUBLISH packets were received.
    pub async fn wait_for_received(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.received() >= n).await
    }

    /// Stores a retained message directly (of any size: the broker sends up
    /// to [`MAX_WRITE`], past pv3's packet limit, as a real broker may).
    pub fn set_retained(&self, topic: &str, payload: Bytes) {
        let mut p = Publish::new(topic, QoS::AtMostOnce, payload);
        p.retain = true;
        lock(&self.shared.state)
            .retained
            .insert(topic.to_owned(), p);
        self.shared.bump();
    }

    /// Currently retained messages, by topic.
    pub fn retained(&self) -> BTreeMap<String, Bytes> {
        lock(&self.shared.state)
            .retained
            .iter()
            .map(|(t, p)| (t.clone(), p.payload.clone()))
            .collect()
    }

    async fn wait_until(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let mut rx = self.shared.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if cond() {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return cond(),
            }
        }
    }

    /// From now on, publishes from clients whose id starts with `prefix`
    /// are acknowledged and dropped (silently, as an ACL does).
    pub fn drop_publishes_from(&self, prefix: &str) {
        lock(&self.shared.state).drop_from = Some(prefix.to_owned());
    }

    /// Closes every client connection (the listener stays up): simulates a
    /// broken link. Clients may reconnect at once.
    pub fn drop_connections(&self) {
        self.shared.conns.abort_all();
    }

    /// Stops listening and closes all connections; the port is released when
    /// this returns (a later `start_on(port)` works).
    pub async fn stop(&self) {
        let accept = lock(&self.accept).take();
        if let Some(handle) = accept {
            handle.abort();
            let _ = handle.await;
        }
        self.shared.conns.abort_all();
        if !self.shared.conns.wait_empty(HARNESS_TIMEOUT).await {
            panic!("in-process broker: connection tasks did not stop within {HARNESS_TIMEOUT:?}");
        }
    }
}

impl Drop for InProcessBroker {
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.accept).take() {
            handle.abort();
        }
        self.shared.conns.abort_all();
    }
}

/// Removes a connection's entry when its task ends (normally or aborted);
/// keeps the session of a `clean_session = false` client.
struct ClientGuard {
    shared: Arc<BrokerShared>,
    id: u64,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if let Some(entry) = state.clients.remove(&self.id)
            && let (Some(cid), false) = (entry.client_id, entry.clean_session)
        {
            state.sessions.insert(cid, entry.subs);
        }
        drop(state);
        self.shared.bump();
    }
}

/// Handles the packets left in `buf` of a connection that can no longer be
/// written to, up to a DISCONNECT.
fn drain_after_close(
    shared: &Arc<BrokerShared>,
    id: u64,
    buf: &mut BytesMut,
    will: &mut WillGuard,
) {
    while let Ok(packet) = Packet::read(buf, MAX_PACKET) {
        match packet {
            Packet::Disconnect => {
                will.will = None;
                return;
            }
            packet => {
                handle_packet(shared, id, packet);
            }
        }
    }
}

/// Publishes a connection's last will when the connection task ends
/// without a DISCONNECT.
struct WillGuard {
    shared: Arc<BrokerShared>,
    will: Option<rumqttc::LastWill>,
}

impl Drop for WillGuard {
    fn drop(&mut self) {
        if let Some(will) = self.will.take() {
            let mut publish = Publish::new(will.topic, will.qos, will.message);
            publish.retain = will.retain;
            route_publish(&self.shared, publish);
        }
    }
}

async fn write_packets(stream: &mut TcpStream, packets: &[Packet]) -> bool {
    let mut out = BytesMut::new();
    for p in packets {
        if p.write(&mut out, MAX_WRITE).is_err() {
            return false;
        }
    }
    stream.write_all(&out).await.is_ok()
}

async fn serve_client(mut stream: TcpStream, shared: Arc<BrokerShared>) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Packet>();
    lock(&shared.state).clients.insert(
        id,
        ClientEntry {
            tx,
            client_id: None,
            clean_session: true,
            subs: Vec::new(),
            next_pkid: 0,
        },
    );
    let _guard = ClientGuard {
        shared: Arc::clone(&shared),
        id,
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut connected = false;
    // Published when the connection ends without a DISCONNECT (MQTT 3.1.1
    // §3.1.2.5): a killed client, a dropped socket.
    let mut will = WillGuard {
        shared: Arc::clone(&shared),
        will: None,
    };
    loop {
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    let packet = match Packet::read(&mut buf, MAX_PACKET) {
                        Ok(p) => p,
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(_) => return,
                    };
                    let replies = match (connected, packet) {
                        (false, Packet::Connect(connect)) => {
                            let login = connect.login.map(|l| (l.username, l.password));
                            lock(&shared.logins).push(login.clone());
                            if shared.login.is_some() && shared.login != login {
                                let refused = ConnAck::new(ConnectReturnCode::BadUserNamePassword, false);
                                let _ = write_packets(&mut stream, &[Packet::ConnAck(refused)]).await;
                                return;
                            }
                            connected = true;
                            will.will = connect.last_will;
                            vec![handle_connect(&shared, id, connect.client_id, connect.clean_session)]
                        }
                        (false, _) | (true, Packet::Connect(_)) => return,
                        (true, Packet::Disconnect) => {
                            will.will = None;
                            return;
                        }
                        (true, packet) => handle_packet(&shared, id, packet),
                    };
                    if !replies.is_empty() && !write_packets(&mut stream, &replies).await {
                        // The client may have sent DISCONNECT and closed
                        // already: what it sent before still counts (a
                        // real broker routes it too), the replies do not.
                        drain_after_close(&shared, id, &mut buf, &mut will);
                        return;
                    }
                }
            }
            next = rx.recv() => {
                // None: our entry was removed (session takeover): close.
                let Some(first) = next else { return };
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                if !write_packets(&mut stream, &batch).await {
                    return;
                }
            }
        }
    }
}

fn handle_connect(
    shared: &Arc<BrokerShared>,
    id: u64,
    client_id: String,
    clean_session: bool,
) -> Packet {
    let mut state = lock(&shared.state);
    // Session takeover: close older connections with the same client id.
    if !client_id.is_empty() {
        let old: Vec<u64> = state
            .clients
            .iter()
            .filter(|(other, c)| **other != id && c.client_id.as_deref() == Some(&client_id))
            .map(|(other, _)| *other)
            .collect();
        for other in old {
            if let Some(entry) = state.clients.remove(&other) {
                // Dropping its sender makes the old connection task close
                // the socket. Keep its subs for the session.
                if !entry.clean_session {
                    state.sessions.insert(client_id.clone(), entry.subs);
                }
            }
        }
    }
    let mut session_present = false;
    let restored = if clean_session {
        state.sessions.remove(&client_id);
        Vec::new()
    } else if let Some(subs) = state.sessions.remove(&client_id) {
        session_present = true;
        subs
    } else {
        Vec::new()
    };
    if let Some(entry) = state.clients.get_mut(&id) {
        entry.client_id = Some(client_id);
        entry.clean_session = clean_session;
        entry.subs = restored;
    }
    drop(state);
    shared.connects.fetch_add(1, Ordering::SeqCst);
    shared.bump();
    Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present))
}

fn handle_packet(shared: &Arc<BrokerShared>, id: u64, packet: Packet) -> Vec<Packet> {
    match packet {
        Packet::Publish(publish) => {
            let reply = match publish.qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(publish.pkid))),
                QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(publish.pkid))),
            };
            let dropped = {
                let state = lock(&shared.state);
                let sender = state.clients.get(&id).and_then(|c| c.client_id.as_deref());
                matches!((&state.drop_from, sender), (Some(p), Some(c)) if c.starts_with(p.as_str()))
            };
            if !dropped {
                route_publish(shared, publish);
            }
            reply.into_iter().collect()
        }
        Packet::PubRel(rel) => vec![Packet::PubComp(PubComp::new(rel.pkid))],
        Packet::Subscribe(subscribe) => {
            let mut codes = Vec::with_capacity(subscribe.filters.len());
            let mut deliveries = Vec::new();
            let mut state = lock(&shared.state);
            for f in subscribe.filters {
                let (group, filter) = match parse_shared(&f.path) {
                    Some((g, inner)) => (Some(g.to_string()), inner.to_string()),
                    None => (None, f.path.clone()),
                };
                if !valid_filter(&filter) || group.as_deref().is_some_and(str::is_empty) {
                    codes.push(SubscribeReasonCode::Failure);
                    continue;
                }
                let granted = min_qos(f.qos, QoS::AtLeastOnce);
                codes.push(SubscribeReasonCode::Success(granted));
                let sub = Sub {
                    raw: f.path.clone(),
                    group: group.clone(),
                    filter: filter.clone(),
                    qos: granted,
                };
                let retained: Vec<Publish> = if group.is_none() {
                    state
                        .retained
                        .values()
                        .filter(|p| topic_matches(&filter, &p.topic))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                if let Some(entry) = state.clients.get_mut(&id) {
                    entry.subs.retain(|s| s.raw != sub.raw);
                    entry.subs.push(sub);
                    for mut p in retained {
                        p.qos = min_qos(p.qos, granted);
                        p.retain = true;
                        p.dup = false;
                        p.pkid = if p.qos == QoS::AtMostOnce {
                            0
                        } else {
                            entry.pkid()
                        };
                        deliveries.push(Packet::Publish(p));
                    }
                }
            }
            drop(state);
            shared.bump();
            let mut replies = vec![Packet::SubAck(SubAck::new(subscribe.pkid, codes))];
            replies.extend(deliveries);
            replies
        }
        Packet::Unsubscribe(unsubscribe) => {
            let mut state = lock(&shared.state);
            if let Some(entry) = state.clients.get_mut(&id) {
                entry.subs.retain(|s| !unsubscribe.topics.contains(&s.raw));
            }
            drop(state);
            shared.bump();
            vec![Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))]
        }
        Packet::PingReq => vec![Packet::PingResp],
        // PUBACK/PUBREC/PUBCOMP for our deliveries, and anything else: ignored.
        _ => Vec::new(),
    }
}

fn route_publish(shared: &Arc<BrokerShared>, publish: Publish) {
    let mut state = lock(&shared.state);
    let state = &mut *state;
    state.messages.push(ReceivedMessage {
        payload: publish.payload.clone(),
    });
    if publish.retain {
        if publish.payload.is_empty() {
            state.retained.remove(&publish.topic);
        } else {
            state
                .retained
                .insert(publish.topic.clone(), publish.clone());
        }
    }

    // Normal subscriptions: one delivery per client at the highest matching QoS.
    let mut targets: Vec<(u64, QoS)> = Vec::new();
    // Shared subscriptions: members per (group, filter).
    let mut groups: BTreeMap<(String, String), Vec<(u64, QoS)>> = BTreeMap::new();
    for (cid, entry) in &state.clients {
        let mut best: Option<QoS> = None;
        for sub in &entry.subs {
            if !topic_matches(&sub.filter, &publish.topic) {
                continue;
            }
            match &sub.group {
                None => {
                    best = Some(match best {
                        Some(b) if min_qos(b, sub.qos) == sub.qos => b,
                        _ => sub.qos,
                    });
                }
                Some(g) => groups
                    .entry((g.clone(), sub.filter.clone()))
                    .or_default()
                    .push((*cid, sub.qos)),
            }
        }
        if let Some(q) = best {
            targets.push((*cid, q));
        }
    }
    for (key, members) in groups {
        let counter = state.round_robin.entry(key).or_insert(0);
        let chosen = members[*counter % members.len()];
        *counter = counter.wrapping_add(1);
        targets.push(chosen);
    }
    for (cid, granted) in targets {
        if let Some(entry) = state.clients.get_mut(&cid) {
            let qos = min_qos(publish.qos, granted);
            let mut out = Publish::from_bytes(publish.topic.clone(), qos, publish.payload.clone());
            out.retain = false;
            out.pkid = if qos == QoS::AtMostOnce {
                0
            } else {
                entry.pkid()
            };
            let _ = entry.tx.send(Packet::Publish(out));
        }
    }
    shared.received.fetch_add(1, Ordering::SeqCst);
    shared.bump();
}

// ---------------------------------------------------------------------------
// Mosquitto
// ---------------------------------------------------------------------------

/// An executable on PATH, or in the sbin/bin directories a non-root PATH
/// often lacks (Debian installs mosquitto in /usr/sbin).
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in [
        "/usr/sbin",
        "/usr/local/sbin",
        "/usr/bin",
        "/usr/local/bin",
        "/sbin",
    ] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A real `mosquitto` broker listening on 127.0.0.1 only.
pub struct Mosquitto {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// Lines added to the configuration ([`Mosquitto::start_with`]).
    extra: String,
}

impl Mosquitto {
    /// Path of the `mosquitto` executable, if installed.
    pub fn bin_path() -> Option<PathBuf> {
        find_executable("mosquitto")
    }

    /// Path of `mosquitto_sub`, if installed.
    pub fn sub_path() -> Option<PathBuf> {
        find_executable("mosquitto_sub")
    }

    /// Path of `mosquitto_pub`, if installed.
    pub fn pub_path() -> Option<PathBuf> {
        find_executable("mosquitto_pub")
    }

    /// Starts mosquitto on a free loopback port. Returns None (printing
    /// "mosquitto not installed: skipping") when it is not installed, but
    /// panics when `PV3_REQUIRE_MOSQUITTO=1` is set.
    pub async fn start() -> Option<Mosquitto> {
        Self::start_with("").await
    }

    /// [`Mosquitto::start`] with `extra` lines in its configuration
    /// (`max_packet_size 850`), kept across restarts.
    pub async fn start_with(extra: &str) -> Option<Mosquitto> {
        let Some(bin) = Self::bin_path() else {
            if std::env::var("PV3_REQUIRE_MOSQUITTO").as_deref() == Ok("1") {
                panic!("PV3_REQUIRE_MOSQUITTO=1 but mosquitto is not installed");
            }
            eprintln!("mosquitto not installed: skipping");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pv3-mosquitto-")
            .tempdir()
            .expect("create tempdir for mosquitto config");
        let mut m = Mosquitto {
            bin,
            dir,
            port: 0,
            child: None,
            extra: extra.to_owned(),
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            m.port = super::free_port();
            match m.launch().await {
                Ok(()) => return Some(m),
                Err(e) => last_err = e,
            }
        }
        panic!("mosquitto failed to start after 5 attempts: {last_err}");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// Path of mosquitto's log (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Contents of mosquitto's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn launch(&mut self) -> Result<(), String> {
        let conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n{}\n",
            self.port, self.extra
        );
        std::fs::write(self.config_path(), conf).map_err(|e| format!("write config: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open log: {e}"))?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + HARNESS_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "mosquitto exited ({status}) on port {}: {}",
                    self.port,
                    self.log()
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill_child();
                return Err(format!(
                    "mosquitto did not accept connections on port {} within {HARNESS_TIMEOUT:?}: {}",
                    self.port,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills mosquitto (SIGKILL) and reaps it. All connections drop.
    pub async fn stop(&mut self) {
        self.kill_child();
    }

    /// Stops (if running) and starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill_child();
        let mut last_err = String::new();
        for _ in 0..20 {
            match self.launch().await {
                Ok(()) => return,
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto restart on port {} failed: {last_err}", self.port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill_child();
    }
}

// ---------------------------------------------------------------------------
// Common broker handle
// ---------------------------------------------------------------------------

/// Either broker, behind one interface.
pub enum TestBroker {
    InProcess(InProcessBroker),
    Mosquitto(Mosquitto),
}

impl TestBroker {
    pub async fn in_process() -> TestBroker {
        TestBroker::InProcess(InProcessBroker::start().await)
    }

    /// None when mosquitto is not installed (see [`Mosquitto::start`]).
    pub async fn mosquitto() -> Option<TestBroker> {
        Mosquitto::start().await.map(TestBroker::Mosquitto)
    }

    pub fn port(&self) -> u16 {
        match self {
            TestBroker::InProcess(b) => b.port(),
            TestBroker::Mosquitto(m) => m.port(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TestBroker::InProcess(_) => "in-process",
            TestBroker::Mosquitto(_) => "mosquitto",
        }
    }

    /// Stops the broker; its port is released.
    pub async fn stop(&mut self) {
        match self {
            TestBroker::InProcess(b) => b.stop().await,
            TestBroker::Mosquitto(m) => m.stop().await,
        }
    }

    /// Stops and starts again on the same port (fresh state).
    pub async fn restart(&mut self) {
        match self {
            TestBroker::InProcess(b) => {
                let port = b.port();
                b.stop().await;
                *b = InProcessBroker::start_on(port).await;
            }
            TestBroker::Mosquitto(m) => m.restart().await,
        }
    }
}

// ---------------------------------------------------------------------------
// MQTT clients
// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(1);

pub fn client_options(prefix: &str, port: u16) -> MqttOptions {
    let id = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        CLIENT_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts
}

/// Connection state published by the publisher's event-loop task.
#[derive(Clone)]
struct PubConn {
    /// Incremented for every new connection attempt (fresh event loop).
    epoch: u64,
    /// Some while connected (CONNACK received) on `epoch`.
    client: Option<AsyncClient>,
    /// The task has ended (after `disconnect`).
    closed: bool,
}

struct PendingPublish {
    epoch: u64,
    qos: QoS,
    pkid: Option<u16>,
    done: oneshot::Sender<()>,
}

/// MQTT publisher: a rumqttc `AsyncClient` whose event loop is polled in a
/// spawned task.
///
/// Every (re)connection uses a fresh `AsyncClient`/`EventLoop` pair, so no
/// request can be silently dropped by rumqttc's clean-session reconnect
/// logic: a publish whose connection fails before it completed is sent again
/// on the next connection (QoS 1 is at-least-once). Publishes are
/// serialised; QoS 1 returns once its PUBACK arrived, QoS 0 once it was
/// flushed to the socket. Reconnects every 50 ms while the broker is away.
pub struct Publisher {
    conn: watch::Receiver<PubConn>,
    pending: Arc<Mutex<Option<PendingPublish>>>,
    serial: tokio::sync::Mutex<()>,
    task: Option<JoinHandle<()>>,
    port: u16,
}

impl Publisher {
    /// Connects to 127.0.0.1:`port`; panics without a CONNACK within 10 s.
    pub async fn connect(port: u16) -> Publisher {
        let opts = client_options("pv3-test-pub", port);
        let pending = Arc::new(Mutex::new(None));
        let (conn_tx, mut conn) = watch::channel(PubConn {
            epoch: 0,
            client: None,
            closed: false,
        });
        let task = tokio::spawn(publisher_loop(opts, Arc::clone(&pending), conn_tx));
        let ok = tokio::time::timeout(HARNESS_TIMEOUT, conn.wait_for(|c| c.client.is_some()))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if !ok {
            panic!("Publisher: no CONNACK from 127.0.0.1:{port} within {HARNESS_TIMEOUT:?}");
        }
        Publisher {
            conn,
            pending,
            serial: tokio::sync::Mutex::new(()),
            task: Some(task),
            port,
        }
    }

    /// True while connected (CONNACK received, no error since).
    pub fn is_connected(&self) -> bool {
        self.conn.borrow().client.is_some()
    }

    /// Publishes and waits for completion (PUBACK for QoS 1), reconnecting
    /// and resending as needed; panics if not done within 10 s.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, qos: QoS, retain: bool) {
        if let Err(e) = self
            .try_publish(topic, payload, qos, retain, HARNESS_TIMEOUT)
            .await
        {
            panic!("Publisher: publish to {topic:?} on port {}: {e}", self.port);
        }
    }

    /// Like [`Self::publish`] with an explicit timeout; returns an error
    /// instead of panicking.
    pub async fn try_publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let _serial = self.serial.lock().await;
        let payload = Bytes::from(payload.into());
        let deadline = tokio::time::Instant::now() + timeout;
        let mut conn = self.conn.clone();
        loop {
            let (epoch, client) = {
                let waited = tokio::time::timeout_at(
                    deadline,
                    conn.wait_for(|c| c.client.is_some() || c.closed),
                )
                .await;
                match waited {
                    Err(_) => return Err(format!("not connected within {timeout:?}")),
                    Ok(Err(_)) => return Err("publisher task ended".into()),
                    Ok(Ok(c)) => match c.client.clone() {
                        Some(client) => (c.epoch, client),
                        None => return Err("publisher disconnected".into()),
                    },
                }
            };
            let (done_tx, done_rx) = oneshot::channel();
            *lock(&self.pending) = Some(PendingPublish {
                epoch,
                qos,
                pkid: None,
                done: done_tx,
            });
            let sent = client
                .publish_bytes(topic, qos, retain, payload.clone())
                .await
                .is_ok();
            let lost = async {
                let _ = conn
                    .wait_for(|c| c.epoch != epoch || c.client.is_none())
                    .await;
            };
            let outcome = if sent {
                tokio::select! {
                    r = done_rx => r.is_ok(),
                    _ = lost => false,
                    _ = tokio::time::sleep_until(deadline) => {
                        *lock(&self.pending) = None;
                        return Err(format!("not acknowledged within {timeout:?}"));
                    }
                }
            } else {
                // The connection's event loop is gone: wait for the next one.
                tokio::select! {
                    _ = lost => false,
                    _ = tokio::time::sleep_until(deadline) => {
                        *lock(&self.pending) = None;
                        return Err(format!("not sent within {timeout:?}"));
                    }
                }
            };
            *lock(&self.pending) = None;
            if outcome {
                return Ok(());
            }
            // Connection lost before completion: resend on the next one.
        }
    }

    /// Sends DISCONNECT and waits (bounded) for the event loop to finish.
    pub async fn disconnect(mut self) {
        let client = self.conn.borrow().client.clone();
        if let Some(client) = client {
            let _ = client.disconnect().await;
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(HARNESS_TIMEOUT, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn complete_if(pending: &Mutex<Option<PendingPublish>>, cond: impl Fn(&PendingPublish) -> bool) {
    let mut p = lock(pending);
    if p.as_ref().is_some_and(cond)
        && let Some(p) = p.take()
    {
        let _ = p.done.send(());
    }
}

async fn publisher_loop(
    opts: MqttOptions,
    pending: Arc<Mutex<Option<PendingPublish>>>,
    conn: watch::Sender<PubConn>,
) {
    let mut epoch = 0u64;
    loop {
        epoch += 1;
        let (client, mut eventloop) = AsyncClient::new(opts.clone(), 64);
        conn.send_replace(PubConn {
            epoch,
            client: None,
            closed: false,
        });
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        break;
                    }
                    conn.send_replace(PubConn {
                        epoch,
                        client: Some(client.clone()),
                        closed: false,
                    });
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mut p = lock(&pending);
                    let finished = match p.as_mut() {
                        Some(p) if p.epoch == epoch && p.qos == QoS::AtMostOnce => true,
                        Some(p) if p.epoch == epoch && p.pkid.is_none() => {
                            p.pkid = Some(pkid);
                            false
                        }
                        _ => false,
                    };
                    drop(p);
                    if finished {
                        complete_if(&pending, |_| true);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    complete_if(&pending, |p| p.epoch == epoch && p.pkid == Some(ack.pkid));
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    conn.send_replace(PubConn {
                        epoch,
                        client: None,
                        closed: true,
                    });
                    return;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        conn.send_replace(PubConn {
            epoch,
            client: None,
            closed: false,
        });
        // Reconnect back-off.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// rumqttc subscriber collecting every incoming PUBLISH.
///
/// Uses `clean_session = false` and (re)subscribes its filters after every
/// CONNACK without a session, so it keeps receiving across dropped
/// connections and broker restarts (messages published while it is
/// disconnected from the in-process broker are lost).
pub struct Subscriber {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    task: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects and subscribes to `filters` at QoS 1, waiting for the SUBACKs.
    pub async fn connect(port: u16, filters: &[&str]) -> Subscriber {
        Self::connect_qos(port, filters, QoS::AtLeastOnce).await
    }

    pub async fn connect_qos(port: u16, filters: &[&str], qos: QoS) -> Subscriber {
        let mut opts = client_options("pv3-test-sub", port);
        opts.set_clean_session(false);
        let (client, eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subacks_tx, mut subacks) = watch::channel(0usize);
        let filters_owned: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let task_client = client.clone();
        let task = tokio::spawn(async move {
            let mut eventloop = eventloop;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            for f in &filters_owned {
                                let _ = task_client.try_subscribe(f.clone(), qos);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let want = filters.len();
        let ok = tokio::time::timeout(HARNESS_TIMEOUT, subacks.wait_for(|n| *n >= want))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if !ok {
            panic!(
                "Subscriber: no CONNACK/SUBACK for {filters:?} from 127.0.0.1:{port} within {HARNESS_TIMEOUT:?}"
            );
        }
        Subscriber {
            client,
            rx,
            task: Some(task),
        }
    }

    /// Next message, or None after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Publish> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Exactly the next `n` messages; panics (showing what arrived) on timeout.
    pub async fn expect_messages(&mut self, n: usize, timeout: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) => got.push(p),
                _ => {
                    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
                    panic!(
                        "Subscriber: expected {n} messages within {timeout:?}, got {}: {topics:?}",
                        got.len()
                    );
                }
            }
        }
        got
    }

    /// Messages already received, without waiting.
    pub fn drain(&mut self) -> Vec<Publish> {
        let mut out = Vec::new();
        while let Ok(p) = self.rx.try_recv() {
            out.push(p);
        }
        out
    }

    /// Asserts no message arrives within `quiet` (inherently a timed wait).
    pub async fn assert_no_message(&mut self, quiet: Duration) {
        if let Some(p) = self.recv(quiet).await {
            panic!(
                "Subscriber: unexpected message on {:?} ({} bytes)",
                p.topic,
                p.payload.len()
            );
        }
    }

    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(HARNESS_TIMEOUT, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
