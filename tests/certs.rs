//! The generated certificates in use: a real TLS handshake with a client that trusts only
//! `ca.pem`, as modules and leaf devices do.

use std::path::Path;
use std::sync::Arc;

use edgehub::certs::{GeneratedCerts, load_server_tls};
use edgehub::config::Config;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A client configuration that trusts only the certificates in `ca_pem`.
fn client(ca_pem: &Path, version: &'static SupportedProtocolVersion) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Serves one TLS connection that echoes what it reads, connects to it as `name`, and returns
/// the echo and the negotiated protocol version.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: ClientConfig,
    name: &str,
) -> std::io::Result<(Vec<u8>, rustls::ProtocolVersion)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(server);
    let serve = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buffer = [0; 5];
        tls.read_exact(&mut buffer).await?;
        tls.write_all(&buffer).await?;
        tls.shutdown().await
    });
    let connector = TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let version = tls.get_ref().1.protocol_version().unwrap();
    tls.write_all(b"hello").await?;
    let mut echo = Vec::new();
    tls.read_to_end(&mut echo).await?;
    serve.abort();
    Ok((echo, version))
}

#[tokio::test]
async fn clients_trusting_ca_pem_complete_tls_1_2_and_1_3_handshakes_with_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::embedded_default(dir.path());
    let server = load_server_tls(&config).unwrap();
    let ca = GeneratedCerts::in_dir(&dir.path().join("data/certs")).ca_cert;
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        for name in ["localhost", "127.0.0.1"] {
            let (echo, negotiated) = handshake(server.clone(), client(&ca, version), name)
                .await
                .unwrap_or_else(|e| panic!("{name} over {expected:?}: {e}"));
            assert_eq!(echo, b"hello");
            assert_eq!(negotiated, expected);
        }
    }
}

#[tokio::test]
async fn a_client_checking_another_name_refuses_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::embedded_default(dir.path());
    let server = load_server_tls(&config).unwrap();
    let ca = GeneratedCerts::in_dir(&dir.path().join("data/certs")).ca_cert;
    let refused = handshake(
        server,
        client(&ca, &rustls::version::TLS12),
        "gateway.other",
    )
    .await;
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("not valid for name"), "{error}");
}

#[tokio::test]
async fn a_restarted_hub_serves_a_certificate_the_same_ca_pem_still_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::embedded_default(dir.path());
    load_server_tls(&config).unwrap();
    let ca = GeneratedCerts::in_dir(&dir.path().join("data/certs")).ca_cert;
    let trusted = client(&ca, &rustls::version::TLS13);
    let restarted = load_server_tls(&config).unwrap();
    let (echo, _) = handshake(restarted, trusted, "localhost").await.unwrap();
    assert_eq!(echo, b"hello");
}

#[tokio::test]
async fn a_configured_certificate_is_served_as_is() {
    let dir = tempfile::tempdir().unwrap();
    // Certificates made by the generator stand in for ones an operator brings.
    let generated = edgehub::certs::ensure_generated(
        &dir.path().join("pki"),
        "gw.example.com",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let config = Config::parse(
        r#"
device_id = "edge"
iothub_hostname = "hub.example.com"
gateway_hostname = "gw.example.com"
data_dir = "data"
manifest = "deployment.json"
[tls]
cert = "pki/server.pem"
key = "pki/server.key.pem"
"#,
        &dir.path().join("edgehub.toml"),
    )
    .unwrap();
    let server = load_server_tls(&config).unwrap();
    assert!(!dir.path().join("data/certs").exists(), "nothing generated");
    let client = client(&generated.ca_cert, &rustls::version::TLS12);
    let (echo, _) = handshake(server, client, "gw.example.com").await.unwrap();
    assert_eq!(echo, b"hello");
}
