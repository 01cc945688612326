#!/usr/bin/env bash
# Upstream throughput next to local (issue 12): one publisher, one subscriber, QoS 1, `sync`
# durability on every hub, the generator edgehub-load, all on loopback.
#
#   local     one hub; module load-pub-0's output routed to load-sub-0's input (compare.sh's
#             qos1-1to1 scenario);
#   upstream  two hubs, a child and its parent; on the child load-pub-0's output goes to
#             $upstream, the child forwards it over MQTT/TLS on behalf of load-pub-0, and the
#             parent routes it (by its original sender) to its own load-sub-0's input. The
#             generator publishes on the child and subscribes on the parent
#             (`--subscribers-config`): the same clock times both ends.
#
#   benches/upstream.sh                        # 3 rounds of each, 100,000 messages a run
#   ROUNDS=1 MESSAGES=20000 benches/upstream.sh
#
# Every run gets fresh hub processes and folders; within a round local runs first, then
# upstream. For each run it records the generator's JSON line (rates, latency percentiles,
# losses, duplicates, reorders), the hubs' CPU time per delivered message (utime + stime of
# /proc/<pid>/stat, after the generator ran minus before, both hubs together for upstream)
# and the load average before it.
#
# Results: a table on stdout and in benches/results/upstream-<UTC date and time>.md (the
# medians, then every run's JSON line). Environment: ROUNDS (3), MESSAGES (100000), WINDOW
# (64), SIZE (256), TIMEOUT (180 s per run), CARGO_TARGET_DIR, COMMIT (the commit named in the
# results; default: git rev-parse --short HEAD). Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
WINDOW=${WINDOW:-64}
SIZE=${SIZE:-256}
TIMEOUT=${TIMEOUT:-180}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
IOTHUB=upstream.azure-devices.net

log() { echo "upstream: $*" >&2; }

command -v python3 >/dev/null || { log "python3 is needed for the tables"; exit 1; }

log "building edgehub and edgehub-load (release)"
CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p edgehub -p edgehub-benches \
    --bin edgehub --bin edgehub-load >&2
EDGEHUB=$TARGET/release/edgehub
LOAD=$TARGET/release/edgehub-load

WORK=$(mktemp -d /tmp/edgehub-upstream.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
HUB_PIDS=()

stop_hubs() {
    local pid
    for pid in "${HUB_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${HUB_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    HUB_PIDS=()
}

cleanup() {
    stop_hubs
    rm -rf "$WORK"
}
trap cleanup EXIT

# Ports free on 127.0.0.1 a moment ago (other benchmarks may share the machine).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_for_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "nothing listens on 127.0.0.1:$1 after 10 s"
    return 1
}

# write_config DIR DEVICE MQTT_PORT MQTTS_PORT [EXTRA]: DIR/edgehub.toml, `sync` durability.
write_config() {
    local dir=$1 device=$2 mqtt=$3 mqtts=$4 extra=${5:-}
    cat >"$dir/edgehub.toml" <<EOF
device_id = "$device"
iothub_hostname = "$IOTHUB"
gateway_hostname = "localhost"
data_dir = "data"
manifest = "deployment.json"
$extra
[listen]
mqtt = "127.0.0.1:$mqtt"
mqtts = "127.0.0.1:$mqtts"
https = "127.0.0.1:0"
[store]
durability = "sync"
EOF
}

# start_hub DIR MQTT_PORT: runs the hub of DIR/edgehub.toml until its MQTT port answers.
start_hub() {
    "$EDGEHUB" run --config "$1/edgehub.toml" >"$1/hub.log" 2>&1 &
    HUB_PIDS+=($!)
    wait_for_port "$2"
}

# CPU time of the hubs in clock ticks (utime + stime; the fields after the ")" of comm).
hubs_cpu_ticks() {
    local pid total=0
    for pid in "${HUB_PIDS[@]}"; do
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
TICKS=$(getconf CLK_TCK)

# setup_local DIR: one hub, publisher and subscriber on it; the generator's flags in TARGET_ARGS.
setup_local() {
    local dir=$1 ports
    read -r -a ports <<<"$(free_ports 2)"
    mkdir -p "$dir"
    "$LOAD" -p 1 -s 1 --write-deployment "$dir/deployment.json" 2>/dev/null
    write_config "$dir" edge "${ports[0]}" "${ports[1]}"
    start_hub "$dir" "${ports[0]}"
    TARGET_ARGS=(--config "$dir/edgehub.toml")
}

# setup_upstream DIR: a parent and a child; publisher on the child, subscriber on the parent.
setup_upstream() {
    local dir=$1 ports connection_string
    read -r -a ports <<<"$(free_ports 4)"
    mkdir -p "$dir/parent" "$dir/child"
    # The parent routes load-pub-0 (of its child, the original sender) to its load-sub-0.
    "$LOAD" -p 1 -s 1 --write-deployment "$dir/parent/deployment.json" 2>/dev/null
    write_config "$dir/parent" parent "${ports[0]}" "${ports[1]}"
    connection_string=$("$EDGEHUB" identity add --config "$dir/parent/edgehub.toml" --edge-device child) \
        || return 1
    start_hub "$dir/parent" "${ports[0]}"
    cat >"$dir/child/deployment.json" <<'EOF'
{"modulesContent": {
  "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {}}},
  "$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
    "routes": {"up": "FROM /messages/modules/load-pub-0/outputs/out INTO $upstream"},
    "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}}}
EOF
    write_config "$dir/child" child "${ports[2]}" "${ports[3]}" "[upstream]
connection_string = \"$connection_string\"
port = ${ports[1]}
ca = \"$dir/parent/data/certs/ca.pem\""
    start_hub "$dir/child" "${ports[2]}"
    TARGET_ARGS=(--config "$dir/child/edgehub.toml" --subscribers-config "$dir/parent/edgehub.toml")
}

for round in $(seq 1 "$ROUNDS"); do
    for setup in local upstream; do
        dir=$WORK/$setup-$round
        if ! "setup_$setup" "$dir"; then
            log "$setup round $round: a hub did not start: $(tail -n 3 "$dir"/hub.log "$dir"/*/hub.log 2>/dev/null)"
            stop_hubs
            continue
        fi
        load_before=$(cut -d' ' -f1 /proc/loadavg)
        before=$(hubs_cpu_ticks)
        if ! "$LOAD" "${TARGET_ARGS[@]}" -p 1 -s 1 --messages "$MESSAGES" --size "$SIZE" \
            --window "$WINDOW" --qos 1 --timeout "$TIMEOUT" --scenario "$setup-qos1-1to1" \
            --no-progress >"$dir/load.out" 2>"$dir/load.err"; then
            log "$setup round $round: the generator failed: $(tail -3 "$dir/load.err")"
            stop_hubs
            continue
        fi
        after=$(hubs_cpu_ticks)
        stop_hubs
        tail -1 "$dir/load.out" | SETUP=$setup ROUND=$round CPU_TICKS=$((after - before)) \
            TICKS=$TICKS LOAD_BEFORE=$load_before python3 -c '
import json, os, sys
run = json.loads(sys.stdin.read())
run.update(setup=os.environ["SETUP"], round=int(os.environ["ROUND"]),
           hubs_cpu_s=int(os.environ["CPU_TICKS"]) / int(os.environ["TICKS"]),
           loadavg_before=float(os.environ["LOAD_BEFORE"]))
run["cpu_us_per_delivered"] = run["hubs_cpu_s"] * 1e6 / run["delivered"] if run["delivered"] else None
print(json.dumps(run))
print("upstream: %s round %d: %.0f delivered/s, p50 %s us, p99 %s us, lost %d, duplicated %d"
      % (run["setup"], run["round"], run["delivered_per_s"], run["p50_us"], run["p99_us"],
         run["lost"], run["duplicates"]), file=sys.stderr)
' >>"$RESULTS"
    done
done

if [ ! -s "$RESULTS" ]; then
    log "no run succeeded"
    exit 1
fi
stamp=$(date -u +%Y-%m-%dT%H%M)
out=benches/results/upstream-$stamp.md
mkdir -p benches/results
ROUNDS=$ROUNDS MESSAGES=$MESSAGES WINDOW=$WINDOW SIZE=$SIZE \
    COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} \
    python3 - "$RESULTS" >"$out" <<'EOF'
import json, os, statistics, sys
from datetime import datetime, timezone

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
env = os.environ
print(f"# Upstream 1 -> 1 next to local 1 -> 1 ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
print(f"`benches/upstream.sh` at commit {env['COMMIT']}: {env['ROUNDS']} round(s), QoS 1, "
      f"{env['SIZE']}-byte messages, {env['MESSAGES']} messages a run, window {env['WINDOW']}, "
      "`sync` durability on every hub, release build, loopback.\n")
print("| setup | runs | delivered msgs/s (median) | min - max | p50 us | p99 us | hubs' CPU us/msg | lost | duplicated | reordered |")
print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
medians = {}
for setup in ("local", "upstream"):
    mine = [r for r in runs if r["setup"] == setup]
    if not mine:
        continue
    rate = [r["delivered_per_s"] for r in mine]
    medians[setup] = statistics.median(rate)
    med = lambda key: statistics.median(r[key] for r in mine if r[key] is not None)
    print(f"| {setup} | {len(mine)} | {medians[setup]:,.0f} | {min(rate):,.0f} - {max(rate):,.0f} "
          f"| {med('p50_us'):,.0f} | {med('p99_us'):,.0f} | {med('cpu_us_per_delivered'):.1f} "
          f"| {sum(r['lost'] for r in mine)} | {sum(r['duplicates'] for r in mine)} "
          f"| {sum(r['reordered'] for r in mine)} |")
if len(medians) == 2:
    print(f"\nupstream / local (medians): {medians['upstream'] / medians['local']:.2f}")
print("\n## Every run\n")
print("| setup | round | delivered msgs/s | p50 us | p99 us | hubs' CPU us/msg | load average before | lost | timed out |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for r in runs:
    cpu = r["cpu_us_per_delivered"]
    print(f"| {r['setup']} | {r['round']} | {r['delivered_per_s']:,.0f} | {r['p50_us']:,.0f} "
          f"| {r['p99_us']:,.0f} | {'-' if cpu is None else f'{cpu:.1f}'} "
          f"| {r['loadavg_before']:.2f} | {r['lost']} | {r['timed_out']} |")
print("\n## The generator's JSON lines\n\n```")
for r in runs:
    print(json.dumps(r))
print("```")
EOF
cat "$out"
log "wrote $out"
