//! What the runtime crates' `Proxy` share: the [`proxy::Proxy`] behind a lock, and the
//! conversions between it, a request handed to a handler, and the client that forwards.

use alloc::string::ToString;
use alloc::sync::Arc;
use core::time::Duration;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Error, Incoming, IncomingResponse, RequestSpec};
use crate::msg::Code;
use crate::proxy::{self, CacheLimits, Forward, ProxyError, ProxyStats, Start, UpstreamError};
use crate::request::Response;
use crate::uri::{CoapUri, Scheme};
use crate::Instant;

/// How long a proxy waits for the origin before answering 5.04 Gateway Timeout, unless told
/// otherwise.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Which destinations a forward proxy serves: true to forward, false to answer 5.05.
pub type DestinationFilter = Arc<dyn Fn(&CoapUri) -> bool + Send + Sync>;

/// A [`proxy::Proxy`] that handlers on several tasks or threads share. The lock is held for
/// one decision at a time, never while a request is out.
#[derive(Debug)]
pub struct ProxyCore {
    state: Mutex<proxy::Proxy>,
}

/// What a proxy handler does next, from [`ProxyCore::start_forward`] or
/// [`ProxyCore::start_reverse`].
// Made once per request and matched at once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ProxyStep {
    /// Answer with this.
    Answer(Response),
    /// Send this request with the proxy's client, then call [`ProxyCore::finish`].
    Send(Forward, RequestSpec),
}

impl ProxyCore {
    /// A proxy whose cache keeps within `limits`.
    pub fn new(limits: CacheLimits) -> ProxyCore {
        ProxyCore {
            state: Mutex::new(proxy::Proxy::new(limits)),
        }
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        self.lock().stats()
    }

    /// Starts a forward-proxy request: the destination is in its Proxy-Uri, or Proxy-Scheme
    /// and Uri-* options (RFC 7252 §5.7.2). `timeout` bounds the request to the origin; a
    /// destination `allow` refuses is answered 5.05.
    pub fn start_forward(
        &self,
        request: &Incoming,
        now: Instant,
        timeout: Duration,
        allow: Option<&DestinationFilter>,
    ) -> ProxyStep {
        match proxy::forward_target(&request.message.options) {
            Ok(Some(target)) if allow.is_some_and(|allow| !allow(&target)) => {
                let refused = ProxyError::DestinationRefused(target.host().to_string());
                ProxyStep::Answer(refused.response())
            }
            Ok(Some(target)) => self.start(request, target, now, timeout),
            Ok(None) => ProxyStep::Answer(Response::new(Code::PROXYING_NOT_SUPPORTED)),
            Err(e) => ProxyStep::Answer(e.response()),
        }
    }

    /// Starts a reverse-proxy request: the destination is `base` followed by the request's
    /// path below its route's prefix, and its query (RFC 7252 §5.7.3).
    pub fn start_reverse(
        &self,
        base: &CoapUri,
        request: &Incoming,
        now: Instant,
        timeout: Duration,
    ) -> ProxyStep {
        match proxy::reverse_target(base, request.rest(), request.query()) {
            Ok(target) => match self.start(request, target, now, timeout) {
                ProxyStep::Send(mut forward, spec) => {
                    // The route's prefix: the segments the route matched.
                    let prefix = request.path().take(request.matched);
                    forward.map_locations(base.path(), prefix);
                    ProxyStep::Send(forward, spec)
                }
                answer => answer,
            },
            Err(e) => ProxyStep::Answer(e.response()),
        }
    }

    fn start(
        &self,
        request: &Incoming,
        target: CoapUri,
        now: Instant,
        timeout: Duration,
    ) -> ProxyStep {
        let m = &request.message;
        match self
            .lock()
            .start(m.code, &m.options, &m.payload, target, now)
        {
            Start::Answer(response) => ProxyStep::Answer(response),
            Start::Forward(forward) => {
                let mut spec = RequestSpec::new(forward.method(), forward.uri().to_string());
                for (number, value) in forward.options().iter() {
                    spec.push_option(number, value);
                }
                spec.set_payload(forward.payload().clone());
                spec.set_timeout(timeout);
                ProxyStep::Send(forward, spec)
            }
        }
    }

    /// Finishes a forwarded request with what the client got, and returns the answer.
    pub fn finish(
        &self,
        forward: Forward,
        outcome: Result<IncomingResponse, Error>,
        now: Instant,
    ) -> Response {
        let outcome = match outcome {
            Ok(response) => {
                let m = response.into_message();
                Ok(Response {
                    code: m.code,
                    options: m.options,
                    payload: m.payload,
                    message_type: None,
                })
            }
            // RFC 7252 §5.7.1: a timeout is 5.04, anything else the proxy cannot use 5.02.
            Err(Error::Timeout) => Err(UpstreamError::Timeout),
            Err(Error::Busy(_)) => Err(UpstreamError::Busy),
            Err(_) => Err(UpstreamError::Failed),
        };
        self.lock().finish(forward, outcome, now)
    }

    fn lock(&self) -> MutexGuard<'_, proxy::Proxy> {
        // The proxy's calls do not panic, and the lock is never held across a wait.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Parses the base URI of a reverse proxy: a `coap://` URI (this crate has no DTLS).
pub fn reverse_base(base: &str) -> Result<CoapUri, Error> {
    let uri = CoapUri::parse(base)?;
    if uri.scheme() != Scheme::Coap {
        return Err(Error::UnsupportedScheme(uri.scheme()));
    }
    Ok(uri)
}

/// Writes what a runtime crate's `Proxy` shares with the others: `new`, `with_cache`,
/// `upstream_timeout`, `allow_destinations`, `stats`, the private clock `now`, and `Debug`.
///
/// The `Proxy` must have the fields `client` (the crate's `Client`), `core`
/// (`Arc<ProxyCore>`), `origin` (an instant of the clock `$instant`, which has `now()` and
/// `elapsed()`), `timeout` (a `Duration`) and `allow` (`Option<DestinationFilter>`).
#[macro_export]
macro_rules! proxy_methods {
    ($instant:ty) => {
        impl Proxy {
            /// A proxy that sends with `client`, with the default
            /// [`CacheLimits`](coap_proto::proxy::CacheLimits).
            pub fn new(client: Client) -> Proxy {
                Proxy::with_cache(client, $crate::proxy::CacheLimits::default())
            }

            /// A proxy whose cache keeps within `limits` (`max_entries: 0`: no cache).
            pub fn with_cache(client: Client, limits: $crate::proxy::CacheLimits) -> Proxy {
                Proxy {
                    client,
                    core: ::std::sync::Arc::new($crate::host::ProxyCore::new(limits)),
                    origin: <$instant>::now(),
                    timeout: $crate::host::DEFAULT_UPSTREAM_TIMEOUT,
                    allow: None,
                }
            }

            /// How long to wait for the origin before answering 5.04 Gateway Timeout
            /// (default [`DEFAULT_UPSTREAM_TIMEOUT`](coap_proto::host::DEFAULT_UPSTREAM_TIMEOUT)).
            #[must_use]
            pub fn upstream_timeout(mut self, timeout: ::core::time::Duration) -> Proxy {
                self.timeout = timeout;
                self
            }

            /// Forwards only to destinations `allow` accepts; the others are answered 5.05
            /// Proxying Not Supported (RFC 7252 §5.7.2). Without it a forward proxy relays to
            /// any host, which on an address others can reach makes it an open relay. Reverse
            /// routes are not filtered: their destinations are the ones configured.
            #[must_use]
            pub fn allow_destinations(
                mut self,
                allow: impl Fn(&$crate::uri::CoapUri) -> bool + Send + Sync + 'static,
            ) -> Proxy {
                self.allow = Some(::std::sync::Arc::new(allow));
                self
            }

            /// What the proxy has done: cache hits and misses, revalidations, evictions,
            /// errors.
            pub fn stats(&self) -> $crate::proxy::ProxyStats {
                self.core.stats()
            }

            fn now(&self) -> $crate::Instant {
                $crate::Instant::ZERO + self.origin.elapsed()
            }
        }

        impl ::core::fmt::Debug for Proxy {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct("Proxy")
                    .field("client", &self.client)
                    .field("core", &self.core)
                    .field("timeout", &self.timeout)
                    .field("filtered", &self.allow.is_some())
                    .finish()
            }
        }
    };
}

/// Writes the request handlers of an async runtime crate's `Proxy`: `forward`, `reverse`
/// (with its `ProxyFuture`) and the private `run`, on top of [`proxy_methods!`].
///
/// The invoking module must have the crate's `IncomingRequest`, `RequestBuilder` (with a
/// `from_spec(Client, RequestSpec)` constructor it can await) and `Error` in scope.
#[macro_export]
macro_rules! async_proxy_methods {
    () => {
        /// The future a [`Proxy::reverse`] handler returns.
        pub type ProxyFuture = ::core::pin::Pin<
            ::std::boxed::Box<dyn ::core::future::Future<Output = $crate::Response> + Send>,
        >;

        impl Proxy {
            /// Serves a request for a forward proxy, whose destination is in its Proxy-Uri, or
            /// its Proxy-Scheme and Uri-* options (RFC 7252 §5.7.2).
            pub async fn forward(&self, request: IncomingRequest) -> $crate::Response {
                let step = self.core.start_forward(
                    &request,
                    self.now(),
                    self.timeout,
                    self.allow.as_ref(),
                );
                self.run(step).await
            }

            /// A handler for a prefix route (`Router::prefix_any("/sensors", handler)`) that
            /// forwards each request to `base` followed by the path below the prefix and the
            /// query (a reverse proxy, RFC 7252 §5.7.3). Fails if `base` is not a `coap://`
            /// URI.
            pub fn reverse(
                &self,
                base: &str,
            ) -> Result<
                impl Fn(IncomingRequest) -> ProxyFuture + Clone + Send + Sync + 'static,
                Error,
            > {
                let base = ::std::sync::Arc::new($crate::host::reverse_base(base)?);
                let proxy = self.clone();
                Ok(move |request: IncomingRequest| -> ProxyFuture {
                    let step =
                        proxy
                            .core
                            .start_reverse(&base, &request, proxy.now(), proxy.timeout);
                    let proxy = proxy.clone();
                    ::std::boxed::Box::pin(async move { proxy.run(step).await })
                })
            }

            async fn run(&self, step: $crate::host::ProxyStep) -> $crate::Response {
                match step {
                    $crate::host::ProxyStep::Answer(response) => response,
                    $crate::host::ProxyStep::Send(forward, spec) => {
                        let outcome = RequestBuilder::from_spec(self.client.clone(), spec).await;
                        self.core.finish(forward, outcome, self.now())
                    }
                }
            }
        }
    };
}
