//! The few CoAP messages the load tool and the ceiling loop send and read.
//!
//! Requests are encoded once with [`coap_proto::msg::Message::encode`] into a
//! [`RequestTemplate`]; each request sent is a copy with its message ID and 4-byte token
//! patched in (bytes 2..4 and 4..8 of the header, RFC 7252 §3). Incoming datagrams are read
//! with [`coap_proto::msg::MessageView`] and sorted by [`classify`].

use coap_proto::msg::{
    decode_uint, Code, EncodeError, Message, MessageType, MessageView, OptionNumber,
};

/// The token length every request of the load tool carries.
pub const TOKEN_LEN: usize = 4;

/// A request encoded once, to be copied with a fresh message ID and token for every send.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    bytes: Vec<u8>,
}

/// Why a [`RequestTemplate`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// The message does not carry a token of exactly [`TOKEN_LEN`] bytes.
    TokenLength(usize),
    /// The message could not be encoded.
    Encode(EncodeError),
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::TokenLength(n) => {
                write!(
                    f,
                    "request template needs a {TOKEN_LEN}-byte token, got {n}"
                )
            }
            TemplateError::Encode(e) => write!(f, "request template cannot be encoded: {e}"),
        }
    }
}

impl std::error::Error for TemplateError {}

impl RequestTemplate {
    /// Encodes `msg`, which must have a [`TOKEN_LEN`]-byte token (its value and the message
    /// ID are placeholders).
    pub fn new(msg: &Message) -> Result<RequestTemplate, TemplateError> {
        if msg.token.len() != TOKEN_LEN {
            return Err(TemplateError::TokenLength(msg.token.len()));
        }
        let mut bytes = vec![0; msg.encoded_len()];
        let n = msg.encode(&mut bytes).map_err(TemplateError::Encode)?;
        bytes.truncate(n);
        Ok(RequestTemplate { bytes })
    }

    /// The encoded length of every request made from this template.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a message has at least a 4-byte header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends a copy with message ID `mid` and token `token` (big-endian) to `out`.
    #[inline]
    pub fn push(&self, out: &mut Vec<u8>, mid: u16, token: u32) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(id) = out.get_mut(start + 2..start + 4) {
            id.copy_from_slice(&mid.to_be_bytes());
        }
        if let Some(t) = out.get_mut(start + 4..start + 4 + TOKEN_LEN) {
            t.copy_from_slice(&token.to_be_bytes());
        }
    }
}

/// An Empty ACK for message ID `mid` (RFC 7252 §4.2).
pub fn empty_ack(mid: u16) -> [u8; 4] {
    let [hi, lo] = mid.to_be_bytes();
    [0x60, 0x00, hi, lo]
}

/// The token as a big-endian `u32`, when it is [`TOKEN_LEN`] bytes long.
#[inline]
pub fn token_u32(token: &[u8]) -> Option<u32> {
    let t: [u8; TOKEN_LEN] = token.try_into().ok()?;
    Some(u32::from_be_bytes(t))
}

/// What a datagram received by the load tool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A response: piggybacked in an ACK, or a separate CON or NON response.
    Response {
        /// The message type (ACK, CON or NON).
        mtype: MessageType,
        /// The message ID.
        mid: u16,
        /// The token.
        token: &'a [u8],
        /// The response code.
        code: Code,
        /// The Observe option, if present (RFC 7641 §2).
        observe: Option<u32>,
        /// The payload.
        payload: &'a [u8],
    },
    /// An Empty ACK: the server will answer separately (RFC 7252 §5.2.2).
    EmptyAck {
        /// The message ID acknowledged.
        mid: u16,
    },
    /// A Reset.
    Reset {
        /// The message ID rejected.
        mid: u16,
    },
    /// A request, an Empty CON or NON, or a reserved code class: nothing the tool expects.
    Unexpected {
        /// The message type.
        mtype: MessageType,
        /// The message ID.
        mid: u16,
    },
    /// Not a well-formed CoAP message.
    Malformed,
}

/// Sorts a received datagram.
pub fn classify(datagram: &[u8]) -> Incoming<'_> {
    let Ok(view) = MessageView::parse(datagram) else {
        return Incoming::Malformed;
    };
    let mtype = view.mtype();
    let mid = view.message_id();
    let code = view.code();
    if code.is_empty() {
        return match mtype {
            MessageType::Ack => Incoming::EmptyAck { mid },
            MessageType::Rst => Incoming::Reset { mid },
            _ => Incoming::Unexpected { mtype, mid },
        };
    }
    if !code.is_response() || mtype == MessageType::Rst {
        return Incoming::Unexpected { mtype, mid };
    }
    Incoming::Response {
        mtype,
        mid,
        token: view.token(),
        code,
        observe: view.option(OptionNumber::OBSERVE).and_then(decode_uint),
        payload: view.payload(),
    }
}

/// Turns the request in `buf` into the ceiling loop's answer, in place: a CON request becomes
/// an ACK, a NON request a NON, with code 2.05 Content, the same message ID and token, and
/// nothing after the token. Returns the answer's length, or `None` (leave it unanswered) for
/// anything that is not a CoAP request with a token of at most 8 bytes.
///
/// This is the least work that still produces a valid response, which is the point of the
/// ceiling: it shows what the kernel and the socket calls alone allow. (A real server picks a
/// fresh message ID for a NON response; the load tool matches NON responses by token.)
#[inline]
pub fn ceiling_reply(buf: &mut [u8]) -> Option<usize> {
    let [b0, code, ..] = *buf else {
        return None;
    };
    let tkl = usize::from(b0 & 0x0f);
    let code = Code::from_u8(code);
    if b0 >> 6 != 1 || tkl > 8 || !code.is_request() || buf.len() < 4 + tkl {
        return None;
    }
    let reply_type = match MessageType::from_bits(b0 >> 4) {
        MessageType::Con => MessageType::Ack,
        MessageType::Non => MessageType::Non,
        _ => return None,
    };
    let first = buf.first_mut()?;
    *first = 0x40 | (reply_type.to_bits() << 4) | (b0 & 0x0f);
    let second = buf.get_mut(1)?;
    *second = Code::CONTENT.to_u8();
    Some(4 + tkl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_proto::msg::Token;
    use proptest::prelude::*;

    fn get(mtype: MessageType) -> Message {
        let mut m = Message::new(mtype, Code::GET, 0);
        m.token = Token::new(&[0; TOKEN_LEN]);
        m.options.push_uri_path("bench");
        m
    }

    #[test]
    fn template_patches_id_and_token() {
        let t = RequestTemplate::new(&get(MessageType::Con)).unwrap();
        assert_eq!(t.len(), 4 + 4 + 1 + 5);
        let mut out = Vec::new();
        t.push(&mut out, 0xbeef, 0x0102_0304);
        t.push(&mut out, 7, 9);
        assert_eq!(out.len(), 2 * t.len());
        let first = Message::parse(&out[..t.len()]).unwrap();
        assert_eq!(first.message_id, 0xbeef);
        assert_eq!(first.token.as_bytes(), &[1, 2, 3, 4]);
        assert_eq!(first.code, Code::GET);
        assert_eq!(first.options.uri_path().collect::<Vec<_>>(), ["bench"]);
        let second = MessageView::parse(&out[t.len()..]).unwrap();
        assert_eq!(second.message_id(), 7);
        assert_eq!(token_u32(second.token()), Some(9));
    }

    #[test]
    fn template_needs_four_byte_token() {
        let mut m = get(MessageType::Non);
        m.token = Token::new(&[1, 2]);
        assert_eq!(
            RequestTemplate::new(&m).unwrap_err(),
            TemplateError::TokenLength(2)
        );
    }

    #[test]
    fn classify_sorts_messages() {
        assert_eq!(
            classify(&empty_ack(0x1234)),
            Incoming::EmptyAck { mid: 0x1234 }
        );
        assert_eq!(classify(&[0x70, 0, 0, 5]), Incoming::Reset { mid: 5 });
        assert_eq!(
            classify(&[0x40, 0, 0, 5]),
            Incoming::Unexpected {
                mtype: MessageType::Con,
                mid: 5
            }
        );
        assert_eq!(classify(&[0x40]), Incoming::Malformed);

        let mut rsp = Message::new(MessageType::Con, Code::CONTENT, 77);
        rsp.token = Token::new(&[0, 1, 0, 2]);
        rsp.options.set_observe(12);
        rsp.payload = bytes::Bytes::from_static(b"42");
        let mut buf = [0u8; 64];
        let n = rsp.encode(&mut buf).unwrap();
        assert_eq!(
            classify(&buf[..n]),
            Incoming::Response {
                mtype: MessageType::Con,
                mid: 77,
                token: &[0, 1, 0, 2],
                code: Code::CONTENT,
                observe: Some(12),
                payload: b"42",
            }
        );

        // A request is not something the tool expects.
        let t = RequestTemplate::new(&get(MessageType::Con)).unwrap();
        let mut out = Vec::new();
        t.push(&mut out, 1, 1);
        assert!(matches!(classify(&out), Incoming::Unexpected { .. }));
    }

    #[test]
    fn ceiling_answers_con_and_non_requests() {
        for (req, reply) in [
            (MessageType::Con, MessageType::Ack),
            (MessageType::Non, MessageType::Non),
        ] {
            let t = RequestTemplate::new(&get(req)).unwrap();
            let mut out = Vec::new();
            t.push(&mut out, 0x4242, 0xdead_beef);
            let n = ceiling_reply(&mut out).unwrap();
            let m = Message::parse(&out[..n]).unwrap();
            assert_eq!(m.mtype, reply);
            assert_eq!(m.code, Code::CONTENT);
            assert_eq!(m.message_id, 0x4242);
            assert_eq!(m.token.as_bytes(), &0xdead_beef_u32.to_be_bytes());
            assert!(m.options.is_empty());
            assert!(m.payload.is_empty());
        }
    }

    #[test]
    fn ceiling_ignores_non_requests() {
        let mut ack = empty_ack(3);
        assert_eq!(ceiling_reply(&mut ack), None);
        let mut rsp = [0x60, 0x45, 0, 1];
        assert_eq!(ceiling_reply(&mut rsp), None);
        let mut short_token = [0x44, 0x01, 0, 1, 9];
        assert_eq!(ceiling_reply(&mut short_token), None);
        let mut v2 = [0x80, 0x01, 0, 1];
        assert_eq!(ceiling_reply(&mut v2), None);
        assert_eq!(ceiling_reply(&mut []), None);
    }

    proptest! {
        #[test]
        fn classify_and_ceiling_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = classify(&bytes);
            if let Some(n) = ceiling_reply(&mut bytes) {
                prop_assert!(n <= bytes.len());
                // The answer is a well-formed 2.05 response.
                let view = MessageView::parse(&bytes[..n]);
                prop_assert!(view.is_ok());
                prop_assert_eq!(view.unwrap().code(), Code::CONTENT);
            }
        }
    }
}
