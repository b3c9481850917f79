//! Decoder benchmarks: one realistic payload per topic, the whole mix of
//! `examples/p3-sample.jsonl`, and `Pipeline::process` (decode, SOC filter
//! and origin cache) over the same mix. Also the two stages around decode
//! that replay pays per line (capture-line parsing) and collect/replay pay
//! per measurement (serialising the API body), to see where time goes.
//!
//! `many_keys` decodes objects of 1,000 to 100,000 distinct keys on the two
//! topics that keep "the last of a repeated key" (`inverter/alarms`,
//! `safetycheck/state`): its time per key must stay flat as the key count
//! grows (a 16 MiB `inverter/alarms` payload holds about a million keys).
//!
//! Run: `cargo bench --bench decode` (about 2 minutes). Throughput is in
//! messages (elements) per second; criterion prints it as `thrpt`. For
//! `mix/api_body_serialise` the elements are the sample's messages too
//! (2,321 measurements in all). Results: `docs/performance.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pv3::capture::{Record, parse_line};
use pv3::decode::{Outcome, decode};
use pv3::pipeline::Pipeline;
use pv3::reading::ApiMeasurement;
use pv3::topic::P3Topic;

const SAMPLE: &str = include_str!("../examples/p3-sample.jsonl");

fn records() -> Vec<Record> {
    SAMPLE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_line(l.as_bytes()).expect("sample line parses"))
        .collect()
}

/// The first record of each topic, in order of first appearance.
fn one_per_topic(records: &[Record]) -> Vec<&Record> {
    let mut seen = Vec::<&str>::new();
    let mut out = Vec::new();
    for r in records {
        if !seen.contains(&r.topic.as_str()) {
            seen.push(&r.topic);
            out.push(r);
        }
    }
    out
}

fn suffix(topic: &str) -> &str {
    P3Topic::parse(topic).map_or(topic, |t| t.suffix)
}

fn bench_per_topic(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("decode_topic");
    group.throughput(Throughput::Elements(1));
    for r in one_per_topic(&records) {
        group.bench_function(suffix(&r.topic), |b| {
            b.iter(|| {
                let out = decode(black_box(&r.topic), black_box(&r.payload));
                black_box(out.is_ok())
            })
        });
    }
    group.finish();
}

fn bench_mix(c: &mut Criterion) {
    let records = records();
    let n = records.len() as u64;
    // Sanity: the mix decodes as the examples README says.
    let measurements: usize = records
        .iter()
        .filter_map(|r| match decode(&r.topic, &r.payload) {
            Ok(Outcome::Decoded { decoded, .. }) => Some(decoded.measurements.len()),
            _ => None,
        })
        .sum();
    eprintln!(
        "sample mix: {n} messages, {measurements} measurements before the SOC filter, {} payload bytes",
        records.iter().map(|r| r.payload.len()).sum::<usize>()
    );

    let mut group = c.benchmark_group("mix");
    group.throughput(Throughput::Elements(n));
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut m = 0usize;
            for r in &records {
                if let Ok(Outcome::Decoded { decoded, .. }) =
                    decode(black_box(&r.topic), black_box(&r.payload))
                {
                    m += decoded.measurements.len();
                }
            }
            black_box(m)
        })
    });
    group.bench_function("pipeline_process", |b| {
        // A fresh pipeline per pass would time HashMap set-up; one pipeline
        // across passes is what a long replay sees (warm origin cache).
        let mut pipeline = Pipeline::new(1.0, None);
        b.iter(|| {
            let mut m = 0usize;
            for r in &records {
                if let Ok(Some(reading)) =
                    pipeline.process(black_box(&r.topic), black_box(&r.payload), r.ts)
                {
                    m += reading.measurements.len();
                }
            }
            black_box(m)
        })
    });
    // Replay's front end: one capture line → Record (serde + RFC 3339 + copies).
    let lines: Vec<&str> = SAMPLE.lines().filter(|l| !l.trim().is_empty()).collect();
    group.bench_function("capture_parse_line", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(parse_line(black_box(l.as_bytes())).is_ok());
            }
        })
    });
    // The forwarder's per-measurement cost: serialising the API body.
    let mut pipeline = Pipeline::new(1.0, None);
    let readings: Vec<_> = records
        .iter()
        .filter_map(|r| pipeline.process(&r.topic, &r.payload, r.ts).ok().flatten())
        .collect();
    let mut body = Vec::with_capacity(1 << 20);
    group.bench_function("api_body_serialise", |b| {
        b.iter(|| {
            body.clear();
            for reading in &readings {
                for m in &reading.measurements {
                    body.push(b',');
                    let item = ApiMeasurement {
                        measurement: m,
                        timestamp: reading.timestamp,
                        source_topic: &reading.origin.topic,
                    };
                    serde_json::to_writer(&mut body, &item).expect("serialises");
                }
            }
            black_box(body.len())
        })
    });
    group.finish();
}

/// A JSON object of `n` distinct keys, `field(i)` writing each `"key":value`.
fn object(n: usize, field: impl Fn(usize) -> String) -> Vec<u8> {
    let fields: Vec<String> = (0..n).map(field).collect();
    format!("{{{}}}", fields.join(",")).into_bytes()
}

fn bench_many_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("many_keys");
    for n in [1_000usize, 10_000, 100_000] {
        group.throughput(Throughput::Elements(n as u64));
        let alarms = object(n, |i| format!("\"flag_{i}\":\"{}\"", i % 2));
        group.bench_with_input(
            BenchmarkId::new("inverter_alarms", n),
            &alarms,
            |b, payload| {
                b.iter(|| {
                    let out = decode("pv/PV3/X/inverter/alarms", black_box(payload));
                    black_box(out.is_ok())
                })
            },
        );
        let state = object(n, |i| format!("\"k{i}\":{i}"));
        group.bench_with_input(
            BenchmarkId::new("safetycheck_state", n),
            &state,
            |b, payload| {
                b.iter(|| {
                    let out = decode("pv/PV3/X/safetycheck/state", black_box(payload));
                    black_box(out.is_ok())
                })
            },
        );
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_per_topic, bench_mix, bench_many_keys
}
criterion_main!(benches);
