//! What a client gets back: [`IncomingResponse`], and [`Notification`] for observations.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use coap_proto::msg::{Code, ContentFormat, Message, MessageType, Options, Token};
use coap_proto::uri::CoapUri;

/// A response a [`Client`](crate::Client) received, whatever its code: look at
/// [`code`](IncomingResponse::code) or [`is_success`](IncomingResponse::is_success) to tell
/// 2.05 Content from 4.04 Not Found.
#[derive(Clone)]
pub struct IncomingResponse {
    pub(crate) peer: SocketAddr,
    pub(crate) uri: Arc<CoapUri>,
    pub(crate) message: Message,
}

impl IncomingResponse {
    /// The response code (2.05 Content, 4.04 Not Found, ...).
    pub fn code(&self) -> Code {
        self.message.code
    }

    /// Whether the code is of class 2 (success).
    pub fn is_success(&self) -> bool {
        self.message.code.is_success()
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

    /// The ETag option, if any.
    pub fn etag(&self) -> Option<&[u8]> {
        self.message.options.etag()
    }

    /// Who sent it (IPv4 peers of a dual-stack socket show as IPv4).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The URI of the request it answers.
    pub fn uri(&self) -> &CoapUri {
        &self.uri
    }

    /// The message type: ACK when piggybacked, CON or NON when sent separately.
    pub fn message_type(&self) -> MessageType {
        self.message.mtype
    }

    /// The token that matched it to its request.
    pub fn token(&self) -> &Token {
        &self.message.token
    }

    /// The whole message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Takes the whole message.
    pub fn into_message(self) -> Message {
        self.message
    }
}

impl fmt::Debug for IncomingResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingResponse")
            .field("code", &self.message.code)
            .field("peer", &self.peer)
            .field("uri", &format_args!("{}", self.uri))
            .field("options", &self.message.options)
            .field("payload_len", &self.message.payload.len())
            .finish()
    }
}

/// One item of an [`Observation`](crate::Observation) (RFC 7641); it derefs to the
/// [`IncomingResponse`] it carries.
#[derive(Clone, Debug)]
pub struct Notification {
    pub(crate) response: IncomingResponse,
    pub(crate) fresh: bool,
}

impl Notification {
    /// Whether it is newer than everything delivered before it (RFC 7641 §3.4). Only false
    /// when the engine is set to pass stale notifications on
    /// ([`Config::deliver_stale_notifications`](coap_proto::Config::deliver_stale_notifications)).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The Observe sequence number; `None` in a final response that ends the observation.
    pub fn sequence(&self) -> Option<u32> {
        self.response.message.options.observe()
    }

    /// The response it carries.
    pub fn response(&self) -> &IncomingResponse {
        &self.response
    }

    /// Takes the response.
    pub fn into_response(self) -> IncomingResponse {
        self.response
    }
}

impl Deref for Notification {
    type Target = IncomingResponse;

    fn deref(&self) -> &IncomingResponse {
        &self.response
    }
}
