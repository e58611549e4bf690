//! Message types and codes (RFC 7252 §3, §12.1).

use core::fmt;
use core::str::FromStr;

/// The two-bit message type of the CoAP header (RFC 7252 §3, §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Confirmable: retransmitted until acknowledged or reset.
    Con = 0,
    /// Non-confirmable: sent once, never acknowledged.
    Non = 1,
    /// Acknowledgement of a Confirmable message, possibly carrying a piggybacked response.
    Ack = 2,
    /// Reset: the recipient could not process a message and has no context for it.
    Rst = 3,
}

impl MessageType {
    /// The type encoded by the two low bits of `b` (higher bits are ignored).
    pub const fn from_bits(b: u8) -> MessageType {
        match b & 3 {
            0 => MessageType::Con,
            1 => MessageType::Non,
            2 => MessageType::Ack,
            _ => MessageType::Rst,
        }
    }

    /// The two-bit wire value of this type.
    pub const fn to_bits(self) -> u8 {
        self as u8
    }

    /// The usual short upper-case name: `CON`, `NON`, `ACK` or `RST`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::Con => "CON",
            MessageType::Non => "NON",
            MessageType::Ack => "ACK",
            MessageType::Rst => "RST",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message code: a 3-bit class and a 5-bit detail in one byte, written `c.dd` (RFC 7252 §3).
///
/// Any byte is a valid `Code`; the constants name the method and response codes of the IANA
/// "CoAP Method Codes" and "CoAP Response Codes" registries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(u8);

impl Code {
    /// 0.00, the code of an Empty message.
    pub const EMPTY: Code = Code::new(0, 0);
    /// 0.01 GET (RFC 7252).
    pub const GET: Code = Code::new(0, 1);
    /// 0.02 POST (RFC 7252).
    pub const POST: Code = Code::new(0, 2);
    /// 0.03 PUT (RFC 7252).
    pub const PUT: Code = Code::new(0, 3);
    /// 0.04 DELETE (RFC 7252).
    pub const DELETE: Code = Code::new(0, 4);
    /// 0.05 FETCH (RFC 8132).
    pub const FETCH: Code = Code::new(0, 5);
    /// 0.06 PATCH (RFC 8132).
    pub const PATCH: Code = Code::new(0, 6);
    /// 0.07 iPATCH (RFC 8132).
    pub const IPATCH: Code = Code::new(0, 7);

    /// 2.01 Created.
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.02 Deleted.
    pub const DELETED: Code = Code::new(2, 2);
    /// 2.03 Valid.
    pub const VALID: Code = Code::new(2, 3);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Code = Code::new(2, 5);
    /// 2.31 Continue (RFC 7959).
    pub const CONTINUE: Code = Code::new(2, 31);

    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code::new(4, 2);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code::new(4, 3);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code::new(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    /// 4.06 Not Acceptable.
    pub const NOT_ACCEPTABLE: Code = Code::new(4, 6);
    /// 4.08 Request Entity Incomplete (RFC 7959).
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    /// 4.09 Conflict (RFC 8132).
    pub const CONFLICT: Code = Code::new(4, 9);
    /// 4.12 Precondition Failed.
    pub const PRECONDITION_FAILED: Code = Code::new(4, 12);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code::new(4, 15);
    /// 4.22 Unprocessable Entity (RFC 8132).
    pub const UNPROCESSABLE_ENTITY: Code = Code::new(4, 22);
    /// 4.29 Too Many Requests (RFC 8516).
    pub const TOO_MANY_REQUESTS: Code = Code::new(4, 29);

    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    /// 5.01 Not Implemented.
    pub const NOT_IMPLEMENTED: Code = Code::new(5, 1);
    /// 5.02 Bad Gateway.
    pub const BAD_GATEWAY: Code = Code::new(5, 2);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    /// 5.04 Gateway Timeout.
    pub const GATEWAY_TIMEOUT: Code = Code::new(5, 4);
    /// 5.05 Proxying Not Supported.
    pub const PROXYING_NOT_SUPPORTED: Code = Code::new(5, 5);
    /// 5.08 Hop Limit Reached (RFC 8768).
    pub const HOP_LIMIT_REACHED: Code = Code::new(5, 8);

    /// The code `class.detail`; `class` is masked to 3 bits and `detail` to 5 bits.
    pub const fn new(class: u8, detail: u8) -> Code {
        Code(((class & 0x07) << 5) | (detail & 0x1f))
    }

    /// The code carried by the header byte `b`.
    pub const fn from_u8(b: u8) -> Code {
        Code(b)
    }

    /// The header byte of this code.
    pub const fn to_u8(self) -> u8 {
        self.0
    }

    /// The class, 0..=7 (the digit before the dot).
    pub const fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail, 0..=31 (the two digits after the dot).
    pub const fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// Whether this is 0.00, the code of an Empty message (RFC 7252 §4.1).
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether this is a request (method) code: class 0 with a non-zero detail.
    pub const fn is_request(self) -> bool {
        self.class() == 0 && self.detail() != 0
    }

    /// Whether this is a response code: class 2, 4 or 5 (class 3 is unassigned but
    /// falls in the response range of RFC 7252 §12.1).
    pub const fn is_response(self) -> bool {
        matches!(self.class(), 2..=5)
    }

    /// Whether this is a success response (class 2).
    pub const fn is_success(self) -> bool {
        self.class() == 2
    }

    /// Whether this is a client error response (class 4).
    pub const fn is_client_error(self) -> bool {
        self.class() == 4
    }

    /// Whether this is a server error response (class 5).
    pub const fn is_server_error(self) -> bool {
        self.class() == 5
    }

    /// Whether the class is reserved: 1, 6 or 7 (RFC 7252 §12.1). Class 7 carries the
    /// signaling codes of CoAP over reliable transports (RFC 8323), which do not exist over UDP.
    pub const fn is_reserved_class(self) -> bool {
        matches!(self.class(), 1 | 6 | 7)
    }

    /// The registered name of this code: the method name (`"GET"`, `"iPATCH"`) or the
    /// response phrase (`"Content"`, `"Bad Request"`); `"Empty"` for 0.00.
    pub fn name(self) -> Option<&'static str> {
        let name = match self {
            Code::EMPTY => "Empty",
            Code::GET => "GET",
            Code::POST => "POST",
            Code::PUT => "PUT",
            Code::DELETE => "DELETE",
            Code::FETCH => "FETCH",
            Code::PATCH => "PATCH",
            Code::IPATCH => "iPATCH",
            Code::CREATED => "Created",
            Code::DELETED => "Deleted",
            Code::VALID => "Valid",
            Code::CHANGED => "Changed",
            Code::CONTENT => "Content",
            Code::CONTINUE => "Continue",
            Code::BAD_REQUEST => "Bad Request",
            Code::UNAUTHORIZED => "Unauthorized",
            Code::BAD_OPTION => "Bad Option",
            Code::FORBIDDEN => "Forbidden",
            Code::NOT_FOUND => "Not Found",
            Code::METHOD_NOT_ALLOWED => "Method Not Allowed",
            Code::NOT_ACCEPTABLE => "Not Acceptable",
            Code::REQUEST_ENTITY_INCOMPLETE => "Request Entity Incomplete",
            Code::CONFLICT => "Conflict",
            Code::PRECONDITION_FAILED => "Precondition Failed",
            Code::REQUEST_ENTITY_TOO_LARGE => "Request Entity Too Large",
            Code::UNSUPPORTED_CONTENT_FORMAT => "Unsupported Content-Format",
            Code::UNPROCESSABLE_ENTITY => "Unprocessable Entity",
            Code::TOO_MANY_REQUESTS => "Too Many Requests",
            Code::INTERNAL_SERVER_ERROR => "Internal Server Error",
            Code::NOT_IMPLEMENTED => "Not Implemented",
            Code::BAD_GATEWAY => "Bad Gateway",
            Code::SERVICE_UNAVAILABLE => "Service Unavailable",
            Code::GATEWAY_TIMEOUT => "Gateway Timeout",
            Code::PROXYING_NOT_SUPPORTED => "Proxying Not Supported",
            Code::HOP_LIMIT_REACHED => "Hop Limit Reached",
            _ => return None,
        };
        Some(name)
    }
}

impl From<u8> for Code {
    fn from(b: u8) -> Code {
        Code(b)
    }
}

impl From<Code> for u8 {
    fn from(c: Code) -> u8 {
        c.0
    }
}

impl fmt::Display for Code {
    /// The dotted form, e.g. `2.05`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    /// The dotted form followed by the registered name, e.g. `2.05 Content`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{self} {name}"),
            None => write!(f, "{self}"),
        }
    }
}

/// The text given to [`Code::from_str`] is neither a dotted code nor a method name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseCodeError;

impl fmt::Display for ParseCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a CoAP code: expected c.dd with class 0-7 and detail 0-31, or a method name",
        )
    }
}

#[cfg(feature = "std")]
impl core::error::Error for ParseCodeError {}

impl FromStr for Code {
    type Err = ParseCodeError;

    /// Parses the dotted form `c.dd` (class 0..=7, detail 0..=31, one or two digits) or a
    /// method name in any letter case (`get`, `POST`, `iPATCH`).
    fn from_str(s: &str) -> Result<Code, ParseCodeError> {
        const METHODS: [(&str, Code); 7] = [
            ("GET", Code::GET),
            ("POST", Code::POST),
            ("PUT", Code::PUT),
            ("DELETE", Code::DELETE),
            ("FETCH", Code::FETCH),
            ("PATCH", Code::PATCH),
            ("IPATCH", Code::IPATCH),
        ];
        for (name, code) in METHODS {
            if s.eq_ignore_ascii_case(name) {
                return Ok(code);
            }
        }
        let (class, detail) = s.split_once('.').ok_or(ParseCodeError)?;
        let digits = |t: &str, max_len: usize| -> Result<u8, ParseCodeError> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseCodeError);
            }
            t.parse::<u8>().map_err(|_| ParseCodeError)
        };
        let class = digits(class, 1)?;
        let detail = digits(detail, 2)?;
        if class > 7 || detail > 31 {
            return Err(ParseCodeError);
        }
        Ok(Code::new(class, detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn class_and_detail() {
        let c = Code::new(2, 5);
        assert_eq!(c.to_u8(), 69); // RFC 7252 Figure 16: 2.05=69
        assert_eq!((c.class(), c.detail()), (2, 5));
        assert_eq!(Code::from_u8(0xa0), Code::new(5, 0));
        assert_eq!(Code::new(9, 40), Code::new(1, 8)); // masked
        assert_eq!(Code::from(0x45), Code::CONTENT);
        assert_eq!(u8::from(Code::NOT_FOUND), 0x84);
    }

    #[test]
    fn predicates() {
        assert!(Code::EMPTY.is_empty() && !Code::EMPTY.is_request() && !Code::EMPTY.is_response());
        for m in [
            Code::GET,
            Code::POST,
            Code::PUT,
            Code::DELETE,
            Code::FETCH,
            Code::PATCH,
            Code::IPATCH,
        ] {
            assert!(m.is_request() && !m.is_response() && !m.is_empty());
        }
        assert!(Code::new(0, 31).is_request());
        assert!(Code::CONTENT.is_response() && Code::CONTENT.is_success());
        assert!(Code::NOT_FOUND.is_client_error() && !Code::NOT_FOUND.is_success());
        assert!(Code::BAD_GATEWAY.is_server_error() && !Code::BAD_GATEWAY.is_client_error());
        assert!(Code::new(3, 0).is_response());
        for class in [1, 6, 7] {
            assert!(Code::new(class, 1).is_reserved_class());
            assert!(!Code::new(class, 1).is_response() && !Code::new(class, 1).is_request());
        }
        for class in [0, 2, 3, 4, 5] {
            assert!(!Code::new(class, 1).is_reserved_class());
        }
    }

    #[test]
    fn display_debug_and_names() {
        assert_eq!(Code::CONTENT.to_string(), "2.05");
        assert_eq!(Code::CONTINUE.to_string(), "2.31");
        assert_eq!(Code::GET.to_string(), "0.01");
        assert_eq!(format!("{:?}", Code::CONTENT), "2.05 Content");
        assert_eq!(format!("{:?}", Code::BAD_REQUEST), "4.00 Bad Request");
        assert_eq!(format!("{:?}", Code::new(4, 30)), "4.30");
        assert_eq!(Code::IPATCH.name(), Some("iPATCH"));
        assert_eq!(
            Code::UNSUPPORTED_CONTENT_FORMAT.name(),
            Some("Unsupported Content-Format")
        );
        assert_eq!(Code::HOP_LIMIT_REACHED.to_string(), "5.08");
        assert_eq!(Code::new(7, 1).name(), None);
        let all = [
            (Code::CREATED, "2.01"),
            (Code::DELETED, "2.02"),
            (Code::VALID, "2.03"),
            (Code::CHANGED, "2.04"),
            (Code::CONTENT, "2.05"),
            (Code::CONTINUE, "2.31"),
            (Code::BAD_REQUEST, "4.00"),
            (Code::UNAUTHORIZED, "4.01"),
            (Code::BAD_OPTION, "4.02"),
            (Code::FORBIDDEN, "4.03"),
            (Code::NOT_FOUND, "4.04"),
            (Code::METHOD_NOT_ALLOWED, "4.05"),
            (Code::NOT_ACCEPTABLE, "4.06"),
            (Code::REQUEST_ENTITY_INCOMPLETE, "4.08"),
            (Code::CONFLICT, "4.09"),
            (Code::PRECONDITION_FAILED, "4.12"),
            (Code::REQUEST_ENTITY_TOO_LARGE, "4.13"),
            (Code::UNSUPPORTED_CONTENT_FORMAT, "4.15"),
            (Code::UNPROCESSABLE_ENTITY, "4.22"),
            (Code::TOO_MANY_REQUESTS, "4.29"),
            (Code::INTERNAL_SERVER_ERROR, "5.00"),
            (Code::NOT_IMPLEMENTED, "5.01"),
            (Code::BAD_GATEWAY, "5.02"),
            (Code::SERVICE_UNAVAILABLE, "5.03"),
            (Code::GATEWAY_TIMEOUT, "5.04"),
            (Code::PROXYING_NOT_SUPPORTED, "5.05"),
            (Code::HOP_LIMIT_REACHED, "5.08"),
        ];
        for (code, dotted) in all {
            assert_eq!(code.to_string(), dotted);
            assert!(code.name().is_some(), "{dotted} has a name");
            assert!(code.is_response());
            assert_eq!(dotted.parse::<Code>(), Ok(code));
        }
    }

    #[test]
    fn from_str() {
        assert_eq!("2.05".parse::<Code>(), Ok(Code::CONTENT));
        assert_eq!("4.4".parse::<Code>(), Ok(Code::NOT_FOUND));
        assert_eq!("0.00".parse::<Code>(), Ok(Code::EMPTY));
        assert_eq!("7.31".parse::<Code>(), Ok(Code::new(7, 31)));
        assert_eq!("get".parse::<Code>(), Ok(Code::GET));
        assert_eq!("iPATCH".parse::<Code>(), Ok(Code::IPATCH));
        for bad in [
            "", "2", "2.", ".05", "8.00", "2.32", "2.005", "+2.05", "2.0x", "GETX", "2,05",
        ] {
            assert_eq!(bad.parse::<Code>(), Err(ParseCodeError), "{bad:?}");
        }
        for b in 0..=255u8 {
            let c = Code::from_u8(b);
            assert_eq!(c.to_string().parse::<Code>(), Ok(c));
        }
    }

    #[test]
    fn message_type_bits() {
        for t in [
            MessageType::Con,
            MessageType::Non,
            MessageType::Ack,
            MessageType::Rst,
        ] {
            assert_eq!(MessageType::from_bits(t.to_bits()), t);
            assert_eq!(MessageType::from_bits(t.to_bits() | 0xfc), t);
        }
        assert_eq!(MessageType::Ack.to_bits(), 2);
        assert_eq!(MessageType::Rst.to_string(), "RST");
    }
}
