//! CoAP (RFC 7252) for async-std and smol applications: a [`Client`] and a [`Server`] driving
//! the Sans-IO engine of [`coap_proto`], with the same names and shapes as `coap-tokio`, so
//! switching runtimes is a change of import.
//!
//! ```
//! use coap_async_std::{Client, Code, IncomingRequest, Response, Router, Server};
//!
//! # fn main() -> Result<(), coap_async_std::Error> {
//! # futures_lite::future::block_on(async {
//! let app = Router::new().get("/hello", |_req: IncomingRequest| async {
//!     Response::content("Hello, CoAP!")
//! });
//! let server = Server::bind("127.0.0.1:0").await?;
//! let addr = server.local_addr();
//! let handle = server.handle();
//! let serving = std::thread::spawn(move || futures_lite::future::block_on(server.serve(app)));
//!
//! let client = Client::bind("127.0.0.1:0").await?;
//! let rsp = client.get(format!("coap://{addr}/hello")).await?;
//! assert_eq!(rsp.code(), Code::CONTENT);
//! assert_eq!(rsp.payload_str(), Some("Hello, CoAP!"));
//! let rsp = client.put(format!("coap://{addr}/hello")).payload("x").await?;
//! assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
//!
//! handle.shutdown().await?;
//! serving.join().expect("server thread")?;
//! # Ok(()) })
//! # }
//! ```
//!
//! # Runtimes
//!
//! async-std is discontinued (RUSTSEC-2025-0052). It ran on the async-io reactor and the
//! futures-lite toolbox, as smol does, and so does this crate: sockets are
//! [`async_io::Async`] UDP sockets, timers are [`async_io::Timer`]s, and queues are
//! async-channel's. Nothing here needs a particular executor:
//!
//! * [`Server::serve`] returns a future that runs the server *and* its handler tasks (an
//!   [`async_executor::Executor`] inside the future polls the handlers that have to wait).
//!   Spawn it with `async_std::task::spawn`, `smol::spawn`, or await it.
//! * [`Client::bind`] starts the client's driver on a thread of its own (`coap-driver`),
//!   running `async_io::block_on`; the thread ends with the driver, once the last clone of
//!   the client is gone or after [`Client::shutdown`]. A client therefore works from any
//!   executor, even from `futures_lite::future::block_on`.
//!
//! Differences from `coap-tokio`, all forced by the runtime:
//!
//! * `bind` takes [`AsyncToSocketAddrs`] (async-net's trait: `&str`, `String`,
//!   [`SocketAddr`](std::net::SocketAddr), `(&str, u16)` ...) instead of tokio's.
//! * Handlers run where the `serve` future is polled, not on a multi-threaded pool; a
//!   handler that blocks blocks the server. Offload blocking or heavy work (for example
//!   with `blocking::unblock`) and await it.
//! * Time is the system's monotonic clock; there is no paused clock as in tokio's tests, so
//!   tests of timers shorten [`Config`]'s durations instead.
//!
//! Everything else the driver does besides its socket, queues and executor (waiters,
//! dispatch, the 5.00 fallbacks, introspection, shutdown), the [`Router`], request assembly
//! and the user-facing types are the runtime-neutral core [`coap_proto::host`], shared with
//! `coap-tokio` and `coap-blocking`.
//!
//! # What it does
//!
//! * **Client**: [`Client::get`], [`post`](Client::post), [`put`](Client::put),
//!   [`delete`](Client::delete), [`fetch`](Client::fetch), [`patch`](Client::patch),
//!   [`ipatch`](Client::ipatch), [`request`](Client::request) by `coap://` URI; the
//!   [`RequestBuilder`] sets payload, options, CON or NON and a timeout; dropping a request's
//!   future cancels its exchange. [`Client::ping`], [`RequestBuilder::multicast`],
//!   [`Client::observe`] (an [`Observation`] stream with active cancellation).
//! * **Server**: a [`Router`] of async handlers; 4.04, 4.05 and `/.well-known/core` with
//!   query filtering (RFC 6690 §4.1) come from [`coap_proto::resource`]. Handlers may defer
//!   to a [`Responder`]; observable routes are notified through a [`Notifier`].
//! * **Block-wise** transfers (RFC 7959) both ways, invisible to the application.
//! * **Introspection**: [`Client::pending_requests`], [`ServerHandle::pending_incoming`],
//!   [`Client::cancel`], [`Client::stats`].
//! * **Socket options** ([`socket::SocketOptions`]), multicast groups, and **graceful
//!   shutdown** ([`Server::serve_with_shutdown`], [`ServerHandle::shutdown`],
//!   [`Client::shutdown`]).
//! * **Tracing** as in `coap-tokio`: spans `coap_driver`, `coap_request`, `coap_incoming`,
//!   traffic at debug and trace level, failures at warn.
//!
//! On Linux the socket asks for ICMP errors (`IP_RECVERR`), so a request to a closed port
//! fails at once with [`Error::Unreachable`]; elsewhere it fails with [`Error::Timeout`].

#![forbid(unsafe_code)]

mod client;
mod driver;
mod incoming;
mod proxy;
mod router;
mod server;
pub mod socket;

pub use async_net::AsyncToSocketAddrs;
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
