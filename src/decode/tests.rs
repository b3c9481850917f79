//! The decoder against `shared/spec/p3-topics.md`: every topic, its
//! examples, tables and variants. Routing and hostile input are in
//! `tests_hostile.rs`, which shares the helpers here.

use super::*;

pub(super) const DEV: &str = "PV001001DEV";

pub(super) fn topic(suffix: &str) -> String {
    format!("pv/PV3/{DEV}/{suffix}")
}

/// Decodes and returns the measurements sorted by name, plus the rest.
pub(super) fn run(suffix: &str, payload: &str) -> Decoded {
    let t = topic(suffix);
    match decode(&t, payload.as_bytes()) {
        Ok(Outcome::Decoded {
            device,
            suffix: s,
            mut decoded,
        }) => {
            assert_eq!(device, DEV);
            assert_eq!(s, suffix);
            decoded.measurements.sort_by(|a, b| a.metric.cmp(&b.metric));
            decoded
        }
        other => panic!("{suffix} {payload}: expected a decode, got {other:?}"),
    }
}

/// (metric, value, unit) triples, sorted by metric.
pub(super) fn ms(suffix: &str, payload: &str) -> Vec<(String, f64, &'static str)> {
    run(suffix, payload)
        .measurements
        .into_iter()
        .map(|m| (m.metric.into_owned(), m.value, m.unit))
        .collect()
}

pub(super) fn m(metric: &str, value: f64, unit: &'static str) -> (String, f64, &'static str) {
    (metric.to_owned(), value, unit)
}

pub(super) fn err(suffix: &str, payload: &[u8]) -> DecodeError {
    match decode(&topic(suffix), payload) {
        Err(e) => e,
        Ok(o) => panic!("{suffix}: expected an error, got {o:?}"),
    }
}

// ----------------------------------------------------------------- bms/soc --

#[test]
fn soc_aggregate_list() {
    assert_eq!(
        ms(
            "bms/soc",
            r#"[{"measurement":"StateOfCharge","value":9700}]"#
        ),
        vec![m("soc", 97.0, "%")]
    );
    // Other measurements in the list are ignored (counted as skipped).
    let d = run(
        "bms/soc",
        r#"[{"measurement":"Other","value":1},{"measurement":"StateOfCharge","value":"9650"}]"#,
    );
    assert_eq!(d.measurements, vec![Measurement::new("soc", 96.5, "%")]);
    assert_eq!(d.skipped, 1);
    assert!(run("bms/soc", "[]").is_empty());
}

#[test]
fn soc_per_module_is_never_the_system_soc() {
    assert_eq!(
        ms("bms/soc", r#"{"module_addr":4,"StateOfCharge":8200}"#),
        vec![m("soc_module_4", 82.0, "%")]
    );
    assert_eq!(
        ms("bms/soc", r#"{"module_addr":"12","StateOfCharge":"8150"}"#),
        vec![m("soc_module_12", 81.5, "%")]
    );
    assert_eq!(
        ms("bms/soc", r#"{"module_addr":"007","StateOfCharge":100}"#),
        vec![m("soc_module_7", 1.0, "%")]
    );
    // Even with usable_soc present, a module message stays a module message.
    assert_eq!(
        ms(
            "bms/soc",
            r#"{"module_addr":0,"usable_soc":9700,"StateOfCharge":8200}"#
        ),
        vec![m("soc_module_0", 82.0, "%")]
    );
}

#[test]
fn soc_bad_module_addr_skips_the_message() {
    for addr in [
        r#"-1"#, r#"1.5"#, r#""4a""#, r#""""#, r#"" 4""#, "null", "true", "[4]", r#""-4""#,
    ] {
        let payload = format!(r#"{{"module_addr":{addr},"StateOfCharge":8200}}"#);
        let d = run("bms/soc", &payload);
        assert!(d.is_empty(), "{payload}");
        assert_eq!(d.skipped, 1, "{payload}");
    }
}

#[test]
fn soc_legacy_objects() {
    assert_eq!(
        ms("bms/soc", r#"{"usable_soc":9700}"#),
        vec![m("soc", 97.0, "%")]
    );
    assert_eq!(
        ms("bms/soc", r#"{"StateOfCharge":9700}"#),
        vec![m("soc", 97.0, "%")]
    );
    assert_eq!(
        ms("bms/soc", r#"{"StateOfCharge":5000,"usable_soc":9700}"#),
        vec![m("soc", 97.0, "%")]
    );
    assert!(run("bms/soc", r#"{"something":"else"}"#).is_empty());
}

#[test]
fn soc_wrong_shapes_are_errors() {
    for payload in [r#""97""#, "97", "null", "true"] {
        let e = err("bms/soc", payload.as_bytes());
        assert!(matches!(e.reason, Reason::WrongShape { .. }), "{payload}");
    }
}

// --------------------------------------------------- inverter/measurements --

pub(super) const INVERTER: &str = r#"[
 {"channel":"BATTERY","measurement":"Voltage","type":"Dc","value":49800},
 {"channel":"BATTERY","measurement":"ChargeCurrent","type":"Dc","value":-1200},
 {"channel":"BATTERY","measurement":"Capacity","type":"Percent","value":77},
 {"channel":"GRID","measurement":"Voltage","type":"Ac","value":225800},
 {"channel":"GRID","measurement":"Frequency","type":"Ac","value":50000},
 {"channel":"GRID","measurement":"Power","type":"Active","value":-395250},
 {"channel":"OUTPUT","measurement":"Voltage","type":"Ac","value":"230100"},
 {"channel":"OUTPUT","measurement":"Frequency","value":50010},
 {"channel":"OUTPUT","measurement":"Power","type":"Active","value":150000},
 {"channel":"OUTPUT","measurement":"Power","type":"Apparent","value":180500}
]"#;

#[test]
fn inverter_measurements_table() {
    assert_eq!(
        ms("inverter/measurements", INVERTER),
        vec![
            m("battery_capacity", 77.0, "%"),
            m("battery_current", -1.2, "A"),
            m("battery_voltage", 49.8, "V"),
            m("grid_frequency", 50.0, "Hz"),
            m("grid_power_inverter", -395.25, "W"),
            m("grid_voltage", 225.8, "V"),
            m("output_active_power", 150.0, "W"),
            m("output_apparent_power", 180.5, "VA"),
            m("output_frequency", 50.01, "Hz"),
            m("output_voltage", 230.1, "V"),
        ]
    );
}

#[test]
fn inverter_grid_power_never_uses_the_ct_name() {
    let names: Vec<String> = ms("inverter/measurements", INVERTER)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert!(!names.contains(&"grid_power".to_string()));
}

#[test]
fn inverter_bad_items_are_skipped_and_good_ones_kept() {
    let d = run(
        "inverter/measurements",
        r#"[
          {"channel":"BATTERY","measurement":"Voltage","value":null},
          {"channel":"BATTERY","measurement":"Voltage","value":"NaN"},
          {"channel":"BATTERY","measurement":"Voltage","value":"inf"},
          {"channel":"BATTERY","measurement":"Voltage","value":"0x10"},
          {"channel":"BATTERY","measurement":"Voltage","value":true},
          {"channel":"BATTERY","measurement":"Voltage","value":[1]},
          {"channel":"BATTERY","measurement":"Voltage"},
          {"channel":"SOLAR","measurement":"Voltage","value":1},
          {"channel":"GRID","measurement":"Voltage","type":"Dc","value":1},
          {"channel":"GRID","measurement":"Power","type":"Reactive","value":1},
          {"channel":"GRID","measurement":"Power","value":1},
          {"measurement":"Voltage","value":1},
          {"channel":5,"measurement":"Voltage","value":1},
          {"channel":"BATTERY","measurement":null,"value":1},
          "not an object", 42, null, [],
          {"channel":"BATTERY","measurement":"Voltage","type":"Dc","value":" 3e4 "}
        ]"#,
    );
    assert_eq!(
        d.measurements,
        vec![Measurement::new("battery_voltage", 30.0, "V")]
    );
    assert_eq!(d.skipped, 18);
}

#[test]
fn inverter_measurements_must_be_a_list() {
    let e = err("inverter/measurements", br#"{"channel":"BATTERY"}"#);
    assert_eq!(
        e.reason,
        Reason::WrongShape {
            expected: "a list",
            found: "an object"
        }
    );
    assert_eq!(e.topic, topic("inverter/measurements"));
    assert!(e.to_string().contains("inverter/measurements"));
}

#[test]
fn values_not_finite_after_scaling_are_skipped() {
    let d = run(
        "inverter/measurements",
        r#"[{"channel":"BATTERY","measurement":"Capacity","value":"1e400"},
            {"channel":"BATTERY","measurement":"Voltage","value":1.7e308}]"#,
    );
    // 1e400 parses to infinity; 1.7e308 / 1000 is finite and kept.
    assert_eq!(
        d.measurements,
        vec![Measurement::new("battery_voltage", 1.7e308 / 1000.0, "V")]
    );
    assert_eq!(d.skipped, 1);
}

// --------------------------------------------------------- inverter/alarms --

#[test]
fn alarms_flags_temperatures_and_count() {
    let d = run(
        "inverter/alarms",
        r#"{"timestamp":"2025-12-18T07:46:49","warnings_summary":"x",
            "fan_lock":"0","battery_low":"1","pv_loss":0,"overload":1,
            "ground_loss":false,"islanding_detect":true,"new_flag_from_firmware":"1",
            "inverter_temperature":"38","boost_temperature":41,"inner_temperature":" 35.5 ",
            "weird":"2","other":null,"yes":"yes","list":[1]}"#,
    );
    assert_eq!(
        d.measurements,
        vec![
            Measurement::new("alarm_count", 4.0, ""),
            Measurement::new("boost_temp", 41.0, "C"),
            Measurement::new("inner_temp", 35.5, "C"),
            Measurement::new("inverter_temp", 38.0, "C"),
        ]
    );
    let alarms = d.alarms.expect("flags present");
    let expected: AlarmStates = [
        ("battery_low", true),
        ("fan_lock", false),
        ("ground_loss", false),
        ("islanding_detect", true),
        ("new_flag_from_firmware", true),
        ("overload", true),
        ("pv_loss", false),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(alarms, expected);
    assert_eq!(d.skipped, 4);
}

#[test]
fn alarms_without_flags_send_temperatures_only() {
    let d = run(
        "inverter/alarms",
        r#"{"inverter_temperature":40,"timestamp":"x"}"#,
    );
    assert_eq!(
        d.measurements,
        vec![Measurement::new("inverter_temp", 40.0, "C")]
    );
    assert_eq!(d.alarms, None);
    let d = run("inverter/alarms", r#"{}"#);
    assert!(d.is_empty());
}

#[test]
fn alarms_all_clear_still_reports_states_and_a_zero_count() {
    let d = run("inverter/alarms", r#"{"fan_lock":"0","battery_low":false}"#);
    assert_eq!(
        d.measurements,
        vec![Measurement::new("alarm_count", 0.0, "")]
    );
    assert_eq!(d.alarms.map(|a| a.len()), Some(2));
}

#[test]
fn alarms_temperature_names_are_the_dashboards() {
    let names: Vec<String> = ms(
        "inverter/alarms",
        r#"{"inverter_temperature":1,"boost_temperature":2,"inner_temperature":3}"#,
    )
    .into_iter()
    .map(|(n, _, _)| n)
    .collect();
    assert_eq!(names, ["boost_temp", "inner_temp", "inverter_temp"]);
}

#[test]
fn alarms_must_be_an_object() {
    assert!(matches!(
        err("inverter/alarms", b"[]").reason,
        Reason::WrongShape { .. }
    ));
}

// --------------------------------------------------------- inverter/charge --

#[test]
fn charge_power() {
    assert_eq!(
        ms("inverter/charge", r#"{"power":591}"#),
        vec![m("battery_power", 591.0, "W")]
    );
    assert_eq!(
        ms("inverter/charge", r#"{"power":"-1200"}"#),
        vec![m("battery_power", -1200.0, "W")]
    );
    let d = run("inverter/charge", r#"{"power":null}"#);
    assert!(d.is_empty());
    assert_eq!(d.skipped, 1);
    assert!(
        err("inverter/charge", b"591")
            .to_string()
            .contains("expected an object")
    );
}

// ---------------------------------------------------------- pylontech/info --

#[test]
fn pylontech_info_table() {
    let payload = r#"[
      {"measurement":"StateOfHealth","type":"Avg","value":92},
      {"measurement":"StateOfHealth","type":"Min","value":91},
      {"measurement":"CycleNumber","type":"Avg","value":844},
      {"measurement":"CycleNumber","type":"Max","value":877},
      {"measurement":"CellTemperature","type":"Avg","value":20100},
      {"measurement":"CellTemperature","type":"Max","value":20900},
      {"measurement":"CellTemperature","type":"Min","value":19400},
      {"measurement":"BMSTemperature","type":"Avg","value":20300},
      {"measurement":"BMSTemperature","type":"Max","value":20800},
      {"measurement":"CellVoltage","type":"Max","value":3317},
      {"measurement":"CellVoltage","type":"Min","value":3315},
      {"measurement":"ModuleVoltage","type":"Avg","value":49746},
      {"measurement":"Current","type":"Total","value":-10230},
      {"measurement":"ChargeVoltageLimit","type":"Max","value":53250},
      {"measurement":"DischargeVoltageLimit","value":45000},
      {"measurement":"ChargeCurrentLimit","type":"Max","value":60000},
      {"measurement":"DischargeCurrentLimit","type":"Max","value":-150000}
    ]"#;
    assert_eq!(
        ms("pylontech/info", payload),
        vec![
            m("battery_current_total", -10.23, "A"),
            m("bms_temp_avg", 20.3, "C"),
            m("bms_temp_max", 20.8, "C"),
            m("cell_temp_avg", 20.1, "C"),
            m("cell_temp_max", 20.9, "C"),
            m("cell_temp_min", 19.4, "C"),
            m("cell_voltage_max", 3317.0, "mV"),
            m("cell_voltage_min", 3315.0, "mV"),
            m("charge_current_limit", 60.0, "A"),
            m("charge_voltage_limit", 53.25, "V"),
            m("cycle_count_avg", 844.0, "cycles"),
            m("cycle_count_max", 877.0, "cycles"),
            m("discharge_current_limit", 150.0, "A"),
            m("discharge_voltage_limit", 45.0, "V"),
            m("module_voltage_avg", 49.746, "V"),
            m("soh", 92.0, "%"),
            m("soh_min", 91.0, "%"),
        ]
    );
}

#[test]
fn pylontech_unknown_types_are_skipped() {
    let d = run(
        "pylontech/info",
        r#"[{"measurement":"StateOfHealth","type":"Max","value":1},
            {"measurement":"CellTemperature","value":1},
            {"measurement":"Mystery","type":"Avg","value":1},
            {"type":"Avg","value":1}]"#,
    );
    assert!(d.is_empty());
    assert_eq!(d.skipped, 4);
}

// -------------------------------------------------------- ffr/measurements --

#[test]
fn ct_clamp_channels_are_swapped() {
    let payload = r#"[
      {"channel":"LOCAL","measurement":"Power","type":"Active","value":11736},
      {"channel":"HOUSE","measurement":"Power","type":"Active","value":-406464},
      {"channel":"AUX1","measurement":"Power","type":"Active","value":-1480},
      {"channel":"HOUSE","measurement":"Power","type":"Reactive","value":5},
      {"channel":"HOUSE","measurement":"Voltage","type":"Active","value":5},
      {"channel":"AUX2","measurement":"Power","type":"Active","value":5}
    ]"#;
    let d = run("ffr/measurements", payload);
    assert_eq!(
        d.measurements,
        vec![
            Measurement::new("aux_power", -1.48, "W"),
            Measurement::new("grid_power", -406.464, "W"),
            Measurement::new("house_power", 11.736, "W"),
        ]
    );
    assert_eq!(d.skipped, 3);
}

// -------------------------------------------------------- small status ones --

#[test]
fn schedule_event() {
    assert_eq!(
        ms(
            "schedule/event",
            r#"{"time":"2025-12-18T07:46:49","event":0,"setpoint":0}"#
        ),
        vec![
            m("schedule_event", 0.0, ""),
            m("schedule_setpoint", 0.0, "W")
        ]
    );
    assert_eq!(
        ms("schedule/event", r#"{"event":"2","setpoint":-3000}"#),
        vec![
            m("schedule_event", 2.0, ""),
            m("schedule_setpoint", -3000.0, "W")
        ]
    );
}

#[test]
fn max_power_object_list_and_empty_list() {
    let want = vec![
        m("max_charge_power", 4792.0, "W"),
        m("max_discharge_power", -6750.0, "W"),
    ];
    assert_eq!(
        ms("m4/maxpower", r#"[{"ChgPower":4792,"DchgPower":-6750}]"#),
        want
    );
    assert_eq!(
        ms("m4/maxpower", r#"{"ChgPower":4792,"DchgPower":-6750}"#),
        want
    );
    assert!(run("m4/maxpower", "[]").is_empty());
    assert!(matches!(
        err("m4/maxpower", b"[1]").reason,
        Reason::WrongShape { .. }
    ));
}

#[test]
fn eps_status() {
    let want = vec![m("eps_mode", 0.0, ""), m("eps_reserve", 20.0, "%")];
    assert_eq!(ms("eps/status", r#"{"Reserve":20,"Mode":0}"#), want);
    assert_eq!(ms("eps/status", r#"[{"Reserve":"20","Mode":"0"}]"#), want);
    assert!(run("eps/status", "[]").is_empty());
}

#[test]
fn eps_schedule_event() {
    assert_eq!(
        ms(
            "eps_schedule/event",
            r#"{"reserved_soc":0,"time":"x","event":"off"}"#
        ),
        vec![
            m("eps_schedule_event", 0.0, ""),
            m("eps_schedule_reserve", 0.0, "%")
        ]
    );
    assert_eq!(
        ms(
            "eps_schedule/event",
            r#"[{"reserved_soc":30,"event":"ON"}]"#
        ),
        vec![
            m("eps_schedule_event", 1.0, ""),
            m("eps_schedule_reserve", 30.0, "%")
        ]
    );
    for other in [r#""yes""#, "1", "true", "null", r#"" on""#] {
        let payload = format!(r#"{{"event":{other}}}"#);
        assert_eq!(
            ms("eps_schedule/event", &payload),
            vec![m("eps_schedule_event", 0.0, "")],
            "{payload}"
        );
    }
    assert_eq!(
        ms("eps_schedule/event", r#"{"reserved_soc":5}"#),
        vec![m("eps_schedule_reserve", 5.0, "%")]
    );
}

#[test]
fn ffr_controller_state() {
    assert_eq!(
        ms("ffrcontroller/state", r#"{"State":0}"#),
        vec![m("ffr_controller_state", 0.0, "")]
    );
}

#[test]
fn safetycheck_state_takes_every_numeric_field() {
    let d = run(
        "safetycheck/state",
        r#"{"State":1,"Code":"42","Flag":true,"Text":"ok","Nothing":null,"Obj":{}}"#,
    );
    assert_eq!(
        d.measurements,
        vec![
            Measurement::new("safetycheck_Code", 42.0, ""),
            Measurement::new("safetycheck_State", 1.0, ""),
        ]
    );
    assert_eq!(
        ms("safetycheck/state", r#"[{"State":3}]"#),
        vec![m("safetycheck_State", 3.0, "")]
    );
}

#[test]
fn safetycheck_state_refuses_names_the_api_would_reject() {
    let long_key = "k".repeat(100);
    let d = run(
        "safetycheck/state",
        &format!(r#"{{"{long_key}":1,"ok":2}}"#),
    );
    assert_eq!(
        d.measurements,
        vec![Measurement::new("safetycheck_ok", 2.0, "")]
    );
    assert_eq!(d.skipped, 1);
}

#[test]
fn safetycheck_measurements() {
    assert_eq!(
        ms(
            "safetycheck/measurements",
            r#"[{"measurement":"PowerRating","type":"Battery","value":5000000},
                {"measurement":"ChgPower","type":"Max","value":4800000},
                {"measurement":"DchgPower","type":"Max","value":6750000},
                {"measurement":"ChgPower","type":"Min","value":1}]"#
        ),
        vec![
            m("safetycheck_max_charge_power", 4800.0, "W"),
            m("safetycheck_max_discharge_power", 6750.0, "W"),
            m("safetycheck_power_rating", 5000.0, "W"),
        ]
    );
}
