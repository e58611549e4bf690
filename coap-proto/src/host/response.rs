//! What a client receives: [`IncomingResponse`] and, for an observation, [`Notification`].

use alloc::sync::Arc;
use core::fmt;
use core::net::SocketAddr;
use core::ops::Deref;

use crate::msg::{Code, Message, MessageType, Token};
use crate::uri::CoapUri;

/// A response a client received.
///
/// Any response is one, whatever its code: check [`code`](IncomingResponse::code) (or
/// [`is_success`](IncomingResponse::is_success)) to tell 2.05 Content from 4.04 Not Found.
#[derive(Clone)]
pub struct IncomingResponse {
    pub(crate) peer: SocketAddr,
    pub(crate) uri: Arc<CoapUri>,
    pub(crate) message: Message,
}

impl IncomingResponse {
    /// The response code, such as 2.05 Content.
    pub fn code(&self) -> Code {
        self.message.code
    }

    /// Whether the code is a success (class 2).
    pub fn is_success(&self) -> bool {
        self.message.code.is_success()
    }

    message_accessors!();

    /// The ETag option, if present.
    pub fn etag(&self) -> Option<&[u8]> {
        self.message.options.etag()
    }

    /// Who answered (an IPv4 peer of a dual-stack socket shows as IPv4).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The URI the request was sent to.
    pub fn uri(&self) -> &CoapUri {
        &self.uri
    }

    /// The message type the response came in: ACK for a piggybacked response, CON or NON for
    /// a separate one.
    pub fn message_type(&self) -> MessageType {
        self.message.mtype
    }

    /// The token that matched the response to its request.
    pub fn token(&self) -> &Token {
        &self.message.token
    }

    /// The whole message as received.
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
            .field("options", &self.message.options)
            .field("payload_len", &self.message.payload.len())
            .finish()
    }
}

/// One notification of an observation (RFC 7641). Derefs to the [`IncomingResponse`] it
/// carries.
#[derive(Clone, Debug)]
pub struct Notification {
    pub(crate) response: IncomingResponse,
    pub(crate) fresh: bool,
}

impl Notification {
    /// Whether it is newer than every notification delivered before (RFC 7641 §3.4). Always
    /// true unless the engine is configured to deliver stale notifications
    /// ([`Config::deliver_stale_notifications`](crate::Config::deliver_stale_notifications)).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The Observe sequence number, absent in a last response that ends the observation.
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

impl Deref for Notification {
    type Target = IncomingResponse;

    fn deref(&self) -> &IncomingResponse {
        &self.response
    }
}
