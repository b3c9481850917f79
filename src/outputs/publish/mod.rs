//! Flat MQTT state topics and Home Assistant discovery (`collect --publish`,
//! `--ha`): every decoded value as a plain number on
//! `<prefix>/<device>/<metric>`, alarm flags as `ON`/`OFF` on
//! `<prefix>/<device>/alarm/<flag>`, and with `--ha` a retained discovery
//! config for each before its first state. The contract is
//! `shared/spec/home-assistant.md`; the user's view is
//! `docs/home-assistant.md`.
//!
//! Decisions, with the reasons:
//! - **States are retained.** Home Assistant (and evcc, Node-RED) then has
//!   a value the moment it (re)subscribes instead of "unknown" until the
//!   next change; availability says when a retained value is stale.
//! - **Availability** is `<prefix>/<device>/status`: `online` while the
//!   device's data flows, `offline` after `--stale-after` without a reading
//!   and on a clean stop. It is also the connection's last will, so a
//!   `kill -9` or a pulled cable shows the entities unavailable. With
//!   `--device-id +` one will cannot cover every device: the will is then
//!   pv3's own `<prefix>/status`, and each entity lists both topics
//!   (`availability_mode: all`).
//! - **Rate**: see [`rate`]. Values arrive by the P3's cadence (~10
//!   messages/s); Home Assistant's recorder writes every state change.
//!
//! Like every output it never slows the others: [`PublishOutput::send`]
//! only appends to a bounded inbox (the oldest reading is dropped, and
//! counted, if the task ever falls 4,096 readings behind), and one task
//! owns the connection, publishing with `try_*` calls only. How that task
//! reconnects, and what it does with a message the broker refuses, is
//! [`conn`]'s business; how outside text becomes topic levels and ids,
//! [`naming`]'s.

mod conn;
mod discovery;
mod health;
mod labels;
mod naming;
mod probe;
mod rate;
mod remove;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use rumqttc::{LastWill, QoS};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use conn::{KILLS, Out, Sent, Strikes, Which};

pub use remove::remove;

use super::{Closed, Health, Output, OutputFuture, OutputStats};
use crate::metric_info;
use crate::mqtt::{Connection, MqttSettings, Plan, Role};
use crate::reading::Reading;
use discovery::{Key, Names, payload};
use health::HealthDevice;
use probe::Probe;
use rate::{Rate, Slot};

/// How long an unchanged value may go unpublished while its device sends
/// (Home Assistant's `expire_after` is three of these).
pub const HEARTBEAT: Duration = Duration::from_secs(300);

/// Readings the task may fall behind by before the oldest are dropped.
const INBOX_MAX: usize = 4096;

/// rumqttc's request queue: room for a full re-announcement.
const REQUESTS: usize = 4096;

/// What `--publish`/`--ha` were given.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The output's counters (collect lists them in its health).
    pub stats: Arc<OutputStats>,
    /// collect's health, shown in Home Assistant as pv3's own device.
    pub health: Arc<Health>,
    /// The output broker.
    pub settings: MqttSettings,
    /// Flat topics' prefix.
    pub prefix: String,
    /// Home Assistant's discovery prefix, with `--ha`.
    pub ha_prefix: Option<String>,
    /// `--publish-interval`.
    pub interval: Duration,
    /// At least one publish per this while the device sends (raised to the
    /// interval if shorter).
    pub heartbeat: Duration,
    /// A device without a reading this long is `offline`.
    pub stale_after: Duration,
    /// The one device published (its status topic is the last will), or
    /// `None` for every device on the broker.
    pub device: Option<String>,
}

impl PublishOptions {
    fn names(&self) -> Names {
        let mut names = Names {
            prefix: self.prefix.clone(),
            ha_prefix: self.ha_prefix.clone().unwrap_or_default(),
            will_topic: format!("{}/status", self.prefix),
            instance_will: true,
        };
        if let Some(device) = &self.device {
            names.will_topic = names.device_status(device);
            names.instance_will = false;
        }
        names
    }
}

/// Readings handed over by [`PublishOutput::send`], waiting for the task.
#[derive(Default)]
struct Inbox {
    readings: Mutex<VecDeque<Arc<Reading>>>,
    notify: Notify,
}

impl Inbox {
    fn take(&self) -> VecDeque<Arc<Reading>> {
        match self.readings.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// The flat-topic and Home Assistant output; see the module docs.
pub struct PublishOutput {
    inbox: Arc<Inbox>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<OutputStats>,
    endpoint: String,
}

impl PublishOutput {
    /// Starts connecting to the output broker in the background. Fails only
    /// on settings that can never work (a CA file that cannot be read).
    pub fn start(options: PublishOptions) -> Result<PublishOutput> {
        let names = options.names();
        let stats = options.stats.clone();
        let health_device = options.ha_prefix.is_some().then(|| {
            HealthDevice::new(
                &names,
                options.device.as_deref(),
                options.interval,
                options.health.api.is_some(),
            )
        });
        let probe = Probe::new(&options.prefix, options.settings.endpoint(), stats.clone());
        let will = LastWill::new(names.will_topic.clone(), "offline", QoS::AtLeastOnce, true);
        // Home Assistant's birth message: announce everything again; and
        // the probe, to hear that what pv3 publishes arrives.
        let birth = options.ha_prefix.is_some().then(|| names.birth_topic());
        let filters = birth.into_iter().chain([probe.topic().to_owned()]);
        let plan = Plan::publisher(Role::Output)
            .will(will)
            .subscribing(filters.collect())
            .requests(REQUESTS);
        let connection = Connection::open(&options.settings, plan)?;
        let heartbeat = options.heartbeat.max(options.interval);
        let publisher = Publisher {
            out: Out {
                client: connection.client().clone(),
                stats: stats.clone(),
                connected: false,
                careful: false,
                pending: None,
            },
            names,
            ha: options.ha_prefix.is_some(),
            rate: Rate {
                interval: options.interval,
                heartbeat,
            },
            stale_after: options.stale_after,
            expire_after: heartbeat.as_secs().saturating_mul(3).max(1),
            devices: BTreeMap::new(),
            endpoint: options.settings.endpoint(),
            probe,
            health: health_device.map(|d| (d, options.health.clone())),
        };
        let inbox = Arc::new(Inbox::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(conn::run(publisher, connection, inbox.clone(), stop_rx));
        Ok(PublishOutput {
            inbox,
            stop,
            task,
            stats,
            endpoint: options.settings.endpoint(),
        })
    }
}

impl Output for PublishOutput {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn send(&mut self, reading: Arc<Reading>) -> OutputFuture<'_, Result<(), Closed>> {
        let dropped = match self.inbox.readings.lock() {
            Ok(mut q) => {
                q.push_back(reading);
                let over = q.len().saturating_sub(INBOX_MAX);
                q.drain(..over);
                over
            }
            Err(_) => 1,
        };
        if dropped > 0 {
            self.stats.dropped(dropped as u64);
        }
        self.inbox.notify.notify_one();
        Box::pin(async { Ok(()) })
    }

    fn progress(&self) -> Option<String> {
        let r = self.stats.report();
        Some(format!(
            "{} published to {} ({}), {} dropped",
            r.published,
            self.endpoint,
            if r.connected {
                "connected"
            } else {
                "not connected"
            },
            r.dropped
        ))
    }

    fn wants_derived(&self) -> bool {
        true
    }

    fn stats(&self) -> Option<Arc<OutputStats>> {
        Some(self.stats.clone())
    }

    fn finish(self: Box<Self>, _received: u64) -> OutputFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let _ = self.stop.send(true);
            let mut task = self.task;
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
            let r = self.stats.report();
            info!(
                "mqtt output: {} messages published to {}, {} readings dropped",
                r.published, self.endpoint, r.dropped
            );
            Ok(())
        })
    }
}

/// One value's entry: what it is, its rate state, whether announced, and
/// whether the broker has refused its config or its state.
struct Entry {
    key: Key,
    slot: Slot,
    announced: bool,
    config: Strikes,
    state: Strikes,
}

/// One device's values and availability.
struct Device {
    /// By topic suffix (`grid_power`, `alarm/fan_lock`).
    entries: BTreeMap<String, Entry>,
    last_seen: Instant,
    /// The availability last published (`None`: not since connecting).
    online: Option<bool>,
    /// Whether the broker has refused the availability.
    status: Strikes,
}

/// A new reading of the value under `suffix`; `first` gives its key and
/// resolution when the value is new.
fn note(
    entries: &mut BTreeMap<String, Entry>,
    suffix: &str,
    value: f64,
    first: impl FnOnce() -> (Key, f64),
) {
    match entries.get_mut(suffix) {
        Some(entry) => entry.slot.update(value),
        None => {
            let (key, resolution) = first();
            let entry = Entry {
                key,
                slot: Slot::new(value, resolution),
                announced: false,
                config: Strikes::default(),
                state: Strikes::default(),
            };
            entries.insert(suffix.to_owned(), entry);
        }
    }
}

/// The task's state: the connection's sending side and every value.
struct Publisher {
    out: Out,
    names: Names,
    ha: bool,
    rate: Rate,
    stale_after: Duration,
    expire_after: u64,
    devices: BTreeMap<Arc<str>, Device>,
    endpoint: String,
    /// Does what is published arrive?
    probe: Probe,
    /// With `--ha`: pv3's own device, and what it shows.
    health: Option<(HealthDevice, Arc<Health>)>,
}

impl Publisher {
    /// Takes the waiting readings into the devices' entries. A value that
    /// is not finite (the decoder and the energy counters give none, but
    /// this is the last gate before a topic) is dropped and counted: no
    /// number can show it.
    fn take(&mut self, inbox: &Inbox) {
        let now = Instant::now();
        for reading in inbox.take() {
            let device = self
                .devices
                .entry(reading.origin.device_id.clone())
                .or_insert_with(|| Device {
                    entries: BTreeMap::new(),
                    last_seen: now,
                    online: None,
                    status: Strikes::default(),
                });
            device.last_seen = now;
            for m in &reading.measurements {
                if !m.value.is_finite() {
                    self.out.stats.dropped(1);
                    continue;
                }
                note(&mut device.entries, &m.metric, m.value, || {
                    let resolution = metric_info::info(&m.metric, m.unit).resolution;
                    (Key::Metric(m.metric.to_string(), m.unit), resolution)
                });
            }
            for (flag, on) in reading.alarms.iter().flatten() {
                let value = if *on { 1.0 } else { 0.0 };
                note(&mut device.entries, &format!("alarm/{flag}"), value, || {
                    (Key::Alarm(flag.clone()), 0.0)
                });
            }
        }
    }

    /// Publishes what is due: availability changes, configs not yet
    /// announced, values by the rate rule. What the broker has refused is
    /// left out (a state left out is counted as dropped).
    fn flush(&mut self, now: Instant) {
        if !self.out.connected {
            return;
        }
        let Publisher {
            out,
            devices,
            names,
            rate,
            stale_after,
            ha,
            expire_after,
            ..
        } = self;
        for (id, device) in devices.iter_mut() {
            let alive = now.saturating_duration_since(device.last_seen) < *stale_after;
            if device.online != Some(alive) {
                let text = if alive { "online" } else { "offline" };
                let which = || Which::Status(id.clone());
                let topic = names.device_status(id);
                if !device.status.refused && !out.put(which, topic, text, QoS::AtLeastOnce) {
                    return;
                }
                device.online = Some(alive);
            }
            for (suffix, entry) in device.entries.iter_mut() {
                if !entry.slot.due(*rate, now, alive) {
                    continue;
                }
                if *ha && !entry.announced {
                    if !entry.config.refused {
                        let config = names.config(id, &entry.key, *expire_after).to_string();
                        let topic = names.config_topic(id, &entry.key);
                        let which = || Which::Config(id.clone(), suffix.clone());
                        if !out.put(which, topic, config, QoS::AtLeastOnce) {
                            return;
                        }
                    }
                    entry.announced = true;
                }
                if entry.state.refused {
                    out.stats.dropped(1);
                    entry.slot.published(now);
                    continue;
                }
                let text = match entry.key {
                    Key::Alarm(_) if entry.slot.value != 0.0 => "ON".to_string(),
                    Key::Alarm(_) => "OFF".to_string(),
                    Key::Metric(..) => payload(entry.slot.value),
                };
                let topic = names.state_topic(id, &entry.key);
                let which = || Which::State(id.clone(), suffix.clone());
                if !out.put(which, topic, text, QoS::AtMostOnce) {
                    return;
                }
                entry.slot.published(now);
            }
        }
        if out.careful && out.pending.is_none() {
            debug!(
                "output broker {}: all caught up, publishing at full speed again",
                self.endpoint
            );
            out.careful = false;
        }
        self.flush_health(now);
    }

    /// pv3's own device, when due: its configs once per connection, its
    /// states every interval.
    fn flush_health(&mut self, now: Instant) {
        let Publisher {
            out, names, health, ..
        } = self;
        let Some((device, health)) = health else {
            return;
        };
        if !device.due(now) {
            return;
        }
        if !device.announced {
            for (topic, config) in device.configs(names) {
                if !out.put(|| Which::Other, topic, config, QoS::AtLeastOnce) {
                    device.again();
                    return;
                }
            }
            if let Some(status) = device.status_topic() {
                out.put(
                    || Which::Other,
                    status.to_owned(),
                    "online",
                    QoS::AtLeastOnce,
                );
            }
            device.announced = true;
        }
        for (topic, state) in device.states(health) {
            if !out.put(|| Which::Other, topic, state, QoS::AtMostOnce) {
                return;
            }
        }
    }

    /// A new connection: clean session, so subscribe again, and announce
    /// everything again (the broker may have lost its retained messages).
    fn on_connect(&mut self) {
        self.out.connected = true;
        self.out.stats.set_connected(true);
        if self.names.instance_will {
            let topic = self.names.will_topic.clone();
            self.out
                .put(|| Which::Other, topic, "online", QoS::AtLeastOnce);
        }
        self.announce_again();
        self.flush(Instant::now());
    }

    /// Home Assistant's birth message (`online` on `<ha_prefix>/status`):
    /// it has restarted, so configs and states go out again.
    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        // Only the birth topic is subscribed to; checked all the same.
        if self.ha && payload == b"online" && topic == self.names.birth_topic() {
            info!("Home Assistant came online: announcing the entities again");
            self.announce_again();
            self.flush(Instant::now());
        }
    }

    fn announce_again(&mut self) {
        if let Some((device, _)) = &mut self.health {
            device.again();
        }
        for device in self.devices.values_mut() {
            device.online = None;
            for entry in device.entries.values_mut() {
                entry.announced = false;
                entry.slot.republish();
            }
        }
    }

    /// rumqttc wrote a PUBLISH with this packet id: in careful mode, the
    /// message awaited (the only one in flight).
    fn on_sent(&mut self, pkid: u16) {
        if let Some(sent) = self.out.pending.as_mut().filter(|s| s.pkid.is_none()) {
            sent.pkid = Some(pkid);
        }
    }

    /// A PUBACK: when it is for the message awaited in careful mode, on to
    /// the next. Matched by packet id because rumqttc hands out, after a
    /// reconnect, events it read on the connection before: a PUBACK of
    /// the lost connection must not pass for the new one's.
    fn on_puback(&mut self, pkid: u16) {
        if self.out.careful && self.out.pending.as_ref().and_then(|s| s.pkid) == Some(pkid) {
            self.out.pending = None;
            self.flush(Instant::now());
        }
    }

    /// The connection is gone: the message it died on (in careful mode)
    /// gets a strike, and after a `young` connection (see `conn`) the next
    /// one is careful. An old one most likely met a broker restart or a
    /// network fault: the next publishes at full speed (a poisonous
    /// message then costs one more connection).
    fn connection_lost(&mut self, young: bool) {
        let was_connected = self.out.connected;
        self.out.connected = false;
        self.out.stats.set_connected(false);
        if let Some(sent) = self.out.pending.take() {
            self.strike(&sent);
        }
        self.out.careful |= was_connected && young;
    }

    /// `sent` was being read when the broker dropped the connection: after
    /// [`KILLS`] such deaths it is dropped, counted, and not sent again.
    fn strike(&mut self, sent: &Sent) {
        let strikes = match &sent.which {
            Which::Status(id) => self.devices.get_mut(id).map(|d| &mut d.status),
            Which::Config(id, suffix) | Which::State(id, suffix) => {
                let entry = self
                    .devices
                    .get_mut(id)
                    .and_then(|d| d.entries.get_mut(suffix));
                let config = matches!(sent.which, Which::Config(..));
                entry.map(|e| if config { &mut e.config } else { &mut e.state })
            }
            Which::Other => None,
        };
        let Some(strikes) = strikes else {
            return;
        };
        strikes.kills = strikes.kills.saturating_add(1);
        if strikes.kills < KILLS || strikes.refused {
            return;
        }
        strikes.refused = true;
        self.out.stats.dropped(1);
        warn!(
            "output broker {} dropped the connection {KILLS} times while reading the message to {} \
             ({} bytes): it is not sent again until pv3 restarts (counted as dropped); \
             check the broker's log, its max_packet_size and its ACL",
            self.endpoint, sent.topic, sent.bytes
        );
    }
}
