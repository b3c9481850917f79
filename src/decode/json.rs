//! A small borrowed JSON tree for decoding P3 payloads.
//!
//! `serde_json::Value` would do, but it allocates every key and string and
//! sorts objects into B-trees; P3 payloads are small, flat and parsed a
//! million times a second in a backfill, so this keeps strings borrowed from
//! the payload where they have no escapes, and objects as short vectors.
//! serde_json still does the parsing (and enforces its recursion limit, so
//! hostile nesting is an error, not a stack overflow).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One JSON value, borrowing its strings from the payload where it can.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    List(Vec<Json<'a>>),
    /// Fields in payload order, repeated keys included: lookups take the
    /// last one ([`Json::get`], [`Json::unique_fields`]).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses a whole payload; trailing text after the value is an error.
    pub(crate) fn parse(payload: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// The value of `key` in an object (the last one if the key repeats, as
    /// most JSON readers do); `None` for a missing key or a non-object.
    pub(crate) fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// An object's fields with each key once, holding its last value (the
    /// one [`Json::get`] returns), last field first; nothing for a
    /// non-object. Linear in the number of fields: a 16 MiB payload can
    /// hold a million keys, and looking each one up among the others would
    /// be quadratic. Small objects (the P3's own) are scanned instead, which
    /// spares them a hash set's allocation and hashing.
    pub(crate) fn unique_fields(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        /// Up to this many fields, at most 32·31/2 short comparisons.
        const SCAN_UP_TO: usize = 32;
        let fields = match self {
            Json::Object(fields) => fields.as_slice(),
            _ => &[],
        };
        let mut seen = (fields.len() > SCAN_UP_TO).then(|| HashSet::with_capacity(fields.len()));
        fields
            .iter()
            .enumerate()
            .rev()
            .filter(move |(i, (key, _))| match &mut seen {
                Some(seen) => seen.insert(&**key),
                None => !fields[i + 1..].iter().any(|(later, _)| later == key),
            })
            .map(|(_, (key, value))| (&**key, value))
    }

    /// The text of a string; `None` for anything else.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A number, or a string whose trimmed text is a JSON number. Anything
    /// else (booleans, null, `"NaN"`, `"0x10"`) is not a number.
    pub(crate) fn as_number(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            Json::Str(s) => parse_numeric_str(s),
            _ => None,
        }
    }

    /// A short name for the kind of value, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Num(_) => "a number",
            Json::Str(_) => "a string",
            Json::List(_) => "a list",
            Json::Object(_) => "an object",
        }
    }
}

/// Parses text that, once trimmed, is a number in JSON's grammar:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Rust's own `f64` parser
/// is far more permissive (`inf`, `NaN`, `+1`, `.5`), hence the check first.
pub(crate) fn parse_numeric_str(s: &str) -> Option<f64> {
    let t = s.trim();
    let b = t.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    t.parse::<f64>().ok()
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Num(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::Num(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Num(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value()?;
            fields.push((key.0, value));
        }
        Ok(Json::Object(fields))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_strings_follow_json_grammar() {
        for (text, want) in [
            ("42", Some(42.0)),
            (" -1.5 ", Some(-1.5)),
            ("3e2", Some(300.0)),
            ("0", Some(0.0)),
            ("-0.25E-1", Some(-0.025)),
            ("1e400", Some(f64::INFINITY)),
        ] {
            assert_eq!(parse_numeric_str(text), want, "{text:?}");
        }
        for text in [
            "", " ", "NaN", "nan", "inf", "-inf", "Infinity", "0x10", "+1", ".5", "1.", "01", "1e",
            "1e+", "--1", "1 2", "true", "1_000", "١",
        ] {
            assert_eq!(parse_numeric_str(text), None, "{text:?}");
        }
    }

    #[test]
    fn borrows_plain_strings_and_keeps_escaped_ones() {
        let payload = br#"{"a":"plain","b\n":"esc\"aped","n":[1,-2,3.5,null,true]}"#;
        let json = Json::parse(payload).expect("valid");
        assert!(matches!(
            json.get("a"),
            Some(Json::Str(Cow::Borrowed("plain")))
        ));
        assert_eq!(json.get("b\n").and_then(Json::as_str), Some("esc\"aped"));
        assert_eq!(
            json.get("n"),
            Some(&Json::List(vec![
                Json::Num(1.0),
                Json::Num(-2.0),
                Json::Num(3.5),
                Json::Null,
                Json::Bool(true)
            ]))
        );
    }

    #[test]
    fn last_duplicate_key_wins() {
        let json = Json::parse(br#"{"k":1,"k":2}"#).expect("valid");
        assert_eq!(json.get("k"), Some(&Json::Num(2.0)));
    }

    #[test]
    fn unique_fields_keep_each_keys_last_value() {
        let json = Json::parse(br#"{"a":1,"b":2,"a":3,"c":4,"b":5}"#).expect("valid");
        let fields: Vec<(&str, &Json<'_>)> = json.unique_fields().collect();
        assert_eq!(
            fields,
            [
                ("b", &Json::Num(5.0)),
                ("c", &Json::Num(4.0)),
                ("a", &Json::Num(3.0)),
            ]
        );
        for (key, value) in &fields {
            assert_eq!(json.get(key), Some(*value), "{key}");
        }
        assert_eq!(
            Json::parse(b"[1]").expect("valid").unique_fields().count(),
            0
        );
    }

    #[test]
    fn unique_fields_agree_with_get_on_large_objects_too() {
        // Past the scanned size, with repeats near both ends.
        let mut text: Vec<String> = (0..100).map(|i| format!("\"k{}\":{i}", i % 40)).collect();
        text.push("\"k0\":-1".into());
        let payload = format!("{{{}}}", text.join(","));
        let json = Json::parse(payload.as_bytes()).expect("valid");
        let fields: Vec<(&str, &Json<'_>)> = json.unique_fields().collect();
        assert_eq!(fields.len(), 40);
        assert_eq!(fields[0], ("k0", &Json::Num(-1.0)));
        for (key, value) in &fields {
            assert_eq!(json.get(key), Some(*value), "{key}");
        }
    }

    #[test]
    fn rejects_non_json_and_deep_nesting() {
        assert!(Json::parse(b"NaN").is_err());
        assert!(Json::parse(b"{\"a\":Infinity}").is_err());
        assert!(Json::parse(b"[1,2").is_err());
        let deep = "[".repeat(100_000);
        assert!(Json::parse(deep.as_bytes()).is_err());
    }
}
