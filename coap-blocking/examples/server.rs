//! A CoAP server on plain threads: `cargo run -p coap-blocking --example server_blocking [ADDR]`
//! (default `[::]:5683`), then
//! `cargo run -p coap-blocking --example client_blocking coap://[::1]/hello`.

use std::time::{SystemTime, UNIX_EPOCH};

use coap_blocking::{
    CoapError, Code, IncomingRequest, ResourceAttributes, Response, Router, Server,
};

fn main() -> Result<(), coap_blocking::Error> {
    let app = Router::new()
        .get("/hello", |_req: IncomingRequest| {
            Response::content("Hello, CoAP!")
        })
        .get("/time", |_req: IncomingRequest| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Response::content(now.as_secs().to_string())
        })
        .attributes("/time", ResourceAttributes::new().rt("clock").ct(0u16))
        .post("/echo", |req: IncomingRequest| match req.payload_str() {
            Some(text) => Ok(Response::new(Code::CHANGED).with_payload(text.to_owned())),
            None => Err(CoapError::bad_request("send UTF-8 text")),
        });
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "[::]:5683".into());
    let server = Server::builder().workers(4).bind(addr.as_str())?;
    println!(
        "serving on {} (GET /.well-known/core lists the resources)",
        server.local_addr()
    );
    // Runs the I/O loop on this thread; handlers run on the four workers.
    server.serve(app)
}
