//! The decoder against input it must not trust: topics that are not P3's
//! or not known to it, and payloads that are malformed, huge or repeat
//! keys. Kept apart from the per-topic tables in `tests.rs`, whose helpers
//! it uses.

use super::tests::{DEV, INVERTER, err, m, ms, run, topic};
use super::*;

// ---------------------------------------------------------------- topics --

#[test]
fn topics_are_split_and_foreign_ones_ignored() {
    fn split_topic(topic: &str) -> Option<(&str, &str)> {
        P3Topic::parse(topic).map(|t| (t.device, t.suffix))
    }
    assert_eq!(split_topic("pv/PV3/X/bms/soc"), Some(("X", "bms/soc")));
    assert_eq!(
        split_topic("pv/PV3/X/inverter/measurements"),
        Some(("X", "inverter/measurements"))
    );
    for foreign in [
        "pv/PV3/X",
        "pv/PV3/X/",
        "pv/PV3//bms/soc",
        "pv/PV4/X/bms/soc",
        "PV/PV3/X/bms/soc",
        "other/topic",
        "",
    ] {
        assert_eq!(split_topic(foreign), None, "{foreign}");
        assert_eq!(decode(foreign, b"not json"), Ok(Outcome::Foreign));
    }
}

#[test]
fn unknown_suffixes_are_not_parsed() {
    for suffix in ["m4/pylontech_alerts", "new/topic", "bms/soc/extra"] {
        let t = topic(suffix);
        assert_eq!(
            decode(&t, &[0xff, 0xfe]),
            Ok(Outcome::Unknown {
                device: DEV,
                suffix
            })
        );
    }
}

#[test]
fn every_known_suffix_routes() {
    for suffix in decoded_suffixes() {
        // Invalid JSON is an error on every known topic: proof it is parsed.
        let e = err(suffix, b"{");
        assert!(matches!(e.reason, Reason::InvalidJson(_)), "{suffix}");
    }
}

// ------------------------------------------------------------------ hostile --

#[test]
fn hostile_payloads_are_errors_not_panics() {
    let deep = "[".repeat(10_000);
    let big_number = format!(
        "[{{\"measurement\":\"StateOfCharge\",\"value\":{}}}]",
        "9".repeat(500)
    );
    let cases: Vec<&[u8]> = vec![
        b"",
        b" ",
        b"NaN",
        b"[NaN]",
        b"{\"power\":Infinity}",
        b"\xff\xfe\x00",
        b"[1,2,",
        b"{\"a\":1}}",
        b"\"unterminated",
        deep.as_bytes(),
        big_number.as_bytes(),
    ];
    for suffix in decoded_suffixes() {
        for payload in &cases {
            let t = topic(suffix);
            let result = decode(&t, payload);
            assert!(
                result.is_err(),
                "{suffix} {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}

/// A list of `house_power` items exactly `len` bytes long.
fn long_ffr_list(len: usize) -> String {
    let item = r#"{"channel":"LOCAL","measurement":"Power","type":"Active","value":1000}"#;
    let mut payload = String::from("[");
    while payload.len() + 2 * (item.len() + 1) <= len {
        payload.push_str(item);
        payload.push(',');
    }
    payload.push_str(item);
    while payload.len() < len - 1 {
        payload.push(' ');
    }
    payload.push(']');
    payload
}

#[test]
fn a_payload_up_to_the_limit_decodes_and_a_larger_one_is_refused_unread() {
    let at_limit = long_ffr_list(MAX_PAYLOAD);
    assert_eq!(at_limit.len(), MAX_PAYLOAD);
    let d = run("ffr/measurements", &at_limit);
    assert!(d.measurements.len() > 3_000);
    assert!(
        d.measurements
            .iter()
            .all(|m| m.metric == "house_power" && m.value == 1.0)
    );
    let over = long_ffr_list(MAX_PAYLOAD + 1);
    let err = decode(&topic("ffr/measurements"), over.as_bytes()).expect_err("too large");
    assert_eq!(err.reason, Reason::TooLarge(MAX_PAYLOAD + 1));
    assert!(
        err.to_string().contains("larger than any P3 message"),
        "{err}"
    );
    // Not even looked at: a payload that is not JSON says the same.
    let junk = vec![b'x'; MAX_PAYLOAD + 1];
    let err = decode(&topic("bms/soc"), &junk).expect_err("too large");
    assert_eq!(err.reason, Reason::TooLarge(MAX_PAYLOAD + 1));
}

#[test]
fn decoding_is_deterministic() {
    for suffix in decoded_suffixes() {
        let t = topic(suffix);
        let a = decode(&t, INVERTER.as_bytes());
        let b = decode(&t, INVERTER.as_bytes());
        assert_eq!(a, b);
    }
}

#[test]
fn repeated_keys_count_once_and_the_last_wins() {
    let d = run(
        "inverter/alarms",
        r#"{"inverter_temperature":30,"fan_lock":"1","inverter_temperature":31,"fan_lock":"0"}"#,
    );
    assert_eq!(
        d.measurements,
        vec![
            Measurement::new("alarm_count", 0.0, ""),
            Measurement::new("inverter_temp", 31.0, "C"),
        ]
    );
    assert_eq!(
        d.alarms.map(|a| a.into_iter().collect::<Vec<_>>()),
        Some(vec![("fan_lock".to_string(), false)])
    );
    assert_eq!(
        ms("safetycheck/state", r#"{"State":1,"State":2}"#),
        vec![m("safetycheck_State", 2.0, "")]
    );
}
