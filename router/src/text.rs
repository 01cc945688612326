//! String semantics of the condition language: strings are sequences of UTF-16 code units
//! (length, ordering, indexes and substrings count units), case mapping is invariant-culture
//! and per character, and `as_number` parses like .NET's `NumberStyles.Any`.
//!
//! Every function has an ASCII fast path; the slow path is exact.

use std::borrow::Cow;
use std::cmp::Ordering;

/// Byte equality, inline and eight bytes at a time: cheaper than a `memcmp` call for the short
/// keys and values of property bags.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (left, right) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = left
        .remainder()
        .iter()
        .zip(right.remainder())
        .all(|(x, y)| x == y);
    tails_equal
        && left.zip(right).all(|(x, y)| {
            u64::from_ne_bytes(x.try_into().expect("8 bytes"))
                == u64::from_ne_bytes(y.try_into().expect("8 bytes"))
        })
}

/// Length in UTF-16 code units: `length('😀') = 2`.
pub fn utf16_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.encode_utf16().count()
    }
}

/// Ordinal comparison of UTF-16 code units (which differs from `str`'s code point order only
/// between U+E000..U+FFFF and characters beyond U+FFFF).
pub fn utf16_cmp(a: &str, b: &str) -> Ordering {
    let mut left = a.chars();
    let mut right = b.chars();
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let (mut bx, mut by) = ([0u16; 2], [0u16; 2]);
                return x.encode_utf16(&mut bx).cmp(&y.encode_utf16(&mut by));
            }
        }
    }
}

/// The UTF-16 units `start..start + len` of `s`; a surrogate pair cut in half becomes U+FFFD.
/// The caller has checked the range.
pub fn utf16_substring(s: &str, start: usize, len: usize) -> Cow<'_, str> {
    if s.is_ascii() {
        return Cow::Borrowed(&s[start..start + len]);
    }
    let units: Vec<u16> = s.encode_utf16().skip(start).take(len).collect();
    Cow::Owned(String::from_utf16_lossy(&units))
}

/// Index (in UTF-16 units) of the first occurrence of `needle` in `haystack`, or -1.
pub fn utf16_index_of(haystack: &str, needle: &str) -> f64 {
    match haystack.find(needle) {
        #[allow(clippy::cast_precision_loss)]
        Some(byte) => utf16_len(&haystack[..byte]) as f64,
        None => -1.0,
    }
}

/// Invariant-culture lower case, character by character (no change of length).
pub fn lower(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Cow::Owned(s.to_ascii_lowercase());
        }
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| single(c.to_lowercase(), c)).collect())
}

/// Invariant-culture upper case, character by character (`ß` stays `ß`).
pub fn upper(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Cow::Owned(s.to_ascii_uppercase());
        }
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| single(c.to_uppercase(), c)).collect())
}

fn single(mut mapped: impl Iterator<Item = char>, original: char) -> char {
    match (mapped.next(), mapped.next()) {
        (Some(c), None) => c,
        _ => original,
    }
}

/// Parses a number the way .NET's `double.Parse(s, NumberStyles.Any, InvariantCulture)` does:
/// surrounding white space, a leading or trailing sign, parentheses for a negative number, the
/// invariant currency symbol `¤`, `,` thousands separators, a decimal point and an exponent.
/// `None` when .NET would throw (hex, empty, other text).
pub fn parse_dotnet_number(s: &str) -> Option<f64> {
    let is_white = |c: char| matches!(c, '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ');
    let mut rest = s.trim_matches(is_white);
    if let Some(special) = parse_special(rest) {
        return Some(special);
    }
    let mut negative = false;
    let mut sign_seen = false;
    let mut parens = false;
    // Leading decorations: one of sign or '(', and the currency symbol, in either order.
    loop {
        if !sign_seen && (rest.starts_with('-') || rest.starts_with('+')) {
            negative = rest.starts_with('-');
            sign_seen = true;
            rest = &rest[1..];
        } else if !sign_seen && !parens && rest.starts_with('(') {
            parens = true;
            sign_seen = true;
            negative = true;
            rest = &rest[1..];
        } else if let Some(r) = rest.strip_prefix('¤') {
            rest = r.trim_start_matches(is_white);
        } else {
            break;
        }
    }
    // Trailing decorations.
    if parens {
        rest = rest.strip_suffix(')')?;
    }
    loop {
        if !sign_seen && (rest.ends_with('-') || rest.ends_with('+')) {
            negative = rest.ends_with('-');
            sign_seen = true;
            rest = &rest[..rest.len() - 1];
        } else if let Some(r) = rest.strip_suffix('¤') {
            rest = r.trim_end_matches(is_white);
        } else {
            break;
        }
    }
    let mut normalized = String::with_capacity(rest.len() + 1);
    if negative {
        normalized.push('-');
    }
    let mut chars = rest.chars().peekable();
    let mut int_digits = 0;
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            normalized.push(c);
            int_digits += 1;
        } else if c == ',' && int_digits > 0 {
            // Thousands separator: accepted anywhere after the first digit.
        } else {
            break;
        }
        chars.next();
    }
    let mut frac_digits = 0;
    if chars.peek() == Some(&'.') {
        chars.next();
        normalized.push('.');
        while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit()) {
            normalized.push(c);
            frac_digits += 1;
            chars.next();
        }
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(chars.peek(), Some('e' | 'E')) {
        chars.next();
        normalized.push('e');
        if let Some(&sign) = chars.peek().filter(|c| matches!(c, '+' | '-')) {
            normalized.push(sign);
            chars.next();
        }
        let mut exp_digits = 0;
        while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit()) {
            normalized.push(c);
            exp_digits += 1;
            chars.next();
        }
        if exp_digits == 0 {
            return None;
        }
    }
    if chars.next().is_some() {
        return None;
    }
    if normalized.ends_with('.') {
        normalized.push('0');
    }
    normalized.parse().ok()
}

fn parse_special(s: &str) -> Option<f64> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let infinite = body.eq_ignore_ascii_case("infinity") || body == "∞";
    match (infinite, negative) {
        (true, true) => Some(f64::NEG_INFINITY),
        (true, false) => Some(f64::INFINITY),
        _ if body.eq_ignore_ascii_case("nan") => Some(f64::NAN),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_count_utf16_units() {
        assert_eq!(utf16_len("hello"), 5);
        assert_eq!(utf16_len("😀"), 2);
        assert_eq!(utf16_len("Zürich"), 6);
    }

    #[test]
    fn ordering_is_by_utf16_units() {
        assert_eq!(utf16_cmp("10", "9"), Ordering::Less);
        assert_eq!(utf16_cmp("a", "ab"), Ordering::Less);
        assert_eq!(utf16_cmp("B", "a"), Ordering::Less);
        // U+FF21 sorts after a surrogate pair in UTF-16, before it in code point order.
        assert_eq!(utf16_cmp("\u{ff21}", "😀"), Ordering::Greater);
    }

    #[test]
    fn substring_and_index_count_units() {
        assert_eq!(utf16_substring("hello", 1, 4), "ello");
        assert_eq!(utf16_substring("a😀b", 1, 2), "😀");
        assert!((utf16_index_of("a😀b", "b") - 3.0).abs() < f64::EPSILON);
        assert!((utf16_index_of("abc", "") - 0.0).abs() < f64::EPSILON);
        assert!((utf16_index_of("abc", "x") + 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn case_mapping_keeps_length() {
        assert_eq!(lower("AbC"), "abc");
        assert_eq!(upper("straße"), "STRAßE");
        assert_eq!(upper("zürich"), "ZÜRICH");
    }

    #[test]
    fn numbers_parse_like_dotnet_number_styles_any() {
        for (text, value) in [
            (" 12 ", 12.0),
            ("1e3", 1000.0),
            ("1,000", 1000.0),
            ("(5)", -5.0),
            ("5-", -5.0),
            ("-1.5", -1.5),
            ("+.5", 0.5),
            ("5.", 5.0),
            ("¤12", 12.0),
            ("1E+2", 100.0),
        ] {
            assert_eq!(parse_dotnet_number(text), Some(value), "{text:?}");
        }
        for text in [
            "", "0x10", "abc", "1e", "--5", "-5-", ",5", "1 2", "(5", ".",
        ] {
            assert_eq!(parse_dotnet_number(text), None, "{text:?}");
        }
        assert_eq!(parse_dotnet_number("Infinity"), Some(f64::INFINITY));
    }
}
