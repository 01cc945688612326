//! The configuration files shipped in `config/`, read through the public API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgehub::config::{Config, Durability, ManifestSource, QuotaPolicy};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn the_example_configuration_loads_with_every_key() {
    let path = shipped("edgehub.example.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.device_id, "edge-device");
    assert_eq!(config.gateway_hostname, "localhost");
    assert_eq!(config.data_dir, Path::new("/var/lib/edgehub"));
    assert_eq!(
        config.manifest,
        ManifestSource::File(shipped("deployment.example.json"))
    );
    assert!(config.listen.mqtt.is_some());
    assert!(config.listen.metrics.is_some());
    assert_eq!(config.store.durability, Durability::Sync);
    assert_eq!(config.store.quota.policy, QuotaPolicy::Reject);
    assert_eq!(config.store.quota.max_store_bytes, Some(1 << 30));
}

#[test]
fn the_example_configuration_reads_its_deployment_from_its_own_folder() {
    let config = Config::load(&shipped("edgehub.example.toml")).unwrap();
    let deployment = config.load_deployment().unwrap();
    assert_eq!(deployment.modules, ["sensor", "filter"]);
    assert_eq!(
        deployment.edge_hub["storeAndForwardConfiguration"]["timeToLiveSecs"],
        7200
    );
}

#[test]
fn the_example_with_its_tls_table_uncommented_still_loads() {
    let text = std::fs::read_to_string(shipped("edgehub.example.toml"))
        .unwrap()
        .replace("# [tls]", "[tls]")
        .replace("# cert =", "cert =")
        .replace("# key =", "key =");
    let config = Config::parse(&text, &shipped("edgehub.example.toml")).unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.cert, Path::new("/etc/edgehub/server.pem"));
    assert_eq!(tls.key, Path::new("/etc/edgehub/server.key.pem"));
}

#[test]
fn a_file_written_by_a_user_loads_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(
        &path,
        r#"
device_id = "plant-7"
iothub_hostname = "plant.azure-devices.net"
gateway_hostname = "10.0.0.5"
data_dir = "state"
manifest = "/srv/deployment.json"

[store]
durability = "periodic"
flush_interval_ms = 20
"#,
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.data_dir, dir.path().join("state"));
    assert_eq!(
        config.store.durability,
        Durability::Periodic {
            interval: Duration::from_millis(20)
        }
    );
    assert_eq!(config.hostnames().gateway, "10.0.0.5");
}

#[test]
fn a_missing_file_is_an_error_that_names_it() {
    let error = Config::load(Path::new("/nonexistent/edgehub.toml")).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/edgehub.toml"),
        "{error}"
    );
}
