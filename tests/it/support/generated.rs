//! Blocks of the docs that tests write: a table made from what pv3 does,
//! between two markers. The test fails while the committed block differs;
//! `PV3_UPDATE_GENERATED=1` rewrites it instead.

use std::path::Path;

/// Whether this run rewrites generated files instead of failing on them.
pub fn updating() -> bool {
    std::env::var_os("PV3_UPDATE_GENERATED").is_some_and(|v| !v.is_empty())
}

/// Checks that `doc` (relative to the crate) holds `body` between `start`
/// and `end`; `regenerate` is the command the failure tells people to run.
pub fn check_block(doc: &str, start: &str, end: &str, body: &str, regenerate: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {doc}: {e}"));
    let (before, rest) = text
        .split_once(start)
        .unwrap_or_else(|| panic!("{doc}: no start marker {start:?}"));
    let (current, after) = rest
        .split_once(end)
        .unwrap_or_else(|| panic!("{doc}: no end marker {end:?}"));
    let wanted = format!("\n{body}");
    if current == wanted {
        return;
    }
    if updating() {
        std::fs::write(&path, format!("{before}{start}{wanted}{end}{after}"))
            .unwrap_or_else(|e| panic!("write {doc}: {e}"));
        return;
    }
    panic!(
        "{doc}'s generated block differs from what pv3 does; regenerate it with `{regenerate}` and commit it"
    );
}
