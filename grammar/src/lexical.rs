//! Lexical rules the grammar file cannot express: string unescaping, hex values, and the
//! words of syntax errors.

/// Whether `c` separates tokens: it can appear in no identifier, system property or path token.
pub fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t'
            | '\r'
            | '\n'
            | '('
            | ')'
            | '<'
            | '>'
            | '@'
            | ','
            | ';'
            | ':'
            | '\\'
            | '"'
            | '/'
            | '?'
            | '='
            | '{'
            | '}'
    )
}

/// Whether `c` may appear in an identifier (`[` and `]` may not).
pub fn is_ident_char(c: char) -> bool {
    !is_separator(c) && c != '[' && c != ']'
}

/// Unescapes the body of a string literal the way the reference does, in two passes: first every
/// `\uXXXX` (either case of `u`) becomes that UTF-16 code unit, then `\"`, `\'` and `\\` become
/// their second character. So `\\u0041` becomes `\A` (quirk). Lone surrogates become U+FFFD.
pub fn unescape(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_owned();
    }
    let units: Vec<u16> = raw.encode_utf16().collect();
    let mut first = Vec::with_capacity(units.len());
    let mut i = 0;
    while i < units.len() {
        if units[i] == u16::from(b'\\')
            && i + 6 <= units.len()
            && matches!(units.get(i + 1), Some(&u) if u == u16::from(b'u') || u == u16::from(b'U'))
            && let Some(unit) = hex4(&units[i + 2..i + 6])
        {
            first.push(unit);
            i += 6;
            continue;
        }
        first.push(units[i]);
        i += 1;
    }
    let mut second = Vec::with_capacity(first.len());
    let mut i = 0;
    while i < first.len() {
        if first[i] == u16::from(b'\\')
            && matches!(first.get(i + 1), Some(&u) if u == u16::from(b'"') || u == u16::from(b'\'') || u == u16::from(b'\\'))
        {
            second.push(first[i + 1]);
            i += 2;
        } else {
            second.push(first[i]);
            i += 1;
        }
    }
    String::from_utf16_lossy(&second)
}

fn hex4(units: &[u16]) -> Option<u16> {
    let mut value = 0u16;
    for &u in units {
        let digit = char::from_u32(u32::from(u))?.to_digit(16)?;
        value = value * 16 + u16::try_from(digit).ok()?;
    }
    Some(value)
}

/// The value of a hex literal's digits: parsed as a signed 64-bit integer (two's complement of
/// the 64-bit pattern), then converted to a double. More than 64 bits has no value.
pub fn hex_value(digits: &str) -> Option<f64> {
    let unsigned = u64::from_str_radix(digits, 16).ok()?;
    #[allow(clippy::cast_possible_wrap, clippy::cast_precision_loss)]
    Some(unsigned as i64 as f64)
}

/// The text of the token-like run at the start of `rest`, for error messages.
pub(crate) fn token_text(rest: &str) -> &str {
    let run: usize = rest
        .chars()
        .take_while(|&c| !is_separator(c))
        .map(char::len_utf8)
        .sum();
    if run > 0 {
        &rest[..run]
    } else {
        rest.chars().next().map_or("", |c| &rest[..c.len_utf8()])
    }
}

/// Says why the grammar stopped at `pos`, using the wording of the spec's error table where a
/// rule fits, and what was expected otherwise.
pub(crate) fn explain_failure(text: &str, pos: usize, token: &str, expected: &[String]) -> String {
    let rest = &text[pos..];
    let Some(c) = rest.chars().next() else {
        if unclosed_parentheses(text) > 0 {
            return "missing closing ')'".to_owned();
        }
        return format!("unexpected end of input{}", expecting(expected));
    };
    match c {
        '\'' | '"' => {
            if has_bad_escape(rest, c) {
                return "invalid escape sequence in string (only \\\" \\' \\\\ and \\uXXXX are allowed)"
                    .to_owned();
            }
            if !rest[1..].contains(c) {
                return "unterminated string".to_owned();
            }
            // A single-quoted string glued to identifier characters is an identifier (`'a'AND`).
            format!("unexpected '{token}'{}", expecting(expected))
        }
        '@' | ';' | ':' | '\\' => format!("invalid symbol '{c}'"),
        '?' if !rest.starts_with("??") => "invalid symbol '?'".to_owned(),
        ')' if unclosed_parentheses(&text[..=pos]) < 0 => "unmatched closing ')'".to_owned(),
        '=' if text[..pos].trim_end().ends_with('=') => {
            "'==' is not an operator; use '='".to_owned()
        }
        _ if token.contains('[') || token.contains(']') || c == '[' || c == ']' => {
            format!("'{token}': brackets are allowed only in body queries such as $body.a[0]")
        }
        _ => format!("unexpected '{token}'{}", expecting(expected)),
    }
}

fn expecting(expected: &[String]) -> String {
    match expected {
        [] => String::new(),
        [one] => format!(", expected {one}"),
        many => format!(", expected one of: {}", many.join(", ")),
    }
}

/// Opening minus closing parentheses outside quoted text.
fn unclosed_parentheses(text: &str) -> i64 {
    let mut depth = 0i64;
    let mut quote = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// Whether the string starting at `rest` (with quote `quote`) holds a backslash sequence that
/// is not one of the four escapes, before its closing quote.
fn has_bad_escape(rest: &str, quote: char) -> bool {
    let mut chars = rest.chars().skip(1).peekable();
    while let Some(c) = chars.next() {
        if c == quote {
            return false;
        }
        if c == '\\' {
            match chars.next() {
                Some('"' | '\'' | '\\') => {}
                Some('u') => {
                    for _ in 0..4 {
                        if !chars.next().is_some_and(|h| h.is_ascii_hexdigit()) {
                            return true;
                        }
                    }
                }
                _ => return true,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_replaces_the_four_escapes() {
        assert_eq!(unescape(r#"he said \"hi\""#), "he said \"hi\"");
        assert_eq!(unescape(r"it\'s"), "it's");
        assert_eq!(unescape(r"a\\b"), r"a\b");
        assert_eq!(unescape(r"\u0041"), "A");
        assert_eq!(unescape(r"\U0041"), "A");
    }

    #[test]
    fn unescape_runs_unicode_escapes_first() {
        assert_eq!(unescape(r"\\u0041"), r"\A");
    }

    #[test]
    fn unescape_joins_surrogate_pairs_and_replaces_lone_ones() {
        assert_eq!(unescape(r"\ud83d\ude00"), "😀");
        assert_eq!(unescape(r"\ud83d"), "\u{fffd}");
    }

    #[test]
    fn hex_is_a_signed_64_bit_pattern() {
        assert_eq!(hex_value("10"), Some(16.0));
        assert_eq!(hex_value("FFFFFFFFFFFFFFFF"), Some(-1.0));
        assert_eq!(hex_value("1FFFFFFFFFFFFFFFF"), None);
    }
}
