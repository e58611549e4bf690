//! Encoded messages the endpoint keeps to send, or to send again: retransmissions, cached
//! replies for duplicates, the transmit queue.

use alloc::sync::Arc;
use core::fmt;

/// How many bytes a datagram can hold without an allocation. A small request or piggybacked
/// response (header, 8-byte token, a few options and a short payload) fits; the size keeps a
/// `Datagram` at 64 bytes.
const INLINE: usize = 62;

/// An encoded message: small ones held inline, larger ones in a shared allocation, so that
/// the common exchange allocates nothing for its datagrams and copies of a large one (kept
/// for retransmission and queued for sending) share its bytes.
#[derive(Clone)]
pub(super) enum Datagram {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

impl Datagram {
    pub(super) fn new(bytes: &[u8]) -> Datagram {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            if let Some(head) = inline.get_mut(..bytes.len()) {
                head.copy_from_slice(bytes);
            }
            Datagram::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Datagram::Shared(Arc::from(bytes))
        }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Datagram::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Datagram::Shared(bytes) => bytes,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Heap bytes held besides the value itself (a shared allocation and its two counters).
    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Datagram::Inline { .. } => 0,
            Datagram::Shared(bytes) => bytes.len() + 2 * size_of::<usize>(),
        }
    }
}

impl core::ops::Deref for Datagram {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Datagram({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_inline_large_shared_same_bytes() {
        for len in [0usize, 1, 25, INLINE, INLINE + 1, 1500] {
            let bytes: alloc::vec::Vec<u8> = (0..len).map(|i| i as u8).collect();
            let d = Datagram::new(&bytes);
            assert_eq!(d.as_slice(), &bytes[..]);
            assert_eq!(d.clone().as_slice(), &bytes[..]);
            assert_eq!(matches!(d, Datagram::Inline { .. }), len <= INLINE, "{len}");
            assert_eq!(d.heap_bytes() == 0, len <= INLINE);
        }
        assert_eq!(size_of::<Datagram>(), 64);
    }
}
