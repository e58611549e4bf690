//! A Sans-IO implementation of CoAP, the Constrained Application Protocol (RFC 7252).
//!
//! (Crate documentation is completed as the layers land.)

#![no_std]
#![forbid(unsafe_code)]
// The engine names core and alloc items by their own paths so the no_std build stays honest.
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod cache_key;
pub mod endpoint;
pub mod link_format;
pub mod msg;
pub mod request;
pub mod resource;
pub mod rng;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod time;
pub mod uri;

pub use endpoint::{Config, Endpoint, Event, IncomingId, RequestId, Transmit};
pub use request::{Request, Response};
pub use time::Instant;
