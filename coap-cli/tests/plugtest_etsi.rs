//! The ETSI CoAP#4 test descriptions (TD_COAP_CORE, TD_COAP_LINK, TD_COAP_BLOCK, TD_COAP_OBS)
//! run against `coap plugtest-server`, one `#[test]` per test description.
//!
//! The client is libcoap's `coap-client` (the `COAP_CLIENT` environment variable as an
//! absolute path, else `coap-client` or `coap-client-notls` on `PATH`). Each test starts its
//! own server on a free loopback port, runs the client with `-v 7` so it prints every PDU it
//! sends and receives, and checks the test description's pass criteria on those PDUs. Where
//! the client cannot play its part (a zero-length token, a bare ping, an RST to a
//! notification), a scripted UDP client in this file does.
//!
//! Without a client the tests print `SKIP` and pass, unless `COAP_INTEROP_REQUIRED=1`. Every
//! wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Notification interval of the servers under test (the TDs' 5 s, shortened to keep the run
/// quick; nothing in the TDs depends on the exact period).
const INTERVAL_MS: &str = "1000";

// ---------------------------------------------------------------------------------------------
// The peer client

/// Finds libcoap's `coap-client`, or says why the test is skipped (or fails, when interop is
/// required).
fn peer() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("COAP_CLIENT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "COAP_CLIENT={} is not a file",
            path.display()
        );
        return Some(path);
    }
    for name in ["coap-client", "coap-client-notls"] {
        if let Some(found) = on_path(name) {
            return Some(found);
        }
    }
    let required = std::env::var("COAP_INTEROP_REQUIRED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "COAP_INTEROP_REQUIRED=1 but libcoap's coap-client was not found \
         (set COAP_CLIENT or install coap-client-notls)"
    );
    eprintln!("SKIP: libcoap's coap-client not found (set COAP_CLIENT or put it on PATH)");
    None
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// The server under test

/// A `coap plugtest-server` child process, killed on drop.
struct PlugtestServer {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl PlugtestServer {
    fn start() -> PlugtestServer {
        PlugtestServer::start_with(&[])
    }

    /// Starts the server with extra environment variables and waits (at most 30 s) for its
    /// `listening on ADDR` line.
    fn start_with(env: &[(&str, &str)]) -> PlugtestServer {
        PlugtestServer::start_at("127.0.0.1:0", env)
    }

    /// Starts the server on `bind`.
    fn start_at(bind: &str, env: &[(&str, &str)]) -> PlugtestServer {
        PlugtestServer::start_coap(&["plugtest-server", "--bind", bind], env)
    }

    /// `coap proxy` as a reverse proxy for the whole namespace of `origin`, the proxy of
    /// configuration CoAP_CFG_03 (TD_COAP_CORE_24 to 29).
    fn reverse_proxy_for(origin: &PlugtestServer) -> PlugtestServer {
        let route = format!("/={}", origin.uri("/"));
        PlugtestServer::start_coap(
            &["proxy", "--bind", "127.0.0.1:0", "--reverse", &route],
            &[],
        )
    }

    /// Starts `coap ARGS` and waits (at most 30 s) for its `listening on ADDR` line.
    fn start_coap(args: &[&str], env: &[(&str, &str)]) -> PlugtestServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coap"));
        command
            .args(args)
            .env("COAP_PLUGTEST_INTERVAL_MS", INTERVAL_MS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start coap");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_address(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mut server = PlugtestServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => server.addr = addr,
            Err(_) => panic!(
                "coap {args:?} printed no `listening on` line within 30 s; stderr:\n{}",
                server.log()
            ),
        }
        server
    }

    fn uri(&self, path: &str) -> String {
        format!("coap://{}{}", self.addr, path)
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for PlugtestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of a `... listening on 127.0.0.1:5683` log line (colour codes ignored).
fn listening_address(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Running the client and reading what it printed

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Sent by the client.
    Out,
    /// Received by the client.
    In,
}

/// One PDU as libcoap prints it: `v:1 t:CON c:GET i:accc {01} [ Uri-Path:test ] :: 'text'`.
#[derive(Clone, Debug)]
struct Pdu {
    dir: Dir,
    mtype: String,
    code: String,
    mid: String,
    token: String,
    options: Vec<(String, String)>,
    payload: Vec<u8>,
}

impl Pdu {
    fn opt(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn opts(&self, name: &str) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn has(&self, name: &str) -> bool {
        self.opt(name).is_some()
    }

    fn is(&self, mtype: &str, code: &str) -> bool {
        self.mtype == mtype && self.code == code
    }

    fn is_request(&self) -> bool {
        matches!(
            self.code.as_str(),
            "GET" | "POST" | "PUT" | "DELETE" | "FETCH" | "PATCH" | "iPATCH"
        )
    }

    fn is_empty_ack(&self) -> bool {
        self.is("ACK", "0.00") && self.token.is_empty() && self.payload.is_empty()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The Block1 or Block2 option as (NUM, M, size).
    fn block(&self, name: &str) -> Option<(u32, bool, usize)> {
        let mut parts = self.opt(name)?.split('/');
        let num = parts.next()?.parse().ok()?;
        let more = parts.next()? == "M";
        let size = parts.next()?.parse().ok()?;
        Some((num, more, size))
    }

    fn observe(&self) -> Option<u32> {
        self.opt("Observe")?.parse().ok()
    }
}

/// What one client run printed.
#[derive(Debug)]
struct Run {
    pdus: Vec<Pdu>,
    log: String,
    /// The body written with `-o` (the whole body of a block-wise transfer).
    body: Vec<u8>,
}

impl Run {
    fn sent(&self) -> impl Iterator<Item = &Pdu> {
        self.pdus.iter().filter(|p| p.dir == Dir::Out)
    }

    fn received(&self) -> impl Iterator<Item = &Pdu> {
        self.pdus.iter().filter(|p| p.dir == Dir::In)
    }

    fn first_request(&self) -> &Pdu {
        self.sent()
            .find(|p| p.is_request())
            .unwrap_or_else(|| panic!("the client sent no request:\n{}", self.log))
    }

    /// The first response (a non-empty message with a response code) received.
    fn first_response(&self) -> &Pdu {
        self.responses()
            .next()
            .unwrap_or_else(|| panic!("the client received no response:\n{}", self.log))
    }

    fn responses(&self) -> impl Iterator<Item = &Pdu> {
        self.received()
            .filter(|p| !p.is_request() && p.code != "0.00")
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Runs `coap-client -v 7 -B <wait> -o <file> ARGS`, killing it if it outlives `wait` + 10 s.
fn run_client(client: &Path, wait_secs: u64, args: &[&str]) -> Run {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir();
    let stem = format!("coap-plugtest-etsi-{}-{n}", std::process::id());
    let log_path = dir.join(format!("{stem}.log"));
    let body_path = dir.join(format!("{stem}.body"));
    let log_file = std::fs::File::create(&log_path).expect("create the client log");
    let log_err = log_file.try_clone().expect("clone the client log");
    let wait = wait_secs.to_string();
    let body_arg = body_path.to_string_lossy().into_owned();
    let mut child = Command::new(client)
        .args(["-v", "7", "-B", &wait, "-o", &body_arg])
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .expect("start coap-client");
    let deadline = Instant::now() + Duration::from_secs(wait_secs + 10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let log = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap_or_default()).into_owned();
    let body = std::fs::read(&body_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(&body_path);
    Run {
        pdus: parse_log(&log),
        log,
        body,
    }
}

/// The PDUs in a `-v 7` log, with their direction from the `sent`/`received` line before each.
fn parse_log(log: &str) -> Vec<Pdu> {
    let mut pdus = Vec::new();
    let mut pending = None;
    for line in log.lines() {
        if let Some(at) = line.find("v:1 t:") {
            if let Some(dir) = pending.take() {
                if let Some(pdu) = parse_pdu(dir, &line[at..]) {
                    pdus.push(pdu);
                }
            }
        } else if line.ends_with(" bytes") {
            // libcoap 4.3.1 logs `UDP : sent 13 bytes` and `UDP : received 57 bytes`;
            // later versions `UDP : netif: sent   13 bytes` and `netif: recv   57 bytes`.
            if line.contains(": sent ") {
                pending = Some(Dir::Out);
            } else if line.contains(": received ") || line.contains(": recv ") {
                pending = Some(Dir::In);
            }
        }
    }
    pdus
}

fn parse_pdu(dir: Dir, line: &str) -> Option<Pdu> {
    let mut words = line.split(' ');
    let _version = words.next()?;
    let mtype = words.next()?.strip_prefix("t:")?.to_owned();
    let code = words.next()?.strip_prefix("c:")?.to_owned();
    let mid = words.next()?.strip_prefix("i:")?.to_owned();
    let token = words
        .next()?
        .strip_prefix('{')?
        .strip_suffix('}')?
        .to_owned();
    let inner = line.find(" [")? + 2;
    let close = inner + line[inner..].find(']')?;
    let options = line[inner..close]
        .trim()
        .split(", ")
        .filter(|o| !o.is_empty())
        .filter_map(|o| o.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let payload = match line[close..].find(" :: '") {
        Some(at) => {
            let quoted = &line[close + at + 5..];
            unescape(quoted.strip_suffix('\'').unwrap_or(quoted))
        }
        None => Vec::new(),
    };
    Some(Pdu {
        dir,
        mtype,
        code,
        mid,
        token,
        options,
        payload,
    })
}

/// libcoap prints non-printable payload bytes as `\xHH`.
fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            if let Some(b) = bytes
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The targets of a link-format document, in order.
fn link_targets(doc: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_quotes = false;
    let mut start_of_link = true;
    for (i, c) in doc.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => start_of_link = true,
            '<' if !in_quotes && start_of_link => {
                if let Some(end) = doc[i..].find('>') {
                    targets.push(doc[i + 1..i + end].to_owned());
                }
                start_of_link = false;
            }
            c if !c.is_whitespace() => start_of_link = false,
            _ => {}
        }
    }
    targets
}

/// The link for `target` in a link-format document.
fn link_of<'d>(doc: &'d str, target: &str) -> Option<&'d str> {
    let start = doc.find(&format!("<{target}>"))?;
    let rest = &doc[start..];
    let end = rest[1..].find(",<").map_or(rest.len(), |e| e + 1);
    Some(&rest[..end])
}

/// Checks a piggybacked response: same MID and token as the request, in an ACK.
fn assert_piggybacked<'r>(run: &'r Run, codes: &[&str]) -> (&'r Pdu, &'r Pdu) {
    let req = run.first_request();
    let rsp = run.first_response();
    assert_eq!(rsp.mtype, "ACK", "piggybacked in the ACK:\n{}", run.log);
    assert!(
        codes.contains(&rsp.code.as_str()),
        "code {} not in {codes:?}:\n{}",
        rsp.code,
        run.log
    );
    assert_eq!(rsp.mid, req.mid, "same Message ID");
    assert_eq!(rsp.token, req.token, "same token");
    (req, rsp)
}

/// Checks a NON response to a NON request: same token.
fn assert_non_response<'r>(run: &'r Run, codes: &[&str]) -> (&'r Pdu, &'r Pdu) {
    let req = run.first_request();
    assert_eq!(req.mtype, "NON");
    let rsp = run.first_response();
    assert_eq!(rsp.mtype, "NON", "a NON response:\n{}", run.log);
    assert!(
        codes.contains(&rsp.code.as_str()),
        "code {} not in {codes:?}:\n{}",
        rsp.code,
        run.log
    );
    assert_eq!(rsp.token, req.token, "same token");
    (req, rsp)
}

macro_rules! peer_or_skip {
    () => {
        match peer() {
            Some(client) => client,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// TD_COAP_CORE

#[test]
fn td_coap_core_01() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &[&server.uri("/test")]);
    let (req, rsp) = assert_piggybacked(&run, &["2.05"]);
    assert!(req.is("CON", "GET"));
    assert_eq!(req.opts("Uri-Path"), ["test"]);
    assert!(rsp.has("Content-Format"), "Content-Format present");
    assert!(!rsp.payload.is_empty(), "non-empty payload");
}

#[test]
fn td_coap_core_02() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-m", "delete", &server.uri("/test")]);
    let (req, rsp) = assert_piggybacked(&run, &["2.02"]);
    assert!(req.is("CON", "DELETE"));
    assert_eq!(rsp.has("Content-Format"), !rsp.payload.is_empty());
}

#[test]
fn td_coap_core_03() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(
        &client,
        10,
        &["-m", "put", "-t", "0", "-e", "td03", &server.uri("/test")],
    );
    let (req, _) = assert_piggybacked(&run, &["2.04", "2.01"]);
    assert!(req.is("CON", "PUT") && req.has("Content-Format"));
}

#[test]
fn td_coap_core_04() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(
        &client,
        10,
        &["-m", "post", "-t", "0", "-e", "td04", &server.uri("/test")],
    );
    let (req, _) = assert_piggybacked(&run, &["2.01", "2.04"]);
    assert!(req.is("CON", "POST") && req.has("Content-Format"));
}

#[test]
fn td_coap_core_05() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-N", &server.uri("/test")]);
    let (req, rsp) = assert_non_response(&run, &["2.05"]);
    assert_eq!(req.code, "GET");
    assert!(rsp.has("Content-Format"));
    assert!(!rsp.payload.is_empty());
}

#[test]
fn td_coap_core_06() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-N", "-m", "delete", &server.uri("/test")]);
    let (req, _) = assert_non_response(&run, &["2.02"]);
    assert_eq!(req.code, "DELETE");
}

#[test]
fn td_coap_core_07() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(
        &client,
        10,
        &[
            "-N",
            "-m",
            "put",
            "-t",
            "0",
            "-e",
            "td07",
            &server.uri("/test"),
        ],
    );
    let (req, _) = assert_non_response(&run, &["2.04", "2.01"]);
    assert_eq!(req.code, "PUT");
}

#[test]
fn td_coap_core_08() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(
        &client,
        10,
        &[
            "-N",
            "-m",
            "post",
            "-t",
            "0",
            "-e",
            "td08",
            &server.uri("/test"),
        ],
    );
    let (req, _) = assert_non_response(&run, &["2.01", "2.04"]);
    assert_eq!(req.code, "POST");
}

/// CORE_09 and CORE_11: an empty ACK first, then a CON response that the client acknowledges.
fn check_separate(run: &Run) {
    let req = run.first_request();
    assert!(req.is("CON", "GET"));
    let ack = run
        .received()
        .find(|p| p.is_empty_ack())
        .unwrap_or_else(|| panic!("no empty ACK:\n{}", run.log));
    assert_eq!(ack.mid, req.mid, "the empty ACK echoes the request's MID");
    let rsp = run.first_response();
    assert!(rsp.is("CON", "2.05"), "a separate CON 2.05:\n{}", run.log);
    assert_ne!(rsp.mid, req.mid, "the server's own MID");
    assert_eq!(rsp.token, req.token, "the request's token");
    assert!(rsp.has("Content-Format") && !rsp.payload.is_empty());
    assert!(
        run.sent().any(|p| p.is_empty_ack() && p.mid == rsp.mid),
        "the client acknowledges the separate response:\n{}",
        run.log
    );
}

#[test]
fn td_coap_core_09() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &[&server.uri("/separate")]);
    check_separate(&run);
}

#[test]
fn td_coap_core_10() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-T", "c0ffee", &server.uri("/test")]);
    let (req, _) = assert_piggybacked(&run, &["2.05"]);
    assert!((2..=16).contains(&req.token.len()), "a 1-8 byte token");
}

#[test]
fn td_coap_core_11() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-T", "c0ffee", &server.uri("/separate")]);
    check_separate(&run);
    assert!((2..=16).contains(&run.first_request().token.len()));
}

#[test]
fn td_coap_core_12() {
    // libcoap's client always sends a token, so a scripted client sends the zero-length one.
    let server = PlugtestServer::start();
    let mut raw = RawClient::new(server.addr);
    let req = RawMessage::request(0, 1, 0x1201, b"", &[(11, b"test")]);
    let rsp = raw.exchange(&req).expect("an answer");
    assert_eq!((rsp.mtype, rsp.code), (2, 0x45), "ACK 2.05");
    assert_eq!(rsp.mid, 0x1201);
    assert!(rsp.token.is_empty(), "an empty token echoed");
    assert!(!rsp.payload.is_empty());
}

#[test]
fn td_coap_core_13() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &[&server.uri("/seg1/seg2/seg3")]);
    let (req, rsp) = assert_piggybacked(&run, &["2.05"]);
    assert_eq!(req.opts("Uri-Path"), ["seg1", "seg2", "seg3"]);
    assert!(!rsp.payload.is_empty());
}

#[test]
fn td_coap_core_14() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(
        &client,
        10,
        &[&server.uri("/query?first=1&second=2&third=3")],
    );
    let (req, rsp) = assert_piggybacked(&run, &["2.05"]);
    assert_eq!(req.opts("Uri-Path"), ["query"]);
    assert_eq!(req.opts("Uri-Query"), ["first=1", "second=2", "third=3"]);
    assert!(rsp.text().contains("first=1"), "{}", rsp.text());
}

/// What a lossy-link relay drops: `(client to server?, type, code)` of the datagram.
type Kind = (bool, u8, u8);

/// The lossy gateway of CoAP_CFG_LOSSY: a UDP relay between one client and the server that
/// drops the first datagram of each kind in `plan`.
struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    dropped: Arc<Mutex<Vec<Kind>>>,
    /// Every datagram seen, dropped or not, with its direction (true: client to server).
    seen: Arc<Mutex<Vec<(bool, RawMessage)>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn new(server: SocketAddr, plan: &[Kind]) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind the relay");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind the relay's upstream");
        back.connect(server).expect("connect upstream");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("relay address");
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(plan.to_vec()));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        // Drops a datagram if its kind is still in the plan (once per kind).
        let decide = {
            let plan = Arc::clone(&plan);
            let dropped = Arc::clone(&dropped);
            let seen = Arc::clone(&seen);
            move |upstream: bool, datagram: &[u8]| -> bool {
                let Some(m) = RawMessage::decode(datagram) else {
                    return false;
                };
                let kind = (upstream, m.mtype, m.code);
                seen.lock().unwrap().push((upstream, m));
                let mut plan = plan.lock().unwrap();
                match plan.iter().position(|k| *k == kind) {
                    Some(i) => {
                        plan.remove(i);
                        dropped.lock().unwrap().push(kind);
                        true
                    }
                    None => false,
                }
            }
        };
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let mut threads = Vec::new();
        {
            let (stop, client, decide) = (Arc::clone(&stop), Arc::clone(&client), decide.clone());
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        if !decide(true, &buf[..len]) {
                            let _ = back.send(&buf[..len]);
                        }
                    }
                }
            }));
        }
        {
            let stop = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(len) = back2.recv(&mut buf) {
                        let to = *client.lock().unwrap();
                        if let Some(to) = to {
                            if !decide(false, &buf[..len]) {
                                let _ = front2.send_to(&buf[..len], to);
                            }
                        }
                    }
                }
            }));
        }
        LossyRelay {
            addr,
            stop,
            dropped,
            seen,
            threads,
        }
    }

    /// How many datagrams seen so far match `pick`.
    fn count(&self, pick: impl Fn(bool, &RawMessage) -> bool) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(up, m)| pick(*up, m))
            .count()
    }

    fn dropped(&self) -> Vec<Kind> {
        self.dropped.lock().unwrap().clone()
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// CON=0, ACK=2; GET=0x01, 2.05=0x45, Empty=0x00.
const CON_GET: (u8, u8) = (0, 0x01);

#[test]
fn td_coap_core_15() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    // A lost request and a lost (piggybacked) response.
    let plan = [(true, CON_GET.0, CON_GET.1), (false, 2, 0x45)];
    let relay = LossyRelay::new(server.addr, &plan);
    let run = run_client(&client, 60, &[&format!("coap://{}/test", relay.addr)]);
    assert_eq!(relay.dropped(), plan, "both losses happened");
    let req = run.first_request();
    let sends = run
        .sent()
        .filter(|p| p.mid == req.mid && p.is_request())
        .count();
    assert!(
        sends >= 3,
        "each loss triggers a retransmission:\n{}",
        run.log
    );
    let rsp = run.first_response();
    assert!(rsp.is("ACK", "2.05") && rsp.mid == req.mid && rsp.token == req.token);
    assert!(!rsp.payload.is_empty(), "the exchange completes");
}

#[test]
fn td_coap_core_16() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    // A lost request, a lost empty ACK, a lost separate response and a lost ACK of it.
    let plan = [
        (true, CON_GET.0, CON_GET.1),
        (false, 2, 0x00),
        (false, 0, 0x45),
        (true, 2, 0x00),
    ];
    let relay = LossyRelay::new(server.addr, &plan);
    let run = run_client(&client, 60, &[&format!("coap://{}/separate", relay.addr)]);
    let mut dropped = relay.dropped();
    dropped.sort_unstable();
    let mut expected = plan.to_vec();
    expected.sort_unstable();
    assert_eq!(dropped, expected, "every loss happened");
    let req = run.first_request();
    let sends = run
        .sent()
        .filter(|p| p.mid == req.mid && p.is_request())
        .count();
    assert!(
        sends >= 2,
        "the lost request is retransmitted:\n{}",
        run.log
    );
    let rsp = run.first_response();
    assert!(
        rsp.is("CON", "2.05") && rsp.token == req.token,
        "{}",
        run.log
    );
    assert!(
        run.sent().any(|p| p.is_empty_ack() && p.mid == rsp.mid),
        "the client acknowledges the response:\n{}",
        run.log
    );
    // The server retransmits the response after the lost first copy and after the lost ACK
    // (the client has exited by then; the relay sees it).
    let mid = u16::from_str_radix(&rsp.mid, 16).expect("a hex MID");
    let copies = |relay: &LossyRelay| {
        relay.count(|up, m| !up && m.mtype == 0 && m.code == 0x45 && m.mid == mid)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while copies(&relay) < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        copies(&relay) >= 3,
        "the response is retransmitted after each loss"
    );
    // The client stops retransmitting the request once the response is there.
    let pos = run
        .pdus
        .iter()
        .position(|p| p.dir == Dir::In && p.mid == rsp.mid)
        .unwrap();
    assert!(
        !run.pdus[pos..]
            .iter()
            .any(|p| p.dir == Dir::Out && p.is_request() && p.mid == req.mid),
        "{}",
        run.log
    );
    assert!(!rsp.payload.is_empty());
}

#[test]
fn td_coap_core_17() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-N", &server.uri("/separate")]);
    let (_, rsp) = assert_non_response(&run, &["2.05"]);
    assert!(
        !run.received().any(|p| p.mtype == "ACK"),
        "no ACK for a NON request:\n{}",
        run.log
    );
    assert!(rsp.has("Content-Format") && !rsp.payload.is_empty());
}

#[test]
fn td_coap_core_18() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    location_path_steps(&client, &server.uri("/test"));
}

/// TD_COAP_CORE_18 (and 24 through a proxy): a POST answered 2.01 with three Location-Path
/// options, each a single segment.
fn location_path_steps(client: &Path, uri: &str) {
    let run = run_client(client, 10, &["-m", "post", "-t", "0", "-e", "created", uri]);
    let (_, rsp) = assert_piggybacked(&run, &["2.01"]);
    let location = rsp.opts("Location-Path");
    assert_eq!(location, ["location1", "location2", "location3"]);
    assert!(location.iter().all(|s| !s.contains('/')));
}

#[test]
fn td_coap_core_19() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    location_query_steps(&client, &server.uri("/location-query"));
}

/// TD_COAP_CORE_19 (and 25 through a proxy): a POST answered 2.01 with two Location-Query
/// options.
fn location_query_steps(client: &Path, uri: &str) {
    let run = run_client(client, 10, &["-m", "post", "-t", "0", "-e", "created", uri]);
    let (_, rsp) = assert_piggybacked(&run, &["2.01"]);
    assert_eq!(rsp.opts("Location-Query"), ["first=1", "second=2"]);
}

#[test]
fn td_coap_core_20() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    accept_steps(&client, &server.uri("/multi-format"));
}

/// TD_COAP_CORE_20 (and 26 through a proxy): the same resource in the format each Accept
/// asks for.
fn accept_steps(client: &Path, uri: &str) {
    let text = run_client(client, 10, &["-A", "0", uri]);
    let (req, rsp) = assert_piggybacked(&text, &["2.05"]);
    assert!(req.has("Accept"));
    assert_eq!(rsp.opt("Content-Format"), Some("text/plain"));
    assert!(!rsp.payload.is_empty());
    // Behind a proxy, Accept is part of the cache key: the stored text/plain answer does
    // not serve this.
    let xml = run_client(client, 10, &["-A", "41", uri]);
    let (req2, rsp) = assert_piggybacked(&xml, &["2.05"]);
    assert_ne!(req2.mid, req.mid, "a new MID");
    assert_eq!(rsp.opt("Content-Format"), Some("application/xml"));
    assert!(rsp.text().starts_with("<msg "), "{}", rsp.text());
}

#[test]
fn td_coap_core_21() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let uri = server.uri("/validate");
    let first = run_client(&client, 10, &[&uri]);
    let (_, rsp) = assert_piggybacked(&first, &["2.05"]);
    let etag1 = rsp.opt("ETag").expect("an ETag").to_owned();
    let payload1 = rsp.payload.clone();
    let etag_option = format!("4,{etag1}");

    let valid = run_client(&client, 10, &["-O", &etag_option, &uri]);
    let (req, rsp) = assert_piggybacked(&valid, &["2.03"]);
    assert_eq!(req.opt("ETag"), Some(etag1.as_str()));
    assert_eq!(rsp.opt("ETag"), Some(etag1.as_str()));
    assert!(rsp.payload.is_empty(), "2.03 has no payload");

    // Another client updates the resource.
    let update = run_client(
        &client,
        10,
        &["-m", "put", "-t", "0", "-e", "updated", &uri],
    );
    assert_piggybacked(&update, &["2.04", "2.01"]);

    let again = run_client(&client, 10, &["-O", &etag_option, &uri]);
    let (_, rsp) = assert_piggybacked(&again, &["2.05"]);
    assert_ne!(rsp.opt("ETag"), Some(etag1.as_str()), "a new ETag");
    assert_ne!(rsp.payload, payload1, "a new payload");
}

#[test]
fn td_coap_core_22() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let uri = server.uri("/validate");
    if_match_steps(&client, &uri, &uri);
}

/// TD_COAP_CORE_22 (and 27 through a proxy): ETag and If-Match on `uri`, with a concurrent
/// update made by another client straight to the server at `direct`.
fn if_match_steps(client: &Path, uri: &str, direct: &str) {
    let get = run_client(client, 10, &[uri]);
    let etag1 = assert_piggybacked(&get, &["2.05"])
        .1
        .opt("ETag")
        .expect("an ETag")
        .to_owned();

    let if_match1 = format!("1,{etag1}");
    let put = run_client(
        client,
        10,
        &[
            "-m",
            "put",
            "-O",
            &if_match1,
            "-t",
            "0",
            "-e",
            "if-match-1",
            uri,
        ],
    );
    let (req, _) = assert_piggybacked(&put, &["2.04"]);
    assert_eq!(req.opt("If-Match"), Some(etag1.as_str()));

    // Behind a proxy, the 2.04 made the stored answer stale: this GET shows the new state.
    let get = run_client(client, 10, &[uri]);
    let (_, rsp) = assert_piggybacked(&get, &["2.05"]);
    let etag2 = rsp.opt("ETag").expect("an ETag").to_owned();
    assert_ne!(etag2, etag1);
    assert_eq!(rsp.text(), "if-match-1");

    let other = run_client(
        client,
        10,
        &["-m", "put", "-t", "0", "-e", "if-match-2", direct],
    );
    assert_piggybacked(&other, &["2.04"]);

    let if_match2 = format!("1,{etag2}");
    let stale = run_client(
        client,
        10,
        &[
            "-m",
            "put",
            "-O",
            &if_match2,
            "-t",
            "0",
            "-e",
            "if-match-3",
            uri,
        ],
    );
    assert_piggybacked(&stale, &["4.12"]);
}

#[test]
fn td_coap_core_23() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    if_none_match_steps(&client, &server.uri("/create1"));
}

/// TD_COAP_CORE_23 (and 28 through a proxy): PUT with If-None-Match creates, then fails.
fn if_none_match_steps(client: &Path, uri: &str) {
    let args = [
        "-m",
        "put",
        "-O",
        "5,",
        "-t",
        "0",
        "-e",
        "if-none-match",
        uri,
    ];
    let first = run_client(client, 10, &args);
    let (req, _) = assert_piggybacked(&first, &["2.01"]);
    assert!(req.has("If-None-Match") && req.has("Content-Format"));
    let second = run_client(client, 10, &args);
    assert_piggybacked(&second, &["4.12"]);
}

// ---- TD_COAP_CORE_24 to 29: through a reverse proxy (CoAP_CFG_03) ------------------------------

#[test]
fn td_coap_core_24() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let proxy = PlugtestServer::reverse_proxy_for(&server);
    // Forwarded unchanged: the client reads coap://proxy/location1/location2/location3.
    location_path_steps(&client, &proxy.uri("/test"));
}

#[test]
fn td_coap_core_25() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let proxy = PlugtestServer::reverse_proxy_for(&server);
    location_query_steps(&client, &proxy.uri("/location-query"));
}

#[test]
fn td_coap_core_26() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let proxy = PlugtestServer::reverse_proxy_for(&server);
    accept_steps(&client, &proxy.uri("/multi-format"));
}

#[test]
fn td_coap_core_27() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let proxy = PlugtestServer::reverse_proxy_for(&server);
    if_match_steps(&client, &proxy.uri("/validate"), &server.uri("/validate"));
}

#[test]
fn td_coap_core_28() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let proxy = PlugtestServer::reverse_proxy_for(&server);
    if_none_match_steps(&client, &proxy.uri("/create1"));
}

#[test]
fn td_coap_core_29() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let proxy = PlugtestServer::reverse_proxy_for(&server);
    let uri = proxy.uri("/validate");
    let first = run_client(&client, 10, &[&uri]);
    let (_, rsp) = assert_piggybacked(&first, &["2.05"]);
    let etag = rsp.opt("ETag").expect("an ETag").to_owned();
    let max_age: u32 = rsp
        .opt("Max-Age")
        .expect("a Max-Age")
        .parse()
        .expect("a number");
    assert_eq!(max_age, 30);
    let payload = rsp.payload.clone();
    // The server's state changes behind the proxy's back; within the Max-Age the proxy does
    // not ask it again, so the client still gets the stored answer, with less Max-Age left.
    let update = run_client(
        &client,
        10,
        &[
            "-m",
            "put",
            "-t",
            "0",
            "-e",
            "td29",
            &server.uri("/validate"),
        ],
    );
    assert_piggybacked(&update, &["2.04"]);
    thread::sleep(Duration::from_millis(1100));
    let second = run_client(&client, 10, &[&uri]);
    let (_, rsp) = assert_piggybacked(&second, &["2.05"]);
    assert_eq!(rsp.opt("ETag"), Some(etag.as_str()));
    assert_eq!(rsp.payload, payload, "the cached payload");
    let left: u32 = rsp
        .opt("Max-Age")
        .expect("a Max-Age")
        .parse()
        .expect("a number");
    assert!(left < max_age, "Max-Age {left} after a second in the cache");
}

#[test]
fn td_coap_core_31() {
    // A bare CoAP ping: libcoap's client has no command for it, so a scripted client sends it.
    let server = PlugtestServer::start();
    let raw = RawClient::new(server.addr);
    let ping = [0x40, 0x00, 0x31, 0x31];
    raw.socket.send_to(&ping, server.addr).unwrap();
    let mut buf = [0u8; 64];
    let (len, _) = raw
        .socket
        .recv_from(&mut buf)
        .expect("an answer to the ping");
    assert_eq!(
        &buf[..len],
        &[0x70, 0x00, 0x31, 0x31],
        "a 4-byte RST with the same MID"
    );
}

// ---------------------------------------------------------------------------------------------
// TD_COAP_LINK

/// GET `/.well-known/core` with `query`; the whole (block-wise) document.
fn discover(client: &Path, server: &PlugtestServer, query: &str) -> (Run, String) {
    let uri = if query.is_empty() {
        server.uri("/.well-known/core")
    } else {
        server.uri(&format!("/.well-known/core?{query}"))
    };
    let run = run_client(client, 15, &[&uri]);
    let rsp = run.first_response();
    assert_eq!(rsp.code, "2.05", "{}", run.log);
    assert_eq!(rsp.opt("Content-Format"), Some("application/link-format"));
    let doc = run.body_text();
    (run, doc)
}

fn assert_links(doc: &str, expected: &[&str]) {
    assert_eq!(link_targets(doc), expected, "{doc}");
}

#[test]
fn td_coap_link_01() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (run, doc) = discover(&client, &server, "");
    let targets = link_targets(&doc);
    for path in [
        "/test",
        "/seg1/seg2/seg3",
        "/query",
        "/separate",
        "/large",
        "/large-update",
        "/large-create",
        "/large-post",
        "/obs",
        "/obs-non",
        "/multi-format",
        "/validate",
        "/location-query",
        "/link1",
        "/link2",
        "/link3",
        "/path",
        "/obs-large",
        "/obs-pumping",
    ] {
        assert!(
            targets.contains(&path.to_owned()),
            "{path} missing in {doc}"
        );
    }
    // The document is larger than a block: it came block-wise.
    assert!(run.first_response().block("Block2").is_some_and(|b| b.1));
}

#[test]
fn td_coap_link_02() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (run, doc) = discover(&client, &server, "rt=Type1");
    assert_eq!(run.first_request().opts("Uri-Query"), ["rt=Type1"]);
    assert_links(&doc, &["/link1", "/link3"]);
}

#[test]
fn td_coap_link_03() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (_, doc) = discover(&client, &server, "rt=*");
    let targets = link_targets(&doc);
    assert!(!targets.is_empty());
    for target in &targets {
        let link = link_of(&doc, target).unwrap();
        assert!(link.contains(";rt="), "{link} has no rt");
    }
    assert!(targets.contains(&"/link1".to_owned()) && !targets.contains(&"/test".to_owned()));
}

#[test]
fn td_coap_link_04() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (_, doc) = discover(&client, &server, "rt=Type2");
    assert_links(&doc, &["/link1", "/link2"]);
}

#[test]
fn td_coap_link_05() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (_, doc) = discover(&client, &server, "if=If*");
    assert_links(&doc, &["/link1", "/link2"]);
}

#[test]
fn td_coap_link_06() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (_, doc) = discover(&client, &server, "sz=*");
    let targets = link_targets(&doc);
    assert!(targets.contains(&"/large".to_owned()), "{doc}");
    for target in &targets {
        assert!(link_of(&doc, target).unwrap().contains(";sz="), "{doc}");
    }
}

#[test]
fn td_coap_link_07() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (_, doc) = discover(&client, &server, "href=/link1");
    assert_links(&doc, &["/link1"]);
}

#[test]
fn td_coap_link_08() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (_, doc) = discover(&client, &server, "href=/link*");
    assert_links(&doc, &["/link1", "/link2", "/link3"]);
}

#[test]
fn td_coap_link_09() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let (_, doc) = discover(&client, &server, "");
    let path = link_of(&doc, "/path").expect("/path listed");
    assert!(path.contains(";ct=40"), "{path}");

    let run = run_client(&client, 10, &[&server.uri("/path")]);
    let rsp = run.first_response();
    assert_eq!(rsp.code, "2.05");
    assert_eq!(rsp.opt("Content-Format"), Some("application/link-format"));
    assert_links(
        &run.body_text(),
        &["/path/sub1", "/path/sub2", "/path/sub3"],
    );

    let run = run_client(&client, 10, &[&server.uri("/path/sub1")]);
    let (_, rsp) = assert_piggybacked(&run, &["2.05"]);
    assert!(rsp.text().contains("/path/sub1"));
}

// ---------------------------------------------------------------------------------------------
// TD_COAP_BLOCK

/// BLOCK_01, 02, 06: the blocks of `/large` in order, each full but the last, reassembled.
fn check_block_download(run: &Run, size: usize) {
    let responses: Vec<&Pdu> = run.responses().collect();
    assert!(responses.len() > 1, "several blocks:\n{}", run.log);
    let mut body = Vec::new();
    for (i, rsp) in responses.iter().enumerate() {
        assert_eq!(rsp.code, "2.05");
        let (num, more, block) = rsp.block("Block2").expect("Block2 in every response");
        assert_eq!(num as usize, body.len() / size, "blocks in order");
        assert_eq!(block, size);
        let last = i + 1 == responses.len();
        assert_eq!(more, !last, "M set on all but the last block");
        if more {
            assert_eq!(rsp.payload.len(), size, "a full block");
        } else {
            assert!(!rsp.payload.is_empty() && rsp.payload.len() <= size);
        }
        body.extend_from_slice(&rsp.payload);
    }
    assert_eq!(body.len(), 1280);
    assert_eq!(run.body, body, "the assembled body");
    assert!(run.body_text().contains("RESOURCE BLOCK NO. 5 OF 5"));
}

#[test]
fn td_coap_block_01() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 20, &["-b", "64", &server.uri("/large")]);
    let req = run.first_request();
    assert_eq!(
        req.block("Block2"),
        Some((0, false, 64)),
        "early negotiation"
    );
    check_block_download(&run, 64);
}

#[test]
fn td_coap_block_02() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 20, &[&server.uri("/large")]);
    assert!(!run.first_request().has("Block2"), "late negotiation");
    let first = run.first_response();
    assert_eq!(first.block("Block2").map(|b| (b.0, b.1)), Some((0, true)));
    check_block_download(&run, 64);
}

/// A body of `len` bytes of text.
fn upload_file(name: &str, len: usize) -> PathBuf {
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!\n";
    let body: String = line.chars().cycle().take(len).collect();
    let path =
        std::env::temp_dir().join(format!("coap-plugtest-etsi-{}-{name}", std::process::id()));
    std::fs::write(&path, body).expect("write the upload");
    path
}

/// BLOCK_03, 04, 05: the Block1 requests in order; 2.31 for all but the last.
fn check_block_upload<'r>(run: &'r Run, final_codes: &[&str]) -> &'r Pdu {
    let uploads: Vec<&Pdu> = run.sent().filter(|p| p.has("Block1")).collect();
    assert!(uploads.len() > 1, "a block-wise upload:\n{}", run.log);
    let mut last = None;
    for (i, req) in uploads.iter().enumerate() {
        let (num, more, size) = req.block("Block1").unwrap();
        assert_eq!(num as usize, i);
        assert_eq!(more, i + 1 < uploads.len());
        if more {
            assert_eq!(req.payload.len(), size, "a full block");
        }
        let rsp = run
            .received()
            .find(|p| p.mid == req.mid && p.mtype == "ACK")
            .unwrap_or_else(|| panic!("no answer to block {i}:\n{}", run.log));
        let (rnum, rmore, _) = rsp.block("Block1").expect("Block1 in the answer");
        assert_eq!(rnum, num);
        if more {
            assert_eq!(rsp.code, "2.31", "2.31 Continue (atomic)");
            assert!(rmore);
        } else {
            assert!(final_codes.contains(&rsp.code.as_str()), "{}", run.log);
            assert!(!rmore);
            last = Some(rsp);
        }
    }
    last.expect("a final block")
}

#[test]
fn td_coap_block_03() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let file = upload_file("block03", 1500);
    let file_arg = file.to_string_lossy().into_owned();
    let uri = server.uri("/large-update");
    let run = run_client(
        &client,
        20,
        &["-m", "put", "-b", "64", "-t", "0", "-f", &file_arg, &uri],
    );
    check_block_upload(&run, &["2.04"]);
    let get = run_client(&client, 20, &[&uri]);
    assert_eq!(
        get.body,
        std::fs::read(&file).unwrap(),
        "the server holds the whole body"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn td_coap_block_04() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let file = upload_file("block04", 1500);
    let file_arg = file.to_string_lossy().into_owned();
    let run = run_client(
        &client,
        20,
        &[
            "-m",
            "post",
            "-b",
            "64",
            "-t",
            "0",
            "-f",
            &file_arg,
            &server.uri("/large-create"),
        ],
    );
    let last = check_block_upload(&run, &["2.01"]);
    let location = last.opts("Location-Path");
    assert_eq!(location.len(), 2, "{location:?}");
    assert_eq!(location[0], "large-create");
    let get = run_client(
        &client,
        20,
        &[&server.uri(&format!("/{}", location.join("/")))],
    );
    assert_eq!(
        get.body,
        std::fs::read(&file).unwrap(),
        "the created resource"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn td_coap_block_05() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let file = upload_file("block05", 1500);
    let file_arg = file.to_string_lossy().into_owned();
    let run = run_client(
        &client,
        20,
        &[
            "-m",
            "post",
            "-b",
            "64",
            "-t",
            "0",
            "-f",
            &file_arg,
            &server.uri("/large-post"),
        ],
    );
    let last = check_block_upload(&run, &["2.04"]);
    assert_eq!(
        last.block("Block2").map(|b| (b.0, b.1)),
        Some((0, true)),
        "Block2 0/M"
    );
    // The client fetches the rest with Block2 and no Block1.
    let follow: Vec<&Pdu> = run
        .sent()
        .filter(|p| p.code == "POST" && p.has("Block2"))
        .collect();
    assert!(!follow.is_empty(), "{}", run.log);
    assert!(follow.iter().all(|p| !p.has("Block1")));
    let expected = std::fs::read(&file).unwrap().to_ascii_uppercase();
    assert_eq!(
        run.body, expected,
        "the upper-cased body, two-way block-wise"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn td_coap_block_06() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 40, &["-b", "16", &server.uri("/large")]);
    assert_eq!(run.first_request().block("Block2"), Some((0, false, 16)));
    check_block_download(&run, 16);
}

// ---------------------------------------------------------------------------------------------
// TD_COAP_OBS

/// The notifications after the first response: same token, increasing Observe.
fn check_notifications<'r>(run: &'r Run, mtype: &str) -> Vec<&'r Pdu> {
    let req = run.first_request();
    assert_eq!(req.opt("Observe"), Some("0"), "a registration");
    let first = run.first_response();
    assert!(first.is("ACK", "2.05"), "{}", run.log);
    assert!(
        first.observe().is_some(),
        "the first response carries Observe"
    );
    let format = first.opt("Content-Format");
    assert!(format.is_some());
    let notes: Vec<&Pdu> = run
        .responses()
        .skip(1)
        .filter(|p| p.token == req.token && p.has("Observe"))
        .collect();
    assert!(notes.len() >= 2, "notifications:\n{}", run.log);
    let mut last = first.observe();
    for n in &notes {
        assert_eq!(n.mtype, mtype, "{}", run.log);
        assert_eq!(n.code, "2.05");
        assert_eq!(n.opt("Content-Format"), format, "the same Content-Format");
        assert!(n.observe() > last, "Observe increases");
        last = n.observe();
        if n.mtype == "CON" {
            assert!(
                run.sent().any(|p| p.is_empty_ack() && p.mid == n.mid),
                "the client ACKs each CON notification"
            );
        }
    }
    notes
}

#[test]
fn td_coap_obs_01() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-s", "4", &server.uri("/obs")]);
    check_notifications(&run, "CON");
}

#[test]
fn td_coap_obs_02() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-s", "4", &server.uri("/obs-non")]);
    check_notifications(&run, "NON");
}

/// Runs an observer for `secs` in the background while `during` runs (after 1.5 s).
fn observe_while<T>(client: &Path, uri: &str, secs: u64, during: impl FnOnce() -> T) -> (Run, T) {
    let client_bg = client.to_path_buf();
    let uri_bg = uri.to_owned();
    let secs_text = secs.to_string();
    let observer =
        thread::spawn(move || run_client(&client_bg, secs + 5, &["-s", &secs_text, &uri_bg]));
    thread::sleep(Duration::from_millis(1500));
    let result = during();
    let run = observer.join().expect("the observer thread");
    (run, result)
}

/// OBS_07 and OBS_08: the final notification ends the observation; nothing follows.
fn check_final_notification(run: &Run, code: &str) {
    let req = run.first_request();
    let last = run
        .responses()
        .find(|p| p.code == code)
        .unwrap_or_else(|| panic!("no {code} notification:\n{}", run.log));
    assert_eq!(last.mtype, "CON");
    assert_eq!(last.token, req.token);
    assert!(
        !last.has("Observe"),
        "no Observe in a non-2.xx notification:\n{}",
        run.log
    );
    let after = run
        .responses()
        .skip_while(|p| p.code != code)
        .skip(1)
        .filter(|p| p.token == req.token && p.has("Observe"))
        .count();
    assert_eq!(after, 0, "no notification after {code}:\n{}", run.log);
}

#[test]
fn td_coap_obs_07() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let uri = server.uri("/obs");
    let (run, delete) = observe_while(&client, &uri, 5, || {
        run_client(&client, 10, &["-m", "delete", &uri])
    });
    assert_piggybacked(&delete, &["2.02"]);
    check_final_notification(&run, "4.04");
}

#[test]
fn td_coap_obs_08() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let uri = server.uri("/obs");
    let (run, put) = observe_while(&client, &uri, 5, || {
        run_client(&client, 10, &["-m", "put", "-t", "41", "-e", "<x/>", &uri])
    });
    assert_piggybacked(&put, &["2.04"]);
    check_final_notification(&run, "4.06");
}

#[test]
fn td_coap_obs_09() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let uri = server.uri("/obs");
    let (run, put) = observe_while(&client, &uri, 5, || {
        run_client(
            &client,
            10,
            &["-m", "put", "-t", "0", "-e", "obs09 value", &uri],
        )
    });
    assert_piggybacked(&put, &["2.04"]);
    let notes = check_notifications(&run, "CON");
    assert!(
        notes.iter().any(|n| n.text() == "obs09 value"),
        "a notification with the new value:\n{}",
        run.log
    );
}

#[test]
fn td_coap_obs_10() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let uri = server.uri("/obs");
    let (run, get) = observe_while(&client, &uri, 5, || run_client(&client, 10, &[&uri]));
    let (_, rsp) = assert_piggybacked(&get, &["2.05"]);
    assert!(!rsp.has("Observe"), "a plain GET gets no Observe");
    let notes = check_notifications(&run, "CON");
    assert!(notes.len() >= 3, "notifications go on:\n{}", run.log);
}

#[test]
fn td_coap_obs_12() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    // libcoap deregisters with GET Observe=1 and the same token when its -s time is up ...
    let run = run_client(&client, 10, &["-s", "3", &server.uri("/obs")]);
    let token = &run.first_request().token;
    let cancel = run
        .sent()
        .find(|p| p.code == "GET" && p.opt("Observe") == Some("1"))
        .unwrap_or_else(|| panic!("no GET with Observe=1:\n{}", run.log));
    assert_eq!(&cancel.token, token);
    // ... but exits before the answer, so a scripted client checks the server's side.
    let mut raw = RawClient::new(server.addr);
    let token = b"\x12";
    let register = RawMessage::request(0, 1, 0x1201, token, &[(6, b""), (11, b"obs")]);
    let first = raw.exchange(&register).expect("the registration's answer");
    assert!(first.option(6).is_some(), "registered");
    let note = raw.receive(Duration::from_secs(5)).expect("a notification");
    raw.send(&RawMessage::empty(2, note.mid));
    let cancel = RawMessage::request(0, 1, 0x1202, token, &[(6, b"\x01"), (11, b"obs")]);
    let rsp = raw.exchange(&cancel).expect("the answer to Observe=1");
    assert_eq!((rsp.mtype, rsp.code), (2, 0x45), "ACK 2.05");
    assert!(rsp.option(6).is_none(), "no Observe in the answer");
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(m) = raw.receive(deadline.saturating_duration_since(Instant::now())) {
        assert!(
            m.mtype != 0 || m.token != token,
            "a notification after the cancellation: {m:?}"
        );
    }
}

/// Registers a scripted client on `/obs` and returns it with the token.
fn raw_observer(server: &PlugtestServer, token: &'static [u8]) -> RawClient {
    let mut raw = RawClient::new(server.addr);
    let register = RawMessage::request(0, 1, 0x0501, token, &[(6, b""), (11, b"obs")]);
    let first = raw.exchange(&register).expect("the registration's answer");
    assert_eq!((first.mtype, first.code), (2, 0x45));
    assert!(first.option(6).is_some(), "registered");
    raw
}

/// The Observe value of a notification.
fn observe_value(m: &RawMessage) -> u32 {
    m.option(6)
        .map_or(0, |v| v.iter().fold(0, |acc, b| (acc << 8) | u32::from(*b)))
}

#[test]
fn td_coap_obs_04() {
    // The server reboots and forgets its observers; the client re-registers with the same
    // token. Re-registering after Max-Age + MAX_LATENCY is the client's part, which
    // coap-client does not do; a scripted client checks the server's part: no notifications
    // after the reboot, and the same token registers again and is notified again.
    let server = PlugtestServer::start();
    let addr = server.addr;
    let token: &[u8] = b"\x04";
    let mut raw = raw_observer(&server, token);
    let note = raw.receive(Duration::from_secs(5)).expect("a notification");
    raw.send(&RawMessage::empty(2, note.mid));
    drop(server);
    let server = PlugtestServer::start_at(&addr.to_string(), &[]);
    let quiet_until = Instant::now() + Duration::from_millis(2500);
    while let Some(m) = raw.receive(quiet_until.saturating_duration_since(Instant::now())) {
        assert!(
            m.mid == note.mid,
            "a notification from a server that lost its observers: {m:?}"
        );
    }
    let register = RawMessage::request(0, 1, 0x0402, token, &[(6, b""), (11, b"obs")]);
    let rsp = raw
        .exchange(&register)
        .expect("the re-registration's answer");
    assert_eq!((rsp.mtype, rsp.code), (2, 0x45), "ACK 2.05");
    assert_eq!(rsp.token, token);
    assert!(rsp.option(6).is_some(), "registered again");
    let next = raw
        .receive(Duration::from_secs(5))
        .expect("notifications resume");
    assert_eq!(next.token, token);
    assert_eq!(next.code, 0x45);
    drop(server);
}

#[test]
fn td_coap_obs_05() {
    // The client is switched off: a scripted client stops acknowledging. The server
    // retransmits with fresh Observe values, then gives up. ACK_TIMEOUT is cut to 200 ms
    // here (MAX_RETRANSMIT stays 4): at most 0.2 s x 1.5 x 31 = 9.3 s of retransmissions,
    // then silence, although the resource keeps changing. It changes every 100 ms, so every
    // retransmission finds a newer state to carry (RFC 7641 §4.5.2).
    let server = PlugtestServer::start_with(&[
        ("COAP_PLUGTEST_ACK_TIMEOUT_MS", "200"),
        ("COAP_PLUGTEST_INTERVAL_MS", "100"),
    ]);
    let token: &[u8] = b"\x05";
    let mut raw = raw_observer(&server, token);
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        match raw.receive(Duration::from_secs(12)) {
            Some(m) if m.token == token => {
                assert_eq!(m.mtype, 0, "CON notifications");
                seen.push((observe_value(&m), m.mid));
                last = Instant::now();
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        last.elapsed() >= Duration::from_secs(11),
        "the server stopped notifying"
    );
    assert!(
        (2..=5).contains(&seen.len()),
        "the first transmission and at most MAX_RETRANSMIT more: {seen:?}"
    );
    for pair in seen.windows(2) {
        assert!(
            pair[1].0 > pair[0].0,
            "retransmissions carry newer Observe values: {seen:?}"
        );
    }
}

#[test]
fn td_coap_obs_11() {
    // Notifications are lost: a scripted client ignores the first two, then acknowledges.
    // Never more than one notification is outstanding: while one is unacknowledged, the
    // next arrives only as its retransmission (after ACK_TIMEOUT, 2 s), not with each
    // 1-second change.
    let server = PlugtestServer::start();
    let token: &[u8] = b"\x11";
    let mut raw = raw_observer(&server, token);
    let mut arrivals = Vec::new();
    while arrivals.len() < 3 {
        let m = raw
            .receive(Duration::from_secs(10))
            .expect("a notification");
        if m.token == token {
            arrivals.push((Instant::now(), m));
        }
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(1800),
            "a second notification while one was outstanding ({gap:?})"
        );
        assert!(observe_value(&pair[1].1) > observe_value(&pair[0].1));
    }
    let (_, latest) = arrivals.last().expect("three notifications");
    raw.send(&RawMessage::empty(2, latest.mid));
    // Once acknowledged, notifications flow at the resource's pace again.
    let next = raw
        .receive(Duration::from_secs(5))
        .expect("notifications resume");
    assert_eq!(next.token, token);
}

#[test]
fn td_coap_obs_13() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start();
    let run = run_client(&client, 10, &["-s", "4", &server.uri("/obs-large")]);
    let req = run.first_request();
    let with_observe: Vec<&Pdu> = run
        .responses()
        .filter(|p| p.token == req.token && p.has("Observe"))
        .collect();
    assert!(with_observe.len() >= 2, "{}", run.log);
    for n in &with_observe {
        let (num, more, size) = n.block("Block2").expect("Block2 on each notification");
        assert_eq!((num, more), (0, true));
        assert_eq!(n.payload.len(), size, "a full first block");
    }
    // The client fetches the rest of each with plain GETs (RFC 7959 §2.6: no Observe).
    let follow: Vec<&Pdu> = run
        .sent()
        .filter(|p| p.code == "GET" && p.block("Block2").is_some_and(|b| b.0 > 0))
        .collect();
    assert!(follow.len() >= 2 * with_observe.len() - 2, "{}", run.log);
    assert!(follow.iter().all(|p| !p.has("Observe")));
}

#[test]
fn td_coap_obs_14() {
    let client = peer_or_skip!();
    let server = PlugtestServer::start_with(&[("COAP_PLUGTEST_INTERVAL_MS", "300")]);
    let run = run_client(&client, 15, &["-s", "8", &server.uri("/obs-pumping")]);
    let req = run.first_request();
    let notes: Vec<&Pdu> = run
        .responses()
        .filter(|p| p.token == req.token && p.has("Observe"))
        .collect();
    assert!(notes.len() >= 4, "{}", run.log);
    assert!(
        notes.iter().any(|n| n.has("Block2")),
        "some block-wise:\n{}",
        run.log
    );
    assert!(
        notes.iter().any(|n| !n.has("Block2")),
        "some whole:\n{}",
        run.log
    );
}

#[test]
fn td_coap_obs_06() {
    // The client "reboots": it answers the next notification with RST. libcoap's client
    // has no switch for that, so a scripted client plays it.
    let server = PlugtestServer::start();
    let mut raw = RawClient::new(server.addr);
    let register = RawMessage::request(0, 1, 0x0601, b"\x06", &[(6, b""), (11, b"obs")]);
    let first = raw.exchange(&register).expect("the registration's answer");
    assert_eq!((first.mtype, first.code), (2, 0x45));
    assert!(first.option(6).is_some(), "registered");
    let note = raw.receive(Duration::from_secs(5)).expect("a notification");
    assert_eq!(note.mtype, 0, "a CON notification");
    assert_eq!(note.token, b"\x06");
    raw.send(&RawMessage::empty(3, note.mid));
    // Nothing more arrives for this token (drain a retransmission already under way).
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(m) = raw.receive(deadline.saturating_duration_since(Instant::now())) {
        assert!(
            m.mid == note.mid || m.token != b"\x06",
            "a notification after the RST: {m:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted UDP client for what coap-client cannot do

#[derive(Clone, Debug, PartialEq, Eq)]
struct RawMessage {
    mtype: u8,
    code: u8,
    mid: u16,
    token: Vec<u8>,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl RawMessage {
    fn request(mtype: u8, code: u8, mid: u16, token: &[u8], options: &[(u16, &[u8])]) -> Self {
        RawMessage {
            mtype,
            code,
            mid,
            token: token.to_vec(),
            options: options.iter().map(|(n, v)| (*n, v.to_vec())).collect(),
            payload: Vec::new(),
        }
    }

    fn empty(mtype: u8, mid: u16) -> Self {
        RawMessage::request(mtype, 0, mid, b"", &[])
    }

    fn option(&self, number: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, v)| v.as_slice())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x40 | (self.mtype << 4) | self.token.len() as u8, self.code];
        out.extend_from_slice(&self.mid.to_be_bytes());
        out.extend_from_slice(&self.token);
        let mut options = self.options.clone();
        options.sort_by_key(|(n, _)| *n);
        let mut last = 0;
        for (number, value) in &options {
            let (d, d_ext) = nibble(number - last);
            let (l, l_ext) = nibble(value.len() as u16);
            out.push((d << 4) | l);
            out.extend_from_slice(&d_ext);
            out.extend_from_slice(&l_ext);
            out.extend_from_slice(value);
            last = *number;
        }
        if !self.payload.is_empty() {
            out.push(0xff);
            out.extend_from_slice(&self.payload);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<RawMessage> {
        let (&b0, rest) = bytes.split_first()?;
        let tkl = usize::from(b0 & 0x0f);
        let code = *rest.first()?;
        let mid = u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?]);
        let token = rest.get(3..3 + tkl)?.to_vec();
        let mut rest = rest.get(3 + tkl..)?;
        let mut options = Vec::new();
        let mut number = 0u16;
        let mut payload = Vec::new();
        while let Some((&head, tail)) = rest.split_first() {
            if head == 0xff {
                payload = tail.to_vec();
                break;
            }
            let (delta, tail) = extended(head >> 4, tail)?;
            let (len, tail) = extended(head & 0x0f, tail)?;
            number = number.checked_add(delta)?;
            options.push((number, tail.get(..usize::from(len))?.to_vec()));
            rest = tail.get(usize::from(len)..)?;
        }
        Some(RawMessage {
            mtype: (b0 >> 4) & 3,
            code,
            mid,
            token,
            options,
            payload,
        })
    }
}

/// The 4-bit field and extension bytes of an option delta or length (RFC 7252 §3.1).
fn nibble(v: u16) -> (u8, Vec<u8>) {
    match v {
        0..=12 => (v as u8, Vec::new()),
        13..=268 => (13, vec![(v - 13) as u8]),
        _ => (14, (v - 269).to_be_bytes().to_vec()),
    }
}

fn extended(field: u8, rest: &[u8]) -> Option<(u16, &[u8])> {
    match field {
        0..=12 => Some((u16::from(field), rest)),
        13 => Some((u16::from(*rest.first()?) + 13, rest.get(1..)?)),
        14 => Some((
            u16::from_be_bytes([*rest.first()?, *rest.get(1)?]).checked_add(269)?,
            rest.get(2..)?,
        )),
        _ => None,
    }
}

struct RawClient {
    socket: UdpSocket,
    server: SocketAddr,
}

impl RawClient {
    fn new(server: SocketAddr) -> RawClient {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        RawClient { socket, server }
    }

    fn send(&self, message: &RawMessage) {
        self.socket
            .send_to(&message.encode(), self.server)
            .expect("send");
    }

    /// The next message within `wait`, if any.
    fn receive(&mut self, wait: Duration) -> Option<RawMessage> {
        if wait.is_zero() {
            return None;
        }
        self.socket.set_read_timeout(Some(wait)).ok()?;
        let mut buf = [0u8; 2048];
        let (len, _) = self.socket.recv_from(&mut buf).ok()?;
        RawMessage::decode(&buf[..len])
    }

    /// Sends `request` and returns the first answer with its MID (within 5 s).
    fn exchange(&mut self, request: &RawMessage) -> Option<RawMessage> {
        self.send(request);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(m) = self.receive(deadline.saturating_duration_since(Instant::now())) {
            if m.mid == request.mid {
                return Some(m);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// The harness itself

#[test]
fn the_log_parser_reads_libcoap_pdus() {
    let log = "Nov 23 DEBG *  a <-> b UDP : sent 13 bytes\n\
               v:1 t:CON c:GET i:accc {01} [ Uri-Port:5699, Uri-Path:test ]\n\
               Nov 23 DEBG *  a <-> b UDP : received 57 bytes\n\
               v:1 t:ACK c:2.05 i:accc {01} [ Content-Format:text/plain, Block2:1/M/64 ] :: 'a\\x0Ab'\n\
               v:1 t:NON c:GET i:0001 {02} [ ]\n\
               Aug 06 1 DEBG *  a <-> b UDP : netif: recv   60 bytes\n\
               v:1 t:ACK c:2.05 i:0001 {02} [ ]\n";
    let pdus = parse_log(log);
    assert_eq!(pdus.len(), 3, "{pdus:?}");
    assert_eq!(pdus[2].dir, Dir::In);
    assert_eq!(pdus[0].dir, Dir::Out);
    assert_eq!(pdus[0].opts("Uri-Path"), ["test"]);
    assert_eq!(pdus[1].dir, Dir::In);
    assert_eq!(pdus[1].payload, b"a\nb");
    assert_eq!(pdus[1].block("Block2"), Some((1, true, 64)));
    assert_eq!(
        listening_address("2026-11-23T11:42:44Z  INFO listening on 127.0.0.1:52619"),
        Some("127.0.0.1:52619".parse().unwrap())
    );
    assert_eq!(
        link_targets("</a>;rt=\"x,<y>\",</b>;ct=0,\n</c>"),
        ["/a", "/b", "/c"]
    );
}

#[test]
fn the_raw_codec_round_trips() {
    let m = RawMessage {
        mtype: 0,
        code: 1,
        mid: 7,
        token: vec![1, 2],
        options: vec![(11, b"a".to_vec()), (60, vec![0; 20]), (300, vec![1])],
        payload: b"hi".to_vec(),
    };
    assert_eq!(RawMessage::decode(&m.encode()), Some(m));
}
