//! The CoAP wire format (RFC 7252 §3): messages, codes, options and their typed values.
