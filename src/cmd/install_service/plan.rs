//! A [`Plan`]: what install-service will change, worked out before anything
//! is touched. `--dry-run` prints it; a real run applies it, in order;
//! `--root DIR` (tests) applies it under DIR and prints the commands
//! instead of running them.

use std::fmt::{self, Write as _};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Files to write or remove and commands to run, in order.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Run before the files change (uninstalling stops the service first).
    pub(super) before: Vec<Cmd>,
    /// The files, in order.
    pub(super) files: Vec<FileChange>,
    /// Run once the files are in place.
    pub(super) commands: Vec<Cmd>,
}

/// One command line: the program, then its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cmd(pub(super) Vec<String>);

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// A change to one file or directory.
#[derive(Debug)]
pub(super) enum FileChange {
    /// Write a file.
    Write(NewFile),
    /// Remove a file the service was installed with.
    Remove(PathBuf),
    /// Remove the collector's state: a directory and all in it, or the link
    /// to one.
    Purge(PathBuf),
    /// Remove a directory if it is empty (the owner may keep a CA file
    /// there); not reported.
    RemoveIfEmpty(PathBuf),
}

/// A file to write, whole.
#[derive(Debug)]
pub(super) struct NewFile {
    /// Where, as the system sees it (before `--root`).
    pub(super) path: PathBuf,
    /// What.
    pub(super) contents: String,
    /// What `--dry-run` prints instead, secrets masked; `None` when the
    /// contents hold none.
    pub(super) masked: Option<String>,
    /// The file's mode, from its creation on.
    pub(super) mode: u32,
    /// The mode its directory gets (and is created with), when it matters.
    pub(super) dir_mode: Option<u32>,
    /// It replaces an existing one (said so in the output).
    pub(super) replaces: bool,
    /// Printed once it is written.
    pub(super) done: String,
}

impl Plan {
    /// The plan for `--dry-run`: each part after a blank line, commands one
    /// per line so they can be copied.
    pub(super) fn describe(&self) -> String {
        let mut out = String::new();
        describe_commands(&mut out, &self.before);
        let mut removals = Vec::new();
        for change in &self.files {
            match change {
                FileChange::Write(file) => describe_write(&mut out, file),
                FileChange::Remove(path) | FileChange::Purge(path) => removals.push(path),
                FileChange::RemoveIfEmpty(_) => {}
            }
        }
        if !removals.is_empty() {
            out.push_str("\n# would remove:\n");
            for path in removals {
                let _ = writeln!(out, "{}", path.display());
            }
        }
        describe_commands(&mut out, &self.commands);
        out
    }

    /// Applies the plan, saying what it does as it goes. Under `root` every
    /// path is taken under it and no command is run.
    pub(super) fn apply(&self, root: Option<&Path>) -> Result<()> {
        run_commands(root, &self.before)?;
        for change in &self.files {
            apply_change(root, change)?;
        }
        run_commands(root, &self.commands)
    }
}

fn describe_commands(out: &mut String, commands: &[Cmd]) {
    if commands.is_empty() {
        return;
    }
    out.push_str("\n# would run:\n");
    for cmd in commands {
        let _ = writeln!(out, "{cmd}");
    }
}

fn describe_write(out: &mut String, file: &NewFile) {
    let verb = if file.replaces {
        "would replace"
    } else {
        "would write"
    };
    let mut how = format!("mode {:04o}", file.mode);
    if let (Some(mode), Some(dir)) = (file.dir_mode, file.path.parent()) {
        let _ = write!(how, ", in {} mode {mode:04o}", dir.display());
    }
    if file.masked.is_some() {
        how.push_str("; secrets shown as ***");
    }
    let _ = writeln!(out, "\n# {verb} {} ({how}):", file.path.display());
    out.push_str(file.masked.as_deref().unwrap_or(&file.contents));
}

/// `path` as it is on disk: under `root`, if given.
pub(super) fn on_disk(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

fn apply_change(root: Option<&Path>, change: &FileChange) -> Result<()> {
    match change {
        FileChange::Write(file) => {
            let disk = on_disk(root, &file.path);
            if let (Some(mode), Some(dir)) = (file.dir_mode, disk.parent()) {
                make_dir(dir, mode)?;
            }
            write_file(&disk, file.contents.as_bytes(), file.mode)?;
            print(&file.done)
        }
        FileChange::Remove(path) => {
            fs::remove_file(on_disk(root, path))
                .with_context(|| format!("cannot remove {}", path.display()))?;
            print(&format!("removed {}\n", path.display()))
        }
        FileChange::Purge(path) => {
            let disk = on_disk(root, path);
            let is_dir = fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir());
            if is_dir {
                fs::remove_dir_all(&disk)
            } else {
                fs::remove_file(&disk)
            }
            .with_context(|| format!("cannot remove {}", path.display()))?;
            print(&format!(
                "removed {} (the collector's state)\n",
                path.display()
            ))
        }
        FileChange::RemoveIfEmpty(dir) => {
            let _ = fs::remove_dir(on_disk(root, dir));
            Ok(())
        }
    }
}

/// Runs each command, stopping at the first failure; under `root` only
/// prints them.
fn run_commands(root: Option<&Path>, commands: &[Cmd]) -> Result<()> {
    for cmd in commands {
        if root.is_some() {
            print(&format!("would run: {cmd}\n"))?;
            continue;
        }
        print(&format!("running: {cmd}\n"))?;
        let Some((program, args)) = cmd.0.split_first() else {
            continue;
        };
        let status = Command::new(program)
            .args(args)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}: this needs systemd"))?;
        if !status.success() {
            bail!("`{cmd}` failed ({status}): see its message above");
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

/// `dir` with `mode`, created if missing (its parents as usual).
fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub(super) fn print(text: &str) -> Result<()> {
    crate::output::print_stdout(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, masked: Option<&str>) -> NewFile {
        NewFile {
            path: PathBuf::from(path),
            contents: "secret\n".to_owned(),
            masked: masked.map(str::to_owned),
            mode: 0o600,
            dir_mode: Some(0o700),
            replaces: false,
            done: format!("wrote {path}\n"),
        }
    }

    #[test]
    fn a_dry_run_shows_masked_contents_and_every_step() {
        let plan = Plan {
            before: vec![Cmd(vec!["stop".into()])],
            files: vec![
                FileChange::Write(file("/etc/x/a.env", Some("***\n"))),
                FileChange::Remove(PathBuf::from("/etc/old")),
                FileChange::RemoveIfEmpty(PathBuf::from("/etc/empty")),
            ],
            commands: vec![Cmd(vec!["systemctl".into(), "daemon-reload".into()])],
        };
        assert_eq!(
            plan.describe(),
            "\n# would run:\nstop\n\
             \n# would write /etc/x/a.env (mode 0600, in /etc/x mode 0700; secrets shown as ***):\n***\n\
             \n# would remove:\n/etc/old\n\
             \n# would run:\nsystemctl daemon-reload\n"
        );
    }

    #[test]
    fn applying_under_a_root_writes_there_with_the_modes() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc/empty")).expect("mkdir");
        let plan = Plan {
            files: vec![
                FileChange::Write(file("/etc/x/a.env", None)),
                FileChange::RemoveIfEmpty(PathBuf::from("/etc/empty")),
            ],
            ..Plan::default()
        };
        plan.apply(Some(root.path())).expect("apply");
        let written = root.path().join("etc/x/a.env");
        assert_eq!(fs::read_to_string(&written).expect("read"), "secret\n");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&written), 0o600);
        assert_eq!(mode(&root.path().join("etc/x")), 0o700);
        assert!(!root.path().join("etc/empty").exists());
    }
}
