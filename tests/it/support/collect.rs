//! `pv3 collect` under test: [`CollectRun`] builds the command line every
//! collect test needs, [`Collector`] is the running process.
//!
//! The waits read `<state-dir>/status.json`, which the collector rewrites
//! every `PV3_STATUS_INTERVAL_MS` (set short here) and right after each
//! subscription, rather than grep log lines: log text is for people and
//! changes with them. A dry run has no state directory and writes no
//! status, so there (and only there) `subscribed` falls back to the
//! "subscribed to" log line.
//!
//! The file is parsed as a `serde_json::Value`, not as pv3's own `Status`
//! type: these tests check the file's format as `check-api` and people see
//! it, and must not compile against the code they test.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::api::RecordingApi;
use super::proc::{Pv3, Pv3Process};

/// How long a wait of [`Collector`] may take. Generous: these machines are
/// shared and slow; waits end on the event, not on this.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often the collector under test rewrites `status.json`, in ms.
const STATUS_INTERVAL_MS: &str = "50";

/// The flags [`CollectRun`] always passes; given again through
/// [`CollectRun::args`] clap would refuse them, so they have setters.
const OWN_FLAGS: &[&str] = &[
    "--mqtt-host",
    "--mqtt-port",
    "--api-url",
    "--state-dir",
    "--retry-max",
    "--mqtt-reconnect-max",
    "--linger-ms",
    "--dry-run",
];

/// Where the collector keeps its state.
enum State {
    /// A fresh directory under cargo's scratch space (kept for inspection).
    Scratch,
    Dir(PathBuf),
    /// None at all: a dry run.
    None,
}

/// A `pv3 collect` command line with quick test defaults: retries and
/// reconnects capped at 0.2 s and 0.3 s, batches sealed after 20 ms, a
/// fresh state directory, `status.json` every 50 ms.
#[must_use]
pub struct CollectRun {
    broker_port: u16,
    host: String,
    api_url: Option<String>,
    state: State,
    dry_run: bool,
    settings_in_env: bool,
    retry_max: String,
    reconnect_max: String,
    linger_ms: String,
    global_args: Vec<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl CollectRun {
    /// Collect from the broker on 127.0.0.1:`broker_port`.
    pub fn new(broker_port: u16) -> CollectRun {
        CollectRun {
            broker_port,
            host: "127.0.0.1".into(),
            api_url: None,
            state: State::Scratch,
            dry_run: false,
            settings_in_env: false,
            retry_max: "0.2".into(),
            reconnect_max: "0.3".into(),
            linger_ms: "20".into(),
            global_args: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Deliver to `api`.
    pub fn api(self, api: &RecordingApi) -> CollectRun {
        self.api_url(api.url())
    }

    pub fn api_url(mut self, url: impl Into<String>) -> CollectRun {
        self.api_url = Some(url.into());
        self
    }

    /// The broker's host name (default 127.0.0.1; TLS wants `localhost`).
    pub fn host(mut self, host: &str) -> CollectRun {
        self.host = host.into();
        self
    }

    /// Use `dir` as the state directory (a restart, or a test that looks
    /// into it); the default is a fresh one.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> CollectRun {
        self.state = State::Dir(dir.into());
        self
    }

    /// `--dry-run`: print, send nothing, keep no state (and no status).
    pub fn dry_run(mut self) -> CollectRun {
        self.dry_run = true;
        self.state = State::None;
        self
    }

    /// Pass the broker, the API URL and the state directory the way the
    /// systemd unit does (MQTT_HOST, MQTT_PORT, API_URL, STATE_DIRECTORY),
    /// not as flags.
    pub fn settings_in_env(mut self) -> CollectRun {
        self.settings_in_env = true;
        self
    }

    /// `--mqtt-reconnect-max`, in seconds (default 0.3).
    pub fn reconnect_max(mut self, secs: &str) -> CollectRun {
        self.reconnect_max = secs.into();
        self
    }

    /// `--linger-ms` (default 20).
    pub fn linger_ms(mut self, ms: u64) -> CollectRun {
        self.linger_ms = ms.to_string();
        self
    }

    /// Arguments before `collect` (`-vv`).
    pub fn global_args(mut self, args: &[&str]) -> CollectRun {
        self.global_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// More `collect` arguments, after the ones this builder sets.
    pub fn args(mut self, args: &[&str]) -> CollectRun {
        for arg in args {
            assert!(
                !OWN_FLAGS.contains(arg),
                "{arg} is set by CollectRun: use its setter"
            );
        }
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable for pv3 (on top of a hermetic environment,
    /// see [`Pv3::cmd`]).
    pub fn env(mut self, name: &str, value: &str) -> CollectRun {
        self.envs.push((name.into(), value.into()));
        self
    }

    pub fn spawn(self) -> Collector {
        let state_dir = match self.state {
            State::Scratch => Some(super::scratch_dir("collect")),
            State::Dir(dir) => Some(dir),
            State::None => None,
        };
        let port = self.broker_port.to_string();
        let mut cmd = Pv3::cmd();
        cmd.args(&self.global_args).arg("collect");
        let mut settings: Vec<(&str, &str, String)> = vec![
            ("--mqtt-host", "MQTT_HOST", self.host),
            ("--mqtt-port", "MQTT_PORT", port),
        ];
        if let Some(url) = self.api_url {
            settings.push(("--api-url", "API_URL", url));
        }
        if let Some(dir) = &state_dir {
            let dir = dir.to_str().expect("utf-8 state dir").to_owned();
            settings.push(("--state-dir", "STATE_DIRECTORY", dir));
        }
        for (flag, var, value) in settings {
            if self.settings_in_env {
                cmd.env(var, value);
            } else {
                cmd.arg(flag).arg(value);
            }
        }
        cmd.args(["--retry-max", &self.retry_max])
            .args(["--mqtt-reconnect-max", &self.reconnect_max])
            .args(["--linger-ms", &self.linger_ms]);
        if self.dry_run {
            cmd.arg("--dry-run");
        }
        cmd.args(&self.args)
            .env("PV3_STATUS_INTERVAL_MS", STATUS_INTERVAL_MS)
            .envs(self.envs);
        Collector {
            process: Pv3Process::spawn_cmd(&mut cmd),
            state_dir,
        }
    }
}

/// A running `pv3 collect`. Derefs to its [`Pv3Process`] (stderr, stdout,
/// signals); dropping it kills the process.
pub struct Collector {
    process: Pv3Process,
    state_dir: Option<PathBuf>,
}

impl Deref for Collector {
    type Target = Pv3Process;
    fn deref(&self) -> &Pv3Process {
        &self.process
    }
}

impl DerefMut for Collector {
    fn deref_mut(&mut self) -> &mut Pv3Process {
        &mut self.process
    }
}

impl Collector {
    /// A collect started some other way (`pv3 addon`), keeping its state in
    /// `state_dir`.
    pub fn adopt(process: Pv3Process, state_dir: PathBuf) -> Collector {
        Collector {
            process,
            state_dir: Some(state_dir),
        }
    }

    /// The state directory (panics for a dry run, which has none).
    pub fn state_dir(&self) -> &Path {
        self.state_dir
            .as_deref()
            .expect("a dry run has no state directory")
    }

    /// This process's `status.json` as it is now; `None` while there is
    /// none, or it cannot be parsed, or it is an earlier run's (another pid).
    pub fn status(&self) -> Option<Value> {
        let path = self.state_dir.as_ref()?.join("status.json");
        let bytes = std::fs::read(path).ok()?;
        let status: Value = serde_json::from_slice(&bytes).ok()?;
        (status["pid"] == self.process.pid()).then_some(status)
    }

    /// Waits until this process's `status.json` satisfies `pred` and
    /// returns it; panics with the last status seen (and the log, through
    /// [`Pv3Process`]'s drop) on timeout or when the process exits first.
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        assert!(
            self.state_dir.is_some(),
            "a dry run writes no status.json: cannot wait for {what}"
        );
        let mut last = None;
        let mut found = None;
        super::wait_for(WAIT, || {
            // Read before looking at the exit: the last status is written
            // just before it.
            let exited = self.process.stderr_closed();
            if let Some(status) = self.status() {
                if pred(&status) {
                    found = Some(status);
                    return true;
                }
                last = Some(status);
            }
            exited
        })
        .await;
        if let Some(status) = found {
            return status;
        }
        let why = if self.process.stderr_closed() {
            "collect exited"
        } else {
            "timed out"
        };
        panic!(
            "collect never reached {what} ({why} after at most {WAIT:?}); last status.json: {}",
            last.map_or_else(|| "none".to_string(), |s| s.to_string())
        );
    }

    /// Waits until the broker has confirmed `times` subscriptions since
    /// start (one per connection: 2 means it subscribed again after a
    /// reconnect). A dry run keeps no status: there the log says it.
    pub async fn subscribed(&self, times: u64) {
        if self.state_dir.is_some() {
            self.wait_status(&format!("{times} subscription(s)"), |s| {
                number(s, "subscriptions").is_some_and(|v| v >= times)
            })
            .await;
            return;
        }
        let times = usize::try_from(times).expect("a count");
        assert!(
            self.process
                .wait_for_stderr_lines(times, |l| l.contains("subscribed to"), WAIT)
                .await,
            "collect (dry run) did not subscribe {times} time(s):\n{}",
            self.process.stderr()
        );
    }

    /// Waits until the spool holds exactly `n` measurements.
    pub async fn spool_holds(&self, n: u64) -> Value {
        self.wait_status(&format!("a spool of {n} measurements"), |s| {
            number(s, "spool_measurements") == Some(n)
        })
        .await
    }

    /// Waits until the spool is drained: empty, and its file deleted (the
    /// collector is back on the memory path).
    pub async fn spool_drained(&self) -> Value {
        let file = self.state_dir().join("spool.redb");
        self.wait_status("a drained spool", |s| {
            number(s, "spool_batches") == Some(0)
                && number(s, "spool_measurements") == Some(0)
                && !file.exists()
        })
        .await
    }

    /// Waits until the collector has taken `n` MQTT messages (decoded or
    /// not), and asserts that it took no more.
    pub async fn received(&self, n: u64) -> Value {
        let status = self
            .wait_status(&format!("{n} messages received"), |s| {
                number(s, "counters.received").is_some_and(|v| v >= n)
            })
            .await;
        assert_eq!(number(&status, "counters.received"), Some(n), "{status}");
        status
    }

    /// Waits until the collector counts `n` measurements as accepted by the
    /// API. The recording API sees a batch before the collector reads the
    /// answer: stop only after this when the log or the report must show
    /// the delivery.
    pub async fn delivered(&self, n: u64) -> Value {
        self.wait_status(&format!("{n} measurements delivered"), |s| {
            number(s, "counters.delivered").is_some_and(|v| v >= n)
        })
        .await
    }

    /// SIGTERM, asserts exit status 0, returns stderr. The handle stays
    /// (for `stdout()`); see [`Self::stop`].
    pub async fn stop_in_place(&mut self) -> String {
        let status = self.process.terminate(WAIT).await;
        assert!(
            status.success(),
            "collect exited with {status}:\n{}",
            self.process.stderr()
        );
        self.process.stderr()
    }

    /// SIGTERM, asserts exit status 0, returns stderr.
    pub async fn stop(mut self) -> String {
        self.stop_in_place().await
    }

    /// SIGHUP (a closed SSH session), asserts exit status 0, returns
    /// stderr.
    pub async fn hang_up(mut self) -> String {
        self.process.sighup();
        let status = self.process.wait_exit(WAIT).await.unwrap_or_else(|| {
            panic!(
                "collect did not stop after SIGHUP:\n{}",
                self.process.stderr()
            )
        });
        assert!(
            status.success(),
            "collect exited with {status} after SIGHUP:\n{}",
            self.process.stderr()
        );
        self.process.stderr()
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(mut self) {
        self.process.kill();
        self.process
            .wait_exit(WAIT)
            .await
            .expect("collect gone after SIGKILL");
    }
}

/// The number at `path` (dot-separated: `counters.received`) in a status;
/// `None` when it is missing (a wait on it then fails, showing the status).
pub fn number(status: &Value, path: &str) -> Option<u64> {
    path.split('.').fold(status, |v, key| &v[key]).as_u64()
}
