//! The generated server certificate renewed while the hub runs (issue 14): with a certificate
//! valid for seconds, a TLS connection opened before the renewal keeps working, and a new TLS
//! client after it sees a new certificate, with a later expiry, that still chains to `ca.pem`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgehub::certs::{GeneratedCerts, Renewal, ServerTls};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

mod common;
use common::inproc::{self, DEVICE};

/// How long the test's certificates are valid; renewed when within half of it of expiry.
const VALIDITY: Duration = Duration::from_secs(10);

fn roots(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A client that trusts only `ca.pem`, as modules do.
fn client_config(ca: &Path) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(ca))
            .with_no_client_auth(),
    )
}

/// A fresh TLS handshake with the hub's MQTTS port: the end-entity certificate it presents.
async fn presented(port: u16, ca: &Path) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = TlsConnector::from(client_config(ca))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the certificate verifies against ca.pem");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Whether `cert` is valid for `localhost`, chained to `ca`, at `at`.
fn valid_at(cert: &CertificateDer<'_>, ca: &Path, at: SystemTime) -> bool {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca)),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    verifier
        .verify_server_cert(
            cert,
            &[],
            &ServerName::try_from("localhost").unwrap(),
            &[],
            at,
        )
        .is_ok()
}

/// Module `module`'s options on the MQTTS port, trusting `ca.pem`.
fn tls_options(port: u16, module: &str, ca: &Path) -> MqttOptions {
    let mut options = MqttOptions::new(format!("{DEVICE}/{module}"), "localhost", port);
    options.set_credentials(
        format!("hub/{DEVICE}/{module}/?api-version=2021-04-12"),
        format!("key-{module}"),
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        client_config(ca),
    )));
    options
}

/// What a client's event loop saw: CONNACKs, SUBACKs and publications.
#[derive(Debug)]
enum Seen {
    Connected,
    Subscribed,
    Message(Vec<u8>),
    Failed(String),
}

fn drive(options: MqttOptions) -> (AsyncClient, mpsc::Receiver<Seen>) {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (seen, events) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let event = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::Connected,
                Ok(Event::Incoming(Packet::SubAck(_))) => Seen::Subscribed,
                Ok(Event::Incoming(Packet::Publish(p))) => Seen::Message(p.payload.to_vec()),
                Ok(_) => continue,
                // No reconnection: a dropped connection is what this test must not see.
                Err(e) => Seen::Failed(e.to_string()),
            };
            let failed = matches!(event, Seen::Failed(_));
            if seen.send(event).await.is_err() || failed {
                return;
            }
        }
    });
    (client, events)
}

async fn next(events: &mut mpsc::Receiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the client runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_certificate_is_renewed_without_dropping_connections() {
    let data = tempfile::tempdir().unwrap();
    let started = SystemTime::now();
    let tls = Arc::new(
        ServerTls::generated(
            &data.path().join("certs"),
            "localhost",
            Renewal {
                validity: VALIDITY,
                renew_before: VALIDITY / 2,
                check_every: Duration::from_millis(250),
            },
        )
        .unwrap(),
    );
    let ca = GeneratedCerts::in_dir(&data.path().join("certs")).ca_cert;
    let mut settings = inproc::settings(
        data.path(),
        &json!({"r": "FROM /messages/modules/a/outputs/out1 INTO BrokeredEndpoint(\"/modules/b/inputs/in1\")"}),
    );
    settings.mqtts = Some(("127.0.0.1:0".parse().unwrap(), tls.config()));
    let hub = edgehub::hub::Hub::start(settings, Arc::new(inproc::TestKeys))
        .await
        .unwrap();
    let port = hub.mqtts_addr().unwrap().port();
    let first = presented(port, &ca).await;
    assert!(valid_at(&first, &ca, started));

    // Module b connects over TLS before the renewal, and subscribes.
    let (b, mut b_events) = drive(tls_options(port, "b", &ca));
    assert!(matches!(next(&mut b_events).await, Seen::Connected));
    b.subscribe(
        format!("devices/{DEVICE}/modules/b/inputs/#"),
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut b_events).await, Seen::Subscribed));

    // The renewal runs in the background; a new handshake sees its certificate.
    let renewal = tokio::spawn(Arc::clone(&tls).keep_fresh());
    let deadline = tokio::time::Instant::now() + 3 * VALIDITY;
    let renewed = loop {
        let cert = presented(port, &ca).await;
        if cert != first {
            break cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate was not renewed within {:?}",
            3 * VALIDITY
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    renewal.abort();
    // A later expiry: past the first certificate's end, the new one still verifies.
    let past_first = started + VALIDITY + Duration::from_secs(2);
    assert!(!valid_at(&first, &ca, past_first));
    assert!(valid_at(&renewed, &ca, past_first));

    // Wait until the first certificate has expired: b's connection, made with it, still works.
    let now = SystemTime::now();
    if let Ok(left) = past_first.duration_since(now) {
        tokio::time::sleep(left).await;
    }
    let (a, mut a_events) = drive(tls_options(port, "a", &ca));
    assert!(matches!(next(&mut a_events).await, Seen::Connected));
    a.publish(
        inproc::A_OUT1,
        QoS::AtLeastOnce,
        false,
        b"after renewal".to_vec(),
    )
    .await
    .unwrap();
    match next(&mut b_events).await {
        Seen::Message(payload) => assert_eq!(payload, b"after renewal"),
        other => panic!("b saw {other:?} instead of the message"),
    }
    match b_events.try_recv() {
        Err(_) => {}
        Ok(Seen::Failed(e)) => panic!("b's connection dropped: {e}"),
        Ok(other) => panic!("b saw {other:?} after the message"),
    }
    hub.shutdown().await.unwrap();
}
