//! Interop with aiocoap (PyPI `aiocoap`): our tokio client against an aiocoap server, and
//! `aiocoap-client` against our tokio server.
//!
//! `aiocoap-client` is found through `AIOCOAP_CLIENT`, else on `PATH`. The aiocoap server is a
//! short script (below) run by the Python interpreter that `aiocoap-client` itself runs with
//! (its `#!` line), so it sees the same aiocoap installation. A missing tool skips the test
//! with a message, unless `COAP_INTEROP_REQUIRED=1`, which makes it fail. Peers run as child
//! processes on free loopback ports and are killed by PID when the test ends; every step is
//! bounded by a timeout.

use std::io::{BufRead, BufReader};
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

fn aiocoap_client() -> Option<PathBuf> {
    tool_or_skip("AIOCOAP_CLIENT", &["aiocoap-client"])
}

/// The Python interpreter named on the `#!` line of the `aiocoap-client` script.
fn aiocoap_python(client: &Path) -> Option<PathBuf> {
    let text = std::fs::read(client).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    // `#!/usr/bin/env python3` names the interpreter through env.
    let mut words = line.split_whitespace();
    let program = words.next()?;
    let python = if program.ends_with("/env") {
        find_tool("", &[words.next()?])?
    } else {
        PathBuf::from(program)
    };
    python.is_file().then_some(python)
}

/// An aiocoap server: GET /hello, GET/PUT/POST /store, a slow GET /slow (answered after an
/// empty ACK), a 5000-byte GET /big (Block2), PUT /upload (Block1 reassembled by aiocoap), and
/// an observable /tick that changes every 200 ms.
const AIOCOAP_SERVER: &str = r#"
import asyncio, sys
import aiocoap
import aiocoap.resource as resource

def pattern(n):
    return bytes(ord('a') + i % 26 for i in range(n))

class Hello(resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(payload=b"hello from aiocoap")

class Store(resource.Resource):
    def __init__(self):
        super().__init__()
        self.data = b""
    async def render_get(self, request):
        return aiocoap.Message(payload=self.data)
    async def render_put(self, request):
        self.data = request.payload
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"stored %d" % len(request.payload))
    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CREATED, payload=b"posted " + request.payload)

class Slow(resource.Resource):
    async def render_get(self, request):
        await asyncio.sleep(0.5)
        return aiocoap.Message(payload=b"slow but here")

class Big(resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(payload=pattern(5000))

class Upload(resource.Resource):
    async def render_put(self, request):
        ok = request.payload == pattern(len(request.payload))
        return aiocoap.Message(code=aiocoap.CHANGED,
                               payload=b"%d %s" % (len(request.payload), b"true" if ok else b"false"))

class Tick(resource.ObservableResource):
    def __init__(self):
        super().__init__()
        self.n = 0
        asyncio.get_running_loop().call_later(0.2, self.tick)
    def tick(self):
        self.n += 1
        self.updated_state()
        asyncio.get_running_loop().call_later(0.2, self.tick)
    async def render_get(self, request):
        return aiocoap.Message(payload=b"tick %d" % self.n)

async def main():
    root = resource.Site()
    root.add_resource(['tick'], Tick())
    root.add_resource(['hello'], Hello())
    root.add_resource(['store'], Store())
    root.add_resource(['slow'], Slow())
    root.add_resource(['big'], Big())
    root.add_resource(['upload'], Upload())
    await aiocoap.Context.create_server_context(root, bind=('127.0.0.1', int(sys.argv[1])))
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// Starts the aiocoap server script on a free port and waits for its "ready" line.
fn start_aiocoap_server(python: &Path) -> (ChildGuard, SocketAddr) {
    for _attempt in 0..5 {
        let port = free_port();
        let mut child = Command::new(python)
            .args(["-c", AIOCOAP_SERVER, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the aiocoap server");
        let stdout = child.stdout.take().expect("piped stdout");
        let guard = ChildGuard(child);
        // The read is bounded: the child is killed by the guard if it never prints.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(STEP) {
            Ok(line) if line.trim() == "ready" => {
                let addr = format!("127.0.0.1:{port}").parse().expect("address");
                return (guard, addr);
            }
            _ => continue,
        }
    }
    panic!("the aiocoap server did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_aiocoap_server() {
    let Some(client_bin) = aiocoap_client() else {
        return;
    };
    let Some(python) = aiocoap_python(&client_bin) else {
        let why = format!("no Python interpreter found for {}", client_bin.display());
        if std::env::var("COAP_INTEROP_REQUIRED").as_deref() == Ok("1") {
            panic!("COAP_INTEROP_REQUIRED=1 and {why}");
        }
        eprintln!("SKIP: {why}");
        return;
    };
    let (_server, addr) = start_aiocoap_server(&python);
    tokio::time::timeout(LIMIT, async {
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let base = format!("coap://{addr}");

        let rsp = client.get(format!("{base}/hello")).await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.payload_str(), Some("hello from aiocoap"));
        assert_eq!(rsp.message_type(), MessageType::Ack);

        let rsp = client.get(format!("{base}/hello")).non().await.unwrap();
        assert_eq!(rsp.payload_str(), Some("hello from aiocoap"));
        assert_eq!(rsp.message_type(), MessageType::Non);

        let rsp = client
            .put(format!("{base}/store"))
            .payload("abc")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        assert_eq!(rsp.payload_str(), Some("stored 3"));
        let rsp = client.get(format!("{base}/store")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("abc"));

        let rsp = client
            .post(format!("{base}/store"))
            .payload("xyz")
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CREATED);
        assert_eq!(rsp.payload_str(), Some("posted xyz"));

        let rsp = client.get(format!("{base}/missing")).await.unwrap();
        assert_eq!(rsp.code(), Code::NOT_FOUND);

        // A separate response after aiocoap's empty ACK.
        let rsp = client.get(format!("{base}/slow")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("slow but here"));
        assert_eq!(rsp.message_type(), MessageType::Con);

        // Block2 download and Block1 upload.
        let rsp = client.get(format!("{base}/big")).await.unwrap();
        assert_eq!(rsp.payload().len(), 5000);
        assert!(rsp.payload()[..] == pattern(5000)[..]);
        let rsp = client
            .put(format!("{base}/upload"))
            .payload(pattern(4000))
            .await
            .unwrap();
        assert_eq!(rsp.payload_str(), Some("4000 true"));
        let rsp = client
            .put(format!("{base}/store"))
            .payload(pattern(3000))
            .await
            .unwrap();
        assert_eq!(rsp.payload_str(), Some("stored 3000"));
        let rsp = client.get(format!("{base}/store")).await.unwrap();
        assert!(rsp.payload()[..] == pattern(3000)[..]);

        // Observe /tick: fresh notifications with increasing counts, then active cancellation.
        let mut obs = client.observe(format!("{base}/tick")).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let n = obs.next().await.unwrap().unwrap();
            assert!(n.is_fresh());
            assert!(n.sequence().is_some());
            let count: u32 = n
                .payload_str()
                .unwrap()
                .trim_start_matches("tick ")
                .parse()
                .unwrap();
            seen.push(count);
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert!(obs.cancel().await.unwrap());
        while let Some(item) = obs.next().await {
            if item.unwrap().sequence().is_none() {
                break;
            }
        }

        assert!(client.pending_requests().await.unwrap().is_empty());
    })
    .await
    .expect("interop test took too long");
}

/// The server aiocoap's client talks to.
/// Our test application; `observers` hears the observer count of `/obs`.
fn our_app(observers: tokio::sync::watch::Sender<usize>) -> Router {
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
            ObserveHooks::new().on_observer_count(move |n| {
                let _ = observers.send_replace(n);
            }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiocoap_client_against_our_server() {
    let Some(client_bin) = aiocoap_client() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr();
        let handle = server.handle();
        // Each test its own count: the tests of this file share one process under
        // `cargo test`.
        let (observers, mut registered) = tokio::sync::watch::channel(0);
        tokio::spawn(server.serve(our_app(observers)));
        let url = |path: &str| format!("coap://{addr}{path}");

        let (ok, out, err) = run(&client_bin, &[&url("/hello")]).await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "hello from coap-tokio");

        let (ok, out, err) = run(&client_bin, &["--non", &url("/hello")]).await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "hello from coap-tokio");

        let (ok, out, err) = run(
            &client_bin,
            &["-m", "PUT", "--payload", "abc", &url("/store")],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "stored 3");

        let (ok, out, err) = run(
            &client_bin,
            &["-m", "POST", "--payload", "xyz", &url("/store")],
        )
        .await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "posted xyz");

        let (ok, out, err) = run(&client_bin, &[&url("/slow")]).await;
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "slow but here");

        let (_ok, out, err) = run(&client_bin, &[&url("/nothing")]).await;
        assert!(
            out.contains("4.04") || err.contains("4.04") || err.contains("Not Found"),
            "stdout: {out} stderr: {err}"
        );

        // Block2 download.
        let (ok, out, err) = run(&client_bin, &[&url("/big")]).await;
        assert!(ok, "stderr: {err}");
        assert_eq!(out.trim_end().as_bytes(), &pattern(5000)[..]);

        // Block1 upload from a file, starting with 64-byte blocks.
        let upload = scratch_file("upload");
        std::fs::write(&upload, pattern(3000)).unwrap();
        let source = format!("@{}", upload.to_string_lossy());
        let (ok, out, err) = run(
            &client_bin,
            &[
                "-m",
                "PUT",
                "--payload-initial-szx",
                "2",
                "--payload",
                &source,
                &url("/upload"),
            ],
        )
        .await;
        let _ = std::fs::remove_file(&upload);
        assert!(ok, "stdout: {out} stderr: {err}");
        assert_eq!(out.trim(), "3000 true");

        // aiocoap-client registers as an observer of /obs and prints the first state. (Run
        // this way, aiocoap-client 0.4.17 prints no later notification, not even of
        // libcoap's /time, so only the registration is checked here; our client observing
        // aiocoap's server above covers notifications and cancellation.)
        let mut child = tokio::process::Command::new(&client_bin)
            .args(["--observe", &url("/obs")])
            // Python buffers a pipe's output by the block; the first state must come at once.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn aiocoap-client --observe");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut first = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        registered.wait_for(|n| *n == 1).await.unwrap();
        let notifier = handle.notifier("/obs");
        assert_eq!(notifier.observer_count().await.unwrap(), 1);
        // The first state ends without a newline; read until it is all there.
        while !first.contains("state-0") {
            let mut chunk = [0u8; 64];
            let n =
                tokio::time::timeout(STEP, tokio::io::AsyncReadExt::read(&mut reader, &mut chunk))
                    .await
                    .expect("the first state in time")
                    .expect("read from aiocoap-client");
            assert!(n > 0, "aiocoap-client ended early: {first:?}");
            first.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        child.kill().await.unwrap();

        assert!(handle.pending_incoming().await.unwrap().is_empty());
    })
    .await
    .expect("interop test took too long");
}

/// aiocoap's client through our forward proxy (`--proxy`) to our server: the request arrives
/// with Proxy-Uri or Proxy-Scheme (whichever aiocoap picks), is forwarded, and its answer,
/// a large one block-wise, comes back; the second GET is served from the proxy's cache; an
/// observation is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiocoap_client_through_our_proxy() {
    let Some(client_bin) = aiocoap_client() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let origin = Server::bind("127.0.0.1:0").await.unwrap();
        let origin_addr = origin.local_addr();
        let (observers, mut registered) = tokio::sync::watch::channel(0);
        tokio::spawn(origin.serve(our_app(observers)));
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let proxy_handle = server.handle();
        let proxy = coap_tokio::Proxy::new(Client::bind("127.0.0.1:0").await.unwrap())
            .relay_observations(server.handle());
        let forward = proxy.clone();
        let app = Router::new().proxy(move |req: IncomingRequest| {
            let proxy = forward.clone();
            async move { proxy.forward(req).await }
        });
        let via = format!("coap://{}", server.local_addr());
        tokio::spawn(server.serve(app));
        let url = |path: &str| format!("coap://{origin_addr}{path}");

        for _ in 0..2 {
            let (ok, out, err) = run(&client_bin, &["--proxy", &via, &url("/hello")]).await;
            assert!(ok, "stdout: {out} stderr: {err}");
            assert_eq!(out.trim(), "hello from coap-tokio");
        }
        assert_eq!(proxy.stats().hits, 1, "{:?}", proxy.stats());

        let (ok, out, err) = run(&client_bin, &["--proxy", &via, &url("/big")]).await;
        assert!(ok, "stderr: {err}");
        assert_eq!(out.trim_end().as_bytes(), &pattern(5000)[..]);

        // An observation through the proxy is relayed: the origin gets one observer (the
        // proxy), and the proxy keeps aiocoap's registration under the target's URI.
        let mut child = tokio::process::Command::new(&client_bin)
            .args(["--proxy", &via, "--observe", &url("/obs")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn aiocoap-client --observe");
        tokio::time::timeout(STEP, registered.wait_for(|n| *n == 1))
            .await
            .expect("the proxy observes the origin")
            .unwrap();
        let relayed = proxy_handle.notifier(&url("/obs"));
        let deadline = tokio::time::Instant::now() + STEP;
        while relayed.observer_count().await.unwrap() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiocoap not registered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(proxy.stats().relays_opened, 1);
        child.kill().await.unwrap();
    })
    .await
    .expect("the interop test took too long");
}
