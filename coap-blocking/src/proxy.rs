//! A CoAP-to-CoAP forward and reverse proxy with a response cache: the rules and the cache of
//! [`coap_proto::proxy`], sending with a [`Client`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_proto::host::{self, DestinationFilter, ProxyCore, ProxyStep};
use coap_proto::Response;

use crate::client::RequestBuilder;
use crate::{Client, Error, IncomingRequest};

/// A proxy: mount [`Proxy::forward`] with [`Router::proxy`](crate::Router::proxy) to serve
/// requests that carry Proxy-Uri or Proxy-Scheme, and [`Proxy::reverse`] on a prefix route
/// to map part of the server's namespace onto an origin server. Clones share the cache.
///
/// Each forwarded request holds a worker while it waits for the origin, so give the server
/// as many workers as requests should be in flight at once
/// ([`ServerBuilder::workers`](crate::ServerBuilder::workers)). With `workers(0)` a forwarded
/// request would hold the server's I/O thread for the whole wait, stalling everything else
/// it serves.
///
/// ```no_run
/// # fn run() -> Result<(), coap_blocking::Error> {
/// use coap_blocking::{Client, Proxy, Router, Server};
///
/// let proxy = Proxy::new(Client::bind("0.0.0.0:0")?);
/// let forward = proxy.clone();
/// let app = Router::new()
///     .proxy(move |req| forward.forward(req))
///     .prefix_any("/sensors", proxy.reverse("coap://127.0.0.1:5684/")?);
/// Server::bind("[::]:5683")?.serve(app)
/// # }
/// ```
#[derive(Clone)]
pub struct Proxy {
    client: Client,
    core: Arc<ProxyCore>,
    allow: Option<DestinationFilter>,
    origin: Instant,
    timeout: Duration,
}

coap_proto::proxy_methods!(Instant);

impl Proxy {
    /// Serves a request for a forward proxy, whose destination is in its Proxy-Uri, or its
    /// Proxy-Scheme and Uri-* options (RFC 7252 §5.7.2). Blocks while the origin answers.
    pub fn forward(&self, request: IncomingRequest) -> Response {
        let step = self
            .core
            .start_forward(&request, self.now(), self.timeout, self.allow.as_ref());
        self.run(step)
    }

    /// A handler for a prefix route (`Router::prefix_any("/sensors", handler)`) that forwards
    /// each request to `base` followed by the path below the prefix and the query (a reverse
    /// proxy, RFC 7252 §5.7.3). Fails if `base` is not a `coap://` URI.
    pub fn reverse(
        &self,
        base: &str,
    ) -> Result<impl Fn(IncomingRequest) -> Response + Clone + Send + Sync + 'static, Error> {
        let base = Arc::new(host::reverse_base(base)?);
        let proxy = self.clone();
        Ok(move |request: IncomingRequest| {
            let step = proxy
                .core
                .start_reverse(&base, &request, proxy.now(), proxy.timeout);
            proxy.run(step)
        })
    }

    fn run(&self, step: ProxyStep) -> Response {
        match step {
            ProxyStep::Answer(response) => response,
            ProxyStep::Send(forward, spec) => {
                let outcome = RequestBuilder::from_spec(self.client.clone(), spec).send();
                self.core.finish(forward, outcome, self.now())
            }
        }
    }
}
