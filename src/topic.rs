//! Topic names: the P3's grammar, `pv/PV3/<device>/<suffix>`, and MQTT's
//! filter grammar (`+`, `#`) that selects topics.
//!
//! Everything that takes a topic apart or puts one together goes through
//! here, so the grammar is written once: the decoder splits a topic with
//! [`P3Topic::parse`], collect and sniff subscribe with [`device_filter`],
//! replay `--device-id` rewrites topics with [`with_device`], and the
//! `--topic` options are checked and matched with [`validate_filter`] and
//! [`matches`]. Pure string work: no I/O, no MQTT client.

use std::borrow::Cow;
use std::fmt;

/// What every P3 topic starts with.
const PREFIX: &str = "pv/PV3/";

/// Device ids one process keeps state for. A home has one P3, a broker
/// with `--device-id +` a few; a broker (or a hostile client) that
/// publishes under thousands of ids gets its first this many served, and
/// the messages of the rest counted and skipped, so memory stays bounded
/// (50,000 ids took `collect --device-id +` to 336 MB).
pub const MAX_DEVICES: usize = 1000;

/// The MQTT wildcard that stands for every device in [`device_filter`].
pub(crate) const ANY_DEVICE: &str = "+";

/// A P3 topic taken apart: `pv/PV3/<device>/<suffix>`, both parts non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct P3Topic<'t> {
    /// The device id, such as `PV001001DEV`; never contains `/`.
    pub device: &'t str,
    /// What follows the device, such as `inverter/measurements`; may
    /// contain `/`.
    pub suffix: &'t str,
}

impl<'t> P3Topic<'t> {
    /// Splits `pv/PV3/<device>/<suffix>`; `None` for any other topic, or an
    /// empty device or suffix. Inlined: it runs once per message, in the
    /// decoder's hot path.
    #[inline]
    pub fn parse(topic: &'t str) -> Option<Self> {
        let rest = topic.strip_prefix(PREFIX)?;
        let (device, suffix) = rest.split_once('/')?;
        if device.is_empty() || suffix.is_empty() {
            return None;
        }
        Some(P3Topic { device, suffix })
    }
}

/// The full topic, `pv/PV3/<device>/<suffix>`.
impl fmt::Display for P3Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}/{}", self.device, self.suffix)
    }
}

/// Checks that `id` names one device in a way a topic and a filter can
/// hold: not empty, no `/`, `#`, `+`, control characters or
/// non-characters (see [`level_char`]).
pub(crate) fn validate_device(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a device id cannot be empty".into());
    }
    if !id.chars().all(level_char) {
        return Err(format!(
            "{id:?} is not a device id: no '/', '#', '+' or control characters"
        ));
    }
    Ok(())
}

/// The longest topic level pv3 builds from outside text (a field name, an
/// alarm flag, a device id), in bytes. MQTT allows a whole topic of
/// 65,535; the P3's names are under 40 and the API takes metric names of
/// at most 100, so a longer one is shortened (with a hash, see
/// `outputs::publish`), never sent as it is.
pub(crate) const MAX_LEVEL: usize = 100;

/// Whether Mosquitto 2 takes `c` in an MQTT string (a topic, a client
/// id): it drops the client that sends a control character (U+0000–U+001F,
/// U+007F, U+0080–U+009F) or a Unicode non-character (U+FDD0–U+FDEF and
/// the last two code points of every plane). Checked against 2.0.11.
pub(crate) fn mqtt_char(c: char) -> bool {
    !(c.is_control() || ('\u{fdd0}'..='\u{fdef}').contains(&c) || (c as u32 & 0xfffe) == 0xfffe)
}

/// Whether `c` may stand in a topic level pv3 publishes to: an
/// [`mqtt_char`], and not `/` (it would split the level), `+` or `#`
/// (wildcards: no topic name may hold them).
pub(crate) fn level_char(c: char) -> bool {
    mqtt_char(c) && !matches!(c, '/' | '+' | '#')
}

/// Whether `text` is a topic level pv3 may publish to as it is: not empty,
/// at most [`MAX_LEVEL`] bytes, every character a [`level_char`].
pub(crate) fn publishable_level(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_LEVEL && text.chars().all(level_char)
}

/// The subscription filter for every topic of one device, or of every
/// device when `device` is [`ANY_DEVICE`]; any other `device` has passed
/// [`validate_device`].
pub fn device_filter(device: &str) -> String {
    format!("{PREFIX}{device}/#")
}

/// `topic` with its device replaced by `device` (replay `--device-id`); any
/// topic that is not a P3 topic as it is.
pub(crate) fn with_device<'t>(topic: &'t str, device: &str) -> Cow<'t, str> {
    match P3Topic::parse(topic) {
        Some(p3) => Cow::Owned(
            P3Topic {
                device,
                suffix: p3.suffix,
            }
            .to_string(),
        ),
        None => Cow::Borrowed(topic),
    }
}

/// Does `topic` match the MQTT filter `filter`? `+` matches one level, `#`
/// the rest (including the parent level), and wildcards at the start do not
/// match `$`-topics, as brokers do.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does every topic that `inner` matches also match `outer`?
fn filter_covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The filters without duplicates and without those another one covers:
/// some brokers deliver a message once per matching subscription.
pub(crate) fn minimal_filters(filters: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for (n, f) in filters.iter().enumerate() {
        // Dropped when another covers it strictly, or an earlier one is
        // equivalent.
        let covered = filters.iter().enumerate().any(|(m, other)| {
            m != n && filter_covers(other, f) && (m < n || !filter_covers(f, other))
        });
        if !covered && !kept.contains(f) {
            kept.push(f.clone());
        }
    }
    kept
}

/// Checks an MQTT subscription filter: `#` only last and alone in its
/// level, `+` alone in its level, not empty.
pub(crate) fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "'{filter}': '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("'{filter}': '+' must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p3_topics_split_into_device_and_suffix() {
        assert_eq!(
            P3Topic::parse("pv/PV3/PV001001DEV/inverter/measurements"),
            Some(P3Topic {
                device: "PV001001DEV",
                suffix: "inverter/measurements"
            })
        );
        for foreign in [
            "pv/PV3/X",
            "pv/PV3/X/",
            "pv/PV3//bms/soc",
            "pv/PV3/",
            "pv/PV4/X/bms/soc",
            "PV3/X/bms/soc",
            "",
        ] {
            assert_eq!(P3Topic::parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn publishable_levels_are_what_mosquitto_takes() {
        for good in [
            "grid_power",
            "PV001001DEV",
            "A B",
            "x\u{a0}y",
            "\u{200b}",
            "é",
        ] {
            assert!(publishable_level(good), "{good:?}");
        }
        let long = "k".repeat(MAX_LEVEL + 1);
        for bad in [
            "",
            "a/b",
            "a+",
            "#",
            "a\0b",
            "a\nb",
            "\t",
            "\u{7f}",
            "\u{80}",
            "\u{9f}",
            "\u{fdd0}",
            "\u{fdef}",
            "\u{fffe}",
            "\u{ffff}",
            "\u{1fffe}",
            "\u{10ffff}",
            &long,
        ] {
            assert!(!publishable_level(bad), "{bad:?}");
        }
        assert!(publishable_level(&long[1..]));
    }

    #[test]
    fn building_and_parsing_agree() {
        let topic = "pv/PV3/PV001001DEV/inverter/alarms";
        let p3 = P3Topic::parse(topic).expect("a P3 topic");
        assert_eq!(p3.to_string(), topic);
        let filter = device_filter(p3.device);
        assert_eq!(filter, "pv/PV3/PV001001DEV/#");
        assert!(matches(&filter, topic));
        assert!(!matches(&filter, "pv/PV3/OTHER/inverter/alarms"));
        assert!(matches(&device_filter(ANY_DEVICE), topic));
        assert!(validate_filter(&device_filter(ANY_DEVICE)).is_ok());
    }

    #[test]
    fn device_ids_fit_in_a_topic_and_a_filter() {
        assert!(validate_device("PV001001DEV").is_ok());
        for bad in [
            "",
            "a/b",
            "#",
            "a+",
            "+",
            "a\nb",
            "a\u{85}b",
            "a\u{fdd0}",
            "a\u{fffe}",
        ] {
            assert!(validate_device(bad).is_err(), "{bad:?}");
        }
        let id = "PV001001DEV";
        assert_eq!(
            P3Topic::parse(&format!("{}x/y", device_filter(id).trim_end_matches('#'))),
            Some(P3Topic {
                device: id,
                suffix: "x/y"
            })
        );
    }

    #[test]
    fn device_rewrite_keeps_the_suffix() {
        assert_eq!(with_device("pv/PV3/A/bms/soc", "B"), "pv/PV3/B/bms/soc");
        assert_eq!(
            with_device("pv/PV3/A/inverter/measurements", "B"),
            "pv/PV3/B/inverter/measurements"
        );
        assert!(matches!(
            with_device("other/topic", "B"),
            Cow::Borrowed("other/topic")
        ));
    }

    #[test]
    fn wildcards_match_like_a_broker() {
        let cases = [
            ("pv/PV3/#", "pv/PV3/X/bms/soc", true),
            ("pv/PV3/#", "pv/PV3", true),
            ("pv/PV3/+/bms/soc", "pv/PV3/X/bms/soc", true),
            ("pv/PV3/+/bms/soc", "pv/PV3/X/bms/soc/extra", false),
            ("pv/PV3/+/#", "pv/PV3/X/inverter/alarms", true),
            ("pv/PV3/+", "pv/PV3/X/bms", false),
            ("pv/PV3/X/bms/soc", "pv/PV3/X/bms/soc", true),
            ("pv/PV3/X/bms/soc", "pv/PV3/Y/bms/soc", false),
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("+/+", "a/", true),
            ("a/+", "a", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn overlapping_filters_are_reduced() {
        let f = |v: &[&str]| minimal_filters(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(f(&["pv/PV3/+/#", "pv/PV3/X/bms/soc"]), ["pv/PV3/+/#"]);
        assert_eq!(f(&["a/b", "a/b"]), ["a/b"]);
        assert_eq!(f(&["a/+", "a/#"]), ["a/#"]);
        assert_eq!(f(&["a/+", "b/+"]), ["a/+", "b/+"]);
        assert_eq!(f(&["#", "$SYS/#"]), ["#", "$SYS/#"]);
        assert_eq!(f(&["a/#", "a"]), ["a/#"]);
        assert_eq!(f(&["a/+/c", "a/b/+"]), ["a/+/c", "a/b/+"]);
    }

    #[test]
    fn filters_are_validated() {
        assert!(validate_filter("pv/PV3/+/#").is_ok());
        assert!(validate_filter("#").is_ok());
        assert!(validate_filter("").is_err());
        assert!(validate_filter("pv/#/soc").is_err());
        assert!(validate_filter("pv/P#").is_err());
        assert!(validate_filter("pv/a+/x").is_err());
    }
}
