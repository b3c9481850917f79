//! `rejected.jsonl`: batches the API refused for good, and spool records
//! that could not be read, kept as what they are so an owner can look at
//! them and re-send them (docs/troubleshooting.md has the recipe).
//!
//! Writing blocks on the disk (`sync_data`): the forwarder calls
//! [`DeadLetters::write`] through `spawn_blocking`, the spool thread calls it
//! directly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use serde::Serialize;
use tracing::error;

use super::batch::{Batch, BatchKind};
use crate::reading::Timestamp;

/// `rejected.jsonl` stops growing here (a misbehaving API must not fill the
/// SD card with dead letters).
pub const MAX_DEAD_LETTER_BYTES: u64 = 64 << 20;

/// What goes to the dead-letter file.
#[derive(Debug)]
pub enum DeadLetter<'a> {
    /// The API answered `status` with `response`.
    Refused {
        /// The batch as it was sent.
        batch: &'a Batch,
        /// The HTTP status.
        status: u16,
        /// The start of the API's answer.
        response: &'a str,
    },
    /// A spool record that does not decode (disk corruption).
    Unreadable {
        /// The record's bytes.
        data: &'a [u8],
    },
}

/// The dead-letter file, shared by the forwarder and the spool thread.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    lock: Mutex<()>,
}

#[derive(Serialize)]
struct Line<'a> {
    rejected_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a str>,
    /// The body as JSON, when it is JSON (the usual case).
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a serde_json::value::RawValue>,
    /// Otherwise as text, when it is text.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_text: Option<&'a str>,
    /// Otherwise as base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_b64: Option<String>,
}

impl DeadLetters {
    /// Dead letters in `path` (created on the first write).
    pub fn new(path: PathBuf) -> DeadLetters {
        DeadLetters {
            path,
            lock: Mutex::new(()),
        }
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one line and syncs it. Blocks on the disk.
    pub fn write(&self, letter: &DeadLetter<'_>) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size >= MAX_DEAD_LETTER_BYTES {
            return Err(std::io::Error::other(format!(
                "{} has reached {} MiB: refused batches are no longer kept (move it away to start a new one)",
                self.path.display(),
                MAX_DEAD_LETTER_BYTES >> 20
            )));
        }
        let raw_text;
        let raw_json;
        let line = match letter {
            DeadLetter::Refused {
                batch,
                status,
                response,
            } => {
                raw_text = std::str::from_utf8(&batch.body).ok();
                raw_json = raw_text
                    .and_then(|t| serde_json::from_str::<&serde_json::value::RawValue>(t).ok());
                Line {
                    rejected_at: Timestamp::now(),
                    device_id: Some(&batch.device),
                    endpoint: match batch.kind {
                        BatchKind::Measurements => "measurements/batch",
                        BatchKind::Alarms => "alarms",
                    },
                    status: Some(*status),
                    response: Some(response),
                    body: raw_json,
                    body_text: raw_text.filter(|_| raw_json.is_none()),
                    body_b64: raw_text
                        .is_none()
                        .then(|| base64::engine::general_purpose::STANDARD.encode(&batch.body)),
                }
            }
            DeadLetter::Unreadable { data } => Line {
                rejected_at: Timestamp::now(),
                device_id: None,
                endpoint: "unreadable spool record",
                status: None,
                response: None,
                body: None,
                body_text: None,
                body_b64: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            },
        };
        let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&bytes)?;
        file.sync_data()
    }

    /// [`Self::write`], logging a failure; true when written.
    pub fn write_or_log(&self, letter: &DeadLetter<'_>) -> bool {
        match self.write(letter) {
            Ok(()) => true,
            Err(e) => {
                error!(
                    "cannot keep a refused batch in {}: {e}",
                    self.path.display()
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    #[test]
    fn keeps_json_as_json_and_anything_else_as_what_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let letters = DeadLetters::new(dir.path().join("rejected.jsonl"));
        for body in [&b"[1,2]"[..], b"[1,2", b"\xff\x00"] {
            let batch = Batch {
                device: Arc::from("D"),
                kind: BatchKind::Measurements,
                body: Bytes::copy_from_slice(body),
                count: 2,
            };
            letters
                .write(&DeadLetter::Refused {
                    batch: &batch,
                    status: 422,
                    response: "no",
                })
                .expect("write");
        }
        letters
            .write(&DeadLetter::Unreadable { data: b"junk" })
            .expect("write");
        let text = std::fs::read_to_string(letters.path()).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines[0]["body"], serde_json::json!([1, 2]));
        assert_eq!(lines[1]["body_text"], "[1,2");
        assert_eq!(lines[2]["body_b64"], "/wA=");
        assert_eq!(lines[3]["body_b64"], "anVuaw==");
        assert_eq!(lines[3]["endpoint"], "unreadable spool record");
    }
}
