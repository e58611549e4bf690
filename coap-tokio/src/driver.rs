//! The driver: one task per socket that owns the [`Endpoint`] and moves datagrams, time,
//! commands and events between it, the socket and the user's handles.
//!
//! Nothing else touches the engine, so it needs no lock. Handles reach the driver through two
//! channels:
//!
//! * `commands`, bounded: everything a user asks for (start a request, list what is pending,
//!   shut down). A full channel makes the asking task wait, which is the backpressure.
//! * `internal`, unbounded but bounded in practice: messages that must be sent from `Drop` or
//!   from a place that cannot wait: cancelling a dropped request, a handler's answer, a
//!   dropped responder. Each message belongs to one live exchange and each exchange sends at
//!   most one, so the queue never holds more than the engine's own bounds
//!   ([`Config::max_client_exchanges`] plus [`Config::max_server_exchanges`]).
//!
//! One wake-up of the loop does a bounded amount of work: at most [`BATCH`] datagrams read,
//! [`BATCH`] sent, [`BATCH`] commands and [`BATCH`] internal messages. When a limit is hit the
//! driver yields to the runtime and comes straight back.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use coap_proto::endpoint::{Event, Failure, Stats};
use coap_proto::msg::{Code, Message, Token};
use coap_proto::uri::CoapUri;
use coap_proto::{Endpoint, IncomingId, Request, RequestId, Response};
use coap_udp::{DatagramIo, RecvEnd};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn, Instrument, Span};

use crate::incoming::{IncomingRequest, Reply};
use crate::response::Notification;
use crate::socket::to_user;
use crate::{Error, IncomingResponse};

/// The most datagrams, sends, commands or internal messages handled per wake-up.
pub(crate) const BATCH: usize = 64;

/// Capacity of the command channel.
pub(crate) const COMMAND_CAPACITY: usize = 1024;

/// Capacity of the channel behind a multicast response stream; responses beyond it are dropped
/// (and traced) while the stream's owner does not read.
pub(crate) const MULTICAST_CAPACITY: usize = 256;

/// Capacity of the channel behind an observation; notifications beyond it are dropped while
/// the observer does not read (only the latest state matters, RFC 7641 §1.3).
pub(crate) const OBSERVE_CAPACITY: usize = 64;

/// A future a handler returns, boxed.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// What serves incoming requests: the server's router. A plain client has none and answers
/// every request 4.04 Not Found.
pub(crate) trait Service: Send + Sync + 'static {
    /// Starts handling `request`, or answers at once (for 4.04, 4.05 and
    /// `/.well-known/core`).
    fn call(&self, request: IncomingRequest) -> Dispatch;

    /// The number of observers of the resource at `path` changed.
    fn observers_changed(&self, path: &str, count: usize);
}

/// What a [`Service`] made of a request.
pub(crate) struct Dispatch {
    /// The handler's answer, to come.
    pub(crate) future: HandlerFuture,
    /// The request registers an observation (RFC 7641) on an observable route that accepts
    /// it: the engine is told before the answer, so a 2.xx answer makes the client an observer.
    pub(crate) accept_observer: bool,
}

/// A command from a user handle.
pub(crate) enum Command {
    Request {
        ticket: u64,
        remote: SocketAddr,
        request: Box<Request>,
        uri: Arc<CoapUri>,
        reply: Waiting,
    },
    CancelObservation {
        ticket: u64,
        reply: oneshot::Sender<bool>,
    },
    Notify {
        path: String,
        representation: Option<Box<Response>>,
        reply: oneshot::Sender<usize>,
    },
    ObserverCount {
        path: String,
        reply: oneshot::Sender<usize>,
    },
    Ping {
        ticket: u64,
        remote: SocketAddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Cancel {
        id: RequestId,
        reply: oneshot::Sender<bool>,
    },
    PendingRequests(oneshot::Sender<Vec<PendingRequest>>),
    PendingIncoming(oneshot::Sender<Vec<PendingIncoming>>),
    Stats(oneshot::Sender<Stats>),
    Shutdown(oneshot::Sender<()>),
}

/// Who waits for the outcome of a client exchange.
pub(crate) enum Waiting {
    /// A unicast request: one response or one error.
    Once(oneshot::Sender<Result<IncomingResponse, Error>>),
    /// A multicast request: responses until the window closes (the sender is then dropped).
    Many(mpsc::Sender<Result<IncomingResponse, Error>>),
    /// An observation: notifications until it ends (the sender is then dropped).
    Observe(mpsc::Sender<Result<Notification, Error>>),
}

impl Waiting {
    fn is_closed(&self) -> bool {
        match self {
            Waiting::Once(tx) => tx.is_closed(),
            Waiting::Many(tx) => tx.is_closed(),
            Waiting::Observe(tx) => tx.is_closed(),
        }
    }

    /// Hands over the final error of the exchange.
    fn fail(self, error: Error) {
        match self {
            Waiting::Once(tx) => {
                let _ = tx.send(Err(error));
            }
            Waiting::Many(tx) => {
                let _ = tx.try_send(Err(error));
            }
            Waiting::Observe(tx) => {
                let _ = tx.try_send(Err(error));
            }
        }
    }
}

/// Messages that must be sendable without waiting (see the module documentation).
pub(crate) enum Internal {
    /// The future or stream with this ticket was dropped before its exchange ended.
    Cancel(u64),
    /// An answer to an incoming request, from a handler task or a responder.
    Respond {
        id: IncomingId,
        response: Box<Response>,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
    /// A handler task or responder went away without answering.
    Abandoned(IncomingId),
}

/// A request this endpoint sent and that has not ended yet (see
/// [`Client::pending_requests`](crate::Client::pending_requests)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingRequest {
    /// The engine's id; pass it to [`Client::cancel`](crate::Client::cancel).
    pub id: RequestId,
    /// The method (0.00 for a ping).
    pub method: Code,
    /// The request's URI (for a ping, the peer's address as a URI).
    pub uri: String,
    /// The peer.
    pub peer: SocketAddr,
    /// The token (empty for a ping).
    pub token: Token,
}

/// A request this endpoint received and has not answered yet (see
/// [`ServerHandle::pending_incoming`](crate::ServerHandle::pending_incoming)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingIncoming {
    /// The engine's id.
    pub id: IncomingId,
    /// The method.
    pub method: Code,
    /// The request's path and query, as `/a/b?x=1`.
    pub uri: String,
    /// Who sent it.
    pub peer: SocketAddr,
    /// Its token.
    pub token: Token,
}

/// The part of a driver that handles share: the socket (for options and multicast groups,
/// which need no engine) and the channels.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) internal: mpsc::UnboundedSender<Internal>,
    pub(crate) next_ticket: AtomicU64,
}

impl Shared {
    pub(crate) fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a command, waiting while the channel is full.
    pub(crate) async fn command(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// Asks the driver something and waits for the answer.
    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.command(make(tx)).await?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }
}

/// Converts between tokio's clock and the engine's microseconds. The origin is taken when the
/// socket is bound, so tokio's paused test clock drives the engine too.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> coap_proto::Instant {
        let elapsed = self.origin.elapsed();
        coap_proto::Instant::from_micros(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
    }

    pub(crate) fn to_tokio(self, t: coap_proto::Instant) -> tokio::time::Instant {
        self.origin
            .checked_add(Duration::from_micros(t.as_micros()))
            // Far beyond any real deadline; a year is enough to mean "not soon".
            .unwrap_or_else(|| self.origin + Duration::from_secs(365 * 24 * 3600))
    }
}

/// Bookkeeping for one client exchange.
struct Waiter {
    ticket: u64,
    kind: WaiterKind,
    span: Span,
}

enum WaiterKind {
    Request(Waiting, Arc<CoapUri>),
    Ping(oneshot::Sender<Result<(), Error>>, SocketAddr),
}

impl Waiter {
    fn uri(&self) -> String {
        match &self.kind {
            WaiterKind::Request(_, uri) => uri.to_string(),
            WaiterKind::Ping(_, peer) => format!("coap://{peer}"),
        }
    }
}

/// Bookkeeping for one incoming request handed to the application.
struct IncomingMeta {
    method: Code,
    uri: String,
    peer: SocketAddr,
    token: Token,
}

/// Why the driver loop stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// `Endpoint::close` was called; stop when the engine is idle or at the deadline.
    Closing(coap_proto::Instant),
}

/// The driver task's state.
pub(crate) struct Driver {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    ep: Endpoint,
    clock: Clock,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    service: Option<Arc<dyn Service>>,
    waiters: HashMap<RequestId, Waiter>,
    tickets: HashMap<u64, RequestId>,
    incoming: HashMap<IncomingId, IncomingMeta>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// Stop when every handle is gone (a client) or only on shutdown (a server).
    stop_when_orphaned: bool,
    grace: Duration,
    phase: Phase,
    /// The socket's batches: datagrams in, and those taken from the engine that the socket
    /// has not taken yet.
    io: DatagramIo,
}

/// Everything needed to start a driver.
pub(crate) struct DriverParts {
    pub(crate) socket: UdpSocket,
    pub(crate) endpoint: Endpoint,
    pub(crate) service: Option<Arc<dyn Service>>,
    pub(crate) stop_when_orphaned: bool,
    pub(crate) grace: Duration,
}

impl Driver {
    /// Builds the driver and the state its handles share.
    pub(crate) fn new(parts: DriverParts) -> Result<(Driver, Arc<Shared>), Error> {
        let local_addr = parts.socket.local_addr()?;
        let socket = Arc::new(parts.socket);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (int_tx, int_rx) = mpsc::unbounded_channel();
        let max_message_size = parts.endpoint.config().max_message_size;
        let shared = Arc::new(Shared {
            socket: Arc::clone(&socket),
            local_addr,
            commands: cmd_tx,
            internal: int_tx.clone(),
            next_ticket: AtomicU64::new(1),
        });
        let driver = Driver {
            socket,
            local_addr,
            ep: parts.endpoint,
            clock: Clock::new(),
            commands: cmd_rx,
            commands_open: true,
            internal_rx: int_rx,
            internal_tx: int_tx,
            service: parts.service,
            waiters: HashMap::new(),
            tickets: HashMap::new(),
            incoming: HashMap::new(),
            shutdown_waiters: Vec::new(),
            stop_when_orphaned: parts.stop_when_orphaned,
            grace: parts.grace,
            phase: Phase::Running,
            io: DatagramIo::new(local_addr, max_message_size),
        };
        Ok((driver, shared))
    }

    /// Sets what serves incoming requests.
    pub(crate) fn set_service(&mut self, service: Arc<dyn Service>) {
        self.service = Some(service);
    }

    /// Runs until shut down: by `shutdown` resolving, by a [`Command::Shutdown`], or (for a
    /// client) once every handle is gone. Returns an error only if the socket fails for good.
    pub(crate) async fn run(
        mut self,
        shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    ) -> Result<(), Error> {
        let mut shutdown = shutdown;
        let mut sleep = Box::pin(tokio::time::sleep_until(
            self.clock.to_tokio(coap_proto::Instant::MAX),
        ));
        let span = tracing::debug_span!("coap_driver", local = %self.local_addr);
        async move {
            debug!("driver started");
            loop {
                let now = self.clock.now();
                // Trust the clock, not the sleep: a timer is due when now has reached it.
                if self.ep.poll_timeout().is_some_and(|d| now >= d) {
                    self.ep.handle_timeout(now);
                }
                self.process_events(now);
                let more_tx = self.flush(now);
                self.process_events(now);
                if self.should_stop(now) {
                    break;
                }
                if more_tx {
                    tokio::task::yield_now().await;
                    continue;
                }
                let deadline = self.ep.poll_timeout();
                let closing_deadline = match self.phase {
                    Phase::Closing(d) => Some(d),
                    Phase::Running => None,
                };
                let wake_at = [deadline, closing_deadline].into_iter().flatten().min();
                if let Some(d) = wake_at {
                    if self.clock.now() >= d {
                        continue;
                    }
                    sleep.as_mut().reset(self.clock.to_tokio(d));
                }
                let interest = if self.io.has_unsent() {
                    Interest::READABLE | Interest::WRITABLE | Interest::ERROR
                } else {
                    Interest::READABLE | Interest::ERROR
                };
                let wake = tokio::select! {
                    ready = self.socket.ready(interest) => Wake::Socket(ready),
                    cmd = self.commands.recv(), if self.commands_open => Wake::Command(cmd),
                    msg = self.internal_rx.recv() => Wake::Internal(msg),
                    () = &mut sleep, if wake_at.is_some() => Wake::Timer,
                    () = wait_for(&mut shutdown) => Wake::Shutdown,
                };
                let now = self.clock.now();
                let mut busy = false;
                match wake {
                    Wake::Socket(Ok(ready)) => {
                        if ready.is_readable() || ready.is_error() {
                            busy |= self.receive(now, ready.is_error());
                        }
                    }
                    Wake::Socket(Err(e)) => {
                        warn!(error = %e, "socket readiness failed");
                        return Err(Error::Io(e));
                    }
                    Wake::Command(Some(cmd)) => {
                        // Internal messages first: a future dropped before its task sent
                        // this command has its cancel handled before the command.
                        busy |= self.drain_internal(now);
                        self.command(now, cmd);
                        busy |= self.drain_commands(now);
                    }
                    Wake::Command(None) => {
                        self.commands_open = false;
                        if self.stop_when_orphaned {
                            self.begin_shutdown(now);
                        }
                    }
                    Wake::Internal(Some(msg)) => {
                        self.internal(now, msg);
                        busy |= self.drain_internal(now);
                    }
                    // The driver holds a sender itself, so this channel never closes.
                    Wake::Internal(None) => {}
                    Wake::Timer => {}
                    Wake::Shutdown => {
                        shutdown = None;
                        self.begin_shutdown(now);
                    }
                }
                if busy {
                    self.process_events(now);
                    self.flush(now);
                    tokio::task::yield_now().await;
                }
            }
            self.finish();
            debug!("driver stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn should_stop(&self, now: coap_proto::Instant) -> bool {
        match self.phase {
            Phase::Running => false,
            Phase::Closing(deadline) => {
                (self.ep.is_idle() && !self.io.has_unsent()) || now >= deadline
            }
        }
    }

    fn begin_shutdown(&mut self, now: coap_proto::Instant) {
        if self.phase != Phase::Running {
            return;
        }
        debug!(
            pending_requests = self.waiters.len(),
            pending_incoming = self.incoming.len(),
            "shutting down"
        );
        self.ep.close(now);
        self.phase = Phase::Closing(now + self.grace);
    }

    /// Ends what is left once the loop stops: waiting requests fail with `ShuttingDown`.
    fn finish(&mut self) {
        for (_, waiter) in self.waiters.drain() {
            match waiter.kind {
                WaiterKind::Request(waiting, _) => waiting.fail(Error::ShuttingDown),
                WaiterKind::Ping(tx, _) => {
                    let _ = tx.send(Err(Error::ShuttingDown));
                }
            }
        }
        self.tickets.clear();
        if !self.incoming.is_empty() {
            warn!(
                unanswered = self.incoming.len(),
                "stopped with requests unanswered"
            );
        }
        for tx in self.shutdown_waiters.drain(..) {
            let _ = tx.send(());
        }
    }

    // ----------------------------------------------------------------------------------------
    // Socket
    // ----------------------------------------------------------------------------------------

    /// Reads up to [`BATCH`] datagrams into the engine, many per system call where the
    /// system allows (see [`coap_udp`]). Returns true if the batch limit was hit (more may be
    /// waiting).
    ///
    /// `errors` says the socket reported an error condition: the error queue is read then,
    /// and whenever a receive reports an unreachable peer.
    fn receive(&mut self, now: coap_proto::Instant, errors: bool) -> bool {
        let socket = TokioSocket(&self.socket);
        match self.io.receive(&socket, &mut self.ep, now, BATCH).end {
            RecvEnd::Drained => {
                if errors {
                    self.io.report_unreachable(&socket, &mut self.ep, now);
                }
                false
            }
            RecvEnd::Failed(e) => {
                // Readiness stays set: report busy so the loop yields before retrying.
                warn!(error = %e, "receive failed");
                true
            }
            _ => true,
        }
    }

    /// Hands datagrams from the engine to the socket, up to [`BATCH`] of them, many per
    /// system call where the system allows (see [`coap_udp`]). Keeps those the socket would
    /// not take yet. Returns true if more are waiting.
    fn flush(&mut self, now: coap_proto::Instant) -> bool {
        self.io
            .flush(&TokioSocket(&self.socket), &mut self.ep, now, BATCH)
    }

    // ----------------------------------------------------------------------------------------
    // Commands and internal messages
    // ----------------------------------------------------------------------------------------

    fn drain_commands(&mut self, now: coap_proto::Instant) -> bool {
        for _ in 0..BATCH {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(now, cmd),
                Err(_) => return false,
            }
        }
        true
    }

    fn drain_internal(&mut self, now: coap_proto::Instant) -> bool {
        for _ in 0..BATCH {
            match self.internal_rx.try_recv() {
                Ok(msg) => self.internal(now, msg),
                Err(_) => return false,
            }
        }
        true
    }

    fn command(&mut self, now: coap_proto::Instant, cmd: Command) {
        match cmd {
            Command::Request {
                ticket,
                remote,
                request,
                uri,
                reply,
            } => {
                if reply.is_closed() {
                    // Its future was dropped before the driver got here.
                    return;
                }
                let method = request.method;
                let started = if matches!(reply, Waiting::Observe(_)) {
                    self.ep.observe(now, remote, *request)
                } else {
                    self.ep.request(now, remote, *request)
                };
                match started {
                    Ok(id) => {
                        let span = tracing::debug_span!(
                            "coap_request",
                            %id,
                            %method,
                            uri = %uri,
                            peer = %to_user(remote)
                        );
                        span.in_scope(|| debug!("request started"));
                        self.tickets.insert(ticket, id);
                        self.waiters.insert(
                            id,
                            Waiter {
                                ticket,
                                kind: WaiterKind::Request(reply, uri),
                                span,
                            },
                        );
                    }
                    Err(e) => {
                        debug!(%method, uri = %uri, error = %e, "request refused");
                        reply.fail(e.into());
                    }
                }
            }
            Command::Ping {
                ticket,
                remote,
                reply,
            } => {
                if reply.is_closed() {
                    return;
                }
                match self.ep.ping(now, remote) {
                    Ok(id) => {
                        let span = tracing::debug_span!("coap_ping", %id, peer = %to_user(remote));
                        self.tickets.insert(ticket, id);
                        self.waiters.insert(
                            id,
                            Waiter {
                                ticket,
                                kind: WaiterKind::Ping(reply, to_user(remote)),
                                span,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::CancelObservation { ticket, reply } => {
                let Some(id) = self.tickets.get(&ticket).copied() else {
                    let _ = reply.send(false);
                    return;
                };
                // Active cancellation (RFC 7641 §3.6) once established; before that, the
                // registration itself is cancelled.
                let done = self.ep.cancel_observation(now, id) || self.ep.cancel(now, id);
                let _ = reply.send(done);
            }
            Command::Notify {
                path,
                representation,
                reply,
            } => {
                let n = self.ep.notify(now, &path, representation.map(|r| *r));
                debug!(resource = %path, observers = n, "resource changed");
                let _ = reply.send(n);
            }
            Command::ObserverCount { path, reply } => {
                let _ = reply.send(self.ep.observer_count(&path));
            }
            Command::Cancel { id, reply } => {
                let _ = reply.send(self.ep.cancel(now, id));
            }
            Command::PendingRequests(reply) => {
                let list = self
                    .ep
                    .pending_requests()
                    .map(|(id, peer, method, token)| PendingRequest {
                        id,
                        method,
                        uri: self.waiters.get(&id).map(Waiter::uri).unwrap_or_default(),
                        peer: to_user(peer),
                        token: token.clone(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::PendingIncoming(reply) => {
                let list = self
                    .ep
                    .pending_incoming()
                    .filter_map(|(id, _)| {
                        self.incoming.get(&id).map(|m| PendingIncoming {
                            id,
                            method: m.method,
                            uri: m.uri.clone(),
                            peer: m.peer,
                            token: m.token.clone(),
                        })
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.ep.stats());
            }
            Command::Shutdown(reply) => {
                self.shutdown_waiters.push(reply);
                self.begin_shutdown(now);
            }
        }
    }

    fn internal(&mut self, now: coap_proto::Instant, msg: Internal) {
        match msg {
            Internal::Cancel(ticket) => {
                if let Some(id) = self.tickets.get(&ticket).copied() {
                    trace!(%id, "request dropped: cancelling");
                    self.ep.cancel(now, id);
                }
            }
            Internal::Respond { id, response, done } => {
                let result = self.respond(now, id, *response);
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Internal::Abandoned(id) => {
                if self.incoming.contains_key(&id) {
                    warn!(%id, "request abandoned without an answer: 5.00");
                    let _ = self.respond(now, id, Response::new(Code::INTERNAL_SERVER_ERROR));
                }
            }
        }
    }

    fn respond(
        &mut self,
        now: coap_proto::Instant,
        id: IncomingId,
        response: Response,
    ) -> Result<(), Error> {
        let code = response.code;
        let result = self.ep.respond(now, id, response);
        match &result {
            Ok(()) => {
                self.incoming.remove(&id);
                debug!(%id, %code, "response sent");
            }
            Err(coap_proto::endpoint::RespondError::UnknownRequest(_)) => {
                self.incoming.remove(&id);
            }
            Err(e) => {
                // The request still waits: answer it with 5.00 rather than leave it hanging.
                warn!(%id, %code, error = %e, "response refused by the engine: 5.00 instead");
                if self
                    .ep
                    .respond(now, id, Response::new(Code::INTERNAL_SERVER_ERROR))
                    .is_ok()
                {
                    self.incoming.remove(&id);
                }
            }
        }
        result.map_err(Error::from)
    }

    // ----------------------------------------------------------------------------------------
    // Events
    // ----------------------------------------------------------------------------------------

    fn process_events(&mut self, now: coap_proto::Instant) {
        while let Some(event) = self.ep.poll_event() {
            match event {
                Event::Response { id, peer, response } => self.on_response(id, peer, response),
                Event::RequestFailed { id, reason } => self.on_failed(id, reason),
                Event::MulticastDone { id } => {
                    if let Some(w) = self.take_waiter(id) {
                        w.span.in_scope(|| debug!("multicast window closed"));
                    }
                }
                Event::Pong { id } => {
                    if let Some(w) = self.take_waiter(id) {
                        w.span.in_scope(|| debug!("pong"));
                        if let WaiterKind::Ping(tx, _) = w.kind {
                            let _ = tx.send(Ok(()));
                        }
                    }
                }
                Event::Request {
                    id,
                    peer,
                    request,
                    multicast,
                } => self.dispatch(now, id, peer, request, multicast, false),
                Event::ResponseConfirmed { id } => trace!(%id, "response acknowledged"),
                Event::ResponseNotConfirmed { id, reason } => {
                    warn!(%id, %reason, "confirmable response not acknowledged")
                }
                Event::MessageIdsExhausted { peer, until } => {
                    warn!(%peer, %until, "message IDs towards peer exhausted; requests wait")
                }
                Event::Notification {
                    id,
                    peer,
                    response,
                    fresh,
                } => self.on_notification(id, peer, response, fresh),
                Event::RenderNotification {
                    id,
                    resource,
                    request,
                } => {
                    trace!(%id, %resource, "rendering a notification");
                    self.dispatch(now, id, self.local_addr, request, false, true);
                }
                Event::ObserverAdded {
                    resource,
                    peer,
                    observers,
                    ..
                } => {
                    debug!(%resource, peer = %to_user(peer), observers, "observer added");
                    if let Some(service) = &self.service {
                        service.observers_changed(&resource, observers);
                    }
                }
                Event::ObserverRemoved {
                    resource,
                    peer,
                    reason,
                    observers,
                    ..
                } => {
                    debug!(%resource, peer = %to_user(peer), ?reason, observers, "observer removed");
                    if let Some(service) = &self.service {
                        service.observers_changed(&resource, observers);
                    }
                }
                Event::Progress { id, progress } => trace!(%id, ?progress, "progress"),
                other => trace!(event = ?other, "unhandled event"),
            }
        }
    }

    fn take_waiter(&mut self, id: RequestId) -> Option<Waiter> {
        let waiter = self.waiters.remove(&id)?;
        self.tickets.remove(&waiter.ticket);
        Some(waiter)
    }

    fn on_response(&mut self, id: RequestId, peer: SocketAddr, response: Message) {
        if let Some(w) = self.waiters.get(&id) {
            if let WaiterKind::Request(Waiting::Many(tx), uri) = &w.kind {
                let code = response.code;
                let rsp = IncomingResponse {
                    peer: to_user(peer),
                    uri: Arc::clone(uri),
                    message: response,
                };
                w.span
                    .in_scope(|| debug!(%code, peer = %to_user(peer), "multicast response"));
                if tx.try_send(Ok(rsp)).is_err() {
                    w.span
                        .in_scope(|| debug!("multicast response dropped: stream not read"));
                }
                return;
            }
        }
        let Some(w) = self.take_waiter(id) else {
            return;
        };
        let code = response.code;
        w.span.in_scope(|| debug!(%code, "response"));
        match w.kind {
            WaiterKind::Request(Waiting::Once(tx), uri) => {
                let _ = tx.send(Ok(IncomingResponse {
                    peer: to_user(peer),
                    uri,
                    message: response,
                }));
            }
            // The last word of an observation: the server did not register us, or it
            // answered our deregistration.
            WaiterKind::Request(Waiting::Observe(tx), uri) => {
                let _ = tx.try_send(Ok(Notification {
                    response: IncomingResponse {
                        peer: to_user(peer),
                        uri,
                        message: response,
                    },
                    fresh: true,
                }));
            }
            WaiterKind::Request(Waiting::Many(_), _) | WaiterKind::Ping(..) => {}
        }
    }

    fn on_notification(&mut self, id: RequestId, peer: SocketAddr, response: Message, fresh: bool) {
        let Some(w) = self.waiters.get(&id) else {
            return;
        };
        let WaiterKind::Request(Waiting::Observe(tx), uri) = &w.kind else {
            return;
        };
        let code = response.code;
        let notification = Notification {
            response: IncomingResponse {
                peer: to_user(peer),
                uri: Arc::clone(uri),
                message: response,
            },
            fresh,
        };
        w.span.in_scope(|| debug!(%code, fresh, "notification"));
        if tx.try_send(Ok(notification)).is_err() {
            // Only the latest state matters in an observation (RFC 7641 §1.3): a reader that
            // falls behind misses intermediate ones.
            w.span
                .in_scope(|| debug!("notification dropped: stream not read"));
        }
    }

    fn on_failed(&mut self, id: RequestId, reason: Failure) {
        let Some(w) = self.take_waiter(id) else {
            return;
        };
        if reason == Failure::Cancelled {
            w.span.in_scope(|| debug!("cancelled"));
        } else {
            w.span.in_scope(|| warn!(%reason, "request failed"));
        }
        let error = Error::from(reason);
        match w.kind {
            WaiterKind::Request(waiting, _) => waiting.fail(error),
            WaiterKind::Ping(tx, _) => {
                let _ = tx.send(Err(error));
            }
        }
    }

    /// Hands an incoming request to the service. The handler's future is polled once right
    /// here: a handler that is ready at once costs no task and its answer is piggybacked on
    /// the ACK. Only a handler that has to wait is spawned.
    fn dispatch(
        &mut self,
        now: coap_proto::Instant,
        id: IncomingId,
        peer: SocketAddr,
        message: Message,
        multicast: bool,
        render: bool,
    ) {
        let user_peer = to_user(peer);
        let uri = request_target(&message);
        let span = tracing::debug_span!(
            "coap_incoming",
            %id,
            method = %message.code,
            uri = %uri,
            peer = %user_peer
        );
        span.in_scope(|| debug!(mtype = %message.mtype, len = message.payload.len(), "request"));
        self.incoming.insert(
            id,
            IncomingMeta {
                method: message.code,
                uri,
                peer: user_peer,
                token: message.token.clone(),
            },
        );
        let Some(service) = self.service.clone() else {
            let _ = self.respond(now, id, Response::new(Code::NOT_FOUND));
            return;
        };
        let request = IncomingRequest {
            id,
            peer: user_peer,
            message,
            multicast,
            render,
            matched: 0,
            internal: self.internal_tx.clone(),
        };
        let polled = {
            let _entered = span.enter();
            let ep = &mut self.ep;
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let Dispatch {
                    mut future,
                    accept_observer,
                } = service.call(request);
                if accept_observer && !render {
                    if let Err(e) = ep.accept_observer(id) {
                        debug!(error = ?e, "registration not accepted");
                    }
                }
                let mut cx = Context::from_waker(Waker::noop());
                match future.as_mut().poll(&mut cx) {
                    Poll::Ready(reply) => Ok(reply),
                    Poll::Pending => Err(future),
                }
            }))
        };
        match polled {
            Ok(Ok(Reply::Response(response))) => {
                let _ = span.in_scope(|| self.respond(now, id, response));
            }
            Ok(Ok(Reply::Deferred(_))) => {
                span.in_scope(|| debug!("deferred to a responder"));
            }
            Ok(Err(fut)) => {
                span.in_scope(|| trace!("handler pending: spawned"));
                let guard = AnswerGuard {
                    id,
                    internal: Some(self.internal_tx.clone()),
                };
                tokio::spawn(
                    async move {
                        let reply = fut.await;
                        guard.answer(reply);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                span.in_scope(|| warn!("handler panicked: 5.00"));
                let _ = self.respond(now, id, Response::new(Code::INTERNAL_SERVER_ERROR));
            }
        }
    }
}

/// Owned by a spawned handler task: sends the handler's answer, or, if the task ends without
/// one (it panicked or was aborted), reports the request abandoned so it is answered 5.00.
struct AnswerGuard {
    id: IncomingId,
    internal: Option<mpsc::UnboundedSender<Internal>>,
}

impl AnswerGuard {
    fn answer(mut self, reply: Reply) {
        let Some(internal) = self.internal.take() else {
            return;
        };
        if let Reply::Response(response) = reply {
            let _ = internal.send(Internal::Respond {
                id: self.id,
                response: Box::new(response),
                done: None,
            });
        }
    }
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        if let Some(internal) = self.internal.take() {
            let _ = internal.send(Internal::Abandoned(self.id));
        }
    }
}

enum Wake {
    Socket(io::Result<tokio::io::Ready>),
    Command(Option<Command>),
    Internal(Option<Internal>),
    Timer,
    Shutdown,
}

/// Waits for the shutdown signal if there is one, forever otherwise.
async fn wait_for(signal: &mut Option<Pin<Box<dyn Future<Output = ()> + Send>>>) {
    match signal {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The driver's socket calls, in the form [`coap_udp::DatagramIo`] makes them.
struct TokioSocket<'a>(&'a UdpSocket);

impl coap_udp::DatagramSocket for TokioSocket<'_> {
    fn recv(&self, batch: &mut coap_udp::RecvBatch) -> io::Result<usize> {
        // Inside `try_io`, so that a `WouldBlock` clears the readiness tokio cached.
        #[cfg(target_os = "linux")]
        return self.0.try_io(Interest::READABLE, || batch.recv(self.0));
        #[cfg(not(target_os = "linux"))]
        return batch.recv_with(|buf| self.0.try_recv_from(buf));
    }

    fn send(&self, batch: &mut coap_udp::SendBatch) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        return self.0.try_io(Interest::WRITABLE, || batch.send(self.0));
        #[cfg(not(target_os = "linux"))]
        return batch.send_with(|bytes, remote| self.0.try_send_to(bytes, remote));
    }

    #[cfg(target_os = "linux")]
    fn unreachable_peers(&self) -> Vec<SocketAddr> {
        let mut peers = Vec::new();
        let mut called = false;
        // Read inside `try_io`, so that the error readiness tokio cached is cleared once the
        // queue is empty (else the socket stays "ready" and the loop would spin), without
        // losing an error that arrives meanwhile.
        let _ = self.0.try_io(Interest::ERROR, || {
            called = true;
            peers = coap_udp::error_queue_peers(self.0);
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        if !called {
            peers = coap_udp::error_queue_peers(self.0);
        }
        peers
    }

    #[cfg(not(target_os = "linux"))]
    fn unreachable_peers(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
}

/// `/path?query` of a request, for tracing and introspection.
fn request_target(message: &Message) -> String {
    let mut out = String::new();
    for segment in message.options.uri_path() {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    let mut sep = '?';
    for arg in message.options.uri_query() {
        out.push(sep);
        out.push_str(arg);
        sep = '&';
    }
    out
}
