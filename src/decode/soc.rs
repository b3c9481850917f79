//! `bms/soc`: state of charge, in three published shapes.

use super::json::Json;
use super::metric;
use super::{Decoded, Reason, expect_object};

pub(super) fn decode(json: &Json<'_>, out: &mut Decoded) -> Result<(), Reason> {
    if let Json::List(items) = json {
        // Aggregate list: only StateOfCharge items count.
        out.items(items, |item| match item.measurement {
            Some("StateOfCharge") => Some(super::row(metric::SOC, 100.0, "%")),
            _ => None,
        });
        return Ok(());
    }
    let obj = expect_object(json)?;
    if let Some(addr) = obj.get("module_addr") {
        // Per-module reading: never the system SOC.
        let Some(module) = module_number(addr) else {
            out.skipped += 1;
            return Ok(());
        };
        if let Some(v) = obj.get("StateOfCharge") {
            match v.as_number() {
                Some(n) => out.push(
                    format!("{}{module}", metric::SOC_MODULE_PREFIX),
                    n / 100.0,
                    "%",
                ),
                None => out.skipped += 1,
            }
        }
        return Ok(());
    }
    // Legacy object: usable_soc wins over StateOfCharge when both are usable.
    let usable = obj.get("usable_soc").and_then(Json::as_number);
    let plain = obj.get("StateOfCharge").and_then(Json::as_number);
    match usable.or(plain) {
        Some(n) => out.push(metric::SOC, n / 100.0, "%"),
        None if obj.get("usable_soc").is_some() || obj.get("StateOfCharge").is_some() => {
            out.skipped += 1
        }
        None => {}
    }
    Ok(())
}

/// A non-negative integer, as a JSON number or a string of ASCII digits.
fn module_number(addr: &Json<'_>) -> Option<u64> {
    match addr {
        Json::Num(n) if *n >= 0.0 && n.fract() == 0.0 && *n <= 9_007_199_254_740_992.0 => {
            Some(*n as u64)
        }
        Json::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}
