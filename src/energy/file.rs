//! `energy.json`: the counters' totals in the state directory, written
//! atomically and durably (temporary file, fsync, rename, fsync of the
//! directory) so that what a save reported done survives a power cut.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Counter, Energy, Totals};
use crate::reading::Timestamp;

/// The counters' file in the state directory (`energy.json`): written
/// atomically (temporary file, fsync, rename), read back at start.
#[derive(Debug, Clone)]
pub struct EnergyFile {
    path: PathBuf,
}

/// The file's shape.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    updated_at: String,
    /// device id → counter metric → kWh.
    devices: BTreeMap<String, BTreeMap<String, f64>>,
}

/// What [`EnergyFile::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// The saved totals.
    Totals(BTreeMap<String, Totals>),
    /// No file yet: a first start.
    Missing,
    /// A file that could not be read; moved aside to the path given (when
    /// that worked), and the counters start at zero.
    Corrupt {
        /// Why it could not be read.
        reason: String,
        /// Where it was moved.
        moved_to: Option<PathBuf>,
    },
}

impl EnergyFile {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> EnergyFile {
        EnergyFile { path: path.into() }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the saved totals. Negative or non-finite totals, or unknown
    /// counter names, make the file corrupt: counters never go down, so
    /// nothing trustworthy wrote them.
    pub fn load(&self) -> Loaded {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return self.corrupt(format!("cannot read it: {e}")),
        };
        match parse(&bytes) {
            Ok(totals) => Loaded::Totals(totals),
            Err(reason) => self.corrupt(reason),
        }
    }

    fn corrupt(&self, reason: String) -> Loaded {
        let secs = Timestamp::now().unix_micros().div_euclid(1_000_000);
        let aside = self.path.with_extension(format!("json.corrupt-{secs}"));
        let moved_to = std::fs::rename(&self.path, &aside).ok().map(|()| aside);
        Loaded::Corrupt { reason, moved_to }
    }

    /// Writes `energy`'s totals, replacing the file atomically.
    pub fn save(&self, energy: &Energy) -> Result<()> {
        let saved = Saved {
            version: 1,
            updated_at: Timestamp::now().to_rfc3339(),
            devices: energy
                .all()
                .map(|(device, totals)| {
                    let counters = totals
                        .iter()
                        .map(|(c, kwh)| (c.metric().to_string(), kwh))
                        .collect();
                    (device.to_string(), counters)
                })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&saved).context("cannot encode the totals")?;
        text.push(b'\n');
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "energy.json".into());
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&text)?;
            // Once a minute at most: worth an fsync, so that a power cut
            // leaves the old file or the new one, never an empty one.
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &self.path)?;
            // The rename itself must survive a power cut before anyone is
            // told the new totals: the directory's entry is on disk only
            // after the directory is synced.
            sync_dir(&self.path)
        };
        write().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Totals>, String> {
    let saved: Saved = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if saved.version != 1 {
        return Err(format!(
            "version {} is not one this pv3 reads",
            saved.version
        ));
    }
    let mut out = BTreeMap::new();
    for (device, counters) in saved.devices {
        let mut totals = Totals::default();
        for (metric, kwh) in counters {
            let counter =
                Counter::from_metric(&metric).ok_or_else(|| format!("unknown counter {metric}"))?;
            if !kwh.is_finite() || kwh < 0.0 {
                return Err(format!("{device} {metric} is {kwh}"));
            }
            totals.0[counter.index()] = kwh;
        }
        out.insert(device, totals);
    }
    Ok(out)
}

/// Syncs the directory that holds `path`, so that a rename into it is
/// durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::tests::{DEV, close, feed, total};

    #[test]
    fn totals_round_trip_through_the_file_and_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = EnergyFile::new(dir.path().join("energy.json"));
        assert!(matches!(file.load(), Loaded::Missing));
        let mut e = Energy::new();
        feed(&mut e, "grid_power", &[(0.0, 3600.0), (10.0, 3600.0)]);
        file.save(&e).expect("save");
        let Loaded::Totals(saved) = file.load() else {
            panic!("saved totals expected")
        };
        let mut again = Energy::from_totals(saved);
        assert!(close(
            again
                .totals(DEV)
                .map_or(0.0, |t| t.get(Counter::GridImport)),
            0.01
        ));
        feed(&mut again, "grid_power", &[(20.0, 3600.0), (30.0, 3600.0)]);
        assert!(close(total(&again, Counter::GridImport), 0.02));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_counting_starts_at_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("energy.json");
        for bad in [
            &b"{not json"[..],
            br#"{"version":1,"updated_at":"","devices":{"A":{"grid_import_energy":-1}}}"#,
            br#"{"version":1,"updated_at":"","devices":{"A":{"bogus":1}}}"#,
            br#"{"version":9,"updated_at":"","devices":{}}"#,
        ] {
            std::fs::write(&path, bad).expect("write");
            match EnergyFile::new(&path).load() {
                Loaded::Corrupt { moved_to, .. } => {
                    let moved = moved_to.expect("moved aside");
                    assert_eq!(std::fs::read(&moved).expect("kept"), bad);
                    std::fs::remove_file(moved).expect("clean up");
                }
                other => panic!("corrupt expected, got {other:?}"),
            }
            assert!(!path.exists());
        }
    }
}
