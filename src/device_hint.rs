//! collect's hint for a wrong `--device-id`.
//!
//! With the wrong id, collect connects, subscribes to `pv/PV3/<id>/#` and
//! hears nothing, forever, while the P3 publishes under its own id on the
//! same broker. So when nothing has arrived for the configured device a
//! minute after the first subscription, collect looks once at
//! `pv/PV3/+/#` (a second, short-lived connection) and says what it saw:
//! the ids that do publish ("did you mean --device-id ...?"), or nothing at
//! all (the wrong broker). The hint goes to the log and into `status.json`,
//! where `check-api` shows it; a message for the device later clears it.
//!
//! `PV3_DEVICE_HINT_AFTER_MS` (undocumented, like `PV3_STATUS_INTERVAL_MS`)
//! shortens the minute for tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::census::{self, Census, Reach};
use crate::human::human_secs;
use crate::mqtt::{self, MqttSettings};
use crate::topic::ANY_DEVICE;

/// How long collect waits for its device before looking around.
const AFTER: Duration = Duration::from_secs(60);

/// The longest look at `pv/PV3/+/#`: the P3 publishes every few seconds.
const LOOK: Duration = Duration::from_secs(10);

/// [`AFTER`], or `PV3_DEVICE_HINT_AFTER_MS` (tests).
fn after() -> Duration {
    crate::knobs::interval_from_env("PV3_DEVICE_HINT_AFTER_MS", AFTER)
}

/// What the hint task and collect share.
#[derive(Default)]
struct Shared {
    /// A message for the configured device has arrived.
    heard: AtomicBool,
    /// A hint has been given (so `heard` has one to clear).
    hinted: AtomicBool,
    text: Mutex<Option<String>>,
}

impl Shared {
    fn text(&self) -> MutexGuard<'_, Option<String>> {
        self.text.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hint's handle in collect: tell it each message for the device; ask
/// it for the text `status.json` carries. Dropping it ends the look.
pub struct DeviceHint {
    device: String,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl DeviceHint {
    /// Starts watching for collect's subscription to `device`; a handle
    /// that does nothing when `device` is `+` (every device: no id to get
    /// wrong). `subscribed` turns true at the first SUBACK.
    pub fn start(
        settings: &MqttSettings,
        device: &str,
        subscribed: watch::Receiver<bool>,
    ) -> DeviceHint {
        let shared = Arc::new(Shared::default());
        let task = (device != ANY_DEVICE).then(|| {
            let mut look = settings.clone();
            // A client id of its own: the same one would take over collect's
            // session. No stale-link watchdog for a look of seconds.
            look.client_id = mqtt::default_client_id("hint");
            look.stale_after = None;
            tokio::spawn(watch_for(
                look,
                device.to_owned(),
                subscribed,
                shared.clone(),
            ))
        });
        DeviceHint {
            device: device.to_owned(),
            shared,
            task,
        }
    }

    /// A message for the device arrived: no hint is needed, and one given
    /// earlier is withdrawn.
    pub fn heard(&self) {
        self.shared.heard.store(true, Ordering::Relaxed);
        if self.shared.hinted.swap(false, Ordering::Relaxed) && self.shared.text().take().is_some()
        {
            info!(
                "messages for {} are arriving now: ignore the device id hint",
                self.device
            );
        }
    }

    /// The hint, while it stands (for `status.json`).
    pub fn text(&self) -> Option<String> {
        self.shared.text().clone()
    }
}

impl Drop for DeviceHint {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits for the first subscription, then [`after()`]; if nothing came for
/// `device` meanwhile, looks at `pv/PV3/+/#` once and says what it saw.
async fn watch_for(
    settings: MqttSettings,
    device: String,
    mut subscribed: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    if subscribed.wait_for(|s| *s).await.is_err() {
        return;
    }
    let after = after();
    tokio::time::sleep(after).await;
    if shared.heard.load(Ordering::Relaxed) {
        return;
    }
    let look = LOOK.min(after);
    debug!(
        "no message for {device} in {:.1} s: looking at every device's topics for {:.1} s",
        after.as_secs_f64(),
        look.as_secs_f64()
    );
    let listened = match census::listen(&settings, look, std::future::pending()).await {
        Ok(listened) => listened,
        Err(e) => {
            debug!("cannot look for other devices: {e:#}");
            return;
        }
    };
    if listened.reach != Reach::Subscribed || shared.heard.load(Ordering::Relaxed) {
        return;
    }
    let Some(text) = hint(&device, after, &listened.census) else {
        return;
    };
    warn!("{text}");
    *shared.text() = Some(text);
    shared.hinted.store(true, Ordering::Relaxed);
    // A message that arrived while the hint was being stored clears it.
    if shared.heard.load(Ordering::Relaxed) && shared.hinted.swap(false, Ordering::Relaxed) {
        shared.text().take();
    }
}

/// The hint for `device`, silent for `after`, given what `pv/PV3/+/#`
/// carried; none when the device itself turned up there.
fn hint(device: &str, after: Duration, census: &Census) -> Option<String> {
    let silent = format!(
        "no messages for {device} in {} of subscribing",
        human_secs(after.as_secs_f64())
    );
    if census.devices.contains_key(device) {
        return None;
    }
    let others: Vec<&str> = census.devices.keys().map(String::as_str).collect();
    let Some(first) = others.first() else {
        return Some(format!(
            "{silent}, and nothing at all on pv/PV3/: is this the P3's broker? (check --mqtt-host and --mqtt-port)"
        ));
    };
    Some(format!(
        "{silent}; messages are flowing for {} — did you mean --device-id {first}? (`pv3 devices` lists every P3 on the broker)",
        others.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Timestamp;

    fn census(devices: &[&str]) -> Census {
        let mut c = Census::default();
        for d in devices {
            c.record(
                &format!("pv/PV3/{d}/inverter/charge"),
                br#"{"power":1}"#,
                Timestamp::from_unix_micros(0),
            );
        }
        c
    }

    #[test]
    fn names_the_devices_that_do_publish() {
        let text = hint("PVWRONG", AFTER, &census(&["PVB", "PVA"])).expect("a hint");
        assert!(
            text.starts_with(
                "no messages for PVWRONG in 60 s of subscribing; messages are flowing for PVA, PVB — did you mean --device-id PVA?"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_empty_broker_is_probably_not_the_p3s() {
        let text = hint("PVWRONG", AFTER, &census(&[])).expect("a hint");
        assert!(
            text.contains("nothing at all on pv/PV3/: is this the P3's broker?"),
            "{text}"
        );
    }

    #[test]
    fn no_hint_when_the_device_itself_publishes() {
        assert_eq!(hint("PVA", AFTER, &census(&["PVA", "PVB"])), None);
    }

    #[test]
    fn every_device_has_no_id_to_get_wrong() {
        let settings = MqttSettings {
            host: "127.0.0.1".into(),
            port: 1883,
            username: None,
            password: None,
            tls: false,
            ca_file: None,
            client_id: "pv3-test".into(),
            keep_alive: Duration::from_secs(30),
            reconnect_initial: crate::mqtt::RECONNECT_INITIAL,
            reconnect_max: Duration::from_secs(30),
            stale_after: None,
        };
        let (_tx, rx) = watch::channel(false);
        // No runtime here: a handle for "+" spawns nothing.
        assert!(DeviceHint::start(&settings, "+", rx).task.is_none());
    }
}
