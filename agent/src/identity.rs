//! Module identities: made by the hub's own command line (`edgehub identity add`, which works
//! whether the hub runs or not), their keys held by the agent for the workload API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::Digest as _;

/// What the agent knows of the hub from its configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The file (given to `edgehub --config`).
    pub path: PathBuf,
    /// `device_id`.
    pub device_id: String,
    /// `iothub_hostname`.
    pub iothub_hostname: String,
    /// `gateway_hostname`.
    pub gateway_hostname: String,
    /// `data_dir`, resolved against the file's folder.
    pub data_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
struct RawHubConfig {
    device_id: String,
    iothub_hostname: String,
    gateway_hostname: String,
    data_dir: PathBuf,
}

/// Why the hub's configuration or an identity could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading the hub's configuration.
    #[error("reading the hub configuration {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Running `edgehub identity add`.
    #[error("edgehub identity add {module}: {message}")]
    Command {
        /// The module.
        module: String,
        /// What went wrong.
        message: String,
    },
}

impl HubConfig {
    /// Reads the hub's TOML configuration (only the keys the agent needs).
    ///
    /// # Errors
    ///
    /// When the file cannot be read or lacks a key.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let fail = |message: String| IdentityError::Config {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let raw: RawHubConfig = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        Ok(Self {
            path: path.to_owned(),
            device_id: raw.device_id,
            iothub_hostname: raw.iothub_hostname,
            gateway_hostname: raw.gateway_hostname,
            data_dir: base.join(raw.data_dir),
        })
    }

    /// The CA modules must trust for the hub's TLS (the hub's generated one).
    #[must_use]
    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir.join("certs").join("ca.pem")
    }

    /// The key of that CA.
    #[must_use]
    pub fn ca_key(&self) -> PathBuf {
        self.data_dir.join("certs").join("ca.key.pem")
    }

    /// Makes the CA (`ca.pem`, `ca.key.pem` in `<data_dir>/certs`, where the hub keeps the one
    /// it generates) when there is none yet: a hub that takes its server certificate from the
    /// workload API never generates one itself.
    ///
    /// # Errors
    ///
    /// When the files cannot be written.
    pub fn ensure_ca(&self) -> Result<(), String> {
        let (cert, key) = (self.ca_cert(), self.ca_key());
        if cert.exists() && key.exists() {
            return Ok(());
        }
        let dir = self.data_dir.join("certs");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edgeagent workload CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let ca = params.self_signed(&pair).map_err(|e| e.to_string())?;
        let write = |path: &Path, text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::write(path, text)
                .and_then(|()| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        write(&key, &pair.serialize_pem(), 0o600)?;
        write(&cert, &ca.pem(), 0o644)?;
        tracing::info!(path = %cert.display(), "made the CA of the hub's server certificate");
        Ok(())
    }
}

/// A module identity the agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleIdentity {
    /// The module id.
    pub module_id: String,
    /// The primary key, decoded.
    pub key: Vec<u8>,
    /// The generation id the agent gives the module (stable for one key).
    pub generation_id: String,
}

/// Parses a connection string's `SharedAccessKey`.
///
/// # Errors
///
/// When it has none, or it is not base64.
pub fn key_of(connection_string: &str) -> Result<Vec<u8>, String> {
    let key = connection_string
        .trim()
        .split(';')
        .find_map(|part| part.strip_prefix("SharedAccessKey="))
        .ok_or("no SharedAccessKey in the connection string")?;
    STANDARD
        .decode(key)
        .map_err(|e| format!("SharedAccessKey is not base64: {e}"))
}

/// Makes identities through `edgehub identity add` and keeps their keys.
#[derive(Debug)]
pub struct Identities {
    program: PathBuf,
    hub: HubConfig,
    keys: Mutex<BTreeMap<String, ModuleIdentity>>,
}

impl Identities {
    /// Identities made with the `edgehub` at `program` for the hub configured by `hub`.
    #[must_use]
    pub fn new(program: PathBuf, hub: HubConfig) -> Self {
        Self {
            program,
            hub,
            keys: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ModuleIdentity>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The hub's configuration.
    #[must_use]
    pub fn hub(&self) -> &HubConfig {
        &self.hub
    }

    /// The identity of `module_id`, made (or found) by the hub's command line.
    ///
    /// # Errors
    ///
    /// When the command fails or prints no key.
    pub fn ensure(&self, module_id: &str) -> Result<ModuleIdentity, IdentityError> {
        let fail = |message: String| IdentityError::Command {
            module: module_id.to_owned(),
            message,
        };
        let output = std::process::Command::new(&self.program)
            .args(["identity", "add", "--config"])
            .arg(&self.hub.path)
            .arg(module_id)
            .output()
            .map_err(|e| fail(format!("{}: {e}", self.program.display())))?;
        if !output.status.success() {
            return Err(fail(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ));
        }
        let key = key_of(&String::from_utf8_lossy(&output.stdout)).map_err(fail)?;
        let digest = sha2::Sha256::digest(&key);
        let generation_id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let identity = ModuleIdentity {
            module_id: module_id.to_owned(),
            key,
            generation_id,
        };
        self.lock().insert(module_id.to_owned(), identity.clone());
        Ok(identity)
    }

    /// The key of `module_id`, if the agent holds it.
    #[must_use]
    pub fn get(&self, module_id: &str) -> Option<ModuleIdentity> {
        self.lock().get(module_id).cloned()
    }

    /// Holds `identity` (made elsewhere, e.g. read back from the hub).
    pub fn insert(&self, identity: ModuleIdentity) {
        self.lock().insert(identity.module_id.clone(), identity);
    }

    /// Forgets `module_id`'s key.
    pub fn forget(&self, module_id: &str) {
        self.lock().remove(module_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_from_a_connection_string() {
        let cs = "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=AAEC;GatewayHostName=g\n";
        assert_eq!(key_of(cs).unwrap(), [0, 1, 2]);
        assert!(key_of("HostName=h").is_err());
        assert!(key_of("SharedAccessKey=!!").is_err());
    }

    #[test]
    fn a_missing_ca_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let hub = HubConfig {
            path: dir.path().join("edgehub.toml"),
            device_id: "d".into(),
            iothub_hostname: "h".into(),
            gateway_hostname: "g".into(),
            data_dir: dir.path().join("data"),
        };
        hub.ensure_ca().unwrap();
        let first = std::fs::read_to_string(hub.ca_cert()).unwrap();
        assert!(first.starts_with("-----BEGIN CERTIFICATE-----"));
        hub.ensure_ca().unwrap();
        assert_eq!(
            std::fs::read_to_string(hub.ca_cert()).unwrap(),
            first,
            "made again"
        );
    }

    #[test]
    fn the_hub_config_resolves_data_dir_against_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgehub.toml");
        std::fs::write(&path, "device_id = \"d\"\niothub_hostname = \"h\"\ngateway_hostname = \"g\"\ndata_dir = \"data\"\n[listen]\nmqtts = \"0.0.0.0:8883\"\n").unwrap();
        let config = HubConfig::load(&path).unwrap();
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(config.ca_cert(), dir.path().join("data/certs/ca.pem"));
        assert!(HubConfig::load(&dir.path().join("missing.toml")).is_err());
    }
}
