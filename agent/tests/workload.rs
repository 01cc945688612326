//! The workload API (spec 13 item 11) on a real unix socket: api-version required, a body
//! without Content-Type accepted, `%24edgeHub` decoded, the digest verifies, and the
//! certificate endpoints.

use std::sync::Arc;

use agent::identity::{HubConfig, Identities, ModuleIdentity};
use agent::workload::{Workload, serve};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit as _, Mac as _};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn setup(dir: &std::path::Path) -> Arc<Workload> {
    let certs = dir.join("data/certs");
    std::fs::create_dir_all(&certs).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    std::fs::write(certs.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(certs.join("ca.key.pem"), key.serialize_pem()).unwrap();
    let hub = HubConfig {
        path: dir.join("edgehub.toml"),
        device_id: "edge".into(),
        iothub_hostname: "hub.example.net".into(),
        gateway_hostname: "localhost".into(),
        data_dir: dir.join("data"),
    };
    let identities = Arc::new(Identities::new("edgehub".into(), hub));
    for module in ["$edgeHub", "filter"] {
        identities.insert(ModuleIdentity {
            module_id: module.into(),
            key: vec![7; 32],
            generation_id: "g".into(),
        });
    }
    Arc::new(Workload::new(identities))
}

fn expected_digest(data: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[7; 32]).unwrap();
    mac.update(data);
    STANDARD.encode(mac.finalize().into_bytes())
}

async fn raw_request(socket: &std::path::Path, request: &str) -> (u16, Value) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn sign_over_a_socket_without_content_type_and_with_an_encoded_module_id() {
    let dir = tempfile::tempdir().unwrap();
    let workload = setup(dir.path());
    let socket = dir.path().join("workload/edgeHub.sock");
    let server = serve(workload, "$edgeHub".into(), &socket).unwrap();
    // What an SDK signs: "<sr>\n<se>", base64.
    let to_sign = "hub.example.net%2Fdevices%2Fedge%2Fmodules%2F%2524edgeHub\n1700000000";
    let body =
        json!({ "keyId": "primary", "algo": "HMACSHA256", "data": STANDARD.encode(to_sign) })
            .to_string();
    let request = format!(
        "POST /modules/%24edgeHub/genid/1/sign?api-version=2019-01-30 HTTP/1.1\r\nHost: workload\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, reply) = raw_request(&socket, &request).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["digest"], json!(expected_digest(to_sign.as_bytes())));

    let (status, reply) = raw_request(
        &socket,
        "GET /trust-bundle HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(reply["message"], json!("api-version not specified"));
    server.abort();
}

#[test]
fn the_api_answers_each_case_with_the_reference_status() {
    let dir = tempfile::tempdir().unwrap();
    let w = setup(dir.path());
    let v = Some("api-version=2018-06-28");
    let sign = |module: &str, body: &[u8]| {
        w.respond(
            "filter",
            &Method::POST,
            &format!("/modules/{module}/genid/1/sign"),
            v,
            body,
        )
    };
    let data = json!({ "data": STANDARD.encode(b"abc") }).to_string();
    assert_eq!(sign("filter", data.as_bytes()).0, StatusCode::OK);
    assert_eq!(
        sign("filter", data.as_bytes()).1["digest"],
        json!(expected_digest(b"abc"))
    );
    assert_eq!(sign("other", data.as_bytes()).0, StatusCode::FORBIDDEN);
    assert_eq!(sign("filter", b"").0, StatusCode::BAD_REQUEST);
    assert_eq!(
        sign("filter", b"{not json").0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        sign("filter", br#"{"data": "!!"}"#).0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        w.respond(
            "filter",
            &Method::GET,
            "/trust-bundle",
            Some("api-version=1999-01-01"),
            b""
        )
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        w.respond("filter", &Method::GET, "/nothing", v, b"").0,
        StatusCode::NOT_FOUND
    );

    let (status, bundle) = w.respond("filter", &Method::GET, "/trust-bundle", v, b"");
    assert_eq!(status, StatusCode::OK);
    assert!(
        bundle["certificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    let (status, cert) = w.respond(
        "filter",
        &Method::POST,
        "/modules/filter/genid/1/certificate/server",
        v,
        br#"{"commonName": "edgehub"}"#,
    );
    assert_eq!(status, StatusCode::OK, "{cert}");
    assert!(
        cert["privateKey"]["bytes"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_eq!(
        cert["certificate"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    assert!(cert["expiration"].as_str().unwrap().ends_with('Z'));
}
