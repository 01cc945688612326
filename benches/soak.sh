#!/usr/bin/env bash
# The soak of issue 14 against a release edgehub, as root (the hub's data folder is a small
# loop-mounted ext4 filesystem the soak makes, fills and removes):
#
#   sudo benches/soak.sh                      # one hour: the figures of BENCHMARKS.md
#   DURATION=600 benches/soak.sh              # ten minutes
#   DURATION=120 FAULT_EVERY=20 benches/soak.sh   # what CI runs (benches/tests/soak.rs, debug)
#
# PAIRS module pairs (publisher -> subscriber through its own route, QoS 1, SIZE-byte payloads,
# WINDOW unacknowledged at most) run at half the measured 1 -> 1 capacity (a calibration pair
# runs open loop for 10 s first; RATE sets the total msgs/s instead). Every FAULT_EVERY seconds
# comes, in turn, a module restart (one pair's two modules drop their connections and come back
# a second later), a hub SIGTERM (restarted at once), a hub SIGKILL (restarted at once) and a
# full-disk episode (a filler file fills the hub's filesystem for FULL_DISK_HOLD seconds, then
# is removed; FULL_DISK=0 leaves it out). Counted: published, acknowledged, delivered, lost
# (acknowledged and never delivered: must be 0), duplicated; the hub's RSS and its disk sampled
# every 2 s. The soak runs under nice, and exits 1 when a message was lost.
#
# Results: benches/results/soak-<UTC date and time>/ (report.md, report.json, samples.csv,
# soak.png, hub.log); the table is printed.
#
# Environment: DURATION (3600), PAIRS (4), RATE (measured), SIZE (256), WINDOW (64),
# FAULT_EVERY (180), FULL_DISK (1), FULL_DISK_HOLD (10), FS_MIB (256), CARGO_TARGET_DIR, BUILD
# (1; 0 uses the binaries already built).
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "${BUILD:-1}" = 1 ]; then
    cargo build --release --locked -p edgehub -p edgehub-benches --bin edgehub --bin edgehub-soak
fi
out="benches/results/soak-$(date -u +%Y-%m-%dT%H%M)"
args=(
    --hub "$target/release/edgehub" --out "$out"
    --duration "${DURATION:-3600}" --pairs "${PAIRS:-4}" --size "${SIZE:-256}"
    --window "${WINDOW:-64}" --fault-every "${FAULT_EVERY:-180}"
    --full-disk-hold "${FULL_DISK_HOLD:-10}" --fs-mib "${FS_MIB:-256}"
)
if [ -n "${RATE:-}" ]; then
    args+=(--rate "$RATE")
fi
if [ "${FULL_DISK:-1}" = 0 ]; then
    args+=(--no-full-disk)
fi
status=0
nice -n 10 "$target/release/edgehub-soak" "${args[@]}" >"$out.stdout" || status=$?
# The work folder (configuration, the unmounted mount point) is not a result.
rm -rf "$out/work"
mv "$out.stdout" "$out/stdout.txt" 2>/dev/null || true
cat "$out/report.md" 2>/dev/null || cat "$out/stdout.txt"
echo "results: $out"
exit "$status"
