//! A CoAP-to-CoAP forward and reverse proxy with a response cache: the rules and the cache of
//! [`coap_proto::proxy`], sending with a [`Client`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_proto::host::{self, DestinationFilter, ProxyCore, ProxyStep};
use coap_proto::Response;

use crate::client::{Observation, RequestBuilder};
use crate::{Client, Error, IncomingRequest, ServerHandle};

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
    relay: Option<ServerHandle>,
}

coap_proto::proxy_methods!(Instant);

impl Proxy {
    /// Serves a request for a forward proxy, whose destination is in its Proxy-Uri, or its
    /// Proxy-Scheme and Uri-* options (RFC 7252 §5.7.2). Blocks while the origin answers.
    pub fn forward(&self, request: IncomingRequest) -> Response {
        loop {
            let step = self.core.start_forward(
                &request,
                self.now(),
                self.timeout,
                self.allow.as_ref(),
                self.relay.is_some(),
            );
            match step {
                ProxyStep::Wait { key } => self.core.wait_relay_settled(&key, self.timeout),
                step => return self.run(step),
            }
        }
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
        Ok(move |request: IncomingRequest| loop {
            let step = proxy.core.start_reverse(
                &base,
                &request,
                proxy.now(),
                proxy.timeout,
                proxy.relay.is_some(),
            );
            match step {
                ProxyStep::Wait { key } => proxy.core.wait_relay_settled(&key, proxy.timeout),
                step => return proxy.run(step),
            }
        })
    }

    fn run(&self, step: ProxyStep) -> Response {
        match step {
            ProxyStep::Answer(response) => response,
            // `forward` and `reverse` wait themselves.
            ProxyStep::Wait { .. } => Response::new(coap_proto::msg::Code::SERVICE_UNAVAILABLE),
            ProxyStep::Send(forward, spec) => {
                let outcome = RequestBuilder::from_spec(self.client.clone(), spec).send();
                self.core.finish(forward, outcome, self.now())
            }
            ProxyStep::Observe { key, spec } => {
                let Some(server) = self.relay.clone() else {
                    self.core.relay_end(&key);
                    return Response::new(coap_proto::msg::Code::INTERNAL_SERVER_ERROR);
                };
                let mut observation =
                    match RequestBuilder::from_spec(self.client.clone(), spec).observe() {
                        Ok(observation) => observation,
                        Err(e) => return self.core.relay_first(&key, Some(Err(e))).0,
                    };
                let first = observation.next().map(|n| n.map(|n| n.into_response()));
                let (answer, registered) = self.core.relay_first(&key, first);
                if registered {
                    let proxy = self.clone();
                    let relay_key = key.clone();
                    let spawned = std::thread::Builder::new()
                        .name("coap-relay".into())
                        .spawn(move || proxy.relay(&relay_key, observation, &server));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start a thread to relay an observation");
                        self.core.relay_end(&key);
                        return Response::new(coap_proto::msg::Code::SERVICE_UNAVAILABLE);
                    }
                }
                answer
            }
        }
    }

    /// Passes the notifications of one observation of an origin on to the observers of its
    /// target, until the origin ends it or nobody observes the target any more.
    fn relay(&self, key: &str, mut observation: Observation, server: &ServerHandle) {
        let notifier = server.notifier(key);
        let started = self.now();
        loop {
            let next = observation.next().map(|n| n.map(|n| n.into_response()));
            let (representation, goes_on) = self.core.relay_next(key, next);
            let observers = notifier.notify_with(representation).unwrap_or(0);
            if !goes_on {
                break;
            }
            if observers == 0 && self.now() > started + host::RELAY_GRACE {
                // Nobody left: deregister from the origin (RFC 7641 §3.6).
                let _ = observation.cancel();
                break;
            }
        }
        self.core.relay_end(key);
    }
}
