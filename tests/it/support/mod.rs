//! Shared integration-test harness for `pv3`.
//!
//! * [`broker`]: in-process MQTT 3.1.1 broker, real mosquitto wrapper,
//!   MQTT publisher/subscriber helpers.
//! * [`api`]: recording HTTP/1.1 server mimicking the PV3 Monitor API.
//! * [`proc`]: running the `pv3` binary.
//! * [`collect`]: `pv3 collect` with test defaults, waits on `status.json`.
//! * [`forward`]: pieces for driving the forwarder in-process.
//! * [`generated`]: tables in the docs that tests write.
//! * [`proxy`]: TCP proxy for link-failure injection.
//! * [`pty`]: running pv3 on a pseudo-terminal.
//! * [`supervisor`]: a stand-in for the Home Assistant Supervisor's API.
//! * [`topics`]: what an MQTT consumer sees of the topics pv3 publishes.
//!
//! Every server binds 127.0.0.1 only, on an OS-assigned port unless a port
//! is given explicitly, so tests can run in parallel.

pub mod api;
pub mod broker;
pub mod collect;
pub mod fixtures;
pub mod forward;
pub mod generated;
pub mod proc;
pub mod proxy;
pub mod pty;
pub mod supervisor;
pub mod topics;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::AbortHandle;

/// Runs the async test `$name(broker: TestBroker)` twice: against the
/// in-process broker, and against a real Mosquitto when it is installed
/// (mandatory in CI, where `PV3_REQUIRE_MOSQUITTO=1`).
#[allow(unused_macros)]
macro_rules! on_both_brokers {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$name(crate::support::broker::TestBroker::in_process().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mosquitto() {
                if let Some(broker) = crate::support::broker::TestBroker::mosquitto().await {
                    super::$name(broker).await;
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_brokers;

/// Every file under `dir`, in sorted order (directories walked, not listed).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Nanoseconds since the Unix epoch, for checking timestamps against a
/// test's window.
pub fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

/// A fresh directory under cargo's per-target scratch space, for a state
/// directory that must outlive a spawned process (left for inspection).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A free loopback TCP port (bind 127.0.0.1:0, read the port, drop the socket).
///
/// There is an unavoidable race with other processes grabbing the port; for
/// servers of this harness prefer binding port 0 directly.
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local_addr of probe listener")
        .port()
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
/// Returns the last result of `f` (true = condition met).
pub async fn wait_for<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds a listener on 127.0.0.1:`port` with SO_REUSEADDR so that a port
/// released by a stopped server (with connections in TIME_WAIT) can be
/// bound again immediately.
pub fn bind_reuse(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

/// Locks a std mutex, ignoring poisoning (a panicking test thread must not
/// cascade into unrelated harness failures).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A set of spawned connection tasks that can all be aborted at once.
/// Finished tasks remove themselves.
#[derive(Default)]
pub(crate) struct TaskSet {
    next: AtomicU64,
    tasks: Mutex<HashMap<u64, AbortHandle>>,
}

struct TaskGuard {
    set: Arc<TaskSet>,
    id: u64,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        lock(&self.set.tasks).remove(&self.id);
    }
}

impl TaskSet {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Spawns `fut` as a tracked task.
    pub(crate) fn spawn<F>(self: &Arc<Self>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let guard = TaskGuard {
            set: Arc::clone(self),
            id,
        };
        // Hold the lock across spawn+insert so a task that finishes at once
        // cannot remove itself before it was inserted.
        let mut tasks = lock(&self.tasks);
        let handle = tokio::spawn(async move {
            let _guard = guard;
            fut.await;
        });
        tasks.insert(id, handle.abort_handle());
    }

    /// Aborts every live task (their sockets are dropped, i.e. closed).
    pub(crate) fn abort_all(&self) {
        // Entries are removed by the tasks' guards once they are dropped.
        let handles: Vec<AbortHandle> = lock(&self.tasks).values().cloned().collect();
        for h in handles {
            h.abort();
        }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.tasks).len()
    }

    /// Waits (bounded) until every task has finished after [`Self::abort_all`].
    pub(crate) async fn wait_empty(&self, timeout: Duration) -> bool {
        wait_for(timeout, || self.len() == 0).await
    }
}
