//! Parsing of command-line values (content formats, options) and rendering of messages:
//! payloads as text, JSON, CBOR diagnostic notation or link-format, and options for `-v`.

use std::fmt::Write as _;

use coap_proto::link_format;
use coap_proto::msg::{decode_uint, ContentFormat, OptionFormat, OptionNumber, Options};

/// Parses a Content-Format given on the command line: a number (`50`), a registered media
/// type (`application/json`) or a short alias (`json`, `cbor`, `text`, `link-format`).
pub(crate) fn parse_content_format(text: &str) -> Result<ContentFormat, String> {
    ContentFormat::from_name(text).ok_or_else(|| {
        format!("unknown content format {text:?}: give a number or a name such as json, cbor, text, link-format")
    })
}

/// An option given as `NUM=VALUE` (or `NAME=VALUE`): its number and encoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OptionArg {
    /// The option number.
    pub(crate) number: OptionNumber,
    /// The encoded value.
    pub(crate) value: Vec<u8>,
}

/// Parses `--option NUM=VALUE`: NUM is a decimal option number or a registered name
/// (`Uri-Query`, case-insensitive); VALUE is `0x` followed by hex digits (opaque bytes), a
/// decimal number (encoded as an unsigned integer in the shortest form, RFC 7252 §3.2), or
/// text. An empty VALUE is an empty option (such as If-None-Match).
pub(crate) fn parse_option(text: &str) -> Result<OptionArg, String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("option {text:?} is not NUM=VALUE"))?;
    let number = option_number(name.trim())?;
    let value = if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        parse_hex(hex).ok_or_else(|| format!("option value {value:?} is not valid hex"))?
    } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = value
            .parse()
            .map_err(|_| format!("option value {value:?} is too large"))?;
        encode_uint(n)
    } else {
        value.as_bytes().to_vec()
    };
    Ok(OptionArg { number, value })
}

/// A decimal option number or a registered option name.
fn option_number(name: &str) -> Result<OptionNumber, String> {
    if let Ok(n) = name.parse::<u16>() {
        return Ok(OptionNumber(n));
    }
    (0..=u16::MAX)
        .map(OptionNumber)
        .find(|n| {
            n.name()
                .is_some_and(|known| known.eq_ignore_ascii_case(name))
        })
        .ok_or_else(|| format!("unknown option {name:?}: give its number"))
}

/// Big-endian bytes of `n` without leading zero bytes (0 is the empty value).
fn encode_uint(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(skip..).unwrap_or_default().to_vec()
}

/// Hex digits to bytes; `None` for an odd length or a non-hex digit.
fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One option for `-v`: `Name: value`, the value shown as its registered format says.
pub(crate) fn describe_option(number: OptionNumber, value: &[u8]) -> String {
    let definition = number.definition();
    let shown = match definition.map(|d| d.format) {
        Some(OptionFormat::Uint) => {
            let n =
                decode_uint(value).map_or_else(|| format!("0x{}", hex(value)), |n| n.to_string());
            match number {
                OptionNumber::CONTENT_FORMAT | OptionNumber::ACCEPT => match decode_uint(value)
                    .and_then(|n| u16::try_from(n).ok())
                    .and_then(|n| ContentFormat(n).media_type())
                {
                    Some(name) => format!("{n} ({name})"),
                    None => n,
                },
                OptionNumber::BLOCK1 | OptionNumber::BLOCK2 => match decode_uint(value) {
                    // RFC 7959 §2.2: NUM, M and SZX packed into one unsigned integer.
                    Some(v) => format!(
                        "{}/{}/{}",
                        v >> 4,
                        u8::from(v & 0x8 != 0),
                        16u32 << (v & 0x7).min(6)
                    ),
                    None => n,
                },
                _ => n,
            }
        }
        Some(OptionFormat::String) => match std::str::from_utf8(value) {
            Ok(text) => format!("{text:?}"),
            Err(_) => format!("0x{}", hex(value)),
        },
        Some(OptionFormat::Empty) if value.is_empty() => String::from("(empty)"),
        _ => format!("0x{}", hex(value)),
    };
    match definition {
        Some(d) => format!("{}: {shown}", d.name),
        None => format!("Option {}: {shown}", number.0),
    }
}

/// Every option of `options`, one line each, for `-v`.
pub(crate) fn describe_options(options: &Options) -> Vec<String> {
    options
        .iter()
        .map(|(number, value)| describe_option(number, value))
        .collect()
}

/// How a payload is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// The bytes as they are.
    Raw,
    /// Pretty, over several lines (JSON indented, link-format one link per line).
    Pretty,
    /// Readable but on one line (for observe notifications).
    OneLine,
}

/// The payload as it should be printed in `style`: `None` means "write the raw bytes".
pub(crate) fn render(
    payload: &[u8],
    format: Option<ContentFormat>,
    style: Style,
) -> Option<String> {
    if style == Style::Raw {
        return None;
    }
    let pretty = style == Style::Pretty;
    let rendered = match format {
        Some(ContentFormat::JSON | ContentFormat::SENML_JSON | ContentFormat::SENSML_JSON) => {
            render_json(payload, pretty)
        }
        Some(ContentFormat::CBOR | ContentFormat::SENML_CBOR | ContentFormat::SENSML_CBOR) => {
            cbor_diagnostic(payload)
        }
        Some(ContentFormat::LINK_FORMAT) => render_links(payload, pretty),
        _ => None,
    };
    if let Some(text) = rendered {
        return Some(text);
    }
    match std::str::from_utf8(payload) {
        Ok(text) if style == Style::OneLine => Some(
            text.trim_end_matches(['\r', '\n'])
                .replace(['\r', '\n'], " "),
        ),
        Ok(text) => Some(text.to_owned()),
        // Binary on a terminal or in a one-line listing: show it as hex.
        Err(_) => Some(format!("0x{}", hex(payload))),
    }
}

fn render_json(payload: &[u8], pretty: bool) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if pretty {
        serde_json::to_string_pretty(&value).ok()
    } else {
        serde_json::to_string(&value).ok()
    }
}

fn render_links(payload: &[u8], pretty: bool) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let links = link_format::parse(text).ok()?;
    if !pretty {
        return Some(text.to_owned());
    }
    let mut out = String::new();
    for link in &links {
        let mut one = String::new();
        link_format::write(core::slice::from_ref(link), &mut one).ok()?;
        if !out.is_empty() {
            out.push_str(",\n");
        }
        out.push_str(&one);
    }
    Some(out)
}

/// The CBOR item in `payload` in diagnostic notation (RFC 8949 §8), or `None` if the payload
/// is not exactly one well-formed item.
pub(crate) fn cbor_diagnostic(payload: &[u8]) -> Option<String> {
    let mut reader = payload;
    let value: ciborium::Value = ciborium::from_reader(&mut reader).ok()?;
    if !reader.is_empty() {
        return None;
    }
    let mut out = String::new();
    write_diagnostic(&value, &mut out, 0);
    Some(out)
}

/// Nesting deeper than this is shown as `...` (ciborium itself limits recursion on input).
const MAX_DEPTH: usize = 64;

fn write_diagnostic(value: &ciborium::Value, out: &mut String, depth: usize) {
    use ciborium::Value;
    if depth > MAX_DEPTH {
        out.push_str("...");
        return;
    }
    match value {
        Value::Integer(i) => {
            let _ = write!(out, "{}", i128::from(*i));
        }
        Value::Bytes(b) => {
            let _ = write!(out, "h'{}'", hex(b));
        }
        Value::Float(f) => {
            if f.is_nan() {
                out.push_str("NaN");
            } else if f.is_infinite() {
                out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" });
            } else if f.fract() == 0.0 && f.abs() < 1e15 {
                let _ = write!(out, "{f:.1}");
            } else {
                let _ = write!(out, "{f}");
            }
        }
        Value::Text(t) => {
            let _ = write!(out, "{}", serde_json::Value::String(t.clone()));
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
        Value::Tag(tag, inner) => {
            let _ = write!(out, "{tag}(");
            write_diagnostic(inner, out, depth + 1);
            out.push(')');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_diagnostic(item, out, depth + 1);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_diagnostic(k, out, depth + 1);
                out.push_str(": ");
                write_diagnostic(v, out, depth + 1);
            }
            out.push('}');
        }
        _ => out.push_str("undefined"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_formats_by_number_and_name() {
        assert_eq!(parse_content_format("50"), Ok(ContentFormat::JSON));
        assert_eq!(parse_content_format("json"), Ok(ContentFormat::JSON));
        assert_eq!(parse_content_format("cbor"), Ok(ContentFormat::CBOR));
        assert_eq!(parse_content_format("text"), Ok(ContentFormat::TEXT_PLAIN));
        assert_eq!(
            parse_content_format("link-format"),
            Ok(ContentFormat::LINK_FORMAT)
        );
        assert!(parse_content_format("no-such-thing").is_err());
    }

    #[test]
    fn options_as_text_hex_uint_and_by_name() {
        let o = parse_option("15=a=b").unwrap();
        assert_eq!(o.number, OptionNumber::URI_QUERY);
        assert_eq!(o.value, b"a=b");
        let o = parse_option("4=0x0aFF").unwrap();
        assert_eq!(o.value, vec![0x0a, 0xff]);
        let o = parse_option("60=300").unwrap();
        assert_eq!(o.value, vec![1, 44]);
        let o = parse_option("60=0").unwrap();
        assert!(o.value.is_empty());
        let o = parse_option("uri-query=x").unwrap();
        assert_eq!(o.number, OptionNumber::URI_QUERY);
        let o = parse_option("If-None-Match=").unwrap();
        assert_eq!(o.number, OptionNumber::IF_NONE_MATCH);
        assert!(o.value.is_empty());
        assert!(parse_option("15").is_err());
        assert!(parse_option("4=0xabc").is_err());
        assert!(parse_option("4=0xzz").is_err());
        assert!(parse_option("Bogus-Option=1").is_err());
    }

    #[test]
    fn options_described_for_humans() {
        assert_eq!(
            describe_option(OptionNumber::CONTENT_FORMAT, &[50]),
            "Content-Format: 50 (application/json)"
        );
        assert_eq!(
            describe_option(OptionNumber::URI_PATH, b"time"),
            "Uri-Path: \"time\""
        );
        assert_eq!(describe_option(OptionNumber::ETAG, &[1, 2]), "ETag: 0x0102");
        // Block2 NUM=1, M=1, SZX=2 (64 bytes).
        assert_eq!(
            describe_option(OptionNumber::BLOCK2, &[0x1a]),
            "Block2: 1/1/64"
        );
        assert_eq!(
            describe_option(OptionNumber(65000), &[7]),
            "Option 65000: 0x07"
        );
    }

    #[test]
    fn json_pretty_and_one_line() {
        let payload = br#"{"a": [1, 2]}"#;
        let pretty = render(payload, Some(ContentFormat::JSON), Style::Pretty).unwrap();
        assert!(pretty.contains('\n'));
        let line = render(payload, Some(ContentFormat::JSON), Style::OneLine).unwrap();
        assert_eq!(line, r#"{"a":[1,2]}"#);
        assert_eq!(render(payload, Some(ContentFormat::JSON), Style::Raw), None);
    }

    #[test]
    fn cbor_in_diagnostic_notation() {
        // {1: "a", "b": [h'00ff', -2, true, null, 1.5]}
        let payload = [
            0xa2, 0x01, 0x61, b'a', 0x61, b'b', 0x85, 0x42, 0x00, 0xff, 0x21, 0xf5, 0xf6, 0xf9,
            0x3e, 0x00,
        ];
        assert_eq!(
            cbor_diagnostic(&payload).unwrap(),
            r#"{1: "a", "b": [h'00ff', -2, true, null, 1.5]}"#
        );
        // A tag around an integer; trailing bytes make it not one item.
        assert_eq!(cbor_diagnostic(&[0xc1, 0x01]).unwrap(), "1(1)");
        assert_eq!(cbor_diagnostic(&[0x01, 0x01]), None);
        assert_eq!(cbor_diagnostic(&[0x82, 0x01]), None);
    }

    #[test]
    fn link_format_one_link_per_line() {
        let doc = b"</time>;obs;rt=\"clock\",</other/block>";
        let pretty = render(doc, Some(ContentFormat::LINK_FORMAT), Style::Pretty).unwrap();
        assert_eq!(pretty.lines().count(), 2);
        assert!(pretty.starts_with("</time>"));
    }

    #[test]
    fn binary_is_hex_and_text_is_one_line() {
        assert_eq!(
            render(&[0xff, 0x00], None, Style::Pretty).unwrap(),
            "0xff00"
        );
        assert_eq!(render(b"a\nb\n", None, Style::OneLine).unwrap(), "a b");
    }

    proptest! {
        #[test]
        fn rendering_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..64), cf in 0u16..128) {
            let _ = render(&payload, Some(ContentFormat(cf)), Style::Pretty);
            let _ = render(&payload, Some(ContentFormat(cf)), Style::OneLine);
            let _ = cbor_diagnostic(&payload);
        }

        #[test]
        fn uint_options_round_trip(n in any::<u32>()) {
            let o = parse_option(&format!("60={n}")).unwrap();
            prop_assert_eq!(decode_uint(&o.value), Some(n));
            prop_assert!(o.value.first() != Some(&0));
        }
    }
}
