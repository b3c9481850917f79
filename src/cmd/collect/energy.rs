//! The energy counters of a running collector, with their file.

use std::time::Duration;

use tracing::{info, warn};

use crate::energy::{Energy, EnergyFile, Loaded};

/// The energy counters with their file: saved at most once a minute while
/// they grow, and at the stop. The write (with its fsync) runs off the
/// runtime's thread.
pub(super) struct EnergyKeeper {
    pub(super) energy: Energy,
    file: EnergyFile,
    saving: Option<tokio::task::JoinHandle<()>>,
}

impl EnergyKeeper {
    pub(super) fn open(file: EnergyFile) -> EnergyKeeper {
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
        EnergyKeeper {
            energy,
            file,
            saving: None,
        }
    }

    /// Starts a save in the background if the totals grew and the last
    /// save is done.
    pub(super) fn save_soon(&mut self) {
        if !self.energy.is_dirty() || self.saving.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let snapshot = self.energy.clone();
        self.energy.mark_saved();
        let file = self.file.clone();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = file.save(&snapshot) {
                warn!("{e:#}");
            }
        }));
    }

    /// The last save, awaited.
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

/// How often the energy counters are saved while they grow.
const ENERGY_SAVE_EVERY: Duration = Duration::from_secs(60);

/// The energy counters' save interval: [`ENERGY_SAVE_EVERY`], or
/// `PV3_ENERGY_SAVE_MS` (undocumented, for tests).
pub(super) fn energy_save_every() -> Duration {
    crate::cmd::interval_from_env("PV3_ENERGY_SAVE_MS", ENERGY_SAVE_EVERY)
}
