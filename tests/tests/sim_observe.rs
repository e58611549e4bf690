//! Observe (RFC 7641) at scale over a lossy, duplicating, reordering simulated network.
//!
//! Rerun a failing case with `SIM_SEED=<seed>`.

use std::cell::Cell;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use coap_proto::endpoint::Config;
use coap_proto::msg::Code;
use coap_proto::sim::{LinkConfig, Network, NodeId, Verdict};
use coap_proto::{Instant, Request, Response};
use coap_tests::Host;

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            1,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        )),
        40000,
    )
}

fn state_of(payload: &[u8]) -> u32 {
    std::str::from_utf8(payload).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_observers_through_twenty_percent_loss() {
    let seed: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let observers = 1000;
    let changes = 100u32;
    let server_addr: SocketAddr = "[2001:db8::1]:5683".parse().unwrap();
    let mut net = Network::new(seed);
    net.set_default_link(
        LinkConfig::default()
            .with_loss(0.2)
            .with_duplicate(0.05)
            .with_reorder(0.1, Duration::from_millis(500))
            .with_delay(Duration::from_millis(5))
            .with_jitter(Duration::from_millis(20)),
    );
    let state = Rc::new(Cell::new(0u32));
    let mut server_config = Config::default();
    server_config.max_observers_per_resource = 2000;
    // A Confirmable notification at least every 30 s (instead of 24 h), so observers that
    // vanish are found out within the test.
    server_config.con_notification_interval = Duration::from_secs(30);
    let current = Rc::clone(&state);
    let mut server = Host::new(
        server_config,
        net.derive_seed(0),
        Box::new(move |_req| Response::content(current.get().to_string()).with_max_age(60)),
    );
    server.accept_observers = true;
    let s = net.add_node(server_addr, server);
    let mut clients: Vec<NodeId> = Vec::new();
    for i in 0..observers {
        let mut host = Host::new(
            Config::default(),
            net.derive_seed(1 + i as u64),
            Box::new(|_| Response::new(Code::NOT_FOUND)),
        );
        host.ep
            .observe(
                Instant::ZERO,
                server_addr,
                Request::get().with_path("state"),
            )
            .expect("admitted");
        clients.push(net.add_node(client_addr(i), host));
    }
    net.run_for(Duration::from_secs(20)).unwrap();
    for v in 1..=changes {
        state.set(v);
        let now = net.now();
        net.node_mut(s).ep.notify(
            now,
            "/state",
            Some(Response::content(v.to_string()).with_max_age(60)),
        );
        net.run_for(Duration::from_millis(700)).unwrap();
    }
    // Long enough for every observer whose last notification was lost to re-register.
    net.run_for(Duration::from_secs(200)).unwrap();

    for (i, &c) in clients.iter().enumerate() {
        let host = net.node(c);
        let fresh: Vec<u32> = host
            .notifications
            .iter()
            .filter(|n| n.3)
            .map(|n| state_of(&n.2.payload))
            .collect();
        if fresh.last() != Some(&changes) {
            for (at, _, msg, fresh) in &host.notifications {
                eprintln!(
                    "{at} Observe={:?} {:?} fresh={fresh}",
                    msg.options.observe(),
                    msg.payload
                );
            }
            eprintln!("outcomes {:?}", host.outcomes);
        }
        assert_eq!(
            fresh.last(),
            Some(&changes),
            "seed {seed}: observer {i} ends at {:?}",
            fresh.last()
        );
        assert!(
            fresh.windows(2).all(|w| w[0] <= w[1]),
            "seed {seed}: observer {i} went back in time: {fresh:?}"
        );
    }
    assert_eq!(net.node(s).ep.observer_count("/state"), observers);

    // Half the observers vanish: nothing reaches them any more, nothing comes back.
    let vanished: Vec<SocketAddr> = (0..observers / 2).map(client_addr).collect();
    let gone = vanished.clone();
    net.set_filter(move |d| {
        if gone.contains(&d.to) || gone.contains(&d.from) {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    });
    // The resource keeps changing; within 30 s every observer is due a Confirmable
    // notification, which times out after MAX_TRANSMIT_WAIT (93 s) for the vanished ones.
    for k in 1..=8 {
        state.set(changes + k);
        let now = net.now();
        net.node_mut(s).ep.notify(
            now,
            "/state",
            Some(Response::content((changes + k).to_string()).with_max_age(60)),
        );
        net.run_for(Duration::from_secs(10)).unwrap();
    }
    net.run_for(Duration::from_secs(100)).unwrap();
    let left = net.node(s).ep.observer_count("/state");
    assert_eq!(
        left,
        observers - vanished.len(),
        "seed {seed}: vanished observers are removed"
    );

    // The rest stop observing (passive cancellation): their next notification is reset.
    let now = net.now();
    for &c in &clients[observers / 2..] {
        let ids: Vec<_> = net.node(c).ep.pending_requests().map(|p| p.0).collect();
        for id in ids {
            net.node_mut(c).ep.cancel(now, id);
        }
    }
    net.node_mut(s).ep.notify(
        now,
        "/state",
        Some(Response::content("final").with_max_age(60)),
    );
    net.clear_filter();
    for &c in &clients[..observers / 2] {
        let ids: Vec<_> = net.node(c).ep.pending_requests().map(|p| p.0).collect();
        for id in ids {
            net.node_mut(c).ep.cancel(now, id);
        }
    }
    // Notifications to cancelled observers are reset until the server has forgotten them
    // all; then every table drains.
    for _ in 0..20 {
        if net.node(s).ep.observer_count("/state") == 0 {
            break;
        }
        let now = net.now();
        net.node_mut(s).ep.notify(
            now,
            "/state",
            Some(Response::content("final").with_max_age(60)),
        );
        net.run_for(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(net.node(s).ep.observer_count("/state"), 0, "seed {seed}");
    net.run_until_idle().unwrap();
    assert!(
        net.node(s).ep.table_sizes().is_empty(),
        "{:?}",
        net.node(s).ep.table_sizes()
    );
    for &c in &clients {
        assert!(
            net.node(c).ep.table_sizes().is_empty(),
            "{:?}",
            net.node(c).ep.table_sizes()
        );
    }
}
