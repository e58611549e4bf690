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

/// The largest option delta or value length the wire format can carry: a 4-bit field plus
/// two extension bytes, 65 535 + 269 (RFC 7252 §3.1).
pub(crate) const MAX_EXTENDED: usize = 65535 + 269;

/// The length nibble [`Options`] uses, inside its own buffer only, for a value longer than
/// [`MAX_EXTENDED`]: 15 (reserved on the wire) followed by the length as 4 bytes. Encoding a
/// message refuses such a value, so the marker never leaves the buffer.
const LONG_NIBBLE: u8 = 15;

/// The nibble and extension bytes for an option delta, option length or token length `v`
/// (RFC 7252 §3.1, RFC 8974 §2.1). Returns the header field's nibble, the extension bytes and
/// how many of them are used.
#[inline(always)]
pub(crate) fn length_field(v: usize) -> (u8, [u8; 4], usize) {
    if v < 13 {
        (v as u8, [0; 4], 0)
    } else if v < 269 {
        (13, [(v - 13) as u8, 0, 0, 0], 1)
    } else if v <= MAX_EXTENDED {
        let [hi, lo] = ((v - 269) as u16).to_be_bytes();
        (14, [hi, lo, 0, 0], 2)
    } else {
        (LONG_NIBBLE, (v as u32).to_be_bytes(), 4)
    }
}

/// One option header (RFC 7252 §3.1) for a delta and a value length: the bytes and how many
/// are used (at most 1 + 2 + 4).
#[inline(always)]
pub(crate) fn header(delta: u16, len: usize) -> ([u8; 7], usize) {
    let (dn, dx, dl) = length_field(usize::from(delta));
    let (ln, lx, ll) = length_field(len);
    let mut out = [0u8; 7];
    out[0] = (dn << 4) | ln;
    // A delta (a u16) takes at most 2 extension bytes, a length at most 4: 1 + 2 + 4 fit.
    let extensions = dx.iter().take(dl).chain(lx.iter().take(ll));
    for (slot, &b) in out.iter_mut().skip(1).zip(extensions) {
        *slot = b;
    }
    (out, (1 + dl + ll).min(7))
}

/// Reads an extended field whose nibble is `nibble` at `*pos`. The buffer was written by
/// [`header`] (or checked by the parser), so a short read only ends iteration early.
#[inline(always)]
fn read_field(wire: &[u8], pos: &mut usize, nibble: u8) -> usize {
    match nibble {
        0..=12 => usize::from(nibble),
        13 => {
            let v = wire.get(*pos).map_or(0, |&b| usize::from(b) + 13);
            *pos += 1;
            v
        }
        14 => {
            let v = match wire.get(*pos..*pos + 2) {
                Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])) + 269,
                _ => 0,
            };
            *pos += 2;
            v
        }
        _ => {
            let v = match wire.get(*pos..*pos + 4) {
                Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]) as usize,
                _ => 0,
            };
            *pos += 4;
            v
        }
    }
}

/// The bit of [`Options::present`] for option number `n`.
#[inline(always)]
pub(crate) fn presence_bit(n: u16) -> u64 {
    1 << (n % 64)
}

/// One option as found in the buffer.
#[derive(Clone, Copy)]
struct Item {
    number: u16,
    /// Where its header starts.
    start: usize,
    /// Where its value starts (so the header is `start..value`).
    value: usize,
    /// Where the option ends.
    end: usize,
}

/// Walks the buffer of an [`Options`] option by option.
#[derive(Clone)]
struct Cursor<'a> {
    wire: &'a [u8],
    pos: usize,
    number: u16,
}

impl Iterator for Cursor<'_> {
    type Item = Item;

    #[inline]
    fn next(&mut self) -> Option<Item> {
        let start = self.pos;
        let &first = self.wire.get(start)?;
        let mut pos = start + 1;
        let delta = read_field(self.wire, &mut pos, first >> 4);
        let len = read_field(self.wire, &mut pos, first & 0x0f);
        let end = pos.saturating_add(len);
        if end > self.wire.len() {
            // Not written by this module: stop rather than read past the end.
            self.pos = self.wire.len();
            return None;
        }
        self.number = self.number.wrapping_add(delta as u16);
        self.pos = end;
        Some(Item {
            number: self.number,
            start,
            value: pos,
            end,
        })
    }
}

/// Where the options numbered `n` are, or would go, in the buffer.
struct Span {
    /// The number of the option before `start` (0 if none).
    prev: u16,
    /// The first byte of the first option numbered `n` or higher.
    start: usize,
    /// The first byte after the options numbered `n`.
    end: usize,
    /// How many options are numbered `n`.
    run: usize,
    /// The first option numbered `n`, if any.
    first: Option<Item>,
    /// The option starting at `end`, if any.
    next: Option<Item>,
}

/// The options of a message, kept sorted by number; repeated options keep their insertion order.
///
/// The options live in one small buffer in CoAP's own wire encoding (RFC 7252 §3.1): a
/// message parsed from a datagram takes its options with one copy, encoding writes them with
/// one copy, and a message with a handful of short options needs no heap allocation. Two
/// `Options` with the same options in the same order are equal.
///
/// String accessors return `None` (or, for the path and query iterators, an empty string) for
/// values that are not UTF-8; [`Options::validate`] reports such values as errors.
#[derive(Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// The encoded options, deltas counted from 0.
    wire: SmallVec<[u8; 48]>,
    /// Bit `n % 64` is set when an option numbered `n` may be present: most lookups are for
    /// absent options, and this answers them without walking the buffer.
    present: u64,
    /// How many options the buffer holds.
    count: u32,
    /// The number of the last option (0 if none).
    last: u16,
    /// Whether some value is longer than the wire format allows (see [`LONG_NIBBLE`]).
    has_long: bool,
}

impl Clone for Options {
    fn clone(&self) -> Options {
        // A slice copy; the derived clone would push byte by byte.
        Options {
            wire: SmallVec::from_slice(&self.wire),
            present: self.present,
            count: self.count,
            last: self.last,
            has_long: self.has_long,
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

    /// Options taken from a message's option region as it was on the wire, already checked
    /// by the parser: `count` options, the last numbered `last`.
    pub(crate) fn from_wire(region: &[u8], count: u32, last: u16, present: u64) -> Options {
        Options {
            wire: SmallVec::from_slice(region),
            present,
            count,
            last,
            has_long: false,
        }
    }

    /// The options in wire encoding, deltas counted from 0. Meaningful on the wire only when
    /// [`Options::long_value`] is `None`.
    #[inline]
    pub(crate) fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The first option whose value is too long for the wire format, with its length.
    pub(crate) fn long_value(&self) -> Option<(OptionNumber, usize)> {
        if !self.has_long {
            return None;
        }
        self.cursor()
            .find(|i| i.end - i.value > MAX_EXTENDED)
            .map(|i| (OptionNumber(i.number), i.end - i.value))
    }

    /// The number of options (each repetition counts).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes all options.
    pub fn clear(&mut self) {
        self.wire.clear();
        self.present = 0;
        self.count = 0;
        self.last = 0;
        self.has_long = false;
    }

    fn cursor(&self) -> Cursor<'_> {
        Cursor {
            wire: &self.wire,
            pos: 0,
            number: 0,
        }
    }

    /// The option numbers in wire order, without looking at the values.
    pub(crate) fn numbers(&self) -> impl Iterator<Item = OptionNumber> + '_ {
        self.cursor().map(|i| OptionNumber(i.number))
    }

    /// All options in wire order: by number, repetitions in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (OptionNumber, &[u8])> + '_ {
        let wire: &[u8] = &self.wire;
        self.cursor().map(move |i| {
            (
                OptionNumber(i.number),
                wire.get(i.value..i.end).unwrap_or(&[]),
            )
        })
    }

    /// Where the options numbered `n` are, or where they would go.
    fn find(&self, n: OptionNumber) -> Span {
        let mut prev = 0;
        let mut cursor = self.cursor();
        let mut start = self.wire.len();
        let mut first = None;
        for item in cursor.by_ref() {
            if item.number >= n.0 {
                start = item.start;
                first = Some(item);
                break;
            }
            prev = item.number;
        }
        let mut span = Span {
            prev,
            start,
            end: start,
            run: 0,
            first: first.filter(|i| i.number == n.0),
            next: None,
        };
        let mut item = first;
        while let Some(i) = item {
            if i.number != n.0 {
                span.next = Some(i);
                break;
            }
            span.run += 1;
            span.end = i.end;
            item = cursor.next();
        }
        span
    }

    /// Replaces the bytes `from..to` with `insert`, then the header of the option `next`
    /// (which started at `to`) with one for its delta from `before` (the number of the last
    /// option in front of it after the change).
    fn splice(&mut self, from: usize, to: usize, insert: &[u8], next: Option<Item>, before: u16) {
        let mut replacement: SmallVec<[u8; 24]> = SmallVec::from_slice(insert);
        let mut to = to;
        if let Some(next) = next {
            let (h, n) = header(next.number - before, next.end - next.value);
            replacement.extend_from_slice(h.get(..n).unwrap_or(&[]));
            to = next.value;
        }
        let tail: SmallVec<[u8; 56]> = SmallVec::from_slice(self.wire.get(to..).unwrap_or(&[]));
        self.wire.truncate(from);
        self.wire.extend_from_slice(&replacement);
        self.wire.extend_from_slice(&tail);
    }

    /// The first value of `n`.
    pub fn get(&self, n: OptionNumber) -> Option<&[u8]> {
        if !self.may_contain(n) {
            return None;
        }
        for item in self.cursor() {
            if item.number == n.0 {
                return self.wire.get(item.value..item.end);
            }
            if item.number > n.0 {
                return None;
            }
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
        self.get(n).is_some()
    }

    /// False when no option numbered `n` is present; true when one may be.
    #[inline(always)]
    fn may_contain(&self, n: OptionNumber) -> bool {
        self.present & presence_bit(n.0) != 0 && n.0 <= self.last
    }

    /// Adds a value of `n` after any existing values of `n` (a repetition if there are some).
    ///
    /// A value longer than the wire format allows (65 804 bytes, RFC 7252 §3.1) is kept, but
    /// a message carrying it cannot be encoded ([`crate::msg::EncodeError::OptionValueTooLong`]).
    /// A value over 4 GiB is cut to that length.
    pub fn push(&mut self, n: OptionNumber, value: &[u8]) {
        let value = value.get(..u32::MAX as usize).unwrap_or(value);
        if value.len() > MAX_EXTENDED {
            self.has_long = true;
        }
        self.present |= presence_bit(n.0);
        self.count += 1;
        // Fast path: options usually arrive in order.
        if self.count == 1 || self.last <= n.0 {
            let (h, len) = header(
                n.0 - if self.count == 1 { 0 } else { self.last },
                value.len(),
            );
            let head = h.get(..len).unwrap_or(&[]);
            self.wire.reserve(head.len() + value.len());
            // Byte by byte is cheaper than a general copy for the few bytes of a header and
            // of a typical value.
            self.wire.extend(head.iter().copied());
            if value.len() <= 16 {
                self.wire.extend(value.iter().copied());
            } else {
                self.wire.extend_from_slice(value);
            }
            self.last = n.0;
            return;
        }
        let span = self.find(n);
        let before = if span.run > 0 { n.0 } else { span.prev };
        let (h, len) = header(n.0 - before, value.len());
        let mut option: SmallVec<[u8; 24]> = SmallVec::from_slice(h.get(..len).unwrap_or(&[]));
        option.extend_from_slice(value);
        // `n` is below the last number, so some option follows.
        self.splice(span.end, span.end, &option, span.next, n.0);
    }

    /// Replaces all values of `n` with `value`.
    pub fn set(&mut self, n: OptionNumber, value: &[u8]) {
        let span = self.find(n);
        if span.run == 1 {
            // The same length in place: no header changes.
            if let Some(item) = span.first.filter(|i| i.end - i.value == value.len()) {
                if let Some(slot) = self.wire.get_mut(item.value..item.end) {
                    slot.copy_from_slice(value);
                    return;
                }
            }
        }
        self.remove_span(span);
        self.push(n, value);
    }

    /// Removes all values of `n`; returns how many there were.
    pub fn remove(&mut self, n: OptionNumber) -> usize {
        let span = self.find(n);
        self.remove_span(span)
    }

    fn remove_span(&mut self, span: Span) -> usize {
        let run = span.run;
        if run == 0 {
            return 0;
        }
        self.splice(span.start, span.end, &[], span.next, span.prev);
        self.count -= run as u32;
        if span.next.is_none() {
            self.last = span.prev;
        }
        self.present = self
            .cursor()
            .fold(0, |bits, i| bits | presence_bit(i.number));
        if self.has_long {
            self.has_long = self.cursor().any(|i| i.end - i.value > MAX_EXTENDED);
        }
        run
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

    /// An edit of [`Options`] and of a plain model of it.
    #[derive(Clone, Debug)]
    enum Op {
        Push(u16, Vec<u8>),
        Set(u16, Vec<u8>),
        Remove(u16),
    }

    fn number() -> impl proptest::strategy::Strategy<Value = u16> {
        use proptest::prelude::*;
        // Small numbers (one-nibble deltas), mid ones (one extension byte), large ones
        // (two extension bytes) and the extremes.
        prop_oneof![
            0u16..=14,
            250u16..=300,
            Just(2048),
            Just(65000),
            Just(u16::MAX)
        ]
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..14),
            proptest::collection::vec(any::<u8>(), 260..280),
        ]
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (number(), value()).prop_map(|(n, v)| Op::Push(n, v)),
            (number(), value()).prop_map(|(n, v)| Op::Set(n, v)),
            number().prop_map(Op::Remove),
        ]
    }

    proptest::proptest! {
        /// Every edit leaves the options equal to a sorted list edited the plain way, and
        /// the buffer equal to what a parser makes of the encoded message.
        #[test]
        fn edits_match_a_plain_model(ops in proptest::collection::vec(op(), 0..24)) {
            use crate::msg::{Code, Message, MessageType, MessageView};
            let mut o = Options::new();
            let mut model: Vec<(u16, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(n, v) => {
                        o.push(OptionNumber(n), &v);
                        let at = model.iter().rposition(|(m, _)| *m <= n).map_or(0, |i| i + 1);
                        model.insert(at, (n, v));
                    }
                    Op::Set(n, v) => {
                        o.set(OptionNumber(n), &v);
                        model.retain(|(m, _)| *m != n);
                        let at = model.iter().rposition(|(m, _)| *m <= n).map_or(0, |i| i + 1);
                        model.insert(at, (n, v));
                    }
                    Op::Remove(n) => {
                        let removed = o.remove(OptionNumber(n));
                        let before = model.len();
                        model.retain(|(m, _)| *m != n);
                        proptest::prop_assert_eq!(removed, before - model.len());
                    }
                }
                proptest::prop_assert_eq!(list(&o), model.clone());
                proptest::prop_assert_eq!(o.len(), model.len());
                for n in [0u16, 1, 13, 14, 250, 269, 300, 2048, 65000, u16::MAX] {
                    let first = model.iter().find(|(m, _)| *m == n).map(|(_, w)| &w[..]);
                    proptest::prop_assert_eq!(o.get(OptionNumber(n)), first);
                    proptest::prop_assert_eq!(o.contains(OptionNumber(n)), first.is_some());
                }
                let mut message = Message::new(MessageType::Con, Code::GET, 1);
                message.options = o.clone();
                let mut bytes = Vec::new();
                message.encode_to_vec(&mut bytes).expect("encodable");
                let parsed = MessageView::parse(&bytes).expect("encodes well-formed");
                let back = parsed.to_message();
                proptest::prop_assert_eq!(&back.options, &o);
                let rebuilt: Options = model.iter().map(|(n, v)| (OptionNumber(*n), &v[..])).collect();
                proptest::prop_assert_eq!(&rebuilt, &o);
            }
        }
    }
}
