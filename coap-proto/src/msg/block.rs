//! The Block1 and Block2 option value (RFC 7959 §2.2).

use core::fmt;

/// A Block1 or Block2 option value: block number, more flag and size exponent (RFC 7959 §2.2).
///
/// The block size is `2^(szx + 4)` bytes, 16..=1024. SZX 7 is reserved over UDP (it means BERT
/// over reliable transports, RFC 8323 §6) and is rejected by [`Block::from_uint`] and [`Block::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// Block number, counted from 0; below 2^20.
    pub num: u32,
    /// Whether more blocks follow (M bit).
    pub more: bool,
    /// Size exponent: the block size is `1 << (szx + 4)`; 0..=6.
    pub szx: u8,
}

/// A Block option value or block parameters that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// SZX 7, reserved (BERT is for reliable transports only).
    ReservedSzx,
    /// The block number does not fit in 20 bits, or the option value in 3 bytes.
    NumberTooLarge,
    /// The block size is not a power of two in 16..=1024.
    BadSize,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockError::ReservedSzx => "block size exponent 7 is reserved",
            BlockError::NumberTooLarge => "block number does not fit in 20 bits",
            BlockError::BadSize => "block size is not a power of two from 16 to 1024",
        })
    }
}

#[cfg(feature = "std")]
impl core::error::Error for BlockError {}

/// The largest block number: NUM is at most 20 bits (RFC 7959 §2.2).
const MAX_NUM: u32 = (1 << 20) - 1;

impl Block {
    /// A block of `size` bytes (a power of two, 16..=1024) with number `num` (below 2^20).
    pub fn new(num: u32, more: bool, size: usize) -> Result<Block, BlockError> {
        let szx = Block::szx_for_size(size).ok_or(BlockError::BadSize)?;
        if num > MAX_NUM {
            return Err(BlockError::NumberTooLarge);
        }
        Ok(Block { num, more, szx })
    }

    /// The block size in bytes, `1 << (szx + 4)` (only the low three bits of `szx` count).
    pub const fn size(self) -> usize {
        1usize << ((self.szx & 7) as u32 + 4)
    }

    /// The byte offset of this block in the body, `num * size` (saturating).
    pub const fn offset(self) -> usize {
        (self.num as usize).saturating_mul(self.size())
    }

    /// Decodes an option value; SZX 7 and values of more than 3 bytes are errors.
    pub fn from_uint(v: u32) -> Result<Block, BlockError> {
        if v > 0x00ff_ffff {
            return Err(BlockError::NumberTooLarge);
        }
        let szx = (v & 7) as u8;
        if szx == 7 {
            return Err(BlockError::ReservedSzx);
        }
        Ok(Block {
            num: v >> 4,
            more: v & 8 != 0,
            szx,
        })
    }

    /// Encodes the option value: `num << 4 | more << 3 | szx` (`num` is masked to 20 bits).
    pub const fn to_uint(self) -> u32 {
        ((self.num & MAX_NUM) << 4) | ((self.more as u32) << 3) | (self.szx & 7) as u32
    }

    /// The SZX of a block size: `Some` for powers of two from 16 to 1024.
    pub fn szx_for_size(size: usize) -> Option<u8> {
        match size {
            16 => Some(0),
            32 => Some(1),
            64 => Some(2),
            128 => Some(3),
            256 => Some(4),
            512 => Some(5),
            1024 => Some(6),
            _ => None,
        }
    }
}

impl fmt::Display for Block {
    /// `num/more/size`, the notation of RFC 7959's examples, e.g. `2/1/128`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.num, u8::from(self.more), self.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_offset() {
        let b = Block::new(3, true, 64).unwrap();
        assert_eq!(b.szx, 2);
        assert_eq!(b.size(), 64);
        assert_eq!(b.offset(), 192);
        assert_eq!(Block::new(0, false, 1024).unwrap().szx, 6);
        assert_eq!(Block::new(0, false, 100), Err(BlockError::BadSize));
        assert_eq!(Block::new(0, false, 2048), Err(BlockError::BadSize));
        assert_eq!(Block::new(0, false, 8), Err(BlockError::BadSize));
        assert_eq!(
            Block::new(1 << 20, false, 16),
            Err(BlockError::NumberTooLarge)
        );
        assert!(Block::new(MAX_NUM, false, 1024).is_ok());
    }

    #[test]
    fn uint_encoding() {
        // RFC 7959 §2.2: NUM | M | SZX.
        let b = Block::from_uint(0x2a).unwrap(); // 0010 1 010
        assert_eq!(
            b,
            Block {
                num: 2,
                more: true,
                szx: 2
            }
        );
        assert_eq!(b.to_uint(), 0x2a);
        assert_eq!(
            Block::from_uint(0).unwrap(),
            Block {
                num: 0,
                more: false,
                szx: 0
            }
        );
        assert_eq!(Block::from_uint(7), Err(BlockError::ReservedSzx));
        assert_eq!(
            Block::from_uint(0x0100_0000),
            Err(BlockError::NumberTooLarge)
        );
        let max = Block::from_uint(0x00ff_fffe).unwrap();
        assert_eq!(max.num, MAX_NUM);
        assert!(max.more);
        assert_eq!(max.szx, 6);
    }

    #[test]
    fn uint_roundtrip_all_szx() {
        for szx in 0..7u8 {
            for num in [0u32, 1, 15, 16, 4095, 4096, MAX_NUM] {
                for more in [false, true] {
                    let b = Block { num, more, szx };
                    assert_eq!(Block::from_uint(b.to_uint()), Ok(b));
                }
            }
        }
    }

    #[test]
    fn szx_table() {
        for szx in 0..7u8 {
            let size = 16usize << szx;
            assert_eq!(Block::szx_for_size(size), Some(szx));
            assert_eq!(
                Block {
                    num: 0,
                    more: false,
                    szx
                }
                .size(),
                size
            );
        }
        assert_eq!(Block::szx_for_size(0), None);
        assert_eq!(Block::szx_for_size(48), None);
    }

    #[test]
    fn large_fields_do_not_panic() {
        let b = Block {
            num: u32::MAX,
            more: true,
            szx: 255,
        };
        let _ = b.size();
        let _ = b.offset();
        let _ = b.to_uint();
    }
}
