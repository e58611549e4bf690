//! A CoAP server on smol: `cargo run -p coap-async-std --example server_async_std [ADDR]`
//! (default `[::]:5683`), then
//! `cargo run -p coap-async-std --example client_async_std coap://[::1]/hello`.

use std::time::{SystemTime, UNIX_EPOCH};

use coap_async_std::{CoapError, Code, IncomingRequest, ResourceAttributes, Response, Router};

fn main() -> Result<(), coap_async_std::Error> {
    let app = Router::new()
        .get("/hello", |_req: IncomingRequest| async {
            Response::content("Hello, CoAP!")
        })
        .get("/time", |_req: IncomingRequest| async {
            let now = SystemTime::now().duration_since(UNIX_EPOCH);
            Response::content(now.unwrap_or_default().as_secs().to_string())
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
    smol::block_on(async {
        let server = coap_async_std::Server::bind(addr.as_str()).await?;
        println!("serving on {} (see /.well-known/core)", server.local_addr());
        server.serve(app).await
    })
}
