//! What several targets share: an arbitrary message and a scratch folder.

#![allow(dead_code)]

use std::path::PathBuf;

use arbitrary::Arbitrary;
use router::{Message, Properties};

/// A message for route conditions: properties, system properties, and a body that is
/// often JSON (the fuzzer's text, or a value built from it).
#[derive(Debug, Arbitrary)]
pub struct ArbMessage {
    pub properties: Vec<(String, String)>,
    pub system_properties: Vec<(String, String)>,
    /// Mark the body `application/json` and `utf-8`, so that `$body` queries read it.
    pub json: bool,
    pub body: Vec<u8>,
}

impl ArbMessage {
    pub fn to_message(&self) -> Message {
        let mut properties = Properties::new();
        for (k, v) in &self.properties {
            properties.insert(k.as_str(), v.as_str());
        }
        let mut system_properties = Properties::new();
        for (k, v) in &self.system_properties {
            system_properties.insert(k.as_str(), v.as_str());
        }
        if self.json {
            system_properties.insert("contentType", "application/json");
            system_properties.insert("contentEncoding", "utf-8");
        }
        Message {
            body: bytes::Bytes::copy_from_slice(&self.body),
            properties,
            system_properties,
        }
    }
}

/// A folder of this process, on tmpfs when there is one (twins and the store write files;
/// fsync on tmpfs costs nothing). libFuzzer exits without running destructors, so the folders
/// of processes that are gone are removed here instead.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let prefix = format!("edgehub-fuzz-{name}-");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}
