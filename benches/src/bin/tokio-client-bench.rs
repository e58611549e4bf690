//! `tokio-client-bench`: the throughput of coap-tokio's public [`Client`] API.
//!
//! `--clients` lanes each keep `--outstanding` requests in flight (a task per request slot:
//! send, await the response, send the next) against a loopback server for a duration, on
//! tokio's current-thread runtime (run it pinned to a core of its own with `taskset`). The
//! report gives completed requests per second and latency percentiles, as text or as one JSON
//! object in the shape `coap-bench` uses.
//!
//! The client keeps RFC 7252's rules, as any application using it does:
//!
//! - NSTART (§4.7): every lane's `Client` has the default configuration, NSTART = 1, unless
//!   `--nstart` raises it; requests beyond NSTART wait in the engine. With the default, 64
//!   requests in flight take 64 client endpoints (`-c 64 -o 1`).
//! - Message IDs (§4.4): the engine never reuses a Message ID towards a peer within
//!   EXCHANGE_LIFETIME, so one endpoint has 65 536 of them per 247 s towards the server. After
//!   `--requests-per-client` requests (default 65 536) a lane moves to a fresh `Client` on a
//!   new random 127.x.y.z address that was not used within EXCHANGE_LIFETIME (as `coap-bench`
//!   does). With `--requests-per-client 0` a lane keeps its endpoint and, once the IDs run out,
//!   its requests wait for IDs to free up: the engine reports that as `MessageIdsExhausted`,
//!   which coap-tokio logs as a warning through `tracing`; this tool counts those warnings.
//!
//! Requests are given `--timeout` (default 1 s, below the first retransmission at 2 to 3 s),
//! so, as with `coap-bench`, an unanswered request is never retransmitted and counts as a
//! timeout. Only loopback targets are accepted, and a watchdog ends the process if the run
//! overruns its deadline.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_benches::cli::{
    count, cpu_time, finish, hist_json, hist_text, json_escape, loopback_uri, seconds, usage_exit,
    watchdog,
};
use coap_benches::hist::Histogram;
use coap_benches::ids::{random_loopback_v4, EndpointLedger, SplitMix, EXCHANGE_LIFETIME};
use coap_tokio::{Client, Config, Error};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

const USAGE: &str = "\
usage: tokio-client-bench [OPTIONS] URI

  URI                        coap://127.0.0.1:5683/path (loopback only: 127.0.0.0/8 or [::1])

  -c, --clients N            lanes, each its own Client (socket, endpoint) (default 64)
  -o, --outstanding N        requests in flight per lane (default 1)
      --nstart N             NSTART of every Client (default 1, the RFC's default)
  -t, --type T               con (default) or non
  -d, --duration S           measured seconds (default 5, at most 3600)
  -w, --warmup S             seconds before measuring (default 1)
      --timeout MS           a request unanswered this long is a timeout (default 1000)
      --requests-per-client N   move a lane to a fresh endpoint after N requests
                             (default 65536; 0: never)
      --json                 one JSON object on stdout
      --label TEXT           copied into the JSON output
";

/// Most tries to find a client endpoint not used within EXCHANGE_LIFETIME.
const BIND_TRIES: usize = 64;

#[derive(Clone, Debug)]
struct Args {
    uri: String,
    target: SocketAddr,
    clients: usize,
    outstanding: usize,
    nstart: usize,
    non: bool,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    per_client: u64,
    json: bool,
    label: String,
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut uri = None;
    let mut a = Args {
        uri: String::new(),
        target: SocketAddr::from(([127, 0, 0, 1], 5683)),
        clients: 64,
        outstanding: 1,
        nstart: 1,
        non: false,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        timeout: Duration::from_millis(1000),
        per_client: 1 << 16,
        json: false,
        label: String::new(),
    };
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "-c" | "--clients" => a.clients = count(&value()?)?,
            "-o" | "--outstanding" => a.outstanding = count(&value()?)?,
            "--nstart" => a.nstart = count(&value()?)?,
            "-t" | "--type" => {
                a.non = match value()?.to_ascii_lowercase().as_str() {
                    "con" => false,
                    "non" => true,
                    other => return Err(format!("--type is con or non, not {other}")),
                }
            }
            "-d" | "--duration" => a.duration = seconds(&value()?)?,
            "-w" | "--warmup" => a.warmup = seconds(&value()?)?,
            "--timeout" => a.timeout = Duration::from_millis(count(&value()?)? as u64),
            "--requests-per-client" => a.per_client = count(&value()?)? as u64,
            "--json" => a.json = true,
            "--label" => a.label = value()?,
            "-h" | "--help" => return Err(String::new()),
            s if !s.starts_with('-') && uri.is_none() => {
                uri = Some((s.to_string(), loopback_uri(s)?.1));
            }
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    let (uri, target) = uri.ok_or("a target URI is required")?;
    a.uri = uri;
    a.target = target;
    if a.clients == 0 || a.outstanding == 0 || a.nstart == 0 {
        return Err("--clients, --outstanding and --nstart must be at least 1".into());
    }
    if a.clients * a.outstanding > 65_536 {
        return Err("at most 65536 requests in flight".into());
    }
    if a.duration.is_zero() || a.timeout.is_zero() {
        return Err("--duration and --timeout must be above 0".into());
    }
    Ok(a)
}

/// Counts the warnings coap-tokio logs: the engine's `MessageIdsExhausted` apart, the first
/// few others printed to standard error.
#[derive(Debug, Default)]
struct Warnings {
    ids_exhausted: AtomicU64,
    other: AtomicU64,
}

/// The `message` field of an event, as text.
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// A tracing subscriber that only looks at warnings and errors, and only counts them.
struct WarningCounter(Arc<Warnings>);

impl Subscriber for WarningCounter {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && *metadata.level() <= Level::WARN
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = MessageText(String::new());
        event.record(&mut text);
        // coap-tokio's driver words the engine's MessageIdsExhausted event this way.
        if text.0.starts_with("message IDs towards peer exhausted") {
            self.0.ids_exhausted.fetch_add(1, Ordering::Relaxed);
        } else if self.0.other.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("tokio-client-bench: warning from coap-tokio: {}", text.0);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// What the lanes share.
struct Shared {
    args: Args,
    t0: Instant,
    config: Config,
    rng: Mutex<SplitMix>,
    ledger: Mutex<EndpointLedger>,
    rotations: AtomicU64,
}

impl Shared {
    /// A Client on an endpoint (address and port) not used within EXCHANGE_LIFETIME.
    async fn fresh_client(&self) -> Result<Client, Error> {
        // Endpoints refused as too recent stay bound until a fresh one is found, so the
        // kernel hands out another port.
        let mut refused = Vec::new();
        for _ in 0..BIND_TRIES {
            let ip = match self.args.target.ip() {
                IpAddr::V4(_) => {
                    let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                    IpAddr::V4(random_loopback_v4(&mut rng))
                }
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            let client = Client::builder()
                .config(self.config.clone())
                .bind(SocketAddr::new(ip, 0))
                .await?;
            let fresh = self
                .ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_fresh(client.local_addr(), self.t0.elapsed());
            if fresh {
                return Ok(client);
            }
            refused.push(client);
        }
        Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no fresh client endpoint",
        )))
    }
}

/// One lane: a Client and how many requests it has been given.
struct Lane {
    state: Mutex<LaneState>,
}

struct LaneState {
    client: Client,
    issued: u64,
    /// Whether a task is binding the lane's next Client.
    moving: bool,
}

impl Lane {
    /// The Client the next request goes through; moves the lane to a fresh endpoint once
    /// the current one has had its share of requests.
    async fn client(&self, shared: &Shared) -> Result<Client, Error> {
        loop {
            let budget = shared.args.per_client;
            let move_now = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if budget == 0 || state.issued < budget {
                    state.issued += 1;
                    return Ok(state.client.clone());
                }
                // Unless another slot of this lane is binding the next Client already.
                !std::mem::replace(&mut state.moving, true)
            };
            if !move_now {
                tokio::task::yield_now().await;
                continue;
            }
            let next = shared.fresh_client().await;
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.moving = false;
            let next = next?;
            let old = std::mem::replace(&mut state.client, next);
            state.issued = 0;
            // The old endpoint's Message IDs stay in use for EXCHANGE_LIFETIME from now.
            shared
                .ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retire(old.local_addr(), shared.t0.elapsed());
            shared.rotations.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one request slot counted in the measured window.
#[derive(Debug)]
struct Tally {
    sent: u64,
    completed: u64,
    non_2xx: u64,
    timeouts: u64,
    resets: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sent: 0,
            completed: 0,
            non_2xx: 0,
            timeouts: 0,
            resets: 0,
            errors: 0,
            first_error: None,
            latency: Histogram::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.completed += other.completed;
        self.non_2xx += other.non_2xx;
        self.timeouts += other.timeouts;
        self.resets += other.resets;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One request slot: sends, awaits the answer, sends the next, until `end`.
async fn slot(shared: Arc<Shared>, lane: Arc<Lane>, measure_at: Instant, end: Instant) -> Tally {
    let mut t = Tally::new();
    let args = &shared.args;
    while Instant::now() < end {
        let client = match lane.client(&shared).await {
            Ok(c) => c,
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        };
        let mut request = client.get(args.uri.as_str()).timeout(args.timeout);
        if args.non {
            request = request.non();
        }
        let sent = Instant::now();
        let result = request.await;
        let done = Instant::now();
        if sent >= measure_at && sent < end {
            t.sent += 1;
        }
        if done < measure_at || done >= end {
            continue;
        }
        match result {
            Ok(rsp) if rsp.is_success() => {
                t.completed += 1;
                t.latency.record((done - sent).as_nanos() as u64);
            }
            Ok(_) => t.non_2xx += 1,
            Err(Error::Timeout) => t.timeouts += 1,
            Err(Error::Reset) => t.resets += 1,
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    t
}

/// The result of a run.
#[derive(Debug)]
struct Outcome {
    tally: Tally,
    window: Duration,
    cpu: Duration,
    rotations: u64,
    ids_exhausted: u64,
    other_warnings: u64,
}

async fn run(args: Args, warnings: Arc<Warnings>) -> Result<Outcome, String> {
    let mut config = Config::default();
    config.nstart = args.nstart;
    let shared = Arc::new(Shared {
        args: args.clone(),
        t0: Instant::now(),
        config,
        rng: Mutex::new(SplitMix::from_entropy()),
        ledger: Mutex::new(EndpointLedger::new(EXCHANGE_LIFETIME)),
        rotations: AtomicU64::new(0),
    });
    let mut lanes = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let client = shared
            .fresh_client()
            .await
            .map_err(|e| format!("cannot bind a client: {e}"))?;
        lanes.push(Arc::new(Lane {
            state: Mutex::new(LaneState {
                client,
                issued: 0,
                moving: false,
            }),
        }));
    }
    let start = Instant::now();
    let measure_at = start + args.warmup;
    let end = measure_at + args.duration;
    let mut tasks = Vec::with_capacity(args.clients * args.outstanding);
    for lane in &lanes {
        for _ in 0..args.outstanding {
            tasks.push(tokio::spawn(slot(
                Arc::clone(&shared),
                Arc::clone(lane),
                measure_at,
                end,
            )));
        }
    }
    tokio::time::sleep_until(measure_at.into()).await;
    let cpu0 = cpu_time();
    let exhausted0 = warnings.ids_exhausted.load(Ordering::Relaxed);
    let rotations0 = shared.rotations.load(Ordering::Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_time().saturating_sub(cpu0);
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(
            task.await
                .map_err(|e| format!("a request task failed: {e}"))?,
        );
    }
    Ok(Outcome {
        tally,
        window: end - measure_at,
        cpu,
        rotations: shared.rotations.load(Ordering::Relaxed) - rotations0,
        ids_exhausted: warnings.ids_exhausted.load(Ordering::Relaxed) - exhausted0,
        other_warnings: warnings.other.load(Ordering::Relaxed),
    })
}

fn report(args: &Args, o: &Outcome) -> String {
    let t = &o.tally;
    let secs = o.window.as_secs_f64().max(1e-9);
    let rate = t.completed as f64 / secs;
    let cpu = o.cpu.as_secs_f64() / secs;
    let kind = if args.non { "non" } else { "con" };
    if args.json {
        return format!(
            "{{\"label\":\"{}\",\"mode\":\"client\",\"client\":\"coap-tokio\",\"target\":\"{}\",\
\"type\":\"{kind}\",\"clients\":{},\"outstanding\":{},\"nstart\":{},\"requests_per_client\":{},\
\"warmup_s\":{:.3},\"duration_s\":{secs:.3},\"sent\":{},\"completed\":{},\"req_per_s\":{rate:.1},\
\"non_2xx\":{},\"timeouts\":{},\"resets\":{},\"errors\":{},\"rotations\":{},\
\"mid_exhausted\":{},\"warnings\":{},\"client_cpu\":{cpu:.3},\"latency_us\":{}}}",
            json_escape(&args.label),
            json_escape(&args.uri),
            args.clients,
            args.outstanding,
            args.nstart,
            args.per_client,
            args.warmup.as_secs_f64(),
            t.sent,
            t.completed,
            t.non_2xx,
            t.timeouts,
            t.resets,
            t.errors,
            o.rotations,
            o.ids_exhausted,
            o.other_warnings,
            hist_json(&t.latency),
        );
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "coap-tokio Client: GET {} ({}), {} clients x {} in flight, NSTART {}, {secs:.2} s measured",
        args.uri,
        kind.to_ascii_uppercase(),
        args.clients,
        args.outstanding,
        args.nstart
    );
    let _ = writeln!(
        s,
        "completed:     {} = {rate:.0} req/s (sent {}, client CPU {:.0} %)",
        t.completed,
        t.sent,
        cpu * 100.0
    );
    let _ = writeln!(s, "latency:       {}", hist_text(&t.latency));
    let _ = writeln!(
        s,
        "errors:        {} timeouts, {} non-2.xx, {} resets, {} other{}",
        t.timeouts,
        t.non_2xx,
        t.resets,
        t.errors,
        t.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "endpoints:     {} moved to a fresh endpoint; Message IDs exhausted {} times",
        o.rotations, o.ids_exhausted
    );
    s
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return usage_exit("tokio-client-bench", USAGE, &e),
    };
    watchdog(
        "tokio-client-bench",
        Duration::from_secs(10) + args.warmup + args.duration + args.timeout * 2,
    );
    let warnings = Arc::new(Warnings::default());
    if tracing::subscriber::set_global_default(WarningCounter(Arc::clone(&warnings))).is_err() {
        eprintln!("tokio-client-bench: could not install the warning counter");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio-client-bench: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(args.clone(), warnings));
    finish("tokio-client-bench", outcome.map(|o| report(&args, &o)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_tokio::{IncomingRequest, Response, Router, Server};

    fn args(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_and_refuses() {
        let a = args("coap://127.0.0.1:5683/bench -c 8 -o 2 --nstart 2 -t non -d 0.5").unwrap();
        assert_eq!((a.clients, a.outstanding, a.nstart, a.non), (8, 2, 2, true));
        assert_eq!(a.per_client, 65_536);
        assert!(args("coap://192.168.1.1/bench").is_err());
        assert!(args("coap://127.0.0.1/bench -c 0").is_err());
        assert!(args("coap://127.0.0.1/bench --nstart 0").is_err());
        assert!(args("-c 4").is_err());
    }

    /// A server that answers GET /bench with 2.05 and counts what it saw.
    async fn bench_server() -> (SocketAddr, Arc<AtomicU64>) {
        let seen = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&seen);
        let app = Router::new().get("/bench", move |_req: IncomingRequest| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Response::content("hello") }
        });
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.serve(app));
        (addr, seen)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn keeps_requests_in_flight_and_moves_endpoints() {
        let (addr, seen) = bench_server().await;
        let a = args(&format!(
            "coap://{addr}/bench -c 3 -o 2 --nstart 2 -d 0.3 -w 0.05 --requests-per-client 20"
        ))
        .unwrap();
        let o = run(a, Arc::new(Warnings::default())).await.unwrap();
        let t = &o.tally;
        assert!(t.completed > 0, "{o:?}");
        assert_eq!((t.timeouts, t.non_2xx, t.errors), (0, 0, 0), "{o:?}");
        assert_eq!(t.latency.count(), t.completed);
        // Every lane moved on after 20 requests: more requests than 3 x 20 were answered.
        assert!(seen.load(Ordering::Relaxed) > 60);
        assert!(o.rotations >= 1, "{o:?}");
        assert_eq!(o.ids_exhausted, 0);
        let json = report(&args(&format!("coap://{addr}/bench --json")).unwrap(), &o);
        assert!(json.contains("\"mode\":\"client\""), "{json}");
        assert!(json.contains(&format!("\"completed\":{}", t.completed)));
    }

    #[test]
    fn counts_exhausted_message_ids_apart_from_other_warnings() {
        let warnings = Arc::new(Warnings::default());
        let subscriber = WarningCounter(Arc::clone(&warnings));
        tracing::subscriber::with_default(subscriber, || {
            let peer = "127.0.0.1:5683";
            tracing::warn!(%peer, until = 5, "message IDs towards peer exhausted; requests wait");
            tracing::warn!(%peer, "message IDs towards peer exhausted; requests wait");
            tracing::warn!("client driver failed");
            tracing::info!("not counted");
        });
        assert_eq!(warnings.ids_exhausted.load(Ordering::Relaxed), 2);
        assert_eq!(warnings.other.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn counts_timeouts_when_nobody_answers() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let a = args(&format!(
            "coap://{addr}/bench -c 2 -o 1 -d 0.35 -w 0 --timeout 100"
        ))
        .unwrap();
        let o = run(a, Arc::new(Warnings::default())).await.unwrap();
        assert_eq!(o.tally.completed, 0);
        // Two slots, each timing out every 100 ms within 350 ms.
        assert!(o.tally.timeouts >= 4, "{o:?}");
        drop(silent);
    }
}
