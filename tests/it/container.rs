//! The container images `scripts/release.sh` saves in `dist/`, loaded and run
//! with podman: `pv3 --version`, a short `collect --no-api --publish` against
//! a broker on the host with the state in a bind-mounted volume, and the
//! add-on's image started the way the Supervisor starts it (no arguments,
//! `/data/options.json` readable by root only, `SUPERVISOR_TOKEN` set).
//!
//! It needs podman and the recipe's archives for this version; anything
//! missing skips it, with the reason, unless `PV3_REQUIRE_CONTAINER=1` (CI,
//! after running the recipe) makes that a failure.

use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;

use support::broker::{InProcessBroker, find_executable, publish_charges};
use support::fixtures::DEVICE;
use support::proc::{Pv3Process, show};
use support::supervisor::{Answer, Supervisor};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Generous: a container start on a shared machine. Waits end on the event.
const T: Duration = Duration::from_secs(60);

/// The Docker/Podman image of `dist/pv3-<version>-amd64.oci.tar`.
fn image() -> String {
    format!("ghcr.io/pv3-project/pv3:{VERSION}-amd64")
}

/// The add-on's image of `dist/pv3-addon-<version>-amd64.oci.tar`.
fn addon_image() -> String {
    format!("ghcr.io/pv3-project/amd64-pv3-addon:{VERSION}")
}

fn archive(stage: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("dist/{stage}-{VERSION}-amd64.oci.tar"))
}

/// podman with the runtime and cgroup manager that work on a machine where
/// crun and systemd's cgroups are restricted (runc, cgroupfs).
fn podman(args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    if find_executable("runc").is_some() {
        cmd.args(["--runtime", "runc"]);
    }
    cmd.args(["--cgroup-manager", "cgroupfs"]).args(args);
    cmd
}

fn ok(args: &[&str]) -> String {
    let out = podman(args).output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This process's soft limit named `name` in /proc/self/limits.
fn soft_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// `podman run` with limits the container may have: no more open files or
/// processes than this process may (without CAP_SYS_RESOURCE runc cannot
/// raise them, and podman's defaults, `--ulimit host` too, ask for more).
fn run_args() -> Vec<String> {
    let files = soft_limit("Max open files").unwrap_or(1024).min(65_536);
    let procs = soft_limit("Max processes").unwrap_or(1024).min(32_768);
    [
        "run".to_owned(),
        "--rm".into(),
        "--network".into(),
        "host".into(),
        "--ulimit".into(),
        format!("nofile={files}:{files}"),
        "--ulimit".into(),
        format!("nproc={procs}:{procs}"),
    ]
    .into()
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run(archive: &Path) -> Option<String> {
    if podman(&["--version"]).output().is_err() {
        return Some("no podman (apt-get install podman runc)".into());
    }
    if !archive.is_file() {
        return Some(format!(
            "no {}: build it with scripts/release.sh",
            archive.display()
        ));
    }
    None
}

/// Loads `archive` as `name`, or says why the test is skipped.
fn load(archive: &Path, name: &str) -> bool {
    let required = std::env::var_os("PV3_REQUIRE_CONTAINER").is_some_and(|v| v == "1");
    if let Some(why) = cannot_run(archive) {
        assert!(!required, "PV3_REQUIRE_CONTAINER=1, but {why}");
        eprintln!("skipped: {why}");
        return false;
    }
    ok(&[
        "load",
        "--quiet",
        "--input",
        archive.to_str().expect("utf-8 path"),
    ]);
    ok(&["image", "exists", name]);
    true
}

/// A directory for /data that the image's user can write: the test may run
/// as root or not, the container as 10001.
fn volume() -> PathBuf {
    let dir = support::scratch_dir("container-data");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

/// `podman run ... IMAGE args`, spawned with its output captured; a name so
/// that a failed test leaves no container running.
struct Container {
    process: Pv3Process,
    name: String,
}

impl Container {
    fn start(extra: &[String], image: &str, args: &[&str]) -> Container {
        let name = format!("pv3-test-{}-{}", std::process::id(), support::free_port());
        let mut cmd = podman(&[]);
        cmd.args(run_args())
            .args(["--name", &name])
            .args(extra)
            .arg(image)
            .args(args);
        Container {
            process: Pv3Process::spawn_cmd(&mut cmd),
            name,
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "1", &self.name]).output();
    }
}

async fn retained_on(broker: &InProcessBroker, topic: &str, run: &Pv3Process) {
    let there = support::wait_for(T, || {
        broker.retained().contains_key(topic) || run.stderr_closed()
    })
    .await;
    assert!(
        there && broker.retained().contains_key(topic),
        "nothing retained on {topic}; retained: {:?}\n{}",
        broker.retained().keys().collect::<Vec<_>>(),
        run.stderr()
    );
}

fn finish(out: Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_pv3_as_a_user_and_collect_keeps_its_state_in_the_volume() {
    let image = image();
    if !load(&archive("pv3"), &image) {
        return;
    }
    assert_eq!(
        ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]).trim(),
        "10001:10001"
    );
    let mut version = run_args();
    version.extend([image.clone(), "--version".into()]);
    let version: Vec<&str> = version.iter().map(String::as_str).collect();
    assert_eq!(ok(&version), format!("pv3 {VERSION}\n"));

    // TLS finds the image's CA roots: it tries to connect (nothing listens:
    // exit 1) instead of stopping at "no system CA certificates found" (2).
    let closed = support::free_port().to_string();
    let mut tls = run_args();
    tls.push(image.clone());
    tls.extend(
        [
            "devices",
            "--mqtt-tls",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &closed,
            "--wait",
            "1",
        ]
        .map(str::to_owned),
    );
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let (code, _, stderr) = finish(podman(&tls).output().expect("podman run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("CA certificates"), "{stderr}");

    // No command: `pv3 addon`, which outside an add-on says what to run.
    let mut bare = run_args();
    bare.push(image.clone());
    let bare: Vec<&str> = bare.iter().map(String::as_str).collect();
    let (code, _, stderr) = finish(podman(&bare).output().expect("podman run"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("pv3 collect --mqtt-host"), "{stderr}");

    let broker = InProcessBroker::start().await;
    let data = volume();
    let port = broker.port().to_string();
    let container = Container::start(
        &[
            "--volume".into(),
            format!("{}:/data", data.display()),
            "--env".into(),
            "PV3_STATUS_INTERVAL_MS=100".into(),
        ],
        &image,
        &[
            "collect",
            "--no-api",
            "--publish",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &port,
            "--device-id",
            DEVICE,
        ],
    );
    let mut container = container;
    let run = &mut container.process;
    assert!(
        broker
            .wait_for_subscription(&format!("pv/PV3/{DEVICE}/#"), T)
            .await,
        "{}",
        run.stderr()
    );
    publish_charges(broker.port(), 0..3).await;
    retained_on(&broker, &format!("pv3/{DEVICE}/battery_power"), run).await;
    let status = run.terminate(T).await;
    assert!(status.success(), "{status}: {}", run.stderr());
    for file in ["status.json", "energy.json"] {
        let path = data.join(file);
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), run.stderr()));
        assert_eq!(
            meta.uid(),
            10001,
            "{} is not the image user's",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_addon_image_starts_as_the_supervisor_starts_it() {
    let image = addon_image();
    if !load(&archive("pv3-addon"), &image) {
        return;
    }
    assert_eq!(
        ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]).trim(),
        "0:0"
    );
    let p3 = InProcessBroker::start().await;
    let mosquitto = InProcessBroker::start_with_login("addons", "pw").await;
    let supervisor =
        Supervisor::start(Answer::mqtt("127.0.0.1", mosquitto.port(), "addons", "pw")).await;
    // The Supervisor's /data: its own directory, options.json for root only.
    let data = support::scratch_dir("container-addon");
    let options = data.join("options.json");
    let opts = json!({"mqtt_host": "127.0.0.1", "mqtt_port": p3.port(), "device_id": DEVICE,
        "ha_discovery": true, "log_level": "info"});
    std::fs::write(&options, opts.to_string()).expect("options.json");
    std::fs::set_permissions(&options, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let container = Container::start(
        &[
            "--volume".into(),
            format!("{}:/data", data.display()),
            "--env".into(),
            "SUPERVISOR_TOKEN=token".into(),
            "--env".into(),
            format!("PV3_SUPERVISOR_URL={}", supervisor.url()),
        ],
        &image,
        &[],
    );
    assert!(
        p3.wait_for_subscription(&format!("pv/PV3/{DEVICE}/#"), T)
            .await,
        "{}",
        container.process.stderr()
    );
    publish_charges(p3.port(), 0..3).await;
    let config = format!(
        "homeassistant/sensor/pv3_{}/battery_power/config",
        DEVICE.to_lowercase()
    );
    retained_on(&mosquitto, &config, &container.process).await;
    assert_eq!(supervisor.requests().len(), 1);
    let mut container = container;
    let status = container.process.terminate(T).await;
    assert!(status.success(), "{status}: {}", container.process.stderr());
    assert!(
        data.join("status.json").is_file(),
        "{}",
        container.process.stderr()
    );
}

/// docs/compose.yaml runs this version's image with a command collect takes
/// and settings in variables collect reads: a misspelt flag would stop the
/// container at once.
#[test]
fn the_compose_example_runs_a_collect_this_version_takes() {
    use clap::{CommandFactory, Parser};

    let Some(python) = crate::addon::python() else {
        return;
    };
    let compose = crate::addon::yaml(
        python,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compose.yaml"),
    );
    let pv3 = &compose["services"]["pv3"];
    assert_eq!(pv3["image"], format!("ghcr.io/pv3-project/pv3:{VERSION}"));
    let mut argv = vec!["pv3".to_owned()];
    argv.extend(
        pv3["command"]
            .as_array()
            .expect("a command list")
            .iter()
            .map(|a| a.as_str().expect("a string").to_owned()),
    );
    match pv3::cli::Cli::try_parse_from(&argv) {
        Ok(cli) => assert!(matches!(cli.command, pv3::cli::Command::Collect(_))),
        Err(e) => panic!("{argv:?}: {e}"),
    }
    let cli = pv3::cli::Cli::command();
    let collect = cli.find_subcommand("collect").expect("collect");
    let read: Vec<String> = collect
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for var in pv3["environment"]
        .as_object()
        .expect("an environment")
        .keys()
    {
        assert!(read.contains(var), "collect reads no {var}");
    }
}
