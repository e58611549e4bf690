//! The runtime-neutral core of a runtime crate (feature `host`): what `coap-tokio`,
//! `coap-async-std` and `coap-blocking` share, written once.
//!
//! A runtime crate owns a socket, an [`Endpoint`] and the channels its user handles talk
//! through (described to the core by a [`Channels`] type). Everything else a driver does is
//! here, in a [`Host`] that sits next to the engine and is handed the engine with every call:
//!
//! * **Commands.** What the handles ask for travels to the driver as a [`Command`];
//!   [`Host::command`] carries it out and answers it.
//! * **Client exchanges.** [`Host::request`] and [`Host::ping`] start an exchange and keep its
//!   [`Waiter`] (the adapter's oneshot or channel sender) by [`RequestId`], and by ticket when
//!   the handle that waits names it before the id exists. [`Host::drive`] routes what the
//!   engine reports to the right waiter: a response ends a unicast request, a multicast
//!   request collects responses until its window closes, an observation gets notifications,
//!   a failure becomes an [`Error`]. A dropped handle cancels its exchange
//!   ([`Host::cancel_ticket`]).
//! * **Incoming requests.** [`Host::drive`] hands each request the engine reports (and each
//!   notification the engine asks to render) to the adapter's [`Service`] as an [`Incoming`],
//!   tells the engine about accepted observers before the answer goes out, answers at once
//!   what the service answered at once, and answers 5.00 when the service panics.
//!   [`Host::respond`] passes later answers on (with a 5.00 in place of one the engine
//!   refuses), [`Host::abandon`] answers 5.00 for a handler that went away without an answer.
//! * **Introspection.** [`Host::pending_requests`] and [`Host::pending_incoming`] list what is
//!   under way with method, URI, peer and token.
//! * **Shutdown.** [`Host::shut_down`] closes the engine and starts the grace period,
//!   [`Host::is_finished`] says when the loop may stop, [`Host::finish`] fails whatever still
//!   waits with [`Error::ShuttingDown`].
//!
//! Beside it: the types the runtime crates' users see ([`IncomingResponse`],
//! [`Notification`], [`Incoming`] behind each `IncomingRequest`, [`Reply`], [`Error`],
//! [`PendingRequest`], [`PendingIncoming`]), their [`Router`] (generic over the request type
//! and over how handlers run, [`Async`] or [`Blocking`]) with its routing table ([`Routes`])
//! and [`Router::start`] to run a routed handler, the guards that tell the driver from `Drop`
//! what a dropped handler or request future leaves behind ([`AnswerGuard`],
//! [`CancelGuard`]), and request assembly from a URI ([`RequestSpec`], [`destination`],
//! [`choose_address`]).
//!
//! Spans and events go to `tracing`: a span per client exchange (`coap_request`,
//! `coap_ping`) and per incoming request (`coap_incoming`, entered while the service is
//! called); traffic at debug and trace level, failures and anomalies at warn.
//!
//! # A driver loop
//!
//! ```
//! use std::cell::RefCell;
//! use std::net::SocketAddr;
//! use std::rc::Rc;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use coap_proto::host::{
//!     parse_uri, Channels, Command, Delivery, Dispatch, Error, Host, Incoming, Kind, Service,
//!     Waiter,
//! };
//! use coap_proto::{Config, Endpoint, Instant, Request, Response};
//!
//! /// Waits for one response, in a shared cell.
//! struct Slot(Rc<RefCell<Option<Result<Delivery, Error>>>>);
//!
//! impl Waiter for Slot {
//!     fn kind(&self) -> Kind {
//!         Kind::Once
//!     }
//!     fn is_closed(&self) -> bool {
//!         false
//!     }
//!     fn deliver(&self, _item: Delivery) -> bool {
//!         false
//!     }
//!     fn finish(self, outcome: Result<Delivery, Error>) {
//!         *self.0.borrow_mut() = Some(outcome);
//!     }
//! }
//!
//! /// The channels of this example: a slot for the outcome, replies dropped.
//! struct Local;
//!
//! impl Channels for Local {
//!     type Waiter = Slot;
//!     type Reply<T> = ();
//!     type Sender = ();
//!     fn reply<T>(_to: (), _value: T) {}
//!     fn post(_to: &(), _command: Command<Local>) -> bool {
//!         false
//!     }
//! }
//!
//! /// Answers every request at once.
//! struct Hello;
//!
//! impl Service for Hello {
//!     fn call(&mut self, request: Incoming) -> Dispatch {
//!         Dispatch::answer(Response::content(format!("hello {}", request.path_string())))
//!     }
//!     fn observers_changed(&mut self, _resource: &str, _count: usize) {}
//! }
//!
//! # fn main() -> Result<(), Error> {
//! let client_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
//! let server_addr: SocketAddr = "127.0.0.1:5683".parse().unwrap();
//! let mut client_ep = Endpoint::new(Config::default(), 1)?;
//! let mut server_ep = Endpoint::new(Config::default(), 2)?;
//! let mut client: Host<Local> = Host::new(client_addr, Duration::from_secs(1));
//! let mut server: Host<Local> = Host::new(server_addr, Duration::from_secs(1));
//!
//! let now = Instant::ZERO;
//! let uri = parse_uri("coap://127.0.0.1/x")?;
//! let request = Request::get().with_path("/x");
//! let outcome = Rc::new(RefCell::new(None));
//! let waiter = Slot(Rc::clone(&outcome));
//! client
//!     .request(&mut client_ep, now, None, server_addr, request, Arc::new(uri), waiter)
//!     .map_err(|refused| refused.error)?;
//!
//! // The loop a runtime crate runs, with the sockets replaced by the two endpoints.
//! let mut buf = vec![0; 1500];
//! while outcome.borrow().is_none() {
//!     while let Some(t) = client_ep.poll_transmit(now, &mut buf).unwrap() {
//!         server_ep.handle_datagram(now, client_addr, &buf[..t.len]);
//!     }
//!     server.drive(&mut server_ep, now, &mut Hello);
//!     while let Some(t) = server_ep.poll_transmit(now, &mut buf).unwrap() {
//!         client_ep.handle_datagram(now, server_addr, &buf[..t.len]);
//!     }
//!     client.drive(&mut client_ep, now, &mut Hello);
//! }
//! let Some(Ok(Delivery::Response(response))) = outcome.borrow_mut().take() else {
//!     panic!("no response");
//! };
//! assert_eq!(response.payload_str(), Some("hello /x"));
//! # Ok(()) }
//! ```

/// The accessors every type that wraps a received `message` offers: options, body and
/// Content-Format, written once for requests and responses.
macro_rules! message_accessors {
    () => {
        /// The options.
        pub fn options(&self) -> &$crate::msg::Options {
            &self.message.options
        }

        /// The body, whole even when it travelled in blocks.
        pub fn payload(&self) -> &bytes::Bytes {
            &self.message.payload
        }

        /// The body as UTF-8 text, if it is.
        pub fn payload_str(&self) -> Option<&str> {
            core::str::from_utf8(&self.message.payload).ok()
        }

        /// The Content-Format option, if present.
        pub fn content_format(&self) -> Option<$crate::msg::ContentFormat> {
            self.message.options.content_format()
        }
    };
}

mod client;
mod error;
mod guards;
mod incoming;
mod proxy;
mod response;
mod router;
mod routes;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::net::SocketAddr;
use core::panic::AssertUnwindSafe;
use core::time::Duration;
use std::panic::catch_unwind;

use hashbrown::HashMap;
use tracing::{debug, trace, warn, Span};

pub use bytes::Bytes;
pub use client::{
    choose_address, destination, new_endpoint, parse_uri, Destination, RequestSpec, TargetLookup,
    Targets,
};
pub use error::{is_unreachable, Error};
pub use guards::{AnswerGuard, CancelGuard};
pub use incoming::{Deferred, Incoming, IntoReply, Reply};
pub use proxy::{
    reverse_base, DestinationFilter, ProxyCore, ProxyStep, RelaySettled, DEFAULT_UPSTREAM_TIMEOUT,
    RELAY_GRACE,
};
pub use rand_core::RngCore;
pub use response::{IncomingResponse, Notification};
pub use router::{
    Async, Blocking, Handler, HandlerFuture, HandlerOutput, HandlerStyle, Job, Routed, Router,
};
pub use routes::{ObserveHooks, Route, Routes};

use crate::addr::unmapped;
use crate::endpoint::{Event, Failure, RespondError, Stats};
use crate::msg::{Code, Message, Options, Token};
use crate::uri::CoapUri;
use crate::{Endpoint, IncomingId, Instant, Request, RequestId, Response};

/// What a client exchange's waiter waits for, which decides how the [`Host`] routes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One outcome: the response of a unicast request (or the answer to a ping), or an error.
    Once,
    /// The responses of a multicast request, until its window closes.
    Multicast,
    /// The notifications of an observation (RFC 7641), until it ends.
    Observation,
}

/// What reaches a [`Waiter`].
#[derive(Debug)]
pub enum Delivery {
    /// A response: the one of a unicast request, or one of a multicast request's.
    Response(IncomingResponse),
    /// A notification of an observation; the response that ends one comes as a notification
    /// too (marked fresh, without an Observe option).
    Notification(Notification),
    /// The peer answered a ping.
    Pong,
}

/// Whoever waits for a client exchange: a runtime crate's oneshot or channel sender, or a
/// callback. The [`Host`] keeps it until the exchange ends.
///
/// Dropping a waiter ends what its receiver sees: the [`Host`] drops the waiter of a
/// multicast request when the response window closes, after the last response.
pub trait Waiter {
    /// What it waits for.
    fn kind(&self) -> Kind;

    /// Whether the receiving side is gone (its future or stream was dropped), so the exchange
    /// need not start.
    fn is_closed(&self) -> bool;

    /// Hands over one item of an exchange that goes on (a multicast response, a
    /// notification), without waiting. Returns false if the receiver did not take it (its
    /// queue is full or it is gone); the item is then dropped.
    fn deliver(&self, item: Delivery) -> bool;

    /// Ends the wait with the exchange's last item or its error.
    fn finish(self, outcome: Result<Delivery, Error>);
}

/// The channels of a runtime crate, as its [`Host`] uses them: the waiter type of client
/// exchanges, the one-answer channel commands are answered through, and the driver's channel
/// for what must be sent without waiting.
pub trait Channels: Sized + 'static {
    /// Who waits for a client exchange.
    type Waiter: Waiter;

    /// The sending half of a one-answer channel for a `T`.
    type Reply<T>;

    /// A sender to the driver that never waits, for commands sent from `Drop` or from a
    /// handler: answers, abandoned requests, cancels of dropped handles. Each such command
    /// belongs to one live exchange, so the engine's own limits bound what it holds.
    type Sender: Clone + Send + 'static;

    /// Answers through `to`, without waiting; a receiver that is gone is ignored.
    fn reply<T>(to: Self::Reply<T>, value: T);

    /// Sends `command` to the driver through `to`, without waiting. False if the driver is
    /// gone.
    fn post(to: &Self::Sender, command: Command<Self>) -> bool;
}

/// How a command names a client exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKey {
    /// By the ticket its handle gave it before it had an id (see [`Host::request`]).
    Ticket(u64),
    /// By the engine's id.
    Id(RequestId),
}

/// What a runtime crate's handles ask of its driver, which passes it to
/// [`Host::command`]. Each bounded by what the engine bounds: a request, a ping and an answer
/// belong to one exchange each.
pub enum Command<C: Channels> {
    /// Start a request (an observation or a multicast request, after the waiter's
    /// [`Kind`]).
    Request {
        /// The name the handle gave it, to cancel it by before it has an id.
        ticket: Option<u64>,
        /// Where it goes, in the socket's address form.
        remote: SocketAddr,
        /// The request.
        request: Box<Request>,
        /// Its URI, for responses and introspection.
        uri: Arc<CoapUri>,
        /// Who waits for the outcome.
        waiter: C::Waiter,
        /// Who waits for the id (or for the error, which then does not reach the waiter).
        started: Option<C::Reply<Result<RequestId, Error>>>,
    },
    /// Ping a peer (RFC 7252 §4.3).
    Ping {
        /// As for a request.
        ticket: Option<u64>,
        /// The peer, in the socket's address form.
        remote: SocketAddr,
        /// Who waits for the pong.
        waiter: C::Waiter,
    },
    /// Cancel a client exchange; answers whether it was still running.
    Cancel {
        /// Which one.
        exchange: ExchangeKey,
        /// Who wants to know (nobody, for a handle that was dropped).
        reply: Option<C::Reply<bool>>,
    },
    /// End an observation actively (see [`Host::cancel_observation`]).
    CancelObservation {
        /// Which one.
        exchange: ExchangeKey,
        /// Whether it was still running.
        reply: C::Reply<bool>,
    },
    /// An observable resource changed (see [`Host::notify`]).
    Notify {
        /// Its path.
        path: String,
        /// The new representation, or `None` to have it rendered.
        representation: Option<Box<Response>>,
        /// How many observers (or variants) it concerns.
        reply: C::Reply<usize>,
    },
    /// How many observers a resource has.
    ObserverCount {
        /// Its path.
        path: String,
        /// The count.
        reply: C::Reply<usize>,
    },
    /// The client exchanges under way.
    PendingRequests(C::Reply<Vec<PendingRequest>>),
    /// The incoming requests not answered yet.
    PendingIncoming(C::Reply<Vec<PendingIncoming>>),
    /// The engine's counters.
    Stats(C::Reply<Stats>),
    /// Shut down gracefully; answered once the driver has stopped.
    Shutdown(C::Reply<()>),
    /// The answer to an incoming request, from a handler or a responder.
    Respond {
        /// The request.
        id: IncomingId,
        /// The answer.
        response: Box<Response>,
        /// Who waits for the engine to take it.
        done: Option<C::Reply<Result<(), Error>>>,
    },
    /// The handler or responder of an incoming request went away without answering.
    Abandoned(IncomingId),
}

/// A client exchange the engine did not start, with the waiter that was to wait for it.
#[derive(Debug)]
pub struct Refused<W> {
    /// Why.
    pub error: Error,
    /// The waiter, untouched: tell it, or drop it.
    pub waiter: W,
}

/// What serves the requests a [`Host`] receives: a runtime crate's router and the way it runs
/// handlers (polled inline, spawned, or on a worker pool).
pub trait Service {
    /// Starts serving `request`, and says what came of it at once. Called inside the
    /// request's `coap_incoming` span; a panic is caught and answered 5.00.
    fn call(&mut self, request: Incoming) -> Dispatch;

    /// The number of observers of the resource at `resource` is now `count`.
    fn observers_changed(&mut self, resource: &str, count: usize);
}

/// What a [`Service`] made of a request at once.
#[derive(Debug)]
pub struct Dispatch {
    /// The answer, if there is one already (4.04, 4.05, `/.well-known/core`, a handler that
    /// was ready at once). Without one, the answer comes later through [`Host::respond`], or
    /// [`Host::abandon`] answers 5.00.
    pub answer: Option<Response>,
    /// Whether the request registers an observation its route takes: the engine is told
    /// before the answer.
    pub accept_observer: AcceptObserver,
}

impl Dispatch {
    /// An answer at once.
    pub fn answer(response: Response) -> Dispatch {
        Dispatch {
            answer: Some(response),
            accept_observer: AcceptObserver::No,
        }
    }
}

/// Whether the engine takes a request that registers an observation (a GET or FETCH with
/// Observe = 0, RFC 7641 §4.1), as a [`Service`] decides before the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AcceptObserver {
    /// Not a registration its route takes: it is answered as a plain request.
    #[default]
    No,
    /// Taken: a 2.xx answer makes the client an observer (an observable route).
    Yes,
    /// Taken if the answer says so: a 2.xx answer that carries an Observe option makes the
    /// client an observer (a proxy relaying the origin's observation, a prefix route whose
    /// handler notifies the path itself); one without Observe is a plain answer.
    IfObserved,
}

/// A request this endpoint sent and that has not ended yet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingRequest {
    /// The engine's id; pass it to the client's `cancel`.
    pub id: RequestId,
    /// The method (0.00 for a ping).
    pub method: Code,
    /// The request's URI (for a ping, the peer's address as a URI).
    pub uri: String,
    /// The peer.
    pub peer: SocketAddr,
    /// The token (empty for a ping).
    pub token: Token,
}

/// A request this endpoint received and has not answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingIncoming {
    /// The engine's id.
    pub id: IncomingId,
    /// The method.
    pub method: Code,
    /// The request's path and query, as `/a/b?x=1`.
    pub uri: String,
    /// Who sent it.
    pub peer: SocketAddr,
    /// Its token.
    pub token: Token,
}

/// One client exchange and who waits for it.
struct Entry<W> {
    ticket: Option<u64>,
    waiter: W,
    target: Target,
    span: Span,
}

/// What a client exchange was sent to.
enum Target {
    /// A request, with its URI.
    Uri(Arc<CoapUri>),
    /// A ping, with the peer in the form users see.
    Ping(SocketAddr),
}

/// What introspection shows of an unanswered incoming request. The URI is written from the
/// options only when someone asks: most requests are answered before anyone could.
struct Unanswered {
    method: Code,
    options: Options,
    peer: SocketAddr,
    token: Token,
}

/// Where the host is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// The engine is closed; stop once it is idle, or at this deadline.
    Closing(Instant),
}

/// The bookkeeping of a driver around one [`Endpoint`], generic over the runtime crate's
/// [`Channels`] (see the [module documentation](self)).
///
/// Every call that touches the engine takes it as an argument, so the driver keeps the
/// endpoint in its own hands for the socket I/O; always pass the same one.
pub struct Host<C: Channels> {
    local_addr: SocketAddr,
    grace: Duration,
    phase: Phase,
    exchanges: HashMap<RequestId, Entry<C::Waiter>>,
    tickets: HashMap<u64, RequestId>,
    incoming: HashMap<IncomingId, Unanswered>,
    shutdown_waiters: Vec<C::Reply<()>>,
    /// The engine's next deadline as [`Host::next_wake`] last found it, while the engine has
    /// not timed out nor been given a command since; `None` when not known.
    engine_wake: Option<Option<Instant>>,
}

impl<C: Channels> core::fmt::Debug for Host<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Host")
            .field("local_addr", &self.local_addr)
            .field("phase", &self.phase)
            .field("exchanges", &self.exchanges.len())
            .field("incoming", &self.incoming.len())
            .finish_non_exhaustive()
    }
}

impl<C: Channels> Host<C> {
    /// A host for an endpoint on a socket bound to `local_addr` (the peer notification
    /// renderings show), which a shutdown gives `grace` to finish what is under way.
    pub fn new(local_addr: SocketAddr, grace: Duration) -> Host<C> {
        Host {
            local_addr,
            grace,
            phase: Phase::Running,
            exchanges: HashMap::new(),
            tickets: HashMap::new(),
            incoming: HashMap::new(),
            shutdown_waiters: Vec::new(),
            engine_wake: None,
        }
    }

    // ----------------------------------------------------------------------------------------
    // Commands
    // ----------------------------------------------------------------------------------------

    /// Carries out what a handle asked (see [`Command`]) and answers it through its channel.
    pub fn command(&mut self, ep: &mut Endpoint, now: Instant, command: Command<C>) {
        self.engine_wake = None;
        match command {
            Command::Request {
                ticket,
                remote,
                request,
                uri,
                waiter,
                started,
            } => match self.request(ep, now, ticket, remote, *request, uri, waiter) {
                Ok(id) => {
                    if let Some(started) = started {
                        C::reply(started, Ok(id));
                    }
                }
                // Whoever waits for the start learns why; else the waiter does.
                Err(refused) => match started {
                    Some(started) => C::reply(started, Err(refused.error)),
                    None => refused.waiter.finish(Err(refused.error)),
                },
            },
            Command::Ping {
                ticket,
                remote,
                waiter,
            } => {
                if let Err(refused) = self.ping(ep, now, ticket, remote, waiter) {
                    refused.waiter.finish(Err(refused.error));
                }
            }
            Command::Cancel { exchange, reply } => {
                let done = match exchange {
                    ExchangeKey::Ticket(ticket) => self.cancel_ticket(ep, now, ticket),
                    ExchangeKey::Id(id) => ep.cancel(now, id),
                };
                if let Some(reply) = reply {
                    C::reply(reply, done);
                }
            }
            Command::CancelObservation { exchange, reply } => {
                let id = match exchange {
                    ExchangeKey::Ticket(ticket) => self.request_id(ticket),
                    ExchangeKey::Id(id) => Some(id),
                };
                let done = id.is_some_and(|id| self.cancel_observation(ep, now, id));
                C::reply(reply, done);
            }
            Command::Notify {
                path,
                representation,
                reply,
            } => {
                let n = self.notify(ep, now, &path, representation.map(|r| *r));
                C::reply(reply, n);
            }
            Command::ObserverCount { path, reply } => C::reply(reply, ep.observer_count(&path)),
            Command::PendingRequests(reply) => C::reply(reply, self.pending_requests(ep)),
            Command::PendingIncoming(reply) => C::reply(reply, self.pending_incoming(ep)),
            Command::Stats(reply) => C::reply(reply, ep.stats()),
            Command::Shutdown(reply) => {
                self.shutdown_waiters.push(reply);
                self.shut_down(ep, now);
            }
            Command::Respond { id, response, done } => {
                let result = self.respond(ep, now, id, *response);
                if let Some(done) = done {
                    C::reply(done, result);
                }
            }
            Command::Abandoned(id) => self.abandon(ep, now, id),
        }
    }

    /// Answers a command that came after the driver stopped: a request's waiter (or whoever
    /// waits for its start) gets [`Error::ShuttingDown`]; anything else is dropped, and with
    /// it its reply channel, which tells the asker the same.
    pub fn refuse(command: Command<C>) {
        if let Command::Request {
            waiter, started, ..
        } = command
        {
            match started {
                Some(started) => C::reply(started, Err(Error::ShuttingDown)),
                None => waiter.finish(Err(Error::ShuttingDown)),
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Client exchanges
    // ----------------------------------------------------------------------------------------

    /// Starts `request` for `uri` towards `remote` (in the socket's address form): an
    /// observation if `waiter` waits for one ([`Kind::Observation`]), a plain request
    /// otherwise. `ticket` is the name the waiting handle gave the exchange before it had an
    /// id, for [`cancel_ticket`](Host::cancel_ticket).
    ///
    /// # Errors
    ///
    /// The waiter comes back with [`Error::Cancelled`] if it is closed already, or with the
    /// engine's reason if the engine refused the request.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        ticket: Option<u64>,
        remote: SocketAddr,
        request: Request,
        uri: Arc<CoapUri>,
        waiter: C::Waiter,
    ) -> Result<RequestId, Refused<C::Waiter>> {
        self.engine_wake = None;
        let waiter = open(waiter)?;
        let method = request.method;
        let started = match waiter.kind() {
            Kind::Observation => ep.observe(now, remote, request),
            Kind::Once | Kind::Multicast => ep.request(now, remote, request),
        };
        match started {
            Ok(id) => {
                let span = tracing::debug_span!(
                    "coap_request",
                    %id,
                    %method,
                    uri = %uri,
                    peer = %unmapped(remote)
                );
                span.in_scope(|| debug!("request started"));
                self.insert(id, ticket, waiter, Target::Uri(uri), span);
                Ok(id)
            }
            Err(e) => {
                debug!(%method, uri = %uri, error = %e, "request refused");
                Err(Refused {
                    error: e.into(),
                    waiter,
                })
            }
        }
    }

    /// Sends a CoAP ping to `remote` (RFC 7252 §4.3); `waiter` gets [`Delivery::Pong`] when the
    /// peer answers with Reset.
    ///
    /// # Errors
    ///
    /// As for [`request`](Host::request).
    pub fn ping(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        ticket: Option<u64>,
        remote: SocketAddr,
        waiter: C::Waiter,
    ) -> Result<RequestId, Refused<C::Waiter>> {
        let waiter = open(waiter)?;
        match ep.ping(now, remote) {
            Ok(id) => {
                let peer = unmapped(remote);
                let span = tracing::debug_span!("coap_ping", %id, %peer);
                self.insert(id, ticket, waiter, Target::Ping(peer), span);
                Ok(id)
            }
            Err(e) => Err(Refused {
                error: e.into(),
                waiter,
            }),
        }
    }

    fn insert(
        &mut self,
        id: RequestId,
        ticket: Option<u64>,
        waiter: C::Waiter,
        target: Target,
        span: Span,
    ) {
        if let Some(ticket) = ticket {
            self.tickets.insert(ticket, id);
        }
        let exchange = Entry {
            ticket,
            waiter,
            target,
            span,
        };
        self.exchanges.insert(id, exchange);
    }

    fn take(&mut self, id: RequestId) -> Option<Entry<C::Waiter>> {
        let exchange = self.exchanges.remove(&id)?;
        if let Some(ticket) = exchange.ticket {
            self.tickets.remove(&ticket);
        }
        Some(exchange)
    }

    /// The id of the exchange started with `ticket`, while it runs.
    pub fn request_id(&self, ticket: u64) -> Option<RequestId> {
        self.tickets.get(&ticket).copied()
    }

    /// The handle that waited for the exchange started with `ticket` is gone: cancels the
    /// exchange, if it still runs. Returns whether it did.
    pub fn cancel_ticket(&mut self, ep: &mut Endpoint, now: Instant, ticket: u64) -> bool {
        let Some(id) = self.request_id(ticket) else {
            return false;
        };
        trace!(%id, "request dropped: cancelling");
        ep.cancel(now, id)
    }

    /// Ends the observation `id`: actively (RFC 7641 §3.6, a deregistration the server
    /// answers) once it is established, by cancelling the registration before. Returns
    /// false if it had ended already.
    pub fn cancel_observation(&mut self, ep: &mut Endpoint, now: Instant, id: RequestId) -> bool {
        ep.cancel_observation(now, id) || ep.cancel(now, id)
    }

    /// The requests under way, with their URIs.
    pub fn pending_requests(&self, ep: &Endpoint) -> Vec<PendingRequest> {
        ep.pending_requests()
            .map(|(id, peer, method, token)| PendingRequest {
                id,
                method,
                uri: match self.exchanges.get(&id).map(|e| &e.target) {
                    Some(Target::Uri(uri)) => format!("{uri}"),
                    Some(Target::Ping(peer)) => format!("coap://{peer}"),
                    None => String::new(),
                },
                peer: unmapped(peer),
                token: token.clone(),
            })
            .collect()
    }

    // ----------------------------------------------------------------------------------------
    // Incoming requests
    // ----------------------------------------------------------------------------------------

    /// Answers the incoming request `id`. A response the engine refuses (too big, not a
    /// response code) is replaced by 5.00, so the client is not left waiting; the error still
    /// says why.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyAnswered`] if nothing waits for an answer with this id,
    /// [`Error::MessageTooBig`] or [`Error::NotAResponse`] if the engine refused `response`.
    pub fn respond(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        id: IncomingId,
        response: Response,
    ) -> Result<(), Error> {
        let (result, settled) = answer(ep, now, id, response);
        if settled {
            self.incoming.remove(&id);
        }
        result.map_err(Error::from)
    }

    /// The handler or responder that was to answer `id` went away without answering (it
    /// panicked, or was dropped): the request, if still unanswered, is answered 5.00.
    pub fn abandon(&mut self, ep: &mut Endpoint, now: Instant, id: IncomingId) {
        if self.incoming.contains_key(&id) {
            warn!(%id, "request abandoned without an answer: 5.00");
            let _ = self.respond(ep, now, id, Response::new(Code::INTERNAL_SERVER_ERROR));
        }
    }

    /// The requests received and not answered yet.
    pub fn pending_incoming(&self, ep: &Endpoint) -> Vec<PendingIncoming> {
        ep.pending_incoming()
            .filter_map(|(id, _)| {
                self.incoming.get(&id).map(|m| PendingIncoming {
                    id,
                    method: m.method,
                    uri: RequestTarget(&m.options).to_string(),
                    peer: m.peer,
                    token: m.token.clone(),
                })
            })
            .collect()
    }

    /// The observable resource at `path` changed: to `representation`, or (without one) the
    /// engine asks for a rendering per variant. Returns how many observers (or variants) it
    /// concerns.
    pub fn notify(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        path: &str,
        representation: Option<Response>,
    ) -> usize {
        let n = ep.notify(now, path, representation);
        debug!(resource = %path, observers = n, "resource changed");
        n
    }

    // ----------------------------------------------------------------------------------------
    // Events
    // ----------------------------------------------------------------------------------------

    /// Handles the engine's timeout if it is due (the clock is trusted, not the sleep that
    /// preceded the call), then routes every event the engine has: outcomes to the waiters,
    /// requests to `service`, observer counts to `service`.
    ///
    /// Between two [`next_wake`](Host::next_wake) calls without a command or a timeout in
    /// between, the engine's deadline is taken as `next_wake` found it, which spares a busy
    /// driver a look at the engine's timers on every call. A deadline the engine gained
    /// since from a datagram handed to it directly is seen by the next `next_wake`, which a
    /// driver asks before it sleeps.
    pub fn drive<S: Service>(&mut self, ep: &mut Endpoint, now: Instant, service: &mut S) {
        let maybe_due = match self.engine_wake {
            Some(wake) => wake.is_some_and(|due| now >= due),
            None => true,
        };
        if maybe_due {
            let wake = ep.poll_timeout();
            if wake.is_some_and(|due| now >= due) {
                ep.handle_timeout(now);
                self.engine_wake = None;
            } else {
                self.engine_wake = Some(wake);
            }
        }
        while let Some(event) = ep.poll_event() {
            match event {
                Event::Response { id, peer, response } => self.on_response(id, peer, response),
                Event::Notification {
                    id,
                    peer,
                    response,
                    fresh,
                } => self.on_notification(id, peer, response, fresh),
                Event::RequestFailed { id, reason } => self.on_failed(id, reason),
                Event::MulticastDone { id } => {
                    // Dropping the waiter ends its stream.
                    if let Some(ex) = self.take(id) {
                        ex.span.in_scope(|| debug!("multicast window closed"));
                    }
                }
                Event::Pong { id } => {
                    if let Some(ex) = self.take(id) {
                        ex.span.in_scope(|| debug!("pong"));
                        ex.waiter.finish(Ok(Delivery::Pong));
                    }
                }
                Event::Request {
                    id,
                    peer,
                    request,
                    multicast,
                } => self.dispatch(ep, now, service, id, peer, request, multicast, false),
                Event::RenderNotification {
                    id,
                    resource,
                    request,
                } => {
                    trace!(%id, %resource, "rendering a notification");
                    let local = self.local_addr;
                    self.dispatch(ep, now, service, id, local, request, false, true);
                }
                Event::ObserverAdded {
                    resource,
                    peer,
                    observers,
                    ..
                } => {
                    debug!(%resource, peer = %unmapped(peer), observers, "observer added");
                    service.observers_changed(&resource, observers);
                }
                Event::ObserverRemoved {
                    resource,
                    peer,
                    reason,
                    observers,
                    ..
                } => {
                    debug!(%resource, peer = %unmapped(peer), ?reason, observers, "observer removed");
                    service.observers_changed(&resource, observers);
                }
                Event::ResponseConfirmed { id } => trace!(%id, "response acknowledged"),
                Event::ResponseNotConfirmed { id, reason } => {
                    warn!(%id, %reason, "confirmable response not acknowledged")
                }
                Event::MessageIdsExhausted { peer, until } => {
                    warn!(%peer, %until, "message IDs towards peer exhausted; requests wait")
                }
                Event::Progress { id, progress } => trace!(%id, ?progress, "progress"),
            }
        }
    }

    fn on_response(&mut self, id: RequestId, peer: SocketAddr, message: Message) {
        let Some(ex) = self.exchanges.get(&id) else {
            return;
        };
        let peer = unmapped(peer);
        let code = message.code;
        if ex.waiter.kind() == Kind::Multicast {
            // A multicast exchange takes any number of responses and stays.
            let Target::Uri(uri) = &ex.target else {
                return;
            };
            let response = IncomingResponse {
                peer,
                uri: Arc::clone(uri),
                message,
            };
            ex.span
                .in_scope(|| debug!(%code, %peer, "multicast response"));
            if !ex.waiter.deliver(Delivery::Response(response)) {
                ex.span
                    .in_scope(|| debug!("multicast response dropped: not read"));
            }
            return;
        }
        let Some(ex) = self.take(id) else {
            return;
        };
        ex.span.in_scope(|| debug!(%code, "response"));
        let Target::Uri(uri) = ex.target else {
            return;
        };
        let response = IncomingResponse { peer, uri, message };
        let last = match ex.waiter.kind() {
            // The last word of an observation: the server did not register us, or it
            // answered the deregistration.
            Kind::Observation => Delivery::Notification(Notification {
                response,
                fresh: true,
            }),
            Kind::Once | Kind::Multicast => Delivery::Response(response),
        };
        ex.waiter.finish(Ok(last));
    }

    fn on_notification(&mut self, id: RequestId, peer: SocketAddr, message: Message, fresh: bool) {
        let Some(ex) = self.exchanges.get(&id) else {
            return;
        };
        let Target::Uri(uri) = &ex.target else {
            return;
        };
        let code = message.code;
        let notification = Notification {
            response: IncomingResponse {
                peer: unmapped(peer),
                uri: Arc::clone(uri),
                message,
            },
            fresh,
        };
        ex.span.in_scope(|| debug!(%code, fresh, "notification"));
        if !ex.waiter.deliver(Delivery::Notification(notification)) {
            // Only the latest state matters in an observation (RFC 7641 §1.3): a reader that
            // falls behind misses intermediate ones.
            ex.span
                .in_scope(|| debug!("notification dropped: not read"));
        }
    }

    fn on_failed(&mut self, id: RequestId, reason: Failure) {
        let Some(ex) = self.take(id) else {
            return;
        };
        if reason == Failure::Cancelled {
            ex.span.in_scope(|| debug!("cancelled"));
        } else {
            ex.span.in_scope(|| warn!(%reason, "request failed"));
        }
        ex.waiter.finish(Err(reason.into()));
    }

    /// Hands an incoming request (or a rendering) to the service, tells the engine about an
    /// accepted observer before the answer, and sends an answer the service has at once.
    #[allow(clippy::too_many_arguments)]
    fn dispatch<S: Service>(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        service: &mut S,
        id: IncomingId,
        peer: SocketAddr,
        message: Message,
        multicast: bool,
        render: bool,
    ) {
        let peer = unmapped(peer);
        let span = tracing::debug_span!(
            "coap_incoming",
            %id,
            method = %message.code,
            uri = %RequestTarget(&message.options),
            %peer
        );
        let _entered = span.enter();
        debug!(mtype = %message.mtype, len = message.payload.len(), "request");
        // Kept for introspection only if the request is still unanswered after the call.
        let unanswered = Unanswered {
            method: message.code,
            options: message.options.clone(),
            peer,
            token: message.token.clone(),
        };
        let request = Incoming {
            id,
            peer,
            message,
            multicast,
            render,
            matched: 0,
        };
        // The closure borrows the request rather than taking it, so that it is not copied
        // into the closure and again into the unwinding frame.
        let mut request = Some(request);
        let call = || request.take().map(|request| service.call(request));
        let settled = match catch_unwind(AssertUnwindSafe(call)) {
            Ok(None) => false,
            Ok(Some(dispatch)) => {
                let accepted = match dispatch.accept_observer {
                    _ if render => Ok(()),
                    AcceptObserver::No => Ok(()),
                    AcceptObserver::Yes => ep.accept_observer(id),
                    AcceptObserver::IfObserved => ep.accept_observer_if_observed(id),
                };
                if let Err(e) = accepted {
                    debug!(error = ?e, "registration not accepted");
                }
                match dispatch.answer {
                    Some(response) => answer(ep, now, id, response).1,
                    None => false,
                }
            }
            Err(_) => {
                warn!("handler panicked: 5.00");
                answer(ep, now, id, Response::new(Code::INTERNAL_SERVER_ERROR)).1
            }
        };
        if !settled {
            self.incoming.insert(id, unanswered);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Shutdown
    // ----------------------------------------------------------------------------------------

    /// Starts a graceful shutdown (once; later calls do nothing): the engine stops taking
    /// new work (new requests get 5.03) and the grace period starts.
    pub fn shut_down(&mut self, ep: &mut Endpoint, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        debug!(
            pending_requests = self.exchanges.len(),
            pending_incoming = self.incoming.len(),
            "shutting down"
        );
        ep.close(now);
        self.engine_wake = None;
        self.phase = Phase::Closing(now + self.grace);
    }

    /// Whether no shutdown has started.
    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// When the driver must wake next: the engine's deadline, or the end of the grace period
    /// if that comes first. `None`: only I/O or a command can wake it.
    pub fn next_wake(&mut self, ep: &mut Endpoint) -> Option<Instant> {
        let closing = match self.phase {
            Phase::Closing(deadline) => Some(deadline),
            Phase::Running => None,
        };
        let wake = ep.poll_timeout();
        self.engine_wake = Some(wake);
        [wake, closing].into_iter().flatten().min()
    }

    /// Whether the driver may stop: a shutdown has started, and either the engine is idle
    /// with everything sent (`flushed`: no datagram held back by the socket), or the grace
    /// period is over.
    pub fn is_finished(&self, ep: &Endpoint, now: Instant, flushed: bool) -> bool {
        match self.phase {
            Phase::Running => false,
            Phase::Closing(deadline) => now >= deadline || (ep.is_idle() && flushed),
        }
    }

    /// Ends what is left once the driver stops: every waiter gets [`Error::ShuttingDown`],
    /// and whoever asked for the shutdown learns that it is done.
    pub fn finish(&mut self) {
        for (_, exchange) in self.exchanges.drain() {
            exchange.waiter.finish(Err(Error::ShuttingDown));
        }
        for reply in self.shutdown_waiters.drain(..) {
            C::reply(reply, ());
        }
        self.tickets.clear();
        if !self.incoming.is_empty() {
            warn!(
                unanswered = self.incoming.len(),
                "stopped with requests unanswered"
            );
        }
    }
}

/// The waiter, unless its receiving side is gone (its handle was dropped before the driver
/// got to the command): then it comes back refused with [`Error::Cancelled`].
fn open<W: Waiter>(waiter: W) -> Result<W, Refused<W>> {
    if waiter.is_closed() {
        return Err(Refused {
            error: Error::Cancelled,
            waiter,
        });
    }
    Ok(waiter)
}

/// Hands `response` to the engine as the answer to `id`, with a 5.00 in place of one the
/// engine refuses (too big, not a response code). Returns what the engine said of `response`,
/// and whether `id` is settled: answered, or unknown to the engine.
fn answer(
    ep: &mut Endpoint,
    now: Instant,
    id: IncomingId,
    response: Response,
) -> (Result<(), RespondError>, bool) {
    let code = response.code;
    let result = ep.respond(now, id, response);
    let settled = match &result {
        Ok(()) => {
            debug!(%id, %code, "response sent");
            true
        }
        Err(RespondError::UnknownRequest(_)) => true,
        Err(e) => {
            warn!(%id, %code, error = %e, "response refused by the engine: 5.00 instead");
            let fallback = Response::new(Code::INTERNAL_SERVER_ERROR);
            ep.respond(now, id, fallback).is_ok()
        }
    };
    (result, settled)
}

/// `/path?query` of a request, written for traces and introspection when they ask: the path
/// as [`path_from_segments`](crate::resource::path_from_segments) writes it, then the query
/// arguments.
struct RequestTarget<'a>(&'a Options);

impl core::fmt::Display for RequestTarget<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut empty = true;
        for segment in self.0.uri_path() {
            write!(f, "/{segment}")?;
            empty = false;
        }
        if empty {
            f.write_str("/")?;
        }
        for (i, arg) in self.0.uri_query().enumerate() {
            write!(f, "{}{arg}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}
