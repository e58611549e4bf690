//! Option numbers, their properties and the registry of known options (RFC 7252 §5.4, §5.10).

use core::fmt;

/// An option number (RFC 7252 §5.4). Any `u16` is valid; the constants name the options of the
/// IANA "CoAP Option Numbers" registry that this crate knows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OptionNumber(pub u16);

/// How an option value is encoded (RFC 7252 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionFormat {
    /// Zero-length value.
    Empty,
    /// Opaque bytes.
    Opaque,
    /// Non-negative integer in network byte order, without leading zero bytes.
    Uint,
    /// UTF-8 text (Net-Unicode, RFC 5198).
    String,
}

/// The registry entry of a known option: its name, value format, whether it may repeat and the
/// bounds of its value length in bytes (RFC 7252 §5.10 Table 4 and the RFCs adding options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionDefinition {
    /// The registered name, e.g. `"Uri-Path"`.
    pub name: &'static str,
    /// The value format.
    pub format: OptionFormat,
    /// Whether the option may occur more than once in a message.
    pub repeatable: bool,
    /// The smallest valid value length in bytes.
    pub min_len: u16,
    /// The largest valid value length in bytes.
    pub max_len: u16,
}

const fn def(
    name: &'static str,
    format: OptionFormat,
    repeatable: bool,
    min_len: u16,
    max_len: u16,
) -> OptionDefinition {
    OptionDefinition {
        name,
        format,
        repeatable,
        min_len,
        max_len,
    }
}

impl OptionNumber {
    /// 1 If-Match (RFC 7252 §5.10.8.1).
    pub const IF_MATCH: OptionNumber = OptionNumber(1);
    /// 3 Uri-Host (RFC 7252 §5.10.1).
    pub const URI_HOST: OptionNumber = OptionNumber(3);
    /// 4 ETag (RFC 7252 §5.10.6).
    pub const ETAG: OptionNumber = OptionNumber(4);
    /// 5 If-None-Match (RFC 7252 §5.10.8.2).
    pub const IF_NONE_MATCH: OptionNumber = OptionNumber(5);
    /// 6 Observe (RFC 7641 §2).
    pub const OBSERVE: OptionNumber = OptionNumber(6);
    /// 7 Uri-Port (RFC 7252 §5.10.1).
    pub const URI_PORT: OptionNumber = OptionNumber(7);
    /// 8 Location-Path (RFC 7252 §5.10.7).
    pub const LOCATION_PATH: OptionNumber = OptionNumber(8);
    /// 9 OSCORE (RFC 8613 §2).
    pub const OSCORE: OptionNumber = OptionNumber(9);
    /// 11 Uri-Path (RFC 7252 §5.10.1).
    pub const URI_PATH: OptionNumber = OptionNumber(11);
    /// 12 Content-Format (RFC 7252 §5.10.3).
    pub const CONTENT_FORMAT: OptionNumber = OptionNumber(12);
    /// 14 Max-Age (RFC 7252 §5.10.5).
    pub const MAX_AGE: OptionNumber = OptionNumber(14);
    /// 15 Uri-Query (RFC 7252 §5.10.1).
    pub const URI_QUERY: OptionNumber = OptionNumber(15);
    /// 16 Hop-Limit (RFC 8768 §3).
    pub const HOP_LIMIT: OptionNumber = OptionNumber(16);
    /// 17 Accept (RFC 7252 §5.10.4).
    pub const ACCEPT: OptionNumber = OptionNumber(17);
    /// 19 Q-Block1 (RFC 9177 §4).
    pub const Q_BLOCK1: OptionNumber = OptionNumber(19);
    /// 20 Location-Query (RFC 7252 §5.10.7).
    pub const LOCATION_QUERY: OptionNumber = OptionNumber(20);
    /// 21 EDHOC (RFC 9668 §3.1).
    pub const EDHOC: OptionNumber = OptionNumber(21);
    /// 23 Block2 (RFC 7959 §2.1).
    pub const BLOCK2: OptionNumber = OptionNumber(23);
    /// 27 Block1 (RFC 7959 §2.1).
    pub const BLOCK1: OptionNumber = OptionNumber(27);
    /// 28 Size2 (RFC 7959 §4).
    pub const SIZE2: OptionNumber = OptionNumber(28);
    /// 31 Q-Block2 (RFC 9177 §4).
    pub const Q_BLOCK2: OptionNumber = OptionNumber(31);
    /// 35 Proxy-Uri (RFC 7252 §5.10.2).
    pub const PROXY_URI: OptionNumber = OptionNumber(35);
    /// 39 Proxy-Scheme (RFC 7252 §5.10.2).
    pub const PROXY_SCHEME: OptionNumber = OptionNumber(39);
    /// 60 Size1 (RFC 7252 §5.10.9).
    pub const SIZE1: OptionNumber = OptionNumber(60);
    /// 252 Echo (RFC 9175 §2.2).
    pub const ECHO: OptionNumber = OptionNumber(252);
    /// 258 No-Response (RFC 7967 §2).
    pub const NO_RESPONSE: OptionNumber = OptionNumber(258);
    /// 292 Request-Tag (RFC 9175 §3.2).
    pub const REQUEST_TAG: OptionNumber = OptionNumber(292);

    /// Whether the option is critical: an odd number (RFC 7252 §5.4.6). A recipient that does
    /// not recognise a critical option must reject the message.
    pub const fn is_critical(self) -> bool {
        self.0 & 1 == 1
    }

    /// Whether the option is elective: an even number. Unrecognised elective options are ignored.
    pub const fn is_elective(self) -> bool {
        !self.is_critical()
    }

    /// Whether the option is unsafe to forward: bit 1 set (RFC 7252 §5.4.6). A proxy that does
    /// not understand it must not forward the message.
    pub const fn is_unsafe_to_forward(self) -> bool {
        self.0 & 2 == 2
    }

    /// Whether the option is NoCacheKey: bits 2..=4 all set, `(n & 0x1e) == 0x1c`
    /// (RFC 7252 §5.4.6). Only meaningful for options that are safe to forward.
    pub const fn is_no_cache_key(self) -> bool {
        self.0 & 0x1e == 0x1c
    }

    /// The registered name of a known option, e.g. `"Uri-Path"`.
    pub fn name(self) -> Option<&'static str> {
        self.definition().map(|d| d.name)
    }

    /// The registry entry of a known option; `None` for numbers this crate does not know.
    pub fn definition(self) -> Option<OptionDefinition> {
        use OptionFormat::{Empty, Opaque, String, Uint};
        let d = match self {
            OptionNumber::IF_MATCH => def("If-Match", Opaque, true, 0, 8),
            OptionNumber::URI_HOST => def("Uri-Host", String, false, 1, 255),
            OptionNumber::ETAG => def("ETag", Opaque, true, 1, 8),
            OptionNumber::IF_NONE_MATCH => def("If-None-Match", Empty, false, 0, 0),
            OptionNumber::OBSERVE => def("Observe", Uint, false, 0, 3),
            OptionNumber::URI_PORT => def("Uri-Port", Uint, false, 0, 2),
            OptionNumber::LOCATION_PATH => def("Location-Path", String, true, 0, 255),
            OptionNumber::OSCORE => def("OSCORE", Opaque, false, 0, 255),
            OptionNumber::URI_PATH => def("Uri-Path", String, true, 0, 255),
            OptionNumber::CONTENT_FORMAT => def("Content-Format", Uint, false, 0, 2),
            OptionNumber::MAX_AGE => def("Max-Age", Uint, false, 0, 4),
            OptionNumber::URI_QUERY => def("Uri-Query", String, true, 0, 255),
            // RFC 8768 §3: exactly one byte, value 1..=255.
            OptionNumber::HOP_LIMIT => def("Hop-Limit", Uint, false, 1, 1),
            OptionNumber::ACCEPT => def("Accept", Uint, false, 0, 2),
            OptionNumber::Q_BLOCK1 => def("Q-Block1", Uint, false, 0, 3),
            OptionNumber::LOCATION_QUERY => def("Location-Query", String, true, 0, 255),
            OptionNumber::EDHOC => def("EDHOC", Empty, false, 0, 0),
            OptionNumber::BLOCK2 => def("Block2", Uint, false, 0, 3),
            OptionNumber::BLOCK1 => def("Block1", Uint, false, 0, 3),
            OptionNumber::SIZE2 => def("Size2", Uint, false, 0, 4),
            // RFC 9177 §4.1: Q-Block2 is repeatable (to ask for several missing blocks).
            OptionNumber::Q_BLOCK2 => def("Q-Block2", Uint, true, 0, 3),
            OptionNumber::PROXY_URI => def("Proxy-Uri", String, false, 1, 1034),
            OptionNumber::PROXY_SCHEME => def("Proxy-Scheme", String, false, 1, 255),
            OptionNumber::SIZE1 => def("Size1", Uint, false, 0, 4),
            OptionNumber::ECHO => def("Echo", Opaque, false, 1, 40),
            OptionNumber::NO_RESPONSE => def("No-Response", Uint, false, 0, 1),
            OptionNumber::REQUEST_TAG => def("Request-Tag", Opaque, true, 0, 8),
            _ => return None,
        };
        Some(d)
    }
}

impl From<u16> for OptionNumber {
    fn from(n: u16) -> OptionNumber {
        OptionNumber(n)
    }
}

impl From<OptionNumber> for u16 {
    fn from(n: OptionNumber) -> u16 {
        n.0
    }
}

impl fmt::Display for OptionNumber {
    /// The registered name if known, else the number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Option {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn properties_from_the_number() {
        // RFC 7252 §5.10 Table 4.
        let uri_host = OptionNumber::URI_HOST;
        assert!(uri_host.is_critical() && uri_host.is_unsafe_to_forward());
        let etag = OptionNumber::ETAG;
        assert!(etag.is_elective() && !etag.is_critical() && !etag.is_unsafe_to_forward());
        assert!(!etag.is_no_cache_key());
        assert!(OptionNumber::SIZE1.is_no_cache_key() && OptionNumber::SIZE1.is_elective());
        assert!(!OptionNumber::SIZE1.is_unsafe_to_forward());
        assert!(
            OptionNumber::MAX_AGE.is_unsafe_to_forward() && OptionNumber::MAX_AGE.is_elective()
        );
        assert!(OptionNumber::ECHO.is_no_cache_key()); // RFC 9175 §2.2: N
        assert!(
            OptionNumber::URI_PATH.is_critical() && OptionNumber::URI_PATH.is_unsafe_to_forward()
        );
        assert!(
            OptionNumber::IF_MATCH.is_critical() && !OptionNumber::IF_MATCH.is_unsafe_to_forward()
        );
        assert!(
            OptionNumber::OBSERVE.is_elective() && OptionNumber::OBSERVE.is_unsafe_to_forward()
        );
        assert!(
            OptionNumber::REQUEST_TAG.is_elective() && !OptionNumber::REQUEST_TAG.is_no_cache_key()
        );
        assert!(
            OptionNumber::NO_RESPONSE.is_elective()
                && OptionNumber::NO_RESPONSE.is_unsafe_to_forward()
        );
        assert!(
            OptionNumber::PROXY_URI.is_critical() && OptionNumber::PROXY_URI.is_unsafe_to_forward()
        );
        assert!(OptionNumber::BLOCK2.is_critical() && OptionNumber::BLOCK2.is_unsafe_to_forward());
        assert!(
            OptionNumber::Q_BLOCK1.is_critical() && OptionNumber::Q_BLOCK1.is_unsafe_to_forward()
        );
    }

    #[test]
    fn registry() {
        let d = OptionNumber::URI_PATH.definition().unwrap();
        assert_eq!(d.name, "Uri-Path");
        assert_eq!(d.format, OptionFormat::String);
        assert!(d.repeatable);
        assert_eq!((d.min_len, d.max_len), (0, 255));
        let d = OptionNumber::PROXY_URI.definition().unwrap();
        assert_eq!((d.min_len, d.max_len), (1, 1034));
        assert!(
            !OptionNumber::CONTENT_FORMAT
                .definition()
                .unwrap()
                .repeatable
        );
        assert_eq!(OptionNumber::NO_RESPONSE.name(), Some("No-Response"));
        assert_eq!(OptionNumber(2).definition(), None);
        assert_eq!(OptionNumber::ETAG.to_string(), "ETag");
        assert_eq!(OptionNumber(65000).to_string(), "Option 65000");
        for n in [
            1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 21, 23, 27, 28, 31, 35, 39, 60,
            252, 258, 292,
        ] {
            let d = OptionNumber(n).definition().unwrap();
            assert!(d.min_len <= d.max_len, "{}", d.name);
            if d.format == OptionFormat::Uint {
                assert!(d.max_len <= 4, "{}", d.name);
            }
            if d.format == OptionFormat::Empty {
                assert_eq!(d.max_len, 0, "{}", d.name);
            }
        }
    }
}
