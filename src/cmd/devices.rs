//! `pv3 devices`: which P3s publish on this broker? The first thing to run:
//! it names the device id that `collect --device-id` wants.
//!
//! It listens on `pv/PV3/+/#` for `--wait` seconds (Ctrl-C ends the wait
//! early) and prints each device seen with its topics, its last message and
//! its headline values. When it hears none it says which of the usual
//! mistakes fits what happened (no connection, a refused subscription, a
//! broker that carries no P3) and exits 1.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tabled::settings::Style;
use tabled::{Table, Tabled};
use tracing::info;

use crate::census::{self, Census, DeviceTally, Reach};
use crate::cli::{DevicesArgs, DevicesFormat};
use crate::human::human_secs;
use crate::reading::Timestamp;
use crate::topic;

/// Runs `pv3 devices`.
pub(crate) async fn run(args: DevicesArgs) -> Result<()> {
    let settings = super::mqtt_settings(&args.mqtt, "devices");
    let endpoint = settings.endpoint();
    let filter = topic::device_filter(topic::ANY_DEVICE);
    info!(
        "pv3 devices: listening on {endpoint} ({filter}) for {}",
        human_secs(args.wait.as_secs_f64())
    );
    let listened = census::listen(&settings, args.wait, super::shutdown_signal())
        .await
        .map_err(super::ConfigError)?;
    let census = listened.census;
    if census.is_empty() {
        let wait = human_secs(args.wait.as_secs_f64());
        let (what, hints) = nothing_heard(listened.reach, &endpoint, &settings.host, &wait);
        eprintln!("{hints}");
        bail!("{what}");
    }
    let now = Timestamp::now();
    let text = match args.format {
        DevicesFormat::Table => table(&census, now),
        DevicesFormat::Json => json_lines(&census, now)?,
    };
    crate::output::print_stdout(text.as_bytes())
}

/// The error line and the hints for a listen that heard no P3.
fn nothing_heard(reach: Reach, endpoint: &str, host: &str, wait: &str) -> (String, String) {
    match reach {
        Reach::NotConnected => (
            format!("could not connect to the MQTT broker {endpoint} within {wait}"),
            format!(
                "Check:\n  \
                 - --mqtt-host: is {host} the P3's LAN address? (your router's list of devices shows it)\n  \
                 - --mqtt-port: the P3's broker listens on 1883\n  \
                 - --mqtt-username/--mqtt-password, if the broker asks for them (the log above says \"connection refused by the broker\")"
            ),
        ),
        Reach::NotSubscribed => (
            format!("the MQTT broker {endpoint} did not confirm the subscription to pv/PV3/+/#"),
            "Check:\n  \
             - the broker's access list: this user may not read pv/PV3/# (the log above names what was refused)\n  \
             - --mqtt-username/--mqtt-password"
                .to_owned(),
        ),
        Reach::Subscribed => (
            format!("no P3 published on {endpoint} in {wait}"),
            format!(
                "Connected and subscribed to pv/PV3/+/#, but nothing arrived. Check:\n  \
                 - is this the P3's broker? The P3 runs its own on port 1883 of its LAN address; another broker has its messages only if it bridges pv/PV3/#\n  \
                 - is the P3 on? It publishes every few seconds; listen longer with --wait 30\n  \
                 - --mqtt-host {host} and --mqtt-port: a different broker answered there"
            ),
        ),
    }
}

/// Seconds from `then` to `now`, to a tenth, never negative.
fn age(now: Timestamp, then: Option<Timestamp>) -> f64 {
    then.map_or(0.0, |t| {
        (now.seconds_since(t).max(0.0) * 10.0).round() / 10.0
    })
}

/// `value unit`, or a dash when there is none.
fn value(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} {unit}"))
}

/// "SOC 97.0 %, battery 591.0 W (discharging), grid -413.8 W (exporting)".
fn headline(d: &DeviceTally) -> String {
    let h = d.headline;
    let direction = |v: Option<f64>, plus: &'static str, minus: &'static str| match v {
        Some(v) if v > 0.0 => format!(" ({plus})"),
        Some(v) if v < 0.0 => format!(" ({minus})"),
        _ => String::new(),
    };
    format!(
        "SOC {}, battery {}{}, grid {}{}",
        value(h.soc, "%"),
        value(h.battery_power, "W"),
        direction(h.battery_power, "discharging", "charging"),
        value(h.grid_power, "W"),
        direction(h.grid_power, "importing", "exporting"),
    )
}

#[derive(Tabled)]
struct Row<'a> {
    topic: &'a str,
    messages: u64,
    #[tabled(rename = "last message")]
    last: String,
}

/// A block per device: its id and last message, its headline values, a
/// table of its topics; then how to collect it.
fn table(census: &Census, now: Timestamp) -> String {
    let mut out = String::new();
    for (id, d) in &census.devices {
        let _ = writeln!(
            out,
            "{id}: {} messages, the last {:.1} s ago",
            d.messages(),
            age(now, d.last())
        );
        let _ = writeln!(out, "  {}", headline(d));
        let rows = d.topics.iter().map(|(topic, t)| Row {
            topic,
            messages: t.messages,
            last: format!("{:.1} s ago", age(now, Some(t.last))),
        });
        let mut table = Table::new(rows);
        table.with(Style::rounded());
        let _ = writeln!(out, "{table}\n");
    }
    if census.unlisted > 0 {
        let _ = writeln!(
            out,
            "(and {} messages of more devices than are listed)\n",
            census.unlisted
        );
    }
    let ids: Vec<&String> = census.devices.keys().collect();
    match ids.as_slice() {
        [one] => {
            let _ = writeln!(out, "Collect it: pv3 collect --device-id {one} ...");
        }
        [first, ..] => {
            let _ = writeln!(
                out,
                "Collect one: pv3 collect --device-id {first} ... (or every one: --device-id +)"
            );
        }
        [] => {}
    }
    out
}

/// One device in `--format json`.
#[derive(Serialize)]
struct JsonDevice<'a> {
    device_id: &'a str,
    topics: std::collections::BTreeMap<&'a str, JsonTopic>,
    headline: JsonHeadline,
}

#[derive(Serialize)]
struct JsonTopic {
    messages: u64,
    age_s: f64,
}

#[derive(Serialize)]
struct JsonHeadline {
    soc: Option<f64>,
    battery_power: Option<f64>,
    grid_power: Option<f64>,
}

/// One JSON object per device, one per line (`shared/spec/cli.md`).
fn json_lines(census: &Census, now: Timestamp) -> Result<String> {
    let mut out = String::new();
    for (id, d) in &census.devices {
        let device = JsonDevice {
            device_id: id,
            topics: d
                .topics
                .iter()
                .map(|(topic, t)| {
                    (
                        topic.as_str(),
                        JsonTopic {
                            messages: t.messages,
                            age_s: age(now, Some(t.last)),
                        },
                    )
                })
                .collect(),
            headline: JsonHeadline {
                soc: d.headline.soc,
                battery_power: d.headline.battery_power,
                grid_power: d.headline.grid_power,
            },
        };
        out.push_str(&serde_json::to_string(&device).context("cannot encode a device")?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census() -> Census {
        let mut c = Census::default();
        let t = Timestamp::from_unix_micros(1_000_000);
        c.record(
            "pv/PV3/PVA/bms/soc",
            br#"[{"measurement":"StateOfCharge","value":9700}]"#,
            t,
        );
        c.record("pv/PV3/PVA/inverter/charge", br#"{"power":-591}"#, t);
        c
    }

    #[test]
    fn json_lines_follow_the_spec() {
        let now = Timestamp::from_unix_micros(2_250_000);
        let line = json_lines(&census(), now).expect("json");
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one line of JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "device_id": "PVA",
                "topics": {
                    "bms/soc": {"messages": 1, "age_s": 1.3},
                    "inverter/charge": {"messages": 1, "age_s": 1.3},
                },
                "headline": {"soc": 97.0, "battery_power": -591.0, "grid_power": null},
            })
        );
    }

    #[test]
    fn the_headline_says_which_way_power_flows() {
        let c = census();
        assert_eq!(
            headline(&c.devices["PVA"]),
            "SOC 97.0 %, battery -591.0 W (charging), grid –"
        );
    }

    #[test]
    fn every_way_of_hearing_nothing_has_its_hints() {
        for reach in [Reach::NotConnected, Reach::NotSubscribed, Reach::Subscribed] {
            let (what, hints) = nothing_heard(reach, "10.0.0.9:1883", "10.0.0.9", "10 s");
            assert!(what.contains("10.0.0.9:1883"), "{what}");
            assert!(hints.contains("--mqtt-"), "{hints}");
        }
    }
}
