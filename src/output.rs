//! Printing decoded readings: `--dry-run` output of collect and replay.
//!
//! JSON Lines is the stable, scriptable form (`cli.md` fixes its fields);
//! the table is for people, printed in chunks so that a long replay neither
//! holds everything in memory nor waits for the end.

use std::io::{self, Write};

use clap::ValueEnum;
use tabled::settings::Style;
use tabled::{Table, Tabled};

use crate::reading::{DryRunAlarms, DryRunMeasurement, Reading};

/// How `--dry-run` prints readings (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A table for people.
    Table,
}

impl Format {
    /// Table on a terminal, JSON Lines otherwise.
    pub fn default_for_stdout() -> Format {
        if io::IsTerminal::is_terminal(&io::stdout()) {
            Format::Table
        } else {
            Format::Jsonl
        }
    }
}

#[derive(Tabled)]
struct Row {
    device: String,
    time: String,
    metric: String,
    value: String,
    unit: String,
    topic: String,
}

/// Rows per printed table.
const TABLE_CHUNK: usize = 200;

/// Prints readings to `out` in one [`Format`], reusing its buffers from one
/// reading to the next.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    rows: Vec<Row>,
    line: Vec<u8>,
}

impl<W: Write> Printer<W> {
    /// A printer writing `format` to `out` (stdout, or a buffer in tests).
    pub fn new(out: W, format: Format) -> Self {
        Printer {
            out,
            format,
            rows: Vec::new(),
            line: Vec::with_capacity(256),
        }
    }

    /// Prints one reading: JSON Lines are written at once, table rows wait
    /// for a full chunk or [`flush`](Self::flush).
    pub fn print(&mut self, reading: &Reading) -> io::Result<()> {
        match self.format {
            Format::Jsonl => self.print_jsonl(reading),
            Format::Table => {
                self.add_rows(reading);
                if self.rows.len() >= TABLE_CHUNK {
                    self.flush_table()?;
                }
                Ok(())
            }
        }
    }

    fn print_jsonl(&mut self, reading: &Reading) -> io::Result<()> {
        let device = &*reading.origin.device_id;
        let topic = &*reading.origin.topic;
        for m in &reading.measurements {
            self.line.clear();
            serde_json::to_writer(
                &mut self.line,
                &DryRunMeasurement {
                    device_id: device,
                    timestamp: reading.timestamp,
                    measurement: m,
                    source_topic: topic,
                },
            )?;
            self.line.push(b'\n');
            self.out.write_all(&self.line)?;
        }
        if let Some(alarms) = &reading.alarms {
            self.line.clear();
            serde_json::to_writer(
                &mut self.line,
                &DryRunAlarms {
                    device_id: device,
                    timestamp: reading.timestamp,
                    source_topic: topic,
                    alarms,
                },
            )?;
            self.line.push(b'\n');
            self.out.write_all(&self.line)?;
        }
        Ok(())
    }

    fn add_rows(&mut self, reading: &Reading) {
        let time = reading.timestamp.to_rfc3339();
        for m in &reading.measurements {
            self.rows.push(Row {
                device: reading.origin.device_id.to_string(),
                time: time.clone(),
                metric: m.metric.to_string(),
                value: m.value.to_string(),
                unit: m.unit.to_string(),
                topic: reading.origin.topic.to_string(),
            });
        }
        if let Some(alarms) = &reading.alarms {
            let active: Vec<&str> = alarms
                .iter()
                .filter(|(_, on)| **on)
                .map(|(k, _)| k.as_str())
                .collect();
            let value = if active.is_empty() {
                format!("none of {} active", alarms.len())
            } else {
                format!("active: {}", active.join(", "))
            };
            self.rows.push(Row {
                device: reading.origin.device_id.to_string(),
                time,
                metric: "(alarms)".into(),
                value,
                unit: String::new(),
                topic: reading.origin.topic.to_string(),
            });
        }
    }

    fn flush_table(&mut self) -> io::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut table = Table::new(self.rows.drain(..));
        table.with(Style::rounded());
        writeln!(self.out, "{table}")
    }

    /// Prints buffered table rows and flushes the writer (collect calls it
    /// after each message so that live output is live).
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_table()?;
        self.out.flush()
    }
}

/// A broken pipe (`pv3 ... | head`) ends output early; it is not an error.
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Writes `bytes` to stdout and flushes: what devices, check-api,
/// completions and install-service print. A closed pipe (`| head`) is not an
/// error.
pub fn print_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if !is_broken_pipe(&e) => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}
