//! The [`Server`]: a bound socket that serves a [`Router`], with handlers on a pool of
//! worker threads.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use coap_proto::endpoint::Stats;
use coap_proto::{Config, Response};
use rand_core::RngCore;

use crate::client::{first_addr, new_endpoint, socket_builder_methods};
use crate::io::{Command, Driver, PendingIncoming, PendingRequest, Service, Shared};
use crate::pool::Pool;
use crate::socket::{self, SocketOptions};
use crate::{Client, Error, Router};

/// The default number of worker threads running handlers.
pub const DEFAULT_WORKERS: usize = 4;

/// The default number of requests that may wait for a free worker; beyond, requests are
/// answered 5.03 Service Unavailable with Max-Age (RFC 7252 §5.9.3.4).
pub const DEFAULT_QUEUE: usize = 1024;

/// A CoAP server: a bound UDP socket, ready to [`serve`](Server::serve) a [`Router`].
///
/// `serve` runs the I/O loop on the calling thread and returns when the server stops; the
/// handlers run on a pool of worker threads. Use a [`ServerHandle`] (taken before `serve`)
/// to stop it, to notify observers and to look at what is pending, from any thread.
///
/// ```no_run
/// # fn run() -> Result<(), coap_blocking::Error> {
/// use coap_blocking::{IncomingRequest, Response, Router, Server};
///
/// let app = Router::new().get("/hello", |_req: IncomingRequest| Response::content("hello"));
/// let server = Server::bind("[::]:5683")?;
/// println!("listening on {}", server.local_addr());
/// server.serve(app)?;
/// # Ok(()) }
/// ```
pub struct Server {
    driver: Driver,
    shared: Arc<Shared>,
    workers: usize,
    queue: usize,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.shared.local_addr)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds a server to `addr` with the default configuration (port 0 picks a free port,
    /// see [`local_addr`](Server::local_addr)).
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Server, Error> {
        Server::builder().bind(addr)
    }

    /// A builder for a chosen configuration, socket options and pool size.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A handle for notifications, introspection and shutdown while the server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves `router` on the calling thread until the socket fails for good or a
    /// [`ServerHandle::shutdown`].
    pub fn serve(self, router: Router) -> Result<(), Error> {
        let Server {
            mut driver,
            shared,
            workers,
            queue,
        } = self;
        drop(shared);
        driver.set_service(Service {
            router,
            pool: match workers {
                0 => None,
                n => Some(Pool::new(n, queue)?),
            },
        });
        driver.run()
    }

    /// Serves `router` until `signal` returns, then shuts down gracefully: new requests are
    /// answered 5.03, handlers under way finish, Confirmable responses are retransmitted
    /// until acknowledged (within the grace period), then the socket closes.
    ///
    /// `signal` runs on a thread of its own (where `coap-tokio` takes a future). If the
    /// server stops another way first, that thread is left to end when `signal` does.
    pub fn serve_with_shutdown(
        self,
        router: Router,
        signal: impl FnOnce() + Send + 'static,
    ) -> Result<(), Error> {
        let mailbox = self.shared.mailbox.clone();
        thread::Builder::new()
            .name("coap-shutdown-signal".into())
            .spawn(move || {
                signal();
                let (tx, _rx) = mpsc::channel();
                let _ = mailbox.post(Command::Shutdown(tx));
            })?;
        self.serve(router)
    }
}

/// A handle to a [`Server`]: notifications, introspection, requests from the server's own
/// socket, and shutdown. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The requests received and not answered yet.
    pub fn pending_incoming(&self) -> Result<Vec<PendingIncoming>, Error> {
        self.shared.mailbox.ask(Command::PendingIncoming)
    }

    /// The requests the server itself sent (through [`client`](ServerHandle::client)) that
    /// have not ended.
    pub fn pending_requests(&self) -> Result<Vec<PendingRequest>, Error> {
        self.shared.mailbox.ask(Command::PendingRequests)
    }

    /// The engine's counters.
    pub fn stats(&self) -> Result<Stats, Error> {
        self.shared.mailbox.ask(Command::Stats)
    }

    /// A handle to announce changes of the observable resource at `path` (the full request
    /// path, such as `"/sensors/temp"`; see [`Router::observable`]).
    pub fn notifier(&self, path: &str) -> Notifier {
        Notifier {
            shared: Arc::clone(&self.shared),
            path: coap_proto::resource::resource_name(path).into(),
        }
    }

    /// A client that sends from the server's own socket.
    pub fn client(&self) -> Client {
        Client::from_shared(Arc::clone(&self.shared))
    }

    /// Shuts the server down gracefully (see [`Server::serve_with_shutdown`]) and blocks
    /// until it has stopped. Before `serve` has started, it blocks until `serve` runs.
    pub fn shutdown(&self) -> Result<(), Error> {
        let _ = self.shared.mailbox.ask(Command::Shutdown);
        Ok(())
    }
}

/// Announces that an observable resource changed (RFC 7641 §4.2), from any thread. Get one
/// from [`ServerHandle::notifier`].
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    path: Arc<str>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("path", &self.path)
            .finish()
    }
}

impl Notifier {
    /// The resource path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The resource changed: its handler renders the new state once per variant (distinct
    /// registration request), on the worker pool, and each rendering goes to that variant's
    /// observers. Returns how many variants are rendered. Do not call it from the route's own
    /// handler while every worker is busy: the rendering needs a free worker.
    pub fn notify(&self) -> Result<usize, Error> {
        let path = self.path.to_string();
        self.shared.mailbox.ask(|reply| Command::Notify {
            path,
            representation: None,
            reply,
        })
    }

    /// The resource changed to `representation`, sent to every observer as is. A non-2.xx
    /// code ends the observations (§4.2). Returns how many observers it went to.
    pub fn notify_with(&self, representation: Response) -> Result<usize, Error> {
        let path = self.path.to_string();
        self.shared.mailbox.ask(|reply| Command::Notify {
            path,
            representation: Some(Box::new(representation)),
            reply,
        })
    }

    /// How many clients observe the resource.
    pub fn observer_count(&self) -> Result<usize, Error> {
        let path = self.path.to_string();
        self.shared
            .mailbox
            .ask(|reply| Command::ObserverCount { path, reply })
    }
}

/// Configures and binds a [`Server`].
pub struct ServerBuilder {
    config: Config,
    socket: SocketOptions,
    rng: Option<Box<dyn RngCore + Send>>,
    grace: Duration,
    workers: usize,
    queue: usize,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: Config::default(),
            socket: SocketOptions::default(),
            rng: None,
            grace: Duration::from_secs(10),
            workers: DEFAULT_WORKERS,
            queue: DEFAULT_QUEUE,
        }
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("socket", &self.socket)
            .field("grace", &self.grace)
            .field("workers", &self.workers)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    socket_builder_methods!();

    /// How many worker threads run handlers. Default [`DEFAULT_WORKERS`]. (Not in
    /// `coap-tokio`, whose handlers are tasks.)
    ///
    /// `0` runs every handler on the server's I/O thread, as it arrives: no hand-off to
    /// another thread, and the answer rides on the ACK (RFC 7252 §5.2.1). That suits
    /// handlers that answer at once (a value from memory, a small computation); a handler
    /// that blocks holds up every other request, retransmissions and notifications until it
    /// returns, so anything slow belongs on workers, or behind a
    /// [`Deferred`](crate::Deferred) answered from another thread.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How many requests may wait for a free worker; beyond, they are answered 5.03 with
    /// Max-Age. Default [`DEFAULT_QUEUE`].
    pub fn queue_capacity(mut self, requests: usize) -> Self {
        self.queue = requests;
        self
    }

    /// Binds the socket. Nothing is served until [`Server::serve`].
    pub fn bind(self, addr: impl ToSocketAddrs) -> Result<Server, Error> {
        let addr = first_addr(addr)?;
        let socket = socket::bind(addr, &self.socket)?;
        let endpoint = new_endpoint(self.config, self.rng)?;
        let (driver, shared) = Driver::new(socket, endpoint, false, self.grace)?;
        Ok(Server {
            driver,
            shared,
            workers: self.workers,
            queue: self.queue,
        })
    }
}

coap_udp::group_methods!(Server, |this| socket2::SockRef::from(&*this.shared.socket));
