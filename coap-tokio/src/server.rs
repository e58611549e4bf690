//! The [`Server`]: a bound socket that serves a [`Router`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_proto::endpoint::Stats;
use coap_proto::{Config, Response};
use rand_core::RngCore;
use tokio::net::ToSocketAddrs;

use crate::client::{first_addr, new_endpoint};
use crate::driver::{Command, Driver, DriverParts, PendingIncoming, PendingRequest, Shared};
use crate::socket::{self, SocketOptions};
use crate::{Client, Error, Router};

/// A CoAP server: a bound UDP socket, ready to [`serve`](Server::serve) a [`Router`].
///
/// ```no_run
/// # async fn run() -> Result<(), coap_tokio::Error> {
/// use coap_tokio::{IncomingRequest, Response, Router, Server};
///
/// let app = Router::new().get("/hello", |_req: IncomingRequest| async {
///     Response::content("hello")
/// });
/// let server = Server::bind("[::]:5683").await?;
/// println!("listening on {}", server.local_addr());
/// server.serve_with_shutdown(app, async {
///     let _ = tokio::signal::ctrl_c().await;
/// }).await?;
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
    /// Binds a server to `addr` with the default configuration (`"[::]:5683"`; port 0 picks
    /// a free port, see [`local_addr`](Server::local_addr)).
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Server, Error> {
        Server::builder().bind(addr).await
    }

    /// A builder for a server with a chosen configuration and socket options.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A handle for introspection and shutdown while the server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves `router` until the socket fails for good or a [`ServerHandle::shutdown`].
    pub async fn serve(self, router: Router) -> Result<(), Error> {
        self.run(router, None).await
    }

    /// Serves `router` until `signal` resolves, then shuts down gracefully: new requests are
    /// answered 5.03 Service Unavailable, handlers under way finish, Confirmable responses
    /// are retransmitted until acknowledged (all within the builder's grace period), then
    /// the socket closes.
    pub async fn serve_with_shutdown(
        self,
        router: Router,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.run(router, Some(Box::pin(signal))).await
    }

    async fn run(
        self,
        router: Router,
        signal: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    ) -> Result<(), Error> {
        let Server { mut driver, shared } = self;
        // The server keeps no handle of its own: only the user's handles hold the channel.
        drop(shared);
        driver.set_service(Arc::new(router));
        driver.run(signal).await
    }
}

/// A handle to a running [`Server`]: introspection, requests from the server's own socket,
/// and shutdown. Cheap to clone.
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

    /// The requests received and not answered yet: id, method, path, peer and token.
    pub async fn pending_incoming(&self) -> Result<Vec<PendingIncoming>, Error> {
        self.shared.ask(Command::PendingIncoming).await
    }

    /// The requests the server itself sent (through [`client`](ServerHandle::client)) and
    /// that have not ended.
    pub async fn pending_requests(&self) -> Result<Vec<PendingRequest>, Error> {
        self.shared.ask(Command::PendingRequests).await
    }

    /// The engine's counters.
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.shared.ask(Command::Stats).await
    }

    /// A handle to announce changes of the observable resource at `path` (the full request
    /// path, such as `"/sensors/temp"`; see [`Router::observable`]).
    pub fn notifier(&self, path: &str) -> Notifier {
        let mut normalized = String::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            normalized.push('/');
            normalized.push_str(segment);
        }
        if normalized.is_empty() {
            normalized.push('/');
        }
        Notifier {
            shared: Arc::clone(&self.shared),
            path: normalized.into(),
        }
    }

    /// A client that sends from the server's own socket and address.
    pub fn client(&self) -> Client {
        Client::from_shared(Arc::clone(&self.shared))
    }

    /// Shuts the server down gracefully (see [`Server::serve_with_shutdown`]) and waits until
    /// it has stopped.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let _ = self.shared.ask(Command::Shutdown).await;
        Ok(())
    }
}

/// Announces that an observable resource changed (RFC 7641 §4.2); cheap to clone and usable
/// from any task. Get one from [`ServerHandle::notifier`].
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

    /// The resource changed: the route's handler is asked to render the new state once per
    /// variant (distinct registration request), and each answer goes to that variant's
    /// observers. Returns how many variants are rendered.
    pub async fn notify(&self) -> Result<usize, Error> {
        let path = self.path.to_string();
        self.shared
            .ask(|reply| Command::Notify {
                path,
                representation: None,
                reply,
            })
            .await
    }

    /// The resource changed to `representation`, sent to every observer as is. A non-2.xx
    /// code ends the observations (§4.2). Returns how many observers it went to.
    pub async fn notify_with(&self, representation: Response) -> Result<usize, Error> {
        let path = self.path.to_string();
        self.shared
            .ask(|reply| Command::Notify {
                path,
                representation: Some(Box::new(representation)),
                reply,
            })
            .await
    }

    /// How many clients observe the resource.
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
    coap_proto::bind_builder_methods!();

    /// Binds the socket. Nothing is served until [`Server::serve`].
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<Server, Error> {
        let addr = first_addr(addr).await?;
        let socket = socket::bind(addr, &self.socket)?;
        let endpoint = new_endpoint(self.config, self.rng)?;
        let (driver, shared) = Driver::new(DriverParts {
            socket,
            endpoint,
            service: None,
            stop_when_orphaned: false,
            grace: self.grace,
        })?;
        Ok(Server { driver, shared })
    }
}
