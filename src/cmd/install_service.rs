//! `pv3 install-service`: `pv3 collect` as a hardened, self-restarting
//! systemd service, in one command.
//!
//! Two files: the unit (which holds no settings, so it can be rewritten on
//! every upgrade) and an env file holding the connection settings, secrets
//! included, readable by root only. Running it again updates both in place:
//! settings given again (flags or MQTT_*/API_*/P3_DEVICE_ID variables)
//! replace the old ones, settings not given again are kept from the old env
//! file, so `sudo pv3 install-service` after replacing the binary is an
//! upgrade that changes nothing else.
//!
//! `--root DIR` (hidden, for tests) writes every file under DIR and runs no
//! `systemctl`, printing what it would run; `--pretend-non-root` (hidden,
//! for tests that run as root, as CI does) exercises the refusal.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use clap::CommandFactory;
use clap::parser::ValueSource;
use tracing::warn;

use super::ConfigError;
use crate::cli::{Cli, InstallServiceArgs};

pub const UNIT_NAME: &str = "pv3-collector.service";

/// The settings the env file can hold, in the order they are written:
/// (variable, clap argument id, secret).
const SETTINGS: &[(&str, &str, bool)] = &[
    ("MQTT_HOST", "mqtt_host", false),
    ("MQTT_PORT", "mqtt_port", false),
    ("MQTT_USERNAME", "mqtt_username", false),
    ("MQTT_PASSWORD", "mqtt_password", true),
    ("MQTT_TLS", "mqtt_tls", false),
    ("MQTT_CA_FILE", "mqtt_ca", false),
    ("MQTT_CLIENT_ID", "mqtt_client_id", false),
    ("P3_DEVICE_ID", "device_id", false),
    ("API_URL", "api_url", false),
    ("API_TOKEN", "api_token", true),
    ("API_TIMEOUT", "api_timeout", false),
];

/// Where things go, for a system or a user service.
struct Layout {
    user: bool,
    /// `--root`: prefix for every path touched; no systemctl.
    root: Option<PathBuf>,
    unit: PathBuf,
    env_file: PathBuf,
    env_dir: PathBuf,
    state_dirs: Vec<PathBuf>,
}

impl Layout {
    fn new(args: &InstallServiceArgs) -> Result<Layout> {
        if args.user {
            let config = config_home()?;
            let env_dir = config.join("pv3");
            Ok(Layout {
                user: true,
                root: args.root.clone(),
                unit: config.join("systemd/user").join(UNIT_NAME),
                env_file: env_dir.join("collector.env"),
                env_dir,
                state_dirs: crate::state_dir::StateDir::resolve(None)
                    .map(|d| d.path().to_owned())
                    .into_iter()
                    .collect(),
            })
        } else {
            Ok(Layout {
                user: false,
                root: args.root.clone(),
                unit: Path::new("/etc/systemd/system").join(UNIT_NAME),
                env_file: PathBuf::from("/etc/pv3/collector.env"),
                env_dir: PathBuf::from("/etc/pv3"),
                // DynamicUser= keeps the real directory under private/ and
                // links it from /var/lib/pv3.
                state_dirs: crate::state_dir::StateDir::service_candidates()
                    .into_iter()
                    .map(|d| d.path().to_owned())
                    .collect(),
            })
        }
    }

    /// The path on disk: `path` under `--root`, if given.
    fn disk(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    fn systemctl(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = vec!["systemctl".to_owned()];
        if self.user {
            cmd.push("--user".to_owned());
        }
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        cmd
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
        None => Err(ConfigError(anyhow!(
            "--user needs the home directory, but HOME is not set"
        ))
        .into()),
    }
}

pub fn run(args: InstallServiceArgs) -> Result<()> {
    let layout = Layout::new(&args)?;
    if !args.dry_run && !args.user && args.root.is_none() && (args.pretend_non_root || !is_root()) {
        let what = if args.uninstall {
            "remove the service"
        } else {
            "install the service"
        };
        return Err(ConfigError(anyhow!(
            "install-service needs root to {what} under /etc/systemd/system: run it with sudo, or use --user for a user service (--dry-run shows what it would do)"
        ))
        .into());
    }
    if args.uninstall {
        uninstall(&args, &layout)
    } else {
        install(&args, &layout)
    }
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

fn install(args: &InstallServiceArgs, layout: &Layout) -> Result<()> {
    let real = !args.dry_run && layout.root.is_none();
    let binary = binary(args)?;
    if !layout.user {
        hidden_from_service(&binary, "the pv3 binary", "--binary", real)?;
    }
    let previous = match read_env_file(&layout.disk(&layout.env_file)) {
        Ok(previous) => previous,
        Err(e) if args.dry_run => {
            warn!("{e:#}; this dry run shows only the settings given now");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let settings = settings(args, layout, &previous, real)?;
    let unit = unit_file(&binary, &layout.env_file, layout.user)?;
    let env = env_file(&settings, &previous, false);
    let already = layout.disk(&layout.unit).exists();
    let mut commands = vec![layout.systemctl(&["daemon-reload"])];
    if already {
        commands.push(layout.systemctl(&["enable", UNIT_NAME]));
        commands.push(layout.systemctl(&["restart", "--no-block", UNIT_NAME]));
    } else {
        // --no-block: the service is "started" once subscribed (READY=1),
        // which waits for the P3's broker; installing must not.
        commands.push(layout.systemctl(&["enable", "--now", "--no-block", UNIT_NAME]));
    }

    let mut out = String::new();
    if args.dry_run {
        let _ = writeln!(
            out,
            "# pv3 install-service --dry-run: nothing is written and nothing is run.\n"
        );
        let _ = writeln!(
            out,
            "# {} {} (mode 0644):",
            if already {
                "would replace"
            } else {
                "would write"
            },
            layout.unit.display()
        );
        out.push_str(&unit);
        let _ = writeln!(
            out,
            "\n# would write {} (mode 0600, in {} mode 0700; secrets shown as ***):",
            layout.env_file.display(),
            layout.env_dir.display()
        );
        out.push_str(&env_file(&settings, &previous, true));
        let _ = writeln!(out, "\n# would run:");
        for cmd in &commands {
            let _ = writeln!(out, "{}", cmd.join(" "));
        }
        let _ = writeln!(out, "\n# logs: {}", layout.logs_hint());
        return print(&out);
    }

    write_file(&layout.disk(&layout.unit), unit.as_bytes(), 0o644)?;
    let _ = writeln!(
        out,
        "{} {}",
        if already { "updated" } else { "wrote" },
        layout.unit.display()
    );
    make_private_dir(&layout.disk(&layout.env_dir))?;
    write_file(&layout.disk(&layout.env_file), env.as_bytes(), 0o600)?;
    let keys: Vec<&str> = settings.iter().map(|s| s.key).collect();
    let _ = writeln!(
        out,
        "wrote {} (mode 0600): {}",
        layout.env_file.display(),
        if keys.is_empty() {
            "no settings, pv3's defaults apply".to_owned()
        } else {
            keys.join(", ")
        }
    );
    let kept: Vec<&str> = settings.iter().filter(|s| s.kept).map(|s| s.key).collect();
    if !kept.is_empty() {
        let _ = writeln!(out, "kept from the previous env file: {}", kept.join(", "));
    }
    print(&out)?;
    run_commands(layout, &commands)?;
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
    print(&out)
}

/// The binary the service runs: absolute, symlinks resolved.
fn binary(args: &InstallServiceArgs) -> Result<PathBuf> {
    let given = match &args.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot tell where this pv3 binary is: pass --binary PATH")?,
    };
    let path = fs::canonicalize(&given).map_err(|e| {
        ConfigError(anyhow!(
            "--binary {}: {e}: give the path of an installed pv3",
            given.display()
        ))
    })?;
    if !path.is_file() {
        return Err(ConfigError(anyhow!("--binary {}: not a file", path.display())).into());
    }
    Ok(path)
}

/// The system service sees no home directories (`ProtectHome=yes`): a
/// binary or CA file there would make it fail at start. An error for a
/// real install, a warning for a dry run or `--root`.
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
        Err(ConfigError(anyhow!(message)).into())
    } else {
        warn!("{message}");
        Ok(())
    }
}

/// One line of the env file.
struct Setting {
    key: &'static str,
    value: String,
    secret: bool,
    /// Not given this time, taken from the previous env file.
    kept: bool,
}

/// Which arguments were given on the command line or by environment
/// variable (not defaulted). Clap's derive output drops that, so the
/// command line is parsed once more; `None` when that is not possible (the
/// library called from elsewhere), and then every value counts as given.
fn given_ids() -> Option<HashSet<String>> {
    let matches = Cli::command()
        .try_get_matches_from(std::env::args_os())
        .ok()?;
    let (name, sub) = matches.subcommand()?;
    if name != "install-service" {
        return None;
    }
    Some(
        sub.ids()
            .filter(|id| {
                matches!(
                    sub.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .map(|id| id.as_str().to_owned())
            .collect(),
    )
}

/// The env file's settings: those given now, then those kept from before.
fn settings(
    args: &InstallServiceArgs,
    layout: &Layout,
    previous: &[(String, String)],
    real: bool,
) -> Result<Vec<Setting>> {
    let given = given_ids();
    let is_given = |id: &str| given.as_ref().is_none_or(|g| g.contains(id));
    if given
        .as_ref()
        .is_some_and(|g| g.contains("mqtt_reconnect_max"))
    {
        warn!(
            "--mqtt-reconnect-max has no environment variable, so the service does not get it: add it with `systemctl edit pv3-collector` (ExecStart=) if you need it"
        );
    }
    let m = &args.mqtt;
    let a = &args.api;
    let ca = match &m.mqtt_ca {
        Some(path) if is_given("mqtt_ca") => {
            let abs = fs::canonicalize(path).map_err(|e| {
                ConfigError(anyhow!(
                    "--mqtt-ca {}: {e}: give the path of the broker's CA certificate",
                    path.display()
                ))
            })?;
            if !layout.user {
                hidden_from_service(&abs, "the CA file", "--mqtt-ca", real)?;
                let world_readable = fs::metadata(&abs)
                    .map(|md| md.permissions().mode() & 0o004 != 0)
                    .unwrap_or(false);
                if !world_readable {
                    warn!(
                        "the CA file {} is not readable by other users, and the service runs as its own dynamic user: chmod a+r it",
                        abs.display()
                    );
                }
            }
            Some(abs.to_string_lossy().into_owned())
        }
        _ => None,
    };
    let value_of = |id: &str| -> Option<String> {
        match id {
            "mqtt_host" => Some(m.mqtt_host.clone()),
            "mqtt_port" => m.mqtt_port.map(|p| p.to_string()),
            "mqtt_username" => m.mqtt_username.clone(),
            "mqtt_password" => m.mqtt_password.as_ref().map(|s| s.expose().to_owned()),
            "mqtt_tls" => Some(m.mqtt_tls.to_string()),
            "mqtt_ca" => ca.clone(),
            "mqtt_client_id" => m.mqtt_client_id.clone(),
            "device_id" => Some(args.device.device_id.clone()),
            "api_url" => Some(a.api_url.to_string()),
            "api_token" => a.api_token.as_ref().map(|s| s.expose().to_owned()),
            "api_timeout" => Some(a.api_timeout.as_secs_f64().to_string()),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for &(key, id, secret) in SETTINGS {
        let now = if is_given(id) { value_of(id) } else { None };
        // Without a record of what was given, a flag left off is false.
        let now = now.filter(|v| given.is_some() || id != "mqtt_tls" || v == "true");
        let setting = match now {
            Some(value) => Some(Setting {
                key,
                value,
                secret,
                kept: false,
            }),
            None => previous
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, value)| Setting {
                    key,
                    value: value.clone(),
                    secret,
                    kept: true,
                }),
        };
        if let Some(setting) = setting {
            if setting.value.contains(['\n', '\r', '\0']) {
                return Err(ConfigError(anyhow!(
                    "{key} holds a line break, which an env file cannot"
                ))
                .into());
            }
            out.push(setting);
        }
    }
    Ok(out)
}

/// The env file: a header, our settings, then any other lines the owner
/// added by hand (kept as they were). `masked` shows secrets as `***`.
fn env_file(settings: &[Setting], previous: &[(String, String)], masked: bool) -> String {
    let mut out = format!(
        "# Settings of the pv3 collector, written by `pv3 install-service` (pv3 {}).\n\
         # Rerun it with other flags to change them (settings not given again are\n\
         # kept), or edit this file and `systemctl restart pv3-collector`.\n\
         # Settings not listed take pv3's defaults (`pv3 collect --help`).\n",
        env!("CARGO_PKG_VERSION")
    );
    for s in settings {
        let value = if masked && s.secret {
            "***".to_owned()
        } else if masked && s.key == "API_URL" {
            quote_env(&mask_url_password(&s.value))
        } else {
            quote_env(&s.value)
        };
        let _ = writeln!(out, "{}={value}", s.key);
    }
    let ours: HashSet<&str> = SETTINGS.iter().map(|(k, _, _)| *k).collect();
    for (key, value) in previous {
        if !ours.contains(key.as_str()) {
            let _ = writeln!(out, "{key}={}", quote_env(value));
        }
    }
    out
}

fn mask_url_password(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => text.to_owned(),
    }
}

/// A value for systemd's EnvironmentFile= (and sh): bare when it is made of
/// harmless characters, else in double quotes with `\ " $ `` escaped.
pub fn quote_env(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,:/@+=%^".contains(c));
    if bare {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Reads `KEY=value` lines (the subset of systemd's env file syntax that
/// [`quote_env`] writes, plus single quotes); comments and blank lines are
/// dropped. A missing file is no settings.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read the current settings in {}: run with sudo",
                    path.display()
                )
            });
        }
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_start_matches("export ").trim().to_owned();
        let value = unquote_env(raw.trim());
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    Ok(out)
}

fn unquote_env(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    out.push(c);
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(n @ ('\\' | '"' | '$' | '`')) => out.push(n),
                            Some(n) => {
                                out.push('\\');
                                out.push(n);
                            }
                            None => out.push('\\'),
                        },
                        c => out.push(c),
                    }
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out.trim_end().to_owned()
}

/// The unit file. It holds no settings (they are in the env file), so it
/// is the same for every owner and rewritten as is on every upgrade.
pub fn unit_file(binary: &Path, env_file: &Path, user: bool) -> Result<String> {
    let exec = exec_path(binary)?;
    let env_file = env_file.to_string_lossy().replace('%', "%%");
    let mut u = String::new();
    let _ = writeln!(
        u,
        "# Written by `pv3 install-service` (pv3 {}): rerun it to update, or\n\
         # `pv3 install-service --uninstall` to remove. Settings are in\n\
         # {env_file}; local changes belong in `systemctl {}edit pv3-collector`.",
        env!("CARGO_PKG_VERSION"),
        if user { "--user " } else { "" }
    );
    u.push_str("[Unit]\nDescription=pv3 collector: Powervault P3 data from MQTT to PV3 Monitor\n");
    if !user {
        u.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    let _ = write!(
        u,
        "\n[Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={exec} collect\n\
         EnvironmentFile=-{env_file}\n\
         Restart=always\n\
         RestartSec=5\n\
         # READY=1 comes once subscribed: wait for the broker as long as it\n\
         # takes rather than kill and restart the collector meanwhile.\n\
         TimeoutStartSec=infinity\n\
         # The collector pings the watchdog while messages flow.\n\
         WatchdogSec=300\n\
         StateDirectory=pv3\n\
         StateDirectoryMode=0700\n\
         UMask=0077\n"
    );
    if !user {
        u.push_str(SYSTEM_HARDENING);
    }
    u.push_str(COMMON_HARDENING);
    let _ = write!(
        u,
        "\n[Install]\nWantedBy={}\n",
        if user {
            "default.target"
        } else {
            "multi-user.target"
        }
    );
    Ok(u)
}

/// Sandboxing that needs the system manager (namespaces, a dynamic user).
/// The collector only reads its env file and the CA, writes its state
/// directory, and talks TCP to the broker and the API.
const SYSTEM_HARDENING: &str = "\
# Sandbox: see systemd.exec(5); `systemd-analyze security pv3-collector` rates it.
DynamicUser=yes
CapabilityBoundingSet=
AmbientCapabilities=
PrivateUsers=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RemoveIPC=yes
KeyringMode=private
";

/// Sandboxing by seccomp and no_new_privs, which user services can use too.
/// No IPAddressDeny=: the broker and the API are on the LAN, or further.
const COMMON_HARDENING: &str = "\
NoNewPrivileges=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
";

/// The binary's path as an ExecStart= word: quoted when it must be, `%`
/// and `$` doubled so systemd does not expand them.
fn exec_path(binary: &Path) -> Result<String> {
    let text = binary.to_str().ok_or_else(|| {
        ConfigError(anyhow!(
            "the binary path {} is not UTF-8: pass --binary with a plain path",
            binary.display()
        ))
    })?;
    if !binary.is_absolute() || text.contains(['\n', '\r', '\0']) {
        return Err(ConfigError(anyhow!(
            "the binary path {text:?} cannot go into a unit file: pass --binary with a plain absolute path"
        ))
        .into());
    }
    let escaped = text.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+%$".contains(c))
    {
        return Ok(escaped);
    }
    Ok(format!(
        "\"{}\"",
        escaped.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

// ---- uninstall ---------------------------------------------------------

fn uninstall(args: &InstallServiceArgs, layout: &Layout) -> Result<()> {
    let unit = layout.disk(&layout.unit);
    let env = layout.disk(&layout.env_file);
    let installed = unit.exists();
    let mut before = Vec::new();
    let mut after = Vec::new();
    if installed {
        before.push(layout.systemctl(&["disable", "--now", UNIT_NAME]));
        after.push(layout.systemctl(&["daemon-reload"]));
    }
    let mut remove: Vec<PathBuf> = Vec::new();
    if installed {
        remove.push(layout.unit.clone());
    }
    if env.exists() {
        remove.push(layout.env_file.clone());
    }
    let purge: Vec<PathBuf> = if args.purge {
        layout
            .state_dirs
            .iter()
            .filter(|d| fs::symlink_metadata(layout.disk(d)).is_ok())
            .cloned()
            .collect()
    } else {
        Vec::new()
    };

    if args.dry_run {
        let mut out = String::from(
            "# pv3 install-service --uninstall --dry-run: nothing is removed and nothing is run.\n",
        );
        if !installed {
            let _ = writeln!(out, "# {UNIT_NAME} is not installed");
        }
        for cmd in &before {
            let _ = writeln!(out, "would run: {}", cmd.join(" "));
        }
        for path in remove.iter().chain(&purge) {
            let _ = writeln!(out, "would remove: {}", path.display());
        }
        for cmd in &after {
            let _ = writeln!(out, "would run: {}", cmd.join(" "));
        }
        return print(&out);
    }

    run_commands(layout, &before)?;
    let mut out = String::new();
    if !installed {
        let _ = writeln!(
            out,
            "{UNIT_NAME} is not installed (no {})",
            layout.unit.display()
        );
    }
    for path in &remove {
        fs::remove_file(layout.disk(path))
            .with_context(|| format!("cannot remove {}", path.display()))?;
        let _ = writeln!(out, "removed {}", path.display());
    }
    // Only if empty: the owner may keep a CA file there.
    let _ = fs::remove_dir(layout.disk(&layout.env_dir));
    for dir in &purge {
        let disk = layout.disk(dir);
        let is_dir = fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir());
        if is_dir {
            fs::remove_dir_all(&disk)
        } else {
            fs::remove_file(&disk)
        }
        .with_context(|| format!("cannot remove {}", dir.display()))?;
        let _ = writeln!(out, "removed {} (the collector's state)", dir.display());
    }
    print(&out)?;
    run_commands(layout, &after)?;
    if !args.purge
        && let Some(dir) = layout.state_dirs.first()
        && fs::symlink_metadata(layout.disk(dir)).is_ok()
    {
        print(&format!(
            "kept the collector's state in {} (--purge removes it)\n",
            dir.display()
        ))?;
    }
    Ok(())
}

// ---- doing -------------------------------------------------------------

/// Runs each command, stopping at the first failure; under `--root` only
/// prints them.
fn run_commands(layout: &Layout, commands: &[Vec<String>]) -> Result<()> {
    for cmd in commands {
        let line = cmd.join(" ");
        if layout.root.is_some() {
            print(&format!("would run: {line}\n"))?;
            continue;
        }
        print(&format!("running: {line}\n"))?;
        let status = Command::new(&cmd[0])
            .args(&cmd[1..])
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}: this needs systemd", cmd[0]))?;
        if !status.success() {
            bail!("`{line}` failed ({status}): see its message above");
        }
    }
    Ok(())
}

/// Writes through a temporary file and a rename; the file has `mode` from
/// its creation on, so a secret is never readable by others, not even
/// briefly.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    // The umask may have taken bits off the mode; make it exact.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// `dir` with mode 0700, created if missing (its parents as usual).
fn make_private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if !crate::output::is_broken_pipe(&e) => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_round_trip() {
        for value in [
            "plain",
            "192.168.1.215",
            "http://user:pa%20ss@host:8800/",
            "with space",
            "quote\"s and 'single'",
            "dollar $HOME and `tick` and back\\slash",
            "#hash",
            "",
        ] {
            let line = format!("K={}", quote_env(value));
            let (_, raw) = line.split_once('=').expect("=");
            assert_eq!(unquote_env(raw), value, "line {line}");
        }
        assert_eq!(quote_env("192.168.1.215"), "192.168.1.215");
        assert_eq!(quote_env("a b"), "\"a b\"");
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
    fn exec_paths_are_escaped() {
        assert_eq!(
            exec_path(Path::new("/usr/local/bin/pv3")).expect("ok"),
            "/usr/local/bin/pv3"
        );
        assert_eq!(
            exec_path(Path::new("/opt/my pv3/100%/pv3")).expect("ok"),
            "\"/opt/my pv3/100%%/pv3\""
        );
        assert!(exec_path(Path::new("relative/pv3")).is_err());
    }

    #[test]
    fn unit_holds_the_essentials() {
        let unit = unit_file(
            Path::new("/usr/local/bin/pv3"),
            Path::new("/etc/pv3/collector.env"),
            false,
        )
        .expect("unit");
        for line in [
            "Type=notify",
            "ExecStart=/usr/local/bin/pv3 collect",
            "EnvironmentFile=-/etc/pv3/collector.env",
            "Restart=always",
            "WatchdogSec=300",
            "DynamicUser=yes",
            "StateDirectory=pv3",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        let user = unit_file(
            Path::new("/home/pi/.cargo/bin/pv3"),
            Path::new("/home/pi/.config/pv3/collector.env"),
            true,
        )
        .expect("unit");
        assert!(!user.contains("DynamicUser"));
        assert!(user.contains("WantedBy=default.target"));
    }
}
