//! Small status topics: schedule, power limits, EPS, safety check.

use super::json::Json;
use super::metric;
use super::{Decoded, MAX_METRIC_NAME, Reason, expect_list, expect_object, object_or_first, row};

pub(super) fn schedule_event(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    // `time` is the controller's zone-less local time: never a timestamp.
    let obj = expect_object(json)?;
    out.field(obj, "event", metric::SCHEDULE_EVENT, 1.0, "");
    out.field(obj, "setpoint", metric::SCHEDULE_SETPOINT, 1.0, "W");
    Ok(())
}

pub(super) fn max_power(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    if let Some(obj) = object_or_first(json)? {
        out.field(obj, "ChgPower", metric::MAX_CHARGE_POWER, 1.0, "W");
        out.field(obj, "DchgPower", metric::MAX_DISCHARGE_POWER, 1.0, "W");
    }
    Ok(())
}

pub(super) fn eps_status(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    if let Some(obj) = object_or_first(json)? {
        out.field(obj, "Reserve", metric::EPS_RESERVE, 1.0, "%");
        out.field(obj, "Mode", metric::EPS_MODE, 1.0, "");
    }
    Ok(())
}

pub(super) fn eps_schedule_event(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    if let Some(obj) = object_or_first(json)? {
        out.field(obj, "reserved_soc", metric::EPS_SCHEDULE_RESERVE, 1.0, "%");
        if let Some(event) = obj.get("event") {
            let on = event.as_str().is_some_and(|s| s.eq_ignore_ascii_case("on"));
            out.push(metric::EPS_SCHEDULE_EVENT, if on { 1.0 } else { 0.0 }, "");
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
        let name = format!("{}{key}", metric::SAFETYCHECK_PREFIX);
        if name.len() > MAX_METRIC_NAME {
            // The API would refuse the whole batch for one long name.
            out.skipped += 1;
            continue;
        }
        out.push(name, n, "");
    }
    Ok(())
}

pub(super) fn safetycheck_measurements(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.items(expect_list(json)?, |item| {
        Some(match (item.measurement?, item.kind) {
            ("PowerRating", Some("Battery")) => row(metric::SAFETYCHECK_POWER_RATING, 1000.0, "W"),
            ("ChgPower", Some("Max")) => row(metric::SAFETYCHECK_MAX_CHARGE_POWER, 1000.0, "W"),
            ("DchgPower", Some("Max")) => row(metric::SAFETYCHECK_MAX_DISCHARGE_POWER, 1000.0, "W"),
            _ => return None,
        })
    });
    Ok(())
}
