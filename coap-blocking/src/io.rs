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

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::thread::{self, ThreadId};
use std::time::Duration;

use coap_proto::host::{self, Delivery, Dispatch, Host, Incoming, Kind};
use coap_proto::msg::Code;
use coap_proto::{Endpoint, Response};
use coap_udp::{DatagramIo, RecvEnd, StdSocket};
use rustix::event::{PollFd, PollFlags, Timespec};
use tracing::{debug, warn};

use crate::incoming::IncomingRequest;
use crate::pool::Pool;
use crate::{Error, IncomingResponse, Notification, Router};

pub(crate) use coap_proto::host::{PendingIncoming, PendingRequest};

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
    /// The I/O thread, once it runs: a call that waits for its answer must not come from it.
    thread: OnceLock<ThreadId>,
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

    /// Fails on the I/O thread itself (in a handler run there, see
    /// [`ServerBuilder::workers`](crate::ServerBuilder::workers)): a call that goes on to wait
    /// for the thread's answer would wait forever.
    pub(crate) fn refuse_on_io_thread(&self) -> Result<(), Error> {
        if self.wake.thread.get() == Some(&thread::current().id()) {
            return Err(Error::Unsupported(
                "waiting for the I/O thread on the I/O thread (a handler run with workers(0))",
            ));
        }
        Ok(())
    }

    /// Asks the thread something and waits for the answer. Refused on the I/O thread itself
    /// (a handler run there, see [`ServerBuilder::workers`](crate::ServerBuilder::workers)),
    /// which would wait for its own answer forever.
    pub(crate) fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, Error> {
        self.refuse_on_io_thread()?;
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
    /// The last request target that named an address, parsed once.
    pub(crate) targets: host::Targets,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.mailbox.wake.force();
    }
}

/// This crate's channels, as the host core sees them: [`Waiting`] for client exchanges,
/// std channels for answers.
pub(crate) enum Chan {}

impl host::Channels for Chan {
    type Waiter = Waiting;
    type Reply<T> = mpsc::Sender<T>;
    type Sender = Mailbox;

    fn reply<T>(to: mpsc::Sender<T>, value: T) {
        let _ = to.send(value);
    }

    fn post(to: &Mailbox, command: Command) -> bool {
        to.post(command).is_ok()
    }
}

/// What handles post to the thread.
pub(crate) type Command = host::Command<Chan>;

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
    /// A ping: the pong or an error.
    Ping(mpsc::Sender<Result<(), Error>>),
}

impl host::Waiter for Waiting {
    fn kind(&self) -> Kind {
        match self {
            Waiting::Once(_) | Waiting::Ping(_) => Kind::Once,
            Waiting::Many(_) => Kind::Multicast,
            Waiting::Observe(_) => Kind::Observation,
        }
    }

    /// A std channel does not tell; a handle that is gone cancels its request by id.
    fn is_closed(&self) -> bool {
        false
    }

    fn deliver(&self, item: Delivery) -> bool {
        match (self, item) {
            (Waiting::Many(tx), Delivery::Response(r)) => tx.try_send(Ok(r)).is_ok(),
            (Waiting::Observe(tx), Delivery::Notification(n)) => tx.try_send(Ok(n)).is_ok(),
            _ => false,
        }
    }

    fn finish(self, outcome: Result<Delivery, Error>) {
        match (self, outcome) {
            (Waiting::Once(done), Ok(Delivery::Response(r))) => done(Ok(r)),
            (Waiting::Once(done), Err(e)) => done(Err(e)),
            (Waiting::Many(tx), Err(e)) => {
                let _ = tx.try_send(Err(e));
            }
            (Waiting::Observe(tx), Ok(Delivery::Notification(n))) => {
                let _ = tx.try_send(Ok(n));
            }
            (Waiting::Observe(tx), Err(e)) => {
                let _ = tx.try_send(Err(e));
            }
            (Waiting::Ping(tx), Ok(Delivery::Pong)) => {
                let _ = tx.send(Ok(()));
            }
            (Waiting::Ping(tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            // An outcome of another kind: nothing waits for it.
            _ => {}
        }
    }
}

/// The engine's microseconds, counted from when the thread's state was built.
#[derive(Clone, Copy, Debug)]
struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    fn now(&self) -> coap_proto::Instant {
        coap_proto::Instant::ZERO + self.origin.elapsed()
    }

    /// How long from now until `t`; zero if it has passed.
    fn until(&self, t: coap_proto::Instant) -> Duration {
        Duration::from_micros(t.as_micros()).saturating_sub(self.origin.elapsed())
    }
}

/// What serves incoming requests on a server.
pub(crate) struct Service {
    pub(crate) router: Router,
    /// The workers that run handlers; none to run them on the I/O thread.
    pub(crate) pool: Option<Pool>,
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
    host: Host<Chan>,
    service: Option<Service>,
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
            thread: OnceLock::new(),
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
            targets: host::Targets::new(),
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
            host: Host::new(local_addr, grace),
            service: None,
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
        let _ = self.mailbox.wake.thread.set(thread::current().id());
        let result = self.run_loop();
        self.finish();
        debug!("I/O thread stopped");
        result
    }

    fn run_loop(&mut self) -> Result<(), Error> {
        loop {
            let now = self.clock.now();
            self.drain_commands(now);
            self.drive(now);
            let more_tx = self.flush(now);
            self.drive(now);
            self.start_queued_jobs();
            if self.stop_when_orphaned && self.owner.strong_count() == 0 {
                self.host.shut_down(&mut self.ep, now);
            }
            if self.should_stop(now) {
                return Ok(());
            }
            if more_tx {
                continue;
            }
            let wake_at = self.host.next_wake(&mut self.ep);
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
        self.host.is_finished(&self.ep, now, !self.io.has_unsent())
    }

    /// Ends what is left: waiting requests fail with `ShuttingDown`, shutdown callers return.
    fn finish(&mut self) {
        self.host.finish();
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

    /// Carries out a command (see [`Host::command`]).
    fn command(&mut self, now: coap_proto::Instant, command: Command) {
        self.host.command(&mut self.ep, now, command);
    }

    /// Runs the engine's due timers and routes its events (see [`Host::drive`]).
    /// Wakes a worker for the handlers [`Driver::drive`] queued: once per turn of the loop
    /// rather than once per request, so the I/O thread reads and answers a whole batch before
    /// a worker takes its core.
    fn start_queued_jobs(&self) {
        if let Some(pool) = self.service.as_ref().and_then(|s| s.pool.as_ref()) {
            pool.start_queued();
        }
    }

    fn drive(&mut self, now: coap_proto::Instant) {
        let mut handlers = Handlers {
            service: self.service.as_ref(),
            mailbox: &self.mailbox,
        };
        self.host.drive(&mut self.ep, now, &mut handlers);
    }
}

/// The server's side of [`Host::drive`]: 4.04, 4.05 and `/.well-known/core` are answered at
/// once; a handler runs on the pool, and a full pool is answered 5.03 with Max-Age, or, with
/// no pool, right here on the I/O thread. A plain client answers 4.04.
struct Handlers<'a> {
    service: Option<&'a Service>,
    mailbox: &'a Mailbox,
}

impl host::Service for Handlers<'_> {
    fn call(&mut self, request: Incoming) -> Dispatch {
        let Some(service) = self.service else {
            return Dispatch::answer(Response::new(Code::NOT_FOUND));
        };
        let mailbox = self.mailbox;
        let request_of = |head| IncomingRequest {
            head,
            mailbox: mailbox.clone(),
        };
        match &service.pool {
            Some(pool) => service
                .router
                .start::<Chan>(request, request_of, mailbox, |job| pool.queue(job)),
            None => service.router.start_inline(request, request_of),
        }
    }

    fn observers_changed(&mut self, resource: &str, count: usize) {
        if let Some(service) = self.service {
            service.router.observers_changed(resource, count);
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
