//! Pieces for driving pv3's forwarder in-process: an API client for the
//! recording API, a spool queue in a scratch directory, readings.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pv3::api::ApiClient;
use pv3::forward::{DeadLetters, SpoolQueue};
use pv3::spool::{Opener, file_opener};
use pv3::state_dir::StateDir;

use super::api::RecordingApi;

/// A client for `api` with a 5 s timeout.
pub fn api_client(api: &RecordingApi) -> ApiClient {
    api_client_with_timeout(api, Duration::from_secs(5))
}

/// A client for `api` whose requests time out after `timeout`.
pub fn api_client_with_timeout(api: &RecordingApi, timeout: Duration) -> ApiClient {
    ApiClient::new(api.url().parse().expect("url"), None, timeout).expect("client")
}

/// A spool queue in `dir` (1 GiB limit), on redb's own file backend.
pub fn spool_queue(dir: &Path) -> SpoolQueue {
    spool_queue_with(dir, file_opener())
}

/// A spool queue in `dir` (1 GiB limit) opened through `opener` (a faulty
/// disk).
pub fn spool_queue_with(dir: &Path, opener: Opener) -> SpoolQueue {
    let state = StateDir::new(dir);
    let letters = Arc::new(DeadLetters::new(state.dead_letters()));
    SpoolQueue::open_with(&state, 1 << 30, letters, opener).expect("spool")
}
