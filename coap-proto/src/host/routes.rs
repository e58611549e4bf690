//! [`Routes`]: the routing table of a runtime crate's `Router`, with its observable routes
//! and their [`ObserveHooks`].

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use core::fmt;

use hashbrown::HashMap;

use super::{AcceptObserver, Incoming};
use crate::link_format::LinkFormatError;
use crate::msg::{Code, OptionNumber};
use crate::request::Response;
use crate::resource::{self, normalize_path, Resolution, ResourceAttributes, RouteInfo};

/// Decides whether a registration is accepted.
type AcceptHook<R> = Arc<dyn Fn(&R) -> bool + Send + Sync>;

/// Learns the number of observers.
type CountHook = Arc<dyn Fn(usize) + Send + Sync>;

/// Hooks of an observable route, generic over the request type `R` its accept hook reads (a
/// runtime crate's `IncomingRequest`).
pub struct ObserveHooks<R> {
    accept: Option<AcceptHook<R>>,
    on_count: Option<CountHook>,
}

impl<R> Clone for ObserveHooks<R> {
    fn clone(&self) -> Self {
        ObserveHooks {
            accept: self.accept.clone(),
            on_count: self.on_count.clone(),
        }
    }
}

impl<R> Default for ObserveHooks<R> {
    fn default() -> Self {
        ObserveHooks {
            accept: None,
            on_count: None,
        }
    }
}

impl<R> fmt::Debug for ObserveHooks<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveHooks")
            .field("accept", &self.accept.is_some())
            .field("on_count", &self.on_count.is_some())
            .finish()
    }
}

impl<R> ObserveHooks<R> {
    /// No hooks: every registration is accepted.
    pub fn new() -> ObserveHooks<R> {
        ObserveHooks::default()
    }

    /// Decides whether a registration is accepted. A declined registration is answered as a
    /// plain GET, without Observe (RFC 7641 §4.1). The handler's answer must be 2.xx too for
    /// the client to become an observer. It runs where the engine runs (the driver task or
    /// the I/O thread): keep it short.
    pub fn accept(mut self, f: impl Fn(&R) -> bool + Send + Sync + 'static) -> Self {
        self.accept = Some(Arc::new(f));
        self
    }

    /// Called with the new number of observers whenever one is added or removed, where the
    /// engine runs: keep it short.
    pub fn on_observer_count(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_count = Some(Arc::new(f));
        self
    }

    /// Whether the accept hook takes the registration `request` (true without a hook).
    pub fn accepts(&self, request: &R) -> bool {
        self.accept.as_ref().is_none_or(|accept| accept(request))
    }
}

/// What serves a request, as [`Routes::route`] found it.
// Made once per request and matched at once: boxing the answer would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Route<'r, H, R> {
    /// No handler runs: the answer is this (4.04, 4.05, or `/.well-known/core`).
    Answer(Response),
    /// A handler serves the request.
    Handler {
        /// The handler.
        handler: &'r H,
        /// The hooks of the observable route, when the request registers an observation on
        /// one; ask [`ObserveHooks::accepts`] whether the registration is taken.
        observe: Option<&'r ObserveHooks<R>>,
        /// The registration is taken only if the handler's answer carries Observe (the proxy
        /// route and prefix routes, see [`AcceptObserver::IfObserved`]).
        if_observed: bool,
    },
}

/// What to tell the engine about `request`, routed to a handler with `observe` and
/// `if_observed` (see [`Route::Handler`]).
pub(crate) fn acceptance<R>(
    observe: Option<&ObserveHooks<R>>,
    if_observed: bool,
    request: &R,
) -> AcceptObserver {
    match observe {
        Some(hooks) if hooks.accepts(request) && if_observed => AcceptObserver::IfObserved,
        Some(hooks) if hooks.accepts(request) => AcceptObserver::Yes,
        _ => AcceptObserver::No,
    }
}

/// A routing table ([`resource::Router`]) of handlers `H`, with the observable routes and
/// their hooks: everything a runtime crate's `Router` decides, generic over its handler type
/// and its request type `R`.
///
/// The routing rules are those of [`resource::Router`]: exact routes, then
/// `/.well-known/core`, then the longest prefix route; an unknown path is answered 4.04, an
/// unserved method 4.05.
pub struct Routes<H, R> {
    table: resource::Router<H>,
    /// Observable routes by normalized path.
    observable: HashMap<String, ObserveHooks<R>>,
    /// What serves requests that name their destination in Proxy-Uri or Proxy-Scheme.
    proxy: Option<H>,
    /// The hooks of the proxy route and of prefix routes: every registration is taken, and
    /// the engine registers the client only if the handler's answer carries Observe.
    any_observe: ObserveHooks<R>,
}

impl<H: Clone, R> Clone for Routes<H, R> {
    fn clone(&self) -> Self {
        Routes {
            table: self.table.clone(),
            observable: self.observable.clone(),
            proxy: self.proxy.clone(),
            any_observe: self.any_observe.clone(),
        }
    }
}

impl<H, R> Default for Routes<H, R> {
    fn default() -> Self {
        Routes {
            table: resource::Router::new(),
            observable: HashMap::new(),
            proxy: None,
            any_observe: ObserveHooks::default(),
        }
    }
}

impl<H, R> fmt::Debug for Routes<H, R> {
    /// One line per route: path (`/*` for a prefix route), methods, `+any` for a catch-all
    /// method, `obs` for an observable route.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for route in self.table.routes() {
            let observable = !route.prefix && self.observable.contains_key(route.path);
            list.entry(&format_args!(
                "{}{} {:?}{}{}",
                route.path,
                if route.prefix { "/*" } else { "" },
                route.methods,
                if route.any_method { " +any" } else { "" },
                if observable { " obs" } else { "" }
            ));
        }
        list.finish()
    }
}

impl<H, R> Routes<H, R> {
    /// An empty table: every path is 4.04, `/.well-known/core` lists nothing.
    pub fn new() -> Routes<H, R> {
        Routes::default()
    }

    /// Serves every request that names its destination in Proxy-Uri or Proxy-Scheme (a
    /// forward proxy, RFC 7252 §5.7.2), whatever its path.
    pub fn set_proxy(&mut self, handler: H) -> &mut Self {
        self.proxy = Some(handler);
        self
    }

    /// Serves `method` on exactly `path`.
    pub fn add(&mut self, path: &str, method: Code, handler: H) -> &mut Self {
        self.table.add(path, method, handler);
        self
    }

    /// Serves every method on exactly `path` (methods with their own route still win).
    pub fn add_any(&mut self, path: &str, handler: H) -> &mut Self {
        self.table.add_any(path, handler);
        self
    }

    /// Serves `method` on `prefix` and every path below it.
    pub fn add_prefix(&mut self, prefix: &str, method: Code, handler: H) -> &mut Self {
        self.table.add_prefix(prefix, method, handler);
        self
    }

    /// Serves every method on `prefix` and every path below it.
    pub fn add_prefix_any(&mut self, prefix: &str, handler: H) -> &mut Self {
        self.table.add_prefix_any(prefix, handler);
        self
    }

    /// Sets the attributes `/.well-known/core` lists for `path`; an observable route keeps
    /// `obs`.
    pub fn set_attributes(&mut self, path: &str, mut attributes: ResourceAttributes) -> &mut Self {
        if self.observable.contains_key(&normalize_path(path)) {
            attributes.observable = true;
        }
        self.table.set_attributes(path, attributes);
        self
    }

    /// Serves GET on exactly `path` as an observable resource (RFC 7641) with `hooks`, and
    /// marks it `obs` in `/.well-known/core`.
    pub fn add_observable(&mut self, path: &str, handler: H, hooks: ObserveHooks<R>) -> &mut Self {
        self.observable.insert(normalize_path(path), hooks);
        let attributes = self
            .table
            .attributes(path)
            .cloned()
            .unwrap_or_default()
            .observable();
        self.table.set_attributes(path, attributes);
        self.add(path, Code::GET, handler)
    }

    /// Mounts `other` under `prefix`: its routes answer below the prefix, are listed there in
    /// `/.well-known/core`, and its observable routes keep their hooks.
    pub fn nest(&mut self, prefix: &str, other: Routes<H, R>) -> &mut Self {
        self.table.nest(prefix, other.table);
        // A proxy route has no path: the nested table's serves here unless this one has one.
        if self.proxy.is_none() {
            self.proxy = other.proxy;
        }
        let prefix = normalize_path(prefix);
        for (path, hooks) in other.observable {
            let full = match (prefix.as_str(), path.as_str()) {
                ("/", p) => p.to_string(),
                (pre, "/") => pre.to_string(),
                (pre, p) => format!("{pre}{p}"),
            };
            self.observable.insert(full, hooks);
        }
        self
    }

    /// Every route, depth first in registration order.
    pub fn routes(&self) -> impl Iterator<Item = RouteInfo<'_>> {
        self.table.routes()
    }

    /// The `/.well-known/core` document for the query arguments `queries` (RFC 6690 §4.1
    /// filtering).
    pub fn well_known_core<'q>(
        &self,
        queries: impl IntoIterator<Item = &'q str>,
    ) -> Result<String, LinkFormatError> {
        self.table.well_known_core(queries)
    }

    /// Finds what serves `request`, and records in it how much of the path the route matched
    /// (for [`Incoming::rest`]). Never allocates for a request a handler serves.
    pub fn route(&self, request: &mut Incoming) -> Route<'_, H, R> {
        let message = &request.message;
        if message.options.contains(OptionNumber::PROXY_URI)
            || message.options.contains(OptionNumber::PROXY_SCHEME)
        {
            // RFC 7252 §5.7.2: a request for a forward proxy goes to the proxy route, and an
            // endpoint that is not a proxy answers 5.05.
            return match &self.proxy {
                Some(handler) => Route::Handler {
                    handler,
                    observe: Some(&self.any_observe),
                    if_observed: true,
                },
                None => Route::Answer(Response::new(Code::PROXYING_NOT_SUPPORTED)),
            };
        }
        match self.table.resolve(message.code, message.options.uri_path()) {
            Resolution::Found {
                handler,
                rest,
                route,
            } => {
                // A registration on an exact observable route asks its hooks; one on a prefix
                // route is taken if the handler's answer says so (a reverse proxy relaying an
                // observation).
                let registration = request.is_observe_registration();
                let observe = if route.prefix {
                    registration.then_some(&self.any_observe)
                } else {
                    registration
                        .then(|| self.observable.get(route.path))
                        .flatten()
                };
                request.matched = rest.start;
                Route::Handler {
                    handler,
                    observe,
                    if_observed: route.prefix,
                }
            }
            Resolution::WellKnownCore => {
                let response = self.table.well_known_core_response(&message.options);
                // RFC 6690 §4.1: a multicast query that matches nothing gets no answer; an
                // error code is what the engine suppresses for multicast (RFC 7252 §8.2).
                if request.multicast && response.payload.is_empty() {
                    Route::Answer(Response::new(Code::NOT_FOUND))
                } else {
                    Route::Answer(response)
                }
            }
            Resolution::NotFound => Route::Answer(Response::new(Code::NOT_FOUND)),
            Resolution::MethodNotAllowed => Route::Answer(Response::new(Code::METHOD_NOT_ALLOWED)),
        }
    }

    /// Tells the observable route at `path` (if it has a count hook) its new number of
    /// observers.
    pub fn observers_changed(&self, path: &str, count: usize) {
        if let Some(on_count) = self.observable.get(path).and_then(|h| h.on_count.as_ref()) {
            on_count(count);
        }
    }
}
