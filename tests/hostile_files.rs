//! What `edgehub run` leaves on disk, started the careless way (umask 000, a data folder open
//! to everyone, a planted temporary file), and what it warns about at start.

use std::fs::File;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

mod common;
use common::{SENDER_TO_RECEIVER, free_port};

/// Every file and folder under `dir` (links not followed), with its mode.
fn walk(dir: &Path, found: &mut Vec<(PathBuf, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = std::fs::symlink_metadata(entry.path()).unwrap();
        found.push((entry.path(), metadata.mode() & 0o777));
        if metadata.is_dir() {
            walk(&entry.path(), found);
        }
    }
}

struct Hub {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Hub {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("edgehub.toml")
    }

    fn edgehub(&self, args: &[&str]) -> Output {
        let (command, rest) = args.split_at(2);
        Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(command)
            .arg("--config")
            .arg(self.config())
            .args(rest)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A hub whose plain MQTT and metrics listen on every interface, started under umask 000 on
/// a data folder of mode 0777 that holds a planted `identities.json.tmp` link to `victim`.
fn start_carelessly() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    symlink(&victim, data.join("identities.json.tmp")).unwrap();
    std::fs::write(
        dir.path().join("deployment.json"),
        common::manifest(
            &json!({"senderToReceiver": SENDER_TO_RECEIVER}),
            &["sender", "receiver"],
        )
        .to_string(),
    )
    .unwrap();
    let (mqtt, mqtts, metrics) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("edgehub.toml"),
        format!(
            "device_id = \"edge\"\niothub_hostname = \"hub.example.net\"\n\
             gateway_hostname = \"localhost\"\ndata_dir = \"data\"\n\
             manifest = \"deployment.json\"\n[listen]\nmqtt = \"0.0.0.0:{mqtt}\"\n\
             mqtts = \"127.0.0.1:{mqtts}\"\nhttps = \"127.0.0.1:0\"\n\
             metrics = \"0.0.0.0:{metrics}\"\n"
        ),
    )
    .unwrap();
    let log = File::create(dir.path().join("hub.log")).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_edgehub"))
        .arg(dir.path().join("edgehub.toml"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let hub = Hub {
        dir,
        child: Some(child),
    };
    let socket = hub.data().join("admin.sock");
    common::wait_until(
        Duration::from_secs(30),
        "the admin endpoint answers",
        || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
    );
    hub
}

#[test]
fn nothing_the_hub_creates_is_open_to_others_whatever_the_umask() {
    let mut hub = start_carelessly();
    // A twin written through the admin socket: one more file the hub creates.
    let out = hub.edgehub(&["twin", "set-desired", "sender", r#"{"threshold": 30}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found = Vec::new();
    walk(&hub.data(), &mut found);
    let data_mode = std::fs::metadata(hub.data()).unwrap().mode() & 0o777;
    assert_eq!(data_mode, 0o700, "{}", hub.log());
    for name in ["identities.json", "admin.sock"] {
        assert!(
            found.iter().any(|(p, _)| p.ends_with(name)),
            "{name} in {found:?}"
        );
    }
    assert!(
        found
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("twins")),
        "{found:?}"
    );
    let open: Vec<_> = found
        .iter()
        .filter(|(path, mode)| {
            // The planted link is not the hub's (a link's own mode means nothing).
            mode & 0o077 != 0 && !path.ends_with("identities.json.tmp")
        })
        .collect();
    assert!(open.is_empty(), "open to group or others: {open:?}");
    // The planted temporary file was not written through.
    assert_eq!(
        std::fs::read_to_string(hub.dir.path().join("victim")).unwrap(),
        "untouched"
    );
    let mut child = hub.child.take().unwrap();
    assert!(common::terminate(&mut child).success());
}

#[test]
fn plain_mqtt_and_metrics_on_every_interface_are_warned_about_at_start() {
    let mut hub = start_carelessly();
    let mut child = hub.child.take().unwrap();
    assert!(common::terminate(&mut child).success());
    let log = hub.log();
    let warned = |key: &str| {
        log.lines()
            .any(|line| line.contains("WARN") && line.contains(&format!("{key} = 0.0.0.0:")))
    };
    assert!(warned("listen.mqtt"), "{log}");
    assert!(warned("listen.metrics"), "{log}");
    assert!(
        log.contains("the data folder was open to other users"),
        "{log}"
    );
}
