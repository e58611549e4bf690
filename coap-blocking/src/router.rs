//! The [`Router`]: handlers by path and method, over the engine's routing layer
//! ([`coap_proto::resource::Router`]), which decides 4.04, 4.05 and `/.well-known/core`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use coap_proto::link_format::LinkFormatError;
use coap_proto::msg::Code;
use coap_proto::resource::ResourceAttributes;
use coap_proto::resource::{self, Resolution, RouteInfo};
use coap_proto::Response;

use crate::incoming::{IncomingRequest, IntoReply, Reply};

/// A handler as the routing table stores it.
pub(crate) type BoxedHandler = Arc<dyn Fn(IncomingRequest) -> Reply + Send + Sync>;

/// Handlers by path and method, and the attributes `/.well-known/core` lists.
///
/// A handler is any `Fn(IncomingRequest) -> R + Send + Sync` where `R` is a [`Response`], a
/// `Result<Response, CoapError>`, a [`Deferred`](crate::Deferred) or a [`Reply`]; unlike
/// `coap-tokio`, where it returns a future of one. It runs on one of the server's worker
/// threads and may block for as long as it needs: the engine sends an empty ACK and a
/// separate response (RFC 7252 §5.2.2).
///
/// Unknown paths are answered 4.04, methods a route does not serve 4.05, and a GET for
/// `/.well-known/core` with the routes in link-format, filtered by the query (RFC 6690 §4.1).
///
/// ```
/// use coap_blocking::{CoapError, Code, IncomingRequest, Response, Router};
///
/// let app = Router::new()
///     .get("/hello", |_req: IncomingRequest| Response::content("hi"))
///     .put("/config", |req: IncomingRequest| match req.payload_str() {
///         Some(_) => Ok(Response::new(Code::CHANGED)),
///         None => Err(CoapError::bad_request("not UTF-8")),
///     })
///     .prefix_get("/files", |req: IncomingRequest| {
///         Response::content(req.rest().collect::<Vec<_>>().join("/"))
///     });
/// # let _ = app;
/// ```
#[derive(Clone, Default)]
pub struct Router {
    inner: resource::Router<BoxedHandler>,
    /// Observable routes by normalized path.
    observable: HashMap<String, ObserveHooks>,
}

/// Hooks of an observable route (see [`Router::observable_with`]).
#[derive(Clone, Default)]
pub struct ObserveHooks {
    accept: Option<AcceptHook>,
    on_count: Option<CountHook>,
}

/// Decides whether a registration is accepted.
type AcceptHook = Arc<dyn Fn(&IncomingRequest) -> bool + Send + Sync>;

/// Learns the number of observers.
type CountHook = Arc<dyn Fn(usize) + Send + Sync>;

impl fmt::Debug for ObserveHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveHooks")
            .field("accept", &self.accept.is_some())
            .field("on_count", &self.on_count.is_some())
            .finish()
    }
}

impl ObserveHooks {
    /// No hooks: every registration is accepted.
    pub fn new() -> ObserveHooks {
        ObserveHooks::default()
    }

    /// Decides whether a registration is accepted; a declined one is answered as a plain GET,
    /// without Observe (RFC 7641 §4.1). Runs on the I/O thread: keep it short.
    pub fn accept(mut self, f: impl Fn(&IncomingRequest) -> bool + Send + Sync + 'static) -> Self {
        self.accept = Some(Arc::new(f));
        self
    }

    /// Called with the new number of observers whenever it changes. Runs on the I/O thread:
    /// keep it short.
    pub fn on_observer_count(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_count = Some(Arc::new(f));
        self
    }
}

pub(crate) use coap_proto::resource::normalize_path as normalize;

fn boxed<H, R>(handler: H) -> BoxedHandler
where
    H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
    R: IntoReply,
{
    Arc::new(move |req| handler(req).into_reply())
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for route in self.inner.routes() {
            list.entry(&format_args!(
                "{}{} {:?}",
                route.path,
                if route.prefix { "/*" } else { "" },
                route.methods
            ));
        }
        list.finish()
    }
}

/// What routing made of a request.
pub(crate) enum Routed {
    /// Answered without a handler (4.04, 4.05, `/.well-known/core`).
    Answer(Response),
    /// A handler is to run.
    Handler {
        handler: BoxedHandler,
        request: IncomingRequest,
        /// A registration on an observable route that its hook accepts.
        accept_observer: bool,
    },
}

impl Router {
    /// An empty router: every path is 4.04.
    pub fn new() -> Router {
        Router::default()
    }

    /// Serves `method` on exactly `path`.
    pub fn route<H, R>(mut self, path: &str, method: Code, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        self.inner.add(path, method, boxed(handler));
        self
    }

    /// Serves every method on exactly `path` (methods with their own route win).
    pub fn any<H, R>(mut self, path: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        self.inner.add_any(path, boxed(handler));
        self
    }

    /// Serves `method` on `prefix` and every path below it; the handler finds the segments
    /// below in [`IncomingRequest::rest`].
    pub fn prefix<H, R>(mut self, prefix: &str, method: Code, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        self.inner.add_prefix(prefix, method, boxed(handler));
        self
    }

    /// Serves GET on `prefix` and every path below it.
    pub fn prefix_get<H, R>(self, prefix: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        self.prefix(prefix, Code::GET, handler)
    }

    /// Serves every method on `prefix` and every path below it.
    pub fn prefix_any<H, R>(mut self, prefix: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        self.inner.add_prefix_any(prefix, boxed(handler));
        self
    }

    /// Sets what `/.well-known/core` lists for `path` (rt, if, ct, sz, title, obs, or hidden).
    /// An observable route keeps `obs`.
    pub fn attributes(mut self, path: &str, mut attributes: ResourceAttributes) -> Router {
        if self.observable.contains_key(&normalize(path)) {
            attributes.observable = true;
        }
        self.inner.set_attributes(path, attributes);
        self
    }

    /// Serves GET on `path` as an observable resource (RFC 7641): a GET with Observe = 0
    /// registers the client, and each change announced through a
    /// [`Notifier`](crate::Notifier) reaches it. The handler answers registrations and plain
    /// GETs, and renders the new state after a [`Notifier::notify`](crate::Notifier::notify)
    /// (see [`IncomingRequest::is_notification_render`]).
    pub fn observable<H, R>(self, path: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        self.observable_with(path, handler, ObserveHooks::new())
    }

    /// [`observable`](Router::observable) with hooks.
    pub fn observable_with<H, R>(mut self, path: &str, handler: H, hooks: ObserveHooks) -> Router
    where
        H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
        R: IntoReply,
    {
        self.observable.insert(normalize(path), hooks);
        let attributes = self
            .inner
            .attributes(path)
            .cloned()
            .unwrap_or_default()
            .observable();
        self.inner.set_attributes(path, attributes);
        self.route(path, Code::GET, handler)
    }

    /// Mounts `other` under `prefix`.
    pub fn nest(mut self, prefix: &str, other: Router) -> Router {
        self.inner.nest(prefix, other.inner);
        let prefix = normalize(prefix);
        for (path, hooks) in other.observable {
            let full = match (prefix.as_str(), path.as_str()) {
                ("/", p) => p.to_owned(),
                (pre, "/") => pre.to_owned(),
                (pre, p) => format!("{pre}{p}"),
            };
            self.observable.insert(full, hooks);
        }
        self
    }

    /// Every route, depth first in registration order.
    pub fn routes(&self) -> impl Iterator<Item = RouteInfo<'_>> {
        self.inner.routes()
    }

    /// The `/.well-known/core` document for the query arguments `queries` (RFC 6690 §4.1).
    pub fn well_known_core<'q>(
        &self,
        queries: impl IntoIterator<Item = &'q str>,
    ) -> Result<String, LinkFormatError> {
        self.inner.well_known_core(queries)
    }

    /// Finds what answers `request`.
    pub(crate) fn route_request(&self, mut request: IncomingRequest) -> Routed {
        let resolution = self
            .inner
            .resolve(request.message.code, request.message.options.uri_path());
        match resolution {
            Resolution::Found {
                handler,
                rest,
                route,
            } => {
                let hooks = if route.prefix {
                    None
                } else {
                    self.observable.get(route.path)
                };
                request.matched = rest.start;
                let accept_observer = hooks.is_some_and(|h| {
                    request.is_observe_registration()
                        && h.accept.as_ref().is_none_or(|accept| accept(&request))
                });
                Routed::Handler {
                    handler: Arc::clone(handler),
                    request,
                    accept_observer,
                }
            }
            Resolution::WellKnownCore => {
                let response = self
                    .inner
                    .well_known_core_response(&request.message.options);
                // RFC 6690 §4.1: a multicast query that matches nothing gets no answer (an
                // error code, which the engine suppresses for multicast, RFC 7252 §8.2).
                if request.multicast && response.payload.is_empty() {
                    Routed::Answer(Response::new(Code::NOT_FOUND))
                } else {
                    Routed::Answer(response)
                }
            }
            Resolution::NotFound => Routed::Answer(Response::new(Code::NOT_FOUND)),
            Resolution::MethodNotAllowed => Routed::Answer(Response::new(Code::METHOD_NOT_ALLOWED)),
        }
    }

    /// The number of observers of `path` changed.
    pub(crate) fn observers_changed(&self, path: &str, count: usize) {
        if let Some(on_count) = self.observable.get(path).and_then(|h| h.on_count.as_ref()) {
            on_count(count);
        }
    }
}

macro_rules! method_routes {
    ($($(#[$doc:meta])* $name:ident => $code:expr;)*) => {
        impl Router {
            $(
                $(#[$doc])*
                pub fn $name<H, R>(self, path: &str, handler: H) -> Router
                where
                    H: Fn(IncomingRequest) -> R + Send + Sync + 'static,
                    R: IntoReply,
                {
                    self.route(path, $code, handler)
                }
            )*
        }
    };
}

method_routes! {
    /// Serves GET on exactly `path`.
    get => Code::GET;
    /// Serves POST on exactly `path`.
    post => Code::POST;
    /// Serves PUT on exactly `path`.
    put => Code::PUT;
    /// Serves DELETE on exactly `path`.
    delete => Code::DELETE;
    /// Serves FETCH (RFC 8132) on exactly `path`.
    fetch => Code::FETCH;
    /// Serves PATCH (RFC 8132) on exactly `path`.
    patch => Code::PATCH;
    /// Serves iPATCH (RFC 8132) on exactly `path`.
    ipatch => Code::IPATCH;
}
