//! Runtimes talk to each other: a blocking client (`coap-blocking`, plain threads) against a
//! tokio server (`coap-tokio`), and a tokio client against a blocking server. GET, a
//! block-wise PUT and an observation, all on 127.0.0.1, each bounded in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// The bound for a whole test.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `body` on a thread and fails if it panics or outlives [`LIMIT`].
fn bounded(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test took longer than {LIMIT:?}"),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn blocking_client_against_a_tokio_server() {
    bounded(|| {
        use coap_tokio::{Code, IncomingRequest, Response, Router, Server};

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let value = Arc::new(AtomicUsize::new(10));
        let rendered = Arc::clone(&value);
        let app = Router::new()
            .get("/hello", |_req: IncomingRequest| async {
                Response::content("from tokio")
            })
            .put("/upload", |req: IncomingRequest| async move {
                let intact = req.payload()[..] == pattern(req.payload().len())[..];
                Response::new(Code::CHANGED)
                    .with_payload(format!("{} {intact}", req.payload().len()))
            })
            .observable("/counter", move |_req: IncomingRequest| {
                let v = rendered.load(Ordering::SeqCst);
                async move { Response::content(v.to_string()) }
            });
        let server = runtime.block_on(Server::bind("127.0.0.1:0")).unwrap();
        let addr = server.local_addr();
        let handle = server.handle();
        runtime.spawn(server.serve(app));

        let client = coap_blocking::Client::bind("127.0.0.1:0").unwrap();
        let rsp = client.get(format!("coap://{addr}/hello")).send().unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.payload_str(), Some("from tokio"));

        // 40 kB up in Block1 blocks (RFC 7959), reassembled by the tokio side.
        let rsp = client
            .put(format!("coap://{addr}/upload"))
            .payload(pattern(40_000))
            .send()
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        assert_eq!(rsp.payload_str(), Some("40000 true"));

        // An observation: registration, a notification, active cancellation.
        let mut obs = client.observe(format!("coap://{addr}/counter")).unwrap();
        let first = obs.next().unwrap().unwrap();
        assert_eq!(first.payload_str(), Some("10"));
        assert!(first.sequence().is_some());
        value.store(11, Ordering::SeqCst);
        let notifier = handle.notifier("/counter");
        assert_eq!(runtime.block_on(notifier.notify()).unwrap(), 1);
        assert_eq!(obs.next().unwrap().unwrap().payload_str(), Some("11"));
        assert!(obs.cancel().unwrap());
        let last = obs.next().unwrap().unwrap();
        assert_eq!(last.sequence(), None);
        assert!(obs.next().is_none());
        assert_eq!(runtime.block_on(notifier.observer_count()).unwrap(), 0);
        assert!(client.pending_requests().unwrap().is_empty());
        runtime.block_on(handle.shutdown()).unwrap();
    });
}

#[test]
fn tokio_client_against_a_blocking_server() {
    bounded(|| {
        use coap_blocking::{Code, IncomingRequest, Response, Router, Server};

        let app = Router::new()
            .get("/hello", |_req: IncomingRequest| {
                Response::content("from threads")
            })
            .get("/big", |_req: IncomingRequest| {
                Response::content(pattern(30_000))
            })
            .observable("/state", |_req: IncomingRequest| Response::content("on"));
        let server = Server::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr();
        let handle = server.handle();
        let serving = thread::spawn(move || server.serve(app));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = coap_tokio::Client::bind("127.0.0.1:0").await.unwrap();
            let rsp = client.get(format!("coap://{addr}/hello")).await.unwrap();
            assert_eq!(rsp.payload_str(), Some("from threads"));
            // Block2 download of what the blocking server's engine slices.
            let rsp = client.get(format!("coap://{addr}/big")).await.unwrap();
            assert!(rsp.payload()[..] == pattern(30_000)[..]);
            let mut obs = client
                .observe(format!("coap://{addr}/state"))
                .await
                .unwrap();
            assert_eq!(obs.next().await.unwrap().unwrap().payload_str(), Some("on"));
            // Notified from a plain thread.
            let notifier = handle.notifier("/state");
            let sent = thread::spawn(move || notifier.notify_with(Response::content("off")));
            assert_eq!(
                obs.next().await.unwrap().unwrap().payload_str(),
                Some("off")
            );
            assert_eq!(sent.join().unwrap().unwrap(), 1);
            assert_eq!(Code::CONTENT, rsp.code());
        });
        handle.shutdown().unwrap();
        serving.join().unwrap().unwrap();
    });
}
