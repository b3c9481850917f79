//! The on-disk store behind the forwarder's spool: opaque records that wait
//! while the API is not taking them, across restarts and power cuts.
//!
//! Built on redb, a pure-Rust embedded store with copy-on-write pages and
//! checksummed, atomic commits: a commit either happened completely or, after
//! a crash, not at all. That is the crash-safety proof a hand-written segment
//! format would have to make itself. Every push and every removal is one
//! durable transaction, so a record is on disk before the caller lets go of
//! it, and leaves only when the caller removes it (at-least-once).
//!
//! Records are opaque bytes with a *weight* (the forwarder stores a batch and
//! its measurement count; this module knows nothing of batches). Keys are a
//! monotonically increasing sequence number, so iteration order is arrival
//! order. A database file that will not open at all is moved aside and a
//! fresh one started: pv3 keeps collecting, and says so loudly.
//!
//! Everything here blocks on the disk: the forwarder calls it from a thread
//! of its own (the forwarder's spool queue), never from the runtime.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
};
use tracing::error;

use crate::state_dir::StateDir;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");

/// redb's page cache. Its default (1 GiB) lets a collector's memory grow
/// with the spool during a long outage (measured: +0.6 MB per 1,000 spooled
/// messages). The spool is written at its end and read and removed at its
/// start, each record once, so the cache need hold little more than the
/// B-tree's two edges: 1 MiB drains a 300 MB spool as fast as 4 MiB did,
/// with a peak RSS 3.2 MB lower (docs/performance.md, "The spool's cache").
const CACHE_BYTES: usize = 1 << 20;

/// How the spool opens (or creates) its database file: redb's own file
/// backend, unless a test puts a faulty disk in between (with
/// `redb::Builder::create_with_backend`; see `tests/it/faults.rs`).
pub type Opener = std::sync::Arc<dyn Fn(&Path) -> Result<Database, DatabaseError> + Send + Sync>;

/// Removes what a failed creation left at `path` (a file that did not
/// exist before, `existed` false): on a full disk redb writes part of its
/// header and fails, and the next attempt would find a torn file, call it
/// corrupt and move it aside, once a retry, for as long as the disk is full.
fn forget_new(path: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_file(path);
    }
}

/// redb's file backend, with the spool's cache size.
pub fn file_opener() -> Opener {
    std::sync::Arc::new(|path: &Path| builder().create(path))
}

/// The redb settings every spool uses.
pub fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

/// What a push had to drop to stay under the size limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Records dropped.
    pub records: u64,
    /// Their summed weights.
    pub weight: u64,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its key: removal takes it, and keys grow in arrival order.
    pub key: u64,
    /// The weight it was pushed with.
    pub weight: u32,
    /// The bytes it was pushed with.
    pub data: Vec<u8>,
}

/// The spool file: see the module docs.
pub struct Spool {
    db: Database,
    path: PathBuf,
    /// The limit on stored value bytes: half the file's limit, because
    /// redb's copy-on-write pages and free space make the file about twice
    /// the data it holds (measured); lowered further if the file still
    /// outgrows `file_limit`.
    max_bytes: u64,
    /// `--spool-max-mb`: the file's own size limit.
    file_limit: u64,
    next_seq: u64,
    /// Sum of stored value sizes (the limit's measure; the file itself is
    /// larger by redb's pages and free space).
    bytes: u64,
    records: u64,
    weight: u64,
}

impl Spool {
    /// Opens (or creates) the state directory's spool. A file that redb
    /// cannot open is moved aside (`spool.redb.corrupt-<unix time>`) and
    /// replaced.
    pub fn open(dir: &StateDir, max_bytes: u64) -> Result<Spool> {
        Spool::open_with(dir, max_bytes, &file_opener())
    }

    /// [`Self::open`] through `opener`.
    pub fn open_with(dir: &StateDir, max_bytes: u64, opener: &Opener) -> Result<Spool> {
        std::fs::create_dir_all(dir.path())
            .with_context(|| format!("cannot create state directory {}", dir.path().display()))?;
        let path = dir.spool();
        let existed = path.exists();
        let db = match opener(&path).inspect_err(|_| forget_new(&path, existed)) {
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
                let aside = dir.spool_aside(stamp);
                error!(
                    "spool {} cannot be opened ({e}); moved aside to {} and starting an empty one",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(&path, &aside)
                    .with_context(|| format!("cannot move {} aside", path.display()))?;
                opener(&path)
                    .inspect_err(|_| forget_new(&path, false))
                    .with_context(|| format!("cannot create spool {}", path.display()))?
            }
        };
        let mut spool = Spool {
            db,
            path,
            max_bytes: max_bytes / 2,
            file_limit: max_bytes,
            next_seq: 0,
            bytes: 0,
            records: 0,
            weight: 0,
        };
        spool.scan()?;
        Ok(spool)
    }

    /// Recomputes the counters from what is stored (at open).
    fn scan(&mut self) -> Result<()> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in table.iter()? {
            let (key, value) = entry?;
            let value = value.value();
            self.next_seq = key.value() + 1;
            self.bytes += value.len() as u64;
            self.records += 1;
            self.weight += u64::from(weight_of(value));
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
    /// Records stored.
    pub fn records(&self) -> u64 {
        self.records
    }
    /// Their summed weights.
    pub fn weight(&self) -> u64 {
        self.weight
    }
    /// Their summed sizes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends records (one durable commit), then drops the oldest while the
    /// spool is over its limit. Never drops what it was just given unless
    /// that alone exceeds the limit.
    pub fn push(&mut self, records: &[(u32, &[u8])]) -> Result<Evicted> {
        if records.is_empty() {
            return Ok(Evicted::default());
        }
        let txn = self.db.begin_write()?;
        let (mut seq, mut bytes, mut weight) = (self.next_seq, 0u64, 0u64);
        {
            let mut table = txn.open_table(RECORDS)?;
            let mut value = Vec::new();
            for (w, data) in records {
                value.clear();
                value.extend_from_slice(&w.to_le_bytes());
                value.extend_from_slice(data);
                table.insert(seq, value.as_slice())?;
                seq += 1;
                bytes += value.len() as u64;
                weight += u64::from(*w);
            }
        }
        txn.commit().context("cannot write to the spool")?;
        // Counted only once the commit is durable.
        self.next_seq = seq;
        self.bytes += bytes;
        self.records += records.len() as u64;
        self.weight += weight;
        self.fit_file();
        self.evict()
    }

    /// The file may not shrink, but it must not grow past its limit: when
    /// it has, hold less data so that freed pages are reused instead.
    /// (Below 1 MiB, redb's own minimum size makes the file limit moot: the
    /// data limit alone applies.)
    fn fit_file(&mut self) {
        if self.file_limit < 1 << 20 {
            return;
        }
        let file = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if file > self.file_limit {
            let lower = (self.bytes / 10 * 8).max(self.file_limit / 4);
            self.max_bytes = self.max_bytes.min(lower);
        }
    }

    fn evict(&mut self) -> Result<Evicted> {
        let mut evicted = Evicted::default();
        if self.bytes <= self.max_bytes {
            return Ok(evicted);
        }
        let txn = self.db.begin_write()?;
        let mut removed = (0u64, 0u64);
        {
            let mut table = txn.open_table(RECORDS)?;
            while self.bytes - removed.0 > self.max_bytes && self.records - evicted.records > 1 {
                let Some((_, value)) = table.pop_first()? else {
                    break;
                };
                let value = value.value();
                removed.0 += value.len() as u64;
                removed.1 += u64::from(weight_of(value));
                evicted.records += 1;
            }
        }
        txn.commit().context("cannot write to the spool")?;
        evicted.weight = removed.1;
        self.bytes -= removed.0;
        self.records -= evicted.records;
        self.weight -= removed.1;
        Ok(evicted)
    }

    /// Up to `n` oldest records with keys above `after` (all, with `None`).
    pub fn read(&self, after: Option<u64>, n: usize) -> Result<Vec<Record>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let range = match after {
            Some(k) => table.range(k.saturating_add(1)..)?,
            None => table.range(0..)?,
        };
        let mut out = Vec::with_capacity(n.min(1024));
        for entry in range {
            if out.len() >= n {
                break;
            }
            let (key, value) = entry?;
            let value = value.value();
            out.push(Record {
                key: key.value(),
                weight: weight_of(value),
                data: value.get(4..).unwrap_or_default().to_vec(),
            });
        }
        Ok(out)
    }

    /// Removes records (delivered, or set aside) in one durable commit.
    pub fn remove(&mut self, keys: &[u64]) -> Result<()> {
        let txn = self.db.begin_write()?;
        let (mut records, mut bytes, mut weight) = (0u64, 0u64, 0u64);
        {
            let mut table = txn.open_table(RECORDS)?;
            for key in keys {
                if let Some(value) = table.remove(*key)? {
                    let value = value.value();
                    records += 1;
                    bytes += value.len() as u64;
                    weight += u64::from(weight_of(value));
                }
            }
        }
        txn.commit().context("cannot write to the spool")?;
        self.records -= records;
        self.bytes -= bytes;
        self.weight -= weight;
        Ok(())
    }
}

/// A stored value is `weight u32 LE | data`; a value too short to hold the
/// weight (only corruption redb's checksums missed could make one) weighs 0.
fn weight_of(value: &[u8]) -> u32 {
    value
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max: u64) -> Result<Spool> {
        Spool::open(&StateDir::new(dir), max)
    }

    fn weights(spool: &Spool) -> Vec<u32> {
        spool
            .read(None, 100)
            .expect("read")
            .into_iter()
            .map(|r| r.weight)
            .collect()
    }

    #[test]
    fn keeps_order_across_reopen_and_removes_only_what_is_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut spool = open(dir.path(), 1 << 20).expect("open");
            spool.push(&[(1, b"a"), (2, b"bb")]).expect("push");
            spool.push(&[(3, b"ccc")]).expect("push");
            let first = spool.read(None, 1).expect("read");
            assert_eq!(first[0].data, b"a");
            spool.remove(&[first[0].key]).expect("remove");
        }
        let spool = open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!((spool.records(), spool.weight()), (2, 5));
        assert_eq!(weights(&spool), [2, 3]);
        let after_first = spool.read(None, 1).expect("read")[0].key;
        let rest = spool.read(Some(after_first), 10).expect("read");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].data, b"ccc");
    }

    #[test]
    fn drops_the_oldest_past_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each value: 4 bytes of weight + 1 byte; values may fill half the
        // file limit.
        let mut spool = open(dir.path(), 30).expect("open");
        for w in 1..=3 {
            assert_eq!(spool.push(&[(w, b"x")]).expect("push"), Evicted::default());
        }
        let evicted = spool.push(&[(4, b"x"), (5, b"x")]).expect("push");
        assert_eq!(
            evicted,
            Evicted {
                records: 2,
                weight: 3
            }
        );
        assert_eq!(weights(&spool), [3, 4, 5]);
        assert_eq!(
            (spool.records(), spool.weight(), spool.bytes()),
            (3, 12, 15)
        );
    }

    #[test]
    fn the_file_stays_within_the_limit_while_evicting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 4 << 20;
        let mut spool = open(dir.path(), max).expect("open");
        // ~170-byte values, like spooled measurements, in commits of 50,
        // pushing twice the limit through, with removals from the front.
        let value = vec![b'x'; 170];
        for round in 0..1000 {
            let records: Vec<(u32, &[u8])> = (0..50).map(|_| (1, value.as_slice())).collect();
            spool.push(&records).expect("push");
            if round % 3 == 0 {
                let oldest: Vec<u64> = spool
                    .read(None, 20)
                    .expect("read")
                    .iter()
                    .map(|r| r.key)
                    .collect();
                spool.remove(&oldest).expect("remove");
            }
        }
        let file = std::fs::metadata(spool.path()).expect("stat").len();
        assert!(spool.bytes() <= max / 2);
        assert!(file <= max, "spool file {file} bytes, limit {max}");
    }

    #[test]
    fn a_spool_in_use_is_refused_not_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open(dir.path(), 1 << 20).expect("open");
        let err = open(dir.path(), 1 << 20).err().expect("second open fails");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("spool.redb"),
            b"this is not a redb file at all",
        )
        .expect("write");
        let mut spool = open(dir.path(), 1 << 20).expect("opens anyway");
        assert!(spool.is_empty());
        spool.push(&[(1, b"a")]).expect("usable");
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
