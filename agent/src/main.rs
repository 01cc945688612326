//! `edgeagent`: the command line of the edge agent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use agent::daemon::{DaemonOptions, run};
use agent::environment::{AgentEnvironment, Placement};
use agent::identity::{HubConfig, Identities};
use agent::reconcile::Reconciler;
use agent::restart::RestartSettings;
use agent::runtime::docker::DockerRuntime;
use agent::runtime::process::ProcessRuntime;

/// The IoT Edge agent.
#[derive(Debug, Parser)]
#[command(name = "edgeagent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a deployment manifest: exit 0 when valid (warnings on stderr), 2 otherwise.
    Check {
        /// The deployment manifest.
        manifest: PathBuf,
    },
    /// Apply a deployment manifest and keep the modules running, in the foreground until
    /// SIGTERM or SIGINT. Edits of the manifest file are applied (checked every 2 s).
    Run(RunArgs),
    /// Show what the running agent reports: a table, or the reported properties as JSON.
    Status {
        /// The agent's data folder.
        #[arg(long, default_value = "agent-data")]
        data_dir: PathBuf,
        /// Print the `$edgeAgent` reported properties as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuntimeKind {
    /// Containers on the local Docker engine.
    Docker,
    /// Native processes (`settings.path`).
    Process,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The deployment manifest.
    #[arg(long)]
    manifest: PathBuf,
    /// The hub's configuration (`edgehub --config`): module identities are made with it.
    #[arg(long, default_value = "edgehub.toml")]
    hub_config: PathBuf,
    /// Where modules run.
    #[arg(long, value_enum, default_value = "docker")]
    runtime: RuntimeKind,
    /// The agent's data folder (socket, workload sockets, reported properties, logs).
    #[arg(long, default_value = "agent-data")]
    data_dir: PathBuf,
    /// The `edgehub` executable (default: next to edgeagent, else on PATH).
    #[arg(long)]
    edgehub: Option<PathBuf>,
    /// Restarts before a crashing module is left failed.
    #[arg(long, default_value_t = 20)]
    max_restarts: u32,
    /// Seconds between reconcile passes.
    #[arg(long, default_value_t = 5)]
    period: u64,
    /// On SIGTERM, leave the modules running.
    #[arg(long)]
    leave_modules: bool,
    /// The Docker network modules join (docker runtime).
    #[arg(long, default_value = "azure-iot-edge")]
    network: String,
    /// Keep `Privileged` and `CapAdd` in modules' createOptions (docker runtime).
    #[arg(long)]
    allow_elevated_docker_permissions: bool,
    /// Log level given to modules as RuntimeLogLevel.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { manifest } => check(&manifest),
        Command::Run(args) => run_agent(args),
        Command::Status { data_dir, json } => status(&data_dir, json),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeagent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {}: not JSON: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let findings = agent::lint::check(&manifest);
    for finding in &findings {
        eprintln!("{finding}");
    }
    if agent::lint::has_errors(&findings) {
        Ok(ExitCode::from(2))
    } else {
        println!("{}: valid", path.display());
        Ok(ExitCode::SUCCESS)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn status(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let doc = runtime()?.block_on(agent::control::fetch_reported(
        &agent::control::socket_path(data_dir),
    ))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", agent::control::table(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `edgehub` executable: as given, else next to `edgeagent`, else the first on `PATH`.
fn edgehub_program(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(given) = given {
        return Ok(given);
    }
    let sibling = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("edgehub"))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("edgehub"))
                .find(|p| p.is_file())
        })
    };
    sibling
        .or_else(on_path)
        .context("no edgehub executable next to edgeagent or on PATH: give --edgehub")
}

fn run_agent(args: RunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let hub = HubConfig::load(&args.hub_config)?;
    let data_dir = std::path::absolute(&args.data_dir).context("the data folder")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let program = edgehub_program(args.edgehub)?;
    let identities = Arc::new(Identities::new(program.clone(), hub.clone()));
    let settings = RestartSettings {
        max_restart_count: args.max_restarts,
        ..RestartSettings::default()
    };
    let options = DaemonOptions {
        manifest: args.manifest,
        data_dir: data_dir.clone(),
        period: Duration::from_secs(args.period.max(1)),
        poll: Duration::from_secs(2),
        leave_modules: args.leave_modules,
        pass_timeout: Duration::from_secs(600),
        hub_twin: Some(agent::hub_twin::HubTwin::new(&hub.data_dir, &hub.device_id)),
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let placement = match args.runtime {
            RuntimeKind::Docker => Placement::Container,
            RuntimeKind::Process => Placement::Host,
        };
        let environment = Arc::new(AgentEnvironment::new(
            identities,
            data_dir.join("workload"),
            placement,
            args.log_level,
        ));
        match args.runtime {
            RuntimeKind::Process => {
                let runtime = ProcessRuntime::new(data_dir.join("logs")).map_image(
                    "edgehub:local",
                    program,
                    vec![
                        "run".into(),
                        "--config".into(),
                        hub.path.display().to_string(),
                    ],
                );
                run(
                    Reconciler::new(runtime, environment, settings),
                    options,
                    shutdown_signal(),
                )
                .await?;
            }
            RuntimeKind::Docker => {
                let runtime = DockerRuntime::connect(&args.network)
                    .await?
                    .allow_elevated(args.allow_elevated_docker_permissions);
                run(
                    Reconciler::new(runtime, environment, settings),
                    options,
                    shutdown_signal(),
                )
                .await?;
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
