//! The [`Server`]: a bound socket that serves a [`Router`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coap_proto::endpoint::Stats;
use coap_proto::{Config, Response};
use rand_chacha::rand_core::SeedableRng;
use rand_core::RngCore;
use tokio::net::ToSocketAddrs;
use tokio::sync::{oneshot, watch};

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
///
/// A server runs one engine (a socket, a driver task and an [`Endpoint`](coap_proto::Endpoint))
/// unless [`ServerBuilder::engines`] asks for more: then several sockets share the port and
/// each runs its own engine, so a multi-threaded runtime can use one core per engine.
pub struct Server {
    drivers: Vec<Driver>,
    handle: ServerHandle,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .field("engines", &self.drivers.len())
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
        self.handle.local_addr()
    }

    /// How many engines serve the address (see [`ServerBuilder::engines`]).
    pub fn engines(&self) -> usize {
        self.drivers.len()
    }

    /// Joins the IPv4 multicast `group` (such as [`ALL_COAP_NODES_V4`](crate::ALL_COAP_NODES_V4))
    /// on the interface with address `interface` (`0.0.0.0`: the system chooses). Bind to the
    /// wildcard address (`0.0.0.0` or `[::]`) to receive what is sent to the group. On Linux
    /// the requests sent to the group are then answered as RFC 7252 §8.2 asks: after a random
    /// leisure ([`Config::default_leisure`]), never with an error or a Reset, and from the
    /// server's unicast address; elsewhere they are answered like unicast requests.
    ///
    /// With several engines the first one joins and answers; the others' sockets are told
    /// to ignore the group (see [`coap_udp::report_group_destinations`]).
    pub fn join_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> Result<(), Error> {
        self.join(|s| coap_udp::join_multicast_v4(s, group, interface))
    }

    /// Joins the IPv6 multicast `group` (such as
    /// [`ALL_COAP_NODES_V6_LINK_LOCAL`](crate::ALL_COAP_NODES_V6_LINK_LOCAL)) on the interface
    /// with index `interface` (0: the system chooses); see
    /// [`join_multicast_v4`](Server::join_multicast_v4).
    pub fn join_multicast_v6(&self, group: Ipv6Addr, interface: u32) -> Result<(), Error> {
        self.join(|s| coap_udp::join_multicast_v6(s, group, interface))
    }

    /// Leaves an IPv4 multicast group joined with [`join_multicast_v4`](Server::join_multicast_v4).
    pub fn leave_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> Result<(), Error> {
        Ok(socket2::SockRef::from(&*self.handle.first.socket)
            .leave_multicast_v4(&group, &interface)?)
    }

    /// Leaves an IPv6 multicast group joined with [`join_multicast_v6`](Server::join_multicast_v6).
    pub fn leave_multicast_v6(&self, group: Ipv6Addr, interface: u32) -> Result<(), Error> {
        Ok(socket2::SockRef::from(&*self.handle.first.socket)
            .leave_multicast_v6(&group, interface)?)
    }

    /// Joins a group with the first engine's socket, and keeps the others from hearing it.
    fn join(
        &self,
        join: impl FnOnce(socket2::SockRef<'_>) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        join(socket2::SockRef::from(&*self.handle.first.socket))?;
        for other in self.handle.engines.iter().skip(1) {
            coap_udp::report_group_destinations(&*other.socket)?;
        }
        Ok(())
    }

    /// A handle for introspection and shutdown while the server runs.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
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

    async fn run(self, router: Router, signal: Option<ShutdownSignal>) -> Result<(), Error> {
        let Server {
            mut drivers,
            handle,
        } = self;
        // The server keeps no handle of its own: only the user's handles hold the channels.
        drop(handle);
        if drivers.len() == 1 {
            if let Some(mut driver) = drivers.pop() {
                driver.set_service(Arc::new(router));
                return driver.run(signal).await;
            }
        }
        serve_engines(drivers, router, signal).await
    }
}

type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs several engines, each driver on a task of its own, until all have stopped. The
/// shutdown signal, an engine failing and an engine stopping all stop every engine
/// gracefully: a server is one unit.
async fn serve_engines(
    drivers: Vec<Driver>,
    router: Router,
    mut signal: Option<ShutdownSignal>,
) -> Result<(), Error> {
    let router = Arc::new(router);
    let tally = Arc::new(ObserverTally {
        counts: Mutex::new(HashMap::new()),
        engines: drivers.len(),
    });
    let (stop, stopping) = watch::channel(false);
    // Dropped with this future: then every driver task is aborted.
    let mut tasks = tokio::task::JoinSet::new();
    for (engine, mut driver) in drivers.into_iter().enumerate() {
        driver.set_service(Arc::clone(&router));
        driver.set_engine(engine, Arc::clone(&tally));
        let mut stopping = stopping.clone();
        let signal: ShutdownSignal = Box::pin(async move {
            // An error means the sender is gone, which only happens once all is over.
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        tasks.spawn(driver.run(Some(signal)));
    }
    let mut result = Ok(());
    loop {
        tokio::select! {
            () = wait_for(&mut signal), if signal.is_some() => {
                signal = None;
                let _ = stop.send(true);
            }
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(ended)) => {
                    if let (Err(e), Ok(())) = (ended, &result) {
                        result = Err(e);
                    }
                    let _ = stop.send(true);
                }
                Some(Err(e)) => {
                    let _ = stop.send(true);
                    if e.is_panic() {
                        // As with one engine, whose driver runs in the caller's task.
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            },
        }
    }
    result
}

async fn wait_for(signal: &mut Option<ShutdownSignal>) {
    match signal {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The observer counts of every engine of a multi-engine server, added up before the
/// router's hooks see them.
pub(crate) struct ObserverTally {
    /// Observers of each observed resource, by engine. An entry goes when its total is
    /// zero, so the map holds only resources with observers.
    counts: Mutex<HashMap<String, Vec<usize>>>,
    engines: usize,
}

impl ObserverTally {
    /// Engine `engine` now has `count` observers of `resource`: tells `router` the total.
    pub(crate) fn changed(&self, router: &Router, engine: usize, resource: &str, count: usize) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let per_engine = counts
            .entry(resource.to_owned())
            .or_insert_with(|| vec![0; self.engines]);
        if let Some(c) = per_engine.get_mut(engine) {
            *c = count;
        }
        let total = per_engine.iter().sum();
        if total == 0 {
            counts.remove(resource);
        }
        // Under the lock, so that the hook sees the totals in the order they were made.
        router.observers_changed(resource, total);
    }
}

/// A handle to a running [`Server`]: introspection, requests from the server's own socket,
/// and shutdown. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    /// The first engine: the server's own client sends from its socket.
    first: Arc<Shared>,
    /// Every engine, the first included.
    engines: Arc<[Arc<Shared>]>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr())
            .field("engines", &self.engines.len())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.first.local_addr
    }

    /// The requests received and not answered yet, by every engine: id, method, path, peer
    /// and token. (Each engine numbers its requests itself, so with several engines two of
    /// them may show the same id.)
    pub async fn pending_incoming(&self) -> Result<Vec<PendingIncoming>, Error> {
        let lists = ask_all(&self.engines, |_, reply| Command::PendingIncoming(reply)).await?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// The requests the server itself sent (through [`client`](ServerHandle::client)) and
    /// that have not ended.
    pub async fn pending_requests(&self) -> Result<Vec<PendingRequest>, Error> {
        self.first.ask(Command::PendingRequests).await
    }

    /// The engine's counters; with several engines, their sums.
    pub async fn stats(&self) -> Result<Stats, Error> {
        let mut total = Stats::default();
        for stats in self.engine_stats().await? {
            total += stats;
        }
        Ok(total)
    }

    /// Each engine's counters, in engine order (one entry for a server with one engine):
    /// how evenly the system spreads the peers over the engines.
    pub async fn engine_stats(&self) -> Result<Vec<Stats>, Error> {
        ask_all(&self.engines, |_, reply| Command::Stats(reply)).await
    }

    /// A handle to announce changes of the observable resource at `path` (the full request
    /// path, such as `"/sensors/temp"`; see [`Router::observable`]).
    pub fn notifier(&self, path: &str) -> Notifier {
        Notifier {
            engines: Arc::clone(&self.engines),
            path: coap_proto::resource::resource_name(path).into(),
        }
    }

    /// A client that sends from the server's own socket and address.
    ///
    /// With several [engines](ServerBuilder::engines) it sends from the first engine's
    /// socket, and the system hands each peer's datagrams to the socket its address hashes
    /// to: an answer may reach another engine, which does not know the request, so the
    /// request fails. Use a [`Client`] of its own for requests from a multi-engine server.
    pub fn client(&self) -> Client {
        Client::from_shared(Arc::clone(&self.first))
    }

    /// Shuts the server down gracefully (see [`Server::serve_with_shutdown`]), every engine,
    /// and waits until all have stopped.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let _ = ask_all(&self.engines, |_, reply| Command::Shutdown(reply)).await;
        Ok(())
    }
}

/// Asks every engine at once (each command is queued before any answer is awaited) and
/// collects the answers in engine order.
async fn ask_all<T>(
    engines: &[Arc<Shared>],
    mut make: impl FnMut(usize, oneshot::Sender<T>) -> Command,
) -> Result<Vec<T>, Error> {
    let mut replies = Vec::with_capacity(engines.len());
    for (i, shared) in engines.iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        shared.command(make(i, tx)).await?;
        replies.push(rx);
    }
    let mut answers = Vec::with_capacity(replies.len());
    for rx in replies {
        answers.push(rx.await.map_err(|_| Error::ShuttingDown)?);
    }
    Ok(answers)
}

/// Announces that an observable resource changed (RFC 7641 §4.2); cheap to clone and usable
/// from any task. Get one from [`ServerHandle::notifier`]. With several
/// [engines](ServerBuilder::engines), each change reaches the observers of every engine.
#[derive(Clone)]
pub struct Notifier {
    engines: Arc<[Arc<Shared>]>,
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
    /// variant (distinct registration request) and engine, and each answer goes to that
    /// variant's observers. Returns how many variants are rendered, over all engines.
    pub async fn notify(&self) -> Result<usize, Error> {
        let counts = ask_all(&self.engines, |_, reply| Command::Notify {
            path: self.path.to_string(),
            representation: None,
            reply,
        })
        .await?;
        Ok(counts.into_iter().sum())
    }

    /// The resource changed to `representation`, sent to every observer as is. A non-2.xx
    /// code ends the observations (§4.2). Returns how many observers it went to.
    pub async fn notify_with(&self, representation: Response) -> Result<usize, Error> {
        let last = self.engines.len().saturating_sub(1);
        let mut representation = Some(representation);
        let counts = ask_all(&self.engines, |i, reply| Command::Notify {
            path: self.path.to_string(),
            // The last engine takes the original; the others a copy.
            representation: if i == last {
                representation.take().map(Box::new)
            } else {
                representation.clone().map(Box::new)
            },
            reply,
        })
        .await?;
        Ok(counts.into_iter().sum())
    }

    /// How many clients observe the resource, over all engines.
    pub async fn observer_count(&self) -> Result<usize, Error> {
        let counts = ask_all(&self.engines, |_, reply| Command::ObserverCount {
            path: self.path.to_string(),
            reply,
        })
        .await?;
        Ok(counts.into_iter().sum())
    }
}

/// Configures and binds a [`Server`].
pub struct ServerBuilder {
    config: Config,
    socket: SocketOptions,
    rng: Option<Box<dyn RngCore + Send>>,
    grace: Duration,
    engines: usize,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: Config::default(),
            socket: SocketOptions::default(),
            rng: None,
            grace: Duration::from_secs(10),
            engines: 1,
        }
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("socket", &self.socket)
            .field("grace", &self.grace)
            .field("engines", &self.engines)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    coap_proto::bind_builder_methods!();

    /// Serve the address with `n` engines (default 1; 0 counts as 1): `n` sockets bound to
    /// the same address with `SO_REUSEPORT` (so Unix only), each with its own driver task and
    /// [`Endpoint`](coap_proto::Endpoint), all serving the same [`Router`]. On a
    /// multi-threaded runtime the engines run in parallel, one core each.
    ///
    /// The system hands all datagrams of one peer address to the same socket, so each
    /// engine sees whole exchanges, observations and block-wise transfers. What the server
    /// does as a whole reaches every engine: a [`Notifier`] notifies the observers of all of
    /// them, observer counts (and [`ObserveHooks::on_observer_count`](crate::ObserveHooks::on_observer_count))
    /// are totals, [`ServerHandle::stats`] are sums, and a shutdown stops them all. Each
    /// engine has the configured table bounds of its own. With an [`rng`](ServerBuilder::rng),
    /// the second and later engines are seeded from it.
    pub fn engines(mut self, n: usize) -> Self {
        self.engines = n.max(1);
        self
    }

    /// Binds the socket (one per engine). Nothing is served until [`Server::serve`].
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<Server, Error> {
        let addr = first_addr(addr).await?;
        let mut options = self.socket;
        if self.engines > 1 {
            options.reuse_port = true;
        }
        let first = socket::bind(addr, &options)?;
        // Port 0 picked a port: the other engines join that one.
        let local = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..self.engines {
            sockets.push(socket::bind(local, &options)?);
        }
        // The first engine takes the given generator; the others are seeded from it first.
        let mut rng = self.rng;
        let mut rngs: Vec<Option<Box<dyn RngCore + Send>>> = Vec::with_capacity(sockets.len());
        for _ in 1..sockets.len() {
            rngs.push(rng.as_mut().map(|r| {
                let mut seed = [0u8; 32];
                r.fill_bytes(&mut seed);
                Box::new(rand_chacha::ChaCha20Rng::from_seed(seed)) as Box<dyn RngCore + Send>
            }));
        }
        rngs.insert(0, rng);
        let mut drivers = Vec::with_capacity(sockets.len());
        let mut shared: Vec<Arc<Shared>> = Vec::with_capacity(sockets.len());
        for (socket, rng) in sockets.into_iter().zip(rngs) {
            let endpoint = new_endpoint(self.config.clone(), rng)?;
            let (driver, handle) = Driver::new(DriverParts {
                socket,
                endpoint,
                service: None,
                stop_when_orphaned: false,
                grace: self.grace,
            })?;
            drivers.push(driver);
            shared.push(handle);
        }
        // The loop ran at least once: `sockets` starts with the first socket.
        let first = shared.first().cloned().ok_or(Error::ShuttingDown)?;
        Ok(Server {
            drivers,
            handle: ServerHandle {
                first,
                engines: shared.into(),
            },
        })
    }
}
