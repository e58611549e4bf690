//! A CoAP server: `cargo run -p coap-tokio --example server [ADDR]` (default `[::]:5683`),
//! then `cargo run -p coap-tokio --example client coap://[::1]/hello`. Ctrl-C stops it.

use std::time::{SystemTime, UNIX_EPOCH};

use coap_tokio::{CoapError, Code, IncomingRequest, ResourceAttributes, Response, Router, Server};

#[tokio::main]
async fn main() -> Result<(), coap_tokio::Error> {
    let app = Router::new()
        .get("/hello", |_req: IncomingRequest| async {
            Response::content("Hello, CoAP!")
        })
        .get("/time", |_req: IncomingRequest| async {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Response::content(now.as_secs().to_string())
        })
        .attributes("/time", ResourceAttributes::new().rt("clock").ct(0u16))
        .post("/echo", |req: IncomingRequest| async move {
            match req.payload_str() {
                Some(text) => Ok(Response::new(Code::CHANGED).with_payload(text.to_owned())),
                None => Err(CoapError::bad_request("send UTF-8 text")),
            }
        });
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "[::]:5683".into());
    let server = Server::bind(addr.as_str()).await?;
    println!(
        "serving on {} (GET /.well-known/core lists the resources)",
        server.local_addr()
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server.serve_with_shutdown(app, ctrl_c).await
}
