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
//! order.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;
use tracing::{error, warn};

use super::batch::Batch;
use super::dead_letter::{DeadLetter, DeadLetters};
use super::queue::{Lease, Len, Pushed, Queue, QueueError, QueueFuture, Tier};
use crate::spool::{Evicted, Record, Spool};
use crate::state_dir::StateDir;

/// Records read ahead when taking a lease.
const LOOKAHEAD: usize = 256;

type Reply<T> = oneshot::Sender<(anyhow::Result<T>, Len)>;

enum Cmd {
    Push(Vec<(u32, Vec<u8>)>, Reply<Evicted>),
    Read(Option<u64>, usize, Reply<Vec<Record>>),
    Remove(Vec<u64>, Reply<()>),
}

/// See the module docs.
pub struct SpoolQueue {
    tx: Option<std_mpsc::Sender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
    len: Len,
    /// The key of the last record of the lease that is out.
    leased: Option<u64>,
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
        let spool = if dir.spool().exists() {
            Some(Spool::open(dir, max_bytes)?)
        } else {
            None
        };
        let len = spool.as_ref().map_or(Len::default(), counters);
        let (tx, rx) = std_mpsc::channel();
        let thread = SpoolThread {
            dir: dir.clone(),
            max_bytes,
            spool,
            dead_letters,
        };
        let thread = std::thread::Builder::new()
            .name("pv3-spool".into())
            .spawn(move || thread.run(rx))?;
        Ok(SpoolQueue {
            tx: Some(tx),
            thread: Some(thread),
            len,
            leased: None,
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
            Ok((result, len)) => {
                self.len = len;
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
            if self.leased.is_some() || self.len.batches == 0 {
                return Ok(None);
            }
            let records = self.call(|r| Cmd::Read(None, LOOKAHEAD, r)).await?;
            let mut items = std::collections::VecDeque::new();
            for record in records {
                match Batch::decode(&record.data, record.weight) {
                    Some(batch) => items.push_back((record.key, batch)),
                    // The thread set unreadable records aside already.
                    None => continue,
                }
            }
            let Some(run) = super::queue::take_run(&mut items, max) else {
                return Ok(None);
            };
            self.leased = run.last().map(|(k, _)| *k);
            Ok(Lease::new(run, Tier::Spool))
        })
    }

    fn ack(&mut self, lease: Lease) -> QueueFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.leased = None;
            self.call(|r| Cmd::Remove(lease.keys, r)).await
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
}

impl SpoolThread {
    fn run(mut self, rx: std_mpsc::Receiver<Cmd>) {
        while let Ok(cmd) = rx.recv() {
            match cmd {
                Cmd::Push(records, reply) => {
                    let result = self.with_spool(true, |s| {
                        let refs: Vec<(u32, &[u8])> =
                            records.iter().map(|(w, d)| (*w, d.as_slice())).collect();
                        s.push(&refs)
                    });
                    let _ = reply.send((result.map(Option::unwrap_or_default), self.len()));
                }
                Cmd::Read(after, n, reply) => {
                    let result = self.read(after, n);
                    let _ = reply.send((result, self.len()));
                }
                Cmd::Remove(keys, reply) => {
                    let result = self.with_spool(false, |s| s.remove(&keys)).map(|_| ());
                    self.close_if_empty();
                    let _ = reply.send((result, self.len()));
                }
            }
        }
    }

    fn len(&self) -> Len {
        self.spool.as_ref().map_or(Len::default(), counters)
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
            self.spool = Some(Spool::open(&self.dir, self.max_bytes)?);
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
            .partition(|r| Batch::decode(&r.data, r.weight).is_some());
        if !bad.is_empty() {
            warn!(
                "{} unreadable spool records set aside in {}",
                bad.len(),
                self.dead_letters.path().display()
            );
            for record in &bad {
                self.dead_letters
                    .write_or_log(&DeadLetter::Unreadable { data: &record.data });
            }
            let keys: Vec<u64> = bad.iter().map(|r| r.key).collect();
            self.with_spool(false, |s| s.remove(&keys))?;
        }
        Ok(good)
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
