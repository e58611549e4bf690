//! The client side a runtime crate shares: a request from its URI and builder settings, the
//! destination address, and the endpoint a client or server starts with.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::net::SocketAddr;
use core::time::Duration;

use bytes::Bytes;
use rand_core::RngCore;

use super::{Channels, Command, Error};
use crate::addr::{for_socket, unmapped};
use crate::endpoint::RequestId;
use crate::msg::{Code, MessageType, OptionNumber, Options};
use crate::request::Request;
use crate::uri::{CoapUri, Host, Scheme};
use crate::{Config, Endpoint};

/// Everything a request builder collects before the request is sent: method, URI text, the
/// options and payload set on the builder, message type and timeout.
///
/// A runtime crate's `RequestBuilder` holds one (the [`request_builder_methods`] macro writes
/// its setters) and turns it into a [`Request`] once the URI's host is resolved.
///
/// [`request_builder_methods`]: crate::request_builder_methods
#[derive(Clone, Debug)]
pub struct RequestSpec {
    method: Code,
    uri: String,
    options: Options,
    payload: Bytes,
    message_type: Option<MessageType>,
    timeout: Option<Duration>,
}

impl RequestSpec {
    /// A request with `method` for the URI `uri` (parsed when sent), and nothing else.
    pub fn new(method: Code, uri: String) -> RequestSpec {
        RequestSpec {
            method,
            uri,
            options: Options::new(),
            payload: Bytes::new(),
            message_type: None,
            timeout: None,
        }
    }

    /// The method.
    pub fn method(&self) -> Code {
        self.method
    }

    /// The URI as given.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The timeout set, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the body.
    pub fn set_payload(&mut self, payload: Bytes) {
        self.payload = payload;
    }

    /// Adds an option (after those the URI gives, for the same number).
    pub fn push_option(&mut self, number: OptionNumber, value: &[u8]) {
        self.options.push(number, value);
    }

    /// Adds an option with an unsigned integer value, in the shortest encoding (RFC 7252
    /// §3.2).
    pub fn push_uint_option(&mut self, number: OptionNumber, value: u32) {
        self.options.push_uint(number, value);
    }

    /// Sets the message type; `None` leaves it to the engine (Confirmable by default).
    pub fn set_message_type(&mut self, message_type: Option<MessageType>) {
        self.message_type = message_type;
    }

    /// Sets how long to wait for the response.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// Parses the URI; only the `coap` scheme is served.
    pub fn parse_uri(&self) -> Result<CoapUri, Error> {
        parse_uri(&self.uri)
    }

    /// The request for `uri` (the parsed URI) sent to `remote`: Uri-Host only for a name (or
    /// an address other than the destination), Uri-Port only for a port other than the
    /// destination's (RFC 7252 §6.4 steps 5 to 7), then the builder's options, payload,
    /// message type and timeout.
    pub fn into_request(self, uri: &CoapUri, remote: SocketAddr) -> Request {
        let mut request = Request::new(self.method);
        uri.to_options_for(&mut request.options, unmapped(remote));
        for (number, value) in self.options.iter() {
            request.options.push(number, value);
        }
        request.payload = self.payload;
        request.message_type = self.message_type;
        request.timeout = self.timeout;
        request
    }

    /// The [`Command::Request`] that starts this request for `uri` (the parsed URI) towards
    /// `remote`, with `waiter` waiting for the outcome, `ticket` naming it for a cancel before
    /// it has an id, and `started` (if any) waiting for the id.
    pub fn into_command<C: Channels>(
        self,
        uri: impl Into<Arc<CoapUri>>,
        remote: SocketAddr,
        ticket: Option<u64>,
        waiter: C::Waiter,
        started: Option<C::Reply<Result<RequestId, Error>>>,
    ) -> Command<C> {
        let uri = uri.into();
        let request = self.into_request(&uri, remote);
        Command::Request {
            ticket,
            remote,
            request: Box::new(request),
            uri,
            waiter,
            started,
        }
    }
}

/// Where a request goes, as a client's [`Targets`] finds it from the URI text.
#[derive(Clone, Debug)]
pub enum TargetLookup {
    /// The URI names an address: send to it (in the socket's form).
    Address(Arc<CoapUri>, SocketAddr),
    /// The URI names a host: ask the resolver ([`destination`] gives the name and port,
    /// [`choose_address`] picks among the answers).
    Resolve(CoapUri),
}

/// The last request target of a client that named an address, kept so that requests for
/// the same URI text (the common case of a client polling one resource) are not parsed
/// again: the URI, parsed and shared, and its destination.
///
/// Only targets found without a resolver are kept: an address in the URI stays the same,
/// while what a name resolves to may change. One entry, replaced by each other URI that
/// names an address, so it never grows.
#[derive(Debug, Default)]
pub struct Targets {
    last: std::sync::Mutex<Option<KeptTarget>>,
}

/// What [`Targets`] keeps.
#[derive(Debug)]
struct KeptTarget {
    /// The URI as given.
    text: String,
    /// The address of the socket it was looked up for.
    local: SocketAddr,
    uri: Arc<CoapUri>,
    remote: SocketAddr,
}

impl Targets {
    /// An empty cache.
    pub fn new() -> Targets {
        Targets::default()
    }

    /// Where a request for the URI `text` goes from a socket bound to `local`: the parsed
    /// URI and its address, or the URI to resolve.
    ///
    /// # Errors
    ///
    /// Those of [`parse_uri`] and [`destination`].
    pub fn target(&self, local: SocketAddr, text: &str) -> Result<TargetLookup, Error> {
        {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let hit = last.as_ref().filter(|k| k.local == local && k.text == text);
            if let Some(kept) = hit {
                return Ok(TargetLookup::Address(Arc::clone(&kept.uri), kept.remote));
            }
        }
        let uri = parse_uri(text)?;
        let remote = match destination(local, &uri)? {
            Destination::Address(remote) => remote,
            Destination::Name(..) => return Ok(TargetLookup::Resolve(uri)),
        };
        let uri = Arc::new(uri);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(KeptTarget {
            text: text.into(),
            local,
            uri: Arc::clone(&uri),
            remote,
        });
        Ok(TargetLookup::Address(uri, remote))
    }
}

/// Parses a request URI; only `coap` is served (`coaps` needs DTLS).
pub fn parse_uri(text: &str) -> Result<CoapUri, Error> {
    let uri = CoapUri::parse(text)?;
    if uri.scheme() != Scheme::Coap {
        return Err(Error::UnsupportedScheme(uri.scheme()));
    }
    Ok(uri)
}

/// Where a request for a URI goes, as far as is known without asking a resolver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'u> {
    /// This address, in the form the socket uses (see [`crate::addr::for_socket`]).
    Address(SocketAddr),
    /// A host name to resolve, with the port; pass what the resolver says to
    /// [`choose_address`].
    Name(&'u str, u16),
}

/// Where a request for `uri` goes from a socket bound to `local`: the URI's address, or the
/// name to resolve.
///
/// # Errors
///
/// [`Error::NoUsableAddress`] when the URI's address is of a family the socket cannot reach,
/// [`Error::Unsupported`] for an IPv6 zone given by interface name.
pub fn destination(local: SocketAddr, uri: &CoapUri) -> Result<Destination<'_>, Error> {
    if let Some(addr) = uri.socket_addr_hint() {
        return for_socket(local, addr)
            .map(Destination::Address)
            .ok_or_else(|| Error::NoUsableAddress {
                host: alloc::string::ToString::to_string(uri.host()),
            });
    }
    match uri.host() {
        Host::Name(name) => Ok(Destination::Name(name, uri.port())),
        // An IP host with a named zone (such as fe80::1%eth0) needs the system's help.
        Host::Ip { .. } => Err(Error::Unsupported("IPv6 zones given by interface name")),
    }
}

/// Picks among the addresses `host` resolved to the one to send to from a socket bound to
/// `local`: the first of the socket's own family, else the first the socket can reach (an
/// IPv4 address reaches a dual-stack IPv6 socket as a mapped address). The result is in the
/// socket's form.
///
/// # Errors
///
/// [`Error::NoUsableAddress`] when no address is reachable.
pub fn choose_address(
    local: SocketAddr,
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<SocketAddr, Error> {
    let mut fallback = None;
    for addr in addrs {
        if addr.is_ipv4() == local.is_ipv4() {
            if let Some(a) = for_socket(local, addr) {
                return Ok(a);
            }
        }
        fallback = fallback.or_else(|| for_socket(local, addr));
    }
    fallback.ok_or_else(|| Error::NoUsableAddress { host: host.into() })
}

/// The engine a runtime crate's client or server starts with, drawing from `rng`.
///
/// Accept (RFC 7252 §5.10.4) is declared understood, so handlers see it (the engine's own
/// list of recognized critical options lacks it, and would answer requests carrying it 4.02).
///
/// # Errors
///
/// [`Error::Config`] when the configuration is not usable.
pub fn new_endpoint(mut config: Config, rng: Box<dyn RngCore + Send>) -> Result<Endpoint, Error> {
    // Requests for a forward proxy reach the routing table, which has the proxy route or
    // answers 5.05 itself (see `Router::proxy`).
    config.proxy = true;
    if !config
        .extra_critical_options
        .contains(&OptionNumber::ACCEPT)
    {
        config.extra_critical_options.push(OptionNumber::ACCEPT);
    }
    Ok(Endpoint::with_rng(config, rng)?)
}

/// Writes the option setters of a runtime crate's `RequestBuilder`, which must have a field
/// `spec` holding a [`RequestSpec`](crate::host::RequestSpec). Each setter takes and returns
/// the builder:
///
/// `payload`, `content_format`, `accept`, `etag`, `if_match`, `if_none_match`, `query`,
/// `option`, `option_str`, `option_uint`, `con`, `non` and `timeout`.
///
/// The runtime crates use it so that every one of them offers the same setters, written once.
#[macro_export]
macro_rules! request_builder_methods {
    () => {
        /// The body (sent block-wise when it is large, RFC 7959).
        pub fn payload(mut self, payload: impl Into<$crate::host::Bytes>) -> Self {
            self.spec.set_payload(payload.into());
            self
        }

        /// The Content-Format of the body.
        pub fn content_format(self, format: $crate::msg::ContentFormat) -> Self {
            self.option_uint(
                $crate::msg::OptionNumber::CONTENT_FORMAT,
                u32::from(format.0),
            )
        }

        /// The Content-Format wanted in the response (Accept).
        pub fn accept(self, format: $crate::msg::ContentFormat) -> Self {
            self.option_uint($crate::msg::OptionNumber::ACCEPT, u32::from(format.0))
        }

        /// Adds an ETag: asks the server to answer 2.03 Valid if this is still the current
        /// representation (RFC 7252 §5.10.6). May be given several times.
        pub fn etag(self, etag: impl AsRef<[u8]>) -> Self {
            self.option($crate::msg::OptionNumber::ETAG, etag)
        }

        /// Adds an If-Match condition: the request applies only if the resource's ETag is
        /// this one (RFC 7252 §5.10.8.1). May be given several times; an empty value means
        /// "exists".
        pub fn if_match(self, etag: impl AsRef<[u8]>) -> Self {
            self.option($crate::msg::OptionNumber::IF_MATCH, etag)
        }

        /// Adds If-None-Match: the request applies only if the resource does not exist
        /// (RFC 7252 §5.10.8.2).
        pub fn if_none_match(self) -> Self {
            self.option($crate::msg::OptionNumber::IF_NONE_MATCH, [])
        }

        /// Adds a Uri-Query argument (after those of the URI).
        pub fn query(self, arg: &str) -> Self {
            self.option_str($crate::msg::OptionNumber::URI_QUERY, arg)
        }

        /// Adds an option with an opaque value.
        pub fn option(
            mut self,
            number: $crate::msg::OptionNumber,
            value: impl AsRef<[u8]>,
        ) -> Self {
            self.spec.push_option(number, value.as_ref());
            self
        }

        /// Adds an option with a string value.
        pub fn option_str(self, number: $crate::msg::OptionNumber, value: &str) -> Self {
            self.option(number, value.as_bytes())
        }

        /// Adds an option with an unsigned integer value (in the shortest encoding, RFC 7252
        /// §3.2).
        pub fn option_uint(mut self, number: $crate::msg::OptionNumber, value: u32) -> Self {
            self.spec.push_uint_option(number, value);
            self
        }

        /// Sends the request Confirmable (the default): retransmitted until acknowledged.
        pub fn con(mut self) -> Self {
            self.spec
                .set_message_type(Some($crate::msg::MessageType::Con));
            self
        }

        /// Sends the request Non-confirmable: once, without acknowledgement.
        pub fn non(mut self) -> Self {
            self.spec
                .set_message_type(Some($crate::msg::MessageType::Non));
            self
        }

        /// Gives up with `Error::Timeout` if no response has arrived `timeout` after the
        /// request was sent (name resolution included). Without it, the engine's limits apply
        /// (MAX_TRANSMIT_WAIT for a lost CON request, 93 s with the defaults).
        pub fn timeout(mut self, timeout: ::core::time::Duration) -> Self {
            self.spec.set_timeout(timeout);
            self
        }
    };
}

/// Writes the request shortcuts of a runtime crate's `Client`: `get`, `post`, `put`,
/// `delete`, `fetch`, `patch` and `ipatch`, each `self.request(method, uri)`. The invoking
/// module must have the crate's `RequestBuilder` in scope, and `Client` must have a method
/// `request(&self, Code, impl Into<String>) -> RequestBuilder`.
#[macro_export]
macro_rules! client_verbs {
    () => {
        /// A GET request for `uri` (`coap://host:port/path?query`): set options on the
        /// builder, then send it.
        pub fn get(&self, uri: impl Into<String>) -> RequestBuilder {
            self.request($crate::msg::Code::GET, uri)
        }

        /// A POST request.
        pub fn post(&self, uri: impl Into<String>) -> RequestBuilder {
            self.request($crate::msg::Code::POST, uri)
        }

        /// A PUT request.
        pub fn put(&self, uri: impl Into<String>) -> RequestBuilder {
            self.request($crate::msg::Code::PUT, uri)
        }

        /// A DELETE request.
        pub fn delete(&self, uri: impl Into<String>) -> RequestBuilder {
            self.request($crate::msg::Code::DELETE, uri)
        }

        /// A FETCH request (RFC 8132).
        pub fn fetch(&self, uri: impl Into<String>) -> RequestBuilder {
            self.request($crate::msg::Code::FETCH, uri)
        }

        /// A PATCH request (RFC 8132).
        pub fn patch(&self, uri: impl Into<String>) -> RequestBuilder {
            self.request($crate::msg::Code::PATCH, uri)
        }

        /// An iPATCH request (RFC 8132).
        pub fn ipatch(&self, uri: impl Into<String>) -> RequestBuilder {
            self.request($crate::msg::Code::IPATCH, uri)
        }
    };
}

/// Writes the setters a runtime crate's `ClientBuilder` and `ServerBuilder` share: `config`,
/// `socket_options`, `reuse_address`, `reuse_port`, `recv_buffer_size`, `send_buffer_size`,
/// `only_v6`, `dscp`, `dont_fragment`, `max_datagram_size`, `rng` and `shutdown_grace`.
///
/// The builder must have the fields `config` ([`Config`](crate::Config)), `socket` (the
/// crate's `SocketOptions`, which the invoking module must have in scope), `rng`
/// (`Option<Box<dyn RngCore + Send>>`) and `grace` (a `Duration`).
#[macro_export]
macro_rules! bind_builder_methods {
    () => {
        /// The engine configuration (transmission parameters, NSTART, table bounds, ...).
        pub fn config(mut self, config: $crate::Config) -> Self {
            self.config = config;
            self
        }

        /// All socket options at once.
        pub fn socket_options(mut self, options: SocketOptions) -> Self {
            self.socket = options;
            self
        }

        /// `SO_REUSEADDR`.
        pub fn reuse_address(mut self, on: bool) -> Self {
            self.socket.reuse_address = on;
            self
        }

        /// `SO_REUSEPORT` (Unix): several sockets, even in several processes, share the port
        /// and the system spreads the traffic over them.
        pub fn reuse_port(mut self, on: bool) -> Self {
            self.socket.reuse_port = on;
            self
        }

        /// The receive buffer size to ask for.
        pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
            self.socket.recv_buffer_size = Some(bytes);
            self
        }

        /// The send buffer size to ask for.
        pub fn send_buffer_size(mut self, bytes: usize) -> Self {
            self.socket.send_buffer_size = Some(bytes);
            self
        }

        /// `IPV6_V6ONLY` for an IPv6 socket.
        pub fn only_v6(mut self, on: bool) -> Self {
            self.socket.only_v6 = Some(on);
            self
        }

        /// The DSCP code point (0..=63) of every datagram sent.
        pub fn dscp(mut self, dscp: u8) -> Self {
            self.socket.dscp = Some(dscp);
            self
        }

        /// Set the don't-fragment bit (see [`SocketOptions::dont_fragment`]).
        pub fn dont_fragment(mut self, on: bool) -> Self {
            self.socket.dont_fragment = on;
            self
        }

        /// The largest datagram to send or accept (`Config::max_message_size`).
        pub fn max_datagram_size(mut self, bytes: usize) -> Self {
            self.config.max_message_size = bytes;
            self
        }

        /// The random number generator for tokens, Message IDs and back-off jitter. By
        /// default a ChaCha20 generator seeded from the operating system, so tokens are hard
        /// to guess (RFC 7252 §5.3.1).
        pub fn rng(mut self, rng: Box<dyn $crate::host::RngCore + Send>) -> Self {
            self.rng = Some(rng);
            self
        }

        /// How long a graceful shutdown lets exchanges under way (handlers, Confirmable
        /// responses, requests in flight) finish. Default 10 s.
        pub fn shutdown_grace(mut self, grace: ::core::time::Duration) -> Self {
            self.grace = grace;
            self
        }
    };
}
