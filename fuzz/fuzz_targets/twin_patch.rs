//! Twin patches: reported patches (what a client publishes) and desired patches (what the
//! operator sets), merged into twins, some read from files the fuzzer wrote. An accepted patch
//! is persisted: the twin read back from its file is the twin in memory.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use edgehub::twin::Twins;
use libfuzzer_sys::fuzz_target;

#[path = "../common/mod.rs"]
mod common;

const CLIENTS: [&str; 2] = ["edge/filter", "leaf"];

fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| common::scratch_dir("twin_patch"))
}

/// The file the hub keeps the twin of `client_id` in (as `Twins` names it).
fn twin_file(dir: &std::path::Path, client_id: &str) -> PathBuf {
    let name: String = client_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    dir.join(format!("{name}.json"))
}

/// Equal JSON, numbers within a few units in the last place: serde_json without its
/// `float_roundtrip` feature parses some decimals one unit off, so a float read back from
/// the twin's file may differ from the one in memory (reported separately; see
/// `tests/fuzz_regressions.rs`).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

// The input is chunks separated by NUL bytes; each chunk is one operation byte and a body:
// bit 0 desired (else reported), bit 1 the second client, bit 2 the body is written as the
// twin's file instead (a twin left by an earlier build, or damaged).
fuzz_target!(|data: &[u8]| {
    let dir = base().join("twins");
    let _ = std::fs::remove_dir_all(&dir);
    let twins = Twins::new(dir.clone());
    for chunk in data.split(|&b| b == 0).take(8) {
        let Some((&op, body)) = chunk.split_first() else {
            continue;
        };
        let client = CLIENTS[usize::from(op & 2 != 0)];
        if op & 4 != 0 {
            std::fs::create_dir_all(&dir).expect("the twins folder");
            std::fs::write(twin_file(&dir, client), body).expect("a twin file");
            // A fresh `Twins`: no cached copy hides the file.
            let twins = Twins::new(dir.clone());
            let _ = twins.get(client);
            let _ = twins.patch_reported(client, br#"{"fuzz": 1}"#);
            let _ = twins.patch_desired(client, br#"{"fuzz": 1}"#);
            continue;
        }
        let (section, version) = if op & 1 != 0 {
            match twins.patch_desired(client, body) {
                Ok(Ok(patch)) => ("desired", patch["$version"].as_u64()),
                _ => continue,
            }
        } else {
            match twins.patch_reported(client, body) {
                Ok(Ok(version)) => ("reported", Some(version)),
                _ => continue,
            }
        };
        let twin = twins.get(client).expect("a twin just written is read");
        assert_eq!(twin[section]["$version"].as_u64(), version, "{twin}");
        let reread = Twins::new(dir.clone())
            .get(client)
            .expect("a twin just written is read from its file");
        assert!(
            same(&reread, &twin),
            "the twin's file differs from the twin in memory:\n{reread}\n{twin}"
        );
    }
});
