//! The owned [`Message`].

use bytes::Bytes;

use super::code::{Code, MessageType};
use super::error::ParseError;
use super::options::Options;
use super::parse::MessageView;
use super::token::Token;

/// An owned CoAP message.
///
/// Build one with [`Message::new`] and the public fields, encode it with [`Message::encode`],
/// get one from bytes with [`Message::parse`] or [`Message::parse_bytes`] (or borrow with
/// [`MessageView`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message type.
    pub mtype: MessageType,
    /// The code: a method, a response code, or 0.00 for an Empty message.
    pub code: Code,
    /// The message ID, used for deduplication and to match ACK/RST to CON.
    pub message_id: u16,
    /// The token, used to match responses to requests.
    pub token: Token,
    /// The options, sorted by number.
    pub options: Options,
    /// The payload; empty means no payload (and no payload marker on the wire).
    pub payload: Bytes,
}

impl Message {
    /// A message with an empty token, no options and no payload.
    pub fn new(mtype: MessageType, code: Code, message_id: u16) -> Message {
        Message {
            mtype,
            code,
            message_id,
            token: Token::default(),
            options: Options::new(),
            payload: Bytes::new(),
        }
    }

    /// Parses a datagram into an owned message, copying what it keeps.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        Ok(MessageView::parse(bytes)?.to_message())
    }

    /// Parses a datagram into an owned message whose payload shares `bytes` (a cheap
    /// reference-counted slice, no copy); token and options are copied.
    pub fn parse_bytes(bytes: &Bytes) -> Result<Message, ParseError> {
        Ok(MessageView::parse(bytes)?.owned_sharing(bytes))
    }

    /// Whether this is an Empty message (code 0.00).
    pub fn is_empty_message(&self) -> bool {
        self.code.is_empty()
    }
}
