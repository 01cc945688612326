//! The device-scope API on the HTTPS listener (nested deployments, spec 6.2): a child hub's
//! `$edgeHub` learns the identities of its scope, as the legacy hub serves them
//! (`DeviceScopeController`):
//!
//! ```text
//! POST /devices/{actorDeviceId}/modules/{actorModuleId}/devicesAndModulesInTargetDeviceScope?api-version=...
//! Authorization: SharedAccessSignature sr=...   (a token of the actor, a child's $edgeHub)
//! {"authChain": "{targetDeviceId};...", "pageSize": 1000, "continuationLink": null}
//! ```
//!
//! The answer is [`ScopeResult`] (200); a refusal is `{"ErrorMessage": "..."}` with 400 (bad
//! body, path or chain), 401 (no or bad token), 403 (a target outside the actor's scope), 404
//! (another path), 405 (not POST) or 413 (a body over [`MAX_BODY`]). What is in a scope and who
//! may read it: [`crate::identity::scope`].

use std::time::SystemTime;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use super::json_response;
use crate::identity::id::EDGE_HUB;
use crate::identity::scope::{ScopeRequest, ScopeResult};
use crate::identity::{ClientIdentity, validate_device_id, validate_module_id};
use crate::mqtt::auth::Authenticator;

/// The largest request body accepted (a request is a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;

/// The last segment of the scope path.
const OPERATION: &str = "devicesAndModulesInTargetDeviceScope";

/// A refusal: the status and a message for the caller.
type Refusal = (StatusCode, String);

/// Whether `path` is the device-scope API's (`/devices/...`): the HTTPS listener sends such
/// requests to [`serve`].
#[must_use]
pub fn is_scope_path(path: &str) -> bool {
    path.starts_with("/devices/")
}

/// Answers one device-scope request, from the registry of `auth` (this hub is device
/// `this_device`).
pub async fn serve(
    auth: &dyn Authenticator,
    this_device: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let outcome = async {
        let actor = check_request(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        )?;
        let authorization = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| unauthorized("the Authorization header is not text"))
            })
            .transpose()?;
        authenticate(auth, &actor, authorization.as_deref())?;
        let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body exceeds {MAX_BODY} bytes"),
                )
            })?
            .to_bytes();
        scope_of(auth, this_device, &actor, &body)
    }
    .await;
    match outcome {
        Ok(result) => json_response(
            StatusCode::OK,
            &serde_json::to_value(&result).expect("a scope result always serializes"),
        ),
        Err((status, message)) => {
            json_response(status, &serde_json::json!({ "ErrorMessage": message }))
        }
    }
}

/// The actor the method, path and query name: `POST
/// /devices/{d}/modules/{m}/devicesAndModulesInTargetDeviceScope?api-version=...`, ids
/// percent-encoded and valid.
///
/// # Errors
///
/// 405 for another method, 404 for another path, 400 for a bad id or no `api-version`.
fn check_request(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Result<ClientIdentity, Refusal> {
    let not_found = || (StatusCode::NOT_FOUND, "no such resource".to_owned());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["devices", device, "modules", module, OPERATION] = segments.as_slice() else {
        return Err(not_found());
    };
    if method != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST is served".to_owned(),
        ));
    }
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let decode = |segment: &str| {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| bad("an id in the path is not UTF-8".to_owned()))
    };
    let (device, module) = (decode(device)?, decode(module)?);
    validate_device_id(&device).map_err(|e| bad(format!("invalid actor: {e}")))?;
    validate_module_id(&module).map_err(|e| bad(format!("invalid actor: {e}")))?;
    let has_version = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(name, value)| name == "api-version" && !value.is_empty());
    if !has_version {
        return Err(bad("the api-version query parameter is required".to_owned()));
    }
    Ok(ClientIdentity::module(device, module))
}

fn unauthorized(message: &str) -> Refusal {
    (StatusCode::UNAUTHORIZED, message.to_owned())
}

/// Checks the actor's token against the registry.
///
/// # Errors
///
/// 401 without a token or with one that is not the actor's; 404 when this hub serves no scope.
fn authenticate(
    auth: &dyn Authenticator,
    actor: &ClientIdentity,
    authorization: Option<&str>,
) -> Result<(), Refusal> {
    let (registry, hostnames) = auth.registry().ok_or((
        StatusCode::NOT_FOUND,
        "this hub serves no device scope".to_owned(),
    ))?;
    let token = authorization.ok_or_else(|| unauthorized("Authorization is required"))?;
    if actor.module_id.as_deref() != Some(EDGE_HUB) {
        // Only a $edgeHub has a scope: refuse before looking at any key.
        tracing::warn!(%actor, "device scope request refused: the actor is not an edge hub");
        return Err((
            StatusCode::FORBIDDEN,
            format!("{actor} is not an edge hub; only $edgeHub reads a device scope"),
        ));
    }
    match crate::sas::verify_token(token, actor, registry, hostnames, SystemTime::now()) {
        Ok(_) => Ok(()),
        Err(error) if error.is_internal() => {
            tracing::error!(error = %format!("{:#}", anyhow::Error::from(error)), "device scope request failed");
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the identity registry cannot be read".to_owned(),
            ))
        }
        Err(error) => {
            let reason = format!("{:#}", anyhow::Error::from(error));
            tracing::warn!(%actor, %reason, "device scope request refused");
            Err(unauthorized("not authorized"))
        }
    }
}

/// The page of the scope `body` asks for.
///
/// # Errors
///
/// 400 for a bad body, 403 for a target outside the actor's scope, 500 when the registry
/// cannot be read.
fn scope_of(
    auth: &dyn Authenticator,
    this_device: &str,
    actor: &ClientIdentity,
    body: &[u8],
) -> Result<ScopeResult, Refusal> {
    use crate::identity::scope::ScopeError;
    let request: ScopeRequest = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid scope request: {e}"),
        )
    })?;
    let (registry, _) = auth.registry().ok_or((
        StatusCode::NOT_FOUND,
        "this hub serves no device scope".to_owned(),
    ))?;
    let identities = registry.list().map_err(|e| {
        tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "device scope request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the identity registry cannot be read".to_owned(),
        )
    })?;
    match crate::identity::scope::answer(&identities, this_device, actor, &request) {
        Ok(result) => {
            // Every child asks every few seconds: not worth more than a debug line.
            tracing::debug!(
                %actor,
                devices = result.devices.len(),
                modules = result.modules.len(),
                "device scope served"
            );
            Ok(result)
        }
        Err(error @ (ScopeError::NotAnEdgeHub(_) | ScopeError::OutOfScope { .. })) => {
            tracing::warn!(%actor, %error, "device scope request refused");
            Err((StatusCode::FORBIDDEN, error.to_string()))
        }
        Err(error @ (ScopeError::AuthChain(_) | ScopeError::ContinuationLink(_))) => {
            Err((StatusCode::BAD_REQUEST, error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::identity::{Hostnames, IdentityRegistry};
    use crate::mqtt::auth::SasAuthenticator;

    const HUB: &str = "hub.example.net";
    const PATH: &str = "/devices/child-1/modules/$edgeHub/devicesAndModulesInTargetDeviceScope";
    const QUERY: Option<&str> = Some("api-version=2020-06-30-preview");

    struct Fixture {
        _dir: tempfile::TempDir,
        auth: SasAuthenticator,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let registry = IdentityRegistry::open(dir.path(), "parent").unwrap();
        registry.add_edge_device("child-1", None).unwrap();
        registry.add_edge_device("child-2", None).unwrap();
        registry.add_device_under("leaf-9", "child-1").unwrap();
        registry.add_module_of("child-1", "filter").unwrap();
        let hostnames = Hostnames {
            iothub: HUB.to_owned(),
            gateway: "parent.local".to_owned(),
        };
        Fixture {
            _dir: dir,
            auth: SasAuthenticator::new(registry, hostnames),
        }
    }

    impl Fixture {
        fn token(&self, device: &str, module: &str) -> String {
            let (registry, _) = self.auth.registry().unwrap();
            let identity = registry.get(device, Some(module)).unwrap().unwrap();
            let expiry =
                SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(3600);
            crate::sas::sign(
                &format!("{HUB}/devices/{device}/modules/{module}"),
                &identity.primary_key,
                expiry.as_secs(),
            )
        }
    }

    #[test]
    fn only_the_scope_path_posted_with_an_api_version_is_served() {
        let actor = check_request(&Method::POST, PATH, QUERY).unwrap();
        assert_eq!(actor, ClientIdentity::module("child-1", EDGE_HUB));
        let encoded = "/devices/child%2D1/modules/%24edgeHub/devicesAndModulesInTargetDeviceScope";
        assert_eq!(check_request(&Method::POST, encoded, QUERY).unwrap(), actor);
        let status = |method: &Method, path: &str, query: Option<&str>| {
            check_request(method, path, query).unwrap_err().0
        };
        assert_eq!(
            status(&Method::GET, PATH, QUERY),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(&Method::POST, PATH, None), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&Method::POST, PATH, Some("api-version=")),
            StatusCode::BAD_REQUEST
        );
        for path in [
            "/devices/child-1/modules/$edgeHub/getDeviceAndModuleOnBehalfOf",
            "/devices/child-1/devicesAndModulesInTargetDeviceScope",
            "/devices/child-1/modules/$edgeHub/devicesAndModulesInTargetDeviceScope/x",
            "/devices//modules//devicesAndModulesInTargetDeviceScope/",
        ] {
            assert_eq!(
                status(&Method::POST, path, QUERY),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        for path in [
            "/devices/a%20b/modules/$edgeHub/devicesAndModulesInTargetDeviceScope",
            "/devices/child-1/modules/%24other/devicesAndModulesInTargetDeviceScope",
            "/devices/%FF/modules/$edgeHub/devicesAndModulesInTargetDeviceScope",
            "/devices//modules/$edgeHub/devicesAndModulesInTargetDeviceScope",
        ] {
            assert_eq!(
                status(&Method::POST, path, QUERY),
                StatusCode::BAD_REQUEST,
                "{path}"
            );
        }
        assert!(is_scope_path(PATH));
        assert!(!is_scope_path("/twins/dev/methods"));
    }

    #[test]
    fn the_actor_proves_it_is_the_childs_edge_hub() {
        let f = fixture();
        let child = ClientIdentity::module("child-1", EDGE_HUB);
        authenticate(&f.auth, &child, Some(&f.token("child-1", EDGE_HUB))).unwrap();
        let status = |actor: &ClientIdentity, token: Option<&str>| {
            authenticate(&f.auth, actor, token).unwrap_err().0
        };
        assert_eq!(status(&child, None), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&child, Some("garbage")), StatusCode::UNAUTHORIZED);
        // Another child's token does not prove child-1.
        let other = f.token("child-2", EDGE_HUB);
        assert_eq!(status(&child, Some(&other)), StatusCode::UNAUTHORIZED);
        // A module of the child is no edge hub, whatever its token.
        let filter = ClientIdentity::module("child-1", "filter");
        assert_eq!(
            status(&filter, Some(&f.token("child-1", "filter"))),
            StatusCode::FORBIDDEN
        );
        let unknown = ClientIdentity::module("stranger", EDGE_HUB);
        assert_eq!(status(&unknown, Some(&other)), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn another_childs_scope_is_refused_and_bad_bodies_are_400() {
        let f = fixture();
        let child = ClientIdentity::module("child-1", EDGE_HUB);
        let result = scope_of(
            &f.auth,
            "parent",
            &child,
            br#"{"authChain": "child-1;parent"}"#,
        )
        .unwrap();
        let devices: Vec<&str> = result
            .devices
            .iter()
            .map(|d| d.device_id.as_str())
            .collect();
        assert_eq!(devices, ["child-1", "leaf-9"]);
        assert_eq!(result.modules.len(), 2, "$edgeHub and filter");
        let status = |body: &[u8]| scope_of(&f.auth, "parent", &child, body).unwrap_err().0;
        assert_eq!(
            status(br#"{"authChain": "child-2"}"#),
            StatusCode::FORBIDDEN
        );
        assert_eq!(status(br#"{"authChain": "leaf-9"}"#), StatusCode::FORBIDDEN);
        for bad in [
            &b"not json"[..],
            b"",
            br#"{"pageSize": 5}"#,
            br#"{"authChain": ""}"#,
            br#"{"authChain": "child-1", "continuationLink": "x"}"#,
            br#"{"authChain": "child-1", "pageSize": -3}"#,
            &[0xff, 0xfe],
        ] {
            assert_eq!(
                status(bad),
                StatusCode::BAD_REQUEST,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
