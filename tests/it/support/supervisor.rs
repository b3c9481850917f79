//! A stand-in for the Home Assistant Supervisor's API, as an add-on sees it
//! at `http://supervisor`: one answer for every request (a `GET
//! /services/mqtt` as a rule), or none at all, with each request's line
//! and `Authorization` header recorded.
//!
//! The answers are the Supervisor's own shapes (`api_return_ok`,
//! `api_return_error`): `{"result": "ok", "data": {...}}` and
//! `{"result": "error", "message": ...}`.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::lock;

/// What the stand-in does with a request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This status and JSON body.
    Json(u16, Value),
    /// Reads the request and never answers (the connection stays open).
    Nothing,
}

impl Answer {
    /// The Mosquitto add-on's service: `host:port`, user and password.
    pub fn mqtt(host: &str, port: u16, username: &str, password: &str) -> Answer {
        Answer::Json(
            200,
            json!({"result": "ok", "data": {
                "host": host, "port": port, "ssl": false, "protocol": "3.1.1",
                "username": username, "password": password, "addon": "core_mosquitto"}}),
        )
    }

    /// No MQTT broker add-on installed or started.
    pub fn no_mqtt() -> Answer {
        Answer::Json(
            400,
            json!({"result": "error", "message": "Service not enabled"}),
        )
    }

    /// An error status with the Supervisor's error body.
    pub fn error(status: u16, message: &str) -> Answer {
        Answer::Json(status, json!({"result": "error", "message": message}))
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET /services/mqtt`.
    pub line: String,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
}

/// The running stand-in on 127.0.0.1.
pub struct Supervisor {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Supervisor {
    pub async fn start(answer: Answer) -> Supervisor {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Supervisor stand-in");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    lock(&recorded).push(seen_in(&head));
                    match answer {
                        Answer::Json(status, body) => {
                            let body = body.to_string();
                            let reply = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = stream.write_all(reply.as_bytes()).await;
                            let _ = stream.shutdown().await;
                        }
                        Answer::Nothing => {
                            // Hold the connection until the client gives up.
                            let mut rest = [0u8; 1024];
                            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                        }
                    }
                });
            }
        });
        Supervisor { port, seen, task }
    }

    /// The base URL pv3 is given instead of `http://supervisor`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request head (up to the blank line), or `None` if the client left.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn seen_in(head: &str) -> Seen {
    let mut lines = head.lines();
    let line = lines.next().unwrap_or_default();
    let line = line.rsplit_once(' ').map_or(line, |(l, _)| l).to_owned();
    let authorization = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_owned())
    });
    Seen {
        line,
        authorization,
    }
}
