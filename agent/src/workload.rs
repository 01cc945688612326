//! The workload API (spec 11): HTTP/1.1 on one unix socket per module, so that modules built
//! with the SDKs' `create_from_edge_environment` sign their SAS tokens with keys only the
//! agent holds, and trust the hub's CA.
//!
//! A socket serves one module: a request naming another module gets 403 (the reference checks
//! the caller's container; here the socket is the module's own, in a folder only the agent
//! and that module reach).

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit as _, Mac as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::identity::Identities;

/// The API versions accepted.
pub const API_VERSIONS: [&str; 7] = [
    "2018-06-28",
    "2019-01-30",
    "2019-10-22",
    "2019-11-05",
    "2020-07-07",
    "2021-12-07",
    "2022-08-03",
];

/// The version given to modules in `IOTEDGE_APIVERSION`.
pub const API_VERSION: &str = "2019-01-30";

/// The largest body accepted.
const MAX_BODY: usize = 64 * 1024;

/// What the workload API serves from: the keys, and the hub's CA.
#[derive(Debug)]
pub struct Workload {
    identities: Arc<Identities>,
}

type Reply = (StatusCode, Value);

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, json!({ "message": message.into() }))
}

/// A request's JSON body, or the 422 that answers a body that is not JSON.
fn json_body(body: &[u8]) -> Result<Value, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the body is not JSON: {e}"),
        )
    })
}

impl Workload {
    /// A workload API over `identities` (and the CA of their hub).
    #[must_use]
    pub fn new(identities: Arc<Identities>) -> Self {
        Self { identities }
    }

    /// Answers one request made on `module`'s socket.
    #[must_use]
    pub fn respond(
        &self,
        module: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let version = query.and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("api-version="))
        });
        match version {
            None => return error(StatusCode::BAD_REQUEST, "api-version not specified"),
            Some(v) if !API_VERSIONS.contains(&v) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid api-version {v:?}"),
                );
            }
            Some(_) => {}
        }
        let segments: Option<Vec<String>> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(std::borrow::Cow::into_owned)
            })
            .collect();
        let Some(segments) = segments else {
            return error(StatusCode::BAD_REQUEST, "the path is not UTF-8");
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["trust-bundle"]) => self.trust_bundle(),
            (&Method::GET, ["manifest-trust-bundle"]) => {
                (StatusCode::OK, json!({ "certificate": "" }))
            }
            (&Method::POST, ["modules", id, "genid", _, "sign"]) => {
                if *id != module {
                    return error(
                        StatusCode::FORBIDDEN,
                        format!("this socket serves {module}, not {id}"),
                    );
                }
                self.sign(id, body)
            }
            (&Method::POST, ["modules", id, "genid", _, "certificate", "server"]) => {
                if *id != module {
                    return error(
                        StatusCode::FORBIDDEN,
                        format!("this socket serves {module}, not {id}"),
                    );
                }
                self.server_certificate(body)
            }
            _ => error(StatusCode::NOT_FOUND, format!("no {method} {path}")),
        }
    }

    fn sign(&self, module: &str, body: &[u8]) -> Reply {
        if body.iter().all(u8::is_ascii_whitespace) {
            return error(StatusCode::BAD_REQUEST, "the body is missing");
        }
        let request = match json_body(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let Some(data) = request.get("data").and_then(Value::as_str) else {
            return error(StatusCode::BAD_REQUEST, "data is missing");
        };
        let Ok(data) = STANDARD.decode(data) else {
            return error(StatusCode::BAD_REQUEST, "data is not base64");
        };
        let Some(identity) = self.identities.get(module) else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the agent holds no key for {module}"),
            );
        };
        match hmac::Hmac::<sha2::Sha256>::new_from_slice(&identity.key) {
            Ok(mut mac) => {
                mac.update(&data);
                (
                    StatusCode::OK,
                    json!({ "digest": STANDARD.encode(mac.finalize().into_bytes()) }),
                )
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    fn trust_bundle(&self) -> Reply {
        if let Err(e) = self.identities.hub().ensure_ca() {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        let path = self.identities.hub().ca_cert();
        match std::fs::read_to_string(&path) {
            Ok(pem) => (StatusCode::OK, json!({ "certificate": pem })),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: {e}", path.display()),
            ),
        }
    }

    fn server_certificate(&self, body: &[u8]) -> Reply {
        let request = match json_body(body) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let Some(common_name) = request.get("commonName").and_then(Value::as_str) else {
            return error(StatusCode::BAD_REQUEST, "commonName is missing");
        };
        if let Err(e) = self.identities.hub().ensure_ca() {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        match server_certificate(
            &self.identities.hub().ca_cert(),
            &self.identities.hub().ca_key(),
            common_name,
        ) {
            Ok((key, chain, expiration)) => (
                StatusCode::OK,
                json!({ "privateKey": { "type": "key", "bytes": key }, "certificate": chain, "expiration": expiration }),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

/// A server certificate for `common_name` signed by the CA at `ca_cert`/`ca_key`: (key PEM,
/// chain PEM, expiration RFC 3339).
fn server_certificate(
    ca_cert: &Path,
    ca_key: &Path,
    common_name: &str,
) -> Result<(String, String, String), String> {
    let ca_pem =
        std::fs::read_to_string(ca_cert).map_err(|e| format!("{}: {e}", ca_cert.display()))?;
    let key_pem =
        std::fs::read_to_string(ca_key).map_err(|e| format!("{}: {e}", ca_key.display()))?;
    let ca_key =
        rcgen::KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", ca_key.display()))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| format!("{}: {e}", ca_cert.display()))?;
    let mut names = vec![common_name.to_owned()];
    if common_name.eq_ignore_ascii_case("localhost") {
        names.push("127.0.0.1".into());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    let expiration = now + time::Duration::days(90);
    params.not_before = now - time::Duration::hours(1);
    params.not_after = expiration;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let expiration = expiration
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| e.to_string())?;
    Ok((
        key.serialize_pem(),
        format!("{}{ca_pem}", cert.pem()),
        expiration,
    ))
}

/// Serves `module`'s workload socket at `path` until the returned task is aborted.
///
/// # Errors
///
/// When the socket cannot be bound.
pub fn serve(
    workload: Arc<Workload>,
    module: String,
    path: &Path,
) -> std::io::Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        // The module's own folder: only the agent's user (and the module, which runs as it or
        // as root in its container) reaches the socket.
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let path: PathBuf = path.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "workload accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let workload = Arc::clone(&workload);
            let module = module.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let workload = Arc::clone(&workload);
                    let module = module.clone();
                    async move { Ok::<_, Infallible>(handle(&workload, &module, request).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

async fn handle(
    workload: &Workload,
    module: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let (status, body) = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => workload.respond(module, &method, &path, query.as_deref(), &body.to_bytes()),
        Err(e) => error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
