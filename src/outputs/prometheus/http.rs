//! The HTTP server: one request per connection, hard limits on each.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, trace, warn};

use crate::ratelimit::{RateLimiter, suppressed_note};

use super::*;

/// Accepts until told to stop (or until the output is dropped), each
/// connection in a task of its own, at most [`MAX_CONNECTIONS`] at once.
pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut warnings = RateLimiter::new(crate::ratelimit::WINDOW);
    loop {
        // Finished connections are reaped here, so the set holds at most
        // the live ones.
        while connections.try_join_next().is_some() {}
        // A permit before the accept: when all are taken, new connections
        // wait in the kernel's backlog, not in memory here.
        let permit = tokio::select! {
            _ = &mut stop => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if let Some(n) = warnings.allow("accept") {
                        warn!("prometheus: cannot accept a connection: {e}{}", suppressed_note(n));
                    }
                    tokio::select! {
                        _ = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            },
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            connection(stream, &shared).await;
        });
    }
    shared.stats.set_connected(false);
    // Scrapes in progress are cut: at a stop there is nothing left to wait
    // for, and each would otherwise hold the stop for up to 5 s.
    connections.shutdown().await;
}

/// One connection: one request, one answer, closed, all within
/// [`CONNECTION_TIMEOUT`], the request head within [`HEAD_TIMEOUT`].
pub(super) async fn connection(mut stream: TcpStream, shared: &Shared) {
    let head_by = tokio::time::Instant::now() + HEAD_TIMEOUT;
    match tokio::time::timeout(CONNECTION_TIMEOUT, exchange(&mut stream, shared, head_by)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("prometheus: connection ended early: {e}"),
        Err(_) => debug!(
            "prometheus: connection closed after {} s without a complete exchange",
            CONNECTION_TIMEOUT.as_secs()
        ),
    }
}

/// Reads the request head (at most [`MAX_HEAD`] bytes, complete by
/// `head_by`), answers, closes.
pub(super) async fn exchange(
    stream: &mut TcpStream,
    shared: &Shared,
    head_by: tokio::time::Instant,
) -> io::Result<()> {
    let head = tokio::time::timeout_at(head_by, read_head(stream, shared)).await;
    let Ok(response) = head else {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no request within {} s", HEAD_TIMEOUT.as_secs()),
        ));
    };
    let Some(response) = response? else {
        return Ok(()); // closed before a whole request: nothing to answer
    };
    stream.write_all(&response.bytes).await?;
    trace!("prometheus: answered {}", response.status);
    stream.shutdown().await
}

/// Reads the request head and gives the answer to it; `None` when the
/// client closed before a whole head.
async fn read_head(stream: &mut TcpStream, shared: &Shared) -> io::Result<Option<Response>> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    let response = loop {
        if let Some(end) = head_end(&buf[..filled]) {
            break answer(&buf[..end], shared);
        }
        if filled == MAX_HEAD {
            break Response::text(
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
            );
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
    };
    Ok(Some(response))
}

/// Where the request head ends (after its blank line), if it has.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A whole response, head and body, ready to write.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) bytes: Vec<u8>,
}

impl Response {
    pub(super) fn new(
        status: u16,
        reason: &str,
        content_type: &str,
        extra: &str,
        body: &str,
        head: bool,
    ) -> Response {
        let mut bytes = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if !head {
            bytes.extend_from_slice(body.as_bytes());
        }
        Response { status, bytes }
    }

    pub(super) fn text(status: u16, reason: &str, body: &str) -> Response {
        Response::new(status, reason, "text/plain; charset=utf-8", "", body, false)
    }
}

/// The answer to the request whose head is `head`.
pub(super) fn answer(head: &[u8], shared: &Shared) -> Response {
    let Some((method, path)) = request_line(head) else {
        return Response::text(400, "Bad Request", "bad request\n");
    };
    let is_head = method == "HEAD";
    let allowed = method == "GET" || is_head;
    match path {
        "/metrics" | "/" if !allowed => Response::new(
            405,
            "Method Not Allowed",
            "text/plain; charset=utf-8",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n",
            false,
        ),
        "/metrics" => {
            let body = render(shared);
            if !is_head {
                // Counted once rendered and before the answer goes out: a
                // scrape shows the scrapes before it (and the age of the
                // last one, not a useless 0 for itself), and the next
                // scrape always sees this one counted.
                shared.stats.published(1);
            }
            Response::new(200, "OK", CONTENT_TYPE, "", &body, is_head)
        }
        "/" => Response::new(
            200,
            "OK",
            "text/plain; charset=utf-8",
            "",
            "pv3: Powervault P3 metrics for Prometheus are at /metrics\n",
            is_head,
        ),
        _ => Response::text(404, "Not Found", "not found: the metrics are at /metrics\n"),
    }
}

/// The method and the path (without a query) of an HTTP/1.x request line.
pub(super) fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some((method, path))
}
