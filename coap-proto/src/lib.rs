//! A Sans-IO implementation of CoAP, the Constrained Application Protocol (RFC 7252), with
//! block-wise transfers (RFC 7959), Observe (RFC 7641), FETCH/PATCH/iPATCH (RFC 8132), link
//! format (RFC 6690), extended token lengths (RFC 8974), Request-Tag (RFC 9175) and
//! No-Response (RFC 7967).
//!
//! An [`Endpoint`] is a client and a server in one pure state machine. It never touches a
//! socket, never reads a clock and never draws a random number by itself: datagrams and the
//! current time go in, datagrams to send, [events](Event) and the next deadline come out. The
//! runtime crates (`coap-tokio`, `coap-async-std`, `coap-blocking`) wrap it in a socket loop;
//! you can equally drive it from your own event loop, an embedded main loop, a fuzzer or a
//! simulated network (the `sim` module, feature `sim`).
//!
//! # A run loop
//!
//! ```
//! use std::net::{SocketAddr, UdpSocket};
//! use coap_proto::{Config, Endpoint, Event, Instant, Request, Response};
//!
//! # fn main() -> std::io::Result<()> {
//! let server_socket = UdpSocket::bind("127.0.0.1:0")?;
//! let client_socket = UdpSocket::bind("127.0.0.1:0")?;
//! let server_addr = server_socket.local_addr()?;
//! for socket in [&server_socket, &client_socket] {
//!     socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?; // never hang
//! }
//! let start = std::time::Instant::now();
//! let now = || Instant::from_micros(start.elapsed().as_micros() as u64);
//!
//! let mut server = Endpoint::new(Config::default(), 1).expect("valid config");
//! let mut client = Endpoint::new(Config::default(), 2).expect("valid config");
//! let id = client
//!     .request(now(), server_addr, Request::get().with_path("/hello"))
//!     .expect("admitted");
//!
//! let mut buf = vec![0u8; client.config().max_message_size];
//! let mut answer = None;
//! while answer.is_none() {
//!     // Output: send what each endpoint queued.
//!     for (ep, socket) in [(&mut client, &client_socket), (&mut server, &server_socket)] {
//!         while let Some(t) = ep.poll_transmit(now(), &mut buf).expect("buffer is large") {
//!             socket.send_to(&buf[..t.len], t.remote)?;
//!         }
//!     }
//!     // Input: one datagram each way (a real loop waits on both sockets and on
//!     // `poll_timeout()` for timers).
//!     let (n, from) = server_socket.recv_from(&mut buf)?;
//!     server.handle_datagram(now(), from, &buf[..n]);
//!     while let Some(event) = server.poll_event() {
//!         if let Event::Request { id, request, .. } = event {
//!             let path: Vec<&str> = request.options.uri_path().collect();
//!             let rsp = Response::content(format!("hello from {}", path.join("/")));
//!             server.respond(now(), id, rsp).expect("still pending");
//!         }
//!     }
//!     while let Some(t) = server.poll_transmit(now(), &mut buf).expect("buffer is large") {
//!         server_socket.send_to(&buf[..t.len], t.remote)?;
//!     }
//!     let (n, from) = client_socket.recv_from(&mut buf)?;
//!     client.handle_datagram(now(), from, &buf[..n]);
//!     while let Some(event) = client.poll_event() {
//!         if let Event::Response { id: done, response, .. } = event {
//!             assert_eq!(done, id);
//!             answer = Some(response.payload);
//!         }
//!     }
//! }
//! assert_eq!(&answer.unwrap()[..], b"hello from hello");
//! # Ok(())
//! # }
//! ```
//!
//! # The time model
//!
//! [`Instant`] counts microseconds from an origin the caller picks. Every call that can change
//! state takes `now`; [`Endpoint::poll_timeout`] says when the engine next wants
//! [`Endpoint::handle_timeout`]. Calling it early does nothing; calling it late delays
//! retransmissions by as much. A virtual clock (a test's paused time, a simulation) works end
//! to end.
//!
//! # Failures, and what never happens
//!
//! * **Your mistakes** come back as a typed error from the call that made them
//!   ([`endpoint::RequestError`], [`endpoint::RespondError`], [`endpoint::ObserveError`]).
//! * **A peer's misbehaviour** is answered as the RFCs prescribe (Reset, 4.00, 4.02, 4.08,
//!   4.13, 5.03 with Max-Age, 5.05, or silence) and counted in [`endpoint::Stats`]; it is
//!   never returned as an error from `handle_datagram`.
//! * **A request's end** is always exactly one final event: [`Event::Response`],
//!   [`Event::RequestFailed`] with an [`endpoint::Failure`] that says why, [`Event::Pong`] or
//!   [`Event::MulticastDone`].
//! * **Memory** is bounded: every table a peer can grow has a limit in [`Config`].
//! * **Panics**: none on any input. The fuzz targets in the repository's `fuzz/` drive the
//!   parser and whole endpoints with arbitrary datagrams and clock steps.
//!
//! # What is where
//!
//! | module | what |
//! |---|---|
//! | [`msg`] | the wire format: [`msg::Message`], the zero-copy [`msg::MessageView`], codes, options, blocks, content formats |
//! | [`uri`] | `coap://` URIs to and from Uri-* options |
//! | [`link_format`] | RFC 6690 documents and `/.well-known/core` filters |
//! | [`cache_key`] | which requests are "the same" (RFC 7252 §5.6) |
//! | [`endpoint`] | the state machine: message layer, exchanges, block-wise, observe, multicast |
//! | [`proxy`] | forward and reverse proxying with a response cache (RFC 7252 §5.6, §5.7) |
//! | [`request`] | the [`Request`] and [`Response`] builders |
//! | [`resource`] | a router generic over the handler type, shared by the runtime crates |
//! | `host` | the runtime-neutral core of the runtime crates: waiters, dispatch to handlers, request building, their error type (feature `host`) |
//! | `sim` | a deterministic network simulation (feature `sim`) |
//!
//! # Not supported (yet)
//!
//! DTLS and OSCORE security, CoAP over TCP/WebSockets (RFC 8323), Q-Block (RFC 9177), and
//! relaying observations through a proxy.

#![no_std]
#![forbid(unsafe_code)]
// The engine names core and alloc items by their own paths so the no_std build stays honest.
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod addr;
pub mod cache_key;
pub mod endpoint;
#[cfg(feature = "host")]
#[cfg_attr(docsrs, doc(cfg(feature = "host")))]
pub mod host;
pub mod link_format;
pub mod msg;
pub mod proxy;
pub mod request;
pub mod resource;
pub mod rng;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod time;
pub mod uri;

pub use endpoint::{Config, Endpoint, Event, IncomingId, RequestId, Transmit};
pub use request::{Request, Response};
pub use time::Instant;
