use super::*;
use alloc::string::ToString;
use alloc::vec;
use core::time::Duration;

fn proxy_uri(uri: &str) -> Options {
    let mut o = Options::new();
    o.set_proxy_uri(uri);
    o
}

fn target(uri: &str) -> CoapUri {
    CoapUri::parse(uri).unwrap()
}

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

fn content(body: &'static [u8]) -> Response {
    Response::content(body)
}

/// Starts a GET and expects it to be forwarded.
fn forward(p: &mut Proxy, options: &Options, uri: &str, now: Instant) -> Forward {
    match p.start(Code::GET, options, &Bytes::new(), target(uri), now) {
        Start::Forward(f) => f,
        Start::Answer(r) => panic!("expected a forward, got {r:?}"),
    }
}

/// Starts a GET and expects it to be answered by the proxy.
fn answered(p: &mut Proxy, options: &Options, uri: &str, now: Instant) -> Response {
    match p.start(Code::GET, options, &Bytes::new(), target(uri), now) {
        Start::Answer(r) => r,
        Start::Forward(f) => panic!("expected an answer, got a forward to {}", f.uri()),
    }
}

#[test]
fn proxy_uri_names_the_destination() {
    let uri = forward_target(&proxy_uri("coap://example.net:5700/a/b?x=1"))
        .unwrap()
        .unwrap();
    assert_eq!(uri.to_string(), "coap://example.net:5700/a/b?x=1");
    assert_eq!(forward_target(&Options::new()), Ok(None));
}

#[test]
fn proxy_scheme_with_uri_options_names_the_destination() {
    let mut o = Options::new();
    o.set_proxy_scheme("coap");
    o.set_uri_host("example.net");
    o.push_uri_path("temp");
    let uri = forward_target(&o).unwrap().unwrap();
    // No Uri-Port: the scheme's default.
    assert_eq!(uri.to_string(), "coap://example.net/temp");
    o.set_uri_port(5700);
    let uri = forward_target(&o).unwrap().unwrap();
    assert_eq!(uri.to_string(), "coap://example.net:5700/temp");
    o.remove(OptionNumber::URI_HOST);
    assert_eq!(forward_target(&o), Err(ProxyError::NoHost));
}

#[test]
fn bad_destinations_get_the_codes_the_rfc_prescribes() {
    let err = forward_target(&proxy_uri("http://example.net/")).unwrap_err();
    assert_eq!(err.code(), Code::PROXYING_NOT_SUPPORTED);
    let err = forward_target(&proxy_uri("coaps://example.net/")).unwrap_err();
    assert_eq!(err.code(), Code::PROXYING_NOT_SUPPORTED);
    let err = forward_target(&proxy_uri("not a uri")).unwrap_err();
    assert_eq!(err.code(), Code::BAD_OPTION);
    let mut o = proxy_uri("coap://example.net/");
    o.push_uri_path("x");
    assert_eq!(forward_target(&o), Err(ProxyError::ConflictingUriOptions));
    let mut o = Options::new();
    o.set_proxy_scheme("http");
    assert_eq!(
        forward_target(&o).unwrap_err().code(),
        Code::PROXYING_NOT_SUPPORTED
    );
}

#[test]
fn a_reverse_target_appends_the_rest_of_the_path_and_the_query() {
    let base = target("coap://[::1]:5684/api");
    let uri = reverse_target(&base, ["v1", "temp"], ["unit=c"]).unwrap();
    assert_eq!(uri.to_string(), "coap://[::1]:5684/api/v1/temp?unit=c");
}

#[test]
fn options_are_forwarded_consumed_or_refused_as_section_5_7_1_says() {
    let mut p = Proxy::default();
    let mut o = proxy_uri("coap://10.0.0.1/x");
    o.set_accept(crate::msg::ContentFormat::JSON);
    o.set_observe(0);
    o.set_block2(crate::msg::Block::new(0, false, 64).unwrap());
    o.push(OptionNumber(65000), b"safe"); // unrecognized, Safe-to-Forward, elective
    let f = forward(&mut p, &o, "coap://10.0.0.1/x", t(0));
    let numbers: Vec<u16> = f.options().iter().map(|(n, _)| n.0).collect();
    // Accept, Hop-Limit (added), the unknown safe option; no Observe, Block2 or Proxy-Uri.
    assert_eq!(numbers, vec![16, 17, 65000]);
    assert_eq!(f.options().hop_limit(), Some(DEFAULT_HOP_LIMIT));

    let mut o = proxy_uri("coap://10.0.0.1/x");
    o.push(OptionNumber(65002), b"unsafe"); // unrecognized and Unsafe
    let r = answered(&mut p, &o, "coap://10.0.0.1/x", t(0));
    assert_eq!(r.code, Code::BAD_OPTION);
}

#[test]
fn hop_limit_is_decremented_and_ends_loops() {
    let mut p = Proxy::default();
    let mut o = proxy_uri("coap://10.0.0.1/x");
    o.set_hop_limit(5);
    let f = forward(&mut p, &o, "coap://10.0.0.1/x", t(0));
    assert_eq!(f.options().hop_limit(), Some(4));
    o.set_hop_limit(1);
    let r = answered(&mut p, &o, "coap://10.0.0.1/x", t(0));
    assert_eq!(r.code, Code::HOP_LIMIT_REACHED);
}

#[test]
fn a_fresh_response_is_served_from_the_cache_with_its_max_age_reduced() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/temp");
    let f = forward(&mut p, &o, "coap://10.0.0.1/temp", t(100));
    let r = p.finish(f, Ok(content(b"21.5").with_max_age(60)), t(100));
    assert_eq!((r.code, &r.payload[..]), (Code::CONTENT, &b"21.5"[..]));
    assert_eq!(r.options.max_age(), Some(60));

    // 20 s later (RFC 7252 §5.7.1's example): from the cache, Max-Age 40.
    let r = answered(&mut p, &o, "coap://10.0.0.1/temp", t(120));
    assert_eq!((r.code, &r.payload[..]), (Code::CONTENT, &b"21.5"[..]));
    assert_eq!(r.options.max_age(), Some(40));
    // Another resource, or another Accept, is another entry.
    forward(&mut p, &o, "coap://10.0.0.1/other", t(120));
    let mut accept = o.clone();
    accept.set_accept(crate::msg::ContentFormat::JSON);
    forward(&mut p, &accept, "coap://10.0.0.1/temp", t(120));
    // At 60 s it is stale; without an ETag it cannot be revalidated: a plain forward.
    let f = forward(&mut p, &o, "coap://10.0.0.1/temp", t(160));
    assert!(f.options().etag().is_none());
    let s = p.stats();
    assert_eq!((s.hits, s.misses, s.stored), (1, 4, 1));
}

#[test]
fn without_max_age_a_response_is_fresh_for_60_seconds_and_max_age_0_is_not_stored() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/a");
    let f = forward(&mut p, &o, "coap://10.0.0.1/a", t(0));
    p.finish(f, Ok(content(b"x")), t(0));
    assert_eq!(
        answered(&mut p, &o, "coap://10.0.0.1/a", t(59))
            .options
            .max_age(),
        Some(1)
    );
    forward(&mut p, &o, "coap://10.0.0.1/a", Instant::from_secs(60));

    let o = proxy_uri("coap://10.0.0.1/b");
    let f = forward(&mut p, &o, "coap://10.0.0.1/b", t(0));
    p.finish(f, Ok(content(b"x").with_max_age(0)), t(0));
    forward(&mut p, &o, "coap://10.0.0.1/b", t(0));
}

#[test]
fn only_cacheable_codes_and_methods_are_stored() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/a");
    // 4.04 is cacheable (§5.9.2).
    let f = forward(&mut p, &o, "coap://10.0.0.1/a", t(0));
    p.finish(f, Ok(Response::new(Code::NOT_FOUND)), t(0));
    assert_eq!(
        answered(&mut p, &o, "coap://10.0.0.1/a", t(1)).code,
        Code::NOT_FOUND
    );
    // 2.04 is not, nor is anything answered to a POST.
    let o = proxy_uri("coap://10.0.0.1/b");
    let f = forward(&mut p, &o, "coap://10.0.0.1/b", t(0));
    p.finish(f, Ok(Response::new(Code::CHANGED)), t(0));
    forward(&mut p, &o, "coap://10.0.0.1/b", t(1));
    let Start::Forward(f) = p.start(
        Code::POST,
        &o,
        &Bytes::new(),
        target("coap://10.0.0.1/b"),
        t(1),
    ) else {
        panic!("a POST is forwarded");
    };
    p.finish(f, Ok(content(b"made")), t(1));
    forward(&mut p, &o, "coap://10.0.0.1/b", t(2));
}

#[test]
fn a_fetch_body_is_part_of_the_key() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/q");
    let fetch = |p: &mut Proxy, body: &'static [u8]| {
        p.start(
            Code::FETCH,
            &o,
            &Bytes::from_static(body),
            target("coap://10.0.0.1/q"),
            t(0),
        )
    };
    let Start::Forward(f) = fetch(&mut p, b"a") else {
        panic!()
    };
    assert_eq!(&f.payload()[..], b"a");
    p.finish(f, Ok(content(b"for a")), t(0));
    assert!(matches!(fetch(&mut p, b"a"), Start::Answer(r) if &r.payload[..] == b"for a"));
    assert!(matches!(fetch(&mut p, b"b"), Start::Forward(_)));
}

#[test]
fn a_stale_response_with_an_etag_is_revalidated() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/t");
    let f = forward(&mut p, &o, "coap://10.0.0.1/t", t(0));
    p.finish(
        f,
        Ok(content(b"body")
            .with_max_age(10)
            .with_option(OptionNumber::ETAG, b"v1")),
        t(0),
    );
    // Stale at 10 s: forwarded with the stored ETag (§5.6.2).
    let f = forward(&mut p, &o, "coap://10.0.0.1/t", t(10));
    assert_eq!(f.options().etag(), Some(&b"v1"[..]));
    // 2.03 with that ETag: the stored body goes to the client, fresh for the new Max-Age.
    let valid = Response::new(Code::VALID)
        .with_option(OptionNumber::ETAG, b"v1")
        .with_max_age(30);
    let r = p.finish(f, Ok(valid), t(10));
    assert_eq!((r.code, &r.payload[..]), (Code::CONTENT, &b"body"[..]));
    assert_eq!(r.options.max_age(), Some(30));
    assert_eq!(p.stats().revalidated, 1);
    let r = answered(&mut p, &o, "coap://10.0.0.1/t", t(35));
    assert_eq!(r.options.max_age(), Some(5));

    // Stale again; this time the origin has a new representation, which replaces it.
    let f = forward(&mut p, &o, "coap://10.0.0.1/t", t(40));
    p.finish(
        f,
        Ok(content(b"new").with_option(OptionNumber::ETAG, b"v2")),
        t(40),
    );
    let r = answered(&mut p, &o, "coap://10.0.0.1/t", t(41));
    assert_eq!(&r.payload[..], b"new");
}

#[test]
fn a_client_holding_the_stored_etag_gets_2_03() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/t");
    let f = forward(&mut p, &o, "coap://10.0.0.1/t", t(0));
    p.finish(
        f,
        Ok(content(b"body").with_option(OptionNumber::ETAG, b"v1")),
        t(0),
    );
    let mut with_etag = o.clone();
    with_etag.push_etag(b"v0");
    with_etag.push_etag(b"v1");
    // The client's ETags are handled by the cache, not part of the key (§5.6).
    let r = answered(&mut p, &with_etag, "coap://10.0.0.1/t", t(5));
    assert_eq!(r.code, Code::VALID);
    assert_eq!(r.options.etag(), Some(&b"v1"[..]));
    assert!(r.payload.is_empty());
    assert_eq!(r.options.max_age(), Some(55));
}

#[test]
fn changing_a_resource_marks_what_is_stored_for_it_not_fresh() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/r");
    let f = forward(&mut p, &o, "coap://10.0.0.1/r", t(0));
    p.finish(f, Ok(content(b"old")), t(0));
    answered(&mut p, &o, "coap://10.0.0.1/r", t(1));
    let Start::Forward(f) = p.start(
        Code::PUT,
        &o,
        &Bytes::from_static(b"new"),
        target("coap://10.0.0.1/r"),
        t(2),
    ) else {
        panic!("a PUT is forwarded");
    };
    p.finish(f, Ok(Response::new(Code::CHANGED)), t(2));
    forward(&mut p, &o, "coap://10.0.0.1/r", t(3));
}

#[test]
fn upstream_failures_become_5_04_and_5_02() {
    let mut p = Proxy::default();
    let o = proxy_uri("coap://10.0.0.1/x");
    let f = forward(&mut p, &o, "coap://10.0.0.1/x", t(0));
    assert_eq!(
        p.finish(f, Err(UpstreamError::Timeout), t(0)).code,
        Code::GATEWAY_TIMEOUT
    );
    let f = forward(&mut p, &o, "coap://10.0.0.1/x", t(0));
    assert_eq!(
        p.finish(f, Err(UpstreamError::Failed), t(0)).code,
        Code::BAD_GATEWAY
    );
    let f = forward(&mut p, &o, "coap://10.0.0.1/x", t(0));
    let busy = p.finish(f, Err(UpstreamError::Busy), t(0));
    assert_eq!(busy.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(busy.options.max_age(), Some(BUSY_RETRY_AFTER));
    // An unrecognized Unsafe option in the response (§5.7.1).
    let f = forward(&mut p, &o, "coap://10.0.0.1/x", t(0));
    let odd = content(b"x").with_option(OptionNumber(65002), b"?");
    assert_eq!(p.finish(f, Ok(odd), t(0)).code, Code::BAD_GATEWAY);
    // Block-wise and Observe options of the origin's leg are not relayed.
    let f = forward(&mut p, &o, "coap://10.0.0.1/x", t(0));
    let mut r = content(b"x");
    r.options.set_observe(7);
    r.options.set_size2(1);
    let r = p.finish(f, Ok(r), t(0));
    assert!(r.options.observe().is_none() && r.options.size2().is_none());
}

#[test]
fn the_cache_stays_within_its_limits_evicting_the_least_recently_used() {
    let limits = CacheLimits {
        max_entries: 3,
        max_bytes: 1 << 20,
        max_entry_bytes: 200,
        ..CacheLimits::default()
    };
    let mut p = Proxy::new(limits);
    let uri = |i: u32| alloc::format!("coap://10.0.0.1/{i}");
    for i in 0..3 {
        let f = forward(&mut p, &proxy_uri(&uri(i)), &uri(i), t(0));
        p.finish(f, Ok(content(b"v")), t(0));
    }
    // Use 0, so that 1 is the least recently used.
    answered(&mut p, &proxy_uri(&uri(0)), &uri(0), t(1));
    let f = forward(&mut p, &proxy_uri(&uri(3)), &uri(3), t(1));
    p.finish(f, Ok(content(b"v")), t(1));
    assert_eq!(p.cache_usage().0, 3);
    assert_eq!(p.stats().evicted, 1);
    answered(&mut p, &proxy_uri(&uri(0)), &uri(0), t(2));
    forward(&mut p, &proxy_uri(&uri(1)), &uri(1), t(2));
    // Too large for one entry: forwarded, not stored.
    let f = forward(&mut p, &proxy_uri(&uri(9)), &uri(9), t(2));
    let big = Response::content(Bytes::from(vec![0u8; 300]));
    assert_eq!(p.finish(f, Ok(big), t(2)).payload.len(), 300);
    forward(&mut p, &proxy_uri(&uri(9)), &uri(9), t(3));

    // A byte bound: entries of ~100 bytes in 350 bytes.
    let mut p = Proxy::new(CacheLimits {
        max_entries: 100,
        max_bytes: 350,
        max_entry_bytes: 350,
        ..CacheLimits::default()
    });
    for i in 0..20 {
        let f = forward(&mut p, &proxy_uri(&uri(i)), &uri(i), t(0));
        p.finish(f, Ok(Response::content(Bytes::from(vec![1u8; 64]))), t(0));
        let (entries, bytes) = p.cache_usage();
        assert!(
            bytes <= 350 && entries <= 4,
            "{entries} entries, {bytes} bytes"
        );
    }
}

#[test]
fn a_proxy_with_no_room_forwards_everything() {
    let mut p = Proxy::new(CacheLimits {
        max_entries: 0,
        ..CacheLimits::default()
    });
    let o = proxy_uri("coap://10.0.0.1/a");
    let f = forward(&mut p, &o, "coap://10.0.0.1/a", t(0));
    p.finish(f, Ok(content(b"x")), t(0));
    forward(
        &mut p,
        &o,
        "coap://10.0.0.1/a",
        t(0) + Duration::from_millis(1),
    );
}

/// Starts an observe registration.
fn observe(p: &mut Proxy, uri: &str) -> ObserveStart {
    let mut options = proxy_uri(uri);
    options.set_observe(0);
    p.start_observe(uri, Code::GET, &options, &Bytes::new(), target(uri), t(0))
}

fn notification(body: &'static [u8], seq: u32) -> Response {
    let mut r = content(body);
    r.options.set_observe(seq);
    r
}

#[test]
fn one_observation_of_the_origin_serves_every_observer_of_a_target() {
    let mut p = Proxy::new(CacheLimits {
        max_relays: 1,
        ..CacheLimits::default()
    });
    let uri = "coap://10.0.0.1/obs";
    let key = observe_key(&proxy_uri(uri)).unwrap();
    assert_eq!(key, uri);

    // The first registration opens an observation of the origin: Observe is the origin
    // leg's own (the client adds it), Hop-Limit is added as for any forwarded request.
    let ObserveStart::Observe(f) = observe(&mut p, uri) else {
        panic!("expected an observation of the origin");
    };
    assert_eq!(f.uri().to_string(), uri);
    assert_eq!(f.options().observe(), None);
    assert_eq!(f.options().get_uint(OptionNumber::HOP_LIMIT), Some(16));
    // A second one before the origin answered waits for that answer.
    assert!(matches!(observe(&mut p, uri), ObserveStart::Wait));
    assert!(p.relay_pending(&key));
    // So is one for another target while the table is full.
    assert!(matches!(
        observe(&mut p, "coap://10.0.0.1/other"),
        ObserveStart::Plain(_)
    ));

    // Notifications pass on without the origin's Observe (the server sets its own) and the
    // latest answers later registrations, marked with Observe so that they register.
    let first = p.relay_notification(&key, Ok(notification(b"1", 7)));
    assert!(!p.relay_pending(&key));
    assert_eq!((first.code, first.options.observe()), (Code::CONTENT, None));
    let second = p.relay_notification(&key, Ok(notification(b"2", 8)));
    assert_eq!(&second.payload[..], b"2");
    let ObserveStart::Answer(joined) = observe(&mut p, uri) else {
        panic!("expected an answer from the relayed observation");
    };
    assert_eq!(
        (&joined.payload[..], joined.options.observe()),
        (&b"2"[..], Some(0))
    );
    assert_eq!(p.stats().relays_opened, 1);
    assert_eq!(p.stats().notifications, 2);

    // An error ends the observers' observations and leaves nothing to answer with: a
    // registration waits for the relay to end.
    let gone = p.relay_notification(&key, Err(UpstreamError::Timeout));
    assert_eq!(gone.code, Code::GATEWAY_TIMEOUT);
    assert!(matches!(observe(&mut p, uri), ObserveStart::Wait));
    // Once ended, the next registration opens a new observation.
    p.relay_end(&key);
    assert_eq!(p.relays(), 0);
    assert!(matches!(observe(&mut p, uri), ObserveStart::Observe(_)));
    assert_eq!(p.stats().relays_opened, 2);
}

#[test]
fn a_relayed_notification_with_an_unsafe_unknown_option_is_a_bad_gateway() {
    let mut p = Proxy::default();
    let uri = "coap://10.0.0.1/obs";
    assert!(matches!(observe(&mut p, uri), ObserveStart::Observe(_)));
    let mut odd = notification(b"x", 1);
    odd.options.push(OptionNumber(65002), &[1]);
    assert_eq!(p.relay_notification(uri, Ok(odd)).code, Code::BAD_GATEWAY);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One step of traffic through a proxy.
    #[derive(Clone, Debug)]
    enum Step {
        /// A request for resource `r` (GET or, when `put`, PUT) answered with `code`, a body of
        /// `len` bytes, `max_age` (None: absent) and an ETag of `etag`, `wait_ms` later.
        Request {
            r: u8,
            put: bool,
            code: u8,
            len: usize,
            max_age: Option<u32>,
            etag: Option<u8>,
            wait_ms: u64,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0u8..12,
            any::<bool>(),
            prop::sample::select(vec![0x45u8, 0x43, 0x44, 0x84, 0xa3, 0x41]),
            0usize..400,
            prop::option::of(0u32..20),
            prop::option::of(0u8..3),
            0u64..30_000,
        )
            .prop_map(
                |(r, put, code, len, max_age, etag, wait_ms)| Step::Request {
                    r,
                    put,
                    code,
                    len,
                    max_age,
                    etag,
                    wait_ms,
                },
            )
    }

    proptest! {
        /// Whatever the traffic, the cache stays within its limits, its byte count is the sum
        /// of its entries' sizes, its LRU index names exactly its entries, and no stored
        /// answer is served with a Max-Age beyond what is left of the original.
        #[test]
        fn the_cache_keeps_its_bounds_and_its_books(
            steps in prop::collection::vec(step(), 1..120),
            max_entries in 0usize..6,
            max_bytes in 0usize..1500,
        ) {
            let limits = CacheLimits {
                max_entries,
                max_bytes,
                max_entry_bytes: 600,
                ..CacheLimits::default()
            };
            let mut p = Proxy::new(limits);
            let mut now = Instant::ZERO;
            for Step::Request { r, put, code, len, max_age, etag, wait_ms } in steps {
                now += Duration::from_millis(wait_ms);
                let uri = alloc::format!("coap://10.0.0.1/{r}");
                let method = if put { Code::PUT } else { Code::GET };
                let start = p.start(method, &proxy_uri(&uri), &Bytes::new(), target(&uri), now);
                match start {
                    Start::Answer(answer) => {
                        prop_assert!(!put, "only a GET is answered from the cache");
                        // At most the largest Max-Age given (19), or the default of 60 when absent.
                        prop_assert!(answer.options.max_age().is_some_and(|m| m <= 60));
                    }
                    Start::Forward(f) => {
                        let mut response = Response::new(Code::from_u8(code))
                            .with_payload(Bytes::from(vec![7u8; len]));
                        if let Some(m) = max_age {
                            response = response.with_max_age(m);
                        }
                        if let Some(e) = etag {
                            response = response.with_option(OptionNumber::ETAG, &[e]);
                        }
                        let answer = p.finish(f, Ok(response), now);
                        prop_assert!(answer.code.is_response());
                    }
                }
                let c = &p.cache;
                prop_assert!(c.entries.len() <= max_entries);
                prop_assert!(c.bytes <= max_bytes);
                prop_assert_eq!(c.bytes, c.entries.values().map(|e| e.size).sum::<usize>());
                prop_assert_eq!(c.lru.len(), c.entries.len());
                for (tick, key) in &c.lru {
                    prop_assert_eq!(c.entries.get(key).map(|e| e.used), Some(*tick));
                }
            }
        }
    }
}

#[test]
fn a_reverse_proxy_translates_locations_into_its_own_namespace() {
    let mut p = Proxy::default();
    let base = target("coap://10.0.0.1/api/v1");
    let uri = reverse_target(&base, ["items"], []).unwrap();
    let created = |f: Forward, p: &mut Proxy, location: &[&str]| {
        let mut r = Response::new(Code::CREATED);
        for segment in location {
            r.options.push_location_path(segment);
        }
        let r = p.finish(f, Ok(r), t(0));
        r.options
            .location_path()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let start = |p: &mut Proxy| {
        let Start::Forward(mut f) = p.start(
            Code::POST,
            &Options::new(),
            &Bytes::new(),
            uri.clone(),
            t(0),
        ) else {
            panic!("a POST is forwarded");
        };
        f.map_locations(base.path(), ["store"]);
        f
    };
    // Served here as /store/...: /api/v1/items/7 becomes /store/items/7.
    let f = start(&mut p);
    assert_eq!(
        created(f, &mut p, &["api", "v1", "items", "7"]),
        ["store", "items", "7"]
    );
    // A location outside the mapped part of the origin is left alone.
    let f = start(&mut p);
    assert_eq!(created(f, &mut p, &["other", "1"]), ["other", "1"]);
}
