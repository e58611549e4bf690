//! What only the blocking crate has, over real loopback sockets (127.0.0.1): callbacks from
//! several threads, the bounded worker pool, and handles that cross threads. The scenarios
//! every runtime crate shares (methods, options, errors, separate and deferred responses,
//! discovery, block-wise bodies, observe, timeouts, cancellation, shutdown, ...) run against
//! this crate, and against the others, in the `coap-tests` crate (`tests/end_to_end.rs`).
//!
//! Every test runs its body on a thread of its own and fails if that takes longer than
//! [`LIMIT`].

use std::net::SocketAddr;
use std::sync::{mpsc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use coap_blocking::{
    Client, Code, Config, Error, IncomingRequest, Response, Router, Server, ServerBuilder,
    ServerHandle,
};

/// The bound for a whole test.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `body` on a thread and fails the test if it panics or outlives [`LIMIT`].
fn bounded(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: report its panic.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test took longer than {LIMIT:?}"),
    }
}

fn serve_with(
    builder: ServerBuilder,
    app: Router,
) -> (SocketAddr, ServerHandle, JoinHandle<Result<(), Error>>) {
    let server = builder.bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = thread::spawn(move || server.serve(app));
    (addr, handle, thread)
}

#[test]
fn callbacks_from_several_threads() {
    bounded(|| {
        let app = Router::new().get("/n", |req: IncomingRequest| {
            Response::content(req.query_value("i").unwrap_or("").to_owned())
        });
        let (addr, _h, _t) = serve_with(Server::builder().workers(4), app);
        let mut config = Config::default();
        config.nstart = 64;
        let client = Client::builder()
            .config(config)
            .bind("127.0.0.1:0")
            .unwrap();
        // Each callback runs on the I/O thread and hands its outcome to this one.
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            for t in 0..4 {
                let client = client.clone();
                let tx = tx.clone();
                s.spawn(move || {
                    for i in 0..100 {
                        let tx = tx.clone();
                        let n = t * 100 + i;
                        client
                            .get(format!("coap://{addr}/n?i={n}"))
                            .send_with(move |outcome| {
                                let text = outcome.map(|r| r.payload_str().map(str::to_owned));
                                let _ = tx.send((n, text));
                            })
                            .unwrap();
                    }
                });
            }
        });
        let mut seen = vec![false; 400];
        for _ in 0..400 {
            let (n, text) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(text.unwrap(), Some(n.to_string()));
            assert!(!seen[n], "{n} answered twice");
            seen[n] = true;
        }
        assert!(client.pending_requests().unwrap().is_empty());
    });
}

#[test]
fn a_full_pool_answers_5_03() {
    bounded(|| {
        let (release, wait) = mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        let (entered_tx, entered) = mpsc::channel();
        let entered_tx = Mutex::new(entered_tx);
        let app = Router::new().get("/block", move |_req: IncomingRequest| {
            entered_tx.lock().unwrap().send(()).unwrap();
            let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(20));
            Response::content("released")
        });
        // One worker and room for one waiting request.
        let (addr, handle, _t) = serve_with(Server::builder().workers(1).queue_capacity(1), app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let busy = client.get(format!("coap://{addr}/block")).start().unwrap();
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let queued = client.get(format!("coap://{addr}/block")).start().unwrap();
        while handle.pending_incoming().unwrap().len() < 2 {
            thread::sleep(Duration::from_millis(5));
        }
        let rsp = client.get(format!("coap://{addr}/block")).send().unwrap();
        assert_eq!(rsp.code(), Code::SERVICE_UNAVAILABLE);
        assert!(rsp.options().max_age().is_some());
        release.send(()).unwrap();
        release.send(()).unwrap();
        assert_eq!(busy.wait().unwrap().payload_str(), Some("released"));
        assert_eq!(queued.wait().unwrap().payload_str(), Some("released"));
    });
}

/// With no workers, handlers run on the I/O thread: the answer rides on the ACK, a
/// panicking handler is answered 5.00, and a handle that would wait for the I/O thread is
/// refused there with an error instead of waiting forever.
#[test]
fn handlers_on_the_io_thread() {
    bounded(|| {
        let parked = std::sync::Arc::new(Mutex::new(None::<ServerHandle>));
        let in_handler = std::sync::Arc::clone(&parked);
        let app = Router::new()
            .get("/quick", |_req: IncomingRequest| Response::content("now"))
            .get("/panic", |_req: IncomingRequest| -> Response {
                panic!("handler failed")
            })
            .get("/waits", move |_req: IncomingRequest| {
                let handle = in_handler.lock().unwrap().clone();
                let outcome = handle.map(|h| h.notifier("/quick").notify());
                match outcome {
                    Some(Err(Error::Unsupported(_))) => Response::content("refused"),
                    other => Response::content(format!("{other:?}")),
                }
            });
        let (addr, handle, _t) = serve_with(Server::builder().workers(0), app);
        // The handler takes the handle from here (a route cannot hold its own server's).
        *parked.lock().unwrap() = Some(handle.clone());

        // A CON GET by hand: the first datagram back is the ACK, carrying 2.05 and the body.
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // CON GET, token 0x2a, Message ID 0x1234, Uri-Path "quick".
        let request = [
            0x41, 0x01, 0x12, 0x34, 0x2a, 0xb5, b'q', b'u', b'i', b'c', b'k',
        ];
        raw.send_to(&request, addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = raw.recv_from(&mut buf).unwrap();
        let reply = &buf[..n];
        assert_eq!(reply[0] >> 4 & 0x3, 2, "an ACK: {reply:?}");
        assert_eq!(reply[1], 0x45, "2.05 piggybacked: {reply:?}");
        assert_eq!(&reply[2..5], &[0x12, 0x34, 0x2a]);
        assert!(reply.ends_with(b"\xffnow"), "{reply:?}");

        let client = Client::bind("127.0.0.1:0").unwrap();
        let rsp = client.get(format!("coap://{addr}/panic")).send().unwrap();
        assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR);
        let rsp = client.get(format!("coap://{addr}/waits")).send().unwrap();
        assert_eq!(rsp.payload_str(), Some("refused"));
        // The same handle works from any other thread.
        assert_eq!(handle.notifier("/quick").notify().unwrap(), 0);
    });
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Client>();
    send_sync::<ServerHandle>();
    send_sync::<coap_blocking::Notifier>();
    send_sync::<Error>();
    send::<coap_blocking::Responder>();
    send::<coap_blocking::ResponseHandle>();
    send::<coap_blocking::Observation>();
    send::<coap_blocking::RequestBuilder>();
}
