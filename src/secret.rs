//! A string that must never reach a log, `--help` or a `Debug` dump
//! (MQTT password, API token).

use std::fmt;
use std::str::FromStr;

/// A secret setting. `Debug` prints `Secret(***)`, so it cannot leak through a
/// log line or a derived `Debug` of the struct that holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for where it must go (an auth header, the MQTT
    /// login) and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_hides_the_value() {
        let s: super::Secret = "hunter2".parse().expect("infallible");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
