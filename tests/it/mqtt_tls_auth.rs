use crate::support;

// `pv3 collect` against a real Mosquitto that takes TLS only (a throwaway
// CA made with the `openssl` CLI) and requires a username and password.
//
// Needs `mosquitto`, `mosquitto_passwd`, `mosquitto_pub` and `openssl`.
// Without them the tests print a line and pass, unless
// `PV3_REQUIRE_MOSQUITTO=1` is set (CI), in which case they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::broker::{Mosquitto, find_executable};
use support::collect::{CollectRun, Collector};

/// Generous: these machines are shared and slow. Waits end on the event,
/// not on this.
const T: Duration = Duration::from_secs(20);

const USER: &str = "user";
const PASSWORD: &str = "pass";
const DEVICE: &str = "PV001001DEV";

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

struct Tools {
    mosquitto: PathBuf,
    mosquitto_passwd: PathBuf,
    mosquitto_pub: PathBuf,
    openssl: PathBuf,
}

impl Tools {
    /// All four tools, or None (after printing why) when one is missing.
    /// Panics instead when `PV3_REQUIRE_MOSQUITTO=1`.
    fn find() -> Option<Tools> {
        let mosquitto = Mosquitto::bin_path();
        let mosquitto_passwd = find_executable("mosquitto_passwd");
        let mosquitto_pub = Mosquitto::pub_path();
        let openssl = find_executable("openssl");
        let missing: Vec<&str> = [
            ("mosquitto", mosquitto.is_none()),
            ("mosquitto_passwd", mosquitto_passwd.is_none()),
            ("mosquitto_pub", mosquitto_pub.is_none()),
            ("openssl", openssl.is_none()),
        ]
        .into_iter()
        .filter(|(_, absent)| *absent)
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            let missing = missing.join(", ");
            if std::env::var("PV3_REQUIRE_MOSQUITTO").as_deref() == Ok("1") {
                panic!("PV3_REQUIRE_MOSQUITTO=1 but not installed: {missing}");
            }
            eprintln!("not installed: {missing}: skipping the Mosquitto TLS tests");
            return None;
        }
        Some(Tools {
            mosquitto: mosquitto?,
            mosquitto_passwd: mosquitto_passwd?,
            mosquitto_pub: mosquitto_pub?,
            openssl: openssl?,
        })
    }
}

/// Runs `program args` in `dir` with stdin closed (nothing may prompt) and
/// panics, showing its output, unless it succeeds.
fn run_ok(program: &Path, args: &[&str], dir: &Path) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{}{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Owner-only permissions (Mosquitto warns about, and newer versions refuse,
/// world-readable password files).
fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Certificates and password file
// ---------------------------------------------------------------------------

/// Minimal OpenSSL config, so that neither the system's openssl.cnf nor
/// OPENSSL_CONF changes what is generated.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = pv3 test

[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

/// Extensions of the broker's certificate: a v3 leaf with the SANs rustls
/// checks (it ignores the CN).
const SERVER_EXT: &str = "\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A self-signed CA `{name}.pem` / `{name}.key` in `dir` (P-256 keys: quick
/// to generate). Each CA has its own subject: two CAs with one name would
/// make a verifier try the wrong key (BadSignature, not UnknownIssuer).
fn make_ca(openssl: &Path, dir: &Path, name: &str) {
    let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
    let subject = format!("/CN=pv3 test {name}");
    run_ok(
        openssl,
        &[
            "req",
            "-x509",
            "-new",
            "-config",
            "openssl.cnf",
            "-extensions",
            "v3_ca",
            "-subj",
            &subject,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
        ],
        dir,
    );
    owner_only(&dir.join(key));
}

/// `ca.pem`, `server.pem` + `server.key` (signed by the CA, for localhost
/// and 127.0.0.1), `other-ca.pem` (a CA that signed nothing here) and the
/// password file `passwd` holding USER / PASSWORD.
fn make_credentials(tools: &Tools, dir: &Path) {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("write openssl.cnf");
    std::fs::write(dir.join("server.ext"), SERVER_EXT).expect("write server.ext");
    make_ca(&tools.openssl, dir, "ca");
    make_ca(&tools.openssl, dir, "other-ca");
    run_ok(
        &tools.openssl,
        &[
            "req",
            "-new",
            "-config",
            "openssl.cnf",
            "-subj",
            "/CN=localhost",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    owner_only(&dir.join("server.key"));
    run_ok(
        &tools.openssl,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
        dir,
    );
    // -c creates the file. Recent mosquitto_passwd versions warn about (or
    // fix) permissions; the status is what counts, and 0600 is set below
    // whatever they did.
    run_ok(
        &tools.mosquitto_passwd,
        &["-c", "-b", "passwd", USER, PASSWORD],
        dir,
    );
    owner_only(&dir.join("passwd"));
}

// ---------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------

/// Mosquitto with one listener on 127.0.0.1: TLS only, no anonymous
/// clients. Killed on drop.
struct TlsBroker {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    mosquitto_pub: PathBuf,
}

impl TlsBroker {
    /// None when a tool is missing (see [`Tools::find`]).
    async fn start() -> Option<TlsBroker> {
        let tools = Tools::find()?;
        let dir = tempfile::Builder::new()
            .prefix("pv3-mqtt-tls-")
            .tempdir()
            .expect("create tempdir for certificates and mosquitto.conf");
        make_credentials(&tools, dir.path());
        // A port found free may be taken before mosquitto binds it: retry
        // on another one, as the harness does.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = support::free_port();
            match launch(&tools.mosquitto, dir.path(), port).await {
                Ok(child) => {
                    return Some(TlsBroker {
                        dir,
                        port,
                        child,
                        mosquitto_pub: tools.mosquitto_pub,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        panic!("mosquitto (TLS) failed to start after 5 attempts: {last_err}");
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the broker's certificate.
    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("mosquitto.log")).unwrap_or_default()
    }

    /// Publishes once with `mosquitto_pub` over TLS as USER, QoS 1 (it
    /// returns after the broker's PUBACK). Bounded: a hung client is killed.
    async fn publish(&self, topic: &str, payload: &str) {
        let mut child = Command::new(&self.mosquitto_pub)
            .args(["-h", "localhost", "-p", &self.port.to_string()])
            .args(["--cafile", &self.ca(), "-u", USER, "-P", PASSWORD])
            .args(["-t", topic, "-m", payload, "-q", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_pub");
        let exited =
            support::wait_for(T, || matches!(child.try_wait(), Ok(Some(_)) | Err(_))).await;
        if !exited {
            let _ = child.kill();
        }
        let output = child.wait_with_output().expect("wait for mosquitto_pub");
        assert!(
            exited && output.status.success(),
            "mosquitto_pub to port {} failed ({}; exited in time: {exited}):\n{}{}",
            self.port,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- mosquitto log ----\n{}", self.log());
        }
    }
}

/// Writes the config for `port`, starts mosquitto and waits (bounded) until
/// the port accepts TCP connections.
async fn launch(bin: &Path, dir: &Path, port: u16) -> Result<Child, String> {
    let file = |name: &str| dir.join(name).display().to_string();
    // `user root`: started as root, mosquitto would otherwise switch to the
    // `mosquitto` user, which cannot read this owner-only tempdir. Ignored
    // when not started as root.
    let conf = format!(
        "listener {port} 127.0.0.1\n\
         cafile {}\n\
         certfile {}\n\
         keyfile {}\n\
         allow_anonymous false\n\
         password_file {}\n\
         persistence false\n\
         user root\n\
         log_dest stderr\n\
         log_type all\n",
        file("ca.pem"),
        file("server.pem"),
        file("server.key"),
        file("passwd"),
    );
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("write mosquitto.conf: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mosquitto.log"))
        .map_err(|e| format!("open mosquitto.log: {e}"))?;
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let log = || std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
    let deadline = Instant::now() + T;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "mosquitto exited ({status}) on port {port}:\n{}",
                log()
            ));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "mosquitto did not accept connections on port {port} within {T:?}:\n{}",
                log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// pv3
// ---------------------------------------------------------------------------

/// `pv3 collect --dry-run --format jsonl` over TLS to `broker` as USER with
/// `password`, trusting `ca` (None: the "system" roots). Reconnects quickly
/// so that a second attempt comes within the test's waits. A dry run keeps
/// no state, so these tests wait on the log.
fn collect(broker: &TlsBroker, ca: Option<&str>, password: &str) -> CollectRun {
    let run = CollectRun::new(broker.port())
        .host("localhost")
        .reconnect_max("0.5")
        .dry_run()
        .args(&["--format", "jsonl", "--mqtt-tls"])
        .args(&["--mqtt-username", USER, "--mqtt-password", password]);
    match ca {
        Some(ca) => run.args(&["--mqtt-ca", ca]),
        None => run,
    }
}

/// `-vv`: logs the reconnect attempts, and everything else a leak could
/// hide in.
const VERBOSE: &[&str] = &["-vv"];

/// Waits until at least `n` stderr lines satisfy `pred`.
async fn wait_for_lines(pv3: &Collector, n: usize, pred: impl Fn(&str) -> bool) -> bool {
    pv3.wait_for_stderr_lines(n, pred, T).await
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_password_work() {
    let Some(broker) = TlsBroker::start().await else {
        return;
    };
    let ca = broker.ca();
    let pv3 = collect(&broker, Some(&ca), PASSWORD).spawn();
    pv3.subscribed(1).await;

    let topic = format!("pv/PV3/{DEVICE}/inverter/charge");
    broker.publish(&topic, r#"{"power":591}"#).await;
    assert!(
        pv3.wait_for_stdout_lines(1, T).await,
        "nothing printed:\n{}",
        pv3.stderr()
    );
    let stdout = pv3.stdout_lines();
    let stderr = pv3.stop().await;

    assert_eq!(stdout.len(), 1, "one reading expected: {stdout:?}");
    let reading: Value = serde_json::from_str(&stdout[0]).expect("the line is JSON");
    assert_eq!(reading["metric_name"], "battery_power", "{reading}");
    assert_eq!(reading["metric_value"].as_f64(), Some(591.0), "{reading}");
    assert_eq!(reading["unit"], "W", "{reading}");
    assert_eq!(reading["device_id"], DEVICE, "{reading}");
    assert_eq!(reading["source_topic"], topic, "{reading}");
    assert!(!stderr.contains("WARN"), "no warnings expected:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_reported_clearly() {
    let Some(broker) = TlsBroker::start().await else {
        return;
    };
    const WRONG: &str = "n0t-the-r1ght-0ne";
    let ca = broker.ca();
    let mut pv3 = collect(&broker, Some(&ca), WRONG)
        .global_args(VERBOSE)
        .spawn();
    let refused = "connection refused by the broker";
    assert!(
        pv3.wait_for_stderr(refused, T).await,
        "no refusal reported:\n{}",
        pv3.stderr(),
    );
    let stderr = pv3.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains(refused))
        .expect("the refusal line");
    assert!(line.contains("WARN"), "a warning: {line}");
    assert!(
        line.contains(&format!("localhost:{}", broker.port())),
        "names the broker: {line}"
    );
    assert!(line.contains("--mqtt-password"), "names the fix: {line}");

    // Not a crash, not a give-up: it tries again (logged at debug level).
    assert!(
        wait_for_lines(&pv3, 2, |l| l.contains(refused)).await,
        "no second attempt:\n{}",
        pv3.stderr()
    );
    assert_eq!(pv3.try_status(), None, "pv3 exited:\n{}", pv3.stderr());
    assert!(
        pv3.stdout().is_empty(),
        "nothing to print: {}",
        pv3.stdout()
    );

    let stderr = pv3.stop().await;
    assert_eq!(
        stderr.matches("WARN").count(),
        1,
        "one warning, the rest at debug level:\n{stderr}"
    );
    assert!(!stderr.contains(WRONG), "password leaked:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_unknown_ca_fails_with_a_clear_error() {
    let Some(broker) = TlsBroker::start().await else {
        return;
    };
    // No --mqtt-ca: pv3 trusts the system's roots, which do not know the
    // test CA. SSL_CERT_FILE (honoured by rustls-native-certs) replaces
    // them by an unrelated CA so that the outcome does not depend on
    // whether this machine has any roots installed.
    let other_ca = broker.path("other-ca.pem").display().to_string();
    let mut pv3 = collect(&broker, None, PASSWORD)
        .global_args(VERBOSE)
        .env("SSL_CERT_FILE", &other_ca)
        .spawn();
    let endpoint = format!("localhost:{}", broker.port());
    let tls_problem = |l: &str| {
        let lower = l.to_lowercase();
        l.contains("MQTT broker")
            && l.contains(&endpoint)
            && (lower.contains("certificate") || lower.contains("tls"))
    };
    assert!(
        wait_for_lines(&pv3, 1, tls_problem).await,
        "no TLS error naming {endpoint}:\n{}",
        pv3.stderr(),
    );
    let stderr = pv3.stderr();
    let line = stderr
        .lines()
        .find(|l| tls_problem(l))
        .expect("the TLS error line");
    assert!(line.contains("WARN"), "a warning: {line}");
    assert!(
        line.to_lowercase().contains("certificate"),
        "says the certificate is the problem: {line}"
    );

    assert!(
        wait_for_lines(&pv3, 2, tls_problem).await,
        "no second attempt:\n{}",
        pv3.stderr()
    );
    assert_eq!(pv3.try_status(), None, "pv3 exited:\n{}", pv3.stderr());
    assert!(
        !pv3.stderr().contains("subscribed to"),
        "an unknown CA must not be trusted:\n{}",
        pv3.stderr()
    );
    assert!(
        pv3.stdout().is_empty(),
        "nothing to print: {}",
        pv3.stdout()
    );
    pv3.stop().await;
}
