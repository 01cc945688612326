//! Body queries: `$body.a.b[0]`.
//!
//! A body is decoded and parsed at most once per message, into a flat arena of nodes that
//! borrows its strings from the text; every query of every route then walks that arena. The
//! rules (spec 6.4): content type exactly `application/json` (ignoring case), content encoding
//! `utf-8`, `utf-16` or `utf-32` (little-endian) and no default, a JSON object at the root; any
//! failure makes every query undefined.

use std::borrow::Cow;

use crate::message::{Message, system};
use crate::value::Dyn;

/// The deepest JSON nesting accepted (Newtonsoft's default `MaxDepth` is 64).
const MAX_JSON_DEPTH: usize = 64;

/// One step of a body path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A property of an object (case-sensitive).
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// A validated body path: `a.b[0].c` is `[Key(a), Key(b), Index(0), Key(c)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyPath {
    steps: Vec<Step>,
}

impl BodyPath {
    /// Parses the text after `$body.`. Segments are separated by `.`; each is one or more
    /// identifier characters (not `.`, `[`, `]`) followed by optional `[digits]` indexes.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the body path is empty".to_owned());
        }
        let mut steps = Vec::new();
        for segment in text.split('.') {
            let name_end = segment.find('[').unwrap_or(segment.len());
            let (name, mut indexes) = segment.split_at(name_end);
            if name.is_empty() {
                return Err(format!("empty segment in body path '{text}'"));
            }
            if name.contains(']') {
                return Err(format!("unexpected ']' in body path '{text}'"));
            }
            steps.push(Step::Key(name.to_owned()));
            while !indexes.is_empty() {
                let close = indexes
                    .find(']')
                    .ok_or_else(|| format!("missing ']' in body path '{text}'"))?;
                let digits = &indexes[1..close];
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "array index '[{digits}]' in body path '{text}' must be a non-negative integer"
                    ));
                }
                let index = digits
                    .parse()
                    .map_err(|_| format!("array index '[{digits}]' is too large"))?;
                steps.push(Step::Index(index));
                indexes = &indexes[close + 1..];
                if !indexes.is_empty() && !indexes.starts_with('[') {
                    return Err(format!("unexpected text after ']' in body path '{text}'"));
                }
            }
        }
        Ok(Self { steps })
    }

    /// The steps of the path.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// A message body decoded and parsed, ready for queries.
#[derive(Debug)]
pub struct Body<'a> {
    text: Cow<'a, str>,
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// For object members: the key's text range (between the quotes) and whether it holds
    /// escapes.
    key: (u32, u32),
    key_escaped: bool,
    /// For strings: the text range between the quotes; for numbers: the number's text (parsed
    /// only when queried).
    value: (u32, u32),
    /// The next sibling in the parent, or `NONE`.
    next: u32,
    /// The first child (objects and arrays), or `NONE`.
    first_child: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String { escaped: bool },
    Number,
    True,
    False,
    Null,
}

const NONE: u32 = u32::MAX;

impl<'a> Body<'a> {
    /// Decodes and parses the body of `message`; `None` when queries on it are undefined.
    pub fn parse(message: &'a Message) -> Option<Self> {
        let sys = &message.system_properties;
        if !sys
            .get_key(&system::CONTENT_TYPE_KEY)?
            .eq_ignore_ascii_case("application/json")
        {
            return None;
        }
        let text = decode(&message.body, sys.get_key(&system::CONTENT_ENCODING_KEY)?)?;
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: 0,
            nodes: Vec::with_capacity(8 + text.len() / 12),
        };
        parser.skip_ws();
        if parser.peek() != Some(b'{') {
            return None;
        }
        parser.value(0)?;
        parser.skip_ws();
        if parser.pos != parser.bytes.len() {
            return None;
        }
        let nodes = parser.nodes;
        Some(Self { text, nodes })
    }

    /// The value at `path`: `Missing` where the path does not exist (quirk: behaves as null),
    /// `Undefined` for objects, arrays and date strings.
    pub fn query(&self, path: &BodyPath) -> Dyn<'_> {
        let mut node = 0u32;
        for step in path.steps() {
            let current = self.nodes[node as usize];
            node = match (step, current.kind) {
                (Step::Key(key), Kind::Object) => match self.member(current, key) {
                    Some(n) => n,
                    None => return Dyn::Missing,
                },
                (Step::Index(i), Kind::Array) => match self.element(current, *i) {
                    Some(n) => n,
                    None => return Dyn::Missing,
                },
                _ => return Dyn::Missing,
            };
        }
        self.value_of(self.nodes[node as usize])
    }

    /// The last member named `key` (a duplicate key replaces an earlier one).
    fn member(&self, object: Node, key: &str) -> Option<u32> {
        let mut found = None;
        let mut child = object.first_child;
        while child != NONE {
            let n = self.nodes[child as usize];
            let raw = &self.text[n.key.0 as usize..n.key.1 as usize];
            let matches = if n.key_escaped {
                unescape_json(raw) == key
            } else {
                raw == key
            };
            if matches {
                found = Some(child);
            }
            child = n.next;
        }
        found
    }

    fn element(&self, array: Node, index: usize) -> Option<u32> {
        let mut child = array.first_child;
        for _ in 0..index {
            if child == NONE {
                return None;
            }
            child = self.nodes[child as usize].next;
        }
        (child != NONE).then_some(child)
    }

    fn value_of(&self, node: Node) -> Dyn<'_> {
        match node.kind {
            Kind::Object | Kind::Array => Dyn::Undefined,
            Kind::Number => {
                let text = &self.text[node.value.0 as usize..node.value.1 as usize];
                Dyn::number(parse_json_number(text))
            }
            Kind::True => Dyn::Bool(true),
            Kind::False => Dyn::Bool(false),
            Kind::Null => Dyn::Null,
            Kind::String { escaped } => {
                let raw = &self.text[node.value.0 as usize..node.value.1 as usize];
                let s: Cow<'_, str> = if escaped {
                    Cow::Owned(unescape_json(raw))
                } else {
                    Cow::Borrowed(raw)
                };
                if looks_like_date(&s) {
                    Dyn::Undefined
                } else {
                    Dyn::Str(s)
                }
            }
        }
    }
}

/// The value of a validated JSON number. Numbers of at most 15 digits without exponent take
/// the exact fast path (an integer divided by an exact power of ten is correctly rounded);
/// others go through the standard parser.
fn parse_json_number(text: &str) -> f64 {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0usize;
    let mut fraction = None;
    for (i, b) in digits.bytes().enumerate() {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
            }
            b'.' => fraction = Some(digits.len() - i - 1),
            _ => return text.parse().unwrap_or(f64::NAN),
        }
        if count > 15 {
            return text.parse().unwrap_or(f64::NAN);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let value = mantissa as f64 / POW10[fraction.unwrap_or(0)];
    if negative { -value } else { value }
}

/// Decodes body bytes by content encoding; invalid sequences become U+FFFD as in .NET.
pub(crate) fn decode<'a>(bytes: &'a [u8], encoding: &str) -> Option<Cow<'a, str>> {
    if encoding.eq_ignore_ascii_case("utf-8") {
        // The strict check is much faster than the lossy one on valid text.
        Some(match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        })
    } else if encoding.eq_ignore_ascii_case("utf-16") {
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        Some(Cow::Owned(String::from_utf16_lossy(&units)))
    } else if encoding.eq_ignore_ascii_case("utf-32") {
        Some(Cow::Owned(
            bytes
                .chunks(4)
                .map(|c| {
                    let mut word = [0u8; 4];
                    word[..c.len()].copy_from_slice(c);
                    char::from_u32(u32::from_le_bytes(word)).unwrap_or('\u{fffd}')
                })
                .collect(),
        ))
    } else {
        None
    }
}

/// Whether Newtonsoft's reader would turn this string into a date (which the reference then
/// maps to undefined): `yyyy-MM-ddTHH:mm:ss[.fffffff][Z|±hh:mm]`, 19 to 40 characters, or
/// the Microsoft form `/Date(ticks[±hhmm])/`.
pub fn looks_like_date(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix("/Date(").and_then(|r| r.strip_suffix(")/")) {
        let digits = inner.strip_prefix('-').unwrap_or(inner);
        let (ticks, offset) = match digits.find(['+', '-']) {
            Some(i) => digits.split_at(i),
            None => (digits, ""),
        };
        return !ticks.is_empty()
            && ticks.bytes().all(|b| b.is_ascii_digit())
            && (offset.is_empty()
                || (offset.len() == 5 && offset[1..].bytes().all(|b| b.is_ascii_digit())));
    }
    let b = s.as_bytes();
    if !(19..=40).contains(&b.len()) || b[10] != b'T' {
        return false;
    }
    let two = |i: usize, max: u32| -> bool {
        b[i].is_ascii_digit()
            && b[i + 1].is_ascii_digit()
            && u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0') <= max
    };
    let date_ok = b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && two(5, 12)
        && b[7] == b'-'
        && two(8, 31);
    let time_ok = two(11, 23) && b[13] == b':' && two(14, 59) && b[16] == b':' && two(17, 59);
    if !date_ok || !time_ok {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 7 {
            return false;
        }
        rest = &fraction[digits..];
    }
    match rest.as_bytes() {
        [] | [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// Unescapes the text between the quotes of a JSON string (already validated).
fn unescape_json(raw: &str) -> String {
    let mut units: Vec<u16> = Vec::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
            continue;
        }
        let unit = match chars.next() {
            Some('b') => 0x08,
            Some('f') => 0x0c,
            Some('n') => 0x0a,
            Some('r') => 0x0d,
            Some('t') => 0x09,
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                u16::from_str_radix(&hex, 16).unwrap_or(0xfffd)
            }
            Some(other) => u16::try_from(u32::from(other)).unwrap_or(0xfffd),
            None => 0xfffd,
        };
        units.push(unit);
    }
    String::from_utf16_lossy(&units)
}

/// How many bytes at the start of `bytes` need no attention inside a JSON string: not `"`,
/// not `\\`, not a control character. Eight bytes at a time (SWAR), then one at a time.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut run = 0;
    for chunk in bytes.chunks_exact(8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let quote = has_zero(w ^ (ONES * u64::from(b'"')));
        let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
        // Bytes below 0x20 (bytes with the high bit set are never flagged).
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let stops = quote | backslash | control;
        if stops != 0 {
            // The lowest flagged byte is exact; flags above it may be false positives.
            return run + (stops.trailing_zeros() / 8) as usize;
        }
        run += 8;
    }
    run + bytes[run..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(bytes.len() - run)
}

/// A strict JSON parser (RFC 8259) that fills the node arena.
struct Parser<'b> {
    bytes: &'b [u8],
    pos: usize,
    nodes: Vec<Node>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn push(&mut self, kind: Kind) -> Option<u32> {
        let index = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&i| i != NONE)?;
        self.nodes.push(Node {
            kind,
            key: (0, 0),
            key_escaped: false,
            value: (0, 0),
            next: NONE,
            first_child: NONE,
        });
        Some(index)
    }

    /// Parses one value at the current position and returns its node.
    fn value(&mut self, depth: usize) -> Option<u32> {
        if depth > MAX_JSON_DEPTH {
            return None;
        }
        self.skip_ws();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => {
                let (range, escaped) = self.string()?;
                let node = self.push(Kind::String { escaped })?;
                self.nodes[node as usize].value = range;
                Some(node)
            }
            b't' => self.word(b"true", Kind::True),
            b'f' => self.word(b"false", Kind::False),
            b'n' => self.word(b"null", Kind::Null),
            _ => self.number(),
        }
    }

    fn word(&mut self, word: &[u8], kind: Kind) -> Option<u32> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            self.push(kind)
        } else {
            None
        }
    }

    fn object(&mut self, depth: usize) -> Option<u32> {
        let node = self.push(Kind::Object)?;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(node);
        }
        let mut last = NONE;
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return None;
            }
            let (key, key_escaped) = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return None;
            }
            self.pos += 1;
            let child = self.value(depth + 1)?;
            let entry = &mut self.nodes[child as usize];
            entry.key = key;
            entry.key_escaped = key_escaped;
            self.link(node, last, child);
            last = child;
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(node);
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<u32> {
        let node = self.push(Kind::Array)?;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(node);
        }
        let mut last = NONE;
        loop {
            let child = self.value(depth + 1)?;
            self.link(node, last, child);
            last = child;
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(node);
                }
                _ => return None,
            }
        }
    }

    fn link(&mut self, parent: u32, last: u32, child: u32) {
        if last == NONE {
            self.nodes[parent as usize].first_child = child;
        } else {
            self.nodes[last as usize].next = child;
        }
    }

    /// Parses a string; returns the range between the quotes and whether it holds escapes.
    fn string(&mut self) -> Option<((u32, u32), bool)> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos += plain_run(&self.bytes[self.pos..]);
            match *self.bytes.get(self.pos)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            let hex = self.bytes.get(self.pos + 1..self.pos + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 5;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        let end = self.pos;
        self.pos += 1;
        Some((
            (u32::try_from(start).ok()?, u32::try_from(end).ok()?),
            escaped,
        ))
    }

    fn number(&mut self) -> Option<u32> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        let node = self.push(Kind::Number)?;
        self.nodes[node as usize].value =
            (u32::try_from(start).ok()?, u32::try_from(self.pos).ok()?);
        Some(node)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Properties;

    fn json(body: &str) -> Message {
        Message {
            body: body.as_bytes().to_vec().into(),
            properties: Properties::new(),
            system_properties: [
                ("contentType", "application/json"),
                ("contentEncoding", "utf-8"),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn query(body: &str, path: &str) -> String {
        let message = json(body);
        match Body::parse(&message) {
            Some(b) => format!("{:?}", b.query(&BodyPath::parse(path).unwrap())),
            None => "unparsed".to_owned(),
        }
    }

    #[test]
    fn queries_walk_objects_and_arrays() {
        let body = r#"{"a": {"b": [10, {"c": "x"}]}, "t": true, "n": null}"#;
        assert_eq!(query(body, "a.b[0]"), "Number(10.0)");
        assert_eq!(query(body, "a.b[1].c"), r#"Str("x")"#);
        assert_eq!(query(body, "t"), "Bool(true)");
        assert_eq!(query(body, "n"), "Null");
        assert_eq!(query(body, "a"), "Undefined");
        assert_eq!(query(body, "a.b"), "Undefined");
        assert_eq!(query(body, "a.b[5]"), "Missing");
        assert_eq!(query(body, "t.x"), "Missing");
        assert_eq!(query(body, "A"), "Missing");
    }

    #[test]
    fn escaped_keys_and_values_are_unescaped_and_last_duplicate_wins() {
        let body = r#"{"k\u0065y": "v\"1", "d": 1, "d": 2}"#;
        assert_eq!(query(body, "key"), r#"Str("v\"1")"#);
        assert_eq!(query(body, "d"), "Number(2.0)");
    }

    #[test]
    fn only_json_objects_parse() {
        for body in [
            "[1]",
            "1",
            "",
            "{",
            r#"{"a": 1} x"#,
            r#"{"a": 01}"#,
            r#"{'a': 1}"#,
        ] {
            assert_eq!(query(body, "a"), "unparsed", "{body:?}");
        }
    }

    #[test]
    fn date_strings_are_undefined() {
        assert!(looks_like_date("2017-03-09T00:00:00.000Z"));
        assert!(looks_like_date("2017-03-09T00:00:00"));
        assert!(looks_like_date("2017-03-09T00:00:00+01:00"));
        assert!(looks_like_date("/Date(1234567890)/"));
        assert!(!looks_like_date("2017-03-09"));
        assert!(!looks_like_date("Sensor-A"));
        assert_eq!(
            query(r#"{"ts": "2017-03-09T00:00:00.000Z"}"#, "ts"),
            "Undefined"
        );
    }

    #[test]
    fn paths_are_validated() {
        assert!(BodyPath::parse("a.b[0].c").is_ok());
        assert!(BodyPath::parse("a[0][1]").is_ok());
        for bad in [
            "", "a..b", "a.", "a[*]", "a[-1]", "a[]", "a[1:2]", "[0]", "a[0]b",
        ] {
            assert!(BodyPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utf16_and_utf32_bodies_decode() {
        let text = r#"{"t": 5}"#;
        let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut m = json("");
        m.body = utf16.into();
        m.system_properties.insert("contentEncoding", "UTF-16");
        assert_eq!(
            Body::parse(&m)
                .unwrap()
                .query(&BodyPath::parse("t").unwrap()),
            Dyn::Number(5.0)
        );
        let utf32: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_le_bytes())
            .collect();
        m.body = utf32.into();
        m.system_properties.insert("contentEncoding", "utf-32");
        assert_eq!(
            Body::parse(&m)
                .unwrap()
                .query(&BodyPath::parse("t").unwrap()),
            Dyn::Number(5.0)
        );
    }

    #[test]
    fn plain_runs_stop_at_quotes_backslashes_and_control_characters() {
        for text in [
            "",
            "abc",
            "abcdefgh\"",
            "abcdefghijk\\x",
            "ab\ncd",
            "😀😀😀\"",
            "0123456789abcdef",
            "x\u{1f}",
        ] {
            let expected = text
                .bytes()
                .position(|b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(text.len());
            assert_eq!(plain_run(text.as_bytes()), expected, "{text:?}");
        }
    }

    #[test]
    fn number_fast_path_matches_the_standard_parser() {
        for text in [
            "0",
            "-0",
            "5",
            "1.5",
            "-12.5",
            "1013.25",
            "0.1",
            "123456789012345",
            "1234567890123456789",
            "0.00000000000000001",
            "1e3",
            "1.5E-7",
            "-2.5e+2",
        ] {
            let expected: f64 = text.parse().unwrap();
            assert_eq!(
                parse_json_number(text).to_bits(),
                expected.to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(query(&deep, "a"), "unparsed");
    }
}
