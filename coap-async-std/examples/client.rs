//! A CoAP client: `cargo run -p coap-async-std --example client_async_std [URI] [PAYLOAD]`.
//! With a payload it POSTs, without it GETs; the default URI is `coap://[::1]/hello`.

use std::time::Duration;

use coap_async_std::{Client, ContentFormat};

#[async_std::main]
async fn main() -> Result<(), coap_async_std::Error> {
    let mut args = std::env::args().skip(1);
    let uri = args.next().unwrap_or_else(|| "coap://[::1]/hello".into());
    let client = Client::bind("[::]:0").await?;
    let request = match args.next() {
        Some(body) => client
            .post(uri.as_str())
            .payload(body)
            .content_format(ContentFormat::TEXT_PLAIN),
        None => client.get(uri.as_str()),
    };
    let rsp = request.timeout(Duration::from_secs(10)).await?;
    println!("{} from {}", rsp.code(), rsp.peer());
    match rsp.payload_str() {
        Some(text) => println!("{text}"),
        None => println!("<{} bytes of binary data>", rsp.payload().len()),
    }
    Ok(())
}
