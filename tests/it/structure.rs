//! The shape rules of issue 9, kept by a test rather than by a reviewer's
//! memory: no file under `src/` over 600 lines, and no two modules that
//! depend on each other, directly or round a longer loop.
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

#[test]
fn no_modules_depend_on_each_other() {
    let deps = dependencies();
    assert!(
        deps.get("forward::spool_queue")
            .is_some_and(|d| d.contains("spool")),
        "the dependency scan finds nothing: {deps:?}"
    );
    // Depth-first search; a grey module met again closes a loop.
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
    let (mut state, mut stack, mut loops) = (BTreeMap::new(), Vec::new(), Vec::new());
    for m in deps.keys() {
        if !state.contains_key(m.as_str()) {
            visit(m, &deps, &mut state, &mut stack, &mut loops);
        }
    }
    assert!(
        loops.is_empty(),
        "modules that depend on each other: {loops:?}"
    );
}
