//! The run-time arithmetic of built-in functions on plain values (spec 6.7). NaN stands for an
//! undefined number in and out; `None` for an undefined string.

use std::borrow::Cow;

use crate::text;
use crate::typed::Func;

/// `abs ceiling exp floor sign sqrt square` of `x`.
pub fn math(func: Func, x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    match func {
        Func::Abs => x.abs(),
        Func::Ceiling => x.ceil(),
        Func::Floor => x.floor(),
        Func::Exp => x.exp(),
        Func::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        Func::Sqrt => x.sqrt(),
        Func::Square => x * x,
        other => unreachable!("{} is not a one-argument math function", other.name()),
    }
}

/// `power(x, y)`; an undefined argument or a NaN result is undefined.
pub fn power(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else {
        x.powf(y)
    }
}

/// `substring(s, start)`: valid iff `0 <= start <= length`; start truncated toward zero.
pub fn substring_from(s: &str, start: f64) -> Option<Cow<'_, str>> {
    let len = text::utf16_len(s);
    #[allow(clippy::cast_precision_loss)]
    if !(start >= 0.0 && start <= len as f64) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let start = start.trunc() as usize;
    Some(text::utf16_substring(s, start, len - start))
}

/// `substring(s, start, n)`: valid iff `0 <= start < length` and `0 <= n <= length - start`,
/// checked on the values before they are truncated toward zero.
pub fn substring_range(s: &str, start: f64, count: f64) -> Option<Cow<'_, str>> {
    #[allow(clippy::cast_precision_loss)]
    let len = text::utf16_len(s) as f64;
    if !(start >= 0.0 && start < len && count >= 0.0 && count <= len - start) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (start, count) = (start.trunc() as usize, count.trunc() as usize);
    Some(text::utf16_substring(s, start, count))
}

/// `contains`, `starts_with`, `ends_with`: ordinal and case-sensitive.
pub fn text_test(func: Func, s: &str, fragment: &str) -> bool {
    match func {
        Func::Contains => s.contains(fragment),
        Func::StartsWith => s.starts_with(fragment),
        Func::EndsWith => s.ends_with(fragment),
        other => unreachable!("{} is not a text test", other.name()),
    }
}

/// `a + b`, `a - b`, ... on numbers.
pub fn arithmetic(op: grammar::BinaryOp, a: f64, b: f64) -> f64 {
    use grammar::BinaryOp;
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Rem => a % b,
        other => unreachable!("{} is not arithmetic", other.symbol()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_bounds_follow_the_reference() {
        assert_eq!(substring_from("hello", 5.0).as_deref(), Some(""));
        assert_eq!(substring_from("hello", 1.9).as_deref(), Some("ello"));
        assert_eq!(substring_from("hello", 6.0), None);
        assert_eq!(substring_from("hello", -1.0), None);
        assert_eq!(substring_range("hello", 5.0, 0.0), None);
        assert_eq!(substring_range("abc", 1.0, 0.0).as_deref(), Some(""));
        assert_eq!(substring_range("abc", 0.5, 2.6), None);
        assert_eq!(substring_range("abc", 0.5, 2.5).as_deref(), Some("ab"));
    }

    #[test]
    fn math_maps_undefined_and_signs() {
        assert!(math(Func::Sqrt, -1.0).is_nan());
        assert!((math(Func::Sign, f64::INFINITY) - 1.0).abs() < f64::EPSILON);
        assert!((math(Func::Ceiling, -2.1) + 2.0).abs() < f64::EPSILON);
        assert!((math(Func::Floor, -2.1) + 3.0).abs() < f64::EPSILON);
        assert!(power(-8.0, 0.5).is_nan());
        assert!(power(f64::NAN, 0.0).is_nan());
    }
}
