//! [`Client`]: requests by URI, a builder for everything a request carries, observation and
//! multicast.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_io::Timer;
use async_net::AsyncToSocketAddrs;
use coap_proto::endpoint::Stats;
use coap_proto::host::{self, parse_uri, Destination, ExchangeKey, RequestSpec, TargetLookup};
use coap_proto::msg::{Code, MessageType};
use coap_proto::uri::CoapUri;
use coap_proto::{Config, Endpoint, RequestId};
use futures_lite::{FutureExt, StreamExt};
use rand_core::{RngCore, SeedableRng};

use crate::driver::{
    oneshot, Chan, Command, Driver, DriverParts, PendingRequest, Shared, Waiting,
    MULTICAST_CAPACITY, OBSERVE_CAPACITY,
};
use crate::socket::{self, SocketOptions};
use crate::{Error, IncomingResponse, Notification};

/// A CoAP client on one UDP socket.
///
/// Clones are cheap and share the socket and the driver that owns the protocol engine. The
/// driver of a client bound with [`Client::bind`] runs on a thread of its own (see the crate
/// documentation), so a client works under any executor, or none; it stops once every clone
/// and every request future is gone.
///
/// ```no_run
/// # async fn run() -> Result<(), coap_async_std::Error> {
/// use coap_async_std::{Client, ContentFormat};
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
    /// Binds a client to `addr` (`"[::]:0"`: any free port, dual stack where the system
    /// allows) with the default configuration, and starts its driver.
    pub async fn bind(addr: impl AsyncToSocketAddrs) -> Result<Client, Error> {
        Client::builder().bind(addr).await
    }

    /// A builder, to choose the configuration and socket options.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Client {
        Client { shared }
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    coap_proto::client_verbs!();

    /// A request with any method code (class 0, detail 1 to 31); any other code fails with
    /// [`Error::NotARequest`] when sent.
    pub fn request(&self, method: Code, uri: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            spec: RequestSpec::new(method, uri.into()),
        }
    }

    /// Observes `uri` with a GET (RFC 7641); [`RequestBuilder::observe`] sets options first.
    pub async fn observe(&self, uri: impl Into<String>) -> Result<Observation, Error> {
        self.get(uri).observe().await
    }

    /// Pings the host and port of `uri` (an empty Confirmable message, RFC 7252 §4.3) and
    /// returns the round-trip time once the Reset comes back.
    pub async fn ping(&self, uri: &str) -> Result<Duration, Error> {
        let uri = parse_uri(uri)?;
        let remote = resolve(&self.shared, &uri).await?;
        let ticket = self.shared.ticket();
        let (tx, mut reply) = OnceReply::new(ticket, &self.shared);
        let start = Instant::now();
        let ping = Command::Ping {
            ticket: Some(ticket),
            remote,
            waiter: Waiting::Ping(tx),
        };
        self.shared.command(ping).await?;
        reply.recv().await?.map(|()| start.elapsed())
    }

    /// The requests under way (id, method, URI, peer, token), as a snapshot.
    pub async fn pending_requests(&self) -> Result<Vec<PendingRequest>, Error> {
        self.shared.ask(Command::PendingRequests).await
    }

    /// Cancels the request with `id` (from [`pending_requests`](Client::pending_requests)):
    /// its future fails with [`Error::Cancelled`]. False if it had ended already.
    pub async fn cancel(&self, id: RequestId) -> Result<bool, Error> {
        let exchange = ExchangeKey::Id(id);
        self.shared
            .ask(|reply| Command::Cancel {
                exchange,
                reply: Some(reply),
            })
            .await
    }

    /// The engine's counters (datagrams, retransmissions, duplicates ...).
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.shared.ask(Command::Stats).await
    }

    /// Stops the driver gracefully: new requests fail with [`Error::ShuttingDown`], those in
    /// flight run to their end (within the builder's grace period), then the socket closes.
    pub async fn shutdown(&self) -> Result<(), Error> {
        // A driver that is gone already has shut down.
        let _ = self.shared.ask(Command::Shutdown).await;
        Ok(())
    }

    /// The receive buffer size the system granted (`SO_RCVBUF`).
    pub fn recv_buffer_size(&self) -> Result<usize, Error> {
        Ok(self.sock_ref().recv_buffer_size()?)
    }

    /// The send buffer size the system granted (`SO_SNDBUF`).
    pub fn send_buffer_size(&self) -> Result<usize, Error> {
        Ok(self.sock_ref().send_buffer_size()?)
    }

    /// The interface (by IPv4 address) IPv4 multicast requests leave from.
    pub fn set_multicast_interface_v4(&self, interface: Ipv4Addr) -> Result<(), Error> {
        Ok(self.sock_ref().set_multicast_if_v4(&interface)?)
    }

    /// The interface (by index) IPv6 multicast requests leave from.
    pub fn set_multicast_interface_v6(&self, interface: u32) -> Result<(), Error> {
        Ok(self.sock_ref().set_multicast_if_v6(interface)?)
    }

    /// Whether multicast requests are looped back to sockets on this host (usually on by
    /// default).
    pub fn set_multicast_loop(&self, on: bool) -> Result<(), Error> {
        if self.shared.local_addr.is_ipv4() {
            self.std_socket().set_multicast_loop_v4(on)?;
        } else {
            self.std_socket().set_multicast_loop_v6(on)?;
        }
        Ok(())
    }

    fn std_socket(&self) -> &std::net::UdpSocket {
        self.shared.socket.get_ref()
    }

    fn sock_ref(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(self.shared.socket.get_ref())
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

// The setters both builders have, written once for every runtime crate.
pub(crate) use coap_proto::bind_builder_methods as common_builder_methods;

impl ClientBuilder {
    common_builder_methods!();

    /// Binds the socket and starts the driver on a thread of its own, named `coap-driver`,
    /// which ends with the driver.
    pub async fn bind(self, addr: impl AsyncToSocketAddrs) -> Result<Client, Error> {
        let addr = first_addr(addr).await?;
        let socket = socket::bind(addr, &self.socket)?;
        let endpoint = new_endpoint(self.config, self.rng)?;
        let (driver, shared) = Driver::new(DriverParts {
            socket,
            endpoint,
            stop_when_orphaned: true,
            grace: self.grace,
        })?;
        std::thread::Builder::new()
            .name("coap-driver".into())
            .spawn(move || {
                if let Err(e) = async_io::block_on(driver.run(None)) {
                    tracing::warn!(error = %e, "client driver failed");
                }
            })?;
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

/// The first address `addr` stands for.
pub(crate) async fn first_addr(addr: impl AsyncToSocketAddrs) -> Result<SocketAddr, Error> {
    async_net::resolve(addr)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NoUsableAddress {
            host: "bind address".into(),
        })
}

/// A request being put together: await it (it is [`IntoFuture`]) or call
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

    /// Sends the request. Dropping the future cancels the exchange: the engine stops
    /// retransmitting and forgets it.
    pub fn send(self) -> ResponseFuture {
        let RequestBuilder { client, spec } = self;
        let timeout = spec.timeout();
        let exchange = async move {
            let shared = &client.shared;
            let ticket = shared.ticket();
            let (tx, mut reply) = OnceReply::new(ticket, shared);
            submit(shared, ticket, spec, Waiting::Once(tx)).await?;
            reply.recv().await?
        };
        let inner: Pin<Box<dyn Future<Output = Result<IncomingResponse, Error>> + Send>> =
            match timeout {
                Some(limit) => Box::pin(exchange.or(async move {
                    Timer::after(limit).await;
                    Err(Error::Timeout)
                })),
                None => Box::pin(exchange),
            };
        ResponseFuture { inner }
    }

    /// Sends the request to a multicast group (RFC 7252 §8), always Non-confirmable, and
    /// returns the responses of every member as they come, until the window closes: the
    /// builder's [`timeout`](RequestBuilder::timeout), or
    /// [`Config::multicast_response_window`] (10 s by default).
    pub async fn multicast(mut self) -> Result<MulticastResponses, Error> {
        self.spec.set_message_type(Some(MessageType::Non));
        let shared = &self.client.shared;
        let ticket = shared.ticket();
        let (tx, rx) = async_channel::bounded(MULTICAST_CAPACITY);
        let guard = CancelGuard::new(ticket, shared.internal.clone());
        submit(shared, ticket, self.spec, Waiting::Many(tx)).await?;
        Ok(MulticastResponses {
            rx: Box::pin(rx),
            guard: Some(guard),
        })
    }

    /// Observes the resource (RFC 7641): sends the request (GET or FETCH) with Observe = 0
    /// and returns the notifications as they come, the first being the answer to the
    /// registration. The engine re-registers when a notification's Max-Age runs out in
    /// silence, and drops notifications older than one delivered (§3.4).
    ///
    /// The stream ends after a response without Observe (the resource is not observable, or
    /// the server answered [`Observation::cancel`]), after an error, or when the observation
    /// fails. Dropping it ends the observation too: the next notification is answered with
    /// Reset (§3.6).
    pub async fn observe(self) -> Result<Observation, Error> {
        let shared = Arc::clone(&self.client.shared);
        let ticket = shared.ticket();
        let (tx, rx) = async_channel::bounded(OBSERVE_CAPACITY);
        let guard = CancelGuard::new(ticket, shared.internal.clone());
        submit(&shared, ticket, self.spec, Waiting::Observe(tx)).await?;
        Ok(Observation {
            ticket,
            rx: Box::pin(rx),
            guard: Some(guard),
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

/// The response to one request (see [`RequestBuilder::send`]).
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

/// Polls `rx`; once it has ended, the exchange is over and `guard` has nothing to cancel.
fn poll_items<T>(
    rx: &mut Pin<Box<Receiver<T>>>,
    guard: &mut Option<CancelGuard>,
    cx: &mut Context<'_>,
) -> Poll<Option<T>> {
    let polled = rx.as_mut().poll_next(cx);
    if let Poll::Ready(None) = polled {
        if let Some(guard) = guard.take() {
            guard.disarm();
        }
    }
    polled
}

/// The responses to a multicast request, as a [`Stream`](futures_core::Stream) or through
/// [`next`](MulticastResponses::next). It ends when the response window closes; dropping it
/// ends the request at once.
pub struct MulticastResponses {
    rx: Pin<Box<Receiver<Result<IncomingResponse, Error>>>>,
    guard: Option<CancelGuard>,
}

impl MulticastResponses {
    /// The next response, or `None` once the window has closed.
    pub async fn next(&mut self) -> Option<Result<IncomingResponse, Error>> {
        std::future::poll_fn(|cx| poll_items(&mut self.rx, &mut self.guard, cx)).await
    }
}

impl futures_core::Stream for MulticastResponses {
    type Item = Result<IncomingResponse, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_items(&mut this.rx, &mut this.guard, cx)
    }
}

impl Drop for MulticastResponses {
    fn drop(&mut self) {
        // Closed before the guard cancels, so a driver that has not started the request yet
        // skips it.
        self.rx.close();
    }
}

impl fmt::Debug for MulticastResponses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MulticastResponses").finish_non_exhaustive()
    }
}

/// The notifications of one observed resource (RFC 7641), as a
/// [`Stream`](futures_core::Stream) or through [`next`](Observation::next); see
/// [`RequestBuilder::observe`].
pub struct Observation {
    rx: Pin<Box<Receiver<Result<Notification, Error>>>>,
    guard: Option<CancelGuard>,
    ticket: u64,
    shared: Arc<Shared>,
}

impl Observation {
    /// The next notification, or `None` once the observation has ended.
    pub async fn next(&mut self) -> Option<Result<Notification, Error>> {
        std::future::poll_fn(|cx| poll_items(&mut self.rx, &mut self.guard, cx)).await
    }

    /// Ends the observation actively: the registration goes again with Observe = 1
    /// (RFC 7641 §3.6), and the server's answer is the last item of the stream. False if
    /// the observation had ended already.
    pub async fn cancel(&mut self) -> Result<bool, Error> {
        let ticket = self.ticket;
        self.shared
            .ask(|reply| Command::CancelObservation {
                exchange: ExchangeKey::Ticket(ticket),
                reply,
            })
            .await
    }
}

impl futures_core::Stream for Observation {
    type Item = Result<Notification, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_items(&mut this.rx, &mut this.guard, cx)
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

/// The receiving end of a one-answer exchange; dropped unanswered, it closes its channel and
/// then cancels (see [`CancelGuard`]).
struct OnceReply<T> {
    rx: Receiver<T>,
    guard: Option<CancelGuard>,
}

impl<T> OnceReply<T> {
    fn new(ticket: u64, shared: &Shared) -> (Sender<T>, OnceReply<T>) {
        let (tx, rx) = oneshot();
        let guard = Some(CancelGuard::new(ticket, shared.internal.clone()));
        (tx, OnceReply { rx, guard })
    }

    async fn recv(&mut self) -> Result<T, Error> {
        let result = self.rx.recv().await.map_err(|_| Error::ShuttingDown);
        // Answered, or the driver is gone: nothing is left to cancel either way.
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
        result
    }
}

impl<T> Drop for OnceReply<T> {
    fn drop(&mut self) {
        // Runs before the fields drop: closed first, cancelled second.
        self.rx.close();
    }
}

/// Cancels an exchange whose future or stream is dropped before the exchange ended (see
/// [`host::CancelGuard`]).
type CancelGuard = host::CancelGuard<Chan>;

/// Resolves the URI of `spec`, builds the request and hands it to the driver, with `waiter`
/// waiting for its outcome.
async fn submit(
    shared: &Shared,
    ticket: u64,
    spec: RequestSpec,
    waiter: Waiting,
) -> Result<(), Error> {
    let command = match shared.targets.target(shared.local_addr, spec.uri())? {
        TargetLookup::Address(uri, remote) => {
            spec.into_command(uri, remote, Some(ticket), waiter, None)
        }
        TargetLookup::Resolve(uri) => {
            let remote = resolve(shared, &uri).await?;
            spec.into_command(uri, remote, Some(ticket), waiter, None)
        }
    };
    shared.command(command).await
}

/// Where to send a request for `uri`, in the engine's address form (see
/// [`host::destination`] and [`host::choose_address`]).
async fn resolve(shared: &Shared, uri: &CoapUri) -> Result<SocketAddr, Error> {
    let local = shared.local_addr;
    match host::destination(local, uri)? {
        Destination::Address(addr) => Ok(addr),
        Destination::Name(name, port) => {
            let found =
                async_net::resolve((name, port))
                    .await
                    .map_err(|source| Error::Resolve {
                        host: name.into(),
                        source,
                    })?;
            host::choose_address(local, name, found)
        }
    }
}

coap_udp::group_methods!(Client, |this| this.sock_ref());
