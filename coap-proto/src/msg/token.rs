//! The message token (RFC 7252 §5.3.1, RFC 8974).

use core::borrow::Borrow;
use core::fmt;

use smallvec::SmallVec;

/// A token: 0..=8 bytes in RFC 7252, up to [`Token::MAX_LEN`] bytes with the extended token
/// length of RFC 8974. Tokens of up to 8 bytes are stored inline.
///
/// `Token::new` accepts any length; [`Message::encode`](super::Message::encode) rejects tokens
/// longer than [`Token::MAX_LEN`]. `Debug` and `Display` print the bytes as lower-case hex.
#[derive(PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Token(SmallVec<[u8; 8]>);

impl Clone for Token {
    fn clone(&self) -> Token {
        Token::new(&self.0)
    }
}

impl Token {
    /// The longest token the header can describe: 65535 + 269 bytes (RFC 8974 §2.1).
    pub const MAX_LEN: usize = 65804;

    /// A token holding a copy of `bytes`.
    #[inline]
    pub fn new(bytes: &[u8]) -> Token {
        // Tokens are copied several times per exchange. A general slice copy of a few bytes
        // is a library call; a fixed-size array copy is a register move.
        if let Ok(&eight) = <&[u8; 8]>::try_from(bytes) {
            return Token(SmallVec::from_buf(eight));
        }
        if bytes.len() < 8 {
            let mut inline = [0u8; 8];
            for (slot, &b) in inline.iter_mut().zip(bytes) {
                *slot = b;
            }
            return Token(SmallVec::from_buf_and_len(inline, bytes.len()));
        }
        Token(SmallVec::from_slice(bytes))
    }

    /// The token bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The token length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the token is zero-length.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&[u8]> for Token {
    fn from(bytes: &[u8]) -> Token {
        Token::new(bytes)
    }
}

impl<const N: usize> From<[u8; N]> for Token {
    fn from(bytes: [u8; N]) -> Token {
        Token::new(&bytes)
    }
}

impl From<u64> for Token {
    /// The eight big-endian bytes of `v`.
    fn from(v: u64) -> Token {
        Token::new(&v.to_be_bytes())
    }
}

impl AsRef<[u8]> for Token {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Token {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn hex_display() {
        let t = Token::new(&[0x00, 0xab, 0x7f]);
        assert_eq!(format!("{t}"), "00ab7f");
        assert_eq!(format!("{t:?}"), "Token(00ab7f)");
        assert_eq!(format!("{}", Token::default()), "");
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        assert!(Token::default().is_empty());
    }

    #[test]
    fn from_u64_is_big_endian() {
        let t = Token::from(0x0102_0304_0506_0708u64);
        assert_eq!(t.as_bytes(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
