//! What a handler receives, [`IncomingRequest`], and the [`Responder`] that answers later.

use std::fmt;
use std::net::SocketAddr;
use std::sync::mpsc;

use bytes::Bytes;
use coap_proto::msg::{Code, ContentFormat, Message, MessageType, Options, Token};
use coap_proto::{IncomingId, Response};

use crate::io::{Command, Mailbox};
use crate::Error;

/// A request received by a [`Server`](crate::Server), handed to its route's handler on a
/// worker thread.
pub struct IncomingRequest {
    pub(crate) id: IncomingId,
    pub(crate) peer: SocketAddr,
    pub(crate) message: Message,
    pub(crate) multicast: bool,
    /// The engine asks for the resource's state to notify observers with.
    pub(crate) render: bool,
    /// Leading Uri-Path segments the route matched.
    pub(crate) matched: usize,
    pub(crate) mailbox: Mailbox,
}

impl IncomingRequest {
    /// The engine's name for the request (as in
    /// [`ServerHandle::pending_incoming`](crate::ServerHandle::pending_incoming)).
    pub fn id(&self) -> IncomingId {
        self.id
    }

    /// The method.
    pub fn method(&self) -> Code {
        self.message.code
    }

    /// The sender; an IPv4 peer of a dual-stack socket shows as IPv4.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The Uri-Path segments, decoded.
    pub fn path(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_path()
    }

    /// `/` and the segments joined by `/` (not percent-encoded).
    pub fn path_string(&self) -> String {
        coap_proto::resource::path_from_segments(self.path())
    }

    /// The segments below what the route matched (for a prefix route `/files` and a request
    /// for `/files/a/b`: `a`, `b`).
    pub fn rest(&self) -> impl Iterator<Item = &str> + '_ {
        self.path().skip(self.matched)
    }

    /// The Uri-Query arguments, decoded.
    pub fn query(&self) -> impl Iterator<Item = &str> + '_ {
        self.message.options.uri_query()
    }

    /// The value of the first query argument `name=value` (`""` for a bare `name`).
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query().find_map(|arg| {
            let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
            (key == name).then_some(value)
        })
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.message.options
    }

    /// The body, whole even when it travelled in blocks.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The body as text, if it is UTF-8.
    pub fn payload_str(&self) -> Option<&str> {
        core::str::from_utf8(&self.message.payload).ok()
    }

    /// The Content-Format option.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.message.options.content_format()
    }

    /// The Accept option.
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

    /// Whether this registers an observation (a GET or FETCH with Observe = 0, RFC 7641 §3.1).
    pub fn is_observe_registration(&self) -> bool {
        matches!(self.message.code, Code::GET | Code::FETCH)
            && self.message.options.observe() == Some(0)
    }

    /// Whether the engine, not a client, asks: after
    /// [`Notifier::notify`](crate::Notifier::notify) the handler of an observable route
    /// renders the current state for the observers. The message is an observer's registration
    /// without Observe, and the peer is the server's own address.
    pub fn is_notification_render(&self) -> bool {
        self.render
    }

    /// Whether it arrived on a multicast group address.
    pub fn is_multicast(&self) -> bool {
        self.multicast
    }

    /// The message as received.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Gives a 2.05 `response` an ETag computed from its content, and makes it 2.03 Valid
    /// without payload when the request already lists that ETag (RFC 7252 §5.10.6).
    pub fn with_etag(&self, mut response: Response) -> Response {
        coap_proto::resource::hashing_etag(&self.message.options, &mut response);
        response
    }

    /// Takes the answer out of the handler: the handler returns the [`Deferred`] marker and
    /// the [`Responder`] answers from any thread, however much later. Meanwhile the engine has
    /// acknowledged a Confirmable request with an empty ACK (RFC 7252 §5.2.2). A responder
    /// dropped without answering answers 5.00.
    pub fn defer(&self) -> (Responder, Deferred) {
        (
            Responder {
                id: self.id,
                mailbox: Some(self.mailbox.clone()),
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
            .field("payload_len", &self.message.payload.len())
            .finish_non_exhaustive()
    }
}

/// Returned by a handler after [`IncomingRequest::defer`]: the [`Responder`] answers.
#[derive(Debug)]
pub struct Deferred {
    _private: (),
}

/// Answers one request later, from any thread (see [`IncomingRequest::defer`]).
pub struct Responder {
    id: IncomingId,
    mailbox: Option<Mailbox>,
}

impl Responder {
    /// The request it answers.
    pub fn id(&self) -> IncomingId {
        self.id
    }

    /// Sends the response and blocks until the engine has taken it (not until the client
    /// has it).
    ///
    /// Fails with [`Error::AlreadyAnswered`] if the request was answered already,
    /// [`Error::MessageTooBig`] or [`Error::NotAResponse`] if the engine refused the response
    /// (the client then gets 5.00), and [`Error::ShuttingDown`] if the server has stopped.
    pub fn send(mut self, response: Response) -> Result<(), Error> {
        let Some(mailbox) = self.mailbox.take() else {
            return Err(Error::AlreadyAnswered);
        };
        let (tx, rx) = mpsc::channel();
        mailbox.post(Command::Respond {
            id: self.id,
            response: Box::new(response),
            done: Some(tx),
        })?;
        rx.recv().map_err(|_| Error::ShuttingDown)?
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(mailbox) = self.mailbox.take() {
            let _ = mailbox.post(Command::Abandoned(self.id));
        }
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("id", &self.id).finish()
    }
}

/// What a handler produced: a response, or the promise that a [`Responder`] answers.
// Built once per request and moved straight to the engine: boxing would only cost.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Reply {
    /// Send this response.
    Response(Response),
    /// A [`Responder`] answers.
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
/// `T` one of those and `E` convertible into a `Response` (such as
/// [`CoapError`](crate::CoapError)).
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
