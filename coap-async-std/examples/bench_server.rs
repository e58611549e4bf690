//! The coap-async-std server `benches/compare.sh` measures, with the resources of coap-tokio's
//! `bench_server`: `GET /bench` answers 5 bytes, and `/obs` is observable, every PUT to it
//! notifying all observers with the body it carried.
//! `cargo run --release -p coap-async-std --example bench_server_async_std [ADDR]` (default
//! `127.0.0.1:5683`).
//!
//! The server future runs on the main thread under smol's `block_on`, which also drives the
//! reactor: one thread, like the tokio server's current-thread runtime. It serves until the
//! process is stopped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coap_async_std::{Code, IncomingRequest, Response, Router, Server};

fn main() -> Result<(), coap_async_std::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5683".into());
    smol::block_on(async {
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
        server.serve(app).await
    })
}
