//! **edgehub-soak** (issue 14): module pairs at a steady rate through a real hub process
//! while faults come in turn (a module restart, a hub SIGTERM, a hub SIGKILL, a full disk),
//! every message accounted for, the hub's RSS and disk sampled.
//!
//! The hub's data folder is a small ext4 filesystem of its own (a loop-mounted image, made and
//! removed by the soak; root only), so that a filler file can fill it for a full-disk episode.
//! Without the privilege to mount, the soak runs on a plain folder without full-disk episodes
//! and says so. The rate is half the measured 1 -> 1 capacity (a calibration pair runs open
//! loop first) unless given. At the end publishers stop, what they sent is drained, and the
//! counts are: published, acknowledged (PUBACK), delivered, lost (acknowledged and never
//! delivered: must be 0) and duplicated.
//!
//! Results in the output folder: `report.json`, `report.md` (the table), `samples.csv`,
//! `soak.png` (RSS and disk over time, the faults marked) and `hub.log`.

pub mod chart;
pub mod disk;
pub mod hub;
pub mod pair;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgehub::config::Config;
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::watch;

use crate::load::HubModules;
use disk::LoopFs;
use hub::HubProcess;
use pair::{Control, PairPlan, PairStats};

const DEVICE: &str = "soak-edge";
const IOTHUB: &str = "soak.azure-devices.net";

/// What a soak run is to do.
#[derive(Debug, Clone)]
pub struct SoakSettings {
    /// The `edgehub` binary.
    pub hub_bin: PathBuf,
    /// The results folder (created); the work folder and the filesystem image go under it.
    pub out: PathBuf,
    /// How long the load runs (the drain comes after).
    pub duration: Duration,
    /// Module pairs.
    pub pairs: u32,
    /// Total messages per second over all pairs; `None`: half the measured 1 -> 1 capacity.
    pub rate: Option<f64>,
    /// How long the calibration pair runs when the rate is measured.
    pub calibrate: Duration,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Most unacknowledged messages per publisher.
    pub window: usize,
    /// Time between faults; they come in turn: module restart, SIGTERM, SIGKILL, full disk.
    pub fault_every: Duration,
    /// Whether full-disk episodes are part of the rotation.
    pub full_disk: bool,
    /// How long the disk stays full.
    pub full_disk_hold: Duration,
    /// The size of the hub's filesystem in MiB.
    pub fs_mib: u64,
    /// Time between samples of RSS and disk.
    pub sample_every: Duration,
    /// The longest wait for deliveries after the publishers stopped.
    pub drain: Duration,
}

/// Why the soak could not run.
#[derive(Debug, Error)]
pub enum SoakError {
    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The hub could not be started or stopped.
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    /// The configuration or identities could not be set up.
    #[error("setting up the hub: {0}")]
    Setup(String),
    /// The chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] crate::chart::ChartError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SoakError {
    let path = path.to_owned();
    move |source| SoakError::Io {
        action,
        path,
        source,
    }
}

/// One sample of the hub's resources.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// The hub's resident set in bytes (0 while it is down).
    pub rss_bytes: u64,
    /// Bytes allocated under the data folder (the filler excluded).
    pub data_bytes: u64,
    /// Used bytes of the data folder's filesystem (the filler included).
    pub fs_used_bytes: u64,
    /// Messages acknowledged so far.
    pub acknowledged: u64,
    /// Messages delivered so far.
    pub delivered: u64,
}

/// A fault and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Seconds since the load started.
    pub t_s: f64,
    /// `module_restart`, `sigterm`, `sigkill` or `full_disk`.
    pub kind: &'static str,
    /// What happened (times, bytes).
    pub detail: String,
}

/// An acknowledged message that was never delivered.
#[derive(Debug, Clone, Serialize)]
pub struct LostMessage {
    /// The pair that sent it.
    pub pair: u32,
    /// Its sequence number in that pair.
    pub seq: u64,
    /// About when it was acknowledged (seconds since the load started), to place it among
    /// the faults.
    pub acked_near_s: Option<f64>,
}

/// A range of samples.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Range {
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// The last.
    pub last: f64,
}

/// The soak's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// When the load started, in seconds since the Unix epoch (to find the hub log's lines
    /// of a moment given in seconds since the start).
    pub started_unix_s: f64,
    /// The load's duration in seconds.
    pub duration_s: f64,
    /// Module pairs.
    pub pairs: u32,
    /// The measured 1 -> 1 capacity (msgs/s), when measured.
    pub capacity_per_s: Option<f64>,
    /// The total rate offered (msgs/s).
    pub rate_per_s: f64,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Whether full-disk episodes were part of the rotation.
    pub full_disk: bool,
    /// Why they were not, when asked for.
    pub full_disk_note: Option<String>,
    /// Messages sent at least once.
    pub published: u64,
    /// PUBLISH packets written, resends included.
    pub sent: u64,
    /// Messages the hub acknowledged.
    pub acknowledged: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Acknowledged and never delivered: must be 0.
    pub lost: u64,
    /// The first of them (at most `LOST_LISTED` per pair).
    pub lost_messages: Vec<LostMessage>,
    /// Deliveries of a message delivered before.
    pub duplicated: u64,
    /// Delivered without an acknowledgement (the hub stored it, the PUBACK was cut off).
    pub delivered_unacknowledged: u64,
    /// Sent and never acknowledged (refused, or still in flight at the end).
    pub never_acknowledged: u64,
    /// Deliveries that were not the soak's.
    pub foreign: u64,
    /// Subscriber reconnections whose session the hub had lost.
    pub sessions_lost: u64,
    /// Connections the clients opened.
    pub connections: u64,
    /// Faults by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Every fault, in order.
    pub events: Vec<FaultEvent>,
    /// The hub's RSS in MiB.
    pub rss_mib: Range,
    /// The data folder's size in MiB.
    pub data_mib: Range,
    /// Seconds from the filler's removal to the next acknowledgement, per full-disk episode
    /// (`None`: none before the next fault).
    pub full_disk_recovery_s: Vec<Option<f64>>,
    /// Lines of the hub's log: refusal episodes begun, and ended.
    pub log_refusal_episodes: u64,
    /// Lines of the hub's log: refusal episodes ended.
    pub log_refusal_recoveries: u64,
    /// Seconds the drain took.
    pub drain_s: f64,
}

/// The four faults, in the order they come.
const FAULTS: [&str; 4] = ["module_restart", "sigterm", "sigkill", "full_disk"];

/// A TCP port free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16, SoakError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(io_error("bind", Path::new("127.0.0.1:0")))?;
    let port = listener
        .local_addr()
        .map_err(io_error("bind", Path::new("127.0.0.1:0")))?
        .port();
    Ok(port)
}

fn publisher_module(i: u32) -> String {
    format!("soak-pub-{i}")
}

fn subscriber_module(i: u32) -> String {
    format!("soak-sub-{i}")
}

/// The calibration pair's index.
const CALIBRATION: u32 = u32::MAX;

fn pair_names(i: u32) -> (String, String) {
    if i == CALIBRATION {
        ("soak-cal-pub".to_owned(), "soak-cal-sub".to_owned())
    } else {
        (publisher_module(i), subscriber_module(i))
    }
}

/// The deployment: a route per pair (and one for the calibration pair).
fn manifest(pairs: u32) -> Value {
    let routes: serde_json::Map<String, Value> = (0..pairs)
        .chain([CALIBRATION])
        .map(|i| {
            let (publisher, subscriber) = pair_names(i);
            (
                format!("soak{}", if i == CALIBRATION { "cal".to_owned() } else { i.to_string() }),
                Value::String(format!(
                    "FROM /messages/modules/{publisher}/outputs/out INTO BrokeredEndpoint(\"/modules/{subscriber}/inputs/in\")"
                )),
            )
        })
        .collect();
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {}}},
        "$edgeHub": {"properties.desired": crate::load::topology::edge_hub_desired(routes)}
    }})
}

/// The hub's folder and data filesystem.
struct Site {
    config: PathBuf,
    data: PathBuf,
    filler: PathBuf,
    mqtt: SocketAddr,
    modules: HubModules,
    /// Kept until the end: unmounted when dropped.
    fs: Option<LoopFs>,
}

fn prepare(settings: &SoakSettings) -> Result<(Site, Option<String>), SoakError> {
    let work = settings.out.join("work");
    std::fs::create_dir_all(&work).map_err(io_error("create", &work))?;
    let mount = work.join("data");
    let (fs, note) = if settings.full_disk {
        match LoopFs::create(&work.join("fs.img"), &mount, settings.fs_mib) {
            Ok(fs) => (Some(fs), None),
            Err(e) => (
                None,
                Some(format!(
                    "no full-disk episodes: cannot mount a filesystem of its own ({e})"
                )),
            ),
        }
    } else {
        (None, None)
    };
    std::fs::create_dir_all(&mount).map_err(io_error("create", &mount))?;
    let deployment = work.join("deployment.json");
    std::fs::write(&deployment, manifest(settings.pairs).to_string())
        .map_err(io_error("write", &deployment))?;
    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let config = work.join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"{DEVICE}\"\niothub_hostname = \"{IOTHUB}\"\ngateway_hostname = \"localhost\"\n\
             data_dir = \"{}\"\nmanifest = \"deployment.json\"\n[listen]\nmqtt = \"127.0.0.1:{}\"\n\
             mqtts = \"127.0.0.1:{}\"\nhttps = \"127.0.0.1:{}\"\nmetrics = \"127.0.0.1:{}\"\n",
            mount.display(),
            ports[0],
            ports[1],
            ports[2],
            ports[3]
        ),
    )
    .map_err(io_error("write", &config))?;
    let loaded = Config::load(&config).map_err(|e| SoakError::Setup(e.to_string()))?;
    let registry = loaded
        .identity_registry()
        .map_err(|e| SoakError::Setup(format!("{e:#}")))?;
    let names: Vec<String> = (0..settings.pairs)
        .chain([CALIBRATION])
        .flat_map(|i| {
            let (p, s) = pair_names(i);
            [p, s]
        })
        .collect();
    let modules = HubModules::from_store(&registry, DEVICE, IOTHUB, &names)
        .map_err(|e| SoakError::Setup(e.to_string()))?;
    Ok((
        Site {
            config,
            filler: mount.join("soak-filler"),
            data: mount,
            mqtt: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            modules,
            fs,
        },
        note,
    ))
}

/// A running pair: its plan, its counts, its tasks and its restart switch.
struct RunningPair {
    stats: Arc<PairStats>,
    restart: watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The switches every pair listens to.
struct Switches {
    stop_publishing: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Switches {
    fn new() -> Self {
        Self {
            stop_publishing: watch::Sender::new(false),
            stop: watch::Sender::new(false),
        }
    }
}

fn start_pair(
    runtime: &tokio::runtime::Runtime,
    site: &Site,
    settings: &SoakSettings,
    index: u32,
    rate: Option<f64>,
    switches: &Switches,
) -> Result<RunningPair, SoakError> {
    let (publisher, subscriber) = pair_names(index);
    let credentials = |module: &str| {
        let (client_id, username, password) = site
            .modules
            .credentials(module, Duration::from_secs(24 * 3600))
            .map_err(|e| SoakError::Setup(e.to_string()))?;
        Ok::<_, SoakError>(wire::Credentials {
            client_id,
            username,
            password,
        })
    };
    let plan = PairPlan {
        index,
        addr: site.mqtt,
        device: DEVICE.to_owned(),
        publisher: (publisher.clone(), credentials(&publisher)?),
        subscriber: (subscriber.clone(), credentials(&subscriber)?),
        rate,
        window: settings.window,
        payload_bytes: settings.payload_bytes,
    };
    let stats = Arc::new(PairStats::default());
    let restart = watch::Sender::new(0u64);
    let control = Control {
        stop_publishing: switches.stop_publishing.subscribe(),
        stop: switches.stop.subscribe(),
        restart: restart.subscribe(),
    };
    let tasks = vec![
        runtime.spawn(pair::subscriber(
            plan.clone(),
            Arc::clone(&stats),
            control.clone(),
        )),
        runtime.spawn(pair::publisher(plan, Arc::clone(&stats), control)),
    ];
    Ok(RunningPair {
        stats,
        restart,
        tasks,
    })
}

/// Waits until every task ended or `within` passed; whether they all ended.
fn join_within(
    runtime: &tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    within: Duration,
) -> bool {
    runtime.block_on(async {
        tokio::time::timeout(within, futures_join(tasks))
            .await
            .is_ok()
    })
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// Stops publishing, waits for the acknowledgements and the deliveries (until every
/// acknowledged message arrived, or nothing arrived for a while, or `within`), then stops the
/// clients. Returns how long it took.
fn drain(
    runtime: &tokio::runtime::Runtime,
    switches: &Switches,
    pairs: &mut [RunningPair],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let _ = switches.stop_publishing.send(true);
    let deadline = started + within;
    let mut last_progress = (Instant::now(), 0u64);
    loop {
        let missing: u64 = pairs.iter().map(|p| p.stats.missing()).sum();
        let publishers_done = pairs.iter().all(|p| p.tasks[1].is_finished());
        if missing == 0 && publishers_done {
            break;
        }
        let delivered: u64 = pairs.iter().map(|p| p.stats.delivered_count()).sum();
        if delivered != last_progress.1 {
            last_progress = (Instant::now(), delivered);
        }
        // Nothing more arrives: what is missing stays missing.
        if Instant::now() > deadline || last_progress.0.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = switches.stop.send(true);
    let tasks: Vec<_> = pairs.iter_mut().flat_map(|p| p.tasks.drain(..)).collect();
    join_within(runtime, tasks, Duration::from_secs(10));
    started.elapsed()
}

/// Runs the calibration pair open loop; its delivered msgs/s after a second of warm-up.
fn calibrate(
    runtime: &tokio::runtime::Runtime,
    site: &Site,
    settings: &SoakSettings,
) -> Result<f64, SoakError> {
    let switches = Switches::new();
    let mut pair = start_pair(runtime, site, settings, CALIBRATION, None, &switches)?;
    std::thread::sleep(Duration::from_secs(1));
    let (from, count) = (Instant::now(), pair.stats.delivered_count());
    std::thread::sleep(settings.calibrate);
    #[allow(clippy::cast_precision_loss)]
    let capacity =
        (pair.stats.delivered_count() - count) as f64 / from.elapsed().as_secs_f64().max(0.001);
    drain(
        runtime,
        &switches,
        std::slice::from_mut(&mut pair),
        Duration::from_secs(30),
    );
    Ok(capacity)
}

/// The sampler: every `every`, the hub's RSS and disk and the counts so far.
fn start_sampler(
    site: &Site,
    pid: Arc<AtomicU32>,
    stats: Vec<Arc<PairStats>>,
    every: Duration,
    start: Instant,
) -> (
    Arc<Mutex<Vec<Sample>>>,
    watch::Sender<bool>,
    std::thread::JoinHandle<()>,
) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let (data, filler) = (site.data.clone(), site.filler.clone());
    let out = Arc::clone(&samples);
    let thread = std::thread::spawn(move || {
        while !*stopped.borrow() {
            let pid = pid.load(Ordering::Relaxed);
            let sample = Sample {
                t_s: start.elapsed().as_secs_f64(),
                rss_bytes: if pid == 0 {
                    0
                } else {
                    disk::rss_bytes(pid).unwrap_or(0)
                },
                data_bytes: disk::allocated_bytes(&data, &filler),
                fs_used_bytes: disk::fs_used_bytes(&data).unwrap_or(0),
                acknowledged: stats.iter().map(|s| s.acked_count()).sum(),
                delivered: stats.iter().map(|s| s.delivered_count()).sum(),
            };
            out.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sample);
            std::thread::sleep(every);
        }
    });
    (samples, stop, thread)
}

/// Runs the soak.
///
/// # Errors
///
/// When the hub or its filesystem cannot be set up, the hub cannot be started again after a
/// fault, or the results cannot be written.
pub fn run(settings: &SoakSettings) -> Result<SoakReport, SoakError> {
    std::fs::create_dir_all(&settings.out).map_err(io_error("create", &settings.out))?;
    // Absolute: the hub reads its data folder relative to its configuration's folder.
    let settings = &SoakSettings {
        out: std::fs::canonicalize(&settings.out).map_err(io_error("resolve", &settings.out))?,
        ..settings.clone()
    };
    let (site, full_disk_note) = prepare(settings)?;
    let full_disk = settings.full_disk && site.fs.is_some();
    if let Some(note) = &full_disk_note {
        eprintln!("soak: {note}");
    }
    let log = settings.out.join("hub.log");
    let mut hub = HubProcess::new(&settings.hub_bin, &site.config, &log, site.mqtt);
    hub.start()?;
    let pid = Arc::new(AtomicU32::new(hub.pid().unwrap_or(0)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_error("start", Path::new("the tokio runtime")))?;

    let (capacity, rate) = match settings.rate {
        Some(rate) => (None, rate),
        None => {
            let capacity = calibrate(&runtime, &site, settings)?;
            eprintln!("soak: 1 -> 1 capacity {capacity:.0} msgs/s; offering half");
            (Some(capacity), capacity / 2.0)
        }
    };
    let per_pair = rate / f64::from(settings.pairs.max(1));

    let switches = Switches::new();
    let mut pairs = (0..settings.pairs)
        .map(|i| start_pair(&runtime, &site, settings, i, Some(per_pair), &switches))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (samples, stop_sampler, sampler) = start_sampler(
        &site,
        Arc::clone(&pid),
        pairs.iter().map(|p| Arc::clone(&p.stats)).collect(),
        settings.sample_every,
        start,
    );
    let acked_total =
        |pairs: &[RunningPair]| -> u64 { pairs.iter().map(|p| p.stats.acked_count()).sum() };

    let mut events = Vec::new();
    let mut recoveries = Vec::new();
    let rotation: Vec<&'static str> = FAULTS
        .iter()
        .copied()
        .filter(|f| full_disk || *f != "full_disk")
        .collect();
    let mut next_fault = start + settings.fault_every;
    let end = start + settings.duration;
    let mut turn = 0usize;
    let outcome = (|| -> Result<(), SoakError> {
        while next_fault + Duration::from_secs(5) < end {
            let now = Instant::now();
            if now < next_fault {
                std::thread::sleep(next_fault - now);
            }
            let kind = rotation[turn % rotation.len()];
            let t_s = start.elapsed().as_secs_f64();
            let detail = match kind {
                "module_restart" => {
                    let index = (turn / rotation.len()) % pairs.len().max(1);
                    if let Some(pair) = pairs.get(index) {
                        pair.restart.send_modify(|n| *n += 1);
                    }
                    format!("pair {index}'s modules restarted")
                }
                "sigterm" => {
                    let stopped = hub.terminate()?;
                    pid.store(0, Ordering::Relaxed);
                    let started = hub.start()?;
                    pid.store(hub.pid().unwrap_or(0), Ordering::Relaxed);
                    format!("stopped in {stopped:.2?}, listening again in {started:.2?}")
                }
                "sigkill" => {
                    hub.kill();
                    pid.store(0, Ordering::Relaxed);
                    let started = hub.start()?;
                    pid.store(hub.pid().unwrap_or(0), Ordering::Relaxed);
                    format!("listening again in {started:.2?}")
                }
                _ => {
                    let filled =
                        disk::fill(&site.filler).map_err(|e| SoakError::Setup(e.to_string()))?;
                    std::thread::sleep(settings.full_disk_hold);
                    let acked_before = acked_total(&pairs);
                    std::fs::remove_file(&site.filler).map_err(io_error("remove", &site.filler))?;
                    let removed = Instant::now();
                    let until = (next_fault + settings.fault_every).min(end);
                    let mut recovered = None;
                    while Instant::now() < until {
                        if acked_total(&pairs) > acked_before {
                            recovered = Some(removed.elapsed().as_secs_f64());
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    recoveries.push(recovered);
                    format!(
                        "filler of {} MiB held {:?}; {}",
                        filled / (1024 * 1024),
                        settings.full_disk_hold,
                        match recovered {
                            Some(s) => format!("acknowledgements again {s:.1} s after its removal"),
                            None => "no acknowledgement before the next fault".to_owned(),
                        }
                    )
                }
            };
            eprintln!("soak: {t_s:7.1} s {kind}: {detail}");
            events.push(FaultEvent { t_s, kind, detail });
            turn += 1;
            next_fault += settings.fault_every;
        }
        let now = Instant::now();
        if now < end {
            std::thread::sleep(end - now);
        }
        Ok(())
    })();
    let duration_s = start.elapsed().as_secs_f64();
    let drain_took = drain(&runtime, &switches, &mut pairs, settings.drain);
    let _ = stop_sampler.send(true);
    let _ = sampler.join();
    let _ = hub.terminate();
    drop(site.fs);
    outcome?;

    let samples = samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let stats: Vec<&PairStats> = pairs.iter().map(|p| p.stats.as_ref()).collect();
    let sum = |f: &dyn Fn(&PairStats) -> u64| stats.iter().map(|s| f(s)).sum::<u64>();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut faults = BTreeMap::new();
    for event in &events {
        *faults.entry(event.kind).or_insert(0) += 1;
    }
    let report = SoakReport {
        started_unix_s: started_unix.as_secs_f64(),
        duration_s,
        pairs: settings.pairs,
        capacity_per_s: capacity,
        rate_per_s: rate,
        payload_bytes: settings.payload_bytes,
        full_disk,
        full_disk_note,
        published: sum(&|s| s.published.load(Ordering::Relaxed)),
        sent: sum(&|s| s.sent.load(Ordering::Relaxed)),
        acknowledged: sum(&PairStats::acked_count),
        delivered: sum(&PairStats::delivered_count),
        lost: sum(&PairStats::missing),
        lost_messages: lost_messages(&pairs, start),
        duplicated: sum(&|s| s.duplicates.load(Ordering::Relaxed)),
        delivered_unacknowledged: sum(&PairStats::delivered_unacked),
        never_acknowledged: sum(&|s| s.published.load(Ordering::Relaxed) - s.acked_count()),
        foreign: sum(&|s| s.foreign.load(Ordering::Relaxed)),
        sessions_lost: sum(&|s| s.sessions_lost.load(Ordering::Relaxed)),
        connections: sum(&|s| {
            s.publisher_connections.load(Ordering::Relaxed)
                + s.subscriber_connections.load(Ordering::Relaxed)
        }),
        faults,
        events,
        rss_mib: range(
            samples
                .iter()
                .filter(|s| s.rss_bytes > 0)
                .map(|s| s.rss_bytes),
        ),
        data_mib: range(samples.iter().map(|s| s.data_bytes)),
        full_disk_recovery_s: recoveries,
        log_refusal_episodes: log_text.matches("the store refuses messages").count() as u64,
        log_refusal_recoveries: log_text.matches("the store takes messages again").count() as u64,
        drain_s: drain_took.as_secs_f64(),
    };
    if report.lost > 0 {
        // What the hub said that may explain it (the log is in the output folder too, but
        // CI keeps only this output).
        for line in log_text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .take(LOG_LINES_ON_LOSS)
        {
            eprintln!("soak: hub log: {line}");
        }
        eprintln!("soak: lost messages: {:?}", report.lost_messages);
    }
    write_results(settings, &report, &samples)?;
    Ok(report)
}

/// How many of the hub's ERROR and WARN lines are printed when a message was lost.
const LOG_LINES_ON_LOSS: usize = 60;

/// How many lost messages the report lists per pair.
const LOST_LISTED: usize = 20;

fn lost_messages(pairs: &[RunningPair], start: Instant) -> Vec<LostMessage> {
    pairs
        .iter()
        .enumerate()
        .flat_map(|(pair, p)| {
            p.stats
                .missing_seqs(LOST_LISTED)
                .into_iter()
                .map(move |(seq, acked)| LostMessage {
                    pair: u32::try_from(pair).unwrap_or(u32::MAX),
                    seq,
                    acked_near_s: acked.map(|t| t.saturating_duration_since(start).as_secs_f64()),
                })
        })
        .collect()
}

#[allow(clippy::cast_precision_loss)]
fn range(values: impl Iterator<Item = u64>) -> Range {
    let mib = |v: u64| v as f64 / (1024.0 * 1024.0);
    values
        .fold(None, |acc: Option<Range>, v| {
            let v = mib(v);
            Some(match acc {
                None => Range {
                    min: v,
                    max: v,
                    last: v,
                },
                Some(r) => Range {
                    min: r.min.min(v),
                    max: r.max.max(v),
                    last: v,
                },
            })
        })
        .unwrap_or_default()
}

fn write_results(
    settings: &SoakSettings,
    report: &SoakReport,
    samples: &[Sample],
) -> Result<(), SoakError> {
    let json_path = settings.out.join("report.json");
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    std::fs::write(&json_path, json).map_err(io_error("write", &json_path))?;
    let csv_path = settings.out.join("samples.csv");
    let mut csv = String::from("t_s,rss_bytes,data_bytes,fs_used_bytes,acknowledged,delivered\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{}",
            s.t_s, s.rss_bytes, s.data_bytes, s.fs_used_bytes, s.acknowledged, s.delivered
        );
    }
    std::fs::write(&csv_path, csv).map_err(io_error("write", &csv_path))?;
    let md_path = settings.out.join("report.md");
    std::fs::write(&md_path, markdown(report)).map_err(io_error("write", &md_path))?;
    chart::draw(
        &settings.out.join(chart::SOAK_PNG),
        samples,
        &report.events,
        report,
    )?;
    Ok(())
}

/// The report as a Markdown table.
#[must_use]
pub fn markdown(r: &SoakReport) -> String {
    let faults = FAULTS
        .iter()
        .map(|f| format!("{} {f}", r.faults.get(f).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    let recoveries = r
        .full_disk_recovery_s
        .iter()
        .map(|s| s.map_or_else(|| "none".to_owned(), |s| format!("{s:.1} s")))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    let _ = writeln!(out, "| | |\n|---|---|");
    let rows = [
        (
            "duration",
            format!("{:.0} s (+ {:.1} s drain)", r.duration_s, r.drain_s),
        ),
        (
            "load",
            format!(
                "{} pairs, {:.0} msgs/s in total{}, {} B payloads, QoS 1",
                r.pairs,
                r.rate_per_s,
                r.capacity_per_s
                    .map(|c| format!(" (half the measured 1 -> 1 capacity of {c:.0} msgs/s)"))
                    .unwrap_or_default(),
                r.payload_bytes
            ),
        ),
        ("faults", faults),
        ("published", r.published.to_string()),
        ("acknowledged", r.acknowledged.to_string()),
        ("delivered", r.delivered.to_string()),
        (
            "**lost** (acknowledged, never delivered)",
            format!("**{}**", r.lost),
        ),
        ("duplicated", r.duplicated.to_string()),
        (
            "delivered without PUBACK",
            r.delivered_unacknowledged.to_string(),
        ),
        ("never acknowledged", r.never_acknowledged.to_string()),
        ("subscriber sessions lost", r.sessions_lost.to_string()),
        (
            "hub RSS",
            format!(
                "{:.1} - {:.1} MiB (last {:.1})",
                r.rss_mib.min, r.rss_mib.max, r.rss_mib.last
            ),
        ),
        (
            "data folder",
            format!(
                "{:.1} - {:.1} MiB (last {:.1})",
                r.data_mib.min, r.data_mib.max, r.data_mib.last
            ),
        ),
        (
            "full disk",
            if r.full_disk {
                format!(
                    "acknowledgements again after: {recoveries}; refusal episodes logged {}, ended {}",
                    r.log_refusal_episodes, r.log_refusal_recoveries
                )
            } else {
                r.full_disk_note.clone().unwrap_or_else(|| "off".to_owned())
            },
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    out
}
