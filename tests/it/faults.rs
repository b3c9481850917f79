//! Never lose a reading, round two (issue 10): a full disk, readings that
//! cannot be kept at a stop, a corrupt spool, a proxy's 413, an HTML 200, a
//! slow API. The forwarder runs in-process against the recording API; disk
//! faults come from a redb storage backend that fails its writes on demand
//! (no root, no small filesystem needed). Every test accounts for each
//! reading: delivered exactly once, or counted.

use crate::support;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pv3::forward::{
    DeadLetters, ForwardOptions, ForwardStats, Forwarder, Queue, SpoolQueue, Tiered,
};
use pv3::pipeline::Pipeline;
use pv3::reading::{Reading, Timestamp};
use pv3::spool::Opener;
use pv3::state_dir::StateDir;
use redb::StorageBackend;
use redb::backends::FileBackend;
use serde_json::Value;

use support::api::RecordingApi;
use support::fixtures::DEVICE;
use support::forward::{api_client, api_client_with_timeout, spool_queue_with};

const T: Duration = Duration::from_secs(30);

/// redb's file backend, failing every write, resize and sync with "no space
/// left on device" while `full` is set; with `growth_only`, only writes and
/// resizes that would grow the file, and syncs, fail (a full filesystem:
/// reads still work, commits do not).
#[derive(Debug)]
struct FullDisk {
    inner: FileBackend,
    full: Arc<AtomicBool>,
    growth_only: bool,
    /// Bytes of file the disk has room for: a write past them writes what
    /// fits, then fails, as a real filesystem does (`u64::MAX`: no limit).
    room: u64,
}

fn no_space() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "No space left on device (injected)",
    )
}

impl FullDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(no_space())
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FullDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if !self.growth_only || len > self.inner.len()? {
            self.check()?;
        }
        if len > self.room {
            return Err(no_space());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if !self.growth_only || offset + data.len() as u64 > self.inner.len()? {
            self.check()?;
        }
        if offset + data.len() as u64 > self.room {
            let fits = usize::try_from(self.room.saturating_sub(offset)).unwrap_or(0);
            self.inner.write(offset, &data[..fits.min(data.len())])?;
            return Err(no_space());
        }
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(
        &self,
        s: Bound<u64>,
        e: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

fn full_disk_opener(full: Arc<AtomicBool>) -> Opener {
    disk_opener(full, false)
}

fn disk_opener(full: Arc<AtomicBool>, growth_only: bool) -> Opener {
    room_opener(full, growth_only, u64::MAX, Arc::default())
}

/// A disk with `room` bytes free for the spool file; `calls` counts the
/// spool's attempts to open or create it.
fn room_opener(
    full: Arc<AtomicBool>,
    growth_only: bool,
    room: u64,
    calls: Arc<std::sync::atomic::AtomicU64>,
) -> Opener {
    Arc::new(move |path: &Path| {
        calls.fetch_add(1, Ordering::SeqCst);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        let inner = FileBackend::new(file)?;
        pv3::spool::builder().create_with_backend(FullDisk {
            inner,
            full: full.clone(),
            growth_only,
            room,
        })
    })
}

fn options() -> ForwardOptions {
    ForwardOptions {
        linger: Duration::from_millis(20),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..ForwardOptions::default()
    }
}

/// A reading of one measurement, `battery_power` = `n` (a sequence number).
fn charge(pipeline: &mut Pipeline, n: i64) -> Reading {
    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
    pipeline
        .process(
            &topic,
            format!("{{\"power\":{n}}}").as_bytes(),
            Timestamp::now(),
        )
        .expect("decodes")
        .expect("a reading")
}

async fn send(forwarder: &Forwarder, pipeline: &mut Pipeline, range: std::ops::Range<i64>) {
    for n in range {
        forwarder.send(charge(pipeline, n)).await.expect("taken");
    }
}

/// How often the API stored each sequence number.
fn tally(api: &RecordingApi) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for m in api.measurements() {
        if m["metric_name"] == "battery_power"
            && let Some(v) = m["metric_value"].as_f64()
        {
            *seen.entry(v as i64).or_default() += 1;
        }
    }
    seen
}

fn exactly_once(api: &RecordingApi, range: std::ops::Range<i64>) {
    let seen = tally(api);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<i64> = range.filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "never stored: {missing:?}");
}

async fn wait_stat(stats: &ForwardStats, what: fn(&ForwardStats) -> bool) {
    assert!(support::wait_for(T, || what(stats)).await, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_that_cannot_be_created_leaves_no_file_behind() {
    // A nearly full disk: creating the spool writes part of redb's header,
    // then fails. Each retry must start clean, not find a torn file, call
    // it corrupt and move it aside (24 spool.redb.corrupt-* in 30 s).
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let opener = room_opener(Arc::default(), false, 512, calls.clone());
    let queue = Tiered::new(100_000, Box::new(spool_queue_with(dir.path(), opener)));
    let forwarder = Forwarder::with_queue(api_client(&api), options(), Box::new(queue), None);
    let mut pipeline = Pipeline::new(5.0, None);
    api.fail_all(503);
    send(&forwarder, &mut pipeline, 0..100).await;
    // Every batch after the first failure tries the disk again (at most
    // once a second): wait for three attempts at the file.
    assert!(
        support::wait_for(T, || calls.load(Ordering::SeqCst) >= 3).await,
        "the spool was not tried three times"
    );
    send(&forwarder, &mut pipeline, 100..200).await;
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read the state directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("spool.redb"))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
    api.recover();
    let report = forwarder.finish(Some(T)).await;
    exactly_once(&api, 0..200);
    assert_eq!((report.delivered, report.dropped), (200, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_readings_in_memory_and_sends_each_once() {
    // The whole disk refuses writes: memory keeps everything, counted.
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let full = Arc::new(AtomicBool::new(true));
    let queue = Tiered::new(
        100_000,
        Box::new(spool_queue_with(dir.path(), full_disk_opener(full.clone()))),
    );
    let forwarder = Forwarder::with_queue(api_client(&api), options(), Box::new(queue), None);
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);

    // The disk is full from the start and the API is down: memory keeps all.
    api.fail_all(503);
    send(&forwarder, &mut pipeline, 0..500).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.failed_attempts) >= 3).await;
    api.recover();
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) == 500).await;

    full.store(false, Ordering::SeqCst);
    let report = forwarder.finish(Some(T)).await;
    exactly_once(&api, 0..500);
    assert_eq!((report.delivered, report.dropped), (500, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_while_draining_never_resends_what_was_delivered() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let full = Arc::new(AtomicBool::new(false));
    let opener = disk_opener(full.clone(), true);
    let queue = Tiered::new(100_000, Box::new(spool_queue_with(dir.path(), opener)));
    let opts = ForwardOptions {
        batch_size: 50,
        ..options()
    };
    let forwarder = Forwarder::with_queue(api_client(&api), opts, Box::new(queue), None);
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);
    // Spooled while the disk has room; then it fills up while draining, so
    // delivered batches cannot be removed: they must not be sent again.
    api.fail_all(503);
    send(&forwarder, &mut pipeline, 0..300).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.spool_measurements) == 300).await;
    full.store(true, Ordering::SeqCst);
    api.recover();
    // The first drained POST is delivered, its removal fails (the next
    // may be delivered too: its take is answered before that commit).
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) >= 50).await;
    // New readings still go out (from memory) while the disk is full.
    send(&forwarder, &mut pipeline, 300..301).await;
    assert!(
        support::wait_for(T, || tally(&api).contains_key(&300)).await,
        "the new reading never reached the API while the disk was full"
    );
    // Room again: the rest of the spool drains, the delivered part is not
    // sent again.
    full.store(false, Ordering::SeqCst);
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) == 301).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.spool_measurements) == 0).await;
    let report = forwarder.finish(Some(T)).await;
    exactly_once(&api, 0..301);
    assert_eq!(api.measurements().len(), 301);
    assert_eq!((report.delivered, report.dropped), (301, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_that_cannot_be_kept_at_a_stop_are_counted_as_dropped() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let full = Arc::new(AtomicBool::new(true));
    let queue = Tiered::new(
        100_000,
        Box::new(spool_queue_with(dir.path(), full_disk_opener(full))),
    );
    let forwarder = Forwarder::with_queue(api_client(&api), options(), Box::new(queue), None);
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);
    api.fail_all(503);
    send(&forwarder, &mut pipeline, 0..1000).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.failed_attempts) >= 2).await;
    let report = forwarder.finish(Some(Duration::from_millis(200))).await;
    assert_eq!(api.measurements().len(), 0);
    assert_eq!(report.delivered, 0);
    assert_eq!(report.left_in_spool, 0, "{report:?}");
    assert_eq!(
        report.dropped, 1000,
        "every reading lost is counted: {report:?}"
    );
    assert_eq!(ForwardStats::get(&stats.dropped), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_halves_the_batch_and_every_post_honours_the_batch_size() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let letters = Arc::new(DeadLetters::new(state.dead_letters()));
    let spool = SpoolQueue::open(&state, 1 << 30, letters.clone()).expect("spool");
    let queue = Tiered::new(100_000, Box::new(spool));
    let opts = ForwardOptions {
        batch_size: 100,
        ..options()
    };
    let forwarder = Forwarder::with_queue(api_client(&api), opts, Box::new(queue), Some(letters));
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);
    // A proxy that takes bodies up to 8 KB: about 60 measurements.
    api.set_max_body(Some(8 * 1024));
    api.fail_all(503);
    send(&forwarder, &mut pipeline, 0..2000).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.spool_measurements) == 2000).await;
    api.recover();
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) == 2000).await;
    let report = forwarder.finish(Some(T)).await;
    exactly_once(&api, 0..2000);
    assert_eq!(report.rejected, 0, "{report:?}");
    assert!(!dir.path().join("rejected.jsonl").exists());
    for request in api.requests_to("POST", "/api/devices") {
        let items = request.json();
        let n = items.as_array().map_or(0, Vec::len);
        assert!(n <= 100, "a POST of {n} measurements");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_an_html_page_is_not_a_delivery() {
    let api = RecordingApi::start().await;
    let forwarder = Forwarder::start(api_client(&api), options());
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);
    api.answer_html(true);
    send(&forwarder, &mut pipeline, 0..50).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.failed_attempts) >= 2).await;
    assert_eq!(ForwardStats::get(&stats.delivered), 0);
    api.answer_html(false);
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) == 50).await;
    let report = forwarder.finish(Some(T)).await;
    exactly_once(&api, 0..50);
    assert!(report.is_complete(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_gets_full_batches_and_unacknowledged_readings_go_to_disk() {
    let api = RecordingApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let full = Arc::new(AtomicBool::new(false));
    let queue = Tiered::new(
        100_000,
        Box::new(spool_queue_with(dir.path(), full_disk_opener(full))),
    );
    let queue = queue.spool_after(Duration::from_millis(300));
    let forwarder = Forwarder::with_queue(api_client(&api), options(), Box::new(queue), None);
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);
    // Each POST takes a second and succeeds.
    api.set_delay(Duration::from_secs(1));
    for chunk in 0..20 {
        send(&forwarder, &mut pipeline, chunk * 50..chunk * 50 + 50).await;
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not waiting
    }
    // Readings waiting longer than `spool_after` are on disk, not only in
    // memory, though the API never failed.
    wait_stat(&stats, |s| ForwardStats::get(&s.spooled) > 0).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) == 1000).await;
    let posts = ForwardStats::get(&stats.posts);
    let report = forwarder.finish(Some(T)).await;
    exactly_once(&api, 0..1000);
    assert!(report.is_complete(), "{report:?}");
    // 1,000 readings in 20 linger-sized bursts: a slow API gets fewer,
    // larger POSTs, not one per burst.
    assert!(posts < 20, "{posts} POSTs");
}

/// Random page corruption: whatever redb makes of it, the spool thread
/// survives, the file is moved aside or read, and the queue keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spool_content_crashes_the_spool() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    // A longer run: PV3_CORRUPTION_SEEDS=4000 PV3_CORRUPTION_FIRST_SEED=...
    let first = var("PV3_CORRUPTION_FIRST_SEED", 0);
    for seed in first..first + var("PV3_CORRUPTION_SEEDS", 24) {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let letters = Arc::new(DeadLetters::new(state.dead_letters()));
        {
            let mut q: Box<dyn Queue> =
                Box::new(SpoolQueue::open(&state, 1 << 30, letters.clone()).expect("spool"));
            let mut pipeline = Pipeline::new(5.0, None);
            let mut batcher = pv3::forward::Batcher::new(10, Duration::ZERO, false);
            let mut batches = Vec::new();
            for n in 0..2000 {
                batcher.add(&charge(&mut pipeline, n), &mut batches);
            }
            let pushed = q.push(batches).await;
            assert!(pushed.refused.is_empty());
            q.close().await;
        }
        let path = state.spool();
        let mut bytes = std::fs::read(&path).expect("spool file");
        let mut rng = fastrand::Rng::with_seed(seed);
        let pages = bytes.len() / 4096;
        let page = rng.usize(0..pages.max(1));
        let end = ((page + 1) * 4096).min(bytes.len());
        for b in &mut bytes[page * 4096..end] {
            *b = rng.u8(..);
        }
        std::fs::write(&path, &bytes).expect("corrupt");

        let opened = SpoolQueue::open(&state, 1 << 30, letters.clone());
        let mut q: Box<dyn Queue> = match opened {
            Ok(q) => Box::new(q),
            Err(e) => panic!("seed {seed}: a corrupt spool must not stop collect: {e:#}"),
        };
        let mut taken = 0;
        while let Ok(Some(lease)) = q.take(100).await {
            taken += lease.batch.count;
            if q.ack(lease).await.is_err() || taken > 2000 {
                break;
            }
        }
        // Whatever happened, the queue still takes and gives.
        let mut pipeline = Pipeline::new(5.0, None);
        let mut batcher = pv3::forward::Batcher::new(1, Duration::ZERO, false);
        let mut fresh = Vec::new();
        batcher.add(&charge(&mut pipeline, 7), &mut fresh);
        let pushed = q.push(fresh).await;
        assert!(pushed.refused.is_empty(), "seed {seed}: {:?}", pushed.error);
        let mut found = false;
        while let Ok(Some(lease)) = q.take(100).await {
            let body: Value = serde_json::from_slice(&lease.batch.body).unwrap_or(Value::Null);
            found |= body[0]["metric_value"] == 7.0 && lease.batch.count == 1;
            if q.ack(lease).await.is_err() {
                break;
            }
        }
        assert!(found, "seed {seed}: the new reading comes back out");
        q.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_timed_out_is_not_stored_twice() {
    let api = RecordingApi::start().await;
    // Slower than the client's timeout, but it stores what it was sent.
    api.set_post_delay(Duration::from_millis(800));
    let client = api_client_with_timeout(&api, Duration::from_millis(500));
    let forwarder = Forwarder::start(client, options());
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);
    send(&forwarder, &mut pipeline, 0..50).await;
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) == 50).await;
    api.set_post_delay(Duration::ZERO);
    let report = forwarder.finish(Some(T)).await;
    exactly_once(&api, 0..50);
    assert!(report.is_complete(), "{report:?}");
    assert!(
        ForwardStats::get(&stats.failed_attempts) >= 1,
        "it did time out"
    );
}

/// An older backend without the history endpoint (404): a POST that timed
/// out cannot be checked, so it is sent again (at-least-once, as before),
/// never held back for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_timed_out_is_sent_again_when_the_api_has_no_history() {
    let api = RecordingApi::start().await;
    api.set_post_delay(Duration::from_millis(800));
    api.fail_reads(Some(404));
    let client = api_client_with_timeout(&api, Duration::from_millis(500));
    let forwarder = Forwarder::start(client, options());
    let stats = forwarder.stats();
    let mut pipeline = Pipeline::new(5.0, None);
    send(&forwarder, &mut pipeline, 0..50).await;
    // The first POSTs time out and are stored late; once the API is quick
    // again, what timed out goes again.
    wait_stat(&stats, |s| ForwardStats::get(&s.failed_attempts) >= 1).await;
    api.set_post_delay(Duration::ZERO);
    wait_stat(&stats, |s| ForwardStats::get(&s.delivered) == 50).await;
    let report = forwarder.finish(Some(T)).await;
    assert!(report.is_complete(), "{report:?}");
    let seen = tally(&api);
    assert!((0..50).all(|i| seen.contains_key(&i)), "{seen:?}");
}
