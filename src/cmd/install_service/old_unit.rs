//! A `pv3-collector.service` that pv3 did not write: the old Python
//! collector's (kevin-bird/powervault-p3-local), which used the same unit
//! name. Installing over it keeps a copy of it beside, and carries its
//! settings over: the `Environment=` lines (the old collector kept its
//! settings in the unit itself) and the files of its `EnvironmentFile=`
//! lines. Its variables (`MQTT_HOST`, `MQTT_PORT`, `P3_DEVICE_ID`,
//! `API_URL`) are pv3's own, so they mean the same.

use std::path::{Path, PathBuf};

/// What pv3's own unit says on its first line.
const OURS: &str = "# Written by `pv3 install-service`";

/// The suffix of the copy kept of a foreign unit; systemd reads only
/// `.service` files, so the copy is inert.
pub(super) const BACKUP_SUFFIX: &str = ".before-pv3";

/// A unit file pv3 did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Foreign {
    /// Its text, kept as it is.
    pub(super) text: String,
    /// What it ran (`ExecStart=`), for the message.
    pub(super) exec: Option<String>,
    /// Its `Environment=` settings, in order (a later one wins).
    pub(super) env: Vec<(String, String)>,
    /// The files of its `EnvironmentFile=` lines.
    pub(super) env_files: Vec<PathBuf>,
}

/// The unit's text as a foreign unit, if pv3 did not write it.
pub(super) fn foreign(text: &str) -> Option<Foreign> {
    if text.contains(OURS) {
        return None;
    }
    let mut found = Foreign {
        text: text.to_owned(),
        exec: None,
        env: Vec::new(),
        env_files: Vec::new(),
    };
    for line in text.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "ExecStart" => found.exec = Some(value.trim().to_owned()),
            "Environment" => {
                for word in words(value) {
                    if let Some((k, v)) = word.split_once('=') {
                        found.env.retain(|(old, _)| old != k);
                        found.env.push((k.to_owned(), v.to_owned()));
                    }
                }
            }
            "EnvironmentFile" => {
                let path = value.trim().trim_start_matches('-');
                if !path.is_empty() {
                    found.env_files.push(PathBuf::from(path));
                }
            }
            _ => {}
        }
    }
    Some(found)
}

/// Where the copy of `unit` goes.
pub(super) fn backup_path(unit: &Path) -> PathBuf {
    let mut name = unit.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

/// A value of `Environment=` split as systemd does: by spaces, with double
/// or single quotes around a word and backslash escapes inside them.
fn words(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The old collector's unit, as its repository ships it.
    const OLD: &str = "[Unit]\nDescription=PV3 MQTT Data Collector\nAfter=network.target\n\n\
        [Service]\nType=simple\nUser=kevin\nWorkingDirectory=/home/kevin/pv3-monitor/collector\n\
        Environment=\"MQTT_HOST=192.168.1.215\"\nEnvironment=\"MQTT_PORT=1883\"\n\
        Environment=\"P3_DEVICE_ID=PV001001DEV\"\nEnvironment=\"API_URL=http://localhost:8800\"\n\
        ExecStart=/usr/bin/python3 /home/kevin/pv3-monitor/collector/mqtt_collector.py\n\
        Restart=always\nRestartSec=10\n\n[Install]\nWantedBy=multi-user.target\n\n";

    #[test]
    fn the_old_collector_s_unit_is_foreign_and_its_settings_are_read() {
        let f = foreign(OLD).expect("not pv3's");
        assert_eq!(
            f.exec.as_deref(),
            Some("/usr/bin/python3 /home/kevin/pv3-monitor/collector/mqtt_collector.py")
        );
        let keys: Vec<&str> = f.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["MQTT_HOST", "MQTT_PORT", "P3_DEVICE_ID", "API_URL"]);
        assert_eq!(f.env[3].1, "http://localhost:8800");
        assert!(foreign("# Written by `pv3 install-service` (pv3 0.1.0)\n").is_none());
    }

    #[test]
    fn environment_lines_split_as_systemd_splits_them() {
        assert_eq!(
            words(r#""A=1 2" B=3 'C=x"y' "D=a\"b""#),
            ["A=1 2", "B=3", "C=x\"y", "D=a\"b"]
        );
        let f = foreign("Environment=A=1 B=2\nEnvironment=\"A=3\"\nEnvironmentFile=-/etc/x.env\n")
            .expect("foreign");
        assert_eq!(f.env, [("B".into(), "2".into()), ("A".into(), "3".into())]);
        assert_eq!(f.env_files, [PathBuf::from("/etc/x.env")]);
    }
}
