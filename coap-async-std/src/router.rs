//! [`Router`]: async handlers by path and method over the engine's routing table
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

/// A handler as the table stores it: its future boxed.
type Handler = Arc<dyn Fn(IncomingRequest) -> HandlerFuture + Send + Sync>;

/// Decides whether a registration is accepted.
type AcceptFn = Arc<dyn Fn(&IncomingRequest) -> bool + Send + Sync>;

/// Told the number of observers.
type CountFn = Arc<dyn Fn(usize) + Send + Sync>;

/// Async handlers by path and method, and what `/.well-known/core` says about each path.
///
/// A handler is any `Fn(IncomingRequest) -> impl Future<Output = R>` whose `R` implements
/// [`IntoReply`]: a [`Response`], a `Result<Response, CoapError>` (or another error that
/// converts into a `Response`), a [`Deferred`](crate::Deferred) or a [`Reply`].
///
/// A path no route serves is answered 4.04 Not Found, a method the path does not serve 4.05
/// Method Not Allowed, and a GET of `/.well-known/core` with the link-format list of the
/// routes, filtered by its query (RFC 6690 §4.1). The matching rules are those of
/// [`coap_proto::resource`].
///
/// ```
/// use coap_async_std::{CoapError, Code, IncomingRequest, ResourceAttributes, Response, Router};
///
/// let sensors = Router::new()
///     .get("/temp", |_req: IncomingRequest| async { Response::content("21.5") })
///     .attributes("/temp", ResourceAttributes::new().rt("temperature-c"));
/// let app = Router::new()
///     .put("/config", |req: IncomingRequest| async move {
///         match req.payload_str() {
///             Some(_) => Ok(Response::new(Code::CHANGED)),
///             None => Err(CoapError::bad_request("not UTF-8")),
///         }
///     })
///     .prefix_get("/files", |req: IncomingRequest| async move {
///         Response::content(req.rest().collect::<Vec<_>>().join("/"))
///     })
///     .nest("/sensors", sensors);
/// assert_eq!(app.routes().count(), 3);
/// ```
#[derive(Clone, Default)]
pub struct Router {
    table: resource::Router<Handler>,
    /// Observable routes, by normalized full path.
    observable: HashMap<String, ObserveHooks>,
}

/// What an observable route may add (see [`Router::observable_with`]).
#[derive(Clone, Default)]
pub struct ObserveHooks {
    accept: Option<AcceptFn>,
    on_count: Option<CountFn>,
}

impl ObserveHooks {
    /// No hooks: every registration is accepted.
    pub fn new() -> ObserveHooks {
        ObserveHooks::default()
    }

    /// Decides per request whether a registration is accepted; a declined one is served as a
    /// plain GET, without Observe (RFC 7641 §4.1). The handler must also answer 2.xx for the
    /// client to become an observer.
    pub fn accept(mut self, f: impl Fn(&IncomingRequest) -> bool + Send + Sync + 'static) -> Self {
        self.accept = Some(Arc::new(f));
        self
    }

    /// Called with the number of observers each time one comes or goes. It runs inside the
    /// driver: keep it short.
    pub fn on_observer_count(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_count = Some(Arc::new(f));
        self
    }
}

impl fmt::Debug for ObserveHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveHooks")
            .field("accept", &self.accept.is_some())
            .field("on_count", &self.on_count.is_some())
            .finish()
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.table.routes().map(|r| {
                format!(
                    "{}{} {:?}{}",
                    r.path,
                    if r.prefix { "/*" } else { "" },
                    r.methods,
                    if r.any_method { " +any" } else { "" }
                )
            }))
            .finish()
    }
}

pub(crate) use coap_proto::resource::normalize_path as normalize;

fn into_handler<H, Fut, R>(handler: H) -> Handler
where
    H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply + 'static,
{
    Arc::new(move |request: IncomingRequest| -> HandlerFuture {
        let future = handler(request);
        Box::pin(async move { future.await.into_reply() })
    })
}

impl Router {
    /// No routes: everything is 4.04 and `/.well-known/core` is empty.
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
        self.table.add(path, method, into_handler(handler));
        self
    }

    /// Serves every method on exactly `path` (a method with its own route goes there).
    pub fn any<H, Fut, R>(mut self, path: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.table.add_any(path, into_handler(handler));
        self
    }

    /// Serves `method` on `prefix` and everything below it; the handler finds the segments
    /// below in [`IncomingRequest::rest`].
    pub fn prefix<H, Fut, R>(mut self, prefix: &str, method: Code, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.table.add_prefix(prefix, method, into_handler(handler));
        self
    }

    /// Serves GET on `prefix` and everything below it.
    pub fn prefix_get<H, Fut, R>(self, prefix: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.prefix(prefix, Code::GET, handler)
    }

    /// Serves every method on `prefix` and everything below it.
    pub fn prefix_any<H, Fut, R>(mut self, prefix: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.table.add_prefix_any(prefix, into_handler(handler));
        self
    }

    /// What `/.well-known/core` lists for `path` (rt, if, ct, sz, title, obs, or hidden). An
    /// observable route stays marked `obs`.
    pub fn attributes(mut self, path: &str, mut attributes: ResourceAttributes) -> Router {
        attributes.observable |= self.observable.contains_key(&normalize(path));
        self.table.set_attributes(path, attributes);
        self
    }

    /// Serves GET on exactly `path` as an observable resource (RFC 7641): a GET with
    /// Observe = 0 registers its sender, and each change announced through a
    /// [`Notifier`](crate::Notifier) for the path reaches every observer.
    /// `/.well-known/core` marks it `obs`.
    ///
    /// The handler answers registrations and plain GETs, and, when a
    /// [`Notifier::notify`](crate::Notifier::notify) comes without a representation, renders
    /// the new state (see [`IncomingRequest::is_notification_render`]).
    pub fn observable<H, Fut, R>(self, path: &str, handler: H) -> Router
    where
        H: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.observable_with(path, handler, ObserveHooks::new())
    }

    /// [`observable`](Router::observable) with hooks that accept registrations and learn
    /// the number of observers.
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
        let mut attributes = self.table.attributes(path).cloned().unwrap_or_default();
        attributes.observable = true;
        self.table.set_attributes(path, attributes);
        self.route(path, Code::GET, handler)
    }

    /// Mounts `other` below `prefix`, in routing and in `/.well-known/core`.
    pub fn nest(mut self, prefix: &str, other: Router) -> Router {
        self.table.nest(prefix, other.table);
        let prefix = normalize(prefix);
        for (path, hooks) in other.observable {
            let full = if prefix == "/" {
                path
            } else if path == "/" {
                prefix.clone()
            } else {
                format!("{prefix}{path}")
            };
            self.observable.insert(full, hooks);
        }
        self
    }

    /// The routes, depth first, in the order they were added.
    pub fn routes(&self) -> impl Iterator<Item = RouteInfo<'_>> {
        self.table.routes()
    }

    /// The `/.well-known/core` document served for the query arguments `queries`
    /// (RFC 6690 §4.1).
    pub fn well_known_core<'q>(
        &self,
        queries: impl IntoIterator<Item = &'q str>,
    ) -> Result<String, LinkFormatError> {
        self.table.well_known_core(queries)
    }
}

macro_rules! by_method {
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

by_method! {
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

/// A dispatch that answers at once, without a handler.
fn answer_now(response: Response) -> Dispatch {
    Dispatch {
        future: Box::pin(std::future::ready(Reply::Response(response))),
        accept_observer: false,
    }
}

impl Service for Router {
    fn call(&self, mut request: IncomingRequest) -> Dispatch {
        let resolution = self
            .table
            .resolve(request.message.code, request.message.options.uri_path());
        match resolution {
            Resolution::Found {
                handler,
                rest,
                route,
            } => {
                let handler = Arc::clone(handler);
                let hooks = if route.prefix {
                    None
                } else {
                    self.observable.get(route.path)
                };
                request.matched = rest.start;
                let accept_observer = match hooks {
                    Some(hooks) if request.is_observe_registration() => {
                        hooks.accept.as_ref().is_none_or(|accept| accept(&request))
                    }
                    _ => false,
                };
                Dispatch {
                    future: handler(request),
                    accept_observer,
                }
            }
            Resolution::WellKnownCore => {
                let document = self
                    .table
                    .well_known_core_response(&request.message.options);
                // A multicast discovery that matches nothing stays unanswered (RFC 6690
                // §4.1): an error code is what the engine suppresses for multicast (RFC 7252
                // §8.2).
                if request.multicast && document.payload.is_empty() {
                    answer_now(Response::new(Code::NOT_FOUND))
                } else {
                    answer_now(document)
                }
            }
            Resolution::NotFound => answer_now(Response::new(Code::NOT_FOUND)),
            Resolution::MethodNotAllowed => answer_now(Response::new(Code::METHOD_NOT_ALLOWED)),
        }
    }

    fn observers_changed(&self, path: &str, count: usize) {
        if let Some(on_count) = self.observable.get(path).and_then(|h| h.on_count.as_ref()) {
            on_count(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_req: IncomingRequest) -> std::future::Ready<Response> {
        std::future::ready(Response::content("x"))
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("//a//b/"), "/a/b");
        assert_eq!(normalize("counter/"), "/counter");
    }

    #[test]
    fn observable_routes_stay_marked_through_nesting_and_attributes() {
        let inner = Router::new()
            .observable("/temp", ok)
            .attributes("/temp", ResourceAttributes::new().rt("t"))
            .get("/plain", ok);
        let app = Router::new().nest("/s", inner);
        assert!(app.observable.contains_key("/s/temp"));
        assert!(!app.observable.contains_key("/s/plain"));
        let doc = app.well_known_core(["obs"]).unwrap();
        assert_eq!(doc, "</s/temp>;rt=\"t\";obs");
        assert_eq!(app.routes().count(), 2);
    }
}
