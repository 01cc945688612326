//! The illustrative examples of the route spec, section 8, with its message.

use router::{Condition, Message, Outcome};
use serde_json::json;

fn message(content_type: &str) -> Message {
    Message::from_json(&json!({
        "body": r#"{"temp": 50, "name": "Sensor-A", "flag": true, "off": false, "nul": null, "arr": [10,20,30], "obj": {"n": 7}, "ts": "2017-03-09T00:00:00.000Z"}"#,
        "contentType": content_type,
        "contentEncoding": "utf-8",
        "systemProperties": {"connectionDeviceId": "dev1", "connectionModuleId": "mod1", "cid": "corr-1", "dollar": "sysdollar"},
        "properties": {"key1": "value1", "num": "42", "Level": "HIGH", "$dollar": "appwins"}
    }))
    .unwrap()
}

/// `T` routes, `F` false, `U` undefined, `X` rejected at load.
const EXAMPLES: &[(&str, char)] = &[
    ("key1 = 'value1'", 'T'),
    ("KEY1 = 'value1'", 'T'),
    ("key1 = 'VALUE1'", 'F'),
    ("missing = 'x'", 'U'),
    ("NOT (missing = 'x')", 'U'),
    ("num > 30", 'X'),
    ("as_number(num) > 30", 'T'),
    ("num > '100'", 'T'),
    ("$connectionDeviceId = 'dev1'", 'T'),
    ("$dollar = 'appwins'", 'T'),
    ("{$dollar} = 'sysdollar'", 'T'),
    ("$correlationId = 'corr-1'", 'T'),
    ("$body.temp > 49.5", 'T'),
    ("$body.temp = '50'", 'F'),
    ("$body.temp < 'a'", 'T'),
    ("$body.TEMP = 50", 'F'),
    ("$body.nosuch = null", 'T'),
    ("is_defined($body.nosuch)", 'T'),
    ("is_null($body.temp)", 'T'),
    ("$body.obj = null", 'U'),
    ("$body.ts = '2017-03-09T00:00:00.000Z'", 'U'),
    ("$body.flag", 'T'),
    ("$body.temp", 'U'),
    ("$body.nosuch OR true", 'U'),
    ("$body.flag AND true", 'T'),
    ("true AND $body.flag", 'X'),
    ("NOT $body.temp = 5", 'X'),
    ("false = 1 > 2", 'T'),
    ("'a' || 'b' = 'ab'", 'T'),
    ("'a'||'b' = 'ab'", 'U'),
    ("key1!='other'", 'U'),
    ("TRUE", 'U'),
    ("null", 'F'),
    ("undefined OR true", 'T'),
    ("(missing ?? 'd') = 'd'", 'T'),
    ("substring('hello', 5) = ''", 'T'),
    ("is_defined(substring('hello', 5, 0))", 'F'),
    ("0/0 = 0/0", 'U'),
    ("1/0 = 2/0", 'T'),
    ("$body.temp % 2 = 0", 'X'),
    ("is_bool(missing = 'x')", 'U'),
    // More from the spec's prose.
    ("NOT x = 'a'", 'X'),
    ("NOT 1 = 2", 'X'),
    ("x ?? 'd' = 'd'", 'X'),
    ("($body.nosuch ?? 5) = 5", 'F'),
    ("($body.obj ?? 5) = 5", 'T'),
    ("$body.nosuch <> 'x'", 'T'),
    ("$body.name > 1000", 'T'),
    ("$body.nosuch > 5", 'T'),
    ("NOT ($body.off AND undefined)", 'U'),
    ("NOT (false AND undefined)", 'T'),
    ("-7 % 3 = -1", 'T'),
    ("5.5 % 2 = 1.5", 'T'),
    ("is_defined(5 % 0)", 'F'),
    ("as_number(' 12 ') = 12", 'T'),
    ("as_number('(5)') = -5", 'T'),
    ("as_number('5-') = -5", 'T'),
    ("is_defined(as_number('0x10'))", 'F'),
    ("sign(1/0) = 1", 'T'),
    ("floor(-2.1) = -3", 'T'),
    ("index_of('abc', '') = 0", 'T'),
    ("starts_with('abc', '')", 'T'),
    ("concat('a', 'b', 'c') = 'abc'", 'T'),
    ("length('😀') = 2", 'T'),
    ("upper('straße') = 'STRAßE'", 'T'),
    ("'\\\\u0041' = '\\\\A'", 'T'),
    ("10e1000 = 1/0", 'T'),
    ("is_defined(0xFFFFFFFFFFFFFFFFF)", 'F'),
    ("0xFFFFFFFFFFFFFFFF = -1", 'T'),
    ("null = null", 'T'),
    ("null <> null", 'F'),
    ("undefined = undefined", 'U'),
    ("null OR true", 'T'),
    ("null OR null", 'F'),
    ("NOT null", 'T'),
    ("null AND undefined", 'X'),
    ("undefined < 5", 'X'),
    ("3 + undefined", 'X'),
    ("null = 1", 'X'),
    ("'a' + 'b' = 'ab'", 'X'),
    ("NOT 'x'", 'X'),
    ("x AND true", 'X'),
    ("abs('x') = 1", 'X'),
    ("abs(null) = 1", 'X'),
    ("abs(undefined) = 1", 'X'),
    ("abs(true) = 1", 'X'),
    ("abs(key1) = 1", 'X'),
    ("upper(5) = 'a'", 'X'),
    ("length(null) = 1", 'X'),
    ("concat('a') = 'a'", 'X'),
    ("concat('a', null) = 'a'", 'X'),
    ("substring('abc') = 'a'", 'X'),
    ("index_of('abc', 1) = 1", 'X'),
    ("sqrt('4') = 2", 'X'),
    ("twin_change_includes(x)", 'X'),
    ("power($body.temp, length($body.name)) = 50", 'F'),
    ("is_null($body.nul) AND $body.nul = null", 'T'),
    ("$twin.tags.x = 'a'", 'U'),
    ("$foo[0] = $bar[1]", 'U'),
];

#[test]
fn spec_examples_evaluate_as_documented() {
    let message = message("application/json");
    let mut failures = Vec::new();
    for &(text, want) in EXAMPLES {
        let got = match Condition::compile(text) {
            Err(_) => 'X',
            Ok(condition) => {
                let compiled = condition.evaluate(&message);
                let reference = condition.interpret(&message);
                if compiled != reference {
                    failures.push(format!(
                        "{text}: compiled {compiled:?}, reference {reference:?}"
                    ));
                }
                match compiled {
                    Outcome::True => 'T',
                    Outcome::False => 'F',
                    Outcome::Undefined => 'U',
                }
            }
        };
        if got != want {
            failures.push(format!("{text}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_body_that_is_not_json_is_undefined() {
    let condition = Condition::compile("$body.temp").unwrap();
    assert_eq!(
        condition.evaluate(&message("text/plain")),
        Outcome::Undefined
    );
}
