//! The real `edgehub` binary in a folder of its own, its log kept in a file, and MQTT
//! credentials made the way the SDKs make them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgehub::identity::SymmetricKey;
use rumqttc::MqttOptions;
use serde_json::{Value, json};

use super::{SENDER_TO_RECEIVER, free_port, wait_until};

/// The IoT Hub hostname of the hubs these tests run.
pub const HUB_HOST: &str = "hub.example.net";

/// A hub process; killed when dropped.
pub struct HubProcess {
    /// Its folder: config, deployment, data and log.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its plain MQTT port on 127.0.0.1.
    pub mqtt: u16,
    /// Its MQTT-over-TLS port on 127.0.0.1.
    pub mqtts: u16,
    /// Its metrics port on 127.0.0.1.
    pub metrics: u16,
    /// Its HTTPS port (direct methods, the device-scope API) on 127.0.0.1.
    pub https: u16,
}

impl HubProcess {
    /// A hub of device `edge` with modules `sender` and `receiver` and the route between them;
    /// its log (at `info`, stdout and stderr) goes to `hub.log` in its folder.
    pub fn start() -> Self {
        Self::start_with(
            &json!({"senderToReceiver": SENDER_TO_RECEIVER}),
            &["sender", "receiver"],
        )
    }

    /// A hub of device `edge` with these routes and modules.
    pub fn start_with(routes: &Value, modules: &[&str]) -> Self {
        Self::start_device("edge", routes, modules, "")
    }

    /// A hub of device `device_id` with these routes and modules, and `extra` appended to its
    /// configuration (e.g. an `[upstream]` table).
    pub fn start_device(device_id: &str, routes: &Value, modules: &[&str], extra: &str) -> Self {
        Self::start_device_on(device_id, routes, modules, extra, free_port())
    }

    /// The same with its MQTT-over-TLS listener on `mqtts` (8883 for the official SDKs, which
    /// have no port option).
    pub fn start_device_on(
        device_id: &str,
        routes: &Value,
        modules: &[&str],
        extra: &str,
        mqtts: u16,
    ) -> Self {
        let mut hub = Self::prepare(device_id, routes, modules, extra, mqtts);
        hub.spawn();
        hub
    }

    /// A child hub of device `device_id` with no manifest of its own: `extra` must hold its
    /// `[upstream]` table, from where its deployment comes.
    pub fn start_without_manifest(device_id: &str, extra: &str) -> Self {
        let mut hub = Self::folder(device_id, "", extra, free_port());
        hub.spawn();
        hub
    }

    /// A hub's folder and configuration, not started yet (e.g. to mount its data folder
    /// first): [`HubProcess::spawn`] starts it.
    pub fn prepare(
        device_id: &str,
        routes: &Value,
        modules: &[&str],
        extra: &str,
        mqtts: u16,
    ) -> Self {
        let hub = Self::folder(device_id, "manifest = \"deployment.json\"\n", extra, mqtts);
        std::fs::write(
            hub.dir.path().join("deployment.json"),
            super::manifest(routes, modules).to_string(),
        )
        .unwrap();
        hub
    }

    /// A folder with a configuration holding `manifest` (a `manifest = ...` line, or nothing)
    /// and `extra`, on free ports.
    fn folder(device_id: &str, manifest: &str, extra: &str, mqtts: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mqtt, metrics, https) = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.path().join("edgehub.toml"),
            format!(
                "device_id = \"{device_id}\"\niothub_hostname = \"{HUB_HOST}\"\n\
                 gateway_hostname = \"localhost\"\ndata_dir = \"data\"\n\
                 {manifest}{extra}\n[listen]\nmqtt = \"127.0.0.1:{mqtt}\"\n\
                 mqtts = \"127.0.0.1:{mqtts}\"\nhttps = \"127.0.0.1:{https}\"\n\
                 metrics = \"127.0.0.1:{metrics}\"\n"
            ),
        )
        .unwrap();
        Self {
            dir,
            child: None,
            mqtt,
            mqtts,
            metrics,
            https,
        }
    }

    /// Starts the process (again) on its folder and ports; returns once its admin endpoint
    /// answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the hub runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hub.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(["run", "--config"])
            .arg(self.dir.path().join("edgehub.toml"))
            .env("RUST_LOG", "info,sled=off")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let socket = self.dir.path().join("data/admin.sock");
        wait_until(
            Duration::from_secs(30),
            "the admin endpoint answers",
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        );
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The admin socket file stays behind a killed hub; the next start replaces it.
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            assert!(super::terminate(&mut child).success());
        }
    }

    /// The generated CA the hub's TLS listener presents a certificate of.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("data/certs/ca.pem")
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("edgehub.toml")
    }

    /// What the hub logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// `edgehub <args> --config <this hub's config>`: its output, whatever its exit code.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .unwrap()
    }

    /// `edgehub <args> --config <this hub's config>`, which must succeed; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.command(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `edgehub identity <args> --config <this hub's config>`, which must succeed; its stdout.
    pub fn identity(&self, args: &[&str]) -> String {
        let mut all = vec!["identity"];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// MQTT options for module `module` of this hub's device `device` (its identity added
    /// here), a token of its key valid for an hour, `clean_session=0`.
    pub fn module(&self, device: &str, module: &str) -> MqttOptions {
        let key = key_of(&self.identity(&["add", module]));
        let token = edgehub::sas::sign(
            &format!("{HUB_HOST}/devices/{device}/modules/{module}"),
            &key,
            epoch_secs(3600),
        );
        let mut options = self.options(
            &format!("{device}/{module}"),
            &format!("{HUB_HOST}/{device}/{module}/?api-version=2021-04-12"),
            &token,
        );
        options.set_clean_session(false);
        options
    }

    /// MQTT options for leaf device `device` with the key of `connection_string`, a token
    /// valid for an hour.
    pub fn leaf(&self, device: &str, connection_string: &str) -> MqttOptions {
        self.leaf_until(device, connection_string, epoch_secs(3600))
    }

    /// The same with a token that expires at `expiry` (seconds since the epoch).
    pub fn leaf_until(&self, device: &str, connection_string: &str, expiry: u64) -> MqttOptions {
        let key = key_of(connection_string);
        self.options(
            device,
            &format!("{HUB_HOST}/{device}/?api-version=2021-04-12"),
            &edgehub::sas::sign(&format!("{HUB_HOST}/devices/{device}"), &key, expiry),
        )
    }

    /// MQTT options on this hub's plain port.
    pub fn options(&self, client_id: &str, username: &str, password: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.mqtt);
        options.set_credentials(username, password);
        options.set_keep_alive(Duration::from_secs(60));
        options
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The key of a connection string.
pub fn key_of(connection_string: &str) -> SymmetricKey {
    let fields: HashMap<&str, &str> = connection_string
        .trim()
        .split(';')
        .filter_map(|f| f.split_once('='))
        .collect();
    SymmetricKey::from_base64(fields["SharedAccessKey"]).unwrap()
}

/// Seconds since the Unix epoch, `offset` seconds from now.
pub fn epoch_secs(offset: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now.checked_add_signed(offset).unwrap()
}
