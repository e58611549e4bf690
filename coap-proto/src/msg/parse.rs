//! Zero-copy parsing: [`MessageView`] over a datagram, and [`parse_header`].

use bytes::Bytes;

use super::code::{Code, MessageType};
use super::error::ParseError;
use super::message::Message;
use super::option::OptionNumber;
use super::options::{presence_bit, validate_iter, OptionError, Options};
use super::token::Token;

/// The fixed 4-byte header, as read by [`parse_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The version field (1 for RFC 7252).
    pub version: u8,
    /// The message type.
    pub mtype: MessageType,
    /// The token length nibble, TKL: a length of 0..=12, or 13 and 14 for the extended
    /// lengths of RFC 8974, or the reserved 15.
    pub token_len: u8,
    /// The code.
    pub code: Code,
    /// The message ID.
    pub message_id: u16,
}

/// Reads the fixed header only, so that a message whose token or options are malformed can
/// still be answered (a Confirmable one with a Reset, RFC 7252 §4.2). Fails only when fewer
/// than 4 bytes are given; the version is reported, not checked.
pub fn parse_header(bytes: &[u8]) -> Result<Header, ParseError> {
    let [b0, code, id0, id1, ..] = *bytes else {
        return Err(ParseError::TruncatedHeader);
    };
    Ok(Header {
        version: b0 >> 6,
        mtype: MessageType::from_bits(b0 >> 4),
        token_len: b0 & 0x0f,
        code: Code::from_u8(code),
        message_id: u16::from_be_bytes([id0, id1]),
    })
}

/// Reads the extended part of an option delta or length, or of the token length (RFC 7252 §3.1,
/// RFC 8974 §2.1): nibbles 0..=12 are the value, 13 and 14 take one or two more bytes. `pos` is
/// moved past the bytes read. `None` for 15 or when the bytes are missing.
#[inline(always)]
fn extended(bytes: &[u8], pos: &mut usize, nibble: u8) -> Option<usize> {
    match nibble {
        0..=12 => Some(usize::from(nibble)),
        13 => {
            let b = *bytes.get(*pos)?;
            *pos += 1;
            Some(usize::from(b) + 13)
        }
        14 => {
            let &[hi, lo] = bytes.get(*pos..*pos + 2)? else {
                return None;
            };
            *pos += 2;
            Some(usize::from(u16::from_be_bytes([hi, lo])) + 269)
        }
        _ => None,
    }
}

/// A zero-copy view of a well-formed message.
///
/// [`MessageView::parse`] checks the whole structure once (header, token, every option header,
/// payload marker) without allocating; afterwards no accessor can fail or allocate. Option
/// values are not checked against their definitions: see [`MessageView::validate_options`].
#[derive(Clone, Copy, Debug)]
pub struct MessageView<'a> {
    bytes: &'a [u8],
    mtype: MessageType,
    code: Code,
    message_id: u16,
    token: &'a [u8],
    options: &'a [u8],
    /// How many options `options` holds, and the number of the last one.
    option_count: u32,
    last_option: u16,
    /// The presence bits of the option numbers (see `Options`).
    option_bits: u64,
    payload: &'a [u8],
    payload_offset: usize,
}

impl<'a> MessageView<'a> {
    /// Parses a datagram. See [`ParseError`] for what is rejected.
    pub fn parse(bytes: &'a [u8]) -> Result<MessageView<'a>, ParseError> {
        let header = parse_header(bytes)?;
        if header.version != 1 {
            return Err(ParseError::BadVersion(header.version));
        }
        if header.token_len == 15 {
            return Err(ParseError::ReservedTokenLength);
        }
        // RFC 7252 §4.1: nothing may follow the message ID of an Empty message.
        if header.code.is_empty() && (bytes.len() > 4 || header.token_len != 0) {
            return Err(ParseError::EmptyMessageHasContent);
        }
        let mut pos = 4;
        let token_len =
            extended(bytes, &mut pos, header.token_len).ok_or(ParseError::TruncatedToken)?;
        let token_start = pos;
        let token = bytes
            .get(token_start..token_start + token_len)
            .ok_or(ParseError::TruncatedToken)?;
        pos = token_start + token_len;
        let options_start = pos;

        let mut number = 0usize;
        let mut option_count = 0u32;
        let mut option_bits = 0u64;
        let options_end;
        let payload_offset;
        loop {
            let Some(&first) = bytes.get(pos) else {
                options_end = pos;
                payload_offset = pos;
                break;
            };
            if first == 0xff {
                options_end = pos;
                payload_offset = pos + 1;
                if payload_offset == bytes.len() {
                    return Err(ParseError::EmptyPayloadAfterMarker);
                }
                break;
            }
            pos += 1;
            let delta_nibble = first >> 4;
            let len_nibble = first & 0x0f;
            if delta_nibble == 15 {
                return Err(ParseError::OptionDeltaReserved);
            }
            if len_nibble == 15 {
                return Err(ParseError::OptionLengthReserved);
            }
            let delta =
                extended(bytes, &mut pos, delta_nibble).ok_or(ParseError::TruncatedOption)?;
            let len = extended(bytes, &mut pos, len_nibble).ok_or(ParseError::TruncatedOption)?;
            number += delta;
            if number > usize::from(u16::MAX) {
                return Err(ParseError::OptionNumberOverflow);
            }
            if len > bytes.len() - pos {
                return Err(ParseError::TruncatedOption);
            }
            pos += len;
            option_count += 1;
            option_bits |= presence_bit(number as u16);
        }
        Ok(MessageView {
            bytes,
            mtype: header.mtype,
            code: header.code,
            message_id: header.message_id,
            token,
            options: bytes.get(options_start..options_end).unwrap_or(&[]),
            option_count,
            // Checked above to fit.
            last_option: number as u16,
            option_bits,
            payload: bytes.get(payload_offset..).unwrap_or(&[]),
            payload_offset,
        })
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The message type.
    pub fn mtype(&self) -> MessageType {
        self.mtype
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message ID.
    pub fn message_id(&self) -> u16 {
        self.message_id
    }

    /// The token bytes.
    pub fn token(&self) -> &'a [u8] {
        self.token
    }

    /// Whether this is an Empty message (code 0.00).
    pub fn is_empty_message(&self) -> bool {
        self.code.is_empty()
    }

    /// The options in wire order.
    pub fn options(&self) -> OptionsIter<'a> {
        OptionsIter {
            rest: self.options,
            number: 0,
        }
    }

    /// The first value of option `n`.
    pub fn option(&self, n: OptionNumber) -> Option<&'a [u8]> {
        for (m, value) in self.options() {
            if m == n {
                return Some(value);
            }
            if m > n {
                break;
            }
        }
        None
    }

    /// All values of option `n`, in order.
    pub fn options_of(&self, n: OptionNumber) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.options()
            .skip_while(move |(m, _)| *m < n)
            .take_while(move |(m, _)| *m == n)
            .map(|(_, v)| v)
    }

    /// The payload (empty if there is none).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Checks the options against their registry definitions, like [`Options::validate`],
    /// without allocating.
    pub fn validate_options(&self) -> Result<(), OptionError> {
        validate_iter(self.options())
    }

    /// An owned copy of the message.
    #[allow(clippy::wrong_self_convention)] // the view is Copy, but `&self` keeps the API uniform
    pub fn to_message(&self) -> Message {
        self.owned_with_payload(Bytes::copy_from_slice(self.payload))
    }

    /// An owned message whose payload is a slice of `buf`, which must be the buffer this view
    /// was parsed from.
    pub(crate) fn owned_sharing(self, buf: &Bytes) -> Message {
        let payload = if self.payload.is_empty() {
            Bytes::new()
        } else {
            buf.slice(self.payload_offset.min(buf.len())..)
        };
        self.owned_with_payload(payload)
    }

    fn owned_with_payload(self, payload: Bytes) -> Message {
        // The region was checked by `parse`: it is the options' own encoding.
        let options = Options::from_wire(
            self.options,
            self.option_count,
            self.last_option,
            self.option_bits,
        );
        Message {
            mtype: self.mtype,
            code: self.code,
            message_id: self.message_id,
            token: Token::new(self.token),
            options,
            payload,
        }
    }
}

/// The options of a [`MessageView`] in wire order, as `(number, value)`; never fails.
#[derive(Clone, Debug)]
pub struct OptionsIter<'a> {
    rest: &'a [u8],
    number: usize,
}

impl<'a> Iterator for OptionsIter<'a> {
    type Item = (OptionNumber, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // The region was checked by `MessageView::parse`; any inconsistency ends the iteration.
        let bytes = self.rest;
        let &first = bytes.first()?;
        let mut pos = 1;
        let delta = extended(bytes, &mut pos, first >> 4)?;
        let len = extended(bytes, &mut pos, first & 0x0f)?;
        let value = bytes.get(pos..pos + len)?;
        self.rest = bytes.get(pos + len..)?;
        self.number += delta;
        let number = u16::try_from(self.number).ok()?;
        Some((OptionNumber(number), value))
    }
}

impl core::iter::FusedIterator for OptionsIter<'_> {}
