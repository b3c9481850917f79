//! What Home Assistant shows: entity names for people, and the named states
//! of the P3's codes. Renaming an entity here never changes its unique id
//! or its entity id (`discovery.rs` builds both from the metric's name), so
//! nobody's history or dashboard breaks.

use crate::decode::metric;

/// Names for the metrics whose name alone reads like a raw P3 field.
const NAMES: &[(&str, &str)] = &[
    (metric::SOC, "State of charge"),
    (metric::SOC_RAW, "State of charge (unfiltered)"),
    (metric::BATTERY_CAPACITY, "Usable capacity"),
    (metric::BATTERY_CURRENT_TOTAL, "Battery current (BMS)"),
    (metric::GRID_POWER_INVERTER, "Grid power (inverter)"),
    (metric::OUTPUT_ACTIVE_POWER, "Output power"),
    (metric::ALARM_COUNT, "Active alarms"),
    (metric::AUX_POWER, "AUX power"),
    (metric::SOH, "State of health"),
    (metric::SOH_MIN, "State of health (weakest module)"),
    (metric::CYCLE_COUNT_AVG, "Charge cycles (average)"),
    (metric::CYCLE_COUNT_MAX, "Charge cycles (most)"),
    (metric::CELL_TEMP_AVG, "Cell temperature (average)"),
    (metric::CELL_TEMP_MAX, "Cell temperature (highest)"),
    (metric::CELL_TEMP_MIN, "Cell temperature (lowest)"),
    (metric::BMS_TEMP_AVG, "BMS temperature (average)"),
    (metric::BMS_TEMP_MAX, "BMS temperature (highest)"),
    (metric::CELL_VOLTAGE_MAX, "Cell voltage (highest)"),
    (metric::CELL_VOLTAGE_MIN, "Cell voltage (lowest)"),
    (metric::MODULE_VOLTAGE_AVG, "Module voltage (average)"),
    (metric::SCHEDULE_EVENT, "Schedule"),
    (metric::SCHEDULE_SETPOINT, "Schedule setpoint"),
    (metric::EPS_MODE, "EPS"),
    (metric::EPS_RESERVE, "EPS reserve"),
    (metric::EPS_SCHEDULE_EVENT, "EPS schedule"),
    (metric::EPS_SCHEDULE_RESERVE, "EPS schedule reserve"),
    (metric::FFR_CONTROLLER_STATE, "FFR controller state"),
];

/// The entity name of `metric`: from [`NAMES`], else built from its words
/// (`grid_power` → "Grid power", `soc_module_4` → "Module 4 state of
/// charge", `safetycheck_State` → "Safety check state").
pub(crate) fn metric_name(metric: &str) -> String {
    if let Some((_, name)) = NAMES.iter().find(|(m, _)| *m == metric) {
        return (*name).to_string();
    }
    if let Some(n) = metric.strip_prefix(metric::SOC_MODULE_PREFIX) {
        return format!("Module {} state of charge", words(n));
    }
    if let Some(field) = metric.strip_prefix(metric::SAFETYCHECK_PREFIX) {
        return sentence(&format!("safety check {}", words(field)));
    }
    sentence(&words(metric))
}

/// The inverter's alarm flags, by what they mean.
const ALARMS: &[(&str, &str)] = &[
    ("fan_lock", "Fan locked"),
    ("initial_fail", "Start-up failed"),
    ("battery_weak", "Battery weak"),
    ("grid_ip_voltage_outofrange", "Grid voltage out of range"),
    ("grid_ip_freq_outofrange", "Grid frequency out of range"),
    ("battery_discharge_low", "Battery discharged too low"),
    ("battery_low", "Battery low"),
    ("battery_under", "Battery under voltage"),
    ("pv_loss", "Solar input lost"),
    ("pv1_loss", "Solar input 1 lost"),
    ("pv2_loss", "Solar input 2 lost"),
    ("pv_low", "Solar input low"),
    ("grid_freq_under_limit", "Grid frequency too low"),
    ("grid_freq_over_limit", "Grid frequency too high"),
    ("grid_voltage_under_limit", "Grid voltage too low"),
    ("grid_voltage_over_limit", "Grid voltage too high"),
    ("feeding_av_voltage_over", "Feed-in voltage too high"),
    ("ground_loss", "Earth lost"),
    ("islanding_detect", "Islanding detected"),
    ("no_battery", "No battery"),
    ("over_temperature", "Over temperature"),
    ("overload", "Overload"),
    ("external_flash_fail", "External flash failed"),
];

/// The entity name of an alarm flag: what it means, with no trailing
/// "alarm" (`device_class: problem` says so already). A flag the P3 writes
/// with an `_alarm` suffix is the same flag; one not known is spelled out
/// from its words (`outofrange` → "out of range", `freq` → "frequency").
pub(crate) fn alarm_name(flag: &str) -> String {
    let bare = flag
        .strip_suffix("_alarm")
        .filter(|b| !b.is_empty())
        .unwrap_or(flag);
    if let Some((_, name)) = ALARMS.iter().find(|(f, _)| *f == bare) {
        return (*name).to_string();
    }
    sentence(&words(bare))
}

/// The P3's codes with a known meaning: (metric, [(code, state name)]).
const ENUMS: &[(&str, &[(&str, &str)])] = &[
    (
        metric::SCHEDULE_EVENT,
        &[
            ("0", "Idle"),
            ("1", "Charge"),
            ("2", "Discharge"),
            ("3", "Force charge"),
            ("4", "Force discharge"),
        ],
    ),
    (metric::EPS_MODE, &[("0", "Disabled"), ("1", "Enabled")]),
    (metric::EPS_SCHEDULE_EVENT, &[("0", "Off"), ("1", "On")]),
];

/// The named states of `metric`, when it is a code whose meaning is known
/// (`shared/spec/p3-topics.md`): Home Assistant shows it as an `enum`.
pub(crate) fn states(metric: &str) -> Option<&'static [(&'static str, &'static str)]> {
    ENUMS.iter().find(|(m, _)| *m == metric).map(|(_, s)| *s)
}

/// Home Assistant's template from the flat topic's number to the state's
/// name; a code not in the table is "unknown" (the flat topic, the API and
/// `/metrics` keep the number).
pub(crate) fn state_template(states: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = states
        .iter()
        .map(|(code, name)| format!("'{code}': '{name}'"))
        .collect();
    format!("{{{{ {{{}}}.get(value, 'None') }}}}", pairs.join(", "))
}

/// `a_b c` → `a b c`, with the usual abbreviations spelled out and the
/// acronyms in capitals; control characters (from a P3 field name) as
/// spaces.
fn words(text: &str) -> String {
    text.split(|c: char| c == '_' || c == ' ' || c.is_control())
        .filter(|w| !w.is_empty())
        .map(|w| match w.to_ascii_lowercase().as_str() {
            "soc" | "soh" | "eps" | "bms" | "ffr" | "pv" | "pv1" | "pv2" | "aux" | "ac" | "dc" => {
                w.to_ascii_uppercase()
            }
            "temp" => "temperature".to_string(),
            "freq" => "frequency".to_string(),
            "outofrange" => "out of range".to_string(),
            "chg" => "charge".to_string(),
            "dchg" => "discharge".to_string(),
            "ip" => String::new(),
            _ => w.to_ascii_lowercase(),
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first letter in capitals.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_like_a_product() {
        assert_eq!(metric_name("grid_power"), "Grid power");
        assert_eq!(metric_name("soc"), "State of charge");
        assert_eq!(metric_name("soc_module_4"), "Module 4 state of charge");
        assert_eq!(metric_name("safetycheck_State"), "Safety check state");
        assert_eq!(metric_name("safetycheck_Result"), "Safety check result");
        assert_eq!(
            metric_name("safetycheck_max_charge_power"),
            "Safety check max charge power"
        );
        assert_eq!(metric_name("inverter_temp"), "Inverter temperature");
        assert_eq!(metric_name("a\nb"), "A b");
    }

    #[test]
    fn alarms_are_named_for_what_they_mean() {
        assert_eq!(
            alarm_name("grid_ip_freq_outofrange_alarm"),
            "Grid frequency out of range"
        );
        assert_eq!(
            alarm_name("grid_ip_freq_outofrange"),
            "Grid frequency out of range"
        );
        assert_eq!(alarm_name("fan_lock"), "Fan locked");
        // Not known: its words, spelled out, still no "alarm".
        assert_eq!(
            alarm_name("bus_ip_volt_outofrange_alarm"),
            "Bus volt out of range"
        );
        assert_eq!(alarm_name("alarm"), "Alarm");
    }

    #[test]
    fn codes_with_a_meaning_have_named_states() {
        let schedule = states("schedule_event").expect("a code");
        assert_eq!(schedule[0], ("0", "Idle"));
        assert_eq!(
            state_template(states("eps_mode").expect("a code")),
            "{{ {'0': 'Disabled', '1': 'Enabled'}.get(value, 'None') }}"
        );
        assert_eq!(states("ffr_controller_state"), None);
        assert_eq!(states("grid_power"), None);
    }
}
