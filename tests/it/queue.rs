//! One test suite for the queue interface, run against every
//! implementation: memory, the on-disk spool, and the tiered rule.

use crate::support;

use std::sync::Arc;

use bytes::Bytes;
use pv3::forward::{Batch, BatchKind, MemoryQueue, Queue, Tiered};

use support::forward::spool_queue;

fn batch(device: &str, values: &[i64]) -> Batch {
    let body = format!(
        "[{}]",
        values
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    Batch {
        device: Arc::from(device),
        kind: BatchKind::Measurements,
        body: Bytes::from(body),
        count: values.len(),
    }
}

fn alarms(device: &str) -> Batch {
    Batch {
        device: Arc::from(device),
        kind: BatchKind::Alarms,
        body: Bytes::from_static(b"{\"fan_lock\":true}"),
        count: 0,
    }
}

fn body(b: &Batch) -> String {
    String::from_utf8(b.body.to_vec()).expect("utf-8")
}

/// A fresh queue of each kind, with the directory that keeps it alive.
struct Made {
    queue: Box<dyn Queue>,
    _dir: Option<tempfile::TempDir>,
}

fn memory() -> Made {
    Made {
        queue: Box::new(MemoryQueue::new()),
        _dir: None,
    }
}

fn spool() -> Made {
    let dir = tempfile::tempdir().expect("tempdir");
    Made {
        queue: Box::new(spool_queue(dir.path())),
        _dir: Some(dir),
    }
}

fn tiered() -> Made {
    let dir = tempfile::tempdir().expect("tempdir");
    Made {
        queue: Box::new(Tiered::new(1000, Box::new(spool_queue(dir.path())))),
        _dir: Some(dir),
    }
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test]
                async fn memory() {
                    super::$test(super::memory()).await;
                }
                #[tokio::test]
                async fn spool() {
                    super::$test(super::spool()).await;
                }
                #[tokio::test]
                async fn tiered() {
                    super::$test(super::tiered()).await;
                }
            }
        )*
    };
}

suite!(
    takes_in_order_merging_one_devices_batches_up_to_the_size,
    a_given_back_lease_comes_back_first,
    ack_removes_for_good_and_len_counts_leases,
    alarms_and_other_devices_are_never_merged,
);

async fn takes_in_order_merging_one_devices_batches_up_to_the_size(mut m: Made) {
    let q = &mut m.queue;
    let pushed = q
        .push(vec![
            batch("A", &[1, 2]),
            batch("A", &[3]),
            batch("A", &[4, 5]),
        ])
        .await;
    assert!(pushed.refused.is_empty());
    let lease = q.take(3).await.expect("take").expect("a lease");
    assert_eq!(body(&lease.batch), "[1,2,3]");
    assert_eq!(lease.batch.count, 3);
    q.ack(lease).await.expect("ack");
    let lease = q.take(3).await.expect("take").expect("a lease");
    assert_eq!(body(&lease.batch), "[4,5]");
    q.ack(lease).await.expect("ack");
    assert!(q.take(3).await.expect("take").is_none());
    assert!(q.is_empty());
}

async fn a_given_back_lease_comes_back_first(mut m: Made) {
    let q = &mut m.queue;
    let _ = q.push(vec![batch("A", &[1]), batch("B", &[2])]).await;
    let lease = q.take(10).await.expect("take").expect("a lease");
    assert_eq!(body(&lease.batch), "[1]");
    let _ = q.give_back(lease).await;
    let _ = q.push(vec![batch("B", &[3])]).await;
    let mut seen = Vec::new();
    while let Some(lease) = q.take(10).await.expect("take") {
        seen.push(body(&lease.batch));
        q.ack(lease).await.expect("ack");
    }
    assert_eq!(seen, ["[1]", "[2,3]"]);
}

async fn ack_removes_for_good_and_len_counts_leases(mut m: Made) {
    let q = &mut m.queue;
    let _ = q.push(vec![batch("A", &[1, 2]), batch("B", &[3])]).await;
    assert_eq!((q.len().batches, q.len().measurements), (2, 3));
    let lease = q.take(10).await.expect("take").expect("a lease");
    assert_eq!(q.len().measurements, 3, "a lease is still held");
    q.ack(lease).await.expect("ack");
    assert_eq!((q.len().batches, q.len().measurements), (1, 1));
    let rest = q.take(10).await.expect("take").expect("a lease");
    q.ack(rest).await.expect("ack");
    assert_eq!(q.len().measurements, 0);
    assert!(q.take(10).await.expect("take").is_none());
}

async fn alarms_and_other_devices_are_never_merged(mut m: Made) {
    let q = &mut m.queue;
    let _ = q
        .push(vec![
            batch("A", &[1]),
            alarms("A"),
            batch("A", &[2]),
            batch("B", &[3]),
        ])
        .await;
    let mut kinds = Vec::new();
    while let Some(lease) = q.take(100).await.expect("take") {
        kinds.push((lease.batch.device.to_string(), body(&lease.batch)));
        q.ack(lease).await.expect("ack");
    }
    assert_eq!(
        kinds,
        [
            ("A".to_string(), "[1]".to_string()),
            ("A".to_string(), "{\"fan_lock\":true}".to_string()),
            ("A".to_string(), "[2]".to_string()),
            ("B".to_string(), "[3]".to_string()),
        ]
    );
}

#[tokio::test]
async fn the_spool_survives_a_restart_and_memory_hands_back_what_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Box::new(spool_queue(dir.path()));
    let _ = spool.push(vec![batch("A", &[1]), batch("A", &[2])]).await;
    assert!(
        spool.close().await.is_empty(),
        "nothing lost: it is on disk"
    );
    let mut again = Box::new(spool_queue(dir.path()));
    assert_eq!(again.len().measurements, 2);
    let lease = again.take(10).await.expect("take").expect("a lease");
    assert_eq!(body(&lease.batch), "[1,2]");
    again.ack(lease).await.expect("ack");
    assert_eq!(again.len().measurements, 0);
    // The removal is committed on the spool thread; close waits for it.
    assert!(again.close().await.is_empty());
    assert!(
        !dir.path().join("spool.redb").exists(),
        "a drained spool deletes its file"
    );

    let mut memory = Box::new(MemoryQueue::new());
    let _ = memory.push(vec![batch("A", &[1])]).await;
    let left = memory.close().await;
    assert_eq!(left.len(), 1);
}

#[tokio::test]
async fn tiered_stays_in_memory_until_a_failure_then_spools_until_drained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Tiered::new(1000, Box::new(spool_queue(dir.path())));
    let _ = q.push(vec![batch("A", &[1])]).await;
    let lease = q.take(10).await.expect("take").expect("a lease");
    q.ack(lease).await.expect("ack");
    assert!(!q.spooling());
    assert!(!dir.path().join("spool.redb").exists(), "healthy: no disk");

    let _ = q.push(vec![batch("A", &[2])]).await;
    let lease = q.take(10).await.expect("take").expect("a lease");
    let pushed = q.give_back(lease).await;
    assert!(q.spooling());
    assert_eq!(pushed.stored, 1, "the failed batch went to disk");
    assert_eq!(q.in_memory().measurements, 0);
    assert!(dir.path().join("spool.redb").exists());
    let pushed = q.push(vec![batch("A", &[3])]).await;
    assert_eq!(pushed.stored, 1, "while spooling, new batches go to disk");
    let lease = q.take(10).await.expect("take").expect("a lease");
    assert_eq!(body(&lease.batch), "[2,3]");
    q.ack(lease).await.expect("ack");
    assert!(q.take(10).await.expect("take").is_none());
    assert!(!q.spooling(), "drained: back to memory");
}

#[tokio::test]
async fn tiered_spills_to_disk_when_memory_passes_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Tiered::new(2, Box::new(spool_queue(dir.path())));
    let _ = q.push(vec![batch("A", &[1, 2])]).await;
    assert!(!q.spooling());
    let pushed = q.push(vec![batch("A", &[3])]).await;
    assert!(q.spooling());
    assert_eq!(pushed.stored, 3);
    assert_eq!(q.in_memory().measurements, 0);
}
