//! Small status topics: schedule, power limits, EPS, safety check.

use super::json::Json;
use super::{Decoded, MAX_METRIC_NAME, Reason, expect_list, expect_object, object_or_first, row};

pub(super) fn schedule_event(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    // `time` is the controller's zone-less local time: never a timestamp.
    let obj = expect_object(json)?;
    out.field(obj, "event", "schedule_event", 1.0, "");
    out.field(obj, "setpoint", "schedule_setpoint", 1.0, "W");
    Ok(())
}

pub(super) fn max_power(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    if let Some(obj) = object_or_first(json)? {
        out.field(obj, "ChgPower", "max_charge_power", 1.0, "W");
        out.field(obj, "DchgPower", "max_discharge_power", 1.0, "W");
    }
    Ok(())
}

pub(super) fn eps_status(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    if let Some(obj) = object_or_first(json)? {
        out.field(obj, "Reserve", "eps_reserve", 1.0, "%");
        out.field(obj, "Mode", "eps_mode", 1.0, "");
    }
    Ok(())
}

pub(super) fn eps_schedule_event(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    if let Some(obj) = object_or_first(json)? {
        out.field(obj, "reserved_soc", "eps_schedule_reserve", 1.0, "%");
        if let Some(event) = obj.get("event") {
            let on = event.as_str().is_some_and(|s| s.eq_ignore_ascii_case("on"));
            out.push("eps_schedule_event", if on { 1.0 } else { 0.0 }, "");
        }
    }
    Ok(())
}

pub(super) fn safetycheck_state(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    let Some(obj) = object_or_first(json)? else {
        return Ok(());
    };
    // A repeated key: the last one wins, as for every other lookup.
    for (key, value) in obj.unique_fields() {
        let Some(n) = value.as_number() else {
            continue; // other fields are ignored, not skipped
        };
        let metric = format!("safetycheck_{key}");
        if metric.len() > MAX_METRIC_NAME {
            // The API would refuse the whole batch for one long name.
            out.skipped += 1;
            continue;
        }
        out.push(metric, n, "");
    }
    Ok(())
}

pub(super) fn safetycheck_measurements(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.items(expect_list(json)?, |item| {
        Some(match (item.measurement?, item.kind) {
            ("PowerRating", Some("Battery")) => row("safetycheck_power_rating", 1000.0, "W"),
            ("ChgPower", Some("Max")) => row("safetycheck_max_charge_power", 1000.0, "W"),
            ("DchgPower", Some("Max")) => row("safetycheck_max_discharge_power", 1000.0, "W"),
            _ => return None,
        })
    });
    Ok(())
}
