//! What a handler receives, [`Incoming`], and what it gives back, a [`Reply`].

use alloc::string::String;
use core::fmt;
use core::net::SocketAddr;

use crate::endpoint::IncomingId;
use crate::msg::{Code, ContentFormat, Message, MessageType, Token};
use crate::request::Response;

/// A request received from a peer, as a [`Host`](super::Host) hands it to its
/// [`Service`](super::Service): the engine's id, the peer in the form users see, the message,
/// and where it came from.
///
/// A runtime crate's `IncomingRequest` wraps it (and derefs to it), adding the means to answer
/// later.
pub struct Incoming {
    pub(crate) id: IncomingId,
    pub(crate) peer: SocketAddr,
    pub(crate) message: Message,
    pub(crate) multicast: bool,
    /// The engine asks for a fresh representation to notify observers with, rather than a
    /// client asking.
    pub(crate) render: bool,
    /// How many leading Uri-Path segments the route matched; the rest is
    /// [`rest`](Incoming::rest).
    pub(crate) matched: usize,
}

impl Incoming {
    /// The engine's name for this request, as listed among the pending incoming requests.
    pub fn id(&self) -> IncomingId {
        self.id
    }

    /// The method.
    pub fn method(&self) -> Code {
        self.message.code
    }

    /// Who sent it (an IPv4 peer of a dual-stack socket shows as IPv4).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The Uri-Path segments, decoded.
    pub fn path(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_path()
    }

    /// The path as text: `/` and the segments joined by `/` (not percent-encoded).
    pub fn path_string(&self) -> String {
        crate::resource::path_from_segments(self.path())
    }

    /// The segments after the part of the path the route matched: for a catch-all route
    /// `/files` and a request for `/files/a/b`, `a` and `b`.
    pub fn rest(&self) -> impl Iterator<Item = &str> + '_ {
        self.path().skip(self.matched)
    }

    /// The Uri-Query arguments, decoded.
    pub fn query(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_query()
    }

    /// The value of the first query argument `name=value` (`""` for a bare `name`), if any.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query().find_map(|arg| {
            let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
            (key == name).then_some(value)
        })
    }

    message_accessors!();

    /// The Accept option, if present.
    pub fn accept(&self) -> Option<ContentFormat> {
        self.message.options.accept()
    }

    /// The token.
    pub fn token(&self) -> &Token {
        &self.message.token
    }

    /// Confirmable or Non-confirmable.
    pub fn message_type(&self) -> MessageType {
        self.message.mtype
    }

    /// Whether this request registers an observation (RFC 7641 §3.1: a GET or FETCH with
    /// Observe = 0).
    pub fn is_observe_registration(&self) -> bool {
        matches!(self.message.code, Code::GET | Code::FETCH)
            && self.message.options.observe() == Some(0)
    }

    /// Whether no client sent this: the engine asks the handler of an observable route for
    /// the resource's current state, to notify every observer with (after a notify without a
    /// representation). The message is the one an observer registered with (without
    /// Observe), and [`peer`](Incoming::peer) is the server's own address.
    pub fn is_notification_render(&self) -> bool {
        self.render
    }

    /// Whether the request arrived on a multicast group address.
    pub fn is_multicast(&self) -> bool {
        self.multicast
    }

    /// The whole message as received.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Gives a 2.05 Content `response` an ETag computed from its content and turns it into
    /// 2.03 Valid without payload when this request already lists that ETag (RFC 7252
    /// §5.10.6; see [`hashing_etag`](crate::resource::hashing_etag)).
    pub fn with_etag(&self, mut response: Response) -> Response {
        crate::resource::hashing_etag(&self.message.options, &mut response);
        response
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("id", &self.id)
            .field("method", &self.message.code)
            .field("peer", &self.peer)
            .field("path", &self.path_string())
            .field("options", &self.message.options)
            .field("payload_len", &self.message.payload.len())
            .finish()
    }
}

/// The marker a handler returns when the answer comes later, through the responder its
/// runtime crate's `IncomingRequest::defer` handed out together with the marker.
#[derive(Debug)]
pub struct Deferred {
    _private: (),
}

impl Deferred {
    /// The marker. Runtime crates make it together with a responder whose drop answers
    /// 5.00, so a request is never left without an answer; a handler should get it from
    /// there, not from here.
    pub fn new() -> Deferred {
        Deferred { _private: () }
    }
}

impl Default for Deferred {
    fn default() -> Deferred {
        Deferred::new()
    }
}

/// What a handler produced: a response now, or a promise that a responder answers.
// A reply is built once per request and moved straight to the engine: boxing the response
// would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Reply {
    /// Send this response.
    Response(Response),
    /// A responder answers (see [`Deferred`]).
    Deferred(Deferred),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Response(r)
    }
}

impl From<Deferred> for Reply {
    fn from(d: Deferred) -> Reply {
        Reply::Deferred(d)
    }
}

/// Turns what a handler returns into a [`Reply`].
///
/// Implemented for [`Response`], [`Deferred`], [`Reply`], and `Result<T, E>` where `T` is one
/// of those and the error `E` converts into a [`Response`] (as the routing layer's
/// [`CoapError`](crate::resource::CoapError) does: 4.04, 4.05, 5.00 ... with an optional
/// diagnostic payload).
pub trait IntoReply {
    /// The reply.
    fn into_reply(self) -> Reply;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Reply {
        self
    }
}

impl IntoReply for Response {
    fn into_reply(self) -> Reply {
        Reply::Response(self)
    }
}

impl IntoReply for Deferred {
    fn into_reply(self) -> Reply {
        Reply::Deferred(self)
    }
}

impl<T: IntoReply, E: Into<Response>> IntoReply for Result<T, E> {
    fn into_reply(self) -> Reply {
        match self {
            Ok(t) => t.into_reply(),
            Err(e) => Reply::Response(e.into()),
        }
    }
}
