//! Messages built from fuzz input encode, parse back equal, and encode to the same bytes again;
//! a too-short buffer is an error, never a panic. If the input itself is a datagram, it is also
//! round-tripped as one.

#![no_main]

use coap_proto::msg::{Code, EncodeError, Message, MessageType, OptionNumber, Token};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn build(u: &mut Unstructured<'_>) -> Result<Message> {
    let mtype = MessageType::from_bits(u.arbitrary()?);
    let code = Code::from_u8(u.arbitrary()?);
    let mut m = Message::new(mtype, code, u.arbitrary()?);
    if code.is_empty() {
        return Ok(m);
    }
    let token_len = if u.ratio(1, 16)? {
        u.int_in_range(0..=600)?
    } else {
        u.int_in_range(0..=8)?
    };
    m.token = Token::new(u.bytes(token_len)?);
    for _ in 0..u.int_in_range(0..=12)? {
        let number = if u.arbitrary()? {
            u.int_in_range(0..=64)?
        } else {
            u.arbitrary()?
        };
        let len = u.int_in_range(0..=300)?;
        let value = u.bytes(len)?;
        match u.int_in_range(0..=2)? {
            0 => m.options.push(OptionNumber(number), value),
            1 => m.options.set(OptionNumber(number), value),
            _ => {
                m.options.remove(OptionNumber(number));
            }
        }
    }
    let payload_len = u.int_in_range(0..=512)?;
    m.payload = u.bytes(payload_len)?.to_vec().into();
    Ok(m)
}

fn roundtrip(m: &Message) -> Vec<u8> {
    let needed = m.encoded_len();
    let mut buf = vec![0u8; needed];
    assert_eq!(m.encode(&mut buf), Ok(needed));
    if needed > 0 {
        assert_eq!(
            m.encode(&mut buf[..needed - 1]),
            Err(EncodeError::BufferTooSmall { needed })
        );
    }
    let parsed = Message::parse(&buf).expect("encoded messages parse");
    assert_eq!(&parsed, m);
    let mut again = vec![0u8; parsed.encoded_len()];
    parsed.encode(&mut again).expect("parsed messages encode");
    assert_eq!(again, buf, "encoding is canonical");
    buf
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        roundtrip(&m);
    }
    let mut u = Unstructured::new(data);
    if let Ok(m) = build(&mut u) {
        roundtrip(&m);
    }
});
