//! Running the `pv3` binary under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::lock;

/// Path of the pv3 binary built by cargo for integration tests.
pub const PV3_BIN: &str = env!("CARGO_BIN_EXE_pv3");

/// Exact variable names removed from the child's environment.
const REMOVED_VARS: &[&str] = &["P3_DEVICE_ID", "STATE_DIRECTORY", "RUST_LOG"];
/// Variable name prefixes removed from the child's environment.
const REMOVED_PREFIXES: &[&str] = &["MQTT_", "API_"];

pub struct Pv3;

impl Pv3 {
    /// A `Command` for pv3 with MQTT_*, API_*, P3_DEVICE_ID, STATE_DIRECTORY
    /// and RUST_LOG removed from the inherited environment.
    pub fn cmd() -> Command {
        let mut cmd = Command::new(PV3_BIN);
        hermetic(&mut cmd);
        cmd
    }
}

/// Removes MQTT_*, API_* (inherited from this process), P3_DEVICE_ID,
/// STATE_DIRECTORY and RUST_LOG from `cmd`'s environment. Call it before
/// adding the variables a test wants.
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    for var in REMOVED_VARS {
        cmd.env_remove(var);
    }
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && REMOVED_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Output of one stream, line by line, shared with its reader thread.
#[derive(Clone)]
struct Captured {
    lines: Arc<Mutex<Vec<String>>>,
    /// Bumped on every new line; set to u64::MAX at EOF.
    version: Arc<watch::Sender<u64>>,
}

impl Captured {
    fn new() -> Captured {
        let (tx, _) = watch::channel(0);
        Captured {
            lines: Arc::new(Mutex::new(Vec::new())),
            version: Arc::new(tx),
        }
    }

    fn spawn_reader<R: Read + Send + 'static>(
        &self,
        reader: R,
        echo: &'static str,
    ) -> JoinHandle<()> {
        let this = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if std::env::var_os("PV3_TEST_ECHO").is_some() {
                            eprintln!("[pv3 {echo}] {text}");
                        }
                        lock(&this.lines).push(text);
                        this.version
                            .send_modify(|v| *v = v.saturating_add(1).min(u64::MAX - 1));
                    }
                }
            }
            this.version.send_replace(u64::MAX);
        })
    }

    fn text(&self) -> String {
        lock(&self.lines).join("\n")
    }

    fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    fn eof(&self) -> bool {
        *self.version.borrow() == u64::MAX
    }

    /// Waits until `pred(text)` holds; false on timeout or EOF without match.
    async fn wait(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let mut rx = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let at_eof = *rx.borrow_and_update() == u64::MAX;
            if pred(&self.text()) {
                return true;
            }
            if at_eof {
                return false;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(&self.text()),
            }
        }
    }
}

/// A running pv3 with captured stdout/stderr. Dropping it kills the child.
pub struct Pv3Process {
    child: Child,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Pv3Process {
    /// Spawns pv3 (hermetic env, see [`Pv3::cmd`]) with stdin closed.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Pv3Process {
        Self::spawn_cmd(Pv3::cmd().args(args).envs(envs.iter().copied()))
    }

    /// Spawns an arbitrary prepared command (stdout/stderr are piped here).
    pub fn spawn_cmd(cmd: &mut Command) -> Pv3Process {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("spawn {:?}: {e}", cmd.get_program()),
        };
        let stdout = Captured::new();
        let stderr = Captured::new();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(stdout.spawn_reader(out, "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(stderr.spawn_reader(err, "stderr"));
        }
        Pv3Process {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines()
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits until stderr contains `substr` (false on timeout or on EOF).
    pub async fn wait_for_stderr(&self, substr: &str, timeout: Duration) -> bool {
        self.stderr.wait(timeout, |t| t.contains(substr)).await
    }

    /// Waits until at least `n` stderr lines satisfy `pred` (false on
    /// timeout or on EOF). Woken by each new line, not by polling.
    pub async fn wait_for_stderr_lines(
        &self,
        n: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> bool {
        self.stderr
            .wait(timeout, |t| t.lines().filter(|l| pred(l)).count() >= n)
            .await
    }

    /// True once the process has closed its stderr (it exited, as a rule):
    /// lets a wait give up at once instead of running into its timeout.
    pub fn stderr_closed(&self) -> bool {
        self.stderr.eof()
    }

    /// Waits until stdout contains `substr` (false on timeout or on EOF).
    pub async fn wait_for_stdout(&self, substr: &str, timeout: Duration) -> bool {
        self.stdout.wait(timeout, |t| t.contains(substr)).await
    }

    /// Waits until stdout has at least `n` lines (false on timeout or EOF).
    pub async fn wait_for_stdout_lines(&self, n: usize, timeout: Duration) -> bool {
        self.stdout
            .wait(timeout, |t| !t.is_empty() && t.lines().count() >= n)
            .await
    }

    fn signal(&mut self, sig: &str) {
        if self.status.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run `kill`");
        assert!(status.success(), "kill {sig} {pid} failed: {status}");
    }

    pub fn sigterm(&mut self) {
        self.signal("-TERM");
    }

    pub fn sigint(&mut self) {
        self.signal("-INT");
    }

    /// SIGHUP: what a closed SSH session or terminal sends.
    pub fn sighup(&mut self) {
        self.signal("-HUP");
    }

    /// SIGKILL (no-op if already exited).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Polls `try_wait` every 20 ms up to `timeout`. On exit, also waits
    /// (up to 2 s) for the output readers to reach EOF so that
    /// `stdout()`/`stderr()` are complete.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                super::wait_for(Duration::from_secs(2), || {
                    self.stdout.eof() && self.stderr.eof()
                })
                .await;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// Sends SIGTERM and waits for exit; panics (with stderr) on timeout.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.sigterm();
        match self.wait_exit(timeout).await {
            Some(s) => s,
            None => panic!(
                "pv3 did not exit within {timeout:?} after SIGTERM; stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

impl Drop for Pv3Process {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- pv3 stderr ----\n{}\n---- pv3 stdout ----\n{}",
                self.stderr(),
                self.stdout()
            );
        }
        for reader in self.readers.drain(..) {
            // Readers end at EOF; if a grandchild keeps a pipe open, detach.
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

/// Runs pv3 to completion (hermetic env), feeding `stdin` if given
/// (otherwise stdin is closed). Blocking.
pub fn run_pv3(args: &[&str], envs: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Pv3::cmd();
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn pv3");
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            // Write from a thread so a child that does not read stdin (or
            // fills its stdout first) cannot deadlock us.
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let output = child.wait_with_output().expect("wait for pv3");
    if let Some(w) = writer {
        let _ = w.join();
    }
    output
}

/// [`run_pv3`] off the async runtime's threads (a test's servers run on
/// them), with stdin closed.
pub async fn run_pv3_async(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_pv3(&args, &envs, None)
    })
    .await
    .expect("pv3 runner thread")
}

/// `pv3 replay CAPTURE --to-mqtt` into the broker on `port`, with `flags`
/// (its `--speed`, say); panics with pv3's output unless it succeeds.
pub fn replay_to_broker(capture: &str, port: u16, flags: &[&str]) {
    let port = port.to_string();
    let mut args = vec![
        "replay",
        capture,
        "--to-mqtt",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        &port,
    ];
    args.extend_from_slice(flags);
    let out = run_pv3(&args, &[], None);
    assert!(out.status.success(), "{}", show(&out));
}

/// A finished run for a failure message: exit code, stdout, stderr.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
