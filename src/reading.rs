//! The data model every stage shares: what the decoder produces and what the
//! sinks (API, stdout) consume.
//!
//! Timestamps are kept as integer microseconds since the Unix epoch so that
//! they are cheap to copy, compare and subtract (the SOC filter does all
//! three), and are only turned into RFC 3339 text at the edges.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time, UTC, with microsecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time. Only the sources (MQTT receive, sniff)
    /// call this; the decoder never does.
    pub fn now() -> Self {
        let micros = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        };
        Timestamp(micros)
    }

    /// `micros` microseconds after the Unix epoch (negative: before it).
    pub const fn from_unix_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch, for arithmetic.
    pub const fn unix_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the Unix epoch, rounded down: the precision pv3
    /// sends, and so the one to compare what the API holds at.
    pub const fn unix_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Parses RFC 3339 text with any offset (`Z`, `+02:00`) into UTC.
    pub fn parse_rfc3339(text: &str) -> Result<Self, time::error::Parse> {
        let dt = OffsetDateTime::parse(text, &Rfc3339)?;
        Ok(Self::from_datetime(dt))
    }

    /// The same instant as `dt`, to the microsecond.
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let nanos = dt.unix_timestamp_nanos();
        Timestamp(i64::try_from(nanos / 1000).unwrap_or(if nanos < 0 {
            i64::MIN
        } else {
            i64::MAX
        }))
    }

    /// Seconds from `earlier` to `self` (negative when `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0.saturating_sub(earlier.0)) as f64 / 1e6
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, millisecond precision, the
    /// form the API and the capture format use).
    ///
    /// Hand-rolled rather than going through `time` or `core::fmt`: replay
    /// and collect format one of these per measurement they send or print.
    fn write_rfc3339(self, out: &mut String) {
        let mut buf = [0u8; 24];
        match self.format_into(&mut buf) {
            Some(text) => out.push_str(text),
            None => {
                // Years outside 0000-9999: RFC 3339 cannot say them; keep
                // the extended ISO 8601 form so nothing panics.
                let (y, rest) = self.fields();
                use std::fmt::Write;
                let (m, d, hh, mm, ss, ms) = rest;
                let _ = write!(
                    out,
                    "{y:+07}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z"
                );
            }
        }
    }

    /// (year, (month, day, hour, minute, second, millisecond)) in UTC.
    fn fields(self) -> (i64, (u32, u32, u32, u32, u32, u32)) {
        let millis = self.0.div_euclid(1000);
        let secs = millis.div_euclid(1000);
        let ms = millis.rem_euclid(1000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        (y, (m, d, sod / 3600, (sod / 60) % 60, sod % 60, ms))
    }

    /// The 24-byte form in `buf`, or `None` for years outside 0000-9999.
    fn format_into(self, buf: &mut [u8; 24]) -> Option<&str> {
        let (y, (m, d, hh, mm, ss, ms)) = self.fields();
        if !(0..=9999).contains(&y) {
            return None;
        }
        let y = y as u32;
        fn two(buf: &mut [u8], v: u32) {
            buf[0] = b'0' + (v / 10) as u8;
            buf[1] = b'0' + (v % 10) as u8;
        }
        two(&mut buf[0..2], y / 100);
        two(&mut buf[2..4], y % 100);
        buf[4] = b'-';
        two(&mut buf[5..7], m);
        buf[7] = b'-';
        two(&mut buf[8..10], d);
        buf[10] = b'T';
        two(&mut buf[11..13], hh);
        buf[13] = b':';
        two(&mut buf[14..16], mm);
        buf[16] = b':';
        two(&mut buf[17..19], ss);
        buf[19] = b'.';
        buf[20] = b'0' + (ms / 100) as u8;
        two(&mut buf[21..23], ms % 100);
        buf[23] = b'Z';
        std::str::from_utf8(buf).ok()
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds) as a new string.
    pub fn to_rfc3339(self) -> String {
        let mut s = String::with_capacity(24);
        self.write_rfc3339(&mut s);
        s
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`, exact for every i64 day in range.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        match self.format_into(&mut buf) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_str(&self.to_rfc3339()),
        }
    }
}

/// One decoded value, before it is tied to a device and a time.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// The backend's metric name. Mostly static; dynamic for per-module SOC
    /// (`soc_module_4`) and `safetycheck_<key>`.
    pub metric: Cow<'static, str>,
    /// Always finite: the decoder drops anything else.
    pub value: f64,
    /// Exact unit string the backend expects (`""` for counts and codes).
    pub unit: &'static str,
}

impl Measurement {
    /// A value of `metric`, with `unit` exactly as the backend expects it.
    pub fn new(metric: impl Into<Cow<'static, str>>, value: f64, unit: &'static str) -> Self {
        Measurement {
            metric: metric.into(),
            value,
            unit,
        }
    }
}

/// Alarm flags of one `inverter/alarms` message, sorted by name so that
/// output is stable.
pub type AlarmStates = BTreeMap<String, bool>;

/// Where a message came from: the device and the full topic. Shared by all
/// readings decoded from one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The device (from the topic, or replay's `--device-id`).
    pub device_id: Arc<str>,
    /// The full MQTT topic; the API's `source_topic`.
    pub topic: Arc<str>,
}

/// What one message decodes to, once it is tied to its origin and time.
#[derive(Clone, Debug)]
pub struct Reading {
    /// Where the message came from.
    pub origin: Origin,
    /// When it was received (live) or captured (replay).
    pub timestamp: Timestamp,
    /// The decoded values, after the SOC filter.
    pub measurements: Vec<Measurement>,
    /// The alarm flags, for an alarms message; `None` otherwise.
    pub alarms: Option<AlarmStates>,
}

/// Longest `source_topic` the API stores.
const MAX_SOURCE_TOPIC: usize = 100;

/// The API's measurement object (`POST .../measurements/batch` takes a list
/// of these). The device is in the URL, not the body.
pub struct ApiMeasurement<'a> {
    /// The metric, value and unit.
    pub measurement: &'a Measurement,
    /// When it was measured.
    pub timestamp: Timestamp,
    /// The MQTT topic; sent as null when longer than the API stores.
    pub source_topic: &'a str,
}

impl Serialize for ApiMeasurement<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("metric_name", &*self.measurement.metric)?;
        map.serialize_entry("metric_value", &self.measurement.value)?;
        map.serialize_entry("unit", self.measurement.unit)?;
        // The API takes at most 100 characters here and would refuse the
        // whole batch (422) for one longer topic; null is allowed.
        let topic =
            (self.source_topic.chars().count() <= MAX_SOURCE_TOPIC).then_some(self.source_topic);
        map.serialize_entry("source_topic", &topic)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.end()
    }
}

/// One line of `--dry-run --format jsonl` output for a measurement
/// (`cli.md` fixes the field order shown there; we keep it).
pub struct DryRunMeasurement<'a> {
    /// The device it belongs to.
    pub device_id: &'a str,
    /// When it was measured.
    pub timestamp: Timestamp,
    /// The metric, value and unit.
    pub measurement: &'a Measurement,
    /// The MQTT topic it came from.
    pub source_topic: &'a str,
}

impl Serialize for DryRunMeasurement<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("device_id", self.device_id)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry("metric_name", &*self.measurement.metric)?;
        map.serialize_entry("metric_value", &self.measurement.value)?;
        map.serialize_entry("unit", self.measurement.unit)?;
        map.serialize_entry("source_topic", self.source_topic)?;
        map.end()
    }
}

/// One line of `--dry-run --format jsonl` output for alarm states.
pub struct DryRunAlarms<'a> {
    /// The device they belong to.
    pub device_id: &'a str,
    /// When they were reported.
    pub timestamp: Timestamp,
    /// The MQTT topic they came from.
    pub source_topic: &'a str,
    /// Every flag in the message, on or off.
    pub alarms: &'a AlarmStates,
}

impl Serialize for DryRunAlarms<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("device_id", self.device_id)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry("source_topic", self.source_topic)?;
        map.serialize_entry("alarms", self.alarms)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_milliseconds() {
        let ts = Timestamp::parse_rfc3339("2026-11-27T14:19:27.357631Z").expect("valid");
        assert_eq!(ts.to_rfc3339(), "2026-11-27T14:19:27.357Z");
        let ts = Timestamp::parse_rfc3339("2026-11-27T16:19:27.001+02:00").expect("valid");
        assert_eq!(ts.to_rfc3339(), "2026-11-27T14:19:27.001Z");
    }

    #[test]
    fn formats_agree_with_time_crate_across_the_calendar() {
        // Every day boundary from 1969 to 2101 plus leap days.
        let mut micros: i64 = -86_400_000_000 * 400;
        while micros < 4_200_000_000_000_000 {
            let ts = Timestamp::from_unix_micros(micros + 123_456);
            let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts.unix_micros()) * 1000)
                .expect("in range");
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            );
            assert_eq!(ts.to_rfc3339(), expected);
            micros += 86_400_000_000 * 7 + 3_601_000_000;
        }
    }

    #[test]
    fn years_rfc3339_cannot_say_do_not_panic() {
        for micros in [
            i64::MIN,
            i64::MAX,
            -62_167_219_200_000_001,
            253_402_300_800_000_000,
        ] {
            let text = Timestamp::from_unix_micros(micros).to_rfc3339();
            assert!(text.starts_with('+') || text.starts_with('-'), "{text}");
            let json = serde_json::to_string(&Timestamp::from_unix_micros(micros)).expect("json");
            assert!(json.contains(&text));
        }
        assert_eq!(
            Timestamp::from_unix_micros(-62_167_219_200_000_000).to_rfc3339(),
            "0000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn negative_micros_round_down() {
        assert_eq!(
            Timestamp::from_unix_micros(-1).to_rfc3339(),
            "1969-12-31T23:59:59.999Z"
        );
    }
}
