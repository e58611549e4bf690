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

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_channel::{Receiver, Sender, TryRecvError};
use async_executor::Executor;
use async_io::{Async, Timer};
use coap_proto::host::{self, Delivery, Dispatch, Host, Incoming, Kind};
use coap_proto::msg::Code;
use coap_proto::{Endpoint, Response};
use coap_udp::{DatagramIo, RecvEnd, StdSocket};
use futures_lite::{future, FutureExt, StreamExt};
use tracing::{debug, warn, Instrument, Span};

use crate::incoming::IncomingRequest;
use crate::Router;
use crate::{Error, IncomingResponse, Notification};

pub(crate) use coap_proto::host::{PendingIncoming, PendingRequest};

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

/// A future that asks for a graceful shutdown when it resolves.
pub(crate) type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// This crate's channels, as the host core sees them: [`Waiting`] for client exchanges,
/// one-slot async-channel queues for answers.
pub(crate) enum Chan {}

impl host::Channels for Chan {
    type Waiter = Waiting;
    type Reply<T> = Sender<T>;
    type Sender = Sender<Command>;

    fn reply<T>(to: Sender<T>, value: T) {
        let _ = to.try_send(value);
    }

    fn post(to: &Self::Sender, command: Command) -> bool {
        to.try_send(command).is_ok()
    }
}

/// What handles send the driver, on either queue (see the module documentation).
pub(crate) type Command = host::Command<Chan>;

/// Who waits for a client exchange.
pub(crate) enum Waiting {
    /// One response or one error.
    Once(Sender<Result<IncomingResponse, Error>>),
    /// Multicast: responses until the window closes, then the sender is dropped.
    Many(Sender<Result<IncomingResponse, Error>>),
    /// Observation: notifications until it ends, then the sender is dropped.
    Observe(Sender<Result<Notification, Error>>),
    /// A ping: the pong or an error.
    Ping(Sender<Result<(), Error>>),
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
            Waiting::Once(tx) | Waiting::Many(tx) => tx.is_closed(),
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
            (Waiting::Once(tx), Ok(Delivery::Response(r))) => tx.try_send(Ok(r)).is_ok(),
            (Waiting::Once(tx) | Waiting::Many(tx), Err(e)) => tx.try_send(Err(e)).is_ok(),
            (Waiting::Observe(tx), Ok(Delivery::Notification(n))) => tx.try_send(Ok(n)).is_ok(),
            (Waiting::Observe(tx), Err(e)) => tx.try_send(Err(e)).is_ok(),
            (Waiting::Ping(tx), Ok(Delivery::Pong)) => tx.try_send(Ok(())).is_ok(),
            (Waiting::Ping(tx), Err(e)) => tx.try_send(Err(e)).is_ok(),
            // An outcome of another kind: nothing waits for it.
            _ => false,
        };
    }
}

/// What the handles of one driver share: the socket (for options and groups, which need no
/// engine) and the queues.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) socket: Arc<Async<UdpSocket>>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) commands: Sender<Command>,
    pub(crate) internal: Sender<Command>,
    pub(crate) next_ticket: AtomicU64,
    /// The last request target that named an address, parsed once.
    pub(crate) targets: host::Targets,
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
        coap_proto::Instant::ZERO + self.origin.elapsed()
    }

    /// The wall-clock instant of an engine deadline.
    pub(crate) fn to_std(self, t: coap_proto::Instant) -> std::time::Instant {
        self.origin
            .checked_add(Duration::from_micros(t.as_micros()))
            // Beyond any real deadline: a year from the origin is "not soon".
            .unwrap_or_else(|| self.origin + Duration::from_secs(365 * 86_400))
    }
}

/// What woke the driver.
enum Wake {
    Readable(io::Result<()>),
    Writable(io::Result<()>),
    Command(Option<Command>),
    Internal(Option<Command>),
    Timer,
    Shutdown,
}

/// The driver's state.
pub(crate) struct Driver {
    socket: Arc<Async<UdpSocket>>,
    local_addr: SocketAddr,
    ep: Endpoint,
    host: Host<Chan>,
    clock: Clock,
    commands: Pin<Box<Receiver<Command>>>,
    commands_open: bool,
    internal_rx: Pin<Box<Receiver<Command>>>,
    internal_tx: Sender<Command>,
    service: Option<Arc<Router>>,
    executor: Arc<Executor<'static>>,
    /// A client stops when its last handle is gone; a server only on shutdown.
    stop_when_orphaned: bool,
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
            targets: host::Targets::new(),
        });
        let driver = Driver {
            socket,
            local_addr,
            ep: parts.endpoint,
            host: Host::new(local_addr, parts.grace),
            clock: Clock::new(),
            commands: Box::pin(cmd_rx),
            commands_open: true,
            internal_rx: Box::pin(int_rx),
            internal_tx: int_tx,
            service: None,
            executor: Arc::new(Executor::new()),
            stop_when_orphaned: parts.stop_when_orphaned,
            readable: true,
            io: DatagramIo::new(local_addr, tx_len),
        };
        Ok((driver, shared))
    }

    /// Sets what serves incoming requests.
    pub(crate) fn set_service(&mut self, service: Arc<Router>) {
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
            self.drive(now);
            let more_tx = self.flush(now);
            self.drive(now);
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
            let wake_at = self.host.next_wake(&mut self.ep);
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
                Wake::Internal(Some(msg)) => self.command(now, msg),
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
                    self.host.shut_down(&mut self.ep, now);
                }
            }
            self.drain_queues(now);
        }
        self.finish();
        debug!("driver stopped");
        Ok(())
    }

    fn should_stop(&self, now: coap_proto::Instant) -> bool {
        self.host.is_finished(&self.ep, now, !self.io.has_unsent())
    }

    fn commands_closed(&mut self, now: coap_proto::Instant) {
        self.commands_open = false;
        if self.stop_when_orphaned {
            self.host.shut_down(&mut self.ep, now);
        }
    }

    /// Whatever is still waiting once the loop ends fails with [`Error::ShuttingDown`].
    fn finish(&mut self) {
        // Closed first, then emptied: a command queued meanwhile is dropped here, and with
        // it the channel its sender waits on (async-channel keeps queued items as long as a
        // sender lives, so nothing else would drop it).
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            Host::refuse(cmd);
        }
        // Likewise for answers: a responder waiting for its answer to be taken learns
        // that the server has stopped.
        self.internal_rx.close();
        while self.internal_rx.try_recv().is_ok() {}
        self.host.finish();
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
                Ok(msg) => self.command(now, msg),
                Err(_) => break,
            }
        }
    }

    /// Carries out a command or an internal message (see [`Host::command`]).
    fn command(&mut self, now: coap_proto::Instant, cmd: Command) {
        self.host.command(&mut self.ep, now, cmd);
    }

    /// Runs the engine's due timers and routes its events (see [`Host::drive`]).
    fn drive(&mut self, now: coap_proto::Instant) {
        let mut handlers = Handlers {
            router: self.service.as_deref(),
            internal: &self.internal_tx,
            executor: &self.executor,
        };
        self.host.drive(&mut self.ep, now, &mut handlers);
    }
}

/// The server's side of [`Host::drive`]: routes a request and polls its handler once, right
/// here. One that is ready at once costs no task and its answer rides on the ACK; one that
/// has to wait becomes a task of the driver's executor. A plain client answers 4.04.
struct Handlers<'a> {
    router: Option<&'a Router>,
    internal: &'a Sender<Command>,
    executor: &'a Executor<'static>,
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
            let task = async move {
                // A panic ends the task here; the guard, dropped unanswered, asks 5.00.
                if let Ok(reply) = AssertUnwindSafe(future).catch_unwind().await {
                    guard.answer(reply);
                }
            };
            self.executor
                .spawn(task.instrument(Span::current()))
                .detach();
        })
    }

    fn observers_changed(&mut self, resource: &str, count: usize) {
        if let Some(router) = self.router {
            router.observers_changed(resource, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
