//! What the outputs need to know about a metric beyond its value: its
//! Home Assistant unit and classes, its Prometheus name, and how small a
//! change still counts as one.
//!
//! Derived from the metric's name and the unit the decoder gives it, so a
//! new metric in the decoder gets sensible metadata without an edit here.

use crate::decode::metric;
use crate::energy::Counter;

/// Home Assistant's `device_class`, `state_class`, unit and category for a
/// sensor, with the Prometheus unit suffix and the change resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricInfo {
    /// `unit_of_measurement` for Home Assistant (`°C`, not the API's `C`);
    /// `None` for counts and codes.
    pub ha_unit: Option<&'static str>,
    /// Home Assistant's `device_class`, when one fits.
    pub device_class: Option<&'static str>,
    /// `measurement` for gauges, `total_increasing` for energy counters,
    /// `None` for codes (a schedule event is not a quantity).
    pub state_class: Option<&'static str>,
    /// Whether the entity belongs under "Diagnostic" in Home Assistant.
    pub diagnostic: bool,
    /// The Prometheus unit suffix (`watts`), empty for none.
    pub prom_suffix: &'static str,
    /// Multiplier from the decoded value to the Prometheus base unit.
    pub prom_scale: f64,
    /// Whether Prometheus should see a counter (`_total`) rather than a
    /// gauge.
    pub prom_counter: bool,
    /// Changes smaller than this are not changes: they wait for the
    /// heartbeat (a 0.3 W wobble is not news; a 1 W step is).
    pub resolution: f64,
}

/// Metrics shown as diagnostic in Home Assistant: controller internals and
/// the safety check's raw fields.
fn is_diagnostic(metric: &str) -> bool {
    metric.starts_with(metric::SAFETYCHECK_PREFIX)
        || matches!(
            metric,
            metric::ALARM_COUNT
                | metric::FFR_CONTROLLER_STATE
                | metric::SOC_RAW
                | metric::CHARGE_VOLTAGE_LIMIT
                | metric::DISCHARGE_VOLTAGE_LIMIT
                | metric::CHARGE_CURRENT_LIMIT
                | metric::DISCHARGE_CURRENT_LIMIT
                | metric::MAX_CHARGE_POWER
                | metric::MAX_DISCHARGE_POWER
                | metric::BMS_TEMP_AVG
                | metric::BMS_TEMP_MAX
        )
}

/// Codes: numbers that name a state, not a quantity (no state class, so
/// Home Assistant draws no statistics of them).
fn is_code(metric: &str) -> bool {
    matches!(
        metric,
        metric::SCHEDULE_EVENT
            | metric::EPS_MODE
            | metric::EPS_SCHEDULE_EVENT
            | metric::FFR_CONTROLLER_STATE
    ) || metric.starts_with(metric::SAFETYCHECK_PREFIX)
}

/// The metadata of `metric`, whose decoded unit is `unit`.
pub fn info(metric: &str, unit: &str) -> MetricInfo {
    let diagnostic = is_diagnostic(metric);
    let gauge = |ha_unit, device_class, prom_suffix, resolution| MetricInfo {
        ha_unit: Some(ha_unit),
        device_class,
        state_class: Some("measurement"),
        diagnostic,
        prom_suffix,
        prom_scale: 1.0,
        prom_counter: false,
        resolution,
    };
    if Counter::from_metric(metric).is_some() || unit == "kWh" {
        return MetricInfo {
            ha_unit: Some("kWh"),
            device_class: Some("energy"),
            state_class: Some("total_increasing"),
            diagnostic: false,
            // Prometheus's base unit for energy is the joule.
            prom_suffix: "joules",
            prom_scale: 3.6e6,
            prom_counter: true,
            resolution: 0.001,
        };
    }
    match unit {
        "W" => gauge("W", Some("power"), "watts", 1.0),
        "VA" => gauge("VA", Some("apparent_power"), "volt_amperes", 1.0),
        "V" => gauge("V", Some("voltage"), "volts", 0.01),
        "mV" => MetricInfo {
            prom_scale: 0.001,
            ..gauge("mV", Some("voltage"), "volts", 1.0)
        },
        "A" => gauge("A", Some("current"), "amperes", 0.01),
        "Hz" => gauge("Hz", Some("frequency"), "hertz", 0.01),
        "C" => gauge("°C", Some("temperature"), "celsius", 0.1),
        "%" if metric == metric::SOC || metric.starts_with(metric::SOC_MODULE_PREFIX) => {
            gauge("%", Some("battery"), "percent", 0.1)
        }
        "%" => gauge("%", None, "percent", 0.1),
        // An average of the modules' counts can dip (a module replaced):
        // a measurement, not a total that only grows.
        "cycles" => gauge("cycles", None, "", 1.0),
        _ => MetricInfo {
            ha_unit: None,
            device_class: None,
            state_class: (!is_code(metric)).then_some("measurement"),
            diagnostic,
            prom_suffix: "",
            prom_scale: 1.0,
            prom_counter: false,
            resolution: 0.0,
        },
    }
}

/// Metrics whose own name would end in a suffix the exposition format
/// reserves for other types (`_count` belongs to histograms and summaries;
/// `promtool check metrics` rejects it on a gauge), with the name
/// Prometheus sees instead.
const PROMETHEUS_RENAMES: &[(&str, &str)] = &[(metric::ALARM_COUNT, "alarms_active")];

/// The Prometheus metric name of `metric`: `pv3_` + the name in snake case
/// (ASCII lower case; anything outside `[a-z0-9_]` becomes `_`; the renames
/// above applied) + the unit suffix unless the name already ends with it,
/// + `_total` for counters.
pub fn prometheus_name(metric: &str, info: &MetricInfo) -> String {
    let metric = PROMETHEUS_RENAMES
        .iter()
        .find(|(from, _)| *from == metric)
        .map_or(metric, |(_, to)| to);
    let mut name = String::with_capacity(metric.len() + 24);
    name.push_str("pv3_");
    name.extend(metric.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c.to_ascii_lowercase()
        } else {
            '_'
        }
    }));
    if !info.prom_suffix.is_empty() && !name.ends_with(info.prom_suffix) {
        name.push('_');
        name.push_str(info.prom_suffix);
    }
    if info.prom_counter {
        name.push_str("_total");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prom(metric: &str, unit: &str) -> String {
        prometheus_name(metric, &info(metric, unit))
    }

    #[test]
    fn prometheus_names_follow_the_naming_guide() {
        assert_eq!(prom("grid_power", "W"), "pv3_grid_power_watts");
        assert_eq!(prom("soc", "%"), "pv3_soc_percent");
        assert_eq!(prom("inverter_temp", "C"), "pv3_inverter_temp_celsius");
        assert_eq!(
            prom("grid_import_energy", "kWh"),
            "pv3_grid_import_energy_joules_total"
        );
        assert_eq!(prom("cell_voltage_max", "mV"), "pv3_cell_voltage_max_volts");
        assert_eq!(prom("alarm_count", ""), "pv3_alarms_active");
        assert_eq!(prom("safetycheck_a-b", ""), "pv3_safetycheck_a_b");
        assert_eq!(prom("safetycheck_State", ""), "pv3_safetycheck_state");
    }

    #[test]
    fn home_assistant_classes_fit_the_unit() {
        let t = info("inverter_temp", "C");
        assert_eq!(
            (t.ha_unit, t.device_class, t.state_class),
            (Some("°C"), Some("temperature"), Some("measurement"))
        );
        let soc = info("soc", "%");
        assert_eq!(soc.device_class, Some("battery"));
        assert_eq!(info("soh", "%").device_class, None);
        let e = info("house_energy", "kWh");
        assert_eq!(
            (e.device_class, e.state_class),
            (Some("energy"), Some("total_increasing"))
        );
        assert!(info("alarm_count", "").diagnostic);
        assert_eq!(info("schedule_event", "").state_class, None);
        assert_eq!(info("eps_mode", "").ha_unit, None);
    }
}
