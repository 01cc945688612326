//! Deployment manifests: any JSON text through the manifest reader, the `$edgeHub` desired
//! properties reader and the route table they give, as `edgehub deploy` and `edgehub run`
//! take them; the routes of a table that loads are used once.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use edgehub::config::Config;
use edgehub::manifest;
use libfuzzer_sys::fuzz_target;
use router::{EdgeHubRoutes, Message};

#[path = "../common/mod.rs"]
mod common;

/// A configuration whose manifest is the file the target writes.
fn config() -> &'static (Config, PathBuf) {
    static CONFIG: OnceLock<(Config, PathBuf)> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = common::scratch_dir("manifest");
        let toml = r#"
            device_id = "edge"
            iothub_hostname = "hub.azure-devices.net"
            gateway_hostname = "gateway"
            data_dir = "data"
            manifest = "deployment.json"
        "#;
        let config = Config::parse(toml, &dir.join("edgehub.toml")).expect("a valid config");
        (config, dir.join("deployment.json"))
    })
}

/// Messages from a module output and from a leaf device, with JSON bodies.
fn messages() -> [Message; 2] {
    let mut module = Message::default();
    module.body = r#"{"temperature": 31, "level": "high"}"#.into();
    for (k, v) in [
        ("connectionDeviceId", "edge"),
        ("connectionModuleId", "sensor"),
        ("outputName", "out1"),
        ("contentType", "application/json"),
        ("contentEncoding", "utf-8"),
    ] {
        module.system_properties.insert(k, v);
    }
    module.properties.insert("level", "high");
    let mut leaf = Message::default();
    leaf.body = "not json".into();
    leaf.system_properties.insert("connectionDeviceId", "leaf");
    [module, leaf]
}

fn routes(desired: &serde_json::Value) {
    let Ok(routes) = EdgeHubRoutes::from_desired(desired) else {
        return;
    };
    let Ok(table) = routes.table() else {
        return;
    };
    for message in messages() {
        for delivery in table.dispatch(&message) {
            assert_eq!(
                &table.endpoints()[delivery.endpoint_index],
                delivery.endpoint
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = manifest::modules_content(&document);
        if let Ok(desired) = manifest::desired_properties(&document, "$edgeHub") {
            routes(desired);
        }
        let _ = manifest::desired_properties(&document, "$edgeAgent");
        // `edgehub deploy` may be given the desired properties alone.
        routes(&document);
    }
    let (config, path) = config();
    std::fs::write(path, data).expect("the manifest is written");
    if let Ok(deployment) = config.load_deployment() {
        for module in &deployment.modules {
            edgehub::identity::validate_module_id(module).expect("modules are valid ids");
        }
        routes(&deployment.edge_hub);
    }
});
