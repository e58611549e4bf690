//! The coap-blocking server `benches/compare.sh` measures, with the resources of coap-tokio's
//! `bench_server`: `GET /bench` answers 5 bytes, and `/obs` is observable, every PUT to it
//! notifying all observers with the body it carried.
//! `cargo run --release -p coap-blocking --example bench_server_blocking [ADDR]` (default
//! `127.0.0.1:5683`).
//!
//! The I/O loop runs on the main thread and the handlers on the crate's default worker pool,
//! or with `BENCH_WORKERS=0` on the I/O thread (then a PUT to `/obs` is answered with the
//! error that notifying from the I/O thread gives: use workers for the observe runs). It
//! serves until the process is stopped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coap_blocking::{Code, IncomingRequest, Response, Router, Server};

fn main() -> Result<(), coap_blocking::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5683".into());
    // BENCH_WORKERS=0 runs the handlers on the I/O thread.
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(coap_blocking::DEFAULT_WORKERS);
    let server = Server::builder().workers(workers).bind(addr.as_str())?;
    let notifier = server.handle().notifier("/obs");
    let state = Arc::new(Mutex::new(Bytes::from_static(b"0")));
    let (get_state, put_state) = (Arc::clone(&state), Arc::clone(&state));
    let app = Router::new()
        .get("/bench", |_req: IncomingRequest| Response::content("hello"))
        .observable("/obs", move |_req: IncomingRequest| {
            Response::content(get_state.lock().map(|b| b.clone()).unwrap_or_default())
        })
        .put("/obs", move |req: IncomingRequest| {
            if let Ok(mut s) = put_state.lock() {
                *s = req.payload().clone();
            }
            match notifier.notify_with(Response::content(req.payload().clone())) {
                Ok(_) => Response::new(Code::CHANGED),
                Err(e) => Response::new(Code::INTERNAL_SERVER_ERROR).with_payload(e.to_string()),
            }
        });
    eprintln!("listening on {}", server.local_addr());
    server.serve(app)
}
