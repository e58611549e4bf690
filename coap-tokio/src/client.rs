//! The [`Client`]: requests by URI, a builder for everything a request can carry, multicast.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use coap_proto::endpoint::Stats;
use coap_proto::host::{self, parse_uri, Destination, ExchangeKey, RequestSpec, TargetLookup};
use coap_proto::msg::{Code, MessageType};
use coap_proto::uri::CoapUri;
use coap_proto::{Config, Endpoint, RequestId};
use rand_core::{RngCore, SeedableRng};
use tokio::net::ToSocketAddrs;
use tokio::sync::{mpsc, oneshot};

use crate::driver::{
    Chan, Command, Driver, DriverParts, PendingRequest, Shared, Waiting, MULTICAST_CAPACITY,
    OBSERVE_CAPACITY,
};
use crate::socket::{self, SocketOptions};
use crate::{Error, IncomingResponse, Notification};

/// A CoAP client over one UDP socket.
///
/// Cheap to clone: clones share the socket and the driver task that owns the protocol engine.
/// The driver stops once every clone, and every request future, is gone.
///
/// ```no_run
/// # async fn run() -> Result<(), coap_tokio::Error> {
/// use coap_tokio::{Client, ContentFormat};
///
/// let client = Client::bind("[::]:0").await?;
/// let rsp = client.get("coap://[::1]/time").await?;
/// println!("{} {:?}", rsp.code(), rsp.payload_str());
///
/// let rsp = client
///     .post("coap://[::1]/items")
///     .payload(r#"{"n":1}"#)
///     .content_format(ContentFormat::JSON)
///     .non()
///     .timeout(std::time::Duration::from_secs(5))
///     .send()
///     .await?;
/// # let _ = rsp; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Binds a client to `addr` (`"[::]:0"` for any free port, dual-stack where the system
    /// allows) with the default configuration, and starts its driver task.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Client, Error> {
        Client::builder().bind(addr).await
    }

    /// A builder for a client with a chosen configuration and socket options.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Client {
        Client { shared }
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    coap_proto::client_verbs!();

    /// A request with any method code (class 0, detail 1 to 31); another code fails with
    /// [`Error::NotARequest`] when sent.
    pub fn request(&self, method: Code, uri: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            spec: RequestSpec::new(method, uri.into()),
        }
    }

    /// Observes `uri` with a GET (RFC 7641); see [`RequestBuilder::observe`] to set options
    /// first.
    pub async fn observe(&self, uri: impl Into<String>) -> Result<Observation, Error> {
        self.get(uri).observe().await
    }

    /// Sends a CoAP ping (an empty Confirmable message, RFC 7252 §4.3) to the host and port
    /// of `uri` and returns the round-trip time once the peer answers with Reset.
    pub async fn ping(&self, uri: &str) -> Result<Duration, Error> {
        let uri = parse_uri(uri)?;
        let remote = resolve(&self.shared, &uri).await?;
        let ticket = self.shared.ticket();
        let (tx, mut reply) = OnceReply::new(ticket, &self.shared);
        let start = tokio::time::Instant::now();
        let ping = Command::Ping {
            ticket: Some(ticket),
            remote,
            waiter: Waiting::Ping(tx),
        };
        self.shared.command(ping).await?;
        reply.recv().await?.map(|()| start.elapsed())
    }

    /// The requests under way: id, method, URI, peer and token. The list is a snapshot.
    pub async fn pending_requests(&self) -> Result<Vec<PendingRequest>, Error> {
        self.shared.ask(Command::PendingRequests).await
    }

    /// Cancels a request by id (from [`pending_requests`](Client::pending_requests)): its
    /// future fails with [`Error::Cancelled`]. Returns false if it had already ended.
    pub async fn cancel(&self, id: RequestId) -> Result<bool, Error> {
        let exchange = ExchangeKey::Id(id);
        self.shared
            .ask(|reply| Command::Cancel {
                exchange,
                reply: Some(reply),
            })
            .await
    }

    /// The engine's counters (datagrams, retransmissions, duplicates, ...).
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.shared.ask(Command::Stats).await
    }

    /// Stops the driver gracefully: new requests fail with [`Error::ShuttingDown`], requests
    /// in flight run to their end (up to the builder's grace period), then the socket closes.
    pub async fn shutdown(&self) -> Result<(), Error> {
        // A driver that is already gone has shut down.
        let _ = self.shared.ask(Command::Shutdown).await;
        Ok(())
    }

    /// The receive buffer size the system granted (`SO_RCVBUF`).
    pub fn recv_buffer_size(&self) -> Result<usize, Error> {
        Ok(socket2::SockRef::from(&*self.shared.socket).recv_buffer_size()?)
    }

    /// The send buffer size the system granted (`SO_SNDBUF`).
    pub fn send_buffer_size(&self) -> Result<usize, Error> {
        Ok(socket2::SockRef::from(&*self.shared.socket).send_buffer_size()?)
    }

    /// Picks the interface (by its IPv4 address) that IPv4 multicast requests leave from.
    pub fn set_multicast_interface_v4(&self, interface: Ipv4Addr) -> Result<(), Error> {
        Ok(socket2::SockRef::from(&*self.shared.socket).set_multicast_if_v4(&interface)?)
    }

    /// Picks the interface (by index) that IPv6 multicast requests leave from.
    pub fn set_multicast_interface_v6(&self, interface: u32) -> Result<(), Error> {
        Ok(socket2::SockRef::from(&*self.shared.socket).set_multicast_if_v6(interface)?)
    }

    /// Whether multicast requests loop back to sockets on this host (on by default on most
    /// systems).
    pub fn set_multicast_loop(&self, on: bool) -> Result<(), Error> {
        match self.shared.local_addr {
            SocketAddr::V4(_) => self.shared.socket.set_multicast_loop_v4(on)?,
            SocketAddr::V6(_) => self.shared.socket.set_multicast_loop_v6(on)?,
        }
        Ok(())
    }
}

/// Configures and binds a [`Client`].
pub struct ClientBuilder {
    config: Config,
    socket: SocketOptions,
    rng: Option<Box<dyn RngCore + Send>>,
    grace: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            config: Config::default(),
            socket: SocketOptions::default(),
            rng: None,
            grace: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .field("socket", &self.socket)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    coap_proto::bind_builder_methods!();

    /// Binds the socket and starts the driver task (on the current tokio runtime).
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<Client, Error> {
        let addr = first_addr(addr).await?;
        let socket = socket::bind(addr, &self.socket)?;
        let endpoint = new_endpoint(self.config, self.rng)?;
        let (driver, shared) = Driver::new(DriverParts {
            socket,
            endpoint,
            service: None,
            stop_when_orphaned: true,
            grace: self.grace,
        })?;
        tokio::spawn(async move {
            if let Err(e) = driver.run(None).await {
                tracing::warn!(error = %e, "client driver failed");
            }
        });
        Ok(Client { shared })
    }
}

/// The engine, with a strong random generator unless one is given (see
/// [`host::new_endpoint`]).
pub(crate) fn new_endpoint(
    config: Config,
    rng: Option<Box<dyn RngCore + Send>>,
) -> Result<Endpoint, Error> {
    let rng = rng.unwrap_or_else(|| Box::new(rand_chacha::ChaCha20Rng::from_entropy()));
    host::new_endpoint(config, rng)
}

/// The first address `addr` names.
pub(crate) async fn first_addr(addr: impl ToSocketAddrs) -> Result<SocketAddr, Error> {
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| Error::NoUsableAddress {
            host: "bind address".into(),
        })
}

/// A request being put together. Await it (it implements [`IntoFuture`]) or call
/// [`send`](RequestBuilder::send).
#[must_use = "a request does nothing until it is awaited or sent"]
pub struct RequestBuilder {
    client: Client,
    spec: RequestSpec,
}

impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl RequestBuilder {
    coap_proto::request_builder_methods!();

    /// A builder for a request described elsewhere (by a proxy, say).
    pub(crate) fn from_spec(client: Client, spec: RequestSpec) -> RequestBuilder {
        RequestBuilder { client, spec }
    }

    /// Sends the request. Dropping the returned future cancels the exchange: the engine
    /// stops retransmitting and forgets it.
    pub fn send(self) -> ResponseFuture {
        let RequestBuilder { client, spec } = self;
        ResponseFuture {
            inner: Box::pin(exchange(client, spec)),
        }
    }

    /// Sends the request to a multicast group (RFC 7252 §8) and returns the responses as they
    /// come, from every responder, until the window closes: the builder's
    /// [`timeout`](RequestBuilder::timeout), or [`Config::multicast_response_window`]
    /// (10 s by default). Multicast requests are always Non-confirmable.
    pub async fn multicast(mut self) -> Result<MulticastResponses, Error> {
        self.spec.set_message_type(Some(MessageType::Non));
        let shared = &self.client.shared;
        let ticket = shared.ticket();
        let (tx, rx) = mpsc::channel(MULTICAST_CAPACITY);
        let guard = CancelGuard::new(ticket, shared.internal.clone());
        submit(shared, ticket, self.spec, Waiting::Many(tx)).await?;
        Ok(MulticastResponses {
            rx,
            guard: Some(guard),
        })
    }

    /// Observes the resource (RFC 7641): sends the request (a GET or FETCH) with Observe = 0
    /// and returns the notifications as they come, the first being the response to the
    /// registration. The engine re-registers when a notification's Max-Age runs out in
    /// silence, and drops notifications older than one already delivered (§3.4).
    ///
    /// The stream ends after a response without Observe (the server does not offer the
    /// observation, or answered [`Observation::cancel`]), after an error, or when the
    /// observation fails. Dropping it ends the observation too: later notifications are
    /// answered with Reset (§3.6).
    pub async fn observe(self) -> Result<Observation, Error> {
        let shared = Arc::clone(&self.client.shared);
        let ticket = shared.ticket();
        let (tx, rx) = mpsc::channel(OBSERVE_CAPACITY);
        let guard = CancelGuard::new(ticket, shared.internal.clone());
        submit(&shared, ticket, self.spec, Waiting::Observe(tx)).await?;
        Ok(Observation {
            rx,
            guard: Some(guard),
            ticket,
            shared,
        })
    }
}

impl IntoFuture for RequestBuilder {
    type Output = Result<IncomingResponse, Error>;
    type IntoFuture = ResponseFuture;

    fn into_future(self) -> ResponseFuture {
        self.send()
    }
}

/// The response to one request; see [`RequestBuilder::send`].
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<IncomingResponse, Error>> + Send>>,
}

impl Future for ResponseFuture {
    type Output = Result<IncomingResponse, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The responses to a multicast request, as a [`Stream`](futures_core::Stream) or through
/// [`next`](MulticastResponses::next). Ends when the response window closes; dropping it
/// ends the request at once.
pub struct MulticastResponses {
    rx: mpsc::Receiver<Result<IncomingResponse, Error>>,
    guard: Option<CancelGuard>,
}

impl MulticastResponses {
    /// The next response, or `None` once the window has closed.
    pub async fn next(&mut self) -> Option<Result<IncomingResponse, Error>> {
        std::future::poll_fn(|cx| self.poll_next_response(cx)).await
    }

    fn poll_next_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<IncomingResponse, Error>>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            // The driver dropped its sender: the exchange is over, nothing to cancel.
            if let Some(guard) = self.guard.take() {
                guard.disarm();
            }
        }
        polled
    }
}

impl futures_core::Stream for MulticastResponses {
    type Item = Result<IncomingResponse, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_response(cx)
    }
}

impl Drop for MulticastResponses {
    fn drop(&mut self) {
        // Close first, so a driver that has not registered the request yet skips it.
        self.rx.close();
    }
}

impl fmt::Debug for MulticastResponses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MulticastResponses").finish_non_exhaustive()
    }
}

/// An observation (RFC 7641): the notifications of one resource, as a
/// [`Stream`](futures_core::Stream) or through [`next`](Observation::next). See
/// [`RequestBuilder::observe`].
pub struct Observation {
    rx: mpsc::Receiver<Result<Notification, Error>>,
    guard: Option<CancelGuard>,
    ticket: u64,
    shared: Arc<Shared>,
}

impl Observation {
    /// The next notification, or `None` once the observation has ended.
    pub async fn next(&mut self) -> Option<Result<Notification, Error>> {
        std::future::poll_fn(|cx| self.poll_next_notification(cx)).await
    }

    /// Ends the observation actively: the registration is sent again with Observe = 1
    /// (RFC 7641 §3.6). The server's answer arrives as the last item of the stream, which then
    /// ends. Returns false if the observation had already ended.
    pub async fn cancel(&mut self) -> Result<bool, Error> {
        let ticket = self.ticket;
        self.shared
            .ask(|reply| Command::CancelObservation {
                exchange: ExchangeKey::Ticket(ticket),
                reply,
            })
            .await
    }

    fn poll_next_notification(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Notification, Error>>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            if let Some(guard) = self.guard.take() {
                guard.disarm();
            }
        }
        polled
    }
}

impl futures_core::Stream for Observation {
    type Item = Result<Notification, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_notification(cx)
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        // Closed first, cancelled second (see `CancelGuard`).
        self.rx.close();
    }
}

impl fmt::Debug for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observation").finish_non_exhaustive()
    }
}

/// The receiving end of a one-answer exchange. Dropped before the answer came, it closes the
/// channel first and then sends the cancel (see [`CancelGuard`]).
struct OnceReply<T> {
    rx: oneshot::Receiver<T>,
    guard: Option<CancelGuard>,
}

impl<T> OnceReply<T> {
    fn new(ticket: u64, shared: &Shared) -> (oneshot::Sender<T>, OnceReply<T>) {
        let (tx, rx) = oneshot::channel();
        let reply = OnceReply {
            rx,
            guard: Some(CancelGuard::new(ticket, shared.internal.clone())),
        };
        (tx, reply)
    }

    async fn recv(&mut self) -> Result<T, Error> {
        let result = (&mut self.rx).await.map_err(|_| Error::ShuttingDown);
        // Answered, or the driver is gone: either way there is nothing left to cancel.
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
        result
    }
}

impl<T> Drop for OnceReply<T> {
    fn drop(&mut self) {
        // Runs before the fields are dropped: closed first, cancelled second.
        self.rx.close();
    }
}

/// Cancels an exchange whose future or stream is dropped before the exchange ended (see
/// [`host::CancelGuard`]).
type CancelGuard = host::CancelGuard<Chan>;

/// One unicast request, from the first poll to its response, failing with
/// [`Error::Timeout`] once the builder's timeout (if any) has passed.
///
/// Written as one future with the timeout inside, so that a request costs one allocation
/// for its state; the rarer waits (a name to resolve, a full command channel) are boxed
/// apart, so that their state does not make every request's larger.
async fn exchange(client: Client, spec: RequestSpec) -> Result<IncomingResponse, Error> {
    let deadline = spec
        .timeout()
        .map(|limit| tokio::time::Instant::now() + limit);
    let shared = &*client.shared;
    let ticket = shared.ticket();
    let (tx, mut reply) = OnceReply::new(ticket, shared);
    let waiter = Waiting::Once(tx);
    let command = match shared.targets.target(shared.local_addr, spec.uri())? {
        TargetLookup::Address(uri, remote) => {
            spec.into_command(uri, remote, Some(ticket), waiter, None)
        }
        TargetLookup::Resolve(_) => {
            Box::pin(request_command(shared, ticket, spec, waiter, deadline)).await?
        }
    };
    if let Some(command) = shared.try_command(command)? {
        Box::pin(within(deadline, shared.command(command))).await?;
    }
    within(deadline, reply.recv()).await?
}

/// `future`'s outcome, or [`Error::Timeout`] if `deadline` comes first.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    future: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, future)
            .await
            .unwrap_or(Err(Error::Timeout)),
        None => future.await,
    }
}

/// The command that starts the request of `spec`, with `waiter` waiting for its outcome.
/// The target comes from the client's [`host::Targets`]; only a host name is resolved
/// (given up at `deadline`, if any).
async fn request_command(
    shared: &Shared,
    ticket: u64,
    spec: RequestSpec,
    waiter: Waiting,
    deadline: Option<tokio::time::Instant>,
) -> Result<Command, Error> {
    let (uri, remote) = match shared.targets.target(shared.local_addr, spec.uri())? {
        TargetLookup::Address(uri, remote) => (uri, remote),
        TargetLookup::Resolve(uri) => {
            let remote = within(deadline, resolve(shared, &uri)).await?;
            (Arc::new(uri), remote)
        }
    };
    Ok(spec.into_command(uri, remote, Some(ticket), waiter, None))
}

/// Resolves the URI of `spec`, builds the request and hands it to the driver, with `waiter`
/// waiting for its outcome.
async fn submit(
    shared: &Shared,
    ticket: u64,
    spec: RequestSpec,
    waiter: Waiting,
) -> Result<(), Error> {
    let command = request_command(shared, ticket, spec, waiter, None).await?;
    shared.command(command).await
}

/// The socket address to send a request for `uri` to, in the form the engine uses (see
/// [`host::destination`] and [`host::choose_address`]).
async fn resolve(shared: &Shared, uri: &CoapUri) -> Result<SocketAddr, Error> {
    let local = shared.local_addr;
    match host::destination(local, uri)? {
        Destination::Address(addr) => Ok(addr),
        // Boxed: the resolver's state stays out of every request future, and only requests
        // by name pay for it.
        Destination::Name(name, port) => Box::pin(resolve_name(local, name, port)).await,
    }
}

/// Resolves `name` and picks the address to send to from a socket bound to `local`.
async fn resolve_name(local: SocketAddr, name: &str, port: u16) -> Result<SocketAddr, Error> {
    let addrs = tokio::net::lookup_host((name, port))
        .await
        .map_err(|source| Error::Resolve {
            host: name.into(),
            source,
        })?;
    host::choose_address(local, name, addrs)
}

coap_udp::group_methods!(Client, |this| socket2::SockRef::from(&*this.shared.socket));
