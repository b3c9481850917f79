//! The state directory: the one place that knows what lives in it.
//!
//! ```text
//! <state dir>/            --state-dir, $STATE_DIRECTORY, $XDG_STATE_HOME/pv3, ~/.local/state/pv3
//!   (the directory itself)  flock()ed by a running collect: one collector per directory
//!   spool.redb              readings the API has not taken yet (only while it holds any)
//!   spool.redb.corrupt-*    a spool that could not be read, moved aside for inspection
//!   rejected.jsonl          batches the API refused for good (dead letters)
//!   status.json             the running collector's self-report, read by check-api
//!   energy.json             the energy counters' totals (only with an output that uses them)
//! ```
//!
//! Under systemd the directory is [`SERVICE_DIR`] (`StateDirectory=pv3`,
//! which with `DynamicUser=yes` is a link to `/var/lib/private/pv3`).

use std::path::{Path, PathBuf};

/// Where the systemd unit written by `install-service` keeps its state.
pub const SERVICE_DIR: &str = "/var/lib/pv3";
/// Where `/var/lib/pv3` really lives with `DynamicUser=yes`.
pub const SERVICE_PRIVATE_DIR: &str = "/var/lib/private/pv3";

/// File name of the spool inside the state directory.
pub const SPOOL_FILE: &str = "spool.redb";
/// File name of the dead letters inside the state directory.
pub const DEAD_LETTER_FILE: &str = "rejected.jsonl";
/// File name of the collector's status inside the state directory.
pub const STATUS_FILE: &str = "status.json";

/// File name of the energy counters' totals inside the state directory.
pub const ENERGY_FILE: &str = "energy.json";

/// A state directory's path and its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

/// Why a state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Another collector holds the lock.
    #[error(
        "state directory {0} is in use: is another pv3 collect running with it? (see --state-dir)"
    )]
    InUse(PathBuf),
    /// The directory cannot be created, opened or locked.
    #[error("cannot use state directory {path} (see --state-dir)")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// Held while a collector runs: the directory stays `flock`ed until this is
/// dropped (the kernel releases it when the process dies, too).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateDir {
    /// A state directory at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// `--state-dir`/`$STATE_DIRECTORY` (systemd may list several,
    /// colon-separated: the first is ours), else `$XDG_STATE_HOME/pv3`, else
    /// `~/.local/state/pv3`. `None` when none of these is set.
    pub fn resolve(given: Option<&Path>) -> Option<StateDir> {
        if let Some(dir) = given {
            let text = dir.to_string_lossy();
            let first = text.split(':').next().unwrap_or_default();
            if !first.is_empty() {
                return Some(StateDir::new(first));
            }
        }
        if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return Some(StateDir::new(PathBuf::from(xdg).join("pv3")));
        }
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| StateDir::new(PathBuf::from(home).join(".local/state/pv3")))
    }

    /// The directories a service installed by `install-service` may use, the
    /// usual one first.
    pub fn service_candidates() -> Vec<StateDir> {
        vec![
            StateDir::new(SERVICE_DIR),
            StateDir::new(SERVICE_PRIVATE_DIR),
        ]
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The spool's database file.
    pub fn spool(&self) -> PathBuf {
        self.root.join(SPOOL_FILE)
    }

    /// Where an unreadable spool is moved, stamped with `unix_secs`.
    pub fn spool_aside(&self, unix_secs: u64) -> PathBuf {
        self.root.join(format!("{SPOOL_FILE}.corrupt-{unix_secs}"))
    }

    /// The dead-letter file.
    pub fn dead_letters(&self) -> PathBuf {
        self.root.join(DEAD_LETTER_FILE)
    }

    /// The collector's status file.
    pub fn status(&self) -> PathBuf {
        self.root.join(STATUS_FILE)
    }

    /// The energy counters' totals.
    pub fn energy(&self) -> PathBuf {
        self.root.join(ENERGY_FILE)
    }

    /// Creates the directory if needed and takes its lock: two collectors on
    /// one state directory would send everything twice.
    pub fn lock(&self) -> Result<StateLock, StateDirError> {
        let io = |source| StateDirError::Io {
            path: self.root.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let file = std::fs::File::open(&self.root).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateDirError::InUse(self.root.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_systemds_first_entry() {
        assert_eq!(
            StateDir::resolve(Some(Path::new("/var/lib/pv3:/var/lib/other"))),
            Some(StateDir::new("/var/lib/pv3"))
        );
    }

    #[test]
    fn names_every_file_under_the_root() {
        let dir = StateDir::new("/s");
        assert_eq!(dir.spool(), Path::new("/s/spool.redb"));
        assert_eq!(dir.dead_letters(), Path::new("/s/rejected.jsonl"));
        assert_eq!(dir.status(), Path::new("/s/status.json"));
        assert_eq!(dir.energy(), Path::new("/s/energy.json"));
        assert_eq!(dir.spool_aside(7), Path::new("/s/spool.redb.corrupt-7"));
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path().join("state"));
        let first = dir.lock().expect("first lock");
        assert!(matches!(dir.lock(), Err(StateDirError::InUse(_))));
        drop(first);
        dir.lock().expect("free again");
    }
}
