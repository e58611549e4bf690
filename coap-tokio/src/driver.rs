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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_proto::host::{self, Delivery, Dispatch, Host, Incoming, Kind};
use coap_proto::msg::Code;
use coap_proto::{Endpoint, Response};
use coap_udp::{DatagramIo, RecvEnd};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn, Instrument, Span};

use crate::incoming::IncomingRequest;
use crate::server::ObserverTally;
use crate::Router;
use crate::{Error, IncomingResponse, Notification};

pub(crate) use coap_proto::host::{PendingIncoming, PendingRequest};

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

/// This crate's channels, as the host core sees them: [`Waiting`] for client exchanges,
/// oneshot channels for answers.
pub(crate) enum Chan {}

impl host::Channels for Chan {
    type Waiter = Waiting;
    type Reply<T> = oneshot::Sender<T>;
    type Sender = mpsc::UnboundedSender<Command>;

    fn reply<T>(to: oneshot::Sender<T>, value: T) {
        let _ = to.send(value);
    }

    fn post(to: &Self::Sender, command: Command) -> bool {
        to.send(command).is_ok()
    }
}

/// What handles send the driver, on either channel (see the module documentation).
pub(crate) type Command = host::Command<Chan>;

/// Who waits for the outcome of a client exchange.
pub(crate) enum Waiting {
    /// A unicast request: one response or one error.
    Once(oneshot::Sender<Result<IncomingResponse, Error>>),
    /// A multicast request: responses until the window closes (the sender is then dropped).
    Many(mpsc::Sender<Result<IncomingResponse, Error>>),
    /// An observation: notifications until it ends (the sender is then dropped).
    Observe(mpsc::Sender<Result<Notification, Error>>),
    /// A ping: the pong or an error.
    Ping(oneshot::Sender<Result<(), Error>>),
}

impl host::Waiter for Waiting {
    fn kind(&self) -> Kind {
        match self {
            Waiting::Once(_) | Waiting::Ping(_) => Kind::Once,
            Waiting::Many(_) => Kind::Multicast,
            Waiting::Observe(_) => Kind::Observation,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Waiting::Once(tx) => tx.is_closed(),
            Waiting::Many(tx) => tx.is_closed(),
            Waiting::Observe(tx) => tx.is_closed(),
            Waiting::Ping(tx) => tx.is_closed(),
        }
    }

    fn deliver(&self, item: Delivery) -> bool {
        match (self, item) {
            (Waiting::Many(tx), Delivery::Response(r)) => tx.try_send(Ok(r)).is_ok(),
            (Waiting::Observe(tx), Delivery::Notification(n)) => tx.try_send(Ok(n)).is_ok(),
            _ => false,
        }
    }

    fn finish(self, outcome: Result<Delivery, Error>) {
        let _ = match (self, outcome) {
            (Waiting::Once(tx), Ok(Delivery::Response(r))) => tx.send(Ok(r)).is_ok(),
            (Waiting::Once(tx), Err(e)) => tx.send(Err(e)).is_ok(),
            (Waiting::Many(tx), Err(e)) => tx.try_send(Err(e)).is_ok(),
            (Waiting::Observe(tx), Ok(Delivery::Notification(n))) => tx.try_send(Ok(n)).is_ok(),
            (Waiting::Observe(tx), Err(e)) => tx.try_send(Err(e)).is_ok(),
            (Waiting::Ping(tx), Ok(Delivery::Pong)) => tx.send(Ok(())).is_ok(),
            (Waiting::Ping(tx), Err(e)) => tx.send(Err(e)).is_ok(),
            // An outcome of another kind: nothing waits for it.
            _ => false,
        };
    }
}

/// The part of a driver that handles share: the socket (for options and multicast groups,
/// which need no engine) and the channels.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) internal: mpsc::UnboundedSender<Command>,
    pub(crate) next_ticket: AtomicU64,
    /// The last request target that named an address, parsed once.
    pub(crate) targets: host::Targets,
}

impl Shared {
    pub(crate) fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a command if the channel has room; gives it back if the channel is full.
    pub(crate) fn try_command(&self, command: Command) -> Result<Option<Command>, Error> {
        match self.commands.try_send(command) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(command)) => Ok(Some(command)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Sends a command, waiting while the channel is full.
    pub(crate) async fn command(&self, command: Command) -> Result<(), Error> {
        // Queued at once while there is room (a free slot means no sender waits before this
        // one); only a full channel costs a wait, boxed so that its state stays out of every
        // request future.
        match self.try_command(command)? {
            None => Ok(()),
            Some(command) => Box::pin(self.commands.send(command))
                .await
                .map_err(|_| Error::ShuttingDown),
        }
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
        coap_proto::Instant::ZERO + self.origin.elapsed()
    }

    pub(crate) fn to_tokio(self, t: coap_proto::Instant) -> tokio::time::Instant {
        self.origin
            .checked_add(Duration::from_micros(t.as_micros()))
            // Far beyond any real deadline; a year is enough to mean "not soon".
            .unwrap_or_else(|| self.origin + Duration::from_secs(365 * 24 * 3600))
    }
}

/// The driver task's state.
pub(crate) struct Driver {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    ep: Endpoint,
    host: Host<Chan>,
    clock: Clock,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    internal_rx: mpsc::UnboundedReceiver<Command>,
    internal_tx: mpsc::UnboundedSender<Command>,
    service: Option<Arc<Router>>,
    /// Which engine of a multi-engine server this is, and where the engines add up their
    /// observer counts.
    engine: Option<(usize, Arc<ObserverTally>)>,
    /// Stop when every handle is gone (a client) or only on shutdown (a server).
    stop_when_orphaned: bool,
    /// The socket's batches: datagrams in, and those taken from the engine that the socket
    /// has not taken yet.
    io: DatagramIo,
}

/// Everything needed to start a driver.
pub(crate) struct DriverParts {
    pub(crate) socket: UdpSocket,
    pub(crate) endpoint: Endpoint,
    pub(crate) service: Option<Arc<Router>>,
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
            targets: host::Targets::new(),
        });
        let driver = Driver {
            socket,
            local_addr,
            ep: parts.endpoint,
            host: Host::new(local_addr, parts.grace),
            clock: Clock::new(),
            commands: cmd_rx,
            commands_open: true,
            internal_rx: int_rx,
            internal_tx: int_tx,
            service: parts.service,
            engine: None,
            stop_when_orphaned: parts.stop_when_orphaned,
            io: DatagramIo::new(local_addr, max_message_size),
        };
        Ok((driver, shared))
    }

    /// Sets what serves incoming requests.
    pub(crate) fn set_service(&mut self, service: Arc<Router>) {
        self.service = Some(service);
    }

    /// Makes this driver engine `index` of a multi-engine server, whose observer counts are
    /// added up in `tally`.
    pub(crate) fn set_engine(&mut self, index: usize, tally: Arc<ObserverTally>) {
        self.engine = Some((index, tally));
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
        // The deadline `sleep` is set to.
        let mut armed: Option<coap_proto::Instant> = None;
        let span = tracing::debug_span!("coap_driver", local = %self.local_addr);
        async move {
            debug!("driver started");
            loop {
                let now = self.clock.now();
                self.drive(now);
                let more_tx = self.flush(now);
                self.drive(now);
                if self.should_stop(now) {
                    break;
                }
                if more_tx {
                    tokio::task::yield_now().await;
                    continue;
                }
                let wake_at = self.host.next_wake(&mut self.ep);
                if let Some(d) = wake_at {
                    let now = self.clock.now();
                    if now >= d {
                        continue;
                    }
                    // The timer is moved only to an earlier deadline, or once it has fired:
                    // with many exchanges in flight the deadline moves later with almost every
                    // answer, and waking once early costs less than re-arming every time.
                    if armed.is_none_or(|a| d < a || a <= now) {
                        sleep.as_mut().reset(self.clock.to_tokio(d));
                        armed = Some(d);
                    }
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
                            self.host.shut_down(&mut self.ep, now);
                        }
                    }
                    Wake::Internal(Some(msg)) => {
                        self.command(now, msg);
                        busy |= self.drain_internal(now);
                    }
                    // The driver holds a sender itself, so this channel never closes.
                    Wake::Internal(None) => {}
                    Wake::Timer => {}
                    Wake::Shutdown => {
                        shutdown = None;
                        self.host.shut_down(&mut self.ep, now);
                    }
                }
                if busy {
                    self.drive(now);
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
        self.host.is_finished(&self.ep, now, !self.io.has_unsent())
    }

    /// Ends what is left once the loop stops: waiting requests fail with `ShuttingDown`.
    fn finish(&mut self) {
        self.host.finish();
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
                Ok(msg) => self.command(now, msg),
                Err(_) => return false,
            }
        }
        true
    }

    /// Carries out a command or an internal message (see [`Host::command`]).
    fn command(&mut self, now: coap_proto::Instant, cmd: Command) {
        self.host.command(&mut self.ep, now, cmd);
    }

    /// Runs the engine's due timers and routes its events (see [`Host::drive`]).
    fn drive(&mut self, now: coap_proto::Instant) {
        let mut handlers = Handlers {
            router: self.service.as_deref(),
            engine: self.engine.as_ref().map(|(i, tally)| (*i, &**tally)),
            internal: &self.internal_tx,
        };
        self.host.drive(&mut self.ep, now, &mut handlers);
    }
}

/// The server's side of [`Host::drive`]: routes a request and polls its handler once, right
/// here. A handler that is ready at once costs no task and its answer is piggybacked on the
/// ACK; only a handler that has to wait is spawned. A plain client answers 4.04.
struct Handlers<'a> {
    router: Option<&'a Router>,
    engine: Option<(usize, &'a ObserverTally)>,
    internal: &'a mpsc::UnboundedSender<Command>,
}

impl host::Service for Handlers<'_> {
    fn call(&mut self, request: Incoming) -> Dispatch {
        let Some(router) = self.router else {
            return Dispatch::answer(Response::new(Code::NOT_FOUND));
        };
        let internal = self.internal;
        let request_of = |head| IncomingRequest {
            head,
            internal: internal.clone(),
        };
        router.start::<Chan>(request, request_of, internal, |future, guard| {
            // A panic ends the task with the guard unanswered: the request gets 5.00.
            let task = async move { guard.answer(future.await) };
            tokio::spawn(task.instrument(Span::current()));
        })
    }

    fn observers_changed(&mut self, resource: &str, count: usize) {
        match (self.router, self.engine) {
            (Some(router), Some((engine, tally))) => {
                tally.changed(router, engine, resource, count);
            }
            (Some(router), None) => router.observers_changed(resource, count),
            (None, _) => {}
        }
    }
}

enum Wake {
    Socket(io::Result<tokio::io::Ready>),
    Command(Option<Command>),
    Internal(Option<Command>),
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
        // Inside `try_io`, so that a `WouldBlock` clears the readiness tokio cached. A short
        // batch emptied the socket: it is reported to tokio as `WouldBlock` too (which clears
        // the readiness unless an event came in meanwhile), so no call is spent on learning
        // that nothing more is there.
        #[cfg(target_os = "linux")]
        let received = {
            let mut short = None;
            let result = self.0.try_io(Interest::READABLE, || {
                let n = batch.recv(self.0)?;
                if n < batch.limit() {
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            short.map_or(result, Ok)
        };
        #[cfg(not(target_os = "linux"))]
        let received = batch.recv_with(|buf| self.0.try_recv_from(buf));
        received
    }

    fn send(&self, batch: &mut coap_udp::SendBatch) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        let sent = self.0.try_io(Interest::WRITABLE, || batch.send(self.0));
        #[cfg(not(target_os = "linux"))]
        let sent = batch.send_with(|bytes, remote| self.0.try_send_to(bytes, remote));
        sent
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
