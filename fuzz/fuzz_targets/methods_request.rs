//! The HTTPS direct-methods request (`POST /twins/{device}[/modules/{module}]/methods`):
//! `parse_call` on any path and body; and whole HTTP exchanges with the endpoint, the
//! caller's token accepted, the target connected and answering with the fuzzer's status and
//! payload. Time is tokio's paused clock: timeouts pass at once and the run is deterministic.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgehub::http::methods::{MethodsEndpoint, parse_call, serve_connection};
use edgehub::identity::{Hostnames, IdentityRegistry};
use edgehub::methods::{MAX_TIMEOUT, Methods, validate_method_name};
use edgehub::mqtt::auth::SasAuthenticator;
use edgehub::mqtt::session::{Link, Sessions};
use edgehub::stop::StopSignal;
use libfuzzer_sys::fuzz_target;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[path = "../common/mod.rs"]
mod common;

const EDGE: &str = "edge";
const TARGET: &str = "edge/target";

/// The hub's authenticator over a registry holding the caller, and a token of the caller's.
struct Fixture {
    auth: Arc<SasAuthenticator>,
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = common::scratch_dir("methods_request");
        let registry = IdentityRegistry::open(&dir, EDGE).expect("a registry");
        let caller = registry.add_module("caller").expect("a module");
        let hostnames = Hostnames {
            iothub: "hub.azure-devices.net".to_owned(),
            gateway: "gateway".to_owned(),
        };
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 10 * 365 * 24 * 3600;
        Fixture {
            auth: Arc::new(SasAuthenticator::new(registry, hostnames)),
            token: edgehub::sas::sign(
                "gateway/devices/edge/modules/caller",
                &caller.primary_key,
                expiry,
            ),
        }
    })
}

/// `[flags] path 0 body 0 caller 0 status 0 answer`; flag 1: a whole HTTP exchange (else
/// `parse_call` alone); flag 2: the bytes after the flags are the raw HTTP request.
struct Input<'a> {
    exchange: bool,
    raw: Option<&'a [u8]>,
    path: &'a [u8],
    body: &'a [u8],
    caller: &'a [u8],
    status: &'a [u8],
    answer: &'a [u8],
}

impl<'a> Input<'a> {
    fn split(data: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let mut parts = rest.split(|&b| b == 0);
        let mut next = |default: &'static [u8]| parts.next().unwrap_or(default);
        Some(Self {
            exchange: flags & 1 != 0,
            raw: (flags & 2 != 0).then_some(rest),
            path: next(b"/twins/edge/modules/target/methods"),
            body: next(br#"{"methodName":"m","payload":{}}"#),
            caller: next(b"edge/caller"),
            status: next(b"200"),
            answer: next(b"{}"),
        })
    }

    fn request(&self) -> Vec<u8> {
        if let Some(raw) = self.raw {
            return raw.to_vec();
        }
        let mut request = b"POST ".to_vec();
        request.extend_from_slice(self.path);
        request.extend_from_slice(b" HTTP/1.1\r\nhost: gateway\r\nx-ms-edge-moduleId: ");
        request.extend_from_slice(self.caller);
        request.extend_from_slice(b"\r\nauthorization: ");
        request.extend_from_slice(fixture().token.as_bytes());
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(
            format!(
                "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                self.body.len()
            )
            .as_bytes(),
        );
        request.extend_from_slice(self.body);
        request
    }
}

fn check_parse(path: &str, body: &[u8]) {
    if let Ok(call) = parse_call(path, body) {
        validate_method_name(&call.method).expect("a call's method name is valid");
        assert!(call.connect_timeout <= MAX_TIMEOUT);
        assert!(call.response_timeout <= MAX_TIMEOUT);
        assert!(call.response_timeout >= Duration::from_secs(5));
        let (device, module) = call.target.split_once('/').unwrap_or((&call.target, ""));
        edgehub::identity::validate_device_id(device).expect("a call's target is valid");
        if !module.is_empty() {
            edgehub::identity::validate_module_id(module).expect("a call's target is valid");
        }
    }
}

async fn exchange(input: &Input<'_>) {
    let sessions = Arc::new(Sessions::new(None));
    let methods = Arc::new(Methods::default());
    // The target: connected, subscribed to methods, answering every request.
    let (outbox, mut requests) = tokio::sync::mpsc::channel(8);
    let (close, _closed) = tokio::sync::watch::channel(false);
    let link = Link {
        id: sessions.next_link_id(),
        outbox,
        close,
    };
    sessions.connect(TARGET, true, link);
    let _ = sessions.subscribe(
        TARGET,
        &[("$iothub/methods/POST/#".to_owned(), QoS::AtLeastOnce)],
    );
    let status = String::from_utf8_lossy(input.status).into_owned();
    let answer = bytes::Bytes::copy_from_slice(input.answer);
    let responder = {
        let methods = Arc::clone(&methods);
        tokio::spawn(async move {
            while let Some(burst) = requests.recv().await {
                for request in burst {
                    let rid = request.topic.rsplit_once("?$rid=").map_or("", |(_, r)| r);
                    methods.respond(TARGET, rid, &status, answer.clone());
                }
            }
        })
    };
    let endpoint = Arc::new(MethodsEndpoint {
        device_id: EDGE.to_owned(),
        auth: Arc::clone(&fixture().auth) as Arc<dyn edgehub::mqtt::auth::Authenticator>,
        methods: Arc::clone(&methods),
        sessions: Arc::clone(&sessions),
    });
    let stop = StopSignal::new();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve_connection(server, endpoint, stop.subscribe()));
    let request = input.request();
    let client_side = async {
        let _ = client.write_all(&request).await;
        let mut response = Vec::new();
        let _ = client.read_to_end(&mut response).await;
    };
    // Virtual time: the hub's own deadlines (header read, method timeouts) end any exchange.
    if tokio::time::timeout(Duration::from_secs(3600), client_side)
        .await
        .is_err()
    {
        panic!("the exchange did not end within an hour of virtual time");
    }
    stop.fire();
    drop(client);
    server.await.expect("the connection task does not panic");
    responder.abort();
    assert_eq!(methods.pending(), 0, "a request's entry outlived its call");
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::split(data) else {
        return;
    };
    check_parse(&String::from_utf8_lossy(input.path), input.body);
    if input.exchange {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(exchange(&input));
    }
});
