//! The Debian package that `scripts/release.sh` puts in `dist/`, installed
//! for real with dpkg: `/usr/bin/pv3` runs and is the one install-service
//! picks, `man pv3` finds the page, the completions are where bash, zsh and
//! fish look, the maintainer scripts leave a service alone until purge, and
//! `dpkg -r` removes every file. The arm64 package must hold the same files.
//!
//! It changes the system, so it runs only as root, with dpkg, with the
//! recipe's .deb for this version in `dist/`, and when no pv3 package or
//! pv3 service is installed already (an owner's is never touched). Anything
//! missing skips it, with the reason, unless `PV3_REQUIRE_PACKAGE=1` (CI,
//! after running the recipe) makes that a failure.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use support::proc::PV3_BIN;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const UNIT: &str = "/etc/systemd/system/pv3-collector.service";
const ENV_FILE: &str = "/etc/pv3/collector.env";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    text(&out)
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run(deb: &Path) -> Option<String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().nth(1).map(str::to_owned))
        });
    if euid.as_deref() != Some("0") {
        return Some("not root".into());
    }
    if Command::new("dpkg").arg("--version").output().is_err() {
        return Some("no dpkg".into());
    }
    if !deb.is_file() {
        return Some(format!(
            "no {}: build it with scripts/release.sh (which needs cargo-deb)",
            deb.display()
        ));
    }
    if run("dpkg", &["-s", "pv3"]).status.success() {
        return Some("a pv3 package is installed already: not touching it".into());
    }
    if Path::new(UNIT).exists() {
        return Some(format!("{UNIT} exists: not touching a real service"));
    }
    None
}

/// The files (not directories) a package holds, as absolute paths.
fn files_of(deb: &Path) -> BTreeSet<String> {
    let listing = ok("dpkg-deb", &["-c", deb.to_str().expect("utf-8 path")]);
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// Purges the package however the test ends, and the files install-service
/// wrote, so a failed run leaves the machine as it found it.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "pv3"]);
        let _ = std::fs::remove_file(UNIT);
        let _ = std::fs::remove_file(ENV_FILE);
        let _ = std::fs::remove_dir("/etc/pv3");
    }
}

#[test]
fn the_deb_installs_works_and_removes_cleanly() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let deb = dist.join(format!("pv3_{VERSION}-1_amd64.deb"));
    let arm = dist.join(format!("pv3_{VERSION}-1_arm64.deb"));
    let required = std::env::var_os("PV3_REQUIRE_PACKAGE").is_some_and(|v| v == "1");
    if let Some(why) = cannot_run(&deb) {
        assert!(!required, "PV3_REQUIRE_PACKAGE=1, but {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let deb_path = deb.to_str().expect("utf-8 path");
    let files = files_of(&deb);
    let expected = [
        "/usr/bin/pv3",
        "/usr/share/man/man1/pv3.1.gz",
        "/usr/share/bash-completion/completions/pv3",
        "/usr/share/zsh/vendor-completions/_pv3",
        "/usr/share/fish/vendor_completions.d/pv3.fish",
        "/usr/share/doc/pv3/README.md",
        "/usr/share/doc/pv3/changelog.gz",
        "/usr/share/doc/pv3/changelog.Debian.gz",
        "/usr/share/lintian/overrides/pv3",
        "/usr/share/doc/pv3/LICENSE-MIT",
        "/usr/share/doc/pv3/LICENSE-APACHE",
        "/usr/share/doc/pv3/copyright",
        "/usr/share/doc/pv3/docs/operations.md",
        "/usr/share/doc/pv3/examples/p3-sample.jsonl",
    ];
    for path in expected {
        assert!(
            files.contains(path),
            "{path} not in the package: {files:#?}"
        );
    }
    let info = ok(
        "dpkg-deb",
        &["-f", deb_path, "Package", "Version", "Architecture"],
    );
    assert_eq!(
        info,
        format!("Package: pv3\nVersion: {VERSION}-1\nArchitecture: amd64\n")
    );

    let _cleanup = Cleanup;
    ok("dpkg", &["-i", deb_path]);
    for path in &files {
        assert!(Path::new(path).is_file(), "{path} not installed");
    }
    assert_eq!(
        ok("/usr/bin/pv3", &["--version"]),
        format!("pv3 {VERSION}\n")
    );
    if Path::new("/usr/bin/man").exists() {
        let page = ok("man", &["-w", "pv3"]);
        assert_eq!(page.trim(), "/usr/share/man/man1/pv3.1.gz");
        let shown = run("man", &["pv3"]);
        assert!(
            text(&shown).contains("pv3 devices"),
            "man pv3:\n{}",
            text(&shown)
        );
    } else {
        assert!(!required, "no man: apt-get install man-db");
        eprintln!("man pv3 not checked: no man-db");
    }
    ok(
        "bash",
        &["-n", "/usr/share/bash-completion/completions/pv3"],
    );
    // The binary works past --version: a real command, its exit code 2 for a
    // bad flag.
    assert_eq!(
        run("/usr/bin/pv3", &["devices", "--wait", "0"])
            .status
            .code(),
        Some(2)
    );

    // Any pv3 (here the test build) installs the service on the package's
    // binary, which apt upgrades.
    let dry = ok(PV3_BIN, &["install-service", "--dry-run"]);
    assert!(
        dry.lines().any(|l| l == "ExecStart=/usr/bin/pv3 collect"),
        "{dry}"
    );

    // A service set up on the package's binary (files only: no systemd
    // here) survives `dpkg -r` as configuration and goes with the purge.
    ok(
        "/usr/bin/pv3",
        &["install-service", "--root", "/", "--mqtt-host", "127.0.0.1"],
    );
    assert!(Path::new(UNIT).is_file() && Path::new(ENV_FILE).is_file());
    let removed = ok("dpkg", &["-r", "pv3"]);
    assert!(
        removed.contains("pv3-collector.service runs /usr/bin/pv3, which is being removed"),
        "{removed}"
    );
    for path in &files {
        assert!(!Path::new(path).exists(), "{path} left after dpkg -r");
    }
    assert!(!Path::new("/usr/share/doc/pv3").exists());
    assert!(
        Path::new(UNIT).is_file(),
        "the unit is configuration until purge"
    );
    let purged = ok("dpkg", &["--purge", "pv3"]);
    assert!(purged.contains("removed"), "{purged}");
    assert!(!Path::new(UNIT).exists() && !Path::new(ENV_FILE).exists());
    assert!(!run("dpkg", &["-s", "pv3"]).status.success());

    // The arm64 package: the same files, an arm64 binary.
    if !arm.is_file() {
        assert!(!required, "PV3_REQUIRE_PACKAGE=1, but no {}", arm.display());
        eprintln!("arm64 package not checked: no {}", arm.display());
        return;
    }
    assert_eq!(files_of(&arm), files);
    let arm_path = arm.to_str().expect("utf-8 path");
    assert_eq!(ok("dpkg-deb", &["-f", arm_path, "Architecture"]), "arm64\n");
    let binary = run(
        "sh",
        &[
            "-c",
            "dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - ./usr/bin/pv3",
            "sh",
            arm_path,
        ],
    );
    // ELF, e_machine 0xB7: AArch64.
    assert!(
        binary.stdout.starts_with(b"\x7fELF") && binary.stdout.get(18..20) == Some(&[0xb7, 0][..]),
        "/usr/bin/pv3 in {} is not an aarch64 ELF binary",
        arm.display()
    );
}

/// What lintian says about `deb`: its error and warning lines (an override
/// with its reason in debian/ turns a finding into an `O:` line, not
/// counted). `None` when lintian is not installed.
fn lintian(deb: &Path) -> Option<Vec<String>> {
    let out = Command::new("lintian")
        .args(["--no-tag-display-limit", "--display-level", ">=warning"])
        .arg(deb)
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
            .map(str::to_owned)
            .collect(),
    )
}

/// Debian's own checker finds no error and no warning in either package.
#[test]
fn lintian_finds_nothing_in_the_debs() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let required = std::env::var_os("PV3_REQUIRE_PACKAGE").is_some_and(|v| v == "1");
    for arch in ["amd64", "arm64"] {
        let deb = dist.join(format!("pv3_{VERSION}-1_{arch}.deb"));
        if !deb.is_file() {
            assert!(!required, "PV3_REQUIRE_PACKAGE=1, but no {}", deb.display());
            eprintln!(
                "skipped: no {} (scripts/release.sh makes it)",
                deb.display()
            );
            continue;
        }
        let Some(found) = lintian(&deb) else {
            assert!(
                !required,
                "PV3_REQUIRE_PACKAGE=1, but no lintian: apt-get install lintian"
            );
            eprintln!("skipped: no lintian (apt-get install lintian)");
            return;
        };
        assert!(
            found.is_empty(),
            "lintian on {}:\n{}",
            deb.display(),
            found.join("\n")
        );
    }
}
