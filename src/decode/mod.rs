//! The one topic decoder: `(topic, payload bytes) → readings or an error`.
//!
//! Pure: no I/O, no clock, no state. Everything pv3 knows about what a P3
//! payload looks like lives in this module; the rest of the program sees only
//! [`Measurement`]s and [`AlarmStates`]. The contract is
//! `shared/spec/p3-topics.md`; `docs/topics.md` is the user's copy.
//!
//! `mod.rs` routes a topic suffix to the file for its family. Each family
//! decodes a parsed [`Json`] tree into a [`Decoded`], skipping (and counting)
//! individual items or fields it cannot use, and failing the whole message
//! only when the payload is not JSON or not the shape the topic publishes.

mod bms;
mod ffr;
mod inverter;
mod json;
pub mod metric;
mod soc;
mod status;

use std::borrow::Cow;

use crate::reading::{AlarmStates, Measurement};
use crate::topic::P3Topic;
use json::Json;

/// The API refuses metric names longer than this (422 for the whole batch),
/// so names built from payload keys are checked against it.
pub const MAX_METRIC_NAME: usize = 100;

/// The largest payload the decoder reads. A P3's messages are a few hundred
/// bytes (the largest in a day of a real unit: 736, `inverter/measurements`);
/// this is 350 times that. A larger payload is refused unread, so a
/// hostile or broken publisher cannot make pv3 build a tree of millions of
/// JSON numbers (two 15.6 MB arrays took collect from 7 to 268 MB).
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// How one family's payload becomes readings.
type FamilyDecoder = fn(&Json<'_>, &mut Decoded) -> Result<(), Reason>;

/// One topic family a P3 publishes: its suffix after `pv/PV3/<device>/`,
/// the decoder for its payload, and the short name `pv3 watch` shows.
#[derive(Debug)]
pub struct Family {
    /// `bms/soc`, `inverter/charge`, ...
    pub suffix: &'static str,
    /// What `pv3 watch` calls it where room is short.
    pub short_name: &'static str,
    /// `None`: published, captured, but its format is unknown; it decodes
    /// to nothing and is counted as unknown (`m4/pylontech_alerts`).
    decoder: Option<FamilyDecoder>,
}

impl Family {
    /// Whether the decoder reads this family's payload.
    pub fn is_decoded(&self) -> bool {
        self.decoder.is_some()
    }
}

const fn family(suffix: &'static str, short_name: &'static str, decoder: FamilyDecoder) -> Family {
    Family {
        suffix,
        short_name,
        decoder: Some(decoder),
    }
}

/// Every topic family, in the order views list them: the one table the
/// router, `sniff`'s summary and `pv3 watch` read. A new family is a row
/// here and a function in its file.
pub const FAMILIES: &[Family] = &[
    family("bms/soc", "soc", soc::decode),
    family("inverter/measurements", "inverter", inverter::measurements),
    family("inverter/alarms", "alarms", inverter::alarms),
    family("inverter/charge", "charge", inverter::charge),
    family("pylontech/info", "pylontech", bms::pylontech_info),
    family("ffr/measurements", "ct clamps", ffr::measurements),
    family("schedule/event", "schedule", status::schedule_event),
    family("m4/maxpower", "maxpower", status::max_power),
    family("eps/status", "eps", status::eps_status),
    family(
        "eps_schedule/event",
        "eps sched",
        status::eps_schedule_event,
    ),
    family("ffrcontroller/state", "ffr ctrl", ffr::controller_state),
    family("safetycheck/state", "safety", status::safetycheck_state),
    family(
        "safetycheck/measurements",
        "safety meas",
        status::safetycheck_measurements,
    ),
    Family {
        suffix: "m4/pylontech_alerts",
        short_name: "pyl alerts",
        decoder: None,
    },
];

/// The family published under `suffix`, if the P3 has one.
pub fn family_of(suffix: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.suffix == suffix)
}

/// Whether the decoder reads payloads under `suffix`.
pub fn is_decoded(suffix: &str) -> bool {
    family_of(suffix).is_some_and(Family::is_decoded)
}

/// The suffixes the decoder reads, in [`FAMILIES`]' order.
pub fn decoded_suffixes() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().filter(|f| f.is_decoded()).map(|f| f.suffix)
}

/// What one message decoded to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decoded {
    /// What the message says, in no particular order.
    pub measurements: Vec<Measurement>,
    /// Present only when the message carried at least one alarm flag.
    pub alarms: Option<AlarmStates>,
    /// Items or fields that were present but unusable (null, not numeric,
    /// unknown channel, not finite after scaling). Not errors.
    pub skipped: u32,
}

impl Decoded {
    /// Nothing to send: no measurement and no alarm states.
    pub fn is_empty(&self) -> bool {
        self.measurements.is_empty() && self.alarms.is_none()
    }

    /// Adds a measurement if its value is finite, else counts it skipped.
    fn push(&mut self, metric: impl Into<Cow<'static, str>>, value: f64, unit: &'static str) {
        if value.is_finite() {
            self.measurements
                .push(Measurement::new(metric, value, unit));
        } else {
            self.skipped += 1;
        }
    }

    /// Adds `obj[key] / divisor` when the key is present. A present value that
    /// is not a number is counted as skipped; a missing key is not.
    fn field(
        &mut self,
        obj: &Json<'_>,
        key: &str,
        metric: &'static str,
        divisor: f64,
        unit: &'static str,
    ) {
        if let Some(v) = obj.get(key) {
            match v.as_number() {
                Some(n) => self.push(metric, n / divisor, unit),
                None => self.skipped += 1,
            }
        }
    }

    /// Decodes a list of `{channel?, measurement, type?, value}` items with a
    /// lookup table. `table` returns `None` for items it does not know.
    fn items(&mut self, list: &[Json<'_>], table: impl Fn(&Item<'_>) -> Option<Row>) {
        for item in list {
            let Json::Object(_) = item else {
                self.skipped += 1;
                continue;
            };
            let item = Item {
                channel: item.get("channel").and_then(Json::as_str),
                measurement: item.get("measurement").and_then(Json::as_str),
                kind: item.get("type").and_then(Json::as_str),
                value: item.get("value"),
            };
            let Some(row) = table(&item) else {
                self.skipped += 1;
                continue;
            };
            match item.value.and_then(Json::as_number) {
                Some(raw) => {
                    let v = raw / row.divisor;
                    self.push(row.metric, if row.absolute { v.abs() } else { v }, row.unit);
                }
                None => self.skipped += 1,
            }
        }
    }
}

/// The fields a list item's table matches on. `None` where the field is
/// missing or not a string.
struct Item<'j> {
    channel: Option<&'j str>,
    measurement: Option<&'j str>,
    kind: Option<&'j str>,
    value: Option<&'j Json<'j>>,
}

/// One row of a topic table: where a matched item's value goes.
struct Row {
    metric: &'static str,
    divisor: f64,
    unit: &'static str,
    /// Send the absolute value (a limit the P3 publishes negative).
    absolute: bool,
}

/// A row with no sign change.
const fn row(metric: &'static str, divisor: f64, unit: &'static str) -> Row {
    Row {
        metric,
        divisor,
        unit,
        absolute: false,
    }
}

/// The result of decoding one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<'t> {
    /// Not a `pv/PV3/<device>/<suffix>` topic: ignored.
    Foreign,
    /// A P3 topic whose suffix the decoder does not cover (payload unread).
    Unknown {
        /// The topic's device id.
        device: &'t str,
        /// The topic's suffix, to count per suffix what is not covered.
        suffix: &'t str,
    },
    /// A topic the decoder covers, and what its payload said.
    Decoded {
        /// The topic's device id.
        device: &'t str,
        /// The topic's suffix, a decoded family of [`FAMILIES`].
        suffix: &'t str,
        /// The readings.
        decoded: Decoded,
    },
}

/// Why a message could not be decoded at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{topic}: {reason}")]
pub struct DecodeError {
    /// The full topic of the message.
    pub topic: String,
    /// What was wrong with its payload.
    pub reason: Reason,
}

/// What was wrong with a payload the decoder could not use at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reason {
    /// Not JSON (JSON has no `NaN` or `Infinity`): serde_json's message.
    #[error("payload is not valid JSON ({0})")]
    InvalidJson(String),
    /// Larger than [`MAX_PAYLOAD`]: skipped unread.
    #[error(
        "payload of {0} bytes is larger than any P3 message ({MAX_PAYLOAD} bytes at most): skipped unread"
    )]
    TooLarge(usize),
    /// JSON, but not the shape the topic publishes.
    #[error("expected {expected}, found {found}")]
    WrongShape {
        /// The shape the topic publishes, such as "a list".
        expected: &'static str,
        /// The shape that arrived.
        found: &'static str,
    },
}

/// Decodes one MQTT message. See the module docs.
pub fn decode<'t>(topic: &'t str, payload: &[u8]) -> Result<Outcome<'t>, DecodeError> {
    let Some(P3Topic { device, suffix }) = P3Topic::parse(topic) else {
        return Ok(Outcome::Foreign);
    };
    let Some(decoder) = family_of(suffix).and_then(|f| f.decoder) else {
        return Ok(Outcome::Unknown { device, suffix });
    };
    let error = |reason| DecodeError {
        topic: topic.to_owned(),
        reason,
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(error(Reason::TooLarge(payload.len())));
    }
    let json = Json::parse(payload).map_err(|e| error(Reason::InvalidJson(e.to_string())))?;
    let mut decoded = Decoded::default();
    decoder(&json, &mut decoded).map_err(error)?;
    Ok(Outcome::Decoded {
        device,
        suffix,
        decoded,
    })
}

/// The payload as a list, or a wrong-shape error.
fn expect_list<'a, 'j>(json: &'a Json<'j>) -> Result<&'a [Json<'j>], Reason> {
    match json {
        Json::List(items) => Ok(items),
        other => Err(Reason::WrongShape {
            expected: "a list",
            found: other.kind(),
        }),
    }
}

/// The payload as an object, or a wrong-shape error.
fn expect_object<'a, 'j>(json: &'a Json<'j>) -> Result<&'a Json<'j>, Reason> {
    match json {
        Json::Object(_) => Ok(json),
        other => Err(Reason::WrongShape {
            expected: "an object",
            found: other.kind(),
        }),
    }
}

/// For topics published as "an object (or a one-item list)": the object, the
/// list's first item, or `None` for an empty list.
fn object_or_first<'a, 'j>(json: &'a Json<'j>) -> Result<Option<&'a Json<'j>>, Reason> {
    match json {
        Json::List(items) => match items.first() {
            None => Ok(None),
            Some(first) => expect_object(first).map(Some),
        },
        other => expect_object(other).map(Some),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;
