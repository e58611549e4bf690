//! A CoAP-to-CoAP forward and reverse proxy with a response cache: the rules and the cache of
//! [`coap_proto::proxy`], sending with a [`Client`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use coap_proto::host::{self, DestinationFilter, ProxyCore, ProxyStep, DEFAULT_UPSTREAM_TIMEOUT};
use coap_proto::proxy::{CacheLimits, ProxyStats};
use coap_proto::uri::CoapUri;
use coap_proto::Response;

use crate::client::RequestBuilder;
use crate::{Client, Error, IncomingRequest};

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
}

/// The future a [`Proxy::reverse`] handler returns.
pub type ProxyFuture = Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("client", &self.client)
            .field("core", &self.core)
            .field("timeout", &self.timeout)
            .field("filtered", &self.allow.is_some())
            .finish()
    }
}

impl Proxy {
    /// A proxy that sends with `client`, with the default [`CacheLimits`].
    pub fn new(client: Client) -> Proxy {
        Proxy::with_cache(client, CacheLimits::default())
    }

    /// A proxy whose cache keeps within `limits` (`max_entries: 0`: no cache).
    pub fn with_cache(client: Client, limits: CacheLimits) -> Proxy {
        Proxy {
            client,
            core: Arc::new(ProxyCore::new(limits)),
            allow: None,
            origin: std::time::Instant::now(),
            timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }

    /// How long to wait for the origin before answering 5.04 Gateway Timeout (default
    /// [`DEFAULT_UPSTREAM_TIMEOUT`]).
    #[must_use]
    pub fn upstream_timeout(mut self, timeout: Duration) -> Proxy {
        self.timeout = timeout;
        self
    }

    /// Forwards only to destinations `allow` accepts; the others are answered 5.05 Proxying
    /// Not Supported (RFC 7252 §5.7.2). Without it a forward proxy relays to any host, which
    /// on an address others can reach makes it an open relay. Reverse routes are not
    /// filtered: their destinations are the ones configured.
    #[must_use]
    pub fn allow_destinations(
        mut self,
        allow: impl Fn(&CoapUri) -> bool + Send + Sync + 'static,
    ) -> Proxy {
        self.allow = Some(Arc::new(allow));
        self
    }

    /// What the proxy has done: cache hits and misses, revalidations, evictions, errors.
    pub fn stats(&self) -> ProxyStats {
        self.core.stats()
    }

    /// Serves a request for a forward proxy, whose destination is in its Proxy-Uri, or its
    /// Proxy-Scheme and Uri-* options (RFC 7252 §5.7.2).
    pub async fn forward(&self, request: IncomingRequest) -> Response {
        let step = self
            .core
            .start_forward(&request, self.now(), self.timeout, self.allow.as_ref());
        self.run(step).await
    }

    /// A handler for a prefix route (`Router::prefix_any("/sensors", handler)`) that forwards
    /// each request to `base` followed by the path below the prefix and the query (a reverse
    /// proxy, RFC 7252 §5.7.3). Fails if `base` is not a `coap://` URI.
    pub fn reverse(
        &self,
        base: &str,
    ) -> Result<impl Fn(IncomingRequest) -> ProxyFuture + Clone + Send + Sync + 'static, Error>
    {
        let base = Arc::new(host::reverse_base(base)?);
        let proxy = self.clone();
        Ok(move |request: IncomingRequest| -> ProxyFuture {
            let step = proxy
                .core
                .start_reverse(&base, &request, proxy.now(), proxy.timeout);
            let proxy = proxy.clone();
            Box::pin(async move { proxy.run(step).await })
        })
    }

    async fn run(&self, step: ProxyStep) -> Response {
        match step {
            ProxyStep::Answer(response) => response,
            ProxyStep::Send(forward, spec) => {
                let outcome = RequestBuilder::from_spec(self.client.clone(), spec).await;
                self.core.finish(forward, outcome, self.now())
            }
        }
    }

    fn now(&self) -> coap_proto::Instant {
        coap_proto::Instant::ZERO + self.origin.elapsed()
    }
}
