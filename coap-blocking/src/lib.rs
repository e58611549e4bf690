//! CoAP (RFC 7252) without async: a blocking [`Client`] and a thread-pool [`Server`] over
//! `std::net::UdpSocket`, each a thin driver around the Sans-IO engine of [`coap_proto`].
//!
//! The names and shapes are those of `coap-tokio` (`Client`, `RequestBuilder`,
//! `IncomingResponse`, `Observation`, `Server`, `ServerHandle`, `Notifier`, `Router`,
//! `IncomingRequest`, `Responder`, `Error`, ...), so moving between the crates is mostly an
//! import change and dropping `.await`.
//!
//! ```
//! use coap_blocking::{Client, Code, IncomingRequest, Response, Router, Server};
//!
//! # fn main() -> Result<(), coap_blocking::Error> {
//! // A server with one resource, on a free port, served by a thread of its own.
//! let app = Router::new().get("/hello", |_req: IncomingRequest| Response::content("Hello, CoAP!"));
//! let server = Server::bind("127.0.0.1:0")?;
//! let addr = server.local_addr();
//! let handle = server.handle();
//! let thread = std::thread::spawn(move || server.serve(app));
//!
//! // A client asking for it: `send` blocks until the response.
//! let client = Client::bind("127.0.0.1:0")?;
//! let rsp = client.get(format!("coap://{addr}/hello")).send()?;
//! assert_eq!(rsp.code(), Code::CONTENT);
//! assert_eq!(rsp.payload_str(), Some("Hello, CoAP!"));
//!
//! // Unknown paths are 4.04, unsupported methods 4.05.
//! let rsp = client.put(format!("coap://{addr}/hello")).payload("x").send()?;
//! assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
//!
//! handle.shutdown()?;
//! thread.join().expect("server thread")?;
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! * **Blocking client**: [`Client::get`], [`post`](Client::post), [`put`](Client::put),
//!   [`delete`](Client::delete), [`fetch`](Client::fetch), [`patch`](Client::patch),
//!   [`ipatch`](Client::ipatch) and [`request`](Client::request) (alias
//!   [`custom`](Client::custom)) take a `coap://` URI and return a [`RequestBuilder`];
//!   [`send`](RequestBuilder::send) blocks until the response or the builder's
//!   [`timeout`](RequestBuilder::timeout). A failure names what happened:
//!   [`Error::Timeout`] (no answer), [`Error::Reset`], [`Error::Cancelled`],
//!   [`Error::Unreachable`].
//! * **Non-blocking client**: [`RequestBuilder::start`] returns a [`ResponseHandle`] with the
//!   request's id at once (wait, poll or drop to cancel);
//!   [`RequestBuilder::send_with`] returns the id and hands the outcome to a callback.
//!   Thousands of requests may be in flight from one client.
//! * **Observation**: [`Client::observe`] returns an [`Observation`], an `Iterator` of
//!   [`Notification`]s that ends when the observation ends; [`Observation::cancel`] ends it
//!   actively, dropping it ends it passively. [`RequestBuilder::multicast`] returns the
//!   responses of a group as an iterator too.
//! * **Server**: [`Server::serve`] runs a [`Router`] of plain functions on a bounded pool of
//!   worker threads ([`ServerBuilder::workers`], [`ServerBuilder::queue_capacity`]; a full
//!   queue is answered 5.03 with Max-Age). A handler may block as long as it likes (the
//!   engine sends an empty ACK and a separate response), or hand the request to a
//!   [`Responder`] that answers from any thread. With `workers(0)` handlers run on the I/O
//!   thread instead: no hand-off between threads, for handlers that answer at once. Observable routes and [`Notifier`]s work
//!   from any thread too. `/.well-known/core` lists the routes and filters by query.
//! * **Large bodies** travel block-wise (RFC 7959) both ways, unseen by the application.
//! * **Introspection, socket options, shutdown, tracing**: as in `coap-tokio`
//!   ([`Client::pending_requests`], [`ServerHandle::pending_incoming`],
//!   [`socket::SocketOptions`], [`ServerHandle::shutdown`], spans `coap_driver`).
//!
//! # How it works
//!
//! One I/O thread per socket owns the socket and the [`coap_proto::Endpoint`]; nothing else
//! touches the engine, so there is no lock around it. For a client the thread is spawned by
//! [`Client::bind`]; for a server it is the thread that calls [`Server::serve`]. Handles send
//! it commands through a channel and wait for answers on channels of their own.
//!
//! The thread never polls busily: it sleeps in `poll(2)` on the CoAP socket and on a loopback
//! waker socket, with the engine's next deadline as timeout. A command wakes it with a 0-byte
//! datagram to the waker, sent only when the thread has announced that it sleeps. Time is
//! `std::time::Instant`, counted from when the socket was bound.
//!
//! On Linux the socket asks for ICMP errors (`IP_RECVERR`), so a request to a closed port
//! fails at once with [`Error::Unreachable`]; elsewhere it fails with [`Error::Timeout`].
//!
//! The thread's bookkeeping around the engine (waiters, dispatch, the 5.00 fallbacks,
//! introspection, shutdown), the [`Router`], request assembly and the user-facing types are
//! the runtime-neutral core [`coap_proto::host`], shared with `coap-tokio` and
//! `coap-async-std`.
//!
//! # Differences from `coap-tokio`
//!
//! * Handlers are `Fn(IncomingRequest) -> R`, not functions returning futures, and run on
//!   worker threads; [`ObserveHooks`] run on the I/O thread.
//! * [`Server::serve_with_shutdown`] takes a blocking closure instead of a future.
//! * [`RequestBuilder::start`] and [`send_with`](RequestBuilder::send_with) take the place of
//!   awaiting a `ResponseFuture`; a builder timeout given to `send_with` is enforced by the
//!   engine only (counted from the acknowledgement).
//! * [`Observation`] and [`MulticastResponses`] are iterators, not streams.

#![forbid(unsafe_code)]

mod client;
mod incoming;
mod io;
mod pool;
mod proxy;
mod router;
mod server;
pub mod socket;

pub use client::{
    Client, ClientBuilder, MulticastResponses, Observation, RequestBuilder, ResponseHandle,
};
pub use coap_proto::host::DEFAULT_UPSTREAM_TIMEOUT;
pub use coap_proto::host::{
    Deferred, Error, Incoming, IncomingResponse, IntoReply, Notification, PendingIncoming,
    PendingRequest, Reply,
};
pub use incoming::{IncomingRequest, Responder};
pub use proxy::Proxy;
pub use router::{ObserveHooks, Router};
pub use server::{Notifier, Server, ServerBuilder, ServerHandle, DEFAULT_QUEUE, DEFAULT_WORKERS};

pub use coap_proto::addr::{
    ALL_COAP_NODES_V4, ALL_COAP_NODES_V6_LINK_LOCAL, ALL_COAP_NODES_V6_SITE_LOCAL,
};
pub use coap_proto::endpoint::Stats;
pub use coap_proto::msg::{Code, ContentFormat, MessageType, OptionNumber, Options};
pub use coap_proto::proxy::{CacheLimits, ProxyStats};
pub use coap_proto::resource::{hashing_etag, CoapError, ResourceAttributes};
pub use coap_proto::uri::{CoapUri, Host};
pub use coap_proto::{Config, IncomingId, RequestId, Response};
