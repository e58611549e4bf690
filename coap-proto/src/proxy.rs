//! CoAP-to-CoAP proxying with a response cache (RFC 7252 §5.6, §5.7), as a pure state machine.
//!
//! A [`Proxy`] does not send anything. For each request a proxy receives, the host asks
//! [`Proxy::start`], which either answers at once (from the cache, or with an error the RFC
//! prescribes) or says what to [`Forward`] to the origin server. The host sends that request
//! with its client, and hands the outcome to [`Proxy::finish`], which updates the cache and
//! gives the response for the proxy's client. Time is passed in, as everywhere in this crate.
//!
//! The request's destination comes from one of two places:
//!
//! * a **forward proxy** takes it from the request's Proxy-Uri, or Proxy-Scheme with the
//!   Uri-* options ([`forward_target`], RFC 7252 §5.7.2);
//! * a **reverse proxy** maps a part of its own namespace onto an origin server
//!   ([`reverse_target`], §5.7.3).
//!
//! What is forwarded (§5.7.1): every option the proxy does not recognize but that is
//! Safe-to-Forward; an unrecognized Unsafe option in a request is answered 4.02 Bad Option,
//! and one in a response turns it into 5.02 Bad Gateway. Options that belong to one hop are
//! not forwarded: block-wise transfer (Block1, Block2, Size1, Size2, Request-Tag, Q-Block)
//! is done on each leg by the endpoints themselves, so the proxy sees whole bodies; Observe
//! belongs to each leg too (see below); No-Response applies to the leg it came on. Hop-Limit is decremented, or added with the value 16 (RFC 8768 §3), so that a
//! loop of proxies ends with 5.08.
//!
//! The cache ([`CacheLimits`]) keeps responses to GET and FETCH (the FETCH body is part of the
//! key, RFC 8132 §2) that are cacheable by their code (2.05, 4.xx, 5.xx; §5.9) while their
//! Max-Age lasts (§5.6.1), serves them with the Max-Age reduced by their age (§5.7.1),
//! revalidates a stale 2.05 with its ETag (§5.6.2, §5.9.1.3), answers 2.03 to a client whose
//! ETag matches (§5.10.6.2), and marks what it holds for a resource as not fresh when a 2.01,
//! 2.02 or 2.04 comes back for it (§5.9.1). It is bounded in entries and bytes, and evicts the
//! least recently used entry first.
//!
//! Observations can be relayed (RFC 7641 §5: the proxy is the origin's client and its own
//! clients' server). [`Proxy::start_observe`] turns a registration for a target nobody
//! observes yet into one observation of the origin; the host opens it with its client,
//! passes each notification through [`Proxy::relay_notification`] and hands the result to
//! the observers on its server, which keeps them under the target's URI ([`observe_key`])
//! for a forward proxy, under the local path for a reverse proxy. A
//! registration for a target already relayed is answered with the latest notification and
//! joins the same list, so the origin sees one observer however many clients observe
//! through the proxy; one that comes while the origin's first answer is awaited waits for
//! it. The relays are bounded ([`CacheLimits::max_relays`]); beyond the bound
//! a registration is forwarded as a plain request and its answer carries no Observe.
//!
//! Towards an origin, the host's client is one client like any other: at most NSTART requests
//! in flight (§4.7) and no Message ID reused within EXCHANGE_LIFETIME (§4.4), which caps what
//! one client endpoint can forward to one origin at 65 536 requests per 247 s. The cache is
//! what lets a proxy answer more reads than that.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use bytes::Bytes;

use crate::cache_key::CacheKey;
use crate::msg::{decode_uint, Code, OptionNumber, Options};
use crate::request::Response;
use crate::time::Instant;
use crate::uri::{CoapUri, HostOption, Scheme, UriError};

/// The Hop-Limit a proxy adds to a request that has none (RFC 8768 §3).
pub const DEFAULT_HOP_LIMIT: u8 = 16;

/// Max-Age when a response has none (RFC 7252 §5.10.5).
const DEFAULT_MAX_AGE: u32 = 60;

/// Why a proxy answers a request itself instead of forwarding it. [`ProxyError::response`]
/// is the answer the RFC prescribes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The destination's scheme is not one this proxy forwards to (5.05, RFC 7252 §5.7.2).
    UnsupportedScheme(String),
    /// The proxy is configured not to forward to this destination (5.05, §5.7.2: "unwilling
    /// to act as proxy for the request URI"); holds the destination's host.
    DestinationRefused(String),
    /// The Proxy-Uri (or the URI assembled from Proxy-Scheme and the Uri-* options) is not a
    /// valid CoAP URI (4.02, §5.10.2).
    BadProxyUri(UriError),
    /// Proxy-Uri came with Uri-Host, Uri-Port, Uri-Path or Uri-Query, which §5.10.2 forbids
    /// (4.02), or with Proxy-Scheme.
    ConflictingUriOptions,
    /// The request carries an Unsafe option the proxy does not recognize (4.02, §5.7.1).
    UnsafeOption(OptionNumber),
    /// Proxy-Scheme came without Uri-Host (4.02; see [`forward_target`]).
    NoHost,
    /// Hop-Limit reached zero here (5.08, RFC 8768 §3).
    HopLimitReached,
    /// The path below a reverse proxy's prefix does not make a valid URI on the origin (4.04).
    BadReversePath(UriError),
}

impl ProxyError {
    /// The response code for this error.
    pub fn code(&self) -> Code {
        match self {
            ProxyError::UnsupportedScheme(_) | ProxyError::DestinationRefused(_) => {
                Code::PROXYING_NOT_SUPPORTED
            }
            ProxyError::BadProxyUri(_)
            | ProxyError::ConflictingUriOptions
            | ProxyError::NoHost
            | ProxyError::UnsafeOption(_) => Code::BAD_OPTION,
            ProxyError::HopLimitReached => Code::HOP_LIMIT_REACHED,
            ProxyError::BadReversePath(_) => Code::NOT_FOUND,
        }
    }

    /// The response: the code and a diagnostic payload saying why (RFC 7252 §5.5.2).
    pub fn response(&self) -> Response {
        let mut text = String::new();
        let _ = fmt::write(&mut text, format_args!("{self}"));
        Response::new(self.code()).with_payload(text.into_bytes())
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::UnsupportedScheme(s) => write!(f, "no proxying to {s:?} URIs"),
            ProxyError::DestinationRefused(host) => write!(f, "no proxying to {host}"),
            ProxyError::BadProxyUri(e) => write!(f, "bad proxy URI: {e}"),
            ProxyError::ConflictingUriOptions => {
                f.write_str("Proxy-Uri cannot be combined with Uri-* options or Proxy-Scheme")
            }
            ProxyError::UnsafeOption(n) => write!(f, "unsafe option {} not recognized", n.0),
            ProxyError::NoHost => f.write_str("Proxy-Scheme without Uri-Host"),
            ProxyError::HopLimitReached => f.write_str("hop limit reached"),
            ProxyError::BadReversePath(e) => write!(f, "no such resource on the origin: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl core::error::Error for ProxyError {}

/// The destination of a forward-proxy request (RFC 7252 §5.7.2): from Proxy-Uri, or from
/// Proxy-Scheme with Uri-Host, Uri-Port, Uri-Path and Uri-Query. `None` if the request has
/// neither Proxy-Uri nor Proxy-Scheme: it is for the proxy itself.
///
/// With Proxy-Scheme, a missing Uri-Port means the scheme's default port. A missing Uri-Host
/// would name the proxy itself (§6.5 takes the request's destination), which §5.7.2 says to
/// treat as a local request; a proxy route cannot hand it back to the router, so it is
/// answered 4.02 ([`ProxyError::NoHost`]) instead of being forwarded to the proxy.
pub fn forward_target(options: &Options) -> Result<Option<CoapUri>, ProxyError> {
    let uri = if let Some(value) = options.get(OptionNumber::PROXY_URI) {
        let uri_options = [
            OptionNumber::URI_HOST,
            OptionNumber::URI_PORT,
            OptionNumber::URI_PATH,
            OptionNumber::URI_QUERY,
            OptionNumber::PROXY_SCHEME,
        ];
        if uri_options.iter().any(|n| options.contains(*n)) {
            return Err(ProxyError::ConflictingUriOptions);
        }
        let text = core::str::from_utf8(value)
            .map_err(|_| ProxyError::BadProxyUri(UriError::InvalidUtf8))?;
        CoapUri::parse(text)
    } else if let Some(value) = options.get(OptionNumber::PROXY_SCHEME) {
        let scheme = match value.to_ascii_lowercase().as_slice() {
            b"coap" => Scheme::Coap,
            b"coaps" => Scheme::Coaps,
            other => {
                return Err(ProxyError::UnsupportedScheme(
                    String::from_utf8_lossy(other).into_owned(),
                ))
            }
        };
        if !options.contains(OptionNumber::URI_HOST) {
            return Err(ProxyError::NoHost);
        }
        let unspecified = core::net::SocketAddr::from(([0, 0, 0, 0], scheme.default_port()));
        CoapUri::from_options(options, scheme, unspecified)
    } else {
        return Ok(None);
    };
    let uri = uri.map_err(|e| match e {
        UriError::UnsupportedScheme(s) => ProxyError::UnsupportedScheme(s),
        e => ProxyError::BadProxyUri(e),
    })?;
    if uri.scheme() != Scheme::Coap {
        // No DTLS here: a coaps destination cannot be reached (§5.7.2: 5.05).
        return Err(ProxyError::UnsupportedScheme(uri.scheme().as_str().into()));
    }
    Ok(Some(uri))
}

/// The destination of a reverse-proxy request (RFC 7252 §5.7.3): `base` (the origin and a
/// path on it) followed by the request's path segments below the proxy's prefix, `rest`, and
/// the request's query arguments.
pub fn reverse_target<'a>(
    base: &CoapUri,
    rest: impl IntoIterator<Item = &'a str>,
    query: impl IntoIterator<Item = &'a str>,
) -> Result<CoapUri, ProxyError> {
    let mut uri = base.clone();
    for segment in rest {
        uri.push_path(segment).map_err(ProxyError::BadReversePath)?;
    }
    for arg in query {
        uri.push_query(arg).map_err(ProxyError::BadReversePath)?;
    }
    Ok(uri)
}

/// How large the cache may grow. A limit of 0 turns caching off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// The most responses kept. Default 1024.
    pub max_entries: usize,
    /// The most bytes kept: keys, options and bodies. Default 4 MiB.
    pub max_bytes: usize,
    /// The largest single response kept; larger ones are forwarded but not stored. Default
    /// 64 KiB.
    pub max_entry_bytes: usize,
    /// The most origin resources observed on clients' behalf at once (see
    /// [`Proxy::start_observe`]); each keeps its latest notification. Default 64.
    pub max_relays: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: 1024,
            max_bytes: 4 << 20,
            max_entry_bytes: 64 << 10,
            max_relays: 64,
        }
    }
}

/// What a proxy has done, counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Requests answered from the cache without contacting the origin.
    pub hits: u64,
    /// Requests forwarded with no usable stored response.
    pub misses: u64,
    /// Stale responses revalidated with the origin (2.03 Valid came back).
    pub revalidated: u64,
    /// Responses stored.
    pub stored: u64,
    /// Entries evicted to stay within [`CacheLimits`].
    pub evicted: u64,
    /// Requests answered with an error by the proxy itself ([`ProxyError`], 5.02, 5.04).
    pub errors: u64,
    /// Observations of origin resources opened on clients' behalf.
    pub relays_opened: u64,
    /// Notifications passed from origins to observers ([`Proxy::relay_notification`]).
    pub notifications: u64,
}

/// A proxy: the rules of §5.7 and a cache. See the [module documentation](self).
#[derive(Debug)]
pub struct Proxy {
    cache: Cache,
    stats: ProxyStats,
    /// Observations relayed, by [`observe_key`]: the latest notification, or `None` while
    /// the origin's first answer is awaited.
    relays: BTreeMap<String, Option<Response>>,
    max_relays: usize,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy::new(CacheLimits::default())
    }
}

/// What [`Proxy::start_observe`] decided for an observe registration.
// Made once per request and matched at once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ObserveStart {
    /// Answer the client with this. An observation already relayed answers with its latest
    /// notification, which carries an Observe option: the host's server then puts the
    /// client on the list of [`observe_key`]. An error carries none.
    Answer(Response),
    /// Observe the origin with this request (the host's client adds Observe), pass its
    /// first answer and every notification after it to [`Proxy::relay_notification`], and
    /// end with [`Proxy::relay_end`].
    Observe(Forward),
    /// Not relayed: the relay table is full. Serve the request as a plain one.
    Plain(Start),
    /// Another registration for the same target is waiting for the origin's first answer:
    /// wait until [`Proxy::relay_pending`] is false, then start again (the registration then
    /// joins the observation, or opens a new one if that one failed).
    Wait,
}

/// The name under which a forward proxy's server keeps the observers of a relayed target:
/// the target URI from Proxy-Uri, or Proxy-Scheme and the Uri-* options ([`forward_target`]),
/// in its normal form. `None` when the request names no valid target.
pub fn observe_key(options: &Options) -> Option<String> {
    forward_target(options)
        .ok()
        .flatten()
        .map(|uri| alloc::string::ToString::to_string(&uri))
}

/// What [`Proxy::start`] decided.
// Made once per request and matched at once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Start {
    /// Answer the client with this response; nothing goes to the origin.
    Answer(Response),
    /// Send this request to the origin, then call [`Proxy::finish`].
    Forward(Forward),
}

/// A request to send to the origin server on a client's behalf.
#[derive(Clone, Debug)]
pub struct Forward {
    method: Code,
    uri: CoapUri,
    options: Options,
    payload: Bytes,
    /// The cache entry this request may fill, for a cacheable method.
    key: Option<Vec<u8>>,
    /// The resource, for marking stored responses not fresh.
    resource: Vec<u8>,
    /// The client's own ETags (§5.10.6.2).
    client_etags: Vec<Vec<u8>>,
    /// The ETag of the stale entry being revalidated.
    validating: Option<Vec<u8>>,
    /// For a reverse proxy: the origin's path prefix and the local prefix it is served under.
    locations: Option<(Vec<String>, Vec<String>)>,
}

impl Forward {
    /// For a reverse proxy: the origin's resources under `origin_prefix` are served here under
    /// `local_prefix`, so a Location-Path in the answer (a 2.01 Created) that starts with
    /// `origin_prefix` is rewritten to start with `local_prefix` (RFC 7252 §5.7.3: the reverse
    /// proxy translates between the namespaces). Locations elsewhere on the origin pass
    /// unchanged.
    pub fn map_locations<S: Into<String>>(
        &mut self,
        origin_prefix: &[String],
        local_prefix: impl IntoIterator<Item = S>,
    ) {
        let local = local_prefix.into_iter().map(Into::into).collect();
        self.locations = Some((origin_prefix.to_vec(), local));
    }

    /// The method.
    pub fn method(&self) -> Code {
        self.method
    }

    /// The origin resource: scheme, host, port, path and query.
    pub fn uri(&self) -> &CoapUri {
        &self.uri
    }

    /// The options to send besides those of the URI (Uri-Host, Uri-Port, Uri-Path and
    /// Uri-Query come from [`Forward::uri`]).
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The body.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// Why the origin gave no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The request timed out (5.04 Gateway Timeout, RFC 7252 §5.7.1).
    Timeout,
    /// The origin could not be reached, reset the request, or answered with something the
    /// proxy cannot process (5.02 Bad Gateway).
    Failed,
    /// The proxy's client has as many requests under way as it may (5.03 Service Unavailable,
    /// with a Max-Age of [`BUSY_RETRY_AFTER`] seconds saying when to try again, §5.9.3.4).
    Busy,
}

/// The Max-Age of the 5.03 a proxy answers while its client is busy.
pub const BUSY_RETRY_AFTER: u32 = 2;

impl Proxy {
    /// A proxy whose cache keeps within `limits`.
    pub fn new(limits: CacheLimits) -> Proxy {
        Proxy {
            cache: Cache::new(limits),
            stats: ProxyStats::default(),
            relays: BTreeMap::new(),
            max_relays: limits.max_relays,
        }
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            evicted: self.cache.evicted,
            ..self.stats
        }
    }

    /// The number of responses in the cache and the bytes they take.
    pub fn cache_usage(&self) -> (usize, usize) {
        (self.cache.entries.len(), self.cache.bytes)
    }

    /// How many origin resources are observed on clients' behalf.
    pub fn relays(&self) -> usize {
        self.relays.len()
    }

    /// Starts serving an observe registration (a GET or FETCH with Observe = 0) for
    /// `target`, whose observers the host's server keeps under `key`: [`observe_key`] for a
    /// forward proxy, the local path for a reverse proxy's route. See [`ObserveStart`].
    pub fn start_observe(
        &mut self,
        key: &str,
        method: Code,
        options: &Options,
        payload: &Bytes,
        target: CoapUri,
        now: Instant,
    ) -> ObserveStart {
        match self.relays.get(key) {
            Some(Some(latest)) => {
                // §5 of RFC 7641: the proxy answers from the observation it holds.
                let mut answer = latest.clone();
                answer.options.set_observe(0);
                return ObserveStart::Answer(answer);
            }
            Some(None) => return ObserveStart::Wait,
            None if self.relays.len() >= self.max_relays => {
                return ObserveStart::Plain(self.start(method, options, payload, target, now))
            }
            None => {}
        }
        match forwarded_options(options) {
            Ok((forwarded, client_etags)) => {
                self.relays.insert(String::from(key), None);
                self.stats.relays_opened += 1;
                let resource = resource_key(&target);
                ObserveStart::Observe(Forward {
                    method,
                    uri: target,
                    options: forwarded,
                    payload: payload.clone(),
                    key: None,
                    resource,
                    client_etags,
                    validating: None,
                    locations: None,
                })
            }
            Err(e) => {
                self.stats.errors += 1;
                ObserveStart::Answer(e.response())
            }
        }
    }

    /// Whether the relayed observation `key` has no representation to answer with: it waits
    /// for the origin's first answer, or its last notification was an error and it is about
    /// to end.
    pub fn relay_pending(&self, key: &str) -> bool {
        matches!(self.relays.get(key), Some(None))
    }

    /// Passes a notification of the relayed observation `key` (its first answer included)
    /// from the origin to the observers: returns the representation for them, with the
    /// options §5.7.1 lets through, and keeps it as the answer for clients who register
    /// later. A missing answer becomes 5.04 or 5.02, as in [`finish`](Proxy::finish); an
    /// error representation ends the observers' observations (RFC 7641 §4.2) and leaves
    /// nothing to answer later registrations with.
    pub fn relay_notification(
        &mut self,
        key: &str,
        outcome: Result<Response, UpstreamError>,
    ) -> Response {
        let response = match outcome {
            Ok(upstream) => downstream(upstream).unwrap_or_else(|| {
                self.stats.errors += 1;
                Response::new(Code::BAD_GATEWAY)
            }),
            Err(e) => {
                self.stats.errors += 1;
                upstream_error(e)
            }
        };
        if let Some(latest) = self.relays.get_mut(key) {
            self.stats.notifications += 1;
            *latest = response.code.is_success().then(|| response.clone());
        }
        response
    }

    /// Ends the relayed observation `key`: the host's client stopped observing the origin.
    /// The next registration for the target opens a new one.
    pub fn relay_end(&mut self, key: &str) {
        self.relays.remove(key);
    }

    /// Starts serving a request with `method`, `options` and `payload` that is to go to
    /// `target` (from [`forward_target`] or [`reverse_target`]).
    pub fn start(
        &mut self,
        method: Code,
        options: &Options,
        payload: &Bytes,
        target: CoapUri,
        now: Instant,
    ) -> Start {
        match self.prepare(method, options, payload, target, now) {
            Ok(start) => start,
            Err(e) => {
                self.stats.errors += 1;
                Start::Answer(e.response())
            }
        }
    }

    fn prepare(
        &mut self,
        method: Code,
        options: &Options,
        payload: &Bytes,
        target: CoapUri,
        now: Instant,
    ) -> Result<Start, ProxyError> {
        let (mut forwarded, client_etags) = forwarded_options(options)?;

        let resource = resource_key(&target);
        let key = (method == Code::GET || method == Code::FETCH).then(|| {
            let mut keyed = forwarded.clone();
            target.to_options(&mut keyed, HostOption::Always);
            // Hop-Limit is NoCacheKey-like in effect: the same request from nearer or farther
            // is the same request.
            let mut key = CacheKey::new(method, &keyed, &[OptionNumber::HOP_LIMIT])
                .as_bytes()
                .to_vec();
            if method == Code::FETCH {
                // RFC 8132 §2: the body is part of the key.
                key.extend_from_slice(payload);
            }
            key
        });

        let mut validating = None;
        if let Some(key) = &key {
            match self.cache.lookup(key, now) {
                Lookup::Fresh(entry) => {
                    self.stats.hits += 1;
                    return Ok(Start::Answer(entry.answer(&client_etags, now)));
                }
                Lookup::Stale(etag) => validating = Some(etag),
                Lookup::Miss => {}
            }
        }
        self.stats.misses += 1;
        for etag in &client_etags {
            forwarded.push(OptionNumber::ETAG, etag);
        }
        if let Some(etag) = &validating {
            if !client_etags.contains(etag) {
                forwarded.push(OptionNumber::ETAG, etag);
            }
        }
        Ok(Start::Forward(Forward {
            method,
            uri: target,
            options: forwarded,
            payload: payload.clone(),
            key,
            resource,
            client_etags,
            validating,
            locations: None,
        }))
    }

    /// Finishes a forwarded request with the origin's response (its code, options and body)
    /// or the reason there is none, and returns the response for the proxy's client.
    pub fn finish(
        &mut self,
        forward: Forward,
        outcome: Result<Response, UpstreamError>,
        now: Instant,
    ) -> Response {
        let upstream = match outcome {
            Ok(response) => response,
            Err(e) => {
                self.stats.errors += 1;
                return upstream_error(e);
            }
        };
        let Some(mut response) = downstream(upstream) else {
            self.stats.errors += 1;
            return Response::new(Code::BAD_GATEWAY);
        };
        if let Some((origin, local)) = &forward.locations {
            map_location_path(&mut response.options, origin, local);
        }
        let code = response.code;

        if matches!(code, Code::CREATED | Code::DELETED | Code::CHANGED) {
            // §5.9.1.1, §5.9.1.2, §5.9.1.4: what is stored for the resource is not fresh.
            self.cache.mark_stale(&forward.resource);
        }
        let Some(key) = forward.key else {
            return response;
        };
        if code == Code::VALID {
            let ours = forward
                .validating
                .as_deref()
                .is_some_and(|tag| response.options.etag() == Some(tag));
            // §5.9.1.3: refresh the stored response and serve it.
            if let Some(entry) = ours
                .then(|| self.cache.revalidate(&key, &response, now))
                .flatten()
            {
                self.stats.revalidated += 1;
                return entry.answer(&forward.client_etags, now);
            }
            // One of the client's own ETags: its business (§5.10.6.2).
            return response;
        }
        if is_cacheable(code) {
            let max_age = response.options.max_age().unwrap_or(DEFAULT_MAX_AGE);
            if max_age == 0 {
                // §5.6.1: a new response replaces the stored one, and this one may not be
                // stored.
                self.cache.remove(&key);
            } else if self
                .cache
                .store(key, &forward.resource, &response, max_age, now)
            {
                self.stats.stored += 1;
            }
        }
        response
    }
}

/// The options of a request to forward, with Hop-Limit decremented or added (RFC 8768 §3),
/// and apart from them the ETags the client holds; or why the request cannot be forwarded.
fn forwarded_options(options: &Options) -> Result<(Options, Vec<Vec<u8>>), ProxyError> {
    let mut forwarded = Options::new();
    let mut client_etags: Vec<Vec<u8>> = Vec::new();
    let mut hop_limit = None;
    for (number, value) in options.iter() {
        match classify_request_option(number) {
            RequestOption::Consumed => {}
            RequestOption::Forward => forwarded.push(number, value),
            RequestOption::ETag => client_etags.push(value.to_vec()),
            RequestOption::HopLimit => hop_limit = decode_uint(value),
            RequestOption::Refuse => return Err(ProxyError::UnsafeOption(number)),
        }
    }
    // Decrement, and refuse to go on at zero.
    let hops = match hop_limit {
        None => DEFAULT_HOP_LIMIT,
        Some(0 | 1) => return Err(ProxyError::HopLimitReached),
        Some(n) => u8::try_from(n - 1).unwrap_or(u8::MAX),
    };
    forwarded.set_uint(OptionNumber::HOP_LIMIT, u32::from(hops));
    Ok((forwarded, client_etags))
}

/// The origin's response as the proxy passes it on: its code and body, and the options
/// §5.7.1 lets through. `None` if it carries an unrecognized Unsafe option (5.02).
fn downstream(upstream: Response) -> Option<Response> {
    let mut options = Options::new();
    for (number, value) in upstream.options.iter() {
        match classify_response_option(number) {
            ResponseOption::Drop => {}
            ResponseOption::Forward => options.push(number, value),
            ResponseOption::Refuse => return None,
        }
    }
    Some(Response {
        code: upstream.code,
        options,
        payload: upstream.payload,
        message_type: None,
    })
}

/// The answer for a request the origin did not answer (§5.7.1).
fn upstream_error(e: UpstreamError) -> Response {
    match e {
        UpstreamError::Timeout => Response::new(Code::GATEWAY_TIMEOUT),
        UpstreamError::Failed => Response::new(Code::BAD_GATEWAY),
        UpstreamError::Busy => {
            Response::new(Code::SERVICE_UNAVAILABLE).with_max_age(BUSY_RETRY_AFTER)
        }
    }
}

/// What a proxy does with a request option.
enum RequestOption {
    /// Used by the proxy itself or meaningful for one hop only: not forwarded.
    Consumed,
    /// Forwarded as it is.
    Forward,
    /// An ETag the client holds.
    ETag,
    /// Hop-Limit, which the proxy rewrites.
    HopLimit,
    /// An Unsafe option the proxy does not recognize: 4.02.
    Refuse,
}

/// Options that belong to one leg of a proxied exchange, in requests and responses alike:
/// each leg does its own block-wise transfer (RFC 7959, RFC 9175, RFC 9177) and keeps its own
/// Observe sequence (RFC 7641 §5).
const ONE_LEG: &[OptionNumber] = &[
    OptionNumber::OBSERVE,
    OptionNumber::BLOCK1,
    OptionNumber::BLOCK2,
    OptionNumber::SIZE1,
    OptionNumber::SIZE2,
    OptionNumber::Q_BLOCK1,
    OptionNumber::Q_BLOCK2,
    OptionNumber::REQUEST_TAG,
];

/// Whether the proxy recognizes `number`, or may forward it without doing so (§5.7.1).
fn forwardable(number: OptionNumber) -> bool {
    number.definition().is_some() || !number.is_unsafe_to_forward()
}

fn classify_request_option(number: OptionNumber) -> RequestOption {
    match number {
        n if ONE_LEG.contains(&n) => RequestOption::Consumed,
        // The destination (turned into the URI of the forwarded request), and options that
        // mean nothing in a request or apply to the client's leg (No-Response, RFC 7967).
        OptionNumber::URI_HOST
        | OptionNumber::URI_PORT
        | OptionNumber::URI_PATH
        | OptionNumber::URI_QUERY
        | OptionNumber::PROXY_URI
        | OptionNumber::PROXY_SCHEME
        | OptionNumber::NO_RESPONSE
        | OptionNumber::MAX_AGE
        | OptionNumber::LOCATION_PATH
        | OptionNumber::LOCATION_QUERY => RequestOption::Consumed,
        OptionNumber::ETAG => RequestOption::ETag,
        OptionNumber::HOP_LIMIT => RequestOption::HopLimit,
        n if forwardable(n) => RequestOption::Forward,
        _ => RequestOption::Refuse,
    }
}

/// What a proxy does with a response option.
enum ResponseOption {
    Drop,
    Forward,
    Refuse,
}

fn classify_response_option(number: OptionNumber) -> ResponseOption {
    match number {
        n if ONE_LEG.contains(&n) => ResponseOption::Drop,
        n if forwardable(n) => ResponseOption::Forward,
        _ => ResponseOption::Refuse,
    }
}

/// Rewrites the Location-Path of `options` from under `origin` to under `local`, if it is
/// under `origin`.
fn map_location_path(options: &mut Options, origin: &[String], local: &[String]) {
    let segments: Vec<&[u8]> = options.get_all(OptionNumber::LOCATION_PATH).collect();
    if segments.is_empty()
        || segments.len() < origin.len()
        || !origin
            .iter()
            .zip(&segments)
            .all(|(o, s)| o.as_bytes() == *s)
    {
        return;
    }
    let rest: Vec<Vec<u8>> = segments
        .get(origin.len()..)
        .unwrap_or_default()
        .iter()
        .map(|s| s.to_vec())
        .collect();
    options.remove(OptionNumber::LOCATION_PATH);
    for segment in local {
        options.push(OptionNumber::LOCATION_PATH, segment.as_bytes());
    }
    for segment in &rest {
        options.push(OptionNumber::LOCATION_PATH, segment);
    }
}

/// Whether a response with `code` may be stored (RFC 7252 §5.9): 2.05, and the error
/// classes. Unrecognized success codes must not be.
fn is_cacheable(code: Code) -> bool {
    code == Code::CONTENT || code.is_client_error() || code.is_server_error()
}

/// The resource a request is for, to find what is stored for it whatever the method and
/// the other options.
fn resource_key(uri: &CoapUri) -> Vec<u8> {
    let mut opts = Options::new();
    uri.to_options(&mut opts, HostOption::Always);
    opts.wire().to_vec()
}

// ------------------------------------------------------------------------------------------
// The cache
// ------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Cache {
    limits: CacheLimits,
    entries: BTreeMap<Vec<u8>, Entry>,
    /// Least recently used first: use tick to key.
    lru: BTreeMap<u64, Vec<u8>>,
    tick: u64,
    bytes: usize,
    /// Entries evicted to stay within the limits, since the cache was made.
    evicted: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    resource: Vec<u8>,
    code: Code,
    /// The response's options without Max-Age.
    options: Options,
    payload: Bytes,
    stored: Instant,
    max_age: u32,
    used: u64,
    size: usize,
}

enum Lookup<'a> {
    Fresh(&'a Entry),
    /// Stored but not fresh, with the ETag to revalidate it with.
    Stale(Vec<u8>),
    Miss,
}

impl Entry {
    /// Seconds of freshness left at `now` (0 when stale).
    fn remaining(&self, now: Instant) -> u32 {
        let age = now.saturating_duration_since(self.stored).as_secs();
        u32::try_from(u64::from(self.max_age).saturating_sub(age)).unwrap_or(0)
    }

    fn is_fresh(&self, now: Instant) -> bool {
        self.remaining(now) > 0
    }

    /// The stored response as an answer at `now`: 2.03 if the client holds its ETag
    /// (§5.10.6.2), else the response; either way with Max-Age lowered by the time it spent
    /// here (§5.7.1).
    fn answer(&self, client_etags: &[Vec<u8>], now: Instant) -> Response {
        let etag = self.options.etag();
        let mut response = match etag {
            Some(tag) if self.code == Code::CONTENT && client_etags.iter().any(|t| t == tag) => {
                let mut r = Response::new(Code::VALID);
                r.options.set_etag(tag);
                r
            }
            _ => Response {
                code: self.code,
                options: self.options.clone(),
                payload: self.payload.clone(),
                message_type: None,
            },
        };
        response.options.set_max_age(self.remaining(now));
        response
    }
}

impl Cache {
    fn new(limits: CacheLimits) -> Cache {
        Cache {
            limits,
            ..Cache::default()
        }
    }

    fn touch(&mut self, key: &[u8]) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(key) {
            self.lru.remove(&entry.used);
            entry.used = tick;
            self.lru.insert(tick, key.to_vec());
        }
    }

    fn lookup(&mut self, key: &[u8], now: Instant) -> Lookup<'_> {
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        if !entry.is_fresh(now) {
            // Only a 2.05 can be revalidated (4.xx and 5.xx cannot, §5.9.2, §5.9.3).
            return match entry.options.etag() {
                Some(tag) if entry.code == Code::CONTENT => Lookup::Stale(tag.to_vec()),
                _ => Lookup::Miss,
            };
        }
        self.touch(key);
        match self.entries.get(key) {
            Some(entry) => Lookup::Fresh(entry),
            None => Lookup::Miss,
        }
    }

    fn store(
        &mut self,
        key: Vec<u8>,
        resource: &[u8],
        response: &Response,
        max_age: u32,
        now: Instant,
    ) -> bool {
        self.remove(&key);
        let mut options = response.options.clone();
        options.remove(OptionNumber::MAX_AGE);
        let size = key.len() + resource.len() + options.wire().len() + response.payload.len();
        if self.limits.max_entries == 0
            || size > self.limits.max_entry_bytes
            || size > self.limits.max_bytes
        {
            return false;
        }
        while self.entries.len() >= self.limits.max_entries
            || self.bytes + size > self.limits.max_bytes
        {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(old) = self.entries.remove(&oldest) {
                self.bytes -= old.size;
                self.evicted += 1;
            }
        }
        self.tick += 1;
        self.lru.insert(self.tick, key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                resource: resource.to_vec(),
                code: response.code,
                options,
                payload: response.payload.clone(),
                stored: now,
                max_age,
                used: self.tick,
                size,
            },
        );
        true
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.entries.remove(key) {
            self.lru.remove(&old.used);
            self.bytes -= old.size;
        }
    }

    /// §5.9.1.3: a 2.03 for the stored response's ETag makes it fresh again for the new
    /// Max-Age, with the Safe-to-Forward options of the 2.03 replacing those it had.
    fn revalidate(&mut self, key: &[u8], valid: &Response, now: Instant) -> Option<&Entry> {
        let entry = self.entries.get_mut(key)?;
        entry.max_age = valid.options.max_age().unwrap_or(DEFAULT_MAX_AGE);
        entry.stored = now;
        let mut replaced: Vec<OptionNumber> = valid
            .options
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !n.is_unsafe_to_forward() && *n != OptionNumber::MAX_AGE)
            .collect();
        replaced.dedup();
        if !replaced.is_empty() {
            let mut options = Options::new();
            for (n, v) in entry.options.iter() {
                if !replaced.contains(&n) {
                    options.push(n, v);
                }
            }
            for (n, v) in valid.options.iter() {
                if replaced.contains(&n) {
                    options.push(n, v);
                }
            }
            let old = entry.options.wire().len();
            let new = options.wire().len();
            entry.options = options;
            entry.size = entry.size.saturating_sub(old) + new;
            self.bytes = self.bytes.saturating_sub(old) + new;
        }
        self.touch(key);
        self.entries.get(key)
    }

    /// Marks every response stored for `resource` as not fresh (§5.9.1).
    fn mark_stale(&mut self, resource: &[u8]) {
        for entry in self.entries.values_mut() {
            if entry.resource == resource {
                entry.max_age = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests;
