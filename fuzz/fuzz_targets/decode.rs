//! The topic decoder and the pipeline on any input.
//!
//! Input layout: the first byte picks the topic; the rest is the payload.
//! - `0x00..=0xEF`: `pv/PV3/PV001001DEV/<KNOWN_SUFFIXES[byte % len]>`;
//! - `0xF0..=0xFF`: the topic is the rest up to the first `\n` (lossy UTF-8),
//!   the payload what follows it (foreign and unknown topics, odd devices).
//!
//! Checks: no panic; `decode` and `Pipeline::process` agree on success; every
//! measurement has a finite value, a metric name of 1..=100 characters and a
//! known unit; a reading is never empty.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use pv3::decode::{KNOWN_SUFFIXES, MAX_METRIC_NAME, Outcome, decode};
use pv3::topic::P3Topic;
use pv3::pipeline::Pipeline;
use pv3::reading::{Measurement, Timestamp};

const KNOWN_UNITS: &[&str] = &["", "%", "V", "A", "Hz", "W", "VA", "C", "cycles", "mV"];

fn check(m: &Measurement) {
    assert!(m.value.is_finite(), "non-finite value: {m:?}");
    assert!(!m.metric.is_empty(), "empty metric name: {m:?}");
    assert!(
        m.metric.len() <= MAX_METRIC_NAME,
        "metric name over {MAX_METRIC_NAME}: {m:?}"
    );
    assert!(KNOWN_UNITS.contains(&m.unit), "unknown unit: {m:?}");
}

fn split(data: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let (&first, rest) = data.split_first()?;
    if first < 0xF0 {
        let suffix = KNOWN_SUFFIXES[usize::from(first) % KNOWN_SUFFIXES.len()];
        return Some((Cow::Owned(format!("pv/PV3/PV001001DEV/{suffix}")), rest));
    }
    let (topic, payload) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    Some((String::from_utf8_lossy(topic), payload))
}

fuzz_target!(|data: &[u8]| {
    let Some((topic, payload)) = split(data) else {
        return;
    };
    let topic: &str = &topic;

    let direct = decode(topic, payload);
    match &direct {
        Ok(Outcome::Foreign) => assert!(P3Topic::parse(topic).is_none()),
        Ok(Outcome::Unknown { device, suffix }) => {
            assert!(!device.is_empty() && !suffix.is_empty());
            assert!(!KNOWN_SUFFIXES.contains(suffix));
        }
        Ok(Outcome::Decoded {
            device,
            suffix,
            decoded,
        }) => {
            assert!(!device.is_empty());
            assert!(KNOWN_SUFFIXES.contains(suffix));
            decoded.measurements.iter().for_each(check);
        }
        Err(e) => assert_eq!(e.topic, topic),
    }

    // The same message twice, ten seconds apart, through the SOC filter; and
    // once with the filter off and the device overridden.
    let t0 = Timestamp::from_unix_micros(1_795_791_869_000_000);
    let t1 = Timestamp::from_unix_micros(1_795_791_879_000_000);
    let mut filtered = Pipeline::new(1.0, None);
    let mut plain = Pipeline::new(0.0, Some("override"));
    for (filter, at) in [(true, t0), (true, t1), (false, t0)] {
        let pipeline = if filter { &mut filtered } else { &mut plain };
        let result = pipeline.process(topic, payload, at);
        assert_eq!(result.is_err(), direct.is_err());
        if let Ok(Some(reading)) = result {
            assert_eq!(reading.timestamp, at);
            assert_eq!(&*reading.origin.topic, topic);
            assert!(!reading.origin.device_id.is_empty());
            assert!(!reading.measurements.is_empty() || reading.alarms.is_some());
            reading.measurements.iter().for_each(check);
        }
    }
    assert_eq!(filtered.counts.messages(), 2);
    assert_eq!(plain.counts.messages(), 1);
});
