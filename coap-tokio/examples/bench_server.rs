//! The server `benches/compare.sh` measures: `GET /bench` answers 5 bytes, and `/obs` is
//! observable, every PUT to it notifying all observers with the body it carried.
//! `cargo run --release -p coap-tokio --example bench_server [ADDR]` (default `127.0.0.1:5683`).
//!
//! With `BENCH_STATS=SECONDS` in the environment the server also prints the engine's counters
//! to standard error every SECONDS (`stats <seconds since start> Stats { .. }`), so a load
//! script can see deduplication evictions and overload answers; `benches/rss.sh` uses it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coap_tokio::{Code, IncomingRequest, Response, Router, Server};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), coap_tokio::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5683".into());
    let server = Server::bind(addr.as_str()).await?;
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
    eprintln!("listening on {}", server.local_addr());
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
