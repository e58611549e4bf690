//! Properties of request/response exchanges over a lossy, duplicating, reordering simulated
//! network, checked over many seeds.
//!
//! A failing case prints its seed; rerun it alone with `SIM_SEED=<seed> cargo test -p
//! coap-tests --test sim_exchanges` and, to look at the traffic, `COAP_SIM_PCAP=run.pcap`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use coap_proto::endpoint::{Config, Event, Failure, RequestId};
use coap_proto::msg::Code;
use coap_proto::sim::{LinkConfig, Network, NodeId, TraceEvent};
use coap_proto::{Instant, Request, Response};
use coap_tests::Host;
use proptest::prelude::*;

const SERVER: &str = "10.0.0.1:5683";
const CLIENT: &str = "10.0.0.2:40000";

/// How a simulated server answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Respond as soon as the request arrives (piggybacked for CON).
    AtOnce,
    /// Respond after this long (a separate response for CON once past the empty-ACK delay).
    After(Duration),
}

/// An echo server: answers each request with its own body.
fn echo_server(seed: u64, answer: Answer) -> Host {
    let mut host = Host::new(
        Config::default(),
        seed,
        Box::new(|req| Response::content(req.payload.clone())),
    );
    if let Answer::After(d) = answer {
        host.delay = Some(d);
    }
    host
}

/// How often the server application saw each request body.
fn handled(server: &Host) -> HashMap<Bytes, u32> {
    let mut counts = HashMap::new();
    for req in &server.seen {
        *counts.entry(req.payload.clone()).or_default() += 1;
    }
    counts
}

struct Scenario {
    seed: u64,
    loss: f64,
    duplicate: f64,
    reorder: f64,
    requests: usize,
    non_every: usize,
    answer: Answer,
    nstart: usize,
}

struct RunResult {
    net: Network<Host>,
    started: HashMap<RequestId, (Instant, Bytes)>,
    client_id: NodeId,
    server_id: NodeId,
    net_end: Instant,
}

impl RunResult {
    fn client(&self) -> &Host {
        self.net.node(self.client_id)
    }
    fn server(&self) -> &Host {
        self.net.node(self.server_id)
    }
}

fn run(s: &Scenario) -> RunResult {
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    let client_addr: SocketAddr = CLIENT.parse().unwrap();
    let mut net = Network::new(s.seed);
    net.record_trace(true);
    net.set_default_link(
        LinkConfig::default()
            .with_loss(s.loss)
            .with_duplicate(s.duplicate)
            .with_reorder(s.reorder, Duration::from_millis(400))
            .with_delay(Duration::from_millis(10))
            .with_jitter(Duration::from_millis(20)),
    );
    let mut client_config = Config::default();
    client_config.nstart = s.nstart;
    // Progress events tell when each request first goes out: behind NSTART a request may
    // wait in the queue, and the RFC's time bounds start at its first transmission.
    client_config.report_progress = true;
    let mut client = Host::new(
        client_config,
        net.derive_seed(1),
        Box::new(|_| Response::new(Code::NOT_FOUND)),
    );
    let server = echo_server(net.derive_seed(2), s.answer);
    let mut started = HashMap::new();
    for i in 0..s.requests {
        let body = Bytes::from(format!("request {i}"));
        let mut req = Request::post().with_path("echo").with_payload(body.clone());
        if s.non_every != 0 && i % s.non_every == 0 {
            req = req.non();
        }
        let id = client
            .ep
            .request(Instant::ZERO, server_addr, req)
            .expect("admitted");
        started.insert(id, (Instant::ZERO, body));
    }
    let s_id = net.add_node(server_addr, server);
    let c_id = net.add_node(client_addr, client);
    net.run_until_idle()
        .unwrap_or_else(|e| panic!("seed {}: {e}", s.seed));
    let net_end = net.now();
    RunResult {
        net,
        started,
        client_id: c_id,
        server_id: s_id,
        net_end,
    }
}

/// Checks what must hold for any seed.
/// Retransmissions of each Confirmable message the client sent, read off the network trace:
/// the first comes after a random timeout in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR],
/// each later one after twice the previous interval, and there are at most MAX_RETRANSMIT.
fn check_retransmission_timing(seed: u64, r: &RunResult) -> Result<usize, TestCaseError> {
    let cfg = Config::default();
    let client: SocketAddr = CLIENT.parse().unwrap();
    let mut sends: HashMap<Bytes, Vec<Instant>> = HashMap::new();
    for entry in r.net.trace() {
        if let TraceEvent::Sent { from, bytes, .. } = &entry.event {
            // Confirmable requests only (type bits 00, a request code).
            if *from == client
                && bytes.len() >= 4
                && bytes[0] & 0x30 == 0
                && (1..32).contains(&bytes[1])
            {
                sends.entry(bytes.clone()).or_default().push(entry.at);
            }
        }
    }
    for times in sends.values() {
        prop_assert!(
            times.len() as u32 <= 1 + cfg.max_retransmit,
            "seed {}: {} transmissions",
            seed,
            times.len()
        );
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        if let Some(first) = gaps.first() {
            prop_assert!(
                *first >= cfg.ack_timeout
                    && *first <= cfg.ack_timeout.mul_f64(cfg.ack_random_factor),
                "seed {}: first retransmission after {:?}",
                seed,
                first
            );
        }
        for w in gaps.windows(2) {
            prop_assert_eq!(w[1], w[0] * 2, "seed {}: back-off does not double", seed);
        }
    }
    Ok(sends.values().filter(|t| t.len() > 1).count())
}

fn check(s: &Scenario, r: &RunResult) -> Result<(), TestCaseError> {
    let seed = s.seed;
    let cfg = Config::default();
    check_retransmission_timing(seed, r)?;
    // Every request ends in exactly one final event.
    prop_assert_eq!(
        r.client().outcomes.len(),
        s.requests,
        "seed {}: requests without an end",
        seed
    );
    for (id, events) in &r.client().outcomes {
        prop_assert_eq!(
            events.len(),
            1,
            "seed {}: {} ended {} times",
            seed,
            id,
            events.len()
        );
        let (at, event) = &events[0];
        let (_, body) = &r.started[id];
        let started = r
            .client()
            .first_sent
            .get(id)
            .unwrap_or_else(|| panic!("seed {seed}: {id} never sent"));
        let bound = cfg.max_transmit_wait() + cfg.exchange_lifetime();
        prop_assert!(
            *at - *started <= bound,
            "seed {}: {} ended after {:?}",
            seed,
            id,
            *at - *started
        );
        match event {
            Event::Response { response, .. } => {
                prop_assert_eq!(response.code, Code::CONTENT);
                prop_assert_eq!(&response.payload, body, "seed {}: wrong response", seed);
                // The server handled it, exactly once.
                prop_assert_eq!(
                    handled(r.server()).get(body).copied(),
                    Some(1),
                    "seed {}",
                    seed
                );
            }
            Event::RequestFailed { reason, .. } => {
                prop_assert_eq!(*reason, Failure::Timeout, "seed {}", seed);
            }
            other => prop_assert!(false, "seed {}: unexpected final event {:?}", seed, other),
        }
    }
    // No request reached the application twice, however often the network duplicated it.
    for (body, n) in &handled(r.server()) {
        prop_assert_eq!(*n, 1, "seed {}: {:?} handled {} times", seed, body, n);
    }
    // Once the network is silent and the lifetimes have run out, every table is empty.
    prop_assert!(
        r.client().ep.table_sizes().is_empty(),
        "seed {}: client {:?}",
        seed,
        r.client().ep.table_sizes()
    );
    prop_assert!(
        r.server().ep.table_sizes().is_empty(),
        "seed {}: server {:?}",
        seed,
        r.server().ep.table_sizes()
    );
    prop_assert!(
        r.net_end <= Instant::ZERO + Duration::from_secs(2000),
        "seed {}",
        seed
    );
    Ok(())
}

fn seeds() -> impl Strategy<Value = u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => Just(seed).boxed(),
        None => any::<u64>().boxed(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn lossy_duplicating_reordering_network(seed in seeds(), loss in 0.0f64..0.3, dup in 0.0f64..0.3, reorder in 0.0f64..0.3) {
        let s = Scenario { seed, loss, duplicate: dup, reorder, requests: 24, non_every: 4, answer: Answer::AtOnce, nstart: 4 };
        let r = run(&s);
        check(&s, &r)?;
    }

    #[test]
    fn thirty_percent_loss_with_separate_responses(seed in seeds()) {
        let s = Scenario { seed, loss: 0.3, duplicate: 0.1, reorder: 0.1, requests: 16, non_every: 0, answer: Answer::After(Duration::from_secs(3)), nstart: 1 };
        let r = run(&s);
        check(&s, &r)?;
    }
}

#[test]
fn clean_network_answers_everything() {
    let s = Scenario {
        seed: 1,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        requests: 50,
        non_every: 3,
        answer: Answer::AtOnce,
        nstart: 1,
    };
    let r = run(&s);
    check(&s, &r).unwrap();
    assert!(r
        .client()
        .outcomes
        .values()
        .all(|e| matches!(e[0].1, Event::Response { .. })));
}

#[test]
fn heavy_duplication_reaches_the_handler_once() {
    let s = Scenario {
        seed: 7,
        loss: 0.0,
        duplicate: 0.9,
        reorder: 0.5,
        requests: 40,
        non_every: 2,
        answer: Answer::AtOnce,
        nstart: 8,
    };
    let r = run(&s);
    check(&s, &r).unwrap();
    assert_eq!(handled(r.server()).len(), 40);
    assert!(
        r.server().ep.stats().duplicates > 10,
        "the network did duplicate"
    );
}

#[test]
fn lossy_runs_really_retransmit_and_recover() {
    let s = Scenario {
        seed: 99,
        loss: 0.3,
        duplicate: 0.1,
        reorder: 0.1,
        requests: 30,
        non_every: 0,
        answer: Answer::After(Duration::from_secs(3)),
        nstart: 1,
    };
    let r = run(&s);
    check(&s, &r).unwrap();
    let stats = r.client().ep.stats();
    assert!(stats.retransmissions > 5, "{stats:?}");
    let retransmitted = check_retransmission_timing(s.seed, &r).unwrap();
    assert!(
        retransmitted > 3,
        "the trace shows {retransmitted} retransmitted requests"
    );
    let answered = r
        .client()
        .outcomes
        .values()
        .filter(|e| matches!(e[0].1, Event::Response { .. }))
        .count();
    // With four retransmissions a request is lost only if all five copies or all ACKs are.
    assert!(answered >= 27, "only {answered} of 30 answered");
    assert!(
        r.server().ep.stats().retransmissions > 0,
        "separate CON responses were retransmitted"
    );
}
