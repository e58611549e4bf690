//! The server `benches/compare.sh` measures: `GET /bench` answers 5 bytes, and `/obs` is
//! observable, every PUT to it notifying all observers with the body it carried.
//!
//! `cargo run --release -p coap-tokio --example bench_server [ADDR] [--engines N]`
//! (default `127.0.0.1:5683`, one engine on a single-threaded runtime). With `--engines N`
//! (N > 1) N sockets share the port, each with its own engine, on a runtime of N threads.
//!
//! With `BENCH_STATS=SECONDS` in the environment the server also prints the engine's counters
//! to standard error every SECONDS (`stats <seconds since start> Stats { .. }`, summed over
//! the engines), so a load script can see deduplication evictions and overload answers;
//! `benches/rss.sh` uses it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coap_tokio::{Code, IncomingRequest, Response, Router, Server};

const USAGE: &str = "usage: bench_server [ADDR] [--engines N]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = String::from("127.0.0.1:5683");
    let mut engines = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--engines" => {
                engines = args
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n > 0)
                    .ok_or(USAGE)?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            a if !a.starts_with('-') => addr = a.to_string(),
            _ => return Err(USAGE.into()),
        }
    }
    let runtime = if engines == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(engines)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(addr, engines))?;
    Ok(())
}

async fn serve(addr: String, engines: usize) -> Result<(), coap_tokio::Error> {
    let server = Server::builder()
        .engines(engines)
        .bind(addr.as_str())
        .await?;
    let notifier = server.handle().notifier("/obs");
    let state = Arc::new(Mutex::new(Bytes::from_static(b"0")));
    let (get_state, put_state) = (Arc::clone(&state), Arc::clone(&state));
    let app = Router::new()
        .get("/bench", |_req: IncomingRequest| async {
            Response::content("hello")
        })
        .observable("/obs", move |_req: IncomingRequest| {
            let body = get_state.lock().map(|b| b.clone()).unwrap_or_default();
            async move { Response::content(body) }
        })
        .put("/obs", move |req: IncomingRequest| {
            let (state, notifier) = (Arc::clone(&put_state), notifier.clone());
            async move {
                if let Ok(mut s) = state.lock() {
                    *s = req.payload().clone();
                }
                let _ = notifier
                    .notify_with(Response::content(req.payload().clone()))
                    .await;
                Response::new(Code::CHANGED)
            }
        });
    eprintln!(
        "listening on {} ({} engine(s))",
        server.local_addr(),
        server.engines()
    );
    if let Some(every) = stats_interval() {
        let handle = server.handle();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Ok(stats) = handle.stats().await else {
                    break;
                };
                eprintln!("stats {:.1} {stats:?}", start.elapsed().as_secs_f64());
            }
        });
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server.serve_with_shutdown(app, stop).await
}

/// The period of the counters printout, from `BENCH_STATS` (seconds; unset, empty or zero: none).
fn stats_interval() -> Option<std::time::Duration> {
    let secs: f64 = std::env::var("BENCH_STATS").ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}
