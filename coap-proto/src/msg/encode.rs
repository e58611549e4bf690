//! Encoding messages into caller buffers (RFC 7252 §3, RFC 8974 §2.1).

use alloc::vec::Vec;

use super::error::EncodeError;
use super::message::Message;
use super::options::{length_field, Options};
use super::token::Token;

/// Where an encoded message goes: a caller's slice or a growing `Vec`.
trait Out {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError>;
}

/// Writes into a slice front to back; running out of room is an error, never a panic.
struct Writer<'b> {
    rest: &'b mut [u8],
    /// The whole message's length, for the error.
    needed: usize,
}

impl Out for Writer<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let rest = core::mem::take(&mut self.rest);
        let (head, tail) =
            rest.split_at_mut_checked(bytes.len())
                .ok_or(EncodeError::BufferTooSmall {
                    needed: self.needed,
                })?;
        head.copy_from_slice(bytes);
        self.rest = tail;
        Ok(())
    }
}

impl Out for Vec<u8> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

impl Message {
    /// The encoded length in bytes, checking that the message can be encoded at all.
    pub(crate) fn checked_encoded_len(&self) -> Result<usize, EncodeError> {
        let token_len = self.token.len();
        if token_len > Token::MAX_LEN {
            return Err(EncodeError::TokenTooLong { len: token_len });
        }
        if self.code.is_empty()
            && (token_len != 0 || !self.options.is_empty() || !self.payload.is_empty())
        {
            return Err(EncodeError::EmptyMessageHasContent);
        }
        if let Some((number, len)) = self.options.long_value() {
            return Err(EncodeError::OptionValueTooLong { number, len });
        }
        Ok(self.encoded_len())
    }

    /// The encoded length in bytes. For a message that cannot be encoded (see
    /// [`EncodeError`]) this is the length it would have if it could.
    pub fn encoded_len(&self) -> usize {
        Message::encoded_len_of(self.token.len(), &self.options, self.payload.len())
    }

    /// The encoded length of a message with a token of `token_len` bytes, these options and
    /// a payload of `payload_len` bytes, without building the message.
    pub fn encoded_len_of(token_len: usize, options: &Options, payload_len: usize) -> usize {
        // Options are kept in their wire encoding. (For a value too long to encode, the count
        // uses the buffer's own header for it.)
        let mut len = 4 + length_field(token_len).2 + token_len + options.wire().len();
        if payload_len != 0 {
            len += 1 + payload_len;
        }
        len
    }

    /// Encodes the message at the start of `buf` and returns its length. The token and each
    /// option use the shortest length encoding; a payload marker is written only before a
    /// non-empty payload. Never panics: a short buffer gives [`EncodeError::BufferTooSmall`]
    /// with the length needed.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let needed = self.checked_encoded_len()?;
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        self.write_to(&mut Writer { rest: buf, needed })?;
        Ok(needed)
    }

    /// Appends the encoded message to `out` in one pass and returns its length. On error
    /// `out` is unchanged.
    ///
    /// This is the cheapest way to encode into a reusable buffer: unlike [`Message::encode`],
    /// it needs no length computed first.
    pub fn encode_to_vec(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let start = out.len();
        match self.write_to(out) {
            Ok(()) => Ok(out.len() - start),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Writes the message, checking what [`Message::checked_encoded_len`] checks as it goes.
    fn write_to(&self, out: &mut impl Out) -> Result<(), EncodeError> {
        let token = self.token.as_bytes();
        if token.len() > Token::MAX_LEN {
            return Err(EncodeError::TokenTooLong { len: token.len() });
        }
        if self.code.is_empty()
            && (!token.is_empty() || !self.options.is_empty() || !self.payload.is_empty())
        {
            return Err(EncodeError::EmptyMessageHasContent);
        }
        // The token length uses the options' length encoding (RFC 8974 §2.1); it was
        // checked above to fit.
        let (tkl, extension, extension_len) = length_field(token.len());
        let [id_hi, id_lo] = self.message_id.to_be_bytes();
        out.put(&[
            0x40 | (self.mtype.to_bits() << 4) | tkl,
            self.code.to_u8(),
            id_hi,
            id_lo,
        ])?;
        if let Some((number, len)) = self.options.long_value() {
            return Err(EncodeError::OptionValueTooLong { number, len });
        }
        out.put(extension.get(..extension_len).unwrap_or(&[]))?;
        out.put(token)?;
        // Options are kept in their wire encoding: one copy.
        out.put(self.options.wire())?;
        if !self.payload.is_empty() {
            out.put(&[0xff])?;
            out.put(&self.payload)?;
        }
        Ok(())
    }

    /// Appends the encoded message to `buf`, growing it as needed. On error `buf` is unchanged.
    pub fn encode_into(&self, buf: &mut bytes::BytesMut) -> Result<(), EncodeError> {
        let needed = self.checked_encoded_len()?;
        let start = buf.len();
        buf.resize(start + needed, 0);
        match self.encode(buf.get_mut(start..).unwrap_or(&mut [])) {
            Ok(_) => Ok(()),
            Err(e) => {
                buf.truncate(start);
                Err(e)
            }
        }
    }
}
