//! The PV3 Monitor API client (`shared/spec/pv3-monitor-api.md`).
//!
//! Writes are classified so that the forwarder can decide what to do with a
//! failed batch without knowing HTTP: retry it later ([`PostError::Transient`]),
//! keep it until the owner fixes a setting ([`PostError::Misconfigured`]), or
//! set it aside because sending it again can never succeed
//! ([`PostError::Rejected`]).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Response, StatusCode, Url};

use crate::secret::Secret;

/// How much of an error response body is kept for the log.
const ERROR_BODY_LIMIT: usize = 2048;

/// Why a POST failed, sorted by what the forwarder should do with the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostError {
    /// Connection refused/reset, timeout, 408, 429, 5xx: worth retrying.
    #[error("{reason}")]
    Transient {
        /// What went wrong, for the log.
        reason: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        /// The HTTP status, when the API answered at all (`None`: no
        /// connection, a reset, a timeout).
        status: Option<u16>,
    },
    /// 401/403 (a proxy wants a different token), 3xx/404/405 (the URL
    /// points somewhere else): a setting is wrong, not the data. Kept and
    /// retried until the owner fixes `hint`.
    #[error("HTTP {status}: {body}")]
    Misconfigured {
        /// The HTTP status.
        status: u16,
        /// The start of the response body, on one line.
        body: String,
        /// Which setting to check, for the log.
        hint: &'static str,
    },
    /// The request timed out after it was sent: the API may have stored it
    /// or not. Worth retrying, after asking the API what it holds.
    #[error("{reason}")]
    Unknown {
        /// What went wrong, for the log.
        reason: String,
    },
    /// Any other non-2xx answer: the body will never be accepted as is.
    #[error("HTTP {status}: {body}")]
    Rejected {
        /// The HTTP status (0: no request was made, the URL could not be built).
        status: u16,
        /// The start of the response body (or why the URL failed), on one line.
        body: String,
    },
}

/// A client for one PV3 Monitor API: base URL, token and HTTP settings.
/// Cheap to clone; clones share the connection pool.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    timeout: Duration,
    base: Url,
    token: Option<HeaderValue>,
}

/// Parses and checks `--api-url` (http or https, no query).
pub fn parse_api_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme must be http or https, not {}",
            url.scheme()
        ));
    }
    if url.cannot_be_a_base() || url.host_str().is_none() {
        return Err("URL needs a host, like http://localhost:8800".into());
    }
    Ok(url)
}

impl ApiClient {
    /// A client for the API at `base`, sending `token` as a bearer token;
    /// `timeout` bounds each request. Redirects are errors, not followed.
    pub fn new(base: Url, token: Option<&Secret>, timeout: Duration) -> Result<Self> {
        crate::tls::ensure_provider();
        let token = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .context("--api-token holds characters not allowed in an HTTP header")?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // A redirected POST turns into a GET: treat a redirect as an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pv3/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(ApiClient {
            http,
            timeout,
            base,
            token,
        })
    }

    /// The time a request may take (`--api-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The base URL, as given; `check-api` reports it.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `base` + path segments, each percent-encoded (device ids come from
    /// topics and may hold anything).
    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let Ok(mut path) = url.path_segments_mut() else {
                bail!(
                    "API URL {} cannot take a path",
                    crate::secret::shown_url(&self.base)
                );
            };
            path.pop_if_empty();
            path.extend(segments);
        }
        Ok(url)
    }

    /// `POST /api/devices/{id}/measurements/batch` with a ready JSON array.
    /// `Ok(Some(n))`: the answer's `{"created": n}`; `Ok(None)` when it
    /// names no count.
    pub async fn post_measurements(
        &self,
        device: &str,
        body: Bytes,
    ) -> Result<Option<u64>, PostError> {
        self.post(&["api", "devices", device, "measurements", "batch"], body)
            .await
    }

    /// `POST /api/devices/{id}/alarms` with a ready JSON object.
    pub async fn post_alarms(&self, device: &str, body: Bytes) -> Result<(), PostError> {
        self.post(&["api", "devices", device, "alarms"], body)
            .await
            .map(|_| ())
    }

    /// A POST; `Ok` holds the answer's `created` count, if it has one.
    async fn post(&self, segments: &[&str], body: Bytes) -> Result<Option<u64>, PostError> {
        let url = self.url(segments).map_err(|e| PostError::Rejected {
            status: 0,
            body: e.to_string(),
        })?;
        let mut req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() && !e.is_connect() {
                PostError::Unknown {
                    reason: describe_error(&e),
                }
            } else {
                PostError::Transient {
                    reason: describe_error(&e),
                    retry_after: None,
                    status: None,
                }
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return check_answer(status, error_body(resp).await);
        }
        let retry_after = retry_after(&resp);
        let body = error_body(resp).await;
        Err(classify(status, body, retry_after))
    }

    /// Does `GET /health` answer 2xx within `timeout`? The forwarder's cheap
    /// probe while the API is unreachable.
    pub async fn healthy(&self, timeout: Duration) -> bool {
        let Ok(url) = self.url(&["health"]) else {
            return false;
        };
        let mut req = self.http.get(url).timeout(timeout);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        req.send().await.is_ok_and(|r| r.status().is_success())
    }

    /// `GET /api/devices/{id}/history`: the rows the API holds for
    /// `metrics` between `start` and `end` (inclusive, at the millisecond
    /// pv3 writes them with).
    pub async fn history(
        &self,
        device: &str,
        metrics: &[&str],
        start: crate::reading::Timestamp,
        end: crate::reading::Timestamp,
    ) -> Result<Vec<HistoryRow>, HistoryError> {
        let mut url = self
            .url(&["api", "devices", device, "history"])
            .map_err(|e| HistoryError::Failed(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("metrics", &metrics.join(","))
            .append_pair("start", &start.to_rfc3339())
            .append_pair("end", &end.to_rfc3339());
        let mut req = self.http.get(url);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| HistoryError::Failed(describe_error(&e)))?;
        let status = resp.status();
        if matches!(status.as_u16(), 404 | 405) {
            return Err(HistoryError::Unsupported(status.as_u16()));
        }
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(HistoryError::Failed(format!("HTTP {status}: {body}")));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HistoryError::Failed(describe_error(&e)))?;
        #[derive(serde::Deserialize)]
        struct Row {
            metric_name: String,
            metric_value: Option<f64>,
            timestamp: Option<String>,
        }
        let rows: Vec<Row> = serde_json::from_slice(&bytes)
            .map_err(|e| HistoryError::Failed(format!("not a list of rows: {e}")))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let at = crate::reading::Timestamp::parse_rfc3339(r.timestamp.as_deref()?).ok()?;
                Some(HistoryRow {
                    metric: r.metric_name,
                    value: r.metric_value,
                    at,
                })
            })
            .collect())
    }

    /// `GET` a path under the base URL; for `check-api`.
    pub async fn get(&self, segments: &[&str]) -> Result<Response, reqwest::Error> {
        let url = match self.url(segments) {
            Ok(url) => url,
            Err(_) => self.base.clone(),
        };
        let mut req = self.http.get(url);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        req.send().await
    }
}

fn classify(status: StatusCode, body: String, retry_after: Option<Duration>) -> PostError {
    let code = status.as_u16();
    match code {
        408 | 429 | 500..=599 => PostError::Transient {
            reason: if body.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {body}")
            },
            retry_after,
            status: Some(code),
        },
        401 | 403 => PostError::Misconfigured {
            status: code,
            body,
            hint: "check --api-token / API_TOKEN",
        },
        300..=399 | 404 | 405 => PostError::Misconfigured {
            status: code,
            body,
            hint: "check --api-url / API_URL (a redirect or a missing endpoint: is it the PV3 Monitor API?)",
        },
        _ => PostError::Rejected { status: code, body },
    }
}

/// A row [`ApiClient::history`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// `metric_name`.
    pub metric: String,
    /// `metric_value`, parsed as JSON numbers are (what pv3 sent, exactly:
    /// serde writes the shortest text that reads back to the same f64).
    pub value: Option<f64>,
    /// `timestamp`, to the microsecond the API stores.
    pub at: crate::reading::Timestamp,
}

/// Why [`ApiClient::history`] has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// The API has no history endpoint (an older backend, or not PV3
    /// Monitor): 404 or 405.
    #[error("the API has no history endpoint (HTTP {0})")]
    Unsupported(u16),
    /// It failed this time.
    #[error("{0}")]
    Failed(String),
}

/// A 2xx is a delivery only when it is the API's own answer, a JSON object
/// (`{"created": n, ...}` for a batch, `{"alarms_updated": ...}` for
/// alarms): `Ok` holds its `created`, when it has one. A captive portal or
/// a misrouted proxy answers 200 with a page: that is a setting to fix, and
/// the data is kept.
fn check_answer(status: StatusCode, body: String) -> Result<Option<u64>, PostError> {
    if let Ok(serde_json::Value::Object(answer)) = serde_json::from_str(&body) {
        return Ok(answer.get("created").and_then(serde_json::Value::as_u64));
    }
    let mut shown: String = body.chars().take(120).collect();
    if shown.len() < body.len() {
        shown.push('…');
    }
    Err(PostError::Misconfigured {
        status: status.as_u16(),
        body: shown,
        hint: "the answer is not PV3 Monitor's JSON: is --api-url / API_URL the API, not a proxy's login page?",
    })
}

/// `Retry-After` in seconds (the HTTP-date form is rare enough to ignore).
fn retry_after(resp: &Response) -> Option<Duration> {
    let text = resp.headers().get(RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = text.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// The first [`ERROR_BODY_LIMIT`] bytes of a response body, as text, on one
/// line.
async fn error_body(mut resp: Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY_LIMIT {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line for a transport error: reqwest's Display hides the cause
/// ("error sending request"), so walk the source chain.
pub fn describe_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut parts = vec![kind.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        for code in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).expect("valid");
            assert!(matches!(
                classify(status, String::new(), None),
                PostError::Transient { .. }
            ));
        }
        for code in [301, 307, 401, 403, 404, 405] {
            let status = StatusCode::from_u16(code).expect("valid");
            assert!(matches!(
                classify(status, String::new(), None),
                PostError::Misconfigured { .. }
            ));
        }
        for code in [400, 409, 413, 422] {
            let status = StatusCode::from_u16(code).expect("valid");
            assert!(matches!(
                classify(status, String::new(), None),
                PostError::Rejected { .. }
            ));
        }
    }

    #[test]
    fn device_ids_are_escaped_in_urls() {
        let base = parse_api_url("http://localhost:8800/").expect("valid");
        let client = ApiClient::new(base, None, Duration::from_secs(1)).expect("client");
        let url = client
            .url(&["api", "devices", "a/b c?", "alarms"])
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://localhost:8800/api/devices/a%2Fb%20c%3F/alarms"
        );
        let base = parse_api_url("http://h/prefix").expect("valid");
        let client = ApiClient::new(base, None, Duration::from_secs(1)).expect("client");
        assert_eq!(
            client.url(&["health"]).expect("url").as_str(),
            "http://h/prefix/health"
        );
    }

    #[test]
    fn api_urls_are_checked() {
        assert!(parse_api_url("http://localhost:8800").is_ok());
        assert!(parse_api_url("https://pv3.example/api-root").is_ok());
        assert!(parse_api_url("localhost:8800").is_err());
        assert!(parse_api_url("ftp://x").is_err());
        assert!(parse_api_url("not a url").is_err());
    }
}
