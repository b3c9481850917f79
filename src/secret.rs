//! A string that must never reach a log, `--help` or a `Debug` dump
//! (MQTT password, API token), and the one way a URL that may hold a
//! password (`http://user:secret@host`) is shown: [`shown_url`].

use std::borrow::Cow;
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

/// How a URL is shown anywhere pv3 prints it (logs, errors, check-api,
/// install-service's dry run): its password, if it has one, as `***`
/// (`http://user:***@host:8800/`). The URL itself, password and all, goes
/// only where it must (the HTTP client, the service's env file).
pub fn shown_url(url: &reqwest::Url) -> String {
    mask_url_passwords(url.as_str()).into_owned()
}

/// `text` with the password of every `scheme://user:password@host` in it
/// replaced by `***`; for text that may quote a URL pv3 could not parse
/// (clap's error for a bad `--api-url`).
pub fn mask_url_passwords(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut copied = 0;
    while let Some(at) = rest.find("://") {
        let authority_at = at + 3;
        let authority = &rest[authority_at..];
        let end = authority
            .find(|c: char| matches!(c, '/' | '?' | '#' | '\'') || c.is_whitespace() || c == '"')
            .unwrap_or(authority.len());
        let authority = &authority[..end];
        // The userinfo ends at the last '@'; its password after the first ':'.
        if let Some(user_end) = authority.rfind('@')
            && let Some(colon) = authority[..user_end].find(':')
        {
            let start = text.len() - rest.len() + authority_at + colon + 1;
            let stop = text.len() - rest.len() + authority_at + user_end;
            out.push_str(&text[copied..start]);
            out.push_str("***");
            copied = stop;
        }
        rest = &rest[authority_at + end..];
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked_wherever_they_are() {
        let url = reqwest::Url::parse("http://user:s3cret@host:8800/x").expect("url");
        assert_eq!(shown_url(&url), "http://user:***@host:8800/x");
        let url = reqwest::Url::parse("https://user@host/").expect("url");
        assert_eq!(shown_url(&url), "https://user@host/");
        assert_eq!(
            mask_url_passwords("invalid value 'http://u:p:w@d@h:bad' and https://a:b@c/d?e=f@g"),
            "invalid value 'http://u:***@h:bad' and https://a:***@c/d?e=f@g"
        );
        assert!(matches!(
            mask_url_passwords("http://host:8800/ and mqtt://h:1"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn debug_hides_the_value() {
        let s: super::Secret = "hunter2".parse().expect("infallible");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
