//! [`Topics`]: what an MQTT consumer (Home Assistant, evcc) sees of the
//! topics pv3 publishes: the latest payload of every topic, whether the
//! broker retained it, and the history of each, with waits that end on the
//! event.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lock;

/// Generous: waits end on the event, not on this.
pub const WAIT: Duration = Duration::from_secs(30);

/// One message as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub payload: String,
    /// Delivered as a retained message (it was on the broker before we
    /// subscribed).
    pub retained: bool,
}

#[derive(Default)]
pub struct State {
    pub history: BTreeMap<String, Vec<Seen>>,
}

impl State {
    /// The latest payload of `topic` (an empty one: cleared).
    pub fn latest(&self, topic: &str) -> Option<&str> {
        self.history
            .get(topic)
            .and_then(|h| h.last())
            .map(|s| s.payload.as_str())
    }

    /// Topics under `prefix` whose latest payload is not empty.
    pub fn live_under(&self, prefix: &str) -> BTreeMap<String, String> {
        self.history
            .iter()
            .filter(|(t, _)| t.starts_with(prefix))
            .filter_map(|(t, h)| {
                let last = h.last()?;
                (!last.payload.is_empty()).then(|| (t.clone(), last.payload.clone()))
            })
            .collect()
    }
}

/// A subscription to `filters` on a test broker, recording everything.
pub struct Topics {
    state: Arc<Mutex<State>>,
    changes: watch::Receiver<u64>,
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Topics {
    /// Subscribes (clean session) and waits for the SUBACK, so retained
    /// messages that follow are the broker's current state.
    pub async fn watch(port: u16, filters: &[&str]) -> Topics {
        let mut opts = super::broker::client_options("pv3-test-topics", port);
        opts.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let state = Arc::new(Mutex::new(State::default()));
        let (changes_tx, changes) = watch::channel(0u64);
        let (subacked_tx, mut subacked) = watch::channel(false);
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let task_state = state.clone();
        let task_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = task_client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacked_tx.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let seen = Seen {
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retained: p.retain,
                        };
                        lock(&task_state)
                            .history
                            .entry(p.topic)
                            .or_default()
                            .push(seen);
                        changes_tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, subacked.wait_for(|s| *s))
            .await
            .expect("Topics: no SUBACK")
            .expect("Topics: task alive");
        Topics {
            state,
            changes,
            client,
            task,
        }
    }

    /// Runs `f` on the current state.
    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&lock(&self.state))
    }

    /// The latest payload of `topic`.
    pub fn latest(&self, topic: &str) -> Option<String> {
        self.with(|s| s.latest(topic).map(str::to_owned))
    }

    /// Every message of `topic` so far.
    pub fn history(&self, topic: &str) -> Vec<Seen> {
        self.with(|s| s.history.get(topic).cloned().unwrap_or_default())
    }

    /// Waits until `pred` holds; panics with `what` (and the topics seen)
    /// after [`WAIT`].
    pub async fn wait(&self, what: &str, pred: impl Fn(&State) -> bool) {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.with(&pred) {
                return;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                let topics: Vec<String> = self.with(|s| {
                    s.history
                        .iter()
                        .map(|(t, h)| format!("{t} = {:?}", h.last().map(|x| &x.payload)))
                        .collect()
                });
                panic!("never saw {what} within {WAIT:?}; topics: {topics:#?}");
            }
        }
    }

    /// Waits until `topic`'s latest payload is `payload`.
    pub async fn wait_for(&self, topic: &str, payload: &str) {
        self.wait(&format!("{topic} = {payload:?}"), |s| {
            s.latest(topic) == Some(payload)
        })
        .await;
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.task.abort();
    }
}
