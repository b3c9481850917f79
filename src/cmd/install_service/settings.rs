//! The env file's settings, read off clap's own description of `collect`.
//!
//! Every option of `collect` that has an environment variable is a setting,
//! named by that variable and secret when clap hides its value, unless
//! [`SKIPPED`] says why not. So a new option of `collect` either reaches the
//! service by itself or is named in [`SKIPPED`] on purpose: [`coverage`]
//! lets a test check that none was forgotten. Which settings were given
//! (by flag or variable, not defaulted) comes from clap's
//! [`ArgMatches::value_source`]: the command line is parsed once.

use std::any::{Any, TypeId};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory};
use reqwest::Url;
use tracing::warn;

use crate::cli::Cli;
use crate::cmd::ConfigError;

/// The subcommand whose options the service runs with.
const COLLECT: &str = "collect";

/// Why one of `collect`'s options is not in the env file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It has no environment variable, so an env file cannot carry it; an
    /// override can (`systemctl edit pv3-collector`, `ExecStart=`).
    NoVariable,
    /// It has no place in a service; the text says why.
    NotForService(&'static str),
}

/// `collect`'s options (by clap id) deliberately left out of the env file.
/// Add a new option of `collect` here, or give it an `env = ...`.
const SKIPPED: &[(&str, Skip)] = &[
    (
        "dry_run",
        Skip::NotForService("a service sends; --dry-run only prints"),
    ),
    ("format", Skip::NotForService("the output of --dry-run")),
    (
        "ha_remove",
        Skip::NotForService("a one-off clean-up, run by hand"),
    ),
    (
        "state_dir",
        Skip::NotForService("systemd sets STATE_DIRECTORY from StateDirectory="),
    ),
    ("spool_max_mb", Skip::NoVariable),
    ("share_group", Skip::NoVariable),
    ("stale_after", Skip::NoVariable),
    ("batch_size", Skip::NoVariable),
    ("linger_ms", Skip::NoVariable),
    ("queue_max", Skip::NoVariable),
    ("shutdown_grace", Skip::NoVariable),
    ("stats_interval", Skip::NoVariable),
    ("mqtt_reconnect_max", Skip::NoVariable),
    ("retry_max", Skip::NoVariable),
    ("soc_threshold", Skip::NoVariable),
];

/// How the installed service gets one of `collect`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// A line of the env file, under this variable.
    EnvFile(String),
    /// Left out on purpose.
    Skipped(Skip),
    /// Neither: nobody decided how the service gets it.
    Forgotten,
}

/// Every option of `collect` (as `--flag`) with how the installed service
/// gets it. Nothing may be [`Coverage::Forgotten`]; tests/it/ops.rs checks.
pub fn coverage() -> Vec<(String, Coverage)> {
    coverage_of(&collect_args())
}

fn coverage_of(args: &[Arg]) -> Vec<(String, Coverage)> {
    args.iter()
        .map(|arg| {
            let coverage = match (skipped(arg), variable(arg)) {
                (Some(skip), _) => Coverage::Skipped(skip),
                (None, Some(key)) => Coverage::EnvFile(key),
                (None, None) => Coverage::Forgotten,
            };
            (flag(arg), coverage)
        })
        .collect()
}

/// `collect`'s options as clap defines them, without `--help`/`--version`.
fn collect_args() -> Vec<Arg> {
    let cli = Cli::command();
    let Some(collect) = cli.find_subcommand(COLLECT) else {
        return Vec::new();
    };
    collect
        .get_arguments()
        .filter(|a| !a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .cloned()
        .collect()
}

fn skipped(arg: &Arg) -> Option<Skip> {
    SKIPPED
        .iter()
        .find(|(id, _)| *id == arg.get_id().as_str())
        .map(|(_, skip)| *skip)
}

fn variable(arg: &Arg) -> Option<String> {
    arg.get_env().and_then(|v| v.to_str()).map(str::to_owned)
}

/// `--long`, else the id: for messages.
fn flag(arg: &Arg) -> String {
    match arg.get_long() {
        Some(long) => format!("--{long}"),
        None => arg.get_id().to_string(),
    }
}

/// How a value is written, from the type clap parses it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A switch: `true` or `false`.
    Flag,
    /// A file: made absolute, since the service has its own working
    /// directory, and checked to be visible to it.
    Path,
    /// A URL, normalised; its password is masked in `--dry-run`.
    Url,
    /// Seconds, normalised (`1.50` is `1.5`).
    Seconds,
    /// As given.
    Text,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        let ty = arg.get_value_parser().type_id();
        if ty == TypeId::of::<bool>() {
            Kind::Flag
        } else if ty == TypeId::of::<PathBuf>() {
            Kind::Path
        } else if ty == TypeId::of::<Url>() {
            Kind::Url
        } else if ty == TypeId::of::<Duration>() {
            Kind::Seconds
        } else {
            Kind::Text
        }
    }
}

/// One setting the env file can hold.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    /// clap's id, the same in `collect` and `install-service`.
    id: String,
    /// `--long`, for messages.
    flag: String,
    /// The variable: the line's key.
    pub(super) key: String,
    /// Shown as `***` (clap hides its value in `--help` too).
    secret: bool,
    kind: Kind,
}

/// The settings the env file can hold, in `collect`'s order.
pub(super) fn specs() -> Vec<Spec> {
    collect_args()
        .iter()
        .filter(|arg| skipped(arg).is_none())
        .filter_map(|arg| {
            Some(Spec {
                id: arg.get_id().to_string(),
                flag: flag(arg),
                key: variable(arg)?,
                secret: arg.is_hide_env_values_set(),
                kind: Kind::of(arg),
            })
        })
        .collect()
}

/// One line of the env file.
#[derive(Debug, Clone)]
pub(super) struct Setting {
    /// The variable.
    pub(super) key: String,
    /// Its value, as written.
    pub(super) value: String,
    /// Shown as `***`.
    pub(super) secret: bool,
    /// Not given this time, taken from the previous env file.
    pub(super) kept: bool,
    kind: Kind,
}

impl Setting {
    /// The value for `--dry-run`: a URL's password masked (a secret is not
    /// shown at all).
    pub(super) fn shown(&self) -> String {
        if self.kind != Kind::Url {
            return self.value.clone();
        }
        // Normalised as the env file holds it, then masked as everywhere.
        match Url::parse(&self.value) {
            Ok(url) => crate::secret::shown_url(&url),
            Err(_) => crate::secret::mask_url_passwords(&self.value).into_owned(),
        }
    }
}

/// Who runs the service, for the checks on a file given as a setting.
#[derive(Debug, Clone, Copy)]
pub(super) struct Audience {
    /// The system service: a dynamic user that cannot see home directories.
    pub(super) system: bool,
    /// A real install: what the service could not use is an error, not a
    /// warning.
    pub(super) real: bool,
}

/// The env file's settings: those given now, then those kept from
/// `previous`.
pub(super) fn settings(
    matches: &ArgMatches,
    previous: &[(String, String)],
    audience: Audience,
) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    for spec in specs() {
        let setting = if given(matches, &spec.id) {
            let value = value_now(&spec, matches, audience)?;
            Some((value, false))
        } else {
            previous
                .iter()
                .find(|(k, _)| *k == spec.key)
                .map(|(_, value)| (value.clone(), true))
        };
        let Some((value, kept)) = setting else {
            continue;
        };
        if value.contains(['\n', '\r', '\0']) {
            let key = &spec.key;
            return Err(ConfigError(anyhow::anyhow!(
                "{key} holds a line break, which an env file cannot"
            ))
            .into());
        }
        out.push(Setting {
            key: spec.key,
            value,
            secret: spec.secret,
            kept,
            kind: spec.kind,
        });
    }
    Ok(out)
}

/// Warns about options of `collect` given to install-service that the env
/// file cannot carry.
pub(super) fn warn_not_carried(matches: &ArgMatches) {
    for arg in collect_args() {
        if skipped(&arg) == Some(Skip::NoVariable) && given(matches, arg.get_id().as_str()) {
            warn!(
                "{} has no environment variable, so the service does not get it: add it with `systemctl edit pv3-collector` (ExecStart=) if you need it",
                flag(&arg)
            );
        }
    }
}

/// Given on the command line or by its variable (not a default); false for
/// an id install-service does not have.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches.try_contains_id(id).unwrap_or(false)
        && matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
}

/// The value given now, as the env file holds it.
fn value_now(spec: &Spec, matches: &ArgMatches, audience: Audience) -> Result<String> {
    Ok(match spec.kind {
        Kind::Flag => typed::<bool>(spec, matches)?.to_string(),
        Kind::Url => typed::<Url>(spec, matches)?.to_string(),
        Kind::Seconds => typed::<Duration>(spec, matches)?.as_secs_f64().to_string(),
        Kind::Path => service_path(spec, &typed::<PathBuf>(spec, matches)?, audience)?,
        Kind::Text => {
            let raw = matches
                .try_get_raw(&spec.id)
                .map_err(|e| anyhow!("{}: {e}", spec.flag))?
                .and_then(|mut values| values.next())
                .with_context(|| format!("{} has no value", spec.flag))?;
            raw.to_str()
                .ok_or_else(|| {
                    ConfigError(anyhow::anyhow!("{}: the value is not UTF-8", spec.flag))
                })?
                .to_owned()
        }
    })
}

/// The value clap parsed, of the type `collect` parses it to.
fn typed<T: Any + Clone + Send + Sync + 'static>(spec: &Spec, matches: &ArgMatches) -> Result<T> {
    matches
        .try_get_one::<T>(&spec.id)
        .map_err(|e| anyhow!("{}: {e}", spec.flag))?
        .cloned()
        .with_context(|| format!("{} has no value", spec.flag))
}

/// A file the service reads: absolute, symlinks resolved; for the system
/// service outside home directories and readable by its dynamic user.
fn service_path(spec: &Spec, path: &Path, audience: Audience) -> Result<String> {
    let abs = fs::canonicalize(path).map_err(|e| {
        ConfigError(anyhow::anyhow!(
            "{} {}: {e}: give the path of an existing file",
            spec.flag,
            path.display()
        ))
    })?;
    if audience.system {
        let what = format!("the {} file", spec.flag);
        super::hidden_from_service(&abs, &what, &spec.flag, audience.real)?;
        let world_readable = fs::metadata(&abs)
            .map(|md| md.permissions().mode() & 0o004 != 0)
            .unwrap_or(false);
        if !world_readable {
            warn!(
                "{what} {} is not readable by other users, and the service runs as its own dynamic user: chmod a+r it",
                abs.display()
            );
        }
    }
    Ok(abs.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skipped_option_is_one_of_collects() {
        let args = collect_args();
        for (id, skip) in SKIPPED {
            let arg = args
                .iter()
                .find(|a| a.get_id().as_str() == *id)
                .unwrap_or_else(|| panic!("SKIPPED names {id}, which collect does not have"));
            if *skip == Skip::NoVariable {
                assert!(
                    arg.get_env().is_none(),
                    "{id} has a variable now: take it off SKIPPED"
                );
            }
        }
    }

    #[test]
    fn a_new_option_is_forgotten_until_it_has_a_variable_or_a_reason() {
        let new = Arg::new("new_option").long("new-option");
        assert_eq!(
            coverage_of(std::slice::from_ref(&new)),
            [("--new-option".to_owned(), Coverage::Forgotten)]
        );
        let with_variable = new.env("PV3_NEW_OPTION");
        assert_eq!(
            coverage_of(&[with_variable]),
            [(
                "--new-option".to_owned(),
                Coverage::EnvFile("PV3_NEW_OPTION".to_owned())
            )]
        );
        let listed = Arg::new("batch_size").long("batch-size");
        assert_eq!(
            coverage_of(&[listed]),
            [(
                "--batch-size".to_owned(),
                Coverage::Skipped(Skip::NoVariable)
            )]
        );
    }

    #[test]
    fn settings_follow_collects_order_and_clap_marks_the_secrets() {
        let keys: Vec<(String, bool)> = specs().into_iter().map(|s| (s.key, s.secret)).collect();
        let expected = [
            ("MQTT_HOST", false),
            ("MQTT_PORT", false),
            ("MQTT_USERNAME", false),
            ("MQTT_PASSWORD", true),
            ("MQTT_TLS", false),
            ("MQTT_CA_FILE", false),
            ("MQTT_CLIENT_ID", false),
            ("P3_DEVICE_ID", false),
            ("API_URL", false),
            ("API_TOKEN", true),
            ("API_TIMEOUT", false),
            ("API_DEVICE_ID", false),
            ("NO_API", false),
            ("PUBLISH", false),
            ("PUBLISH_PREFIX", false),
            ("PUBLISH_INTERVAL", false),
            ("HA_DISCOVERY", false),
            ("HA_PREFIX", false),
            ("METRICS_LISTEN", false),
            ("OUT_MQTT_HOST", false),
            ("OUT_MQTT_PORT", false),
            ("OUT_MQTT_USERNAME", false),
            ("OUT_MQTT_PASSWORD", true),
            ("OUT_MQTT_TLS", false),
            ("OUT_MQTT_CA_FILE", false),
            ("OUT_MQTT_CLIENT_ID", false),
        ];
        let expected: Vec<(String, bool)> = expected
            .iter()
            .map(|(k, s)| ((*k).to_owned(), *s))
            .collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn given_values_are_normalised_by_type() {
        let matches = Cli::command()
            .try_get_matches_from([
                "pv3",
                "install-service",
                "--mqtt-tls",
                "--api-url",
                "http://u:pw@h:1",
                "--api-timeout",
                "1.50",
                "--mqtt-port",
                "1884",
            ])
            .expect("parses");
        let (_, sub) = matches.subcommand().expect("install-service");
        let audience = Audience {
            system: true,
            real: false,
        };
        let settings = settings(sub, &[], audience).expect("settings");
        for (key, shown) in [
            ("MQTT_PORT", "1884"),
            ("MQTT_TLS", "true"),
            ("API_URL", "http://u:***@h:1/"),
            ("API_TIMEOUT", "1.5"),
        ] {
            let setting = settings
                .iter()
                .find(|s| s.key == key)
                .unwrap_or_else(|| panic!("{key} missing: {settings:?}"));
            assert_eq!(setting.shown(), shown);
            assert!(!setting.kept);
        }
    }
}
