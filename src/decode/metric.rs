//! Every metric name pv3 sends, as a constant: the decoder's tables, the
//! energy counters, the census, watch, the outputs and `metric_info` all
//! key on these, so a renamed metric is one edit here and a mistyped one
//! does not compile. The names are PV3 Monitor's (the API stores them and
//! its dashboard reads them): `shared/spec/p3-topics.md` is their contract.

/// `bms/soc`, aggregate or legacy shape: the system's state of charge, %.
pub const SOC: &str = "soc";
/// The SOC filter's raw reading beside a held-back `soc`, %.
pub const SOC_RAW: &str = "soc_raw";
/// `bms/soc`, per-module shape: `soc_module_<addr>`, %.
pub const SOC_MODULE_PREFIX: &str = "soc_module_";

/// `inverter/measurements`, BATTERY.
pub const BATTERY_VOLTAGE: &str = "battery_voltage";
/// `inverter/measurements`, BATTERY charge current.
pub const BATTERY_CURRENT: &str = "battery_current";
/// `inverter/measurements`, BATTERY usable capacity, %.
pub const BATTERY_CAPACITY: &str = "battery_capacity";
/// `inverter/measurements`, GRID.
pub const GRID_VOLTAGE: &str = "grid_voltage";
/// `inverter/measurements`, GRID.
pub const GRID_FREQUENCY: &str = "grid_frequency";
/// `inverter/measurements`, GRID active power as the inverter sees it
/// (not the CT clamp's [`GRID_POWER`]).
pub const GRID_POWER_INVERTER: &str = "grid_power_inverter";
/// `inverter/measurements`, OUTPUT.
pub const OUTPUT_VOLTAGE: &str = "output_voltage";
/// `inverter/measurements`, OUTPUT.
pub const OUTPUT_FREQUENCY: &str = "output_frequency";
/// `inverter/measurements`, OUTPUT active power.
pub const OUTPUT_ACTIVE_POWER: &str = "output_active_power";
/// `inverter/measurements`, OUTPUT apparent power, VA.
pub const OUTPUT_APPARENT_POWER: &str = "output_apparent_power";

/// `inverter/alarms`: the inverter's temperature, °C.
pub const INVERTER_TEMP: &str = "inverter_temp";
/// `inverter/alarms`: the boost stage's temperature, °C.
pub const BOOST_TEMP: &str = "boost_temp";
/// `inverter/alarms`: the inside temperature, °C.
pub const INNER_TEMP: &str = "inner_temp";
/// `inverter/alarms`: how many flags are active.
pub const ALARM_COUNT: &str = "alarm_count";

/// `inverter/charge`: + discharging, − charging, W.
pub const BATTERY_POWER: &str = "battery_power";

/// `pylontech/info`: state of health, average of the modules, %.
pub const SOH: &str = "soh";
/// `pylontech/info`: state of health, weakest module, %.
pub const SOH_MIN: &str = "soh_min";
/// `pylontech/info`: charge cycles, average of the modules.
pub const CYCLE_COUNT_AVG: &str = "cycle_count_avg";
/// `pylontech/info`: charge cycles, most-used module.
pub const CYCLE_COUNT_MAX: &str = "cycle_count_max";
/// `pylontech/info`, °C.
pub const CELL_TEMP_AVG: &str = "cell_temp_avg";
/// `pylontech/info`, °C.
pub const CELL_TEMP_MAX: &str = "cell_temp_max";
/// `pylontech/info`, °C.
pub const CELL_TEMP_MIN: &str = "cell_temp_min";
/// `pylontech/info`, °C.
pub const BMS_TEMP_AVG: &str = "bms_temp_avg";
/// `pylontech/info`, °C.
pub const BMS_TEMP_MAX: &str = "bms_temp_max";
/// `pylontech/info`, mV.
pub const CELL_VOLTAGE_MAX: &str = "cell_voltage_max";
/// `pylontech/info`, mV.
pub const CELL_VOLTAGE_MIN: &str = "cell_voltage_min";
/// `pylontech/info`, V.
pub const MODULE_VOLTAGE_AVG: &str = "module_voltage_avg";
/// `pylontech/info`: − discharging, A.
pub const BATTERY_CURRENT_TOTAL: &str = "battery_current_total";
/// `pylontech/info`, V.
pub const CHARGE_VOLTAGE_LIMIT: &str = "charge_voltage_limit";
/// `pylontech/info`, V.
pub const DISCHARGE_VOLTAGE_LIMIT: &str = "discharge_voltage_limit";
/// `pylontech/info`, A.
pub const CHARGE_CURRENT_LIMIT: &str = "charge_current_limit";
/// `pylontech/info`, A (published negative, sent as its size).
pub const DISCHARGE_CURRENT_LIMIT: &str = "discharge_current_limit";

/// `ffr/measurements`, CT clamp labelled LOCAL: the house, W.
pub const HOUSE_POWER: &str = "house_power";
/// `ffr/measurements`, CT clamp labelled HOUSE: the grid, + import, W.
pub const GRID_POWER: &str = "grid_power";
/// `ffr/measurements`, CT clamp AUX1, W.
pub const AUX_POWER: &str = "aux_power";
/// `ffrcontroller/state`: a code.
pub const FFR_CONTROLLER_STATE: &str = "ffr_controller_state";

/// `schedule/event`: 0 idle, 1 charge, 2 discharge, 3 force charge,
/// 4 force discharge.
pub const SCHEDULE_EVENT: &str = "schedule_event";
/// `schedule/event`, W.
pub const SCHEDULE_SETPOINT: &str = "schedule_setpoint";
/// `m4/maxpower`, W.
pub const MAX_CHARGE_POWER: &str = "max_charge_power";
/// `m4/maxpower`, W.
pub const MAX_DISCHARGE_POWER: &str = "max_discharge_power";
/// `eps/status`: the reserve kept for a power cut, %.
pub const EPS_RESERVE: &str = "eps_reserve";
/// `eps/status`: 1 enabled, 0 disabled.
pub const EPS_MODE: &str = "eps_mode";
/// `eps_schedule/event`, %.
pub const EPS_SCHEDULE_RESERVE: &str = "eps_schedule_reserve";
/// `eps_schedule/event`: 1 on, 0 off.
pub const EPS_SCHEDULE_EVENT: &str = "eps_schedule_event";

/// `safetycheck/state`: `safetycheck_<field>`, the field as published.
pub const SAFETYCHECK_PREFIX: &str = "safetycheck_";
/// `safetycheck/measurements`, W.
pub const SAFETYCHECK_POWER_RATING: &str = "safetycheck_power_rating";
/// `safetycheck/measurements`, W.
pub const SAFETYCHECK_MAX_CHARGE_POWER: &str = "safetycheck_max_charge_power";
/// `safetycheck/measurements`, W.
pub const SAFETYCHECK_MAX_DISCHARGE_POWER: &str = "safetycheck_max_discharge_power";

/// pv3's energy counter: `grid_power` when > 0, kWh.
pub const GRID_IMPORT_ENERGY: &str = "grid_import_energy";
/// pv3's energy counter: −`grid_power` when < 0, kWh.
pub const GRID_EXPORT_ENERGY: &str = "grid_export_energy";
/// pv3's energy counter: `battery_power` when > 0, kWh.
pub const BATTERY_DISCHARGE_ENERGY: &str = "battery_discharge_energy";
/// pv3's energy counter: −`battery_power` when < 0, kWh.
pub const BATTERY_CHARGE_ENERGY: &str = "battery_charge_energy";
/// pv3's energy counter: `house_power` when > 0, kWh.
pub const HOUSE_ENERGY: &str = "house_energy";
