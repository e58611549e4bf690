//! What a handler gets, [`IncomingRequest`], and how it answers: a [`Reply`] now, or later
//! through a [`Responder`].

use std::fmt;
use std::net::SocketAddr;

use async_channel::Sender;
use bytes::Bytes;
use coap_proto::msg::{Code, ContentFormat, Message, MessageType, Options, Token};
use coap_proto::{IncomingId, Response};

use crate::driver::{oneshot, Internal};
use crate::Error;

/// A request a [`Server`](crate::Server) received, handed to the handler of its route.
pub struct IncomingRequest {
    pub(crate) id: IncomingId,
    pub(crate) peer: SocketAddr,
    pub(crate) message: Message,
    pub(crate) multicast: bool,
    /// The engine asks for the current state to notify observers with; no client sent this.
    pub(crate) render: bool,
    /// How many leading Uri-Path segments the route consumed.
    pub(crate) matched: usize,
    pub(crate) internal: Sender<Internal>,
}

impl IncomingRequest {
    /// The engine's id of the request (as listed by
    /// [`ServerHandle::pending_incoming`](crate::ServerHandle::pending_incoming)).
    pub fn id(&self) -> IncomingId {
        self.id
    }

    /// The method code.
    pub fn method(&self) -> Code {
        self.message.code
    }

    /// The sender (an IPv4 peer of a dual-stack socket shows as IPv4).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The decoded Uri-Path segments.
    pub fn path(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_path()
    }

    /// The path as `/a/b` (segments not percent-encoded; `/` for the root).
    pub fn path_string(&self) -> String {
        join_path(self.message.options.uri_path())
    }

    /// The segments below what the route matched: `["a", "b"]` for a request for
    /// `/files/a/b` served by a prefix route on `/files`.
    pub fn rest(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_path().skip(self.matched)
    }

    /// The decoded Uri-Query arguments.
    pub fn query(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_query()
    }

    /// The value of the first query argument called `name` (`name=value`, or `name` alone
    /// for an empty value).
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query().find_map(|arg| match arg.split_once('=') {
            Some((key, value)) if key == name => Some(value),
            None if arg == name => Some(""),
            _ => None,
        })
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.message.options
    }

    /// The body, reassembled if it came block-wise.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The body as text, if it is valid UTF-8.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.message.payload).ok()
    }

    /// The Content-Format option, if any.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.message.options.content_format()
    }

    /// The Accept option, if any.
    pub fn accept(&self) -> Option<ContentFormat> {
        self.message.options.accept()
    }

    /// The token.
    pub fn token(&self) -> &Token {
        &self.message.token
    }

    /// CON or NON.
    pub fn message_type(&self) -> MessageType {
        self.message.mtype
    }

    /// Whether this is an observation registration: a GET or FETCH with Observe = 0
    /// (RFC 7641 §3.1).
    pub fn is_observe_registration(&self) -> bool {
        matches!(self.message.code, Code::GET | Code::FETCH)
            && self.message.options.observe() == Some(0)
    }

    /// Whether the engine itself asks for the resource's current state, to send to its
    /// observers after a [`Notifier::notify`](crate::Notifier::notify). The message is the
    /// registration an observer sent (without Observe), and [`peer`](IncomingRequest::peer)
    /// is the server's own address.
    pub fn is_notification_render(&self) -> bool {
        self.render
    }

    /// Whether it was sent to a multicast group address.
    pub fn is_multicast(&self) -> bool {
        self.multicast
    }

    /// The whole message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Adds to a 2.05 `response` an ETag derived from its content, and makes it a 2.03 Valid
    /// without payload if this request already names that ETag (RFC 7252 §5.10.6), using
    /// [`hashing_etag`](coap_proto::resource::hashing_etag).
    pub fn with_etag(&self, mut response: Response) -> Response {
        coap_proto::resource::hashing_etag(&self.message.options, &mut response);
        response
    }

    /// Moves the duty to answer out of the handler: it returns the [`Deferred`] marker, and
    /// the [`Responder`] answers from any task, however much later. A Confirmable request
    /// gets an empty ACK meanwhile (RFC 7252 §5.2.2) and the answer goes as a separate
    /// response.
    ///
    /// A `Responder` dropped without answering sends 5.00 Internal Server Error, so no client
    /// is left waiting and the server keeps nothing for it.
    pub fn defer(&self) -> (Responder, Deferred) {
        let responder = Responder {
            id: self.id,
            internal: Some(self.internal.clone()),
        };
        (responder, Deferred { _private: () })
    }
}

pub(crate) use coap_proto::resource::path_from_segments as join_path;

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

/// Returned by a handler that used [`IncomingRequest::defer`]: the [`Responder`] answers.
#[derive(Debug)]
pub struct Deferred {
    _private: (),
}

/// The right to answer one request, usable from any task (see [`IncomingRequest::defer`]).
pub struct Responder {
    id: IncomingId,
    internal: Option<Sender<Internal>>,
}

impl Responder {
    /// The request it answers.
    pub fn id(&self) -> IncomingId {
        self.id
    }

    /// Sends `response` and waits until the engine has taken it.
    ///
    /// Fails with [`Error::AlreadyAnswered`] if the request has an answer already (the
    /// handler returned one, say), with [`Error::MessageTooBig`] or [`Error::NotAResponse`]
    /// if the engine refused it, and with [`Error::ShuttingDown`] once the server stopped.
    pub async fn send(mut self, response: Response) -> Result<(), Error> {
        let internal = self.internal.take().ok_or(Error::AlreadyAnswered)?;
        let (done, taken) = oneshot();
        internal
            .try_send(Internal::Respond {
                id: self.id,
                response: Box::new(response),
                done: Some(done),
            })
            .map_err(|_| Error::ShuttingDown)?;
        taken.recv().await.map_err(|_| Error::ShuttingDown)?
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(internal) = self.internal.take() {
            let _ = internal.try_send(Internal::Abandoned(self.id));
        }
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("id", &self.id).finish()
    }
}

/// What a handler produced: the response, or the promise that a [`Responder`] answers.
// Built once per request and handed straight to the engine; boxing would only add an
// allocation.
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

/// What a handler may return: [`Response`], [`Deferred`], [`Reply`], or `Result<T, E>` with
/// `T` one of those and `E` convertible into a [`Response`] (as
/// [`CoapError`](crate::CoapError) is: 4.00, 4.04, 5.00 ... with a diagnostic payload).
pub trait IntoReply {
    /// Converts into a [`Reply`].
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
        self.map_or_else(|e| Reply::Response(e.into()), IntoReply::into_reply)
    }
}
