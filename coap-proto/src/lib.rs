//! A Sans-IO implementation of CoAP, the Constrained Application Protocol (RFC 7252).
//!
//! (Crate documentation is completed as the layers land.)

#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod cache_key;
pub mod link_format;
pub mod msg;
pub mod time;
pub mod uri;

pub use time::Instant;
