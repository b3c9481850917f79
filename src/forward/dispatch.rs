//! Sending leases to the API, and the verdict on each answer: delivered,
//! set aside for good, or retry later (and when).
//!
//! POSTs run as child tasks, so a slow or dead API never stops the
//! forwarder from taking readings. While the API is failing, one POST at a
//! time. How soon the next attempt goes out depends on how it failed:
//!
//! - no answer at all (refused, reset, timed out): back off up to
//!   `--retry-max`, but probe `GET /health` every [`PROBE_EVERY`]; the first
//!   healthy answer ends the wait, so delivery resumes within about a second
//!   of the API's return, while a dead API costs one failed connect a second;
//! - an HTTP error (5xx, 429, 408: the API is up, something behind it is
//!   not): its `Retry-After` (at least [`MIN_RETRY_AFTER`]), else back off
//!   up to [`HTTP_RETRY_CAP`];
//! - a setting is wrong (401/403, 3xx/404/405): back off up to
//!   `--retry-max`: nothing changes until the owner fixes it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::batch::BatchKind;
use super::queue::Lease;
use crate::api::{ApiClient, HistoryError, PostError};
use crate::backoff::Backoff;
use crate::ratelimit::{RateLimiter, suppressed_note};

/// How often `/health` is probed while the API does not answer.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe that takes longer than this counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between attempts while the API answers with errors.
pub const HTTP_RETRY_CAP: Duration = Duration::from_secs(2);
/// `Retry-After: 0` must not turn backoff off.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a task in flight came back with.
enum Done {
    /// A POST's answer: the `created` count of a 2xx, when it has one.
    Posted(Result<Option<u64>, PostError>),
    /// A history check's answer: the (metric, millisecond) pairs held.
    Checked(Result<std::collections::HashSet<(String, i64)>, String>),
}

/// What became of a lease.
#[derive(Debug)]
pub enum Verdict {
    /// The API took it. `created`: how many measurements its answer says
    /// it created (`{"created": n}`), when it says.
    Delivered {
        /// The answer's `created`.
        created: Option<u64>,
    },
    /// The API refused it for good: keep it aside, do not resend.
    SetAside {
        /// The HTTP status.
        status: u16,
        /// The start of the API's answer.
        body: String,
    },
    /// Not delivered: give it back and try again later.
    Retry,
    /// The POST timed out after sending: the API may hold it. Check with
    /// [`Dispatcher::check`] before sending it again.
    Unknown,
    /// What the API holds of a lease whose POST's fate was unknown.
    Checked(Result<std::collections::HashSet<(String, i64)>, String>),
    /// `413`: the body is too large for something between pv3 and the API
    /// (a proxy's limit). Smaller POSTs will do.
    TooLarge {
        /// The start of the answer.
        body: String,
    },
}

/// Why the API is failing, which decides how to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failing {
    /// No answer at all: probe `/health`.
    Unreachable,
    /// It answered, with an error.
    Answering,
}

/// POSTs in flight, backoff and probing.
pub struct Dispatcher {
    api: ApiClient,
    retry_max: Duration,
    concurrency: usize,
    inflight: JoinSet<Done>,
    leases: HashMap<tokio::task::Id, Lease>,
    backoff: Backoff,
    /// No new POSTs before this.
    paused_until: Option<Instant>,
    failing: Option<(Instant, Failing)>,
    probe: JoinSet<bool>,
    next_probe: Option<Instant>,
    limiter: RateLimiter,
    /// POSTs started, and failed attempts, in all.
    pub posts: u64,
    /// Failed attempts in all.
    pub failures: u64,
    /// The last failure, when it said a setting is wrong (for fail-fast).
    pub misconfigured: Option<String>,
}

impl Dispatcher {
    /// A dispatcher with `concurrency` POSTs at once while healthy.
    pub fn new(api: ApiClient, concurrency: usize, retry: (Duration, Duration)) -> Dispatcher {
        Dispatcher {
            api,
            retry_max: retry.1,
            concurrency: concurrency.max(1),
            inflight: JoinSet::new(),
            leases: HashMap::new(),
            backoff: Backoff::new(retry.0, retry.1),
            paused_until: None,
            failing: None,
            probe: JoinSet::new(),
            next_probe: None,
            limiter: RateLimiter::new(crate::ratelimit::WINDOW),
            posts: 0,
            failures: 0,
            misconfigured: None,
        }
    }

    /// May another POST start now?
    pub fn has_capacity(&self) -> bool {
        if self.paused_until.is_some_and(|t| t > Instant::now()) {
            return false;
        }
        let limit = if self.failing.is_some() {
            1
        } else {
            self.concurrency
        };
        self.inflight.len() < limit
    }

    /// Nothing in flight.
    pub fn idle(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Since when the API has been failing, if it is.
    pub fn failing_since(&self) -> Option<Instant> {
        self.failing.map(|(t, _)| t)
    }

    /// Starts a POST of `lease`.
    pub fn send(&mut self, lease: Lease) {
        let api = self.api.clone();
        let batch = lease.batch.clone();
        let handle = self.inflight.spawn(async move {
            Done::Posted(match batch.kind {
                BatchKind::Measurements => api.post_measurements(&batch.device, batch.body).await,
                BatchKind::Alarms => api
                    .post_alarms(&batch.device, batch.body)
                    .await
                    .map(|()| None),
            })
        });
        self.posts += 1;
        self.leases.insert(handle.id(), lease);
    }

    /// After a POST whose fate is unknown (it timed out after sending):
    /// asks which of the lease's measurements the API holds, so that only
    /// the rest is sent again; `settle`: first wait one more
    /// `--api-timeout` (the API may still be storing it). The answer comes
    /// as [`Verdict::Checked`]; the worker asks again, rather than send,
    /// until there is one. The POST that timed out may still be stored
    /// after the answer, so a batch is stored at most twice.
    pub fn check(&mut self, lease: Lease, settle: bool) {
        let api = self.api.clone();
        let batch = lease.batch.clone();
        let handle = self.inflight.spawn(async move {
            let Some(items) = batch.items() else {
                // Not a measurement batch: nothing to ask, send it again.
                return Done::Checked(Ok(std::collections::HashSet::new()));
            };
            if settle {
                tokio::time::sleep(api.timeout()).await;
            }
            let mut metrics: Vec<&str> = items.iter().map(|i| i.metric.as_str()).collect();
            metrics.sort_unstable();
            metrics.dedup();
            let start = items.iter().map(|i| i.millis).min().unwrap_or(0);
            let end = items.iter().map(|i| i.millis).max().unwrap_or(0);
            let ts = |ms: i64| crate::reading::Timestamp::from_unix_micros(ms * 1000);
            let rows = match api
                .history(&batch.device, &metrics, ts(start), ts(end))
                .await
            {
                Ok(rows) => rows,
                // An API without the endpoint can never say: send it again
                // (at-least-once), rather than hold it back for good.
                Err(HistoryError::Unsupported(_)) => Vec::new(),
                Err(HistoryError::Failed(why)) => return Done::Checked(Err(why)),
            };
            Done::Checked(Ok(rows
                .into_iter()
                .map(|r| (r.metric, r.at.unix_millis()))
                .collect()))
        });
        self.leases.insert(handle.id(), lease);
    }

    /// The next thing that happens: a POST finishes (with its verdict), or
    /// the wait after a failure ends (`None`: time to dispatch again). A due
    /// probe is started on the way. Pending forever when nothing can happen.
    pub async fn next_event(&mut self) -> Option<(Lease, Verdict)> {
        enum Event {
            Done(Result<(tokio::task::Id, Done), tokio::task::JoinError>),
            Unpaused,
            ProbeDue,
            Probed(bool),
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let (paused, probe_at) = (self.paused_until, self.next_probe);
        let event = tokio::select! {
            Some(done) = self.inflight.join_next_with_id(), if !self.inflight.is_empty() => {
                Event::Done(done)
            }
            _ = sleep_until(paused.unwrap_or(far)), if paused.is_some() => Event::Unpaused,
            _ = sleep_until(probe_at.unwrap_or(far)), if probe_at.is_some() => Event::ProbeDue,
            Some(probed) = self.probe.join_next(), if !self.probe.is_empty() => {
                Event::Probed(probed.unwrap_or(false))
            }
            else => std::future::pending::<Event>().await,
        };
        match event {
            Event::Done(done) => {
                let (id, done) = match done {
                    Ok((id, done)) => (id, done),
                    Err(e) => (
                        e.id(),
                        Done::Posted(Err(PostError::Transient {
                            reason: format!("request task failed: {e}"),
                            retry_after: None,
                            status: None,
                        })),
                    ),
                };
                let lease = self.leases.remove(&id)?;
                let verdict = match done {
                    Done::Posted(result) => self.judge(result),
                    Done::Checked(held) => Verdict::Checked(held),
                };
                Some((lease, verdict))
            }
            Event::Unpaused => {
                self.paused_until = None;
                None
            }
            Event::ProbeDue => {
                self.next_probe = Some(Instant::now() + PROBE_EVERY);
                if self.probe.is_empty() {
                    let api = self.api.clone();
                    self.probe
                        .spawn(async move { api.healthy(PROBE_TIMEOUT).await });
                }
                None
            }
            Event::Probed(healthy) => {
                if healthy && self.failing.is_some_and(|(_, f)| f == Failing::Unreachable) {
                    debug!("the API answers /health again: retrying now");
                    self.paused_until = None;
                    self.next_probe = None;
                }
                None
            }
        }
    }

    /// A history check failed: wait as after a POST that got no answer.
    pub fn check_failed(&mut self, why: &str) {
        self.failed(&PostError::Transient {
            reason: format!(
                "a POST timed out and the API's history cannot say whether it was stored ({why}); asking again before sending it again"
            ),
            retry_after: None,
            status: None,
        });
    }

    /// Stops every POST; returns their leases (not delivered, as far as
    /// anyone knows).
    pub fn abort_all(&mut self) -> Vec<Lease> {
        self.inflight.abort_all();
        self.probe.abort_all();
        self.leases.drain().map(|(_, lease)| lease).collect()
    }

    fn judge(&mut self, result: Result<Option<u64>, PostError>) -> Verdict {
        match result {
            Ok(created) => {
                if let Some((since, _)) = self.failing.take() {
                    info!(
                        "API is taking data again after {:.0} s",
                        since.elapsed().as_secs_f64()
                    );
                }
                self.backoff.reset();
                self.next_probe = None;
                self.misconfigured = None;
                Verdict::Delivered { created }
            }
            Err(PostError::Rejected { status: 413, body }) => Verdict::TooLarge { body },
            Err(err @ PostError::Unknown { .. }) => {
                self.failed(&err);
                Verdict::Unknown
            }
            Err(PostError::Rejected { status, body }) => Verdict::SetAside { status, body },
            Err(err) => {
                self.failed(&err);
                Verdict::Retry
            }
        }
    }

    /// Decides how long to wait after a failed attempt, and says so.
    fn failed(&mut self, err: &PostError) {
        self.failures += 1;
        let (how, delay) = wait_after(err, &mut self.backoff, self.retry_max);
        let first = self.failing.is_none();
        let since = self.failing.map_or_else(Instant::now, |(t, _)| t);
        self.failing = Some((since, how));
        self.next_probe = (how == Failing::Unreachable).then(|| Instant::now() + PROBE_EVERY);
        let until = Instant::now() + delay;
        self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
        let what = match err {
            PostError::Misconfigured { status, body, hint } => {
                format!("API answered HTTP {status} ({body}): {hint}; data is kept and retried")
            }
            other => format!("API not taking data ({other})"),
        };
        self.misconfigured = match err {
            PostError::Misconfigured { status, hint, .. } => {
                Some(format!("the API answered HTTP {status}: {hint}"))
            }
            _ => None,
        };
        if first {
            warn!("{what}; retrying in {:.1} s", delay.as_secs_f64());
        } else if let Some(n) = self.limiter.allow("transient") {
            warn!(
                "{what}; still retrying (next in {:.1} s){}",
                delay.as_secs_f64(),
                suppressed_note(n)
            );
        } else {
            debug!("{what}; retry in {:.1} s", delay.as_secs_f64());
        }
    }
}

/// How to wait after `err`: see the module docs.
fn wait_after(err: &PostError, backoff: &mut Backoff, retry_max: Duration) -> (Failing, Duration) {
    let (how, delay) = match err {
        PostError::Transient {
            status: None,
            retry_after,
            ..
        } => (
            Failing::Unreachable,
            retry_after.unwrap_or_else(|| backoff.next_delay()),
        ),
        PostError::Transient {
            retry_after: Some(after),
            ..
        } => (Failing::Answering, (*after).max(MIN_RETRY_AFTER)),
        PostError::Transient { .. } => {
            (Failing::Answering, backoff.next_delay().min(HTTP_RETRY_CAP))
        }
        _ => (Failing::Answering, backoff.next_delay()),
    };
    (how, delay.min(retry_max.max(MIN_RETRY_AFTER)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(status: Option<u16>, retry_after: Option<u64>) -> PostError {
        PostError::Transient {
            reason: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
            status,
        }
    }

    #[test]
    fn retry_after_zero_does_not_turn_backoff_off() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(60));
        let (_, delay) = wait_after(
            &transient(Some(503), Some(0)),
            &mut backoff,
            Duration::from_secs(60),
        );
        assert_eq!(delay, MIN_RETRY_AFTER);
        let (_, delay) = wait_after(
            &transient(Some(429), Some(30)),
            &mut backoff,
            Duration::from_secs(60),
        );
        assert_eq!(
            delay,
            Duration::from_secs(30),
            "a longer Retry-After is honoured"
        );
    }

    #[test]
    fn an_api_that_answers_is_retried_within_the_cap_one_that_does_not_is_probed() {
        let mut backoff = Backoff::new(Duration::from_secs(8), Duration::from_secs(60));
        for _ in 0..10 {
            let (how, delay) = wait_after(
                &transient(Some(503), None),
                &mut backoff,
                Duration::from_secs(60),
            );
            assert_eq!(how, Failing::Answering);
            assert!(delay <= HTTP_RETRY_CAP, "{delay:?}");
        }
        let (how, _) = wait_after(
            &transient(None, None),
            &mut backoff,
            Duration::from_secs(60),
        );
        assert_eq!(how, Failing::Unreachable, "no answer: probe /health");
    }
}
