//! `ffr/measurements` (the CT clamps) and `ffrcontroller/state`.

use super::json::Json;
use super::metric;
use super::{Decoded, Reason, expect_list, expect_object, row};

pub(super) fn measurements(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.items(expect_list(json)?, |item| {
        if item.measurement != Some("Power") || item.kind != Some("Active") {
            return None;
        }
        // The controller's labels are swapped relative to what they measure.
        Some(match item.channel? {
            "LOCAL" => row(metric::HOUSE_POWER, 1000.0, "W"),
            "HOUSE" => row(metric::GRID_POWER, 1000.0, "W"),
            "AUX1" => row(metric::AUX_POWER, 1000.0, "W"),
            _ => return None,
        })
    });
    Ok(())
}

pub(super) fn controller_state(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.field(
        expect_object(json)?,
        "State",
        metric::FFR_CONTROLLER_STATE,
        1.0,
        "",
    );
    Ok(())
}
