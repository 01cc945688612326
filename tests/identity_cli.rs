//! `edgehub identity`, run as a process: the contract other tools rely on.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

const CONFIG: &str = r#"
device_id = "plant-edge"
iothub_hostname = "plant.azure-devices.net"
gateway_hostname = "gw.plant.local"
data_dir = "state"
manifest = "deployment.json"
"#;

/// A temporary folder with a configuration whose data folder is `state/` inside it.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("edgehub.toml"), CONFIG).unwrap();
        Self { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("edgehub.toml")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `edgehub identity <args> --config <this config>`.
    fn identity(&self, args: &[&str]) -> Output {
        edgehub(self.dir.path(), &with_config(args, &self.config()))
    }
}

fn with_config(args: &[&str], config: &Path) -> Vec<String> {
    let mut all = vec!["identity".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend(["--config".to_owned(), config.display().to_string()]);
    all
}

fn edgehub(working_dir: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgehub"))
        .args(args)
        .current_dir(working_dir)
        .output()
        .expect("edgehub runs")
}

fn stdout(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `SharedAccessKey` of a connection string.
fn key(connection_string: &str) -> &str {
    connection_string
        .split(';')
        .find_map(|field| field.strip_prefix("SharedAccessKey="))
        .expect("a SharedAccessKey field")
}

#[test]
fn add_prints_the_module_connection_string_and_the_same_one_again() {
    let setup = Setup::new();
    let first = stdout(&setup.identity(&["add", "filter"]));
    assert_eq!(first.lines().count(), 1, "{first}");
    let line = first.trim_end();
    let expected = format!(
        "HostName=plant.azure-devices.net;DeviceId=plant-edge;ModuleId=filter;SharedAccessKey={};GatewayHostName=gw.plant.local",
        key(line)
    );
    assert_eq!(line, expected);
    assert_eq!(key(line).len(), 44, "32 bytes in base64");
    let second = stdout(&setup.identity(&["add", "filter"]));
    assert_eq!(second, first);
}

#[test]
fn add_device_prints_a_leaf_connection_string() {
    let setup = Setup::new();
    let out = stdout(&setup.identity(&["add", "--device", "leaf-1"]));
    let line = out.trim_end();
    assert_eq!(
        line,
        format!(
            "HostName=plant.azure-devices.net;DeviceId=leaf-1;SharedAccessKey={};GatewayHostName=gw.plant.local",
            key(line)
        )
    );
    assert_eq!(stdout(&setup.identity(&["add", "--device", "leaf-1"])), out);
}

#[test]
fn list_shows_every_identity_without_keys() {
    let setup = Setup::new();
    let module = stdout(&setup.identity(&["add", "filter"]));
    stdout(&setup.identity(&["add", "--device", "leaf-1"]));
    stdout(&setup.identity(&["add", "sensor"]));
    let list = stdout(&setup.identity(&["list"]));
    assert_eq!(
        list,
        "leaf-1  device\nplant-edge/filter  module\nplant-edge/sensor  module\n"
    );
    assert!(!list.contains(key(module.trim_end())));
}

#[test]
fn list_of_an_empty_store_prints_nothing() {
    let setup = Setup::new();
    assert_eq!(stdout(&setup.identity(&["list"])), "");
}

#[test]
fn keys_are_readable_by_the_owner_only() {
    let setup = Setup::new();
    stdout(&setup.identity(&["add", "filter"]));
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&setup.data_dir().join("identities.json")), 0o600);
    assert_eq!(mode(&setup.data_dir()), 0o700);
}

#[test]
fn without_config_the_data_folder_is_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let args = |rest: &[&str]| -> Vec<String> {
        std::iter::once("identity")
            .chain(rest.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let out = stdout(&edgehub(dir.path(), &args(&["add", "filter"])));
    assert!(
        out.starts_with("HostName=edgehub.local;DeviceId=edge-device;ModuleId=filter;"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with(";GatewayHostName=localhost"),
        "{out}"
    );
    assert!(dir.path().join("data/identities.json").exists());
    assert_eq!(
        stdout(&edgehub(dir.path(), &args(&["list"]))),
        "edge-device/filter  module\n"
    );
}

#[test]
fn invalid_ids_exit_with_2() {
    let setup = Setup::new();
    for args in [
        &["add", "a/b"][..],
        &["add", "$custom"],
        &["add", "--device", "has space"],
        &["add", ""],
    ] {
        let out = setup.identity(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    assert!(
        !setup.data_dir().join("identities.json").exists(),
        "nothing was written"
    );
}

#[test]
fn the_runtimes_own_modules_are_refused() {
    let setup = Setup::new();
    for module in ["$edgeHub", "$edgeAgent"] {
        let out = setup.identity(&["add", module]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(module), "{}", stderr(&out));
    }
}

#[test]
fn a_bad_configuration_key_is_named_and_exits_with_2() {
    let setup = Setup::new();
    std::fs::write(setup.config(), format!("{CONFIG}colour = \"blue\"\n")).unwrap();
    let out = setup.identity(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("colour"), "{}", stderr(&out));

    std::fs::write(
        setup.config(),
        format!("{CONFIG}[listen]\nmqtts = \"everywhere\"\n"),
    )
    .unwrap();
    let out = setup.identity(&["add", "filter"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("listen.mqtts"), "{}", stderr(&out));
}

#[test]
fn a_missing_configuration_file_exits_with_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgehub(
        dir.path(),
        &with_config(&["list"], &dir.path().join("absent.toml")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));
}

#[test]
fn concurrent_processes_lose_no_identity() {
    let setup = Setup::new();
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_edgehub"))
                .args(with_config(
                    &["add", &format!("module-{i}")],
                    &setup.config(),
                ))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("edgehub starts")
        })
        .collect();
    for child in children {
        stdout(&child.wait_with_output().unwrap());
    }
    let list = stdout(&setup.identity(&["list"]));
    assert_eq!(list.lines().count(), 8, "{list}");
}

#[test]
fn rotate_prints_the_connection_string_with_the_new_key() {
    let setup = Setup::new();
    let added = stdout(&setup.identity(&["add", "filter"]));
    let rotated = stdout(&setup.identity(&["rotate", "filter"]));
    assert_eq!(rotated.lines().count(), 1, "{rotated}");
    let line = rotated.trim_end();
    assert_ne!(key(line), key(added.trim_end()));
    assert_eq!(key(line).len(), 44);
    assert_eq!(
        line,
        format!(
            "HostName=plant.azure-devices.net;DeviceId=plant-edge;ModuleId=filter;SharedAccessKey={};GatewayHostName=gw.plant.local",
            key(line)
        )
    );
    // `add` of an existing identity prints its (new) primary key.
    assert_eq!(stdout(&setup.identity(&["add", "filter"])), rotated);
}

#[test]
fn rotate_secondary_keeps_the_primary_key() {
    let setup = Setup::new();
    let added = stdout(&setup.identity(&["add", "--device", "leaf-1"]));
    let first = stdout(&setup.identity(&["rotate", "--device", "leaf-1", "--key", "secondary"]));
    let second = stdout(&setup.identity(&["rotate", "--key", "secondary", "--device", "leaf-1"]));
    let line = first.trim_end();
    assert_eq!(
        line,
        format!(
            "HostName=plant.azure-devices.net;DeviceId=leaf-1;SharedAccessKey={};GatewayHostName=gw.plant.local",
            key(line)
        )
    );
    assert_ne!(key(line), key(added.trim_end()));
    assert_ne!(key(line), key(second.trim_end()));
    assert_eq!(
        stdout(&setup.identity(&["add", "--device", "leaf-1"])),
        added
    );
    let out = setup.identity(&["rotate", "--device", "leaf-1", "--key", "tertiary"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("tertiary"), "{}", stderr(&out));
}

#[test]
fn remove_takes_an_identity_out_of_the_list() {
    let setup = Setup::new();
    stdout(&setup.identity(&["add", "filter"]));
    stdout(&setup.identity(&["add", "--device", "leaf-1"]));
    assert_eq!(stdout(&setup.identity(&["remove", "filter"])), "");
    assert_eq!(stdout(&setup.identity(&["list"])), "leaf-1  device\n");
    assert_eq!(
        stdout(&setup.identity(&["remove", "--device", "leaf-1"])),
        ""
    );
    assert_eq!(stdout(&setup.identity(&["list"])), "");
    let mode = std::fs::metadata(setup.data_dir().join("identities.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn remove_and_rotate_of_an_unknown_or_runtime_identity_exit_with_2() {
    let setup = Setup::new();
    stdout(&setup.identity(&["add", "filter"]));
    for args in [
        &["remove", "nobody"][..],
        &["remove", "--device", "nobody"],
        &["rotate", "nobody"],
        &["rotate", "--device", "plant-edge"],
        &["remove", "$edgeHub"],
        &["rotate", "$edgeAgent"],
        &["remove"],
        &["rotate", "filter", "--device", "leaf-1"],
    ] {
        let out = setup.identity(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(stderr(&setup.identity(&["remove", "nobody"])).contains("plant-edge/nobody"));
    assert_eq!(
        stdout(&setup.identity(&["list"])),
        "plant-edge/filter  module\n"
    );
}

#[test]
fn a_registry_open_elsewhere_sees_remove_and_rotate() {
    // The registry a running hub holds open, in this process; the commands run as processes.
    let setup = Setup::new();
    let module = stdout(&setup.identity(&["add", "filter"]));
    let hub = edgehub::identity::IdentityRegistry::open(&setup.data_dir(), "plant-edge").unwrap();
    let before = hub.get("plant-edge", Some("filter")).unwrap().unwrap();
    assert_eq!(before.primary_key.to_base64(), key(module.trim_end()));
    let rotated = stdout(&setup.identity(&["rotate", "filter"]));
    let after = hub.get("plant-edge", Some("filter")).unwrap().unwrap();
    assert_eq!(after.primary_key.to_base64(), key(rotated.trim_end()));
    assert_eq!(after.secondary_key, before.secondary_key);
    stdout(&setup.identity(&["remove", "filter"]));
    assert!(hub.get("plant-edge", Some("filter")).unwrap().is_none());
}

#[test]
fn ids_longer_than_128_characters_are_refused() {
    let setup = Setup::new();
    let long = "m".repeat(129);
    let out = setup.identity(&["add", &long]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("longer than 128"), "{}", stderr(&out));
    let out = setup.identity(&["add", "--device", &"d".repeat(129)]);
    assert_eq!(out.status.code(), Some(2));
    stdout(&setup.identity(&["add", &"m".repeat(128)]));
}
