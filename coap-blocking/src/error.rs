//! The error type of this crate.

use std::fmt;
use std::io;

use coap_proto::endpoint::{ConfigError, Failure, RequestError, RespondError};
use coap_proto::msg::{Code, OptionNumber};
use coap_proto::uri::{Scheme, UriError};

/// Why a call produced no response, or could not be made.
///
/// A response with an error code (4.04, 5.03, ...) is not an `Error`: it is an
/// [`IncomingResponse`](crate::IncomingResponse) whose code says so. The variants have the same
/// names as those of `coap-tokio`, so code matching on them moves between the crates unchanged.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A socket call failed (bind, send, receive, poll, an option).
    Io(io::Error),
    /// The URI is malformed (RFC 7252 §6).
    InvalidUri(UriError),
    /// The scheme is not served here (`coaps` needs DTLS).
    UnsupportedScheme(Scheme),
    /// The host name did not resolve.
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The host has no address of a family the local socket can send to.
    NoUsableAddress {
        /// The name or address.
        host: String,
    },
    /// No answer came in time: the request's own timeout passed, or the engine gave up after
    /// its retransmissions (MAX_TRANSMIT_WAIT, RFC 7252 §4.8.2).
    Timeout,
    /// The peer answered with a Reset (RFC 7252 §4.2).
    Reset,
    /// The request was cancelled, by [`Client::cancel`](crate::Client::cancel) or by dropping
    /// its handle.
    Cancelled,
    /// The network says the peer cannot be reached (an ICMP error such as port unreachable).
    Unreachable,
    /// The encoded message exceeds the configured maximum datagram size.
    MessageTooBig {
        /// Encoded size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The response carried a critical option this endpoint does not know (RFC 7252 §5.4.1).
    UnrecognizedOption(OptionNumber),
    /// The representation changed in the middle of a block-wise download more often than the
    /// engine retries (RFC 7959 §2.4).
    ResourceChanged,
    /// The response body exceeds [`Config::max_body_size`](coap_proto::Config::max_body_size).
    BodyTooLarge,
    /// The exchange failed for another reason the engine names (a broken block-wise transfer,
    /// an observation the server ended with an error, ...).
    Exchange(Failure),
    /// Too much is under way; retry when some requests have ended.
    Busy(RequestError),
    /// The method code is not a request code.
    NotARequest(Code),
    /// The response code is not a response code.
    NotAResponse(Code),
    /// The request was answered already, so this response has nowhere to go.
    AlreadyAnswered,
    /// The endpoint is shutting down, or its I/O thread has stopped.
    ShuttingDown,
    /// The engine configuration is not usable.
    Config(ConfigError),
    /// The platform or the socket does not offer what was asked.
    Unsupported(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "socket error: {e}"),
            Error::InvalidUri(e) => write!(f, "invalid URI: {e}"),
            Error::UnsupportedScheme(s) => write!(f, "scheme {s} is not supported"),
            Error::Resolve { host, source } => write!(f, "cannot resolve {host:?}: {source}"),
            Error::NoUsableAddress { host } => {
                write!(
                    f,
                    "no address of {host:?} is reachable from the local socket"
                )
            }
            Error::Timeout => f.write_str("no answer before the timeout"),
            Error::Reset => f.write_str("the peer answered with a Reset"),
            Error::Cancelled => f.write_str("the request was cancelled"),
            Error::Unreachable => f.write_str("the peer is unreachable"),
            Error::MessageTooBig { size, max } => {
                write!(f, "{size}-byte message exceeds the {max}-byte maximum")
            }
            Error::UnrecognizedOption(n) => {
                write!(f, "unrecognized critical option {} in the response", n.0)
            }
            Error::ResourceChanged => f.write_str("resource changed during a block-wise transfer"),
            Error::BodyTooLarge => f.write_str("response body larger than the configured maximum"),
            Error::Exchange(reason) => write!(f, "exchange failed: {reason}"),
            Error::Busy(e) => write!(f, "endpoint busy: {e}"),
            Error::NotARequest(c) => write!(f, "{c} is not a request method"),
            Error::NotAResponse(c) => write!(f, "{c} is not a response code"),
            Error::AlreadyAnswered => f.write_str("the request has been answered already"),
            Error::ShuttingDown => f.write_str("the endpoint is shutting down"),
            Error::Config(e) => write!(f, "invalid configuration: {e}"),
            Error::Unsupported(what) => write!(f, "unsupported here: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_what_happened() {
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
            Error::from(RequestError::QueueFull),
            Error::Busy(RequestError::QueueFull)
        ));
        assert_eq!(Error::Timeout.to_string(), "no answer before the timeout");
        assert_eq!(Error::Reset.to_string(), "the peer answered with a Reset");
        let e = Error::from(io::Error::new(io::ErrorKind::AddrInUse, "in use"));
        assert!(e.to_string().contains("in use"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
