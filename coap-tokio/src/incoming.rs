//! What a server handler receives, [`IncomingRequest`], and the [`Responder`] that answers
//! a request later.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use coap_proto::msg::{Code, ContentFormat, Message, MessageType, Options, Token};
use coap_proto::{IncomingId, Response};
use tokio::sync::{mpsc, oneshot};

use crate::driver::Internal;
use crate::Error;

/// A request received by a [`Server`](crate::Server), handed to the handler of its route.
pub struct IncomingRequest {
    pub(crate) id: IncomingId,
    pub(crate) peer: SocketAddr,
    pub(crate) message: Message,
    pub(crate) multicast: bool,
    /// Whether the engine asks for a fresh representation to notify observers with, rather
    /// than a client asking.
    pub(crate) render: bool,
    /// How many leading Uri-Path segments the route matched; the rest is
    /// [`rest`](IncomingRequest::rest).
    pub(crate) matched: usize,
    pub(crate) internal: mpsc::UnboundedSender<Internal>,
}

impl IncomingRequest {
    /// The engine's name for this request, as listed by
    /// [`ServerHandle::pending_incoming`](crate::ServerHandle::pending_incoming).
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
        coap_proto::resource::path_from_segments(self.message.options.uri_path())
    }

    /// The segments after the part of the path the route matched: for a catch-all route
    /// `/files/*` and a request for `/files/a/b`, `["a", "b"]`.
    pub fn rest(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_path().skip(self.matched)
    }

    /// The Uri-Query arguments, decoded.
    pub fn query(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_query()
    }

    /// The value of the first query argument `name=value`, if any.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query().find_map(|arg| {
            let (n, v) = arg.split_once('=').unwrap_or((arg, ""));
            (n == name).then_some(v)
        })
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.message.options
    }

    /// The body.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The body as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.message.payload).ok()
    }

    /// The Content-Format option, if present.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.message.options.content_format()
    }

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
    /// the resource's current state, to notify every observer with (after
    /// [`Notifier::notify`](crate::Notifier::notify)). The message is the one an observer
    /// registered with (without Observe), and [`peer`](IncomingRequest::peer) is the server's
    /// own address.
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
    /// §5.10.6; the engine's [`hashing_etag`](coap_proto::resource::hashing_etag)).
    pub fn with_etag(&self, mut response: Response) -> Response {
        coap_proto::resource::hashing_etag(&self.message.options, &mut response);
        response
    }

    /// Takes the right to answer this request out of the handler: the handler returns the
    /// [`Deferred`] marker, and the request is answered when the [`Responder`] sends, from any
    /// task, however much later. Until then the engine has acknowledged a Confirmable request
    /// with an empty ACK (RFC 7252 §5.2.2), and the answer goes out as a separate response.
    ///
    /// A `Responder` dropped without sending answers 5.00 Internal Server Error, so the
    /// client is never left waiting and the server keeps no state for it.
    pub fn defer(&self) -> (Responder, Deferred) {
        (
            Responder {
                id: self.id,
                internal: Some(self.internal.clone()),
            },
            Deferred { _private: () },
        )
    }
}

impl fmt::Debug for IncomingRequest {
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

/// The marker a handler returns after [`IncomingRequest::defer`]: the answer comes through
/// the [`Responder`].
#[derive(Debug)]
pub struct Deferred {
    _private: (),
}

/// Answers one request later, from any task (see [`IncomingRequest::defer`]).
pub struct Responder {
    id: IncomingId,
    internal: Option<mpsc::UnboundedSender<Internal>>,
}

impl Responder {
    /// The request this responder answers.
    pub fn id(&self) -> IncomingId {
        self.id
    }

    /// Sends the response and waits until the engine has taken it.
    ///
    /// Fails with [`Error::AlreadyAnswered`] if the request was answered already (by the
    /// handler's own return value, or another responder), [`Error::MessageTooBig`] or
    /// [`Error::NotAResponse`] if the engine refused the response, and
    /// [`Error::ShuttingDown`] if the server has stopped.
    pub async fn send(mut self, response: Response) -> Result<(), Error> {
        let Some(internal) = self.internal.take() else {
            return Err(Error::AlreadyAnswered);
        };
        let (tx, rx) = oneshot::channel();
        internal
            .send(Internal::Respond {
                id: self.id,
                response: Box::new(response),
                done: Some(tx),
            })
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(internal) = self.internal.take() {
            let _ = internal.send(Internal::Abandoned(self.id));
        }
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("id", &self.id).finish()
    }
}

/// What a handler produced: a response now, or a promise that a [`Responder`] answers.
// A reply is built once per request and moved straight to the engine: boxing the response
// would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Reply {
    /// Send this response.
    Response(Response),
    /// A [`Responder`] answers (see [`IncomingRequest::defer`]).
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
/// `CoapError` does: 4.04, 4.05, 5.00 ... with an optional diagnostic payload).
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
