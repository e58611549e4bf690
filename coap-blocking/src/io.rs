//! The I/O thread: the one thread that owns the socket and the [`Endpoint`], and moves
//! datagrams, time, commands and events between them and the user's handles.
//!
//! Handles talk to it through one channel of [`Command`]s (a [`Mailbox`]). The channel has no
//! fixed capacity but is bounded in practice: every blocking call waits for its answer, so a
//! thread has at most one command queued, and the commands sent without waiting (a cancel
//! from a dropped handle, a handler's answer) belong to one live exchange each, which the
//! engine's own limits bound.
//!
//! The thread never polls busily. It sleeps in `poll(2)` on two sockets, the CoAP socket and a
//! loopback "waker" socket, with a timeout equal to the engine's next deadline. A handle that
//! queues a command sends a 0-byte datagram to the waker, but only when the thread announced
//! that it is going to sleep (an atomic flag swapped on both sides), so a busy thread is not
//! interrupted by a system call per command.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::Duration;

use coap_proto::endpoint::{Event, Failure, Stats};
use coap_proto::msg::{Code, Message, Token};
use coap_proto::uri::CoapUri;
use coap_proto::{Endpoint, IncomingId, Request, RequestId, Response};
use coap_udp::{DatagramIo, RecvEnd, StdSocket};
use rustix::event::{PollFd, PollFlags, Timespec};
use tracing::{debug, trace, warn};

use crate::incoming::{IncomingRequest, Reply};
use crate::pool::Pool;
use crate::response::Notification;
use crate::router::{Routed, Router};
use crate::socket::to_user;
use crate::{Error, IncomingResponse};

/// The most datagrams read, datagrams sent or commands taken per turn of the loop.
pub(crate) const BATCH: usize = 64;

/// Notifications held for an observer that does not read; beyond, new ones are dropped (only
/// the latest state matters, RFC 7641 §1.3).
pub(crate) const OBSERVE_CAPACITY: usize = 64;

/// Multicast responses held for a reader that does not read.
pub(crate) const MULTICAST_CAPACITY: usize = 256;

/// Wakes the I/O thread out of `poll`.
#[derive(Debug)]
pub(crate) struct Wake {
    /// Set by the thread just before it sleeps; whoever swaps it back sends the wake-up.
    sleeping: AtomicBool,
    /// Connected to the thread's waker socket.
    sender: UdpSocket,
}

impl Wake {
    /// Wakes the thread if it sleeps or is about to.
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.sender.send(&[]);
        }
    }

    /// Wakes the thread whatever it is doing (used when the last handle goes away).
    fn force(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        let _ = self.sender.send(&[]);
    }
}

/// The sending side of the command channel, with the means to wake the thread.
#[derive(Clone, Debug)]
pub(crate) struct Mailbox {
    tx: mpsc::Sender<Command>,
    wake: Arc<Wake>,
}

impl Mailbox {
    /// Queues a command and wakes the thread. Fails once the thread has stopped.
    pub(crate) fn post(&self, command: Command) -> Result<(), Error> {
        self.tx.send(command).map_err(|_| Error::ShuttingDown)?;
        self.wake.wake();
        Ok(())
    }

    /// Asks the thread something and waits for the answer.
    pub(crate) fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = mpsc::channel();
        self.post(make(tx))?;
        rx.recv().map_err(|_| Error::ShuttingDown)
    }
}

/// What the handles of one I/O thread share. Dropping the last one wakes the thread, which
/// stops if it serves a client only.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) mailbox: Mailbox,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local_addr: SocketAddr,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.mailbox.wake.force();
    }
}

/// A command from a handle.
pub(crate) enum Command {
    Request {
        remote: SocketAddr,
        request: Box<Request>,
        uri: Arc<CoapUri>,
        observe: bool,
        waiting: Waiting,
        started: mpsc::Sender<Result<RequestId, Error>>,
    },
    Ping {
        remote: SocketAddr,
        reply: mpsc::Sender<Result<(), Error>>,
    },
    Cancel {
        id: RequestId,
        reply: Option<mpsc::Sender<bool>>,
    },
    CancelObservation {
        id: RequestId,
        reply: mpsc::Sender<bool>,
    },
    Notify {
        path: String,
        representation: Option<Box<Response>>,
        reply: mpsc::Sender<usize>,
    },
    ObserverCount {
        path: String,
        reply: mpsc::Sender<usize>,
    },
    PendingRequests(mpsc::Sender<Vec<PendingRequest>>),
    PendingIncoming(mpsc::Sender<Vec<PendingIncoming>>),
    Stats(mpsc::Sender<Stats>),
    Shutdown(mpsc::Sender<()>),
    /// An answer to an incoming request, from a handler or a responder.
    Respond {
        id: IncomingId,
        response: Box<Response>,
        done: Option<mpsc::Sender<Result<(), Error>>>,
    },
    /// A handler panicked, or a responder went away without answering: 5.00.
    Abandoned(IncomingId),
}

/// A callback that takes the outcome of a unicast request.
pub(crate) type OnceCallback = Box<dyn FnOnce(Result<IncomingResponse, Error>) + Send>;

/// Who waits for the outcome of a client exchange.
pub(crate) enum Waiting {
    /// One response or one error.
    Once(OnceCallback),
    /// Multicast: responses until the window closes (the sender is then dropped).
    Many(mpsc::SyncSender<Result<IncomingResponse, Error>>),
    /// An observation: notifications until it ends (the sender is then dropped).
    Observe(mpsc::SyncSender<Result<Notification, Error>>),
}

impl Waiting {
    fn fail(self, error: Error) {
        match self {
            Waiting::Once(done) => done(Err(error)),
            Waiting::Many(tx) => {
                let _ = tx.try_send(Err(error));
            }
            Waiting::Observe(tx) => {
                let _ = tx.try_send(Err(error));
            }
        }
    }
}

/// A request this endpoint sent that has not ended (see
/// [`Client::pending_requests`](crate::Client::pending_requests)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingRequest {
    /// The engine's id; pass it to [`Client::cancel`](crate::Client::cancel).
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

/// A request this endpoint received and has not answered (see
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
    /// Who sent it.
    pub peer: SocketAddr,
    /// Its token.
    pub token: Token,
}

/// The engine's microseconds, counted from when the thread's state was built.
#[derive(Clone, Copy, Debug)]
struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    fn now(&self) -> coap_proto::Instant {
        let micros = self.origin.elapsed().as_micros();
        coap_proto::Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// How long from now until `t`; zero if it has passed.
    fn until(&self, t: coap_proto::Instant) -> Duration {
        Duration::from_micros(t.as_micros()).saturating_sub(self.origin.elapsed())
    }
}

enum WaiterKind {
    Request(Waiting, Arc<CoapUri>),
    Ping(mpsc::Sender<Result<(), Error>>, SocketAddr),
}

struct IncomingMeta {
    method: Code,
    uri: String,
    peer: SocketAddr,
    token: Token,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// `Endpoint::close` was called: stop when the engine is idle, or at this deadline.
    Closing(coap_proto::Instant),
}

/// What serves incoming requests on a server.
pub(crate) struct Service {
    pub(crate) router: Router,
    pub(crate) pool: Pool,
}

/// The I/O thread's state.
pub(crate) struct Driver {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    waker: UdpSocket,
    wake: Arc<Wake>,
    mailbox: Mailbox,
    commands: mpsc::Receiver<Command>,
    owner: Weak<Shared>,
    stop_when_orphaned: bool,
    ep: Endpoint,
    clock: Clock,
    service: Option<Service>,
    waiters: HashMap<RequestId, WaiterKind>,
    incoming: HashMap<IncomingId, IncomingMeta>,
    shutdown_waiters: Vec<mpsc::Sender<()>>,
    grace: Duration,
    phase: Phase,
    /// The socket's batches: datagrams in, and those taken from the engine that the socket
    /// has not taken yet.
    io: DatagramIo,
}

impl Driver {
    /// Builds the thread's state around a bound non-blocking socket, and the state its handles
    /// share.
    pub(crate) fn new(
        socket: UdpSocket,
        endpoint: Endpoint,
        stop_when_orphaned: bool,
        grace: Duration,
    ) -> Result<(Driver, Arc<Shared>), Error> {
        let local_addr = socket.local_addr()?;
        let waker = UdpSocket::bind("127.0.0.1:0")?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        sender.connect(waker.local_addr()?)?;
        // Connected both ways: only the sender's datagrams reach the waker.
        waker.connect(sender.local_addr()?)?;
        waker.set_nonblocking(true)?;
        sender.set_nonblocking(true)?;
        let wake = Arc::new(Wake {
            sleeping: AtomicBool::new(false),
            sender,
        });
        let (tx, commands) = mpsc::channel();
        let mailbox = Mailbox {
            tx,
            wake: Arc::clone(&wake),
        };
        let socket = Arc::new(socket);
        let shared = Arc::new(Shared {
            mailbox: mailbox.clone(),
            socket: Arc::clone(&socket),
            local_addr,
        });
        let max = endpoint.config().max_message_size;
        let driver = Driver {
            socket,
            local_addr,
            waker,
            wake,
            mailbox,
            commands,
            owner: Arc::downgrade(&shared),
            stop_when_orphaned,
            ep: endpoint,
            clock: Clock {
                origin: std::time::Instant::now(),
            },
            service: None,
            waiters: HashMap::new(),
            incoming: HashMap::new(),
            shutdown_waiters: Vec::new(),
            grace,
            phase: Phase::Running,
            io: DatagramIo::new(local_addr, max),
        };
        Ok((driver, shared))
    }

    /// Sets what serves incoming requests.
    pub(crate) fn set_service(&mut self, service: Service) {
        self.service = Some(service);
    }

    /// Runs until shut down (or, for a client, until every handle is gone). Fails only if
    /// `poll` fails for good.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        let span = tracing::debug_span!("coap_driver", local = %self.local_addr);
        let _entered = span.enter();
        debug!("I/O thread started");
        let result = self.run_loop();
        self.finish();
        debug!("I/O thread stopped");
        result
    }

    fn run_loop(&mut self) -> Result<(), Error> {
        loop {
            let now = self.clock.now();
            // Trust the clock, not the sleep: a timer is due when now has reached it.
            if self.ep.poll_timeout().is_some_and(|d| now >= d) {
                self.ep.handle_timeout(now);
            }
            self.drain_commands(now);
            self.process_events(now);
            let more_tx = self.flush(now);
            self.process_events(now);
            if self.stop_when_orphaned && self.owner.strong_count() == 0 {
                self.begin_shutdown(now);
            }
            if self.should_stop(now) {
                return Ok(());
            }
            if more_tx {
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
            if wake_at.is_some_and(|d| self.clock.now() >= d) {
                continue;
            }
            // Announce the sleep, then look once more: a command queued before the
            // announcement would have found the flag clear and sent no wake-up.
            self.wake.sleeping.swap(true, Ordering::SeqCst);
            if let Ok(command) = self.commands.try_recv() {
                self.wake.sleeping.store(false, Ordering::SeqCst);
                self.command(now, command);
                continue;
            }
            let ready = self.sleep(wake_at.map(|d| self.clock.until(d)));
            self.wake.sleeping.store(false, Ordering::SeqCst);
            let ready = ready?;
            let now = self.clock.now();
            if ready.waker {
                self.drain_waker();
            }
            if ready.socket || ready.error {
                self.receive(now, ready.error);
            }
        }
    }

    /// Sleeps in `poll` until a socket is ready or `timeout` passes (forever without one).
    fn sleep(&self, timeout: Option<Duration>) -> Result<Ready, Error> {
        let mut interest = PollFlags::IN;
        if self.io.has_unsent() {
            interest |= PollFlags::OUT;
        }
        let mut fds = [
            PollFd::new(&*self.socket, interest),
            PollFd::new(&self.waker, PollFlags::IN),
        ];
        let timespec = timeout.map(|d| Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos().into(),
        });
        match rustix::event::poll(&mut fds, timespec.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Ready::default()),
            Err(e) => {
                warn!(error = %e, "poll failed");
                return Err(Error::Io(e.into()));
            }
        }
        let [socket, waker] = &fds;
        let s = socket.revents();
        Ok(Ready {
            socket: s.intersects(PollFlags::IN | PollFlags::OUT | PollFlags::HUP),
            error: s.contains(PollFlags::ERR),
            waker: !waker.revents().is_empty(),
        })
    }

    fn drain_waker(&self) {
        let mut scratch = [0u8; 8];
        for _ in 0..BATCH {
            if self.waker.recv(&mut scratch).is_err() {
                return;
            }
        }
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

    /// Ends what is left: waiting requests fail with `ShuttingDown`, shutdown callers return.
    fn finish(&mut self) {
        for (_, waiter) in self.waiters.drain() {
            match waiter {
                WaiterKind::Request(waiting, _) => waiting.fail(Error::ShuttingDown),
                WaiterKind::Ping(tx, _) => {
                    let _ = tx.send(Err(Error::ShuttingDown));
                }
            }
        }
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

    // ------------------------------------------------------------------------------------
    // Socket
    // ------------------------------------------------------------------------------------

    /// Reads up to [`BATCH`] datagrams into the engine, many per system call where the
    /// system allows (see [`coap_udp`]); `errors` says poll reported the error queue
    /// non-empty.
    fn receive(&mut self, now: coap_proto::Instant, errors: bool) {
        let socket = StdSocket(&self.socket);
        if errors {
            self.io.report_unreachable(&socket, &mut self.ep, now);
        }
        if let RecvEnd::Failed(e) = self.io.receive(&socket, &mut self.ep, now, BATCH).end {
            warn!(error = %e, "receive failed");
        }
    }

    /// Sends up to [`BATCH`] datagrams from the engine, many per system call where the
    /// system allows (see [`coap_udp`]), keeping back those the socket would not take.
    /// Returns true if more wait and the socket may take them.
    fn flush(&mut self, now: coap_proto::Instant) -> bool {
        self.io
            .flush(&StdSocket(&self.socket), &mut self.ep, now, BATCH)
    }

    // ------------------------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------------------------

    fn drain_commands(&mut self, now: coap_proto::Instant) {
        for _ in 0..BATCH {
            match self.commands.try_recv() {
                Ok(command) => self.command(now, command),
                Err(_) => return,
            }
        }
    }

    fn command(&mut self, now: coap_proto::Instant, command: Command) {
        match command {
            Command::Request {
                remote,
                request,
                uri,
                observe,
                waiting,
                started,
            } => {
                let method = request.method;
                let result = if observe {
                    self.ep.observe(now, remote, *request)
                } else {
                    self.ep.request(now, remote, *request)
                };
                match result {
                    Ok(id) => {
                        debug!(%id, %method, %uri, "request started");
                        self.waiters.insert(id, WaiterKind::Request(waiting, uri));
                        let _ = started.send(Ok(id));
                    }
                    Err(e) => {
                        debug!(%method, %uri, error = %e, "request refused");
                        let _ = started.send(Err(e.into()));
                    }
                }
            }
            Command::Ping { remote, reply } => match self.ep.ping(now, remote) {
                Ok(id) => {
                    self.waiters
                        .insert(id, WaiterKind::Ping(reply, to_user(remote)));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Cancel { id, reply } => {
                let done = self.ep.cancel(now, id);
                if let Some(reply) = reply {
                    let _ = reply.send(done);
                }
            }
            Command::CancelObservation { id, reply } => {
                // Active cancellation once established (RFC 7641 §3.6); before that, the
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
            Command::PendingRequests(reply) => {
                let list = self
                    .ep
                    .pending_requests()
                    .map(|(id, peer, method, token)| PendingRequest {
                        id,
                        method,
                        uri: match self.waiters.get(&id) {
                            Some(WaiterKind::Request(_, uri)) => uri.to_string(),
                            Some(WaiterKind::Ping(_, peer)) => format!("coap://{peer}"),
                            None => String::new(),
                        },
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
            Command::Respond { id, response, done } => {
                let result = self.respond(now, id, *response);
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Command::Abandoned(id) => {
                if self.incoming.contains_key(&id) {
                    warn!(%id, "request left without an answer (handler panicked or responder dropped): 5.00");
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
                // Still unanswered: a 5.00 rather than a client left waiting.
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

    // ------------------------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------------------------

    fn process_events(&mut self, now: coap_proto::Instant) {
        while let Some(event) = self.ep.poll_event() {
            match event {
                Event::Response { id, peer, response } => self.on_response(id, peer, response),
                Event::Notification {
                    id,
                    peer,
                    response,
                    fresh,
                } => self.on_notification(id, peer, response, fresh),
                Event::RequestFailed { id, reason } => self.on_failed(id, reason),
                Event::MulticastDone { id } => {
                    self.waiters.remove(&id);
                }
                Event::Pong { id } => {
                    if let Some(WaiterKind::Ping(tx, _)) = self.waiters.remove(&id) {
                        let _ = tx.send(Ok(()));
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
                    observers,
                    ..
                }
                | Event::ObserverRemoved {
                    resource,
                    observers,
                    ..
                } => {
                    debug!(%resource, observers, "observer count changed");
                    if let Some(service) = &self.service {
                        service.router.observers_changed(&resource, observers);
                    }
                }
                Event::ResponseNotConfirmed { id, reason } => {
                    warn!(%id, %reason, "confirmable response not acknowledged")
                }
                other => trace!(event = ?other, "event"),
            }
        }
    }

    fn on_response(&mut self, id: RequestId, peer: SocketAddr, message: Message) {
        if let Some(WaiterKind::Request(Waiting::Many(tx), uri)) = self.waiters.get(&id) {
            let response = IncomingResponse {
                peer: to_user(peer),
                uri: Arc::clone(uri),
                message,
            };
            if tx.try_send(Ok(response)).is_err() {
                debug!(%id, "multicast response dropped: not read");
            }
            return;
        }
        let Some(WaiterKind::Request(waiting, uri)) = self.waiters.remove(&id) else {
            return;
        };
        let response = IncomingResponse {
            peer: to_user(peer),
            uri,
            message,
        };
        debug!(%id, code = %response.code(), "response");
        match waiting {
            Waiting::Once(done) => done(Ok(response)),
            // The last word of an observation: not registered, or deregistered.
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
        let Some(WaiterKind::Request(Waiting::Observe(tx), uri)) = self.waiters.get(&id) else {
            return;
        };
        let notification = Notification {
            response: IncomingResponse {
                peer: to_user(peer),
                uri: Arc::clone(uri),
                message,
            },
            fresh,
        };
        if tx.try_send(Ok(notification)).is_err() {
            // Only the latest state matters (RFC 7641 §1.3).
            debug!(%id, "notification dropped: observation not read");
        }
    }

    fn on_failed(&mut self, id: RequestId, reason: Failure) {
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        if reason == Failure::Cancelled {
            debug!(%id, "cancelled");
        } else {
            debug!(%id, %reason, "request failed");
        }
        match waiter {
            WaiterKind::Request(waiting, _) => waiting.fail(reason.into()),
            WaiterKind::Ping(tx, _) => {
                let _ = tx.send(Err(reason.into()));
            }
        }
    }

    /// Routes an incoming request: 4.04, 4.05 and `/.well-known/core` are answered here; a
    /// handler runs on the pool, and a full pool is answered 5.03 with Max-Age.
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
        debug!(%id, method = %message.code, %uri, peer = %user_peer, "request");
        self.incoming.insert(
            id,
            IncomingMeta {
                method: message.code,
                uri,
                peer: user_peer,
                token: message.token.clone(),
            },
        );
        let Some(service) = &self.service else {
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
            mailbox: self.mailbox.clone(),
        };
        let routed =
            std::panic::catch_unwind(AssertUnwindSafe(|| service.router.route_request(request)));
        let (handler, request, accept_observer) = match routed {
            Ok(Routed::Answer(response)) => {
                let _ = self.respond(now, id, response);
                return;
            }
            Ok(Routed::Handler {
                handler,
                request,
                accept_observer,
            }) => (handler, request, accept_observer),
            Err(_) => {
                warn!(%id, "an observe hook panicked: 5.00");
                let _ = self.respond(now, id, Response::new(Code::INTERNAL_SERVER_ERROR));
                return;
            }
        };
        if accept_observer && !render {
            if let Err(e) = self.ep.accept_observer(id) {
                debug!(%id, error = ?e, "registration not accepted");
            }
        }
        let guard = AnswerGuard {
            id,
            mailbox: Some(self.mailbox.clone()),
        };
        let job = Box::new(move || {
            let reply = std::panic::catch_unwind(AssertUnwindSafe(|| handler(request)));
            match reply {
                Ok(reply) => guard.answer(reply),
                // The guard reports the request abandoned: 5.00.
                Err(_) => drop(guard),
            }
        });
        if !service.pool.try_run(job) {
            // RFC 7252 §5.9.3.4: 5.03 with Max-Age says when to come back. The dropped job's
            // guard reports the request abandoned later, which is ignored once answered.
            warn!(%id, "every worker busy and the queue full: 5.03");
            let _ = self.respond(
                now,
                id,
                Response::new(Code::SERVICE_UNAVAILABLE).with_max_age(1),
            );
        }
    }
}

/// What `poll` reported.
#[derive(Clone, Copy, Debug, Default)]
struct Ready {
    socket: bool,
    error: bool,
    waker: bool,
}

/// Travels with a handler's job: sends the handler's answer, or, dropped without one (the
/// handler panicked, or the job never ran), reports the request abandoned so it gets a 5.00.
struct AnswerGuard {
    id: IncomingId,
    mailbox: Option<Mailbox>,
}

impl AnswerGuard {
    fn answer(mut self, reply: Reply) {
        let Some(mailbox) = self.mailbox.take() else {
            return;
        };
        if let Reply::Response(response) = reply {
            let _ = mailbox.post(Command::Respond {
                id: self.id,
                response: Box::new(response),
                done: None,
            });
        }
    }
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        if let Some(mailbox) = self.mailbox.take() {
            let _ = mailbox.post(Command::Abandoned(self.id));
        }
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
    for (i, arg) in message.options.uri_query().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(arg);
    }
    out
}
