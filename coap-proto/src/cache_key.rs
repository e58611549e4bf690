//! Cache keys: which requests count as "the same request" (RFC 7252 §5.6).
//!
//! A stored response may answer a new request only if the method and every option match, except
//! the options marked NoCacheKey in their number (§5.4.6) and those the cache understands and
//! handles itself (§5.6). The same notion identifies the resource of an observation (RFC 7641
//! §3.1) and the operation a block belongs to (RFC 7959, RFC 9175 §3.3). [`CacheKey`] captures
//! it as a compact byte string that is cheap to hash and compare.
//!
//! ```
//! use coap_proto::cache_key::{CacheKey, OBSERVE_EXCLUDED};
//! use coap_proto::msg::{Code, OptionNumber, Options};
//!
//! let mut plain = Options::new();
//! plain.push_str(OptionNumber::URI_PATH, "temp");
//! let mut register = plain.clone();
//! register.push_uint(OptionNumber::OBSERVE, 0);
//! register.push_uint(OptionNumber::SIZE2, 0); // NoCacheKey: never part of the key
//! assert_eq!(
//!     CacheKey::new(Code::GET, &plain, OBSERVE_EXCLUDED),
//!     CacheKey::new(Code::GET, &register, OBSERVE_EXCLUDED),
//! );
//! ```
//!
//! The key is built from option bytes as they are: two requests that differ only in how they
//! spell a value (a uint with a leading zero byte, a Uri-Port equal to the default that one of
//! them leaves out) get different keys. Building requests through one code path, such as
//! [`crate::uri::CoapUri::to_options`], keeps the spelling consistent.

use smallvec::SmallVec;

use crate::msg::{option_header as header, Code, OptionNumber, Options};

/// Options to exclude when identifying a block-wise operation: Block1 and Block2 change from
/// block to block (RFC 9175 §3.3). Size1 and Size2 are NoCacheKey and left out anyway.
/// Request-Tag stays in the key: requests with different Request-Tags belong to different
/// operations (RFC 9175 §3.3).
pub const BLOCKWISE_EXCLUDED: &[OptionNumber] = &[OptionNumber::BLOCK2, OptionNumber::BLOCK1];

/// Options to exclude when matching a request to a cached response or an existing observation.
///
/// Observe is not part of the Cache-Key (RFC 7641 §2) even though its number does not say
/// NoCacheKey: a registration and a plain GET of the same resource are the same request, and a
/// client must not register twice for one resource (RFC 7641 §3.1).
pub const OBSERVE_EXCLUDED: &[OptionNumber] = &[OptionNumber::OBSERVE];

/// [`OBSERVE_EXCLUDED`] and [`BLOCKWISE_EXCLUDED`] together: identifies the resource of a
/// block-wise notification, whose follow-up Block2 requests carry no Observe option.
pub const BLOCKWISE_OBSERVE_EXCLUDED: &[OptionNumber] = &[
    OptionNumber::OBSERVE,
    OptionNumber::BLOCK2,
    OptionNumber::BLOCK1,
];

/// The request code and the cache-key options of a request, in wire order.
///
/// Two requests have equal keys exactly when they have the same code and the same included
/// options (numbers and values) in the same order; an option is included unless it is NoCacheKey
/// ([`OptionNumber::is_no_cache_key`]) or in the caller's exclude list. The order of options
/// with different numbers never matters; the order of repeated options (Uri-Path segments)
/// does. Stored in one small buffer: keys of typical requests need no heap allocation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The code byte, then the included options in CoAP's wire encoding (RFC 7252 §3.1), deltas
    /// counted between included options.
    bytes: SmallVec<[u8; 32]>,
}

impl Clone for CacheKey {
    fn clone(&self) -> CacheKey {
        // A slice copy; the derived clone would push byte by byte.
        CacheKey {
            bytes: SmallVec::from_slice(&self.bytes),
        }
    }
}

impl CacheKey {
    /// The key of a request with `code` and `options`, leaving out NoCacheKey options and
    /// the numbers in `exclude` (such as [`BLOCKWISE_EXCLUDED`]).
    pub fn new(code: Code, options: &Options, exclude: &[OptionNumber]) -> CacheKey {
        if options.numbers().all(|n| is_included(n, exclude)) {
            // `Options` keeps its options in wire encoding: the key is a copy of it.
            let mut bytes = SmallVec::with_capacity(1 + options.wire().len());
            bytes.push(code.to_u8());
            bytes.extend_from_slice(options.wire());
            return CacheKey { bytes };
        }
        // `Options` iterates in wire order already.
        CacheKey::from_sorted(code, options.iter(), exclude)
    }

    /// The key of a request whose options come from any source, for example
    /// [`crate::msg::MessageView::options`]. Options need not be sorted: they are put in wire
    /// order first (by number, keeping the order of repeated options).
    pub fn from_view<'a>(
        code: Code,
        options: impl IntoIterator<Item = (OptionNumber, &'a [u8])>,
        exclude: &[OptionNumber],
    ) -> CacheKey {
        let mut included: SmallVec<[(OptionNumber, &'a [u8]); 16]> = options
            .into_iter()
            .filter(|(n, _)| is_included(*n, exclude))
            .collect();
        if !included.is_sorted_by_key(|(n, _)| *n) {
            // Stable, so repeated options keep their relative order.
            included.sort_by_key(|(n, _)| *n);
        }
        CacheKey::from_sorted(code, included, exclude)
    }

    fn from_sorted<'a>(
        code: Code,
        options: impl IntoIterator<Item = (OptionNumber, &'a [u8])>,
        exclude: &[OptionNumber],
    ) -> CacheKey {
        let mut bytes = SmallVec::new();
        bytes.push(code.to_u8());
        let mut previous = 0u16;
        for (number, value) in options {
            if !is_included(number, exclude) {
                continue;
            }
            let (head, len) = header(number.0.wrapping_sub(previous), value.len());
            previous = number.0;
            bytes.extend_from_slice(head.get(..len).unwrap_or(&[]));
            bytes.extend_from_slice(value);
        }
        CacheKey { bytes }
    }

    /// The request code the key was built from.
    pub fn code(&self) -> Code {
        Code::from_u8(self.bytes.first().copied().unwrap_or(0))
    }

    /// The encoded key, for callers that store or hash keys their own way. The encoding is
    /// stable within one version of this crate only.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn is_included(number: OptionNumber, exclude: &[OptionNumber]) -> bool {
    !number.is_no_cache_key() && !exclude.contains(&number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn get(path: &[&str]) -> Options {
        let mut o = Options::new();
        for p in path {
            o.push_str(OptionNumber::URI_PATH, p);
        }
        o
    }

    fn key(o: &Options) -> CacheKey {
        CacheKey::new(Code::GET, o, &[])
    }

    #[test]
    fn no_cache_key_options_are_left_out() {
        let plain = get(&["upload"]);
        let mut with_size = plain.clone();
        with_size.push_uint(OptionNumber::SIZE1, 1000);
        with_size.push_uint(OptionNumber::SIZE2, 0);
        with_size.push(OptionNumber::ECHO, b"echo");
        assert!(OptionNumber::SIZE1.is_no_cache_key());
        assert_eq!(key(&plain), key(&with_size));
        // An unknown NoCacheKey number (0x1c pattern) is left out as well, its neighbours not.
        let mut unknown = plain.clone();
        unknown.push(OptionNumber(0x11c), b"x");
        assert_eq!(key(&plain), key(&unknown));
        unknown.push(OptionNumber(0x11e), b"x");
        assert_ne!(key(&plain), key(&unknown));
    }

    #[test]
    fn different_paths_and_codes_differ() {
        assert_ne!(key(&get(&["a"])), key(&get(&["b"])));
        assert_ne!(key(&get(&["ab"])), key(&get(&["a", "b"])));
        assert_ne!(key(&get(&["a", ""])), key(&get(&["a"])));
        assert_ne!(key(&get(&["a", "b"])), key(&get(&["b", "a"])));
        assert_ne!(key(&get(&[])), key(&get(&[""])));
        let o = get(&["a"]);
        assert_ne!(
            CacheKey::new(Code::GET, &o, &[]),
            CacheKey::new(Code::FETCH, &o, &[])
        );
        assert_eq!(CacheKey::new(Code::FETCH, &o, &[]).code(), Code::FETCH);
        // Same path in a Uri-Query is something else.
        let mut q = Options::new();
        q.push_str(OptionNumber::URI_QUERY, "a");
        assert_ne!(key(&o), key(&q));
    }

    #[test]
    fn order_of_different_numbers_does_not_matter() {
        let mut a = Options::new();
        a.push_uint(OptionNumber::ACCEPT, 50);
        a.push_str(OptionNumber::URI_PATH, "x");
        a.push_str(OptionNumber::URI_HOST, "h");
        let mut b = Options::new();
        b.push_str(OptionNumber::URI_HOST, "h");
        b.push_str(OptionNumber::URI_PATH, "x");
        b.push_uint(OptionNumber::ACCEPT, 50);
        assert_eq!(key(&a), key(&b));
        // from_view sorts what it is given.
        let shuffled = [
            (OptionNumber::ACCEPT, &[50u8][..]),
            (OptionNumber::URI_PATH, b"x"),
            (OptionNumber::URI_HOST, b"h"),
        ];
        assert_eq!(CacheKey::from_view(Code::GET, shuffled, &[]), key(&a));
    }

    #[test]
    fn exclusions() {
        let mut first = get(&["fw"]);
        first.push_uint(OptionNumber::BLOCK2, 0x06);
        let mut second = get(&["fw"]);
        second.push_uint(OptionNumber::BLOCK2, 0x16);
        assert_ne!(key(&first), key(&second));
        assert_eq!(
            CacheKey::new(Code::GET, &first, BLOCKWISE_EXCLUDED),
            CacheKey::new(Code::GET, &second, BLOCKWISE_EXCLUDED)
        );
        // Request-Tag still tells operations apart.
        let mut tagged = first.clone();
        tagged.push(OptionNumber::REQUEST_TAG, b"t");
        assert_ne!(
            CacheKey::new(Code::GET, &first, BLOCKWISE_EXCLUDED),
            CacheKey::new(Code::GET, &tagged, BLOCKWISE_EXCLUDED)
        );

        let plain = get(&["temp"]);
        let mut register = plain.clone();
        register.push_uint(OptionNumber::OBSERVE, 0);
        assert_ne!(key(&plain), key(&register));
        assert_eq!(
            CacheKey::new(Code::GET, &plain, OBSERVE_EXCLUDED),
            CacheKey::new(Code::GET, &register, OBSERVE_EXCLUDED)
        );
        let mut follow_up = plain.clone();
        follow_up.push_uint(OptionNumber::BLOCK2, 0x16);
        assert_eq!(
            CacheKey::new(Code::GET, &register, BLOCKWISE_OBSERVE_EXCLUDED),
            CacheKey::new(Code::GET, &follow_up, BLOCKWISE_OBSERVE_EXCLUDED)
        );
    }

    #[test]
    fn small_keys_stay_inline() {
        let k = key(&get(&["sensors", "temp"]));
        assert!(!k.bytes.spilled());
        // The code, then each option as on the wire: a one-byte header and the value.
        assert_eq!(k.as_bytes().len(), 1 + (1 + 7) + (1 + 4));
        let long = key(&get(&[&"x".repeat(300)]));
        assert_eq!(long.as_bytes().len(), 1 + 3 + 300);
    }

    fn arb_options() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
        let number = prop_oneof![
            Just(OptionNumber::URI_PATH.0),
            Just(OptionNumber::SIZE1.0),
            Just(OptionNumber::OBSERVE.0),
            Just(OptionNumber::BLOCK2.0),
            0u16..400,
            any::<u16>(),
        ];
        proptest::collection::vec((number, proptest::collection::vec(0u8..3, 0..3)), 0..6)
    }

    fn included(opts: &[(u16, Vec<u8>)], exclude: &[OptionNumber]) -> Vec<(u16, Vec<u8>)> {
        let mut v: Vec<_> = opts
            .iter()
            // Written out rather than calling `is_included`, so the test checks it.
            .filter(|(n, _)| n & 0x1e != 0x1c && !exclude.iter().any(|e| e.0 == *n))
            .cloned()
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    fn build(opts: &[(u16, Vec<u8>)]) -> Options {
        let mut o = Options::new();
        for (n, v) in opts {
            o.push(OptionNumber(*n), v);
        }
        o
    }

    proptest! {
        #[test]
        fn keys_equal_exactly_when_included_options_equal(
            a in arb_options(),
            other in arb_options(),
            derive_b in any::<bool>(),
            extras in proptest::collection::vec(
                (prop_oneof![Just(28u16), Just(60), Just(252), Just(6)], any::<usize>()),
                0..4,
            ),
            same_code in any::<bool>(),
        ) {
            // Half the time `b` is `a` plus options that the key leaves out, inserted anywhere,
            // so that equal keys are exercised as well as different ones.
            let b = if derive_b {
                let mut b = a.clone();
                for (n, at) in extras {
                    let at = at % (b.len() + 1);
                    b.insert(at, (n, alloc::vec![1]));
                }
                b
            } else {
                other
            };
            let code_b = if same_code { Code::GET } else { Code::POST };
            let ka = CacheKey::new(Code::GET, &build(&a), OBSERVE_EXCLUDED);
            let kb = CacheKey::new(code_b, &build(&b), OBSERVE_EXCLUDED);
            let expected = same_code && included(&a, OBSERVE_EXCLUDED) == included(&b, OBSERVE_EXCLUDED);
            prop_assert_eq!(ka == kb, expected);
            // from_view agrees with new, whatever the input order.
            let view = CacheKey::from_view(
                Code::GET,
                a.iter().map(|(n, v)| (OptionNumber(*n), v.as_slice())),
                OBSERVE_EXCLUDED,
            );
            prop_assert_eq!(view, ka);
        }
    }
}
