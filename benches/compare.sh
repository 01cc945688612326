#!/usr/bin/env bash
# edgehub against mosquitto and rumqttd, side by side, with the same generator (issue 6).
#
#   benches/compare.sh                       # every scenario, 3 rounds, all brokers
#   ROUNDS=1 MESSAGES=20000 benches/compare.sh
#   BROKERS="edgehub mosquitto" SCENARIOS="qos1-1to1 qos1-rate-2000" benches/compare.sh
#
# Every (scenario, round, broker) gets a fresh broker process on loopback: edgehub (release
# build, its plain MQTT listener, `sync` durability, a data folder of its own, the scenario's
# routes), mosquitto and rumqttd (plain MQTT topics). Within a round the brokers take turns
# (A B C, then A B C again in the next round). For each run it records the generator's JSON
# line (rates, latency percentiles, losses, duplicates, reorders), the broker's CPU time
# (utime + stime of /proc/<pid>/stat, after the generator ran minus before) per delivered
# message, its resident memory once started, before the clients connect (VmRSS), and its peak
# resident memory (VmHWM of /proc/<pid>/status).
#
# Results: benches/results/compare-<UTC date and time>.md (the medians, the charts, then every
# run); the charts of edgehub-chart (throughput.png, cpu.png, latency.png) in
# benches/results/<UTC date and time>/; and in BENCHMARKS.md the block between the lines
# `<!-- compare.sh: begin -->` and `<!-- compare.sh: end -->` (medians and charts), replaced,
# or appended with its markers when they are missing.
#
# Installs what is missing: mosquitto (Debian package, needs root) and rumqttd
# (`cargo install rumqttd --locked`, then without --locked; a few minutes); a broker that
# cannot be installed is skipped with a message. Needs python3 for the tables.
#
# Environment: ROUNDS (3), MESSAGES (100000 deliveries per open-loop scenario), RATE_SECONDS
# (5, length of each fixed-rate run), WINDOW (64), SIZE (256), TIMEOUT (120 s per run),
# BROKERS ("edgehub mosquitto rumqttd"), SCENARIOS (all of them), CARGO_TARGET_DIR, COMMIT (the
# commit named in the results; default: git rev-parse HEAD), BENCHMARKS_MD (the file whose
# block is replaced: BENCHMARKS.md; set it empty to leave it alone), EDGEHUB_BIN (the edgehub
# binary measured; default: the release build of this tree; another build, with COMMIT naming
# it, makes a before/after with the same generator).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
RATE_SECONDS=${RATE_SECONDS:-5}
WINDOW=${WINDOW:-64}
SIZE=${SIZE:-256}
TIMEOUT=${TIMEOUT:-120}
BROKERS=${BROKERS:-"edgehub mosquitto rumqttd"}
BENCHMARKS_MD=${BENCHMARKS_MD-BENCHMARKS.md}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PORT=${PORT:-18883}

# name publishers subscribers topology messages-per-publisher rate(- for open loop)
ALL_SCENARIOS=(
    "qos1-1to1 1 1 pairs $MESSAGES -"
    "qos1-4to4 4 4 pairs $((MESSAGES / 4)) -"
    "qos1-fanout-1to4 1 4 fanout $((MESSAGES / 4)) -"
    "qos1-rate-200 1 1 pairs $((200 * RATE_SECONDS)) 200"
    "qos1-rate-2000 1 1 pairs $((2000 * RATE_SECONDS)) 2000"
    "qos1-rate-20000 1 1 pairs $((20000 * RATE_SECONDS)) 20000"
    "qos1-rate-50000 1 1 pairs $((50000 * RATE_SECONDS)) 50000"
)

log() { echo "compare: $*" >&2; }

command -v python3 >/dev/null || { log "python3 is needed for the tables"; exit 1; }

# --- installs -----------------------------------------------------------------------------

available=()
for broker in $BROKERS; do
    case $broker in
    edgehub) available+=(edgehub) ;;
    mosquitto)
        if ! command -v mosquitto >/dev/null && [ -x /usr/sbin/mosquitto ]; then
            PATH=$PATH:/usr/sbin
        fi
        if ! command -v mosquitto >/dev/null; then
            log "installing mosquitto (apt-get)"
            if [ "$(id -u)" = 0 ]; then
                apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null || true
            fi
            PATH=$PATH:/usr/sbin
        fi
        if command -v mosquitto >/dev/null; then
            available+=(mosquitto)
        else
            log "SKIPPING mosquitto: not installed and apt-get failed (root needed)"
        fi
        ;;
    rumqttd)
        PATH=$PATH:$HOME/.cargo/bin
        if ! command -v rumqttd >/dev/null; then
            log "installing rumqttd (cargo install rumqttd --locked; takes minutes)"
            # rumqttd 0.20.0's lock file pins metrics 0.22.1, which newer compilers refuse
            # (E0521); without --locked cargo takes metrics 0.22.4, which builds.
            cargo install rumqttd --locked >&2 ||
                { log "retrying without --locked"; cargo install rumqttd >&2; } || true
        fi
        if command -v rumqttd >/dev/null; then
            available+=(rumqttd)
        else
            log "SKIPPING rumqttd: cargo install rumqttd failed"
        fi
        ;;
    *) log "unknown broker $broker"; exit 1 ;;
    esac
done

log "building edgehub, edgehub-load and edgehub-chart (release)"
CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p edgehub -p edgehub-benches \
    --bin edgehub --bin edgehub-load --bin edgehub-chart >&2
EDGEHUB=${EDGEHUB_BIN:-$TARGET/release/edgehub}
LOAD=$TARGET/release/edgehub-load
CHART=$TARGET/release/edgehub-chart

WORK=$(mktemp -d /tmp/edgehub-compare.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
BROKER_PID=

cleanup() {
    if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Adds the broker's figures to the generator's JSON line (stdin, last line), prints the merged
# line, and a summary on stderr.
cat >"$WORK/merge.py" <<'EOF'
import json, os, sys
run = json.loads(sys.stdin.read().strip().splitlines()[-1])
ticks, hz = int(os.environ["CPU_TICKS"]), int(os.environ["TICKS"])
run.update(broker=os.environ["BROKER"], round=int(os.environ["ROUND"]),
           broker_cpu_s=ticks / hz, peak_rss_kb=int(os.environ["RSS_KB"]),
           idle_rss_kb=int(os.environ["IDLE_RSS_KB"]),
           loadavg_before=float(os.environ["LOAD_BEFORE"]))
run["generator_cpu_s"] = sum(float(t) for t in os.environ["LOAD_CPU"].split())
per_delivered = lambda s: s * 1e6 / run["delivered"] if run["delivered"] else None
run["cpu_us_per_delivered"] = per_delivered(run["broker_cpu_s"])
run["generator_cpu_us_per_delivered"] = per_delivered(run["generator_cpu_s"])
print(json.dumps(run))
cpu = run["cpu_us_per_delivered"] or 0.0
print("compare: %s round %d %s: %.0f delivered/s, p50 %s us, p99 %s us, lost %d, %.1f us CPU/msg, %.1f MB"
      % (run["scenario"], run["round"], run["broker"], run["delivered_per_s"], run["p50_us"],
         run["p99_us"], run["lost"], cpu, run["peak_rss_kb"] / 1024), file=sys.stderr)
EOF

# --- brokers ------------------------------------------------------------------------------

wait_for_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "nothing listens on 127.0.0.1:$PORT after 10 s"
    return 1
}

# start_broker BROKER DIR PUBLISHERS SUBSCRIBERS TOPOLOGY: starts it, sets BROKER_PID.
start_broker() {
    local broker=$1 dir=$2 publishers=$3 subscribers=$4 topology=$5
    mkdir -p "$dir"
    case $broker in
    edgehub)
        "$LOAD" --publishers "$publishers" --subscribers "$subscribers" --topology "$topology" \
            --write-deployment "$dir/deployment.json" 2>/dev/null
        cat >"$dir/edgehub.toml" <<EOF
device_id = "edge"
iothub_hostname = "compare.azure-devices.net"
gateway_hostname = "localhost"
data_dir = "data"
manifest = "deployment.json"
[listen]
mqtt = "127.0.0.1:$PORT"
mqtts = "127.0.0.1:$((PORT + 1))"
https = "127.0.0.1:0"
[store]
durability = "sync"
EOF
        "$EDGEHUB" run --config "$dir/edgehub.toml" >"$dir/broker.log" 2>&1 &
        ;;
    mosquitto)
        # No queue limit and the hub's delivery window (32) as the in-flight limit, so that
        # neither broker drops or throttles a QoS 1 stream for want of configuration.
        cat >"$dir/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages 32
persistence false
EOF
        mosquitto -c "$dir/mosquitto.conf" >"$dir/broker.log" 2>&1 &
        ;;
    rumqttd)
        cat >"$dir/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF
        rumqttd --config "$dir/rumqttd.toml" >"$dir/broker.log" 2>&1 &
        ;;
    esac
    BROKER_PID=$!
    wait_for_port
}

stop_broker() {
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}

# CPU time of a process in clock ticks (utime + stime; the fields after the ")" of comm).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
peak_rss_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
TICKS=$(getconf CLK_TCK)
TIMEFORMAT='%3U %3S'

# --- runs ---------------------------------------------------------------------------------

selected=()
for line in "${ALL_SCENARIOS[@]}"; do
    read -r name _ <<<"$line"
    if [ -z "${SCENARIOS:-}" ] || [[ " $SCENARIOS " == *" $name "* ]]; then selected+=("$line"); fi
done

for line in "${selected[@]}"; do
    read -r name publishers subscribers topology messages rate <<<"$line"
    for round in $(seq 1 "$ROUNDS"); do
        for broker in "${available[@]}"; do
            dir=$WORK/$name-$round-$broker
            if ! start_broker "$broker" "$dir" "$publishers" "$subscribers" "$topology"; then
                log "$name round $round $broker: the broker did not start: $(tail -3 "$dir/broker.log")"
                stop_broker
                continue
            fi
            args=(--publishers "$publishers" --subscribers "$subscribers" --topology "$topology"
                --messages "$messages" --size "$SIZE" --window "$WINDOW" --qos 1
                --timeout "$TIMEOUT" --scenario "$name" --no-progress)
            if [ "$rate" != - ]; then args+=(--rate "$rate"); fi
            if [ "$broker" = edgehub ]; then
                args+=(--config "$dir/edgehub.toml")
            else
                args+=(--plain --port "$PORT")
            fi
            load_before=$(cut -d' ' -f1 /proc/loadavg)
            before=$(cpu_ticks "$BROKER_PID")
            idle_rss=$(rss_kb "$BROKER_PID")
            # The generator's own CPU time (user and system seconds), to see when it, not the
            # broker, is the limit: both share the machine's cores.
            if ! { time "$LOAD" "${args[@]}" >"$dir/load.out" 2>"$dir/load.err"; } 2>"$dir/load.time"; then
                log "$name round $round $broker: the generator failed: $(tail -3 "$dir/load.err")"
                stop_broker
                continue
            fi
            after=$(cpu_ticks "$BROKER_PID")
            rss=$(peak_rss_kb "$BROKER_PID")
            stop_broker
            BROKER="$broker" ROUND="$round" CPU_TICKS=$((after - before)) TICKS="$TICKS" \
                RSS_KB="$rss" IDLE_RSS_KB="$idle_rss" LOAD_BEFORE="$load_before" LOAD_CPU="$(cat "$dir/load.time")" \
                python3 "$WORK/merge.py" <"$dir/load.out" >>"$RESULTS"
        done
    done
done

# --- tables, charts and BENCHMARKS.md -------------------------------------------------------

if [ ! -s "$RESULTS" ]; then
    log "no run succeeded: no tables, no charts, $BENCHMARKS_MD left alone"
    exit 1
fi
stamp=$(date -u +%Y-%m-%dT%H%M)
out=benches/results/compare-$stamp.md
charts=benches/results/$stamp
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p benches/results
# The full tables on stdout; the block of BENCHMARKS.md (medians, charts) into $WORK/block.md.
ROUNDS=$ROUNDS MESSAGES=$MESSAGES RATE_SECONDS=$RATE_SECONDS WINDOW=$WINDOW SIZE=$SIZE TICKS=$TICKS \
    COMMIT=$commit STAMP=$stamp \
    MOSQUITTO_VERSION=$( (mosquitto -h 2>/dev/null || true) | head -1) \
    RUMQTTD_VERSION=$( (rumqttd --version 2>/dev/null || true) | head -1) \
    python3 - "$RESULTS" "$WORK/block.md" >"$out" <<'EOF'
import json, os, statistics, sys
from datetime import datetime, timezone

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
env = os.environ
stamp = env["STAMP"]
measured = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
rounds = f"{env['ROUNDS']} round" + ("" if env["ROUNDS"] == "1" else "s")
about = (f"`benches/compare.sh` at commit {env['COMMIT']}: {rounds}, QoS 1, "
      f"{env['SIZE']}-byte messages, window {env['WINDOW']} per publisher, "
      f"{env['MESSAGES']} deliveries per open-loop scenario, {env['RATE_SECONDS']} s per fixed rate. "
      "edgehub: plain MQTT listener, module topics, SAS, routes, `sync` durability; "
      "mosquitto and rumqttd: plain topics, nothing stored. Loopback, 2 cores shared by the "
      "broker and the generator (see the generator's own CPU per message). CPU times come "
      f"from /proc in ticks of 1/{env['TICKS']} s: short runs quantize them. RSS before (once "
      "started, before the clients connect) and peak RSS are the maxima over the rounds.")
versions = (f"- {env.get('MOSQUITTO_VERSION') or 'mosquitto: not run'}\n"
            f"- {env.get('RUMQTTD_VERSION') or 'rumqttd: not run'}")
# Drawn by edgehub-chart into benches/results/<stamp>/.
charts = [("throughput.png", "Delivered msgs/s per open-loop scenario and broker"),
          ("cpu.png", "Broker CPU per delivered message per open-loop scenario and broker"),
          ("latency.png", "p50 and p99 latency against offered load per broker")]
images = lambda folder: "\n\n".join(f"![{alt}]({folder}/{name})" for name, alt in charts)

def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"

medians = [
    "| scenario | broker | delivered msgs/s | published msgs/s | p50 us | p99 us | p99.9 us | max us | broker CPU us/msg | generator CPU us/msg | RSS before MB | peak RSS MB | lost | dup | reord |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
keys = []
for r in runs:
    if (r["scenario"], r["broker"]) not in keys:
        keys.append((r["scenario"], r["broker"]))
for scenario, broker in keys:
    rs = [r for r in runs if r["scenario"] == scenario and r["broker"] == broker]
    med = lambda k: statistics.median(r[k] for r in rs if r[k] is not None) if any(r[k] is not None for r in rs) else None
    medians.append(
          f"| {scenario} | {broker} | {fmt(med('delivered_per_s'))} | {fmt(med('published_per_s'))} | "
          f"{fmt(med('p50_us'), 1)} | {fmt(med('p99_us'), 1)} | {fmt(med('p999_us'), 1)} | {fmt(med('max_us'), 1)} | "
          f"{fmt(med('cpu_us_per_delivered'), 2)} | {fmt(med('generator_cpu_us_per_delivered'), 2)} | "
          f"{fmt(max(r['idle_rss_kb'] for r in rs) / 1024, 1)} | {fmt(max(r['peak_rss_kb'] for r in rs) / 1024, 1)} | "
          f"{sum(r['lost'] for r in rs)} | {sum(r['duplicates'] for r in rs)} | {sum(r['reordered'] for r in rs)} |")
medians = "\n".join(medians)

# BENCHMARKS.md is at the root: its links start with benches/results/.
with open(sys.argv[2], "w") as block:
    block.write(f"Measured {measured}. {about}\n\n{versions}\n\n"
                f"Every run and the raw JSON lines: [benches/results/compare-{stamp}.md]"
                f"(benches/results/compare-{stamp}.md). Medians over the rounds:\n\n{medians}\n\n"
                f"{images('benches/results/' + stamp)}\n")

print(f"# edgehub, mosquitto and rumqttd side by side ({measured})\n")
print(f"{about}\n")
print(f"{versions}\n")
print("## Medians over the rounds\n")
print(medians)
print("\n## Charts\n")
print(images(stamp))

print("\n## Every run\n")
print("| scenario | round | broker | delivered | delivered msgs/s | p50 us | p99 us | broker CPU s | CPU us/msg | generator CPU us/msg | RSS before MB | peak RSS MB | lost | timed out | load avg before |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
for r in runs:
    print(f"| {r['scenario']} | {r['round']} | {r['broker']} | {r['delivered']}/{r['expected_deliveries']} | "
          f"{fmt(r['delivered_per_s'])} | {fmt(r['p50_us'], 1)} | {fmt(r['p99_us'], 1)} | {r['broker_cpu_s']:.2f} | "
          f"{fmt(r['cpu_us_per_delivered'], 2)} | {fmt(r['generator_cpu_us_per_delivered'], 2)} | {r['idle_rss_kb'] / 1024:.1f} | {r['peak_rss_kb'] / 1024:.1f} | {r['lost']} | {r['timed_out']} | {r['loadavg_before']} |")
print("\n## Raw JSON lines\n\n```")
for r in runs:
    print(json.dumps(r))
print("```")
EOF
log "wrote $out"
"$CHART" render "$RESULTS" --out "$charts" --commit "$commit" >/dev/null
log "wrote the charts into $charts/"
if [ -n "$BENCHMARKS_MD" ]; then
    "$CHART" splice "$BENCHMARKS_MD" --block "$WORK/block.md"
    log "replaced the compare.sh block of $BENCHMARKS_MD"
fi

# With SCALE=1, the scale scenarios of issue 6 as well (benches/scale.sh, with its own settings;
# SCALE_SCENARIOS picks some of them), on the binaries built above.
if [ "${SCALE:-0}" = 1 ]; then
    SCENARIOS=${SCALE_SCENARIOS:-} TIMEOUT=3600 BUILD=0 CARGO_TARGET_DIR=$TARGET benches/scale.sh
fi
