//! [`Error`]: everything that can go wrong with a request, a response or the socket.

use std::fmt;
use std::io;

use coap_proto::endpoint::{ConfigError, Failure, RequestError, RespondError};
use coap_proto::msg::{Code, OptionNumber};
use coap_proto::uri::{Scheme, UriError};

/// Why an operation produced no response.
///
/// An answer with an error code (4.04, 5.03, ...) is still a response and arrives as an
/// [`IncomingResponse`](crate::IncomingResponse); this type covers exchanges that ended
/// without one, and calls that could not be carried out. The variants are those of
/// `coap-tokio`'s error, so code matching on them moves between the crates unchanged.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (bind, send, receive, an option).
    Io(io::Error),
    /// The text is not a CoAP URI (RFC 7252 §6).
    InvalidUri(UriError),
    /// The scheme needs something this crate does not have (`coaps` needs DTLS).
    UnsupportedScheme(Scheme),
    /// The URI's host name could not be resolved.
    Resolve {
        /// The name that was looked up.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// Every address of the host belongs to a family the local socket cannot reach (an IPv6
    /// address seen from a socket bound to IPv4, for instance).
    NoUsableAddress {
        /// The host, as written in the URI.
        host: String,
    },
    /// Nothing came back in time: the request's own timeout ran out, or the engine stopped
    /// retransmitting (MAX_TRANSMIT_WAIT, RFC 7252 §4.8.2).
    Timeout,
    /// The peer answered with a Reset message (RFC 7252 §4.2, §4.3).
    Reset,
    /// The exchange was cancelled ([`Client::cancel`](crate::Client::cancel), or its peer
    /// was aborted).
    Cancelled,
    /// The network said the peer cannot be reached (an ICMP error, such as port unreachable).
    Unreachable,
    /// The message does not fit in the configured maximum datagram size.
    MessageTooBig {
        /// Its encoded size in bytes.
        size: usize,
        /// The configured maximum in bytes.
        max: usize,
    },
    /// The response carried a critical option this endpoint does not know, so it was
    /// rejected (RFC 7252 §5.4.1).
    UnrecognizedOption(OptionNumber),
    /// The representation kept changing during a block-wise download (the ETag differed
    /// between blocks, RFC 7959 §2.4).
    ResourceChanged,
    /// The response body exceeds [`Config::max_body_size`](coap_proto::Config::max_body_size).
    BodyTooLarge,
    /// Another engine failure: a block-wise transfer the peer broke, or a reason newer than
    /// this crate.
    Exchange(Failure),
    /// An engine limit is reached (exchanges, per-peer queue, peers); retry once some
    /// requests have ended.
    Busy(RequestError),
    /// The method code is not a request code.
    NotARequest(Code),
    /// The response code is not a response code.
    NotAResponse(Code),
    /// The request has already been answered (or its peer aborted): the response has no
    /// exchange to go to.
    AlreadyAnswered,
    /// The endpoint is shutting down, or its driver is gone.
    ShuttingDown,
    /// The engine configuration was rejected.
    Config(ConfigError),
    /// The platform or the socket lacks what the operation needs.
    Unsupported(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "socket error: {e}"),
            Error::InvalidUri(e) => write!(f, "invalid URI: {e}"),
            Error::UnsupportedScheme(s) => write!(f, "scheme {s} is not supported"),
            Error::Resolve { host, source } => write!(f, "resolving {host:?} failed: {source}"),
            Error::NoUsableAddress { host } => {
                write!(
                    f,
                    "no address of {host:?} is reachable from the local socket"
                )
            }
            Error::Timeout => f.write_str("no response in time"),
            Error::Reset => f.write_str("the peer sent a Reset"),
            Error::Cancelled => f.write_str("request cancelled"),
            Error::Unreachable => f.write_str("peer unreachable"),
            Error::MessageTooBig { size, max } => {
                write!(
                    f,
                    "message of {size} bytes is larger than the {max}-byte limit"
                )
            }
            Error::UnrecognizedOption(n) => {
                write!(f, "response has unknown critical option {}", n.0)
            }
            Error::ResourceChanged => f.write_str("resource changed during block-wise transfer"),
            Error::BodyTooLarge => f.write_str("response body larger than the configured limit"),
            Error::Exchange(reason) => write!(f, "exchange failed: {reason}"),
            Error::Busy(e) => write!(f, "endpoint busy: {e}"),
            Error::NotARequest(c) => write!(f, "{c} is not a request method"),
            Error::NotAResponse(c) => write!(f, "{c} is not a response code"),
            Error::AlreadyAnswered => f.write_str("request already answered"),
            Error::ShuttingDown => f.write_str("endpoint shutting down"),
            Error::Config(e) => write!(f, "bad configuration: {e}"),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) | Error::Resolve { source: e, .. } => Some(e),
            Error::InvalidUri(e) => Some(e),
            Error::Exchange(e) => Some(e),
            Error::Busy(e) => Some(e),
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
    fn failures_keep_their_meaning() {
        assert!(matches!(Error::from(Failure::Timeout), Error::Timeout));
        assert!(matches!(Error::from(Failure::Reset), Error::Reset));
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
            Error::Busy(_)
        ));
        assert!(matches!(
            Error::from(RequestError::ShuttingDown),
            Error::ShuttingDown
        ));
        let io = Error::from(io::Error::new(io::ErrorKind::AddrInUse, "port taken"));
        assert!(io.to_string().contains("port taken"));
        assert!(std::error::Error::source(&io).is_some());
        assert!(std::error::Error::source(&Error::Timeout).is_none());
    }
}
