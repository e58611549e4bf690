#!/usr/bin/env bash
# Server memory at full load and after it: drives the coap-tokio bench server with coap-bench
# for LOAD seconds, then leaves it idle until every deduplication entry made during the load
# has expired (EXCHANGE_LIFETIME, 247 s, after the last request), sampling the server's VmRSS
# from /proc/<pid>/status every second throughout. Writes a small table to benches/RESULTS.md
# (only the part between the "rss.sh begin/end" markers is replaced).
#
#   benches/rss.sh                     about 5.5 minutes
#   LOAD=10 IDLE=20 benches/rss.sh     a short try (the "after expiry" row is then too early)
#
# Knobs (environment):
#   LOAD=60                 seconds of load
#   IDLE=255                seconds of sampling after the load ends (EXCHANGE_LIFETIME + 8 s)
#   BASELINE=3              seconds of sampling before the load starts
#   CLIENTS=64 OUTSTANDING=4 TYPE=con
#                           coap-bench's sockets, requests in flight per socket, CON or NON;
#                           every socket binds to its own random 127.x.y.z address and moves to
#                           a fresh one after 65 536 message IDs, so every request is a new
#                           (peer, message ID) pair for the server's deduplication cache
#   SERVER_CORE=0 CLIENT_CORE=1
#   BOUND_MIB=64            the memory bound the table is compared with
#   SERVER_CMD              how to start the server; {addr} is replaced by HOST:PORT
#                           (default: target/release/examples/bench_server {addr}, which prints
#                           the engine's counters every second with BENCH_STATS=1)
#   RESULTS=benches/RESULTS.md
#
# Only processes this script started are stopped (trap on EXIT).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

COMMAND=""
for v in LOAD IDLE BASELINE CLIENTS OUTSTANDING TYPE SERVER_CORE CLIENT_CORE BOUND_MIB SERVER_CMD \
    GLIBC_TUNABLES; do
    if [[ -n "${!v:-}" ]]; then COMMAND+="$(printf '%s=%q ' "$v" "${!v}")"; fi
done
COMMAND+="benches/rss.sh"

LOAD=${LOAD:-60}
IDLE=${IDLE:-255}
BASELINE=${BASELINE:-3}
CLIENTS=${CLIENTS:-64}
OUTSTANDING=${OUTSTANDING:-4}
TYPE=${TYPE:-con}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
BOUND_MIB=${BOUND_MIB:-64}
RESULTS=${RESULTS:-benches/RESULTS.md}
WORK=target/bench-rss
mkdir -p "$WORK"

log() { printf '[rss] %s\n' "$*" >&2; }

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

log "building coap-bench and the bench server"
cargo build --release -q -p coap-benches --bin coap-bench
BENCH=target/release/coap-bench
if [[ -z "${SERVER_CMD:-}" ]]; then
    cargo build --release -q -p coap-tokio --example bench_server
    SERVER_CMD="target/release/examples/bench_server {addr}"
fi

PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR="127.0.0.1:$PORT"
URI="coap://$ADDR/bench"
read -r -a cmd <<<"${SERVER_CMD//\{addr\}/$ADDR}"
BENCH_STATS=1 taskset -c "$SERVER_CORE" "${cmd[@]}" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")

ready=0
for _ in $(seq 1 40); do
    if taskset -c "$CLIENT_CORE" "$BENCH" "$URI" -c 1 -o 1 -d 0.1 -w 0 --timeout 200 --json 2>/dev/null |
        grep -q '"completed":[1-9]'; then
        ready=1
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.25
done
if ((ready == 0)); then
    log "the server did not answer GET /bench; its log:"
    tail -n 20 "$WORK/server.err" >&2 || true
    exit 1
fi

SAMPLES="$WORK/samples.tsv"
printf 't\tphase\trss_kib\thwm_kib\n' >"$SAMPLES"
T0=$EPOCHREALTIME

# Appends one sample: seconds since T0, phase, VmRSS and VmHWM in KiB.
sample() {
    local rss hwm
    read -r rss hwm < <(awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} END{print r, h}' "/proc/$SERVER_PID/status")
    printf '%s\t%s\t%s\t%s\n' "$(python3 -c "print(round($EPOCHREALTIME - $T0, 1))")" "$1" "$rss" "$hwm" >>"$SAMPLES"
}

# Samples once a second, in phase $1, for $2 seconds (or while process $3 runs, if given).
sample_for() {
    local phase=$1 secs=$2 pid=${3:-} until
    until=$(python3 -c "print($EPOCHREALTIME + $secs)")
    while python3 -c "import sys; sys.exit(0 if $EPOCHREALTIME < $until else 1)"; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then break; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { log "the server exited"; exit 1; }
        sample "$phase"
        sleep 1
    done
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
log "baseline for $BASELINE s"
sample_for baseline "$BASELINE"

log "load for $LOAD s: $CLIENTS sockets x $OUTSTANDING $TYPE requests in flight"
taskset -c "$CLIENT_CORE" "$BENCH" "$URI" -t "$TYPE" -c "$CLIENTS" -o "$OUTSTANDING" \
    -d "$LOAD" -w 0 --json --label "rss" >"$WORK/load.json" 2>"$WORK/load.err" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
sample_for load "$((LOAD + 30))" "$LOAD_PID"
LOAD_RC=0
wait "$LOAD_PID" || LOAD_RC=$?
if ((LOAD_RC != 0)); then
    log "coap-bench failed: $(head -c 300 "$WORK/load.err")"
    exit 1
fi
sample after-load
STATS_AFTER_LOAD=$(grep '^stats ' "$WORK/server.err" | tail -n 1 || true)

log "idle for $IDLE s while the deduplication entries expire"
sample_for idle "$IDLE"
sample idle
STATS_END=$(grep '^stats ' "$WORK/server.err" | tail -n 1 || true)
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
kill -INT "$SERVER_PID" 2>/dev/null || true

SECTION="$WORK/section.md"
export STARTED COMMAND LOAD IDLE CLIENTS OUTSTANDING TYPE SERVER_CORE CLIENT_CORE BOUND_MIB \
    LOADAVG_START LOADAVG_END STATS_AFTER_LOAD STATS_END SERVER_CMD
python3 - "$SAMPLES" "$WORK/load.json" >"$SECTION" <<'EOF'
import json, os, re, statistics, sys

E = os.environ
rows = []
with open(sys.argv[1]) as f:
    next(f)
    for line in f:
        t, phase, rss, hwm = line.split()
        rows.append((float(t), phase, int(rss), int(hwm)))
load = json.load(open(sys.argv[2]))

def mib(kib):
    return f"{kib / 1024:.1f} MiB"

def phase(p):
    return [r for r in rows if r[1] == p]

base = statistics.median(r[2] for r in phase("baseline"))
peak = max(rows, key=lambda r: r[2])
hwm = max(r[3] for r in rows)
load_end = [r for r in rows if r[1] == "after-load"][0]
idle = phase("idle")
after_10 = next((r for r in idle if r[0] >= load_end[0] + 10), idle[-1] if idle else load_end)
last = rows[-1]
bound = float(E["BOUND_MIB"]) * 1024

def stats(line):
    m = re.search(r"Stats \{(.*)\}", line or "")
    if not m:
        return {}
    return {k.strip(): int(v) for k, v in (kv.split(":") for kv in m.group(1).split(",") if ":" in kv)}

s_load, s_end = stats(E.get("STATS_AFTER_LOAD")), stats(E.get("STATS_END"))
print("<!-- rss.sh begin -->")
print("## Server memory at full load (benches/rss.sh)")
print()
print(f"- Date: {E['STARTED']}; command: `{E['COMMAND']}`; server: `{E['SERVER_CMD']}` pinned to core "
      f"{E['SERVER_CORE']}, coap-bench to core {E['CLIENT_CORE']}.")
print(f"- Load: {E['LOAD']} s of {E['TYPE'].upper()} GET /bench from {E['CLIENTS']} sockets x "
      f"{E['OUTSTANDING']} in flight, each socket on its own 127.x.y.z address and moved to a fresh "
      f"one after 65 536 message IDs: {load['completed']} requests answered, "
      f"{load['req_per_s']:.0f}/s, {load['timeouts']} timeouts, {load['non_2xx']} non-2.xx, "
      f"{load['rotations']} socket moves. Then {E['IDLE']} s idle (EXCHANGE_LIFETIME is 247 s).")
print(f"- Load average (1/5/15 min) at start: {E['LOADAVG_START']}; at end: {E['LOADAVG_END']}.")
print(f"- RSS is VmRSS of the server process, sampled every second ({len(rows)} samples).")
print()
print("| point | t (s) | RSS | vs bound |")
print("|---|---:|---:|---:|")
print(f"| baseline (idle, before load) | 0 | {mib(base)} | {base / bound:.0%} |")
print(f"| peak | {peak[0]:.0f} | {mib(peak[2])} (VmHWM {mib(hwm)}) | {peak[2] / bound:.0%} |")
print(f"| end of load | {load_end[0]:.0f} | {mib(load_end[2])} | {load_end[2] / bound:.0%} |")
print(f"| 10 s after load | {after_10[0]:.0f} | {mib(after_10[2])} | {after_10[2] / bound:.0%} |")
print(f"| after expiry (end of idle) | {last[0]:.0f} | {mib(last[2])} | {last[2] / bound:.0%} |")
print(f"| bound | | {mib(bound)} | |")
print()
trace = [r for r in rows if r[1] != "baseline"]
step = max(1, len(trace) // 30)
print("RSS trace (MiB, every ~" + str(step) + " s): " +
      ", ".join(f"{r[0]:.0f}: {r[2] / 1024:.1f}" for r in trace[::step]) + ".")
if s_load:
    print()
    keys = ["datagrams_received", "datagrams_sent", "duplicates", "dedup_evictions",
            "overload_rejections", "transmit_queue_drops", "malformed"]
    print("Engine counters (`ServerHandle::stats`, printed by the server every second):")
    print()
    print("| when | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, s in (("end of load", s_load), ("end of idle", s_end)):
        if s:
            print(f"| {name} | " + " | ".join(str(s.get(k, "?")) for k in keys) + " |")
print("<!-- rss.sh end -->")
EOF

python3 benches/write_section.py "$RESULTS" "$SECTION"
log "wrote $RESULTS"
cat "$SECTION"
