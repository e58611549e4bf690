//! Shared helpers for the cross-crate tests in `tests/`: an endpoint with a scripted
//! application, as a node of the simulated network ([`Host`]); and the end-to-end scenarios
//! ([`scenarios`]), written once against a blocking view of a runtime crate ([`stack`]) that
//! each runtime crate implements ([`stacks`]).

pub mod scenarios;
pub mod stack;
pub mod stacks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use coap_proto::endpoint::{Config, Endpoint, Event, IncomingId, Progress, RequestId};
use coap_proto::msg::Message;
use coap_proto::sim::Node;
use coap_proto::{Instant, Response};

/// The application logic of a simulated server: maps each request to a response.
pub type Handler = Box<dyn FnMut(&Message) -> Response>;

/// An endpoint plus a scripted application, usable as a [`Node`] of a simulated network.
///
/// As a server it answers every request with its handler, at once or after a delay. As a
/// client it records the final events of the requests started on [`Host::ep`].
pub struct Host {
    /// The endpoint; start client requests on it directly.
    pub ep: Endpoint,
    handler: Handler,
    /// How long the application takes to answer; `None` answers at once.
    pub delay: Option<Duration>,
    deferred: Vec<(Instant, IncomingId, Response)>,
    /// Every request the application saw, in order.
    pub seen: Vec<Message>,
    /// Client side: the events naming each request, with the time they came.
    pub outcomes: HashMap<RequestId, Vec<(Instant, Event)>>,
    /// Client side: notifications of observations, with the time they came and whether they
    /// were fresh.
    pub notifications: Vec<(Instant, RequestId, Message, bool)>,
    /// Server side: accept observe registrations.
    pub accept_observers: bool,
    /// Client side: when each request first went out (from `Event::Progress`, reported when
    /// the endpoint's `report_progress` is set).
    pub first_sent: HashMap<RequestId, Instant>,
}

impl Host {
    /// A host with an endpoint made from `config` and `seed`, answering with `handler`.
    pub fn new(config: Config, seed: u64, handler: Handler) -> Host {
        Host {
            ep: Endpoint::new(config, seed).expect("valid config"),
            handler,
            delay: None,
            deferred: Vec::new(),
            seen: Vec::new(),
            outcomes: HashMap::new(),
            notifications: Vec::new(),
            accept_observers: false,
            first_sent: HashMap::new(),
        }
    }

    fn run_application(&mut self, now: Instant) {
        while let Some(event) = self.ep.poll_event() {
            match event {
                Event::Request { id, request, .. } => {
                    if self.accept_observers && request.options.observe() == Some(0) {
                        // Over a bound the registration is served as a plain request.
                        let _ = self.ep.accept_observer(id);
                    }
                    let rsp = (self.handler)(&request);
                    self.seen.push(request);
                    match self.delay {
                        None => self.ep.respond(now, id, rsp).expect("request is pending"),
                        Some(d) => self.deferred.push((now + d, id, rsp)),
                    }
                }
                Event::Notification {
                    id,
                    response,
                    fresh,
                    ..
                } => self.notifications.push((now, id, response, fresh)),
                Event::Progress {
                    id,
                    progress: Progress::Sent,
                } => {
                    self.first_sent.entry(id).or_insert(now);
                }
                Event::Response { id, .. } | Event::RequestFailed { id, .. } => {
                    self.outcomes.entry(id).or_default().push((now, event));
                }
                _ => {}
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.deferred.drain(..).partition(|(t, ..)| *t <= now);
        self.deferred = later;
        for (_, id, rsp) in due {
            self.ep.respond(now, id, rsp).expect("request is pending");
        }
    }
}

impl Node for Host {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.ep.handle_datagram(now, from, datagram);
        self.run_application(now);
    }

    fn handle_multicast_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        _group: SocketAddr,
        datagram: &[u8],
    ) {
        self.ep.handle_multicast_datagram(now, from, datagram);
        self.run_application(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.run_application(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let t = self
            .ep
            .poll_transmit(now, buf)
            .expect("sim buffer is large")?;
        Some((t.remote, t.len))
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let app = self.deferred.iter().map(|(t, ..)| *t).min();
        [self.ep.poll_timeout(), app].into_iter().flatten().min()
    }
}
