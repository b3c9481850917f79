//! The forwarder driven in-process: MQTT → decode → forwarder → recording
//! API, with the queue behind it wrapped to be slow on purpose, and the time
//! from an API's return to the first delivery measured.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pv3::api::ApiClient;
use pv3::forward::{
    Batch, DeadLetters, ForwardOptions, ForwardStats, Forwarder, Lease, Len, Pushed, Queue,
    QueueError, QueueFuture, SpoolQueue, Tiered,
};
use pv3::mqtt::{self, MqttSettings};
use pv3::pipeline::Pipeline;
use pv3::state_dir::StateDir;
use rumqttc::QoS;
use tokio::sync::Semaphore;

use support::api::RecordingApi;
use support::broker::{InProcessBroker, Publisher};
use support::fixtures::DEVICE;

const T: Duration = Duration::from_secs(30);

/// A queue whose pushes wait until the test opens the gate: a spool on a
/// disk that takes as long as the test likes to commit.
struct Gated {
    inner: Box<dyn Queue>,
    gate: Arc<Semaphore>,
    waiting: Arc<AtomicBool>,
}

impl Queue for Gated {
    fn push(&mut self, batches: Vec<Batch>) -> QueueFuture<'_, Pushed> {
        Box::pin(async move {
            self.waiting.store(true, Ordering::SeqCst);
            let permit = self.gate.acquire().await;
            drop(permit);
            self.waiting.store(false, Ordering::SeqCst);
            self.inner.push(batches).await
        })
    }
    fn take(&mut self, max: usize) -> QueueFuture<'_, Result<Option<Lease>, QueueError>> {
        self.inner.take(max)
    }
    fn ack(&mut self, lease: Lease) -> QueueFuture<'_, Result<(), QueueError>> {
        self.inner.ack(lease)
    }
    fn give_back(&mut self, lease: Lease) -> QueueFuture<'_, Pushed> {
        self.inner.give_back(lease)
    }
    fn len(&self) -> Len {
        self.inner.len()
    }
    fn in_memory(&self) -> Len {
        self.inner.in_memory()
    }
    fn durable(&self) -> bool {
        true
    }
    fn close(self: Box<Self>) -> QueueFuture<'static, Vec<Batch>> {
        self.gate.add_permits(1 << 20);
        self.inner.close()
    }
}

fn settings(port: u16) -> MqttSettings {
    MqttSettings {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        tls: false,
        ca_file: None,
        client_id: mqtt::default_client_id("forwarder-test"),
        keep_alive: Duration::from_secs(30),
        reconnect_initial: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(300),
        stale_after: None,
    }
}

fn client(api: &RecordingApi) -> ApiClient {
    ApiClient::new(
        api.url().parse().expect("url"),
        None,
        Duration::from_secs(5),
    )
    .expect("client")
}

fn spool(dir: &tempfile::TempDir) -> SpoolQueue {
    let state = StateDir::new(dir.path());
    let letters = Arc::new(DeadLetters::new(state.dead_letters()));
    SpoolQueue::open(&state, 1 << 30, letters).expect("spool")
}

fn options() -> ForwardOptions {
    ForwardOptions {
        linger: Duration::from_millis(20),
        retry_initial: Duration::from_millis(200),
        // collect's default: without the probe, a return would wait this long.
        retry_max: Duration::from_secs(60),
        ..ForwardOptions::default()
    }
}

/// collect's loop, in-process: messages → pipeline → forwarder. Counts
/// what it has read.
fn read_into(
    forwarder: Arc<Forwarder>,
    port: u16,
    read: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let mut subscription =
        mqtt::subscribe(&settings(port), vec![pv3::topic::device_filter(DEVICE)])
            .expect("subscribe");
    tokio::spawn(async move {
        let mut pipeline = Pipeline::new(5.0, None);
        while let Some(msg) = subscription.recv().await {
            read.fetch_add(1, Ordering::SeqCst);
            if let Ok(Some(reading)) = pipeline.process(&msg.topic, &msg.payload, msg.received)
                && forwarder.send(reading).await.is_err()
            {
                break;
            }
        }
    })
}

async fn publish_charges(port: u16, range: std::ops::Range<i64>) {
    let publisher = Publisher::connect(port).await;
    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
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

#[tokio::test(flavor = "current_thread")]
async fn mqtt_keeps_being_read_while_a_spool_commit_hangs() {
    let broker = InProcessBroker::start().await;
    let api = RecordingApi::start().await;
    api.fail_all(503);
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Semaphore::new(0));
    let waiting = Arc::new(AtomicBool::new(false));
    let gated = Gated {
        inner: Box::new(spool(&dir)),
        gate: gate.clone(),
        waiting: waiting.clone(),
    };
    let queue = Tiered::new(100_000, Box::new(gated));
    let forwarder = Arc::new(Forwarder::with_queue(
        client(&api),
        options(),
        Box::new(queue),
        None,
    ));
    let stats = forwarder.stats();
    let read = Arc::new(AtomicU64::new(0));
    let reader = read_into(forwarder.clone(), broker.port(), read.clone());
    assert!(
        broker
            .wait_for_subscription(&pv3::topic::device_filter(DEVICE), T)
            .await
    );

    // The first failure starts spooling, and the spool's commit hangs.
    publish_charges(broker.port(), 0..10).await;
    assert!(support::wait_for(T, || waiting.load(Ordering::SeqCst)).await);
    // On this one-thread runtime (collect's), messages keep coming in.
    publish_charges(broker.port(), 10..300).await;
    assert!(
        support::wait_for(T, || read.load(Ordering::SeqCst) == 300).await,
        "read {} of 300 while the commit hung",
        read.load(Ordering::SeqCst)
    );
    assert!(
        waiting.load(Ordering::SeqCst),
        "the commit is still hanging"
    );

    gate.add_permits(1 << 20);
    api.recover();
    api.wait_for_measurements(300, T).await;
    assert!(support::wait_for(T, || ForwardStats::get(&stats.delivered) == 300).await);
    reader.abort();
    let _ = reader.await;
    let forwarder = Arc::try_unwrap(forwarder).ok().expect("sole owner");
    let report = forwarder.finish(Some(T)).await;
    assert!(report.is_complete(), "{report:?}");
}

/// Time from the API's return to the first delivery after it.
async fn recovery(api: &mut RecordingApi, refused: bool) -> Duration {
    let broker = InProcessBroker::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Tiered::new(100_000, Box::new(spool(&dir)));
    let forwarder = Arc::new(Forwarder::with_queue(
        client(api),
        options(),
        Box::new(queue),
        None,
    ));
    let stats = forwarder.stats();
    let read = Arc::new(AtomicU64::new(0));
    let reader = read_into(forwarder.clone(), broker.port(), read.clone());
    assert!(
        broker
            .wait_for_subscription(&pv3::topic::device_filter(DEVICE), T)
            .await
    );
    if refused {
        api.stop().await;
    } else {
        api.fail_all(503);
    }
    publish_charges(broker.port(), 0..20).await;
    // Let the backoff grow for a while: past several doublings.
    assert!(support::wait_for(T, || ForwardStats::get(&stats.failed_attempts) >= 4).await);
    let back = tokio::time::Instant::now();
    if refused {
        api.restart().await;
    } else {
        api.recover();
    }
    assert!(support::wait_for(T, || ForwardStats::get(&stats.delivered) > 0).await);
    let took = back.elapsed();
    api.wait_for_measurements(20, T).await;
    reader.abort();
    let _ = reader.await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_soon_after_the_api_returns() {
    let mut api = RecordingApi::start().await;
    let refused = recovery(&mut api, true).await;
    let mut api = RecordingApi::start().await;
    let answering = recovery(&mut api, false).await;
    // A figure, not a timed assertion (shared machines are noisy): see
    // docs/performance.md for what it should be.
    println!(
        "first delivery after the API's return: {:.2} s after connection refused, {:.2} s after 503s",
        refused.as_secs_f64(),
        answering.as_secs_f64()
    );
}
