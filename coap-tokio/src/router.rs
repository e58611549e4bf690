//! The [`Router`]: async handlers by path and method, on top of the engine's routing layer
//! ([`coap_proto::resource::Router`]), which decides 4.04, 4.05 and `/.well-known/core`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use coap_proto::host::{self, Incoming, Route};
use coap_proto::link_format::LinkFormatError;
use coap_proto::msg::Code;
use coap_proto::resource::{ResourceAttributes, RouteInfo};
use coap_proto::Response;
use tokio::sync::mpsc;

use crate::driver::{HandlerFuture, Internal};
use crate::incoming::IncomingRequest;
use crate::IntoReply;

/// A handler with its future boxed, as the routing table stores it.
type BoxedHandler = Arc<dyn Fn(IncomingRequest) -> HandlerFuture + Send + Sync>;

/// Hooks of an observable route (see [`Router::observable_with`]): an accept hook that reads
/// the registration as an [`IncomingRequest`], and an observer count hook.
pub type ObserveHooks = host::ObserveHooks<IncomingRequest>;

/// Async handlers by path and method, and the resource attributes `/.well-known/core` lists.
///
/// A handler is any `Fn(IncomingRequest) -> impl Future<Output = R>` where `R` is a
/// [`Response`], a `Result<Response, CoapError>` (or any error that converts into a
/// `Response`), a [`Deferred`](crate::Deferred), or a [`Reply`](crate::Reply).
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
    routes: host::Routes<BoxedHandler, IncomingRequest>,
}

/// What routing made of a request.
// Made once per request and matched at once: boxing the answer would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Routed {
    /// Answered without a handler (4.04, 4.05, `/.well-known/core`).
    Answer(Response),
    /// A handler's answer, to come.
    Handler {
        future: HandlerFuture,
        /// A registration on an observable route that takes it.
        accept_observer: bool,
    },
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.routes.fmt(f)
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
        self.routes.add(path, method, boxed(handler));
        self
    }

    /// Serves every method on exactly `path` (methods with their own route still win).
    pub fn any<H, Fut, R>(mut self, path: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.routes.add_any(path, boxed(handler));
        self
    }

    /// Serves `method` on `prefix` and every path below it (a catch-all); the handler finds
    /// the segments below the prefix in [`IncomingRequest::rest`](Incoming::rest).
    pub fn prefix<H, Fut, R>(mut self, prefix: &str, method: Code, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.routes.add_prefix(prefix, method, boxed(handler));
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
        self.routes.add_prefix_any(prefix, boxed(handler));
        self
    }

    /// Sets the attributes `/.well-known/core` lists for `path` (rt, if, ct, sz, title, obs,
    /// or hidden to leave it out). An observable route keeps `obs`.
    pub fn attributes(mut self, path: &str, attributes: ResourceAttributes) -> Router {
        self.routes.set_attributes(path, attributes);
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
    /// [`IncomingRequest::is_notification_render`](Incoming::is_notification_render)).
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
        self.routes.add_observable(path, boxed(handler), hooks);
        self
    }

    /// Mounts `other` under `prefix`: its routes answer below the prefix and are listed there
    /// in `/.well-known/core`.
    pub fn nest(mut self, prefix: &str, other: Router) -> Router {
        self.routes.nest(prefix, other.routes);
        self
    }

    /// Every route, depth first in registration order.
    pub fn routes(&self) -> impl Iterator<Item = RouteInfo<'_>> {
        self.routes.routes()
    }

    /// The `/.well-known/core` document this router serves for the query arguments
    /// `queries` (RFC 6690 §4.1 filtering).
    pub fn well_known_core<'q>(
        &self,
        queries: impl IntoIterator<Item = &'q str>,
    ) -> Result<String, LinkFormatError> {
        self.routes.well_known_core(queries)
    }

    /// Finds what answers `request`; a handler's future is made (not yet polled) with the
    /// request and the channel its responder answers through.
    pub(crate) fn dispatch(
        &self,
        mut head: Incoming,
        internal: &mpsc::UnboundedSender<Internal>,
    ) -> Routed {
        let (handler, observe) = match self.routes.route(&mut head) {
            Route::Answer(response) => return Routed::Answer(response),
            Route::Handler { handler, observe } => (handler, observe),
        };
        let request = IncomingRequest {
            head,
            internal: internal.clone(),
        };
        let accept_observer = observe.is_some_and(|hooks| hooks.accepts(&request));
        Routed::Handler {
            future: handler(request),
            accept_observer,
        }
    }

    /// The number of observers of `path` changed.
    pub(crate) fn observers_changed(&self, path: &str, count: usize) {
        self.routes.observers_changed(path, count);
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
