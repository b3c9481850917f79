//! Decode + SOC filter: what every command does to a message between its
//! source and its sink, with the counters the summaries report.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tracing::warn;

use crate::decode::{self, DecodeError, Outcome};
use crate::reading::{Origin, Reading, Timestamp};
use crate::soc_filter::SocFilter;
use crate::topic::MAX_DEVICES;

/// Distinct topics remembered for sharing `Arc<str>`s between messages;
/// past this the cache starts again (a hostile broker cannot grow it).
const ORIGIN_CACHE_MAX: usize = 4096;

/// Counts by outcome. Every message lands in exactly one of the first seven.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeCounts {
    /// Decoded to at least one measurement or alarm state.
    pub decoded: u64,
    /// A known topic that carried nothing usable.
    pub empty: u64,
    /// A P3 topic the decoder does not cover.
    pub unknown: u64,
    /// Not a P3 topic at all.
    pub foreign: u64,
    /// Payloads the decoder could not read.
    pub errors: u64,
    /// From a second device while one device id is mapped onto another
    /// (`collect --api-device-id`): skipped.
    pub other_device: u64,
    /// From a device past the first [`MAX_DEVICES`] ids: skipped.
    pub too_many_devices: u64,
    /// Items or fields skipped inside decoded messages.
    pub skipped_items: u64,
    /// Measurements passed on, after the SOC filter (`soc_raw` included).
    pub measurements: u64,
}

impl DecodeCounts {
    /// Messages seen: the sum of the first seven counts.
    pub fn messages(&self) -> u64 {
        self.decoded
            + self.empty
            + self.unknown
            + self.foreign
            + self.errors
            + self.other_device
            + self.too_many_devices
    }
}

/// Decoder and SOC filter for one stream of messages, with the filter's
/// per-device state and the counts.
pub struct Pipeline {
    filter: SocFilter,
    /// `--device-id` given to replay: overrides the topic's device.
    device_override: Option<Arc<str>>,
    origins: HashMap<String, Origin>,
    /// With an override for collect: the one device it maps (the first
    /// seen); messages of any other are skipped and counted.
    only: Option<Option<Arc<str>>>,
    /// The device ids served, [`MAX_DEVICES`] at most.
    devices: HashSet<Arc<str>>,
    /// What happened to the messages so far, for the command's summary.
    pub counts: DecodeCounts,
}

impl Pipeline {
    /// `soc_threshold` as for [`SocFilter::new`] (0 turns the filter off);
    /// `device_override` replaces the device of every topic.
    pub fn new(soc_threshold: f64, device_override: Option<&str>) -> Self {
        Pipeline {
            filter: SocFilter::new(soc_threshold),
            device_override: device_override.map(Arc::from),
            origins: HashMap::new(),
            only: None,
            devices: HashSet::new(),
            counts: DecodeCounts::default(),
        }
    }

    /// Like [`Self::new`] with `device_override`, for live collection: one
    /// P3's data goes out under the override id; messages of a second
    /// device would be mixed into it, so they are skipped and counted in
    /// [`DecodeCounts::other_device`].
    pub fn mapping_one_device(soc_threshold: f64, device_override: &str) -> Self {
        Pipeline {
            only: Some(None),
            ..Pipeline::new(soc_threshold, Some(device_override))
        }
    }

    /// Decodes one message received at `at`. `Ok(None)` when it yields
    /// nothing to send (foreign, unknown or empty).
    pub fn process(
        &mut self,
        topic: &str,
        payload: &[u8],
        at: Timestamp,
    ) -> Result<Option<Reading>, DecodeError> {
        let outcome = decode::decode(topic, payload).inspect_err(|_| self.counts.errors += 1)?;
        let (device, decoded) = match outcome {
            Outcome::Foreign => {
                self.counts.foreign += 1;
                return Ok(None);
            }
            Outcome::Unknown { .. } => {
                self.counts.unknown += 1;
                return Ok(None);
            }
            Outcome::Decoded {
                device, decoded, ..
            } => (device, decoded),
        };
        if let Some(only) = &mut self.only {
            match only {
                None => *only = Some(Arc::from(device)),
                Some(first) if **first != *device => {
                    self.counts.other_device += 1;
                    return Ok(None);
                }
                Some(_) => {}
            }
        }
        if !self.admit(device) {
            self.counts.too_many_devices += 1;
            return Ok(None);
        }
        self.counts.skipped_items += u64::from(decoded.skipped);
        if decoded.is_empty() {
            self.counts.empty += 1;
            return Ok(None);
        }
        self.counts.decoded += 1;
        let origin = self.origin(topic, device);
        let mut measurements = decoded.measurements;
        self.filter.apply(&origin.device_id, at, &mut measurements);
        self.counts.measurements += measurements.len() as u64;
        Ok(Some(Reading {
            origin,
            timestamp: at,
            measurements,
            alarms: decoded.alarms,
        }))
    }

    /// Whether `device` is one of the ids served: the first [`MAX_DEVICES`]
    /// seen (an override maps every topic onto one). Says once when a
    /// device is turned away.
    fn admit(&mut self, device: &str) -> bool {
        if self.device_override.is_some() || self.devices.contains(device) {
            return true;
        }
        if self.devices.len() < MAX_DEVICES {
            self.devices.insert(Arc::from(device));
            return true;
        }
        if self.counts.too_many_devices == 0 {
            warn!(
                "more than {MAX_DEVICES} P3 device ids on the broker: the messages of {device} and every id after the first {MAX_DEVICES} are skipped and counted (run a collector per P3 with --device-id)"
            );
        }
        false
    }

    fn origin(&mut self, topic: &str, device: &str) -> Origin {
        if let Some(origin) = self.origins.get(topic) {
            return origin.clone();
        }
        if self.origins.len() >= ORIGIN_CACHE_MAX {
            self.origins.clear();
        }
        let origin = Origin {
            device_id: self
                .device_override
                .clone()
                .unwrap_or_else(|| Arc::from(device)),
            topic: Arc::from(topic),
        };
        self.origins.insert(topic.to_owned(), origin.clone());
        origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_past_the_cap_are_skipped_and_counted() {
        let mut pipeline = Pipeline::new(0.0, None);
        let at = Timestamp::from_unix_micros(1_800_000_000_000_000);
        let mut served = 0;
        for n in 0..MAX_DEVICES + 5 {
            let topic = format!("pv/PV3/D{n}/inverter/charge");
            if let Ok(Some(_)) = pipeline.process(&topic, br#"{"power":5}"#, at) {
                served += 1;
            }
        }
        assert_eq!(served, MAX_DEVICES);
        assert_eq!(pipeline.counts.too_many_devices, 5);
        assert_eq!(pipeline.counts.messages(), (MAX_DEVICES + 5) as u64);
        // A device already served still is.
        let again = pipeline.process("pv/PV3/D0/inverter/charge", br#"{"power":6}"#, at);
        assert!(matches!(again, Ok(Some(_))));
        // One device id for everything: no cap.
        let mut mapped = Pipeline::new(0.0, Some("ONE"));
        for n in 0..MAX_DEVICES + 5 {
            let topic = format!("pv/PV3/D{n}/inverter/charge");
            assert!(matches!(
                mapped.process(&topic, br#"{"power":5}"#, at),
                Ok(Some(_))
            ));
        }
    }
}
