//! Every relative link in the README, the CHANGELOG and `docs/` leads to a
//! file that exists and, for `page.md#part`, to a heading of that page (as
//! GitHub makes anchors of headings).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("CHANGELOG.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of a page outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter_map(move |(n, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return None;
        }
        (!fenced).then_some((n + 1, line))
    })
}

/// The `(line, target)` of each `[text](target)` outside code blocks and
/// inline code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in prose_lines(text) {
        // Drop inline code: every other backtick-delimited piece.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push((n, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (a repeated heading gets `-1`, `-2`).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let base = anchor(heading.trim_start_matches('#'));
        let mut name = base.clone();
        let mut n = 0;
        while found.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        found.insert(name);
    }
    found
}

#[test]
fn every_relative_link_leads_somewhere() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("a page");
        let shown = page
            .strip_prefix(root())
            .unwrap_or(&page)
            .display()
            .to_string();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, part) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap_or(root()).join(file)
            };
            if !dest.exists() {
                broken.push(format!("{shown}:{line}: {target}: no such file"));
                continue;
            }
            if part.is_empty() || dest.extension().is_none_or(|x| x != "md") {
                continue;
            }
            let dest_text = std::fs::read_to_string(&dest).expect("the linked page");
            if !anchors(&dest_text).contains(part) {
                broken.push(format!("{shown}:{line}: {target}: no such heading"));
            }
        }
    }
    assert!(checked > 20, "the scan finds the links ({checked})");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_leads_to_the_guides() {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README");
    let targets: BTreeSet<String> = links(&text).into_iter().map(|(_, t)| t).collect();
    for guide in [
        "docs/migrating.md",
        "docs/home-assistant.md",
        "docs/addon.md",
    ] {
        assert!(
            targets.iter().any(|t| t.split('#').next() == Some(guide)),
            "README.md does not link {guide}"
        );
    }
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(anchor(" 1. The service"), "1-the-service");
    assert_eq!(anchor(" pv3's entities"), "pv3s-entities");
    assert_eq!(
        anchor(" `--ha`: Home Assistant, evcc"),
        "--ha-home-assistant-evcc"
    );
    let text = "# A\n```\n# not a heading\n```\n## A\n";
    assert_eq!(
        anchors(text),
        BTreeSet::from(["a".to_owned(), "a-1".to_owned()])
    );
    assert_eq!(
        links("see [x](a.md#b) and `[y](c.md)`\n```\n[z](d.md)\n```"),
        vec![(1, "a.md#b".to_owned())]
    );
}
