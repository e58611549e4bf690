//! The client side of the comparison: coap-rs's `UdpCoAPClient` under the same load as
//! `tokio-client-bench` gives coap-tokio's `Client`.
//!
//! ```text
//! coap-rs-client-bench coap://127.0.0.1:PORT/PATH [-c CLIENTS] [-o IN_FLIGHT_PER_CLIENT]
//!                      [-t con|non] [-d SECONDS] [-w SECONDS] [--timeout MS] [--json] [--label TEXT]
//! ```
//!
//! CLIENTS clients (default 1, each its own socket) are shared by IN_FLIGHT_PER_CLIENT tasks
//! each (default 64) that send a GET, await the response, and send the next, on tokio's
//! current-thread runtime. Each request is given one attempt of `--timeout` (default 1 s,
//! no retransmission), like the other load tools of benches/. The report is text, or one JSON
//! object with the fields `tokio-client-bench` writes.
//!
//! coap-rs's client leaves a request's token empty unless the caller sets one, and then
//! matches responses by token alone, so requests in flight together need distinct tokens:
//! every request here carries a fresh 4-byte token. Message IDs come from coap-rs: one counter
//! per client that wraps after 65 536 requests, with no regard for EXCHANGE_LIFETIME, and
//! coap-rs has no NSTART limit.
//! Only loopback targets are accepted.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap::request::{Method, RequestBuilder};
use coap::UdpCoAPClient;

// The workspace's latency histogram, shared with the other load tools.
#[path = "../../../src/hist.rs"]
#[allow(dead_code)]
mod hist;

use hist::Histogram;

struct Args {
    uri: String,
    target: SocketAddr,
    path: String,
    clients: usize,
    outstanding: usize,
    confirmable: bool,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    json: bool,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        uri: String::new(),
        target: SocketAddr::from(([127, 0, 0, 1], 5683)),
        path: String::new(),
        clients: 1,
        outstanding: 64,
        confirmable: true,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        timeout: Duration::from_millis(1000),
        json: false,
        label: String::new(),
    };
    let mut argv = std::env::args().skip(1);
    let secs = |v: String| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| (0.0..=3600.0).contains(s))
            .map(Duration::from_secs_f64)
            .ok_or(format!("bad seconds {v}"))
    };
    let num = |v: String| {
        v.parse::<usize>()
            .map_err(|e| format!("bad number {v}: {e}"))
    };
    while let Some(arg) = argv.next() {
        let mut value = || argv.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "-c" | "--clients" => a.clients = num(value()?)?,
            "-o" | "--outstanding" => a.outstanding = num(value()?)?,
            "-t" | "--type" => a.confirmable = value()?.eq_ignore_ascii_case("con"),
            "-d" | "--duration" => a.duration = secs(value()?)?,
            "-w" | "--warmup" => a.warmup = secs(value()?)?,
            "--timeout" => a.timeout = Duration::from_millis(num(value()?)? as u64),
            "--json" => a.json = true,
            "--label" => a.label = value()?,
            s if s.starts_with("coap://") => {
                let rest = &s["coap://".len()..];
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                a.target = host.parse().map_err(|e| format!("{s}: {e}"))?;
                if !a.target.ip().is_loopback() {
                    return Err(format!("refusing target {}: loopback only", a.target.ip()));
                }
                a.path = path.to_string();
                a.uri = s.to_string();
            }
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    if a.uri.is_empty() {
        return Err("a target URI (coap://127.0.0.1:PORT/PATH) is required".into());
    }
    if a.clients == 0 || a.outstanding == 0 || a.duration.is_zero() {
        return Err("clients, in-flight and duration must be above 0".into());
    }
    Ok(a)
}

#[derive(Default)]
struct Tally {
    sent: u64,
    completed: u64,
    non_2xx: u64,
    timeouts: u64,
    errors: u64,
    latency: Option<Histogram>,
}

async fn slot(
    args: Arc<Args>,
    client: UdpCoAPClient,
    tokens: Arc<AtomicU32>,
    measure_at: Instant,
    end: Instant,
) -> Tally {
    let mut t = Tally {
        latency: Some(Histogram::new()),
        ..Tally::default()
    };
    while Instant::now() < end {
        let token = tokens
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes()
            .to_vec();
        let request = RequestBuilder::new(&args.path, Method::Get)
            .confirmable(args.confirmable)
            .token(Some(token))
            .build();
        let sent = Instant::now();
        let result = client.send(request).await;
        let done = Instant::now();
        if sent >= measure_at && sent < end {
            t.sent += 1;
        }
        if done < measure_at || done >= end {
            continue;
        }
        match result {
            Ok(rsp) if u8::from(rsp.message.header.code) >> 5 == 2 => {
                t.completed += 1;
                if let Some(h) = t.latency.as_mut() {
                    h.record((done - sent).as_nanos() as u64);
                }
            }
            Ok(_) => t.non_2xx += 1,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => t.timeouts += 1,
            Err(_) => t.errors += 1,
        }
    }
    t
}

/// CPU time this process has used so far, from /proc/self/stat (utime + stime, in clock
/// ticks of 1/100 s, which is USER_HZ on Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| -> u64 {
        rest.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line; the first field after the name is 3.
    Duration::from_millis((field(11) + field(12)) * 10)
}

async fn run(args: Arc<Args>) -> Result<(Tally, Duration, Duration), String> {
    let start = Instant::now();
    let measure_at = start + args.warmup;
    let end = measure_at + args.duration;
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let mut client = UdpCoAPClient::new_with_specific_source("127.0.0.1:0", args.target)
            .await
            .map_err(|e| format!("cannot bind a client: {e}"))?;
        client.set_receive_timeout(args.timeout);
        client.set_random_factor(1.0);
        client.set_transport_retries(1);
        let tokens = Arc::new(AtomicU32::new(0));
        for _ in 0..args.outstanding {
            tasks.push(tokio::spawn(slot(
                Arc::clone(&args),
                client.clone(),
                Arc::clone(&tokens),
                measure_at,
                end,
            )));
        }
    }
    tokio::time::sleep_until(measure_at.into()).await;
    let cpu0 = cpu_time();
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_time().saturating_sub(cpu0);
    let mut total = Tally {
        latency: Some(Histogram::new()),
        ..Tally::default()
    };
    for task in tasks {
        let t = task
            .await
            .map_err(|e| format!("a request task failed: {e}"))?;
        total.sent += t.sent;
        total.completed += t.completed;
        total.non_2xx += t.non_2xx;
        total.timeouts += t.timeouts;
        total.errors += t.errors;
        if let (Some(all), Some(h)) = (total.latency.as_mut(), t.latency.as_ref()) {
            all.merge(h);
        }
    }
    Ok((total, end - measure_at, cpu))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("coap-rs-client-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // The watchdog: the process ends shortly after its deadline whatever happens.
    let limit = Duration::from_secs(10) + args.warmup + args.duration + args.timeout * 2;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("coap-rs-client-bench: watchdog: still running after {limit:?}, stopping");
        std::process::exit(3);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (t, window, cpu) = match runtime.block_on(run(Arc::clone(&args))) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coap-rs-client-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let h = t.latency.unwrap_or_default();
    let secs = window.as_secs_f64();
    let rate = t.completed as f64 / secs;
    let us = |q: f64| h.quantile(q) as f64 / 1000.0;
    let kind = if args.confirmable { "con" } else { "non" };
    let cpu = cpu.as_secs_f64() / secs;
    if args.json {
        println!(
            "{{\"label\":\"{}\",\"mode\":\"client\",\"client\":\"coap-rs\",\"target\":\"{}\",\
\"type\":\"{kind}\",\"clients\":{},\"outstanding\":{},\"nstart\":null,\"duration_s\":{secs:.3},\
\"sent\":{},\"completed\":{},\"req_per_s\":{rate:.1},\"non_2xx\":{},\"timeouts\":{},\"resets\":0,\
\"errors\":{},\"rotations\":0,\"mid_exhausted\":0,\"client_cpu\":{cpu:.3},\"latency_us\":{{\"count\":{},\"p50\":{:.1},\
\"p90\":{:.1},\"p99\":{:.1},\"max\":{:.1},\"mean\":{:.1}}}}}",
            args.label.replace(['"', '\\'], ""),
            args.uri.replace(['"', '\\'], ""),
            args.clients,
            args.outstanding,
            t.sent,
            t.completed,
            t.non_2xx,
            t.timeouts,
            t.errors,
            h.count(),
            us(0.5),
            us(0.9),
            us(0.99),
            h.max() as f64 / 1000.0,
            h.mean() / 1000.0,
        );
    } else {
        println!(
            "coap-rs client: GET {} ({}), {} clients x {} in flight, {secs:.2} s measured",
            args.uri,
            kind.to_uppercase(),
            args.clients,
            args.outstanding
        );
        println!(
            "completed:     {} = {rate:.0} req/s (sent {}, client CPU {:.0} %)",
            t.completed,
            t.sent,
            cpu * 100.0
        );
        println!(
            "latency:       p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            us(0.5),
            us(0.9),
            us(0.99),
            h.max() as f64 / 1000.0
        );
        println!(
            "errors:        {} timeouts, {} non-2.xx, {} other",
            t.timeouts, t.non_2xx, t.errors
        );
    }
    ExitCode::SUCCESS
}
