//! [`Router`]: the `Router` of every runtime crate, generic over its request type and over how
//! its handlers run ([`Async`] or [`Blocking`]).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::panic::AssertUnwindSafe;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use super::{
    AcceptObserver, AnswerGuard, Channels, Dispatch, Incoming, IntoReply, ObserveHooks, Reply,
    Route, Routes,
};
use tracing::{debug, trace, warn};

use crate::link_format::LinkFormatError;
use crate::msg::Code;
use crate::request::Response;
use crate::resource::{ResourceAttributes, RouteInfo};

/// The future an [`Async`] handler returns, boxed.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

mod sealed {
    pub trait Sealed {}
}

/// How a runtime crate runs its handlers: [`Async`] handlers return a future, [`Blocking`]
/// handlers return their answer.
pub trait HandlerStyle: sealed::Sealed + 'static {
    /// What a handler stored in a [`Router`] returns.
    type Output: 'static;
}

/// Handlers return a future of their answer (`coap-tokio`, `coap-async-std`).
#[derive(Debug)]
pub enum Async {}

/// Handlers return their answer, and may block while they work it out (`coap-blocking`).
#[derive(Debug)]
pub enum Blocking {}

impl sealed::Sealed for Async {}
impl sealed::Sealed for Blocking {}

impl HandlerStyle for Async {
    type Output = HandlerFuture;
}

impl HandlerStyle for Blocking {
    type Output = Reply;
}

/// What a handler of style `S` may return: for [`Async`], a future of anything that is
/// [`IntoReply`]; for [`Blocking`], anything that is [`IntoReply`] (a
/// [`Response`], a `Result<Response, CoapError>`, a [`Deferred`](super::Deferred), a
/// [`Reply`]).
pub trait HandlerOutput<S: HandlerStyle> {
    /// What the router stores it as.
    fn into_output(self) -> S::Output;
}

impl<F> HandlerOutput<Async> for F
where
    F: Future + Send + 'static,
    F::Output: IntoReply,
{
    fn into_output(self) -> HandlerFuture {
        Box::pin(async move { self.await.into_reply() })
    }
}

impl<R: IntoReply> HandlerOutput<Blocking> for R {
    fn into_output(self) -> Reply {
        self.into_reply()
    }
}

/// A handler as a [`Router`] stores it.
pub type Handler<Req, S> = Arc<dyn Fn(Req) -> <S as HandlerStyle>::Output + Send + Sync>;

/// What [`Router::dispatch`] made of a request.
// Made once per request and matched at once: boxing the answer would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Routed<'r, Req, S: HandlerStyle> {
    /// No handler runs: the answer is this (4.04, 4.05, `/.well-known/core`).
    Answer(Response),
    /// A handler serves the request: call it with `request` (now, or on a worker).
    Handler {
        /// The handler.
        handler: &'r Handler<Req, S>,
        /// The request, with how much of its path the route matched.
        request: Req,
        /// Whether the request registers an observation its route takes: tell the engine
        /// before the answer.
        accept_observer: AcceptObserver,
    },
}

/// Handlers by path and method, and the resource attributes `/.well-known/core` lists: the
/// `Router` of a runtime crate, which names it for its request type `Req` and its
/// [`HandlerStyle`] `S`.
///
/// A handler is any `Fn(Req) -> O` where `O` is a [`HandlerOutput`] of the style: for
/// [`Async`], a future whose output is a [`Response`], a `Result<Response, CoapError>` (or any
/// error that converts into a `Response`), a [`Deferred`](super::Deferred) or a [`Reply`]; for
/// [`Blocking`], one of those directly.
///
/// Requests for a path no route serves are answered 4.04 Not Found, methods a route does not
/// serve 4.05 Method Not Allowed, and a GET for `/.well-known/core` with the link-format
/// document of the routes, filtered by the query (RFC 6690 §4.1). The routing rules are those
/// of [`crate::resource::Router`]: exact routes first, then the longest prefix.
pub struct Router<Req, S: HandlerStyle> {
    routes: Routes<Handler<Req, S>, Req>,
}

impl<Req, S: HandlerStyle> Clone for Router<Req, S> {
    fn clone(&self) -> Self {
        Router {
            routes: self.routes.clone(),
        }
    }
}

impl<Req, S: HandlerStyle> Default for Router<Req, S> {
    fn default() -> Self {
        Router {
            routes: Routes::new(),
        }
    }
}

impl<Req, S: HandlerStyle> fmt::Debug for Router<Req, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.routes.fmt(f)
    }
}

fn boxed<Req, S, H, O>(handler: H) -> Handler<Req, S>
where
    S: HandlerStyle,
    H: Fn(Req) -> O + Send + Sync + 'static,
    O: HandlerOutput<S>,
{
    Arc::new(move |request: Req| handler(request).into_output())
}

impl<Req: 'static, S: HandlerStyle> Router<Req, S> {
    /// An empty router: every path is 4.04, `/.well-known/core` lists nothing.
    pub fn new() -> Self {
        Router::default()
    }

    /// Serves `method` on exactly `path` (such as `"/sensors/temp"`).
    pub fn route<H, O>(mut self, path: &str, method: Code, handler: H) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.routes.add(path, method, boxed(handler));
        self
    }

    /// Serves every method on exactly `path` (methods with their own route still win).
    pub fn any<H, O>(mut self, path: &str, handler: H) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.routes.add_any(path, boxed(handler));
        self
    }

    /// Serves `method` on `prefix` and every path below it (a catch-all); the handler finds
    /// the segments below the prefix in [`Incoming::rest`].
    pub fn prefix<H, O>(mut self, prefix: &str, method: Code, handler: H) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.routes.add_prefix(prefix, method, boxed(handler));
        self
    }

    /// Serves GET on `prefix` and every path below it.
    pub fn prefix_get<H, O>(self, prefix: &str, handler: H) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.prefix(prefix, Code::GET, handler)
    }

    /// Serves every request that names its destination in a Proxy-Uri or Proxy-Scheme option,
    /// whatever its path: the route of a forward proxy (RFC 7252 §5.7.2). Without it such
    /// requests are answered 5.05 Proxying Not Supported. See [`crate::proxy`] for the rules a
    /// proxy follows.
    pub fn proxy<H, O>(mut self, handler: H) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.routes.set_proxy(boxed(handler));
        self
    }

    /// Serves every method on `prefix` and every path below it.
    ///
    /// An observe registration on a prefix route becomes an observation only if the
    /// handler's 2.xx answer carries an Observe option (as a reverse proxy route's does when
    /// it relays the origin's observation, see [`crate::proxy`]); the observers are then
    /// notified through the request's full path. Any other answer is a plain one (RFC 7641
    /// §4.1).
    pub fn prefix_any<H, O>(mut self, prefix: &str, handler: H) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.routes.add_prefix_any(prefix, boxed(handler));
        self
    }

    /// Sets the attributes `/.well-known/core` lists for `path` (rt, if, ct, sz, title, obs,
    /// or hidden to leave it out). An observable route keeps `obs`.
    pub fn attributes(mut self, path: &str, attributes: ResourceAttributes) -> Self {
        self.routes.set_attributes(path, attributes);
        self
    }

    /// Serves GET on exactly `path` as an observable resource (RFC 7641): a GET with
    /// Observe = 0 registers the client, and every change announced through the server's
    /// notifier for this path reaches it. `/.well-known/core` marks the resource `obs`.
    ///
    /// The handler answers registrations and plain GETs alike; when a change is announced
    /// without a representation, it is also asked to render the new state (see
    /// [`Incoming::is_notification_render`]).
    pub fn observable<H, O>(self, path: &str, handler: H) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.observable_with(path, handler, ObserveHooks::new())
    }

    /// Like [`observable`](Router::observable), with hooks to accept registrations and to
    /// learn the number of observers.
    pub fn observable_with<H, O>(mut self, path: &str, handler: H, hooks: ObserveHooks<Req>) -> Self
    where
        H: Fn(Req) -> O + Send + Sync + 'static,
        O: HandlerOutput<S>,
    {
        self.routes.add_observable(path, boxed(handler), hooks);
        self
    }

    /// Mounts `other` under `prefix`: its routes answer below the prefix and are listed there
    /// in `/.well-known/core`.
    pub fn nest(mut self, prefix: &str, other: Self) -> Self {
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

    /// Finds what serves the request `head`. When a handler does, the runtime crate's
    /// request is made from the head by `request` (only then), and the accept hook of an
    /// observable route reads it.
    pub fn dispatch(
        &self,
        mut head: Incoming,
        request: impl FnOnce(Incoming) -> Req,
    ) -> Routed<'_, Req, S> {
        match self.routes.route(&mut head) {
            Route::Answer(response) => Routed::Answer(response),
            Route::Handler {
                handler,
                observe,
                if_observed,
            } => {
                let request = request(head);
                let accept_observer = super::routes::acceptance(observe, if_observed, &request);
                Routed::Handler {
                    handler,
                    request,
                    accept_observer,
                }
            }
        }
    }

    /// Tells the observable route at `path` (if it has a count hook) its new number of
    /// observers.
    pub fn observers_changed(&self, path: &str, count: usize) {
        self.routes.observers_changed(path, count);
    }
}

impl<Req: 'static> Router<Req, Async> {
    /// Starts serving `head` the way the async runtime crates do: routes it (see
    /// [`dispatch`](Router::dispatch)), then polls the handler's future once, right here. A
    /// handler that is ready at once costs no task, and its answer rides on the ACK; a future
    /// that has to wait goes to `spawn`, with the [`AnswerGuard`] (reporting to the driver
    /// through `answers`) that sends its answer when it completes.
    pub fn start<C: Channels>(
        &self,
        head: Incoming,
        request: impl FnOnce(Incoming) -> Req,
        answers: &C::Sender,
        spawn: impl FnOnce(HandlerFuture, AnswerGuard<C>),
    ) -> Dispatch {
        let id = head.id();
        let mut head = head;
        // Routed here rather than through `dispatch`: the request goes straight into the
        // handler, without passing through a `Routed` on the way.
        let (mut future, accept_observer) = match self.routes.route(&mut head) {
            Route::Answer(response) => return Dispatch::answer(response),
            Route::Handler {
                handler,
                observe,
                if_observed,
            } => {
                let request = request(head);
                let accept_observer = super::routes::acceptance(observe, if_observed, &request);
                (handler(request), accept_observer)
            }
        };
        let answer = match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(Reply::Response(response)) => Some(response),
            Poll::Ready(Reply::Deferred(_)) => {
                debug!("deferred to a responder");
                None
            }
            Poll::Pending => {
                trace!("handler pending: spawned");
                spawn(future, AnswerGuard::new(id, answers.clone()));
                None
            }
        };
        Dispatch {
            answer,
            accept_observer,
        }
    }
}

/// A handler's run on a worker, as [`Router::<_, Blocking>::start`](Router::start) hands it
/// to the pool.
pub type Job = Box<dyn FnOnce() + Send>;

impl<Req: Send + 'static> Router<Req, Blocking> {
    /// Starts serving `head` the way `coap-blocking` does: routes it (see
    /// [`dispatch`](Router::dispatch)); 4.04, 4.05 and `/.well-known/core` are answered at
    /// once, a handler becomes a [`Job`] for `run` (a worker pool). The job sends the
    /// handler's answer to the driver through `answers`; a handler that panics leaves the
    /// request abandoned, which the driver answers 5.00. A job `run` refuses (every worker
    /// busy, the queue full) is answered 5.03 with Max-Age (RFC 7252 §5.9.3.4).
    pub fn start<C: Channels>(
        &self,
        head: Incoming,
        request: impl FnOnce(Incoming) -> Req,
        answers: &C::Sender,
        run: impl FnOnce(Job) -> bool,
    ) -> Dispatch {
        let id = head.id();
        let (handler, request, accept_observer) = match self.route_to_handler(head, request) {
            Ok((handler, request, accept)) => (Arc::clone(handler), request, accept),
            Err(response) => return Dispatch::answer(response),
        };
        let guard = AnswerGuard::<C>::new(id, answers.clone());
        let job = Box::new(move || {
            // A panic drops the guard unanswered: the request is reported abandoned.
            if let Ok(reply) = std::panic::catch_unwind(AssertUnwindSafe(|| handler(request))) {
                guard.answer(reply);
            }
        });
        let answer = if run(job) {
            None
        } else {
            // The refused job's guard reports the request abandoned, which is ignored once
            // this answer is sent.
            warn!("every worker busy and the queue full: 5.03");
            Some(Response::new(Code::SERVICE_UNAVAILABLE).with_max_age(1))
        };
        Dispatch {
            answer,
            accept_observer,
        }
    }
}

impl<Req: 'static> Router<Req, Blocking> {
    /// [`dispatch`](Router::dispatch) as a handler with its request and whether to accept an
    /// observer, or the answer when no handler runs.
    #[allow(clippy::type_complexity)]
    fn route_to_handler(
        &self,
        head: Incoming,
        request: impl FnOnce(Incoming) -> Req,
    ) -> Result<(&Handler<Req, Blocking>, Req, AcceptObserver), Response> {
        match self.dispatch(head, request) {
            Routed::Answer(response) => Err(response),
            Routed::Handler {
                handler,
                request,
                accept_observer,
            } => Ok((handler, request, accept_observer)),
        }
    }

    /// Serves `head` on the calling thread: routes it (see [`dispatch`](Router::dispatch))
    /// and runs the handler right here, so that its answer rides on the ACK without a hand-off
    /// to another thread. For a runtime whose handlers are known to be quick; a handler that
    /// blocks holds up everything the calling thread does. A handler that panics is answered
    /// 5.00; a [`Reply::Deferred`] leaves the answer to its responder.
    pub fn start_inline(&self, head: Incoming, request: impl FnOnce(Incoming) -> Req) -> Dispatch {
        let (handler, request, accept_observer) = match self.route_to_handler(head, request) {
            Ok(routed) => routed,
            Err(response) => return Dispatch::answer(response),
        };
        let answer = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(request))) {
            Ok(Reply::Response(response)) => Some(response),
            Ok(Reply::Deferred(_)) => None,
            Err(_) => {
                warn!("handler panicked: 5.00");
                Some(Response::new(Code::INTERNAL_SERVER_ERROR))
            }
        };
        Dispatch {
            answer,
            accept_observer,
        }
    }
}

macro_rules! method_routes {
    ($($(#[$doc:meta])* $name:ident => $code:expr;)*) => {
        impl<Req: 'static, S: HandlerStyle> Router<Req, S> {
            $(
                $(#[$doc])*
                pub fn $name<H, O>(self, path: &str, handler: H) -> Self
                where
                    H: Fn(Req) -> O + Send + Sync + 'static,
                    O: HandlerOutput<S>,
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
