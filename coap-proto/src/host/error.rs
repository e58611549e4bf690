//! [`Error`]: why a call of a runtime crate produced no response, or could not be made.

use alloc::string::String;
use core::fmt;
use std::io;

use crate::endpoint::{ConfigError, Failure, RequestError, RespondError};
use crate::msg::{Code, OptionNumber};
use crate::uri::{Scheme, UriError};

/// What went wrong with a request, a response or a socket.
///
/// A response with an error code (4.04, 5.00, ...) is not an `Error`: it arrives as an
/// [`IncomingResponse`](super::IncomingResponse) whose [`code`](super::IncomingResponse::code)
/// says so. `Error` is for exchanges that produced no response at all, and for misuse. Every
/// runtime crate (`coap-tokio`, `coap-async-std`, `coap-blocking`) uses this one type, so code
/// matching on it moves between them unchanged.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (bind, send, receive, poll, or a socket option).
    Io(io::Error),
    /// The URI could not be parsed (RFC 7252 §6).
    InvalidUri(UriError),
    /// The URI's scheme is not served (`coaps` needs DTLS, which is not here).
    UnsupportedScheme(Scheme),
    /// Resolving the URI's host name failed.
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// The host name resolved to no address of a family the local socket can reach (for
    /// example only IPv6 addresses for a socket bound to an IPv4 address).
    NoUsableAddress {
        /// The host name or address.
        host: String,
    },
    /// No response arrived in time: the request's own timeout passed, or the engine gave up
    /// after its retransmissions (MAX_TRANSMIT_WAIT, RFC 7252 §4.8.2).
    Timeout,
    /// The peer rejected the request with a Reset message (RFC 7252 §4.2, §4.3).
    Reset,
    /// The exchange was cancelled (by the client's `cancel`, by dropping the handle that
    /// waited for it, or because its peer was aborted).
    Cancelled,
    /// The network reported the peer unreachable (an ICMP error such as port unreachable).
    Unreachable,
    /// The encoded message is larger than the configured maximum datagram size.
    MessageTooBig {
        /// The encoded size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The response carried a critical option this endpoint does not understand, so it was
    /// rejected (RFC 7252 §5.4.1).
    UnrecognizedOption(OptionNumber),
    /// The representation changed while it was downloaded block by block (its ETag differed
    /// between blocks, RFC 7959 §2.4), more often than the engine retries.
    ResourceChanged,
    /// The response body is larger than [`Config::max_body_size`](crate::Config::max_body_size).
    BodyTooLarge,
    /// The exchange failed in a way the engine reports by a reason of its own: a block-wise
    /// transfer the server broke (an unexpected or missing Block1/Block2 option), an
    /// observation the server ended with an error, or a reason newer than this type.
    Exchange(Failure),
    /// Too much is under way (client exchanges, requests queued for one peer, or peers with
    /// state); retry when some requests have ended.
    Busy(RequestError),
    /// The code given as a method is not a request code.
    NotARequest(Code),
    /// The code given for a response is not a response code.
    NotAResponse(Code),
    /// The request was already answered, or its peer was aborted, so this response has
    /// nowhere to go.
    AlreadyAnswered,
    /// The endpoint is shutting down or its driver has stopped.
    ShuttingDown,
    /// The endpoint configuration is not usable.
    Config(ConfigError),
    /// The operation needs something the platform or the socket does not offer.
    Unsupported(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "socket error: {e}"),
            Error::InvalidUri(e) => write!(f, "invalid URI: {e}"),
            Error::UnsupportedScheme(s) => write!(f, "the {s} scheme is not supported"),
            Error::Resolve { host, source } => write!(f, "cannot resolve {host:?}: {source}"),
            Error::NoUsableAddress { host } => {
                write!(f, "{host:?} has no address the local socket can reach")
            }
            Error::Timeout => f.write_str("no answer before the timeout"),
            Error::Reset => f.write_str("the peer answered with a Reset"),
            Error::Cancelled => f.write_str("the request was cancelled"),
            Error::Unreachable => f.write_str("the peer is unreachable"),
            Error::MessageTooBig { size, max } => {
                write!(f, "message of {size} bytes exceeds the maximum of {max}")
            }
            Error::UnrecognizedOption(n) => {
                write!(f, "response carried unrecognized critical option {}", n.0)
            }
            Error::ResourceChanged => {
                f.write_str("the resource changed during a block-wise transfer")
            }
            Error::BodyTooLarge => f.write_str("the response body exceeds the configured maximum"),
            Error::Exchange(reason) => write!(f, "exchange failed: {reason}"),
            Error::Busy(e) => write!(f, "endpoint busy: {e}"),
            Error::NotARequest(c) => write!(f, "code {c} is not a request method"),
            Error::NotAResponse(c) => write!(f, "code {c} is not a response code"),
            Error::AlreadyAnswered => f.write_str("the request was already answered"),
            Error::ShuttingDown => f.write_str("the endpoint is shutting down"),
            Error::Config(e) => write!(f, "invalid configuration: {e}"),
            Error::Unsupported(what) => write!(f, "not supported here: {what}"),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Io(e) | Error::Resolve { source: e, .. } => Some(e),
            Error::InvalidUri(e) => Some(e),
            Error::Busy(e) => Some(e),
            Error::Exchange(e) => Some(e),
            Error::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<UriError> for Error {
    fn from(e: UriError) -> Error {
        Error::InvalidUri(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<Failure> for Error {
    fn from(reason: Failure) -> Error {
        match reason {
            Failure::Timeout => Error::Timeout,
            Failure::Reset => Error::Reset,
            Failure::Cancelled => Error::Cancelled,
            Failure::Unreachable => Error::Unreachable,
            Failure::MessageTooBig { size, max } => Error::MessageTooBig { size, max },
            Failure::UnrecognizedCriticalOption(n) => Error::UnrecognizedOption(n),
            Failure::ResourceChanged => Error::ResourceChanged,
            Failure::BodyTooLarge => Error::BodyTooLarge,
            other => Error::Exchange(other),
        }
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Error {
        match e {
            RequestError::NotARequest(c) => Error::NotARequest(c),
            RequestError::MessageTooBig { size, max } => Error::MessageTooBig { size, max },
            RequestError::ShuttingDown => Error::ShuttingDown,
            busy => Error::Busy(busy),
        }
    }
}

impl From<RespondError> for Error {
    fn from(e: RespondError) -> Error {
        match e {
            RespondError::NotAResponse(c) => Error::NotAResponse(c),
            RespondError::MessageTooBig { size, max } => Error::MessageTooBig { size, max },
            _ => Error::AlreadyAnswered,
        }
    }
}

/// Whether a socket error says that a peer cannot be reached (an ICMP error surfacing on a
/// send or a receive): the runtime crates then read the error queue, or report the peer
/// unreachable to the engine.
pub fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn engine_failures_map_to_what_happened() {
        assert!(matches!(Error::from(Failure::Timeout), Error::Timeout));
        assert!(matches!(Error::from(Failure::Reset), Error::Reset));
        assert!(matches!(Error::from(Failure::Cancelled), Error::Cancelled));
        assert!(matches!(
            Error::from(Failure::Unreachable),
            Error::Unreachable
        ));
        assert!(matches!(
            Error::from(Failure::MissingBlock2),
            Error::Exchange(Failure::MissingBlock2)
        ));
        assert!(matches!(
            Error::from(RequestError::TooManyExchanges),
            Error::Busy(RequestError::TooManyExchanges)
        ));
        assert!(matches!(
            Error::from(RequestError::ShuttingDown),
            Error::ShuttingDown
        ));
        assert!(matches!(
            Error::from(RespondError::NotAResponse(Code::GET)),
            Error::NotAResponse(Code::GET)
        ));
        assert_eq!(Error::Timeout.to_string(), "no answer before the timeout");
        let e = Error::from(io::Error::new(io::ErrorKind::AddrInUse, "taken"));
        assert!(e.to_string().contains("taken"));
        assert!(core::error::Error::source(&e).is_some());
        assert!(core::error::Error::source(&Error::Timeout).is_none());
        assert!(is_unreachable(&io::ErrorKind::ConnectionRefused.into()));
        assert!(!is_unreachable(&io::ErrorKind::WouldBlock.into()));
    }
}
