//! The energy counters of a running collector, with their file.
//!
//! **Published totals never go back.** Home Assistant reads a drop of a
//! `total_increasing` sensor as a meter reset and counts the whole total
//! again, and Prometheus' `increase()` does the same, so no total that went
//! out may ever be undercut, whatever happens next (`kill -9`, a power cut,
//! a failed write, a restart). The outputs are therefore given only totals
//! that a save has made durable ([`EnergyKeeper::durable`]): the live
//! totals grow with every reading, and what is published catches up with
//! them once a minute, when a save (file written, fsynced, renamed, the
//! directory fsynced) has finished. A power cut loses at most the energy
//! since the last save, and nothing published ever exceeds what the next
//! start reads back. Saving more often than once a minute would wear an SD
//! card for a figure whose dashboards add up by the hour.
//!
//! The minute is counted from the file's last write, not from the start:
//! a collector restarted often (a crash loop, a flaky power supply) saves
//! within seconds of a start when the last save is a minute old, instead of
//! never living long enough to save at all, and still writes at most once
//! a minute.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tracing::{info, warn};

use crate::energy::{Energy, EnergyFile, Loaded, MAX_PLAUSIBLE_WATTS, Totals};
use crate::ratelimit::{RateLimiter, suppressed_note};
use crate::reading::{Reading, Timestamp};

/// Totals by device, as a save left them on disk.
type Durable = BTreeMap<Arc<str>, Totals>;

/// The energy counters with their file: saved at most once a minute while
/// they grow, and at the stop. The write (with its fsyncs) runs off the
/// runtime's thread.
pub(super) struct EnergyKeeper {
    /// The live integration.
    energy: Energy,
    file: EnergyFile,
    /// What the file is known to hold: loaded at the start, replaced when a
    /// save finishes. The only totals the outputs see.
    durable: Arc<Mutex<Durable>>,
    /// A save failed: try again at the next chance even if nothing grew.
    unsaved: Arc<AtomicBool>,
    saving: Option<tokio::task::JoinHandle<()>>,
    /// When the file was last written (by this process or, read from its
    /// modification time, an earlier one); `None`: never.
    last_write: Option<Instant>,
    /// Saves are at least this far apart.
    every: Duration,
    /// Implausible power readings already told about.
    told: u64,
    warnings: RateLimiter,
}

impl EnergyKeeper {
    pub(super) fn open(file: EnergyFile, every: Duration) -> EnergyKeeper {
        let last_write = written_ago(file.path()).map(|ago| {
            let now = Instant::now();
            now.checked_sub(ago).unwrap_or(now)
        });
        let energy = match file.load() {
            Loaded::Totals(totals) => {
                info!("energy counters continue from {}", file.path().display());
                Energy::from_totals(totals)
            }
            Loaded::Missing => {
                info!(
                    "energy counters start at zero (no {} yet)",
                    file.path().display()
                );
                Energy::new()
            }
            Loaded::Corrupt { reason, moved_to } => {
                warn!(
                    "energy counters start at zero: {} is unreadable ({reason}){}",
                    file.path().display(),
                    moved_to
                        .map(|p| format!("; kept as {}", p.display()))
                        .unwrap_or_default()
                );
                Energy::new()
            }
        };
        let durable = energy.all().map(|(d, t)| (Arc::from(d), t)).collect();
        EnergyKeeper {
            energy,
            file,
            durable: Arc::new(Mutex::new(durable)),
            unsaved: Arc::new(AtomicBool::new(false)),
            saving: None,
            last_write,
            every,
            told: 0,
            warnings: RateLimiter::new(crate::ratelimit::WINDOW),
        }
    }

    /// Feeds one reading. When it carried a power, the device's durable
    /// totals come back as a reading stamped with its time, for the
    /// outputs (zero until a first save: publishing zero undoes nothing).
    pub(super) fn observe(&mut self, reading: &Reading) -> Option<Reading> {
        let fed = self.energy.observe(reading);
        self.tell_implausible(reading);
        if !fed {
            return None;
        }
        let device = &reading.origin.device_id;
        let totals = self.durable_totals(device);
        Some(Energy::totals_reading(device, totals, reading.timestamp))
    }

    /// Warns (once a minute at most) about power readings the counters
    /// refused.
    fn tell_implausible(&mut self, reading: &Reading) {
        let refused = self.energy.implausible();
        if refused == self.told {
            return;
        }
        self.told = refused;
        if let Some(n) = self.warnings.allow("implausible") {
            warn!(
                "{}: a power beyond ±{MAX_PLAUSIBLE_WATTS} W (or not a number) is not integrated into the energy counters ({refused} such readings so far){}",
                reading.origin.topic,
                suppressed_note(n)
            );
        }
    }

    fn durable_totals(&self, device: &str) -> Totals {
        let durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        durable.get(device).copied().unwrap_or_default()
    }

    /// Every device's durable totals, as readings stamped `at`.
    pub(super) fn durable_readings(&self, at: Timestamp) -> Vec<Reading> {
        let durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        durable
            .iter()
            .map(|(device, totals)| Energy::totals_reading(device, *totals, at))
            .collect()
    }

    /// Power readings refused as impossible since the start.
    pub(super) fn implausible(&self) -> u64 {
        self.energy.implausible()
    }

    /// Starts a save in the background if the last write is at least the
    /// save interval old; see [`Self::save_now`].
    pub(super) fn save_when_due(&mut self) {
        if self.last_write.is_none_or(|t| t.elapsed() >= self.every) {
            self.save_soon();
        }
    }

    /// Starts a save in the background if the totals grew (or the last
    /// save failed) and no save is running. Its totals become the durable
    /// ones only once the save has finished.
    fn save_soon(&mut self) {
        if self.saving.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if !self.energy.is_dirty() && !self.unsaved.swap(false, Ordering::Relaxed) {
            return;
        }
        let snapshot: Durable = self
            .energy
            .all()
            .map(|(device, totals)| (Arc::from(device), totals))
            .collect();
        let energy = self.energy.clone();
        self.energy.mark_saved();
        self.last_write = Some(Instant::now());
        let (file, durable, unsaved) = (
            self.file.clone(),
            self.durable.clone(),
            self.unsaved.clone(),
        );
        self.saving = Some(tokio::task::spawn_blocking(move || {
            match file.save(&energy) {
                Ok(()) => *durable.lock().unwrap_or_else(PoisonError::into_inner) = snapshot,
                Err(e) => {
                    unsaved.store(true, Ordering::Relaxed);
                    warn!("{e:#}; the energy totals published stay at the last saved ones");
                }
            }
        }));
    }

    /// The last save, awaited: after it the durable totals are the live
    /// ones, unless the write failed.
    pub(super) async fn save_now(&mut self) {
        if let Some(task) = self.saving.take() {
            let _ = task.await;
        }
        self.save_soon();
        if let Some(task) = self.saving.take() {
            let _ = task.await;
        }
    }
}

/// How long since `path` was last written, if it exists (a modification
/// time in the future counts as just now).
fn written_ago(path: &std::path::Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

/// How often at most the energy counters are saved while they grow.
const ENERGY_SAVE_EVERY: Duration = Duration::from_secs(60);

/// How often collect looks whether a save is due.
pub(super) const ENERGY_LOOK_EVERY: Duration = Duration::from_secs(5);

/// The energy counters' save interval: [`ENERGY_SAVE_EVERY`], or
/// `PV3_ENERGY_SAVE_MS` (undocumented, for tests).
pub(super) fn energy_save_every() -> Duration {
    crate::knobs::interval_from_env("PV3_ENERGY_SAVE_MS", ENERGY_SAVE_EVERY)
}
