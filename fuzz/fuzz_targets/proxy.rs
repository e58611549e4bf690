//! A proxy fed arbitrary requests and arbitrary origin responses: it never panics, always
//! answers with a response code, and its cache stays within its limits.
//!
//! Input: a sequence of records, each `[gap][req_len_hi][req_len_lo][request...]
//! [rsp_len_hi][rsp_len_lo][response...]`, where the request and response are CoAP datagrams
//! (a response that does not parse, or whose code is not a response code, stands for a
//! failed or timed-out upstream exchange) and `gap` is the seconds that pass before it.

#![no_main]

use bytes::Bytes;
use coap_proto::msg::{Code, Message};
use coap_proto::proxy::{self, CacheLimits, ObserveStart, Proxy, Start, UpstreamError};
use coap_proto::{Instant, Response};
use core::time::Duration;
use libfuzzer_sys::fuzz_target;

/// Takes a length-prefixed chunk off the front of `data`.
fn chunk<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let &[hi, lo, ref rest @ ..] = *data else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo])).min(rest.len());
    let (head, tail) = rest.split_at(len);
    *data = tail;
    Some(head)
}

fuzz_target!(|input: &[u8]| {
    let limits = CacheLimits {
        max_entries: 8,
        max_bytes: 4096,
        max_entry_bytes: 1024,
        max_relays: 4,
    };
    let mut proxy = Proxy::new(limits);
    let mut now = Instant::ZERO;
    let mut data = input;
    while let Some((&gap, rest)) = data.split_first() {
        data = rest;
        now += Duration::from_secs(u64::from(gap));
        let (Some(request), Some(response)) = (chunk(&mut data), chunk(&mut data)) else {
            break;
        };
        let Ok(request) = Message::parse(request) else {
            continue;
        };
        let target = match proxy::forward_target(&request.options) {
            Ok(Some(target)) => target,
            Ok(None) => continue,
            Err(e) => {
                let answer = e.response();
                assert!(answer.code.is_response() && !answer.code.is_success());
                continue;
            }
        };
        let outcome = |response: &[u8]| match Message::parse(response) {
            Ok(m) if m.code.is_response() => Ok(Response {
                code: m.code,
                options: m.options,
                payload: Bytes::copy_from_slice(&m.payload),
                message_type: None,
            }),
            Ok(m) if m.code == Code::EMPTY => Err(UpstreamError::Timeout),
            _ => Err(UpstreamError::Failed),
        };
        // Registrations open, join or bypass relayed observations; the response is the
        // origin's notification, and an odd gap ends the relay afterwards.
        let start = if request.options.observe() == Some(0) {
            let key = target.to_string();
            match proxy.start_observe(
                &key,
                request.code,
                &request.options,
                &request.payload,
                target,
                now,
            ) {
                ObserveStart::Answer(answer) => Start::Answer(answer),
                ObserveStart::Observe(_) => {
                    let answer = proxy.relay_notification(&key, outcome(response));
                    if gap % 2 == 1 {
                        proxy.relay_end(&key);
                    }
                    Start::Answer(answer)
                }
                ObserveStart::Plain(start) => start,
                ObserveStart::Wait => {
                    assert!(proxy.relay_pending(&key));
                    continue;
                }
            }
        } else {
            proxy.start(
                request.code,
                &request.options,
                &request.payload,
                target,
                now,
            )
        };
        let answer = match start {
            Start::Answer(answer) => answer,
            Start::Forward(forward) => proxy.finish(forward, outcome(response), now),
        };
        assert!(proxy.relays() <= limits.max_relays);
        assert!(answer.code.is_response(), "{answer:?}");
        let (entries, bytes) = proxy.cache_usage();
        assert!(entries <= limits.max_entries && bytes <= limits.max_bytes);
    }
});
