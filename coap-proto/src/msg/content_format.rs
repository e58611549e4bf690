//! Content-Format identifiers (RFC 7252 §12.3 and the IANA "CoAP Content-Formats" registry).

use core::fmt;

/// A Content-Format identifier: a media type with parameters and a content coding, as a number.
///
/// Any `u16` is valid; the constants name registered formats. [`ContentFormat::media_type`] gives
/// the registered text of known formats and [`ContentFormat::from_name`] parses it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentFormat(pub u16);

impl ContentFormat {
    /// 0 `text/plain; charset=utf-8`.
    pub const TEXT_PLAIN: ContentFormat = ContentFormat(0);
    /// 16 `application/cose; cose-type="cose-encrypt0"`.
    pub const COSE_ENCRYPT0: ContentFormat = ContentFormat(16);
    /// 17 `application/cose; cose-type="cose-mac0"`.
    pub const COSE_MAC0: ContentFormat = ContentFormat(17);
    /// 18 `application/cose; cose-type="cose-sign1"`.
    pub const COSE_SIGN1: ContentFormat = ContentFormat(18);
    /// 19 `application/ace+cbor`.
    pub const ACE_CBOR: ContentFormat = ContentFormat(19);
    /// 21 `image/gif`.
    pub const IMAGE_GIF: ContentFormat = ContentFormat(21);
    /// 22 `image/jpeg`.
    pub const IMAGE_JPEG: ContentFormat = ContentFormat(22);
    /// 23 `image/png`.
    pub const IMAGE_PNG: ContentFormat = ContentFormat(23);
    /// 40 `application/link-format` (RFC 6690).
    pub const LINK_FORMAT: ContentFormat = ContentFormat(40);
    /// 41 `application/xml`.
    pub const XML: ContentFormat = ContentFormat(41);
    /// 42 `application/octet-stream`.
    pub const OCTET_STREAM: ContentFormat = ContentFormat(42);
    /// 47 `application/exi`.
    pub const EXI: ContentFormat = ContentFormat(47);
    /// 50 `application/json`.
    pub const JSON: ContentFormat = ContentFormat(50);
    /// 51 `application/json-patch+json` (RFC 8132).
    pub const JSON_PATCH: ContentFormat = ContentFormat(51);
    /// 52 `application/merge-patch+json` (RFC 8132).
    pub const MERGE_PATCH: ContentFormat = ContentFormat(52);
    /// 60 `application/cbor`.
    pub const CBOR: ContentFormat = ContentFormat(60);
    /// 61 `application/cwt`.
    pub const CWT: ContentFormat = ContentFormat(61);
    /// 62 `application/multipart-core`.
    pub const MULTIPART_CORE: ContentFormat = ContentFormat(62);
    /// 63 `application/cbor-seq`.
    pub const CBOR_SEQ: ContentFormat = ContentFormat(63);
    /// 96 `application/cose; cose-type="cose-encrypt"`.
    pub const COSE_ENCRYPT: ContentFormat = ContentFormat(96);
    /// 97 `application/cose; cose-type="cose-mac"`.
    pub const COSE_MAC: ContentFormat = ContentFormat(97);
    /// 98 `application/cose; cose-type="cose-sign"`.
    pub const COSE_SIGN: ContentFormat = ContentFormat(98);
    /// 101 `application/cose-key`.
    pub const COSE_KEY: ContentFormat = ContentFormat(101);
    /// 102 `application/cose-key-set`.
    pub const COSE_KEY_SET: ContentFormat = ContentFormat(102);
    /// 110 `application/senml+json`.
    pub const SENML_JSON: ContentFormat = ContentFormat(110);
    /// 111 `application/sensml+json`.
    pub const SENSML_JSON: ContentFormat = ContentFormat(111);
    /// 112 `application/senml+cbor`.
    pub const SENML_CBOR: ContentFormat = ContentFormat(112);
    /// 113 `application/sensml+cbor`.
    pub const SENSML_CBOR: ContentFormat = ContentFormat(113);
    /// 114 `application/senml-exi`.
    pub const SENML_EXI: ContentFormat = ContentFormat(114);
    /// 115 `application/sensml-exi`.
    pub const SENSML_EXI: ContentFormat = ContentFormat(115);
    /// 256 `application/coap-group+json`.
    pub const COAP_GROUP_JSON: ContentFormat = ContentFormat(256);
    /// 271 `application/dots+cbor`.
    pub const DOTS_CBOR: ContentFormat = ContentFormat(271);
    /// 272 `application/missing-blocks+cbor-seq` (RFC 9177).
    pub const MISSING_BLOCKS_CBOR_SEQ: ContentFormat = ContentFormat(272);
    /// 310 `application/senml+xml`.
    pub const SENML_XML: ContentFormat = ContentFormat(310);
    /// 311 `application/sensml+xml`.
    pub const SENSML_XML: ContentFormat = ContentFormat(311);
    /// 320 `application/senml-etch+json`.
    pub const SENML_ETCH_JSON: ContentFormat = ContentFormat(320);
    /// 322 `application/senml-etch+cbor`.
    pub const SENML_ETCH_CBOR: ContentFormat = ContentFormat(322);
    /// 432 `application/td+json`.
    pub const TD_JSON: ContentFormat = ContentFormat(432);
    /// 10001 `application/oscore` (RFC 8613).
    pub const OSCORE: ContentFormat = ContentFormat(10001);

    /// The registered media type (with parameters) of a known format, e.g.
    /// `"text/plain; charset=utf-8"` or `"application/link-format"`.
    pub fn media_type(self) -> Option<&'static str> {
        TABLE
            .iter()
            .find(|(cf, _, _)| *cf == self)
            .map(|(_, name, _)| *name)
    }

    /// Parses a media type as registered (ASCII case and the spaces after `;` do not matter),
    /// a short alias (`text`, `json`, `cbor`, `link-format`, `octet-stream`, `xml`, `senml+json`,
    /// ...) or a decimal Content-Format number.
    pub fn from_name(s: &str) -> Option<ContentFormat> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse::<u16>().ok().map(ContentFormat);
        }
        TABLE
            .iter()
            .find(|(_, name, aliases)| {
                media_type_eq(s, name) || aliases.iter().any(|a| a.eq_ignore_ascii_case(s))
            })
            .map(|(cf, _, _)| *cf)
    }
}

impl From<u16> for ContentFormat {
    fn from(n: u16) -> ContentFormat {
        ContentFormat(n)
    }
}

impl From<ContentFormat> for u16 {
    fn from(cf: ContentFormat) -> u16 {
        cf.0
    }
}

impl fmt::Display for ContentFormat {
    /// The media type if known, else the number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.media_type() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Compares media types ignoring ASCII case and whitespace around `;` and `=`.
fn media_type_eq(a: &str, b: &str) -> bool {
    let mut a = a.bytes().filter(|c| *c != b' ' && *c != b'\t');
    let mut b = b.bytes().filter(|c| *c != b' ' && *c != b'\t');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y) => {}
            _ => return false,
        }
    }
}

type Entry = (ContentFormat, &'static str, &'static [&'static str]);

const TABLE: &[Entry] = &[
    (
        ContentFormat::TEXT_PLAIN,
        "text/plain; charset=utf-8",
        &["text", "text/plain", "txt", "plain"],
    ),
    (
        ContentFormat::COSE_ENCRYPT0,
        "application/cose; cose-type=\"cose-encrypt0\"",
        &["cose-encrypt0"],
    ),
    (
        ContentFormat::COSE_MAC0,
        "application/cose; cose-type=\"cose-mac0\"",
        &["cose-mac0"],
    ),
    (
        ContentFormat::COSE_SIGN1,
        "application/cose; cose-type=\"cose-sign1\"",
        &["cose-sign1"],
    ),
    (
        ContentFormat::ACE_CBOR,
        "application/ace+cbor",
        &["ace+cbor"],
    ),
    (ContentFormat::IMAGE_GIF, "image/gif", &["gif"]),
    (ContentFormat::IMAGE_JPEG, "image/jpeg", &["jpeg", "jpg"]),
    (ContentFormat::IMAGE_PNG, "image/png", &["png"]),
    (
        ContentFormat::LINK_FORMAT,
        "application/link-format",
        &["link-format", "link", "linkformat"],
    ),
    (ContentFormat::XML, "application/xml", &["xml"]),
    (
        ContentFormat::OCTET_STREAM,
        "application/octet-stream",
        &["octet-stream", "octets", "binary", "bin"],
    ),
    (ContentFormat::EXI, "application/exi", &["exi"]),
    (ContentFormat::JSON, "application/json", &["json"]),
    (
        ContentFormat::JSON_PATCH,
        "application/json-patch+json",
        &["json-patch", "json-patch+json"],
    ),
    (
        ContentFormat::MERGE_PATCH,
        "application/merge-patch+json",
        &["merge-patch", "merge-patch+json"],
    ),
    (ContentFormat::CBOR, "application/cbor", &["cbor"]),
    (ContentFormat::CWT, "application/cwt", &["cwt"]),
    (
        ContentFormat::MULTIPART_CORE,
        "application/multipart-core",
        &["multipart-core"],
    ),
    (
        ContentFormat::CBOR_SEQ,
        "application/cbor-seq",
        &["cbor-seq"],
    ),
    (
        ContentFormat::COSE_ENCRYPT,
        "application/cose; cose-type=\"cose-encrypt\"",
        &["cose-encrypt"],
    ),
    (
        ContentFormat::COSE_MAC,
        "application/cose; cose-type=\"cose-mac\"",
        &["cose-mac"],
    ),
    (
        ContentFormat::COSE_SIGN,
        "application/cose; cose-type=\"cose-sign\"",
        &["cose-sign"],
    ),
    (
        ContentFormat::COSE_KEY,
        "application/cose-key",
        &["cose-key"],
    ),
    (
        ContentFormat::COSE_KEY_SET,
        "application/cose-key-set",
        &["cose-key-set"],
    ),
    (
        ContentFormat::SENML_JSON,
        "application/senml+json",
        &["senml+json", "senml-json"],
    ),
    (
        ContentFormat::SENSML_JSON,
        "application/sensml+json",
        &["sensml+json", "sensml-json"],
    ),
    (
        ContentFormat::SENML_CBOR,
        "application/senml+cbor",
        &["senml+cbor", "senml-cbor"],
    ),
    (
        ContentFormat::SENSML_CBOR,
        "application/sensml+cbor",
        &["sensml+cbor", "sensml-cbor"],
    ),
    (
        ContentFormat::SENML_EXI,
        "application/senml-exi",
        &["senml-exi"],
    ),
    (
        ContentFormat::SENSML_EXI,
        "application/sensml-exi",
        &["sensml-exi"],
    ),
    (
        ContentFormat::COAP_GROUP_JSON,
        "application/coap-group+json",
        &["coap-group+json"],
    ),
    (
        ContentFormat::DOTS_CBOR,
        "application/dots+cbor",
        &["dots+cbor"],
    ),
    (
        ContentFormat::MISSING_BLOCKS_CBOR_SEQ,
        "application/missing-blocks+cbor-seq",
        &["missing-blocks+cbor-seq", "missing-blocks"],
    ),
    (
        ContentFormat::SENML_XML,
        "application/senml+xml",
        &["senml+xml"],
    ),
    (
        ContentFormat::SENSML_XML,
        "application/sensml+xml",
        &["sensml+xml"],
    ),
    (
        ContentFormat::SENML_ETCH_JSON,
        "application/senml-etch+json",
        &["senml-etch+json"],
    ),
    (
        ContentFormat::SENML_ETCH_CBOR,
        "application/senml-etch+cbor",
        &["senml-etch+cbor"],
    ),
    (ContentFormat::TD_JSON, "application/td+json", &["td+json"]),
    (ContentFormat::OSCORE, "application/oscore", &["oscore"]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn media_types() {
        assert_eq!(
            ContentFormat::TEXT_PLAIN.media_type(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            ContentFormat::LINK_FORMAT.media_type(),
            Some("application/link-format")
        );
        assert_eq!(ContentFormat::JSON.media_type(), Some("application/json"));
        assert_eq!(
            ContentFormat::SENML_CBOR.media_type(),
            Some("application/senml+cbor")
        );
        assert_eq!(ContentFormat(9999).media_type(), None);
        assert_eq!(ContentFormat::CBOR.to_string(), "application/cbor");
        assert_eq!(ContentFormat(9999).to_string(), "9999");
    }

    #[test]
    fn from_name() {
        assert_eq!(
            ContentFormat::from_name("text/plain; charset=utf-8"),
            Some(ContentFormat::TEXT_PLAIN)
        );
        assert_eq!(
            ContentFormat::from_name("Text/Plain;charset=UTF-8"),
            Some(ContentFormat::TEXT_PLAIN)
        );
        assert_eq!(
            ContentFormat::from_name("text/plain"),
            Some(ContentFormat::TEXT_PLAIN)
        );
        assert_eq!(
            ContentFormat::from_name("text"),
            Some(ContentFormat::TEXT_PLAIN)
        );
        assert_eq!(ContentFormat::from_name("json"), Some(ContentFormat::JSON));
        assert_eq!(ContentFormat::from_name("CBOR"), Some(ContentFormat::CBOR));
        assert_eq!(
            ContentFormat::from_name("link-format"),
            Some(ContentFormat::LINK_FORMAT)
        );
        assert_eq!(
            ContentFormat::from_name("octet-stream"),
            Some(ContentFormat::OCTET_STREAM)
        );
        assert_eq!(ContentFormat::from_name("xml"), Some(ContentFormat::XML));
        assert_eq!(ContentFormat::from_name(" 60 "), Some(ContentFormat::CBOR));
        assert_eq!(
            ContentFormat::from_name("65535"),
            Some(ContentFormat(65535))
        );
        assert_eq!(ContentFormat::from_name("65536"), None);
        assert_eq!(ContentFormat::from_name("application/nonsense"), None);
        assert_eq!(ContentFormat::from_name(""), None);
    }

    #[test]
    fn every_registered_name_parses_back() {
        for (cf, name, aliases) in TABLE {
            assert_eq!(ContentFormat::from_name(name), Some(*cf), "{name}");
            for a in aliases.iter() {
                assert_eq!(ContentFormat::from_name(a), Some(*cf), "{a}");
            }
        }
        // Numbers are unique.
        for (i, a) in TABLE.iter().enumerate() {
            for b in TABLE.get(i + 1..).unwrap_or(&[]) {
                assert_ne!(a.0, b.0);
            }
        }
    }
}
