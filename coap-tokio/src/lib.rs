//! CoAP (RFC 7252) over tokio: a [`Client`] and a [`Server`], each a thin driver around the
//! Sans-IO engine of [`coap_proto`].
//!
//! ```
//! use coap_tokio::{Client, Code, IncomingRequest, Response, Router, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), coap_tokio::Error> {
//! // A server with one resource, on a free port.
//! let app = Router::new().get("/hello", |_req: IncomingRequest| async {
//!     Response::content("Hello, CoAP!")
//! });
//! let server = Server::bind("127.0.0.1:0").await?;
//! let addr = server.local_addr();
//! tokio::spawn(server.serve(app));
//!
//! // A client asking for it.
//! let client = Client::bind("127.0.0.1:0").await?;
//! let rsp = client.get(format!("coap://{addr}/hello")).await?;
//! assert_eq!(rsp.code(), Code::CONTENT);
//! assert_eq!(rsp.payload_str(), Some("Hello, CoAP!"));
//!
//! // Unknown paths are 4.04, unsupported methods 4.05.
//! let rsp = client.put(format!("coap://{addr}/hello")).payload("x").await?;
//! assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! * **Client**: [`Client::get`], [`post`](Client::post), [`put`](Client::put),
//!   [`delete`](Client::delete), [`fetch`](Client::fetch), [`patch`](Client::patch),
//!   [`ipatch`](Client::ipatch) and [`request`](Client::request) for any method code take a
//!   `coap://host:port/path?query` URI (host names are resolved; the port defaults to 5683).
//!   The [`RequestBuilder`] sets payload, Content-Format, Accept, ETag, If-Match,
//!   If-None-Match, any option by number, CON or NON, and a timeout; await it directly or
//!   call [`send`](RequestBuilder::send). Thousands of requests may be in flight; dropping a
//!   request's future cancels its exchange. [`Client::ping`] sends a CoAP ping;
//!   [`RequestBuilder::multicast`] collects the responses of a group.
//! * **Server**: [`Server::bind`] then [`serve`](Server::serve) a [`Router`] of async
//!   handlers. A handler returns a [`Response`] or a [`CoapError`] (4.00, 4.04, 4.15, 5.00 ...
//!   with a diagnostic), may take as long as it likes (the engine sends the empty ACK and a
//!   separate response, RFC 7252 §5.2.2), or hands the request to a [`Responder`] that answers
//!   later from any task. `/.well-known/core` lists the routes with their
//!   [`ResourceAttributes`] and filters by query (RFC 6690 §4.1). Routers nest, and prefix
//!   routes take the rest of the path. [`IncomingRequest::with_etag`](Incoming::with_etag) sets an ETag from the
//!   payload and answers 2.03 Valid to a client that already has it.
//! * **Large bodies** travel block-wise (RFC 7959) in both directions without the application
//!   seeing blocks: the engine splits and reassembles them.
//! * **Introspection**: [`Client::pending_requests`] and [`ServerHandle::pending_incoming`]
//!   list what is under way (method, URI, peer, token); [`Client::cancel`] ends one by id.
//! * **Socket options** through socket2 ([`socket::SocketOptions`]): address and port reuse,
//!   buffer sizes (a 4 MiB receive buffer is asked for by default), DSCP, IPv6-only,
//!   don't-fragment where supported, maximum datagram size.
//! * **Graceful shutdown**: [`Server::serve_with_shutdown`], [`ServerHandle::shutdown`] and
//!   [`Client::shutdown`] stop taking new work (new requests get 5.03), let handlers and
//!   Confirmable responses finish within a grace period, then close the socket.
//! * **Tracing**: a span per exchange (`coap_request`, `coap_incoming`) and per driver
//!   (`coap_driver`); traffic at debug and trace level, failures and anomalies at warn.
//!
//! * **Observation** (RFC 7641): [`Client::observe`] gives a `Stream` of notifications marked
//!   fresh or stale; [`Router::observable`] routes with accept hooks, and a [`Notifier`] per
//!   path for any task to announce changes.
//!
//! Not yet here: answering requests sent to a multicast group (the engine can, but the socket
//! does not yet tell the driver which datagrams arrived on a group address). A client can
//! already send multicast requests, join groups and pick the outgoing interface.
//!
//! # How it works
//!
//! Each socket has one driver task that owns the [`coap_proto::Endpoint`]; no lock guards the
//! engine. Handles ([`Client`], [`ServerHandle`], request futures, responders) talk to the
//! driver through a bounded command channel and get their answers through oneshot channels
//! keyed by the engine's request id. Messages that must be sent from `Drop` (the cancel of a
//! dropped request, the answer of a handler task) use a second channel whose length is
//! bounded by the engine's own exchange limits, since each exchange sends at most one.
//!
//! The driver reads datagrams with `try_recv_from` until the socket would block (at most 64
//! per wake-up), feeds them to the engine, flushes what the engine wants to send (keeping one
//! datagram back when the socket is full), and sleeps until the engine's next deadline or the
//! next datagram or command, whichever comes first. It checks the clock against the deadline
//! before trusting a timer. Time is tokio's clock, counted from the moment the socket was
//! bound, so tests can run the whole stack on tokio's paused clock.
//!
//! A handler's future is polled once right in the driver: one that is ready at once costs no
//! task, and its response is piggybacked on the ACK. Only a handler that has to wait is
//! spawned. A handler that panics is answered 5.00 Internal Server Error.
//!
//! What the driver does besides moving bytes, time and channel messages (the table of
//! waiters, routing events to them, dispatching requests, the 5.00 fallbacks, introspection,
//! shutdown), the [`Router`], the request builder's assembly and the user-facing types
//! ([`Error`], [`IncomingResponse`], [`Incoming`] behind [`IncomingRequest`], ...) are the
//! runtime-neutral core [`coap_proto::host`], shared with `coap-async-std` and
//! `coap-blocking`: code written against one of them moves to another with its imports.
//!
//! On Linux the socket asks for ICMP errors (`IP_RECVERR`), so a request to a port where
//! nobody listens fails at once with [`Error::Unreachable`] instead of after the
//! retransmission timeout; elsewhere it fails with [`Error::Timeout`].

#![forbid(unsafe_code)]

mod client;
mod driver;
mod incoming;
mod proxy;
mod router;
mod server;
pub mod socket;

pub use client::{
    Client, ClientBuilder, MulticastResponses, Observation, RequestBuilder, ResponseFuture,
};
pub use coap_proto::host::DEFAULT_UPSTREAM_TIMEOUT;
pub use coap_proto::host::{
    Deferred, Error, Incoming, IncomingResponse, IntoReply, Notification, PendingIncoming,
    PendingRequest, Reply,
};
pub use incoming::{IncomingRequest, Responder};
pub use proxy::{Proxy, ProxyFuture};
pub use router::{ObserveHooks, Router};
pub use server::{Notifier, Server, ServerBuilder, ServerHandle};

pub use coap_proto::addr::{
    ALL_COAP_NODES_V4, ALL_COAP_NODES_V6_LINK_LOCAL, ALL_COAP_NODES_V6_SITE_LOCAL,
};
pub use coap_proto::endpoint::Stats;
pub use coap_proto::msg::{Code, ContentFormat, MessageType, OptionNumber, Options};
pub use coap_proto::proxy::{CacheLimits, ProxyStats};
pub use coap_proto::resource::{hashing_etag, CoapError, ResourceAttributes};
pub use coap_proto::uri::{CoapUri, Host};
pub use coap_proto::{Config, IncomingId, RequestId, Response};
