//! What one POST carries ([`Batch`]), how readings become batches
//! ([`Batcher`]), and the only code that frames the JSON body of a batch:
//! opening it, merging several into one, and the spool's envelope.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::reading::{ApiMeasurement, Reading};

/// Which endpoint a batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// `POST /api/devices/{id}/measurements/batch`, a JSON array.
    Measurements,
    /// `POST /api/devices/{id}/alarms`, a JSON object.
    Alarms,
}

/// One POST's worth: a JSON body ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The device it is posted under.
    pub device: Arc<str>,
    /// Which endpoint.
    pub kind: BatchKind,
    /// The request body, serialised once: a retry resends the same bytes.
    pub body: Bytes,
    /// Measurements in the body (alarm batches: 0).
    pub count: usize,
}

impl Batch {
    /// The spool's envelope: `kind u8 | device length u16 LE | device | body`
    /// (the count is the spool record's weight).
    pub fn encode(&self) -> Vec<u8> {
        let device = self.device.as_bytes();
        let device_len = u16::try_from(device.len()).unwrap_or(u16::MAX);
        let device = &device[..usize::from(device_len)];
        let mut out = Vec::with_capacity(3 + device.len() + self.body.len());
        out.push(match self.kind {
            BatchKind::Measurements => 0,
            BatchKind::Alarms => 1,
        });
        out.extend_from_slice(&device_len.to_le_bytes());
        out.extend_from_slice(device);
        out.extend_from_slice(&self.body);
        out
    }

    /// A measurement batch of two or more, cut into two halves (a proxy
    /// refused it as too large); `None` when it cannot be cut.
    pub fn halves(&self) -> Option<(Batch, Batch)> {
        if self.kind != BatchKind::Measurements || self.count < 2 {
            return None;
        }
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&self.body).ok()?;
        if items.len() < 2 {
            return None;
        }
        let (front, back) = items.split_at(items.len() / 2);
        Some((
            Batch::of_items(self.device.clone(), front),
            Batch::of_items(self.device.clone(), back),
        ))
    }

    /// Is `data` an envelope [`Self::decode`] can read? Copies nothing.
    pub fn is_envelope(data: &[u8]) -> bool {
        envelope_header(data).is_some()
    }

    /// Reads [`Self::encode`]'s envelope back, without copying the body out
    /// of `data`; `None` when it is not one.
    pub fn decode(data: Vec<u8>, count: u32) -> Option<Batch> {
        let (kind, device, body_at) = envelope_header(&data)?;
        let device = Arc::from(device);
        Some(Batch {
            device,
            kind,
            body: Bytes::from(data).slice(body_at..),
            count: count as usize,
        })
    }

    /// A hash of the device and the body: the same batch given back and
    /// taken again (from memory or the spool) has the same one.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.device.hash(&mut hasher);
        self.body.hash(&mut hasher);
        hasher.finish()
    }

    /// The measurements in a measurement batch's body: metric, timestamp in
    /// milliseconds, and the item as sent. `None` for anything else.
    pub fn items(&self) -> Option<Vec<Item<'_>>> {
        if self.kind != BatchKind::Measurements {
            return None;
        }
        let raws: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&self.body).ok()?;
        #[derive(serde::Deserialize)]
        struct Keys<'a> {
            metric_name: String,
            #[serde(borrow)]
            timestamp: Option<&'a str>,
        }
        raws.into_iter()
            .map(|raw| {
                let keys: Keys<'_> = serde_json::from_str(raw.get()).ok()?;
                let ts = crate::reading::Timestamp::parse_rfc3339(keys.timestamp?).ok()?;
                Some(Item {
                    metric: keys.metric_name,
                    millis: ts.unix_millis(),
                    raw,
                })
            })
            .collect()
    }

    /// A measurement batch of `items` for `device`.
    pub fn of_items(device: Arc<str>, items: &[&serde_json::value::RawValue]) -> Batch {
        let mut body =
            Vec::with_capacity(items.iter().map(|i| i.get().len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item.get().as_bytes());
        }
        body.push(b']');
        Batch {
            device,
            kind: BatchKind::Measurements,
            body: Bytes::from(body),
            count: items.len(),
        }
    }

    /// Can `next` join a POST that starts with this batch and already holds
    /// `count` measurements, keeping it within `max`? The one rule for
    /// merging, from memory and from the spool alike.
    pub fn run_takes(&self, count: usize, next: &Batch, max: usize) -> bool {
        self.joins(next) && count + next.count <= max
    }

    /// Can `next` be sent in the same POST, after this one?
    pub fn joins(&self, next: &Batch) -> bool {
        self.kind == BatchKind::Measurements
            && next.kind == BatchKind::Measurements
            && self.device == next.device
    }
}

/// The envelope's kind and device, and where its body starts.
fn envelope_header(data: &[u8]) -> Option<(BatchKind, &str, usize)> {
    let kind = match data.first()? {
        0 => BatchKind::Measurements,
        1 => BatchKind::Alarms,
        _ => return None,
    };
    let device_len = usize::from(u16::from_le_bytes(data.get(1..3)?.try_into().ok()?));
    let device = std::str::from_utf8(data.get(3..3 + device_len)?).ok()?;
    Some((kind, device, 3 + device_len))
}

/// One measurement in a batch's body (see [`Batch::items`]).
pub struct Item<'a> {
    /// Its metric name.
    pub metric: String,
    /// Its timestamp, in Unix milliseconds (what pv3 sends).
    pub millis: i64,
    /// The item as sent.
    pub raw: &'a serde_json::value::RawValue,
}

/// Several measurement batches of one device as one: their arrays' insides
/// joined. The caller checks [`Batch::joins`]; a single batch comes back as
/// it is.
pub fn merge(mut parts: Vec<Batch>) -> Option<Batch> {
    if parts.len() <= 1 {
        return parts.pop();
    }
    let first = parts.first()?;
    let (device, kind) = (first.device.clone(), first.kind);
    let mut body = Vec::with_capacity(parts.iter().map(|p| p.body.len()).sum());
    body.push(b'[');
    let mut count = 0;
    for part in &parts {
        count += part.count;
        let inner = part
            .body
            .strip_prefix(b"[")
            .and_then(|p| p.strip_suffix(b"]"))
            .unwrap_or(&part.body);
        if inner.is_empty() {
            continue;
        }
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(inner);
    }
    body.push(b']');
    Some(Batch {
        device,
        kind,
        body: Bytes::from(body),
        count,
    })
}

struct OpenBatch {
    body: Vec<u8>,
    count: usize,
    deadline: Instant,
}

/// Turns readings into batches: one open batch per device, sealed when it
/// holds `size` measurements or has waited `linger`.
pub struct Batcher {
    size: usize,
    linger: Duration,
    send_alarms: bool,
    open: HashMap<Arc<str>, OpenBatch>,
    /// Measurements in open batches.
    held: usize,
}

impl Batcher {
    /// A batcher sealing at `size` measurements or after `linger`.
    pub fn new(size: usize, linger: Duration, send_alarms: bool) -> Batcher {
        Batcher {
            size: size.max(1),
            linger,
            send_alarms,
            open: HashMap::new(),
            held: 0,
        }
    }

    /// Measurements in batches not sealed yet.
    pub fn held(&self) -> usize {
        self.held
    }

    /// When the next open batch is due, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|b| b.deadline).min()
    }

    /// Adds a reading; sealed batches (full ones, and its alarm states) are
    /// appended to `out`.
    pub fn add(&mut self, reading: &Reading, out: &mut Vec<Batch>) {
        let device = &reading.origin.device_id;
        for m in &reading.measurements {
            let open = self
                .open
                .entry(device.clone())
                .or_insert_with(|| OpenBatch {
                    body: Vec::with_capacity(256 * self.size.min(1000)),
                    count: 0,
                    deadline: Instant::now() + self.linger,
                });
            let mark = open.body.len();
            open.body.push(if open.count == 0 { b'[' } else { b',' });
            let item = ApiMeasurement {
                measurement: m,
                timestamp: reading.timestamp,
                source_topic: &reading.origin.topic,
            };
            // Serialising finite numbers and strings into a Vec cannot fail;
            // if it ever did, the half-written item is taken back out.
            if serde_json::to_writer(&mut open.body, &item).is_err() {
                open.body.truncate(mark);
                continue;
            }
            open.count += 1;
            self.held += 1;
            if open.count >= self.size {
                self.seal(device, out);
            }
        }
        if let (true, Some(alarms)) = (self.send_alarms, &reading.alarms)
            && let Ok(body) = serde_json::to_vec(alarms)
        {
            out.push(Batch {
                device: device.clone(),
                kind: BatchKind::Alarms,
                body: Bytes::from(body),
                count: 0,
            });
        }
    }

    fn seal(&mut self, device: &Arc<str>, out: &mut Vec<Batch>) {
        if let Some(mut open) = self.open.remove(device) {
            open.body.push(b']');
            self.held -= open.count;
            out.push(Batch {
                device: device.clone(),
                kind: BatchKind::Measurements,
                body: Bytes::from(open.body),
                count: open.count,
            });
        }
    }

    /// Seals the batches whose linger has passed (all of them with `all`).
    pub fn seal_due(&mut self, all: bool, out: &mut Vec<Batch>) {
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .open
            .iter()
            .filter(|(_, b)| all || b.deadline <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for device in due {
            self.seal(&device, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(device: &str, kind: BatchKind, body: &str, count: usize) -> Batch {
        Batch {
            device: Arc::from(device),
            kind,
            body: Bytes::from(body.to_owned()),
            count,
        }
    }

    #[test]
    fn merged_bodies_are_one_json_array() {
        let m = BatchKind::Measurements;
        let merged =
            merge(vec![batch("A", m, "[1,2]", 2), batch("A", m, "[3]", 1)]).expect("a batch");
        assert_eq!(&merged.body[..], b"[1,2,3]");
        assert_eq!(merged.count, 3);
        let v: serde_json::Value = serde_json::from_slice(&merged.body).expect("valid JSON");
        assert_eq!(v, serde_json::json!([1, 2, 3]));
        assert!(merge(Vec::new()).is_none());
    }

    #[test]
    fn only_measurements_of_one_device_join() {
        let m = BatchKind::Measurements;
        let a = batch("A", m, "[1]", 1);
        assert!(a.joins(&batch("A", m, "[2]", 1)));
        assert!(!a.joins(&batch("B", m, "[2]", 1)));
        assert!(!a.joins(&batch("A", BatchKind::Alarms, "{}", 0)));
        assert!(!batch("A", BatchKind::Alarms, "{}", 0).joins(&a));
    }

    #[test]
    fn a_batch_cuts_into_two_valid_halves() {
        let m = BatchKind::Measurements;
        let (a, b) = batch("A", m, r#"[{"v":1},{"v":[2,3]},{"v":"4,5"}]"#, 3)
            .halves()
            .expect("halves");
        assert_eq!((&a.body[..], a.count), (&br#"[{"v":1}]"#[..], 1));
        assert_eq!(
            (&b.body[..], b.count),
            (&br#"[{"v":[2,3]},{"v":"4,5"}]"#[..], 2)
        );
        assert!(batch("A", m, "[1]", 1).halves().is_none());
        assert!(batch("A", BatchKind::Alarms, "{}", 0).halves().is_none());
    }

    #[test]
    fn envelope_round_trips() {
        let b = batch("PV001001DEV", BatchKind::Alarms, "{\"fan_lock\":false}", 0);
        let back = Batch::decode(b.encode(), 0).expect("decodes");
        assert_eq!(
            (back.device, back.kind, back.body, back.count),
            (b.device.clone(), b.kind, b.body.clone(), b.count)
        );
        assert!(Batch::decode(Vec::new(), 0).is_none());
        assert!(Batch::is_envelope(&b.encode()));
        assert!(!Batch::is_envelope(&[7, 0, 0]));
        assert!(Batch::decode(vec![7, 0, 0], 0).is_none());
        assert!(Batch::decode(vec![0, 9, 0, b'a'], 0).is_none());
    }
}
