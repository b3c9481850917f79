//! `pylontech/info`: battery health from the Pylontech BMS.

use super::json::Json;
use super::{Decoded, Reason, Row, expect_list, row};

pub(super) fn pylontech_info(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.items(expect_list(json)?, |item| {
        let measurement = item.measurement?;
        Some(match (measurement, item.kind) {
            ("StateOfHealth", Some("Avg")) => row("soh", 1.0, "%"),
            ("StateOfHealth", Some("Min")) => row("soh_min", 1.0, "%"),
            ("CycleNumber", Some("Avg")) => row("cycle_count_avg", 1.0, "cycles"),
            ("CycleNumber", Some("Max")) => row("cycle_count_max", 1.0, "cycles"),
            ("CellTemperature", Some("Avg")) => row("cell_temp_avg", 1000.0, "C"),
            ("CellTemperature", Some("Max")) => row("cell_temp_max", 1000.0, "C"),
            ("CellTemperature", Some("Min")) => row("cell_temp_min", 1000.0, "C"),
            ("BMSTemperature", Some("Avg")) => row("bms_temp_avg", 1000.0, "C"),
            ("BMSTemperature", Some("Max")) => row("bms_temp_max", 1000.0, "C"),
            // Already in millivolts.
            ("CellVoltage", Some("Max")) => row("cell_voltage_max", 1.0, "mV"),
            ("CellVoltage", Some("Min")) => row("cell_voltage_min", 1.0, "mV"),
            ("ModuleVoltage", Some("Avg")) => row("module_voltage_avg", 1000.0, "V"),
            // Signed: negative while discharging.
            ("Current", Some("Total")) => row("battery_current_total", 1000.0, "A"),
            ("ChargeVoltageLimit", _) => row("charge_voltage_limit", 1000.0, "V"),
            ("DischargeVoltageLimit", _) => row("discharge_voltage_limit", 1000.0, "V"),
            ("ChargeCurrentLimit", _) => row("charge_current_limit", 1000.0, "A"),
            // Published negative; the dashboard wants the magnitude.
            ("DischargeCurrentLimit", _) => Row {
                absolute: true,
                ..row("discharge_current_limit", 1000.0, "A")
            },
            _ => return None,
        })
    });
    Ok(())
}
