//! The coap-blocking server `benches/compare.sh` measures, with the resources of coap-tokio's
//! `bench_server`: `GET /bench` answers 5 bytes, and `/obs` is observable, every PUT to it
//! notifying all observers with the body it carried.
//! `cargo run --release -p coap-blocking --example bench_server_blocking [ADDR]` (default
//! `127.0.0.1:5683`).
//!
//! The I/O loop runs on the main thread and the handlers on the crate's default worker pool.
//! It serves until the process is stopped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coap_blocking::{Code, IncomingRequest, Response, Router, Server};

fn main() -> Result<(), coap_blocking::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5683".into());
    let server = Server::bind(addr.as_str())?;
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
            let _ = notifier.notify_with(Response::content(req.payload().clone()));
            Response::new(Code::CHANGED)
        });
    eprintln!("listening on {}", server.local_addr());
    server.serve(app)
}
