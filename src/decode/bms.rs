//! `pylontech/info`: battery health from the Pylontech BMS.

use super::json::Json;
use super::metric;
use super::{Decoded, Reason, Row, expect_list, row};

pub(super) fn pylontech_info(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    out.items(expect_list(json)?, |item| {
        let measurement = item.measurement?;
        Some(match (measurement, item.kind) {
            ("StateOfHealth", Some("Avg")) => row(metric::SOH, 1.0, "%"),
            ("StateOfHealth", Some("Min")) => row(metric::SOH_MIN, 1.0, "%"),
            ("CycleNumber", Some("Avg")) => row(metric::CYCLE_COUNT_AVG, 1.0, "cycles"),
            ("CycleNumber", Some("Max")) => row(metric::CYCLE_COUNT_MAX, 1.0, "cycles"),
            ("CellTemperature", Some("Avg")) => row(metric::CELL_TEMP_AVG, 1000.0, "C"),
            ("CellTemperature", Some("Max")) => row(metric::CELL_TEMP_MAX, 1000.0, "C"),
            ("CellTemperature", Some("Min")) => row(metric::CELL_TEMP_MIN, 1000.0, "C"),
            ("BMSTemperature", Some("Avg")) => row(metric::BMS_TEMP_AVG, 1000.0, "C"),
            ("BMSTemperature", Some("Max")) => row(metric::BMS_TEMP_MAX, 1000.0, "C"),
            // Already in millivolts.
            ("CellVoltage", Some("Max")) => row(metric::CELL_VOLTAGE_MAX, 1.0, "mV"),
            ("CellVoltage", Some("Min")) => row(metric::CELL_VOLTAGE_MIN, 1.0, "mV"),
            ("ModuleVoltage", Some("Avg")) => row(metric::MODULE_VOLTAGE_AVG, 1000.0, "V"),
            // Signed: negative while discharging.
            ("Current", Some("Total")) => row(metric::BATTERY_CURRENT_TOTAL, 1000.0, "A"),
            ("ChargeVoltageLimit", _) => row(metric::CHARGE_VOLTAGE_LIMIT, 1000.0, "V"),
            ("DischargeVoltageLimit", _) => row(metric::DISCHARGE_VOLTAGE_LIMIT, 1000.0, "V"),
            ("ChargeCurrentLimit", _) => row(metric::CHARGE_CURRENT_LIMIT, 1000.0, "A"),
            // Published negative; the dashboard wants the magnitude.
            ("DischargeCurrentLimit", _) => Row {
                absolute: true,
                ..row(metric::DISCHARGE_CURRENT_LIMIT, 1000.0, "A")
            },
            _ => return None,
        })
    });
    Ok(())
}
