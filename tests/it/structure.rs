//! The shape rules of issues 9 and 21, kept by a test rather than by a
//! reviewer's memory: no file under `src/` over 600 lines; no two modules
//! that depend on each other, directly or round a longer loop, file by file
//! and layer by layer (top-level modules); and no command that imports
//! another command's module.
//!
//! A module's dependencies are the `crate::…` and `super::…` paths in its
//! code (comments left out: a doc link is not a dependency), each taken to
//! the longest module it names. A module and its own ancestors or
//! descendants are one unit and do not count.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use support::files_under;

const MAX_LINES: usize = 600;

fn sources() -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = files_under(&src);
    files.retain(|p| p.extension().is_some_and(|e| e == "rs"));
    files
}

/// `src/forward/mod.rs` → `forward`, `src/forward/batch.rs` →
/// `forward::batch`, `src/lib.rs` → `` (the crate root).
fn module_of(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = path.strip_prefix(&root).expect("under src/");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The paths after each `marker` in `code`: `crate::a::b::C` gives
/// `["a", "b", "C"]`.
fn paths_after<'c>(code: &'c str, marker: &str) -> Vec<Vec<&'c str>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(marker) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + marker.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|s| !s.is_empty()).collect());
    }
    out
}

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<(String, String)> = sources()
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("a readable source file");
            let code: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            (module_of(p), code.join("\n"))
        })
        .collect();
    let modules: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    let longest = |parts: &[&str]| -> Option<String> {
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| modules.contains(m.as_str()))
    };
    let related = |a: &str, b: &str| {
        a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
    };
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &files {
        let own: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        let mut targets: Vec<Vec<&str>> = paths_after(code, "crate::");
        for path in paths_after(code, "super::") {
            // `super::` from a.b.c is a.b; each further `super` one more up.
            let mut base = own[..own.len().saturating_sub(1)].to_vec();
            let mut path = path.as_slice();
            while let Some((&"super", tail)) = path.split_first() {
                base.pop();
                path = tail;
            }
            targets.push(base.into_iter().chain(path.iter().copied()).collect());
        }
        let entry = deps.entry(module.clone()).or_default();
        for target in targets.iter().filter_map(|t| longest(t)) {
            if !related(module, &target) {
                entry.insert(target);
            }
        }
    }
    deps
}

#[test]
fn no_source_file_is_over_600_lines() {
    let long: Vec<String> = sources()
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).ok()?.lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines, split by job: {long:?}"
    );
}

/// The loops in `deps`, each as `a → b → a`; depth-first, a module met
/// again while still on the path closes a loop.
fn loops(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit<'d>(
        m: &'d str,
        deps: &'d BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'d str, bool>,
        stack: &mut Vec<&'d str>,
        loops: &mut Vec<String>,
    ) {
        state.insert(m, true);
        stack.push(m);
        for next in deps.get(m).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(true) => {
                    let from = stack.iter().position(|s| *s == next).unwrap_or(0);
                    loops.push(format!("{} → {next}", stack[from..].join(" → ")));
                }
                Some(false) => {}
                None => visit(next, deps, state, stack, loops),
            }
        }
        stack.pop();
        state.insert(m, false);
    }
    let (mut state, mut stack, mut found) = (BTreeMap::new(), Vec::new(), Vec::new());
    for m in deps.keys() {
        if !state.contains_key(m.as_str()) {
            visit(m, deps, &mut state, &mut stack, &mut found);
        }
    }
    found
}

/// `deps` between top-level modules (`cmd::collect` counts as `cmd`): a
/// loop there is a loop between layers, even when no two files close it
/// (`device_hint` → `cmd::check_api`, `cmd::collect` → `device_hint`). The
/// crate root (lib.rs, main.rs) declares everything and is left out.
fn top_level(deps: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in deps {
        let from = top(from);
        if from.is_empty() {
            continue;
        }
        for to in targets.iter().map(|t| top(t)) {
            if to != from && !to.is_empty() {
                out.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    out
}

/// Every import of one command's module by another's (`cmd::watch` →
/// `cmd::replay`): what two commands share moves down into a leaf module,
/// or up into `cmd` itself.
fn cross_command(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let command = |m: &str| {
        let mut parts = m.split("::");
        (parts.next() == Some("cmd"))
            .then(|| parts.next())
            .flatten()
            .map(str::to_owned)
    };
    let mut found = Vec::new();
    for (from, targets) in deps {
        let Some(a) = command(from) else { continue };
        for to in targets {
            if let Some(b) = command(to)
                && a != b
            {
                found.push(format!("{from} → {to}"));
            }
        }
    }
    found
}

#[test]
fn no_modules_depend_on_each_other() {
    let deps = dependencies();
    assert!(
        deps.get("forward::spool_queue")
            .is_some_and(|d| d.contains("spool")),
        "the dependency scan finds nothing: {deps:?}"
    );
    let found = loops(&deps);
    assert!(
        found.is_empty(),
        "modules that depend on each other: {found:?}"
    );
    let found = loops(&top_level(&deps));
    assert!(
        found.is_empty(),
        "top-level modules that depend on each other: {found:?}"
    );
}

#[test]
fn no_command_imports_another() {
    let deps = dependencies();
    assert!(
        deps.get("cmd::collect").is_some_and(|d| !d.is_empty()),
        "the dependency scan finds nothing: {deps:?}"
    );
    let found = cross_command(&deps);
    assert!(
        found.is_empty(),
        "commands that import another command's module (move what they share down): {found:?}"
    );
}

/// A dependency map from `(module, [targets])` pairs.
fn planted(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    edges
        .iter()
        .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
        .collect()
}

#[test]
fn a_planted_loop_between_layers_is_found() {
    // The loop issue 21 found: no two files close it, the layers do.
    let deps = planted(&[
        ("device_hint", &["cmd::check_api", "census"]),
        ("cmd::collect", &["device_hint", "forward"]),
        ("cmd::check_api", &["api"]),
        ("forward", &["spool"]),
    ]);
    assert!(loops(&deps).is_empty(), "{:?}", loops(&deps));
    assert_eq!(
        loops(&top_level(&deps)),
        ["cmd → device_hint → cmd"],
        "{deps:?}"
    );
    // A direct loop between two files is found file by file, too.
    let direct = planted(&[
        ("spool", &["forward::batch"]),
        ("forward::batch", &["spool"]),
    ]);
    assert_eq!(loops(&direct), ["forward::batch → spool → forward::batch"]);
}

#[test]
fn a_planted_import_of_one_command_by_another_is_found() {
    let deps = planted(&[
        ("cmd::watch::once", &["cmd::replay", "cmd", "capture"]),
        ("cmd::collect", &["cmd::collect::status", "cmd"]),
        ("cmd", &["cmd::watch", "cmd::collect"]),
    ]);
    assert_eq!(cross_command(&deps), ["cmd::watch::once → cmd::replay"]);
}
