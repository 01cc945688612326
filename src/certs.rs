//! The hub's TLS server configuration: the configured certificate, or one generated under
//! `<data_dir>/certs/`.
//!
//! Without a `[tls]` table the hub makes, once, a CA (`ca.pem`, `ca.key.pem`) and a server
//! certificate for `gateway_hostname` signed by it (`server.pem`, `server.key.pem`). Modules and
//! leaf devices trust `ca.pem`. Later starts keep the CA and reuse the server certificate while
//! it chains to the CA, names the gateway, and stays valid for [`RENEW_BEFORE`]; otherwise a new
//! one is made. Private keys are written with mode 0600.
//!
//! TLS uses rustls with the ring provider, TLS 1.2 and 1.3 (the Python SDK speaks 1.2), no
//! ALPN, no client certificates.
//!
//! While the hub runs, [`ServerTls::keep_fresh`] keeps the certificate current without
//! dropping connections: the listeners' [`ServerConfig`] resolves its certificate through a
//! swappable slot, so a new certificate serves the handshakes that follow while established
//! connections keep theirs. A generated certificate is checked daily ([`Renewal`]) and renewed
//! by the same rule as at start (expiring within [`RENEW_BEFORE`]); configured `[tls]` files
//! are reloaded when their contents change (read every minute: a few KiB), and a
//! pair that does not load (half written, key and certificate mismatched) is logged once and
//! the previous one kept until the files change again.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use thiserror::Error;
use time::OffsetDateTime;

use crate::config::Config;
use crate::fs::write_atomically;

/// How long a generated server certificate is valid.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the generated CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A server certificate that expires sooner than this is replaced at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a running hub looks whether its generated certificate needs renewing.
pub const RENEWAL_CHECK: Duration = Duration::from_secs(24 * 3600);
/// How often a running hub looks whether configured `[tls]` files changed.
pub const FILES_CHECK: Duration = Duration::from_secs(60);
/// How far back a new certificate's validity starts (clients' clocks drift).
const BACKDATE: Duration = Duration::from_secs(3600);

/// The CA's subject. It never changes: a server certificate signed later names it as its
/// issuer, and the CA certificate is not parsed back.
const CA_NAME: &str = "edgehub local CA";

/// Why there is no TLS configuration.
#[derive(Debug, Error)]
pub enum CertsError {
    /// A file could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A PEM file holds no certificate, or no usable private key.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Generating a key or a certificate failed.
    #[error("cannot generate the {what}")]
    Generate {
        /// `"CA"` or `"server certificate"`.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// The generated CA cannot sign a usable server certificate (for instance, it expired).
    #[error(
        "the generated server certificate is not valid for {hostname}; \
         remove {} to start over with a new CA",
        dir.display()
    )]
    Unusable {
        /// The gateway hostname.
        hostname: String,
        /// The certificate folder.
        dir: PathBuf,
        /// Why the certificate does not verify.
        source: rustls::Error,
    },
    /// rustls refused the certificate and key.
    #[error("the TLS server configuration is invalid")]
    Tls(#[from] rustls::Error),
}

/// The files of the generated certificates, under `<data_dir>/certs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCerts {
    /// The CA certificate: what clients trust.
    pub ca_cert: PathBuf,
    /// The CA's private key (0600).
    pub ca_key: PathBuf,
    /// The server certificate, then the CA certificate.
    pub server_chain: PathBuf,
    /// The server's private key (0600).
    pub server_key: PathBuf,
}

impl GeneratedCerts {
    /// The file names under `dir`.
    #[must_use]
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key.pem"),
            server_chain: dir.join("server.pem"),
            server_key: dir.join("server.key.pem"),
        }
    }
}

/// The TLS configuration of the MQTT (and HTTPS) listeners: `[tls]` when configured, else the
/// generated certificates (made or renewed now if needed). It does not change while the hub
/// runs; [`ServerTls::load`] gives one that [`ServerTls::keep_fresh`] keeps current.
///
/// # Errors
///
/// When the certificate or key cannot be read, generated or used.
pub fn load_server_tls(config: &Config) -> Result<Arc<ServerConfig>, CertsError> {
    ServerTls::load(config).map(|tls| tls.config())
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3, no client authentication, no ALPN)
/// from a PEM certificate chain and a PEM private key.
///
/// # Errors
///
/// When a file cannot be read, holds nothing usable, or rustls refuses the pair.
pub fn server_config(chain: &Path, key: &Path) -> Result<Arc<ServerConfig>, CertsError> {
    let key = Arc::new(SwappableKey(ArcSwap::from_pointee(certified_key(
        chain, key,
    )?)));
    Ok(config_resolving(key)?)
}

/// The listeners' configuration, its certificate taken from `key` at every handshake.
fn config_resolving(key: Arc<SwappableKey>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(key);
    Ok(Arc::new(config))
}

/// A certificate chain and its private key, checked to match.
fn certified_key(chain: &Path, key: &Path) -> Result<CertifiedKey, CertsError> {
    let chain = read_chain(chain)?;
    let key = read_key(key)?;
    Ok(CertifiedKey::from_der(
        chain,
        key,
        &rustls::crypto::ring::default_provider(),
    )?)
}

/// The certificate every new handshake presents; replaced while connections run.
#[derive(Debug)]
struct SwappableKey(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwappableKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// When a running hub renews its generated server certificate. The default is the rule applied
/// at start ([`SERVER_VALIDITY`], [`RENEW_BEFORE`]), checked every [`RENEWAL_CHECK`]; tests use
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// How long a new server certificate is valid.
    pub validity: Duration,
    /// A certificate expiring sooner than this is replaced.
    pub renew_before: Duration,
    /// How often the certificate is looked at.
    pub check_every: Duration,
}

impl Default for Renewal {
    fn default() -> Self {
        Self {
            validity: SERVER_VALIDITY,
            renew_before: RENEW_BEFORE,
            check_every: RENEWAL_CHECK,
        }
    }
}

/// Where the certificate comes from, and what was last loaded from there.
#[derive(Debug)]
enum Source {
    /// Generated under `dir` for `hostname`, renewed by `renewal`.
    Generated {
        dir: PathBuf,
        hostname: String,
        renewal: Renewal,
    },
    /// Configured files, reloaded when they change; the stamp of the files last tried.
    Files {
        cert: PathBuf,
        key: PathBuf,
        tried: Mutex<Option<FileStamp>>,
    },
}

/// The contents of the certificate and key files (a few KiB; `None` when unreadable). Not
/// their modification times: those are coarse (two writes within a few milliseconds can share
/// one) and copies may keep them (`cp -p`, a mounted secret swapped by a symlink).
type FileStamp = [Option<Vec<u8>>; 2];

fn stamp(cert: &Path, key: &Path) -> FileStamp {
    [fs::read(cert).ok(), fs::read(key).ok()]
}

/// What [`ServerTls::refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// The certificate in use stays.
    Unchanged,
    /// New handshakes present a new certificate.
    Replaced,
}

/// The server certificate of the TLS listeners, kept current while the hub runs.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    key: Arc<SwappableKey>,
    source: Source,
}

impl ServerTls {
    /// `[tls]` when configured (reloaded when the files change), else the generated
    /// certificates (made or renewed now if needed, renewed by the default [`Renewal`]).
    ///
    /// # Errors
    ///
    /// When the certificate or key cannot be read, generated or used.
    pub fn load(config: &Config) -> Result<Self, CertsError> {
        match &config.tls {
            Some(tls) => Self::from_files(&tls.cert, &tls.key),
            None => Self::generated(
                &config.data_dir.join("certs"),
                &config.gateway_hostname,
                Renewal::default(),
            ),
        }
    }

    /// The certificate generated under `dir` for `hostname` (made or renewed now if needed).
    ///
    /// # Errors
    ///
    /// When a file cannot be read or written, generation fails, or rustls refuses the pair.
    pub fn generated(dir: &Path, hostname: &str, renewal: Renewal) -> Result<Self, CertsError> {
        let files = ensure_generated_with(dir, hostname, SystemTime::now(), &renewal)?;
        let key = certified_key(&files.server_chain, &files.server_key)?;
        Self::new(
            key,
            Source::Generated {
                dir: dir.to_owned(),
                hostname: hostname.to_owned(),
                renewal,
            },
        )
    }

    /// A configured certificate chain and key, reloaded when they change on disk.
    ///
    /// # Errors
    ///
    /// When a file cannot be read, holds nothing usable, or rustls refuses the pair.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CertsError> {
        let loaded = stamp(cert, key);
        let certified = certified_key(cert, key)?;
        Self::new(
            certified,
            Source::Files {
                cert: cert.to_owned(),
                key: key.to_owned(),
                tried: Mutex::new(Some(loaded)),
            },
        )
    }

    fn new(key: CertifiedKey, source: Source) -> Result<Self, CertsError> {
        let key = Arc::new(SwappableKey(ArcSwap::from_pointee(key)));
        Ok(Self {
            config: config_resolving(Arc::clone(&key))?,
            key,
            source,
        })
    }

    /// The configuration the listeners share; new handshakes see every later renewal.
    #[must_use]
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// The certificate chain new handshakes present (end entity first).
    #[must_use]
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.key.0.load().cert.clone()
    }

    /// How long until the next look at the certificate.
    fn check_every(&self) -> Duration {
        match &self.source {
            Source::Generated { renewal, .. } => renewal.check_every,
            Source::Files { .. } => FILES_CHECK,
        }
    }

    /// Renews a generated certificate that expires within the renewal margin at `now`, or
    /// reloads configured files that changed, and swaps the result in for new handshakes.
    /// Blocking (file I/O, key generation): call it off the async runtime.
    ///
    /// # Errors
    ///
    /// When the new certificate cannot be made or loaded; the one in use stays.
    pub fn refresh(&self, now: SystemTime) -> Result<Refreshed, CertsError> {
        let fresh = match &self.source {
            Source::Generated {
                dir,
                hostname,
                renewal,
            } => {
                let files = ensure_generated_with(dir, hostname, now, renewal)?;
                let chain = read_chain(&files.server_chain)?;
                if chain.first() == self.key.0.load().cert.first() {
                    return Ok(Refreshed::Unchanged);
                }
                certified_key(&files.server_chain, &files.server_key)?
            }
            Source::Files { cert, key, tried } => {
                let now_stamp = stamp(cert, key);
                let mut tried = tried.lock().unwrap_or_else(PoisonError::into_inner);
                if tried.as_ref() == Some(&now_stamp) {
                    return Ok(Refreshed::Unchanged);
                }
                // Tried once per change: a pair that does not load is reported once.
                *tried = Some(now_stamp);
                certified_key(cert, key)?
            }
        };
        self.key.0.store(Arc::new(fresh));
        Ok(Refreshed::Replaced)
    }

    /// Looks at the certificate every [`Renewal::check_every`] (generated) or
    /// [`FILES_CHECK`] (configured files) and swaps in a renewed or changed one; runs until
    /// dropped (abort its task at shutdown). Failures are logged and retried at the next look.
    pub async fn keep_fresh(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.check_every()).await;
            let tls = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || tls.refresh(SystemTime::now())).await {
                Ok(Ok(Refreshed::Unchanged)) => {}
                Ok(Ok(Refreshed::Replaced)) => {
                    tracing::info!("TLS server certificate replaced; new connections use it");
                }
                Ok(Err(e)) => tracing::error!(
                    error = %format_args!("{:#}", anyhow::Error::new(e)),
                    "cannot renew or reload the TLS server certificate; the current one stays"
                ),
                Err(e) => tracing::error!(error = %e, "the TLS certificate check failed"),
            }
        }
    }
}

/// Makes sure `dir` holds a CA and a server certificate for `hostname` valid from `now` for at
/// least [`RENEW_BEFORE`], generating what is missing or stale. The CA is kept once made.
///
/// # Errors
///
/// When a file cannot be read or written, or generation fails.
pub fn ensure_generated(
    dir: &Path,
    hostname: &str,
    now: SystemTime,
) -> Result<GeneratedCerts, CertsError> {
    ensure_generated_with(dir, hostname, now, &Renewal::default())
}

/// [`ensure_generated`] with the validity and renewal margin of `renewal`.
///
/// # Errors
///
/// When a file cannot be read or written, or generation fails.
pub fn ensure_generated_with(
    dir: &Path,
    hostname: &str,
    now: SystemTime,
    renewal: &Renewal,
) -> Result<GeneratedCerts, CertsError> {
    let files = GeneratedCerts::in_dir(dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertsError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
    let ca_key = if files.ca_cert.exists() && files.ca_key.exists() {
        let pem = read(&files.ca_key)?;
        KeyPair::from_pem(&pem).map_err(|e| CertsError::Pem {
            path: files.ca_key.clone(),
            what: format!("not a usable private key ({e})"),
        })?
    } else {
        let (cert, key) = generate_ca(now)?;
        write(&files.ca_key, &key.serialize_pem(), 0o600)?;
        write(&files.ca_cert, &cert, 0o644)?;
        tracing::info!(path = %files.ca_cert.display(), "generated a CA");
        key
    };
    let ca_cert = read_chain(&files.ca_cert)?;
    let fresh_enough = now + renewal.renew_before;
    if server_cert_verifies(&files, &ca_cert, hostname, fresh_enough).is_ok() {
        return Ok(files);
    }
    let (server_cert, server_key) = generate_server(hostname, &ca_key, now, renewal.validity)?;
    let ca_pem = read(&files.ca_cert)?;
    write(&files.server_key, &server_key.serialize_pem(), 0o600)?;
    write(
        &files.server_chain,
        &format!("{server_cert}{ca_pem}"),
        0o644,
    )?;
    tracing::info!(%hostname, path = %files.server_chain.display(), "generated a server certificate");
    server_cert_verifies(&files, &ca_cert, hostname, now).map_err(|source| {
        CertsError::Unusable {
            hostname: hostname.to_owned(),
            dir: dir.to_owned(),
            source,
        }
    })?;
    Ok(files)
}

/// Whether the server certificate on disk chains to the CA and is valid for `hostname` at
/// `at`: what a client that trusts `ca.pem` would accept.
fn server_cert_verifies(
    files: &GeneratedCerts,
    ca_cert: &[CertificateDer<'static>],
    hostname: &str,
    at: SystemTime,
) -> Result<(), rustls::Error> {
    let other = |e: CertsError| rustls::Error::General(e.to_string());
    if !files.server_chain.exists() || !files.server_key.exists() {
        return Err(rustls::Error::General("no server certificate".into()));
    }
    let chain = read_chain(&files.server_chain).map_err(other)?;
    let mut roots = RootCertStore::empty();
    for cert in ca_cert {
        roots.add(cert.clone())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let name = ServerName::try_from(hostname.to_owned())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let at = UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], at)?;
    Ok(())
}

fn generate_ca(now: SystemTime) -> Result<(String, KeyPair), CertsError> {
    let error = |source| CertsError::Generate { what: "CA", source };
    let key = KeyPair::generate().map_err(error)?;
    let mut params = ca_params();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    let cert = params.self_signed(&key).map_err(error)?;
    Ok((cert.pem(), key))
}

/// The CA's parameters, apart from validity: the same at every start, so that a CA made at
/// an earlier start can sign.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn generate_server(
    hostname: &str,
    ca_key: &KeyPair,
    now: SystemTime,
    validity: Duration,
) -> Result<(String, KeyPair), CertsError> {
    let error = |source| CertsError::Generate {
        what: "server certificate",
        source,
    };
    let mut params = CertificateParams::new(subject_alt_names(hostname)).map_err(error)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, hostname);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + validity);
    let key = KeyPair::generate().map_err(error)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(error)?;
    Ok((cert.pem(), key))
}

/// The gateway's name; for `localhost` also the loopback addresses, so that `127.0.0.1` works.
fn subject_alt_names(hostname: &str) -> Vec<String> {
    let mut names = vec![hostname.to_owned()];
    if hostname.eq_ignore_ascii_case("localhost") {
        names.push(IpAddr::V4(Ipv4Addr::LOCALHOST).to_string());
    }
    names
}

/// Reads every certificate of a PEM file.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertsError::Pem {
            path: path.to_owned(),
            what: format!("not PEM certificates ({e})"),
        })?;
    if chain.is_empty() {
        return Err(CertsError::Pem {
            path: path.to_owned(),
            what: "no certificate in the file".to_owned(),
        });
    }
    Ok(chain)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertsError::Pem {
        path: path.to_owned(),
        what: format!("no private key ({e})"),
    })
}

fn read(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes a file atomically with `mode`.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    write_atomically(path, contents.as_bytes(), mode).map_err(|source| CertsError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generates_a_ca_and_a_server_certificate_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_generated(dir.path(), "gateway.local", SystemTime::now()).unwrap();
        assert_eq!(mode(&files.ca_key), 0o600);
        assert_eq!(mode(&files.server_key), 0o600);
        assert_eq!(read_chain(&files.server_chain).unwrap().len(), 2);
        server_config(&files.server_chain, &files.server_key).unwrap();
    }

    #[test]
    fn a_later_start_reuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let files = ensure_generated(dir.path(), "gateway.local", now).unwrap();
        let before = (
            read(&files.ca_cert).unwrap(),
            read(&files.server_chain).unwrap(),
        );
        ensure_generated(dir.path(), "gateway.local", now + DAY).unwrap();
        let after = (
            read(&files.ca_cert).unwrap(),
            read(&files.server_chain).unwrap(),
        );
        assert_eq!(before, after);
    }

    #[test]
    fn a_new_hostname_gets_a_new_server_certificate_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let files = ensure_generated(dir.path(), "old.local", now).unwrap();
        let ca = read(&files.ca_cert).unwrap();
        let server = read(&files.server_chain).unwrap();
        ensure_generated(dir.path(), "new.local", now).unwrap();
        assert_eq!(read(&files.ca_cert).unwrap(), ca);
        assert_ne!(read(&files.server_chain).unwrap(), server);
        let ca_cert = read_chain(&files.ca_cert).unwrap();
        server_cert_verifies(&files, &ca_cert, "new.local", now).unwrap();
        assert!(server_cert_verifies(&files, &ca_cert, "old.local", now).is_err());
    }

    #[test]
    fn a_certificate_expiring_within_30_days_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let files = ensure_generated(dir.path(), "gateway.local", now).unwrap();
        let server = read(&files.server_chain).unwrap();
        ensure_generated(
            dir.path(),
            "gateway.local",
            now + SERVER_VALIDITY - 29 * DAY,
        )
        .unwrap();
        assert_ne!(read(&files.server_chain).unwrap(), server);
    }

    #[test]
    fn a_running_hub_renews_a_certificate_that_comes_close_to_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ServerTls::generated(dir.path(), "gateway.local", Renewal::default()).unwrap();
        let first = tls.chain();
        let now = SystemTime::now();
        assert_eq!(tls.refresh(now + DAY).unwrap(), Refreshed::Unchanged);
        assert_eq!(tls.chain(), first);
        let later = now + SERVER_VALIDITY - 29 * DAY;
        assert_eq!(tls.refresh(later).unwrap(), Refreshed::Replaced);
        assert_ne!(tls.chain()[0], first[0]);
        assert_eq!(tls.chain()[1], first[1], "the same CA");
        assert_eq!(tls.refresh(later).unwrap(), Refreshed::Unchanged);
    }

    #[test]
    fn changed_tls_files_are_reloaded_and_a_bad_pair_is_tried_once() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let pki = ensure_generated(&dir.path().join("a"), "gw.local", now).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        fs::copy(&pki.server_chain, &cert).unwrap();
        fs::copy(&pki.server_key, &key).unwrap();
        let tls = ServerTls::from_files(&cert, &key).unwrap();
        let first = tls.chain();
        assert_eq!(tls.refresh(now).unwrap(), Refreshed::Unchanged);
        // A certificate without its key (half of a rotation): refused once, the old one stays.
        let other = ensure_generated(&dir.path().join("b"), "gw.local", now).unwrap();
        fs::copy(&other.server_chain, &cert).unwrap();
        assert!(tls.refresh(now).is_err());
        assert_eq!(tls.refresh(now).unwrap(), Refreshed::Unchanged);
        assert_eq!(tls.chain(), first);
        // The key follows: the pair loads.
        fs::copy(&other.server_key, &key).unwrap();
        assert_eq!(tls.refresh(now).unwrap(), Refreshed::Replaced);
        assert_eq!(tls.chain(), read_chain(&other.server_chain).unwrap());
    }

    #[test]
    fn localhost_also_covers_127_0_0_1() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let files = ensure_generated(dir.path(), "localhost", now).unwrap();
        let ca_cert = read_chain(&files.ca_cert).unwrap();
        server_cert_verifies(&files, &ca_cert, "localhost", now).unwrap();
        server_cert_verifies(&files, &ca_cert, "127.0.0.1", now).unwrap();
        assert!(server_cert_verifies(&files, &ca_cert, "other.local", now).is_err());
    }

    #[test]
    fn an_ip_gateway_gets_an_ip_name() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let files = ensure_generated(dir.path(), "10.1.2.3", now).unwrap();
        let ca_cert = read_chain(&files.ca_cert).unwrap();
        server_cert_verifies(&files, &ca_cert, "10.1.2.3", now).unwrap();
    }

    #[test]
    fn unreadable_pem_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        let error = server_config(&empty, &empty).unwrap_err();
        assert!(error.to_string().contains("empty.pem"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = server_config(&missing, &missing).unwrap_err();
        assert!(matches!(error, CertsError::Io { .. }), "{error}");
    }
}
