//! `device_id` left empty: the add-on listens on the P3's broker (the
//! [`census`](crate::census) of `pv3 devices`) and takes the one P3 that
//! publishes there. None, or several, is an error that says what was heard.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use tracing::info;

use crate::census::{self, Reach};
use crate::cli::MqttArgs;
use crate::cmd::ConfigError;

/// How long the add-on listens for P3s: as long as `pv3 devices` does by
/// default (a P3 publishes every few seconds).
const LISTEN: Duration = Duration::from_secs(10);

/// The one P3 publishing on the broker of `mqtt`; `None` when a stop signal
/// ended the listen.
pub async fn detect(mqtt: &MqttArgs) -> Result<Option<String>> {
    let settings = crate::cmd::mqtt_settings(mqtt, "addon");
    let wait = crate::knobs::interval_from_env("PV3_DEVICE_LISTEN_MS", LISTEN);
    let broker = settings.endpoint();
    info!("device_id is not set: listening {wait:?} on {broker} for the P3 that publishes there");
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = {
        let stopped = stopped.clone();
        async move {
            crate::cmd::shutdown_signal().await;
            stopped.store(true, Ordering::Relaxed);
        }
    };
    let heard = census::listen(&settings, wait, stop)
        .await
        .map_err(ConfigError)?;
    if stopped.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let secs = wait.as_secs_f64();
    match heard.reach {
        Reach::NotConnected => {
            return Err(anyhow!(
                "cannot find the P3: no connection to its broker {broker} (mqtt_host) within {secs} s"
            ));
        }
        Reach::NotSubscribed => {
            return Err(anyhow!(
                "cannot find the P3: its broker {broker} did not confirm the subscription to pv/PV3/+/# within {secs} s (does it want mqtt_username and mqtt_password?)"
            ));
        }
        Reach::Subscribed => {}
    }
    let ids: Vec<&String> = heard.census.devices.keys().collect();
    match ids.as_slice() {
        [] => Err(anyhow!(
            "no P3 published on {broker} in {secs} s: check mqtt_host (the P3's address), or set device_id"
        )),
        [one] => {
            info!(
                "device_id: {one}, the one P3 publishing on {broker} (set device_id to skip this listen)"
            );
            Ok(Some((*one).clone()))
        }
        several => {
            let list: Vec<&str> = several.iter().map(|s| s.as_str()).collect();
            Err(ConfigError(anyhow!(
                "{} P3s publish on {broker}: {}: set device_id to one of them (+ for all)",
                list.len(),
                list.join(", ")
            ))
            .into())
        }
    }
}
