//! The engine's timers with the RFC's default transmission parameters, which only tokio's
//! paused clock makes quick to test: the engine reads time through tokio, so retransmissions,
//! the empty ACK and the timeout happen in virtual time and no test sleeps on the wall
//! clock. The scenarios every runtime crate shares (with short timers instead) run against
//! this crate, and against the others, in the `coap-tests` crate (`tests/end_to_end.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_tokio::{Client, Error, IncomingRequest, MessageType, Response, Router, Server};
use tokio::net::UdpSocket;

/// The bound for a whole test, in virtual time.
const LIMIT: Duration = Duration::from_secs(600);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

/// A UDP socket that never answers and counts what it receives.
async fn silent_peer() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while socket.recv_from(&mut buf).await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out_after_the_default_retransmissions() {
    bounded(async {
        let (addr, count) = silent_peer().await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let start = tokio::time::Instant::now();
        let err = client.get(format!("coap://{addr}/x")).await.unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        // MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2) is between 62 and 93 s with the defaults.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(62) && waited <= Duration::from_secs(94),
            "{waited:?}"
        );
        // The request and MAX_RETRANSMIT = 4 retransmissions.
        assert_eq!(count.load(Ordering::SeqCst), 5);
        assert!(client.pending_requests().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_default_empty_ack_delay_spares_a_slow_handler_retransmissions() {
    bounded(async {
        let app = Router::new().get("/slow", |_req: IncomingRequest| async {
            // Far longer than every retransmission time of the client (2 to 3 s first).
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::content("done")
        });
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.serve(app));
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let start = tokio::time::Instant::now();
        let rsp = client.get(format!("coap://{addr}/slow")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("done"));
        // A separate response comes in its own Confirmable message (RFC 7252 §5.2.2).
        assert_eq!(rsp.message_type(), MessageType::Con);
        assert!(start.elapsed() >= Duration::from_secs(30));
        // The empty ACK, 100 ms after the request, stopped the client's retransmissions.
        assert_eq!(client.stats().await.unwrap().retransmissions, 0);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_request_timeout_counts_from_the_first_poll_and_ends_the_exchange() {
    bounded(async {
        let (addr, count) = silent_peer().await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let request = client
            .get(format!("coap://{addr}/x"))
            .timeout(Duration::from_secs(5))
            .send();
        // Not polled yet: nothing is sent and the time does not count.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(count.load(Ordering::SeqCst), 0);
        let start = tokio::time::Instant::now();
        let err = request.await.unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // The request and its first retransmission (2 to 3 s); the second would be due
        // 4 to 6 s after that.
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(client.pending_requests().await.unwrap().is_empty());
    })
    .await;
}

/// More requests at once than the command queue holds (1024): those beyond it wait for room,
/// and every one is answered, for the URI it named.
#[tokio::test]
async fn requests_beyond_the_command_queue_wait_and_are_answered() {
    let app = Router::new().prefix_get("/echo", |req: IncomingRequest| async move {
        Response::content(req.path_string())
    });
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(app));
    let mut config = coap_tokio::Config::default();
    config.nstart = 64;
    let client = Client::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1500 {
        let client = client.clone();
        // Runs of the same URI and changes between them.
        let path = format!("/echo/{}", i / 3 % 7);
        tasks.spawn(async move {
            let rsp = client
                .get(format!("coap://{addr}{path}"))
                .timeout(Duration::from_secs(20))
                .await;
            (path, rsp)
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
        .await
        .expect("the requests took too long");
    assert_eq!(all.len(), 1500);
    for (path, rsp) in all {
        let rsp = rsp.unwrap();
        assert_eq!(rsp.payload_str(), Some(path.as_str()));
    }
}
