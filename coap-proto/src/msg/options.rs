//! The owned option container [`Options`] and option value helpers.

use core::fmt;

use smallvec::SmallVec;

use super::block::Block;
use super::content_format::ContentFormat;
use super::option::{OptionFormat, OptionNumber};

/// An owned copy of one option value.
///
/// [`Options`] does not store values one by one (it keeps all value bytes in one buffer); this
/// type is for code that needs to keep a single value, e.g. an ETag, after the message is gone.
/// Values of up to 8 bytes are stored inline.
pub type OptionValue = SmallVec<[u8; 8]>;

/// One option in [`Options`]: its number and the length of its value in the shared buffer.
///
/// The length is a `u32` so that an entry takes 8 bytes and the inline entries of an
/// `Options` stay small (every `Message` and every event carrying one moves them). No CoAP
/// option value can exceed 65 804 bytes (RFC 7252 §3.1), so nothing encodable is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Entry {
    number: OptionNumber,
    len: u32,
}

impl Entry {
    fn new(number: OptionNumber, value: &[u8]) -> Entry {
        Entry {
            number,
            len: stored_len(value),
        }
    }

    fn len(self) -> usize {
        self.len as usize
    }
}

/// The length an entry records for `value`; see [`Options::push`] for values too long to keep.
fn stored_len(value: &[u8]) -> u32 {
    u32::try_from(value.len()).unwrap_or(u32::MAX)
}

/// `value` cut to what an entry can record (only a value over 4 GiB is cut).
fn storable(value: &[u8]) -> &[u8] {
    value.get(..stored_len(value) as usize).unwrap_or(value)
}

/// The options of a message, kept sorted by number; repeated options keep their insertion order.
///
/// The values live back to back in one small buffer, in the same order as the entries (wire
/// order), so a message with a handful of short options needs no heap allocation and two
/// `Options` with the same options in the same order are equal.
///
/// String accessors return `None` (or, for the path and query iterators, an empty string) for
/// values that are not UTF-8; [`Options::validate`] reports such values as errors.
#[derive(Default, PartialEq, Eq, Hash)]
pub struct Options {
    entries: SmallVec<[Entry; 8]>,
    data: SmallVec<[u8; 64]>,
}

impl Clone for Options {
    fn clone(&self) -> Options {
        // Slice copies; the derived clone would push element by element.
        Options {
            entries: SmallVec::from_slice(&self.entries),
            data: SmallVec::from_slice(&self.data),
        }
    }
}

/// An option that breaks its registry definition (RFC 7252 §5.4.3, §5.4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionError {
    /// The offending option.
    pub number: OptionNumber,
    /// What is wrong with it.
    pub kind: OptionErrorKind,
}

/// What is wrong with an option; see [`OptionError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionErrorKind {
    /// The value is shorter than the definition allows.
    TooShort,
    /// The value is longer than the definition allows (for uint options: more bytes than the
    /// definition's maximum, at most 4).
    TooLong,
    /// A string option's value is not valid UTF-8.
    NotUtf8,
    /// A non-repeatable option occurs more than once; `number` names it.
    Repeated,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            OptionErrorKind::TooShort => "value is shorter than allowed",
            OptionErrorKind::TooLong => "value is longer than allowed",
            OptionErrorKind::NotUtf8 => "value is not UTF-8",
            OptionErrorKind::Repeated => "option is not repeatable but occurs more than once",
        };
        write!(f, "option {} ({}): {what}", self.number.0, self.number)
    }
}

#[cfg(feature = "std")]
impl core::error::Error for OptionError {}

/// The minimal big-endian encoding of `v` (RFC 7252 §3.2): no leading zero bytes, so 0 is the
/// empty string. Returns the buffer and the number of bytes used at its end.
#[inline]
pub(crate) fn encode_uint(v: u32) -> ([u8; 4], usize) {
    let len = 4 - (v.leading_zeros() / 8) as usize;
    (v.to_be_bytes(), len)
}

/// The value of a uint option; `None` for values longer than 4 bytes. Leading zero bytes are
/// accepted (RFC 7252 §3.2 says senders should not send them, not that they are invalid).
#[inline]
pub fn decode_uint(value: &[u8]) -> Option<u32> {
    if value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Checks options given in wire order against their registry definitions; unknown numbers pass.
pub(crate) fn validate_iter<'a>(
    options: impl Iterator<Item = (OptionNumber, &'a [u8])>,
) -> Result<(), OptionError> {
    let mut previous: Option<OptionNumber> = None;
    for (number, value) in options {
        let repeated = previous == Some(number);
        previous = Some(number);
        let Some(def) = number.definition() else {
            continue;
        };
        let err = |kind| Err(OptionError { number, kind });
        if repeated && !def.repeatable {
            return err(OptionErrorKind::Repeated);
        }
        if value.len() < usize::from(def.min_len) {
            return err(OptionErrorKind::TooShort);
        }
        if value.len() > usize::from(def.max_len) {
            return err(OptionErrorKind::TooLong);
        }
        if def.format == OptionFormat::String && core::str::from_utf8(value).is_err() {
            return err(OptionErrorKind::NotUtf8);
        }
    }
    Ok(())
}

fn str_or_empty(v: &[u8]) -> &str {
    core::str::from_utf8(v).unwrap_or("")
}

impl Options {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `bytes` value bytes without reallocating.
    pub(crate) fn reserve_bytes(&mut self, bytes: usize) {
        self.data.reserve(bytes);
    }

    /// The number of options (each repetition counts).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes all options.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.data.clear();
    }

    /// All options in wire order: by number, repetitions in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (OptionNumber, &[u8])> + '_ {
        let mut rest: &[u8] = &self.data;
        self.entries.iter().map(move |e| {
            // The buffer holds exactly the sum of the entry lengths.
            let (value, tail) = rest.split_at_checked(e.len()).unwrap_or((rest, &[]));
            rest = tail;
            (e.number, value)
        })
    }

    /// The entry index range and byte range of the values of `n`.
    fn find(&self, n: OptionNumber) -> (usize, usize, usize, usize) {
        let mut offset = 0;
        let mut lo = self.entries.len();
        for (i, e) in self.entries.iter().enumerate() {
            if e.number >= n {
                lo = i;
                break;
            }
            offset += e.len();
        }
        let start = offset;
        let mut hi = lo;
        for e in self.entries.get(lo..).unwrap_or(&[]) {
            if e.number != n {
                break;
            }
            offset += e.len();
            hi += 1;
        }
        (lo, hi, start, offset)
    }

    /// The first value of `n`.
    pub fn get(&self, n: OptionNumber) -> Option<&[u8]> {
        let mut offset = 0;
        for e in &self.entries {
            if e.number == n {
                return self.data.get(offset..offset + e.len());
            }
            if e.number > n {
                return None;
            }
            offset += e.len();
        }
        None
    }

    /// All values of `n`, in order.
    pub fn get_all(&self, n: OptionNumber) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter()
            .skip_while(move |(m, _)| *m < n)
            .take_while(move |(m, _)| *m == n)
            .map(|(_, v)| v)
    }

    /// Whether `n` is present.
    pub fn contains(&self, n: OptionNumber) -> bool {
        self.entries.iter().any(|e| e.number == n)
    }

    /// Adds a value of `n` after any existing values of `n` (a repetition if there are some).
    ///
    /// A value longer than 4 GiB is cut to that length; no option that long can be encoded
    /// (RFC 7252 §3.1 allows at most 65 804 bytes), so encoding such a message fails either way.
    pub fn push(&mut self, n: OptionNumber, value: &[u8]) {
        let value = storable(value);
        let entry = Entry::new(n, value);
        // Fast path: options usually arrive in order.
        if self.entries.last().is_none_or(|e| e.number <= n) {
            self.entries.push(entry);
            if value.len() <= 16 {
                // Byte by byte is cheaper than a general copy for the few bytes of a
                // typical option value.
                self.data.extend(value.iter().copied());
            } else {
                self.data.extend_from_slice(value);
            }
            return;
        }
        let (_, hi, _, end) = self.find(n);
        self.entries.insert(hi, entry);
        self.data.insert_from_slice(end, value);
    }

    /// Replaces all values of `n` with `value`.
    pub fn set(&mut self, n: OptionNumber, value: &[u8]) {
        let value = storable(value);
        let (lo, hi, start, end) = self.find(n);
        if hi == lo + 1 && end - start == value.len() {
            if let Some(slot) = self.data.get_mut(start..end) {
                slot.copy_from_slice(value);
                return;
            }
        }
        self.remove_range(lo, hi, start, end);
        self.entries.insert(lo, Entry::new(n, value));
        self.data.insert_from_slice(start, value);
    }

    fn remove_range(&mut self, lo: usize, hi: usize, start: usize, end: usize) {
        if hi > lo {
            self.entries.drain(lo..hi);
            self.data.drain(start..end);
        }
    }

    /// Removes all values of `n`; returns how many there were.
    pub fn remove(&mut self, n: OptionNumber) -> usize {
        let (lo, hi, start, end) = self.find(n);
        self.remove_range(lo, hi, start, end);
        hi - lo
    }

    /// Adds a uint value of `n` in minimal big-endian form (RFC 7252 §3.2; 0 is empty).
    pub fn push_uint(&mut self, n: OptionNumber, v: u32) {
        let (bytes, len) = encode_uint(v);
        self.push(n, bytes.get(4 - len..).unwrap_or(&[]));
    }

    /// Replaces all values of `n` with the uint `v` in minimal form.
    pub fn set_uint(&mut self, n: OptionNumber, v: u32) {
        let (bytes, len) = encode_uint(v);
        self.set(n, bytes.get(4 - len..).unwrap_or(&[]));
    }

    /// The first value of `n` as a uint; `None` if absent or longer than 4 bytes.
    pub fn get_uint(&self, n: OptionNumber) -> Option<u32> {
        self.get(n).and_then(decode_uint)
    }

    /// Replaces all values of `n` with the UTF-8 bytes of `s`.
    pub fn set_str(&mut self, n: OptionNumber, s: &str) {
        self.set(n, s.as_bytes());
    }

    /// Adds the UTF-8 bytes of `s` as a value of `n`.
    pub fn push_str(&mut self, n: OptionNumber, s: &str) {
        self.push(n, s.as_bytes());
    }

    /// The first value of `n` as text; `None` if absent or not UTF-8.
    pub fn get_str(&self, n: OptionNumber) -> Option<&str> {
        self.get(n).and_then(|v| core::str::from_utf8(v).ok())
    }

    /// The Uri-Path segments in order. A segment that is not UTF-8 is yielded as `""` (nothing
    /// is skipped, so the segment count stays right); [`Options::validate`] reports it.
    pub fn uri_path(&self) -> impl Iterator<Item = &str> + '_ {
        self.get_all(OptionNumber::URI_PATH).map(str_or_empty)
    }

    /// The Uri-Query arguments in order; non-UTF-8 ones as `""`, as in [`Options::uri_path`].
    pub fn uri_query(&self) -> impl Iterator<Item = &str> + '_ {
        self.get_all(OptionNumber::URI_QUERY).map(str_or_empty)
    }

    /// The Location-Path segments in order; non-UTF-8 ones as `""`, as in [`Options::uri_path`].
    pub fn location_path(&self) -> impl Iterator<Item = &str> + '_ {
        self.get_all(OptionNumber::LOCATION_PATH).map(str_or_empty)
    }

    /// The Location-Query arguments in order; non-UTF-8 ones as `""`, as in [`Options::uri_path`].
    pub fn location_query(&self) -> impl Iterator<Item = &str> + '_ {
        self.get_all(OptionNumber::LOCATION_QUERY).map(str_or_empty)
    }

    /// Uri-Host.
    pub fn uri_host(&self) -> Option<&str> {
        self.get_str(OptionNumber::URI_HOST)
    }

    /// Uri-Port; `None` if absent or over 65535.
    pub fn uri_port(&self) -> Option<u16> {
        self.get_uint(OptionNumber::URI_PORT)
            .and_then(|v| u16::try_from(v).ok())
    }

    /// Content-Format; `None` if absent or over 65535.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.get_uint(OptionNumber::CONTENT_FORMAT)
            .and_then(|v| u16::try_from(v).ok())
            .map(ContentFormat)
    }

    /// Accept; `None` if absent or over 65535.
    pub fn accept(&self) -> Option<ContentFormat> {
        self.get_uint(OptionNumber::ACCEPT)
            .and_then(|v| u16::try_from(v).ok())
            .map(ContentFormat)
    }

    /// The first ETag (a response carries at most one).
    pub fn etag(&self) -> Option<&[u8]> {
        self.get(OptionNumber::ETAG)
    }

    /// All ETags (a request may list several, RFC 7252 §5.10.6.2).
    pub fn etags(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.get_all(OptionNumber::ETAG)
    }

    /// All If-Match values; an empty value matches any current representation.
    pub fn if_match(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.get_all(OptionNumber::IF_MATCH)
    }

    /// Whether If-None-Match is present.
    pub fn if_none_match(&self) -> bool {
        self.contains(OptionNumber::IF_NONE_MATCH)
    }

    /// Observe (RFC 7641): 0 registers, 1 deregisters in requests; a sequence number in
    /// notifications.
    pub fn observe(&self) -> Option<u32> {
        self.get_uint(OptionNumber::OBSERVE)
    }

    /// Block1; `None` if absent or not a valid Block value (SZX 7, more than 3 bytes).
    pub fn block1(&self) -> Option<Block> {
        self.get_uint(OptionNumber::BLOCK1)
            .and_then(|v| Block::from_uint(v).ok())
    }

    /// Block2; `None` if absent or not a valid Block value (SZX 7, more than 3 bytes).
    pub fn block2(&self) -> Option<Block> {
        self.get_uint(OptionNumber::BLOCK2)
            .and_then(|v| Block::from_uint(v).ok())
    }

    /// Size1: the request body size, or in a 4.13 the largest size the server accepts.
    pub fn size1(&self) -> Option<u32> {
        self.get_uint(OptionNumber::SIZE1)
    }

    /// Size2: the response body size.
    pub fn size2(&self) -> Option<u32> {
        self.get_uint(OptionNumber::SIZE2)
    }

    /// Max-Age in seconds as sent; absent means the default of 60 (RFC 7252 §5.10.5), see
    /// [`Options::max_age_or_default`].
    pub fn max_age(&self) -> Option<u32> {
        self.get_uint(OptionNumber::MAX_AGE)
    }

    /// Max-Age in seconds, 60 if absent (RFC 7252 §5.10.5).
    pub fn max_age_or_default(&self) -> u32 {
        self.max_age().unwrap_or(60)
    }

    /// Proxy-Uri.
    pub fn proxy_uri(&self) -> Option<&str> {
        self.get_str(OptionNumber::PROXY_URI)
    }

    /// Proxy-Scheme.
    pub fn proxy_scheme(&self) -> Option<&str> {
        self.get_str(OptionNumber::PROXY_SCHEME)
    }

    /// Hop-Limit (RFC 8768); `None` if absent or over 255.
    pub fn hop_limit(&self) -> Option<u8> {
        self.get_uint(OptionNumber::HOP_LIMIT)
            .and_then(|v| u8::try_from(v).ok())
    }

    /// The first Request-Tag (RFC 9175 §3).
    pub fn request_tag(&self) -> Option<&[u8]> {
        self.get(OptionNumber::REQUEST_TAG)
    }

    /// Echo (RFC 9175 §2).
    pub fn echo(&self) -> Option<&[u8]> {
        self.get(OptionNumber::ECHO)
    }

    /// No-Response (RFC 7967): a bit mask of the response classes the client is not interested
    /// in; `None` if absent or over 255.
    pub fn no_response(&self) -> Option<u8> {
        self.get_uint(OptionNumber::NO_RESPONSE)
            .and_then(|v| u8::try_from(v).ok())
    }

    /// Sets Content-Format.
    pub fn set_content_format(&mut self, cf: ContentFormat) {
        self.set_uint(OptionNumber::CONTENT_FORMAT, u32::from(cf.0));
    }

    /// Sets Accept.
    pub fn set_accept(&mut self, cf: ContentFormat) {
        self.set_uint(OptionNumber::ACCEPT, u32::from(cf.0));
    }

    /// Sets Block1.
    pub fn set_block1(&mut self, block: Block) {
        self.set_uint(OptionNumber::BLOCK1, block.to_uint());
    }

    /// Sets Block2.
    pub fn set_block2(&mut self, block: Block) {
        self.set_uint(OptionNumber::BLOCK2, block.to_uint());
    }

    /// Sets Observe (values are 24 bits on the wire, RFC 7641 §2; higher bits are dropped).
    pub fn set_observe(&mut self, v: u32) {
        self.set_uint(OptionNumber::OBSERVE, v & 0x00ff_ffff);
    }

    /// Sets Max-Age in seconds.
    pub fn set_max_age(&mut self, seconds: u32) {
        self.set_uint(OptionNumber::MAX_AGE, seconds);
    }

    /// Replaces all ETags with `etag`.
    pub fn set_etag(&mut self, etag: &[u8]) {
        self.set(OptionNumber::ETAG, etag);
    }

    /// Adds an ETag (requests may carry several).
    pub fn push_etag(&mut self, etag: &[u8]) {
        self.push(OptionNumber::ETAG, etag);
    }

    /// Adds an If-Match value.
    pub fn push_if_match(&mut self, etag: &[u8]) {
        self.push(OptionNumber::IF_MATCH, etag);
    }

    /// Adds or removes If-None-Match.
    pub fn set_if_none_match(&mut self, present: bool) {
        if present {
            self.set(OptionNumber::IF_NONE_MATCH, &[]);
        } else {
            self.remove(OptionNumber::IF_NONE_MATCH);
        }
    }

    /// Sets Size1.
    pub fn set_size1(&mut self, size: u32) {
        self.set_uint(OptionNumber::SIZE1, size);
    }

    /// Sets Size2.
    pub fn set_size2(&mut self, size: u32) {
        self.set_uint(OptionNumber::SIZE2, size);
    }

    /// Sets Uri-Host.
    pub fn set_uri_host(&mut self, host: &str) {
        self.set_str(OptionNumber::URI_HOST, host);
    }

    /// Sets Uri-Port.
    pub fn set_uri_port(&mut self, port: u16) {
        self.set_uint(OptionNumber::URI_PORT, u32::from(port));
    }

    /// Appends one Uri-Path segment (not split, not percent-decoded).
    pub fn push_uri_path(&mut self, segment: &str) {
        self.push_str(OptionNumber::URI_PATH, segment);
    }

    /// Appends one Uri-Query argument (not split, not percent-decoded).
    pub fn push_uri_query(&mut self, arg: &str) {
        self.push_str(OptionNumber::URI_QUERY, arg);
    }

    /// Appends one Location-Path segment.
    pub fn push_location_path(&mut self, segment: &str) {
        self.push_str(OptionNumber::LOCATION_PATH, segment);
    }

    /// Appends one Location-Query argument.
    pub fn push_location_query(&mut self, arg: &str) {
        self.push_str(OptionNumber::LOCATION_QUERY, arg);
    }

    /// Sets Proxy-Uri.
    pub fn set_proxy_uri(&mut self, uri: &str) {
        self.set_str(OptionNumber::PROXY_URI, uri);
    }

    /// Sets Proxy-Scheme.
    pub fn set_proxy_scheme(&mut self, scheme: &str) {
        self.set_str(OptionNumber::PROXY_SCHEME, scheme);
    }

    /// Sets Hop-Limit.
    pub fn set_hop_limit(&mut self, hops: u8) {
        // RFC 8768 §3: the value is always one byte, so 0 is not sent as the empty string.
        self.set(OptionNumber::HOP_LIMIT, &[hops]);
    }

    /// Sets Request-Tag.
    pub fn set_request_tag(&mut self, tag: &[u8]) {
        self.set(OptionNumber::REQUEST_TAG, tag);
    }

    /// Sets Echo.
    pub fn set_echo(&mut self, echo: &[u8]) {
        self.set(OptionNumber::ECHO, echo);
    }

    /// Sets No-Response.
    pub fn set_no_response(&mut self, mask: u8) {
        self.set_uint(OptionNumber::NO_RESPONSE, u32::from(mask));
    }

    /// Checks every known option against its registry definition (RFC 7252 §5.4.3, §5.4.5):
    /// value length within bounds (so uint values of at most 4 bytes), UTF-8 for string
    /// options, no repetition of non-repeatable options. Returns the first offending option.
    /// Options this crate does not know are not checked.
    pub fn validate(&self) -> Result<(), OptionError> {
        validate_iter(self.iter())
    }
}

impl<'a> FromIterator<(OptionNumber, &'a [u8])> for Options {
    fn from_iter<I: IntoIterator<Item = (OptionNumber, &'a [u8])>>(iter: I) -> Options {
        let mut options = Options::new();
        options.extend(iter);
        options
    }
}

impl<'a> Extend<(OptionNumber, &'a [u8])> for Options {
    fn extend<I: IntoIterator<Item = (OptionNumber, &'a [u8])>>(&mut self, iter: I) {
        for (n, v) in iter {
            self.push(n, v);
        }
    }
}

/// Shows a value the way its format suggests: text, number or hex.
struct ValueDebug<'a>(OptionNumber, &'a [u8]);

impl fmt::Debug for ValueDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = self.0.definition().map(|d| d.format);
        match format {
            Some(OptionFormat::String) => {
                if let Ok(s) = core::str::from_utf8(self.1) {
                    return write!(f, "{s:?}");
                }
            }
            Some(OptionFormat::Uint) => {
                if let Some(v) = decode_uint(self.1) {
                    return write!(f, "{v}");
                }
            }
            _ => {}
        }
        f.write_str("0x")?;
        for b in self.1 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Shows an option number as its name, or as the number.
struct NumberDebug(OptionNumber);

impl fmt::Debug for NumberDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0 .0),
        }
    }
}

impl fmt::Debug for Options {
    /// A list of `Name: value` pairs in wire order, e.g. `{Uri-Path: "temp", Accept: 50}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| (NumberDebug(n), ValueDebug(n, v))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec::Vec;

    fn list(o: &Options) -> Vec<(u16, Vec<u8>)> {
        o.iter().map(|(n, v)| (n.0, v.to_vec())).collect()
    }

    #[test]
    fn keeps_sorted_and_insertion_order() {
        let mut o = Options::new();
        o.push(OptionNumber(11), b"b");
        o.push(OptionNumber(3), b"host");
        o.push(OptionNumber(11), b"c");
        o.push(OptionNumber(60), b"");
        o.push(OptionNumber(11), b"d");
        o.push(OptionNumber(4), b"e1");
        assert_eq!(
            list(&o),
            [
                (3, b"host".to_vec()),
                (4, b"e1".to_vec()),
                (11, b"b".to_vec()),
                (11, b"c".to_vec()),
                (11, b"d".to_vec()),
                (60, Vec::new()),
            ]
        );
        assert_eq!(o.len(), 6);
        assert_eq!(o.get(OptionNumber(11)), Some(&b"b"[..]));
        assert_eq!(o.get(OptionNumber(12)), None);
        assert_eq!(o.get(OptionNumber(61)), None);
        assert_eq!(
            o.get_all(OptionNumber(11)).collect::<Vec<_>>(),
            [b"b", b"c", b"d"]
        );
        assert!(o.contains(OptionNumber(60)));
        assert!(!o.contains(OptionNumber(5)));
    }

    #[test]
    fn set_replaces_all_and_remove_counts() {
        let mut o = Options::new();
        o.push(OptionNumber(1), b"x");
        o.push(OptionNumber(11), b"a");
        o.push(OptionNumber(11), b"b");
        o.push(OptionNumber(20), b"z");
        o.set(OptionNumber(11), b"long value");
        assert_eq!(
            list(&o),
            [
                (1, b"x".to_vec()),
                (11, b"long value".to_vec()),
                (20, b"z".to_vec())
            ]
        );
        o.set(OptionNumber(11), b"same-size!");
        assert_eq!(o.get(OptionNumber(11)), Some(&b"same-size!"[..]));
        o.set(OptionNumber(5), b"");
        assert_eq!(o.len(), 4);
        assert_eq!(o.remove(OptionNumber(11)), 1);
        assert_eq!(o.remove(OptionNumber(11)), 0);
        assert_eq!(
            list(&o),
            [(1, b"x".to_vec()), (5, Vec::new()), (20, b"z".to_vec())]
        );
        assert_eq!(o.remove(OptionNumber(1)), 1);
        assert_eq!(o.remove(OptionNumber(20)), 1);
        assert_eq!(o.remove(OptionNumber(5)), 1);
        assert!(o.is_empty());
    }

    #[test]
    fn equality_does_not_depend_on_history() {
        let mut a = Options::new();
        a.push(OptionNumber(11), b"x");
        a.push(OptionNumber(3), b"h");
        let mut b = Options::new();
        b.push(OptionNumber(3), b"old");
        b.push(OptionNumber(11), b"x");
        b.set(OptionNumber(3), b"h");
        assert_eq!(a, b);
    }

    #[test]
    fn uint_is_minimal_big_endian() {
        let mut o = Options::new();
        for (v, bytes) in [
            (0u32, &[][..]),
            (1, &[1][..]),
            (255, &[255][..]),
            (256, &[1, 0][..]),
            (0x0001_0000, &[1, 0, 0][..]),
            (0x0100_0000, &[1, 0, 0, 0][..]),
            (u32::MAX, &[255, 255, 255, 255][..]),
        ] {
            o.set_uint(OptionNumber::MAX_AGE, v);
            assert_eq!(o.get(OptionNumber::MAX_AGE), Some(bytes), "{v}");
            assert_eq!(o.get_uint(OptionNumber::MAX_AGE), Some(v));
        }
        // Leading zeros are tolerated on input; five bytes are not a uint.
        assert_eq!(decode_uint(&[0, 0, 1]), Some(1));
        assert_eq!(decode_uint(&[0, 0, 0, 0, 1]), None);
        o.set(OptionNumber::MAX_AGE, &[0, 0, 0, 0, 1]);
        assert_eq!(o.max_age(), None);
    }

    #[test]
    fn typed_accessors() {
        let mut o = Options::new();
        o.set_uri_host("example.net");
        o.set_uri_port(5684);
        o.push_uri_path("sensors");
        o.push_uri_path("temp");
        o.push_uri_query("unit=c");
        o.set_accept(ContentFormat::JSON);
        o.set_content_format(ContentFormat::CBOR);
        o.set_block2(Block {
            num: 5,
            more: true,
            szx: 6,
        });
        o.set_block1(Block {
            num: 0,
            more: false,
            szx: 0,
        });
        o.set_observe(0);
        o.set_max_age(30);
        o.set_etag(b"\x01\x02");
        o.set_size1(1000);
        o.set_size2(2000);
        o.set_hop_limit(16);
        o.set_request_tag(b"t");
        o.set_echo(b"echo");
        o.set_no_response(0x1a);
        o.set_if_none_match(true);
        o.push_if_match(b"");
        o.set_proxy_scheme("coap");
        o.push_location_path("a");
        o.push_location_query("q");
        assert_eq!(o.uri_host(), Some("example.net"));
        assert_eq!(o.uri_port(), Some(5684));
        assert_eq!(o.uri_path().collect::<Vec<_>>(), ["sensors", "temp"]);
        assert_eq!(o.uri_query().collect::<Vec<_>>(), ["unit=c"]);
        assert_eq!(o.location_path().collect::<Vec<_>>(), ["a"]);
        assert_eq!(o.location_query().collect::<Vec<_>>(), ["q"]);
        assert_eq!(o.accept(), Some(ContentFormat::JSON));
        assert_eq!(o.content_format(), Some(ContentFormat::CBOR));
        assert_eq!(
            o.block2(),
            Some(Block {
                num: 5,
                more: true,
                szx: 6
            })
        );
        assert_eq!(
            o.block1(),
            Some(Block {
                num: 0,
                more: false,
                szx: 0
            })
        );
        assert_eq!(o.get(OptionNumber::BLOCK1), Some(&[][..]));
        assert_eq!(o.observe(), Some(0));
        assert_eq!(o.max_age(), Some(30));
        assert_eq!(o.etag(), Some(&[1, 2][..]));
        assert_eq!(o.size1(), Some(1000));
        assert_eq!(o.size2(), Some(2000));
        assert_eq!(o.hop_limit(), Some(16));
        assert_eq!(o.request_tag(), Some(&b"t"[..]));
        assert_eq!(o.echo(), Some(&b"echo"[..]));
        assert_eq!(o.no_response(), Some(0x1a));
        assert!(o.if_none_match());
        assert_eq!(o.if_match().count(), 1);
        assert_eq!(o.proxy_scheme(), Some("coap"));
        assert_eq!(o.proxy_uri(), None);
        assert_eq!(o.validate(), Ok(()));
        o.set_if_none_match(false);
        assert!(!o.if_none_match());
        assert_eq!(Options::new().max_age_or_default(), 60);
    }

    #[test]
    fn non_utf8_path_segments_are_empty_not_skipped() {
        let mut o = Options::new();
        o.push(OptionNumber::URI_PATH, b"a");
        o.push(OptionNumber::URI_PATH, &[0xff, 0xfe]);
        o.push(OptionNumber::URI_PATH, b"c");
        assert_eq!(o.uri_path().collect::<Vec<_>>(), ["a", "", "c"]);
        assert_eq!(
            o.validate(),
            Err(OptionError {
                number: OptionNumber::URI_PATH,
                kind: OptionErrorKind::NotUtf8
            })
        );
        o.set(OptionNumber::URI_HOST, &[0xc3]);
        assert_eq!(o.uri_host(), None);
    }

    #[test]
    fn validate_reports_each_kind() {
        let err = |n: OptionNumber, kind| Err(OptionError { number: n, kind });
        let one = |n: OptionNumber, v: &[u8]| Options::from_iter([(n, v)]);
        assert_eq!(
            one(OptionNumber::URI_HOST, b"").validate(),
            err(OptionNumber::URI_HOST, OptionErrorKind::TooShort)
        );
        assert_eq!(
            one(OptionNumber::ETAG, &[0; 9]).validate(),
            err(OptionNumber::ETAG, OptionErrorKind::TooLong)
        );
        assert_eq!(
            one(OptionNumber::MAX_AGE, &[1; 5]).validate(),
            err(OptionNumber::MAX_AGE, OptionErrorKind::TooLong)
        );
        assert_eq!(
            one(OptionNumber::IF_NONE_MATCH, &[0]).validate(),
            err(OptionNumber::IF_NONE_MATCH, OptionErrorKind::TooLong)
        );
        assert_eq!(
            one(OptionNumber::HOP_LIMIT, &[]).validate(),
            err(OptionNumber::HOP_LIMIT, OptionErrorKind::TooShort)
        );
        assert_eq!(
            one(OptionNumber::PROXY_URI, &[b'a'; 1035]).validate(),
            err(OptionNumber::PROXY_URI, OptionErrorKind::TooLong)
        );
        assert_eq!(
            one(OptionNumber::PROXY_URI, &[b'a'; 1034]).validate(),
            Ok(())
        );
        assert_eq!(one(OptionNumber(65000), &[0; 300]).validate(), Ok(()));
        let mut o = Options::new();
        o.push_uint(OptionNumber::CONTENT_FORMAT, 0);
        o.push_uint(OptionNumber::CONTENT_FORMAT, 50);
        assert_eq!(
            o.validate(),
            err(OptionNumber::CONTENT_FORMAT, OptionErrorKind::Repeated)
        );
        let mut o = Options::new();
        o.push_etag(b"1");
        o.push_etag(b"2");
        assert_eq!(o.validate(), Ok(()));
        let e = OptionError {
            number: OptionNumber::URI_HOST,
            kind: OptionErrorKind::TooShort,
        };
        assert_eq!(
            format!("{e}"),
            "option 3 (Uri-Host): value is shorter than allowed"
        );
    }

    #[test]
    fn debug_shows_names_and_values() {
        let mut o = Options::new();
        o.push_uri_path("temp");
        o.set_accept(ContentFormat::JSON);
        o.set_etag(&[0xab]);
        o.push(OptionNumber(1000), b"\x01");
        assert_eq!(
            format!("{o:?}"),
            r#"{ETag: 0xab, Uri-Path: "temp", Accept: 50, 1000: 0x01}"#
        );
    }
}
