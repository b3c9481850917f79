//! `docs/topics.md` against the real decoder and SOC filter.
//!
//! The page marks its examples for this test:
//!
//! ````text
//! <!-- example: inverter/charge -->
//! ```json
//! {"power":591}
//! ```
//!
//! | metric | value | unit |
//! |---|---|---|
//! | `battery_power` | 591 | `W` |
//!
//! | alarm | state |          (optional; required when the decoder
//! |---|---|                    emits alarm states)
//! | `fan_lock` | false |
//! ````
//!
//! and `<!-- soc-filter-example: threshold=T -->` before a table of
//! (time, published, soc sent, soc_raw sent, why) rows, and
//! `<!-- not-decoded: SUFFIX -->` for topics that must stay undecoded.
//! Blank lines may separate the parts; anything else ends an example. Unit
//! cells are backticked, `""` being the empty unit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pv3::decode::{self, Outcome};
use pv3::reading::{Measurement, Timestamp};
use pv3::soc_filter::SocFilter;

const DEVICE: &str = "PV001001DEV";
const TOLERANCE: f64 = 1e-9;

/// Every metric name in the topic tables of `shared/spec/p3-topics.md`,
/// with its unit. The dynamic families (`soc_module_N`, `safetycheck_<k>`)
/// are checked through their examples instead.
const SPEC_METRICS: &[(&str, &str)] = &[
    ("soc", "%"),
    ("soc_raw", "%"),
    ("battery_voltage", "V"),
    ("battery_current", "A"),
    ("battery_capacity", "%"),
    ("grid_voltage", "V"),
    ("grid_frequency", "Hz"),
    ("grid_power_inverter", "W"),
    ("output_voltage", "V"),
    ("output_frequency", "Hz"),
    ("output_active_power", "W"),
    ("output_apparent_power", "VA"),
    ("inverter_temp", "C"),
    ("boost_temp", "C"),
    ("inner_temp", "C"),
    ("alarm_count", ""),
    ("battery_power", "W"),
    ("soh", "%"),
    ("soh_min", "%"),
    ("cycle_count_avg", "cycles"),
    ("cycle_count_max", "cycles"),
    ("cell_temp_avg", "C"),
    ("cell_temp_max", "C"),
    ("cell_temp_min", "C"),
    ("bms_temp_avg", "C"),
    ("bms_temp_max", "C"),
    ("cell_voltage_max", "mV"),
    ("cell_voltage_min", "mV"),
    ("module_voltage_avg", "V"),
    ("battery_current_total", "A"),
    ("charge_voltage_limit", "V"),
    ("discharge_voltage_limit", "V"),
    ("charge_current_limit", "A"),
    ("discharge_current_limit", "A"),
    ("house_power", "W"),
    ("grid_power", "W"),
    ("aux_power", "W"),
    ("schedule_event", ""),
    ("schedule_setpoint", "W"),
    ("max_charge_power", "W"),
    ("max_discharge_power", "W"),
    ("eps_reserve", "%"),
    ("eps_mode", ""),
    ("eps_schedule_reserve", "%"),
    ("eps_schedule_event", ""),
    ("ffr_controller_state", ""),
    ("safetycheck_power_rating", "W"),
    ("safetycheck_max_charge_power", "W"),
    ("safetycheck_max_discharge_power", "W"),
];

/// Names the spec mentions that the page must explain too: the dynamic
/// families and the old collector's names.
const SPEC_OTHER_NAMES: &[&str] = &[
    "soc_module_N",
    "safetycheck_<k>",
    "inverter_temperature",
    "boost_temperature",
    "inner_temperature",
    "m4/pylontech_alerts",
];

/// One documented metric row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    metric: String,
    value: f64,
    unit: String,
}

#[derive(Debug)]
struct Example {
    /// 1-based line of the marker, for messages.
    line: usize,
    suffix: String,
    payload: String,
    rows: Vec<Row>,
    alarms: Option<BTreeMap<String, bool>>,
}

#[derive(Debug)]
struct SocStep {
    line: usize,
    seconds: f64,
    published: f64,
    soc: f64,
    soc_raw: Option<f64>,
}

#[derive(Debug)]
struct SocExample {
    line: usize,
    threshold: f64,
    steps: Vec<SocStep>,
}

#[derive(Debug, Default)]
struct Doc {
    text: String,
    examples: Vec<Example>,
    soc_examples: Vec<SocExample>,
    not_decoded: Vec<(usize, String)>,
}

fn topics_md() -> Doc {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/topics.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse(&text).unwrap_or_else(|e| panic!("docs/topics.md: {e}"))
}

/// Lines with their 1-based numbers; the parser moves through them.
struct Lines<'a> {
    lines: Vec<&'a str>,
    at: usize,
}

impl<'a> Lines<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.lines.get(self.at).copied()
    }

    fn next(&mut self) -> Option<&'a str> {
        let line = self.peek()?;
        self.at += 1;
        Some(line)
    }

    /// 1-based number of the line `peek` returns.
    fn number(&self) -> usize {
        self.at + 1
    }

    fn skip_blank(&mut self) {
        while self.peek().is_some_and(|l| l.trim().is_empty()) {
            self.at += 1;
        }
    }
}

/// `<!-- NAME: VALUE -->` → VALUE.
fn marker<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    Some(inner.strip_prefix(name)?.strip_prefix(':')?.trim())
}

fn parse(text: &str) -> Result<Doc, String> {
    let mut doc = Doc {
        text: text.to_owned(),
        ..Doc::default()
    };
    let mut lines = Lines {
        lines: text.lines().collect(),
        at: 0,
    };
    while let Some(line) = lines.next() {
        let line_no = lines.number() - 1;
        if let Some(suffix) = marker(line, "example") {
            doc.examples
                .push(parse_example(&mut lines, line_no, suffix)?);
        } else if let Some(settings) = marker(line, "soc-filter-example") {
            doc.soc_examples
                .push(parse_soc_example(&mut lines, line_no, settings)?);
        } else if let Some(suffix) = marker(line, "not-decoded") {
            doc.not_decoded.push((line_no, suffix.to_owned()));
        } else if line.contains("<!--") && !line.contains("-->") {
            return Err(format!("line {line_no}: unterminated HTML comment"));
        }
    }
    Ok(doc)
}

fn parse_example(lines: &mut Lines<'_>, line: usize, suffix: &str) -> Result<Example, String> {
    let at =
        |lines: &Lines<'_>| format!("example at line {line} ({suffix}), line {}", lines.number());
    lines.skip_blank();
    if lines.next().map(str::trim) != Some("```json") {
        return Err(format!("{}: expected a ```json block", at(lines)));
    }
    let mut payload = Vec::new();
    loop {
        match lines.next() {
            Some(l) if l.trim() == "```" => break,
            Some(l) => payload.push(l),
            None => return Err(format!("{}: the ```json block never ends", at(lines))),
        }
    }
    lines.skip_blank();
    let table = parse_table(lines).ok_or_else(|| {
        format!(
            "{}: expected the | metric | value | unit | table",
            at(lines)
        )
    })?;
    if table.header != ["metric", "value", "unit"] {
        return Err(format!(
            "{}: table header {:?}, expected metric | value | unit",
            at(lines),
            table.header
        ));
    }
    let mut rows = Vec::new();
    for (n, cells) in table.rows {
        let [metric, value, unit] = cells.as_slice() else {
            return Err(format!("line {n}: expected 3 cells, found {cells:?}"));
        };
        rows.push(Row {
            metric: code(metric),
            value: number(value).ok_or_else(|| format!("line {n}: {value:?} is not a number"))?,
            unit: unit_cell(unit).ok_or_else(|| {
                format!("line {n}: unit {unit:?} must be in backticks (`\"\"` for none)")
            })?,
        });
    }
    let checkpoint = lines.at;
    lines.skip_blank();
    let alarms = match parse_table(lines) {
        Some(table) if table.header == ["alarm", "state"] => {
            let mut alarms = BTreeMap::new();
            for (n, cells) in table.rows {
                let [flag, state] = cells.as_slice() else {
                    return Err(format!("line {n}: expected 2 cells, found {cells:?}"));
                };
                let state = match state.as_str() {
                    "true" => true,
                    "false" => false,
                    other => return Err(format!("line {n}: state {other:?} is not true/false")),
                };
                if alarms.insert(code(flag), state).is_some() {
                    return Err(format!("line {n}: alarm {flag} listed twice"));
                }
            }
            Some(alarms)
        }
        _ => {
            lines.at = checkpoint;
            None
        }
    };
    Ok(Example {
        line,
        suffix: suffix.to_owned(),
        payload: payload.join("\n"),
        rows,
        alarms,
    })
}

fn parse_soc_example(
    lines: &mut Lines<'_>,
    line: usize,
    settings: &str,
) -> Result<SocExample, String> {
    let threshold = settings
        .strip_prefix("threshold=")
        .and_then(number)
        .ok_or_else(|| format!("line {line}: expected soc-filter-example: threshold=T"))?;
    lines.skip_blank();
    let table = parse_table(lines)
        .ok_or_else(|| format!("line {}: expected the SOC filter table", lines.number()))?;
    let expected_header = ["time (s)", "published", "soc sent", "soc_raw sent", "why"];
    let header: Vec<String> = table.header.iter().map(|h| h.replace('`', "")).collect();
    if header != expected_header {
        return Err(format!(
            "line {line}: SOC filter table header {header:?}, expected {expected_header:?}"
        ));
    }
    let mut steps = Vec::new();
    for (n, cells) in table.rows {
        let [seconds, published, soc, soc_raw, _why] = cells.as_slice() else {
            return Err(format!("line {n}: expected 5 cells, found {cells:?}"));
        };
        let num =
            |cell: &str| number(cell).ok_or_else(|| format!("line {n}: {cell:?} is not a number"));
        steps.push(SocStep {
            line: n,
            seconds: num(seconds)?,
            published: num(published)?,
            soc: num(soc)?,
            soc_raw: if soc_raw.is_empty() {
                None
            } else {
                Some(num(soc_raw)?)
            },
        });
    }
    Ok(SocExample {
        line,
        threshold,
        steps,
    })
}

struct Table {
    header: Vec<String>,
    /// (1-based line, cells)
    rows: Vec<(usize, Vec<String>)>,
}

/// A GitHub table starting at the current line, or `None` (nothing
/// consumed) when there is none.
fn parse_table(lines: &mut Lines<'_>) -> Option<Table> {
    let start = lines.at;
    let header = lines.peek().and_then(cells)?;
    lines.next();
    let separator = lines.next().and_then(cells);
    let is_separator = separator.is_some_and(|s| {
        s.len() == header.len()
            && s.iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
    });
    if !is_separator {
        lines.at = start;
        return None;
    }
    let mut rows = Vec::new();
    while let Some(row) = lines.peek().and_then(cells) {
        rows.push((lines.number(), row));
        lines.next();
    }
    Some(Table { header, rows })
}

/// The cells of a `| a | b |` line, trimmed.
fn cells(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_owned()).collect())
}

/// `` `name` `` → `name` (plain text as is).
fn code(cell: &str) -> String {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or(cell)
        .to_owned()
}

/// A backticked unit; `` `""` `` is the empty unit.
fn unit_cell(cell: &str) -> Option<String> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    Some(if inner == "\"\"" {
        String::new()
    } else {
        inner.to_owned()
    })
}

fn number(cell: &str) -> Option<f64> {
    cell.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// What the decoder makes of an example: measurements and alarm states.
fn decode_example(example: &Example) -> (Vec<Row>, Option<BTreeMap<String, bool>>) {
    let topic = format!("pv/PV3/{DEVICE}/{}", example.suffix);
    let outcome = decode::decode(&topic, example.payload.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "example at docs/topics.md line {}: decode error: {e}",
            example.line
        )
    });
    let Outcome::Decoded { decoded, .. } = outcome else {
        panic!(
            "example at docs/topics.md line {}: {topic} is not decoded at all ({outcome:?})",
            example.line
        );
    };
    let rows = decoded.measurements.iter().map(row_of).collect();
    (rows, decoded.alarms)
}

fn row_of(m: &Measurement) -> Row {
    Row {
        metric: m.metric.to_string(),
        value: m.value,
        unit: m.unit.to_owned(),
    }
}

fn show(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| format!("  | `{}` | {} | `{}` |", r.metric, r.value, r.unit))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pairs documented rows with decoded ones (same metric and unit, value
/// within the tolerance); returns what is left unmatched on each side.
fn unmatched(documented: &[Row], decoded: &[Row]) -> (Vec<Row>, Vec<Row>) {
    let mut left: Vec<Option<&Row>> = decoded.iter().map(Some).collect();
    let mut missing = Vec::new();
    for want in documented {
        let found = left.iter_mut().find(|slot| {
            slot.is_some_and(|got| {
                got.metric == want.metric
                    && got.unit == want.unit
                    && (got.value - want.value).abs() <= TOLERANCE
            })
        });
        match found {
            Some(slot) => *slot = None,
            None => missing.push(want.clone()),
        }
    }
    let extra = left.into_iter().flatten().cloned().collect();
    (missing, extra)
}

#[test]
fn every_example_matches_the_decoder() {
    let doc = topics_md();
    assert!(!doc.examples.is_empty(), "docs/topics.md has no examples");
    let mut failures = Vec::new();
    for example in &doc.examples {
        let (decoded, alarms) = decode_example(example);
        let (missing, extra) = unmatched(&example.rows, &decoded);
        if !missing.is_empty() || !extra.is_empty() {
            failures.push(format!(
                "example at line {} ({}):\n documented but not decoded:\n{}\n decoded but not documented:\n{}",
                example.line,
                example.suffix,
                show(&missing),
                show(&extra)
            ));
        }
        if example.alarms != alarms {
            failures.push(format!(
                "example at line {} ({}): alarm states documented {:?}, decoded {:?}",
                example.line, example.suffix, example.alarms, alarms
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "docs/topics.md and the decoder disagree:\n\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn every_known_suffix_has_an_example() {
    let doc = topics_md();
    let documented: BTreeSet<&str> = doc.examples.iter().map(|e| e.suffix.as_str()).collect();
    let missing: Vec<&str> = decode::decoded_suffixes()
        .filter(|s| !documented.contains(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "suffixes without an example in docs/topics.md: {missing:?}"
    );
    let unknown: Vec<&&str> = documented
        .iter()
        .filter(|s| !decode::is_decoded(s))
        .collect();
    assert!(
        unknown.is_empty(),
        "examples for suffixes the decoder does not know: {unknown:?}"
    );
}

#[test]
fn every_decoded_metric_name_appears_in_the_doc() {
    let doc = topics_md();
    let mut missing = BTreeSet::new();
    for example in &doc.examples {
        for row in decode_example(example).0 {
            if !doc.text.contains(&format!("`{}`", row.metric)) {
                missing.insert(row.metric);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the decoder emits that docs/topics.md never names: {missing:?}"
    );
}

#[test]
fn every_spec_metric_is_documented_with_its_unit() {
    let doc = topics_md();
    let missing: Vec<&str> = SPEC_METRICS
        .iter()
        .map(|(m, _)| *m)
        .chain(SPEC_OTHER_NAMES.iter().copied())
        .filter(|m| !doc.text.contains(&format!("`{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "names from p3-topics.md missing from docs/topics.md: {missing:?}"
    );

    // Every spec metric shows up in an example (soc_raw in the SOC filter
    // table), with the spec's unit: so the page's units are the decoder's,
    // and the decoder's are the spec's.
    let mut in_examples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for example in &doc.examples {
        for row in &example.rows {
            in_examples
                .entry(row.metric.clone())
                .or_default()
                .insert(row.unit.clone());
        }
    }
    let mut problems = Vec::new();
    for (metric, unit) in SPEC_METRICS {
        if *metric == "soc_raw" {
            continue;
        }
        match in_examples.get(*metric) {
            None => problems.push(format!("{metric}: no example")),
            Some(units) if units.len() != 1 || !units.contains(*unit) => {
                problems.push(format!("{metric}: unit {units:?}, the spec says {unit:?}"));
            }
            Some(_) => {}
        }
    }
    assert!(!doc.soc_examples.is_empty(), "no SOC filter example");
    assert!(
        doc.soc_examples
            .iter()
            .any(|e| e.steps.iter().any(|s| s.soc_raw.is_some())),
        "the SOC filter example never shows soc_raw"
    );
    let module = in_examples.keys().any(|m| m.starts_with("soc_module_"));
    let safety = in_examples
        .keys()
        .any(|m| m.starts_with("safetycheck_") && m.chars().any(|c| c.is_ascii_uppercase()));
    if !module {
        problems.push("no soc_module_N example".into());
    }
    if !safety {
        problems.push("no safetycheck/state (safetycheck_<k>) example".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn soc_filter_examples_match_the_filter() {
    let doc = topics_md();
    let base = Timestamp::parse_rfc3339("2026-11-27T14:00:00Z").expect("valid time");
    let mut failures = Vec::new();
    for example in &doc.soc_examples {
        let mut filter = SocFilter::new(example.threshold);
        for step in &example.steps {
            let at = Timestamp::from_unix_micros(
                base.unix_micros() + (step.seconds * 1e6).round() as i64,
            );
            let mut sent = vec![Measurement::new("soc", step.published, "%")];
            filter.apply(DEVICE, at, &mut sent);
            let documented = {
                let mut rows = vec![Row {
                    metric: "soc".into(),
                    value: step.soc,
                    unit: "%".into(),
                }];
                if let Some(raw) = step.soc_raw {
                    rows.push(Row {
                        metric: "soc_raw".into(),
                        value: raw,
                        unit: "%".into(),
                    });
                }
                rows
            };
            let sent: Vec<Row> = sent.iter().map(row_of).collect();
            let (missing, extra) = unmatched(&documented, &sent);
            if !missing.is_empty() || !extra.is_empty() {
                failures.push(format!(
                    "SOC filter example at line {}, row at line {} (t = {} s, published {}): documented\n{}\nthe filter sent\n{}",
                    example.line,
                    step.line,
                    step.seconds,
                    step.published,
                    show(&documented),
                    show(&sent)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn topics_documented_as_not_decoded_are_not_decoded() {
    let doc = topics_md();
    assert!(
        !doc.not_decoded.is_empty(),
        "docs/topics.md marks no topic as not decoded"
    );
    for (line, suffix) in &doc.not_decoded {
        let topic = format!("pv/PV3/{DEVICE}/{suffix}");
        let outcome = decode::decode(&topic, b"\xff\xfe");
        assert!(
            matches!(outcome, Ok(Outcome::Unknown { .. })),
            "docs/topics.md line {line} says {suffix} is not decoded, but the decoder gives {outcome:?}"
        );
    }
}

#[test]
fn the_parser_catches_drift() {
    // A guard on the guard: a wrong value in a well-formed example must
    // come out as a mismatch, not be silently skipped.
    let text = "<!-- example: inverter/charge -->\n```json\n{\"power\":591}\n```\n\n\
                | metric | value | unit |\n|---|---|---|\n| `battery_power` | 590 | `W` |\n";
    let doc = parse(text).expect("parses");
    assert_eq!(doc.examples.len(), 1);
    let (decoded, _) = decode_example(&doc.examples[0]);
    let (missing, extra) = unmatched(&doc.examples[0].rows, &decoded);
    assert_eq!((missing.len(), extra.len()), (1, 1));

    let broken = "<!-- example: inverter/charge -->\n```json\n{\"power\":591}\n```\nprose\n";
    assert!(parse(broken).is_err(), "a missing table is an error");
}
