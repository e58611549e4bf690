//! Errors of parsing and encoding messages.

use core::fmt;

use super::option::OptionNumber;

/// Why a datagram is not a well-formed CoAP message (RFC 7252 §3, RFC 8974 §2.1).
///
/// Every variant is a message format error: a Confirmable message that fails to parse is
/// rejected with a Reset, anything else is silently dropped (RFC 7252 §4.2, §4.3);
/// [`parse_header`](super::parse_header) still reads the header for that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer than the 4 bytes of the fixed header.
    TruncatedHeader,
    /// The version field is not 1 (such messages are silently ignored, RFC 7252 §3).
    BadVersion(u8),
    /// Token length nibble 15, reserved (RFC 8974 §2.1).
    ReservedTokenLength,
    /// The token, or its extended length bytes, runs past the end of the datagram.
    TruncatedToken,
    /// An option delta nibble of 15 in a byte other than the payload marker 0xFF.
    OptionDeltaReserved,
    /// An option length nibble of 15.
    OptionLengthReserved,
    /// An option's extended delta or length bytes, or its value, run past the end.
    TruncatedOption,
    /// The option number, the sum of the deltas, exceeds 65535.
    OptionNumberOverflow,
    /// A payload marker 0xFF with no payload after it (RFC 7252 §3).
    EmptyPayloadAfterMarker,
    /// An Empty message (code 0.00) with a token, options or payload (RFC 7252 §4.1).
    EmptyMessageHasContent,
    /// A token longer than the caller accepts. The parser itself accepts every length the
    /// header can express; this variant is for callers that enforce a smaller maximum.
    TokenTooLong {
        /// The token length in bytes.
        len: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TruncatedHeader => f.write_str("message shorter than the 4-byte header"),
            ParseError::BadVersion(v) => write!(f, "unsupported CoAP version {v}"),
            ParseError::ReservedTokenLength => f.write_str("token length 15 is reserved"),
            ParseError::TruncatedToken => f.write_str("token runs past the end of the message"),
            ParseError::OptionDeltaReserved => {
                f.write_str("option delta 15 is reserved for the payload marker")
            }
            ParseError::OptionLengthReserved => f.write_str("option length 15 is reserved"),
            ParseError::TruncatedOption => f.write_str("option runs past the end of the message"),
            ParseError::OptionNumberOverflow => f.write_str("option number exceeds 65535"),
            ParseError::EmptyPayloadAfterMarker => {
                f.write_str("payload marker is not followed by a payload")
            }
            ParseError::EmptyMessageHasContent => {
                f.write_str("empty message (code 0.00) carries a token, options or payload")
            }
            ParseError::TokenTooLong { len } => write!(f, "token of {len} bytes is too long"),
        }
    }
}

#[cfg(feature = "std")]
impl core::error::Error for ParseError {}

/// Why a message cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The buffer is shorter than the encoded message; `needed` is the full encoded length.
    BufferTooSmall {
        /// The encoded length of the message in bytes.
        needed: usize,
    },
    /// The token is longer than [`Token::MAX_LEN`](super::Token::MAX_LEN) bytes.
    TokenTooLong {
        /// The token length in bytes.
        len: usize,
    },
    /// An option value is longer than the 65535 + 269 bytes its length field can express.
    OptionValueTooLong {
        /// The option.
        number: OptionNumber,
        /// The value length in bytes.
        len: usize,
    },
    /// An Empty message (code 0.00) must have no token, options or payload (RFC 7252 §4.1).
    EmptyMessageHasContent,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "buffer too small: the message needs {needed} bytes")
            }
            EncodeError::TokenTooLong { len } => {
                write!(f, "token of {len} bytes exceeds the maximum of 65804")
            }
            EncodeError::OptionValueTooLong { number, len } => write!(
                f,
                "value of option {} of {len} bytes exceeds the maximum of 65804",
                number.0
            ),
            EncodeError::EmptyMessageHasContent => {
                f.write_str("an empty message (code 0.00) cannot carry a token, options or payload")
            }
        }
    }
}

#[cfg(feature = "std")]
impl core::error::Error for EncodeError {}
