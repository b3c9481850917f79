//! Capture files (`shared/spec/capture-format.md`): writing pv3's JSON Lines
//! format, and reading it and `mosquitto_sub -F %j` / `-F %J` lines.
//!
//! Reading is line by line with one reused buffer, so memory stays flat
//! whatever the file's size, and a bad line is an error for that line only
//! (with its number), never for the file. A line longer than any record can
//! be ([`MAX_LINE`]) is reported and skipped; no more than that limit of it
//! is ever held in memory.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};

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

/// The input, its size when known (for the progress bar) and its name.
pub fn open_input(path: &Path) -> Result<(Box<dyn BufRead + Send>, Option<u64>, String)> {
    if path == Path::new("-") {
        return Ok((
            Box::new(BufReader::with_capacity(256 * 1024, io::stdin())),
            None,
            "stdin".into(),
        ));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        bail!("{} is a directory, not a capture file", path.display());
    }
    Ok((
        Box::new(BufReader::with_capacity(256 * 1024, file)),
        Some(meta.len()),
        path.display().to_string(),
    ))
}

#[cfg(test)]
mod tests;
