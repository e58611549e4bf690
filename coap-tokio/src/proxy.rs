//! A CoAP-to-CoAP forward and reverse proxy with a response cache: the rules and the cache of
//! [`coap_proto::proxy`], sending with a [`Client`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coap_proto::proxy::{self, CacheLimits, ProxyStats, Start, UpstreamError};
use coap_proto::uri::CoapUri;
use coap_proto::Response;

use crate::{Client, Error, IncomingRequest};

/// How long the proxy waits for the origin before answering 5.04 Gateway Timeout, unless
/// [`Proxy::upstream_timeout`] says otherwise.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// A proxy: mount [`Proxy::forward`] with [`Router::proxy`](crate::Router::proxy) to serve
/// requests that carry Proxy-Uri or Proxy-Scheme, and [`Proxy::reverse`] on a prefix route
/// to map part of the server's namespace onto an origin server. Clones share the cache.
///
/// ```no_run
/// # async fn run() -> Result<(), coap_tokio::Error> {
/// use coap_tokio::{Client, Proxy, Router, Server};
///
/// let proxy = Proxy::new(Client::bind("0.0.0.0:0").await?);
/// let (fwd, rev) = (proxy.clone(), proxy.reverse("coap://127.0.0.1:5684/")?);
/// let app = Router::new()
///     .proxy(move |req| {
///         let proxy = fwd.clone();
///         async move { proxy.forward(req).await }
///     })
///     .prefix_any("/sensors", rev);
/// Server::bind("[::]:5683").await?.serve(app).await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
    timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    state: Mutex<proxy::Proxy>,
    origin: tokio::time::Instant,
}

impl Proxy {
    /// A proxy that sends with `client`, with the default [`CacheLimits`].
    pub fn new(client: Client) -> Proxy {
        Proxy::with_cache(client, CacheLimits::default())
    }

    /// A proxy whose cache keeps within `limits` (all zero: no cache).
    pub fn with_cache(client: Client, limits: CacheLimits) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                client,
                state: Mutex::new(proxy::Proxy::new(limits)),
                origin: tokio::time::Instant::now(),
            }),
            timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }

    /// How long to wait for the origin before answering 5.04 Gateway Timeout.
    #[must_use]
    pub fn upstream_timeout(mut self, timeout: Duration) -> Proxy {
        self.timeout = timeout;
        self
    }

    /// What the proxy has done: cache hits and misses, revalidations, evictions, errors.
    pub fn stats(&self) -> ProxyStats {
        self.lock().stats()
    }

    /// Serves a request for a forward proxy: the destination is its Proxy-Uri, or its
    /// Proxy-Scheme and Uri-* options (RFC 7252 §5.7.2). A request with neither is answered
    /// 5.05 (route only such requests here, with [`Router::proxy`](crate::Router::proxy)).
    pub async fn forward(&self, request: IncomingRequest) -> Response {
        match proxy::forward_target(&request.message().options) {
            Ok(Some(target)) => self.serve(&request, target).await,
            Ok(None) => Response::new(coap_proto::msg::Code::PROXYING_NOT_SUPPORTED),
            Err(e) => e.response(),
        }
    }

    /// A handler for a prefix route (such as `Router::prefix_any("/sensors", handler)`) that
    /// forwards each request to `base` followed by the path below the prefix and the query
    /// (a reverse proxy, RFC 7252 §5.7.3). Fails if `base` is not a `coap://` URI.
    pub fn reverse(
        &self,
        base: &str,
    ) -> Result<impl Fn(IncomingRequest) -> ReverseFuture + Clone + Send + Sync + 'static, Error>
    {
        let base = CoapUri::parse(base)?;
        if base.scheme() != coap_proto::uri::Scheme::Coap {
            return Err(Error::UnsupportedScheme(base.scheme()));
        }
        let proxy = self.clone();
        Ok(move |request: IncomingRequest| {
            let proxy = proxy.clone();
            let target = proxy::reverse_target(&base, request.rest(), request.query());
            let future: ReverseFuture = Box::pin(async move {
                match target {
                    Ok(target) => proxy.serve(&request, target).await,
                    Err(e) => e.response(),
                }
            });
            future
        })
    }

    async fn serve(&self, request: &IncomingRequest, target: CoapUri) -> Response {
        let message = request.message();
        let start = self.lock().start(
            message.code,
            &message.options,
            &message.payload,
            target,
            self.now(),
        );
        let forward = match start {
            Start::Answer(response) => return response,
            Start::Forward(forward) => forward,
        };
        let mut builder = self
            .inner
            .client
            .request(forward.method(), forward.uri().to_string())
            .payload(forward.payload().clone())
            .timeout(self.timeout);
        for (number, value) in forward.options().iter() {
            builder = builder.option(number, value);
        }
        let outcome = match builder.await {
            Ok(response) => {
                let m = response.message();
                Ok(Response {
                    code: m.code,
                    options: m.options.clone(),
                    payload: m.payload.clone(),
                    message_type: None,
                })
            }
            Err(Error::Timeout) => Err(UpstreamError::Timeout),
            Err(_) => Err(UpstreamError::Failed),
        };
        self.lock().finish(forward, outcome, self.now())
    }

    fn now(&self) -> coap_proto::Instant {
        coap_proto::Instant::ZERO + self.inner.origin.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, proxy::Proxy> {
        // Never held across an await, and the engine's calls do not panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The future a [`Proxy::reverse`] handler returns.
pub type ReverseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'static>>;
