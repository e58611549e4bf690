#!/usr/bin/env bash
# Side-by-side loopback benchmark of CoAP servers, written to benches/RESULTS.md.
#
#   benches/compare.sh                 full run: 3 runs x 5 s per configuration, medians
#   QUICK=1 benches/compare.sh         one 2 s run per configuration (about 2 minutes on a
#                                      quiet machine, at most one more on a busy one)
#
# Servers (each pinned to SERVER_CORE with taskset, on a free loopback port):
#   ceiling   udp-echo-ceiling: a bare recvmmsg/sendmmsg loop answering a fixed 2.05, no CoAP work
#   libcoap   coap-server-notls (Debian libcoap3-bin), /bench and /obs created by a first PUT (-d)
#   coap-rs   benches/coap-rs-server on the `coap` crate (its own cargo project, built here)
#   aiocoap   benches/aiocoap_server.py in a venv under target/
#   ours      the coap-tokio example server, when `cargo build --release -p coap-tokio
#             --example server` works (skipped with a message otherwise)
#   ours-async-std  coap-async-std's example bench_server_async_std (the same resources, on
#             smol's block_on), skipped when it does not build
#   ours-blocking   coap-blocking's example bench_server_blocking (the same resources, handlers
#             on the crate's default worker pool), skipped when it does not build
#   ours-blocking-inline  the same example with BENCH_WORKERS=0: handlers on the I/O thread
#             (ServerBuilder::workers(0)); request rows only, since its PUT to /obs cannot
#             notify from the I/O thread
#   ours-2e   the same server with --engines 2: two sockets on the port, two engines on two
#             runtime threads, pinned to SERVER_CORE and CLIENT_CORE. On a two-core machine it
#             shares a core with the load tool, so its row shows that the design scales, not
#             a clean number: compare it with `ours` only on a machine with cores to spare.
# The load tool (coap-bench) runs pinned to CLIENT_CORE.
#
# Knobs (environment):
#   QUICK=1                 RUNS=1 DURATION=2 WARMUP=0.5 unless those are set
#   RUNS=3 DURATION=5 WARMUP=1
#   SERVERS="ceiling libcoap coap-rs aiocoap ours ours-2e ours-async-std ours-blocking
#            ours-blocking-inline"
#   CONFIGS="con-1 con-16 non-16 con-256 non-256"   a config is TYPE-N, N requests in flight
#                           (up to 16 sockets with one each, beyond that 16 sockets with N/16
#                           each), or TYPE-CxK: C sockets with K requests in flight each
#   OBSERVERS="100"         observe fan-out runs (observer counts); empty to skip
#   SERVER_CORE=0 CLIENT_CORE=1
#   OTHERS_MAX=0.15 RETRIES=2 DISTURB_BUDGET=300 (60 with QUICK=1)
#                           before each run wait for other processes to use less than OTHERS_MAX
#                           of a core; repeat a run they disturbed up to RETRIES times, keeping the
#                           least disturbed; spend at most DISTURB_BUDGET seconds on all that
#   OURS_CMD                how to start our server; {addr} is replaced by HOST:PORT
#                           (default: target/release/examples/server {addr})
#   OURS_PATH=/bench        the small resource our server answers GETs on (when it answers
#                           /bench with an error, /hello is used instead and the table says so);
#                           the observe runs use /obs, which must take PUTs that notify
#   RESULTS=benches/RESULTS.md   where the table goes (only the part between the
#                           "compare.sh begin/end" markers is replaced)
#
# Client rows (client_rows below): the clients of coap-tokio and coap-rs against the ceiling.
#   CLIENT_ROWS="ours:64x1 ours:1x64:64 coap-rs:1x64 coap-rs:64x1"
#                           IMPL:CxK[:NSTART]: C client endpoints with K requests in flight
#                           each; empty to skip. Their table goes between the "compare.sh
#                           clients begin/end" markers of RESULTS.
#   CLIENT_ONLY=1           run only the client rows (the server table stays as it is)
#
# Only processes this script started are stopped (trap on EXIT).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# The command as given (the knobs set in the environment), for the results.
COMMAND=""
for v in QUICK RUNS DURATION WARMUP SERVERS CONFIGS OBSERVERS SERVER_CORE CLIENT_CORE OURS_CMD \
    OURS_PATH OTHERS_MAX RETRIES DISTURB_BUDGET; do
    if [[ -n "${!v:-}" ]]; then COMMAND+="$(printf '%s=%q ' "$v" "${!v}")"; fi
done
COMMAND+="benches/compare.sh"

if [[ "${QUICK:-0}" == 1 ]]; then
    RUNS=${RUNS:-1} DURATION=${DURATION:-2} WARMUP=${WARMUP:-0.5}
fi
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SERVERS=${SERVERS:-"ceiling libcoap coap-rs aiocoap ours ours-2e ours-async-std ours-blocking ours-blocking-inline"}
CONFIGS=${CONFIGS:-"con-1 con-16 non-16 con-256 non-256"}
OBSERVERS=${OBSERVERS-100}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
RESULTS=${RESULTS:-benches/RESULTS.md}
OTHERS_MAX=${OTHERS_MAX:-0.15}
RETRIES=${RETRIES:-2}
if [[ "${QUICK:-0}" == 1 ]]; then DISTURB_BUDGET=${DISTURB_BUDGET:-60}; fi
DISTURB_BUDGET=${DISTURB_BUDGET:-300}
DISTURB_SPENT=0
WORK=target/bench-compare
mkdir -p "$WORK"
JSONL="$WORK/results.jsonl"
: >"$JSONL"

log() { printf '[compare] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Processes we start, and only those, are stopped on exit.
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

stop_pid() {
    local pid=$1 p keep=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ "$p" != "$pid" ]] && keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

free_port() {
    python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU time (clock ticks) used so far by a process, all threads.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------------------------------------
# Peers: libcoap from Debian, aiocoap from PyPI, both only when missing.
as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}

LIBCOAP=""
want() { [[ " $SERVERS " == *" $1 "* ]]; }

if want libcoap; then
    LIBCOAP=$(command -v coap-server-notls || command -v coap-server || true)
    if [[ -z "$LIBCOAP" ]]; then
        log "installing libcoap3-bin"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || true
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libcoap3-bin >&2 || true
        LIBCOAP=$(command -v coap-server-notls || command -v coap-server || true)
    fi
    [[ -n "$LIBCOAP" ]] || log "libcoap's coap-server is not available: skipping libcoap"
fi

AIOPY=""
if want aiocoap; then
    for py in target/ci-venv/bin/python target/bench-venv/bin/python; do
        if [[ -x "$py" ]] && "$py" -c 'import aiocoap' 2>/dev/null; then AIOPY=$py; break; fi
    done
    if [[ -z "$AIOPY" ]]; then
        log "installing aiocoap into target/bench-venv"
        python3 -m venv target/bench-venv >&2 && target/bench-venv/bin/pip install -q aiocoap >&2 || true
        target/bench-venv/bin/python -c 'import aiocoap' 2>/dev/null && AIOPY=target/bench-venv/bin/python
    fi
    [[ -n "$AIOPY" ]] || log "aiocoap is not available: skipping aiocoap"
fi

# ---------------------------------------------------------------------------------------------
# Builds, all in release.
log "building coap-bench and udp-echo-ceiling"
cargo build --release -q -p coap-benches --bins
BENCH=target/release/coap-bench
CEILING=target/release/udp-echo-ceiling

COAPRS=""
if want coap-rs; then
    log "building benches/coap-rs-server"
    if (cd benches/coap-rs-server && CARGO_TARGET_DIR="$ROOT/target/coap-rs-server" cargo build --release -q); then
        COAPRS=target/coap-rs-server/release/coap-rs-server
    else
        log "coap-rs-server did not build: skipping coap-rs"
    fi
fi

OURS=""
if want ours || want ours-2e; then
    if cargo metadata --no-deps --format-version 1 2>/dev/null | grep -q '"name":"coap-tokio"' &&
        cargo build --release -q -p coap-tokio --example bench_server 2>/dev/null; then
        OURS=${OURS_CMD:-"target/release/examples/bench_server {addr}"}
    else
        log "coap-tokio's example server does not build (yet): skipping ours"
    fi
fi

# The bench servers of the other runtime crates: the same resources as coap-tokio's.
declare -A OURS_OTHER=()
for entry in "ours-async-std coap-async-std bench_server_async_std" \
    "ours-blocking coap-blocking bench_server_blocking"; do
    read -r name package example <<<"$entry"
    want "$name" || { [[ $name == ours-blocking ]] && want ours-blocking-inline; } || continue
    if cargo build --release -q -p "$package" --example "$example" 2>/dev/null; then
        OURS_OTHER[$name]="target/release/examples/$example"
    else
        log "$package's example $example does not build: skipping $name"
    fi
done

# ---------------------------------------------------------------------------------------------
# Servers.
SERVER_PID=""
SERVER_PORT=""
SERVER_PATH=/bench

# Probes until the server answers a GET on $1 (a path), for at most 10 s.
wait_ready() {
    local path=$1 i
    for i in $(seq 1 40); do
        if probe "$path" | grep -q '"completed":[1-9]'; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.25
    done
    return 1
}

# One short GET run on $1 (a path); prints the tool's JSON.
probe() {
    taskset -c "$CLIENT_CORE" "$BENCH" "coap://127.0.0.1:$SERVER_PORT$1" -c 1 -o 1 \
        -d 0.1 -w 0 --timeout 200 --json 2>/dev/null || true
}

# Sends one PUT with a 5-byte payload to $1 (creates libcoap's dynamic resources).
put_once() {
    taskset -c "$CLIENT_CORE" "$BENCH" "coap://127.0.0.1:$SERVER_PORT$1" -m PUT -p 5 -c 1 -o 1 \
        -d 0.05 -w 0 --timeout 500 --json >/dev/null 2>&1 || true
}

start_server() {
    local name=$1 cmd
    SERVER_PORT=$(free_port)
    local addr="127.0.0.1:$SERVER_PORT"
    case $name in
        ceiling) cmd=("$CEILING" "$addr") ;;
        libcoap) cmd=("$LIBCOAP" -A 127.0.0.1 -p "$SERVER_PORT" -d 64 -v 0) ;;
        coap-rs) cmd=("$COAPRS" "$addr") ;;
        aiocoap) cmd=("$AIOPY" benches/aiocoap_server.py 127.0.0.1 "$SERVER_PORT") ;;
        ours) read -r -a cmd <<<"${OURS//\{addr\}/$addr}" ;;
        ours-2e) read -r -a cmd <<<"${OURS//\{addr\}/$addr} --engines 2" ;;
        ours-async-std | ours-blocking) cmd=("${OURS_OTHER[$name]}" "$addr") ;;
        ours-blocking-inline) cmd=(env BENCH_WORKERS=0 "${OURS_OTHER[ours-blocking]}" "$addr") ;;
    esac
    local cores=$SERVER_CORE
    if [[ $name == ours-2e ]]; then cores="$SERVER_CORE,$CLIENT_CORE"; fi
    taskset -c "$cores" "${cmd[@]}" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    if [[ $name == libcoap ]]; then
        sleep 0.3
        put_once /bench
        put_once /obs
    fi
    SERVER_PATH=/bench
    if [[ $name == ours* ]]; then SERVER_PATH=${OURS_PATH:-/bench}; fi
    if ! wait_ready "$SERVER_PATH"; then
        log "$name did not answer GET $SERVER_PATH; its log:"
        tail -n 20 "$WORK/$name.log" >&2 || true
        stop_pid "$SERVER_PID"
        return 1
    fi
    if [[ $name == ours* ]] && ! probe "$SERVER_PATH" | grep -q '"non_2xx":0,'; then
        log "ours answers GET $SERVER_PATH with an error; using /hello instead"
        SERVER_PATH=/hello
    fi
}

config_args() {
    local type=${1%-*} n=${1#*-}
    local clients=$n per=1
    if [[ $n == *x* ]]; then
        # TYPE-CxK: C sockets with K requests each.
        clients=${n%x*} per=${n#*x} n=$((clients * per))
    elif ((n > 16)); then
        # Up to 16 sockets with one request each; beyond that 16 sockets share the load.
        clients=16 per=$((n / 16))
    fi
    # With one request in flight the client core has nothing else to do: it busy-polls, so
    # the latency measured is the server's and the kernel's, not the client's wake-up time.
    local spin=""
    if ((n == 1)); then spin="--spin"; fi
    echo "-t $type -c $clients -o $per $spin"
}

# Busy time of all cores so far, in clock ticks: user + nice + system + steal (time the
# hypervisor gave to someone else). Interrupt time is left out: most of it is our own traffic.
busy_ticks() {
    awk '/^cpu /{print $2 + $3 + $4 + $9}' /proc/stat
}

# Runs the load tool once and appends its JSON, tagged, to $JSONL. Besides the tool's own
# numbers it records the server's CPU use and the CPU used by everything else on the machine
# during the run: other users' work makes every number lower and noisier. So before a run the
# script waits (a little) for the machine to be quiet, and a run during which others used more
# than OTHERS_MAX of a core is repeated, up to RETRIES times, keeping the least disturbed
# attempt. All that waiting and repeating is bounded by DISTURB_BUDGET seconds per script run.
run_once() {
    local attempt other best_other="" t0
    for attempt in $(seq 0 "$RETRIES"); do
        wait_quiet
        t0=$SECONDS
        if ! run_attempt "$@"; then
            return 1
        fi
        other=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["other_cpu"])' "$WORK/attempt.json")
        if [[ -z "$best_other" ]] || less_than "$other" "$best_other"; then
            best_other=$other
            cp "$WORK/attempt.json" "$WORK/best.json"
        fi
        if ! less_than "$OTHERS_MAX" "$best_other"; then
            break
        fi
        if ((attempt > 0)); then
            DISTURB_SPENT=$((DISTURB_SPENT + SECONDS - t0))
        fi
        if ((attempt == RETRIES || DISTURB_SPENT >= DISTURB_BUDGET)); then
            break
        fi
        log "  others used $(python3 -c "print(round(100 * $other))") % of a core during that run: again"
    done
    cat "$WORK/best.json" >>"$JSONL"
}

# Waits, at most 10 s at a time and within DISTURB_BUDGET overall, until other processes use
# less than OTHERS_MAX of a core over half a second (nothing of ours is busy while sampling).
wait_quiet() {
    local b0 b1 hz share t0=$SECONDS
    hz=$(getconf CLK_TCK)
    while ((DISTURB_SPENT + SECONDS - t0 < DISTURB_BUDGET && SECONDS - t0 < 10)); do
        b0=$(busy_ticks)
        sleep 0.5
        b1=$(busy_ticks)
        share=$(python3 -c "print(($b1 - $b0) / $hz / 0.5)")
        if less_than "$share" "$OTHERS_MAX"; then
            break
        fi
    done
    DISTURB_SPENT=$((DISTURB_SPENT + SECONDS - t0))
}

less_than() {
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$1" "$2"
}

run_attempt() {
    local server=$1 config=$2 run=$3
    shift 3
    local s0 s1 b0 b1 w0 w1 cli
    local out="$WORK/run.json" err="$WORK/run.err" tf="$WORK/run.time"
    s0=$(cpu_ticks "$SERVER_PID") b0=$(busy_ticks) w0=$(date +%s.%N)
    if ! { TIMEFORMAT='%3U %3S' && time taskset -c "$CLIENT_CORE" "$BENCH" "$@" -d "$DURATION" \
        -w "$WARMUP" --json --label "$server $config" >"$out" 2>"$err"; } 2>"$tf"; then
        log "$server $config run $run failed: $(head -c 300 "$err")"
        return 1
    fi
    s1=$(cpu_ticks "$SERVER_PID") b1=$(busy_ticks) w1=$(date +%s.%N)
    cli=$(awk '{print $1 + $2}' "$tf")
    python3 - "$out" "$server" "$config" "$run" "$((s1 - s0))" "$((b1 - b0))" "$cli" \
        "$(getconf CLK_TCK)" "$w0" "$w1" >"$WORK/attempt.json" <<'EOF'
import json, sys
path, server, config, run, srv, busy, cli, hz, w0, w1 = sys.argv[1:]
d = json.load(open(path))
d.update(server=server, config=config, run=int(run))
if server.startswith("ours") and not d["target"].endswith("/bench"):
    d["server"] = server = server + " (" + d["target"].rsplit("/", 1)[-1] + ")"
wall = float(w1) - float(w0)
hz = int(hz)
# Shares of one core over the whole run (warm-up included).
d["server_cpu"] = int(srv) / hz / wall
d["other_cpu"] = max(0.0, (int(busy) / hz - int(srv) / hz - float(cli)) / wall)
print(json.dumps(d))
rate = d.get("notifications_per_s", d["req_per_s"])
lat = d.get("fanout_latency_us", d["latency_us"])
print(f"[compare]   {server:8} {config:12} run {run}: {rate:9.0f}/s  p50 {lat['p50']:.1f} us"
      f"  p99 {lat['p99']:.1f} us  timeouts {d['timeouts']}  CPU server {d['server_cpu']:.0%}"
      f" client {d['client_cpu']:.0%} others {d['other_cpu']:.0%}", file=sys.stderr)
EOF
}

# ---------------------------------------------------------------------------------------------
# Client rows: how fast a CoAP client library gets requests answered, with the ceiling loop as
# the server (it answers every CON request with a piggybacked ACK 2.05 carrying the token, and
# does nothing else). `ours` is coap-tokio's Client (tokio-client-bench: C Clients on C random
# 127.x.y.z addresses, each with NSTART, default 1, and K requests in flight, moving to a fresh
# endpoint after 65 536 Message IDs so none is reused within EXCHANGE_LIFETIME); `coap-rs` is
# coap-rs's UdpCoAPClient (coap-rs-client-bench in benches/coap-rs-server: C clients shared by K
# tasks each, no NSTART, Message IDs wrapping after 65 536). Both run on tokio's current-thread
# runtime pinned to CLIENT_CORE, with the same duration, warm-up and one 1 s attempt per request.
CLIENT_ROWS=${CLIENT_ROWS-"ours:64x1 ours:1x64:64 coap-rs:1x64 coap-rs:64x1"}

client_rows() {
    local row impl shape nstart tool run started loadavg0 extra=()
    local cjsonl="$WORK/clients.jsonl" section="$WORK/clients-section.md"
    local coaprs_client=target/coap-rs-server/release/coap-rs-client-bench
    : >"$cjsonl"
    started=$(date -u '+%Y-%m-%d %H:%M UTC')
    loadavg0=$(cut -d' ' -f1-3 /proc/loadavg)
    if [[ " $CLIENT_ROWS " == *" coap-rs:"* ]]; then
        log "building benches/coap-rs-server (coap-rs-client-bench)"
        (cd benches/coap-rs-server && CARGO_TARGET_DIR="$ROOT/target/coap-rs-server" cargo build --release -q) ||
            log "coap-rs-client-bench did not build: skipping the coap-rs client rows"
    fi
    log "starting ceiling for the client rows"
    start_server ceiling || return 0
    for row in $CLIENT_ROWS; do
        IFS=: read -r impl shape nstart <<<"$row"
        extra=(-c "${shape%x*}" -o "${shape#*x}")
        case $impl in
            ours)
                tool=target/release/tokio-client-bench
                extra+=(--nstart "${nstart:-1}")
                ;;
            coap-rs)
                tool=$coaprs_client
                [[ -x $tool ]] || continue
                ;;
            *) log "unknown client $impl"; continue ;;
        esac
        for run in $(seq 1 "$RUNS"); do
            # run_once drives $BENCH and appends to $JSONL: point both at the client's.
            JSONL=$cjsonl BENCH=$tool run_once "client $impl" "$row" "$run" \
                "coap://127.0.0.1:$SERVER_PORT/bench" "${extra[@]}" || true
        done
    done
    stop_pid "$SERVER_PID"

    STARTED_C=$started LOADAVG_C0=$loadavg0 LOADAVG_C1=$(cut -d' ' -f1-3 /proc/loadavg) \
        CPU_C=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1) NCPU_C=$(nproc) \
        COMMAND_C="$(printf '%s=%q ' CLIENT_ONLY "${CLIENT_ONLY:-0}" CLIENT_ROWS "$CLIENT_ROWS")$COMMAND" \
        RUNS_C=$RUNS DURATION_C=$DURATION WARMUP_C=$WARMUP SERVER_CORE_C=$SERVER_CORE CLIENT_CORE_C=$CLIENT_CORE \
        COAPRS_VERSION_C=$(sed -n '/^name = "coap"$/{n;s/version = "\(.*\)"/\1/p}' benches/coap-rs-server/Cargo.lock 2>/dev/null || true) \
        python3 - "$cjsonl" >"$section" <<'PY'
import json, os, statistics, sys
from collections import defaultdict

E = os.environ
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
order = []
for r in rows:
    if r["config"] not in by:
        order.append(r["config"])
    by[r["config"]].append(r)
med = lambda xs: statistics.median(xs) if xs else float("nan")
rate = {c: med([r["req_per_s"] for r in rs]) for c, rs in by.items()}
best_rs = max((v for c, v in rate.items() if c.startswith("coap-rs:")), default=None)

print("<!-- compare.sh clients begin -->")
print("## Clients side by side (benches/compare.sh client rows)")
print()
print(f"- Date: {E['STARTED_C']}; CPU: {E['CPU_C']} ({E['NCPU_C']} cores); command: `{E['COMMAND_C']}`")
print(f"- {E['RUNS_C']} run(s) x {E['DURATION_C']} s per row after {E['WARMUP_C']} s warm-up; cells are medians. "
      f"Server: the ceiling loop (udp-echo-ceiling) pinned to core {E['SERVER_CORE_C']}; the client pinned to core {E['CLIENT_CORE_C']}.")
print(f"- Load average (1/5/15 min) at start: {E['LOADAVG_C0']}; at end: {E['LOADAVG_C1']}.")
print(f"- Clients: `ours` is coap-tokio's Client (benches/src/bin/tokio-client-bench.rs), `coap-rs` is coap-rs "
      f"{E.get('COAPRS_VERSION_C') or '?'}'s UdpCoAPClient (benches/coap-rs-server/src/bin/coap-rs-client-bench.rs), both on "
      "tokio's current-thread runtime. Config IMPL:CxK[:NSTART] is C client endpoints (sockets) with K GET /bench requests in "
      "flight each. Ours has NSTART 1 (the RFC's default) unless the third field raises it, and moves a lane to a fresh endpoint "
      "(a new random 127.x.y.z address) after 65 536 Message IDs, so no ID is reused towards the server within EXCHANGE_LIFETIME; "
      "endpoint moves and MessageIdsExhausted events are counted. coap-rs has no NSTART and its Message IDs wrap after 65 536 "
      "requests per client. One 1 s attempt per request, never retransmitted.")
print("- × coap-rs: against the fastest coap-rs row. srv CPU / cli CPU: share of one core used by the ceiling / by the client "
      "(median). others: the most CPU other processes used during a run of that row.")
print()
print("| client | config | in flight | NSTART | req/s | p50 µs | p99 µs | × coap-rs | timeouts | errors | endpoint moves | MIDs exhausted | srv CPU | cli CPU | others |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in order:
    rs = by[c]
    r0 = rs[0]
    nstart = r0.get("nstart")
    ratio = f"{rate[c] / best_rs:.2f}" if best_rs else "–"
    print(f"| {c.split(':')[0]} | {c} | {r0['clients'] * r0['outstanding']} | {nstart if nstart is not None else '–'} | "
          f"{rate[c]:.0f} | {med([r['latency_us']['p50'] for r in rs]):.1f} | {med([r['latency_us']['p99'] for r in rs]):.1f} | "
          f"{ratio} | {sum(r['timeouts'] for r in rs)} | {sum(r['non_2xx'] + r['resets'] + r['errors'] for r in rs)} | "
          f"{sum(r['rotations'] for r in rs)} | {sum(r['mid_exhausted'] for r in rs)} | "
          f"{med([r['server_cpu'] for r in rs]) * 100:.0f} % | {med([r['client_cpu'] for r in rs]) * 100:.0f} % | "
          f"{max(r['other_cpu'] for r in rs) * 100:.0f} % |")
print("<!-- compare.sh clients end -->")
PY
    python3 benches/write_section.py "$RESULTS" "$section"
    log "wrote the client rows to $RESULTS"
    cat "$section"
}

if [[ -n "$CLIENT_ROWS" ]]; then client_rows; fi
if [[ "${CLIENT_ONLY:-0}" == 1 ]]; then exit 0; fi

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

for server in $SERVERS; do
    case $server in
        ceiling) ;;
        libcoap) [[ -n "$LIBCOAP" ]] || continue ;;
        coap-rs) [[ -n "$COAPRS" ]] || continue ;;
        aiocoap) [[ -n "$AIOPY" ]] || continue ;;
        ours | ours-2e) [[ -n "$OURS" ]] || continue ;;
        ours-async-std | ours-blocking) [[ -n "${OURS_OTHER[$server]:-}" ]] || continue ;;
        ours-blocking-inline) [[ -n "${OURS_OTHER[ours-blocking]:-}" ]] || continue ;;
        *) log "unknown server $server"; continue ;;
    esac
    log "starting $server"
    start_server "$server" || continue
    for config in $CONFIGS; do
        read -r -a extra <<<"$(config_args "$config")"
        for run in $(seq 1 "$RUNS"); do
            run_once "$server" "$config" "$run" "coap://127.0.0.1:$SERVER_PORT$SERVER_PATH" "${extra[@]}" || true
        done
    done
    if [[ $server != ceiling && $server != ours-blocking-inline ]]; then
        for n in $OBSERVERS; do
            for run in $(seq 1 "$RUNS"); do
                # A server without an observable /obs fails the first run: skip the rest.
                run_once "$server" "observe-$n" "$run" "coap://127.0.0.1:$SERVER_PORT/obs" \
                    --observe "$n" --timeout 2000 || break
            done
        done
    fi
    stop_pid "$SERVER_PID"
done

LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# The table.
CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
NCPU=$(nproc)
KERNEL=$(uname -r)
LIBCOAP_VERSION=$([[ -n "$LIBCOAP" ]] && "$LIBCOAP" -h 2>&1 | sed -n 's/.* v\([0-9.]*\) .*/\1/p' | head -n1 || true)
AIOCOAP_VERSION=$([[ -n "$AIOPY" ]] && "$AIOPY" -c 'import importlib.metadata as m; print(m.version("aiocoap"))' 2>/dev/null || true)
COAPRS_VERSION=$(sed -n '/^name = "coap"$/{n;s/version = "\(.*\)"/\1/p}' benches/coap-rs-server/Cargo.lock 2>/dev/null || true)

SECTION="$WORK/section.md"
export STARTED CPU NCPU KERNEL COMMAND RUNS DURATION WARMUP SERVER_CORE CLIENT_CORE CONFIGS RETRIES DISTURB_BUDGET \
    LOADAVG_START LOADAVG_END LIBCOAP_VERSION AIOCOAP_VERSION COAPRS_VERSION
python3 - "$JSONL" >"$SECTION" <<'EOF'
import json, os, statistics, sys
from collections import defaultdict

E = os.environ

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
for r in rows:
    by[(r["server"], r["config"])].append(r)
servers = []
for r in rows:
    if r["server"] not in servers:
        servers.append(r["server"])
configs = E["CONFIGS"].split()
med = lambda xs: statistics.median(xs) if xs else float("nan")

def summary(key):
    rs = by.get(key, [])
    return {
        "n": len(rs),
        "rate": med([r["req_per_s"] for r in rs]),
        "p50": med([r["latency_us"]["p50"] for r in rs]),
        "p99": med([r["latency_us"]["p99"] for r in rs]),
        "timeouts": sum(r["timeouts"] for r in rs),
        "errors": sum(r["non_2xx"] + r["resets"] + r["send_errors"] for r in rs),
        "scpu": med([r["server_cpu"] for r in rs]),
        "ccpu": med([r["client_cpu"] for r in rs]),
        "ocpu": max([r["other_cpu"] for r in rs], default=float("nan")),
    }

def ratio(a, b):
    return f"{a / b:.2f}" if b and b == b and a == a and b > 0 else "–"

print("<!-- compare.sh begin -->")
print("## Side by side (benches/compare.sh)")
print()
print(f"- Date: {E['STARTED']}; CPU: {E['CPU']} ({E['NCPU']} cores); kernel {E['KERNEL']}")
print(f"- Command: `{E['COMMAND']}`")
print(f"- {E['RUNS']} run(s) x {E['DURATION']} s per cell after {E['WARMUP']} s warm-up; cells are medians. Server pinned to core {E['SERVER_CORE']}, coap-bench to core {E['CLIENT_CORE']}.")
print(f"- Load average (1/5/15 min) at start: {E['LOADAVG_START']}; at end: {E['LOADAVG_END']}. The machine is shared: other work running at the same time lowers every number.")
print(f"- Versions: libcoap {E.get('LIBCOAP_VERSION') or '?'}, coap-rs {E.get('COAPRS_VERSION') or '?'}, aiocoap {E.get('AIOCOAP_VERSION') or '?'}.")
print("- Configs: TYPE-N is N requests in flight: up to 16 client sockets with one request each, beyond that 16 sockets with N/16 each (TYPE-CxK: C sockets with K each). Small GET of /bench (payload of 0 to 5 bytes). Requests are never retransmitted; an answer later than 1 s counts as a timeout. With 1 in flight coap-bench busy-polls (`--spin`), elsewhere it sleeps in epoll_wait.")
if any(r["server"].startswith("ours-2e") for r in rows):
    print(f"- ours-2e: our server with two engines (`--engines 2`) on cores {E['SERVER_CORE']} and {E['CLIENT_CORE']}, so it shares a core with coap-bench: its row shows that the design scales, not a clean number on a machine with {E['NCPU']} cores. Its srv CPU can exceed 100 %.")
print(f"- srv CPU / cli CPU: share of one core used by the server / by coap-bench (median). A row whose srv CPU is well below 100 % while cli CPU is near 100 % is limited by the load tool, not by the server (except with 1 in flight, where coap-bench busy-polls). others: the most CPU (share of one core) that other processes on the machine used during any run of that cell; above a few % the cell is disturbed (such runs were repeated up to {E['RETRIES']} times, keeping the least disturbed, within a budget of {E['DISTURB_BUDGET']} s of waiting).")
print()
print("| server | config | req/s | p50 µs | p99 µs | × libcoap | × ceiling | timeouts | errors | srv CPU | cli CPU | others |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in configs:
    base = summary(("libcoap", c))
    ceil = summary(("ceiling", c))
    for s in servers:
        x = summary((s, c))
        if not x["n"]:
            continue
        print(f"| {s} | {c} | {x['rate']:.0f} | {x['p50']:.1f} | {x['p99']:.1f} | "
              f"{ratio(x['rate'], base['rate'])} | {ratio(x['rate'], ceil['rate'])} | "
              f"{x['timeouts']} | {x['errors']} | {x['scpu']*100:.0f} % | {x['ccpu']*100:.0f} % | "
              f"{x['ocpu']*100:.0f} % |")

obs = sorted({r["config"] for r in rows if r["config"].startswith("observe-")},
             key=lambda c: int(c.split("-")[1]))
if obs:
    print()
    print("Observe fan-out: N observers (one socket each) on /obs; a closed loop of CON PUTs to /obs "
          "changes the resource, each carrying a sequence number that the notifications echo. "
          "Fan-out latency is from the PUT's send to a notification's arrival.")
    print()
    print("| server | observers | notifications/s | fan-out p50 µs | fan-out p99 µs | × coap-rs | registered | PUTs/s | lost | srv CPU | others |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in obs:
        def osum(s):
            rs = by.get((s, c), [])
            return rs, med([r.get("notifications_per_s", 0) for r in rs])
        _, base = osum("coap-rs")
        for s in servers:
            rs, rate = osum(s)
            if not rs:
                continue
            p50 = med([r["fanout_latency_us"]["p50"] for r in rs])
            p99 = med([r["fanout_latency_us"]["p99"] for r in rs])
            reg = min(r["registered"] for r in rs)
            puts = med([r["req_per_s"] for r in rs])
            lost = sum(r["lost"] for r in rs)
            scpu = med([r["server_cpu"] for r in rs])
            ocpu = max(r["other_cpu"] for r in rs)
            print(f"| {s} | {c.split('-')[1]} | {rate:.0f} | {p50:.1f} | {p99:.1f} | {ratio(rate, base)} | "
                  f"{reg} | {puts:.0f} | {lost} | {scpu*100:.0f} % | {ocpu*100:.0f} % |")
print("<!-- compare.sh end -->")
EOF

# Replace only our section of RESULTS.md; keep everything else.
python3 - "$RESULTS" "$SECTION" <<'EOF'
import os, re, sys
path, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
pattern = re.compile(r"<!-- compare\.sh begin -->.*?<!-- compare\.sh end -->", re.S)
if pattern.search(text):
    text = pattern.sub(lambda _: section, text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text if text.endswith("\n") else text + "\n")
EOF
log "wrote $RESULTS"
cat "$SECTION"
