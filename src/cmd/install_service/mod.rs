//! `pv3 install-service`: `pv3 collect` as a hardened, self-restarting
//! systemd service, in one command.
//!
//! Two files: the unit (which holds no settings, so it can be rewritten on
//! every upgrade) and an env file holding the connection settings, secrets
//! included, readable by root only. Running it again updates both in place:
//! settings given again (flags or their variables) replace the old ones,
//! settings not given again are kept from the old env file, so
//! `sudo pv3 install-service` after replacing the binary is an upgrade that
//! changes nothing else.
//!
//! The work is split in three: [`settings`] reads what the env file holds
//! off clap's description of `collect`; the install or uninstall is then
//! worked out as a [`plan::Plan`]; `--dry-run` prints the plan, a real run
//! applies it. `--root DIR` (hidden, for tests) applies it under DIR and runs
//! no `systemctl`, printing what it would run; `--pretend-non-root` (hidden,
//! for tests that run as root, as CI does) exercises the refusal.

mod env_file;
mod old_unit;
mod plan;
mod settings;
mod unit;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::ArgMatches;
use tracing::{info, warn};

use super::ConfigError;
use crate::cli::InstallServiceArgs;
use crate::state_dir::StateDir;
use plan::{Cmd, FileChange, NewFile, Plan, on_disk, print};
pub use settings::{Coverage, Skip, coverage};
use unit::UNIT_NAME;

/// Where things go, for a system or a user service.
struct Layout {
    user: bool,
    /// `--root`: prefix for every path touched; no systemctl.
    root: Option<PathBuf>,
    unit: PathBuf,
    env_file: PathBuf,
    /// The collector's state directories, the usual one first.
    state_dirs: Vec<StateDir>,
}

impl Layout {
    fn new(args: &InstallServiceArgs) -> Result<Layout> {
        if args.user {
            let config = config_home()?;
            Ok(Layout {
                user: true,
                root: args.root.clone(),
                unit: config.join("systemd/user").join(UNIT_NAME),
                env_file: config.join("pv3/collector.env"),
                state_dirs: StateDir::resolve(None).into_iter().collect(),
            })
        } else {
            Ok(Layout {
                user: false,
                root: args.root.clone(),
                unit: Path::new("/etc/systemd/system").join(UNIT_NAME),
                env_file: PathBuf::from("/etc/pv3/collector.env"),
                state_dirs: StateDir::service_candidates(),
            })
        }
    }

    /// The directory of the env file, private to its owner.
    fn env_dir(&self) -> &Path {
        self.env_file.parent().unwrap_or(Path::new("/"))
    }

    /// `path` on disk: under `--root`, if given.
    fn disk(&self, path: &Path) -> PathBuf {
        on_disk(self.root.as_deref(), path)
    }

    fn systemctl(&self, args: &[&str]) -> Cmd {
        let mut cmd = vec!["systemctl".to_owned()];
        if self.user {
            cmd.push("--user".to_owned());
        }
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        Cmd(cmd)
    }

    fn logs_hint(&self) -> &'static str {
        if self.user {
            "journalctl --user -u pv3-collector -f"
        } else {
            "journalctl -u pv3-collector -f"
        }
    }
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
fn config_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from)
        && dir.is_absolute()
    {
        return Ok(dir);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config")),
        None => Err(ConfigError(anyhow::anyhow!(
            "--user needs the home directory, but HOME is not set"
        ))
        .into()),
    }
}

/// Installs, updates or (`--uninstall`) removes the service. `matches` is
/// what clap parsed of the whole command line: it tells which settings were
/// given rather than defaulted.
pub fn run(args: InstallServiceArgs, matches: &ArgMatches) -> Result<()> {
    let layout = Layout::new(&args)?;
    if !args.dry_run && !args.user && args.root.is_none() && (args.pretend_non_root || !is_root()) {
        let what = if args.uninstall {
            "remove the service"
        } else {
            "install the service"
        };
        return Err(ConfigError(anyhow::anyhow!(
            "install-service needs root to {what} under /etc/systemd/system: run it with sudo, or use --user for a user service (--dry-run shows what it would do)"
        ))
        .into());
    }
    if args.uninstall {
        return uninstall(&args, &layout);
    }
    let (_, matches) = matches
        .subcommand()
        .context("install-service was given no parsed command line")?;
    install(&args, matches, &layout)
}

/// Effective user id 0? From /proc/self/status, else `id -u`.
fn is_root() -> bool {
    if let Ok(text) = fs::read_to_string("/proc/self/status") {
        let euid = text
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(euid) = euid {
            return euid == 0;
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

// ---- install ---------------------------------------------------------

fn install(args: &InstallServiceArgs, matches: &ArgMatches, layout: &Layout) -> Result<()> {
    let real = !args.dry_run && layout.root.is_none();
    let binary = binary(args, layout.root.as_deref())?;
    if !layout.user {
        hidden_from_service(&binary, "the pv3 binary", "--binary", real)?;
    }
    let previous = match env_file::read(&layout.disk(&layout.env_file)) {
        Ok(previous) => previous,
        Err(e) if args.dry_run => {
            warn!("{e:#}; this dry run shows only the settings given now");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    settings::warn_not_carried(matches);
    let audience = settings::Audience {
        system: !layout.user,
        real,
    };
    let in_env_file: Vec<String> = previous.iter().map(|(k, _)| k.clone()).collect();
    let unit_text = fs::read_to_string(layout.disk(&layout.unit)).ok();
    let foreign = unit_text.as_deref().and_then(old_unit::foreign);
    let (previous, backup) = match &foreign {
        Some(old) => over_foreign_unit(layout, old, previous),
        None => (previous, None),
    };
    let settings = settings::settings(matches, &previous, audience)?;
    let already = layout.disk(&layout.unit).exists();
    let mut plan = install_plan(layout, &binary, &settings, &previous, &in_env_file, already)?;
    plan.files.splice(0..0, backup.map(FileChange::Write));
    if args.dry_run {
        return print(&format!(
            "# pv3 install-service --dry-run: nothing is written and nothing is run.\n{}\n# logs: {}\n",
            plan.describe(),
            layout.logs_hint()
        ));
    }
    plan.apply(layout.root.as_deref())?;
    print(&installed(layout, already))
}

/// Installing over a unit pv3 did not write (the old Python collector's,
/// same name): its settings join the previous ones (pv3's env file wins,
/// then the old unit's `EnvironmentFile=`, then its `Environment=`, as
/// systemd orders them), for pv3's own variables only; and a copy of it is
/// kept beside it, inert.
fn over_foreign_unit(
    layout: &Layout,
    old: &old_unit::Foreign,
    mut previous: Vec<(String, String)>,
) -> (Vec<(String, String)>, Option<NewFile>) {
    let ours: Vec<String> = settings::specs().into_iter().map(|s| s.key).collect();
    let mut theirs = old.env.clone();
    for file in &old.env_files {
        // Unreadable or gone: what the unit says itself still counts.
        if let Ok(pairs) = env_file::read(&layout.disk(file)) {
            for (k, v) in pairs {
                theirs.retain(|(old, _)| *old != k);
                theirs.push((k, v));
            }
        }
    }
    let mut carried = Vec::new();
    for (key, value) in theirs {
        if ours.contains(&key) && !previous.iter().any(|(k, _)| *k == key) {
            carried.push(key.clone());
            previous.push((key, value));
        }
    }
    let backup = old_unit::backup_path(&layout.unit);
    let mut done = format!(
        "kept the {UNIT_NAME} pv3 did not write{} as {} (systemd ignores it there; delete it once pv3 runs)
",
        old.exec
            .as_deref()
            .map(|e| format!(" (it ran {e})"))
            .unwrap_or_default(),
        backup.display()
    );
    if !carried.is_empty() {
        let _ = writeln!(done, "carried its settings over: {}", carried.join(", "));
    }
    let file = NewFile {
        path: backup,
        contents: old.text.clone(),
        masked: None,
        mode: 0o644,
        dir_mode: None,
        replaces: false,
        done,
    };
    (previous, Some(file))
}

/// Writes the unit and the env file, then has systemd (re)start the service.
/// `in_env_file` names the settings pv3's env file held before (the rest of
/// `previous` came from an old unit, and was said so).
fn install_plan(
    layout: &Layout,
    binary: &Path,
    settings: &[settings::Setting],
    previous: &[(String, String)],
    in_env_file: &[String],
    already: bool,
) -> Result<Plan> {
    let ours: Vec<String> = settings::specs().into_iter().map(|s| s.key).collect();
    let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
    let mut env_done = format!(
        "wrote {} (mode 0600): {}\n",
        layout.env_file.display(),
        if keys.is_empty() {
            "no settings, pv3's defaults apply".to_owned()
        } else {
            keys.join(", ")
        }
    );
    let kept: Vec<&str> = settings
        .iter()
        .filter(|s| s.kept && in_env_file.contains(&s.key))
        .map(|s| s.key.as_str())
        .collect();
    if !kept.is_empty() {
        let _ = writeln!(
            env_done,
            "kept from the previous env file: {}",
            kept.join(", ")
        );
    }
    let unit = NewFile {
        path: layout.unit.clone(),
        contents: unit::unit_file(binary, &layout.env_file, layout.user)?,
        masked: None,
        mode: 0o644,
        dir_mode: None,
        replaces: already,
        done: format!(
            "{} {}\n",
            if already { "updated" } else { "wrote" },
            layout.unit.display()
        ),
    };
    let env = NewFile {
        path: layout.env_file.clone(),
        contents: env_file::render(settings, previous, &ours, false),
        masked: Some(env_file::render(settings, previous, &ours, true)),
        mode: 0o600,
        dir_mode: Some(0o700),
        replaces: false,
        done: env_done,
    };
    let mut commands = vec![layout.systemctl(&["daemon-reload"])];
    if already {
        commands.push(layout.systemctl(&["enable", UNIT_NAME]));
        commands.push(layout.systemctl(&["restart", "--no-block", UNIT_NAME]));
    } else {
        // --no-block: the service is "started" once subscribed (READY=1),
        // which waits for the P3's broker; installing must not.
        commands.push(layout.systemctl(&["enable", "--now", "--no-block", UNIT_NAME]));
    }
    Ok(Plan {
        before: Vec::new(),
        files: vec![FileChange::Write(unit), FileChange::Write(env)],
        commands,
    })
}

/// What to do next, once installed.
fn installed(layout: &Layout, already: bool) -> String {
    let mut out = String::new();
    if layout.root.is_none() {
        let _ = writeln!(
            out,
            "{UNIT_NAME} is {}.",
            if already {
                "updated and restarted"
            } else {
                "installed and started"
            }
        );
    }
    let _ = writeln!(out, "logs: {}", layout.logs_hint());
    let _ = writeln!(
        out,
        "check that data flows: {}pv3 check-api",
        if layout.user { "" } else { "sudo " }
    );
    if layout.user {
        let _ = writeln!(
            out,
            "to keep it running while you are logged out: loginctl enable-linger"
        );
    }
    out
}

/// Where the Debian package puts pv3 (and where apt upgrades it).
const PACKAGED: &str = "/usr/bin/pv3";

/// The binary the service runs: absolute, symlinks resolved. Without
/// `--binary`, the pv3 package's [`PACKAGED`] when the package installed it
/// (so that `apt upgrade` upgrades the service too, whichever pv3 ran
/// install-service), else this one.
fn binary(args: &InstallServiceArgs, root: Option<&Path>) -> Result<PathBuf> {
    let given = match &args.binary {
        Some(path) => path.clone(),
        None if packaged(root) => {
            let this = std::env::current_exe().and_then(fs::canonicalize).ok();
            if this.as_deref() != Some(Path::new(PACKAGED)) {
                info!(
                    "the service runs {PACKAGED}, which the pv3 package installed (apt upgrades it), not {}; --binary chooses another",
                    this.map_or_else(|| "this binary".to_owned(), |p| p.display().to_string())
                );
            }
            return Ok(PathBuf::from(PACKAGED));
        }
        None => std::env::current_exe()
            .context("cannot tell where this pv3 binary is: pass --binary PATH")?,
    };
    let path = fs::canonicalize(&given).map_err(|e| {
        ConfigError(anyhow::anyhow!(
            "--binary {}: {e}: give the path of an installed pv3",
            given.display()
        ))
    })?;
    if !path.is_file() {
        return Err(ConfigError(anyhow::anyhow!("--binary {}: not a file", path.display())).into());
    }
    Ok(path)
}

/// The system service sees no home directories (`ProtectHome=yes`): a
/// binary or a file given as a setting there would make it fail at start.
/// An error for a real install, a warning for a dry run or `--root`.
fn hidden_from_service(path: &Path, what: &str, flag: &str, real: bool) -> Result<()> {
    let hidden = ["/home", "/root", "/run/user"]
        .iter()
        .any(|dir| path.starts_with(dir));
    if !hidden {
        return Ok(());
    }
    let message = if flag == "--binary" {
        format!(
            "{what} {} is in a home directory, which the hardened service cannot see: copy it first (sudo install -m 755 {} /usr/local/bin/pv3) and run /usr/local/bin/pv3 install-service, or pass --binary",
            path.display(),
            path.display()
        )
    } else {
        format!(
            "{what} {} is in a home directory, which the hardened service cannot see: copy it to /etc/pv3/ and pass {flag} with the new path",
            path.display()
        )
    };
    if real {
        Err(ConfigError(anyhow::anyhow!(message)).into())
    } else {
        warn!("{message}");
        Ok(())
    }
}

/// Did the pv3 Debian package install [`PACKAGED`]? `dpkg-query --search`
/// says (with `--root` under a test's root): dpkg's database is dpkg's own
/// interface, not ours to read (lintian's uses-dpkg-database-directly).
fn packaged(root: Option<&Path>) -> bool {
    if !on_disk(root, Path::new(PACKAGED)).is_file() {
        return false;
    }
    let mut query = std::process::Command::new("dpkg-query");
    if let Some(root) = root {
        query.arg(format!("--root={}", root.display()));
    }
    let Ok(found) = query
        .args(["--search", PACKAGED])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return false;
    };
    // `pv3: /usr/bin/pv3`, or `pv3:arm64, other: /usr/bin/pv3`.
    let suffix = format!(": {PACKAGED}");
    found.status.success()
        && String::from_utf8_lossy(&found.stdout).lines().any(|line| {
            line.strip_suffix(&suffix).is_some_and(|packages| {
                packages
                    .split(", ")
                    .any(|p| p == "pv3" || p.starts_with("pv3:"))
            })
        })
}

// ---- uninstall ---------------------------------------------------------

fn uninstall(args: &InstallServiceArgs, layout: &Layout) -> Result<()> {
    let installed = layout.disk(&layout.unit).exists();
    let plan = uninstall_plan(layout, installed, args.purge);
    if args.dry_run {
        let mut out = String::from(
            "# pv3 install-service --uninstall --dry-run: nothing is removed and nothing is run.\n",
        );
        if !installed {
            let _ = writeln!(out, "# {UNIT_NAME} is not installed");
        }
        out.push_str(&plan.describe());
        return print(&out);
    }
    if !installed {
        print(&format!(
            "{UNIT_NAME} is not installed (no {})\n",
            layout.unit.display()
        ))?;
    }
    plan.apply(layout.root.as_deref())?;
    if !args.purge
        && let Some(dir) = layout.state_dirs.first()
        && fs::symlink_metadata(layout.disk(dir.path())).is_ok()
    {
        print(&format!(
            "kept the collector's state in {} (--purge removes it)\n",
            dir.path().display()
        ))?;
    }
    Ok(())
}

/// Stops the service, removes its files (and with `--purge` its state),
/// then has systemd forget it.
fn uninstall_plan(layout: &Layout, installed: bool, purge: bool) -> Plan {
    let mut plan = Plan::default();
    if installed {
        plan.before
            .push(layout.systemctl(&["disable", "--now", UNIT_NAME]));
        plan.files.push(FileChange::Remove(layout.unit.clone()));
        plan.commands.push(layout.systemctl(&["daemon-reload"]));
    }
    if layout.disk(&layout.env_file).exists() {
        plan.files.push(FileChange::Remove(layout.env_file.clone()));
    }
    plan.files
        .push(FileChange::RemoveIfEmpty(layout.env_dir().to_path_buf()));
    if purge {
        for dir in &layout.state_dirs {
            if fs::symlink_metadata(layout.disk(dir.path())).is_ok() {
                plan.files.push(FileChange::Purge(dir.path().to_path_buf()));
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_layout(root: &Path) -> Layout {
        Layout {
            user: false,
            root: Some(root.to_path_buf()),
            unit: Path::new("/etc/systemd/system").join(UNIT_NAME),
            env_file: PathBuf::from("/etc/pv3/collector.env"),
            state_dirs: StateDir::service_candidates(),
        }
    }

    #[test]
    fn home_directories_are_hidden_from_the_system_service() {
        let home = Path::new("/home/pi/.cargo/bin/pv3");
        assert!(hidden_from_service(home, "the pv3 binary", "--binary", true).is_err());
        assert!(hidden_from_service(home, "the pv3 binary", "--binary", false).is_ok());
        let root = Path::new("/root/ca.pem");
        assert!(hidden_from_service(root, "the CA file", "--mqtt-ca", true).is_err());
        let fine = Path::new("/usr/local/bin/pv3");
        assert!(hidden_from_service(fine, "the pv3 binary", "--binary", true).is_ok());
    }

    #[test]
    fn an_install_plan_writes_two_files_then_starts_the_service() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = system_layout(root.path());
        let plan =
            install_plan(&layout, Path::new("/usr/bin/pv3"), &[], &[], &[], false).expect("plan");
        let modes: Vec<(PathBuf, u32, Option<u32>)> = plan
            .files
            .iter()
            .filter_map(|c| match c {
                FileChange::Write(f) => Some((f.path.clone(), f.mode, f.dir_mode)),
                _ => None,
            })
            .collect();
        assert_eq!(
            modes,
            [
                (layout.unit.clone(), 0o644, None),
                (layout.env_file.clone(), 0o600, Some(0o700)),
            ]
        );
        let commands: Vec<String> = plan.commands.iter().map(ToString::to_string).collect();
        assert_eq!(
            commands,
            [
                "systemctl daemon-reload",
                "systemctl enable --now --no-block pv3-collector.service"
            ]
        );
        assert!(plan.before.is_empty());
    }

    #[test]
    fn an_uninstall_plan_purges_every_state_directory_there_is() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = system_layout(root.path());
        for dir in &layout.state_dirs {
            fs::create_dir_all(layout.disk(dir.path())).expect("state dir");
        }
        let plan = uninstall_plan(&layout, false, true);
        let purged: Vec<&Path> = plan
            .files
            .iter()
            .filter_map(|c| match c {
                FileChange::Purge(p) => Some(p.as_path()),
                _ => None,
            })
            .collect();
        let expected: Vec<&Path> = layout.state_dirs.iter().map(StateDir::path).collect();
        assert_eq!(purged, expected);
        assert!(plan.before.is_empty() && plan.commands.is_empty());
    }
}
