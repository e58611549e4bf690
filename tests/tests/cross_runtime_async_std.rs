//! Runtimes talk to each other: a tokio client (`coap-tokio`) against a server of
//! `coap-async-std` served on async-std's runtime. GET, block-wise PUT and GET, and an
//! observation with notifications and active cancellation, on 127.0.0.1, bounded in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bound of the whole test.
const LIMIT: Duration = Duration::from_secs(60);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Binds a coap-async-std server with a GET route, a block-wise PUT and GET, and an
/// observable counter, and serves it on async-std's runtime.
fn start_async_std_server(
    value: Arc<AtomicUsize>,
) -> (std::net::SocketAddr, coap_async_std::ServerHandle) {
    use coap_async_std::{Code, IncomingRequest, Response, Router, Server};

    let app = Router::new()
        .get("/hello", |req: IncomingRequest| async move {
            Response::content(format!("hello {}", req.query_value("who").unwrap_or("?")))
        })
        .put("/upload", |req: IncomingRequest| async move {
            let intact = req.payload()[..] == pattern(req.payload().len())[..];
            Response::new(Code::CHANGED).with_payload(format!("{} {intact}", req.payload().len()))
        })
        .get("/big", |_req: IncomingRequest| async {
            Response::content(pattern(40_000))
        })
        .observable("/counter", move |_req: IncomingRequest| {
            let v = value.load(Ordering::SeqCst);
            async move { Response::content(v.to_string()) }
        });
    let server = async_std::task::block_on(Server::bind("127.0.0.1:0")).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    async_std::task::spawn(server.serve(app));
    (addr, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_against_an_async_std_server() {
    let value = Arc::new(AtomicUsize::new(10));
    let (addr, handle) = start_async_std_server(Arc::clone(&value));
    let test = async {
        let client = coap_tokio::Client::bind("127.0.0.1:0").await.unwrap();

        let rsp = client
            .get(format!("coap://{addr}/hello?who=tokio"))
            .await
            .unwrap();
        assert_eq!(rsp.code(), coap_tokio::Code::CONTENT);
        assert_eq!(rsp.payload_str(), Some("hello tokio"));

        // Block1 upload (RFC 7959 §2.5), reassembled by the async-std server's engine.
        let rsp = client
            .put(format!("coap://{addr}/upload"))
            .payload(pattern(30_000))
            .await
            .unwrap();
        assert_eq!(rsp.code(), coap_tokio::Code::CHANGED);
        assert_eq!(rsp.payload_str(), Some("30000 true"));

        // Block2 download the other way.
        let rsp = client.get(format!("coap://{addr}/big")).await.unwrap();
        assert!(rsp.payload()[..] == pattern(40_000)[..]);

        // Observation: the registration's answer, two notifications, active cancellation.
        let mut obs = client
            .observe(format!("coap://{addr}/counter"))
            .await
            .unwrap();
        let first = obs.next().await.unwrap().unwrap();
        assert_eq!(first.payload_str(), Some("10"));
        assert!(first.sequence().is_some());
        let notifier = handle.notifier("/counter");
        assert_eq!(notifier.observer_count().await.unwrap(), 1);
        value.store(11, Ordering::SeqCst);
        assert_eq!(notifier.notify().await.unwrap(), 1);
        let n = obs.next().await.unwrap().unwrap();
        assert_eq!(n.payload_str(), Some("11"));
        assert!(n.sequence() > first.sequence());
        let direct = coap_async_std::Response::content("direct");
        assert_eq!(notifier.notify_with(direct).await.unwrap(), 1);
        let n = obs.next().await.unwrap().unwrap();
        assert_eq!(n.payload_str(), Some("direct"));
        assert!(obs.cancel().await.unwrap());
        let last = obs.next().await.unwrap().unwrap();
        assert_eq!(last.sequence(), None);
        assert!(obs.next().await.is_none());
        assert_eq!(notifier.observer_count().await.unwrap(), 0);

        // Passive cancellation: the dropped observation's next notification is reset.
        let mut obs = client
            .observe(format!("coap://{addr}/counter"))
            .await
            .unwrap();
        assert!(obs.next().await.unwrap().is_ok());
        assert_eq!(notifier.observer_count().await.unwrap(), 1);
        drop(obs);
        // Once the client's driver has taken the cancel (its answer to this comes after),
        // the next notification is reset.
        assert!(client.pending_requests().await.unwrap().is_empty());
        notifier.notify().await.unwrap();
        let start = std::time::Instant::now();
        while notifier.observer_count().await.unwrap() != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "observer never removed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        assert!(client.pending_requests().await.unwrap().is_empty());
        assert!(handle.pending_incoming().await.unwrap().is_empty());
        handle.shutdown().await.unwrap();
    };
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("test took too long");
}
