//! The env file: `KEY=value` lines in the subset of systemd's
//! `EnvironmentFile=` syntax that `sh` reads the same way.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::settings::Setting;

/// The env file: a header, our settings, then any other lines the owner
/// added by hand (kept as they were). `ours` are the keys install-service
/// manages, given or not; `masked` shows secrets as `***`.
pub(super) fn render(
    settings: &[Setting],
    previous: &[(String, String)],
    ours: &[String],
    masked: bool,
) -> String {
    let mut out = format!(
        "# Settings of the pv3 collector, written by `pv3 install-service` (pv3 {}).\n\
         # Rerun it with other flags to change them (settings not given again are\n\
         # kept), or edit this file and `systemctl restart pv3-collector`.\n\
         # Settings not listed take pv3's defaults (`pv3 collect --help`).\n",
        env!("CARGO_PKG_VERSION")
    );
    for s in settings {
        let value = match (masked, s.secret) {
            (true, true) => "***".to_owned(),
            (true, false) => quote(&s.shown()),
            (false, _) => quote(&s.value),
        };
        let _ = writeln!(out, "{}={value}", s.key);
    }
    let ours: HashSet<&str> = ours.iter().map(String::as_str).collect();
    for (key, value) in previous {
        if !ours.contains(key.as_str()) {
            let _ = writeln!(out, "{key}={}", quote(value));
        }
    }
    out
}

/// A value for systemd's EnvironmentFile= (and sh): bare when it is made of
/// harmless characters, else in double quotes with `\ " $ `` escaped.
fn quote(value: &str) -> String {
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

/// Reads `KEY=value` lines (the syntax [`quote`] writes, plus single
/// quotes); comments and blank lines are dropped, a later line for a key
/// wins. A missing file is no settings.
pub(super) fn read(path: &Path) -> Result<Vec<(String, String)>> {
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
        let value = unquote(raw.trim());
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    Ok(out)
}

/// One value as `sh` would read it: quotes removed, escapes resolved.
fn unquote(raw: &str) -> String {
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
            '"' => unquote_double(&mut chars, &mut out),
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

/// The rest of a double-quoted string, up to its closing quote: only
/// `\\ \" \$ \`` are escapes there.
fn unquote_double(chars: &mut std::str::Chars<'_>, out: &mut String) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
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
            let line = format!("K={}", quote(value));
            let (_, raw) = line.split_once('=').expect("=");
            assert_eq!(unquote(raw), value, "line {line}");
        }
        assert_eq!(quote("192.168.1.215"), "192.168.1.215");
        assert_eq!(quote("a b"), "\"a b\"");
    }

    #[test]
    fn hand_added_lines_are_kept_and_ours_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("collector.env");
        fs::write(&path, "# comment\nMQTT_HOST=old\nexport EXTRA='x y'\n").expect("write");
        let previous = read(&path).expect("read");
        assert_eq!(
            previous,
            [
                ("MQTT_HOST".to_owned(), "old".to_owned()),
                ("EXTRA".to_owned(), "x y".to_owned())
            ]
        );
        let text = render(&[], &previous, &["MQTT_HOST".to_owned()], false);
        assert!(text.ends_with("\nEXTRA=\"x y\"\n"), "{text}");
        assert!(!text.contains("MQTT_HOST"), "{text}");
        assert!(read(&dir.path().join("absent")).expect("absent").is_empty());
    }
}
