//! A server with several engines on one port (`ServerBuilder::engines`), over real loopback
//! sockets: requests reach whichever engine the system picks for their peer and are all
//! answered, one notifier reaches the observers of every engine, and a shutdown ends them all.
//!
//! Every test is bounded by `tokio::time::timeout` and runs on a runtime with two worker
//! threads, so the engines really run side by side.
#![cfg(unix)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_tokio::{
    Client, Error, IncomingRequest, ObserveHooks, Response, Router, Server, ServerHandle,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const ENGINES: usize = 2;

/// The most clients opened while looking for one on each engine. The system spreads peers by
/// a hash of their address: the chance that 64 fresh ports all land on one of two engines is
/// 2^-63.
const MAX_PROBES: usize = 64;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took too long")
}

/// Echoes the query, and has an observable counter whose observer count goes to `observers`.
fn app(value: Arc<AtomicUsize>, observers: watch::Sender<usize>) -> Router {
    let hooks = ObserveHooks::new().on_observer_count(move |n| {
        observers.send_replace(n);
    });
    Router::new()
        .get("/echo", |req: IncomingRequest| async move {
            Response::content(req.query_value("n").unwrap_or_default().to_string())
        })
        .observable_with(
            "/counter",
            move |_req: IncomingRequest| {
                let v = value.load(Ordering::SeqCst);
                async move { Response::content(v.to_string()) }
            },
            hooks,
        )
}

struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    task: JoinHandle<Result<(), Error>>,
    value: Arc<AtomicUsize>,
    observers: watch::Receiver<usize>,
}

async fn start() -> Running {
    let server = Server::builder()
        .engines(ENGINES)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    assert_eq!(server.engines(), ENGINES);
    let value = Arc::new(AtomicUsize::new(0));
    let (tx, observers) = watch::channel(0);
    let addr = server.local_addr();
    let handle = server.handle();
    let task = tokio::spawn(server.serve(app(Arc::clone(&value), tx)));
    Running {
        addr,
        handle,
        task,
        value,
        observers,
    }
}

/// Opens clients until there is one on each engine, telling them apart by which engine's
/// count of received datagrams grows with each client's first request. Returns the clients
/// by engine.
async fn client_on_each_engine(s: &Running) -> Vec<Client> {
    let mut found: Vec<Option<Client>> = (0..ENGINES).map(|_| None).collect();
    for probe in 0..MAX_PROBES {
        let before = s.handle.engine_stats().await.unwrap();
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let rsp = client
            .get(format!("coap://{}/echo?n={probe}", s.addr))
            .await
            .unwrap();
        assert_eq!(rsp.payload_str(), Some(probe.to_string().as_str()));
        let after = s.handle.engine_stats().await.unwrap();
        let grew: Vec<usize> = (0..ENGINES)
            .filter(|&e| after[e].datagrams_received > before[e].datagrams_received)
            .collect();
        // One request, one datagram: exactly one engine saw it.
        assert_eq!(grew.len(), 1, "before {before:?}, after {after:?}");
        let slot = &mut found[grew[0]];
        if slot.is_none() {
            *slot = Some(client);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
    }
    panic!("{MAX_PROBES} clients all reached the same engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_by_the_engine_of_its_peer() {
    bounded(async {
        let s = start().await;
        // Many clients at once, each with many requests in flight.
        let mut tasks = Vec::new();
        for c in 0..16 {
            let addr = s.addr;
            tasks.push(tokio::spawn(async move {
                let client = Client::bind("127.0.0.1:0").await.unwrap();
                let mut pending = Vec::new();
                for r in 0..25 {
                    let n = c * 100 + r;
                    let client = client.clone();
                    pending.push(tokio::spawn(async move {
                        let rsp = client
                            .get(format!("coap://{addr}/echo?n={n}"))
                            .await
                            .unwrap();
                        assert_eq!(rsp.payload_str(), Some(n.to_string().as_str()));
                    }));
                }
                for p in pending {
                    p.await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let per_engine = s.handle.engine_stats().await.unwrap();
        assert_eq!(per_engine.len(), ENGINES);
        let total = s.handle.stats().await.unwrap();
        assert_eq!(total.datagrams_received, 16 * 25);
        assert_eq!(
            per_engine.iter().map(|e| e.datagrams_received).sum::<u64>(),
            total.datagrams_received
        );
        // Nothing reached an engine that did not know it.
        assert_eq!(total.unmatched_acks + total.unmatched_responses, 0);
        assert!(s.handle.pending_incoming().await.unwrap().is_empty());

        // And the engines really are separate: clients are spread over both.
        let clients = client_on_each_engine(&s).await;
        assert_eq!(clients.len(), ENGINES);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notifier_reaches_the_observers_of_every_engine() {
    bounded(async {
        let mut s = start().await;
        let clients = client_on_each_engine(&s).await;
        let notifier = s.handle.notifier("/counter");
        let mut observations = Vec::new();
        for client in &clients {
            let mut obs = client
                .observe(format!("coap://{}/counter", s.addr))
                .await
                .unwrap();
            let first = obs.next().await.unwrap().unwrap();
            assert_eq!(first.payload_str(), Some("0"));
            observations.push(obs);
        }
        // Counts are totals over the engines, in the hook as through the notifier.
        s.observers.wait_for(|n| *n == ENGINES).await.unwrap();
        assert_eq!(notifier.observer_count().await.unwrap(), ENGINES);

        // A representation given to the notifier goes to every observer.
        assert_eq!(
            notifier
                .notify_with(Response::content("direct"))
                .await
                .unwrap(),
            ENGINES
        );
        for obs in &mut observations {
            let n = obs.next().await.unwrap().unwrap();
            assert_eq!(n.payload_str(), Some("direct"));
        }

        // Without one, each engine has the route render the new state for its observers.
        s.value.store(5, Ordering::SeqCst);
        assert_eq!(notifier.notify().await.unwrap(), ENGINES);
        for obs in &mut observations {
            let n = obs.next().await.unwrap().unwrap();
            assert_eq!(n.payload_str(), Some("5"));
        }

        // One observer leaves: the totals follow.
        let mut first = observations.remove(0);
        assert!(first.cancel().await.unwrap());
        while first.next().await.is_some() {}
        s.observers.wait_for(|n| *n == ENGINES - 1).await.unwrap();
        assert_eq!(notifier.observer_count().await.unwrap(), ENGINES - 1);
        s.task.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_every_engine() {
    bounded(async {
        let s = start().await;
        let clients = client_on_each_engine(&s).await;
        s.handle.shutdown().await.unwrap();
        s.task.await.unwrap().unwrap();
        // Every engine is gone: new requests get no answer (each engine's socket stays open
        // while a handle holds it, but nothing reads it).
        let client = &clients[1];
        let err = client
            .get(format!("coap://{}/echo?n=1", s.addr))
            .timeout(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        // Once the handles are gone, so are the sockets: the port is free again.
        let addr = s.addr;
        drop(s.handle);
        drop(s.observers);
        std::net::UdpSocket::bind(addr).expect("every engine's socket is closed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_signal_stops_every_engine() {
    bounded(async {
        let server = Server::builder()
            .engines(3)
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let addr = server.local_addr();
        let (tx, observers) = watch::channel(0);
        let (stop, mut stopping) = watch::channel(false);
        let task = tokio::spawn(server.serve_with_shutdown(
            app(Arc::new(AtomicUsize::new(0)), tx),
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            },
        ));
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let rsp = client.get(format!("coap://{addr}/echo?n=3")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("3"));
        stop.send_replace(true);
        task.await.unwrap().unwrap();
        drop(observers);
        std::net::UdpSocket::bind(addr).expect("every engine's socket is closed");
    })
    .await;
}

/// With several engines on a port, a request sent to a group the server joined is answered
/// once, by the engine whose socket joined, and as a multicast request (RFC 7252 §8.2: a
/// request for a missing resource draws no answer).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_request_is_answered_by_one_engine() {
    use std::net::Ipv4Addr;
    bounded(async {
        let mut config = coap_tokio::Config::default();
        config.default_leisure = Duration::from_millis(50);
        let server = Server::builder()
            .engines(ENGINES)
            .config(config)
            .bind("0.0.0.0:0")
            .await
            .unwrap();
        // Joined on the loopback interface, and the client bound to loopback: nothing
        // leaves the host.
        server
            .join_multicast_v4(coap_tokio::ALL_COAP_NODES_V4, Ipv4Addr::LOCALHOST)
            .unwrap();
        let port = server.local_addr().port();
        let (tx, _observers) = watch::channel(0);
        let handle = server.handle();
        let task = tokio::spawn(server.serve(app(Arc::new(AtomicUsize::new(0)), tx)));
        let group = format!("coap://{}:{port}", coap_tokio::ALL_COAP_NODES_V4);
        // Every socket of the port hears a group unless told not to, whichever engine the
        // peer hashes to: each request would be answered once per engine.
        for n in 0..3 {
            let client = Client::bind("127.0.0.1:0").await.unwrap();
            let mut answers = client
                .get(format!("{group}/echo?n={n}"))
                .timeout(Duration::from_millis(1000))
                .multicast()
                .await
                .unwrap();
            let mut got = Vec::new();
            while let Some(rsp) = answers.next().await {
                got.push(rsp.unwrap().payload_str().unwrap_or_default().to_string());
            }
            assert_eq!(got, [n.to_string()]);
            let mut answers = client
                .get(format!("{group}/missing"))
                .timeout(Duration::from_millis(200))
                .multicast()
                .await
                .unwrap();
            assert!(answers.next().await.is_none());
        }
        handle.shutdown().await.unwrap();
        task.await.unwrap().unwrap();
    })
    .await;
}
