//! `inverter/measurements`, `inverter/alarms`, `inverter/charge`.

use super::json::Json;
use super::metric;
use super::{Decoded, Reason, expect_list, expect_object, row};
use crate::reading::AlarmStates;

pub(super) fn measurements(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.items(expect_list(json)?, |item| {
        let (Some(channel), Some(measurement)) = (item.channel, item.measurement) else {
            return None;
        };
        Some(match (channel, measurement, item.kind) {
            ("BATTERY", "Voltage", _) => row(metric::BATTERY_VOLTAGE, 1000.0, "V"),
            ("BATTERY", "ChargeCurrent", _) => row(metric::BATTERY_CURRENT, 1000.0, "A"),
            ("BATTERY", "Capacity", _) => row(metric::BATTERY_CAPACITY, 1.0, "%"),
            ("GRID", "Voltage", Some("Ac")) => row(metric::GRID_VOLTAGE, 1000.0, "V"),
            ("GRID", "Frequency", _) => row(metric::GRID_FREQUENCY, 1000.0, "Hz"),
            // Not `grid_power`: that name belongs to the CT clamp.
            ("GRID", "Power", Some("Active")) => row(metric::GRID_POWER_INVERTER, 1000.0, "W"),
            ("OUTPUT", "Voltage", _) => row(metric::OUTPUT_VOLTAGE, 1000.0, "V"),
            ("OUTPUT", "Frequency", _) => row(metric::OUTPUT_FREQUENCY, 1000.0, "Hz"),
            ("OUTPUT", "Power", Some("Active")) => row(metric::OUTPUT_ACTIVE_POWER, 1000.0, "W"),
            ("OUTPUT", "Power", Some("Apparent")) => {
                row(metric::OUTPUT_APPARENT_POWER, 1000.0, "VA")
            }
            _ => return None,
        })
    });
    Ok(())
}

/// Keys of `inverter/alarms` that carry a temperature, and the metric names
/// the dashboard reads them under.
const TEMPERATURES: &[(&str, &str)] = &[
    ("inverter_temperature", metric::INVERTER_TEMP),
    ("boost_temperature", metric::BOOST_TEMP),
    ("inner_temperature", metric::INNER_TEMP),
];

pub(super) fn alarms(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    let mut flags = AlarmStates::new();
    // A repeated key: the last one wins, as for every other lookup.
    for (key, value) in expect_object(json)?.unique_fields() {
        if let Some((_, metric)) = TEMPERATURES.iter().find(|(k, _)| *k == key) {
            match value.as_number() {
                Some(n) => out.push(*metric, n, "C"),
                None => out.skipped += 1,
            }
            continue;
        }
        if key == "timestamp" || key == "warnings_summary" {
            continue;
        }
        match flag_value(value) {
            Some(active) => {
                flags.insert(key.to_owned(), active);
            }
            None => out.skipped += 1,
        }
    }
    if !flags.is_empty() {
        let active = flags.values().filter(|on| **on).count();
        out.push(metric::ALARM_COUNT, active as f64, "");
        out.alarms = Some(flags);
    }
    Ok(())
}

/// `"1"`/`"0"`, `1`/`0` or `true`/`false`; anything else is not a flag.
fn flag_value(value: &Json<'_>) -> Option<bool> {
    match value {
        Json::Str(s) if s == "1" => Some(true),
        Json::Str(s) if s == "0" => Some(false),
        Json::Num(n) if *n == 1.0 => Some(true),
        Json::Num(n) if *n == 0.0 => Some(false),
        Json::Bool(b) => Some(*b),
        _ => None,
    }
}

pub(super) fn charge(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.field(
        expect_object(json)?,
        "power",
        metric::BATTERY_POWER,
        1.0,
        "W",
    );
    Ok(())
}
