//! The store of latest values: one family per metric name, one sample per device.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::metric_info::{self, MetricInfo};
use crate::reading::{AlarmStates, Reading};

use super::*;

/// Where a (metric, unit) pair goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Into the family at this index.
    Family(usize),
    /// Nowhere: its name belongs to another metric (or to pv3's own).
    Refused,
}

/// One metric family: a name, its type and one sample per device.
#[derive(Debug)]
pub(super) struct Family {
    pub(super) name: String,
    pub(super) help: String,
    pub(super) counter: bool,
    /// From the decoded value to the base unit: `value * scale`, or
    /// `value / divisor` when the scale is a fraction (mV → V), which gives
    /// the correctly rounded 3.316 rather than 3.3160000000000003.
    pub(super) scale: Scale,
    pub(super) samples: BTreeMap<Arc<str>, f64>,
}

/// The latest value of everything, and which metric owns which name.
#[derive(Debug)]
pub(super) struct Latest {
    /// unit → metric → route: a lookup per measurement without allocating.
    pub(super) routes: HashMap<&'static str, HashMap<String, Route>>,
    pub(super) routes_len: usize,
    /// Family name → who holds it, for the warning about the one refused.
    pub(super) owners: HashMap<String, String>,
    pub(super) families: Vec<Family>,
    /// Each device's flags from its last alarms message (each message
    /// carries every flag, so it replaces the previous set).
    pub(super) alarms: BTreeMap<Arc<str>, AlarmStates>,
    /// Samples held in `families` and `alarms`.
    pub(super) series: usize,
    /// Whether the "full" warning has been given.
    pub(super) warned_full: bool,
}

impl Latest {
    pub(super) fn new() -> Latest {
        let owners = RESERVED
            .iter()
            .map(|name| (name.to_string(), "pv3's own metrics".to_string()))
            .collect();
        Latest {
            routes: HashMap::new(),
            routes_len: 0,
            owners,
            families: Vec::new(),
            alarms: BTreeMap::new(),
            series: 0,
            warned_full: false,
        }
    }

    /// Stores `reading`'s values; returns how many were dropped and a
    /// warning for each name refused for the first time (or the first time
    /// the store is full).
    pub(super) fn update(&mut self, reading: &Reading) -> (u64, Vec<String>) {
        let device = &reading.origin.device_id;
        let mut dropped = 0;
        let mut warnings = Vec::new();
        for m in &reading.measurements {
            let Some(Route::Family(index)) = self.route(&m.metric, m.unit, &mut warnings) else {
                dropped += 1;
                continue;
            };
            let family = &mut self.families[index];
            let value = family.scale.apply(m.value);
            if !value.is_finite() {
                // Not finite, or past f64 once scaled (kWh to joules): no
                // sample may say `+Inf` or `NaN` (a counter would jump).
                dropped += 1;
                continue;
            }
            if let Some(slot) = family.samples.get_mut(&**device) {
                *slot = value;
            } else if self.series < MAX_SERIES {
                family.samples.insert(device.clone(), value);
                self.series += 1;
            } else {
                dropped += 1;
                self.full(&mut warnings);
            }
        }
        if let Some(flags) = &reading.alarms {
            let before = self.alarms.get(&**device).map_or(0, |f| f.len());
            let after = self.series - before + flags.len();
            if after <= MAX_SERIES {
                self.alarms.insert(device.clone(), flags.clone());
                self.series = after;
            } else {
                dropped += flags.len() as u64;
                self.full(&mut warnings);
            }
        }
        (dropped, warnings)
    }

    pub(super) fn full(&mut self, warnings: &mut Vec<String>) {
        if !self.warned_full {
            self.warned_full = true;
            warnings.push(format!(
                "{MAX_SERIES} series held: new ones are left out of /metrics (counted as dropped)"
            ));
        }
    }

    /// The route of `metric` in `unit`, deciding it on first sight: the
    /// first (metric, unit) to map onto a name owns it for the life of the
    /// process; any other that maps onto the same name (same type or not)
    /// is refused, because two writers of one family would either make its
    /// values flap between two meanings or, with different types, make the
    /// whole exposition invalid. `None`: not remembered (too many pairs).
    pub(super) fn route(
        &mut self,
        metric: &str,
        unit: &'static str,
        warnings: &mut Vec<String>,
    ) -> Option<Route> {
        if let Some(route) = self.routes.get(unit).and_then(|m| m.get(metric)) {
            return Some(*route);
        }
        if self.routes_len >= MAX_ROUTES {
            self.full(warnings);
            return None;
        }
        let info = metric_info::info(metric, unit);
        let name = metric_info::prometheus_name(metric, &info);
        let route = match self.owners.get(&name) {
            Some(owner) => {
                warnings.push(format!(
                    "{metric} ({unit:?}) would be exposed as {name}, a name already taken by {owner}; it is left out of /metrics (counted as dropped)"
                ));
                Route::Refused
            }
            None => {
                self.owners
                    .insert(name.clone(), format!("{metric} ({unit:?})"));
                self.families.push(family(metric, unit, &info, name));
                Route::Family(self.families.len() - 1)
            }
        };
        self.routes
            .entry(unit)
            .or_default()
            .insert(metric.to_owned(), route);
        self.routes_len += 1;
        Some(route)
    }
}

/// A new, empty family for `metric`.
pub(super) fn family(metric: &str, unit: &str, info: &MetricInfo, name: String) -> Family {
    let base = match info.prom_suffix {
        "" => String::new(),
        suffix => format!(", in {}", suffix.replace('_', "-")),
    };
    let help = if info.prom_counter {
        format!("Energy counter {metric} integrated by pv3 from the P3's power readings{base}")
    } else if unit.is_empty() || info.prom_scale == 1.0 {
        format!("P3 metric {metric}{base}")
    } else {
        format!("P3 metric {metric} (published in {unit}){base}")
    };
    Family {
        name,
        help,
        counter: info.prom_counter,
        scale: Scale::of(info.prom_scale),
        samples: BTreeMap::new(),
    }
}

/// A conversion to the base unit (see [`Family::scale`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Scale {
    Times(f64),
    DividedBy(f64),
}

impl Scale {
    pub(super) fn of(factor: f64) -> Scale {
        let divisor = (1.0 / factor).round();
        if factor > 0.0 && factor < 1.0 && divisor * factor == 1.0 {
            Scale::DividedBy(divisor)
        } else {
            Scale::Times(factor)
        }
    }

    pub(super) fn apply(self, value: f64) -> f64 {
        match self {
            Scale::Times(factor) => value * factor,
            Scale::DividedBy(divisor) => value / divisor,
        }
    }
}
