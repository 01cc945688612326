//! Route text: the grammar, the checker and the compiler on any text; and every condition that
//! compiles, evaluated against an arbitrary message, gives the reference interpreter's answer.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use router::{CompiledRoute, Condition};

#[path = "../common/mod.rs"]
mod common;

/// `[flags] text [0 message]`: flag 1 means a whole route (`FROM ... WHERE ... INTO ...`),
/// else a condition alone; the text is UTF-8 (lossy); the message after the first NUL is
/// built by `arbitrary`. Seeds are plain route text after one flag byte.
#[derive(Debug)]
struct Input {
    whole_route: bool,
    text: String,
    message: common::ArbMessage,
}

impl Input {
    fn split(data: &[u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let (text, message) = match rest.iter().position(|&b| b == 0) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        let mut u = arbitrary::Unstructured::new(message);
        Some(Self {
            whole_route: flags & 1 == 1,
            text: String::from_utf8_lossy(text).into_owned(),
            message: common::ArbMessage::arbitrary(&mut u).ok()?,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::split(data) else {
        return;
    };
    let message = input.message.to_message();
    let condition = if input.whole_route {
        let parsed = grammar::parse_route(&input.text);
        let Ok(route) = CompiledRoute::compile(&input.text) else {
            return;
        };
        assert!(
            parsed.is_ok(),
            "compiles but does not parse: {:?}",
            input.text
        );
        let _ = route.warnings();
        let _ = route.source();
        let _ = route.endpoint();
        let _ = route.routes(&message);
        route.condition().clone()
    } else {
        let parsed = grammar::parse_condition(&input.text);
        let Ok(condition) = Condition::compile(&input.text) else {
            return;
        };
        assert!(
            parsed.is_ok(),
            "compiles but does not parse: {:?}",
            input.text
        );
        condition
    };
    let compiled = condition.evaluate(&message);
    let reference = condition.interpret(&message);
    assert_eq!(
        compiled,
        reference,
        "condition {:?} on {message:?}",
        condition.text()
    );
    let _ = condition.explain(&message);
});
