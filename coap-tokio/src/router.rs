//! The [`Router`]: async handlers by path and method, on top of the engine's routing layer
//! ([`coap_proto::resource::Router`]), which decides 4.04, 4.05 and `/.well-known/core`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use coap_proto::link_format::LinkFormatError;
use coap_proto::msg::Code;
use coap_proto::resource::{self, Resolution, ResourceAttributes, RouteInfo};
use coap_proto::Response;

use crate::driver::{Dispatch, HandlerFuture, Service};
use crate::incoming::{IncomingRequest, IntoReply, Reply};

/// A handler with its future boxed, as the routing table stores it.
type BoxedHandler = Arc<dyn Fn(IncomingRequest) -> HandlerFuture + Send + Sync>;

/// Async handlers by path and method, and the resource attributes `/.well-known/core` lists.
///
/// A handler is any `Fn(IncomingRequest) -> impl Future<Output = R>` where `R` is a
/// [`Response`], a `Result<Response, CoapError>` (or any error that converts into a
/// `Response`), a [`Deferred`](crate::Deferred), or a [`Reply`].
///
/// Requests for a path no route serves are answered 4.04 Not Found, methods a route does not
/// serve 4.05 Method Not Allowed, and a GET for `/.well-known/core` with the link-format
/// document of the routes, filtered by the query (RFC 6690 §4.1). The routing rules are those
/// of [`coap_proto::resource`].
///
/// ```
/// use coap_tokio::{CoapError, IncomingRequest, ResourceAttributes, Response, Router};
///
/// let sensors = Router::new()
///     .get("/temp", |_req: IncomingRequest| async { Response::content("21.5") })
///     .attributes("/temp", ResourceAttributes::new().rt("temperature-c").ct(0u16));
/// let app = Router::new()
///     .get("/hello", |_req: IncomingRequest| async { Response::content("hi") })
///     .put("/config", |req: IncomingRequest| async move {
///         match req.payload_str() {
///             Some(_) => Ok(Response::new(coap_tokio::Code::CHANGED)),
///             None => Err(CoapError::bad_request("not UTF-8")),
///         }
///     })
///     .prefix_get("/files", |req: IncomingRequest| async move {
///         Response::content(req.rest().collect::<Vec<_>>().join("/"))
///     })
///     .nest("/sensors", sensors);
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

    /// Decides whether a registration is accepted. A declined registration is answered as a
    /// plain GET, without Observe (RFC 7641 §4.1). The handler's answer must be 2.xx too for
    /// the client to become an observer.
    pub fn accept(mut self, f: impl Fn(&IncomingRequest) -> bool + Send + Sync + 'static) -> Self {
        self.accept = Some(Arc::new(f));
        self
    }

    /// Called with the new number of observers whenever one is added or removed (from the
    /// driver task: keep it short). With several [engines](crate::ServerBuilder::engines) the
    /// number is the total over all of them, and the calls are made one at a time.
    pub fn on_observer_count(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_count = Some(Arc::new(f));
        self
    }
}

use coap_proto::resource::normalize_path as normalize;

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for route in self.inner.routes() {
            list.entry(&format_args!(
                "{}{} {:?}{}",
                route.path,
                if route.prefix { "/*" } else { "" },
                route.methods,
                if route.any_method { " +any" } else { "" }
            ));
        }
        list.finish()
    }
}

fn boxed<H, Fut, R>(handler: H) -> BoxedHandler
where
    H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply + 'static,
{
    Arc::new(move |req: IncomingRequest| -> HandlerFuture {
        let fut = handler(req);
        Box::pin(async move { fut.await.into_reply() })
    })
}

impl Router {
    /// An empty router: every path is 4.04, `/.well-known/core` lists nothing.
    pub fn new() -> Router {
        Router::default()
    }

    /// Serves `method` on exactly `path` (such as `"/sensors/temp"`).
    pub fn route<H, Fut, R>(mut self, path: &str, method: Code, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.inner.add(path, method, boxed(handler));
        self
    }

    /// Serves every method on exactly `path` (methods with their own route still win).
    pub fn any<H, Fut, R>(mut self, path: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.inner.add_any(path, boxed(handler));
        self
    }

    /// Serves `method` on `prefix` and every path below it (a catch-all); the handler finds
    /// the segments below the prefix in [`IncomingRequest::rest`].
    pub fn prefix<H, Fut, R>(mut self, prefix: &str, method: Code, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.inner.add_prefix(prefix, method, boxed(handler));
        self
    }

    /// Serves GET on `prefix` and every path below it.
    pub fn prefix_get<H, Fut, R>(self, prefix: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.prefix(prefix, Code::GET, handler)
    }

    /// Serves every method on `prefix` and every path below it.
    pub fn prefix_any<H, Fut, R>(mut self, prefix: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.inner.add_prefix_any(prefix, boxed(handler));
        self
    }

    /// Sets the attributes `/.well-known/core` lists for `path` (rt, if, ct, sz, title, obs,
    /// or hidden to leave it out). An observable route keeps `obs`.
    pub fn attributes(mut self, path: &str, mut attributes: ResourceAttributes) -> Router {
        if self.observable.contains_key(&normalize(path)) {
            attributes.observable = true;
        }
        self.inner.set_attributes(path, attributes);
        self
    }

    /// Serves GET on exactly `path` as an observable resource (RFC 7641): a GET with
    /// Observe = 0 registers the client, and every change announced through a
    /// [`Notifier`](crate::Notifier) for this path reaches it. `/.well-known/core` marks the
    /// resource `obs`.
    ///
    /// The handler answers registrations and plain GETs alike; when a
    /// [`Notifier::notify`](crate::Notifier::notify) comes without a representation, it is
    /// also asked to render the new state (see
    /// [`IncomingRequest::is_notification_render`]).
    pub fn observable<H, Fut, R>(self, path: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.observable_with(path, handler, ObserveHooks::new())
    }

    /// Like [`observable`](Router::observable), with hooks to accept registrations and to
    /// learn the number of observers.
    pub fn observable_with<H, Fut, R>(
        mut self,
        path: &str,
        handler: H,
        hooks: ObserveHooks,
    ) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
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

    /// Mounts `other` under `prefix`: its routes answer below the prefix and are listed there
    /// in `/.well-known/core`.
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

    /// The `/.well-known/core` document this router serves for the query arguments
    /// `queries` (RFC 6690 §4.1 filtering).
    pub fn well_known_core<'q>(
        &self,
        queries: impl IntoIterator<Item = &'q str>,
    ) -> Result<String, LinkFormatError> {
        self.inner.well_known_core(queries)
    }
}

macro_rules! method_routes {
    ($($(#[$doc:meta])* $name:ident => $code:expr;)*) => {
        impl Router {
            $(
                $(#[$doc])*
                pub fn $name<H, Fut, R>(self, path: &str, handler: H) -> Router
                where
                    H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
                    Fut: Future<Output = R> + Send + 'static,
                    R: IntoReply + 'static,
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

fn ready(response: Response) -> HandlerFuture {
    Box::pin(std::future::ready(Reply::Response(response)))
}

fn answered(response: Response) -> Dispatch {
    Dispatch {
        future: ready(response),
        accept_observer: false,
    }
}

impl Service for Router {
    fn call(&self, mut request: IncomingRequest) -> Dispatch {
        let found = match self
            .inner
            .resolve(request.message.code, request.message.options.uri_path())
        {
            Resolution::Found {
                handler,
                rest,
                route,
            } => {
                let hooks = (!route.prefix)
                    .then(|| self.observable.get(route.path))
                    .flatten();
                Ok((Arc::clone(handler), rest.start, hooks))
            }
            Resolution::WellKnownCore => {
                let response = self
                    .inner
                    .well_known_core_response(&request.message.options);
                // RFC 6690 §4.1: a multicast query that matches nothing gets no answer; an
                // error code is what the engine suppresses for multicast (RFC 7252 §8.2).
                if request.multicast && response.payload.is_empty() {
                    Err(Response::new(Code::NOT_FOUND))
                } else {
                    Err(response)
                }
            }
            Resolution::NotFound => Err(Response::new(Code::NOT_FOUND)),
            Resolution::MethodNotAllowed => Err(Response::new(Code::METHOD_NOT_ALLOWED)),
        };
        match found {
            Ok((handler, matched, hooks)) => {
                request.matched = matched;
                let accept_observer = hooks.is_some_and(|h| {
                    request.is_observe_registration()
                        && h.accept.as_ref().is_none_or(|accept| accept(&request))
                });
                Dispatch {
                    future: handler(request),
                    accept_observer,
                }
            }
            Err(response) => answered(response),
        }
    }

    fn observers_changed(&self, path: &str, count: usize) {
        if let Some(on_count) = self.observable.get(path).and_then(|h| h.on_count.as_ref()) {
            on_count(count);
        }
    }
}
