//! Self-tests of the integration-test harness in `tests/it/support`.

use crate::support;

use std::process::Command;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::api::{RecordingApi, http_client, parse_rfc3339_nanos};
use support::broker::{
    InProcessBroker, Mosquitto, Publisher, Subscriber, TestBroker, topic_matches,
};
use support::proc::{Pv3Process, hermetic, run_pv3};
use support::proxy::TcpProxy;

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Reads one HTTP/1.1 response (Content-Length framed) from `stream`.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> (u16, Vec<(String, String)>, Value) {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "connection closed before a full response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("utf-8 head");
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length header");
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed before full body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    let json = serde_json::from_slice(&body).expect("JSON response body");
    (status, headers, json)
}

fn post_bytes(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// reqwest here has no `json` feature: serialise by hand.
fn with_json(rb: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    rb.header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("serialise JSON"))
}

async fn json_of(r: reqwest::Response) -> Value {
    let bytes = r.bytes().await.expect("read response body");
    serde_json::from_slice(&bytes).expect("JSON response body")
}

// ---------------------------------------------------------------------------
// broker
// ---------------------------------------------------------------------------

#[test]
fn topic_matching_rules() {
    assert!(topic_matches("a/+/c", "a/b/c"));
    assert!(topic_matches("a/+/c", "a//c"));
    assert!(!topic_matches("a/+", "a/b/c"));
    assert!(topic_matches("a/#", "a"));
    assert!(topic_matches("a/#", "a/b/c"));
    assert!(topic_matches("#", "a/b"));
    assert!(topic_matches("+/+", "/x"));
    assert!(!topic_matches("+", "/x"));
    assert!(!topic_matches("#", "$SYS/x"));
    assert!(!topic_matches("+/x", "$SYS/x"));
    assert!(topic_matches("$SYS/#", "$SYS/x"));
    assert!(!topic_matches("a/b", "a/b/c"));
    assert!(!topic_matches("a/b/c", "a/b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_pubsub_wildcards() {
    let broker = InProcessBroker::start().await;
    let mut plus = Subscriber::connect(broker.port(), &["pv/+/soc"]).await;
    let mut hash = Subscriber::connect(broker.port(), &["pv/#"]).await;
    let mut all = Subscriber::connect(broker.port(), &["#"]).await;
    assert!(broker.wait_for_subscription("pv/+/soc", T).await);
    let mut subs = broker.subscriptions();
    subs.sort();
    assert_eq!(subs, vec!["#", "pv/#", "pv/+/soc"]);

    let publisher = Publisher::connect(broker.port()).await;
    publisher
        .publish("pv/dev1/soc", "55", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("pv/dev1/x/y", "deep", QoS::AtMostOnce, false)
        .await;
    publisher
        .publish("pv", "parent", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("$SYS/uptime", "1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("other", "o", QoS::AtLeastOnce, false)
        .await;
    assert!(broker.wait_for_received(5, T).await);
    assert_eq!(broker.received(), 5);

    let got = plus.expect_messages(1, T).await;
    assert_eq!(got[0].topic, "pv/dev1/soc");
    assert_eq!(&got[0].payload[..], b"55");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert!(!got[0].retain);

    let got: Vec<String> = hash
        .expect_messages(3, T)
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(got, vec!["pv/dev1/soc", "pv/dev1/x/y", "pv"]);

    let got: Vec<String> = all
        .expect_messages(4, T)
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(got, vec!["pv/dev1/soc", "pv/dev1/x/y", "pv", "other"]);

    // Nothing else (notably no $SYS message) is pending: a marker published
    // last is the next message each subscriber sees.
    publisher
        .publish("pv/z/soc", "m", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(plus.expect_messages(1, T).await[0].topic, "pv/z/soc");
    assert_eq!(all.expect_messages(1, T).await[0].topic, "pv/z/soc");
    assert_eq!(hash.expect_messages(1, T).await[0].topic, "pv/z/soc");
    publisher.disconnect().await;
    plus.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_retained_messages() {
    let broker = InProcessBroker::start().await;
    let publisher = Publisher::connect(broker.port()).await;
    publisher
        .publish("pv/dev1/state", "on", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("pv/dev2/state", "off", QoS::AtMostOnce, true)
        .await;
    assert!(broker.wait_for_received(2, T).await);

    let mut sub = Subscriber::connect(broker.port(), &["pv/+/state"]).await;
    let mut got = sub.expect_messages(2, T).await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(got[0].topic, "pv/dev1/state");
    assert!(
        got[0].retain,
        "retained delivery must carry the retain flag"
    );
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(got[1].topic, "pv/dev2/state");
    assert_eq!(got[1].qos, QoS::AtMostOnce);

    // Live publish to an existing subscriber: retain flag cleared.
    publisher
        .publish("pv/dev1/state", "standby", QoS::AtLeastOnce, true)
        .await;
    let live = sub.expect_messages(1, T).await;
    assert!(!live[0].retain);

    // Empty retained payload clears.
    publisher
        .publish("pv/dev1/state", "", QoS::AtLeastOnce, true)
        .await;
    sub.expect_messages(1, T).await;
    assert_eq!(broker.retained().len(), 1);
    let mut late = Subscriber::connect(broker.port(), &["pv/+/state"]).await;
    let got = late.expect_messages(1, T).await;
    assert_eq!(got[0].topic, "pv/dev2/state");
    publisher
        .publish("marker", "m", QoS::AtLeastOnce, false)
        .await;
    late.assert_no_message(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shared_subscription_round_robin() {
    let broker = InProcessBroker::start().await;
    let mut a = Subscriber::connect(broker.port(), &["$share/g1/pv/#"]).await;
    let mut b = Subscriber::connect(broker.port(), &["$share/g1/pv/#"]).await;
    let mut normal = Subscriber::connect(broker.port(), &["pv/#"]).await;
    assert!(broker.wait_for_subscription("$share/g1/pv/#", T).await);
    let publisher = Publisher::connect(broker.port()).await;
    for i in 0..10 {
        publisher
            .publish(
                &format!("pv/m/{i}"),
                format!("{i}"),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    let got_a = a.expect_messages(5, T).await;
    let got_b = b.expect_messages(5, T).await;
    normal.expect_messages(10, T).await;
    let mut topics: Vec<String> = got_a
        .iter()
        .chain(&got_b)
        .map(|p| p.topic.clone())
        .collect();
    topics.sort();
    topics.dedup();
    assert_eq!(
        topics.len(),
        10,
        "each message delivered to exactly one group member"
    );
    // Round robin: nothing more for either member.
    assert!(a.drain().is_empty());
    assert!(b.drain().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_one_mib_payload() {
    let broker = InProcessBroker::start().await;
    let mut sub = Subscriber::connect(broker.port(), &["big/#"]).await;
    let publisher = Publisher::connect(broker.port()).await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    publisher
        .publish("big/blob", payload.clone(), QoS::AtLeastOnce, false)
        .await;
    let got = sub.expect_messages(1, T).await;
    assert_eq!(got[0].payload.len(), payload.len());
    assert!(got[0].payload[..] == payload[..]);
    assert_eq!(broker.messages()[0].payload.len(), payload.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_drop_connections_and_reconnect() {
    let broker = InProcessBroker::start().await;
    let publisher = Publisher::connect(broker.port()).await;
    let mut sub = Subscriber::connect(broker.port(), &["a/b"]).await;
    assert_eq!(broker.client_count(), 2);
    let before = broker.connects();
    broker.drop_connections();
    // Both clients reconnect by themselves; the subscriber's session
    // (clean_session = false) keeps its subscription.
    assert!(support::wait_for(T, || broker.connects() >= before + 2).await);
    assert!(broker.wait_for_subscription("a/b", T).await);
    publisher
        .publish("a/b", "after", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&sub.expect_messages(1, T).await[0].payload[..], b"after");
    // A publish racing with a dropped link still completes.
    broker.drop_connections();
    publisher
        .publish("a/b", "racing", QoS::AtLeastOnce, false)
        .await;
    assert!(
        support::wait_for(T, || broker
            .messages()
            .iter()
            .any(|m| &m.payload[..] == b"racing"))
        .await
    );
    sub.disconnect().await;
    assert!(support::wait_for(T, || broker.client_count() == 1).await);
    assert!(broker.subscriptions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_stop_and_start_on_same_port() {
    let broker = InProcessBroker::start().await;
    let port = broker.port();
    let publisher = Publisher::connect(port).await;
    publisher.publish("t", "1", QoS::AtLeastOnce, false).await;
    broker.stop().await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "stopped broker must refuse connections"
    );
    assert!(support::wait_for(T, || !publisher.is_connected()).await);

    let broker = InProcessBroker::start_on(port).await;
    assert_eq!(broker.port(), port);
    assert!(support::wait_for(T, || publisher.is_connected()).await);
    let mut sub = Subscriber::connect(port, &["t"]).await;
    publisher.publish("t", "2", QoS::AtLeastOnce, false).await;
    assert_eq!(&sub.expect_messages(1, T).await[0].payload[..], b"2");

    // The TestBroker wrapper restarts on the same port too.
    let mut tb = TestBroker::InProcess(broker);
    tb.restart().await;
    assert_eq!(tb.port(), port);
    assert!(support::wait_for(T, || publisher.is_connected()).await);
    publisher.publish("t", "3", QoS::AtLeastOnce, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_persistent_session_restored() {
    let broker = InProcessBroker::start().await;
    // Raw rumqttc client with clean_session=false.
    let mut opts = rumqttc::MqttOptions::new("persistent-client", "127.0.0.1", broker.port());
    opts.set_clean_session(false);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    let task = tokio::spawn(async move {
        let mut connacks = Vec::new();
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                    connacks.push(c.session_present);
                    if connacks.len() == 2 {
                        // Hand the event loop back so the connection stays open.
                        return (connacks, eventloop);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    client
        .subscribe("keep/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    assert!(broker.wait_for_subscription("keep/#", T).await);
    broker.drop_connections();
    let (connacks, _eventloop) = tokio::time::timeout(T, task)
        .await
        .expect("reconnect in time")
        .expect("eventloop task");
    assert_eq!(connacks, vec![false, true]);
    assert!(broker.wait_for_subscription("keep/#", T).await);
}

// ---------------------------------------------------------------------------
// mosquitto
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pubsub_and_restart() {
    let Some(mut mosq) = Mosquitto::start().await else {
        return;
    };
    let port = mosq.port();
    let mut sub = Subscriber::connect(port, &["pv/+/soc"]).await;
    let publisher = Publisher::connect(port).await;
    publisher
        .publish("pv/d/soc", "42", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("pv/d/other", "x", QoS::AtLeastOnce, false)
        .await;
    let got = sub.expect_messages(1, T).await;
    assert_eq!(&got[0].payload[..], b"42");

    // 1 MiB through mosquitto.
    let mut big = Subscriber::connect(port, &["big"]).await;
    publisher
        .publish("big", vec![7u8; 1024 * 1024], QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        big.expect_messages(1, T).await[0].payload.len(),
        1024 * 1024
    );

    mosq.stop().await;
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    assert!(support::wait_for(T, || !publisher.is_connected()).await);
    mosq.restart().await;
    assert_eq!(mosq.port(), port);
    assert!(support::wait_for(T, || publisher.is_connected()).await);
    publisher
        .publish("pv/d/soc", "43", QoS::AtLeastOnce, true)
        .await;
    let mut late = Subscriber::connect(port, &["pv/+/soc"]).await;
    let got = late.expect_messages(1, T).await;
    assert!(got[0].retain);
    assert!(Mosquitto::sub_path().is_some());

    let mut tb = TestBroker::Mosquitto(mosq);
    assert_eq!(tb.kind(), "mosquitto");
    tb.stop().await;
}

// ---------------------------------------------------------------------------
// recording API
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_records_raw_post_keep_alive_and_chunked() {
    let api = RecordingApi::start().await;
    assert!(api.url().starts_with("http://127.0.0.1:"));
    let mut stream = TcpStream::connect(("127.0.0.1", api.port()))
        .await
        .expect("connect to api");
    let mut buf = Vec::new();
    let body = r#"[{"metric_name":"battery_soc","metric_value":55.5,"unit":"%","timestamp":"2024-01-01T00:00:00Z"}]"#;
    stream
        .write_all(&post_bytes("/api/devices/P3%2F01/measurements/batch", body))
        .await
        .expect("write request");
    let (status, headers, resp) = read_response(&mut stream, &mut buf).await;
    assert_eq!(status, 201);
    assert_eq!(resp, json!({"created": 1, "device_id": "P3/01"}));
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json")
    );

    // Same connection (keep-alive): GET /health.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write health");
    let (status, _, resp) = read_response(&mut stream, &mut buf).await;
    assert_eq!(status, 200);
    assert_eq!(resp, json!({"status": "healthy", "mqtt_connected": true}));

    // Chunked body, still the same connection.
    let part1 = r#"[{"metric_name":"grid_power","#;
    let part2 = r#""metric_value":-120}]"#;
    let chunked = format!(
        "POST /api/devices/dev2/measurements/batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{part1}\r\n{:x}\r\n{part2}\r\n0\r\n\r\n",
        part1.len(),
        part2.len()
    );
    stream
        .write_all(chunked.as_bytes())
        .await
        .expect("write chunked");
    let (status, _, _) = read_response(&mut stream, &mut buf).await;
    assert_eq!(status, 201);

    let m = api.wait_for_measurements(2, T).await;
    assert_eq!(m[0]["device_id"], "P3/01");
    assert_eq!(m[0]["metric_value"], 55.5);
    assert_eq!(m[1]["device_id"], "dev2");
    assert_eq!(m[1]["metric_value"], -120);

    let reqs = api.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/api/devices/P3%2F01/measurements/batch");
    assert_eq!(reqs[0].header("Content-Type"), Some("application/json"));
    assert_eq!(reqs[0].status_returned, 201);
    assert_eq!(reqs[0].json()[0]["metric_name"], "battery_soc");
    assert_eq!(reqs[1].path, "/health");
    assert_eq!(reqs[2].body, format!("{part1}{part2}").into_bytes());

    // Root and unknown route.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write pipelined");
    let (status, _, resp) = read_response(&mut stream, &mut buf).await;
    assert_eq!(status, 200);
    assert_eq!(resp["name"], "PV3 Monitor API");
    let (status, headers, _) = read_response(&mut stream, &mut buf).await;
    assert_eq!(status, 404);
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "connection" && v == "close")
    );
    let mut rest = Vec::new();
    let n = stream.read_to_end(&mut rest).await.expect("read to EOF");
    assert_eq!(n, 0, "server closes after Connection: close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_fail_next_then_success_with_retry_after() {
    let api = RecordingApi::start().await;
    let client = http_client();
    let url = format!("{}/api/devices/d1/measurements/batch", api.url());
    let body = json!([{"metric_name": "soc", "metric_value": 1.0}]);
    api.fail_next(2, 503);
    api.set_retry_after(Some(3));
    for _ in 0..2 {
        let r = with_json(client.post(&url), &body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("3")
        );
        let v = json_of(r).await;
        assert_eq!(v, json!({"detail": "injected"}));
    }
    // GETs are never injected.
    let r = client
        .get(format!("{}/health", api.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let r = with_json(client.post(&url), &body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(api.measurements().len(), 1);

    api.fail_all(500);
    for _ in 0..3 {
        let r = with_json(client.post(&url), &body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 500);
    }
    api.recover();
    let r = with_json(client.post(&url), &body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    let statuses: Vec<u16> = api.requests().iter().map(|r| r.status_returned).collect();
    assert_eq!(statuses, vec![503, 503, 200, 201, 500, 500, 500, 201]);
    assert_eq!(api.measurements().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rejects_bad_batches_with_422() {
    let api = RecordingApi::start().await;
    let client = http_client();
    let url = format!("{}/api/devices/d1/measurements/batch", api.url());
    let bad_bodies = [
        "not json".to_string(),
        json!({"metric_name": "x", "metric_value": 1}).to_string(),
        json!([1, 2]).to_string(),
        json!([{"metric_name": 5, "metric_value": 1}]).to_string(),
        json!([{"metric_name": "x", "metric_value": "1"}]).to_string(),
        json!([{"metric_name": "x"}]).to_string(),
    ];
    for body in &bad_bodies {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 422, "body {body}");
        let v = json_of(r).await;
        assert!(v["detail"].is_string());
    }
    assert!(api.measurements().is_empty());

    let alarms = json!([{"code": "E1", "active": true}, {"code": "E2", "active": false}]);
    let r = with_json(
        client.post(format!("{}/api/devices/d1/alarms", api.url())),
        &alarms,
    )
    .send()
    .await
    .expect("post alarms");
    assert_eq!(r.status().as_u16(), 201);
    let v = json_of(r).await;
    assert_eq!(
        v,
        json!({"device_id": "d1", "alarms_updated": 2, "events_created": 0})
    );
    let recorded = api.wait_for_alarms(2, T).await;
    assert_eq!(
        recorded[1],
        ("d1".to_string(), json!({"code": "E2", "active": false}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_get_endpoints_after_seeding() {
    let api = RecordingApi::start().await;
    let client = http_client();
    let get = |path: &str| {
        let client = client.clone();
        let url = format!("{}{path}", api.url());
        async move {
            let r = client.get(url).send().await.expect("get");
            let status = r.status().as_u16();
            (status, json_of(r).await)
        }
    };
    let (status, v) = get("/api/devices/p3/current").await;
    assert_eq!(
        (status, v),
        (404, json!({"detail": "No measurements found"}))
    );

    api.seed_measurement("p3", "battery_soc", 50.0, "%", "2024-05-01T10:00:00Z");
    api.seed_measurement("p3", "battery_soc", 60.0, "%", "2024-05-01T12:00:00+01:00");
    api.seed_measurement("p3", "battery_soc", 40.0, "%", "2024-05-01T09:00:00Z");
    api.seed_measurement("p3", "grid_power", -5.5, "W", "2024-05-01T11:30:00.5Z");
    api.seed_measurement("other", "battery_soc", 1.0, "%", "2024-05-01T11:00:00Z");

    // 12:00+01:00 == 11:00Z is the newest soc; 11:30:00.5Z the newest overall.
    let (status, v) = get("/api/devices/p3/current").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"battery_soc": 60.0, "grid_power": -5.5, "timestamp": "2024-05-01T11:30:00.5Z"})
    );
    let (status, v) = get("/api/devices/p3/metrics/battery_soc").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"metric_name": "battery_soc", "metric_value": 60.0, "unit": "%", "timestamp": "2024-05-01T12:00:00+01:00"})
    );
    assert_eq!(get("/api/devices/p3/metrics/nope").await.0, 404);
    assert_eq!(get("/api/devices/p3").await.0, 200);
    assert_eq!(get("/api/devices/ghost").await.0, 404);
    let (_, list) = get("/api/devices").await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("device list")
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["other", "p3"]);
    // Seeded data is not reported as received measurements.
    assert!(api.measurements().is_empty());
    assert_eq!(
        parse_rfc3339_nanos("1970-01-01T00:00:01.5Z"),
        Some(1_500_000_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_stop_and_restart_keeps_records() {
    let api = RecordingApi::start().await;
    let port = api.port();
    let client = http_client();
    let url = format!("{}/api/devices/d/measurements/batch", api.url());
    let post = |v: f64| {
        with_json(
            client.post(&url),
            &json!([{"metric_name": "soc", "metric_value": v}]),
        )
        .send()
    };
    assert_eq!(post(1.0).await.expect("post").status().as_u16(), 201);
    api.stop().await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "stopped api must refuse connections"
    );
    assert!(post(2.0).await.is_err());

    let mut api2 = RecordingApi::start_on_with(port, &api).await;
    assert_eq!(post(3.0).await.expect("post").status().as_u16(), 201);
    api2.restart().await;
    assert_eq!(post(4.0).await.expect("post").status().as_u16(), 201);
    let values: Vec<f64> = api2
        .wait_for_measurements(3, T)
        .await
        .iter()
        .filter_map(|m| m["metric_value"].as_f64())
        .collect();
    assert_eq!(values, vec![1.0, 3.0, 4.0]);
    assert_eq!(api.measurements().len(), 3);

    // A fresh start_on has an empty store.
    api2.stop().await;
    let api3 = RecordingApi::start_on(port).await;
    assert!(api3.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_delay_and_wait_for_requests() {
    let api = RecordingApi::start().await;
    api.set_delay(Duration::from_millis(300));
    let url = format!("{}/health", api.url());
    let started = std::time::Instant::now();
    let r = http_client().get(url).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(api.wait_for_requests(1, T).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "expected at least 1 measurements")]
async fn api_wait_for_measurements_times_out_with_message() {
    let api = RecordingApi::start().await;
    api.wait_for_measurements(1, Duration::from_millis(50))
        .await;
}

// ---------------------------------------------------------------------------
// proxy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cut_and_restore() {
    let api = RecordingApi::start().await;
    let proxy = TcpProxy::start(api.port()).await;
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect via proxy");
    let mut buf = Vec::new();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut stream, &mut buf).await.0, 200);
    assert_eq!(proxy.live(), 1);

    proxy.cut();
    assert!(proxy.is_cut());
    // The live connection is closed.
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(T, stream.read(&mut byte))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // New connections are closed at once.
    let mut fresh = TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect while cut");
    let _ = fresh
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let n = tokio::time::timeout(T, fresh.read(&mut byte))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(proxy.refused() >= 1);

    proxy.restore();
    let r = http_client()
        .get(format!("http://127.0.0.1:{}/", proxy.port()))
        .send()
        .await
        .expect("get via restored proxy");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_in_front_of_broker() {
    let broker = InProcessBroker::start().await;
    let proxy = TcpProxy::start(broker.port()).await;
    let publisher = Publisher::connect(proxy.port()).await;
    publisher.publish("x", "1", QoS::AtLeastOnce, false).await;
    proxy.cut();
    assert!(support::wait_for(T, || !publisher.is_connected()).await);
    proxy.restore();
    assert!(support::wait_for(T, || publisher.is_connected()).await);
    publisher.publish("x", "2", QoS::AtLeastOnce, false).await;
    assert!(broker.wait_for_received(2, T).await);
}

// ---------------------------------------------------------------------------
// process helpers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pv3_process_spawns_and_exits() {
    let mut p = Pv3Process::spawn(&["--help"], &[("MQTT_HOST", "127.0.0.1")]);
    let status = p.wait_exit(T).await.expect("pv3 exits");
    // Exit code depends on the real CLI; it must just be readable.
    assert!(status.code().is_some());
    let out = run_pv3(&["--help"], &[], Some(b"ignored"));
    assert!(out.status.code().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_capture_and_signals() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo out1; echo err1 >&2; echo \"rust_log=${RUST_LOG:-unset}\" >&2; exec sleep 30",
    ])
    .env("RUST_LOG", "debug");
    hermetic(&mut cmd);
    let mut p = Pv3Process::spawn_cmd(&mut cmd);
    assert!(
        p.wait_for_stderr("rust_log=unset", T).await,
        "stderr: {}",
        p.stderr()
    );
    assert!(p.wait_for_stdout("out1", T).await);
    assert_eq!(p.stdout_lines(), vec!["out1"]);
    assert!(p.stderr().starts_with("err1\n"));
    assert!(p.wait_exit(Duration::from_millis(50)).await.is_none());
    p.sigterm();
    let status = p.wait_exit(T).await.expect("exits after SIGTERM");
    assert!(!status.success());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15));
    assert!(!p.wait_for_stderr("never printed", T).await);
}
