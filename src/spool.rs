//! The on-disk queue behind the forwarder: where batches wait while the API
//! is not taking them, across restarts and power cuts.
//!
//! Built on redb, a pure-Rust embedded store with copy-on-write pages and
//! checksummed, atomic commits: a commit either happened completely or, after
//! a crash, not at all. That is the crash-safety proof a hand-written segment
//! format would have to make itself. Every push and every removal is one
//! durable transaction, so a batch is on disk before the forwarder lets go of
//! it, and leaves only after the API answered 2xx (at-least-once).
//!
//! Keys are a monotonically increasing sequence number, so iteration order is
//! arrival order. Values are [`Batch`]es in a small binary envelope. A value
//! that does not decode (it cannot happen short of disk corruption redb's
//! checksums missed) is dropped with a warning rather than blocking the queue
//! forever. A database file that will not open at all is moved aside and a
//! fresh one started: pv3 keeps collecting, and says so loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
};
use tracing::{error, warn};

use crate::forward::{Batch, BatchKind};

const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");

pub const FILE_NAME: &str = "spool.redb";

/// redb's page cache. Its default (1 GiB) lets a collector's memory grow
/// with the spool during a long outage (measured: +0.6 MB per 1,000 spooled
/// messages); the spool is written and read sequentially, so a small cache
/// costs nothing in drain speed.
const CACHE_BYTES: usize = 4 << 20;

fn create(path: &Path) -> Result<Database, DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
}

/// What a push had to drop to stay under the size limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub batches: u64,
    pub measurements: u64,
}

pub struct Spool {
    db: Database,
    path: PathBuf,
    max_bytes: u64,
    next_seq: u64,
    /// Sum of stored value sizes (the limit's measure; the file itself is
    /// larger by redb's pages and free space).
    bytes: u64,
    batches: u64,
    measurements: u64,
}

impl Spool {
    /// Opens (or creates) `dir/spool.redb`. A file that redb cannot open is
    /// renamed `spool.redb.corrupt-<unix time>` and replaced.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db = match create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch) => {
                bail!(
                    "the spool {} is in use: is another pv3 collect running with this state directory?",
                    path.display()
                );
            }
            Err(DatabaseError::Storage(StorageError::Io(e)))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(e).with_context(|| format!("cannot open spool {}", path.display()));
            }
            Err(e) => {
                // Unreadable contents: keep them for inspection, carry on.
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = dir.join(format!("{FILE_NAME}.corrupt-{stamp}"));
                error!(
                    "spool {} cannot be opened ({e}); moved aside to {} and starting an empty one",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(&path, &aside)
                    .with_context(|| format!("cannot move {} aside", path.display()))?;
                create(&path).with_context(|| format!("cannot create spool {}", path.display()))?
            }
        };
        let mut spool = Spool {
            db,
            path,
            max_bytes,
            next_seq: 0,
            bytes: 0,
            batches: 0,
            measurements: 0,
        };
        spool.scan()?;
        Ok(spool)
    }

    /// Recomputes the counters from what is stored (at open).
    fn scan(&mut self) -> Result<()> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(BATCHES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in table.iter()? {
            let (key, value) = entry?;
            let value = value.value();
            self.next_seq = key.value() + 1;
            self.bytes += value.len() as u64;
            self.batches += 1;
            self.measurements += decode(value).map_or(0, |b| b.count as u64);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }
    pub fn batches(&self) -> u64 {
        self.batches
    }
    pub fn measurements(&self) -> u64 {
        self.measurements
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends batches (one durable commit), then drops the oldest while the
    /// spool is over its limit. Never drops what it was just given unless
    /// that alone exceeds the limit.
    pub fn push(&mut self, batches: &[Batch]) -> Result<Evicted> {
        if batches.is_empty() {
            return Ok(Evicted::default());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(BATCHES)?;
            for batch in batches {
                let value = encode(batch);
                table.insert(self.next_seq, value.as_slice())?;
                self.next_seq += 1;
                self.bytes += value.len() as u64;
                self.batches += 1;
                self.measurements += batch.count as u64;
            }
        }
        txn.commit().context("cannot write to the spool")?;
        self.evict()
    }

    fn evict(&mut self) -> Result<Evicted> {
        let mut evicted = Evicted::default();
        if self.bytes <= self.max_bytes {
            return Ok(evicted);
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(BATCHES)?;
            while self.bytes > self.max_bytes && self.batches > 1 {
                let Some((_, value)) = table.pop_first()? else {
                    break;
                };
                let value = value.value();
                let count = decode(value).map_or(0, |b| b.count as u64);
                self.bytes -= value.len() as u64;
                self.batches -= 1;
                self.measurements -= count;
                evicted.batches += 1;
                evicted.measurements += count;
            }
        }
        txn.commit().context("cannot write to the spool")?;
        Ok(evicted)
    }

    /// Up to `n` oldest batches with their keys. Entries that do not decode
    /// are dropped (with a warning) rather than block the queue.
    pub fn oldest(&mut self, n: usize) -> Result<Vec<(u64, Batch)>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(BATCHES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(n);
        let mut bad = Vec::new();
        for entry in table.iter()? {
            if out.len() >= n {
                break;
            }
            let (key, value) = entry?;
            match decode(value.value()) {
                Some(batch) => out.push((key.value(), batch)),
                None => bad.push(key.value()),
            }
        }
        drop(table);
        drop(txn);
        if !bad.is_empty() {
            warn!("{} unreadable spool entries dropped", bad.len());
            self.remove_all(&bad)?;
        }
        Ok(out)
    }

    /// Removes a delivered (or set aside) batch: one durable commit.
    pub fn remove(&mut self, key: u64) -> Result<()> {
        self.remove_all(&[key])
    }

    /// Removes several batches in one durable commit.
    pub fn remove_all(&mut self, keys: &[u64]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(BATCHES)?;
            for key in keys {
                if let Some(value) = table.remove(*key)? {
                    let value = value.value();
                    self.bytes -= value.len() as u64;
                    self.batches -= 1;
                    self.measurements -= decode(value).map_or(0, |b| b.count as u64);
                }
            }
        }
        txn.commit().context("cannot write to the spool")?;
        Ok(())
    }
}

/// `kind u8 | count u32 LE | device length u16 LE | device | body`.
fn encode(batch: &Batch) -> Vec<u8> {
    let device = batch.device.as_bytes();
    let device_len = u16::try_from(device.len()).unwrap_or(u16::MAX);
    let device = &device[..usize::from(device_len)];
    let mut out = Vec::with_capacity(7 + device.len() + batch.body.len());
    out.push(match batch.kind {
        BatchKind::Measurements => 0,
        BatchKind::Alarms => 1,
    });
    out.extend_from_slice(&u32::try_from(batch.count).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&device_len.to_le_bytes());
    out.extend_from_slice(device);
    out.extend_from_slice(&batch.body);
    out
}

fn decode(value: &[u8]) -> Option<Batch> {
    let kind = match value.first()? {
        0 => BatchKind::Measurements,
        1 => BatchKind::Alarms,
        _ => return None,
    };
    let count = u32::from_le_bytes(value.get(1..5)?.try_into().ok()?) as usize;
    let device_len = usize::from(u16::from_le_bytes(value.get(5..7)?.try_into().ok()?));
    let device = std::str::from_utf8(value.get(7..7 + device_len)?).ok()?;
    let body = value.get(7 + device_len..)?;
    Some(Batch {
        device: Arc::from(device),
        kind,
        body: Bytes::copy_from_slice(body),
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(device: &str, n: usize) -> Batch {
        Batch {
            device: Arc::from(device),
            kind: BatchKind::Measurements,
            body: Bytes::from(format!("[{n}]")),
            count: n,
        }
    }

    #[test]
    fn envelope_round_trips() {
        let b = Batch {
            device: Arc::from("PV001001DEV"),
            kind: BatchKind::Alarms,
            body: Bytes::from_static(b"{\"fan_lock\":false}"),
            count: 0,
        };
        let back = decode(&encode(&b)).expect("decodes");
        assert_eq!(
            (back.device, back.kind, back.body, back.count),
            (b.device, b.kind, b.body, b.count)
        );
        assert!(decode(&[]).is_none());
        assert!(decode(&[7, 0, 0, 0, 0, 0, 0]).is_none());
        assert!(decode(&[0, 1, 0, 0, 0, 9, 0, b'a']).is_none());
    }

    #[test]
    fn keeps_order_across_reopen_and_removes_only_what_is_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
            spool.push(&[batch("A", 1), batch("B", 2)]).expect("push");
            spool.push(&[batch("A", 3)]).expect("push");
            let first = spool.oldest(1).expect("read");
            spool.remove(first[0].0).expect("remove");
        }
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!((spool.batches(), spool.measurements()), (2, 5));
        let rest: Vec<usize> = spool
            .oldest(10)
            .expect("read")
            .into_iter()
            .map(|(_, b)| b.count)
            .collect();
        assert_eq!(rest, [2, 3]);
    }

    #[test]
    fn drops_the_oldest_past_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = encode(&batch("A", 1)).len() as u64;
        let mut spool = Spool::open(dir.path(), one * 3).expect("open");
        for n in 1..=3 {
            assert_eq!(
                spool.push(&[batch("A", n)]).expect("push"),
                Evicted::default()
            );
        }
        let evicted = spool.push(&[batch("A", 4), batch("A", 5)]).expect("push");
        assert_eq!(
            evicted,
            Evicted {
                batches: 2,
                measurements: 3
            }
        );
        let left: Vec<usize> = spool
            .oldest(10)
            .expect("r")
            .into_iter()
            .map(|(_, b)| b.count)
            .collect();
        assert_eq!(left, [3, 4, 5]);
    }

    #[test]
    fn unreadable_entries_are_dropped_and_uncounted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool.push(&[batch("A", 1)]).expect("push");
        // An entry only disk corruption could leave behind.
        let txn = spool.db.begin_write().expect("txn");
        {
            let mut table = txn.open_table(BATCHES).expect("table");
            table
                .insert(spool.next_seq, &b"\x09garbage"[..])
                .expect("insert");
        }
        txn.commit().expect("commit");
        spool.next_seq += 1;
        spool.batches += 1;
        spool.bytes += 8;
        spool.push(&[batch("A", 2)]).expect("push");
        let counts: Vec<usize> = spool
            .oldest(10)
            .expect("read")
            .into_iter()
            .map(|(_, b)| b.count)
            .collect();
        assert_eq!(counts, [1, 2]);
        assert_eq!((spool.batches(), spool.measurements()), (2, 3));
        assert_eq!(spool.bytes(), 2 * encode(&batch("A", 1)).len() as u64);
    }

    #[test]
    fn a_spool_in_use_is_refused_not_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Spool::open(dir.path(), 1 << 20).expect("open");
        let err = Spool::open(dir.path(), 1 << 20)
            .err()
            .expect("second open fails");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"this is not a redb file at all",
        )
        .expect("write");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("opens anyway");
        assert!(spool.is_empty());
        spool.push(&[batch("A", 1)]).expect("usable");
        let aside = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("spool.redb.corrupt-")
            });
        assert!(aside, "the bad file is kept for inspection");
    }
}
