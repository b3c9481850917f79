//! The add-on's options: `/data/options.json`, which the Supervisor writes
//! from the schema in `ha-addon/pv3/config.yaml` and what the owner set in
//! the add-on's Configuration tab, and the `pv3 collect` command line they
//! stand for.
//!
//! The values are not checked here: each becomes a collect flag, and clap
//! checks the flags with collect's own rules and messages. Only what has no
//! flag (the log level) and the JSON itself are checked here.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde_json::{Map, Value};

use crate::cmd::ConfigError;

/// What an option of the add-on becomes on collect's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Becomes {
    /// `FLAG VALUE`.
    Value(&'static str),
    /// `FLAG` when the option is true, nothing when false.
    Switch(&'static str),
    /// `FLAG 0.0.0.0:VALUE`: a port to listen on, on every address of the
    /// container.
    ListenPort(&'static str),
    /// The log's level, as `-v`/`-q` would set it.
    LogLevel,
}

/// Every option `config.yaml` declares, with what it becomes. A test holds
/// this list, `config.yaml`'s schema and its translations to each other,
/// and checks every flag named here is one of collect's.
pub const OPTIONS: &[(&str, Becomes)] = &[
    ("mqtt_host", Becomes::Value("--mqtt-host")),
    ("mqtt_port", Becomes::Value("--mqtt-port")),
    ("mqtt_username", Becomes::Value("--mqtt-username")),
    ("mqtt_password", Becomes::Value("--mqtt-password")),
    ("device_id", Becomes::Value("--device-id")),
    ("api_url", Becomes::Value("--api-url")),
    ("api_token", Becomes::Value("--api-token")),
    ("ha_discovery", Becomes::Switch("--ha")),
    ("publish_interval", Becomes::Value("--publish-interval")),
    ("metrics_port", Becomes::ListenPort("--metrics-listen")),
    ("log_level", Becomes::LogLevel),
    ("out_mqtt_host", Becomes::Value("--out-mqtt-host")),
    ("out_mqtt_port", Becomes::Value("--out-mqtt-port")),
    ("out_mqtt_username", Becomes::Value("--out-mqtt-username")),
    ("out_mqtt_password", Becomes::Value("--out-mqtt-password")),
];

/// The options that name the output broker: when any is set, the
/// Supervisor's broker is not asked for (the owner's choice wins).
pub const OUTPUT_BROKER: &[&str] = &[
    "out_mqtt_host",
    "out_mqtt_port",
    "out_mqtt_username",
    "out_mqtt_password",
];

/// The log levels `log_level` takes, with the verbosity each stands for
/// (0 is the default, info; see [`crate::logging::init`]).
const LOG_LEVELS: &[(&str, i8)] = &[
    ("trace", 2),
    ("debug", 1),
    ("info", 0),
    ("warning", -1),
    ("error", -2),
];

/// The options file, read.
#[derive(Debug)]
pub struct Options {
    path: PathBuf,
    values: Map<String, Value>,
}

impl Options {
    /// Reads `path`. Anything wrong with the file is a [`ConfigError`]
    /// naming it.
    pub fn read(path: &Path) -> Result<Options> {
        let text = std::fs::read(path).map_err(|e| {
            ConfigError(anyhow!(
                "cannot read the add-on's options {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(path, &text)
    }

    /// The options in `text` (the contents of `path`).
    pub fn parse(path: &Path, text: &[u8]) -> Result<Options> {
        let mistake = |what: String| ConfigError(anyhow!("{}: {what}", path.display()));
        let value: Value =
            serde_json::from_slice(text).map_err(|e| mistake(format!("not valid JSON ({e})")))?;
        let Value::Object(values) = value else {
            return Err(mistake("not a JSON object of options".into()).into());
        };
        Ok(Options {
            path: path.to_owned(),
            values,
        })
    }

    /// The keys that are no option of this version (a newer add-on's
    /// options, or a hand edit): ignored, with a warning.
    pub fn unknown(&self) -> Vec<&str> {
        self.values
            .keys()
            .map(String::as_str)
            .filter(|k| !OPTIONS.iter().any(|(name, _)| name == k))
            .collect()
    }

    /// An option's value as text; `None` when absent, null or empty (the
    /// Supervisor leaves out an optional option the owner left empty).
    pub fn text(&self, name: &str) -> Result<Option<String>> {
        match self.values.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.wrong(name, "a text or a number", other)),
        }
    }

    /// Is the option set (present, not null, not empty)?
    pub fn is_set(&self, name: &str) -> bool {
        match self.values.get(name) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(_) => true,
        }
    }

    /// A true/false option; `None` when absent.
    fn switch(&self, name: &str) -> Result<Option<bool>> {
        match self.values.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(name, "true or false", other)),
        }
    }

    /// The verbosity `log_level` asks for (0, info, when absent).
    pub fn verbosity(&self) -> Result<i8> {
        let Some(level) = self.text("log_level")? else {
            return Ok(0);
        };
        let wanted = level.trim().to_ascii_lowercase();
        let wanted = if wanted == "warn" {
            "warning".into()
        } else {
            wanted
        };
        LOG_LEVELS
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = LOG_LEVELS.iter().map(|(n, _)| *n).collect();
                ConfigError(anyhow!(
                    "option log_level: '{level}' is not one of {} ({})",
                    names.join(", "),
                    self.path.display()
                ))
                .into()
            })
    }

    /// collect's command line for these options, after `pv3 collect
    /// --state-dir STATE`; without an `api_url`, `--no-api`.
    pub fn collect_argv(&self, state: &Path) -> Result<Vec<String>> {
        let mut argv: Vec<String> = vec![
            "pv3".into(),
            "collect".into(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        for (name, becomes) in OPTIONS {
            match becomes {
                Becomes::Value(flag) => {
                    if let Some(value) = self.text(name)? {
                        argv.extend([(*flag).to_owned(), value]);
                    }
                }
                Becomes::Switch(flag) => {
                    if self.switch(name)? == Some(true) {
                        argv.push((*flag).to_owned());
                    }
                }
                Becomes::ListenPort(flag) => {
                    if let Some(port) = self.text(name)? {
                        argv.extend([(*flag).to_owned(), format!("0.0.0.0:{port}")]);
                    }
                }
                Becomes::LogLevel => {}
            }
        }
        if self.text("api_url")?.is_none() {
            argv.push("--no-api".into());
        }
        Ok(argv)
    }

    /// The option a collect flag came from (for an error clap found in it).
    pub fn option_of(flag: &str) -> Option<&'static str> {
        OPTIONS.iter().find_map(|(name, becomes)| match becomes {
            Becomes::Value(f) | Becomes::Switch(f) | Becomes::ListenPort(f) if *f == flag => {
                Some(*name)
            }
            _ => None,
        })
    }

    fn wrong(&self, name: &str, expected: &str, got: &Value) -> anyhow::Error {
        let kind = match got {
            Value::Null => "null",
            Value::Bool(_) => "true/false",
            Value::Number(_) => "a number",
            Value::String(_) => "a text",
            Value::Array(_) => "a list",
            Value::Object(_) => "a group of settings",
        };
        ConfigError(anyhow!(
            "option {name}: expected {expected}, got {kind} ({})",
            self.path.display()
        ))
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: &str) -> Options {
        Options::parse(Path::new("/data/options.json"), json.as_bytes()).expect("valid options")
    }

    #[test]
    fn each_option_becomes_its_flag() {
        let o = options(
            r#"{"mqtt_host": "192.0.2.7", "mqtt_port": 1884, "device_id": "", "api_url": null,
                "ha_discovery": true, "publish_interval": 0, "metrics_port": 9800,
                "log_level": "debug", "mqtt_password": "s3cret"}"#,
        );
        let argv = o.collect_argv(Path::new("/data")).expect("argv");
        assert_eq!(
            argv,
            [
                "pv3",
                "collect",
                "--state-dir",
                "/data",
                "--mqtt-host",
                "192.0.2.7",
                "--mqtt-port",
                "1884",
                "--mqtt-password",
                "s3cret",
                "--ha",
                "--publish-interval",
                "0",
                "--metrics-listen",
                "0.0.0.0:9800",
                "--no-api"
            ]
        );
        assert_eq!(o.verbosity().expect("a level"), 1);
        assert!(!o.is_set("device_id"));
        assert!(o.is_set("ha_discovery"));
    }

    #[test]
    fn wrong_kinds_and_levels_name_the_option() {
        let o = options(r#"{"mqtt_host": ["a"], "ha_discovery": "yes", "log_level": "loud"}"#);
        let argv = o.collect_argv(Path::new("/data")).expect_err("a list");
        assert_eq!(
            argv.to_string(),
            "option mqtt_host: expected a text or a number, got a list (/data/options.json)"
        );
        let o = options(r#"{"ha_discovery": "yes", "log_level": "loud"}"#);
        let argv = o.collect_argv(Path::new("/data")).expect_err("a text");
        assert!(
            argv.to_string()
                .starts_with("option ha_discovery: expected true or false")
        );
        let level = o.verbosity().expect_err("not a level").to_string();
        assert!(level.starts_with("option log_level: 'loud' is not one of trace, debug"));
    }

    #[test]
    fn a_file_that_is_not_an_object_of_options_is_refused() {
        for (text, says) in [
            ("{\"mqtt_host\": ", "not valid JSON"),
            ("[1, 2]", "not a JSON object of options"),
        ] {
            let e = Options::parse(Path::new("/data/options.json"), text.as_bytes())
                .expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(crate::cmd::exit_code(&e), 2);
        }
    }

    #[test]
    fn unknown_keys_are_listed_and_flags_lead_back_to_options() {
        let o = options(r#"{"mqtt_host": "h", "colour": "blue"}"#);
        assert_eq!(o.unknown(), ["colour"]);
        assert_eq!(Options::option_of("--metrics-listen"), Some("metrics_port"));
        assert_eq!(Options::option_of("--ha"), Some("ha_discovery"));
        assert_eq!(Options::option_of("--retry-max"), None);
    }
}
