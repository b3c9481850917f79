//! TCP proxy on 127.0.0.1 for link-failure injection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{TaskSet, bind_reuse, lock};

struct ProxyShared {
    cut: Mutex<bool>,
    conns: Arc<TaskSet>,
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

/// Forwards every connection to 127.0.0.1:`target_port`.
///
/// While cut, live connections are closed and new ones are accepted and
/// closed at once (the proxy's port stays bound, so it is stable across
/// cut/restore).
pub struct TcpProxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target_port: u16) -> TcpProxy {
        let listener = bind_reuse(0).expect("TcpProxy: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("TcpProxy: local_addr").port();
        let shared = Arc::new(ProxyShared {
            cut: Mutex::new(false),
            conns: TaskSet::new(),
            accepted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                // Check and spawn under the cut lock, so `cut()` cannot miss
                // a connection accepted concurrently.
                let cut = lock(&accept_shared.cut);
                if *cut {
                    accept_shared.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                accept_shared.conns.spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                drop(cut);
            }
        });
        TcpProxy {
            port,
            shared,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every live connection and closes new ones until [`Self::restore`].
    pub fn cut(&self) {
        let mut cut = lock(&self.shared.cut);
        *cut = true;
        drop(cut);
        self.shared.conns.abort_all();
    }

    pub fn restore(&self) {
        *lock(&self.shared.cut) = false;
    }

    pub fn is_cut(&self) -> bool {
        *lock(&self.shared.cut)
    }

    /// Connections closed at once because the proxy was cut.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Live forwarded connections.
    pub fn live(&self) -> usize {
        self.shared.conns.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.conns.abort_all();
    }
}
