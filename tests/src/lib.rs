//! Cross-crate tests for the CoAP workspace live in `tests/`; this library holds their shared helpers.
