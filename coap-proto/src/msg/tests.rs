//! Codec tests: RFC examples, every parse error, encoder edge cases and round-trip properties.

use alloc::vec;
use alloc::vec::Vec;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn encode_vec(m: &Message) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut buf).expect("encodable");
    assert_eq!(n, buf.len());
    // The one-pass encoder appends the same bytes.
    let mut appended = b"head".to_vec();
    assert_eq!(m.encode_to_vec(&mut appended), Ok(n));
    assert_eq!(appended.get(4..), Some(&buf[..]));
    buf
}

fn get_temperature(mid: u16, token: &[u8]) -> Message {
    let mut m = Message::new(MessageType::Con, Code::GET, mid);
    m.token = Token::new(token);
    m.options.push_uri_path("temperature");
    m
}

fn content_22_3(mid: u16, token: &[u8]) -> Message {
    let mut m = Message::new(MessageType::Ack, Code::CONTENT, mid);
    m.token = Token::new(token);
    m.payload = Bytes::from_static(b"22.3 C");
    m
}

#[test]
fn rfc7252_figure_16() {
    // Derived from RFC 7252 §3: Ver=1 T=CON TKL=0 | 0.01 | 0x7d34 | delta 11 len 11 "temperature".
    let mut request = vec![0x40, 0x01, 0x7d, 0x34, 0xbb];
    request.extend_from_slice(b"temperature");
    assert_eq!(request.len(), 16); // "a total of 16 bytes long"
    let m = get_temperature(0x7d34, &[]);
    assert_eq!(encode_vec(&m), request);
    assert_eq!(Message::parse(&request), Ok(m));

    // Ver=1 T=ACK TKL=0 | 2.05=69 | 0x7d34 | 0xff "22.3 C".
    let mut response = vec![0x60, 69, 0x7d, 0x34, 0xff];
    response.extend_from_slice(b"22.3 C");
    assert_eq!(response.len(), 11);
    let m = content_22_3(0x7d34, &[]);
    assert_eq!(encode_vec(&m), response);
    assert_eq!(Message::parse(&response), Ok(m));
}

#[test]
fn rfc7252_figure_17() {
    let mut request = vec![0x41, 0x01, 0x7d, 0x35, 0x20, 0xbb];
    request.extend_from_slice(b"temperature");
    assert_eq!(request.len(), 17);
    let m = get_temperature(0x7d35, &[0x20]);
    assert_eq!(encode_vec(&m), request);
    let view = MessageView::parse(&request).unwrap();
    assert_eq!(view.mtype(), MessageType::Con);
    assert_eq!(view.code(), Code::GET);
    assert_eq!(view.message_id(), 0x7d35);
    assert_eq!(view.token(), &[0x20]);
    assert_eq!(
        view.option(OptionNumber::URI_PATH),
        Some(&b"temperature"[..])
    );
    assert_eq!(view.option(OptionNumber::URI_HOST), None);
    assert_eq!(view.payload(), b"");
    assert_eq!(view.to_message(), m);

    let mut response = vec![0x61, 0x45, 0x7d, 0x35, 0x20, 0xff];
    response.extend_from_slice(b"22.3 C");
    assert_eq!(response.len(), 12);
    assert_eq!(encode_vec(&content_22_3(0x7d35, &[0x20])), response);
}

#[test]
fn empty_message_and_ping() {
    let m = Message::new(MessageType::Con, Code::EMPTY, 0x1234);
    assert!(m.is_empty_message());
    assert_eq!(encode_vec(&m), [0x40, 0x00, 0x12, 0x34]);
    let rst = Message::new(MessageType::Rst, Code::EMPTY, 0x1234);
    assert_eq!(encode_vec(&rst), [0x70, 0x00, 0x12, 0x34]);
    assert_eq!(Message::parse(&[0x70, 0x00, 0x12, 0x34]), Ok(rst));
}

#[test]
fn extended_option_delta_and_length() {
    let mut m = Message::new(MessageType::Non, Code::POST, 1);
    m.options.push(OptionNumber(12), &[0; 12]); // delta 12, length 12: nibbles only
    m.options.push(OptionNumber(25), &[1; 13]); // delta 13 -> 13+0, length 13 -> 13+0
    m.options.push(OptionNumber(293), &[2; 268]); // delta 268 -> 13+255, length 268 -> 13+255
    m.options.push(OptionNumber(562), &[3; 269]); // delta 269 -> 14+0x0000, length 269 -> 14+0
    m.options.push(OptionNumber(65535), &[]); // delta 64973 -> 14 + 0xfcc0
    let bytes = encode_vec(&m);
    let mut expected = vec![0x50, 0x02, 0x00, 0x01];
    expected.push(0xcc);
    expected.extend_from_slice(&[0; 12]);
    expected.extend_from_slice(&[0xdd, 0, 0]);
    expected.extend_from_slice(&[1; 13]);
    expected.extend_from_slice(&[0xdd, 255, 255]);
    expected.extend_from_slice(&[2; 268]);
    expected.extend_from_slice(&[0xee, 0, 0, 0, 0]);
    expected.extend_from_slice(&[3; 269]);
    expected.extend_from_slice(&[0xe0, 0xfc, 0xc0]);
    assert_eq!(bytes, expected);
    assert_eq!(Message::parse(&bytes), Ok(m));
}

#[test]
fn largest_option_value() {
    let mut m = Message::new(MessageType::Non, Code::POST, 1);
    let big = vec![7u8; 65535 + 269];
    m.options.push(OptionNumber(2000), &big);
    let bytes = encode_vec(&m);
    assert_eq!(bytes.get(4..9), Some(&[0xee, 0x06, 0xc3, 0xff, 0xff][..]));
    assert_eq!(Message::parse(&bytes), Ok(m.clone()));
    m.options.push(OptionNumber(2000), &[7u8; 65535 + 270]);
    assert_eq!(
        m.encode(&mut [0u8; 8]),
        Err(EncodeError::OptionValueTooLong {
            number: OptionNumber(2000),
            len: 65805
        })
    );
}

#[test]
fn extended_token_lengths() {
    // RFC 8974 §2.1: TKL 13 -> one byte + 13, TKL 14 -> two bytes + 269.
    for (len, prefix) in [
        (8usize, vec![0x48u8]),
        (12, vec![0x4c]),
        (13, vec![0x4d, 0]),
        (268, vec![0x4d, 255]),
        (269, vec![0x4e, 0, 0]),
        (1000, vec![0x4e, 0x02, 0xdb]),
        (Token::MAX_LEN, vec![0x4e, 0xff, 0xff]),
    ] {
        let token: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut m = Message::new(MessageType::Con, Code::GET, 7);
        m.token = Token::new(&token);
        let bytes = encode_vec(&m);
        assert_eq!(bytes.first(), prefix.first());
        assert_eq!(bytes.get(4..4 + prefix.len() - 1), prefix.get(1..));
        assert_eq!(bytes.len(), 4 + prefix.len() - 1 + len);
        let view = MessageView::parse(&bytes).unwrap();
        assert_eq!(view.token(), &token[..]);
        assert_eq!(Message::parse(&bytes), Ok(m));
    }
    let mut m = Message::new(MessageType::Con, Code::GET, 7);
    m.token = Token::new(&vec![0; Token::MAX_LEN + 1]);
    assert_eq!(
        m.encode(&mut [0u8; 16]),
        Err(EncodeError::TokenTooLong { len: 65805 })
    );
    assert_eq!(
        m.encode_into(&mut BytesMut::new()),
        Err(EncodeError::TokenTooLong { len: 65805 })
    );
}

#[test]
fn every_parse_error() {
    let cases: &[(&[u8], ParseError)] = &[
        (&[], ParseError::TruncatedHeader),
        (&[0x40, 0x01, 0x00], ParseError::TruncatedHeader),
        (&[0x80, 0x01, 0x00, 0x01], ParseError::BadVersion(2)),
        (&[0x00, 0x01, 0x00, 0x01], ParseError::BadVersion(0)),
        (&[0x4f, 0x01, 0x00, 0x01], ParseError::ReservedTokenLength),
        (&[0x42, 0x01, 0x00, 0x01, 0xaa], ParseError::TruncatedToken),
        (&[0x4d, 0x01, 0x00, 0x01], ParseError::TruncatedToken),
        (
            &[0x4d, 0x01, 0x00, 0x01, 0x00, 1, 2],
            ParseError::TruncatedToken,
        ),
        (&[0x4e, 0x01, 0x00, 0x01, 0x00], ParseError::TruncatedToken),
        (
            &[0x40, 0x01, 0x00, 0x01, 0xf0],
            ParseError::OptionDeltaReserved,
        ),
        (
            &[0x40, 0x01, 0x00, 0x01, 0xf1, 0x00],
            ParseError::OptionDeltaReserved,
        ),
        (
            &[0x40, 0x01, 0x00, 0x01, 0x1f],
            ParseError::OptionLengthReserved,
        ),
        (
            &[0x40, 0x01, 0x00, 0x01, 0x12, 0xaa],
            ParseError::TruncatedOption,
        ),
        (&[0x40, 0x01, 0x00, 0x01, 0xd0], ParseError::TruncatedOption),
        (
            &[0x40, 0x01, 0x00, 0x01, 0xe0, 0x01],
            ParseError::TruncatedOption,
        ),
        (&[0x40, 0x01, 0x00, 0x01, 0x1d], ParseError::TruncatedOption),
        (
            &[0x40, 0x01, 0x00, 0x01, 0x1e, 0x00],
            ParseError::TruncatedOption,
        ),
        (
            &[0x40, 0x01, 0x00, 0x01, 0x1d, 0x00, 1, 2],
            ParseError::TruncatedOption,
        ),
        // 65535 then one more: 14 + 0xfef2 = 65535, then delta 1.
        (
            &[0x40, 0x01, 0x00, 0x01, 0xe0, 0xfe, 0xf2, 0x10],
            ParseError::OptionNumberOverflow,
        ),
        (
            &[0x40, 0x01, 0x00, 0x01, 0xff],
            ParseError::EmptyPayloadAfterMarker,
        ),
        (
            &[0x40, 0x01, 0x00, 0x01, 0x10, 0xff],
            ParseError::EmptyPayloadAfterMarker,
        ),
        (
            &[0x40, 0x00, 0x00, 0x01, 0xff, 0x01],
            ParseError::EmptyMessageHasContent,
        ),
        (
            &[0x41, 0x00, 0x00, 0x01, 0x00],
            ParseError::EmptyMessageHasContent,
        ),
        (
            &[0x40, 0x00, 0x00, 0x01, 0x10],
            ParseError::EmptyMessageHasContent,
        ),
    ];
    for (bytes, err) in cases {
        assert_eq!(MessageView::parse(bytes).err(), Some(*err), "{bytes:02x?}");
        assert_eq!(Message::parse(bytes).err(), Some(*err), "{bytes:02x?}");
        assert_eq!(
            Message::parse_bytes(&Bytes::copy_from_slice(bytes)).err(),
            Some(*err)
        );
    }
    // The largest option number itself is fine.
    let ok = [0x40, 0x01, 0x00, 0x01, 0xe0, 0xfe, 0xf2];
    let view = MessageView::parse(&ok).unwrap();
    assert_eq!(
        view.options().collect::<Vec<_>>(),
        [(OptionNumber(65535), &[][..])]
    );
}

#[test]
fn parse_error_messages_read_well() {
    use alloc::string::ToString;
    assert_eq!(
        ParseError::BadVersion(2).to_string(),
        "unsupported CoAP version 2"
    );
    assert_eq!(
        EncodeError::BufferTooSmall { needed: 20 }.to_string(),
        "buffer too small: the message needs 20 bytes"
    );
}

#[test]
fn header_peek_on_malformed_message() {
    // A CON with a truncated option can still be answered with RST by message ID.
    let bytes = [0x42, 0x01, 0xbe, 0xef, 0xaa, 0xbb, 0x1f];
    assert_eq!(
        MessageView::parse(&bytes).err(),
        Some(ParseError::OptionLengthReserved)
    );
    let h = parse_header(&bytes).unwrap();
    assert_eq!(
        h,
        Header {
            version: 1,
            mtype: MessageType::Con,
            token_len: 2,
            code: Code::GET,
            message_id: 0xbeef
        }
    );
    assert_eq!(parse_header(&[0xff, 0, 0, 0]).unwrap().version, 3);
    assert_eq!(
        parse_header(&[0x40, 0, 0]),
        Err(ParseError::TruncatedHeader)
    );
}

#[test]
fn buffer_too_small_at_every_length() {
    let mut m = get_temperature(1, &[1, 2, 3, 4]);
    m.options.set_content_format(ContentFormat::JSON);
    m.payload = Bytes::from_static(b"{}");
    let needed = m.encoded_len();
    let mut buf = vec![0u8; needed + 4];
    for len in 0..needed {
        assert_eq!(
            m.encode(buf.get_mut(..len).unwrap()),
            Err(EncodeError::BufferTooSmall { needed })
        );
    }
    assert_eq!(m.encode(&mut buf), Ok(needed));
}

#[test]
fn empty_message_with_content_is_not_encoded() {
    let mut m = Message::new(MessageType::Ack, Code::EMPTY, 1);
    m.token = Token::new(&[1]);
    assert_eq!(
        m.encode(&mut [0u8; 32]),
        Err(EncodeError::EmptyMessageHasContent)
    );
    let mut m = Message::new(MessageType::Ack, Code::EMPTY, 1);
    m.payload = Bytes::from_static(b"x");
    assert_eq!(
        m.encode(&mut [0u8; 32]),
        Err(EncodeError::EmptyMessageHasContent)
    );
    let mut out = b"kept".to_vec();
    assert_eq!(
        m.encode_to_vec(&mut out),
        Err(EncodeError::EmptyMessageHasContent)
    );
    assert_eq!(out, b"kept");
}

#[test]
fn encode_to_vec_leaves_the_buffer_unchanged_on_error() {
    let mut m = Message::new(MessageType::Con, Code::PUT, 1);
    m.options.push(OptionNumber::URI_PATH, b"a");
    m.options.push(OptionNumber(2048), &[0u8; 65_805]);
    let mut out = b"kept".to_vec();
    assert_eq!(
        m.encode_to_vec(&mut out),
        Err(EncodeError::OptionValueTooLong {
            number: OptionNumber(2048),
            len: 65_805
        })
    );
    assert_eq!(out, b"kept");
}

#[test]
fn encode_into_appends() {
    let m = content_22_3(9, &[5]);
    let mut buf = BytesMut::from(&b"xy"[..]);
    m.encode_into(&mut buf).unwrap();
    assert_eq!(buf.get(..2), Some(&b"xy"[..]));
    assert_eq!(buf.get(2..), Some(&encode_vec(&m)[..]));
}

#[test]
fn parse_bytes_shares_the_payload() {
    let m = content_22_3(3, &[1, 2]);
    let bytes = Bytes::from(encode_vec(&m));
    let parsed = Message::parse_bytes(&bytes).unwrap();
    assert_eq!(parsed, m);
    let range = bytes.as_ptr_range();
    assert!(range.contains(&parsed.payload.as_ptr()));
    let no_payload = Bytes::from(encode_vec(&get_temperature(1, &[])));
    assert!(Message::parse_bytes(&no_payload)
        .unwrap()
        .payload
        .is_empty());
}

#[test]
fn view_accessors() {
    let mut m = Message::new(MessageType::Non, Code::CONTENT, 0xabcd);
    m.token = Token::new(b"tok");
    m.options.set_etag(b"e1");
    m.options.push_location_path("a");
    m.options.push_location_path("b");
    m.options.set_content_format(ContentFormat::CBOR);
    m.payload = Bytes::from_static(&[0xff, 0x00]);
    let bytes = encode_vec(&m);
    let v = MessageView::parse(&bytes).unwrap();
    assert_eq!(v.as_bytes(), &bytes[..]);
    assert!(!v.is_empty_message());
    assert_eq!(v.payload(), &[0xff, 0x00]);
    assert_eq!(
        v.options_of(OptionNumber::LOCATION_PATH)
            .collect::<Vec<_>>(),
        [b"a", b"b"]
    );
    assert_eq!(v.option(OptionNumber::CONTENT_FORMAT), Some(&[60][..]));
    assert_eq!(v.options().count(), 4);
    assert_eq!(v.validate_options(), Ok(()));
    assert_eq!(v.to_message(), m);

    let mut bad = m.clone();
    bad.options.push(OptionNumber::CONTENT_FORMAT, &[0]);
    let bytes = encode_vec(&bad);
    let v = MessageView::parse(&bytes).unwrap();
    assert_eq!(
        v.validate_options(),
        Err(OptionError {
            number: OptionNumber::CONTENT_FORMAT,
            kind: OptionErrorKind::Repeated
        })
    );
}

fn arb_code() -> impl Strategy<Value = Code> {
    any::<u8>().prop_map(Code::from_u8)
}

fn arb_mtype() -> impl Strategy<Value = MessageType> {
    (0u8..4).prop_map(MessageType::from_bits)
}

prop_compose! {
    fn arb_message()(
        mtype in arb_mtype(),
        code in arb_code(),
        message_id in any::<u16>(),
        token in proptest::collection::vec(any::<u8>(), 0..=20),
        options in proptest::collection::vec(
            (0u16..2000, proptest::collection::vec(any::<u8>(), 0..300)), 0..10),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) -> Message {
        let mut m = Message::new(mtype, code, message_id);
        if code.is_empty() {
            // RFC 7252 §4.1: an Empty message is the 4-byte header alone.
            return m;
        }
        m.token = Token::new(&token);
        for (n, v) in &options {
            m.options.push(OptionNumber(*n), v);
        }
        m.payload = Bytes::from(payload);
        m
    }
}

proptest! {
    #[test]
    fn roundtrip(m in arb_message()) {
        let bytes = encode_vec(&m);
        prop_assert_eq!(bytes.len(), m.encoded_len());
        prop_assert_eq!(Message::parse(&bytes), Ok(m.clone()));
        prop_assert_eq!(Message::parse_bytes(&Bytes::from(bytes.clone())), Ok(m.clone()));
        let view = MessageView::parse(&bytes).unwrap();
        prop_assert!(view.options().map(|(n, v)| (n, v.to_vec())).eq(m.options.iter().map(|(n, v)| (n, v.to_vec()))));
        prop_assert_eq!(view.payload(), &m.payload[..]);
        // Canonical: what the encoder produced encodes back to the same bytes.
        prop_assert_eq!(encode_vec(&Message::parse(&bytes).unwrap()), bytes);
    }

    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_arbitrary(&bytes)?;
    }

    #[test]
    fn mostly_valid_bytes_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        mtype in 0u8..4, tkl in 0u8..16, code in any::<u8>(), mid in any::<u16>(),
    ) {
        let mut bytes = vec![0x40 | (mtype << 4) | tkl, code];
        bytes.extend_from_slice(&mid.to_be_bytes());
        bytes.extend_from_slice(&tail);
        check_arbitrary(&bytes)?;
    }

    #[test]
    fn options_behave_like_a_sorted_list(ops in proptest::collection::vec(
        (0u8..3, 0u16..20, proptest::collection::vec(any::<u8>(), 0..12)), 0..40)
    ) {
        let mut options = Options::new();
        let mut model: Vec<(u16, Vec<u8>)> = Vec::new();
        for (op, n, v) in ops {
            match op {
                0 => {
                    options.push(OptionNumber(n), &v);
                    let at = model.iter().position(|(m, _)| *m > n).unwrap_or(model.len());
                    model.insert(at, (n, v));
                }
                1 => {
                    options.set(OptionNumber(n), &v);
                    let at = model.iter().position(|(m, _)| *m >= n).unwrap_or(model.len());
                    model.retain(|(m, _)| *m != n);
                    model.insert(at, (n, v));
                }
                _ => {
                    let removed = options.remove(OptionNumber(n));
                    let before = model.len();
                    model.retain(|(m, _)| *m != n);
                    prop_assert_eq!(removed, before - model.len());
                }
            }
            prop_assert_eq!(options.len(), model.len());
            prop_assert!(options.iter().map(|(n, v)| (n.0, v.to_vec())).eq(model.iter().cloned()));
            let rebuilt: Options = model.iter().map(|(n, v)| (OptionNumber(*n), &v[..])).collect();
            prop_assert_eq!(&rebuilt, &options);
            for probe in 0..20u16 {
                let first = model.iter().find(|(m, _)| *m == probe).map(|(_, v)| &v[..]);
                prop_assert_eq!(options.get(OptionNumber(probe)), first);
                prop_assert_eq!(options.get_all(OptionNumber(probe)).count(), model.iter().filter(|(m, _)| *m == probe).count());
            }
        }
    }

    #[test]
    fn uint_roundtrip(v in any::<u32>()) {
        let mut o = Options::new();
        o.set_uint(OptionNumber::SIZE1, v);
        let bytes = o.get(OptionNumber::SIZE1).unwrap();
        prop_assert!(bytes.first() != Some(&0));
        prop_assert_eq!(bytes.len(), (32 - v.leading_zeros() as usize).div_ceil(8));
        prop_assert_eq!(o.get_uint(OptionNumber::SIZE1), Some(v));
    }

    #[test]
    fn block_roundtrip(num in 0u32..(1 << 20), more in any::<bool>(), szx in 0u8..7) {
        let b = Block { num, more, szx };
        prop_assert_eq!(Block::from_uint(b.to_uint()), Ok(b));
        prop_assert_eq!(Block::new(num, more, b.size()), Ok(b));
        prop_assert_eq!(b.offset(), num as usize * b.size());
    }
}

/// Parsing arbitrary bytes: no panic; when it parses, the view and the owned parse agree, and
/// re-encoding gives back the input (each message has exactly one encoding: extended lengths
/// never overlap the short forms, and the payload marker only appears before a payload).
fn check_arbitrary(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = parse_header(bytes);
    let view = MessageView::parse(bytes);
    let owned = Message::parse(bytes);
    prop_assert_eq!(view.is_ok(), owned.is_ok());
    if let (Ok(view), Ok(m)) = (view, owned) {
        let _ = view.validate_options();
        prop_assert_eq!(view.to_message(), m.clone());
        let again = encode_vec(&m);
        prop_assert_eq!(&again[..], bytes);
        prop_assert_eq!(Message::parse(&again), Ok(m));
    }
    Ok(())
}

/// Messages are moved through every layer of the engine (and inside every event): growing
/// them makes every exchange slower, so a change that does must say so here.
#[test]
fn messages_stay_small() {
    assert!(size_of::<Options>() <= 72);
    assert!(size_of::<Message>() <= 136);
    assert!(size_of::<Token>() <= 24);
}
