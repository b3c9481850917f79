//! The systemd unit. It holds no settings (they are in the env file), so it
//! is the same for every owner and rewritten as is on every upgrade.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::cmd::ConfigError;
use crate::state_dir::SERVICE_DIR;

/// The unit's file name, under `/etc/systemd/system` or `~/.config/systemd/user`.
pub(super) const UNIT_NAME: &str = "pv3-collector.service";

/// The unit file that runs `binary collect` with the settings in `env_file`;
/// `user` for a user service (no system sandbox, `default.target`).
pub(super) fn unit_file(binary: &Path, env_file: &Path, user: bool) -> Result<String> {
    let exec = exec_path(binary)?;
    let state = state_directory_name();
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
         StateDirectory={state}\n\
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

/// `StateDirectory=`: relative to `/var/lib` (or `$XDG_STATE_HOME` for a
/// user service), so the last part of [`SERVICE_DIR`]: the unit and
/// `StateDir` cannot disagree.
fn state_directory_name() -> String {
    Path::new(SERVICE_DIR)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
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
        ConfigError(anyhow::anyhow!(
            "the binary path {} is not UTF-8: pass --binary with a plain path",
            binary.display()
        ))
    })?;
    if !binary.is_absolute() || text.contains(['\n', '\r', '\0']) {
        return Err(ConfigError(anyhow::anyhow!(
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_state_directory_is_the_services() {
        assert_eq!(
            Path::new("/var/lib").join(state_directory_name()),
            Path::new(SERVICE_DIR)
        );
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
