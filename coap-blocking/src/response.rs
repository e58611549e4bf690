//! What a client receives: [`IncomingResponse`] and, for an observation, [`Notification`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use coap_proto::msg::{Code, ContentFormat, Message, MessageType, Options, Token};
use coap_proto::uri::CoapUri;

/// A response received by a [`Client`](crate::Client), whatever its code: check
/// [`code`](IncomingResponse::code) or [`is_success`](IncomingResponse::is_success).
#[derive(Clone)]
pub struct IncomingResponse {
    pub(crate) peer: SocketAddr,
    pub(crate) uri: Arc<CoapUri>,
    pub(crate) message: Message,
}

impl IncomingResponse {
    /// The code, such as 2.05 Content.
    pub fn code(&self) -> Code {
        self.message.code
    }

    /// Whether the code is of class 2.
    pub fn is_success(&self) -> bool {
        self.message.code.is_success()
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.message.options
    }

    /// The body (whole, even when it travelled in blocks).
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

    /// The ETag option.
    pub fn etag(&self) -> Option<&[u8]> {
        self.message.options.etag()
    }

    /// Who answered; an IPv4 peer of a dual-stack socket shows as IPv4.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The URI the request went to.
    pub fn uri(&self) -> &CoapUri {
        &self.uri
    }

    /// ACK for a piggybacked response; CON or NON for a separate one.
    pub fn message_type(&self) -> MessageType {
        self.message.mtype
    }

    /// The token that matched the response to the request.
    pub fn token(&self) -> &Token {
        &self.message.token
    }

    /// The message as received.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Takes the message out.
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
            .field("payload_len", &self.message.payload.len())
            .finish_non_exhaustive()
    }
}

/// One notification of an [`Observation`](crate::Observation) (RFC 7641); derefs to the
/// [`IncomingResponse`] it carries.
#[derive(Clone, Debug)]
pub struct Notification {
    pub(crate) response: IncomingResponse,
    pub(crate) fresh: bool,
}

impl Notification {
    /// Whether it is newer than every notification delivered before (RFC 7641 §3.4); false
    /// only when the engine is configured to deliver stale ones.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The Observe sequence number; absent in the last response that ends an observation.
    pub fn sequence(&self) -> Option<u32> {
        self.response.message.options.observe()
    }

    /// The response.
    pub fn response(&self) -> &IncomingResponse {
        &self.response
    }

    /// Takes the response out.
    pub fn into_response(self) -> IncomingResponse {
        self.response
    }
}

impl core::ops::Deref for Notification {
    type Target = IncomingResponse;

    fn deref(&self) -> &IncomingResponse {
        &self.response
    }
}
