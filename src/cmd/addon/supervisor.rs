//! The Supervisor's MQTT service: `GET http://supervisor/services/mqtt`
//! with the add-on's token answers with the broker add-on (Mosquitto) that
//! provides MQTT to Home Assistant, and the user it made for add-ons.
//!
//! The answer (Supervisor `api_return_ok`): `{"result": "ok", "data":
//! {"host", "port", "ssl", "username", "password", "protocol", "addon"}}`;
//! `port` is a number (a string in the developer docs' example: both are
//! taken), `username`/`password` may be absent. HTTP 400 means no broker
//! add-on provides the service; 401/403 a token the Supervisor does not
//! take (or an add-on without `services: mqtt`).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

/// The broker the Supervisor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub ssl: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Broker {
    /// collect's `--out-mqtt-*` flags for it.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--out-mqtt-host".to_owned(),
            self.host.clone(),
            "--out-mqtt-port".to_owned(),
            self.port.to_string(),
        ];
        if let Some(user) = &self.username {
            flags.extend(["--out-mqtt-username".to_owned(), user.clone()]);
        }
        if let Some(password) = &self.password {
            flags.extend(["--out-mqtt-password".to_owned(), password.clone()]);
        }
        if self.ssl {
            flags.push("--out-mqtt-tls".to_owned());
        }
        flags
    }
}

/// What the Supervisor said about MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttService {
    /// A broker add-on provides it.
    Provided(Broker),
    /// None does (HTTP 400): the Supervisor's reason.
    NotProvided(String),
}

/// Asks the Supervisor at `base` (`http://supervisor`) for the MQTT
/// service. A refused token, an answer that is no service, or no answer
/// within `timeout` is an error: the add-on cannot know its broker.
pub async fn mqtt_service(base: &str, token: &str, timeout: Duration) -> Result<MqttService> {
    crate::tls::ensure_provider();
    let url = format!("{}/services/mqtt", base.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pv3/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")?;
    let answer = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot ask the Supervisor for the MQTT broker at {url}: {}",
                crate::api::describe_error(&e)
            )
        })?;
    let status = answer.status();
    let body = answer.bytes().await.unwrap_or_default();
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| one_line(&String::from_utf8_lossy(&body)));
    let said = if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    };
    match status.as_u16() {
        200..=299 => json
            .as_ref()
            .and_then(|j| j.get("data"))
            .ok_or_else(|| anyhow!("the Supervisor's answer at {url} holds no \"data\""))
            .and_then(|data| {
                broker(data).with_context(|| format!("the Supervisor's answer at {url}"))
            })
            .map(MqttService::Provided),
        400 => Ok(MqttService::NotProvided(message)),
        401 | 403 => Err(anyhow!(
            "the Supervisor refused the add-on's token at {url}: HTTP {status}{said}"
        )),
        _ => Err(anyhow!(
            "the Supervisor answered HTTP {status} at {url}{said}"
        )),
    }
}

/// The broker in the answer's `data`.
fn broker(data: &Value) -> Result<Broker> {
    let text = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let host = text("host").ok_or_else(|| anyhow!("no broker host"))?;
    let port = match data.get("port") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .and_then(|p| u16::try_from(p).ok())
    .filter(|p| *p > 0)
    .ok_or_else(|| anyhow!("no valid broker port"))?;
    Ok(Broker {
        host,
        port,
        ssl: data.get("ssl").and_then(Value::as_bool).unwrap_or(false),
        username: text("username"),
        password: text("password"),
    })
}

/// `text` on one line, at most 200 characters: an error page in a log line.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_answer_becomes_the_output_broker_flags() {
        let data = json!({"host": "core-mosquitto", "port": 1883, "ssl": false,
            "protocol": "3.1.1", "username": "addons", "password": "pw", "addon": "core_mosquitto"});
        let b = broker(&data).expect("a broker");
        assert_eq!(
            b.flags(),
            [
                "--out-mqtt-host",
                "core-mosquitto",
                "--out-mqtt-port",
                "1883",
                "--out-mqtt-username",
                "addons",
                "--out-mqtt-password",
                "pw"
            ]
        );
        // The developer docs' shape: port as a string, TLS, no user.
        let data = json!({"host": "172.0.0.17", "port": "8883", "ssl": true, "app": "x"});
        let b = broker(&data).expect("a broker");
        assert_eq!(
            b.flags(),
            [
                "--out-mqtt-host",
                "172.0.0.17",
                "--out-mqtt-port",
                "8883",
                "--out-mqtt-tls"
            ]
        );
    }

    #[test]
    fn an_answer_without_host_or_port_is_refused() {
        for data in [
            json!({"port": 1883}),
            json!({"host": "h", "port": "x"}),
            json!({"host": "h", "port": 70000}),
            json!({"host": "", "port": 1883}),
        ] {
            assert!(broker(&data).is_err(), "{data}");
        }
    }
}
