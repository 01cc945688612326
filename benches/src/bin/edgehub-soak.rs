//! `edgehub-soak` (issue 14): module pairs at half the measured 1 -> 1 capacity through a real
//! hub process, with in turn, every `--fault-every` seconds, a module restart, a hub SIGTERM,
//! a hub SIGKILL and a full-disk episode (the hub's data folder is a small loop-mounted
//! filesystem the soak makes and removes; root only). Prints the table, then the report as
//! one JSON line (the last line of stdout); writes `report.json`, `report.md`, `samples.csv`,
//! `soak.png` and `hub.log` to `--out`. Exits 1 when an acknowledged message was lost.
//!
//! ```sh
//! cargo build --release -p edgehub -p edgehub-benches --bin edgehub --bin edgehub-soak
//! target/release/edgehub-soak --hub target/release/edgehub --duration 3600 --out /tmp/soak
//! target/release/edgehub-soak --hub target/release/edgehub --duration 120 --fault-every 20 \
//!     --out /tmp/soak2      # the CI version (benches/tests/soak.rs)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use edgehub_benches::soak::{self, SoakSettings};

/// Soak test of edgehub: steady load, faults in turn, every message accounted for.
#[derive(Debug, Parser)]
#[command(name = "edgehub-soak", version)]
struct Args {
    /// The edgehub binary.
    #[arg(long, value_name = "FILE")]
    hub: PathBuf,
    /// The results folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Seconds of load (the drain comes after).
    #[arg(long, default_value_t = 3600)]
    duration: u64,
    /// Module pairs.
    #[arg(long, default_value_t = 4)]
    pairs: u32,
    /// Total msgs/s over all pairs [default: half the 1 -> 1 capacity, measured first].
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds the calibration pair runs open loop to measure the capacity.
    #[arg(long, default_value_t = 10)]
    calibrate: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Most unacknowledged messages per publisher.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Seconds between faults (module restart, SIGTERM, SIGKILL, full disk, in turn).
    #[arg(long, default_value_t = 180)]
    fault_every: u64,
    /// Leave the full-disk episodes out of the rotation.
    #[arg(long)]
    no_full_disk: bool,
    /// Seconds the disk stays full in an episode.
    #[arg(long, default_value_t = 10)]
    full_disk_hold: u64,
    /// Size in MiB of the hub's filesystem.
    #[arg(long, default_value_t = 256)]
    fs_mib: u64,
    /// Seconds between samples of RSS and disk.
    #[arg(long, default_value_t = 2.0)]
    sample_every: f64,
    /// Longest wait in seconds for the deliveries after the load.
    #[arg(long, default_value_t = 120)]
    drain: u64,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let settings = SoakSettings {
        hub_bin: args.hub,
        out: args.out,
        duration: Duration::from_secs(args.duration),
        pairs: args.pairs.max(1),
        rate: args.rate,
        calibrate: Duration::from_secs(args.calibrate.max(1)),
        payload_bytes: args.size,
        window: args.window.max(1),
        fault_every: Duration::from_secs(args.fault_every.max(5)),
        full_disk: !args.no_full_disk,
        full_disk_hold: Duration::from_secs(args.full_disk_hold),
        fs_mib: args.fs_mib,
        sample_every: Duration::from_secs_f64(args.sample_every.max(0.1)),
        drain: Duration::from_secs(args.drain),
    };
    let report = soak::run(&settings)?;
    print!("{}", soak::markdown(&report));
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
