//! What an endpoint tells its application: events, the ids that name exchanges, and the
//! reasons exchanges fail.

use core::fmt;
use core::net::SocketAddr;

use alloc::string::String;

use super::observe::{ObserverId, ObserverRemoval};
use crate::msg::{Code, Message, OptionNumber};
use crate::time::Instant;

/// Names one request this endpoint sent, from [`Endpoint::request`](super::Endpoint::request)
/// until its final event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The raw number, unique for the lifetime of the endpoint.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req#{}", self.0)
    }
}

/// Names one request this endpoint received and handed to the application, until the
/// application answers it with [`Endpoint::respond`](super::Endpoint::respond).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncomingId(pub(crate) u64);

impl IncomingId {
    /// The raw number, unique for the lifetime of the endpoint.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for IncomingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "in#{}", self.0)
    }
}

/// Something the application should know or act on. Drain them with
/// [`Endpoint::poll_event`](super::Endpoint::poll_event).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A request arrived. Answer it with [`Endpoint::respond`](super::Endpoint::respond), now or
    /// later. Duplicates the network makes never appear here twice.
    Request {
        /// Pass this to `respond`.
        id: IncomingId,
        /// Who sent it.
        peer: SocketAddr,
        /// The request as received (type, Message ID and token included).
        request: Message,
        /// Whether it arrived on a multicast address (see
        /// [`Endpoint::handle_multicast_datagram`](super::Endpoint::handle_multicast_datagram)).
        multicast: bool,
    },
    /// The response to a request. For a unicast request this is the final event of the
    /// exchange; a multicast request gets one per responder and ends with
    /// [`Event::MulticastDone`].
    Response {
        /// The request answered.
        id: RequestId,
        /// Who answered.
        peer: SocketAddr,
        /// The response as received.
        response: Message,
    },
    /// A request ended without a response. This is the final event of the exchange.
    RequestFailed {
        /// The request that failed.
        id: RequestId,
        /// Why.
        reason: Failure,
    },
    /// A multicast request's response window closed; its final event.
    MulticastDone {
        /// The multicast request.
        id: RequestId,
    },
    /// A ping (see [`Endpoint::ping`](super::Endpoint::ping)) was answered by the peer's Reset;
    /// its final event. A ping that gets no answer ends with [`Event::RequestFailed`].
    Pong {
        /// The ping.
        id: RequestId,
    },
    /// A response this endpoint sent as a Confirmable message was acknowledged by the client.
    ResponseConfirmed {
        /// The request that was answered.
        id: IncomingId,
    },
    /// A response this endpoint sent as a Confirmable message was not acknowledged: the client
    /// reset it or never answered.
    ResponseNotConfirmed {
        /// The request that was answered.
        id: IncomingId,
        /// Timeout or Reset.
        reason: Failure,
    },
    /// Requests to `peer` are waiting because every Message ID usable towards it is still
    /// within its lifetime (RFC 7252 §4.4 forbids reuse). They are sent from `until` on.
    MessageIdsExhausted {
        /// The peer.
        peer: SocketAddr,
        /// When the next Message ID becomes free.
        until: Instant,
    },
    /// A notification of an observation started with
    /// [`Endpoint::observe`](super::Endpoint::observe) (the first one is the response to the
    /// registration). Not a final event.
    Notification {
        /// The observation.
        id: RequestId,
        /// Who sent it.
        peer: SocketAddr,
        /// The notification.
        response: Message,
        /// Whether it is newer than every notification delivered before (RFC 7641 §3.4).
        /// Always true unless [`Config::deliver_stale_notifications`](super::Config::deliver_stale_notifications)
        /// is set (the commercial class's `IsLatest`).
        fresh: bool,
    },
    /// The engine asks the application to render one variant of an observed resource again,
    /// after [`Endpoint::notify`](super::Endpoint::notify) without a representation. Answer
    /// with [`Endpoint::respond`](super::Endpoint::respond); the answer goes to every observer
    /// of the variant.
    RenderNotification {
        /// Pass this to `respond`.
        id: IncomingId,
        /// The resource path given to `notify`.
        resource: String,
        /// The registration request of this variant (without Observe).
        request: Message,
    },
    /// A client became an observer of a resource.
    ObserverAdded {
        /// The observer.
        id: ObserverId,
        /// The resource path.
        resource: String,
        /// The client.
        peer: SocketAddr,
        /// How many observers the resource has now.
        observers: usize,
    },
    /// An observer left a resource's list.
    ObserverRemoved {
        /// The observer.
        id: ObserverId,
        /// The resource path.
        resource: String,
        /// The client.
        peer: SocketAddr,
        /// Why.
        reason: ObserverRemoval,
        /// How many observers the resource has left.
        observers: usize,
    },
    /// A step in the life of a client exchange, emitted only when
    /// [`Config::report_progress`](super::Config::report_progress) is set.
    Progress {
        /// The request.
        id: RequestId,
        /// What happened.
        progress: Progress,
    },
}

/// A step in the life of a client exchange (see [`Event::Progress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Waiting behind NSTART or Message ID exhaustion.
    Queued,
    /// Sent for the first time.
    Sent,
    /// Retransmitted; `attempt` counts from 1.
    Retransmitted {
        /// Which retransmission this was.
        attempt: u32,
    },
    /// The server acknowledged the request with an empty ACK; a separate response follows.
    Acknowledged,
}

/// Why an exchange ended without a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No acknowledgement or response arrived in time (MAX_TRANSMIT_WAIT for Confirmable
    /// messages, the configured wait otherwise).
    Timeout,
    /// The peer answered with a Reset message.
    Reset,
    /// The application cancelled it, aborted the peer, or the endpoint shut down.
    Cancelled,
    /// The encoded request is larger than the configured maximum message size.
    MessageTooBig {
        /// The encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The response carried a critical option this endpoint does not understand, so it was
    /// rejected (RFC 7252 §5.4.1).
    UnrecognizedCriticalOption(OptionNumber),
    /// The representation changed while it was downloaded block by block (the ETag
    /// differed between blocks, RFC 7959 §2.4).
    ResourceChanged,
    /// The server sent a Block1 option this transfer did not expect (for example 2.31
    /// Continue after the last block).
    UnexpectedBlock1,
    /// The server sent a block that does not fit the transfer (wrong number or size, or a
    /// malformed Block2 option).
    UnexpectedBlock2,
    /// A response in the middle of a block-wise download had no Block2 option.
    MissingBlock2,
    /// The response body exceeds [`Config::max_body_size`](super::Config::max_body_size).
    BodyTooLarge,
    /// The server ended an observation with a non-2.xx notification (RFC 7641 §3.2), which
    /// was delivered just before as [`Event::Notification`].
    ObservationRejected(Code),
    /// A separate response could not be sent: [`Config::max_peers`](super::Config::max_peers)
    /// peers already have message-layer state.
    TooManyPeers,
    /// The socket reported that the peer is unreachable (an ICMP error, passed in with
    /// [`Endpoint::handle_unreachable`](super::Endpoint::handle_unreachable)).
    Unreachable,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out waiting for the peer"),
            Failure::Reset => f.write_str("the peer answered with a Reset"),
            Failure::Cancelled => f.write_str("cancelled"),
            Failure::MessageTooBig { size, max } => {
                write!(f, "message of {size} bytes exceeds the maximum of {max}")
            }
            Failure::UnrecognizedCriticalOption(n) => {
                write!(f, "response carried unrecognized critical option {}", n.0)
            }
            Failure::Unreachable => f.write_str("the peer is unreachable"),
            Failure::TooManyPeers => f.write_str("too many peers with state to send a response"),
            Failure::ResourceChanged => {
                f.write_str("the resource changed during a block-wise transfer")
            }
            Failure::UnexpectedBlock1 => f.write_str("the server sent an unexpected Block1 option"),
            Failure::UnexpectedBlock2 => f.write_str("the server sent an unexpected block"),
            Failure::MissingBlock2 => f.write_str("a block-wise response lacked its Block2 option"),
            Failure::ObservationRejected(code) => {
                write!(f, "the server ended the observation with {code}")
            }
            Failure::BodyTooLarge => {
                f.write_str("the response body exceeds the configured maximum")
            }
        }
    }
}

impl core::error::Error for Failure {}
