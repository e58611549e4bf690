//! The CoAP wire format (RFC 7252 §3): messages, codes, options and their typed values.
//!
//! - [`MessageView`] borrows a datagram: [`MessageView::parse`] checks the structure once,
//!   without allocating, and then gives the header, token, options and payload.
//! - [`Message`] is the owned form, encoded with [`Message::encode`] into a caller buffer.
//! - [`Options`] keeps options sorted by number with typed accessors (Block, Content-Format,
//!   Uri-Path, ...); [`OptionNumber`] knows the properties and registry entries of options.
//!
//! Extended token lengths (RFC 8974) are parsed and encoded; deciding how long a token may
//! be is left to the caller.

mod block;
mod code;
mod content_format;
mod encode;
mod error;
mod message;
mod option;
mod options;
mod parse;
mod token;

pub use block::{Block, BlockError};
pub use code::{Code, MessageType, ParseCodeError};
pub use content_format::ContentFormat;
pub use error::{EncodeError, ParseError};
pub use message::Message;
pub use option::{OptionDefinition, OptionFormat, OptionNumber};
pub(crate) use options::header as option_header;
pub use options::{decode_uint, OptionError, OptionErrorKind, OptionValue, Options};
pub use parse::{parse_header, Header, MessageView, OptionsIter};
pub use token::Token;

#[cfg(test)]
mod tests;
