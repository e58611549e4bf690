//! The host driven with endpoints in memory: a small network of [`Node`]s under a virtual
//! clock, each an endpoint with its host and service, datagrams passed between them by hand.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::net::SocketAddr;
use core::time::Duration;

use super::*;
use crate::msg::ContentFormat;
use crate::{Config, Endpoint};

/// Everything a test waiter saw.
#[derive(Default)]
struct Seen {
    items: Vec<Delivery>,
    outcome: Option<Result<Delivery, Error>>,
    dropped: bool,
}

/// A waiter that records into a shared [`Seen`], taking at most `capacity` items.
struct TestWaiter {
    kind: Kind,
    closed: bool,
    capacity: usize,
    seen: Rc<RefCell<Seen>>,
}

impl TestWaiter {
    fn new(kind: Kind) -> (TestWaiter, Rc<RefCell<Seen>>) {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let waiter = TestWaiter {
            kind,
            closed: false,
            capacity: usize::MAX,
            seen: Rc::clone(&seen),
        };
        (waiter, seen)
    }
}

impl Drop for TestWaiter {
    fn drop(&mut self) {
        self.seen.borrow_mut().dropped = true;
    }
}

impl Waiter for TestWaiter {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn is_closed(&self) -> bool {
        self.closed
    }

    fn deliver(&self, item: Delivery) -> bool {
        let mut seen = self.seen.borrow_mut();
        if seen.items.len() >= self.capacity {
            return false;
        }
        seen.items.push(item);
        true
    }

    fn finish(self, outcome: Result<Delivery, Error>) {
        self.seen.borrow_mut().outcome = Some(outcome);
    }
}

/// The channels of the tests: the recording waiter, and replies into shared cells.
struct TestChannels;

impl Channels for TestChannels {
    type Waiter = TestWaiter;
    type Reply<T> = Rc<RefCell<Option<T>>>;
    type Sender = std::sync::mpsc::Sender<Posted>;

    fn reply<T>(to: Self::Reply<T>, value: T) {
        *to.borrow_mut() = Some(value);
    }

    fn post(to: &Self::Sender, command: Command<Self>) -> bool {
        let posted = match command {
            Command::Respond { id, response, .. } => Posted::Respond(id, response.code),
            Command::Abandoned(id) => Posted::Abandoned(id),
            Command::Cancel {
                exchange: ExchangeKey::Ticket(ticket),
                ..
            } => Posted::Cancel(ticket),
            _ => return false,
        };
        to.send(posted).is_ok()
    }
}

/// What the guards posted, as the tests' channel keeps it (a command itself holds `Rc`s and
/// cannot cross threads).
#[derive(Debug, PartialEq, Eq)]
enum Posted {
    Respond(IncomingId, Code),
    Abandoned(IncomingId),
    Cancel(u64),
}

fn reply_cell<T>() -> Rc<RefCell<Option<T>>> {
    Rc::new(RefCell::new(None))
}

/// What a test server does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answers 2.05 with "hi <path>".
    Answer,
    /// Keeps the request unanswered (a handler that answers later).
    Defer,
    /// Answers with a code that is not a response code.
    BadCode,
    /// Panics.
    Panic,
    /// Answers 2.05 and accepts a registration.
    Observable,
}

/// A service with one behaviour for every request; it records the ids and observer counts.
struct TestService {
    behaviour: Behaviour,
    ids: Vec<IncomingId>,
    counts: Vec<(String, usize)>,
}

impl TestService {
    fn new(behaviour: Behaviour) -> TestService {
        TestService {
            behaviour,
            ids: Vec::new(),
            counts: Vec::new(),
        }
    }
}

impl Service for TestService {
    fn call(&mut self, request: Incoming) -> Dispatch {
        self.ids.push(request.id());
        let hello = || Response::content(format!("hi {}", request.path_string()));
        match self.behaviour {
            Behaviour::Answer => Dispatch::answer(hello()),
            Behaviour::Defer => Dispatch {
                answer: None,
                accept_observer: AcceptObserver::No,
            },
            Behaviour::BadCode => Dispatch::answer(Response::new(Code::GET)),
            Behaviour::Panic => panic!("handler failure (expected by the test)"),
            Behaviour::Observable => Dispatch {
                answer: Some(hello()),
                accept_observer: if request.is_observe_registration() {
                    AcceptObserver::Yes
                } else {
                    AcceptObserver::No
                },
            },
        }
    }

    fn observers_changed(&mut self, resource: &str, count: usize) {
        self.counts.push((resource.to_string(), count));
    }
}

/// One endpoint with its host and service.
struct Node {
    addr: SocketAddr,
    ep: Endpoint,
    host: Host<TestChannels>,
    service: TestService,
}

/// Nodes that exchange datagrams by address, under a virtual clock. A datagram to an address
/// no node has is lost; one to a multicast address reaches every other node.
struct Net {
    now: Instant,
    nodes: Vec<Node>,
}

const CLIENT: &str = "127.0.0.1:40000";
const SERVER: &str = "127.0.0.1:5683";
const SERVER2: &str = "127.0.0.2:5683";
const SILENT: &str = "127.0.0.9:5683";
const GROUP: &str = "224.0.1.187:5683";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

impl Net {
    /// A client node (index 0) and servers with these behaviours (indices 1, 2, ...).
    fn new(servers: &[Behaviour]) -> Net {
        let config = Config {
            // Short waits keep the number of clock steps small.
            default_leisure: Duration::from_millis(100),
            multicast_response_window: Duration::from_secs(2),
            ..Config::default()
        };
        let mut nodes = Vec::new();
        let addrs = [CLIENT, SERVER, SERVER2];
        let behaviours = core::iter::once(Behaviour::Answer).chain(servers.iter().copied());
        for (seed, (a, behaviour)) in addrs.iter().zip(behaviours).enumerate() {
            let a = addr(a);
            nodes.push(Node {
                addr: a,
                ep: Endpoint::new(config.clone(), seed as u64 + 1).unwrap(),
                host: Host::new(a, Duration::from_secs(1)),
                service: TestService::new(behaviour),
            });
        }
        Net {
            now: Instant::ZERO,
            nodes,
        }
    }

    fn client(&mut self) -> &mut Node {
        &mut self.nodes[0]
    }

    fn server(&mut self) -> &mut Node {
        &mut self.nodes[1]
    }

    /// Starts a request from the client.
    fn request(
        &mut self,
        uri: &str,
        to: &str,
        kind: Kind,
        ticket: Option<u64>,
    ) -> (Result<RequestId, Refused<TestWaiter>>, Rc<RefCell<Seen>>) {
        let now = self.now;
        let (waiter, seen) = TestWaiter::new(kind);
        let uri = parse_uri(uri).unwrap();
        let mut spec = RequestSpec::new(Code::GET, uri.to_string());
        if kind == Kind::Multicast {
            spec.set_message_type(Some(crate::msg::MessageType::Non));
        }
        let request = spec.into_request(&uri, addr(to));
        let c = self.client();
        let started = c.host.request(
            &mut c.ep,
            now,
            ticket,
            addr(to),
            request,
            Arc::new(uri),
            waiter,
        );
        (started, seen)
    }

    /// Moves every queued datagram to its destination and lets every host route its events,
    /// until nothing moves.
    fn settle(&mut self) {
        let now = self.now;
        let mut buf = vec![0u8; 2048];
        for _ in 0..100 {
            for node in &mut self.nodes {
                node.host.drive(&mut node.ep, now, &mut node.service);
            }
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let from = self.nodes[i].addr;
                while let Some(t) = self.nodes[i].ep.poll_transmit(now, &mut buf).unwrap() {
                    moved = true;
                    let bytes = &buf[..t.len];
                    for (j, node) in self.nodes.iter_mut().enumerate() {
                        if t.remote.ip().is_multicast() && j != i {
                            node.ep.handle_multicast_datagram(now, from, bytes);
                        } else if node.addr == t.remote {
                            node.ep.handle_datagram(now, from, bytes);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    /// Settles, then moves the clock to the next deadline of any node, until `done` holds.
    fn run_until(&mut self, done: impl Fn(&Net) -> bool) {
        for _ in 0..1000 {
            self.settle();
            if done(self) {
                return;
            }
            let next = self
                .nodes
                .iter_mut()
                .filter_map(|n| n.host.next_wake(&mut n.ep))
                .min()
                .expect("nothing left to wait for");
            self.now = self.now.max(next);
        }
        panic!("the condition never held");
    }
}

fn finished(seen: &Rc<RefCell<Seen>>) -> bool {
    seen.borrow().outcome.is_some()
}

/// The code and payload of the response a finished waiter got.
fn answered(seen: &Rc<RefCell<Seen>>) -> (Code, String) {
    match &seen.borrow().outcome {
        Some(Ok(delivery)) => payload(delivery),
        Some(Err(e)) => panic!("failed: {e}"),
        None => panic!("no outcome"),
    }
}

fn payload(delivery: &Delivery) -> (Code, String) {
    match delivery {
        Delivery::Response(r) => (r.code(), r.payload_str().unwrap_or("").to_string()),
        Delivery::Notification(n) => (n.code(), n.payload_str().unwrap_or("").to_string()),
        Delivery::Pong => (Code::EMPTY, String::new()),
    }
}

#[test]
fn a_response_reaches_its_waiter() {
    let mut net = Net::new(&[Behaviour::Answer]);
    let (started, seen) = net.request("coap://127.0.0.1/hello", SERVER, Kind::Once, Some(1));
    let id = started.map_err(|r| r.error).unwrap();
    assert_eq!(net.client().host.request_id(1), Some(id));
    net.run_until(|_| finished(&seen));
    let seen = seen.borrow();
    let Some(Ok(Delivery::Response(rsp))) = &seen.outcome else {
        panic!("no response");
    };
    assert_eq!(rsp.code(), Code::CONTENT);
    assert_eq!(rsp.payload_str(), Some("hi /hello"));
    assert_eq!(rsp.peer(), addr(SERVER));
    assert_eq!(rsp.uri().to_string(), "coap://127.0.0.1/hello");
    assert!(seen.items.is_empty() && seen.dropped);
    // Nothing is left behind on either side.
    assert_eq!(net.client().host.request_id(1), None);
    let c = net.client();
    assert!(c.host.pending_requests(&c.ep).is_empty());
    let s = net.server();
    assert!(s.host.pending_incoming(&s.ep).is_empty());
}

#[test]
fn a_dropped_waiter_cancels_its_exchange() {
    let mut net = Net::new(&[Behaviour::Answer]);
    // Closed before the driver got to it: never started.
    let (mut closed, _seen) = TestWaiter::new(Kind::Once);
    closed.closed = true;
    let now = net.now;
    let c = net.client();
    let refused = c
        .host
        .ping(&mut c.ep, now, Some(9), addr(SERVER), closed)
        .unwrap_err();
    assert!(matches!(refused.error, Error::Cancelled));
    assert_eq!(c.ep.pending_requests().count(), 0);

    // Dropped while under way: the ticket cancels it and the waiter learns it.
    let (started, seen) = net.request("coap://127.0.0.9/slow", SILENT, Kind::Once, Some(7));
    started.map_err(|r| r.error).unwrap();
    net.settle();
    let now = net.now;
    let c = net.client();
    assert_eq!(c.ep.pending_requests().count(), 1);
    assert!(c.host.cancel_ticket(&mut c.ep, now, 7));
    assert!(!c.host.cancel_ticket(&mut c.ep, now, 8), "unknown ticket");
    net.settle();
    assert!(matches!(seen.borrow().outcome, Some(Err(Error::Cancelled))));
    let c = net.client();
    assert_eq!(c.ep.pending_requests().count(), 0);
    assert_eq!(c.host.request_id(7), None);
}

#[test]
fn a_failure_reaches_the_right_waiter() {
    let mut net = Net::new(&[Behaviour::Answer]);
    let (lost, lost_seen) = net.request("coap://127.0.0.9/x", SILENT, Kind::Once, None);
    let (ok, ok_seen) = net.request("coap://127.0.0.1/y", SERVER, Kind::Once, None);
    lost.map_err(|r| r.error).unwrap();
    ok.map_err(|r| r.error).unwrap();
    net.run_until(|_| finished(&lost_seen) && finished(&ok_seen));
    assert!(matches!(
        lost_seen.borrow().outcome,
        Some(Err(Error::Timeout))
    ));
    let ok = ok_seen.borrow();
    let Some(Ok(delivery)) = &ok.outcome else {
        panic!("the answered request failed");
    };
    assert_eq!(payload(delivery), (Code::CONTENT, "hi /y".into()));
    // The timeout took the engine's retransmissions: the virtual clock moved on.
    assert!(net.now >= Instant::from_secs(45), "{}", net.now);
}

#[test]
fn a_ping_is_answered_with_a_pong() {
    let mut net = Net::new(&[Behaviour::Answer]);
    let (waiter, seen) = TestWaiter::new(Kind::Once);
    let now = net.now;
    let c = net.client();
    c.host
        .ping(&mut c.ep, now, None, addr(SERVER), waiter)
        .map_err(|r| r.error)
        .unwrap();
    let pending = c.host.pending_requests(&c.ep);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].uri, "coap://127.0.0.1:5683");
    assert_eq!(pending[0].method, Code::EMPTY);
    net.run_until(|_| finished(&seen));
    assert!(matches!(seen.borrow().outcome, Some(Ok(Delivery::Pong))));
}

#[test]
fn a_multicast_window_collects_responses_then_ends() {
    let mut net = Net::new(&[Behaviour::Answer, Behaviour::Answer]);
    let (started, seen) = net.request("coap://224.0.1.187/who", GROUP, Kind::Multicast, None);
    started.map_err(|r| r.error).unwrap();
    net.run_until(|_| seen.borrow().dropped);
    let seen = seen.borrow();
    // Both servers answered, each response delivered as it came; the window's end dropped
    // the waiter without an outcome.
    let mut peers: Vec<SocketAddr> = seen
        .items
        .iter()
        .map(|d| match d {
            Delivery::Response(r) => {
                assert_eq!(r.payload_str(), Some("hi /who"));
                r.peer()
            }
            other => panic!("not a response: {other:?}"),
        })
        .collect();
    peers.sort();
    assert_eq!(peers, [addr(SERVER), addr(SERVER2)]);
    assert!(seen.outcome.is_none());
    assert!(net.now >= Instant::from_secs(2), "the window lasts 2 s");
}

#[test]
fn a_full_receiver_drops_multicast_responses() {
    let mut net = Net::new(&[Behaviour::Answer, Behaviour::Answer]);
    let (mut small, seen) = TestWaiter::new(Kind::Multicast);
    small.capacity = 1;
    let uri = parse_uri("coap://224.0.1.187/who").unwrap();
    let mut spec = RequestSpec::new(Code::GET, uri.to_string());
    spec.set_message_type(Some(crate::msg::MessageType::Non));
    let request = spec.into_request(&uri, addr(GROUP));
    let now = net.now;
    let c = net.client();
    c.host
        .request(
            &mut c.ep,
            now,
            None,
            addr(GROUP),
            request,
            Arc::new(uri),
            small,
        )
        .map_err(|r| r.error)
        .unwrap();
    net.run_until(|_| seen.borrow().dropped);
    assert_eq!(seen.borrow().items.len(), 1);
}

#[test]
fn pending_lists_show_uris() {
    let mut net = Net::new(&[Behaviour::Defer]);
    let (started, _seen) = net.request("coap://127.0.0.1/a/b?x=1&y", SERVER, Kind::Once, Some(3));
    let id = started.map_err(|r| r.error).unwrap();
    net.settle();

    let c = net.client();
    let sent = c.host.pending_requests(&c.ep);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, id);
    assert_eq!(sent[0].method, Code::GET);
    assert_eq!(sent[0].uri, "coap://127.0.0.1/a/b?x=1&y");
    assert_eq!(sent[0].peer, addr(SERVER));
    let token = sent[0].token.clone();

    let s = net.server();
    let received = s.host.pending_incoming(&s.ep);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].id, s.service.ids[0]);
    assert_eq!(received[0].method, Code::GET);
    assert_eq!(received[0].uri, "/a/b?x=1&y");
    assert_eq!(received[0].peer, addr(CLIENT));
    assert_eq!(received[0].token, token);
}

#[test]
fn a_request_for_the_root_is_listed_as_slash() {
    let mut net = Net::new(&[Behaviour::Defer]);
    let (started, _seen) = net.request("coap://127.0.0.1", SERVER, Kind::Once, None);
    started.map_err(|r| r.error).unwrap();
    net.settle();
    let s = net.server();
    let received = s.host.pending_incoming(&s.ep);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].uri, "/");
}

#[test]
fn an_abandoned_request_is_answered_5_00() {
    let mut net = Net::new(&[Behaviour::Defer]);
    let (started, seen) = net.request("coap://127.0.0.1/later", SERVER, Kind::Once, None);
    started.map_err(|r| r.error).unwrap();
    net.settle();
    assert!(!finished(&seen));
    let now = net.now;
    let s = net.server();
    let id = s.service.ids[0];
    s.host.abandon(&mut s.ep, now, id);
    // Once answered, abandoning again does nothing, and answering fails.
    s.host.abandon(&mut s.ep, now, id);
    let late = s
        .host
        .respond(&mut s.ep, now, id, Response::content("late"));
    assert!(matches!(late, Err(Error::AlreadyAnswered)));
    assert!(s.host.pending_incoming(&s.ep).is_empty());
    net.run_until(|_| finished(&seen));
    assert_eq!(answered(&seen).0, Code::INTERNAL_SERVER_ERROR);
}

#[test]
fn a_deferred_answer_goes_out_through_respond() {
    let mut net = Net::new(&[Behaviour::Defer]);
    let (started, seen) = net.request("coap://127.0.0.1/later", SERVER, Kind::Once, None);
    started.map_err(|r| r.error).unwrap();
    net.settle();
    let now = net.now;
    let s = net.server();
    let id = s.service.ids[0];
    let answer = Response::content("done").with_content_format(ContentFormat::TEXT_PLAIN);
    s.host.respond(&mut s.ep, now, id, answer).unwrap();
    net.run_until(|_| finished(&seen));
    assert_eq!(answered(&seen), (Code::CONTENT, "done".into()));
}

#[test]
fn a_refused_answer_becomes_5_00() {
    let mut net = Net::new(&[Behaviour::BadCode]);
    let (started, seen) = net.request("coap://127.0.0.1/bad", SERVER, Kind::Once, None);
    started.map_err(|r| r.error).unwrap();
    net.run_until(|_| finished(&seen));
    assert_eq!(answered(&seen).0, Code::INTERNAL_SERVER_ERROR);
    let s = net.server();
    assert!(s.host.pending_incoming(&s.ep).is_empty());
}

#[test]
fn a_panicking_handler_is_answered_5_00() {
    let mut net = Net::new(&[Behaviour::Panic]);
    let (started, seen) = net.request("coap://127.0.0.1/boom", SERVER, Kind::Once, None);
    started.map_err(|r| r.error).unwrap();
    net.run_until(|_| finished(&seen));
    assert_eq!(answered(&seen).0, Code::INTERNAL_SERVER_ERROR);
}

#[test]
fn an_accepted_registration_makes_an_observer() {
    let mut net = Net::new(&[Behaviour::Observable]);
    let (started, seen) = net.request("coap://127.0.0.1/obs", SERVER, Kind::Observation, None);
    let id = started.map_err(|r| r.error).unwrap();
    net.settle();
    assert_eq!(net.server().ep.observer_count("/obs"), 1);
    assert_eq!(net.server().service.counts, [("/obs".to_string(), 1)]);
    assert_eq!(seen.borrow().items.len(), 1, "the registration's answer");

    // A change reaches the observer as a notification.
    let now = net.now;
    let s = net.server();
    let n = s
        .host
        .notify(&mut s.ep, now, "/obs", Some(Response::content("changed")));
    assert_eq!(n, 1);
    net.settle();
    {
        let seen = seen.borrow();
        assert_eq!(seen.items.len(), 2);
        let Delivery::Notification(last) = &seen.items[1] else {
            panic!("not a notification");
        };
        assert_eq!(last.payload_str(), Some("changed"));
        assert!(last.is_fresh() && last.sequence().is_some());
    }

    // A notify without a representation asks the service to render it.
    let rendered = net.server().service.ids.len();
    let now = net.now;
    let s = net.server();
    assert_eq!(s.host.notify(&mut s.ep, now, "/obs", None), 1);
    net.settle();
    assert_eq!(net.server().service.ids.len(), rendered + 1);
    assert_eq!(seen.borrow().items.len(), 3);

    // Cancelling actively ends it with the server's answer, delivered last.
    let now = net.now;
    let c = net.client();
    assert!(c.host.cancel_observation(&mut c.ep, now, id));
    net.run_until(|_| finished(&seen));
    assert!(matches!(
        seen.borrow().outcome,
        Some(Ok(Delivery::Notification(_)))
    ));
    assert_eq!(net.server().ep.observer_count("/obs"), 0);
}

#[test]
fn shutdown_ends_what_waits() {
    let mut net = Net::new(&[Behaviour::Defer]);
    let (started, seen) = net.request("coap://127.0.0.9/x", SILENT, Kind::Once, Some(1));
    started.map_err(|r| r.error).unwrap();
    let (_, answered) = net.request("coap://127.0.0.1/y", SERVER, Kind::Once, None);
    net.settle();
    let now = net.now;
    let s = net.server();
    assert!(s.host.is_running());
    s.host.shut_down(&mut s.ep, now);
    assert!(!s.host.is_running());
    assert!(!s.host.is_finished(&s.ep, now, true), "a request waits");
    let deadline = s.host.next_wake(&mut s.ep).unwrap();
    assert!(deadline <= now + Duration::from_secs(1));
    assert!(s
        .host
        .is_finished(&s.ep, now + Duration::from_secs(1), true));

    let c = net.client();
    c.host.finish();
    assert!(matches!(
        seen.borrow().outcome,
        Some(Err(Error::ShuttingDown))
    ));
    assert!(matches!(
        answered.borrow().outcome,
        Some(Err(Error::ShuttingDown))
    ));
    assert_eq!(c.host.request_id(1), None);
}

#[test]
fn commands_are_carried_out_and_answered() {
    let mut net = Net::new(&[Behaviour::Defer]);
    let now = net.now;
    let uri = Arc::new(parse_uri("coap://127.0.0.1/c").unwrap());
    let request = |code, ticket, waiter, started| Command::Request {
        ticket,
        remote: addr(SERVER),
        request: Box::new(Request::new(code).with_path("/c")),
        uri: Arc::clone(&uri),
        waiter,
        started,
    };

    // Started with an id for whoever waits for the start.
    let started = reply_cell();
    let (waiter, seen) = TestWaiter::new(Kind::Once);
    let c = net.client();
    c.host.command(
        &mut c.ep,
        now,
        request(Code::GET, Some(1), waiter, Some(Rc::clone(&started))),
    );
    let id = started.borrow_mut().take().unwrap().unwrap();
    assert_eq!(c.host.request_id(1), Some(id));

    // Refused: the error goes to whoever waits for the start, else to the waiter.
    let refused_start = reply_cell();
    let (waiter, unused) = TestWaiter::new(Kind::Once);
    c.host.command(
        &mut c.ep,
        now,
        request(Code::CONTENT, None, waiter, Some(Rc::clone(&refused_start))),
    );
    assert!(matches!(
        refused_start.borrow_mut().take(),
        Some(Err(Error::NotARequest(_)))
    ));
    assert!(unused.borrow().outcome.is_none() && unused.borrow().dropped);
    let (waiter, told) = TestWaiter::new(Kind::Once);
    c.host
        .command(&mut c.ep, now, request(Code::CONTENT, None, waiter, None));
    assert!(matches!(
        told.borrow().outcome,
        Some(Err(Error::NotARequest(_)))
    ));

    // Introspection and counters, answered at once.
    let pending = reply_cell();
    c.host.command(
        &mut c.ep,
        now,
        Command::PendingRequests(Rc::clone(&pending)),
    );
    assert_eq!(pending.borrow().as_ref().map(Vec::len), Some(1));
    let stats = reply_cell();
    c.host
        .command(&mut c.ep, now, Command::Stats(Rc::clone(&stats)));
    assert!(stats.borrow().is_some());
    let observation = reply_cell();
    c.host.command(
        &mut c.ep,
        now,
        Command::CancelObservation {
            exchange: ExchangeKey::Ticket(99),
            reply: Rc::clone(&observation),
        },
    );
    assert_eq!(*observation.borrow(), Some(false));

    // The server sees the request; it is answered by a Respond command.
    net.settle();
    let s = net.server();
    let incoming = reply_cell();
    s.host.command(
        &mut s.ep,
        now,
        Command::PendingIncoming(Rc::clone(&incoming)),
    );
    let received = incoming.borrow_mut().take().unwrap();
    assert_eq!(received[0].uri, "/c");
    let done = reply_cell();
    s.host.command(
        &mut s.ep,
        now,
        Command::Respond {
            id: received[0].id,
            response: Box::new(Response::content("answered")),
            done: Some(Rc::clone(&done)),
        },
    );
    assert!(matches!(*done.borrow(), Some(Ok(()))));
    s.host
        .command(&mut s.ep, now, Command::Abandoned(received[0].id));
    let count = reply_cell();
    s.host.command(
        &mut s.ep,
        now,
        Command::ObserverCount {
            path: "/c".into(),
            reply: Rc::clone(&count),
        },
    );
    assert_eq!(*count.borrow(), Some(0));
    let notified = reply_cell();
    s.host.command(
        &mut s.ep,
        now,
        Command::Notify {
            path: "/c".into(),
            representation: None,
            reply: Rc::clone(&notified),
        },
    );
    assert_eq!(*notified.borrow(), Some(0));
    net.run_until(|_| finished(&seen));
    let Some(Ok(delivery)) = &seen.borrow().outcome else {
        panic!("no answer");
    };
    assert_eq!(payload(delivery), (Code::CONTENT, "answered".into()));

    // Cancelling: by ticket for a dropped handle, by id with an answer.
    let (waiter, cancelled) = TestWaiter::new(Kind::Once);
    let c = net.client();
    c.host.command(
        &mut c.ep,
        now,
        Command::Ping {
            ticket: Some(5),
            remote: addr(SILENT),
            waiter,
        },
    );
    let id = c.host.request_id(5).unwrap();
    c.host.command(
        &mut c.ep,
        now,
        Command::Cancel {
            exchange: ExchangeKey::Ticket(5),
            reply: None,
        },
    );
    let again = reply_cell();
    c.host.command(
        &mut c.ep,
        now,
        Command::Cancel {
            exchange: ExchangeKey::Id(id),
            reply: Some(Rc::clone(&again)),
        },
    );
    assert_eq!(*again.borrow(), Some(false), "cancelled already");
    net.settle();
    assert!(matches!(
        cancelled.borrow().outcome,
        Some(Err(Error::Cancelled))
    ));

    // A shutdown is answered once the driver has finished.
    let now = net.now;
    let stopped = reply_cell();
    let c = net.client();
    c.host
        .command(&mut c.ep, now, Command::Shutdown(Rc::clone(&stopped)));
    assert!(!c.host.is_running());
    assert!(stopped.borrow().is_none());
    c.host.finish();
    assert!(stopped.borrow().is_some());

    // A request that comes after the stop is refused.
    let (waiter, late) = TestWaiter::new(Kind::Once);
    Host::<TestChannels>::refuse(request(Code::GET, None, waiter, None));
    assert!(matches!(
        late.borrow().outcome,
        Some(Err(Error::ShuttingDown))
    ));
}

// ------------------------------------------------------------------------------------------
// Routes
// ------------------------------------------------------------------------------------------

fn incoming(method: Code, path: &str, observe: Option<u32>, multicast: bool) -> Incoming {
    let mut message = Message::new(crate::msg::MessageType::Con, method, 1);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        message
            .options
            .push_str(crate::msg::OptionNumber::URI_PATH, segment);
    }
    if let Some(o) = observe {
        message.options.set_observe(o);
    }
    Incoming {
        id: IncomingId(1),
        peer: addr(CLIENT),
        message,
        multicast,
        render: false,
        matched: 0,
    }
}

#[test]
fn routes_find_handlers_and_answer_the_rest() {
    let mut routes: Routes<&'static str, Incoming> = Routes::new();
    routes.add("/a", Code::GET, "get a");
    routes.add_prefix("/files", Code::GET, "files");
    let mut sub = Routes::new();
    sub.add_observable(
        "/temp",
        "temp",
        ObserveHooks::new().accept(|r: &Incoming| r.query_value("deny").is_none()),
    );
    routes.nest("/sensors", sub);

    let mut req = incoming(Code::GET, "/files/x/y", None, false);
    let Route::Handler {
        handler,
        observe,
        if_observed,
    } = routes.route(&mut req)
    else {
        panic!("no handler");
    };
    assert_eq!(
        (*handler, observe.is_none(), if_observed),
        ("files", true, true)
    );
    // A registration on a prefix route is taken if the handler's answer carries Observe.
    let mut reg = incoming(Code::GET, "/files/x", Some(0), false);
    assert!(matches!(
        routes.route(&mut reg),
        Route::Handler {
            observe: Some(_),
            if_observed: true,
            ..
        }
    ));
    assert_eq!(req.rest().collect::<Vec<_>>(), ["x", "y"]);

    let answer = |r: Route<'_, &str, Incoming>| match r {
        Route::Answer(rsp) => rsp.code,
        Route::Handler { .. } => Code::EMPTY,
    };
    assert_eq!(
        answer(routes.route(&mut incoming(Code::GET, "/nope", None, false))),
        Code::NOT_FOUND
    );
    assert_eq!(
        answer(routes.route(&mut incoming(Code::PUT, "/a", None, false))),
        Code::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        answer(routes.route(&mut incoming(Code::GET, "/.well-known/core", None, false))),
        Code::CONTENT
    );

    // Only a registration on the observable route sees its hooks.
    let mut plain = incoming(Code::GET, "/sensors/temp", None, false);
    assert!(matches!(
        routes.route(&mut plain),
        Route::Handler { observe: None, .. }
    ));
    let mut reg = incoming(Code::GET, "/sensors/temp", Some(0), false);
    let Route::Handler {
        observe: Some(hooks),
        ..
    } = routes.route(&mut reg)
    else {
        panic!("the nested observable route lost its hooks");
    };
    assert!(hooks.accepts(&reg));
    let doc = routes.well_known_core([]).unwrap();
    assert!(doc.contains("</sensors/temp>;obs"), "{doc}");
    assert!(
        format!("{routes:?}").contains("/sensors/temp [0.01 GET] obs"),
        "{routes:?}"
    );
}

#[test]
fn a_multicast_discovery_that_matches_nothing_is_not_answered() {
    let routes: Routes<(), Incoming> = Routes::new();
    let mut req = incoming(Code::GET, "/.well-known/core", None, true);
    // 4.04 is what the engine suppresses for multicast requests (RFC 7252 §8.2).
    assert!(matches!(
        routes.route(&mut req),
        Route::Answer(Response {
            code: Code::NOT_FOUND,
            ..
        })
    ));
}

#[test]
fn observer_counts_reach_the_count_hook() {
    let counts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&counts);
    let mut routes: Routes<(), Incoming> = Routes::new();
    routes.add_observable(
        "obs/",
        (),
        ObserveHooks::new().on_observer_count(move |n| log.lock().unwrap().push(n)),
    );
    routes.observers_changed("/obs", 2);
    routes.observers_changed("/other", 5);
    assert_eq!(*counts.lock().unwrap(), [2]);
}

#[test]
fn a_router_hands_out_handlers_of_its_style() {
    use core::task::{Context, Poll, Waker};

    // Blocking: the handler returns its answer.
    let blocking: Router<Incoming, Blocking> = Router::new()
        .get("/hello", |req: Incoming| {
            Response::content(req.path_string())
        })
        .put("/fail", |_req: Incoming| {
            Err::<Response, _>(crate::resource::CoapError::bad_request("no"))
        })
        .observable_with(
            "/obs",
            |_req: Incoming| Response::content("state"),
            ObserveHooks::new().accept(|req: &Incoming| req.query_value("deny").is_none()),
        );
    let head = incoming(Code::GET, "/hello", None, false);
    let Routed::Handler {
        handler,
        request,
        accept_observer,
    } = blocking.dispatch(head, |head| head)
    else {
        panic!("no handler");
    };
    assert_eq!(accept_observer, AcceptObserver::No);
    let Reply::Response(rsp) = handler(request) else {
        panic!("deferred");
    };
    assert_eq!(&rsp.payload[..], b"/hello");
    let head = incoming(Code::PUT, "/fail", None, false);
    let Routed::Handler {
        handler, request, ..
    } = blocking.dispatch(head, |head| head)
    else {
        panic!("no handler");
    };
    assert!(matches!(
        handler(request),
        Reply::Response(Response {
            code: Code::BAD_REQUEST,
            ..
        })
    ));
    let registration = incoming(Code::GET, "/obs", Some(0), false);
    assert!(matches!(
        blocking.dispatch(registration, |head| head),
        Routed::Handler {
            accept_observer: AcceptObserver::Yes,
            ..
        }
    ));
    // No request is made for what no handler serves.
    let head = incoming(Code::DELETE, "/hello", None, false);
    let routed = blocking.dispatch(head, |_| panic!("made a request for a 4.05"));
    assert!(matches!(
        routed,
        Routed::Answer(Response {
            code: Code::METHOD_NOT_ALLOWED,
            ..
        })
    ));

    // Async: the handler returns a future of its answer.
    let asynchronous: Router<Incoming, Async> = Router::new()
        .prefix_get("/files", |req: Incoming| async move {
            Response::content(req.rest().collect::<Vec<_>>().join(","))
        });
    let head = incoming(Code::GET, "/files/a/b", None, false);
    let Routed::Handler {
        handler, request, ..
    } = asynchronous.dispatch(head, |head| head)
    else {
        panic!("no handler");
    };
    let mut future = handler(request);
    let Poll::Ready(Reply::Response(rsp)) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("not ready at once");
    };
    assert_eq!(&rsp.payload[..], b"a,b");
    assert_eq!(asynchronous.routes().count(), 1);
}

#[test]
fn guards_tell_the_driver_what_is_left() {
    let (to, posted) = std::sync::mpsc::channel();
    let id = IncomingId(7);
    AnswerGuard::<TestChannels>::new(id, to.clone())
        .respond(Response::content("x"), None)
        .unwrap();
    drop(AnswerGuard::<TestChannels>::new(id, to.clone()));
    AnswerGuard::<TestChannels>::new(id, to.clone()).answer(Reply::Deferred(Deferred::new()));
    AnswerGuard::<TestChannels>::new(id, to.clone())
        .answer(Reply::Response(Response::new(Code::CHANGED)));
    drop(CancelGuard::<TestChannels>::new(3, to.clone()));
    let disarmed = CancelGuard::<TestChannels>::new(4, to.clone());
    assert_eq!(disarmed.ticket(), 4);
    disarmed.disarm();
    drop(to);
    assert_eq!(
        posted.iter().collect::<Vec<_>>(),
        [
            Posted::Respond(id, Code::CONTENT),
            Posted::Abandoned(id),
            Posted::Respond(id, Code::CHANGED),
            Posted::Cancel(3),
        ]
    );
    // A driver that is gone: the answer says so.
    let (to, gone) = std::sync::mpsc::channel();
    drop(gone);
    let refused = AnswerGuard::<TestChannels>::new(id, to).respond(Response::content("x"), None);
    assert!(matches!(refused, Err(Error::ShuttingDown)));
}

#[test]
fn async_handlers_are_polled_once_then_spawned() {
    use core::task::{Context, Poll, Waker};

    let router: Router<Incoming, Async> = Router::new()
        .get("/now", |_req: Incoming| async { Response::content("now") })
        .get("/later", |_req: Incoming| async {
            // Pending once, as a handler that waits for something.
            let mut first = true;
            core::future::poll_fn(|_| {
                if core::mem::take(&mut first) {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            Response::content("later")
        });
    let (to, posted) = std::sync::mpsc::channel();
    let no_spawn = |_: HandlerFuture, _: AnswerGuard<TestChannels>| panic!("spawned");
    let now = router.start::<TestChannels>(
        incoming(Code::GET, "/now", None, false),
        |h| h,
        &to,
        no_spawn,
    );
    assert_eq!(now.answer.map(|r| r.code), Some(Code::CONTENT));
    let missing =
        router.start::<TestChannels>(incoming(Code::GET, "/x", None, false), |h| h, &to, no_spawn);
    assert_eq!(missing.answer.map(|r| r.code), Some(Code::NOT_FOUND));

    let mut spawned = None;
    let later = router.start::<TestChannels>(
        incoming(Code::GET, "/later", None, false),
        |h| h,
        &to,
        |future, guard| spawned = Some((future, guard)),
    );
    assert!(later.answer.is_none());
    let (mut future, guard) = spawned.expect("not spawned");
    let Poll::Ready(reply) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("still pending");
    };
    guard.answer(reply);
    assert_eq!(
        posted.try_recv(),
        Ok(Posted::Respond(IncomingId(1), Code::CONTENT))
    );
}

#[test]
fn blocking_handlers_run_as_jobs() {
    let router: Router<Incoming, Blocking> = Router::new()
        .get("/ok", |_req: Incoming| Response::content("ok"))
        .get("/boom", |_req: Incoming| -> Response {
            panic!("handler failure (expected by the test)")
        });
    let (to, posted) = std::sync::mpsc::channel();
    let run_here = |job: Job| {
        job();
        true
    };
    let ok = router.start::<TestChannels>(
        incoming(Code::GET, "/ok", None, false),
        |h| h,
        &to,
        run_here,
    );
    assert!(ok.answer.is_none());
    assert_eq!(
        posted.try_recv(),
        Ok(Posted::Respond(IncomingId(1), Code::CONTENT))
    );
    let boom = router.start::<TestChannels>(
        incoming(Code::GET, "/boom", None, false),
        |h| h,
        &to,
        run_here,
    );
    assert!(boom.answer.is_none());
    assert_eq!(posted.try_recv(), Ok(Posted::Abandoned(IncomingId(1))));
    // A full pool: 5.03 with Max-Age at once.
    let full = router.start::<TestChannels>(
        incoming(Code::GET, "/ok", None, false),
        |h| h,
        &to,
        |_| false,
    );
    let rsp = full.answer.expect("no answer");
    assert_eq!(rsp.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.options.max_age(), Some(1));
    let missing = router.start::<TestChannels>(
        incoming(Code::PUT, "/ok", None, false),
        |h| h,
        &to,
        |_| panic!("ran a job for a 4.05"),
    );
    assert_eq!(
        missing.answer.map(|r| r.code),
        Some(Code::METHOD_NOT_ALLOWED)
    );
}

// ------------------------------------------------------------------------------------------
// Request assembly
// ------------------------------------------------------------------------------------------

#[test]
fn a_request_is_assembled_from_its_uri_and_builder() {
    let uri = parse_uri("coap://example.com:5684/a/b?x=1").unwrap();
    let mut spec = RequestSpec::new(Code::PUT, "ignored".into());
    spec.push_option(crate::msg::OptionNumber::URI_QUERY, b"y=2");
    spec.push_uint_option(crate::msg::OptionNumber::CONTENT_FORMAT, 50);
    spec.set_payload(Bytes::from_static(b"{}"));
    spec.set_timeout(Duration::from_secs(3));
    let request = spec.into_request(&uri, addr("[::ffff:192.0.2.1]:5684"));
    assert_eq!(request.method, Code::PUT);
    assert_eq!(request.options.uri_host(), Some("example.com"));
    assert_eq!(
        request.options.uri_port(),
        None,
        "the destination's own port"
    );
    assert_eq!(request.options.uri_path().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(
        request.options.uri_query().collect::<Vec<_>>(),
        ["x=1", "y=2"]
    );
    assert_eq!(request.options.content_format(), Some(ContentFormat::JSON));
    assert_eq!(&request.payload[..], b"{}");
    assert_eq!(request.timeout, Some(Duration::from_secs(3)));

    // An IP literal that is the destination needs no Uri-Host.
    let ip = parse_uri("coap://192.0.2.1/x").unwrap();
    let request =
        RequestSpec::new(Code::GET, String::new()).into_request(&ip, addr("192.0.2.1:5683"));
    assert_eq!(request.options.uri_host(), None);

    assert!(matches!(
        parse_uri("coaps://192.0.2.1/"),
        Err(Error::UnsupportedScheme(_))
    ));
    assert!(matches!(parse_uri("http//"), Err(Error::InvalidUri(_))));
}

#[test]
fn destinations_take_the_socket_family() {
    let v4 = addr("0.0.0.0:0");
    let v6 = addr("[::]:0");
    let ip = parse_uri("coap://192.0.2.1:1234/").unwrap();
    assert_eq!(
        destination(v6, &ip).unwrap(),
        Destination::Address(addr("[::ffff:192.0.2.1]:1234"))
    );
    let ip6 = parse_uri("coap://[2001:db8::1]/").unwrap();
    assert!(matches!(
        destination(v4, &ip6),
        Err(Error::NoUsableAddress { .. })
    ));
    let name = parse_uri("coap://example.com/").unwrap();
    assert_eq!(
        destination(v4, &name).unwrap(),
        Destination::Name("example.com", 5683)
    );

    let both = [addr("[2001:db8::1]:5683"), addr("192.0.2.1:5683")];
    assert_eq!(
        choose_address(v4, "h", both).unwrap(),
        addr("192.0.2.1:5683")
    );
    assert_eq!(
        choose_address(v6, "h", both).unwrap(),
        addr("[2001:db8::1]:5683")
    );
    assert_eq!(
        choose_address(v6, "h", [addr("192.0.2.1:5683")]).unwrap(),
        addr("[::ffff:192.0.2.1]:5683")
    );
    assert!(matches!(
        choose_address(v4, "h", [addr("[2001:db8::1]:5683")]),
        Err(Error::NoUsableAddress { host }) if host == "h"
    ));
}

#[test]
fn new_endpoints_understand_accept() {
    let ep = new_endpoint(Config::default(), Box::new(crate::rng::SeededRng::new(1))).unwrap();
    assert!(ep
        .config()
        .extra_critical_options
        .contains(&crate::msg::OptionNumber::ACCEPT));
}

#[test]
fn targets_parse_an_address_once_and_leave_names_to_the_resolver() {
    let v6 = addr("[::]:0");
    let targets = Targets::new();
    let lookup = |text: &str| targets.target(v6, text).unwrap();
    let TargetLookup::Address(first, remote) = lookup("coap://192.0.2.1:1234/a/b?x=1") else {
        panic!("an address is a target");
    };
    assert_eq!(remote, addr("[::ffff:192.0.2.1]:1234"));
    assert_eq!(*first, parse_uri("coap://192.0.2.1:1234/a/b?x=1").unwrap());
    // The same text again: the URI parsed the first time.
    let TargetLookup::Address(again, remote_again) = lookup("coap://192.0.2.1:1234/a/b?x=1") else {
        panic!("an address is a target");
    };
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(remote_again, remote);
    // Another text replaces it; going back parses again.
    let TargetLookup::Address(other, _) = lookup("coap://192.0.2.1:1234/a/c") else {
        panic!("an address is a target");
    };
    assert_eq!(other.path(), ["a", "c"]);
    let TargetLookup::Address(back, _) = lookup("coap://192.0.2.1:1234/a/b?x=1") else {
        panic!("an address is a target");
    };
    assert!(!Arc::ptr_eq(&first, &back));
    assert_eq!(back, first);
    // A name goes to the resolver every time, and does not replace the kept address.
    assert!(matches!(
        lookup("coap://example.com/a"),
        TargetLookup::Resolve(uri) if uri.host().to_string() == "example.com"
    ));
    let TargetLookup::Address(kept, _) = lookup("coap://192.0.2.1:1234/a/b?x=1") else {
        panic!("an address is a target");
    };
    assert!(Arc::ptr_eq(&back, &kept));
    // Errors as parse_uri and destination give them, every time.
    for _ in 0..2 {
        assert!(matches!(
            targets.target(v6, "coaps://192.0.2.1/"),
            Err(Error::UnsupportedScheme(_))
        ));
        assert!(matches!(
            targets.target(addr("0.0.0.0:0"), "coap://[2001:db8::1]/"),
            Err(Error::NoUsableAddress { .. })
        ));
    }
}

#[test]
fn targets_are_kept_for_the_socket_they_were_looked_up_for() {
    let targets = Targets::new();
    let text = "coap://192.0.2.1/a";
    let TargetLookup::Address(_, v6) = targets.target(addr("[::]:0"), text).unwrap() else {
        panic!("an address is a target");
    };
    assert_eq!(v6, addr("[::ffff:192.0.2.1]:5683"));
    let TargetLookup::Address(_, v4) = targets.target(addr("0.0.0.0:0"), text).unwrap() else {
        panic!("an address is a target");
    };
    assert_eq!(v4, addr("192.0.2.1:5683"));
}

#[test]
fn drive_handles_timeouts_that_came_after_the_last_next_wake() {
    let mut net = Net::new(&[]);
    let start = net.now;
    // Nothing under way: the engine has no deadline.
    let c = net.client();
    assert_eq!(c.host.next_wake(&mut c.ep), None);
    // A request to a silent peer, then no next_wake: drive still retransmits once the first
    // timeout (2 to 3 s) has passed.
    let (started, _seen) = net.request("coap://127.0.0.9/x", SILENT, Kind::Once, None);
    started.map_err(|r| r.error).unwrap();
    let c = net.client();
    while c
        .ep
        .poll_transmit(start, &mut [0u8; 256])
        .unwrap()
        .is_some()
    {}
    c.host
        .drive(&mut c.ep, start + Duration::from_secs(3), &mut c.service);
    assert_eq!(c.ep.stats().retransmissions, 1);
    // The deadline next_wake gives is the one drive acts on, not sooner.
    let next = c.host.next_wake(&mut c.ep).unwrap();
    let early = Instant::from_micros(next.as_micros() - 1_000);
    assert!(early > start + Duration::from_secs(3));
    c.host.drive(&mut c.ep, early, &mut c.service);
    assert_eq!(c.ep.stats().retransmissions, 1);
    c.host.drive(&mut c.ep, next, &mut c.service);
    assert_eq!(c.ep.stats().retransmissions, 2);
}
