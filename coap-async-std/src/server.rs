//! [`Server`]: a bound socket serving a [`Router`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_net::AsyncToSocketAddrs;
use coap_proto::endpoint::Stats;
use coap_proto::{Config, Response};
use rand_core::RngCore;

use crate::client::{common_builder_methods, first_addr, new_endpoint};
use crate::driver::{
    Command, Driver, DriverParts, PendingIncoming, PendingRequest, Shared, ShutdownSignal,
};
use crate::socket::{self, SocketOptions};
use crate::{Client, Error, Router};

/// A CoAP server: a bound UDP socket, ready to [`serve`](Server::serve) a [`Router`].
///
/// `serve` returns a future that runs the whole server, handlers included; run it on any
/// executor (`async_std::task::spawn`, `smol::spawn`, or simply `.await` it).
///
/// ```no_run
/// # async fn run() -> Result<(), coap_async_std::Error> {
/// use coap_async_std::{IncomingRequest, Response, Router, Server};
///
/// let app = Router::new().get("/hello", |_req: IncomingRequest| async {
///     Response::content("hello")
/// });
/// let server = Server::bind("[::]:5683").await?;
/// println!("listening on {}", server.local_addr());
/// server.serve(app).await?;
/// # Ok(()) }
/// ```
pub struct Server {
    driver: Driver,
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds a server to `addr` with the default configuration (`"[::]:5683"`; port 0 picks a
    /// free port, see [`local_addr`](Server::local_addr)).
    pub async fn bind(addr: impl AsyncToSocketAddrs) -> Result<Server, Error> {
        Server::builder().bind(addr).await
    }

    /// A builder, to choose the configuration and socket options.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A handle for introspection, notifications and shutdown while the server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves `router` until the socket fails for good or a [`ServerHandle::shutdown`].
    ///
    /// Handlers that cannot answer at once run as tasks polled by this future, on the thread
    /// that polls it; spawn CPU-heavy or blocking work onto your executor or a thread pool
    /// (for instance with `blocking::unblock`) and await it from the handler.
    pub async fn serve(self, router: Router) -> Result<(), Error> {
        self.run(router, None).await
    }

    /// Serves `router` until `signal` resolves, then shuts down gracefully: new requests get
    /// 5.03 Service Unavailable, handlers under way finish, and Confirmable responses are
    /// retransmitted until acknowledged, all within the builder's grace period; then the
    /// socket closes.
    pub async fn serve_with_shutdown(
        self,
        router: Router,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.run(router, Some(Box::pin(signal))).await
    }

    async fn run(self, router: Router, signal: Option<ShutdownSignal>) -> Result<(), Error> {
        let Server { mut driver, shared } = self;
        // Only the user's handles keep the command queue open.
        drop(shared);
        driver.set_service(Arc::new(router));
        driver.run(signal).await
    }
}

/// A handle to a running [`Server`]: introspection, notifications, requests from the
/// server's own socket, and shutdown. Cheap to clone.
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
    /// The server's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The requests received and not answered yet (id, method, path, peer, token).
    pub async fn pending_incoming(&self) -> Result<Vec<PendingIncoming>, Error> {
        self.shared.ask(Command::PendingIncoming).await
    }

    /// The requests the server sent itself (through [`client`](ServerHandle::client)) that
    /// have not ended.
    pub async fn pending_requests(&self) -> Result<Vec<PendingRequest>, Error> {
        self.shared.ask(Command::PendingRequests).await
    }

    /// The engine's counters.
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.shared.ask(Command::Stats).await
    }

    /// A handle that announces changes of the observable resource at `path` (the full
    /// request path, such as `"/sensors/temp"`; see [`Router::observable`]).
    pub fn notifier(&self, path: &str) -> Notifier {
        Notifier {
            shared: Arc::clone(&self.shared),
            path: coap_proto::resource::resource_name(path).into(),
        }
    }

    /// A client sending from the server's own socket and address.
    pub fn client(&self) -> Client {
        Client::from_shared(Arc::clone(&self.shared))
    }

    /// Shuts down gracefully (see [`Server::serve_with_shutdown`]) and waits until the
    /// server has stopped.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let _ = self.shared.ask(Command::Shutdown).await;
        Ok(())
    }
}

/// Announces changes of an observable resource (RFC 7641 §4.2) from any task; cheap to
/// clone. Made by [`ServerHandle::notifier`].
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
    /// The resource's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The resource changed: its route's handler renders the new state once per variant
    /// (distinct registration request) and each rendering goes to that variant's observers.
    /// Returns the number of variants rendered.
    pub async fn notify(&self) -> Result<usize, Error> {
        self.send(None).await
    }

    /// The resource changed to `representation`, sent as is to every observer; a code
    /// other than 2.xx ends the observations (§4.2). Returns the number of observers.
    pub async fn notify_with(&self, representation: Response) -> Result<usize, Error> {
        self.send(Some(Box::new(representation))).await
    }

    async fn send(&self, representation: Option<Box<Response>>) -> Result<usize, Error> {
        let path = self.path.to_string();
        self.shared
            .ask(|reply| Command::Notify {
                path,
                representation,
                reply,
            })
            .await
    }

    /// The number of clients observing the resource.
    pub async fn observer_count(&self) -> Result<usize, Error> {
        let path = self.path.to_string();
        self.shared
            .ask(|reply| Command::ObserverCount { path, reply })
            .await
    }
}

/// Configures and binds a [`Server`].
pub struct ServerBuilder {
    config: Config,
    socket: SocketOptions,
    rng: Option<Box<dyn RngCore + Send>>,
    grace: Duration,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: Config::default(),
            socket: SocketOptions::default(),
            rng: None,
            grace: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("socket", &self.socket)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    common_builder_methods!();

    /// Binds the socket; nothing is served until [`Server::serve`].
    pub async fn bind(self, addr: impl AsyncToSocketAddrs) -> Result<Server, Error> {
        let addr = first_addr(addr).await?;
        let socket = socket::bind(addr, &self.socket)?;
        let endpoint = new_endpoint(self.config, self.rng)?;
        let (driver, shared) = Driver::new(DriverParts {
            socket,
            endpoint,
            stop_when_orphaned: false,
            grace: self.grace,
        })?;
        Ok(Server { driver, shared })
    }
}

coap_udp::group_methods!(Server, |this| socket2::SockRef::from(
    this.shared.socket.get_ref()
));
