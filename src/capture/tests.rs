//! The capture format's tests: writing, reading pv3's and mosquitto's
//! lines, and the reader's bounds.

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
    let line =
        br#"{"tst":"2026-11-27T09:19:27.5Z-0500","topic":"a","qos":1,"retain":0,"payload":"x"}"#;
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
    let record = |n: u32| format!(r#"{{"ts":"2026-11-27T14:19:27Z","topic":"a","payload":"{n}"}}"#);
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
