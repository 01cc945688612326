#!/usr/bin/env bash
# The scale scenarios of issue 6, against a release edgehub with edgehub-load:
#
#   benches/scale.sh                                     # full size: a few minutes
#   CONNECTIONS=500 BACKLOG=20000 ROUTES=100 benches/scale.sh       # a quick check
#   SCENARIOS="idle backlog" benches/scale.sh
#
# Scenarios (SCENARIOS, all by default), each on a fresh hub (`edgehub run --config`: plain MQTT
# listener on 127.0.0.1, `sync` durability, its own data folder under a mktemp folder):
#
# - idle: the hub's resident memory once started, nobody connected, with the embedded default
#   configuration (its example deployment, generated certificates, every listener; the
#   listeners moved to free loopback ports) and with this script's configuration.
# - connections: CONNECTIONS modules connected at once with SAS over plain TCP, at most
#   CONNECT_CONCURRENCY connecting at a time: LIGHT_PAIRS publishers, as many subscribers, the
#   rest idle modules subscribed to their inputs. Recorded: the time to connect them all,
#   refused and failed connections, the hub's memory once all are connected (idle) and while
#   LIGHT_RATE msgs/s run LIGHT_SECONDS seconds through the pairs (QoS 1).
# - backlog: BACKLOG messages published at QoS 1 to a module that is not connected (its
#   route's queue fills), then the module connects and drains them (two generator processes
#   sharing a run id and the set of messages the hub took). Recorded: fill and drain rates, the
#   hub's peak and median memory in each phase, the store's size on disk, losses and
#   duplicates.
# - routes: the 1 -> 1 QoS 1 open-loop scenario (ROUTE_MESSAGES messages) with 1 route, and
#   with ROUTES routes: the live one plus ROUTES-1 that carry nothing, either from other
#   sources or from the same source with false conditions (evaluated for every message).
#   ROUTE_ROUNDS rounds, medians. Its 1-route figure is the 1 -> 1 rate the drain is compared
#   with (run alone when backlog runs without routes).
#
# For every step the hub's VmRSS and VmHWM (/proc/<pid>/status; the peak is reset between
# steps through /proc/<pid>/clear_refs), its CPU time (utime + stime of /proc/<pid>/stat) and
# its open file descriptors. Results: benches/results/scale-<UTC date and time>.md (tables
# against the targets, then the raw JSON lines). On failure the work folder is kept (without
# the hubs' data) and named.
#
# Environment: CONNECTIONS (10000), BACKLOG (1000000), ROUTES (1000), SCENARIOS ("idle
# connections backlog routes"), LIGHT_PAIRS (100), LIGHT_RATE (1000 msgs/s), LIGHT_SECONDS
# (10), CONNECT_CONCURRENCY (100), ROUTE_MESSAGES (100000), ROUTE_ROUNDS (3), WINDOW (64),
# SIZE (256), SETTLE (2 s of quiet before an idle reading), TIMEOUT (3600 s per generator
# run), DRAIN_IDLE (30 s without a delivery end a drain), CARGO_TARGET_DIR, BUILD (1; 0 uses
# the binaries already built), COMMIT (default: git rev-parse --short HEAD), KEEP_WORK (0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CONNECTIONS=${CONNECTIONS:-10000}
BACKLOG=${BACKLOG:-1000000}
ROUTES=${ROUTES:-1000}
SCENARIOS=${SCENARIOS:-"idle connections backlog routes"}
LIGHT_PAIRS=${LIGHT_PAIRS:-100}
LIGHT_RATE=${LIGHT_RATE:-1000}
LIGHT_SECONDS=${LIGHT_SECONDS:-10}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-100}
ROUTE_MESSAGES=${ROUTE_MESSAGES:-100000}
ROUTE_ROUNDS=${ROUTE_ROUNDS:-3}
WINDOW=${WINDOW:-64}
SIZE=${SIZE:-256}
SETTLE=${SETTLE:-2}
TIMEOUT=${TIMEOUT:-3600}
DRAIN_IDLE=${DRAIN_IDLE:-30}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BUILD=${BUILD:-1}
KEEP_WORK=${KEEP_WORK:-0}

log() { echo "scale: $*" >&2; }
die() { log "$*"; exit 1; }

for scenario in $SCENARIOS; do
    case $scenario in
    idle | connections | backlog | routes) ;;
    *) die "unknown scenario $scenario (idle connections backlog routes)" ;;
    esac
done
selected() { [[ " $SCENARIOS " == *" $1 "* ]]; }
command -v python3 >/dev/null || die "python3 is needed for the tables"
[ -w /proc/self/clear_refs ] ||
    log "note: /proc/<pid>/clear_refs is not writable: peaks are then since the hub started"

# Both processes hold one descriptor per connection: raise the soft limit for the script and
# its children (the hub and the generator), up to the hard limit.
want_fds=$((CONNECTIONS + 1024))
hard_fds=$(ulimit -Hn)
if [ "$hard_fds" != unlimited ] && [ "$want_fds" -gt "$hard_fds" ]; then
    log "warning: ulimit -Hn is $hard_fds, below the $want_fds descriptors $CONNECTIONS connections need"
    want_fds=$hard_fds
fi
ulimit -n "$want_fds"

# What the binaries are built from: the commit, and the hub's files that differ from it.
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
dirty=$(git status --porcelain -- src store router grammar vendor Cargo.toml Cargo.lock 2>/dev/null |
    awk '{print $2}' | tr '\n' ' ')
if [ "$BUILD" = 1 ]; then
    log "building edgehub and edgehub-load (release)"
    CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p edgehub -p edgehub-benches \
        --bin edgehub --bin edgehub-load >&2
    built="built by this run"
else
    built="not rebuilt by this run: binaries of $(date -u -r "$TARGET/release/edgehub" '+%Y-%m-%d %H:%M') UTC"
fi
EDGEHUB=$TARGET/release/edgehub
LOAD=$TARGET/release/edgehub-load
[ -x "$EDGEHUB" ] && [ -x "$LOAD" ] || die "$EDGEHUB or $LOAD is missing (BUILD=1 builds them)"

WORK=$(mktemp -d /tmp/edgehub-scale.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
HUB_PID=
LOAD_PID=
SAMPLER_PID=
finished=0

stop_pid() {
    if [ -n "$1" ]; then
        kill -TERM "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}

cleanup() {
    stop_pid "$SAMPLER_PID"
    stop_pid "$LOAD_PID"
    stop_pid "$HUB_PID"
    if [ "$KEEP_WORK" = 1 ]; then
        log "kept $WORK"
    elif [ "$finished" = 1 ]; then
        rm -rf "$WORK"
    else
        # The logs, the generators' outputs and the results so far; not the hubs' stores.
        find "$WORK" -type d -name data -prune -exec rm -rf {} + 2>/dev/null || true
        log "kept $WORK (results.jsonl, hub.log and the generator's outputs of every step)"
    fi
}
trap cleanup EXIT

# One JSON line on stdout from key=value arguments: a value is JSON when it parses as JSON,
# text otherwise; key=@FILE takes the last line of FILE as JSON (a generator's report);
# key=%FILE summarizes a file of RSS samples in kB, one a line.
cat >"$WORK/record.py" <<'EOF'
import json, statistics, sys
record = {}
for arg in sys.argv[1:]:
    key, _, value = arg.partition("=")
    if value.startswith("@"):
        lines = [l for l in open(value[1:]).read().splitlines() if l.strip()]
        record[key] = json.loads(lines[-1]) if lines else None
    elif value.startswith("%"):
        samples = [int(l) for l in open(value[1:]).read().split() if l.isdigit()]
        record[key] = {"n": len(samples),
                       "median_kb": int(statistics.median(samples)) if samples else None,
                       "max_kb": max(samples) if samples else None}
    else:
        try:
            record[key] = json.loads(value)
        except ValueError:
            record[key] = value
print(json.dumps(record))
EOF
record() { python3 "$WORK/record.py" "$@" >>"$RESULTS"; }

# --- the hub ------------------------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# write_config DIR PORT: this script's configuration, the deployment in DIR/deployment.json.
write_config() {
    cat >"$1/edgehub.toml" <<EOF
device_id = "edge"
iothub_hostname = "scale.azure-devices.net"
gateway_hostname = "localhost"
data_dir = "data"
manifest = "deployment.json"
[listen]
mqtt = "127.0.0.1:$2"
mqtts = "127.0.0.1:0"
https = "127.0.0.1:0"
[store]
durability = "sync"
EOF
}

# write_default_config DIR PORT: the embedded default configuration (Config::embedded_default:
# its device and hub names, ./data, the example deployment, generated certificates, MQTTS,
# HTTPS, plain MQTT and metrics listeners), the listeners on free loopback ports instead of
# 0.0.0.0:8883, 0.0.0.0:443, 127.0.0.1:1883 and 127.0.0.1:9600.
write_default_config() {
    cp "$ROOT/config/deployment.example.json" "$1/deployment.example.json"
    cat >"$1/edgehub.toml" <<EOF
device_id = "edge-device"
iothub_hostname = "edgehub.local"
gateway_hostname = "localhost"
data_dir = "data"
manifest = "deployment.example.json"
[listen]
mqtt = "127.0.0.1:$2"
mqtts = "127.0.0.1:0"
https = "127.0.0.1:0"
metrics = "127.0.0.1:0"
EOF
}

# start_hub DIR PORT: starts the hub of DIR/edgehub.toml, sets HUB_PID, waits for its port.
start_hub() {
    "$EDGEHUB" run --config "$1/edgehub.toml" >"$1/hub.log" 2>&1 &
    HUB_PID=$!
    for _ in $(seq 1 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        kill -0 "$HUB_PID" 2>/dev/null || die "the hub exited: $(tail -5 "$1/hub.log")"
        sleep 0.05
    done
    die "the hub does not listen on 127.0.0.1:$2 after 20 s: $(tail -5 "$1/hub.log")"
}

stop_hub() {
    kill -0 "$HUB_PID" 2>/dev/null || die "the hub died during the run: $(tail -5 "$1/hub.log")"
    stop_pid "$HUB_PID"
    HUB_PID=
}

TICKS=$(getconf CLK_TCK)
status_kb() { awk -v key="$1:" '$1 == key {print $2}' "/proc/$HUB_PID/status"; }
cpu_ticks() { sed 's/.*) //' "/proc/$HUB_PID/stat" | awk '{print $12 + $13}'; }
seconds() { awk -v t="$1" -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz}'; }
# Resets the hub's VmHWM to its VmRSS: the next reading is the peak since now.
reset_peak() { echo 5 >"/proc/$HUB_PID/clear_refs" 2>/dev/null || true; }
# The hub's figures now, as record arguments: RSS, peak RSS, open descriptors; [PREFIX] names
# them PREFIX_rss_kb etc.
hub_now() {
    local p=${1:+${1}_}
    echo "${p}rss_kb=$(status_kb VmRSS) ${p}hwm_kb=$(status_kb VmHWM) ${p}fds=$(find "/proc/$HUB_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)"
}
# The store's size on disk and its epochs (sled databases of 8 MiB of segments each), as
# record arguments.
store_now() {
    echo "store_bytes=$(du -sb "$1/data/store" | cut -f1) store_epochs=$(find "$1/data/store/epochs" -mindepth 1 -maxdepth 1 -type d | wc -l)"
}

# Samples the hub's VmRSS every half second into FILE until stop_sampler.
start_sampler() {
    (while awk '$1 == "VmRSS:" {print $2}' "/proc/$HUB_PID/status" 2>/dev/null; do
        sleep 0.5
    done) >"$1" &
    SAMPLER_PID=$!
}
stop_sampler() {
    stop_pid "$SAMPLER_PID"
    SAMPLER_PID=
}

# run_load DIR NAME ARGS...: the generator in the background (LOAD_PID), outputs DIR/NAME.*.
run_load() {
    local dir=$1 name=$2
    shift 2
    "$LOAD" --config "$dir/edgehub.toml" --size "$SIZE" --window "$WINDOW" --qos 1 \
        --timeout "$TIMEOUT" --no-progress "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
    LOAD_PID=$!
}
wait_load() {
    local dir=$1 name=$2 status=0
    wait "$LOAD_PID" || status=$?
    LOAD_PID=
    [ "$status" = 0 ] || die "$name: the generator failed ($status): $(tail -5 "$dir/$name.err")"
}
# wait_file DIR NAME FILE: waits until the generator NAME creates FILE.
wait_file() {
    while [ ! -e "$3" ]; do
        kill -0 "$LOAD_PID" 2>/dev/null || wait_load "$1" "$2"
        sleep 0.05
    done
}

# fresh_hub DIR [GENERATOR ARGS...]: a hub of its own in DIR (created), whose deployment
# `edgehub-load ARGS --write-deployment` writes; started, then left SETTLE seconds alone.
fresh_hub() {
    local dir=$1 port
    shift
    mkdir -p "$dir"
    port=$(free_port)
    "$LOAD" "$@" --write-deployment "$dir/deployment.json" 2>/dev/null
    write_config "$dir" "$port"
    start_hub "$dir" "$port"
    sleep "$SETTLE"
}

# --- scenarios ----------------------------------------------------------------------------

scenario_idle() {
    local dir port
    for config in default scale; do
        dir=$WORK/idle-$config
        if [ "$config" = default ]; then
            mkdir -p "$dir"
            port=$(free_port)
            write_default_config "$dir" "$port"
            start_hub "$dir" "$port"
            sleep "$SETTLE"
        else
            fresh_hub "$dir" -p 1 -s 1
        fi
        record scenario=idle step="$config-config" $(hub_now) cpu_s="$(seconds "$(cpu_ticks)")"
        log "idle, $config configuration: $(status_kb VmRSS) kB resident"
        stop_hub "$dir"
    done
}

scenario_connections() {
    local dir=$WORK/connections pairs=$LIGHT_PAIRS idle messages t0 t1 t2 t3 connected done_figures
    [ "$CONNECTIONS" -ge 4 ] || die "CONNECTIONS must be at least 4"
    # The load goes through a small part of the connections.
    if [ $((4 * pairs)) -gt "$CONNECTIONS" ]; then pairs=$((CONNECTIONS / 4)); fi
    idle=$((CONNECTIONS - 2 * pairs))
    messages=$(((LIGHT_RATE * LIGHT_SECONDS + pairs - 1) / pairs))
    fresh_hub "$dir" -p "$pairs" -s "$pairs"
    record scenario=connections step=started $(hub_now)
    log "connections: $CONNECTIONS modules ($idle idle, $pairs -> $pairs), $CONNECT_CONCURRENCY connecting at a time"
    reset_peak
    t0=$(cpu_ticks)
    run_load "$dir" load -p "$pairs" -s "$pairs" --topology pairs --idle-clients "$idle" \
        --connect-concurrency "$CONNECT_CONCURRENCY" --ready-file "$dir/ready" \
        --messages "$messages" --rate "$LIGHT_RATE" --scenario "connections-$CONNECTIONS"
    # Every client connected (and subscribed): the generator waits until the file is removed.
    wait_file "$dir" load "$dir/ready"
    t1=$(cpu_ticks)
    cp "$dir/ready" "$dir/ready.connected.json"
    sleep "$SETTLE"
    connected=$(hub_now)
    t2=$(cpu_ticks)
    record scenario=connections step=connected-idle $connected cpu_s="$(seconds $((t1 - t0)))" \
        idle_cpu_s="$(seconds $((t2 - t1)))" idle_s="$SETTLE" ready=@"$dir/ready.connected.json"
    log "connections: all connected: $connected"
    reset_peak
    rm "$dir/ready"
    # The load runs; the file comes back once it is done, before the clients disconnect.
    wait_file "$dir" load "$dir/ready"
    done_figures=$(hub_now)
    t3=$(cpu_ticks)
    rm -f "$dir/ready"
    wait_load "$dir" load
    record scenario=connections step=light-load $done_figures cpu_s="$(seconds $((t3 - t2)))" \
        load=@"$dir/load.out"
    log "connections: light load done: $done_figures"
    stop_hub "$dir"
}

# backlog_phase DIR STEP PHASE [ARGS...]: one generator phase of the backlog, its hub figures
# (peak, median and final RSS, CPU, the store's size) recorded as STEP.
backlog_phase() {
    local dir=$1 step=$2 phase=$3 t0 t1
    shift 3
    reset_peak
    t0=$(cpu_ticks)
    start_sampler "$dir/$step.rss"
    run_load "$dir" "$step" -p 1 -s 1 --messages "$BACKLOG" --phase "$phase" \
        --state "$dir/state.json" --scenario "backlog-$step" "$@"
    wait_load "$dir" "$step"
    stop_sampler
    t1=$(cpu_ticks)
    record scenario=backlog step="$step" $(hub_now) cpu_s="$(seconds $((t1 - t0)))" \
        $(store_now "$dir") rss_samples=%"$dir/$step.rss" load=@"$dir/$step.out"
}

scenario_backlog() {
    local dir=$WORK/backlog
    fresh_hub "$dir" -p 1 -s 1
    record scenario=backlog step=started $(hub_now)
    log "backlog: publishing $BACKLOG messages to a module that is not connected"
    backlog_phase "$dir" fill publish
    sleep "$SETTLE"
    record scenario=backlog step=at-rest $(hub_now) $(store_now "$dir")
    log "backlog: filled; $(status_kb VmRSS) kB resident at rest; draining"
    backlog_phase "$dir" drain drain --drain-idle "$DRAIN_IDLE"
    stop_hub "$dir"
}

# scenario_routes [baseline]: the 1 -> 1 run with 1 route and with ROUTES routes of both
# kinds; with "baseline", the 1-route runs only.
scenario_routes() {
    local variants=("1 none") dir t0 t1 routes kind extra started
    if [ "${1:-}" != baseline ] && [ "$ROUTES" -gt 1 ]; then
        variants+=("$ROUTES other-sources" "$ROUTES same-source")
    fi
    for round in $(seq 1 "$ROUTE_ROUNDS"); do
        for variant in "${variants[@]}"; do
            read -r routes kind <<<"$variant"
            extra=()
            if [ "$kind" != none ]; then
                extra=(--extra-routes $((routes - 1)) --extra-route-kind "$kind")
            fi
            dir=$WORK/routes-$routes-$kind-$round
            fresh_hub "$dir" -p 1 -s 1 "${extra[@]}"
            started=$(hub_now started)
            reset_peak
            t0=$(cpu_ticks)
            run_load "$dir" load -p 1 -s 1 --messages "$ROUTE_MESSAGES" --scenario "routes-$routes-$kind"
            wait_load "$dir" load
            t1=$(cpu_ticks)
            record scenario=routes step=1to1 round="$round" routes="$routes" kind="$kind" \
                $started $(hub_now) \
                cpu_s="$(seconds $((t1 - t0)))" load=@"$dir/load.out"
            log "routes: round $round, $routes routes ($kind): $(tail -1 "$dir/load.out" | python3 -c 'import json, sys; r = json.load(sys.stdin); print("%.0f delivered/s, lost %d" % (r["delivered_per_s"], r["lost"]))')"
            stop_hub "$dir"
        done
    done
}

selected idle && scenario_idle
selected connections && scenario_connections
selected backlog && scenario_backlog
if selected routes; then
    scenario_routes
elif selected backlog; then
    scenario_routes baseline
fi

# --- tables -------------------------------------------------------------------------------

mkdir -p benches/results
stamp=$(date -u +%Y-%m-%dT%H%M)
out=benches/results/scale-$stamp.md
# Two runs in one minute: the seconds too, rather than overwrite.
if [ -e "$out" ]; then out=benches/results/scale-$(date -u +%Y-%m-%dT%H%M%S).md; fi
COMMIT=$COMMIT BUILT=$built DIRTY=$dirty \
    CONNECTIONS=$CONNECTIONS BACKLOG=$BACKLOG ROUTES=$ROUTES SIZE=$SIZE WINDOW=$WINDOW \
    LIGHT_RATE=$LIGHT_RATE LIGHT_SECONDS=$LIGHT_SECONDS CONNECT_CONCURRENCY=$CONNECT_CONCURRENCY \
    ROUTE_MESSAGES=$ROUTE_MESSAGES ROUTE_ROUNDS=$ROUTE_ROUNDS CORES=$(nproc) \
    MEMORY=$(awk '/^MemTotal:/ {printf "%.0f", $2 / 1048576}' /proc/meminfo) \
    python3 - "$RESULTS" >"$out" <<'EOF'
import json, os, statistics, sys
from datetime import datetime, timezone

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
env = os.environ


def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def mb(kb):
    return None if kb is None else kb / 1024


def step(scenario, name):
    return next((r for r in runs if r["scenario"] == scenario and r["step"] == name), None)


def per_msg_us(record):
    delivered = record["load"]["delivered"] if record and record.get("load") else 0
    return record["cpu_s"] * 1e6 / delivered if delivered else None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(value, base):
    return f"{value / base:.2f}x" if value is not None and base else "-"


print(f"# edgehub at scale ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
dirty = env.get("DIRTY", "").strip()
print(f"`benches/scale.sh` at commit {env['COMMIT']} ({env['BUILT']}"
      + (f"; uncommitted changes in the hub's files at the start: {dirty})" if dirty else ")")
      + f": {int(env['CONNECTIONS']):,} connections, a {int(env['BACKLOG']):,}-message backlog, "
      f"{int(env['ROUTES']):,} routes; {env['SIZE']}-byte messages at QoS 1, window {env['WINDOW']} "
      "per publisher. edgehub: release build, plain MQTT listener on loopback, SAS, `sync` "
      f"durability, a fresh data folder per hub. {env['CORES']} cores and {env['MEMORY']} GiB, "
      "shared by the hub and the generator. RSS is VmRSS at the end of a step; peak RSS is "
      "VmHWM over the step (reset through /proc/<pid>/clear_refs when it began); CPU is the "
      "hub's utime + stime over the step, in ticks of 10 ms.\n")

rows = []


def target(name, value, limit, unit, at_least=False, note=""):
    if value is None:
        return
    met = value >= limit if at_least else value <= limit
    sign = ">=" if at_least else "<="
    rows.append(f"| {name} | {fmt(value, 1)} {unit} | {sign} {fmt(limit)} {unit}{note} | "
                f"{'met' if met else '**missed**'} |")


idle_default, idle_scale = step("idle", "default-config"), step("idle", "scale-config")
connected, light = step("connections", "connected-idle"), step("connections", "light-load")
fill, rest, drain = step("backlog", "fill"), step("backlog", "at-rest"), step("backlog", "drain")
n, b = int(env["CONNECTIONS"]), int(env["BACKLOG"])
at_n = "" if n == 10000 else " (for 10,000)"
at_b = "" if b == 1000000 else " (for 1,000,000)"
for name, record, key, limit, note in (
    ("RSS idle, embedded default configuration", idle_default, "rss_kb", 20, ""),
    ("RSS idle, the scale configuration", idle_scale, "rss_kb", 20, ""),
    (f"RSS, {n:,} modules connected, idle", connected, "rss_kb", 200, at_n),
    (f"peak RSS, {n:,} connected and a light load", light, "hwm_kb", 200, at_n),
    (f"peak RSS while {b:,} messages fill the backlog", fill, "hwm_kb", 128, at_b),
    (f"RSS with {b:,} messages in the backlog, at rest", rest, "rss_kb", 128, at_b),
    ("peak RSS while the backlog drains", drain, "hwm_kb", 128, at_b),
):
    if record:
        target(name, mb(record[key]), limit, "MB", note=note)
routes = [r for r in runs if r["scenario"] == "routes"]
one_route = median(r["load"]["delivered_per_s"] for r in routes if r["routes"] == 1)
if drain and one_route:
    target("drain rate (against the 1 -> 1 rate with 1 route, this run)",
           drain["load"]["delivered_per_s"], one_route, "msgs/s", at_least=True)
if rows:
    print("## Against the targets of issue 6\n")
    print("| figure | measured | target | |")
    print("| --- | ---: | ---: | --- |")
    print("\n".join(rows))
    print()

if idle_default or idle_scale:
    print("## Idle: started, nobody connected\n")
    print("| configuration | RSS MB | peak RSS MB | open fds | CPU s since start |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r, name in ((idle_default, "embedded default (example deployment, generated TLS certificates, 4 listeners)"),
                    (idle_scale, "scale (plain MQTT, `sync`, 1 route)")):
        if r:
            print(f"| {name} | {mb(r['rss_kb']):.1f} | {mb(r['hwm_kb']):.1f} | {r['fds']} | {r['cpu_s']:.2f} |")
    print()

if connected:
    c = connected["ready"]["connections"]
    started = step("connections", "started")
    print("## Connections\n")
    print(f"{c['clients']:,} modules (SAS, plain TCP): {c['idle_clients']:,} idle ones subscribed to "
          f"their inputs, and {(c['clients'] - c['idle_clients']) // 2} publishers -> as many "
          f"subscribers; at most {c['concurrency']} idle ones connecting at once. Light load: "
          f"{env['LIGHT_RATE']} msgs/s in all for {env['LIGHT_SECONDS']} s through the pairs (each "
          "publisher disconnects once its messages are taken: the figures after the load count "
          "that many connections fewer).\n")
    print("| figure | value |")
    print("| --- | ---: |")
    lines = [
        ("connected / refused / failed", f"{c['connected']:,} / {c['refused']} / {c['failed']}"),
        ("time to connect (and subscribe) all, s", fmt(c["connect_s"], 2)),
        ("connections per second", fmt(c["clients"] / c["connect_s"] if c["connect_s"] else None)),
        ("hub RSS once started MB", fmt(started and mb(started["rss_kb"]), 1)),
        ("hub peak RSS while they connected MB", fmt(mb(connected["hwm_kb"]), 1)),
        ("hub CPU while they connected s", fmt(connected["cpu_s"], 2)),
        ("hub RSS, all connected, idle MB", fmt(mb(connected["rss_kb"]), 1)),
        (f"hub CPU, all connected, idle for {connected['idle_s']} s, s", fmt(connected["idle_cpu_s"], 2)),
        ("hub RSS per connection KB",
         fmt(started and (connected["rss_kb"] - started["rss_kb"]) / c["clients"], 1)),
        ("hub open fds, all connected", f"{connected['fds']:,}"),
    ]
    if light:
        load = light["load"]
        lc = load.get("connections", {})
        lines += [
            ("light load delivered / expected", f"{load['delivered']:,} / {load['expected_deliveries']:,}"),
            ("light load lost / duplicates", f"{load['lost']} / {load['duplicates']}"),
            ("light load latency p50 / p99 us", f"{fmt(load['p50_us'], 1)} / {fmt(load['p99_us'], 1)}"),
            ("hub peak RSS under the light load MB", fmt(mb(light["hwm_kb"]), 1)),
            ("hub RSS after the light load MB", fmt(mb(light["rss_kb"]), 1)),
            ("hub CPU per delivered message under the light load us", fmt(per_msg_us(light), 1)),
            ("idle connections dropped during the run", str(lc.get("dropped", "-"))),
            ("generator errors", str(len(load["errors"]))),
        ]
    for name, value in lines:
        print(f"| {name} | {value} |")
    if c["errors"]:
        print("\nConnection failures (the first ones): " + "; ".join(c["errors"]))
    print()

if fill and drain:
    f, d = fill["load"], drain["load"]
    print("## Backlog\n")
    print(f"{f['published']:,} messages of {f['payload_bytes']} bytes published at QoS 1 (1 publisher, "
          f"window {f['window']}) to a module that is not connected, then drained by it.\n")
    print("| phase | messages | msgs/s | hub CPU s | hub CPU us/msg | peak RSS MB | median RSS MB | RSS at the end MB | store on disk MB | store epochs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    store = lambda r: f"{r['store_bytes'] / 1e6:.1f} | {r['store_epochs']}"
    print(f"| fill | {f['published']:,} taken | {fmt(f['published_per_s'])} | {fill['cpu_s']:.2f} | "
          f"{fmt(fill['cpu_s'] * 1e6 / f['published'] if f['published'] else None, 1)} | {mb(fill['hwm_kb']):.1f} | "
          f"{fmt(mb(fill['rss_samples']['median_kb']), 1)} | {mb(fill['rss_kb']):.1f} | {store(fill)} |")
    if rest:
        print(f"| at rest | {f['published']:,} queued | - | - | - | - | - | {mb(rest['rss_kb']):.1f} | {store(rest)} |")
    print(f"| drain | {d['delivered']:,} / {d['expected_deliveries']:,} delivered | {fmt(d['delivered_per_s'])} | "
          f"{drain['cpu_s']:.2f} | {fmt(per_msg_us(drain), 1)} | {mb(drain['hwm_kb']):.1f} | "
          f"{fmt(mb(drain['rss_samples']['median_kb']), 1)} | {mb(drain['rss_kb']):.1f} | {store(drain)} |")
    print(f"\nDrain: lost {d['lost']}, duplicates {d['duplicates']}, reordered {d['reordered']}, "
          f"stale {d['stale']}, foreign {d['foreign']}, timed out {d['timed_out']}, errors {len(d['errors'])}; "
          f"time from the publish to the delivery p50 {d['p50_us'] / 1e6:.1f} s, max {d['max_us'] / 1e6:.1f} s "
          f"(the wait in the queue). Fill: errors {len(f['errors'])}, timed out {f['timed_out']}.\n")

if routes:
    print("## Routes\n")
    print(f"1 -> 1, QoS 1, open loop, {int(env['ROUTE_MESSAGES']):,} messages, {env['ROUTE_ROUNDS']} "
          "round(s), medians. `other-sources`: the extra routes come from modules that send nothing; "
          "`same-source`: from the publisher's output, with conditions that are false for its "
          "messages (evaluated for each one). Every extra route has a sink of its own.\n")
    print("| routes | extra routes | delivered msgs/s | vs 1 route | hub CPU us/msg | vs 1 route | p50 us | p99 us | RSS once started MB | peak RSS MB | lost |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_cpu = median(per_msg_us(r) for r in routes if r["routes"] == 1)
    seen = []
    for r in routes:
        if (r["routes"], r["kind"]) not in seen:
            seen.append((r["routes"], r["kind"]))
    for count, kind in seen:
        rs = [r for r in routes if r["routes"] == count and r["kind"] == kind]
        rate = median(r["load"]["delivered_per_s"] for r in rs)
        cpu = median(per_msg_us(r) for r in rs)
        print(f"| {count:,} | {kind} | {fmt(rate)} | {ratio(rate, one_route)} | {fmt(cpu, 2)} | {ratio(cpu, base_cpu)} | "
              f"{fmt(median(r['load']['p50_us'] for r in rs), 1)} | {fmt(median(r['load']['p99_us'] for r in rs), 1)} | "
              f"{fmt(max(mb(r['started_rss_kb']) for r in rs), 1)} | {fmt(max(mb(r['hwm_kb']) for r in rs), 1)} | "
              f"{sum(r['load']['lost'] for r in rs)} |")
    print()

print("## Raw JSON lines\n\n```")
for r in runs:
    print(json.dumps(r))
print("```")
EOF
finished=1
log "wrote $out"
