//! Capture files (`shared/spec/capture-format.md`): writing pv3's JSON Lines
//! format, and reading it and `mosquitto_sub -F %j` / `-F %J` lines.
//!
//! Reading is line by line with one reused buffer, so memory stays flat
//! whatever the file's size, and a bad line is an error for that line only
//! (with its number), never for the file. A line longer than any record can
//! be ([`MAX_LINE`]) is reported and skipped; no more than that limit of it
//! is ever held in memory.

use std::borrow::Cow;
use std::io::{self, BufRead, Read};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{PrimitiveDateTime, UtcOffset};

use crate::decode::MAX_PAYLOAD;
use crate::reading::Timestamp;

/// The longest topic MQTT allows, in bytes.
const MAX_TOPIC: usize = u16::MAX as usize;

/// The longest line, without its newline, that [`CaptureReader`] reads:
/// what [`write_line`] makes of the largest message pv3 reads
/// ([`MAX_PAYLOAD`], with the longest topic MQTT allows) when every byte of
/// its topic and payload is a control character, which JSON escapes as six
/// (`\u0001`), plus the fields around them: about 2 MB. A longer line
/// cannot hold a P3 message; it is reported and skipped, never buffered
/// whole. (A base64 payload is only 4/3 of its size.) `sniff` still writes
/// any message whole: such a line is reported by number when read.
pub const MAX_LINE: usize = 6 * (MAX_TOPIC + MAX_PAYLOAD) + 1024;

/// One captured message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When it was received (UTC).
    pub ts: Timestamp,
    /// The full MQTT topic.
    pub topic: String,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Whether the broker sent it as a retained message.
    pub retain: bool,
    /// The payload bytes, exactly as received.
    pub payload: Vec<u8>,
}

/// Appends one capture line (with its `\n`) for a message to `out`.
pub fn write_line(
    out: &mut Vec<u8>,
    ts: Timestamp,
    topic: &str,
    qos: u8,
    retain: bool,
    payload: &[u8],
) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        ts: &'a str,
        topic: &'a str,
        qos: u8,
        retain: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_b64: Option<String>,
    }
    let ts = ts.to_rfc3339();
    let (text, b64) = match std::str::from_utf8(payload) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(BASE64.encode(payload))),
    };
    let line = Line {
        ts: &ts,
        topic,
        qos,
        retain,
        payload: text,
        payload_b64: b64,
    };
    // Serialising strings, numbers and bools into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The last line has no newline and does not parse: its writer stopped
    /// mid-line.
    #[error("line {line}: truncated last line (was the writer killed?)")]
    Truncated {
        /// 1-based line number.
        line: u64,
    },
    /// Longer than [`MAX_LINE`]: not a capture record, skipped unread.
    #[error(
        "line {line}: longer than {max} bytes, more than any capture record of a P3 message can be"
    )]
    TooLong {
        /// 1-based line number.
        line: u64,
        /// The limit, [`MAX_LINE`] unless a test set another.
        max: usize,
    },
    /// A record whose payload is larger than [`MAX_PAYLOAD`]: larger than
    /// any P3 message, skipped.
    #[error(
        "line {line}: a payload of {bytes} bytes, larger than any P3 message ({MAX_PAYLOAD} bytes at most)"
    )]
    PayloadTooLarge {
        /// 1-based line number.
        line: u64,
        /// The payload's size.
        bytes: usize,
    },
    /// A whole line that is not a capture record.
    #[error("line {line}: {reason}")]
    Bad {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
}

impl LineError {
    /// The 1-based number of the line the error is about.
    pub fn line(&self) -> u64 {
        match self {
            LineError::Truncated { line }
            | LineError::TooLong { line, .. }
            | LineError::PayloadTooLarge { line, .. }
            | LineError::Bad { line, .. } => *line,
        }
    }
}

/// The fields of any supported line format; unknown fields are ignored.
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow, default)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tst: Option<Cow<'a, str>>,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<BoolOrInt>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload_b64: Option<Cow<'a, str>>,
}

/// `retain`: pv3 writes a bool, mosquitto 0/1.
#[derive(Deserialize)]
#[serde(untagged)]
enum BoolOrInt {
    Bool(bool),
    Int(u64),
}

/// Parses one non-blank line (without its newline).
pub fn parse_line(text: &[u8]) -> Result<Record, String> {
    let raw: RawLine<'_> = serde_json::from_slice(text).map_err(|e| {
        if std::str::from_utf8(text).is_err() {
            "not valid UTF-8 (a binary payload written by mosquitto_sub? capture with pv3 sniff)"
                .to_string()
        } else {
            format!("not a capture record ({e})")
        }
    })?;
    let ts = match (&raw.ts, &raw.tst) {
        (Some(ts), _) => Timestamp::parse_rfc3339(ts)
            .map_err(|e| format!("bad \"ts\" {ts:?} ({e}); expected RFC 3339"))?,
        (None, Some(tst)) => parse_mosquitto_time(tst)
            .ok_or_else(|| format!("bad \"tst\" {tst:?}; expected mosquitto's %j time"))?,
        (None, None) => return Err("no \"ts\" (pv3) or \"tst\" (mosquitto_sub) field".into()),
    };
    // Years 0000-9999 in UTC: what RFC 3339 (and so a capture) can hold.
    if !(-62_167_219_200_000_000..=253_402_300_799_999_999).contains(&ts.unix_micros()) {
        return Err("time outside the years 0000-9999 UTC".into());
    }
    let qos = raw.qos.unwrap_or(0);
    if qos > 2 {
        return Err(format!("qos {qos} is not 0, 1 or 2"));
    }
    let retain = match raw.retain {
        None | Some(BoolOrInt::Bool(false)) | Some(BoolOrInt::Int(0)) => false,
        Some(BoolOrInt::Bool(true)) | Some(BoolOrInt::Int(1)) => true,
        Some(BoolOrInt::Int(n)) => return Err(format!("retain {n} is not 0 or 1")),
    };
    let payload = match (raw.payload_b64, raw.payload) {
        (Some(b64), _) => BASE64
            .decode(b64.as_bytes())
            .map_err(|e| format!("bad \"payload_b64\" ({e})"))?,
        (None, Some(raw)) => {
            let text = raw.get();
            if text.starts_with('"') {
                // A string: the payload text (pv3, mosquitto %j).
                let s: Cow<'_, str> =
                    serde_json::from_str(text).map_err(|e| format!("bad \"payload\" ({e})"))?;
                s.into_owned().into_bytes()
            } else {
                // mosquitto %J embeds a JSON payload as JSON: its text is the
                // payload, exactly as mosquitto printed it.
                text.as_bytes().to_vec()
            }
        }
        (None, None) => return Err("no \"payload\" or \"payload_b64\" field".into()),
    };
    Ok(Record {
        ts,
        topic: raw.topic.into_owned(),
        qos,
        retain,
        payload,
    })
}

/// mosquitto_sub's `%j` time: the capturing host's local time, a literal
/// `Z`, then the real offset: `2026-11-27T14:19:27.357631Z+0200`.
fn parse_mosquitto_time(text: &str) -> Option<Timestamp> {
    const LOCAL: &[FormatItem<'static>] = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    if let Ok(ts) = Timestamp::parse_rfc3339(text) {
        return Some(ts);
    }
    let (local, offset) = text.split_once('Z')?;
    let local = PrimitiveDateTime::parse(local, LOCAL).ok()?;
    let offset = parse_offset(offset)?;
    Some(Timestamp::from_datetime(local.assume_offset(offset)))
}

/// `+hhmm`, `-hhmm` or `+hh:mm`.
fn parse_offset(text: &str) -> Option<UtcOffset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1i8, &text[1..]),
        b'-' => (-1i8, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i8 = digits[..2].parse().ok()?;
    let minutes: i8 = digits[2..].parse().ok()?;
    UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()
}

/// Reads records from a capture, line by line.
pub struct CaptureReader<R> {
    input: R,
    buf: Vec<u8>,
    line: u64,
    bytes: u64,
    max_line: usize,
}

impl<R: BufRead> CaptureReader<R> {
    /// A reader of `input` that takes lines of up to [`MAX_LINE`] bytes.
    pub fn new(input: R) -> Self {
        Self::with_max_line(input, MAX_LINE)
    }

    /// A reader with another line limit, so tests need not write 96 MiB.
    fn with_max_line(input: R, max_line: usize) -> Self {
        CaptureReader {
            input,
            buf: Vec::with_capacity(4096),
            line: 0,
            bytes: 0,
            max_line,
        }
    }

    /// Bytes consumed so far (for a progress bar).
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The next record, a bad line (reading goes on after it), or `None` at
    /// the end. I/O errors end the read.
    pub fn next_record(&mut self) -> io::Result<Option<Result<Record, LineError>>> {
        // A line's text and its newline: `limit` bytes without a newline
        // are a line longer than `max_line`.
        let limit = self.max_line.saturating_add(1) as u64;
        loop {
            self.buf.clear();
            let n = Read::take(&mut self.input, limit).read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.bytes += n as u64;
            let complete = self.buf.last() == Some(&b'\n');
            if !complete && n as u64 == limit {
                // The rest of the line is read and thrown away, unbuffered.
                self.bytes += self.input.skip_until(b'\n')? as u64;
                return Ok(Some(Err(LineError::TooLong {
                    line: self.line,
                    max: self.max_line,
                })));
            }
            let text = trim_ascii(&self.buf);
            if text.is_empty() {
                continue;
            }
            let record = parse_line(text).map_err(|reason| {
                if complete {
                    LineError::Bad {
                        line: self.line,
                        reason,
                    }
                } else {
                    LineError::Truncated { line: self.line }
                }
            });
            return Ok(Some(record.and_then(|r| match r.payload.len() {
                bytes if bytes > MAX_PAYLOAD => Err(LineError::PayloadTooLarge {
                    line: self.line,
                    bytes,
                }),
                _ => Ok(r),
            })));
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("valid")
    }

    #[test]
    fn writes_the_documented_format() {
        let mut out = Vec::new();
        let at = ts("2026-11-27T14:19:27.357Z");
        write_line(&mut out, at, "pv/PV3/X/bms/soc", 0, false, br#"[{"a":1}]"#);
        write_line(
            &mut out,
            at,
            "pv/PV3/X/m4/pylontech_alerts",
            1,
            true,
            &[0xff, 0xfe],
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            concat!(
                r#"{"ts":"2026-11-27T14:19:27.357Z","topic":"pv/PV3/X/bms/soc","qos":0,"retain":false,"payload":"[{\"a\":1}]"}"#,
                "\n",
                r#"{"ts":"2026-11-27T14:19:27.357Z","topic":"pv/PV3/X/m4/pylontech_alerts","qos":1,"retain":true,"payload_b64":"//4="}"#,
                "\n"
            )
        );
    }

    #[test]
    fn round_trips_any_bytes() {
        let payloads: Vec<Vec<u8>> = vec![
            vec![],
            b"plain".to_vec(),
            "ünïcødé \u{1F50B}\n\t\"quoted\"\\".as_bytes().to_vec(),
            (0..=255u8).collect(),
            vec![0xc3],
        ];
        for payload in payloads {
            let mut out = Vec::new();
            let at = ts("2026-11-27T14:19:27.001Z");
            write_line(&mut out, at, "t/x", 2, true, &payload);
            assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
            let mut reader = CaptureReader::new(&out[..]);
            let record = reader
                .next_record()
                .expect("io")
                .expect("a record")
                .expect("valid");
            assert_eq!(
                record,
                Record {
                    ts: at,
                    topic: "t/x".into(),
                    qos: 2,
                    retain: true,
                    payload
                }
            );
        }
    }

    #[test]
    fn reads_mosquitto_j_lines_with_local_time() {
        let line = br#"{"tst":"2026-11-27T16:19:27.357631Z+0200","topic":"pv/PV3/X/bms/soc","qos":0,"retain":1,"payloadlen":5,"payload":"hello"}"#;
        let r = parse_line(line).expect("valid");
        assert_eq!(r.ts.to_rfc3339(), "2026-11-27T14:19:27.357Z");
        assert!(r.retain);
        assert_eq!(r.payload, b"hello");
        let line = br#"{"tst":"2026-11-27T09:19:27.5Z-0500","topic":"a","qos":1,"retain":0,"payload":"x"}"#;
        assert_eq!(
            parse_line(line).expect("valid").ts.to_rfc3339(),
            "2026-11-27T14:19:27.500Z"
        );
    }

    #[test]
    fn reads_mosquitto_big_j_embedded_json_verbatim() {
        let line = br#"{"tst":"2026-11-27T14:19:27.357631Z+0000","topic":"a","qos":0,"retain":0,"payloadlen":46,"payload":[{"measurement":"StateOfCharge","value":9700}]}"#;
        let r = parse_line(line).expect("valid");
        assert_eq!(
            r.payload,
            br#"[{"measurement":"StateOfCharge","value":9700}]"#
        );
        let line = br#"{"tst":"2026-11-27T14:19:27Z+0000","topic":"a","payload":42}"#;
        assert_eq!(parse_line(line).expect("valid").payload, b"42");
    }

    #[test]
    fn payload_b64_wins_over_payload() {
        let line =
            br#"{"ts":"2026-11-27T14:19:27Z","topic":"a","payload":"text","payload_b64":"AAE="}"#;
        assert_eq!(parse_line(line).expect("valid").payload, vec![0, 1]);
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let line = br#"{"ts":"2026-11-27T14:19:27Z","topic":"a","payload":"x","extra":{"y":1}}"#;
        let r = parse_line(line).expect("valid");
        assert_eq!((r.qos, r.retain), (0, false));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a capture record"),
            (b"{\"topic\":\"a\",\"payload\":\"x\"}", "no \"ts\""),
            (
                b"{\"ts\":\"yesterday\",\"topic\":\"a\",\"payload\":\"x\"}",
                "bad \"ts\"",
            ),
            (
                b"{\"tst\":\"2026-11-27T14:19:27Z+9999\",\"topic\":\"a\",\"payload\":\"x\"}",
                "bad \"tst\"",
            ),
            (
                b"{\"ts\":\"2026-11-27T14:19:27Z\",\"topic\":\"a\"}",
                "no \"payload\"",
            ),
            (
                b"{\"ts\":\"2026-11-27T14:19:27Z\",\"topic\":\"a\",\"payload\":\"x\",\"qos\":3}",
                "qos 3",
            ),
            (
                b"{\"ts\":\"2026-11-27T14:19:27Z\",\"topic\":\"a\",\"payload_b64\":\"!!\"}",
                "payload_b64",
            ),
            (
                b"{\"tst\":\"2026-11-27T14:19:27Z+0000\",\"topic\":\"a\",\"payload\":\"\xff\"}",
                "UTF-8",
            ),
            (b"[1,2]", "not a capture record"),
            (
                b"{\"ts\":\"9999-12-31T23:59:59-23:59\",\"topic\":\"a\",\"payload\":\"x\"}",
                "outside the years",
            ),
        ];
        for (line, want) in cases {
            let err = parse_line(line).expect_err("bad line");
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn reader_numbers_lines_skips_blanks_and_spots_truncation() {
        let text = b"\n{\"ts\":\"2026-11-27T14:19:27Z\",\"topic\":\"a\",\"payload\":\"1\"}\n  \ngarbage\n{\"ts\":\"2026-11-27T14:19:28Z\",\"topic\":\"a\",\"payload\":\"2\"}\n{\"ts\":\"2026-11-27T14:19:29Z\",\"top";
        let mut reader = CaptureReader::new(&text[..]);
        let mut seen = Vec::new();
        while let Some(item) = reader.next_record().expect("io") {
            seen.push(item.map(|r| r.payload));
        }
        assert_eq!(
            seen,
            vec![
                Ok(b"1".to_vec()),
                Err(LineError::Bad {
                    line: 4,
                    reason: "not a capture record (expected value at line 1 column 1)".into()
                }),
                Ok(b"2".to_vec()),
                Err(LineError::Truncated { line: 6 }),
            ]
        );
        assert_eq!(reader.bytes_read(), text.len() as u64);
    }

    #[test]
    fn an_overlong_line_is_skipped_by_number_in_bounded_memory() {
        let record =
            |n: u32| format!(r#"{{"ts":"2026-11-27T14:19:27Z","topic":"a","payload":"{n}"}}"#);
        let max = 10_000;
        let huge = "x".repeat(1_000_000);
        let exact = format!("{}{}", record(3), " ".repeat(max - record(3).len()));
        let text = format!("{}\n{huge}\n{}\n{exact}\n{huge}", record(1), record(2));
        let mut reader = CaptureReader::with_max_line(text.as_bytes(), max);
        let mut seen = Vec::new();
        while let Some(item) = reader.next_record().expect("io") {
            // Never more than the limit in memory (the growth of a Vec
            // aside), where a plain `read_until` holds the whole line.
            assert!(
                reader.buf.capacity() <= 2 * (max + 1),
                "{}",
                reader.buf.capacity()
            );
            seen.push(item.map(|r| r.payload));
        }
        assert_eq!(
            seen,
            vec![
                Ok(b"1".to_vec()),
                Err(LineError::TooLong { line: 2, max }),
                Ok(b"2".to_vec()),
                Ok(b"3".to_vec()),
                Err(LineError::TooLong { line: 5, max }),
            ]
        );
        assert_eq!(reader.bytes_read(), text.len() as u64);
        assert_eq!(
            LineError::TooLong { line: 2, max }.to_string(),
            "line 2: longer than 10000 bytes, more than any capture record of a P3 message can be"
        );
    }

    #[test]
    fn a_payload_larger_than_any_p3_message_is_reported_by_line() {
        let line = |payload: &[u8]| {
            let mut out = Vec::new();
            write_line(&mut out, ts("2026-11-27T14:19:27Z"), "a", 0, false, payload);
            out
        };
        let text = [
            line(b"1"),
            line(&vec![b'x'; MAX_PAYLOAD + 1]),
            line(&vec![b'x'; MAX_PAYLOAD]),
        ]
        .concat();
        let mut reader = CaptureReader::new(&text[..]);
        let mut seen = Vec::new();
        while let Some(item) = reader.next_record().expect("io") {
            seen.push(item.map(|r| r.payload.len()));
        }
        let too_large = LineError::PayloadTooLarge {
            line: 2,
            bytes: MAX_PAYLOAD + 1,
        };
        assert_eq!(seen, vec![Ok(1), Err(too_large.clone()), Ok(MAX_PAYLOAD)]);
        assert_eq!(
            too_large.to_string(),
            format!(
                "line 2: a payload of {} bytes, larger than any P3 message ({MAX_PAYLOAD} bytes at most)",
                MAX_PAYLOAD + 1
            )
        );
    }

    #[test]
    fn the_longest_line_write_line_makes_fits_the_limit() {
        let at = ts("2026-11-27T14:19:27.357Z");
        let line = |topic: &str, payload: &[u8]| {
            let mut out = Vec::new();
            write_line(&mut out, at, topic, 2, false, payload);
            out
        };
        let envelope = line("", b"").len() - 1;
        // Every byte a control character: JSON's worst case, six to one.
        let (topic, payload) = ("\u{1}".repeat(MAX_TOPIC), vec![1u8; MAX_PAYLOAD]);
        let worst = line(&topic, &payload);
        assert_eq!(
            worst.len() - 1,
            envelope + 6 * (topic.len() + payload.len())
        );
        assert!(
            envelope + 6 * (MAX_TOPIC + MAX_PAYLOAD) <= MAX_LINE,
            "{envelope}"
        );
        let mut reader = CaptureReader::with_max_line(&worst[..], worst.len() - 1);
        assert!(matches!(reader.next_record(), Ok(Some(Ok(_)))));
    }
}
