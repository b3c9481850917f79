//! From outside text (device ids, field names, alarm flags) to topic levels
//! and Home Assistant ids: pure functions, so that a restart, or another
//! version of pv3, gives the same names.
//!
//! The rule, the same for all three: text that is already fit is used as
//! it is (a topic level) or merely lower-cased (an id); anything else is
//! sanitised **and** given `_` and a short hash of the original text, so
//! that two different texts never share a topic or an id because they
//! sanitise alike (`A B` and `a_b`, `a\nb` and `a_b`). What "fit" means:
//!
//! - **topic level** ([`level`]): what [`topic::publishable_level`]
//!   accepts; the flat topics keep the P3's names as written.
//! - **node id part** ([`device_part`]): only `A–Z`, `0–9`, `_`, `-`: the
//!   P3's ids are upper case, and lower-casing such an id loses nothing, so
//!   `PV001001DEV` keeps its `pv3_pv001001dev` while `pv001001dev` (which
//!   would lower-case to the same) becomes `pv001001dev_c04a1869`.
//! - **object id** ([`object_part`]): `A–Z`, `a–z`, `0–9`, `_`, `-`,
//!   lower-cased: pv3's metric names are lower case and the P3's
//!   `safetycheck/state` keys CamelCase (`safetycheck_State` keeps its
//!   `safetycheck_state`). Two field names of one device that differ in
//!   case only would share an object id; the P3 writes each key one way.
//!
//! Sanitising replaces every character that does not fit by `_` and cuts
//! the text so that, with the hash, it stays within [`MAX_LEVEL`] bytes.
//! The hash is FNV-1a (64-bit) of the original UTF-8 text with its two
//! halves XORed, as 8 hex digits: fixed by this code, not by a library or
//! a Rust version, and pinned by a test.

use std::borrow::Cow;

use crate::topic::{self, MAX_LEVEL};

/// `text` as a topic level: as it is when publishable, else sanitised and
/// hashed (see the module docs).
pub(crate) fn level(text: &str) -> Cow<'_, str> {
    if topic::publishable_level(text) {
        return Cow::Borrowed(text);
    }
    let fit: String = text
        .chars()
        .map(|c| if topic::level_char(c) { c } else { '_' })
        .collect();
    Cow::Owned(hashed(fit, text))
}

/// `device` as it stands in node ids and unique ids: lower case when it is
/// made of `A–Z0–9_-` only, else sanitised and hashed.
pub(crate) fn device_part(device: &str) -> String {
    let plain = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-';
    id_part(device, plain)
}

/// A metric name or an alarm flag as it stands in object ids and unique
/// ids: lower-cased when it is made of ASCII letters, digits, `_` and `-`,
/// else sanitised and hashed.
pub(crate) fn object_part(name: &str) -> String {
    id_part(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `text` lower-cased when every character is `plain` (and it fits), else
/// sanitised to `[a-z0-9_-]` and hashed.
fn id_part(text: &str, plain: impl Fn(char) -> bool) -> String {
    let fit: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !text.is_empty() && text.len() <= MAX_LEVEL && text.chars().all(plain) {
        return fit;
    }
    hashed(fit, text)
}

/// `fit` cut to leave room for the hash, then `_` and the hash of
/// `original`.
fn hashed(mut fit: String, original: &str) -> String {
    let hash = short_hash(original);
    let mut cut = MAX_LEVEL - hash.len() - 1;
    while !fit.is_char_boundary(cut.min(fit.len())) {
        cut -= 1;
    }
    fit.truncate(cut);
    fit.push('_');
    fit.push_str(&hash);
    fit
}

/// FNV-1a (64-bit) of `text`'s bytes, folded to 32 bits, as 8 hex digits.
fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pinned() {
        // Computed independently (Python); a change here renames entities.
        assert_eq!(short_hash("A B"), "5a5f3fcb");
        assert_eq!(short_hash("pv001001dev"), "c04a1869");
        assert_eq!(short_hash(""), "4fd0bfc1");
    }

    #[test]
    fn fit_text_is_kept_as_it_is() {
        assert_eq!(level("grid_power"), "grid_power");
        assert_eq!(level("PV001001DEV"), "PV001001DEV");
        assert_eq!(level("safetycheck_State"), "safetycheck_State");
        assert_eq!(level("A B"), "A B");
        assert_eq!(device_part("PV001001DEV"), "pv001001dev");
        assert_eq!(device_part("PV-7_2"), "pv-7_2");
        assert_eq!(object_part("grid_power"), "grid_power");
        assert_eq!(object_part("safetycheck_State"), "safetycheck_state");
    }

    #[test]
    fn unfit_text_is_sanitised_and_hashed() {
        assert_eq!(level("safetycheck_a\nb"), "safetycheck_a_b_688e6ed2");
        assert_eq!(level("x\u{1}y"), "x_y_c0908168");
        assert_eq!(level("safetycheck_a/b+c"), "safetycheck_a_b_c_56db9e2b");
        assert_eq!(level(""), "_4fd0bfc1");
        assert_eq!(device_part("pv001001dev"), "pv001001dev_c04a1869");
        assert_eq!(device_part("A B"), "a_b_5a5f3fcb");
        assert_eq!(device_part("a_b"), "a_b_e2300e48");
        assert_eq!(object_part("x\u{1}y"), "x_y_c0908168");
    }

    #[test]
    fn texts_that_sanitise_alike_stay_apart() {
        for (a, b) in [
            ("PV001001DEV", "pv001001dev"),
            ("A B", "a_b"),
            ("A B", "A_B"),
            ("a/b", "a_b"),
            ("a\nb", "a_b"),
            ("a\nb", "a\tb"),
        ] {
            assert_ne!(device_part(a), device_part(b), "{a:?} {b:?}");
            assert_ne!(level(a), level(b), "{a:?} {b:?}");
        }
        for (a, b) in [("a\nb", "a_b"), ("x y", "x_y"), ("é", "_")] {
            assert_ne!(object_part(a), object_part(b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn long_text_is_cut_to_the_level_limit() {
        let long = "é".repeat(MAX_LEVEL);
        let cut = level(&long);
        assert!(
            cut.len() <= MAX_LEVEL && topic::publishable_level(&cut),
            "{cut}"
        );
        let other = format!("{long}x");
        assert_ne!(level(&other), cut);
        let id = device_part(&"X".repeat(500));
        assert_eq!(id.len(), MAX_LEVEL);
        assert!(id.starts_with("xxx") && id.ends_with(&short_hash(&"X".repeat(500))));
        assert_eq!(level(&"k".repeat(MAX_LEVEL)), "k".repeat(MAX_LEVEL));
    }
}
