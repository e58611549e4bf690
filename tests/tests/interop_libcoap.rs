//! Interop with libcoap (Debian package `libcoap3-bin`): our tokio client against its
//! `coap-server`, its `coap-client` against our tokio server.
//!
//! The binaries are found through `COAP_CLIENT` / `COAP_SERVER`, else on `PATH` under their
//! plain or suffixed names (`coap-client-notls`, ...). A missing binary skips the test with a
//! message, unless `COAP_INTEROP_REQUIRED=1`, which makes it fail. Peers run as child processes
//! on free loopback ports and are killed by PID when the test ends; every step is bounded by a
//! timeout.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coap_tokio::{
    Client, Code, IncomingRequest, MessageType, ObserveHooks, Response, Router, Server,
};

/// Bound on any one child-process run.
const STEP: Duration = Duration::from_secs(30);

/// The whole test's bound.
const LIMIT: Duration = Duration::from_secs(120);

/// Finds a tool by environment variable, then on `PATH` by each of `names`.
fn find_tool(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let dirs = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&dirs)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The tool, or `None` after saying why the test is skipped; panics instead when
/// `COAP_INTEROP_REQUIRED=1`.
fn tool_or_skip(env: &str, names: &[&str]) -> Option<PathBuf> {
    let found = find_tool(env, names);
    if found.is_none() {
        let why = format!(
            "{} not found (set {env} or put it on PATH)",
            names.join(" / ")
        );
        if std::env::var("COAP_INTEROP_REQUIRED").as_deref() == Ok("1") {
            panic!("COAP_INTEROP_REQUIRED=1 and {why}");
        }
        eprintln!("SKIP: {why}");
    }
    found
}

fn libcoap_client() -> Option<PathBuf> {
    tool_or_skip(
        "COAP_CLIENT",
        &[
            "coap-client",
            "coap-client-notls",
            "coap-client-gnutls",
            "coap-client-openssl",
        ],
    )
}

fn libcoap_server() -> Option<PathBuf> {
    tool_or_skip(
        "COAP_SERVER",
        &[
            "coap-server",
            "coap-server-notls",
            "coap-server-gnutls",
            "coap-server-openssl",
        ],
    )
}

/// A child process killed (by its PID) and reaped when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a probe socket");
    socket.local_addr().expect("probe address").port()
}

/// A scratch file path unique to this process and call.
fn scratch_file(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("coap-interop-{}-{tag}-{n}", std::process::id()))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Runs `program args`, bounded by [`STEP`]; returns (exit success, stdout, stderr).
async fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the peer's client");
    let out = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish in time", program.display()))
        .expect("wait for the peer's client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts libcoap's server on a free port and waits until it answers.
async fn start_libcoap_server(bin: &Path, client: &Client) -> (ChildGuard, SocketAddr) {
    for _attempt in 0..5 {
        let port = free_port();
        let child = Command::new(bin)
            .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-v", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coap-server");
        let guard = ChildGuard(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        for _ in 0..50 {
            let probe = client
                .get(format!("coap://{addr}/.well-known/core"))
                .timeout(Duration::from_millis(200))
                .await;
            if probe.is_ok() {
                return (guard, addr);
            }
        }
    }
    panic!("libcoap's coap-server did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_libcoap_server() {
    let Some(server_bin) = libcoap_server() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let (_server, addr) = start_libcoap_server(&server_bin, &client).await;
        let base = format!("coap://{addr}");

        // GET, piggybacked.
        let rsp = client.get(format!("{base}/")).await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert!(
            rsp.payload_str().unwrap_or("").contains("libcoap"),
            "{rsp:?}"
        );
        let wkc = client
            .get(format!("{base}/.well-known/core"))
            .await
            .unwrap();
        assert!(wkc.payload_str().unwrap().contains("</time>"));

        // GET as NON: the answer comes as NON.
        let rsp = client.get(format!("{base}/time")).non().await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.message_type(), MessageType::Non);

        // PUT then GET back.
        let rsp = client
            .put(format!("{base}/example_data"))
            .payload("interop")
            .await
            .unwrap();
        assert!(rsp.code().is_success(), "{rsp:?}");
        let rsp = client.get(format!("{base}/example_data")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("interop"));

        // POST: libcoap's example resource has no POST handler, and says so.
        let rsp = client
            .post(format!("{base}/example_data"))
            .payload("x")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);

        // Block-wise both ways: a body over the 1024-byte block size up, then down.
        let body = pattern(5000);
        let rsp = client
            .put(format!("{base}/example_data"))
            .payload(body.clone())
            .await
            .unwrap();
        assert!(rsp.code().is_success(), "{rsp:?}");
        let rsp = client.get(format!("{base}/example_data")).await.unwrap();
        assert_eq!(rsp.payload().len(), body.len());
        assert!(rsp.payload()[..] == body[..]);

        // A separate response: /async?1 answers after one second, after an empty ACK.
        let rsp = client.get(format!("{base}/async?1")).await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.message_type(), MessageType::Con);

        // Observe /time, which libcoap's server changes every second (RFC 7641).
        let mut obs = client.observe(format!("{base}/time")).await.unwrap();
        let first = obs.next().await.unwrap().unwrap();
        assert_eq!(first.code(), Code::CONTENT);
        let first_seq = first.sequence().expect("registered");
        let second = obs.next().await.unwrap().unwrap();
        assert!(second.is_fresh());
        assert_ne!(second.sequence(), Some(first_seq));
        // Active cancellation: the answer to the deregistration ends the stream.
        assert!(obs.cancel().await.unwrap());
        while let Some(item) = obs.next().await {
            let last = item.unwrap();
            if last.sequence().is_none() {
                break;
            }
        }

        assert!(client.pending_requests().await.unwrap().is_empty());
    })
    .await
    .expect("interop test took too long");
}

/// The server libcoap's client talks to.
fn our_app() -> Router {
    Router::new()
        .get("/hello", |_req: IncomingRequest| async {
            Response::content("hello from coap-tokio")
        })
        .put("/store", |req: IncomingRequest| async move {
            Response::new(Code::CHANGED).with_payload(format!("stored {}", req.payload().len()))
        })
        .post("/store", |req: IncomingRequest| async move {
            Response::new(Code::CREATED)
                .with_payload(format!("posted {}", req.payload_str().unwrap_or("?")))
        })
        .get("/slow", |_req: IncomingRequest| async {
            // Longer than the empty-ACK delay: the answer is a separate response.
            tokio::time::sleep(Duration::from_millis(400)).await;
            Response::content("slow but here")
        })
        .get("/big", |_req: IncomingRequest| async {
            Response::content(pattern(5000))
        })
        .put("/upload", |req: IncomingRequest| async move {
            let ok = req.payload()[..] == pattern(req.payload().len())[..];
            Response::new(Code::CHANGED).with_payload(format!("{} {ok}", req.payload().len()))
        })
        .observable_with(
            "/obs",
            |_req: IncomingRequest| async { Response::content("state-0") },
            ObserveHooks::new().on_observer_count(|n| {
                let _ = OBSERVERS.send_replace(n);
            }),
        )
}

/// The observer count of `/obs`, for the test to wait on.
static OBSERVERS: std::sync::LazyLock<tokio::sync::watch::Sender<usize>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_client_against_our_server() {
    let Some(client_bin) = libcoap_client() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr();
        let handle = server.handle();
        tokio::spawn(server.serve(our_app()));
        let base = format!("coap://{addr}");
        let url = |path: &str| format!("{base}{path}");

        let (ok, out, err) = run(&client_bin, &["-B", "10", "-m", "get", &url("/hello")]).await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "hello from coap-tokio");

        let (ok, out, err) = run(
            &client_bin,
            &["-B", "10", "-N", "-m", "get", &url("/hello")],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "hello from coap-tokio");

        let (ok, out, err) = run(
            &client_bin,
            &["-B", "10", "-m", "put", "-e", "abc", &url("/store")],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "stored 3");

        let (ok, out, err) = run(
            &client_bin,
            &["-B", "10", "-m", "post", "-e", "xyz", &url("/store")],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "posted xyz");

        let (ok, out, err) = run(&client_bin, &["-B", "10", "-m", "get", &url("/slow")]).await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "slow but here");

        let (_ok, out, err) = run(&client_bin, &["-B", "10", "-m", "get", &url("/nothing")]).await;
        assert!(out.contains("4.04") || err.contains("4.04"), "{out} {err}");

        // Block2 download, written to a file by the client.
        let download = scratch_file("download");
        let target = download.to_string_lossy().into_owned();
        let (ok, out, err) = run(
            &client_bin,
            &["-B", "10", "-m", "get", "-o", &target, &url("/big")],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        let got = std::fs::read(&download).unwrap_or_default();
        let _ = std::fs::remove_file(&download);
        assert_eq!(got.len(), 5000);
        assert!(got == pattern(5000));

        // Block1 upload in 256-byte blocks.
        let upload = scratch_file("upload");
        std::fs::write(&upload, pattern(3000)).unwrap();
        let source = upload.to_string_lossy().into_owned();
        let (ok, out, err) = run(
            &client_bin,
            &[
                "-B",
                "10",
                "-m",
                "put",
                "-b",
                "256",
                "-f",
                &source,
                &url("/upload"),
            ],
        )
        .await;
        let _ = std::fs::remove_file(&upload);
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "3000 true");

        // libcoap's client observes /obs for 4 seconds while we notify twice.
        let mut registered = OBSERVERS.subscribe();
        let observe = tokio::spawn({
            let client_bin = client_bin.clone();
            let target = url("/obs");
            async move {
                run(
                    &client_bin,
                    &["-B", "10", "-w", "-s", "4", "-m", "get", &target],
                )
                .await
            }
        });
        registered.wait_for(|n| *n == 1).await.unwrap();
        let notifier = handle.notifier("/obs");
        notifier
            .notify_with(Response::content("state-1"))
            .await
            .unwrap();
        notifier
            .notify_with(Response::content("state-2"))
            .await
            .unwrap();
        let (ok, out, err) = observe.await.unwrap();
        assert!(ok, "stdout: {out} stderr: {err}");
        let states: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(states, ["state-0", "state-1", "state-2"], "{out}");

        assert!(handle.pending_incoming().await.unwrap().is_empty());
    })
    .await
    .expect("interop test took too long");
}

/// Our proxy between libcoap's client and libcoap's server: the client names the target in
/// Proxy-Uri (`-P`), our proxy forwards it (block-wise where the body is large) and caches
/// the answer; a PUT through the proxy makes the next GET go to the origin again; an
/// observation of the origin's `/time` is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_client_through_our_proxy_to_libcoap_server() {
    let (Some(client_bin), Some(server_bin)) = (libcoap_client(), libcoap_server()) else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let upstream = Client::bind("127.0.0.1:0").await.unwrap();
        let (_origin, origin) = start_libcoap_server(&server_bin, &upstream).await;
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let proxy = coap_tokio::Proxy::new(upstream).relay_observations(server.handle());
        let forward = proxy.clone();
        let app = Router::new().proxy(move |req: IncomingRequest| {
            let proxy = forward.clone();
            async move { proxy.forward(req).await }
        });
        let via = format!("coap://{}", server.local_addr());
        tokio::spawn(server.serve(app));
        let target = |path: &str| format!("coap://{origin}{path}");

        // libcoap's server has no /example until a PUT creates it (its -d dynamic resources
        // are off here): its own root text is the resource to fetch.
        let (ok, out, err) = run(
            &client_bin,
            &["-B", "10", "-m", "get", "-P", &via, &target("/")],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert!(out.contains("libcoap"), "{out}");
        let before = proxy.stats();
        let (ok, again, err) = run(
            &client_bin,
            &["-B", "10", "-m", "get", "-P", &via, &target("/")],
        )
        .await;
        assert!(ok, "stdout: {again} stderr: {err}");
        assert_eq!(again, out);
        assert_eq!(proxy.stats().hits, before.hits + 1, "served from the cache");

        // Not a scheme the proxy serves: 5.05.
        let (_ok, out, err) = run(
            &client_bin,
            &["-B", "10", "-m", "get", "-P", &via, "http://127.0.0.1/"],
        )
        .await;
        assert!(out.contains("5.05") || err.contains("5.05"), "{out} {err}");

        // Observed through the proxy for 4 s: libcoap's /time changes every second, and the
        // proxy relays its one observation of it.
        let (ok, out, err) = run(
            &client_bin,
            &[
                "-B",
                "10",
                "-s",
                "4",
                "-m",
                "get",
                "-P",
                &via,
                &target("/time"),
            ],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        let stats = proxy.stats();
        assert_eq!(stats.relays_opened, 1, "{stats:?}");
        assert!(stats.notifications >= 3, "{stats:?}");
    })
    .await
    .expect("the interop test took too long");
}
