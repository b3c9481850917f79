//! How the view writes numbers, times and topic names.

use crate::reading::Timestamp;

/// What a missing value shows.
pub(super) const NONE: &str = "–";

/// `v` with `decimals` decimals, never `-0`.
pub(super) fn num(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text[1..].to_string()
    } else {
        text
    }
}

/// Watts: one decimal below 1 kW, none from there (the decimals are noise
/// at that size, and the rows stay within 80 columns).
pub(super) fn watts(w: f64) -> String {
    let decimals = if w.abs() < 999.95 { 1 } else { 0 };
    format!("{} W", num(w, decimals))
}

/// The schedule's event code in words (p3-topics.md).
pub(super) fn schedule_name(code: f64) -> String {
    match code {
        0.0 => "idle".into(),
        1.0 => "charge".into(),
        2.0 => "discharge".into(),
        3.0 => "force charge".into(),
        4.0 => "force discharge".into(),
        other => format!("event {}", num(other, 0)),
    }
}

/// `HH:MM:SS` UTC.
pub(super) fn clock(at: Timestamp) -> String {
    let text = at.to_rfc3339();
    text.get(11..19)
        .map_or(text.clone(), |t| format!("{t} UTC"))
}

/// A short age: `0.4s`, `12s`, `3m`, `2h`.
pub(super) fn age(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 100.0 {
        format!("{secs:.0}s")
    } else if secs < 6000.0 {
        format!("{:.0}m", (secs / 60.0).floor())
    } else {
        format!("{:.0}h", (secs / 3600.0).floor())
    }
}

pub(super) fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else if width == 0 {
        String::new()
    } else {
        let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The compact layout's names of the P3's topic families.
pub(super) fn short_name(suffix: &str) -> &str {
    crate::decode::family_of(suffix).map_or(suffix, |f| f.short_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_show_minus_zero() {
        assert_eq!(num(-0.04, 1), "0.0");
        assert_eq!(num(-0.06, 1), "-0.1");
        assert_eq!(num(413.793, 1), "413.8");
        assert_eq!(num(-0.0, 0), "0");
    }

    #[test]
    fn ages_stay_short() {
        assert_eq!(age(0.44), "0.4s");
        assert_eq!(age(12.4), "12s");
        assert_eq!(age(185.0), "3m");
        assert_eq!(age(7300.0), "2h");
        assert_eq!(age(-1.0), "0.0s");
    }
}
