//! `edgehub-load`: the load generator. P publishers and S subscribers exchange N messages of
//! B bytes through edgehub (`--hub`, the default: module topics, SAS tokens, identities
//! created in the hub's identity store) or any MQTT broker (`--plain`), and it reports rates,
//! latency percentiles, losses, duplicates and reorders: a table on stdout, then one JSON line
//! (the last line of stdout).
//!
//! ```sh
//! # The deployment whose routes carry a scenario, for the hub to start with:
//! edgehub-load --publishers 1 --subscribers 4 --topology fanout --write-deployment deployment.json
//! # Against a running hub (plain MQTT listener of its configuration):
//! edgehub-load --config edgehub.toml --publishers 1 --subscribers 1 --messages 100000
//! # Against mosquitto on 127.0.0.1:1883:
//! edgehub-load --plain --port 1883 --publishers 4 --subscribers 4 --qos 1
//! # Scale scenarios (benches/scale.sh): 9,800 idle modules connected while 100 -> 100 run,
//! # a backlog filled and drained in two processes, a deployment with 999 more routes:
//! edgehub-load --config edgehub.toml -p 100 -s 100 --idle-clients 9800 --ready-file ready
//! edgehub-load --config edgehub.toml -n 1000000 --phase publish --state state.json
//! edgehub-load --config edgehub.toml -n 1000000 --phase drain --state state.json
//! edgehub-load --extra-routes 999 --extra-route-kind same-source --write-deployment d.json
//! # Upstream (benches/upstream.sh): publishers on a child hub, subscribers on its parent:
//! edgehub-load --config child.toml --subscribers-config parent.toml -n 100000
//! ```

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use edgehub::config::Config;
use edgehub_benches::load::{
    self, Auth, Endpoint, ExtraRoutes, Extras, HubModules, Phase, Settings, Topology,
};
use rumqttc::QoS;

/// Load generator for edgehub and plain MQTT brokers.
#[derive(Debug, Parser)]
#[command(name = "edgehub-load", version)]
struct Args {
    /// Plain MQTT topics (`load/{i}`), no authentication: for any broker.
    #[arg(long, conflicts_with = "hub")]
    plain: bool,
    /// edgehub module topics with SAS authentication (the default).
    #[arg(long)]
    hub: bool,
    /// The hub's configuration (hub mode): device, host names, identity store, listeners.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write the deployment manifest whose routes carry this scenario to FILE and exit.
    #[arg(long, value_name = "FILE")]
    write_deployment: Option<PathBuf>,
    /// Broker host [plain: 127.0.0.1; hub: 127.0.0.1, or the gateway host name with --tls].
    #[arg(long)]
    host: Option<String>,
    /// Broker port [plain: 1883; hub: the configuration's mqtt listener, mqtts with --tls].
    #[arg(long)]
    port: Option<u16>,
    /// Connect over TLS.
    #[arg(long)]
    tls: bool,
    /// The CA certificate (PEM) to trust with --tls [hub: <data_dir>/certs/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Publishing clients.
    #[arg(long, short = 'p', default_value_t = 1)]
    publishers: u32,
    /// Subscribing clients.
    #[arg(long, short = 's', default_value_t = 1)]
    subscribers: u32,
    /// `pairs`: publisher i to subscriber i; `fanout`: every publisher to every subscriber.
    #[arg(long, value_enum, default_value_t = Topology::Pairs)]
    topology: Topology,
    /// Messages per publisher.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    messages: u64,
    /// Payload bytes per message (at least 28, the header).
    #[arg(long, short = 'b', default_value_t = 256)]
    size: usize,
    /// QoS of publications and subscriptions: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Most messages per publisher sent and not yet acknowledged.
    #[arg(long, short = 'w', default_value_t = 64)]
    window: usize,
    /// Total rate of all publishers in msgs/s; open loop when absent.
    #[arg(long)]
    rate: Option<NonZeroU64>,
    /// Stop after this many seconds and report what was delivered by then.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Once the publishers are done, stop waiting after this many seconds without a delivery.
    #[arg(long, default_value_t = 2.0)]
    drain_idle: f64,
    /// The scenario's name in the report [derived from the parameters].
    #[arg(long)]
    scenario: Option<String>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Clients (modules `load-idle-{k}`) that connect, subscribe to their inputs and stay
    /// connected, idle, through the run; every client then connects before the load starts.
    #[arg(long, default_value_t = 0)]
    idle_clients: u32,
    /// Most idle clients connecting at once.
    #[arg(long, default_value_t = load::DEFAULT_CONNECT_CONCURRENCY)]
    connect_concurrency: usize,
    /// A handshake with a script: once every client is connected, and again once the load is
    /// done (before disconnecting), create FILE (one JSON line) and wait until it is removed.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Run one phase of a backlog run: `publish` (publishers only; writes --state) or `drain`
    /// (subscribers only; reads --state).
    #[arg(long, value_enum, requires = "state")]
    phase: Option<Phase>,
    /// The state file that carries the run id and what the broker took from the publish phase
    /// to the drain phase.
    #[arg(long, value_name = "FILE", requires = "phase")]
    state: Option<PathBuf>,
    /// With --write-deployment: this many more routes that carry none of the load's messages.
    #[arg(long, default_value_t = 0, requires = "write_deployment")]
    extra_routes: u32,
    /// The extra routes' sources: `other-sources` (modules that send nothing) or
    /// `same-source` (the publishers' outputs, with conditions that are false).
    #[arg(long, value_enum, default_value_t = ExtraRoutes::OtherSources)]
    extra_route_kind: ExtraRoutes,
    /// Hub mode: the subscribers connect to the hub of this configuration instead (its plain
    /// MQTT listener on 127.0.0.1, or its mqtts listener with --tls; as modules of its device,
    /// their identities created in its store), e.g. the parent hub to which the hub of
    /// --config forwards its `$upstream` messages. --host, --port and --ca stay with --config.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["plain", "phase"])]
    subscribers_config: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let topology = args.topology;
    topology.check(args.publishers, args.subscribers)?;
    if let Some(path) = &args.write_deployment {
        let manifest = topology.deployment_manifest_with_extra(
            args.publishers,
            args.subscribers,
            args.extra_route_kind,
            args.extra_routes,
        );
        std::fs::write(path, serde_json::to_string_pretty(&manifest)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} with {} routes",
            path.display(),
            topology.streams(args.publishers, args.subscribers).len() + args.extra_routes as usize
        );
        return Ok(());
    }
    let settings = settings(&args)?;
    let extras = extras(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(load::run_with(&settings, &extras))?;
    print!("{}", report.table());
    println!("{}", report.json_line()?);
    Ok(())
}

fn settings(args: &Args) -> Result<Settings> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    if !(args.drain_idle.is_finite() && args.drain_idle >= 0.0) {
        bail!("--drain-idle must be a non-negative number of seconds");
    }
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (endpoint, auth) = if args.plain {
        plain_target(args)?
    } else {
        hub_target(args)?
    };
    Ok(Settings {
        scenario: args.scenario.clone().unwrap_or_else(|| {
            let rate = args
                .rate
                .map_or_else(|| "open".to_owned(), |r| format!("{r}per_s"));
            format!(
                "qos{}-{}to{}-{:?}-{}B-{rate}",
                args.qos, args.publishers, args.subscribers, args.topology, args.size
            )
            .to_lowercase()
        }),
        endpoint,
        auth,
        publishers: args.publishers,
        subscribers: args.subscribers,
        topology: args.topology,
        messages: args.messages,
        payload_bytes: args.size,
        qos,
        window: args.window,
        rate: args.rate,
        timeout: Duration::from_secs_f64(args.timeout),
        drain_idle: Duration::from_secs_f64(args.drain_idle),
        progress: !args.no_progress,
    })
}

fn extras(args: &Args) -> Result<Extras> {
    if args.connect_concurrency == 0 {
        bail!("--connect-concurrency must be at least 1");
    }
    if args.phase.is_some() && (args.idle_clients > 0 || args.ready_file.is_some()) {
        bail!("--phase runs without --idle-clients and --ready-file");
    }
    let subscribers_at = match &args.subscribers_config {
        Some(path) => {
            let names: Vec<String> = (0..args.subscribers)
                .map(load::topology::subscriber_module)
                .collect();
            Some(hub_target_of(path, args.tls, None, None, None, &names)?)
        }
        None => None,
    };
    Ok(Extras {
        idle_clients: args.idle_clients,
        connect_concurrency: args.connect_concurrency,
        ready_file: args.ready_file.clone(),
        phase: args.phase.zip(args.state.clone()),
        subscribers_at,
    })
}

fn plain_target(args: &Args) -> Result<(Endpoint, Auth)> {
    let tls = match (&args.ca, args.tls) {
        (Some(ca), true) => Some(load::connect::tls_trusting(ca)?),
        (None, true) => bail!("--tls in plain mode needs --ca FILE"),
        (_, false) => None,
    };
    let endpoint = Endpoint {
        host: args.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
        port: args.port.unwrap_or(1883),
        tls,
    };
    Ok((endpoint, Auth::Plain))
}

fn hub_target(args: &Args) -> Result<(Endpoint, Auth)> {
    let Some(path) = &args.config else {
        bail!(
            "hub mode needs --config FILE (the hub's configuration); use --plain for other brokers"
        );
    };
    let mut names = load::client_names(args.publishers, args.subscribers);
    names.extend((0..args.idle_clients).map(load::idle::idle_module));
    hub_target_of(
        path,
        args.tls,
        args.host.clone(),
        args.port,
        args.ca.clone(),
        &names,
    )
}

/// The endpoint and the module identities of `names` (created when missing) of the hub
/// configured at `path`; `host`, `port` and `ca` override what the configuration implies.
fn hub_target_of(
    path: &Path,
    tls: bool,
    host: Option<String>,
    port: Option<u16>,
    ca: Option<PathBuf>,
    names: &[String],
) -> Result<(Endpoint, Auth)> {
    let config = Config::load(path)?;
    let (host, port, tls) = if tls {
        let ca = ca.unwrap_or_else(|| config.data_dir.join("certs").join("ca.pem"));
        let host = host.unwrap_or_else(|| config.gateway_hostname.clone());
        let port = port.unwrap_or(config.listen.mqtts.port());
        (host, port, Some(load::connect::tls_trusting(&ca)?))
    } else {
        let port = match (port, config.listen.mqtt) {
            (Some(port), _) => port,
            (None, Some(addr)) => addr.port(),
            (None, None) => bail!(
                "{} has no [listen] mqtt listener: give --port, or --tls for its mqtts listener",
                path.display()
            ),
        };
        let host = host.unwrap_or_else(|| "127.0.0.1".to_owned());
        (host, port, None)
    };
    let store = config
        .identity_registry()
        .context("opening the hub's identity store")?;
    let modules =
        HubModules::from_store(&store, &config.device_id, &config.iothub_hostname, names)?;
    Ok((Endpoint { host, port, tls }, Auth::Hub(modules)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("edgehub-load").chain(args.iter().copied()))
    }

    #[test]
    fn the_scale_options_default_to_a_plain_run() {
        let args = parse(&["--plain"]).expect("parses");
        let extras = extras(&args).expect("valid");
        assert_eq!(extras.idle_clients, 0);
        assert_eq!(
            extras.connect_concurrency,
            load::DEFAULT_CONNECT_CONCURRENCY
        );
        assert!(!extras.staged() && extras.phase.is_none() && extras.ready_file.is_none());
        assert_eq!(args.extra_routes, 0);
    }

    #[test]
    fn idle_clients_and_a_ready_file_make_a_staged_run() {
        let args = parse(&[
            "--plain",
            "--idle-clients",
            "9800",
            "--connect-concurrency",
            "50",
            "--ready-file",
            "/tmp/ready",
        ])
        .expect("parses");
        let extras = extras(&args).expect("valid");
        assert_eq!(
            (extras.idle_clients, extras.connect_concurrency),
            (9800, 50)
        );
        assert_eq!(extras.ready_file.as_deref(), Some(Path::new("/tmp/ready")));
        assert!(extras.staged());
        let zero = parse(&["--plain", "--connect-concurrency", "0"]).expect("parses");
        assert!(extras_error(&zero).contains("at least 1"));
    }

    #[test]
    fn a_phase_needs_a_state_file_and_no_staging() {
        assert!(parse(&["--plain", "--phase", "publish"]).is_err());
        assert!(parse(&["--plain", "--state", "s.json"]).is_err());
        let args = parse(&["--plain", "--phase", "drain", "--state", "s.json"]).expect("parses");
        let extras = extras(&args).expect("valid");
        assert_eq!(extras.phase, Some((Phase::Drain, PathBuf::from("s.json"))));
        let staged = parse(&[
            "--plain",
            "--phase",
            "publish",
            "--state",
            "s.json",
            "--idle-clients",
            "3",
        ])
        .expect("parses");
        assert!(extras_error(&staged).contains("--phase"));
    }

    #[test]
    fn extra_routes_go_with_write_deployment() {
        assert!(parse(&["--plain", "--extra-routes", "999"]).is_err());
        let args = parse(&[
            "--extra-routes",
            "999",
            "--extra-route-kind",
            "same-source",
            "--write-deployment",
            "d.json",
        ])
        .expect("parses");
        assert_eq!(args.extra_routes, 999);
        assert_eq!(args.extra_route_kind, ExtraRoutes::SameSource);
    }

    #[test]
    fn subscribers_elsewhere_go_with_hub_mode_and_a_whole_run() {
        assert!(parse(&["--plain", "--subscribers-config", "parent.toml"]).is_err());
        let split = [
            "--config",
            "child.toml",
            "--subscribers-config",
            "parent.toml",
            "--phase",
            "drain",
            "--state",
            "s.json",
        ];
        assert!(parse(&split).is_err());
        let args = parse(&[
            "--config",
            "child.toml",
            "--subscribers-config",
            "parent.toml",
        ])
        .expect("parses");
        assert_eq!(
            args.subscribers_config.as_deref(),
            Some(Path::new("parent.toml"))
        );
    }

    fn extras_error(args: &Args) -> String {
        extras(args).expect_err("refused").to_string()
    }
}
