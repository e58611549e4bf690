//! The driver: one future per socket that owns the [`Endpoint`] and moves datagrams, time,
//! commands and events between the engine, the socket and the user's handles.
//!
//! Only the driver touches the engine, so the engine needs no lock. Handles reach it through
//! two async-channel queues:
//!
//! * `commands`, bounded ([`COMMAND_CAPACITY`]): what users ask for. A full queue makes the
//!   asking task wait; that is the backpressure.
//! * `internal`, unbounded but bounded in practice: what must be sent without waiting, from
//!   `Drop` or from a handler task: the cancel of a dropped request, a handler's answer, an
//!   abandoned responder. Each such message belongs to one live exchange, which sends at most
//!   one, so the queue never holds more than the engine's own exchange limits.
//!
//! The socket is an [`async_io::Async`] UDP socket. The driver reads it without waiting while
//! it may hold datagrams, and waits for readiness only after `WouldBlock`; one wake-up reads,
//! sends and takes at most [`BATCH`] datagrams, sends, commands and internal messages, then
//! yields when more is waiting. Deadlines come from [`Endpoint::poll_timeout`] and are
//! awaited with an [`async_io::Timer`]; the clock is checked against the deadline before
//! the timer is trusted.
//!
//! Handlers that cannot answer at once run as tasks of an [`async_executor::Executor`] owned
//! by the driver and polled by the driver's own future: they run wherever the future returned
//! by [`Server::serve`](crate::Server::serve) is polled, whatever the executor.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_channel::{Receiver, Sender, TryRecvError};
use async_executor::Executor;
use async_io::{Async, Timer};
use coap_proto::endpoint::{Event, Failure, Stats};
use coap_proto::msg::{Code, Message, Token};
use coap_proto::uri::CoapUri;
use coap_proto::{Endpoint, IncomingId, Request, RequestId, Response};
use coap_udp::{DatagramIo, RecvEnd, StdSocket};
use futures_lite::{future, FutureExt, StreamExt};
use tracing::{debug, trace, warn, Instrument, Span};

use crate::incoming::{IncomingRequest, Reply};
use crate::response::Notification;
use crate::socket::to_user;
use crate::{Error, IncomingResponse};

/// The most datagrams read or sent, commands or internal messages taken per wake-up.
pub(crate) const BATCH: usize = 64;

/// Capacity of the command queue.
pub(crate) const COMMAND_CAPACITY: usize = 1024;

/// Capacity of the queue behind a multicast response stream; further responses are dropped
/// (and traced) while nobody reads.
pub(crate) const MULTICAST_CAPACITY: usize = 256;

/// Capacity of the queue behind an observation; further notifications are dropped while
/// nobody reads (only the latest state matters, RFC 7641 §1.3).
pub(crate) const OBSERVE_CAPACITY: usize = 64;

/// A channel for one answer.
pub(crate) fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    async_channel::bounded(1)
}

/// A handler's future, boxed.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A future that asks for a graceful shutdown when it resolves.
pub(crate) type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What serves incoming requests (the server's [`Router`](crate::Router)). Without one,
/// every request is answered 4.04.
pub(crate) trait Service: Send + Sync + 'static {
    /// Routes `request`: a handler's future, or an answer at once (4.04, 4.05,
    /// `/.well-known/core`).
    fn call(&self, request: IncomingRequest) -> Dispatch;

    /// The number of observers of `path` is now `count`.
    fn observers_changed(&self, path: &str, count: usize);
}

/// A routed request.
pub(crate) struct Dispatch {
    /// The answer to come.
    pub(crate) future: HandlerFuture,
    /// The request registers with an observable route that takes it: the engine learns it
    /// before the answer, so a 2.xx answer makes the client an observer (RFC 7641 §4.1).
    pub(crate) accept_observer: bool,
}

/// A request from a user handle.
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
        reply: Sender<bool>,
    },
    Notify {
        path: String,
        representation: Option<Box<Response>>,
        reply: Sender<usize>,
    },
    ObserverCount {
        path: String,
        reply: Sender<usize>,
    },
    Ping {
        ticket: u64,
        remote: SocketAddr,
        reply: Sender<Result<(), Error>>,
    },
    Cancel {
        id: RequestId,
        reply: Sender<bool>,
    },
    PendingRequests(Sender<Vec<PendingRequest>>),
    PendingIncoming(Sender<Vec<PendingIncoming>>),
    Stats(Sender<Stats>),
    Shutdown(Sender<()>),
}

/// Who waits for a client exchange.
pub(crate) enum Waiting {
    /// One response or one error.
    Once(Sender<Result<IncomingResponse, Error>>),
    /// Multicast: responses until the window closes, then the sender is dropped.
    Many(Sender<Result<IncomingResponse, Error>>),
    /// Observation: notifications until it ends, then the sender is dropped.
    Observe(Sender<Result<Notification, Error>>),
}

impl Waiting {
    fn is_closed(&self) -> bool {
        match self {
            Waiting::Once(tx) | Waiting::Many(tx) => tx.is_closed(),
            Waiting::Observe(tx) => tx.is_closed(),
        }
    }

    /// Delivers the error that ends the exchange.
    fn fail(self, error: Error) {
        match self {
            Waiting::Once(tx) | Waiting::Many(tx) => {
                let _ = tx.try_send(Err(error));
            }
            Waiting::Observe(tx) => {
                let _ = tx.try_send(Err(error));
            }
        }
    }
}

/// Messages sent without waiting (see the module documentation).
pub(crate) enum Internal {
    /// The future or stream with this ticket was dropped before its exchange ended.
    Cancel(u64),
    /// The answer to an incoming request, from a handler task or a responder.
    Respond {
        id: IncomingId,
        response: Box<Response>,
        done: Option<Sender<Result<(), Error>>>,
    },
    /// A handler task or responder ended without answering.
    Abandoned(IncomingId),
}

/// A request sent by this endpoint that has not ended (see
/// [`Client::pending_requests`](crate::Client::pending_requests)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingRequest {
    /// The engine's id, for [`Client::cancel`](crate::Client::cancel).
    pub id: RequestId,
    /// The method (0.00 for a ping).
    pub method: Code,
    /// The URI (for a ping, the peer as a URI).
    pub uri: String,
    /// The peer.
    pub peer: SocketAddr,
    /// The token (empty for a ping).
    pub token: Token,
}

/// A request received by this endpoint and not answered yet (see
/// [`ServerHandle::pending_incoming`](crate::ServerHandle::pending_incoming)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingIncoming {
    /// The engine's id.
    pub id: IncomingId,
    /// The method.
    pub method: Code,
    /// Path and query, as `/a/b?x=1`.
    pub uri: String,
    /// The sender.
    pub peer: SocketAddr,
    /// The token.
    pub token: Token,
}

/// What the handles of one driver share: the socket (for options and groups, which need no
/// engine) and the queues.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) socket: Arc<Async<UdpSocket>>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) commands: Sender<Command>,
    pub(crate) internal: Sender<Internal>,
    pub(crate) next_ticket: AtomicU64,
}

impl Shared {
    /// A fresh name for a request future or stream.
    pub(crate) fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a command, waiting while the queue is full.
    pub(crate) async fn command(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// Sends the command `make` builds around an answer channel, and waits for the answer.
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot();
        self.command(make(tx)).await?;
        rx.recv().await.map_err(|_| Error::ShuttingDown)
    }
}

/// The engine's microseconds, counted from the moment the socket was bound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> coap_proto::Instant {
        let micros = self.origin.elapsed().as_micros();
        coap_proto::Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The wall-clock instant of an engine deadline.
    pub(crate) fn to_std(self, t: coap_proto::Instant) -> std::time::Instant {
        self.origin
            .checked_add(Duration::from_micros(t.as_micros()))
            // Beyond any real deadline: a year from the origin is "not soon".
            .unwrap_or_else(|| self.origin + Duration::from_secs(365 * 86_400))
    }
}

/// One client exchange and who waits for it.
struct Waiter {
    ticket: u64,
    kind: WaiterKind,
    span: Span,
}

enum WaiterKind {
    Request(Waiting, Arc<CoapUri>),
    Ping(Sender<Result<(), Error>>, SocketAddr),
}

impl Waiter {
    fn uri(&self) -> String {
        match &self.kind {
            WaiterKind::Request(_, uri) => uri.to_string(),
            WaiterKind::Ping(_, peer) => format!("coap://{peer}"),
        }
    }
}

/// What introspection shows of an incoming request.
struct IncomingMeta {
    method: Code,
    uri: String,
    peer: SocketAddr,
    token: Token,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Closing: stop once the engine is idle, or at this deadline.
    Closing(coap_proto::Instant),
}

/// What woke the driver.
enum Wake {
    Readable(io::Result<()>),
    Writable(io::Result<()>),
    Command(Option<Command>),
    Internal(Option<Internal>),
    Timer,
    Shutdown,
}

/// The driver's state.
pub(crate) struct Driver {
    socket: Arc<Async<UdpSocket>>,
    local_addr: SocketAddr,
    ep: Endpoint,
    clock: Clock,
    commands: Pin<Box<Receiver<Command>>>,
    commands_open: bool,
    internal_rx: Pin<Box<Receiver<Internal>>>,
    internal_tx: Sender<Internal>,
    service: Option<Arc<dyn Service>>,
    executor: Arc<Executor<'static>>,
    waiters: HashMap<RequestId, Waiter>,
    tickets: HashMap<u64, RequestId>,
    incoming: HashMap<IncomingId, IncomingMeta>,
    shutdown_waiters: Vec<Sender<()>>,
    /// A client stops when its last handle is gone; a server only on shutdown.
    stop_when_orphaned: bool,
    grace: Duration,
    phase: Phase,
    /// The socket may hold datagrams: read before waiting.
    readable: bool,
    /// The socket's batches: datagrams in, and those from the engine the socket did not
    /// take yet.
    io: DatagramIo,
}

/// What a driver is made of.
pub(crate) struct DriverParts {
    pub(crate) socket: Async<UdpSocket>,
    pub(crate) endpoint: Endpoint,
    pub(crate) stop_when_orphaned: bool,
    pub(crate) grace: Duration,
}

impl Driver {
    /// The driver, and what its handles share.
    pub(crate) fn new(parts: DriverParts) -> Result<(Driver, Arc<Shared>), Error> {
        let local_addr = parts.socket.get_ref().local_addr()?;
        let socket = Arc::new(parts.socket);
        let (cmd_tx, cmd_rx) = async_channel::bounded(COMMAND_CAPACITY);
        let (int_tx, int_rx) = async_channel::unbounded();
        let tx_len = parts.endpoint.config().max_message_size.max(1280);
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
            commands: Box::pin(cmd_rx),
            commands_open: true,
            internal_rx: Box::pin(int_rx),
            internal_tx: int_tx,
            service: None,
            executor: Arc::new(Executor::new()),
            waiters: HashMap::new(),
            tickets: HashMap::new(),
            incoming: HashMap::new(),
            shutdown_waiters: Vec::new(),
            stop_when_orphaned: parts.stop_when_orphaned,
            grace: parts.grace,
            phase: Phase::Running,
            readable: true,
            io: DatagramIo::new(local_addr, tx_len),
        };
        Ok((driver, shared))
    }

    /// Sets what serves incoming requests.
    pub(crate) fn set_service(&mut self, service: Arc<dyn Service>) {
        self.service = Some(service);
    }

    /// Runs until shut down (by `shutdown`, a [`Command::Shutdown`], or, for a client, the
    /// last handle going away), polling the handler tasks as it goes. Fails only if the
    /// socket fails for good.
    pub(crate) async fn run(self, shutdown: Option<ShutdownSignal>) -> Result<(), Error> {
        let executor = Arc::clone(&self.executor);
        let span = tracing::debug_span!("coap_driver", local = %self.local_addr);
        let result = executor.run(self.run_loop(shutdown).instrument(span)).await;
        // Handler tasks still running are dropped with the executor; their guards report
        // into a queue nobody reads any more.
        result
    }

    async fn run_loop(mut self, mut shutdown: Option<ShutdownSignal>) -> Result<(), Error> {
        debug!("driver started");
        let mut timer = Timer::never();
        loop {
            let now = self.clock.now();
            // A deadline is due when the clock says so, whatever the timer did.
            if self.ep.poll_timeout().is_some_and(|d| now >= d) {
                self.ep.handle_timeout(now);
            }
            self.process_events(now);
            let more_tx = self.flush(now);
            self.process_events(now);
            if self.should_stop(now) {
                break;
            }
            if more_tx || self.readable {
                // Work is waiting: let other tasks run, then carry on without sleeping.
                future::yield_now().await;
                let now = self.clock.now();
                if self.readable {
                    self.readable = self.receive(now);
                }
                self.drain_queues(now);
                continue;
            }
            let closing = match self.phase {
                Phase::Closing(d) => Some(d),
                Phase::Running => None,
            };
            let wake_at = [self.ep.poll_timeout(), closing]
                .into_iter()
                .flatten()
                .min();
            if let Some(d) = wake_at {
                if self.clock.now() >= d {
                    continue;
                }
                timer.set_at(self.clock.to_std(d));
            }
            let wake = future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.socket.poll_readable(cx) {
                    return Poll::Ready(Wake::Readable(r));
                }
                if self.io.has_unsent() {
                    if let Poll::Ready(r) = self.socket.poll_writable(cx) {
                        return Poll::Ready(Wake::Writable(r));
                    }
                }
                if let Poll::Ready(m) = self.internal_rx.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Internal(m));
                }
                if self.commands_open {
                    if let Poll::Ready(c) = self.commands.as_mut().poll_next(cx) {
                        return Poll::Ready(Wake::Command(c));
                    }
                }
                if wake_at.is_some() && timer.poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                if let Some(signal) = shutdown.as_mut() {
                    if signal.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Shutdown);
                    }
                }
                Poll::Pending
            })
            .await;
            let now = self.clock.now();
            match wake {
                Wake::Readable(Ok(())) => self.readable = self.receive(now),
                Wake::Writable(Ok(())) => {}
                Wake::Readable(Err(e)) | Wake::Writable(Err(e)) => {
                    warn!(error = %e, "socket readiness failed");
                    self.finish();
                    return Err(Error::Io(e));
                }
                // Internal messages before commands: a future dropped before its command was
                // taken has its cancel seen first.
                Wake::Internal(Some(msg)) => self.internal(now, msg),
                // The driver holds a sender itself: this queue never closes.
                Wake::Internal(None) => {}
                Wake::Command(Some(cmd)) => {
                    self.drain_internal(now);
                    self.command(now, cmd);
                }
                Wake::Command(None) => self.commands_closed(now),
                Wake::Timer => {}
                Wake::Shutdown => {
                    shutdown = None;
                    self.begin_shutdown(now);
                }
            }
            self.drain_queues(now);
        }
        self.finish();
        debug!("driver stopped");
        Ok(())
    }

    fn should_stop(&self, now: coap_proto::Instant) -> bool {
        match self.phase {
            Phase::Running => false,
            Phase::Closing(deadline) => {
                now >= deadline || (self.ep.is_idle() && !self.io.has_unsent())
            }
        }
    }

    fn begin_shutdown(&mut self, now: coap_proto::Instant) {
        if self.phase == Phase::Running {
            debug!(
                pending_requests = self.waiters.len(),
                pending_incoming = self.incoming.len(),
                "shutting down"
            );
            self.ep.close(now);
            self.phase = Phase::Closing(now + self.grace);
        }
    }

    fn commands_closed(&mut self, now: coap_proto::Instant) {
        self.commands_open = false;
        if self.stop_when_orphaned {
            self.begin_shutdown(now);
        }
    }

    /// Whatever is still waiting once the loop ends fails with [`Error::ShuttingDown`].
    fn finish(&mut self) {
        // Closed first, then emptied: a command queued meanwhile is dropped here, and with
        // it the channel its sender waits on (async-channel keeps queued items as long as a
        // sender lives, so nothing else would drop it).
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Request { reply, .. } = cmd {
                reply.fail(Error::ShuttingDown);
            }
        }
        // Likewise for answers: a responder waiting for its answer to be taken learns
        // that the server has stopped.
        self.internal_rx.close();
        while self.internal_rx.try_recv().is_ok() {}
        for (_, waiter) in self.waiters.drain() {
            match waiter.kind {
                WaiterKind::Request(waiting, _) => waiting.fail(Error::ShuttingDown),
                WaiterKind::Ping(tx, _) => {
                    let _ = tx.try_send(Err(Error::ShuttingDown));
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
            let _ = tx.try_send(());
        }
    }

    // --- socket --------------------------------------------------------------------------

    /// Reads up to [`BATCH`] datagrams into the engine, many per system call where the
    /// system allows (see [`coap_udp`]); true if more may be waiting.
    fn receive(&mut self, now: coap_proto::Instant) -> bool {
        let socket = StdSocket(self.socket.get_ref());
        let received = self.io.receive(&socket, &mut self.ep, now, BATCH);
        match received.end {
            RecvEnd::Drained => {
                if received.datagrams == 0 {
                    // Woken with nothing to read: the wake-up may have been an error
                    // condition (an ICMP report waiting in the error queue).
                    self.io.report_unreachable(&socket, &mut self.ep, now);
                }
                false
            }
            RecvEnd::Failed(e) => {
                warn!(error = %e, "receive failed");
                false
            }
            _ => true,
        }
    }

    /// Sends up to [`BATCH`] datagrams the engine has queued, many per system call where the
    /// system allows (see [`coap_udp`]), keeping back those the socket would not take. True
    /// if more are queued and the socket still takes them.
    fn flush(&mut self, now: coap_proto::Instant) -> bool {
        let socket = StdSocket(self.socket.get_ref());
        self.io.flush(&socket, &mut self.ep, now, BATCH)
    }

    // --- commands and internal messages --------------------------------------------------

    /// Takes what is queued without waiting, internal messages first.
    fn drain_queues(&mut self, now: coap_proto::Instant) {
        self.drain_internal(now);
        if self.commands_open {
            for _ in 0..BATCH {
                match self.commands.try_recv() {
                    Ok(cmd) => self.command(now, cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        self.commands_closed(now);
                        break;
                    }
                }
            }
        }
    }

    fn drain_internal(&mut self, now: coap_proto::Instant) {
        for _ in 0..BATCH {
            match self.internal_rx.try_recv() {
                Ok(msg) => self.internal(now, msg),
                Err(_) => break,
            }
        }
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
                    // Its future is gone already.
                    return;
                }
                let method = request.method;
                let started = match reply {
                    Waiting::Observe(_) => self.ep.observe(now, remote, *request),
                    _ => self.ep.request(now, remote, *request),
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
                        let kind = WaiterKind::Request(reply, uri);
                        self.waiters.insert(id, Waiter { ticket, kind, span });
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
                        let kind = WaiterKind::Ping(reply, to_user(remote));
                        self.waiters.insert(id, Waiter { ticket, kind, span });
                    }
                    Err(e) => {
                        let _ = reply.try_send(Err(e.into()));
                    }
                }
            }
            Command::CancelObservation { ticket, reply } => {
                let done = match self.tickets.get(&ticket).copied() {
                    // Active cancellation once registered (RFC 7641 §3.6); before that, the
                    // registration request itself is cancelled.
                    Some(id) => self.ep.cancel_observation(now, id) || self.ep.cancel(now, id),
                    None => false,
                };
                let _ = reply.try_send(done);
            }
            Command::Notify {
                path,
                representation,
                reply,
            } => {
                let n = self.ep.notify(now, &path, representation.map(|r| *r));
                debug!(resource = %path, observers = n, "resource changed");
                let _ = reply.try_send(n);
            }
            Command::ObserverCount { path, reply } => {
                let _ = reply.try_send(self.ep.observer_count(&path));
            }
            Command::Cancel { id, reply } => {
                let _ = reply.try_send(self.ep.cancel(now, id));
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
                let _ = reply.try_send(list);
            }
            Command::PendingIncoming(reply) => {
                let list = self
                    .ep
                    .pending_incoming()
                    .filter_map(|(id, _)| {
                        let meta = self.incoming.get(&id)?;
                        Some(PendingIncoming {
                            id,
                            method: meta.method,
                            uri: meta.uri.clone(),
                            peer: meta.peer,
                            token: meta.token.clone(),
                        })
                    })
                    .collect();
                let _ = reply.try_send(list);
            }
            Command::Stats(reply) => {
                let _ = reply.try_send(self.ep.stats());
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
                    let _ = done.try_send(result);
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
                // The request still waits for an answer: give it 5.00 instead of nothing.
                warn!(%id, %code, error = %e, "response refused by the engine: 5.00 instead");
                let fallback = Response::new(Code::INTERNAL_SERVER_ERROR);
                if self.ep.respond(now, id, fallback).is_ok() {
                    self.incoming.remove(&id);
                }
            }
        }
        result.map_err(Error::from)
    }

    // --- events --------------------------------------------------------------------------

    fn process_events(&mut self, now: coap_proto::Instant) {
        while let Some(event) = self.ep.poll_event() {
            match event {
                Event::Response { id, peer, response } => self.on_response(id, peer, response),
                Event::RequestFailed { id, reason } => self.on_failed(id, reason),
                Event::Notification {
                    id,
                    peer,
                    response,
                    fresh,
                } => self.on_notification(id, peer, response, fresh),
                Event::MulticastDone { id } => {
                    if let Some(w) = self.take_waiter(id) {
                        w.span.in_scope(|| debug!("multicast window closed"));
                    }
                }
                Event::Pong { id } => {
                    if let Some(w) = self.take_waiter(id) {
                        w.span.in_scope(|| debug!("pong"));
                        if let WaiterKind::Ping(tx, _) = w.kind {
                            let _ = tx.try_send(Ok(()));
                        }
                    }
                }
                Event::Request {
                    id,
                    peer,
                    request,
                    multicast,
                } => self.dispatch(now, id, peer, request, multicast, false),
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
                    self.observers_changed(&resource, observers);
                }
                Event::ObserverRemoved {
                    resource,
                    peer,
                    reason,
                    observers,
                    ..
                } => {
                    debug!(%resource, peer = %to_user(peer), ?reason, observers, "observer removed");
                    self.observers_changed(&resource, observers);
                }
                Event::ResponseConfirmed { id } => trace!(%id, "response acknowledged"),
                Event::ResponseNotConfirmed { id, reason } => {
                    warn!(%id, %reason, "confirmable response not acknowledged")
                }
                Event::MessageIdsExhausted { peer, until } => {
                    warn!(%peer, %until, "message IDs towards peer exhausted; requests wait")
                }
                Event::Progress { id, progress } => trace!(%id, ?progress, "progress"),
                other => trace!(event = ?other, "unhandled event"),
            }
        }
    }

    fn observers_changed(&self, resource: &str, count: usize) {
        if let Some(service) = &self.service {
            service.observers_changed(resource, count);
        }
    }

    fn take_waiter(&mut self, id: RequestId) -> Option<Waiter> {
        let waiter = self.waiters.remove(&id)?;
        self.tickets.remove(&waiter.ticket);
        Some(waiter)
    }

    fn on_response(&mut self, id: RequestId, peer: SocketAddr, message: Message) {
        // A multicast exchange takes any number of responses and stays.
        if let Some(w) = self.waiters.get(&id) {
            if let WaiterKind::Request(Waiting::Many(tx), uri) = &w.kind {
                let code = message.code;
                let response = IncomingResponse {
                    peer: to_user(peer),
                    uri: Arc::clone(uri),
                    message,
                };
                w.span
                    .in_scope(|| debug!(%code, peer = %to_user(peer), "multicast response"));
                if tx.try_send(Ok(response)).is_err() {
                    w.span
                        .in_scope(|| debug!("multicast response dropped: not read"));
                }
                return;
            }
        }
        let Some(w) = self.take_waiter(id) else {
            return;
        };
        let code = message.code;
        w.span.in_scope(|| debug!(%code, "response"));
        let WaiterKind::Request(waiting, uri) = w.kind else {
            return;
        };
        let response = IncomingResponse {
            peer: to_user(peer),
            uri,
            message,
        };
        match waiting {
            Waiting::Once(tx) => {
                let _ = tx.try_send(Ok(response));
            }
            // The last word of an observation: the server did not register us, or it
            // answered the deregistration.
            Waiting::Observe(tx) => {
                let _ = tx.try_send(Ok(Notification {
                    response,
                    fresh: true,
                }));
            }
            Waiting::Many(_) => {}
        }
    }

    fn on_notification(&mut self, id: RequestId, peer: SocketAddr, message: Message, fresh: bool) {
        let Some(w) = self.waiters.get(&id) else {
            return;
        };
        let WaiterKind::Request(Waiting::Observe(tx), uri) = &w.kind else {
            return;
        };
        let code = message.code;
        let notification = Notification {
            response: IncomingResponse {
                peer: to_user(peer),
                uri: Arc::clone(uri),
                message,
            },
            fresh,
        };
        w.span.in_scope(|| debug!(%code, fresh, "notification"));
        if tx.try_send(Ok(notification)).is_err() {
            // Only the latest state matters (RFC 7641 §1.3): a slow reader misses some.
            w.span.in_scope(|| debug!("notification dropped: not read"));
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
        match w.kind {
            WaiterKind::Request(waiting, _) => waiting.fail(reason.into()),
            WaiterKind::Ping(tx, _) => {
                let _ = tx.try_send(Err(reason.into()));
            }
        }
    }

    /// Hands a request to the service. The handler's future is polled once here: one that
    /// is ready at once costs no task and its answer rides on the ACK. One that has to wait
    /// becomes a task of the driver's executor.
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
        let ep = &mut self.ep;
        let first_poll = span.in_scope(|| {
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
        });
        match first_poll {
            Ok(Ok(Reply::Response(response))) => {
                let _ = span.in_scope(|| self.respond(now, id, response));
            }
            Ok(Ok(Reply::Deferred(_))) => span.in_scope(|| debug!("deferred to a responder")),
            Ok(Err(pending)) => {
                span.in_scope(|| trace!("handler pending: spawned"));
                let guard = AnswerGuard {
                    id,
                    internal: Some(self.internal_tx.clone()),
                };
                let task = async move {
                    // A panic ends the task here; the guard, dropped unanswered, asks 5.00.
                    if let Ok(reply) = AssertUnwindSafe(pending).catch_unwind().await {
                        guard.answer(reply);
                    }
                };
                self.executor.spawn(task.instrument(span)).detach();
            }
            Err(_) => {
                span.in_scope(|| warn!("handler panicked: 5.00"));
                let _ = self.respond(now, id, Response::new(Code::INTERNAL_SERVER_ERROR));
            }
        }
    }
}

/// Held by a handler task: sends the handler's answer, or, if the task ends without one
/// (panic, or the driver stopping), reports the request abandoned so it is answered 5.00.
struct AnswerGuard {
    id: IncomingId,
    internal: Option<Sender<Internal>>,
}

impl AnswerGuard {
    fn answer(mut self, reply: Reply) {
        let Some(internal) = self.internal.take() else {
            return;
        };
        if let Reply::Response(response) = reply {
            let _ = internal.try_send(Internal::Respond {
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
            let _ = internal.try_send(Internal::Abandoned(self.id));
        }
    }
}

/// `/path?query` of a request, for traces and introspection.
fn request_target(message: &Message) -> String {
    let mut target = crate::incoming::join_path(message.options.uri_path());
    for (i, arg) in message.options.uri_query().enumerate() {
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str(arg);
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_proto::msg::MessageType;

    #[test]
    fn clock_round_trips_deadlines() {
        let clock = Clock::new();
        let t = coap_proto::Instant::from_micros(1_500_000);
        let at = clock.to_std(t);
        assert_eq!(
            at.duration_since(clock.origin),
            Duration::from_micros(1_500_000)
        );
        // A deadline beyond what std can represent maps to "far away", not a panic.
        let far = clock.to_std(coap_proto::Instant::MAX);
        assert!(far > clock.origin + Duration::from_secs(3600));
        assert!(clock.now() < coap_proto::Instant::from_micros(60_000_000));
    }

    #[test]
    fn request_target_has_path_and_query() {
        let mut message = Message::new(MessageType::Con, Code::GET, 1);
        assert_eq!(request_target(&message), "/");
        message
            .options
            .push(coap_proto::msg::OptionNumber::URI_PATH, b"a");
        message
            .options
            .push(coap_proto::msg::OptionNumber::URI_PATH, b"b");
        message
            .options
            .push(coap_proto::msg::OptionNumber::URI_QUERY, b"x=1");
        message
            .options
            .push(coap_proto::msg::OptionNumber::URI_QUERY, b"y");
        assert_eq!(request_target(&message), "/a/b?x=1&y");
    }
}
