//! What the runtime crates' `Proxy` share: the [`proxy::Proxy`] behind a lock, and the
//! conversions between it, a request handed to a handler, and the client that forwards.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::{Error, Incoming, IncomingResponse, RequestSpec};
use crate::msg::Code;
use crate::proxy::{
    self, CacheLimits, Forward, ObserveStart, ProxyError, ProxyStats, Start, UpstreamError,
};
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
    state: Mutex<State>,
    /// Signalled, like the wakers, when a relayed observation stops waiting for its
    /// origin's first answer (for blocking hosts).
    settled: Condvar,
}

#[derive(Debug)]
struct State {
    proxy: proxy::Proxy,
    /// Tasks waiting for a relayed observation to settle ([`ProxyStep::Wait`]).
    waiters: Vec<Waker>,
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
    /// Another registration is opening the observation of this target: wait until it has
    /// settled ([`ProxyCore::relay_settled`], or [`ProxyCore::wait_relay_settled`]), then
    /// start the request again.
    Wait {
        /// The relayed observation.
        key: String,
    },
    /// Observe the origin with this request, on behalf of every client observing the target
    /// `key` ([`proxy::observe_key`]): hand its first answer to [`ProxyCore::relay_first`]
    /// and each later one to [`ProxyCore::relay_next`], notifying the observers of `key` on
    /// the proxy's server, and end with [`ProxyCore::relay_end`].
    Observe {
        /// The name the server keeps the target's observers under.
        key: String,
        /// The registration to send to the origin.
        spec: RequestSpec,
    },
}

/// How long a relayed observation goes on while its target has no observer: the first
/// registration's answer may still be on its way to the engine when the origin's next
/// notification comes.
pub const RELAY_GRACE: Duration = Duration::from_secs(5);

impl ProxyCore {
    /// A proxy whose cache keeps within `limits`.
    pub fn new(limits: CacheLimits) -> ProxyCore {
        ProxyCore {
            state: Mutex::new(State {
                proxy: proxy::Proxy::new(limits),
                waiters: Vec::new(),
            }),
            settled: Condvar::new(),
        }
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        self.lock().proxy.stats()
    }

    /// Starts a forward-proxy request: the destination is in its Proxy-Uri, or Proxy-Scheme
    /// and Uri-* options (RFC 7252 §5.7.2). `timeout` bounds the request to the origin; a
    /// destination `allow` refuses is answered 5.05. With `relay`, an observe registration
    /// is relayed ([`ProxyStep::Observe`], RFC 7641 §5); without it, it is forwarded as a
    /// plain request and answered without Observe.
    pub fn start_forward(
        &self,
        request: &Incoming,
        now: Instant,
        timeout: Duration,
        allow: Option<&DestinationFilter>,
        relay: bool,
    ) -> ProxyStep {
        match proxy::forward_target(&request.message.options) {
            Ok(Some(target)) if allow.is_some_and(|allow| !allow(&target)) => {
                let refused = ProxyError::DestinationRefused(target.host().to_string());
                ProxyStep::Answer(refused.response())
            }
            Ok(Some(target)) if relay && request.is_observe_registration() => {
                let key = target.to_string();
                self.start_observe(key, request, target, now, timeout)
            }
            Ok(Some(target)) => self.start(request, target, now, timeout),
            Ok(None) => ProxyStep::Answer(Response::new(Code::PROXYING_NOT_SUPPORTED)),
            Err(e) => ProxyStep::Answer(e.response()),
        }
    }

    /// Starts a reverse-proxy request: the destination is `base` followed by the request's
    /// path below its route's prefix, and its query (RFC 7252 §5.7.3). With `relay`, an
    /// observe registration without a query is relayed ([`ProxyStep::Observe`]; the server
    /// keeps the observers under the request's own path).
    pub fn start_reverse(
        &self,
        base: &CoapUri,
        request: &Incoming,
        now: Instant,
        timeout: Duration,
        relay: bool,
    ) -> ProxyStep {
        match proxy::reverse_target(base, request.rest(), request.query()) {
            // The server keeps observers by path, every query's together: a registration
            // with a query would share their notifications, so it is not relayed.
            Ok(target)
                if relay
                    && request.is_observe_registration()
                    && request.query().next().is_none() =>
            {
                let key = request.path_string();
                self.start_observe(key, request, target, now, timeout)
            }
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

    fn start_observe(
        &self,
        key: String,
        request: &Incoming,
        target: CoapUri,
        now: Instant,
        timeout: Duration,
    ) -> ProxyStep {
        let m = &request.message;
        let started = self
            .lock()
            .proxy
            .start_observe(&key, m.code, &m.options, &m.payload, target, now);
        match started {
            ObserveStart::Answer(response) => ProxyStep::Answer(response),
            ObserveStart::Observe(forward) => ProxyStep::Observe {
                key,
                spec: spec_for(&forward, timeout),
            },
            ObserveStart::Plain(start) => step(start, timeout),
            ObserveStart::Wait => ProxyStep::Wait { key },
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
        let start = self
            .lock()
            .proxy
            .start(m.code, &m.options, &m.payload, target, now);
        step(start, timeout)
    }

    /// Finishes a forwarded request with what the client got, and returns the answer.
    pub fn finish(
        &self,
        forward: Forward,
        outcome: Result<IncomingResponse, Error>,
        now: Instant,
    ) -> Response {
        let outcome = upstream_outcome(outcome);
        self.lock().proxy.finish(forward, outcome, now)
    }

    /// Passes on the first answer of the relayed observation `key`: returns the answer for
    /// the registering client and whether the origin took the registration. If it did, the
    /// answer carries Observe (so the server puts the client on the list) and the
    /// observation goes on; if not, the relay ends here and the answer carries none.
    pub fn relay_first(
        &self,
        key: &str,
        first: Option<Result<IncomingResponse, Error>>,
    ) -> (Response, bool) {
        let (mut response, registered) = self.relay(key, first);
        if registered {
            response.options.set_observe(0);
        } else {
            self.relay_end(key);
        }
        (response, registered)
    }

    /// Passes on a later notification of the relayed observation `key` (`None` when the
    /// client's observation ended): returns the representation for the observers and
    /// whether the origin's observation goes on. When it does not, notify the observers
    /// with the representation and call [`relay_end`](ProxyCore::relay_end).
    pub fn relay_next(
        &self,
        key: &str,
        next: Option<Result<IncomingResponse, Error>>,
    ) -> (Response, bool) {
        self.relay(key, next)
    }

    /// Ends the relayed observation `key`.
    pub fn relay_end(&self, key: &str) {
        let mut state = self.lock();
        state.proxy.relay_end(key);
        self.wake(state);
    }

    /// Resolves once the relayed observation `key` no longer waits for its origin's first
    /// answer (see [`ProxyStep::Wait`]).
    pub fn relay_settled<'a>(&'a self, key: &'a str) -> RelaySettled<'a> {
        RelaySettled { core: self, key }
    }

    /// Blocks until the relayed observation `key` no longer waits for its origin's first
    /// answer, or `limit` has passed (see [`ProxyStep::Wait`]).
    pub fn wait_relay_settled(&self, key: &str, limit: Duration) {
        let state = self.lock();
        let _waited = self
            .settled
            .wait_timeout_while(state, limit, |s| s.proxy.relay_pending(key))
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Wakes whoever waits for a relayed observation to settle, after a change.
    fn wake(&self, mut state: MutexGuard<'_, State>) {
        let waiters = core::mem::take(&mut state.waiters);
        drop(state);
        self.settled.notify_all();
        for waker in waiters {
            waker.wake();
        }
    }

    fn relay(&self, key: &str, item: Option<Result<IncomingResponse, Error>>) -> (Response, bool) {
        // `None`: the client's observation ended without a word from the origin.
        let outcome = item.map_or(Err(UpstreamError::Failed), upstream_outcome);
        // A 2.xx with Observe: the origin keeps the proxy on its list (RFC 7641 §3.2).
        let goes_on = outcome
            .as_ref()
            .is_ok_and(|r| r.code.is_success() && r.options.observe().is_some());
        let mut state = self.lock();
        let response = state.proxy.relay_notification(key, outcome);
        self.wake(state);
        (response, goes_on)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The proxy's calls do not panic, and the lock is never held across a wait.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The future of [`ProxyCore::relay_settled`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct RelaySettled<'a> {
    core: &'a ProxyCore,
    key: &'a str,
}

impl Future for RelaySettled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.core.lock();
        if !state.proxy.relay_pending(self.key) {
            return Poll::Ready(());
        }
        // Registered under the lock that every change takes, so no wake-up is missed.
        if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            state.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// What the proxy's client got from the origin, as the proxy's rules take it: RFC 7252
/// §5.7.1 makes a timeout 5.04 and anything else the proxy cannot use 5.02.
fn upstream_outcome(outcome: Result<IncomingResponse, Error>) -> Result<Response, UpstreamError> {
    match outcome {
        Ok(response) => {
            let m = response.into_message();
            Ok(Response {
                code: m.code,
                options: m.options,
                payload: m.payload,
                message_type: None,
            })
        }
        Err(Error::Timeout) => Err(UpstreamError::Timeout),
        Err(Error::Busy(_)) => Err(UpstreamError::Busy),
        Err(_) => Err(UpstreamError::Failed),
    }
}

/// The request a proxy sends for `forward`.
fn spec_for(forward: &Forward, timeout: Duration) -> RequestSpec {
    let mut spec = RequestSpec::new(forward.method(), forward.uri().to_string());
    for (number, value) in forward.options().iter() {
        spec.push_option(number, value);
    }
    spec.set_payload(forward.payload().clone());
    spec.set_timeout(timeout);
    spec
}

/// The step for what [`proxy::Proxy::start`] decided.
fn step(start: Start, timeout: Duration) -> ProxyStep {
    match start {
        Start::Answer(response) => ProxyStep::Answer(response),
        Start::Forward(forward) => {
            let spec = spec_for(&forward, timeout);
            ProxyStep::Send(forward, spec)
        }
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
/// `upstream_timeout`, `allow_destinations`, `relay_observations`, `stats`, the private
/// clock `now`, and `Debug`.
///
/// The `Proxy` must have the fields `client` (the crate's `Client`), `core`
/// (`Arc<ProxyCore>`), `origin` (an instant of the clock `$instant`, which has `now()` and
/// `elapsed()`), `timeout` (a `Duration`), `allow` (`Option<DestinationFilter>`) and
/// `relay` (`Option<ServerHandle>`, the crate's server handle).
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
                    relay: None,
                }
            }

            /// Relays observations through the forward proxy and the reverse routes (RFC 7641
            /// §5): a registration for a target is forwarded as an observation of the
            /// origin, one for every client observing that target, and each notification is
            /// passed on to them through `server`, the handle of the server this proxy's
            /// routes serve on.
            /// Without it, a registration through the proxy is answered once, without
            /// Observe (§4.1: the client is not on a list). At most
            /// [`CacheLimits::max_relays`](coap_proto::proxy::CacheLimits::max_relays)
            /// targets are observed at once; an observation of the origin ends when the
            /// origin ends it, or at the first notification once no client observes the
            /// target any more.
            #[must_use]
            pub fn relay_observations(mut self, server: ServerHandle) -> Proxy {
                self.relay = Some(server);
                self
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
                    .field("relays_observations", &self.relay.is_some())
                    .finish()
            }
        }
    };
}

/// Writes the request handlers of an async runtime crate's `Proxy`: `forward`, `reverse`
/// (with its `ProxyFuture`) and the private `run` and `relay`, on top of [`proxy_methods!`].
///
/// The invoking module must have the crate's `IncomingRequest`, `RequestBuilder` (with a
/// `from_spec(Client, RequestSpec)` constructor it can await, and `observe()`),
/// `Observation`, `ServerHandle` and `Error` in scope. `$spawn` runs a relayed observation's
/// future (`Send + 'static`) to its end in the background.
#[macro_export]
macro_rules! async_proxy_methods {
    ($spawn:path) => {
        /// The future a [`Proxy::reverse`] handler returns.
        pub type ProxyFuture = ::core::pin::Pin<
            ::std::boxed::Box<dyn ::core::future::Future<Output = $crate::Response> + Send>,
        >;

        impl Proxy {
            /// Serves a request for a forward proxy, whose destination is in its Proxy-Uri, or
            /// its Proxy-Scheme and Uri-* options (RFC 7252 §5.7.2).
            pub async fn forward(&self, request: IncomingRequest) -> $crate::Response {
                loop {
                    let step = self.core.start_forward(
                        &request,
                        self.now(),
                        self.timeout,
                        self.allow.as_ref(),
                        self.relay.is_some(),
                    );
                    match step {
                        $crate::host::ProxyStep::Wait { key } => {
                            self.core.relay_settled(&key).await;
                        }
                        step => return self.run(step).await,
                    }
                }
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
                    let proxy = proxy.clone();
                    let base = ::std::sync::Arc::clone(&base);
                    ::std::boxed::Box::pin(async move {
                        loop {
                            let step = proxy.core.start_reverse(
                                &base,
                                &request,
                                proxy.now(),
                                proxy.timeout,
                                proxy.relay.is_some(),
                            );
                            match step {
                                $crate::host::ProxyStep::Wait { key } => {
                                    proxy.core.relay_settled(&key).await;
                                }
                                step => return proxy.run(step).await,
                            }
                        }
                    })
                })
            }

            async fn run(&self, step: $crate::host::ProxyStep) -> $crate::Response {
                match step {
                    $crate::host::ProxyStep::Answer(response) => response,
                    // `forward` and `reverse` wait themselves.
                    $crate::host::ProxyStep::Wait { .. } => {
                        $crate::Response::new($crate::msg::Code::SERVICE_UNAVAILABLE)
                    }
                    $crate::host::ProxyStep::Send(forward, spec) => {
                        let outcome = RequestBuilder::from_spec(self.client.clone(), spec).await;
                        self.core.finish(forward, outcome, self.now())
                    }
                    $crate::host::ProxyStep::Observe { key, spec } => {
                        let Some(server) = self.relay.clone() else {
                            self.core.relay_end(&key);
                            return $crate::Response::new($crate::msg::Code::INTERNAL_SERVER_ERROR);
                        };
                        let observed = RequestBuilder::from_spec(self.client.clone(), spec)
                            .observe()
                            .await;
                        let mut observation = match observed {
                            Ok(observation) => observation,
                            Err(e) => return self.core.relay_first(&key, Some(Err(e))).0,
                        };
                        let first = observation
                            .next()
                            .await
                            .map(|n| n.map(|n| n.into_response()));
                        let (answer, registered) = self.core.relay_first(&key, first);
                        if registered {
                            $spawn(self.clone().relay(key, observation, server));
                        }
                        answer
                    }
                }
            }

            /// Passes the notifications of one observation of an origin on to the observers
            /// of its target, until the origin ends it or nobody observes the target any
            /// more.
            async fn relay(
                self,
                key: ::std::string::String,
                mut observation: Observation,
                server: ServerHandle,
            ) {
                let notifier = server.notifier(&key);
                let started = self.now();
                loop {
                    let next = observation
                        .next()
                        .await
                        .map(|n| n.map(|n| n.into_response()));
                    let (representation, goes_on) = self.core.relay_next(&key, next);
                    let observers = notifier.notify_with(representation).await.unwrap_or(0);
                    if !goes_on {
                        break;
                    }
                    if observers == 0 && self.now() > started + $crate::host::RELAY_GRACE {
                        // Nobody left: deregister from the origin (RFC 7641 §3.6).
                        let _ = observation.cancel().await;
                        break;
                    }
                }
                self.core.relay_end(&key);
            }
        }
    };
}
