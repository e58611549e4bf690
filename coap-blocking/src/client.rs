//! The [`Client`]: blocking requests by URI, non-blocking requests with a handle or a
//! callback, observations and multicast responses as iterators.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use coap_proto::endpoint::Stats;
use coap_proto::host::{self, parse_uri, Destination, ExchangeKey, RequestSpec, TargetLookup};
use coap_proto::msg::{Code, MessageType};
use coap_proto::uri::CoapUri;
use coap_proto::{Config, Endpoint, RequestId};
use rand_core::{RngCore, SeedableRng};

use crate::io::{
    Command, Driver, PendingRequest, Shared, Waiting, MULTICAST_CAPACITY, OBSERVE_CAPACITY,
};
use crate::socket::{self, SocketOptions};
use crate::{Error, IncomingResponse, Notification};

/// A CoAP client over one UDP socket, served by one I/O thread.
///
/// Cheap to clone: clones share the socket and the thread. The thread stops once every
/// clone, and every handle of a request under way, is gone.
///
/// ```no_run
/// # fn run() -> Result<(), coap_blocking::Error> {
/// use std::time::Duration;
/// use coap_blocking::{Client, ContentFormat};
///
/// let client = Client::bind("[::]:0")?;
/// let rsp = client.get("coap://[::1]/time").send()?;
/// println!("{} {:?}", rsp.code(), rsp.payload_str());
///
/// let rsp = client
///     .post("coap://[::1]/items")
///     .payload(r#"{"n":1}"#)
///     .content_format(ContentFormat::JSON)
///     .timeout(Duration::from_secs(5))
///     .send()?;
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
    /// Binds a client to `addr` (`"[::]:0"`: any free port, dual stack where allowed) with
    /// the default configuration, and starts its I/O thread.
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Client, Error> {
        Client::builder().bind(addr)
    }

    /// A builder for a chosen configuration and socket options.
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

    /// A request with any method code; a code that is not a request code fails with
    /// [`Error::NotARequest`] when sent.
    pub fn request(&self, method: Code, uri: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            spec: RequestSpec::new(method, uri.into()),
        }
    }

    /// The same as [`request`](Client::request), under the name the IoT class uses.
    pub fn custom(&self, method: Code, uri: impl Into<String>) -> RequestBuilder {
        self.request(method, uri)
    }

    /// Observes `uri` with a GET (RFC 7641); see [`RequestBuilder::observe`].
    pub fn observe(&self, uri: impl Into<String>) -> Result<Observation, Error> {
        self.get(uri).observe()
    }

    /// Sends a CoAP ping (an empty Confirmable message, RFC 7252 §4.3) to the host and port
    /// of `uri`, and returns the round-trip time once the peer answers with Reset.
    pub fn ping(&self, uri: &str) -> Result<Duration, Error> {
        let uri = parse_uri(uri)?;
        let remote = resolve(&self.shared, &uri)?;
        let start = Instant::now();
        self.shared.mailbox.ask(|reply| Command::Ping {
            ticket: None,
            remote,
            waiter: Waiting::Ping(reply),
        })??;
        Ok(start.elapsed())
    }

    /// The requests under way: id, method, URI, peer and token (a snapshot).
    pub fn pending_requests(&self) -> Result<Vec<PendingRequest>, Error> {
        self.shared.mailbox.ask(Command::PendingRequests)
    }

    /// Cancels a request by id: whoever waits for it gets [`Error::Cancelled`]. Returns false
    /// if it had already ended.
    pub fn cancel(&self, id: RequestId) -> Result<bool, Error> {
        self.shared.mailbox.ask(|reply| Command::Cancel {
            exchange: ExchangeKey::Id(id),
            reply: Some(reply),
        })
    }

    /// The engine's counters.
    pub fn stats(&self) -> Result<Stats, Error> {
        self.shared.mailbox.ask(Command::Stats)
    }

    /// Stops the I/O thread gracefully and waits for it: new requests fail with
    /// [`Error::ShuttingDown`], those in flight run to their end within the grace period.
    pub fn shutdown(&self) -> Result<(), Error> {
        // A thread that is gone has shut down.
        let _ = self.shared.mailbox.ask(Command::Shutdown);
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

    /// The interface (by IPv4 address) IPv4 multicast requests leave from.
    pub fn set_multicast_interface_v4(&self, interface: Ipv4Addr) -> Result<(), Error> {
        Ok(socket2::SockRef::from(&*self.shared.socket).set_multicast_if_v4(&interface)?)
    }

    /// The interface (by index) IPv6 multicast requests leave from.
    pub fn set_multicast_interface_v6(&self, interface: u32) -> Result<(), Error> {
        Ok(socket2::SockRef::from(&*self.shared.socket).set_multicast_if_v6(interface)?)
    }

    /// Whether multicast requests loop back to this host.
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

// The setters both builders have, written once for every runtime crate.
pub(crate) use coap_proto::bind_builder_methods as socket_builder_methods;

impl ClientBuilder {
    socket_builder_methods!();

    /// Binds the socket and starts the I/O thread.
    pub fn bind(self, addr: impl ToSocketAddrs) -> Result<Client, Error> {
        let addr = first_addr(addr)?;
        let socket = socket::bind(addr, &self.socket)?;
        let endpoint = new_endpoint(self.config, self.rng)?;
        let (driver, shared) = Driver::new(socket, endpoint, true, self.grace)?;
        thread::Builder::new()
            .name("coap-client-io".into())
            .spawn(move || {
                if let Err(e) = driver.run() {
                    tracing::warn!(error = %e, "client I/O thread failed");
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

/// The first address `addr` names.
pub(crate) fn first_addr(addr: impl ToSocketAddrs) -> Result<SocketAddr, Error> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| Error::NoUsableAddress {
            host: "bind address".into(),
        })
}

/// A request being put together; see [`Client::get`].
#[must_use = "a request does nothing until it is sent"]
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

    /// Sends the request and blocks until the response, or until the request fails: no
    /// answer in time ([`Error::Timeout`]), a Reset ([`Error::Reset`]), a cancel from another
    /// thread ([`Error::Cancelled`]), an ICMP error ([`Error::Unreachable`]).
    pub fn send(self) -> Result<IncomingResponse, Error> {
        self.start()?.wait()
    }

    /// Starts the request without waiting for its response: the returned handle knows the
    /// request's id and yields the outcome ([`ResponseHandle::wait`],
    /// [`try_wait`](ResponseHandle::try_wait), [`wait_timeout`](ResponseHandle::wait_timeout)).
    /// Dropping the handle before the outcome cancels the exchange. Blocks only until the
    /// I/O thread has taken the request.
    pub fn start(self) -> Result<ResponseHandle, Error> {
        let deadline = self.spec.timeout().map(|t| Instant::now() + t);
        let (tx, rx) = mpsc::sync_channel(1);
        let client = self.client.clone();
        let done = Box::new(move |outcome| {
            let _ = tx.try_send(outcome);
        });
        let id = self.begin(Waiting::Once(done))?;
        Ok(ResponseHandle {
            id,
            rx,
            deadline,
            client,
            finished: false,
        })
    }

    /// Starts the request and returns its id at once; `callback` gets the outcome.
    ///
    /// Nobody waits here, so of the builder's [`timeout`](RequestBuilder::timeout) only the
    /// engine's part applies: the wait for a response once the request is acknowledged (or
    /// sent as NON).
    ///
    /// The callback runs on the I/O thread: it must be quick and must not block (send the
    /// outcome to a channel for anything heavier). If the request cannot be started, the
    /// error is returned here and the callback is not called.
    pub fn send_with(
        self,
        callback: impl FnOnce(Result<IncomingResponse, Error>) + Send + 'static,
    ) -> Result<RequestId, Error> {
        self.begin(Waiting::Once(Box::new(callback)))
    }

    /// Sends the request to a multicast group (RFC 7252 §8, always Non-confirmable) and
    /// returns the responses as an iterator that ends when the response window closes: the
    /// builder's [`timeout`](RequestBuilder::timeout) or
    /// [`Config::multicast_response_window`]. Dropping it ends the request.
    pub fn multicast(mut self) -> Result<MulticastResponses, Error> {
        self.spec.set_message_type(Some(MessageType::Non));
        let client = self.client.clone();
        let (tx, rx) = mpsc::sync_channel(MULTICAST_CAPACITY);
        let id = self.begin(Waiting::Many(tx))?;
        Ok(MulticastResponses {
            id,
            rx,
            client,
            ended: false,
        })
    }

    /// Observes the resource (RFC 7641): sends the request (GET or FETCH) with Observe = 0
    /// and returns the notifications as an iterator, the first being the response to the
    /// registration. Blocks only until the I/O thread has taken the request.
    ///
    /// The iterator ends after a response without Observe (the server does not offer the
    /// observation, or answered [`Observation::cancel`]), after an error, or when the
    /// observation fails. Dropping it ends the observation too: later notifications are
    /// answered with Reset (§3.6).
    pub fn observe(self) -> Result<Observation, Error> {
        let client = self.client.clone();
        let (tx, rx) = mpsc::sync_channel(OBSERVE_CAPACITY);
        let id = self.begin(Waiting::Observe(tx))?;
        Ok(Observation {
            id,
            rx,
            client,
            ended: false,
        })
    }

    /// Builds the request, hands it to the I/O thread and waits for its id.
    fn begin(self, waiter: Waiting) -> Result<RequestId, Error> {
        let shared = &self.client.shared;
        let (uri, remote) = match shared.targets.target(shared.local_addr, self.spec.uri())? {
            TargetLookup::Address(uri, remote) => (uri, remote),
            TargetLookup::Resolve(uri) => {
                let remote = resolve(shared, &uri)?;
                (uri.into(), remote)
            }
        };
        let (started, id) = mpsc::channel();
        let command = self
            .spec
            .into_command(uri, remote, None, waiter, Some(started));
        // Refused before anything is posted: the I/O thread cannot wait for itself.
        shared.mailbox.refuse_on_io_thread()?;
        shared.mailbox.post(command)?;
        id.recv().map_err(|_| Error::ShuttingDown)?
    }
}

/// A request under way, from [`RequestBuilder::start`]. Dropping it before the outcome
/// cancels the exchange: the engine stops retransmitting and forgets it.
pub struct ResponseHandle {
    id: RequestId,
    rx: mpsc::Receiver<Result<IncomingResponse, Error>>,
    deadline: Option<Instant>,
    client: Client,
    finished: bool,
}

impl ResponseHandle {
    /// The engine's id of the request (as in [`Client::pending_requests`]).
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Blocks until the outcome (or the builder's timeout).
    pub fn wait(mut self) -> Result<IncomingResponse, Error> {
        loop {
            let limit = self.deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if let Some(outcome) = self.wait_timeout(limit) {
                return outcome;
            }
        }
    }

    /// The outcome if it has come, without blocking; `None` while the request is under way
    /// (and after the outcome was returned once).
    pub fn try_wait(&mut self) -> Option<Result<IncomingResponse, Error>> {
        self.wait_timeout(Duration::ZERO)
    }

    /// Blocks up to `timeout` for the outcome; `None` if it has not come yet (and after the
    /// outcome was returned once). Past the builder's timeout the request is cancelled and
    /// the outcome is [`Error::Timeout`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<IncomingResponse, Error>> {
        if self.finished {
            return None;
        }
        let now = Instant::now();
        let limit = match self.deadline {
            Some(d) => timeout.min(d.saturating_duration_since(now)),
            None => timeout,
        };
        let outcome = match self.rx.recv_timeout(limit) {
            Ok(outcome) => outcome,
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::ShuttingDown),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if self.deadline.is_none_or(|d| Instant::now() < d) {
                    return None;
                }
                self.cancel();
                Err(Error::Timeout)
            }
        };
        self.finished = true;
        Some(outcome)
    }

    fn cancel(&self) {
        let _ = self.client.shared.mailbox.post(Command::Cancel {
            exchange: ExchangeKey::Id(self.id),
            reply: None,
        });
    }
}

impl Drop for ResponseHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel();
        }
    }
}

impl fmt::Debug for ResponseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseHandle")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// The responses to a multicast request, as an [`Iterator`] that ends when the response
/// window closes. Dropping it ends the request.
pub struct MulticastResponses {
    id: RequestId,
    rx: mpsc::Receiver<Result<IncomingResponse, Error>>,
    client: Client,
    ended: bool,
}

impl Iterator for MulticastResponses {
    type Item = Result<IncomingResponse, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.recv().ok();
        self.ended |= item.is_none();
        item
    }
}

impl Drop for MulticastResponses {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.client.shared.mailbox.post(Command::Cancel {
                exchange: ExchangeKey::Id(self.id),
                reply: None,
            });
        }
    }
}

impl fmt::Debug for MulticastResponses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MulticastResponses")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An observation (RFC 7641): the notifications of one resource as an [`Iterator`] whose
/// `next` blocks until the next one and returns `None` once the observation has ended. See
/// [`RequestBuilder::observe`].
pub struct Observation {
    id: RequestId,
    rx: mpsc::Receiver<Result<Notification, Error>>,
    client: Client,
    ended: bool,
}

impl Observation {
    /// The engine's id of the registration request.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Like `next`, but waits at most `timeout`; then it returns `Some(Err(Error::Timeout))`
    /// and the observation goes on.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Notification, Error>> {
        match self.rx.recv_timeout(timeout) {
            Ok(item) => Some(item),
            Err(mpsc::RecvTimeoutError::Timeout) => Some(Err(Error::Timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                None
            }
        }
    }

    /// Ends the observation actively: the registration is sent again with Observe = 1
    /// (RFC 7641 §3.6). The server's answer arrives as the last item, then the iterator ends.
    /// Returns false if the observation had already ended.
    pub fn cancel(&self) -> Result<bool, Error> {
        let id = self.id;
        self.client
            .shared
            .mailbox
            .ask(|reply| Command::CancelObservation {
                exchange: ExchangeKey::Id(id),
                reply,
            })
    }
}

impl Iterator for Observation {
    type Item = Result<Notification, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.recv().ok();
        self.ended |= item.is_none();
        item
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.client.shared.mailbox.post(Command::Cancel {
                exchange: ExchangeKey::Id(self.id),
                reply: None,
            });
        }
    }
}

impl fmt::Debug for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observation")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Where to send a request for `uri`, in the engine's address form (see
/// [`host::destination`] and [`host::choose_address`]).
fn resolve(shared: &Shared, uri: &CoapUri) -> Result<SocketAddr, Error> {
    let local = shared.local_addr;
    match host::destination(local, uri)? {
        Destination::Address(addr) => Ok(addr),
        Destination::Name(name, port) => {
            let addrs = (name, port)
                .to_socket_addrs()
                .map_err(|source| Error::Resolve {
                    host: name.into(),
                    source,
                })?;
            host::choose_address(local, name, addrs)
        }
    }
}

coap_udp::group_methods!(Client, |this| socket2::SockRef::from(&*this.shared.socket));
