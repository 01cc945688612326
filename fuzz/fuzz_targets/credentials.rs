//! CONNECT credentials: the username grammar, the client id check, SAS tokens, and the
//! authenticator the MQTT and HTTPS listeners call, on any text.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use edgehub::identity::{Hostnames, Identity, IdentityRegistry, check_client_id, parse_username};
use edgehub::mqtt::auth::{Authenticator, Credentials, SasAuthenticator};
use edgehub::sas::{self, SasToken};
use libfuzzer_sys::fuzz_target;

#[path = "../common/mod.rs"]
mod common;

const EDGE: &str = "edge";

struct Fixture {
    registry: IdentityRegistry,
    auth: SasAuthenticator,
    hostnames: Hostnames,
    module: Identity,
    device: Identity,
}

fn hostnames() -> Hostnames {
    Hostnames {
        iothub: "hub.azure-devices.net".to_owned(),
        gateway: "gateway".to_owned(),
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = common::scratch_dir("credentials");
        let registry = IdentityRegistry::open(&dir, EDGE).expect("a registry");
        let module = registry.add_module("filter").expect("a module");
        let device = registry.add_device("leaf").expect("a device");
        Fixture {
            registry: IdentityRegistry::open(&dir, EDGE).expect("a registry"),
            auth: SasAuthenticator::new(
                IdentityRegistry::open(&dir, EDGE).expect("a registry"),
                hostnames(),
            ),
            hostnames: hostnames(),
            module,
            device,
        }
    })
}

#[derive(Debug, Arbitrary)]
enum Password {
    /// Any text.
    Text(String),
    /// A token the hub's own signer makes for `resource`, with the key of the module (or the
    /// device), expiring at `expiry`: what a genuine SDK sends, audience and expiry chosen by
    /// the fuzzer.
    Signed {
        resource: String,
        device_key: bool,
        expiry: u64,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    client_id: String,
    username: Option<String>,
    password: Option<Password>,
    /// Seconds since the epoch of the check.
    now: u32,
}

fuzz_target!(|input: Input| {
    let fixture = fixture();
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(input.now) + 1_700_000_000);
    let password = input.password.as_ref().map(|p| match p {
        Password::Text(text) => text.clone(),
        Password::Signed {
            resource,
            device_key,
            expiry,
        } => {
            let key = if *device_key {
                &fixture.device.primary_key
            } else {
                &fixture.module.primary_key
            };
            let token = sas::sign(resource, key, *expiry);
            match SasToken::parse(&token) {
                Ok(parsed) => {
                    assert_eq!(parsed.expiry(), *expiry);
                    assert_eq!(&parsed.audience(), resource);
                    assert!(parsed.is_signed_with(key));
                }
                Err(e) => assert!(*expiry > sas::MAX_EXPIRY, "a token the hub signs: {e}"),
            }
            token
        }
    });

    if let Some(username) = &input.username
        && let Ok(parsed) = parse_username(username)
    {
        let identity = &parsed.identity;
        assert!(!identity.device_id.is_empty());
        assert_eq!(identity.device_id.trim(), identity.device_id);
        let checked = check_client_id(&input.client_id, identity);
        assert_eq!(checked.is_ok(), input.client_id == identity.to_string());
        if let Some(token) = password.as_deref().and_then(|p| SasToken::parse(p).ok()) {
            let _ = token.audience();
            let _ = token.is_expired(now);
            let _ = token.valid_until();
            let _ = token.is_signed_with(&fixture.module.secondary_key);
            let _ = token.check_audience(identity, &fixture.hostnames);
        }
    }
    if let Some(password) = &password
        && let Ok(token) = SasToken::parse(password)
    {
        let _ = token.is_expired(SystemTime::now());
    }

    let result = sas::authenticate(
        &input.client_id,
        input.username.as_deref(),
        password.as_deref(),
        &fixture.registry,
        &fixture.hostnames,
        now,
    );
    if let Ok(authenticated) = &result {
        // Only the two identities of the registry get in, as themselves.
        let who = authenticated.identity.to_string();
        assert_eq!(who, input.client_id);
        assert!(
            who == fixture.module.id.to_string() || who == fixture.device.id.to_string(),
            "authenticated as {who}"
        );
        assert!(authenticated.valid_until >= now);
    }
    let credentials = Credentials {
        client_id: &input.client_id,
        username: input.username.as_deref(),
        password: password.as_deref(),
    };
    if let Ok(grant) = fixture.auth.authenticate(&credentials) {
        assert_eq!(grant.identity.client_id(), input.client_id);
    }
});
