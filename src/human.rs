//! Numbers as people read them in pv3's messages and tables.

/// "0.4 s", "12 s", "5 min", "3 h 5 min", "2 d 4 h".
pub fn human_secs(secs: f64) -> String {
    if secs < 10.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(human_secs(0.42), "0.4 s");
        assert_eq!(human_secs(42.0), "42 s");
        assert_eq!(human_secs(600.0), "10 min");
        assert_eq!(human_secs(3.0 * 3600.0 + 300.0), "3 h 5 min");
        assert_eq!(human_secs(2.0 * 86_400.0 + 4.0 * 3600.0), "2 d 4 h");
    }
}
