#!/usr/bin/env python3
"""Regenerates the committed seed corpora in fuzz/seeds/ from the sample
capture and the test fixtures. Run from anywhere: python3 fuzz/make-seeds.py

seeds/decode/<name>: one byte choosing the topic (the index of its suffix in
pv3::decode::KNOWN_SUFFIXES, or 0xFF followed by "<topic>\n" for any other
topic), then the payload. seeds/capture_line/<name>: capture lines and small
capture files.
"""

import base64
import json
import pathlib
import re
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"

# Must match pv3::decode::KNOWN_SUFFIXES, in order.
SUFFIXES = re.findall(
    r'"([a-z_0-9]+/[a-z_0-9]+)"',
    (ROOT / "src/decode/mod.rs")
    .read_text()
    .split("pub const KNOWN_SUFFIXES")[1]
    .split("];")[0],
)
assert len(SUFFIXES) == 13, SUFFIXES

CAPTURES = [
    ROOT / "examples/p3-sample.jsonl",
    ROOT / "tests/fixtures/every-topic.jsonl",
    ROOT / "tests/fixtures/mosquitto-j.jsonl",
    ROOT / "tests/fixtures/mosquitto-J.jsonl",
]
PER_SUFFIX = 8  # distinct real payloads kept per topic from the sample


def payload_of(line: bytes) -> tuple[str, bytes] | None:
    try:
        record = json.loads(line.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    topic = record.get("topic")
    if "payload_b64" in record:
        return topic, base64.b64decode(record["payload_b64"])
    payload = record.get("payload")
    if isinstance(payload, str):
        return topic, payload.encode("utf-8", "surrogateescape")
    # mosquitto -F %J: the payload embedded as JSON.
    return topic, json.dumps(payload, separators=(",", ":")).encode()


def decode_input(topic: str, payload: bytes) -> bytes:
    suffix = topic.split("/", 3)[3] if topic.count("/") >= 3 else None
    if topic.startswith("pv/PV3/PV001001DEV/") and suffix in SUFFIXES:
        return bytes([SUFFIXES.index(suffix)]) + payload
    return b"\xff" + topic.encode() + b"\n" + payload


# Hand-written hostile payloads: one per known topic each.
HOSTILE = [
    b"",
    b"NaN",
    b"[]",
    b"{}",
    b"null",
    b'"9700"',
    b'[{"measurement":"StateOfCharge","value":"1e400"}]',
    b'[{"measurement":"StateOfCharge","value":1e308},{"measurement":"StateOfCharge","value":" -0 "}]',
    b'{"module_addr":"18446744073709551616","StateOfCharge":"8200"}',
    b'{"power":"NaN","StateOfCharge":"inf","State":true}',
    b'{"power":123456789012345678901234567890}',
    b'[{"ChgPower":[1],"DchgPower":{"x":1},"Reserve":null,"event":"ON"}]',
    b'{"' + b"k" * 120 + b'":1,"State":"2","x\\u0000":3}',
    b'{"inverter_temperature":"45.5","fan_lock":1,"fan_lock":"0","x":2}',
    b"[" * 200 + b"]" * 200,
    b'{"power":\xff\xfe}',
]


def main() -> None:
    shutil.rmtree(SEEDS, ignore_errors=True)
    decode_dir = SEEDS / "decode"
    capture_dir = SEEDS / "capture_line"
    decode_dir.mkdir(parents=True)
    capture_dir.mkdir(parents=True)

    seen: set[bytes] = set()
    kept: dict[str, int] = {}
    per_topic_lines: dict[str, int] = {}

    def add_decode(name: str, data: bytes) -> None:
        if data not in seen:
            seen.add(data)
            (decode_dir / name).write_bytes(data)

    for capture in CAPTURES:
        lines = capture.read_bytes().split(b"\n")
        stem = capture.stem
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            is_sample = capture.name == "p3-sample.jsonl"
            parsed = payload_of(line)
            if parsed is not None:
                topic, payload = parsed
                label = re.sub(r"[^a-z0-9]+", "-", str(topic).split("/", 3)[-1])
                if not is_sample or kept.get(label, 0) < PER_SUFFIX:
                    data = decode_input(str(topic), payload)
                    if data not in seen:
                        kept[label] = kept.get(label, 0) + 1
                        add_decode(f"{stem}-{n:04}-{label}", data)
                # Capture lines: every fixture line, two per topic of the sample.
                if not is_sample or per_topic_lines.get(label, 0) < 2:
                    per_topic_lines[label] = per_topic_lines.get(label, 0) + 1
                    (capture_dir / f"{stem}-{n:04}").write_bytes(line)
            else:
                (capture_dir / f"{stem}-{n:04}").write_bytes(line)
        # A whole small file, and one cut off mid-line.
        head = b"\n".join(lines[:12]) + b"\n"
        (capture_dir / f"{stem}-head").write_bytes(head)
        (capture_dir / f"{stem}-truncated").write_bytes(head[: len(head) - 40])

    for i, payload in enumerate(HOSTILE):
        add_decode(f"hostile-{i:02}", bytes([i % len(SUFFIXES)]) + payload)
        add_decode(f"hostile-{i:02}-other", bytes([(i + 7) % len(SUFFIXES)]) + payload)
    add_decode("foreign-topic", b"\xfetele/sensor/1\n{\"power\":1}")
    add_decode("empty-device", b"\xffpv/PV3//bms/soc\n[]")

    for name, line in {
        "blank-lines": b"\n\r\n  \t\n",
        "crlf": b'{"ts":"2026-11-27T14:19:27Z","topic":"a","payload":"x"}\r\n',
        "tst-offset-colon": b'{"tst":"2026-11-27T14:19:27.5Z+02:00","topic":"a","retain":1,"payload":"x"}',
        "ts-offset": b'{"ts":"2026-11-27T14:19:27.123456+05:30","topic":"a","qos":2,"payload":"x"}',
        "payload-b64-and-text": b'{"ts":"2026-11-27T14:19:27Z","topic":"a","payload":"x","payload_b64":"AAE="}',
        "payload-escapes": b'{"ts":"2026-11-27T14:19:27Z","topic":"a\\u00e9","payload":"\\ud83d\\udd0b\\n\\""}',
        "not-utf8": b'{"ts":"2026-11-27T14:19:27Z","topic":"a","payload":"\xff"}',
    }.items():
        (capture_dir / name).write_bytes(line)

    for d in (decode_dir, capture_dir):
        files = list(d.iterdir())
        size = sum(f.stat().st_size for f in files)
        print(f"{d.relative_to(ROOT)}: {len(files)} files, {size} bytes")


if __name__ == "__main__":
    main()
