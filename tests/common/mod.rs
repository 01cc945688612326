//! Helpers shared by the tests that run the real `edgehub` binary.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod hubproc;
pub mod inproc;
pub mod probe;
pub mod sdk;
pub mod sensor;
pub mod small_fs;

/// The route most tests deploy: module `sender`'s output `out1` to module `receiver`'s input `in1`.
pub const SENDER_TO_RECEIVER: &str = "FROM /messages/modules/sender/outputs/out1 INTO BrokeredEndpoint(\"/modules/receiver/inputs/in1\")";

/// A TCP port free on 127.0.0.1 a moment ago, and never handed out before in this test
/// binary (tests run in parallel: without that, two hubs could be given the same port).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("binding an ephemeral port")
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// A deployment manifest with these `$edgeHub` routes and `$edgeAgent` modules.
pub fn manifest(routes: &Value, modules: &[&str]) -> Value {
    let modules: serde_json::Map<String, Value> = modules
        .iter()
        .map(|m| ((*m).to_owned(), json!({})))
        .collect();
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": modules}},
        "$edgeHub": {"properties.desired": {
            "schemaVersion": "1.1",
            "routes": routes,
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
        }}
    }})
}

/// Polls `ready` (a quick, blocking check) every 200 ms until it holds, without blocking the
/// runtime; panics after `within`.
pub async fn eventually(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `ready` every 50 ms until it holds; panics after `within`.
pub fn wait_until(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to `child` and returns its exit status; kills it and panics if it has not
/// exited within 20 s.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the hub") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the hub did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
