//! Runs the built `coap` binary as a child process: every client verb against our demo
//! server, exit statuses, signals, and interop with libcoap and aiocoap where they are
//! installed. Every wait is bounded and every child is killed when its guard drops.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const COAP: &str = env!("CARGO_BIN_EXE_coap");

/// How long any single command may take before the test gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A child process that is killed (by its own handle, so by PID) when the guard drops.
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to exit, at most `limit`.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A server child and the address it logged.
struct Running {
    guard: Guard,
    addr: SocketAddr,
    /// Log lines of the server after "listening on".
    log: mpsc::Receiver<String>,
}

impl Running {
    fn uri(&self, path: &str) -> String {
        format!("coap://{}{path}", self.addr)
    }

    /// Log lines received so far.
    fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

/// Starts `coap ARGS` as a server and waits (bounded) for its "listening on ADDR" line.
fn start_server(args: &[&str]) -> Running {
    let child = Command::new(COAP)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coap");
    let mut guard = Guard { child };
    let stderr = guard.child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    // Keep draining stderr for the whole life of the child, so it never blocks on a pipe.
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let addr: SocketAddr = addr.parse().expect("a socket address");
                    return Running {
                        guard,
                        addr,
                        log: rx,
                    };
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = guard.child.try_wait() {
                    panic!("coap {args:?} exited early with {status}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("coap {args:?} closed stderr"),
        }
    }
    panic!("coap {args:?} did not say where it listens");
}

/// The result of a finished command.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    took: Duration,
}

impl Outcome {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs a command to its end (killed after `limit`), collecting its output.
fn run_limited(mut command: Command, limit: Duration) -> Outcome {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let mut guard = Guard { child };
    let mut out = guard.child.stdout.take().expect("stdout");
    let mut err = guard.child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = guard.wait_for(limit);
    let code = match status {
        Some(s) => s.code(),
        None => {
            let _ = guard.child.kill();
            let _ = guard.child.wait();
            panic!("{command:?} did not finish within {limit:?}");
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Outcome {
        code,
        stdout,
        stderr,
        took: started.elapsed(),
    }
}

/// Runs `coap ARGS`.
fn coap(args: &[&str]) -> Outcome {
    let mut command = Command::new(COAP);
    command.args(args);
    run_limited(command, COMMAND_LIMIT)
}

/// Sends a signal to a process by PID with the system's `kill`.
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

fn demo() -> Running {
    start_server(&["serve", "--bind", "127.0.0.1:0"])
}

fn assert_ok(outcome: &Outcome, what: &str) {
    assert_eq!(
        outcome.code,
        Some(0),
        "{what}: {outcome:?} ({})",
        outcome.text()
    );
}

#[test]
fn every_verb_against_the_demo_server() {
    let server = demo();

    let time = coap(&["get", &server.uri("/time")]);
    assert_ok(&time, "get /time");
    let text = time.text();
    assert_eq!(text.len(), 19, "a YYYY-MM-DD HH:MM:SS time, got {text:?}");
    assert!(text.starts_with("20"), "{text:?}");

    let core = coap(&["get", &server.uri("/.well-known/core")]);
    assert_ok(&core, "get /.well-known/core");
    let core = core.text();
    for path in ["</time>", "</other/block>", "</other/separate>", "</echo>"] {
        assert!(core.contains(path), "{path} missing in {core}");
    }

    // Block-wise GET, then a block-wise PUT that replaces the body.
    let block = coap(&["get", &server.uri("/other/block")]);
    assert_ok(&block, "get /other/block");
    assert!(block.stdout.len() > 2048, "{} bytes", block.stdout.len());
    let big: String = (0..300).map(|i| format!("line {i:03}\n")).collect();
    let put = coap(&["put", &server.uri("/other/block"), "--payload", &big]);
    assert_ok(&put, "put /other/block");
    let again = coap(&["get", &server.uri("/other/block")]);
    assert_ok(&again, "get /other/block after put");
    assert_eq!(again.text(), big);

    for (verb, expect) in [
        ("post", "POST hi"),
        ("put", "PUT hi"),
        ("delete", "DELETE hi"),
        ("fetch", "FETCH hi"),
        ("patch", "PATCH hi"),
        ("ipatch", "iPATCH hi"),
    ] {
        let outcome = coap(&[verb, &server.uri("/echo"), "--payload", "hi"]);
        assert_ok(&outcome, verb);
        assert_eq!(outcome.text(), expect);
    }

    // A payload from a file and from stdin-like '-' is covered by the file variant here.
    let dir = temp_dir("payload");
    let file = dir.join("body.txt");
    std::fs::write(&file, "from a file").expect("write");
    let outcome = coap(&[
        "post",
        &server.uri("/echo"),
        "--payload-file",
        file.to_str().expect("utf-8 path"),
    ]);
    assert_ok(&outcome, "post --payload-file");
    assert_eq!(outcome.text(), "POST from a file");

    // --output writes the body to a file, -v describes the response on stderr.
    let out = dir.join("time.txt");
    let outcome = coap(&[
        "get",
        &server.uri("/time"),
        "-v",
        "--output",
        out.to_str().expect("utf-8 path"),
    ]);
    assert_ok(&outcome, "get --output -v");
    assert!(outcome.stdout.is_empty());
    assert_eq!(std::fs::read(&out).expect("output file").len(), 19);
    assert!(
        outcome.stderr.contains("2.05 Content"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("Content-Format"),
        "{}",
        outcome.stderr
    );

    // NON request, an option given by number, Accept by name.
    let outcome = coap(&[
        "get",
        &server.uri("/time"),
        "--non",
        "--option",
        "15=x=1",
        "--accept",
        "text",
    ]);
    assert_ok(&outcome, "get --non --option --accept");

    // The separate response takes about 3 s.
    let separate = coap(&["get", &server.uri("/other/separate")]);
    assert_ok(&separate, "get /other/separate");
    assert!(separate.text().starts_with("Three rings"));
    assert!(
        separate.took >= Duration::from_millis(2500),
        "{:?}",
        separate.took
    );

    // The server logged the requests.
    thread::sleep(Duration::from_millis(100));
    let log = server.drain_log().join("\n");
    assert!(log.contains("GET /time from 127.0.0.1"), "{log}");
    assert!(log.contains("iPATCH /echo"), "{log}");
}

#[test]
fn observe_counts_notifications_and_cancels() {
    let server = demo();
    let outcome = coap(&["observe", &server.uri("/time"), "--count", "3"]);
    assert_ok(&outcome, "observe --count 3");
    let text = outcome.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text:?}");
    // A notification every 2 s: the third arrives after about 4 s.
    assert!(outcome.took >= Duration::from_secs(3), "{:?}", outcome.took);
    thread::sleep(Duration::from_millis(200));
    let log = server.drain_log().join("\n");
    // The registration and the cancelling GET (RFC 7641 §3.6) both reached the server.
    assert!(
        log.contains("GET /time from 127.0.0.1") && log.contains("(observe)"),
        "{log}"
    );
    assert!(
        log.lines().filter(|l| l.contains("GET /time")).count() >= 2,
        "no deregistration in {log}"
    );

    let outcome = coap(&["observe", &server.uri("/time"), "--duration", "1"]);
    assert_ok(&outcome, "observe --duration 1");
    assert_eq!(outcome.text().lines().count(), 1);
    assert!(outcome.took < Duration::from_secs(5));
}

#[cfg(unix)]
#[test]
fn observe_stops_on_ctrl_c() {
    let server = demo();
    let child = Command::new(COAP)
        .args(["observe", &server.uri("/time")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start observe");
    let mut guard = Guard { child };
    let stdout = guard.child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for the first notification, then interrupt.
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a first notification");
    signal(guard.pid(), "INT");
    let status = guard
        .wait_for(Duration::from_secs(8))
        .expect("observe exits after Ctrl-C");
    assert_eq!(status.code(), Some(0));
}

/// `serve --join` answers requests sent to the group, and `get` of a group address collects
/// the answers until its window closes: errors are not answered to a group (RFC 7252 §8.2),
/// so a missing resource draws silence and exit status 3. The group is joined on the
/// loopback interface and the request leaves through it: nothing leaves the host.
/// The demo server on the wildcard address of a free port, in the All CoAP Nodes group
/// joined on the loopback interface, answering the group after at most 0.1 s.
fn demo_in_group() -> (Running, u16) {
    let port = free_udp_port();
    let bind = format!("0.0.0.0:{port}");
    let server = start_server(&[
        "serve",
        "--bind",
        &bind,
        "--join",
        "224.0.1.187@127.0.0.1",
        "--leisure",
        "0.1",
    ]);
    (server, port)
}

#[cfg(target_os = "linux")]
#[test]
fn multicast_discovery_with_serve_join() {
    let (_server, port) = demo_in_group();
    let group = |path: &str| format!("coap://224.0.1.187:{port}{path}");
    let found = coap(&[
        "get",
        &group("/.well-known/core?rt=*"),
        "--multicast-interface",
        "127.0.0.1",
        "--timeout",
        "1",
    ]);
    assert_ok(&found, "multicast discovery");
    assert!(found.text().contains("</time>"), "{}", found.text());
    assert_eq!(found.stderr.matches("2.05").count(), 1, "{}", found.stderr);
    assert!(
        found.stderr.contains(&format!("from 127.0.0.1:{port}")),
        "{}",
        found.stderr
    );
    let missing = coap(&[
        "get",
        &group("/missing"),
        "--multicast-interface",
        "127.0.0.1",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(missing.code, Some(3), "{missing:?}");
    assert!(missing.stderr.contains("no answer"), "{}", missing.stderr);
}

#[test]
fn exit_statuses() {
    let server = demo();
    // 4.04 → 1, with a line that says so.
    let missing = coap(&["get", &server.uri("/no/such/thing")]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("4.04"), "{}", missing.stderr);
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
    // 4.05 → 1.
    let wrong = coap(&["delete", &server.uri("/time")]);
    assert_eq!(wrong.code, Some(1), "{wrong:?}");

    // Bad arguments → 2.
    assert_eq!(coap(&["get"]).code, Some(2));
    assert_eq!(
        coap(&["get", "coap://127.0.0.1/x", "--bogus"]).code,
        Some(2)
    );
    assert_eq!(
        coap(&["get", "coap://127.0.0.1/x", "--accept", "no-such-format"]).code,
        Some(2)
    );
    assert_eq!(coap(&["get", "http://[::1"]).code, Some(2));
    let bad = coap(&["get", "not a uri"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);

    // Nobody answers → 3 (a socket that is bound and never reads).
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let timeout = coap(&[
        "get",
        &format!("coap://127.0.0.1:{port}/x"),
        "--timeout",
        "1",
    ]);
    assert_eq!(timeout.code, Some(3), "{timeout:?}");
    assert!(timeout.stderr.contains("timed out"), "{}", timeout.stderr);
    assert!(timeout.took < Duration::from_secs(5));
    drop(silent);
}

#[cfg(target_os = "linux")]
#[test]
fn unreachable_port_is_a_network_error() {
    // Linux reports the ICMP port unreachable: exit status 4.
    let port = free_udp_port();
    let outcome = coap(&[
        "get",
        &format!("coap://127.0.0.1:{port}/x"),
        "--timeout",
        "10",
    ]);
    assert_eq!(outcome.code, Some(4), "{outcome:?}");
    assert!(outcome.stderr.contains("unreachable"), "{}", outcome.stderr);
}

#[cfg(unix)]
#[test]
fn servers_stop_on_sigterm_and_sigint() {
    let dir = file_tree("fs-signals");
    let dir = dir.to_str().expect("utf-8 path").to_owned();
    for (args, sig) in [
        (&["serve", "--bind", "127.0.0.1:0"][..], "TERM"),
        (&["serve", "--bind", "127.0.0.1:0"][..], "INT"),
        (&["fileserver", &dir, "--bind", "127.0.0.1:0"][..], "TERM"),
        (
            &["fileserver", &dir, "--bind", "127.0.0.1:0", "--write"][..],
            "INT",
        ),
    ] {
        let mut server = start_server(args);
        // One exchange first, so the server has served something before the signal.
        let _ = coap(&["get", &server.uri("/time")]);
        signal(server.guard.pid(), sig);
        let status = server
            .guard
            .wait_for(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{args:?} still running 5 s after SIG{sig}"));
        assert_eq!(status.code(), Some(0), "{args:?} after SIG{sig}");
    }
}

#[test]
fn servers_bind_ipv6_and_refuse_a_bad_bind() {
    if UdpSocket::bind("[::1]:0").is_ok() {
        let server = start_server(&["serve", "--bind", "[::1]:0"]);
        assert!(server.addr.is_ipv6());
        let outcome = coap(&["get", &server.uri("/time")]);
        assert_ok(&outcome, "get over IPv6");
    }
    let busy = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let outcome = coap(&["serve", "--bind", &addr]);
    assert_ne!(
        outcome.code,
        Some(0),
        "binding a busy port succeeded: {outcome:?}"
    );
    assert!(outcome.stderr.contains("cannot bind"), "{}", outcome.stderr);
}

#[test]
fn help_lists_every_subcommand() {
    let help = coap(&["--help"]);
    assert_ok(&help, "--help");
    let text = help.text();
    for sub in [
        "get",
        "post",
        "put",
        "delete",
        "fetch",
        "patch",
        "ipatch",
        "observe",
        "serve",
        "plugtest-server",
        "fileserver",
    ] {
        assert!(text.contains(sub), "{sub} missing in --help");
        let sub_help = coap(&[sub, "--help"]);
        assert_ok(&sub_help, sub);
    }
}

// ---- helpers ---------------------------------------------------------------------------

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("coap-cli-test-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// Finds a peer tool: the environment variable first, then the names on PATH. `None` means
/// SKIP, unless COAP_INTEROP_REQUIRED=1, which makes a missing peer a failure.
fn peer(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.exists() {
            return Some(path);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            for name in names {
                let candidate = dir.join(name);
                if is_executable(&candidate) {
                    return Some(candidate);
                }
            }
        }
    }
    if std::env::var("COAP_INTEROP_REQUIRED").as_deref() == Ok("1") {
        panic!("{env} / {names:?} not found and COAP_INTEROP_REQUIRED=1");
    }
    eprintln!("SKIP: {names:?} not found (set {env})");
    None
}

fn is_executable(path: &Path) -> bool {
    path.is_file()
}

fn libcoap_client() -> Option<PathBuf> {
    peer("COAP_CLIENT", &["coap-client", "coap-client-notls"])
}

fn libcoap_server() -> Option<PathBuf> {
    peer("COAP_SERVER", &["coap-server", "coap-server-notls"])
}

fn aiocoap_client() -> Option<PathBuf> {
    peer("AIOCOAP_CLIENT", &["aiocoap-client"])
}

fn tool(path: &Path, args: &[&str]) -> Outcome {
    let mut command = Command::new(path);
    command.args(args);
    run_limited(command, COMMAND_LIMIT)
}

// ---- libcoap's coap-client against our servers ----------------------------------------

/// Multicast both ways with libcoap, on the loopback interface only: its coap-client (bound
/// to 127.0.0.1, so the request leaves through loopback) discovers our demo server in the
/// group, and our client finds its coap-server joined to the group.
#[cfg(target_os = "linux")]
#[test]
fn multicast_discovery_with_libcoap() {
    let (Some(client), Some(server_tool)) = (libcoap_client(), libcoap_server()) else {
        return;
    };
    let (_ours, port) = demo_in_group();
    let group = format!("coap://224.0.1.187:{port}/.well-known/core");
    let found = tool(&client, &["-N", "-a", "127.0.0.1", "-B", "1", &group]);
    assert_ok(&found, "coap-client -N GET to the group");
    assert!(found.text().contains("</time>"), "{}", found.text());

    let port = free_udp_port();
    let mut command = Command::new(&server_tool);
    command
        .args([
            "-A",
            "0.0.0.0",
            "-p",
            &port.to_string(),
            "-g",
            "224.0.1.187",
            "-G",
            "lo",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _theirs = Guard {
        child: command.spawn().expect("start coap-server"),
    };
    // Once it answers by unicast, it has joined; its answer to the group then comes after a
    // random leisure of up to 5 s (RFC 7252 §8.2).
    let unicast = format!("coap://127.0.0.1:{port}/.well-known/core");
    let started = (0..50).any(|_| coap(&["get", &unicast, "--timeout", "0.2"]).code == Some(0));
    assert!(started, "libcoap's coap-server did not start");
    let group = format!("coap://224.0.1.187:{port}/.well-known/core");
    let found = coap(&[
        "get",
        &group,
        "--multicast-interface",
        "127.0.0.1",
        "--timeout",
        "6",
    ]);
    assert_ok(&found, "our GET to the group");
    assert!(found.text().contains("</time>"), "{}", found.text());
    assert!(
        found.stderr.contains(&format!("from 127.0.0.1:{port}")),
        "{}",
        found.stderr
    );
}

#[test]
fn libcoap_client_against_our_demo_server() {
    let Some(client) = libcoap_client() else {
        return;
    };
    let server = demo();

    let time = tool(&client, &["-B", "10", &server.uri("/time")]);
    assert_ok(&time, "coap-client GET /time");
    assert!(time.text().starts_with("20"), "{}", time.text());

    let ours = coap(&["get", &server.uri("/other/block")]);
    assert_ok(&ours, "our GET /other/block");
    let block = tool(
        &client,
        &["-B", "10", "-b", "64", &server.uri("/other/block")],
    );
    assert_ok(&block, "coap-client -b 64 GET /other/block");
    assert_eq!(block.text().trim_end(), ours.text().trim_end());

    let dir = temp_dir("libcoap-put");
    let file = dir.join("put.txt");
    let body: String = (0..100).map(|i| format!("libcoap line {i}\n")).collect();
    std::fs::write(&file, &body).expect("write");
    let put = tool(
        &client,
        &[
            "-B",
            "10",
            "-b",
            "64",
            "-m",
            "put",
            "-f",
            file.to_str().expect("utf-8"),
            &server.uri("/other/block"),
        ],
    );
    assert_ok(&put, "coap-client PUT -f");
    let after = coap(&["get", &server.uri("/other/block")]);
    assert_eq!(after.text(), body);

    let observe = tool(
        &client,
        &["-B", "10", "-s", "5", "-w", &server.uri("/time")],
    );
    assert_ok(&observe, "coap-client -s 5 /time");
    let lines = observe
        .text()
        .lines()
        .filter(|l| l.starts_with("20"))
        .count();
    assert!(lines >= 3, "only {lines} notifications: {}", observe.text());

    let separate = tool(&client, &["-B", "10", &server.uri("/other/separate")]);
    assert_ok(&separate, "coap-client GET /other/separate");
    assert!(separate.text().starts_with("Three rings"));
}

// ---- our verbs against libcoap's coap-server -------------------------------------------

#[test]
fn our_verbs_against_libcoap_server() {
    let Some(server_bin) = libcoap_server() else {
        return;
    };
    let port = free_udp_port();
    let child = Command::new(&server_bin)
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coap-server");
    let _guard = Guard { child };
    let base = format!("coap://127.0.0.1:{port}");
    // Wait (bounded) until it answers.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = coap(&["get", &format!("{base}/.well-known/core"), "--timeout", "1"]);
        if probe.code == Some(0) {
            assert!(probe.text().contains("</time>"), "{}", probe.text());
            break;
        }
        assert!(
            Instant::now() < end,
            "coap-server does not answer: {probe:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    let root = coap(&["get", &format!("{base}/")]);
    assert_ok(&root, "GET / of coap-server");
    assert!(root.text().contains("libcoap"), "{}", root.text());

    // PUT creates a resource (-d), GET reads it back, DELETE removes it.
    let body: String = (0..200).map(|i| format!("{i},")).collect();
    let put = coap(&["put", &format!("{base}/made/by/us"), "--payload", &body]);
    assert_ok(&put, "PUT to coap-server");
    let get = coap(&["get", &format!("{base}/made/by/us")]);
    assert_ok(&get, "GET of the created resource");
    assert_eq!(get.text(), body);
    let delete = coap(&["delete", &format!("{base}/made/by/us")]);
    assert_ok(&delete, "DELETE of the created resource");
    let gone = coap(&["get", &format!("{base}/made/by/us")]);
    assert_eq!(gone.code, Some(1), "{gone:?}");

    for verb in ["post", "fetch", "patch", "ipatch"] {
        // coap-server answers these with a response code of its own; the tool must map
        // it to 0 or 1 and never hang or fail on the network.
        let outcome = coap(&[verb, &format!("{base}/example_data"), "--payload", "x"]);
        assert!(
            matches!(outcome.code, Some(0 | 1)),
            "{verb} against coap-server: {outcome:?}"
        );
    }

    // /time of coap-server is observable once ticks are asked for.
    let observe = coap(&[
        "observe",
        &format!("{base}/time"),
        "--count",
        "2",
        "--timeout",
        "10",
    ]);
    assert_ok(&observe, "observe coap-server /time");
    assert_eq!(observe.text().lines().count(), 2, "{}", observe.text());

    let separate = coap(&["get", &format!("{base}/async?2")]);
    assert_ok(&separate, "GET /async?2 of coap-server (separate response)");
}

// ---- aiocoap-client against our servers -------------------------------------------------

#[test]
fn aiocoap_client_against_our_demo_server() {
    let Some(client) = aiocoap_client() else {
        return;
    };
    let server = demo();

    let time = tool(&client, &[&server.uri("/time")]);
    assert_ok(&time, "aiocoap-client GET /time");
    assert!(time.text().starts_with("20"), "{}", time.text());

    let ours = coap(&["get", &server.uri("/other/block")]);
    let block = tool(&client, &[&server.uri("/other/block")]);
    assert_ok(&block, "aiocoap-client GET /other/block");
    assert_eq!(block.text().trim_end(), ours.text().trim_end());

    let body: String = (0..100).map(|i| format!("aiocoap line {i}\n")).collect();
    let put = tool(
        &client,
        &["-m", "PUT", "--payload", &body, &server.uri("/other/block")],
    );
    assert_ok(&put, "aiocoap-client PUT");
    let after = coap(&["get", &server.uri("/other/block")]);
    assert_eq!(after.text(), body);

    let separate = tool(&client, &[&server.uri("/other/separate")]);
    assert_ok(&separate, "aiocoap-client GET /other/separate");
    assert!(separate.text().starts_with("Three rings"));

    let missing = tool(&client, &[&server.uri("/nothing")]);
    assert_ne!(missing.code, Some(0));
}

// ---- the file server --------------------------------------------------------------------

/// A directory with a small file, a file of several blocks and a subdirectory.
fn file_tree(name: &str) -> TempDir {
    let dir = temp_dir(name);
    std::fs::write(dir.join("small.txt"), "small file\n").expect("write");
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub").join("big.bin"), big).expect("write");
    dir
}

fn fileserver(dir: &Path, write: bool) -> Running {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["fileserver", dir, "--bind", "127.0.0.1:0"];
    if write {
        args.push("--write");
    }
    start_server(&args)
}

#[test]
fn fileserver_serves_lists_validates_and_observes() {
    let dir = file_tree("fs-read");
    let server = fileserver(&dir, false);

    let small = coap(&["get", &server.uri("/small.txt")]);
    assert_ok(&small, "GET /small.txt");
    assert_eq!(small.text(), "small file\n");

    let big = coap(&["get", &server.uri("/sub/big.bin")]);
    assert_ok(&big, "GET /sub/big.bin");
    assert_eq!(
        big.stdout,
        std::fs::read(dir.join("sub/big.bin")).expect("read")
    );

    // --progress fetches block by block (what a terminal does for the progress bar).
    let stepwise = coap(&["get", &server.uri("/sub/big.bin"), "--progress"]);
    assert_ok(&stepwise, "GET --progress /sub/big.bin");
    assert_eq!(stepwise.stdout, big.stdout);
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("large.bin"), &large).expect("write");
    let stepwise = coap(&["get", &server.uri("/large.bin"), "--progress", "-v"]);
    assert_ok(&stepwise, "GET --progress /large.bin");
    assert_eq!(stepwise.stdout, large);
    assert!(
        stepwise.stderr.contains("200000 bytes"),
        "{}",
        stepwise.stderr
    );
    let small = coap(&["get", &server.uri("/small.txt"), "--progress"]);
    assert_eq!(small.text(), "small file\n");
    let missing = coap(&["get", &server.uri("/nothing"), "--progress"]);
    assert_eq!(missing.code, Some(1), "{missing:?}");

    let listing = coap(&["get", &server.uri("/")]);
    assert_ok(&listing, "GET /");
    let text = listing.text();
    assert!(
        text.contains("</small.txt>") && text.contains("</sub/>"),
        "{text}"
    );
    let sub = coap(&["get", &server.uri("/sub/")]);
    assert!(sub.text().contains("</sub/big.bin>"), "{}", sub.text());

    // ETag: a GET that lists the current ETag is answered 2.03 Valid without a body.
    let first = coap(&["get", &server.uri("/small.txt"), "-v"]);
    let etag = first
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("ETag: "))
        .unwrap_or_else(|| panic!("no ETag in {}", first.stderr))
        .to_owned();
    let valid = coap(&[
        "get",
        &server.uri("/small.txt"),
        "-v",
        "--option",
        &format!("ETag={etag}"),
    ]);
    assert_ok(&valid, "GET with a matching ETag");
    assert!(valid.stderr.contains("2.03 Valid"), "{}", valid.stderr);
    assert!(valid.stdout.is_empty());

    // Read-only: PUT and DELETE are 4.05, nothing changes.
    let put = coap(&["put", &server.uri("/small.txt"), "--payload", "x"]);
    assert_eq!(put.code, Some(1), "{put:?}");
    let delete = coap(&["delete", &server.uri("/small.txt")]);
    assert_eq!(delete.code, Some(1), "{delete:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("small.txt")).expect("read"),
        "small file\n"
    );

    // Nothing outside the directory: a percent-encoded `..` segment and a missing file.
    let escape = coap(&["get", &server.uri("/%2e%2e/etc/passwd")]);
    assert_eq!(escape.code, Some(1), "{escape:?}");
    assert!(
        escape.stderr.contains("4.03") || escape.stderr.contains("4.04"),
        "{}",
        escape.stderr
    );

    // Observation: a change of the file is notified (polled every second).
    let file = dir.join("small.txt");
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        std::fs::write(&file, "changed once\n").expect("write");
        thread::sleep(Duration::from_millis(1500));
        std::fs::write(&file, "changed twice, longer\n").expect("write");
    });
    let observe = coap(&[
        "observe",
        &server.uri("/small.txt"),
        "--count",
        "3",
        "--timeout",
        "10",
    ]);
    let _ = writer.join();
    assert_ok(&observe, "observe /small.txt");
    assert_eq!(
        observe.text(),
        "small file\nchanged once\nchanged twice, longer\n"
    );
}

#[test]
fn fileserver_writes_with_write() {
    let dir = file_tree("fs-write");
    let server = fileserver(&dir, true);
    let body: String = (0..200).map(|i| format!("uploaded {i}\n")).collect();
    let put = coap(&[
        "put",
        &server.uri("/new/dir/file.txt"),
        "--payload",
        &body,
        "-v",
    ]);
    assert_ok(&put, "PUT a new file");
    assert!(put.stderr.contains("2.01 Created"), "{}", put.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("new/dir/file.txt")).expect("read"),
        body
    );
    let again = coap(&[
        "put",
        &server.uri("/new/dir/file.txt"),
        "--payload",
        "short",
        "-v",
    ]);
    assert!(again.stderr.contains("2.04 Changed"), "{}", again.stderr);
    // If-None-Match (option 5, empty) refuses to replace an existing file.
    let guarded = coap(&[
        "put",
        &server.uri("/small.txt"),
        "--payload",
        "x",
        "--option",
        "5=",
    ]);
    assert_eq!(guarded.code, Some(1), "{guarded:?}");
    let delete = coap(&["delete", &server.uri("/new/dir/file.txt")]);
    assert_ok(&delete, "DELETE");
    assert!(!dir.join("new/dir/file.txt").exists());
    let traversal = coap(&["put", &server.uri("/%2e%2e/escaped.txt"), "--payload", "x"]);
    assert_eq!(traversal.code, Some(1), "{traversal:?}");
    assert!(!dir.parent().expect("parent").join("escaped.txt").exists());
}

#[test]
fn libcoap_client_against_our_fileserver() {
    let Some(client) = libcoap_client() else {
        return;
    };
    let dir = file_tree("fs-libcoap");
    let server = fileserver(&dir, true);
    let big = tool(
        &client,
        &["-B", "10", "-b", "64", &server.uri("/sub/big.bin")],
    );
    assert_ok(&big, "coap-client -b 64 GET big.bin");
    let expected = std::fs::read(dir.join("sub/big.bin")).expect("read");
    assert_eq!(
        &big.stdout[..expected.len().min(big.stdout.len())],
        &expected[..]
    );

    let upload = dir.join("upload.src");
    let body: String = (0..150).map(|i| format!("from libcoap {i}\n")).collect();
    std::fs::write(&upload, &body).expect("write");
    let put = tool(
        &client,
        &[
            "-B",
            "10",
            "-b",
            "64",
            "-m",
            "put",
            "-f",
            upload.to_str().expect("utf-8"),
            &server.uri("/put/by/libcoap.txt"),
        ],
    );
    assert_ok(&put, "coap-client PUT -f");
    assert_eq!(
        std::fs::read_to_string(dir.join("put/by/libcoap.txt")).expect("read"),
        body
    );

    let file = dir.join("small.txt");
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        std::fs::write(&file, "edited\n").expect("write");
    });
    let observe = tool(&client, &["-B", "10", "-s", "4", &server.uri("/small.txt")]);
    let _ = writer.join();
    assert_ok(&observe, "coap-client -s 4 observe");
    let text = observe.text();
    assert!(
        text.contains("small file") && text.contains("edited"),
        "{text}"
    );

    let delete = tool(
        &client,
        &[
            "-B",
            "10",
            "-m",
            "delete",
            &server.uri("/put/by/libcoap.txt"),
        ],
    );
    assert_ok(&delete, "coap-client DELETE");
    assert!(!dir.join("put/by/libcoap.txt").exists());
}

#[test]
fn aiocoap_client_against_our_fileserver() {
    let Some(client) = aiocoap_client() else {
        return;
    };
    let dir = file_tree("fs-aiocoap");
    let server = fileserver(&dir, true);
    let big = tool(&client, &[&server.uri("/sub/big.bin")]);
    assert_ok(&big, "aiocoap-client GET big.bin");
    assert_eq!(
        big.stdout,
        std::fs::read(dir.join("sub/big.bin")).expect("read")
    );
    let body: String = (0..150).map(|i| format!("from aiocoap {i}\n")).collect();
    let put = tool(
        &client,
        &["-m", "PUT", "--payload", &body, &server.uri("/aio.txt")],
    );
    assert_ok(&put, "aiocoap-client PUT");
    assert_eq!(
        std::fs::read_to_string(dir.join("aio.txt")).expect("read"),
        body
    );
    let listing = tool(&client, &[&server.uri("/")]);
    assert_ok(&listing, "aiocoap-client GET /");
    assert!(listing.text().contains("aio.txt"), "{}", listing.text());
}

// ---- --proxy through real forward proxies ---------------------------------------------------

/// Starts a peer proxy on a free port and waits (bounded) until a request through it works.
fn start_proxy(mut command: Command, port: u16, target: &str, scheme_form: bool) -> Guard {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the proxy");
    let guard = Guard { child };
    let proxy = format!("coap://127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let mut args = vec!["get", "--proxy", &proxy, target, "--timeout", "1"];
        if scheme_form {
            args.push("--proxy-scheme");
        }
        let probe = coap(&args);
        if probe.code == Some(0) {
            return guard;
        }
        assert!(Instant::now() < end, "the proxy never forwarded: {probe:?}");
        thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn proxy_uri_through_libcoap_server() {
    let Some(server_bin) = libcoap_server() else {
        return;
    };
    let server = demo();
    let port = free_udp_port();
    let mut command = Command::new(&server_bin);
    // `-P ,NAME`: a forward proxy that connects directly to the target.
    command.args([
        "-A",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-P",
        ",proxy-under-test",
    ]);
    let target = server.uri("/time");
    let _proxy = start_proxy(command, port, &target, false);
    let proxy = format!("coap://127.0.0.1:{port}");
    let via = coap(&["get", "--proxy", &proxy, &server.uri("/other/block")]);
    assert_ok(&via, "GET through coap-server's proxy");
    let direct = coap(&["get", &server.uri("/other/block")]);
    assert_eq!(via.stdout, direct.stdout);
    let log = server.drain_log().join("\n");
    assert!(log.contains("GET /other/block"), "{log}");
}

#[test]
fn proxy_scheme_through_aiocoap_proxy() {
    let Some(proxy_bin) = peer("AIOCOAP_PROXY", &["aiocoap-proxy"]) else {
        return;
    };
    let server = demo();
    let port = free_udp_port();
    let mut command = Command::new(&proxy_bin);
    command.args(["--forward", "--bind", &format!("127.0.0.1:{port}")]);
    let target = server.uri("/time");
    let _proxy = start_proxy(command, port, &target, true);
    let proxy = format!("coap://127.0.0.1:{port}");
    let via = coap(&[
        "get",
        "--proxy",
        &proxy,
        "--proxy-scheme",
        &server.uri("/other/block"),
    ]);
    assert_ok(&via, "GET through aiocoap-proxy");
    let direct = coap(&["get", &server.uri("/other/block")]);
    assert_eq!(via.stdout, direct.stdout);
}

/// `coap proxy`: our own proxy, both forms of forward request and a reverse route, the
/// cache (the demo's /other/block has no Max-Age: 60 s fresh, so the second GET is not seen by
/// the origin), and observations relayed.
#[test]
fn our_proxy_forwards_reverses_and_caches() {
    let server = demo();
    let reverse = format!("/demo={}", server.uri("/"));
    let proxy = start_server(&[
        "proxy",
        "--bind",
        "127.0.0.1:0",
        "--reverse",
        &reverse,
        "--upstream-nstart",
        "4",
    ]);
    let via = proxy.uri("");
    let direct = coap(&["get", &server.uri("/other/block")]);
    assert_ok(&direct, "GET /other/block");
    let _ = server.drain_log();

    let first = coap(&["get", "--proxy", &via, &server.uri("/other/block")]);
    assert_ok(&first, "GET through coap proxy (Proxy-Uri)");
    assert_eq!(first.stdout, direct.stdout);
    let second = coap(&[
        "get",
        "--proxy",
        &via,
        "--proxy-scheme",
        &server.uri("/other/block"),
    ]);
    assert_ok(&second, "GET through coap proxy (Proxy-Scheme)");
    assert_eq!(second.stdout, direct.stdout);
    let reversed = coap(&["get", &proxy.uri("/demo/other/block")]);
    assert_ok(&reversed, "GET through the reverse route");
    assert_eq!(reversed.stdout, direct.stdout);
    // The origin's handler ran once (its engine serves the Block2 pieces); the other two
    // GETs were answered from the proxy's cache.
    let log = server.drain_log().join("\n");
    assert_eq!(log.matches("GET /other/block").count(), 1, "{log}");

    let refused = coap(&["get", "--proxy", &via, "http://127.0.0.1/"]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.text().contains("5.05") || refused.stderr.contains("5.05"),
        "{refused:?}"
    );

    // Observations are relayed, through the forward route and the reverse one: the demo's
    // /time notifies every 2 s, and each observer sees two notifications.
    for observe in [
        coap(&[
            "observe",
            "--proxy",
            &via,
            &server.uri("/time"),
            "--count",
            "2",
        ]),
        coap(&["observe", &proxy.uri("/demo/time"), "--count", "2"]),
    ] {
        assert_ok(&observe, "observe through coap proxy");
        assert_eq!(observe.text().lines().count(), 2, "{observe:?}");
    }
}

/// `coap proxy --allow-host`: a forward proxy that serves only the hosts it is told.
#[test]
fn our_proxy_forwards_only_to_allowed_hosts() {
    let server = demo();
    let only_localhost = start_server(&[
        "proxy",
        "--bind",
        "127.0.0.1:0",
        "--allow-host",
        "localhost",
    ]);
    let refused = coap(&[
        "get",
        "--proxy",
        &only_localhost.uri(""),
        &server.uri("/time"),
    ]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.text().contains("5.05") || refused.stderr.contains("5.05"),
        "{refused:?}"
    );
    let loopback = start_server(&[
        "proxy",
        "--bind",
        "127.0.0.1:0",
        "--allow-host",
        "[::1]",
        "--allow-host",
        "127.0.0.1",
    ]);
    let allowed = coap(&["get", "--proxy", &loopback.uri(""), &server.uri("/time")]);
    assert_ok(&allowed, "GET through a proxy that allows 127.0.0.1");
}

#[test]
fn fileserver_notifies_directory_changes() {
    let dir = file_tree("fs-dir-observe");
    let server = fileserver(&dir, false);
    let sub = dir.join("sub");
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        std::fs::write(sub.join("appeared.txt"), "new").expect("write");
    });
    let observe = coap(&[
        "observe",
        &server.uri("/sub"),
        "--count",
        "2",
        "--timeout",
        "10",
    ]);
    let _ = writer.join();
    assert_ok(&observe, "observe /sub");
    let text = observe.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(!lines[0].contains("appeared.txt"), "{text}");
    assert!(lines[1].contains("</sub/appeared.txt>"), "{text}");
}

#[test]
fn observe_of_a_plain_resource_prints_it_once() {
    let server = demo();
    let outcome = coap(&[
        "observe",
        &server.uri("/whoami"),
        "--count",
        "3",
        "--timeout",
        "5",
    ]);
    assert_ok(&outcome, "observe /whoami");
    assert_eq!(outcome.text().lines().count(), 1, "{}", outcome.text());
    assert!(
        outcome.stderr.contains("did not accept"),
        "{}",
        outcome.stderr
    );
    let missing = coap(&[
        "observe",
        &server.uri("/nothing"),
        "--count",
        "3",
        "--timeout",
        "5",
    ]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
}

#[test]
fn pretty_printing_of_json_cbor_and_link_format() {
    let dir = file_tree("fs-pretty");
    std::fs::write(dir.join("data.json"), br#"{"a":[1,2],"b":"x"}"#).expect("write");
    // {"t": 21.5, "ok": true} in CBOR: a2 61 74 f9 4d 60 62 6f 6b f5 (21.5 as a half float).
    std::fs::write(
        dir.join("data.cbor"),
        [0xa2, 0x61, b't', 0xf9, 0x4d, 0x60, 0x62, b'o', b'k', 0xf5],
    )
    .expect("write");
    let server = fileserver(&dir, false);

    let raw = coap(&["get", &server.uri("/data.json")]);
    assert_eq!(raw.text(), r#"{"a":[1,2],"b":"x"}"#);
    let pretty = coap(&["get", &server.uri("/data.json"), "--pretty"]);
    assert_ok(&pretty, "GET data.json --pretty");
    assert!(pretty.text().lines().count() > 3, "{}", pretty.text());
    assert!(pretty.text().contains("\"b\": \"x\""), "{}", pretty.text());

    let cbor = coap(&["get", &server.uri("/data.cbor"), "--pretty"]);
    assert_ok(&cbor, "GET data.cbor --pretty");
    assert_eq!(cbor.text(), "{\"t\": 21.5, \"ok\": true}\n");

    let links = coap(&["get", &server.uri("/"), "--pretty"]);
    assert!(links.text().lines().count() >= 4, "{}", links.text());
    assert!(
        links.text().lines().all(|l| l.starts_with("</")),
        "{}",
        links.text()
    );
}
