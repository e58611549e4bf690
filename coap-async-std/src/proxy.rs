//! A CoAP-to-CoAP forward and reverse proxy with a response cache: the rules and the cache of
//! [`coap_proto::proxy`], sending with a [`Client`].

use std::sync::Arc;
use std::time::Duration;

use coap_proto::host::{DestinationFilter, ProxyCore};

use crate::client::{Observation, RequestBuilder};
use crate::{Client, Error, IncomingRequest, ServerHandle};

/// A proxy: mount [`Proxy::forward`] with [`Router::proxy`](crate::Router::proxy) to serve
/// requests that carry Proxy-Uri or Proxy-Scheme, and [`Proxy::reverse`] on a prefix route
/// to map part of the server's namespace onto an origin server. Clones share the cache.
///
/// ```no_run
/// # async fn run() -> Result<(), coap_async_std::Error> {
/// use coap_async_std::{Client, Proxy, Router, Server};
///
/// let proxy = Proxy::new(Client::bind("0.0.0.0:0").await?);
/// let forward = proxy.clone();
/// let app = Router::new()
///     .proxy(move |req| {
///         let proxy = forward.clone();
///         async move { proxy.forward(req).await }
///     })
///     .prefix_any("/sensors", proxy.reverse("coap://127.0.0.1:5684/")?);
/// Server::bind("[::]:5683").await?.serve(app).await
/// # }
/// ```
#[derive(Clone)]
pub struct Proxy {
    client: Client,
    core: Arc<ProxyCore>,
    allow: Option<DestinationFilter>,
    origin: std::time::Instant,
    timeout: Duration,
    relay: Option<ServerHandle>,
}

coap_proto::proxy_methods!(std::time::Instant);
coap_proto::async_proxy_methods!(spawn_relay);

/// Runs a relayed observation on a thread of its own: this crate has no executor to spawn
/// onto, and the relays are few ([`CacheLimits::max_relays`](coap_proto::proxy::CacheLimits::max_relays)).
fn spawn_relay(relay: impl std::future::Future<Output = ()> + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("coap-relay".into())
        .spawn(move || async_io::block_on(relay));
    if let Err(e) = spawned {
        // The observers keep their registration and re-register when its Max-Age runs out.
        tracing::warn!(error = %e, "cannot start a thread to relay an observation");
    }
}
