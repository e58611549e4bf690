//! `coap plugtest-server`: the resource set of the ETSI CoAP#4 interoperability test
//! descriptions (TD_COAP_CORE, TD_COAP_LINK, TD_COAP_BLOCK, TD_COAP_OBS), laid out as the
//! plugtest servers of that event expose it. `PLUGTEST.md` in this crate lists each resource,
//! its behaviour and the test descriptions it serves.
//!
//! Two settings matter to the test descriptions and are fixed here: blocks of 64 bytes (so
//! every body over 64 bytes, `/.well-known/core` included, travels block-wise) and Confirmable
//! notifications.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coap_proto::resource::Router as LinkTable;
use coap_tokio::{
    CoapError, Code, ContentFormat, IncomingRequest, MessageType, Notifier, OptionNumber,
    ResourceAttributes, Response, Router, Server, ServerHandle,
};

use crate::group::Multicast;
use tokio::task::JoinHandle;

/// The largest body the small resources (`/test`, `/query`, `/separate` ...) return
/// (the plugtest configuration bounds them to 64 bytes).
const SMALL_BODY: usize = 64;

/// Blocks of 64 bytes, as the plugtest servers use them.
const BLOCK_SIZE: usize = 64;

/// Max-Age of the observable resources, in seconds: one notification interval.
const OBS_MAX_AGE: u32 = 5;

/// The observable resources, ticking on their own.
const TICKING: [&str; 4] = ["/obs", "/obs-non", "/obs-large", "/obs-pumping"];

/// Timing of the plugtest server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlugtestOptions {
    /// How often the observable resources change. Default 5 s.
    pub(crate) notify_interval: Duration,
    /// How long `/separate` waits before it answers. Default 1 s (well past the engine's
    /// empty-ACK delay, so the answer is a separate response).
    pub(crate) separate_delay: Duration,
    /// ACK_TIMEOUT (RFC 7252 §4.8). Default 2 s; tests of the retransmission behaviour
    /// shorten it so that a whole give-up sequence takes seconds, not a minute.
    pub(crate) ack_timeout: Duration,
    /// The longest an answer to a multicast request waits (RFC 7252 §8.2). Default 5 s.
    pub(crate) leisure: Duration,
}

impl Default for PlugtestOptions {
    fn default() -> Self {
        PlugtestOptions {
            notify_interval: Duration::from_secs(5),
            separate_delay: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(2),
            leisure: Duration::from_secs(5),
        }
    }
}

impl PlugtestOptions {
    /// The defaults, with `COAP_PLUGTEST_INTERVAL_MS`, `COAP_PLUGTEST_SEPARATE_MS` and
    /// `COAP_PLUGTEST_ACK_TIMEOUT_MS` (whole milliseconds) overriding the notification
    /// interval, the `/separate` delay and ACK_TIMEOUT.
    pub(crate) fn from_env() -> PlugtestOptions {
        let mut options = PlugtestOptions::default();
        let millis = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        if let Some(d) = millis("COAP_PLUGTEST_INTERVAL_MS").filter(|d| !d.is_zero()) {
            options.notify_interval = d;
        }
        if let Some(d) = millis("COAP_PLUGTEST_SEPARATE_MS") {
            options.separate_delay = d;
        }
        if let Some(d) = millis("COAP_PLUGTEST_ACK_TIMEOUT_MS").filter(|d| !d.is_zero()) {
            options.ack_timeout = d;
        }
        options
    }
}

/// Serves the plugtest resources on `bind` until `shutdown` resolves.
pub(crate) async fn run(
    bind: SocketAddr,
    multicast: &Multicast,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut options = PlugtestOptions::from_env();
    options.leisure = multicast.leisure;
    let plugtest = Plugtest::bind(bind, options).await?;
    multicast.join_all(&plugtest.server)?;
    tracing::info!("listening on {}", plugtest.server.local_addr());
    plugtest.serve(shutdown).await
}

/// A bound plugtest server, not serving yet.
struct Plugtest {
    server: Server,
    router: Router,
    tickers: Vec<JoinHandle<()>>,
}

impl Plugtest {
    async fn bind(
        bind: SocketAddr,
        options: PlugtestOptions,
    ) -> Result<Plugtest, Box<dyn Error + Send + Sync>> {
        let mut config = coap_tokio::Config::default();
        config.block_size = BLOCK_SIZE;
        config.ack_timeout = options.ack_timeout;
        config.default_leisure = options.leisure;
        // TD_COAP_OBS_01 expects Confirmable notifications from `/obs`; `/obs-non` asks for
        // Non-confirmable ones per notification (TD_COAP_OBS_02).
        config.notification_type = MessageType::Con;
        let server = Server::builder()
            .config(config)
            .shutdown_grace(Duration::from_secs(2))
            .bind(bind)
            .await?;
        let handle = server.handle();
        let state = Arc::new(State::new(options));
        let router = router(&state, &handle);
        let tickers = TICKING
            .iter()
            .map(|path| tokio::spawn(tick(Arc::clone(&state), handle.notifier(path))))
            .collect();
        Ok(Plugtest {
            server,
            router,
            tickers,
        })
    }

    async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Box<dyn Error + Send + Sync>> {
        let Plugtest {
            server,
            router,
            tickers,
        } = self;
        let result = server.serve_with_shutdown(router, shutdown).await;
        for ticker in tickers {
            ticker.abort();
        }
        result.map_err(Into::into)
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// A stored representation: body and Content-Format.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    body: Bytes,
    format: ContentFormat,
}

/// `/validate`: optional data and the current ETag.
#[derive(Debug, PartialEq, Eq)]
struct Validate {
    data: Option<Stored>,
    etag: Vec<u8>,
}

impl Validate {
    /// The ETag of the resource before anything is stored: one zero byte.
    const INITIAL_ETAG: [u8; 1] = [0];

    fn new() -> Validate {
        Validate {
            data: None,
            etag: Validate::INITIAL_ETAG.to_vec(),
        }
    }

    /// Forgets the data, so the test descriptions can run again.
    fn reset(&mut self) {
        *self = Validate::new();
    }

    /// Whether any If-Match value of the request matches (RFC 7252 §5.10.8.1: an empty
    /// value matches any existing representation).
    fn if_match(&self, values: &[&[u8]]) -> bool {
        values
            .iter()
            .any(|v| *v == self.etag.as_slice() || (v.is_empty() && self.data.is_some()))
    }
}

/// An observable resource whose value a PUT may replace until the next tick.
#[derive(Debug)]
struct Observed {
    body: Bytes,
    format: ContentFormat,
}

/// Everything the resources remember.
struct State {
    options: PlugtestOptions,
    validate: Mutex<Validate>,
    create1: Mutex<Option<Stored>>,
    large_update: Mutex<Stored>,
    large_create: Mutex<(u32, BTreeMap<u32, Stored>)>,
    obs: Mutex<Observed>,
    obs_non: Mutex<Observed>,
    /// `/obs-pumping`: the current body and the generator choosing its size.
    pumping: Mutex<(Bytes, u64)>,
}

impl State {
    fn new(options: PlugtestOptions) -> State {
        let now = clock_text();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x2545_f491_4f6c_dd1d, |d| d.as_nanos() as u64)
            | 1;
        State {
            options,
            validate: Mutex::new(Validate::new()),
            create1: Mutex::new(None),
            large_update: Mutex::new(Stored {
                body: large_body(),
                format: ContentFormat::TEXT_PLAIN,
            }),
            large_create: Mutex::new((0, BTreeMap::new())),
            obs: Mutex::new(Observed {
                body: Bytes::from(now.clone()),
                format: ContentFormat::TEXT_PLAIN,
            }),
            obs_non: Mutex::new(Observed {
                body: Bytes::from(now.clone()),
                format: ContentFormat::TEXT_PLAIN,
            }),
            pumping: Mutex::new((Bytes::from(now), seed)),
        }
    }

    fn observed(&self, path: &str) -> Option<&Mutex<Observed>> {
        match path {
            "/obs" => Some(&self.obs),
            "/obs-non" => Some(&self.obs_non),
            _ => None,
        }
    }
}

/// Locks a mutex, carrying on with the data if a handler panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// The wall-clock time of day (UTC) as `HH:MM:SS`.
fn clock_text() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    time_of_day(secs)
}

/// `HH:MM:SS` of a Unix time.
fn time_of_day(unix_secs: u64) -> String {
    let s = unix_secs % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Cuts `text` to at most `max` bytes, marking a cut with `»` (the result then has exactly
/// `max` bytes when `text` is ASCII).
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let marker = "»";
    let mut end = max.saturating_sub(marker.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(marker);
    text
}

/// The token as lower-case hex.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `Type: 0 (CON)\nCode: 1 (GET)\nMID: 4711`, then `\nToken: <hex>` for a non-empty token:
/// what `/test` and its relatives report about the request.
fn describe(req: &IncomingRequest) -> String {
    let message = req.message();
    let mut text = format!(
        "Type: {} ({})\nCode: {} ({})\nMID: {}",
        message.mtype.to_bits(),
        message.mtype,
        message.code.to_u8(),
        message.code.name().unwrap_or("?"),
        message.message_id,
    );
    if !message.token.is_empty() {
        let _ = write!(text, "\nToken: {}", hex(message.token.as_bytes()));
    }
    text
}

/// A 2.05 text response of at most 64 bytes.
fn small_text(text: String) -> Response {
    Response::content(truncate(text, SMALL_BODY)).with_content_format(ContentFormat::TEXT_PLAIN)
}

/// The 1280-byte body of `/large`: five framed boxes of four 64-byte lines, so 20 blocks of
/// 64 bytes.
fn large_body() -> Bytes {
    let inner = 61;
    let mut out = String::with_capacity(1280);
    for i in 1..=5 {
        let _ = writeln!(out, "/{}\\", "-".repeat(inner));
        let _ = writeln!(out, "|{:^inner$}|", format!("RESOURCE BLOCK NO. {i} OF 5"));
        let _ = writeln!(out, "|{:^inner$}|", "[each line contains 64 bytes]");
        let _ = writeln!(out, "\\{}/", "-".repeat(inner));
    }
    Bytes::from(out)
}

/// The 162-byte body of `/obs-large`: 64 dashes, the time, 64 dashes (three 64-byte blocks).
fn obs_large_body(time: &str) -> String {
    let dashes = "-".repeat(63);
    format!("{dashes}\n{time:<32}\n{dashes}\n")
}

/// One of the three sizes of `/obs-pumping`, chosen by `roll`: half the time 84 bytes, a
/// quarter 164 bytes, a quarter only the 8-byte time; so some notifications need blocks and
/// some do not.
fn pumping_body(time: &str, roll: u64) -> String {
    match roll % 4 {
        0 | 1 => {
            let d = "-".repeat(31);
            format!("{d}\n{time:>19}\n{d}\n")
        }
        2 => {
            let d = "-".repeat(63);
            format!("{d}\n{time:>35}\n{d}\n")
        }
        _ => time.to_owned(),
    }
}

/// A small xorshift step: enough to vary `/obs-pumping`.
fn next_roll(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x >> 32
}

/// A 4-byte ETag of `data` (FNV-1a).
fn etag_of(data: &[u8]) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes()
}

/// 4.06 unless the request's Accept (if any) is `format`.
fn check_accept(req: &IncomingRequest, format: ContentFormat) -> Result<(), CoapError> {
    match req.accept() {
        Some(a) if a != format => Err(CoapError::not_acceptable()
            .with_diagnostic(format!("Content-Format {} only", format.0))),
        _ => Ok(()),
    }
}

/// The request's Content-Format, or 4.00.
fn require_format(req: &IncomingRequest) -> Result<ContentFormat, CoapError> {
    req.content_format()
        .ok_or_else(|| CoapError::bad_request("Content-Format option required"))
}

/// A stored representation as a 2.05 response (Accept checked).
fn stored_response(req: &IncomingRequest, stored: &Stored) -> Result<Response, CoapError> {
    check_accept(req, stored.format)?;
    Ok(Response::content(stored.body.clone()).with_content_format(stored.format))
}

// ---------------------------------------------------------------------------------------------
// Resources

/// `/test`: GET, POST, PUT, DELETE (TD_COAP_CORE_01–08, 10, 12, 15, 18).
fn test_resource(req: &IncomingRequest) -> Response {
    match req.method() {
        Code::GET => small_text(describe(req)).with_max_age(30),
        Code::POST => {
            // CORE_18: several Location-Path options; nothing is actually created.
            let mut rsp = Response::new(Code::CREATED);
            for segment in ["location1", "location2", "location3"] {
                rsp.options
                    .push(OptionNumber::LOCATION_PATH, segment.as_bytes());
            }
            rsp
        }
        // The resource always exists, so "create only if absent" fails (RFC 7252 §5.10.8.2).
        Code::PUT if req.options().if_none_match() => Response::new(Code::PRECONDITION_FAILED),
        Code::PUT => Response::new(Code::CHANGED),
        Code::DELETE => Response::new(Code::DELETED),
        _ => Response::new(Code::METHOD_NOT_ALLOWED),
    }
}

/// `/multi-format`: one state in four formats, chosen by Accept (TD_COAP_CORE_20).
fn multi_format(req: &IncomingRequest) -> Result<Response, CoapError> {
    let m = req.message();
    let mtype = m.mtype.as_str();
    let code = m.code.name().unwrap_or("?");
    let mid = m.message_id;
    let accept = req.accept().map(|a| a.0);
    let accept_text = accept.map_or_else(|| "-1".to_owned(), |a| a.to_string());
    let (format, body) = match accept {
        None | Some(0) => (
            ContentFormat::TEXT_PLAIN,
            format!(
                "Status type: \"{mtype}\"\nCode: \"{code}\"\nMID: {mid}\nAccept: {accept_text}"
            )
            .into_bytes(),
        ),
        Some(41) => (
            ContentFormat::XML,
            format!(
                "<msg type=\"{mtype}\" code=\"{code}\" mid=\"{mid}\" accept=\"{accept_text}\"/>"
            )
            .into_bytes(),
        ),
        Some(50) => {
            let value = serde_json::json!({
                "type": mtype, "code": code, "mid": mid, "accept": 50,
            });
            (ContentFormat::JSON, value.to_string().into_bytes())
        }
        Some(60) => {
            let map = ciborium::Value::Map(vec![
                ("type".into(), mtype.into()),
                ("code".into(), code.into()),
                ("mid".into(), mid.into()),
                ("accept".into(), 60.into()),
            ]);
            let mut out = Vec::new();
            ciborium::into_writer(&map, &mut out)
                .map_err(|e| CoapError::internal(e.to_string()))?;
            (ContentFormat::CBOR, out)
        }
        Some(_) => {
            return Err(CoapError::not_acceptable().with_diagnostic(
                "text/plain, application/xml, application/json, or application/cbor only",
            ))
        }
    };
    Ok(Response::content(body).with_content_format(format))
}

/// `/validate`: ETag validation and conditional PUT (TD_COAP_CORE_21, 22).
/// The Max-Age of `/validate`'s representations: TD_COAP_CORE_29 sets up the server with a
/// Max-Age of 30 s and checks that a proxy serves the representation from its cache.
const VALIDATE_MAX_AGE: u32 = 30;

fn validate(state: &State, req: &IncomingRequest) -> Result<Response, CoapError> {
    let mut v = lock(&state.validate);
    match req.method() {
        Code::GET => {
            if req.options().etags().any(|e| e == v.etag.as_slice()) {
                // RFC 7252 §5.10.6: the client's stored representation is still good. The
                // resource then starts over, so the test description can be repeated.
                let etag = v.etag.clone();
                v.reset();
                return Ok(Response::new(Code::VALID)
                    .with_option(OptionNumber::ETAG, &etag)
                    .with_max_age(VALIDATE_MAX_AGE));
            }
            let rsp = match &v.data {
                Some(data) => stored_response(req, data)?,
                None => {
                    check_accept(req, ContentFormat::TEXT_PLAIN)?;
                    small_text(describe(req))
                }
            };
            Ok(rsp
                .with_option(OptionNumber::ETAG, &v.etag)
                .with_max_age(VALIDATE_MAX_AGE))
        }
        Code::PUT => {
            let if_match: Vec<&[u8]> = req.options().if_match().collect();
            if !if_match.is_empty() && !v.if_match(&if_match) {
                v.reset();
                return Err(CoapError::precondition_failed());
            }
            let created = if req.options().if_none_match() {
                if v.data.is_some() {
                    v.reset();
                    return Err(CoapError::precondition_failed());
                }
                true
            } else {
                false
            };
            let format = require_format(req)?;
            let body = req.payload().clone();
            v.etag = etag_of(&body).to_vec();
            v.data = Some(Stored { body, format });
            let code = if created {
                Code::CREATED
            } else {
                Code::CHANGED
            };
            Ok(Response::new(code).with_option(OptionNumber::ETAG, &v.etag))
        }
        Code::DELETE => {
            v.reset();
            Ok(Response::new(Code::DELETED))
        }
        _ => Err(CoapError::method_not_allowed()),
    }
}

/// `/create1`: atomic create with If-None-Match (TD_COAP_CORE_23).
fn create1(state: &State, req: &IncomingRequest) -> Result<Response, CoapError> {
    let mut data = lock(&state.create1);
    match req.method() {
        Code::GET => match &*data {
            Some(stored) => stored_response(req, stored),
            None => Err(CoapError::not_found()),
        },
        Code::PUT => {
            if req.options().if_none_match() && data.is_some() {
                // Starts over, so the test description can be repeated.
                *data = None;
                return Err(CoapError::precondition_failed());
            }
            let format = require_format(req)?;
            let existed = data.is_some();
            *data = Some(Stored {
                body: req.payload().clone(),
                format,
            });
            Ok(Response::new(if existed {
                Code::CHANGED
            } else {
                Code::CREATED
            }))
        }
        Code::DELETE => {
            *data = None;
            Ok(Response::new(Code::DELETED))
        }
        _ => Err(CoapError::method_not_allowed()),
    }
}

/// `/large-update`: GET and block-wise PUT (TD_COAP_BLOCK_03).
fn large_update(state: &State, req: &IncomingRequest) -> Result<Response, CoapError> {
    let mut stored = lock(&state.large_update);
    match req.method() {
        Code::GET => stored_response(req, &stored),
        Code::PUT => {
            let format = require_format(req)?;
            *stored = Stored {
                body: req.payload().clone(),
                format,
            };
            Ok(Response::new(Code::CHANGED))
        }
        _ => Err(CoapError::method_not_allowed()),
    }
}

/// `/large-create`: POST creates a child (TD_COAP_BLOCK_04); GET lists the children.
fn large_create(state: &State, req: &IncomingRequest) -> Result<Response, CoapError> {
    let mut guard = lock(&state.large_create);
    let (counter, children) = &mut *guard;
    match req.method() {
        Code::GET => {
            check_accept(req, ContentFormat::LINK_FORMAT)?;
            let mut table = LinkTable::new();
            for (n, child) in children.iter() {
                let path = format!("/large-create/{n}");
                table.add(&path, Code::GET, ());
                table.set_attributes(&path, child_attributes(child));
            }
            let doc = table
                .well_known_core(std::iter::empty())
                .map_err(CoapError::from)?;
            Ok(Response::content(doc).with_content_format(ContentFormat::LINK_FORMAT))
        }
        Code::POST => {
            let format = require_format(req)?;
            *counter = counter.wrapping_add(1);
            let n = *counter;
            children.insert(
                n,
                Stored {
                    body: req.payload().clone(),
                    format,
                },
            );
            let mut rsp = Response::new(Code::CREATED);
            rsp.options
                .push(OptionNumber::LOCATION_PATH, b"large-create");
            rsp.options
                .push(OptionNumber::LOCATION_PATH, n.to_string().as_bytes());
            Ok(rsp)
        }
        _ => Err(CoapError::method_not_allowed()),
    }
}

/// `/large-create/<n>`: GET and DELETE of a created child.
fn large_create_child(state: &State, req: &IncomingRequest) -> Result<Response, CoapError> {
    let rest: Vec<&str> = req.rest().collect();
    let n = match rest.as_slice() {
        [one] => one.parse::<u32>().map_err(|_| CoapError::not_found())?,
        [] => return Err(CoapError::method_not_allowed()),
        _ => return Err(CoapError::not_found()),
    };
    let mut guard = lock(&state.large_create);
    let children = &mut guard.1;
    match req.method() {
        Code::GET => match children.get(&n) {
            Some(stored) => stored_response(req, stored),
            None => Err(CoapError::not_found()),
        },
        Code::DELETE => match children.remove(&n) {
            Some(_) => Ok(Response::new(Code::DELETED)),
            None => Err(CoapError::not_found()),
        },
        _ => Err(CoapError::method_not_allowed()),
    }
}

/// `/large-post`: block-wise POST answered block-wise (TD_COAP_BLOCK_05): the text upper-cased.
fn large_post(req: &IncomingRequest) -> Result<Response, CoapError> {
    require_format(req)?;
    check_accept(req, ContentFormat::TEXT_PLAIN)?;
    let upper = req.payload().to_ascii_uppercase();
    Ok(Response::new(Code::CHANGED)
        .with_payload(upper)
        .with_content_format(ContentFormat::TEXT_PLAIN))
}

/// `/obs` and `/obs-non`: GET (and registration), PUT, DELETE (TD_COAP_OBS_01, 02, 04–12).
async fn observed(
    state: Arc<State>,
    path: &'static str,
    notifier: Notifier,
    req: IncomingRequest,
) -> Result<Response, CoapError> {
    let Some(cell) = state.observed(path) else {
        return Err(CoapError::not_found());
    };
    match req.method() {
        Code::GET => {
            let o = lock(cell);
            check_accept(&req, o.format)?;
            let mut rsp = Response::content(o.body.clone())
                .with_content_format(o.format)
                .with_max_age(OBS_MAX_AGE);
            if path == "/obs-non" {
                // Used for notifications; a piggybacked answer stays in its ACK.
                rsp.message_type = Some(MessageType::Non);
            }
            Ok(rsp)
        }
        Code::PUT => {
            let format = require_format(&req)?;
            let changed_format = {
                let mut o = lock(cell);
                let changed = o.format != format;
                o.body = req.payload().clone();
                o.format = format;
                changed
            };
            if changed_format {
                // OBS_08: observers asked for the old format; the relation ends with 4.06.
                let _ = notifier
                    .notify_with(Response::new(Code::NOT_ACCEPTABLE))
                    .await;
            } else {
                // OBS_09: the new value goes out as a notification.
                let _ = notifier.notify().await;
            }
            Ok(Response::new(Code::CHANGED))
        }
        Code::DELETE => {
            // OBS_07: every observer gets 4.04 and the relations end; the resource itself
            // stays for the next run.
            let _ = notifier.notify_with(Response::new(Code::NOT_FOUND)).await;
            Ok(Response::new(Code::DELETED))
        }
        _ => Err(CoapError::method_not_allowed()),
    }
}

/// Advances one ticking resource every interval and tells its observers.
async fn tick(state: Arc<State>, notifier: Notifier) {
    let mut timer = tokio::time::interval(state.options.notify_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    loop {
        timer.tick().await;
        let time = clock_text();
        match notifier.path() {
            "/obs" | "/obs-non" => {
                let Some(cell) = state.observed(notifier.path()) else {
                    return;
                };
                let was_text = {
                    let mut o = lock(cell);
                    let was_text = o.format == ContentFormat::TEXT_PLAIN;
                    o.body = Bytes::from(time);
                    o.format = ContentFormat::TEXT_PLAIN;
                    was_text
                };
                if !was_text {
                    // The format goes back to text: observers of the other format are done.
                    let _ = notifier
                        .notify_with(Response::new(Code::NOT_ACCEPTABLE))
                        .await;
                }
            }
            "/obs-pumping" => {
                let mut p = lock(&state.pumping);
                let roll = next_roll(&mut p.1);
                p.0 = Bytes::from(pumping_body(&time, roll));
            }
            _ => {}
        }
        if notifier.notify().await.is_err() {
            return;
        }
    }
}

/// `/.well-known/core` of the current state (TD_COAP_LINK_01–09): the fixed resources plus
/// the ones that come and go (`/create1`, `/large-create/<n>`) and the attributes that
/// follow stored data (`sz`, `ct`).
fn well_known_core(state: &State, req: &IncomingRequest) -> Response {
    let mut table = LinkTable::new();
    for (path, attributes) in catalog(state) {
        table.add(&path, Code::GET, ());
        table.set_attributes(&path, attributes);
    }
    table.well_known_core_response(req.options())
}

/// The attributes of a created `/large-create/<n>`.
fn child_attributes(child: &Stored) -> ResourceAttributes {
    ResourceAttributes::new()
        .ct(child.format)
        .sz(child.body.len() as u64)
}

/// Every listed resource with its attributes, in listing order.
fn catalog(state: &State) -> Vec<(String, ResourceAttributes)> {
    let title = |t: &str| ResourceAttributes::new().title(t);
    let text = ContentFormat::TEXT_PLAIN;
    let mut out: Vec<(String, ResourceAttributes)> = Vec::new();
    let mut add = |path: &str, attributes: ResourceAttributes| {
        out.push((path.to_owned(), attributes));
    };
    add("/test", title("Default test resource").ct(text));
    add("/seg1", title("Long path resource").ct(text));
    add("/seg1/seg2", title("Long path resource"));
    add("/seg1/seg2/seg3", title("Long path resource"));
    add(
        "/query",
        title("Resource accepting query parameters").ct(text),
    );
    add(
        "/separate",
        title(
            "Resource which cannot be served immediately and which cannot be acknowledged in \
             a piggy-backed way",
        )
        .ct(text),
    );
    add(
        "/location-query",
        title(
            "Perform POST transaction with responses containing several Location-Query \
             options (CON mode)",
        ),
    );
    add(
        "/multi-format",
        title(
            "Resource that exists in different content formats (text/plain utf8 and \
             application/xml)",
        )
        .ct(ContentFormat::TEXT_PLAIN)
        .ct(ContentFormat::XML)
        .ct(ContentFormat::JSON)
        .ct(ContentFormat::CBOR),
    );
    {
        let v = lock(&state.validate);
        let mut attributes = title("Resource which varies");
        if let Some(data) = &v.data {
            attributes = attributes.ct(data.format).sz(data.body.len() as u64);
        }
        add("/validate", attributes);
    }
    if let Some(data) = &*lock(&state.create1) {
        add(
            "/create1",
            title("Resource which does not exist yet (to perform atomic PUT)")
                .ct(data.format)
                .sz(data.body.len() as u64),
        );
    }
    add(
        "/link1",
        title("Link test resource")
            .interface("If1")
            .rt("Type1")
            .rt("Type2"),
    );
    add(
        "/link2",
        title("Link test resource")
            .interface("If2")
            .rt("Type2")
            .rt("Type3"),
    );
    add(
        "/link3",
        title("Link test resource")
            .interface("foo")
            .rt("Type1")
            .rt("Type3"),
    );
    add(
        "/path",
        title("Hierarchical link description entry").ct(ContentFormat::LINK_FORMAT),
    );
    for sub in PATH_CHILDREN {
        add(sub, title("Hierarchical link description sub-resource"));
    }
    add(
        "/large",
        title("Large resource")
            .rt("block")
            .sz(large_body().len() as u64)
            .ct(text),
    );
    {
        let stored = lock(&state.large_update);
        add(
            "/large-update",
            title("Large resource that can be updated using PUT method")
                .rt("block")
                .sz(stored.body.len() as u64)
                .ct(stored.format),
        );
    }
    add(
        "/large-create",
        title("Large resource that can be created using POST method")
            .rt("block")
            .ct(ContentFormat::LINK_FORMAT),
    );
    for (n, child) in lock(&state.large_create).1.iter() {
        add(&format!("/large-create/{n}"), child_attributes(child));
    }
    add(
        "/large-post",
        title("Handle POST with two-way blockwise transfer").rt("block"),
    );
    add(
        "/obs",
        title("Observable resource which changes every 5 seconds")
            .rt("observe")
            .ct(text)
            .observable(),
    );
    add(
        "/obs-non",
        title("Observable resource which changes every 5 seconds")
            .rt("observe")
            .ct(text)
            .observable(),
    );
    add(
        "/obs-large",
        title("Large observable resource which changes every 5 seconds")
            .rt("observe")
            .ct(text)
            .observable(),
    );
    add(
        "/obs-pumping",
        title("Observable resource of varying size which changes every 5 seconds")
            .rt("observe")
            .ct(text)
            .observable(),
    );
    out
}

/// The children of `/path`.
const PATH_CHILDREN: [&str; 3] = ["/path/sub1", "/path/sub2", "/path/sub3"];

/// The routes of every resource.
fn router(state: &Arc<State>, handle: &ServerHandle) -> Router {
    let s = Arc::clone(state);
    let mut app = Router::new()
        .get("/.well-known/core", move |req: IncomingRequest| {
            let rsp = well_known_core(&s, &req);
            async move { rsp }
        })
        .any("/test", |req: IncomingRequest| {
            let rsp = test_resource(&req);
            async move { rsp }
        });
    for path in ["/seg1", "/seg1/seg2", "/seg1/seg2/seg3"] {
        app = app.get(path, |req: IncomingRequest| {
            let rsp = small_text(format!("Long path resource\n{}", describe(&req)));
            async move { rsp }
        });
    }
    app = app
        .get("/query", |req: IncomingRequest| {
            // The query first, so the 64-byte cut takes the least interesting part.
            let query: Vec<&str> = req.query().collect();
            let text = format!("?{}\n{}", query.join("&"), describe(&req));
            let rsp = small_text(text);
            async move { rsp }
        })
        .get("/separate", {
            let delay = state.options.separate_delay;
            move |req: IncomingRequest| {
                // The engine acknowledges a CON request with an empty ACK while this waits,
                // and sends the answer as a separate response (CORE_09, 11); a NON request
                // gets no ACK and a NON answer (CORE_17).
                let text = describe(&req);
                async move {
                    tokio::time::sleep(delay).await;
                    small_text(text)
                }
            }
        })
        .post("/location-query", |_req: IncomingRequest| async {
            let mut rsp = Response::new(Code::CREATED);
            rsp.options.push(OptionNumber::LOCATION_QUERY, b"first=1");
            rsp.options.push(OptionNumber::LOCATION_QUERY, b"second=2");
            rsp
        })
        .get("/multi-format", |req: IncomingRequest| {
            let rsp = multi_format(&req);
            async move { rsp }
        });
    for method in [Code::GET, Code::PUT, Code::DELETE] {
        let s = Arc::clone(state);
        app = app.route("/validate", method, move |req: IncomingRequest| {
            let rsp = validate(&s, &req);
            async move { rsp }
        });
        let s = Arc::clone(state);
        app = app.route("/create1", method, move |req: IncomingRequest| {
            let rsp = create1(&s, &req);
            async move { rsp }
        });
    }
    for link in ["/link1", "/link2", "/link3"] {
        // Present only to be discovered.
        app = app.any(link, |_req: IncomingRequest| async {
            Response::new(Code::METHOD_NOT_ALLOWED)
        });
    }
    app = app.get("/path", |_req: IncomingRequest| async {
        let mut table = LinkTable::new();
        for sub in PATH_CHILDREN {
            table.add(sub, Code::GET, ());
            table.set_attributes(
                sub,
                ResourceAttributes::new().title("Hierarchical link description sub-resource"),
            );
        }
        match table.well_known_core(std::iter::empty()) {
            Ok(doc) => Response::content(doc).with_content_format(ContentFormat::LINK_FORMAT),
            Err(e) => CoapError::from(e).into_response(),
        }
    });
    for sub in PATH_CHILDREN {
        app = app.get(sub, move |_req: IncomingRequest| async move {
            Response::content(sub).with_content_format(ContentFormat::TEXT_PLAIN)
        });
    }
    app = app.get("/large", |req: IncomingRequest| {
        let rsp = check_accept(&req, ContentFormat::TEXT_PLAIN).map(|()| {
            Response::content(large_body()).with_content_format(ContentFormat::TEXT_PLAIN)
        });
        async move { rsp }
    });
    for method in [Code::GET, Code::PUT] {
        let s = Arc::clone(state);
        app = app.route("/large-update", method, move |req: IncomingRequest| {
            let rsp = large_update(&s, &req);
            async move { rsp }
        });
    }
    for method in [Code::GET, Code::POST] {
        let s = Arc::clone(state);
        app = app.route("/large-create", method, move |req: IncomingRequest| {
            let rsp = large_create(&s, &req);
            async move { rsp }
        });
    }
    for method in [Code::GET, Code::DELETE] {
        let s = Arc::clone(state);
        app = app.prefix("/large-create", method, move |req: IncomingRequest| {
            let rsp = large_create_child(&s, &req);
            async move { rsp }
        });
    }
    app = app.post("/large-post", |req: IncomingRequest| {
        let rsp = large_post(&req);
        async move { rsp }
    });
    for path in ["/obs", "/obs-non"] {
        let notifier = handle.notifier(path);
        let s = Arc::clone(state);
        let handler =
            move |req: IncomingRequest| observed(Arc::clone(&s), path, notifier.clone(), req);
        app = app
            .observable(path, handler.clone())
            .put(path, handler.clone())
            .delete(path, handler);
    }
    app = app.observable("/obs-large", |req: IncomingRequest| {
        let rsp = check_accept(&req, ContentFormat::TEXT_PLAIN).map(|()| {
            Response::content(obs_large_body(&clock_text()))
                .with_content_format(ContentFormat::TEXT_PLAIN)
                .with_max_age(OBS_MAX_AGE)
        });
        async move { rsp }
    });
    let s = Arc::clone(state);
    app = app.observable("/obs-pumping", move |req: IncomingRequest| {
        let body = lock(&s.pumping).0.clone();
        let rsp = check_accept(&req, ContentFormat::TEXT_PLAIN).map(|()| {
            Response::content(body)
                .with_content_format(ContentFormat::TEXT_PLAIN)
                .with_max_age(OBS_MAX_AGE)
        });
        async move { rsp }
    });
    app
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_tokio::Client;
    use std::net::Ipv4Addr;

    #[test]
    fn truncation_marks_the_cut_and_keeps_64_bytes() {
        assert_eq!(truncate("short".to_owned(), 64), "short");
        let long = "x".repeat(100);
        let cut = truncate(long, 64);
        assert_eq!(cut.len(), 64);
        assert!(cut.ends_with('»'));
        // A cut inside a multi-byte character moves back to a boundary.
        let cut = truncate("ééééé".to_owned(), 5);
        assert!(cut.len() <= 5);
        assert!(cut.ends_with('»'));
    }

    #[test]
    fn time_of_day_formats_utc() {
        assert_eq!(time_of_day(0), "00:00:00");
        assert_eq!(time_of_day(86_400 + 3_723), "01:02:03");
        assert_eq!(time_of_day(86_399), "23:59:59");
    }

    #[test]
    fn large_body_is_20_lines_of_64_bytes() {
        let body = large_body();
        assert_eq!(body.len(), 1280);
        let text = std::str::from_utf8(&body).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 20);
        assert!(lines.iter().all(|l| l.len() == 64), "{lines:?}");
        assert!(text.contains("RESOURCE BLOCK NO. 5 OF 5"));
    }

    #[test]
    fn observable_bodies_have_the_sizes_the_tds_rely_on() {
        let body = obs_large_body("12:34:56");
        assert!(body.len() > 2 * BLOCK_SIZE && body.len() <= 3 * BLOCK_SIZE);
        assert_eq!(pumping_body("12:34:56", 0).len(), 84);
        assert_eq!(pumping_body("12:34:56", 2).len(), 164);
        assert_eq!(pumping_body("12:34:56", 3), "12:34:56");
        let mut seed = 0x1234_5678_9abc_def1;
        let rolls: Vec<u64> = (0..64).map(|_| next_roll(&mut seed) % 4).collect();
        for kind in 0..4 {
            assert!(rolls.contains(&kind), "{rolls:?}");
        }
    }

    #[test]
    fn etags_follow_content() {
        assert_eq!(etag_of(b"abc"), etag_of(b"abc"));
        assert_ne!(etag_of(b"abc"), etag_of(b"abd"));
        let mut v = Validate::new();
        assert!(v.if_match(&[&[0]]));
        assert!(
            !v.if_match(&[&[]]),
            "an empty If-Match needs a representation"
        );
        v.data = Some(Stored {
            body: Bytes::from_static(b"x"),
            format: ContentFormat::TEXT_PLAIN,
        });
        assert!(v.if_match(&[&[]]));
        v.reset();
        assert_eq!(v, Validate::new());
    }

    #[test]
    fn catalog_lists_created_resources_only_once_they_exist() {
        let state = State::new(PlugtestOptions::default());
        let listed =
            |state: &State| -> Vec<String> { catalog(state).into_iter().map(|(p, _)| p).collect() };
        assert!(!listed(&state).contains(&"/create1".to_owned()));
        *lock(&state.create1) = Some(Stored {
            body: Bytes::from_static(b"hello"),
            format: ContentFormat::TEXT_PLAIN,
        });
        assert!(listed(&state).contains(&"/create1".to_owned()));
        lock(&state.large_create).1.insert(
            7,
            Stored {
                body: Bytes::from_static(b"body"),
                format: ContentFormat::OCTET_STREAM,
            },
        );
        assert!(listed(&state).contains(&"/large-create/7".to_owned()));
    }

    /// A plugtest server on a free loopback port with short timings, and a client.
    async fn start() -> (SocketAddr, Client) {
        let options = PlugtestOptions {
            notify_interval: Duration::from_millis(200),
            separate_delay: Duration::from_millis(300),
            ..PlugtestOptions::default()
        };
        let plugtest = Plugtest::bind((Ipv4Addr::LOCALHOST, 0).into(), options)
            .await
            .unwrap();
        let addr = plugtest.server.local_addr();
        tokio::spawn(plugtest.serve(std::future::pending()));
        (addr, Client::bind("127.0.0.1:0").await.unwrap())
    }

    fn uri(addr: SocketAddr, path: &str) -> String {
        format!("coap://{addr}{path}")
    }

    #[tokio::test]
    async fn every_listed_resource_is_served() {
        let (addr, client) = start().await;
        let state = State::new(PlugtestOptions::default());
        for (path, _) in catalog(&state) {
            let rsp = client.get(uri(addr, &path)).await.unwrap();
            assert_ne!(rsp.code(), Code::NOT_FOUND, "{path}");
        }
        let rsp = client.get(uri(addr, "/create1")).await.unwrap();
        assert_eq!(rsp.code(), Code::NOT_FOUND, "absent until created");
        let rsp = client
            .get(uri(addr, "/query"))
            .query("first=1")
            .query("second=2")
            .await
            .unwrap();
        assert!(rsp
            .payload_str()
            .unwrap()
            .starts_with("?first=1&second=2\n"));
        let rsp = client.delete(uri(addr, "/large-create/9")).await.unwrap();
        assert_eq!(rsp.code(), Code::NOT_FOUND);
        let rsp = client
            .put(uri(addr, "/validate"))
            .payload("no format")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::BAD_REQUEST, "Content-Format required");
    }

    #[tokio::test]
    async fn test_resource_answers_every_method() {
        let (addr, client) = start().await;
        let rsp = client.get(uri(addr, "/test")).await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.content_format(), Some(ContentFormat::TEXT_PLAIN));
        let text = rsp.payload_str().unwrap();
        assert!(
            text.starts_with("Type: 0 (CON)\nCode: 1 (GET)\nMID: "),
            "{text}"
        );
        assert!(rsp.payload().len() <= SMALL_BODY);

        let rsp = client.post(uri(addr, "/test")).payload("x").await.unwrap();
        assert_eq!(rsp.code(), Code::CREATED);
        let location: Vec<&str> = rsp.options().location_path().collect();
        assert_eq!(location, ["location1", "location2", "location3"]);

        let rsp = client.put(uri(addr, "/test")).payload("x").await.unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        let rsp = client
            .put(uri(addr, "/test"))
            .if_none_match()
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::PRECONDITION_FAILED);
        let rsp = client.delete(uri(addr, "/test")).await.unwrap();
        assert_eq!(rsp.code(), Code::DELETED);
        let rsp = client.get(uri(addr, "/test")).non().await.unwrap();
        assert_eq!(rsp.message_type(), MessageType::Non);
    }

    #[tokio::test]
    async fn separate_answers_after_an_empty_ack() {
        let (addr, client) = start().await;
        let rsp = client.get(uri(addr, "/separate")).await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.message_type(), MessageType::Con, "a separate response");
    }

    #[tokio::test]
    async fn validate_gives_valid_then_precondition_failed() {
        let (addr, client) = start().await;
        let first = client.get(uri(addr, "/validate")).await.unwrap();
        let etag1 = first.etag().unwrap().to_vec();
        let rsp = client
            .get(uri(addr, "/validate"))
            .etag(&etag1)
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::VALID);
        assert_eq!(rsp.etag(), Some(etag1.as_slice()));
        assert!(rsp.payload().is_empty());

        let rsp = client
            .put(uri(addr, "/validate"))
            .if_match(&etag1)
            .content_format(ContentFormat::TEXT_PLAIN)
            .payload("one")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        let etag2 = rsp.etag().unwrap().to_vec();
        assert_ne!(etag1, etag2);
        let rsp = client.get(uri(addr, "/validate")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("one"));
        assert_eq!(rsp.etag(), Some(etag2.as_slice()));
        // Someone else changes it; the stale If-Match fails and nothing changes.
        let rsp = client
            .put(uri(addr, "/validate"))
            .content_format(ContentFormat::TEXT_PLAIN)
            .payload("two")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        let rsp = client
            .put(uri(addr, "/validate"))
            .if_match(&etag2)
            .content_format(ContentFormat::TEXT_PLAIN)
            .payload("three")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::PRECONDITION_FAILED);
    }

    #[tokio::test]
    async fn create1_creates_once_then_fails_and_resets() {
        let (addr, client) = start().await;
        let put = || {
            client
                .put(uri(addr, "/create1"))
                .if_none_match()
                .content_format(ContentFormat::TEXT_PLAIN)
                .payload("created")
        };
        assert_eq!(put().await.unwrap().code(), Code::CREATED);
        let rsp = client.get(uri(addr, "/create1")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("created"));
        assert_eq!(put().await.unwrap().code(), Code::PRECONDITION_FAILED);
        // Reset: the test description can run again.
        assert_eq!(put().await.unwrap().code(), Code::CREATED);
    }

    #[tokio::test]
    async fn discovery_filters_as_the_link_tds_expect() {
        let (addr, client) = start().await;
        let links = |rsp: &coap_tokio::IncomingResponse| -> Vec<String> {
            coap_proto::link_format::parse(rsp.payload_str().unwrap())
                .unwrap()
                .into_iter()
                .map(|l| l.target)
                .collect()
        };
        let all = client.get(uri(addr, "/.well-known/core")).await.unwrap();
        assert_eq!(all.content_format(), Some(ContentFormat::LINK_FORMAT));
        let all = links(&all);
        for path in ["/test", "/large", "/obs", "/link1", "/path", "/path/sub1"] {
            assert!(all.contains(&path.to_owned()), "{path} missing in {all:?}");
        }
        let cases: [(&str, &[&str]); 5] = [
            ("rt=Type1", &["/link1", "/link3"]),
            ("rt=Type2", &["/link1", "/link2"]),
            ("if=If*", &["/link1", "/link2"]),
            ("href=/link1", &["/link1"]),
            ("href=/link*", &["/link1", "/link2", "/link3"]),
        ];
        for (query, expected) in cases {
            let rsp = client
                .get(uri(addr, "/.well-known/core"))
                .query(query)
                .await
                .unwrap();
            assert_eq!(links(&rsp), expected, "{query}");
        }
        let rsp = client
            .get(uri(addr, "/.well-known/core"))
            .query("sz=*")
            .await
            .unwrap();
        assert!(links(&rsp).contains(&"/large".to_owned()));
        assert!(!links(&rsp).contains(&"/test".to_owned()));
        let rsp = client.get(uri(addr, "/path")).await.unwrap();
        assert_eq!(links(&rsp), ["/path/sub1", "/path/sub2", "/path/sub3"]);
    }

    #[tokio::test]
    async fn block_resources_round_trip() {
        let (addr, client) = start().await;
        let rsp = client.get(uri(addr, "/large")).await.unwrap();
        assert_eq!(rsp.payload(), &large_body());

        let body = "update ".repeat(200);
        let rsp = client
            .put(uri(addr, "/large-update"))
            .content_format(ContentFormat::TEXT_PLAIN)
            .payload(body.clone())
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        let rsp = client.get(uri(addr, "/large-update")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some(body.as_str()));

        let rsp = client
            .post(uri(addr, "/large-create"))
            .content_format(ContentFormat::TEXT_PLAIN)
            .payload(body.clone())
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CREATED);
        let location: Vec<&str> = rsp.options().location_path().collect();
        assert_eq!(location, ["large-create", "1"]);
        let rsp = client.get(uri(addr, "/large-create/1")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some(body.as_str()));

        let rsp = client
            .post(uri(addr, "/large-post"))
            .content_format(ContentFormat::TEXT_PLAIN)
            .payload(body.clone())
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        assert_eq!(rsp.payload_str(), Some(body.to_uppercase().as_str()));
    }

    #[tokio::test]
    async fn multi_format_follows_accept() {
        let (addr, client) = start().await;
        let rsp = client
            .get(uri(addr, "/multi-format"))
            .accept(ContentFormat::XML)
            .await
            .unwrap();
        assert_eq!(rsp.content_format(), Some(ContentFormat::XML));
        assert!(rsp.payload_str().unwrap().starts_with("<msg "));
        let rsp = client
            .get(uri(addr, "/multi-format"))
            .accept(ContentFormat::JSON)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(rsp.payload()).unwrap();
        assert_eq!(v["code"], "GET");
        let rsp = client
            .get(uri(addr, "/multi-format"))
            .accept(ContentFormat::OCTET_STREAM)
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::NOT_ACCEPTABLE);
    }

    #[tokio::test]
    async fn obs_notifies_on_ticks_and_updates_and_ends_on_delete() {
        let (addr, client) = start().await;
        let mut obs = client.observe(uri(addr, "/obs")).await.unwrap();
        let first = obs.next().await.unwrap().unwrap();
        assert_eq!(first.code(), Code::CONTENT);
        let tick = tokio::time::timeout(Duration::from_secs(5), obs.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(tick.sequence() > first.sequence());
        assert_eq!(tick.message_type(), MessageType::Con);

        let rsp = client
            .put(uri(addr, "/obs"))
            .content_format(ContentFormat::TEXT_PLAIN)
            .payload("new value")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        let mut saw_update = false;
        for _ in 0..5 {
            let n = tokio::time::timeout(Duration::from_secs(5), obs.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if n.payload_str() == Some("new value") {
                saw_update = true;
                break;
            }
        }
        assert!(saw_update);

        let rsp = client.delete(uri(addr, "/obs")).await.unwrap();
        assert_eq!(rsp.code(), Code::DELETED);
        let mut last = None;
        while let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(5), obs.next()).await {
            last = Some(n);
        }
        // The 4.04 ends the observation; the client reports it as the stream's last item.
        let last = last.unwrap();
        match last {
            Ok(n) => assert_eq!(n.code(), Code::NOT_FOUND),
            Err(e) => assert!(e.to_string().contains("4.04"), "{e}"),
        }
    }

    #[tokio::test]
    async fn obs_large_notifications_arrive_whole() {
        let (addr, client) = start().await;
        let mut obs = client.observe(uri(addr, "/obs-large")).await.unwrap();
        for _ in 0..2 {
            let n = tokio::time::timeout(Duration::from_secs(5), obs.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(n.payload().len() > 2 * BLOCK_SIZE, "{n:?}");
        }
    }
}
