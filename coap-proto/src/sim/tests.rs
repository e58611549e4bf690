//! Tests of the simulation harness, driven by toy nodes.

use super::*;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::ToString;
use core::cell::Cell;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use alloc::rc::Rc;

fn v6(n: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n)),
        5683,
    )
}

fn v4(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)), 5683)
}

fn group() -> SocketAddr {
    // All-CoAP-nodes, link-local scope (RFC 7252 §12.8).
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfd)),
        5683,
    )
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Records everything it receives.
#[derive(Debug, Default)]
struct Sink {
    got: Vec<(Instant, SocketAddr, Vec<u8>)>,
    /// Groups of the datagrams that arrived through multicast.
    groups: Vec<SocketAddr>,
}

/// Answers every datagram with the same bytes.
#[derive(Debug, Default)]
struct Echo {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    answered: u32,
}

/// Sends numbered pings one at a time, retransmitting each every `rto` until it is echoed.
#[derive(Debug)]
struct Pinger {
    peer: SocketAddr,
    count: u32,
    current: u32,
    send_now: bool,
    rto: Duration,
    deadline: Option<Instant>,
    transmissions: u32,
    done_at: Option<Instant>,
}

impl Pinger {
    fn new(peer: SocketAddr, count: u32, rto: Duration) -> Pinger {
        Pinger {
            peer,
            count,
            current: 0,
            send_now: count > 0,
            rto,
            deadline: None,
            transmissions: 0,
            done_at: None,
        }
    }
}

/// Sends a list of datagrams, all at once or one every `interval`.
#[derive(Debug, Default)]
struct Blaster {
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    interval: Option<Duration>,
    next: Option<Instant>,
    due: bool,
}

impl Blaster {
    fn numbered(to: SocketAddr, n: u32, interval: Option<Duration>) -> Blaster {
        Blaster {
            out: (0..n).map(|i| (to, i.to_be_bytes().to_vec())).collect(),
            interval,
            next: interval.map(|_| Instant::ZERO),
            due: false,
        }
    }
}

#[derive(Debug)]
enum Toy {
    Sink(Sink),
    Echo(Echo),
    Pinger(Pinger),
    Blaster(Blaster),
    /// Always wants a timeout at the origin and never moves it: a livelock.
    Spinner,
}

impl Node for Toy {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        match self {
            Toy::Sink(s) => s.got.push((now, from, datagram.to_vec())),
            Toy::Echo(e) => e.queue.push_back((from, datagram.to_vec())),
            Toy::Pinger(p) => {
                if p.done_at.is_none() && datagram == p.current.to_be_bytes() {
                    p.current += 1;
                    p.deadline = None;
                    if p.current < p.count {
                        p.send_now = true;
                    } else {
                        p.done_at = Some(now);
                    }
                }
            }
            Toy::Blaster(_) | Toy::Spinner => {}
        }
    }

    fn handle_multicast_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        group: SocketAddr,
        datagram: &[u8],
    ) {
        if let Toy::Sink(s) = self {
            s.groups.push(group);
        }
        self.handle_datagram(now, from, datagram);
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Toy::Pinger(p) if p.deadline.is_some_and(|d| d <= now) => {
                p.deadline = None;
                p.send_now = true;
            }
            Toy::Blaster(b) if b.next.is_some_and(|d| d <= now) => {
                b.due = true;
                b.next = b.interval.map(|i| now + i);
            }
            _ => {}
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let (to, bytes) = match self {
            Toy::Echo(e) => {
                let out = e.queue.pop_front()?;
                e.answered += 1;
                out
            }
            Toy::Pinger(p) => {
                if !p.send_now {
                    return None;
                }
                p.send_now = false;
                p.transmissions += 1;
                p.deadline = Some(now + p.rto);
                (p.peer, p.current.to_be_bytes().to_vec())
            }
            Toy::Blaster(b) => {
                if b.interval.is_some() {
                    if !b.due {
                        return None;
                    }
                    b.due = false;
                }
                let out = b.out.pop_front()?;
                if b.out.is_empty() {
                    b.next = None;
                }
                out
            }
            Toy::Sink(_) | Toy::Spinner => return None,
        };
        buf.get_mut(..bytes.len())?.copy_from_slice(&bytes);
        Some((to, bytes.len()))
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            Toy::Pinger(p) => p.deadline,
            Toy::Blaster(b) => b.next,
            Toy::Spinner => Some(Instant::ZERO),
            Toy::Sink(_) | Toy::Echo(_) => None,
        }
    }
}

fn sink(net: &Network<Toy>, id: NodeId) -> &Sink {
    match net.node(id) {
        Toy::Sink(s) => s,
        other => panic!("{id} is not a sink: {other:?}"),
    }
}

fn pinger(net: &Network<Toy>, id: NodeId) -> &Pinger {
    match net.node(id) {
        Toy::Pinger(p) => p,
        other => panic!("{id} is not a pinger: {other:?}"),
    }
}

/// Numbers carried by the datagrams a sink got, in arrival order.
fn numbers(s: &Sink) -> Vec<u32> {
    s.got
        .iter()
        .map(|(_, _, b)| u32::from_be_bytes(b[..4].try_into().unwrap()))
        .collect()
}

/// Pairs (i, j), i < j, delivered in the opposite order of their numbers.
fn inversions(xs: &[u32]) -> usize {
    let mut n = 0;
    let mut max = None;
    for &x in xs {
        if max.is_some_and(|m| x < m) {
            n += 1;
        }
        max = max.max(Some(x));
    }
    n
}

/// One sender blasting `n` numbered datagrams at a sink over `link`.
fn blast(
    seed: u64,
    n: u32,
    interval: Option<Duration>,
    link: LinkConfig,
) -> (Network<Toy>, NodeId) {
    let mut net = Network::new(seed);
    net.set_default_link(link);
    let s = net.add_node(v6(1), Toy::Sink(Sink::default()));
    net.add_node(v6(2), Toy::Blaster(Blaster::numbered(v6(1), n, interval)));
    net.run_until_idle().unwrap();
    (net, s)
}

#[test]
fn a_perfect_link_delivers_everything_in_order_after_the_delay() {
    let (net, s) = blast(1, 50, None, LinkConfig::default().with_delay(ms(7)));
    let got = &sink(&net, s).got;
    assert_eq!(numbers(sink(&net, s)), (0..50).collect::<Vec<_>>());
    assert!(got
        .iter()
        .all(|(t, from, _)| *t == Instant::from_millis(7) && *from == v6(2)));
    let st = net.stats();
    assert_eq!(
        (st.sent, st.delivered, st.lost, st.duplicated),
        (50, 50, 0, 0)
    );
    assert_eq!(net.now(), Instant::from_millis(7));
}

#[test]
fn loss_rate_roughly_matches_the_configuration() {
    let n = 20_000;
    for p in [0.05, 0.3] {
        let (net, s) = blast(2, n, None, LinkConfig::default().with_loss(p));
        let st = net.stats();
        let got = sink(&net, s).got.len() as u64;
        assert_eq!(st.delivered, got);
        assert_eq!(st.sent, u64::from(n));
        assert_eq!(st.lost + st.delivered, st.sent);
        let rate = st.lost as f64 / f64::from(n);
        let sd = (p * (1.0 - p) / f64::from(n)).sqrt();
        assert!((rate - p).abs() < 5.0 * sd, "p {p}: lost {rate}");
    }
}

#[test]
fn burst_loss_clusters_losses() {
    let n = 40_000u32;
    let burst = BurstLoss {
        enter_bad: 0.01,
        leave_bad: 0.1,
        bad_loss: 0.9,
    };
    let (net, s) = blast(3, n, None, LinkConfig::default().with_burst_loss(burst));
    let delivered: Vec<u32> = numbers(sink(&net, s));
    // Stationary: bad 1/11 of the time, losing 90% there, nothing in the good state.
    let expected = (0.01 / 0.11) * 0.9;
    let rate = net.stats().lost as f64 / f64::from(n);
    assert!(
        (rate - expected).abs() < 0.03,
        "lost {rate}, expected about {expected}"
    );
    // Mean length of a run of consecutive losses: with independent losses at this rate it
    // would be about 1.09; bursts of ~10 datagrams at 90% loss make it several times longer.
    let mut runs = 0u32;
    let mut lost_total = 0u32;
    let mut prev = None;
    for &x in &delivered {
        let gap = match prev {
            None => x,
            Some(p) => x - p - 1,
        };
        if gap > 0 {
            runs += 1;
            lost_total += gap;
        }
        prev = Some(x);
    }
    let mean_run = f64::from(lost_total) / f64::from(runs.max(1));
    assert!(mean_run > 3.0, "mean loss run {mean_run}");
    // The trace names the reason.
    let mut net = Network::new(3);
    net.record_trace(true);
    net.set_default_link(LinkConfig::default().with_burst_loss(BurstLoss {
        enter_bad: 1.0,
        leave_bad: 0.0,
        bad_loss: 1.0,
    }));
    net.add_node(v6(1), Toy::Sink(Sink::default()));
    net.add_node(v6(2), Toy::Blaster(Blaster::numbered(v6(1), 3, None)));
    net.run_until_idle().unwrap();
    let reasons: Vec<DropReason> = net
        .trace()
        .iter()
        .filter_map(|e| match e.event {
            TraceEvent::Dropped { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [DropReason::BurstLoss; 3]);
}

#[test]
fn duplication_delivers_twice() {
    let (net, s) = blast(4, 100, None, LinkConfig::default().with_duplicate(1.0));
    let mut got = numbers(sink(&net, s));
    assert_eq!(got.len(), 200);
    got.sort_unstable();
    let expect: Vec<u32> = (0..100).flat_map(|i| [i, i]).collect();
    assert_eq!(got, expect);
    assert_eq!(net.stats().duplicated, 100);

    let (net, s) = blast(4, 10_000, None, LinkConfig::default().with_duplicate(0.25));
    let extra = sink(&net, s).got.len() as f64 - 10_000.0;
    assert!((extra / 10_000.0 - 0.25).abs() < 0.03, "duplicated {extra}");
    assert_eq!(net.stats().duplicated as f64, extra);
}

#[test]
fn reordering_makes_later_datagrams_overtake() {
    let ordered = LinkConfig::default().with_delay(ms(10));
    let (net, s) = blast(5, 500, Some(ms(1)), ordered);
    assert_eq!(
        inversions(&numbers(sink(&net, s))),
        0,
        "no reordering configured"
    );

    let (net, s) = blast(5, 500, Some(ms(1)), ordered.with_reorder(0.2, ms(30)));
    let got = numbers(sink(&net, s));
    assert_eq!(got.len(), 500, "reordering loses nothing");
    let inv = inversions(&got);
    assert!(inv > 20, "only {inv} datagrams arrived out of order");
    let held = net.stats().reordered;
    assert!((60..140).contains(&held), "{held} held back");

    // Jitter reorders too, and stays within its bounds.
    let (net, s) = blast(5, 500, Some(ms(1)), ordered.with_jitter(ms(5)));
    let sk = sink(&net, s);
    assert!(inversions(&numbers(sk)) > 20);
    for (at, _, b) in &sk.got {
        let sent = Instant::from_millis(u64::from(u32::from_be_bytes(b[..4].try_into().unwrap())));
        let latency = *at - sent;
        assert!(
            latency >= ms(10) && latency <= ms(15),
            "latency {latency:?}"
        );
    }
}

#[test]
fn oversize_datagrams_are_dropped_by_family_specific_header_size() {
    // MTU 100: an IPv4 datagram carries 72 payload bytes, an IPv6 one 52.
    let mut net = Network::new(6);
    net.set_default_link(LinkConfig::default().with_mtu(100));
    let s4 = net.add_node(v4(1), Toy::Sink(Sink::default()));
    let s6 = net.add_node(v6(1), Toy::Sink(Sink::default()));
    let mut b = Blaster::default();
    for (to, len) in [(v4(1), 72), (v4(1), 73), (v6(1), 52), (v6(1), 53)] {
        b.out.push_back((to, vec![7; len]));
    }
    net.add_node(v4(2), Toy::Blaster(b));
    net.record_trace(true);
    net.run_until_idle().unwrap();
    assert_eq!(sink(&net, s4).got.len(), 1);
    assert_eq!(sink(&net, s4).got[0].2.len(), 72);
    assert_eq!(sink(&net, s6).got.len(), 1);
    assert_eq!(sink(&net, s6).got[0].2.len(), 52);
    assert_eq!(net.stats().oversize, 2);
    assert!(net.trace().iter().any(|e| e.event
        == TraceEvent::Dropped {
            id: 1,
            receiver: Some(s4),
            reason: DropReason::Oversize { len: 73, mtu: 100 }
        }));
}

#[test]
fn a_node_claiming_more_than_the_buffer_is_counted_not_trusted() {
    struct Liar(bool);
    impl Node for Liar {
        fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8]) {}
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
            let first = mem::replace(&mut self.0, false);
            first.then(|| (v6(9), buf.len() + 1))
        }
        fn poll_timeout(&mut self) -> Option<Instant> {
            None
        }
    }
    let mut net = Network::new(0);
    net.add_node(v6(1), Liar(true));
    net.run_until_idle().unwrap();
    assert_eq!(net.stats().oversize, 1);
    assert_eq!(net.stats().delivered, 0);
}

#[test]
fn the_step_limit_trips_loudly_with_the_seed() {
    let mut net = Network::new(0xdead_beef);
    net.add_node(v6(1), Toy::Spinner);
    net.set_step_limit(1000);
    let err = net.run_until_idle().unwrap_err();
    assert_eq!(
        err,
        SimError::StepLimit {
            steps: 1000,
            now: Instant::ZERO,
            seed: 0xdead_beef
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("3735928559") && text.contains("1000 steps"),
        "{text}"
    );
    assert!(net.run_until(Instant::from_secs(1)).is_err());
    assert!(matches!(
        net.run_while(|_| true),
        Err(SimError::StepLimit { .. })
    ));
}

#[test]
fn a_node_that_never_stops_sending_trips_the_step_limit() {
    struct Firehose;
    impl Node for Firehose {
        fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8]) {}
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<(SocketAddr, usize)> {
            Some((v6(99), 0))
        }
        fn poll_timeout(&mut self) -> Option<Instant> {
            None
        }
    }
    let mut net = Network::new(0);
    net.add_node(v6(1), Firehose);
    net.set_step_limit(5);
    assert!(matches!(
        net.run_until_idle(),
        Err(SimError::StepLimit { .. })
    ));
    assert!(net.stats().unroutable >= 5 * TRANSMIT_BURST_LIMIT as u64);
}

#[test]
fn run_while_reports_a_stall() {
    let mut net = Network::new(8);
    // Runs until the condition turns false: the pinger's one ping is echoed at 2 ms.
    let p = net.add_node(v6(2), Toy::Pinger(Pinger::new(v6(1), 1, ms(100))));
    net.add_node(v6(1), Toy::Echo(Echo::default()));
    net.run_while(|net| pinger(net, p).done_at.is_none())
        .unwrap();
    assert_eq!(pinger(&net, p).done_at, Some(Instant::from_millis(2)));
    assert_eq!(net.now(), Instant::from_millis(2));

    let mut idle = Network::new(8);
    idle.add_node(v6(1), Toy::Sink(Sink::default()));
    let err = idle.run_while(|_| true).unwrap_err();
    assert_eq!(
        err,
        SimError::Idle {
            now: Instant::ZERO,
            seed: 8
        }
    );
    assert!(err.to_string().contains("seed 8"));
}

#[test]
fn pinger_retransmits_until_echoed_and_timeouts_are_exact() {
    // Perfect link: every ping echoed in 2 ms, so no retransmission and no timeout fires.
    let mut net = Network::new(9);
    net.add_node(v6(1), Toy::Echo(Echo::default()));
    let p = net.add_node(v6(2), Toy::Pinger(Pinger::new(v6(1), 20, ms(100))));
    net.run_until_idle().unwrap();
    assert_eq!(pinger(&net, p).transmissions, 20);
    assert_eq!(pinger(&net, p).done_at, Some(Instant::from_millis(40)));
    assert_eq!(net.stats().timeouts, 0, "stale deadlines must not fire");

    // Drop the first two transmissions: two timeouts, at 100 ms and 200 ms.
    let mut net = Network::new(9);
    net.record_trace(true);
    let dropped = Rc::new(Cell::new(0));
    let d = dropped.clone();
    net.set_filter(move |dg| {
        if dg.from == v6(2) && d.get() < 2 {
            d.set(d.get() + 1);
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    });
    net.add_node(v6(1), Toy::Echo(Echo::default()));
    let p = net.add_node(v6(2), Toy::Pinger(Pinger::new(v6(1), 1, ms(100))));
    net.run_until_idle().unwrap();
    assert_eq!(pinger(&net, p).transmissions, 3);
    assert_eq!(pinger(&net, p).done_at, Some(Instant::from_millis(202)));
    let timeouts: Vec<Instant> = net
        .trace()
        .iter()
        .filter(|e| matches!(e.event, TraceEvent::Timeout { .. }))
        .map(|e| e.at)
        .collect();
    assert_eq!(
        timeouts,
        [Instant::from_millis(100), Instant::from_millis(200)]
    );
    assert_eq!(net.stats().filtered, 2);
}

#[test]
fn pinger_gets_through_a_lossy_duplicating_reordering_link() {
    for seed in 0..20 {
        let mut net = Network::new(seed);
        net.set_default_link(
            LinkConfig::default()
                .with_loss(0.3)
                .with_duplicate(0.2)
                .with_reorder(0.2, ms(50))
                .with_jitter(ms(3)),
        );
        net.add_node(v6(1), Toy::Echo(Echo::default()));
        let p = net.add_node(v6(2), Toy::Pinger(Pinger::new(v6(1), 30, ms(100))));
        net.run_until_idle()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let pg = pinger(&net, p);
        assert!(pg.done_at.is_some(), "seed {seed}");
        assert!(
            pg.transmissions > 30,
            "seed {seed}: losses must cause retransmissions"
        );
    }
}

#[test]
fn multicast_reaches_every_member_but_the_sender() {
    let mut net = Network::new(10);
    let members: Vec<NodeId> = (1..=5)
        .map(|i| net.add_node(v6(i), Toy::Sink(Sink::default())))
        .collect();
    let outsider = net.add_node(v6(50), Toy::Sink(Sink::default()));
    let sender = net.add_node(v6(100), Toy::Blaster(Blaster::numbered(group(), 3, None)));
    for &m in &members {
        net.join(m, group());
    }
    net.join(sender, group());
    net.join(sender, group()); // joining twice is harmless
    assert_eq!(net.members(group()).len(), 6);
    // One member sits behind a lossy link: the copies are judged independently.
    net.set_link(sender, members[4], LinkConfig::default().with_loss(1.0));
    net.run_until_idle().unwrap();
    for &m in &members[..4] {
        let s = sink(&net, m);
        assert_eq!(numbers(s), [0, 1, 2], "{m}");
        assert!(s.got.iter().all(|(_, from, _)| *from == v6(100)));
        assert_eq!(s.groups, [group(); 3], "delivered as multicast");
    }
    assert!(sink(&net, members[4]).got.is_empty());
    assert!(sink(&net, outsider).got.is_empty());
    let st = net.stats();
    assert_eq!((st.sent, st.delivered, st.lost), (3, 12, 3));

    // After leaving, a member gets nothing; an empty group is unroutable.
    for &m in &members {
        net.leave(m, group());
    }
    net.inject(v6(100), group(), b"x");
    net.run_until_idle().unwrap();
    assert_eq!(net.stats().delivered, 12);
    assert_eq!(
        net.stats().unroutable,
        1,
        "only the sender is left in the group"
    );
}

#[test]
fn the_filter_drops_delays_and_rewrites() {
    let mut net = Network::new(11);
    net.set_filter(|dg| match dg.bytes.first() {
        Some(0) => Verdict::Drop,
        Some(1) => Verdict::Delay(ms(500)),
        Some(2) => Verdict::Replace(Bytes::from_static(b"rewritten")),
        _ => Verdict::Deliver,
    });
    let s = net.add_node(v6(1), Toy::Sink(Sink::default()));
    let mut b = Blaster::default();
    for first in [0u8, 1, 2, 3] {
        b.out.push_back((v6(1), vec![first]));
    }
    net.add_node(v6(2), Toy::Blaster(b));
    net.run_until_idle().unwrap();
    let got: Vec<(Instant, Vec<u8>)> = sink(&net, s)
        .got
        .iter()
        .map(|(t, _, b)| (*t, b.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (Instant::from_millis(1), b"rewritten".to_vec()),
            (Instant::from_millis(1), vec![3]),
            (Instant::from_millis(501), vec![1]),
        ]
    );
    assert_eq!(net.stats().filtered, 1);

    // Without the filter everything passes again.
    net.clear_filter();
    net.inject(v6(2), v6(1), &[0]);
    net.run_until_idle().unwrap();
    assert_eq!(sink(&net, s).got.len(), 4);
}

#[test]
fn the_filter_sees_the_scheduled_datagram() {
    let seen = Rc::new(core::cell::RefCell::new(Vec::new()));
    let log = seen.clone();
    let mut net = Network::new(12);
    net.set_default_link(LinkConfig::default().with_delay(ms(3)).with_duplicate(1.0));
    net.set_filter(move |dg| {
        log.borrow_mut().push(dg.clone());
        Verdict::Deliver
    });
    let s = net.add_node(v6(1), Toy::Sink(Sink::default()));
    net.run_until(Instant::from_millis(10)).unwrap();
    net.inject(v6(7), v6(1), b"hi");
    net.run_until_idle().unwrap();
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2);
    for (i, dg) in seen.iter().enumerate() {
        assert_eq!((dg.from, dg.to, dg.receiver), (v6(7), v6(1), s));
        assert_eq!(dg.sent_at, Instant::from_millis(10));
        assert_eq!(dg.deliver_at, Instant::from_millis(13));
        assert_eq!(dg.duplicate, i == 1);
        assert_eq!(&dg.bytes[..], b"hi");
        assert_eq!(dg.id, 0);
    }
}

/// A scenario exercising every random choice, returning its trace.
fn chaotic_run(seed: u64) -> (Vec<TraceEntry>, NetStats) {
    let mut net = Network::new(seed);
    net.record_trace(true);
    net.set_default_link(
        LinkConfig::default()
            .with_loss(0.2)
            .with_duplicate(0.1)
            .with_reorder(0.1, ms(40))
            .with_jitter(ms(4))
            .with_burst_loss(BurstLoss {
                enter_bad: 0.05,
                leave_bad: 0.3,
                bad_loss: 0.7,
            }),
    );
    let echo = net.add_node(v6(1), Toy::Echo(Echo::default()));
    for i in 0..4 {
        let p = net.add_node(v6(10 + i), Toy::Pinger(Pinger::new(v6(1), 15, ms(60))));
        net.join(p, group());
    }
    net.join(echo, group());
    net.add_node(
        v6(99),
        Toy::Blaster(Blaster::numbered(group(), 20, Some(ms(7)))),
    );
    net.run_until_idle().unwrap();
    (net.trace().to_vec(), net.stats())
}

#[test]
fn the_same_seed_gives_the_same_trace_and_different_seeds_differ() {
    let (a, sa) = chaotic_run(1234);
    let (b, sb) = chaotic_run(1234);
    assert!(
        a.len() > 500,
        "the scenario should be busy: {} entries",
        a.len()
    );
    assert!(sa.lost > 0 && sa.duplicated > 0 && sa.reordered > 0);
    assert_eq!(sa, sb);
    assert_eq!(a, b);
    let (c, _) = chaotic_run(1235);
    assert_ne!(a, c);
}

#[test]
fn derived_seeds_are_stable_and_distinct() {
    let net: Network<Toy> = Network::new(5);
    let again: Network<Toy> = Network::new(5);
    let other: Network<Toy> = Network::new(6);
    assert_eq!(net.derive_seed(0), again.derive_seed(0));
    assert_ne!(net.derive_seed(0), net.derive_seed(1));
    assert_ne!(net.derive_seed(0), other.derive_seed(0));
    assert_eq!(net.seed(), 5);
}

#[test]
fn node_mut_between_steps_is_noticed() {
    let mut net = Network::new(13);
    let s = net.add_node(v6(1), Toy::Sink(Sink::default()));
    let b = net.add_node(v6(2), Toy::Blaster(Blaster::default()));
    net.run_until(Instant::from_secs(5)).unwrap();
    assert_eq!(
        net.now(),
        Instant::from_secs(5),
        "an idle run_until still moves the clock"
    );
    assert!(!net.step(), "nothing to do");
    if let Toy::Blaster(bl) = net.node_mut(b) {
        bl.out.push_back((v6(1), b"late".to_vec()));
    }
    assert_eq!(net.next_event_time(), Some(Instant::from_millis(5001)));
    net.run_until_idle().unwrap();
    assert_eq!(
        sink(&net, s).got,
        [(Instant::from_millis(5001), v6(2), b"late".to_vec())]
    );
}

#[test]
fn run_until_stops_at_the_deadline() {
    let mut net = Network::new(14);
    let s = net.add_node(v6(1), Toy::Sink(Sink::default()));
    net.add_node(
        v6(2),
        Toy::Blaster(Blaster::numbered(v6(1), 10, Some(ms(10)))),
    );
    net.run_until(Instant::from_millis(35)).unwrap();
    // Sent at 0, 10, 20, 30; delivered 1 ms later.
    assert_eq!(numbers(sink(&net, s)), [0, 1, 2, 3]);
    assert_eq!(net.now(), Instant::from_millis(35));
    net.run_for(ms(10)).unwrap();
    assert_eq!(numbers(sink(&net, s)), [0, 1, 2, 3, 4]);
    net.run_until_idle().unwrap();
    assert_eq!(sink(&net, s).got.len(), 10);
    assert_eq!(net.now(), Instant::from_millis(91));
}

#[test]
fn unknown_destinations_are_unroutable() {
    let mut net = Network::new(15);
    net.record_trace(true);
    net.add_node(v6(2), Toy::Blaster(Blaster::numbered(v6(77), 2, None)));
    net.run_until_idle().unwrap();
    assert_eq!(net.stats().unroutable, 2);
    assert_eq!(net.stats().delivered, 0);
    let drops = net
        .trace()
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                TraceEvent::Dropped {
                    reason: DropReason::NoRoute,
                    receiver: None,
                    ..
                }
            )
        })
        .count();
    assert_eq!(drops, 2);
}

#[test]
fn per_pair_links_override_the_default_in_one_direction() {
    let mut net = Network::new(16);
    let a = net.add_node(v6(1), Toy::Echo(Echo::default()));
    let p = net.add_node(v6(2), Toy::Pinger(Pinger::new(v6(1), 1, ms(1000))));
    net.set_link(p, a, LinkConfig::default().with_delay(ms(40)));
    assert_eq!(net.link(p, a).delay, ms(40));
    assert_eq!(net.link(a, p).delay, ms(1));
    net.run_until_idle().unwrap();
    assert_eq!(pinger(&net, p).done_at, Some(Instant::from_millis(41)));
    net.clear_link(p, a);
    assert_eq!(*net.link(p, a), *net.default_link());
}

#[test]
fn the_trace_keeps_the_most_recent_entries() {
    let mut net = Network::new(17);
    net.record_trace(true);
    net.set_trace_limit(10);
    net.add_node(v6(1), Toy::Sink(Sink::default()));
    net.add_node(v6(2), Toy::Blaster(Blaster::numbered(v6(1), 100, None)));
    net.run_until_idle().unwrap();
    let trace = net.trace();
    assert_eq!(trace.len(), 10);
    let last = trace.last().unwrap();
    assert!(
        matches!(last.event, TraceEvent::Delivered { id: 99, .. }),
        "{last:?}"
    );
    net.clear_trace();
    assert!(net.trace().is_empty());
    // Off by default.
    let (net, _) = blast(17, 5, None, LinkConfig::default());
    assert!(net.trace().is_empty());
}

#[test]
fn heterogeneous_networks_use_boxed_nodes() {
    let mut net: Network<Box<dyn Node>> = Network::new(18);
    net.add_node(v6(1), Box::new(Toy::Echo(Echo::default())));
    net.add_node(v6(2), Box::new(Toy::Pinger(Pinger::new(v6(1), 3, ms(100)))));
    net.run_until_idle().unwrap();
    assert_eq!(net.stats().delivered, 6);
}

#[test]
#[should_panic(expected = "already sits at")]
fn two_nodes_cannot_share_an_address() {
    let mut net = Network::new(0);
    net.add_node(v6(1), Toy::Spinner);
    net.add_node(v6(1), Toy::Spinner);
}

#[test]
fn many_observers_many_notifications_stay_cheap() {
    // 1000 observers each get 100 notifications: 10^5 datagrams through a lossy link.
    let mut net = Network::new(19);
    net.set_default_link(LinkConfig::default().with_loss(0.01).with_jitter(ms(2)));
    let mut b = Blaster::default();
    let observers: Vec<NodeId> = (0..1000u16)
        .map(|i| net.add_node(v6(1000 + i), Toy::Sink(Sink::default())))
        .collect();
    for round in 0..100u32 {
        for i in 0..1000u16 {
            b.out
                .push_back((v6(1000 + i), round.to_be_bytes().to_vec()));
        }
    }
    net.add_node(v6(1), Toy::Blaster(b));
    net.run_until_idle().unwrap();
    let st = net.stats();
    assert_eq!(st.sent, 100_000);
    assert_eq!(st.delivered + st.lost, 100_000);
    let per_observer = sink(&net, observers[0]).got.len();
    assert!((90..=100).contains(&per_observer));
}

#[test]
fn drop_reasons_and_ids_display() {
    assert_eq!(NodeId(3).to_string(), "node#3");
    assert_eq!(NodeId(3).index(), 3);
    assert_eq!(
        DropReason::Oversize { len: 9, mtu: 8 }.to_string(),
        "oversize (9-byte payload, limit 8)"
    );
    let net: Network<Toy> = Network::new(21);
    assert!(format!("{net:?}").contains("seed: 21"));
}

#[cfg(feature = "std")]
mod pcap_tests {
    use super::*;
    use std::vec::Vec;

    /// Parses a classic little-endian pcap: (link type, records as (secs, usecs, packet)).
    fn parse(file: &[u8]) -> (u32, Vec<(u32, u32, Vec<u8>)>) {
        let le32 = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap());
        assert_eq!(&file[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "pcap magic");
        assert_eq!(&file[4..8], &[2, 0, 4, 0], "version 2.4");
        let linktype = le32(&file[20..24]);
        let mut rest = &file[24..];
        let mut records = Vec::new();
        while !rest.is_empty() {
            let (secs, usecs, incl, orig) = (
                le32(&rest[0..]),
                le32(&rest[4..]),
                le32(&rest[8..]) as usize,
                le32(&rest[12..]) as usize,
            );
            assert_eq!(incl, orig);
            records.push((secs, usecs, rest[16..16 + incl].to_vec()));
            rest = &rest[16 + incl..];
        }
        (linktype, records)
    }

    fn checksum_ok(bytes: &[u8], pseudo: u32) -> bool {
        pcap_fold(pseudo + pcap_sum(bytes)) == 0
    }

    fn pcap_sum(b: &[u8]) -> u32 {
        b.chunks(2)
            .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
            .sum()
    }

    fn pcap_fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("coap-sim-{}-{name}.pcap", std::process::id()))
    }

    #[test]
    fn the_pcap_file_has_the_magic_and_one_record_per_send() {
        let path = temp_path("v4");
        let mut net = Network::new(20);
        net.write_pcap(&path).unwrap();
        net.set_default_link(LinkConfig::default().with_loss(0.5));
        net.add_node(v4(1), Toy::Echo(Echo::default()));
        net.add_node(v4(2), Toy::Pinger(Pinger::new(v4(1), 5, ms(250))));
        net.run_until_idle().unwrap();
        net.finish_pcap().unwrap();
        let file = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        let (linktype, records) = parse(&file);
        assert_eq!(linktype, 101);
        assert_eq!(records.len() as u64, net.stats().sent);
        // The first is the pinger's first ping at time zero, the next its echo after 1 ms (or a
        // retransmission 250 ms later).
        let (secs, usecs, pkt) = &records[0];
        assert_eq!((*secs, *usecs), (0, 0));
        assert_eq!(pkt.len(), 20 + 8 + 4);
        assert_eq!(pkt[0], 0x45);
        assert_eq!(pkt[9], 17);
        assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]), 32);
        assert_eq!(&pkt[12..16], &[192, 0, 2, 2]);
        assert_eq!(&pkt[16..20], &[192, 0, 2, 1]);
        assert!(checksum_ok(&pkt[..20], 0), "IPv4 header checksum");
        let udp = &pkt[20..];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 5683);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 12);
        let pseudo = pcap_sum(&pkt[12..20]) + 17 + 12;
        assert!(checksum_ok(udp, pseudo), "UDP checksum");
        assert_eq!(&udp[8..], &0u32.to_be_bytes());
        // Timestamps follow the virtual clock and never go backwards.
        let times: Vec<u64> = records
            .iter()
            .map(|(s, u, _)| u64::from(*s) * 1_000_000 + u64::from(*u))
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(*times.last().unwrap() <= net.now().as_micros());
    }

    #[test]
    fn the_pcap_file_handles_ipv6_and_multicast() {
        let path = temp_path("v6");
        let mut net = Network::new(21);
        net.write_pcap(&path).unwrap();
        let a = net.add_node(v6(1), Toy::Sink(Sink::default()));
        net.join(a, group());
        net.run_until(Instant::from_micros(1_500_000)).unwrap();
        net.inject(v6(2), group(), b"odd");
        net.run_until_idle().unwrap();
        net.finish_pcap().unwrap();
        // A second finish is a no-op.
        net.finish_pcap().unwrap();
        let file = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (_, records) = parse(&file);
        assert_eq!(records.len(), 1);
        let (secs, usecs, pkt) = &records[0];
        assert_eq!((*secs, *usecs), (1, 500_000));
        assert_eq!(pkt.len(), 40 + 8 + 3);
        assert_eq!(pkt[0] >> 4, 6);
        assert_eq!(pkt[6], 17);
        assert_eq!(u16::from_be_bytes([pkt[4], pkt[5]]), 11);
        assert_eq!(&pkt[24..40], &group_octets());
        let udp = &pkt[40..];
        let pseudo = pcap_sum(&pkt[8..40]) + 11 + 17;
        assert!(checksum_ok(udp, pseudo), "UDP checksum with an odd length");
        assert_eq!(&udp[8..], b"odd");
    }

    fn group_octets() -> [u8; 16] {
        match group().ip() {
            IpAddr::V6(ip) => ip.octets(),
            IpAddr::V4(_) => unreachable!(),
        }
    }

    #[test]
    fn mixed_families_are_written_as_ipv6_and_huge_datagrams_skipped() {
        let mut w = pcap::PcapWriter::new(Vec::new()).unwrap();
        assert!(w.write_udp(Instant::ZERO, v4(1), v6(1), b"x").unwrap());
        assert!(!w
            .write_udp(Instant::ZERO, v4(1), v4(2), &[0; 65_508])
            .unwrap());
        assert!(w
            .write_udp(Instant::ZERO, v4(1), v4(2), &[0; 65_507])
            .unwrap());
        assert_eq!(w.records(), 2);
        let file = w.into_inner();
        let (_, records) = parse(&file);
        let pkt = &records[0].2;
        assert_eq!(pkt[0] >> 4, 6);
        assert_eq!(
            &pkt[8..24],
            &Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets()
        );
        assert_eq!(records[1].2.len(), 65_535);
    }

    #[test]
    fn the_env_var_template_takes_the_seed() {
        use std::ffi::OsStr;
        assert_eq!(
            pcap::path_for_seed(OsStr::new("run-{seed}.pcap"), 42),
            std::path::PathBuf::from("run-42.pcap")
        );
        assert_eq!(
            pcap::path_for_seed(OsStr::new("fixed.pcap"), 42),
            std::path::PathBuf::from("fixed.pcap")
        );
    }

    #[test]
    fn write_errors_surface_in_finish() {
        struct Broken(u32);
        impl std::io::Write for Broken {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0 -= 1;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut net = Network::new(22);
        // The header goes through; the first record does not.
        net.capture_pcap(Broken(1)).unwrap();
        net.add_node(v6(1), Toy::Sink(Sink::default()));
        net.inject(v6(2), v6(1), b"a");
        net.inject(v6(2), v6(1), b"b");
        net.run_until_idle().unwrap();
        let err = net.finish_pcap().unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(
            net.stats().delivered,
            2,
            "capture errors do not disturb the run"
        );
    }
}
