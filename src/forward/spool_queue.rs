//! The on-disk queue: [`crate::spool::Spool`] on a thread of its own.
//!
//! Every operation is a message to the spool thread and a reply back, so
//! redb's commits (an fsync each) never run on the runtime that polls MQTT.
//! The thread also owns the file's life: it is created by the first push
//! and deleted once drained (the healthy path writes nothing to disk, and
//! redb files, which do not shrink, never keep an outage's worth of space).
//! After an I/O error the database is closed and reopened on the next
//! operation (redb refuses everything after one), so a disk that was full
//! works again once there is room.
//!
//! Only one lease is out at a time: spooled batches go out strictly in
//! order. Acknowledging does not wait for the removal's commit: one round
//! trip per POST, not two. The thread answers the next take first (skipping
//! what was delivered) and commits the removal while that take's POST is in
//! flight, so a drain does not wait for an fsync per POST. A delivered lease
//! whose removal fails (a
//! full disk) is remembered on the thread and skipped, and its removal
//! retried with every later command, so it is never sent twice in one run
//! (after a restart it may be: at-least-once).
//!
//! No spool content can crash pv3: a panic inside redb (a page corrupted on
//! disk in a way its checksums did not catch) is caught on the spool thread;
//! the file is moved aside (`spool.redb.corrupt-<time>`) and a fresh spool
//! started. This needs `panic = "unwind"`, which the release profile keeps.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use super::batch::Batch;
use super::dead_letter::{DeadLetter, DeadLetters};
use super::queue::{Lease, Len, Pushed, Queue, QueueError, QueueFuture, Tier};
use crate::spool::{Evicted, Opener, Record, Spool, file_opener};
use crate::state_dir::StateDir;

/// Most records read at first when taking a lease (fewer when the spool's
/// batches are large, see [`SpoolThread::first_chunk`]); each further read
/// of the same lease takes twice as many (up to [`READ_CHUNK_MAX`]): few
/// read transactions for a long run of small batches, little read past its
/// end.
const READ_CHUNK: usize = 32;
const READ_CHUNK_MAX: usize = 512;

/// How long a removal waits for the next take before it is committed
/// anyway (the end of a drain).
const REMOVE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// The result, the spool's size after it, and the measurements set aside
/// meanwhile as unreadable.
type Reply<T> = oneshot::Sender<(anyhow::Result<T>, Len, u64)>;

enum Cmd {
    Push(Vec<(u32, Vec<u8>)>, Reply<Evicted>),
    /// The oldest batches that go in one POST (up to `max` measurements).
    TakeRun(usize, Reply<Vec<(u64, Batch)>>),
    /// Delivered: remove them. No reply: the thread takes commands in
    /// order, so the next take already sees them gone, and the sender need
    /// not wait for the commit. A removal that fails is remembered there.
    Remove(Vec<(u64, Len)>),
}

/// See the module docs.
pub struct SpoolQueue {
    tx: Option<std_mpsc::Sender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
    len: Len,
    /// The key of the last record of the lease that is out.
    leased: Option<u64>,
    /// Measurements set aside as unreadable, not yet reported.
    set_aside: u64,
    path: std::path::PathBuf,
}

impl SpoolQueue {
    /// Opens the spool of `dir` if one was left by an earlier run (so its
    /// size is known at once), and starts the spool thread.
    pub fn open(
        dir: &StateDir,
        max_bytes: u64,
        dead_letters: Arc<DeadLetters>,
    ) -> anyhow::Result<SpoolQueue> {
        SpoolQueue::open_with(dir, max_bytes, dead_letters, file_opener())
    }

    /// [`Self::open`] through `opener` (a test's faulty disk).
    pub fn open_with(
        dir: &StateDir,
        max_bytes: u64,
        dead_letters: Arc<DeadLetters>,
        opener: Opener,
    ) -> anyhow::Result<SpoolQueue> {
        let mut thread = SpoolThread {
            dir: dir.clone(),
            max_bytes,
            spool: None,
            dead_letters,
            opener,
            last_len: Len::default(),
            unremoved: Vec::new(),
            told_unremoved: false,
            set_aside: 0,
            removal_due: false,
        };
        if dir.spool().exists()
            && let Err(e) = thread.guarded("open", |t| t.with_spool(false, |_| Ok(())))
        {
            // Moved aside (unreadable): collection goes on with an empty
            // spool. Still there: in use, or the disk refuses: a real error.
            if dir.spool().exists() {
                return Err(e);
            }
            warn!("{e:#}");
        }
        let len = thread.len();
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pv3-spool".into())
            .spawn(move || thread.run(rx))?;
        Ok(SpoolQueue {
            tx: Some(tx),
            thread: Some(thread),
            len,
            leased: None,
            set_aside: 0,
            path: dir.spool(),
        })
    }

    /// The spool file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    async fn call<T>(&mut self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.as_ref().map(|tx| tx.send(make(reply)));
        if !matches!(sent, Some(Ok(()))) {
            return Err(QueueError("the spool thread has stopped".into()));
        }
        match answer.await {
            Ok((result, len, set_aside)) => {
                self.len = len;
                self.set_aside += set_aside;
                result.map_err(|e| QueueError(format!("{e:#}")))
            }
            Err(_) => Err(QueueError("the spool thread has stopped".into())),
        }
    }
}

impl Queue for SpoolQueue {
    fn push(&mut self, batches: Vec<Batch>) -> QueueFuture<'_, Pushed> {
        Box::pin(async move {
            if batches.is_empty() {
                return Pushed::default();
            }
            let records = batches
                .iter()
                .map(|b| (u32::try_from(b.count).unwrap_or(u32::MAX), b.encode()))
                .collect();
            match self.call(|r| Cmd::Push(records, r)).await {
                Ok(evicted) => Pushed {
                    stored: batches.iter().map(|b| b.count as u64).sum(),
                    evicted: Len {
                        batches: evicted.records,
                        measurements: evicted.weight,
                        bytes: 0,
                    },
                    ..Pushed::default()
                },
                Err(e) => Pushed {
                    refused: batches,
                    error: Some(e.0),
                    ..Pushed::default()
                },
            }
        })
    }

    fn take(&mut self, max: usize) -> QueueFuture<'_, Result<Option<Lease>, QueueError>> {
        Box::pin(async move {
            if self.leased.is_some() || self.len().batches == 0 {
                return Ok(None);
            }
            let run = self.call(|r| Cmd::TakeRun(max, r)).await?;
            self.leased = run.last().map(|(k, _)| *k);
            Ok(Lease::new(run, Tier::Spool))
        })
    }

    fn ack(&mut self, lease: Lease) -> QueueFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.leased = None;
            let gone: Vec<(u64, Len)> = lease
                .keys
                .iter()
                .zip(&lease.parts)
                .map(|(k, b)| (*k, Len::of(std::slice::from_ref(b))))
                .collect();
            self.len = self.len.minus(lease.len());
            match self.tx.as_ref().map(|tx| tx.send(Cmd::Remove(gone))) {
                Some(Ok(())) => Ok(()),
                _ => Err(QueueError("the spool thread has stopped".into())),
            }
        })
    }

    fn give_back(&mut self, _lease: Lease) -> QueueFuture<'_, Pushed> {
        // Still on disk: the next take starts from it again.
        self.leased = None;
        Box::pin(async { Pushed::default() })
    }

    fn len(&self) -> Len {
        self.len
    }

    fn durable(&self) -> bool {
        true
    }

    fn take_set_aside(&mut self) -> u64 {
        std::mem::take(&mut self.set_aside)
    }

    fn in_memory(&self) -> Len {
        Len::default()
    }

    fn close(mut self: Box<Self>) -> QueueFuture<'static, Vec<Batch>> {
        drop(self.tx.take());
        let thread = self.thread.take();
        Box::pin(async move {
            if let Some(thread) = thread {
                // Finishes the command it is on, then closes the database.
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Vec::new()
        })
    }
}

fn counters(spool: &Spool) -> Len {
    Len {
        batches: spool.records(),
        measurements: spool.weight(),
        bytes: spool.bytes(),
    }
}

/// What the spool thread owns.
struct SpoolThread {
    dir: StateDir,
    max_bytes: u64,
    /// Open while it holds something (or until an error closes it).
    spool: Option<Spool>,
    dead_letters: Arc<DeadLetters>,
    opener: Opener,
    /// What it held when last open: its size while an error keeps it closed.
    last_len: Len,
    /// Delivered, but their removal failed (a full disk): never leased
    /// again, and removed as soon as the disk lets it.
    unremoved: Vec<(u64, Len)>,
    /// That has been said (once until it works again).
    told_unremoved: bool,
    /// Measurements set aside as unreadable since the last reply.
    set_aside: u64,
    /// A removal arrived and has not been tried yet (one that failed waits
    /// for the next command instead, so a failing disk is not retried in a
    /// loop).
    removal_due: bool,
}

impl SpoolThread {
    fn run(mut self, rx: std_mpsc::Receiver<Cmd>) {
        loop {
            let cmd = if self.removal_due {
                // A removal waits for the next take (or [`REMOVE_WAIT`]):
                // answered first, its commit then overlaps that take's
                // POST instead of delaying it.
                match rx.recv_timeout(REMOVE_WAIT) {
                    Ok(cmd) => cmd,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.retry_removals();
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        self.retry_removals();
                        return;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => return,
                }
            };
            match cmd {
                Cmd::Push(records, reply) => {
                    self.retry_removals();
                    let result = self.guarded("write", |t| {
                        t.with_spool(true, |s| {
                            let refs: Vec<(u32, &[u8])> =
                                records.iter().map(|(w, d)| (*w, d.as_slice())).collect();
                            s.push(&refs)
                        })
                    });
                    let _ = reply.send((
                        result.map(Option::unwrap_or_default),
                        self.len(),
                        std::mem::take(&mut self.set_aside),
                    ));
                }
                Cmd::TakeRun(max, reply) => {
                    // Delivered but not yet removed: skipped, not sent again.
                    let skip: Vec<u64> = self.unremoved.iter().map(|(k, _)| *k).collect();
                    let result = self.guarded("read", |t| t.take_run(&skip, max));
                    let _ = reply.send((result, self.len(), std::mem::take(&mut self.set_aside)));
                    self.retry_removals();
                }
                Cmd::Remove(gone) => {
                    self.unremoved.extend(gone);
                    self.removal_due = true;
                }
            }
        }
    }

    /// What it holds, less what was delivered but not yet removed.
    fn len(&mut self) -> Len {
        match &self.spool {
            Some(spool) => self.last_len = counters(spool),
            None if !self.dir.spool().exists() => self.last_len = Len::default(),
            None => {}
        }
        self.unremoved
            .iter()
            .fold(self.last_len, |len, (_, part)| len.minus(*part))
    }

    /// Removes what was delivered; on failure keeps the keys to skip and
    /// tries again with the next command.
    fn retry_removals(&mut self) {
        self.removal_due = false;
        if self.unremoved.is_empty() {
            return;
        }
        let keys: Vec<u64> = self.unremoved.iter().map(|(k, _)| *k).collect();
        let removed = self.guarded("write", |t| t.with_spool(false, |s| s.remove(&keys)));
        match removed {
            Ok(_) => {
                self.unremoved.clear();
                self.told_unremoved = false;
                self.close_if_empty();
            }
            Err(e) if !self.told_unremoved => {
                self.told_unremoved = true;
                warn!(
                    "cannot remove delivered batches from the spool ({e:#}): they are not sent again, and are removed once the disk allows (after a restart they may be sent again)"
                );
            }
            Err(e) => debug!("cannot remove delivered batches from the spool yet ({e:#})"),
        }
    }

    /// Runs `op`, turning a panic inside redb into an error: the database is
    /// dropped, its file moved aside, and the next operation starts afresh.
    fn guarded<T>(
        &mut self,
        what: &str,
        op: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut *self))) {
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                let spool = self.spool.take();
                // Dropping a database redb gave up on may panic too.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(spool)));
                let aside = self.move_aside();
                anyhow::bail!(
                    "the spool could not {what} its file ({why}): it is unreadable; {aside}"
                )
            }
        }
    }

    /// Moves the spool file aside; says where, for the log.
    fn move_aside(&self) -> String {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (from, to) = (self.dir.spool(), self.dir.spool_aside(stamp));
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                error!(
                    "spool {} is unreadable: moved aside to {} (what it held is not sent; inspect it there); starting an empty one",
                    from.display(),
                    to.display()
                );
                format!("moved aside to {}", to.display())
            }
            Err(e) => format!("and cannot be moved aside ({e})"),
        }
    }

    /// Runs `op` on the spool, opening it first (only with `create`, or when
    /// its file exists). `Ok(None)` when there is no spool to work on. An
    /// error closes the database, to be reopened next time.
    fn with_spool<T>(
        &mut self,
        create: bool,
        op: impl FnOnce(&mut Spool) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        if self.spool.is_none() && (create || self.dir.spool().exists()) {
            self.spool = Some(Spool::open_with(&self.dir, self.max_bytes, &self.opener)?);
        }
        let Some(spool) = self.spool.as_mut() else {
            return Ok(None);
        };
        match op(spool) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                // redb refuses everything after an I/O error until reopened.
                self.spool = None;
                Err(e)
            }
        }
    }

    /// Reads, setting aside (to the dead letters) and removing records that
    /// do not decode, so one bad record never blocks the queue.
    fn read(&mut self, after: Option<u64>, n: usize) -> anyhow::Result<Vec<Record>> {
        let records = self
            .with_spool(false, |s| s.read(after, n))?
            .unwrap_or_default();
        let (good, bad): (Vec<Record>, Vec<Record>) = records
            .into_iter()
            .partition(|r| Batch::is_envelope(&r.data));
        if !bad.is_empty() {
            warn!(
                "{} unreadable spool records set aside in {}",
                bad.len(),
                self.dead_letters.path().display()
            );
            for record in &bad {
                self.dead_letters
                    .write_or_log(&DeadLetter::Unreadable { data: &record.data });
                self.set_aside += u64::from(record.weight);
            }
            let keys: Vec<u64> = bad.iter().map(|r| r.key).collect();
            self.with_spool(false, |s| s.remove(&keys))?;
        }
        Ok(good)
    }

    /// The oldest batches that go in one POST: consecutive measurement
    /// batches of one device up to `max` measurements (at least one batch),
    /// or one alarm batch. Reads a few records at a time, so a drain reads
    /// each record about once.
    fn take_run(&mut self, skip: &[u64], max: usize) -> anyhow::Result<Vec<(u64, Batch)>> {
        let mut run: Vec<(u64, Batch)> = Vec::new();
        let mut count = 0;
        let mut after = None;
        let mut chunk = self.first_chunk(max);
        loop {
            let records = self.read(after, chunk)?;
            chunk = (chunk * 2).min(READ_CHUNK_MAX);
            if records.is_empty() {
                return Ok(run);
            }
            for record in records {
                after = Some(record.key);
                if skip.contains(&record.key) {
                    continue;
                }
                let Some(batch) = Batch::decode(record.data, record.weight) else {
                    continue; // set aside by `read` already
                };
                if let Some((_, first)) = run.first()
                    && !first.run_takes(count, &batch, max)
                {
                    return Ok(run);
                }
                count += batch.count;
                let alone = batch.kind != super::batch::BatchKind::Measurements;
                run.push((record.key, batch));
                if alone {
                    return Ok(run);
                }
            }
        }
    }

    /// The first read of a take: the records `max` measurements fill at
    /// the spool's average batch size, and one more to see where the run
    /// ends. A drain of 300-measurement batches into POSTs of 1,000 reads
    /// 5 records per take instead of 32 (each up to 30 KB, decoded or not).
    fn first_chunk(&self, max: usize) -> usize {
        let Len {
            batches,
            measurements,
            ..
        } = self.last_len;
        if batches == 0 || measurements == 0 {
            return READ_CHUNK;
        }
        let per_batch = (measurements / batches).max(1);
        let fill = (max as u64).div_ceil(per_batch).saturating_add(1);
        usize::try_from(fill).map_or(READ_CHUNK, |n| n.clamp(1, READ_CHUNK))
    }

    /// Deletes the spool file once it is empty.
    fn close_if_empty(&mut self) {
        if self.spool.as_ref().is_some_and(Spool::is_empty)
            && let Some(spool) = self.spool.take()
        {
            let path = spool.path().to_owned();
            drop(spool);
            if let Err(e) = std::fs::remove_file(&path) {
                error!("cannot remove the empty spool {}: {e}", path.display());
            }
        }
    }
}
