//! Building the requests an endpoint sends and the responses it answers with.
//!
//! These are the application-facing halves of a message: the engine fills in the Message ID,
//! the token and (unless asked otherwise) the message type.

use bytes::Bytes;
use core::time::Duration;

use crate::msg::{Code, ContentFormat, MessageType, OptionNumber, Options};
use crate::uri::{CoapUri, HostOption};

/// A request to send with [`Endpoint::request`](crate::Endpoint::request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method: GET, POST, PUT, DELETE, FETCH, PATCH, iPATCH or another request code.
    pub method: Code,
    /// Options, including Uri-Path and Uri-Query.
    pub options: Options,
    /// The body.
    pub payload: Bytes,
    /// Confirmable or Non-confirmable; `None` uses the endpoint's default.
    pub message_type: Option<MessageType>,
    /// Overrides how long to wait for the response once the request is acknowledged or sent
    /// as NON; `None` uses the configuration.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request with the given method and nothing else.
    pub fn new(method: Code) -> Request {
        Request {
            method,
            options: Options::new(),
            payload: Bytes::new(),
            message_type: None,
            timeout: None,
        }
    }

    /// A GET request.
    pub fn get() -> Request {
        Request::new(Code::GET)
    }

    /// A POST request.
    pub fn post() -> Request {
        Request::new(Code::POST)
    }

    /// A PUT request.
    pub fn put() -> Request {
        Request::new(Code::PUT)
    }

    /// A DELETE request.
    pub fn delete() -> Request {
        Request::new(Code::DELETE)
    }

    /// A FETCH request (RFC 8132).
    pub fn fetch() -> Request {
        Request::new(Code::FETCH)
    }

    /// A PATCH request (RFC 8132).
    pub fn patch() -> Request {
        Request::new(Code::PATCH)
    }

    /// An iPATCH request (RFC 8132).
    pub fn ipatch() -> Request {
        Request::new(Code::IPATCH)
    }

    /// Sets Uri-Host, Uri-Port, Uri-Path and Uri-Query from `uri` (RFC 7252 §6.4), replacing
    /// any that were set.
    pub fn with_uri(mut self, uri: &CoapUri, host: HostOption) -> Request {
        for n in [
            OptionNumber::URI_HOST,
            OptionNumber::URI_PORT,
            OptionNumber::URI_PATH,
            OptionNumber::URI_QUERY,
        ] {
            self.options.remove(n);
        }
        uri.to_options(&mut self.options, host);
        self
    }

    /// Appends the segments of a `/`-separated path as Uri-Path options (no percent-decoding;
    /// an empty string or `/` adds none).
    pub fn with_path(mut self, path: &str) -> Request {
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            self.options
                .push(OptionNumber::URI_PATH, segment.as_bytes());
        }
        self
    }

    /// Appends one Uri-Query option, such as `"rt=temp"`.
    pub fn with_query(mut self, query: &str) -> Request {
        self.options.push(OptionNumber::URI_QUERY, query.as_bytes());
        self
    }

    /// Sets the body.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Request {
        self.payload = payload.into();
        self
    }

    /// Sets Content-Format.
    pub fn with_content_format(mut self, format: ContentFormat) -> Request {
        self.options
            .set_uint(OptionNumber::CONTENT_FORMAT, u32::from(format.0));
        self
    }

    /// Sets Accept.
    pub fn with_accept(mut self, format: ContentFormat) -> Request {
        self.options
            .set_uint(OptionNumber::ACCEPT, u32::from(format.0));
        self
    }

    /// Adds an option with an opaque value.
    pub fn with_option(mut self, number: OptionNumber, value: &[u8]) -> Request {
        self.options.push(number, value);
        self
    }

    /// Sends the request Non-confirmable.
    pub fn non(mut self) -> Request {
        self.message_type = Some(MessageType::Non);
        self
    }

    /// Sends the request Confirmable.
    pub fn con(mut self) -> Request {
        self.message_type = Some(MessageType::Con);
        self
    }

    /// Overrides the wait for the response (see [`Request::timeout`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }
}

/// A response to give to [`Endpoint::respond`](crate::Endpoint::respond).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The response code, such as 2.05 Content.
    pub code: Code,
    /// Options.
    pub options: Options,
    /// The body.
    pub payload: Bytes,
    /// For a separate response (sent after an empty ACK) or a response to a NON request:
    /// Confirmable or Non-confirmable. `None` picks CON for separate responses to CON requests
    /// and NON for responses to NON requests (RFC 7252 §5.2.2, §5.2.3). Ignored for a
    /// piggybacked response, which always travels in the ACK.
    pub message_type: Option<MessageType>,
}

impl Response {
    /// A response with the given code and nothing else.
    pub fn new(code: Code) -> Response {
        Response {
            code,
            options: Options::new(),
            payload: Bytes::new(),
            message_type: None,
        }
    }

    /// 2.05 Content with a body.
    pub fn content(payload: impl Into<Bytes>) -> Response {
        Response::new(Code::CONTENT).with_payload(payload)
    }

    /// Sets the body.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Response {
        self.payload = payload.into();
        self
    }

    /// Sets Content-Format.
    pub fn with_content_format(mut self, format: ContentFormat) -> Response {
        self.options
            .set_uint(OptionNumber::CONTENT_FORMAT, u32::from(format.0));
        self
    }

    /// Adds an option with an opaque value.
    pub fn with_option(mut self, number: OptionNumber, value: &[u8]) -> Response {
        self.options.push(number, value);
        self
    }

    /// Sets Max-Age in seconds.
    pub fn with_max_age(mut self, seconds: u32) -> Response {
        self.options.set_uint(OptionNumber::MAX_AGE, seconds);
        self
    }
}
