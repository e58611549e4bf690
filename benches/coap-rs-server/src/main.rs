//! A minimal server on the `coap` crate (coap-rs) for the comparison benchmark.
//!
//! ```text
//! coap-rs-server [ADDR] [--threads N]
//! ```
//!
//! - `GET /bench` answers 2.05 with the 5-byte payload `hello`.
//! - `PUT` to any path answers 2.04; coap-rs's built-in observe support stores the payload and
//!   notifies the observers of that path, so `coap-bench --observe N coap://ADDR/obs` works
//!   (the tool's first trigger creates the resource).
//! - Anything else answers 4.04.
//!
//! ADDR defaults to 127.0.0.1:5683. By default the server runs on tokio's current-thread
//! runtime (one core, like the other servers in the comparison); `--threads N` uses the
//! multi-thread runtime with N workers.

use std::net::SocketAddr;

use coap::Server;
use coap_lite::{CoapRequest, RequestType as Method, ResponseType};

async fn handle(mut request: Box<CoapRequest<SocketAddr>>) -> Box<CoapRequest<SocketAddr>> {
    let method = *request.get_method();
    let path = request.get_path();
    if let Some(ref mut response) = request.response {
        match (method, path.as_str()) {
            (Method::Get, "bench") => {
                response.set_status(ResponseType::Content);
                response.message.payload = b"hello".to_vec();
            }
            (Method::Put, _) => response.set_status(ResponseType::Changed),
            _ => response.set_status(ResponseType::NotFound),
        }
    }
    request
}

fn main() {
    let mut addr = String::from("127.0.0.1:5683");
    let mut threads = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads needs a number")
            }
            s => addr = s.to_string(),
        }
    }
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    runtime.block_on(async move {
        let server = Server::new_udp(addr.as_str()).expect("bind");
        println!("coap-rs-server listening on {addr}");
        server.run(handle).await.expect("server");
    });
}
