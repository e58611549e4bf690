//! What an end-to-end scenario sees of a runtime crate: a thin, typed, blocking view of its
//! client and of a server that serves the [standard application](#the-standard-application).
//!
//! Each runtime crate (`coap-tokio`, `coap-async-std` under async-std or smol, and
//! `coap-blocking`) implements [`Stack`] in a module of [`crate::stacks`]; the scenarios in
//! [`crate::scenarios`] are written once against these traits and run for every pair of a
//! client stack and a server stack. Async stacks implement the blocking calls with their
//! runtime's `block_on`.
//!
//! Values cross the boundary in runtime-neutral types: a request to send is a [`Req`], a
//! response a [`Rsp`] (the CoAP message as received, its peer and URI), an error a
//! [`StackError`] with one variant per failure a scenario tells apart.
//!
//! # The standard application
//!
//! Every [`Stack::serve`] serves the same resources, built with the crate's own router and
//! handlers:
//!
//! | path | methods | answer |
//! |---|---|---|
//! | `/echo` | every method, and the unassigned code 0.20 | 2.05 `"<method> <path> <payload>"` |
//! | `/echo-big` | POST | 2.05 with the request's payload |
//! | `/opts` | POST | 2.05 with [`options_summary`] of the request |
//! | `/only-get` | GET | 2.05 `"x"` |
//! | `/peer` | GET | 2.05 with the requester's address |
//! | `/cf` | PUT | 4.15 unless the Content-Format is JSON, then 2.04 |
//! | `/bad` | GET | the handler error 4.00 `"missing ?id"` |
//! | `/boom` | GET | the handler error 5.00 `"database down"` |
//! | `/panic/now`, `/panic/later` | GET | the handler panics (at once, or after yielding) |
//! | `/slow?ms=N` | GET | 2.05 `"done"` after N ms (default 100) |
//! | `/gate` | GET | 2.05 `"released"` once the handler passes the [gate](AppProbe::release) |
//! | `/deferred` | GET | deferred: reports [`AppEvent::Deferred`]; another task or thread passes the gate and answers 2.05 `"from another task"` |
//! | `/dropped` | GET | deferred, and the responder is dropped unused (so 5.00) |
//! | `/twice` | GET | 2.05 `"first"`; 20 ms later the deferred responder tries `"second"` and reports [`AppEvent::SecondAnswer`] |
//! | `/hello` | GET | 2.05 `"hello"` |
//! | `/secret` | GET | 2.05, hidden from `/.well-known/core` |
//! | `/sensors/temp` | GET | `rt="temperature-c"`, `if="sensor"`, `ct=0`, `obs` in the link format |
//! | `/sensors/hum` | GET | `rt="humidity"`, `title="Humidity"` |
//! | `/sensors/counter` | GET, observable | the counter ([`AppProbe::set_counter`]) as text; `rt="counter"`; a registration with the query `deny` is declined; observer counts are reported as [`AppEvent::Observers`] |
//! | `/files/...` | GET (catch-all) | 2.05 `"file <rest>"` with an ETag from the body; `/files/special` is an exact route answering `"exact route wins"` |
//! | `/big?len=N` | GET | N bytes of [`pattern`] |
//! | `/big` | PUT | 2.04 `"<length> <whether the body is the pattern>"` |
//! | `/n?i=N` | GET | 2.05 `"N"` |

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_proto::endpoint::Stats;
use coap_proto::msg::{Code, ContentFormat, Message, MessageType, OptionNumber, Token};
use coap_proto::{Config, IncomingId, RequestId, Response};

/// How long one scenario may take, in wall-clock time, before it fails.
pub const LIMIT: Duration = Duration::from_secs(60);

/// How long a scenario waits for something that should happen promptly (an event of the
/// application, a condition it polls for) before it fails.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// One runtime crate: how to bind its client and how to serve the standard application.
pub trait Stack: 'static {
    /// The crate and runtime, for messages.
    const NAME: &'static str;
    /// The crate's client.
    type Client: TestClient;
    /// A server of the crate serving the standard application.
    type Server: TestServer<Client = Self::Client>;

    /// Binds a client on `addr` with `config`.
    fn client(addr: &str, config: Config) -> Result<Self::Client, StackError>;

    /// Binds a server on `addr` with `config`, joins the IPv4 multicast `group` (a group and
    /// the address of the interface to join it on) if given, and serves the standard
    /// application on it (with a shutdown signal that [`TestServer::stop`] fires).
    fn serve_with(
        addr: &str,
        config: Config,
        group: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Self::Server, StackError>;

    /// [`serve_with`](Stack::serve_with) without a group.
    fn serve(addr: &str, config: Config) -> Result<Self::Server, StackError> {
        Self::serve_with(addr, config, None)
    }

    /// [`serve_with`](Stack::serve_with) in the IPv4 multicast `group`, joined on the
    /// interface with address `interface`.
    fn serve_in_group(
        addr: &str,
        config: Config,
        group: Ipv4Addr,
        interface: Ipv4Addr,
    ) -> Result<Self::Server, StackError> {
        Self::serve_with(addr, config, Some((group, interface)))
    }
}

/// A client, through blocking calls.
pub trait TestClient: Clone + Send + Sync + 'static {
    /// A request under way (see [`TestClient::start`]).
    type Pending: PendingResponse;
    /// An observation under way.
    type Observation: TestObservation;

    /// The address the client's socket is bound to.
    fn local_addr(&self) -> SocketAddr;

    /// Sends `req` and waits for its outcome.
    fn send(&self, req: Req) -> Result<Rsp, StackError>;

    /// Starts `req` and returns once the client has taken it (an async stack polls the
    /// request's future once): it is then listed by [`pending`](TestClient::pending).
    /// Dropping the returned value before its outcome cancels the request.
    fn start(&self, req: Req) -> Self::Pending;

    /// Builds `req` the way an application would and drops it before it ever starts (an
    /// async stack drops the future unpolled, the blocking stack drops the builder).
    fn drop_unsent(&self, req: Req);

    /// Observes `uri` with a GET (RFC 7641).
    fn observe(&self, uri: &str) -> Result<Self::Observation, StackError>;

    /// Observes with `req` (a GET or FETCH, with its options), built the way an
    /// application would.
    fn observe_req(&self, req: Req) -> Result<Self::Observation, StackError>;

    /// Sends `req` to a multicast group and collects the responses until the window closes.
    fn multicast(&self, req: Req) -> Result<Vec<Result<Rsp, StackError>>, StackError>;

    /// Sends a CoAP ping to the endpoint of `uri`.
    fn ping(&self, uri: &str) -> Result<Duration, StackError>;

    /// The requests under way.
    fn pending(&self) -> Result<Vec<Outgoing>, StackError>;

    /// Cancels the request `id`; false if it had already ended.
    fn cancel(&self, id: RequestId) -> Result<bool, StackError>;

    /// The engine's counters.
    fn stats(&self) -> Result<Stats, StackError>;

    /// Stops the client's driver.
    fn shutdown(&self) -> Result<(), StackError>;
}

/// A request started with [`TestClient::start`].
pub trait PendingResponse: Send + 'static {
    /// Waits for the outcome.
    fn wait(self) -> Result<Rsp, StackError>;
}

/// An observation, through blocking calls.
pub trait TestObservation: Send + 'static {
    /// The next notification; `None` once the observation has ended.
    fn next(&mut self) -> Option<Result<Notif, StackError>>;

    /// Like [`next`](TestObservation::next), but waits at most `limit`: then it returns
    /// `Some(Err(StackError::Timeout))` and the observation goes on.
    fn next_timeout(&mut self, limit: Duration) -> Option<Result<Notif, StackError>>;

    /// Cancels the observation actively (RFC 7641 §3.6); false if it had already ended.
    fn cancel(&mut self) -> Result<bool, StackError>;
}

/// A server serving the standard application, through blocking calls. Dropping it fires the
/// shutdown signal.
pub trait TestServer: Send + 'static {
    /// The client type of the server's crate.
    type Client: TestClient;

    /// The address the server is bound to.
    fn addr(&self) -> SocketAddr;

    /// A client sending from the server's own socket.
    fn client(&self) -> Self::Client;

    /// The scenario's view of the application: its events, its counter, its gate.
    fn probe(&self) -> &AppProbe;

    /// Announces a change of the observable resource at `path`; the number of observers
    /// notified.
    fn notify(&self, path: &str) -> Result<usize, StackError>;

    /// Sends `representation` to the observers of `path`.
    fn notify_with(&self, path: &str, representation: Response) -> Result<usize, StackError>;

    /// How many observe `path`.
    fn observer_count(&self, path: &str) -> Result<usize, StackError>;

    /// The requests received and not answered yet.
    fn pending_incoming(&self) -> Result<Vec<Incoming>, StackError>;

    /// The engine's counters.
    fn stats(&self) -> Result<Stats, StackError>;

    /// Fires the shutdown signal given to the crate's `serve_with_shutdown`; returns at once.
    fn stop(&self);

    /// Shuts down through the server handle and waits until the server has stopped.
    fn shutdown(&self) -> Result<(), StackError>;

    /// Waits until the serving call returns, and returns its result (once; later calls
    /// return `Ok`).
    fn join(&self) -> Result<(), StackError>;
}

/// What the standard application reports to the scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppEvent {
    /// The observer count of `/sensors/counter` changed to this.
    Observers(usize),
    /// `/deferred` parked a responder for the request with this id.
    Deferred(IncomingId),
    /// What the late responder of `/twice` got back when it tried to answer.
    SecondAnswer(Result<(), StackError>),
}

/// What the standard application shares with the scenario: the sending end of its
/// [`AppEvent`]s, the counter `/sensors/counter` renders, and the gate where `/gate` and
/// `/deferred` wait. Made with [`app_state`]; cheap to clone into handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Where the application reports.
    pub events: mpsc::Sender<AppEvent>,
    /// The value `/sensors/counter` renders.
    pub counter: Counter,
    /// Waiters pass one per [`AppProbe::release`]; all pass once the probe is gone.
    pub gate: Gate,
}

/// The scenario's side of an [`AppState`], kept by the server wrapper.
#[derive(Debug)]
pub struct AppProbe {
    events: mpsc::Receiver<AppEvent>,
    counter: Counter,
    gate: async_channel::Sender<()>,
}

/// A new [`AppState`] for an application, and the probe that watches and steers it.
pub fn app_state() -> (AppState, AppProbe) {
    let (events_tx, events) = mpsc::channel();
    let (gate_tx, gate) = async_channel::unbounded();
    let counter = Counter::default();
    let state = AppState {
        events: events_tx,
        counter: counter.clone(),
        gate: Gate(gate),
    };
    let probe = AppProbe {
        events,
        counter,
        gate: gate_tx,
    };
    (state, probe)
}

impl AppProbe {
    /// The next event; fails the scenario if none comes within [`PROMPTLY`].
    pub fn event(&self) -> AppEvent {
        self.events
            .recv_timeout(PROMPTLY)
            .expect("the application reported nothing")
    }

    /// Sets the value `/sensors/counter` renders.
    pub fn set_counter(&self, value: usize) {
        self.counter.set(value);
    }

    /// Lets one waiter of the gate through (now, or the next to come).
    pub fn release(&self) {
        let _ = self.gate.try_send(());
    }
}

/// Where handlers wait until the scenario lets them through (see [`AppProbe::release`]).
#[derive(Clone, Debug)]
pub struct Gate(async_channel::Receiver<()>);

impl Gate {
    /// Waits for a release (or for the probe to go away).
    pub async fn pass(&self) {
        let _ = self.0.recv().await;
    }

    /// Blocks the thread until a release (or until the probe goes away).
    pub fn pass_blocking(&self) {
        let _ = self.0.recv_blocking();
    }
}

/// The value `/sensors/counter` renders.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    /// The value.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the value.
    pub fn set(&self, value: usize) {
        self.0.store(value, Ordering::SeqCst);
    }
}

/// A request to send, in runtime-neutral form; each stack turns it into its crate's request
/// builder calls of the same names.
#[derive(Clone, Debug)]
pub struct Req {
    /// The method code (any code: a non-request code must fail when sent).
    pub method: Code,
    /// The URI.
    pub uri: String,
    /// The payload; empty for none.
    pub payload: Bytes,
    /// Options, in the order the builder calls are made.
    pub options: Vec<ReqOption>,
    /// Sent Non-confirmable.
    pub non: bool,
    /// The builder's own timeout.
    pub timeout: Option<Duration>,
}

/// One option-setting call of a request builder.
#[derive(Clone, Debug)]
pub enum ReqOption {
    /// `content_format`.
    ContentFormat(ContentFormat),
    /// `accept`.
    Accept(ContentFormat),
    /// `etag`.
    Etag(Vec<u8>),
    /// `if_match`.
    IfMatch(Vec<u8>),
    /// `if_none_match`.
    IfNoneMatch,
    /// `query`.
    Query(String),
    /// `option_str`.
    Str(OptionNumber, String),
    /// `option_uint`.
    Uint(OptionNumber, u32),
    /// `option`.
    Opaque(OptionNumber, Vec<u8>),
}

impl Req {
    /// A request with `method` to `uri`.
    pub fn new(method: Code, uri: impl Into<String>) -> Req {
        Req {
            method,
            uri: uri.into(),
            payload: Bytes::new(),
            options: Vec::new(),
            non: false,
            timeout: None,
        }
    }

    /// A GET.
    pub fn get(uri: impl Into<String>) -> Req {
        Req::new(Code::GET, uri)
    }

    /// A POST.
    pub fn post(uri: impl Into<String>) -> Req {
        Req::new(Code::POST, uri)
    }

    /// A PUT.
    pub fn put(uri: impl Into<String>) -> Req {
        Req::new(Code::PUT, uri)
    }

    /// With this payload.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Req {
        self.payload = payload.into();
        self
    }

    /// With one more option call.
    pub fn with(mut self, option: ReqOption) -> Req {
        self.options.push(option);
        self
    }

    /// Non-confirmable.
    pub fn non(mut self) -> Req {
        self.non = true;
        self
    }

    /// With the builder's own timeout.
    pub fn timeout(mut self, limit: Duration) -> Req {
        self.timeout = Some(limit);
        self
    }
}

/// A response as the client handed it over: the message, its peer and the request URI.
#[derive(Clone, Debug)]
pub struct Rsp {
    /// The message (for a block-wise transfer, the last block's header with the whole body).
    pub message: Message,
    /// Who answered.
    pub peer: SocketAddr,
    /// The request's URI, as the client renders it.
    pub uri: String,
}

impl Rsp {
    /// The response code.
    pub fn code(&self) -> Code {
        self.message.code
    }

    /// The message type it came in.
    pub fn message_type(&self) -> MessageType {
        self.message.mtype
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// The payload as text, if it is UTF-8.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.message.payload).ok()
    }

    /// The Content-Format option.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.message.options.content_format()
    }

    /// The ETag option.
    pub fn etag(&self) -> Option<&[u8]> {
        self.message.options.etag()
    }
}

/// One item of an observation.
#[derive(Clone, Debug)]
pub struct Notif {
    /// The response or notification.
    pub response: Rsp,
    /// Whether it is fresh (RFC 7641 §3.3.1).
    pub fresh: bool,
    /// Its Observe sequence number; `None` for a response without Observe.
    pub sequence: Option<u32>,
}

/// A request the client has under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The engine's id.
    pub id: RequestId,
    /// The method.
    pub method: Code,
    /// The URI.
    pub uri: String,
    /// The peer.
    pub peer: SocketAddr,
    /// The token.
    pub token: Token,
}

/// A request the server has received and not answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The engine's id.
    pub id: IncomingId,
    /// The method.
    pub method: Code,
    /// Path and query, as `/a/b?x=1`.
    pub uri: String,
    /// Who sent it.
    pub peer: SocketAddr,
    /// The token.
    pub token: Token,
}

/// The failures a scenario tells apart; every crate's `Error` maps onto these by variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackError {
    /// The URI does not parse.
    InvalidUri,
    /// The URI's scheme is not served.
    UnsupportedScheme,
    /// The host name does not resolve.
    Resolve,
    /// The host has no address the socket can reach.
    NoUsableAddress,
    /// No answer in time.
    Timeout,
    /// The peer answered with a Reset.
    Reset,
    /// The request was cancelled.
    Cancelled,
    /// An ICMP error reported the peer unreachable.
    Unreachable,
    /// The exchange failed in another way the engine names.
    Exchange,
    /// The code given as a method is not one.
    NotARequest(Code),
    /// The request was answered already.
    AlreadyAnswered,
    /// The endpoint is shutting down or gone.
    ShuttingDown,
    /// Anything else, as the crate's error displays it.
    Other(String),
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for StackError {}

/// What the panics of the standard application's `/panic/...` handlers say.
pub const EXPECTED_PANIC: &str = "the scenario expects it";

/// Installs, once per process, a panic hook that reports the handler panics the scenarios
/// provoke in one line, without the backtrace `RUST_BACKTRACE` would have resolved for each;
/// every other panic goes to the hook that was there before.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            match text {
                Some(text) if text.contains(EXPECTED_PANIC) => eprintln!("expected panic: {text}"),
                _ => previous(info),
            }
        }));
    });
}

/// Runs `scenario` on a thread of its own and fails if it panics or outlives [`LIMIT`].
pub fn bounded(scenario: fn()) {
    quiet_expected_panics();
    let (tx, rx) = mpsc::channel();
    let worker = thread::Builder::new()
        .name("scenario".into())
        .spawn(move || {
            scenario();
            let _ = tx.send(());
        })
        .expect("a thread for the scenario");
    match rx.recv_timeout(LIMIT) {
        Ok(()) => worker.join().expect("the scenario finished"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The scenario panicked: report its panic.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("scenario took longer than {LIMIT:?}"),
    }
}

/// Waits until `check` holds, looking every 5 ms, for at most [`PROMPTLY`].
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PROMPTLY, "never: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// `len` bytes of a pattern that shows misplaced or lost blocks.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A UDP socket on 127.0.0.1 that never answers, and the count of datagrams it received.
pub fn silent_peer() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
    let addr = socket.local_addr().expect("a bound socket");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while socket.recv_from(&mut buf).is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

/// Transmission parameters for scenarios that wait for retransmission timers: ACK_TIMEOUT
/// `ack` without random factor, and `retransmits` retransmissions.
pub fn quick_config(ack: Duration, retransmits: u32) -> Config {
    let mut config = Config::default();
    config.ack_timeout = ack;
    config.ack_random_factor = 1.0;
    config.max_retransmit = retransmits;
    config
}

/// The text `/opts` answers with: the options a request builder can set, one field each.
pub fn options_summary(request: &Message) -> String {
    let o = &request.options;
    let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!(
        "cf={:?} accept={:?} etags={:?} ifm={:?} inm={} q={:?} s={:?} u={:?} x={:?} t={}",
        o.content_format().map(|c| c.0),
        o.accept().map(|c| c.0),
        o.etags().map(hex).collect::<Vec<_>>(),
        o.if_match().map(hex).collect::<Vec<_>>(),
        o.if_none_match(),
        o.uri_query().collect::<Vec<_>>(),
        o.get_str(OptionNumber(65000)),
        o.get_uint(OptionNumber(65004)),
        o.get(OptionNumber(65008)).map(hex),
        request.mtype,
    )
}
