//! Value parsers for the command line: each checks one option's text and
//! says in one line what is wrong with it (clap names the option).

use std::ffi::OsStr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

use super::Speed;

/// A text check whose refusal is one line that quotes the value the way
/// Rust does (`"pv\u{1}3"`). clap's own message for a failed value parser
/// repeats the value raw: with a newline or a control character in it,
/// that is no longer one readable line.
#[derive(Clone, Copy)]
pub(super) struct Quoted(pub(super) fn(&str) -> Result<String, String>);

impl TypedValueParser for Quoted {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let name = arg
            .and_then(clap::Arg::get_long)
            .map_or_else(|| "a value".to_string(), |long| format!("--{long}"));
        let refuse = |why: String| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{name}: {why}\n")).with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse(format!("{value:?} is not UTF-8")))?;
        (self.0)(text).map_err(refuse)
    }
}

pub(super) fn parse_share_group(text: &str) -> Result<String, String> {
    if !crate::topic::publishable_level(text) {
        return Err(format!(
            "{text:?} is not a share group name: no '/', '+', '#' or control characters"
        ));
    }
    Ok(text.to_owned())
}

/// A topic prefix to publish under: one or more levels pv3 may publish to
/// (no wildcards, control characters or empty levels, see
/// [`crate::topic::publishable_level`]), and not a `$` topic (MQTT keeps
/// those for the broker; `#` subscribers do not see them).
pub(super) fn parse_topic_prefix(text: &str) -> Result<String, String> {
    if text.starts_with('$') || !text.split('/').all(crate::topic::publishable_level) {
        return Err(format!(
            "{text:?} is not a topic prefix: plain levels like pv3 or home/pv3, \
             no + #, control characters, empty levels or leading $"
        ));
    }
    Ok(text.to_string())
}

/// An MQTT client id: Mosquitto drops a client whose id holds a control
/// character, and would do so at every reconnect.
pub(super) fn parse_client_id(text: &str) -> Result<String, String> {
    if !text.chars().all(crate::topic::mqtt_char) {
        return Err(format!(
            "{text:?} is not a client id: no control characters"
        ));
    }
    Ok(text.to_string())
}

pub(super) fn parse_filter(text: &str) -> Result<String, String> {
    crate::topic::validate_filter(text)?;
    Ok(text.to_owned())
}

pub(super) fn parse_speed(text: &str) -> Result<Speed, String> {
    if text.eq_ignore_ascii_case("max") {
        return Ok(Speed::Max);
    }
    let v: f64 = text
        .trim()
        .trim_end_matches(['x', 'X'])
        .parse()
        .map_err(|_| format!("'{text}' is not max or a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("'{text}' must be more than 0"));
    }
    Ok(Speed::Times(v))
}

pub(super) fn parse_time(text: &str) -> Result<crate::reading::Timestamp, String> {
    crate::reading::Timestamp::parse_rfc3339(text)
        .map_err(|_| format!("'{text}' is not an RFC 3339 time like 2026-11-27T14:00:00Z"))
}

pub(super) fn parse_device_id_exact(text: &str) -> Result<String, String> {
    if text == crate::topic::ANY_DEVICE {
        return Err("must name one device (+ is for collect and sniff)".into());
    }
    parse_device_id(text)
}

pub(super) fn parse_device_id(text: &str) -> Result<String, String> {
    if text == crate::topic::ANY_DEVICE {
        return Ok(text.to_owned());
    }
    crate::topic::validate_device(text)
        .map_err(|e| format!("{e} (use + alone for every device)"))?;
    Ok(text.to_owned())
}

pub(super) fn parse_secs(text: &str) -> Result<Duration, String> {
    let d = parse_secs_or_zero(text)?;
    if d.is_zero() {
        return Err("must be more than 0 seconds".into());
    }
    Ok(d)
}

pub(super) fn parse_secs_or_zero(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=31_536_000.0).contains(&secs) {
        return Err(format!("'{text}' is out of range (0 to one year)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn parse_threshold(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(format!("'{text}' must be between 0 and 100"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_checked() {
        assert!(parse_device_id("PV001001DEV").is_ok());
        assert!(parse_device_id("+").is_ok());
        assert!(parse_device_id("").is_err());
        assert!(parse_device_id("a/b").is_err());
        assert!(parse_device_id("#").is_err());
        assert!(parse_device_id("a+").is_err());
    }

    #[test]
    fn topic_prefixes_and_client_ids_are_checked() {
        for good in ["pv3", "home/pv3", "homeassistant", "a b/é"] {
            assert_eq!(parse_topic_prefix(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "/pv3",
            "pv3/",
            "pv3//x",
            "pv3/#",
            "pv+",
            "pv\u{1}3",
            "pv\n3",
            "pv\u{85}",
            "pv\u{fdd0}",
            "$SYS",
            "$share/g",
        ] {
            assert!(parse_topic_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(parse_client_id("pv3-collect-abc/+#").is_ok());
        assert!(parse_client_id("").is_ok());
        assert!(parse_client_id("pv3\u{1}").is_err());
        assert!(parse_client_id("pv3\u{9f}").is_err());
    }

    #[test]
    fn speeds_and_times_are_checked() {
        assert_eq!(parse_speed("max"), Ok(Speed::Max));
        assert_eq!(parse_speed("10"), Ok(Speed::Times(10.0)));
        assert_eq!(parse_speed("2x"), Ok(Speed::Times(2.0)));
        assert!(parse_speed("0").is_err());
        assert!(parse_speed("fast").is_err());
        assert!(parse_time("2026-11-27T14:00:00Z").is_ok());
        assert!(parse_time("2026-11-27").is_err());
    }

    #[test]
    fn seconds_are_checked() {
        assert_eq!(parse_secs("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_secs("0").is_err());
        assert_eq!(parse_secs_or_zero("0"), Ok(Duration::ZERO));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("ten").is_err());
    }
}
