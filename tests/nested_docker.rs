//! Three layers of a nested deployment on Docker (issue 12): hubs `top`, `middle` and `bottom`,
//! each in its own container; `top` and `middle` share the network `upper`, `middle` and
//! `bottom` the network `lower`, so `bottom` reaches `top` only through `middle`. A module of
//! `bottom` sends a steady QoS 1 stream upstream; `middle` forwards everything from downstream;
//! `top` routes it, by its original sender `bottom/sensor`, to its module `counter`. After a few
//! seconds `middle` is cut off from `upper` (`docker network disconnect`) for 30 s and
//! reconnected: every message `bottom` acknowledged arrives at `top`, none lost. Figures (sent,
//! acknowledged, arrived, lost, duplicated, seconds from the reconnection to the first arrival)
//! are printed for BENCHMARKS.md.
//!
//! The image is built by the test (`docker/build-images.sh`, a `docker import` of a root file
//! system holding the hub binary: the engine needs no registry) from `EDGEHUB_BIN` when set,
//! else `target/release/edgehub` when it is at least as new as this test's build, else the
//! debug binary cargo built for this test. Each hub's folder (configuration, identities,
//! certificates, store) is a temporary folder of the host mounted at `/etc/edgehub`; the
//! identities are made on the host with the `edgehub` CLI. The test talks to `bottom` and `top`
//! over their plain MQTT ports, published on 127.0.0.1 only.
//!
//! Every container, network, image and folder it made is removed when it ends, also when it
//! fails (the containers' logs are printed first; with `NESTED_DOCKER_LOGS` set, also when it
//! passes). Without a Docker engine (`docker info` fails) it says so and passes.

mod common;

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::hubproc::{HUB_HOST, epoch_secs, key_of};
use common::sensor::Sensor;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Messages per second from the sensor.
const RATE: u32 = 50;
/// How long the stream flows end to end before the cut.
const BEFORE_CUT: Duration = Duration::from_secs(5);
/// How long `middle` is cut off from `upper`.
const OUTAGE: Duration = Duration::from_secs(30);
/// How long the stream goes on after the reconnection.
const AFTER_RECONNECT: Duration = Duration::from_secs(10);
/// How long everything acknowledged has to arrive once the stream ended.
const DRAIN_DEADLINE: Duration = Duration::from_secs(240);
/// Arrivals this soon after the cut may still be on their way (in top's hands already).
const CUT_GRACE: Duration = Duration::from_secs(1);

/// The sensor's output on `bottom`.
const SENSOR_OUT: &str = "devices/bottom/modules/sensor/messages/events/%24.on=out1";
/// Where `top` delivers to its counter.
const COUNTER_IN: &str = "devices/top/modules/counter/inputs/#";

/// Runs `docker` with `args`; its output (never panics).
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running docker")
}

/// Runs `docker` with `args`, which must succeed; its trimmed stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything the test makes: removed when dropped, containers first, then networks, the
/// image and the hubs' folders; after a panic (or with `NESTED_DOCKER_LOGS` set) the
/// containers' logs are printed first.
struct Lab {
    /// Makes names unique on a shared engine: `edgehub-nested-{suffix}-...`.
    suffix: String,
    image: String,
    networks: Vec<String>,
    containers: Vec<String>,
    /// Dropped (removed) after the containers that write into them.
    dirs: Vec<tempfile::TempDir>,
}

impl Lab {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let suffix = format!("{}-{:04x}", std::process::id(), nanos & 0xffff);
        Self {
            image: format!("edgehub:nested-test-{suffix}"),
            suffix,
            networks: Vec::new(),
            containers: Vec::new(),
            dirs: Vec::new(),
        }
    }

    /// `edgehub-nested-{suffix}-{what}`.
    fn name(&self, what: &str) -> String {
        format!("edgehub-nested-{}-{what}", self.suffix)
    }

    /// Builds the image from `bin` with `docker/build-images.sh`.
    fn build_image(&self, bin: &Path) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/build-images.sh");
        let out = Command::new(script)
            .arg(&self.image)
            .env("EDGEHUB_BIN", bin)
            .stdin(Stdio::null())
            .output()
            .expect("running docker/build-images.sh");
        assert!(
            out.status.success(),
            "docker/build-images.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A private bridge network.
    fn network(&mut self, what: &str) -> String {
        let name = self.name(what);
        self.networks.push(name.clone());
        docker_ok(&["network", "create", &name]);
        name
    }

    /// Starts hub `device` in container `edgehub-nested-{suffix}-{device}` on `network`, its
    /// folder `dir` mounted at `/etc/edgehub`, its plain MQTT and metrics ports published on
    /// 127.0.0.1; returns once its metrics answer and its CA is written.
    fn start(&mut self, device: &'static str, dir: tempfile::TempDir, network: &str) -> Hub {
        let name = self.name(device);
        self.containers.push(name.clone());
        let meta = std::fs::metadata(dir.path()).unwrap();
        // The container writes the store as the owner of the folder, so that it can be removed.
        let user = format!("{}:{}", meta.uid(), meta.gid());
        let volume = format!("{}:/etc/edgehub", dir.path().display());
        docker_ok(&[
            "run",
            "--detach",
            "--name",
            &name,
            "--network",
            network,
            "--user",
            &user,
            "--volume",
            &volume,
            "--env",
            "RUST_LOG=info,sled=off",
            "--env",
            "NO_COLOR=1",
            "--publish",
            "127.0.0.1::1883",
            "--publish",
            "127.0.0.1::9600",
            &self.image,
        ]);
        let hub = Hub {
            device,
            container: name,
            dir: dir.path().to_owned(),
            mqtt: published_port(&self.name(device), 1883),
            metrics: published_port(&self.name(device), 9600),
        };
        self.dirs.push(dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        while hub.metrics().is_none() || !hub.ca().exists() {
            let running = docker_ok(&["inspect", "--format", "{{.State.Running}}", &hub.container]);
            assert_eq!(running, "true", "{device} exited");
            assert!(Instant::now() < deadline, "{device} answers within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        hub
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("NESTED_DOCKER_LOGS").is_some() {
            for container in &self.containers {
                let logs = docker(&["logs", container]);
                eprintln!(
                    "---- logs of {container}:\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
        for container in &self.containers {
            docker(&["rm", "--force", container]);
        }
        for network in &self.networks {
            docker(&["network", "rm", network]);
        }
        docker(&["rmi", "--force", &self.image]);
    }
}

/// The host port published for `port` of `container` on 127.0.0.1.
fn published_port(container: &str, port: u16) -> u16 {
    let mapping = docker_ok(&["port", container, &format!("{port}/tcp")]);
    mapping
        .lines()
        .find_map(|line| line.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{container}'s port {port} is not published: {mapping}"))
}

/// A hub's folder: its configuration (`gateway_hostname` is its container's name, the name the
/// hub below connects to and its server certificate is made for), its deployment, and
/// `extra` appended (an `[upstream]` table).
fn hub_dir(
    device: &str,
    gateway: &str,
    routes: &Value,
    modules: &[&str],
    extra: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deployment.json"),
        common::manifest(routes, modules).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("edgehub.toml"),
        format!(
            "device_id = \"{device}\"\niothub_hostname = \"{HUB_HOST}\"\n\
             gateway_hostname = \"{gateway}\"\ndata_dir = \"data\"\n\
             manifest = \"deployment.json\"\n{extra}\n[listen]\nmqtt = \"0.0.0.0:1883\"\n\
             mqtts = \"0.0.0.0:8883\"\nhttps = \"127.0.0.1:0\"\nmetrics = \"0.0.0.0:9600\"\n"
        ),
    )
    .unwrap();
    dir
}

/// `edgehub identity <args> --config <dir>/edgehub.toml` on the host, which must succeed; its
/// stdout, trimmed.
fn identity(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgehub"))
        .arg("identity")
        .args(args)
        .arg("--config")
        .arg(dir.join("edgehub.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "identity {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The `[upstream]` table of a child of `parent`, with the connection string the parent
/// printed; the parent's CA is copied next to the child's configuration.
fn upstream_of(parent: &Hub, child_dir: &Path, connection_string: &str) -> String {
    assert!(
        connection_string.ends_with(&format!("GatewayHostName={}", parent.container)),
        "{connection_string}"
    );
    std::fs::copy(parent.ca(), child_dir.join("parent-ca.pem")).unwrap();
    format!(
        "[upstream]\nconnection_string = \"{connection_string}\"\nport = 8883\nca = \"parent-ca.pem\"\n"
    )
}

/// A hub running in its container.
struct Hub {
    device: &'static str,
    container: String,
    /// Its folder on the host.
    dir: PathBuf,
    /// Its plain MQTT port, published on 127.0.0.1.
    mqtt: u16,
    /// Its metrics port, published on 127.0.0.1.
    metrics: u16,
}

impl Hub {
    /// The CA it generated at its first start (`data_dir/certs/ca.pem`).
    fn ca(&self) -> PathBuf {
        self.dir.join("data/certs/ca.pem")
    }

    /// `GET /metrics`, or `None` while it does not answer.
    fn metrics(&self) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.contains("edgehub_").then_some(response)
    }

    /// MQTT options of its module `module` (registered on the host before the hub started)
    /// on its published plain MQTT port, with a token valid for an hour.
    fn module(&self, module: &str, connection_string: &str) -> MqttOptions {
        let device = self.device;
        let token = edgehub::sas::sign(
            &format!("{HUB_HOST}/devices/{device}/modules/{module}"),
            &key_of(connection_string),
            epoch_secs(3600),
        );
        let mut options = MqttOptions::new(format!("{device}/{module}"), "127.0.0.1", self.mqtt);
        options.set_credentials(
            format!("{HUB_HOST}/{device}/{module}/?api-version=2021-04-12"),
            token,
        );
        options.set_keep_alive(Duration::from_secs(60));
        options.set_clean_session(false);
        options
    }
}

/// The hub binary the image is made of, and why that one.
fn hub_binary() -> (PathBuf, &'static str) {
    if let Some(bin) = std::env::var_os("EDGEHUB_BIN") {
        return (PathBuf::from(bin), "EDGEHUB_BIN");
    }
    let debug = PathBuf::from(env!("CARGO_BIN_EXE_edgehub"));
    // <target>/<profile>/edgehub
    let release = debug
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("release/edgehub"));
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let Some(release) = release
        && let (Some(r), Some(d)) = (modified(&release), modified(&debug))
        && r >= d
    {
        return (
            release,
            "the release build (not older than this test's build)",
        );
    }
    (debug, "this test's build (no release build as new)")
}

/// The counter on `top`: every sequence number it gets, with the moment it got it.
fn counter(options: MqttOptions) -> mpsc::UnboundedReceiver<(u32, Instant)> {
    let (client, mut events) = AsyncClient::new(options, 100);
    let (arrived, arrivals) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                    let _ = client.subscribe(COUNTER_IN, QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                    if arrived.send((seq, Instant::now())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    arrivals
}

/// What arrived at `top`: distinct sequence numbers in their first-arrival order, every
/// arrival's moment, and duplicates.
#[derive(Default)]
struct Arrivals {
    order: Vec<u32>,
    seen: BTreeSet<u32>,
    moments: Vec<Instant>,
    duplicates: u32,
}

impl Arrivals {
    fn take(&mut self, (seq, at): (u32, Instant)) {
        self.moments.push(at);
        if self.seen.insert(seq) {
            self.order.push(seq);
        } else {
            self.duplicates += 1;
        }
    }

    /// Takes what arrived so far.
    fn drain(&mut self, arrivals: &mut mpsc::UnboundedReceiver<(u32, Instant)>) {
        while let Ok(arrival) = arrivals.try_recv() {
            self.take(arrival);
        }
    }

    /// Receives until every one of `expected` arrived, or `within` passed.
    async fn until(
        &mut self,
        arrivals: &mut mpsc::UnboundedReceiver<(u32, Instant)>,
        expected: &BTreeSet<u32>,
        within: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        while !expected.is_subset(&self.seen) {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(arrival)) => self.take(arrival),
                _ => return,
            }
        }
        // Late duplicates of the last moments.
        while let Ok(Some(arrival)) =
            tokio::time::timeout(Duration::from_millis(500), arrivals.recv()).await
        {
            self.take(arrival);
        }
    }

    /// Arrivals (duplicates included) strictly between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> usize {
        self.moments
            .iter()
            .filter(|&&at| from < at && at < to)
            .count()
    }

    /// The first arrival after `from`.
    fn first_after(&self, from: Instant) -> Option<Instant> {
        self.moments.iter().copied().filter(|&at| at > from).min()
    }

    fn in_order(&self) -> bool {
        self.order.windows(2).all(|w| w[0] < w[1])
    }
}

/// When `middle` was cut off and when it was back.
#[derive(Debug, Clone, Copy)]
struct Outage {
    cut: Instant,
    back: Instant,
}

/// The address of `container` on `network`.
fn address(network: &str, container: &str) -> String {
    docker_ok(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
}

/// Cuts `container` off `network` for [`OUTAGE`], then reconnects it.
async fn cut_off(network: String, container: String) -> Outage {
    let (net, name) = (network.clone(), container.clone());
    let before = tokio::task::spawn_blocking(move || {
        let before = address(&net, &name);
        docker_ok(&["network", "disconnect", &net, &name]);
        before
    })
    .await
    .unwrap();
    let cut = Instant::now();
    println!("cut: {container} ({before}) disconnected from {network}");
    tokio::time::sleep(OUTAGE).await;
    let back = Instant::now();
    let (net, name) = (network.clone(), container.clone());
    let after = tokio::task::spawn_blocking(move || {
        docker_ok(&["network", "connect", &net, &name]);
        address(&net, &name)
    })
    .await
    .unwrap();
    println!(
        "reconnected: {container} to {network} after {:.1} s, address {after}",
        cut.elapsed().as_secs_f64()
    );
    Outage { cut, back }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_layers_lose_nothing_when_the_middle_is_cut_off_for_30_s() {
    if !docker(&["info"]).status.success() {
        println!("skipped: `docker info` fails (no Docker engine reachable)");
        return;
    }
    let mut lab = Lab::new();
    let (bin, why) = hub_binary();
    println!("image {} from {} ({why})", lab.image, bin.display());
    lab.build_image(&bin);
    let upper = lab.network("upper");
    let lower = lab.network("lower");

    // top: routes the sensor of `bottom` (its original sender) to its module `counter`; knows
    // `middle` as its child edge device and `bottom` as middle's.
    let top_dir = hub_dir(
        "top",
        &lab.name("top"),
        &json!({"fromSensor": "FROM /messages/modules/sensor/* INTO BrokeredEndpoint(\"/modules/counter/inputs/in\")"}),
        &["counter"],
        "",
    );
    let counter_key = identity(top_dir.path(), &["add", "counter"]);
    let middle_line = identity(top_dir.path(), &["add", "--edge-device", "middle"]);
    identity(
        top_dir.path(),
        &["add", "--edge-device", "bottom", "--parent", "middle"],
    );
    let top = lab.start("top", top_dir, &upper);

    // middle: everything from downstream goes upstream; knows `bottom` as its child.
    let middle_dir = hub_dir(
        "middle",
        &lab.name("middle"),
        &json!({"downstream": "FROM /messages/* INTO $upstream"}),
        &[],
        "",
    );
    let upstream = upstream_of(&top, middle_dir.path(), &middle_line);
    std::fs::OpenOptions::new()
        .append(true)
        .open(middle_dir.path().join("edgehub.toml"))
        .unwrap()
        .write_all(upstream.as_bytes())
        .unwrap();
    let bottom_line = identity(middle_dir.path(), &["add", "--edge-device", "bottom"]);
    let middle = lab.start("middle", middle_dir, &lower);
    docker_ok(&["network", "connect", &upper, &middle.container]);

    // bottom: its sensor's output goes upstream.
    let bottom_dir = hub_dir(
        "bottom",
        &lab.name("bottom"),
        &json!({"up": "FROM /messages/modules/sensor/* INTO $upstream"}),
        &["sensor"],
        "",
    );
    let upstream = upstream_of(&middle, bottom_dir.path(), &bottom_line);
    std::fs::OpenOptions::new()
        .append(true)
        .open(bottom_dir.path().join("edgehub.toml"))
        .unwrap()
        .write_all(upstream.as_bytes())
        .unwrap();
    let sensor_key = identity(bottom_dir.path(), &["add", "sensor"]);
    let bottom = lab.start("bottom", bottom_dir, &lower);

    let mut arrivals = counter(top.module("counter", &counter_key));
    let sensor = Sensor::connect(bottom.module("sensor", &sensor_key), SENSOR_OUT);
    let mut got = Arrivals::default();

    // The stream: RATE messages a second, through the cut and for AFTER_RECONNECT after it.
    let started = Instant::now();
    let first_deadline = started + Duration::from_secs(60);
    let mut outage: Option<tokio::task::JoinHandle<Outage>> = None;
    let mut ended: Option<(Outage, Instant)> = None;
    let mut sent = 0u32;
    loop {
        sensor.send(sent).await;
        sent += 1;
        got.drain(&mut arrivals);
        match (&mut outage, ended) {
            // Cut once the path works end to end and has carried the stream for a while.
            (None, _) => {
                assert!(
                    !got.seen.is_empty() || Instant::now() < first_deadline,
                    "the first message crosses the three layers within 60 s"
                );
                if let Some(&first) = got.moments.first()
                    && first.elapsed() >= BEFORE_CUT
                {
                    outage = Some(tokio::spawn(cut_off(
                        upper.clone(),
                        middle.container.clone(),
                    )));
                }
            }
            (Some(task), None) if task.is_finished() => {
                ended = Some((task.await.unwrap(), Instant::now()));
            }
            (Some(_), Some((_, back))) if back.elapsed() >= AFTER_RECONNECT => break,
            _ => {}
        }
        let next = started + Duration::from_secs_f64(f64::from(sent) / f64::from(RATE));
        tokio::time::sleep_until(next.into()).await;
    }
    let (outage, _) = ended.expect("the outage ended");

    sensor.wait_acked(sent).await;
    let acked = sensor.acked();
    let expected: BTreeSet<u32> = (0..acked).collect();
    got.until(&mut arrivals, &expected, DRAIN_DEADLINE).await;
    let lost = expected.difference(&got.seen).count();
    let during_cut = got.between(outage.cut + CUT_GRACE, outage.back);
    let recovery = got
        .first_after(outage.back)
        .map(|at| at.duration_since(outage.back));
    println!(
        "three layers, middle cut off for {} s (docker network disconnect): sent {sent}, \
         acknowledged by bottom {acked}, arrived at top {}, lost {lost}, duplicated {}, \
         arrived during the cut {during_cut}, first arrival {:.1} s after the reconnection, \
         in order {}",
        OUTAGE.as_secs(),
        got.seen.len(),
        got.duplicates,
        recovery.map_or(f64::NAN, |d| d.as_secs_f64()),
        got.in_order(),
    );
    assert_eq!(lost, 0, "every message bottom acknowledged arrives at top");
    assert_eq!(during_cut, 0, "nothing crosses while middle is cut off");
    assert!(got.in_order(), "in order per sender");
    assert!(recovery.is_some(), "messages arrive after the reconnection");
    for hub in [&top, &middle, &bottom] {
        assert!(hub.metrics().is_some(), "{} still answers", hub.device);
    }
}
