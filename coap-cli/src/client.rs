//! The client verbs: `get`, `post`, `put`, `delete`, `fetch`, `patch`, `ipatch` and `observe`.

use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use coap_proto::msg::{Block, Code, ContentFormat, MessageType, OptionNumber};
use coap_proto::uri::{CoapUri, Host};
use coap_tokio::{Client, Error, IncomingResponse, RequestBuilder};

use crate::format::{self, OptionArg, Style};
use crate::group;
use crate::Exit;

/// What every client verb takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RequestArgs {
    /// The resource, such as `coap://[::1]/time` or `coap://127.0.0.1:5683/other/block?x=1`
    /// (with --proxy, any absolute URI the proxy serves).
    pub(crate) uri: String,

    /// The request body, as text.
    #[arg(long, conflicts_with = "payload_file")]
    pub(crate) payload: Option<String>,

    /// Read the request body from FILE (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub(crate) payload_file: Option<PathBuf>,

    /// Content-Format of the body: a number or a name (text, json, cbor, link-format,
    /// octet-stream, application/senml+json, ...).
    #[arg(long, value_name = "FORMAT", value_parser = format::parse_content_format)]
    pub(crate) content_format: Option<ContentFormat>,

    /// Content-Format wanted in the response (Accept), a number or a name.
    #[arg(long, value_name = "FORMAT", value_parser = format::parse_content_format)]
    pub(crate) accept: Option<ContentFormat>,

    /// Send the request Non-confirmable (no retransmissions, no acknowledgement).
    #[arg(long)]
    pub(crate) non: bool,

    /// Give up (exit status 3) when no response has arrived after SECS seconds. Without it,
    /// a lost Confirmable request is given up after its retransmissions (about 93 s). For a
    /// request to a multicast group, how long answers are collected (default 10 s).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,

    /// Add an option, NUM=VALUE (repeatable). NUM is a number or a registered name
    /// (Uri-Query, ETag, ...); VALUE is 0x-prefixed hex (opaque), a decimal number (uint)
    /// or text.
    #[arg(long = "option", value_name = "NUM=VALUE", value_parser = format::parse_option)]
    pub(crate) options: Vec<OptionArg>,

    /// Send the request through the forward proxy at URI (such as coap://127.0.0.1:5684),
    /// naming the resource in a Proxy-Uri option (RFC 7252 §5.10.2).
    #[arg(long, value_name = "URI")]
    pub(crate) proxy: Option<String>,

    /// With --proxy: name the resource with Proxy-Scheme and Uri-Host, Uri-Port, Uri-Path and
    /// Uri-Query options instead of Proxy-Uri (RFC 7252 §5.10.2), for proxies that want
    /// that form (such as aiocoap's).
    #[arg(long, requires = "proxy")]
    pub(crate) proxy_scheme: bool,

    /// For a request to a multicast group: the interface it leaves from, by its IPv4 address
    /// (IPv4 groups) or its index (IPv6 groups); by default the system picks.
    #[arg(long, value_name = "INTERFACE", value_parser = group::parse_interface)]
    pub(crate) multicast_interface: Option<group::Interface>,

    /// Write the response body to FILE (raw bytes) instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,

    /// Print code, message type, options, size and timing of the response on stderr.
    #[arg(long, short = 'v')]
    pub(crate) verbose: bool,

    /// Print nothing on stderr (the exit status still tells what happened).
    #[arg(long, short = 'q', conflicts_with = "verbose")]
    pub(crate) quiet: bool,

    /// Pretty-print JSON, CBOR (diagnostic notation) and link-format bodies even when
    /// standard output is not a terminal.
    #[arg(long, conflicts_with = "raw")]
    pub(crate) pretty: bool,

    /// Write the body exactly as received, even on a terminal.
    #[arg(long)]
    pub(crate) raw: bool,

    /// Fetch a GET response block by block (RFC 7959 §2.4) and show a progress bar when it is
    /// over 64 KiB; the default on a terminal. Without a terminal the bar stays hidden.
    #[arg(long, conflicts_with = "quiet")]
    pub(crate) progress: bool,
}

/// What `observe` takes besides the request arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ObserveArgs {
    /// The request (a GET with Observe = 0).
    #[command(flatten)]
    pub(crate) request: RequestArgs,

    /// Stop after N notifications (the first response, the current state, counts as one),
    /// then cancel the observation.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) count: Option<u64>,

    /// Stop after SECS seconds, then cancel the observation.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) duration: Option<Duration>,
}

/// A non-negative number of seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a usable duration"))
}

/// How long `observe` waits for the server's answer to its deregistration.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// After this long without a response, a spinner shows on a terminal.
const SPINNER_AFTER: Duration = Duration::from_millis(500);

/// Prints one line on stderr unless `--quiet`.
fn say(args: &RequestArgs, line: &str) {
    if !args.quiet {
        eprintln!("coap: {line}");
    }
}

/// The exit status for a failed exchange.
fn exit_for(error: &Error) -> Exit {
    match error {
        Error::Timeout => Exit::Timeout,
        Error::InvalidUri(_) | Error::UnsupportedScheme(_) | Error::NotARequest(_) => Exit::Usage,
        _ => Exit::Network,
    }
}

/// A client socket of the family the URI's host needs: IPv4 for an IPv4 literal, otherwise
/// dual-stack IPv6 (falling back to IPv4 where IPv6 is unavailable).
async fn bind_client(uri: &str) -> Result<Client, Error> {
    let v4 = matches!(
        CoapUri::parse(uri).map(|u| u.host().clone()),
        Ok(Host::Ip {
            addr: IpAddr::V4(_),
            ..
        })
    );
    if v4 {
        return Client::bind("0.0.0.0:0").await;
    }
    match Client::bind("[::]:0").await {
        Ok(client) => Ok(client),
        Err(_) => Client::bind("0.0.0.0:0").await,
    }
}

/// The request body from `--payload` or `--payload-file`.
fn read_payload(args: &RequestArgs) -> Result<Vec<u8>, String> {
    if let Some(text) = &args.payload {
        return Ok(text.as_bytes().to_vec());
    }
    match &args.payload_file {
        None => Ok(Vec::new()),
        Some(path) if path.as_os_str() == "-" => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read the payload from stdin: {e}"))?;
            Ok(body)
        }
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
    }
}

/// Builds the request the arguments describe (through the proxy, if one is given).
fn build(client: &Client, method: Code, args: &RequestArgs, payload: Vec<u8>) -> RequestBuilder {
    let mut builder = match &args.proxy {
        // RFC 7252 §5.10.2: the proxy's address in the destination, the whole target in
        // Proxy-Uri (with no Uri-Path or Uri-Query beside it).
        Some(proxy) if args.proxy_scheme => {
            let mut builder = client.request(method, proxy.clone());
            // Checked by `check_args`: with --proxy-scheme the target is a CoAP URI.
            if let Ok(target) = CoapUri::parse(&args.uri) {
                let host = match target.host() {
                    Host::Name(name) => name.clone(),
                    Host::Ip {
                        addr: IpAddr::V6(v6),
                        ..
                    } => format!("[{v6}]"),
                    Host::Ip { addr, .. } => addr.to_string(),
                };
                builder = builder.option_str(OptionNumber::URI_HOST, &host);
                builder = builder.option_uint(OptionNumber::URI_PORT, u32::from(target.port()));
                for segment in target.path() {
                    builder = builder.option_str(OptionNumber::URI_PATH, segment);
                }
                for arg in target.query() {
                    builder = builder.option_str(OptionNumber::URI_QUERY, arg);
                }
                let scheme = args.uri.split("://").next().unwrap_or("coap");
                builder = builder.option_str(OptionNumber::PROXY_SCHEME, scheme);
            }
            builder
        }
        Some(proxy) => client
            .request(method, proxy.clone())
            .option_str(OptionNumber::PROXY_URI, &args.uri),
        None => client.request(method, args.uri.clone()),
    };
    if let Some(cf) = args.content_format {
        builder = builder.content_format(cf);
    }
    if let Some(cf) = args.accept {
        builder = builder.accept(cf);
    }
    for option in &args.options {
        builder = builder.option(option.number, &option.value);
    }
    if args.non {
        builder = builder.non();
    }
    if !payload.is_empty() {
        builder = builder.payload(payload);
    }
    builder
}

/// Checks what can be checked before the network is touched.
fn check_args(args: &RequestArgs) -> Result<(), String> {
    let target = args.proxy.as_deref().unwrap_or(&args.uri);
    CoapUri::parse(target).map_err(|e| format!("invalid URI {target:?}: {e}"))?;
    if args.proxy_scheme {
        CoapUri::parse(&args.uri).map_err(|e| format!("invalid URI {:?}: {e}", args.uri))?;
    }
    if args.proxy.is_some() && !args.uri.contains("://") {
        return Err(format!(
            "with --proxy, {:?} must be an absolute URI",
            args.uri
        ));
    }
    Ok(())
}

/// Runs one request verb and returns the exit status.
pub(crate) async fn request(method: Code, args: RequestArgs) -> Exit {
    if let Err(message) = check_args(&args) {
        say(&args, &message);
        return Exit::Usage;
    }
    let payload = match read_payload(&args) {
        Ok(p) => p,
        Err(message) => {
            say(&args, &message);
            return Exit::Usage;
        }
    };
    let target = args.proxy.clone().unwrap_or_else(|| args.uri.clone());
    let client = match bind_client(&target).await {
        Ok(c) => c,
        Err(e) => {
            say(&args, &format!("cannot open a socket: {e}"));
            return Exit::Network;
        }
    };
    if args.verbose {
        eprintln!(
            "-> {} {} ({}, {} bytes{})",
            method.name().unwrap_or("?"),
            args.uri,
            if args.non { "NON" } else { "CON" },
            payload.len(),
            args.proxy
                .as_deref()
                .map(|p| format!(", through {p}"))
                .unwrap_or_default()
        );
    }
    if args.proxy.is_none() && is_group(&args.uri) {
        return multicast(&client, method, &args, payload).await;
    }
    let stepwise = method == Code::GET
        && !args.non
        && !args.quiet
        && (args.progress || std::io::stderr().is_terminal())
        && !args
            .options
            .iter()
            .any(|o| o.number == OptionNumber::BLOCK2);
    let mut pending: Pin<Box<dyn Future<Output = Result<Fetched, Error>> + Send + '_>> = if stepwise
    {
        Box::pin(get_with_progress(&client, &args))
    } else {
        let send = build(&client, method, &args, payload).send();
        Box::pin(async move { send.await.map(|last| Fetched { last, body: None }) })
    };
    let started = Instant::now();
    let limit = args.timeout;
    let wait = async {
        let spinner_delay = tokio::time::sleep(SPINNER_AFTER);
        tokio::pin!(spinner_delay);
        let mut spinner = None;
        loop {
            tokio::select! {
                result = &mut pending => {
                    if let Some(bar) = spinner.take() {
                        indicatif::ProgressBar::finish_and_clear(&bar);
                    }
                    return result;
                }
                () = &mut spinner_delay, if spinner.is_none() && !stepwise => {
                    spinner = Some(new_spinner(&args));
                }
            }
        }
    };
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Err(Error::Timeout)),
        None => wait.await,
    };
    let elapsed = started.elapsed();
    match result {
        Ok(fetched) => {
            if args.verbose {
                describe_response(&fetched, elapsed);
            }
            finish(&args, &fetched)
        }
        Err(e) => {
            say(&args, &describe_error(&e, &args, elapsed));
            exit_for(&e)
        }
    }
}

/// Whether `uri` names a multicast group.
fn is_group(uri: &str) -> bool {
    matches!(
        CoapUri::parse(uri).map(|u| u.host().clone()),
        Ok(Host::Ip { addr, .. }) if addr.is_multicast()
    )
}

/// A request to a multicast group (RFC 7252 §8): Non-confirmable, answered by any number of
/// servers until the window (`--timeout`) closes. Each answer's code and sender go to stderr,
/// its body to the output. Exit status 0 if any answer was a success, 1 if all answers were
/// errors, 3 if nobody answered.
async fn multicast(client: &Client, method: Code, args: &RequestArgs, payload: Vec<u8>) -> Exit {
    let chosen = match args.multicast_interface {
        Some(group::Interface::V4(addr)) => client.set_multicast_interface_v4(addr),
        Some(group::Interface::V6(index)) => client.set_multicast_interface_v6(index),
        None => Ok(()),
    };
    if let Err(e) = chosen {
        say(args, &format!("cannot pick the multicast interface: {e}"));
        return Exit::Usage;
    }
    let started = Instant::now();
    let mut request = build(client, method, args, payload);
    if let Some(window) = args.timeout {
        request = request.timeout(window);
    }
    let mut answers = match request.multicast().await {
        Ok(answers) => answers,
        Err(e) => {
            say(args, &format!("{}: {e}", args.uri));
            return exit_for(&e);
        }
    };
    let (mut successes, mut total) = (0usize, 0usize);
    while let Some(answer) = answers.next().await {
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                say(args, &format!("{}: {e}", args.uri));
                continue;
            }
        };
        total += 1;
        say(
            args,
            &format!(
                "{:?} from {} after {:.1} ms",
                response.code(),
                response.peer(),
                started.elapsed().as_secs_f64() * 1000.0
            ),
        );
        if args.verbose {
            for line in format::describe_options(response.options()) {
                eprintln!("   {line}");
            }
        }
        if response.is_success() {
            successes += 1;
        }
        if let Err(e) = write_body(
            args,
            response.payload(),
            response.content_format(),
            Style::Pretty,
        ) {
            say(args, &e);
            return Exit::Network;
        }
    }
    match (successes, total) {
        (0, 0) => {
            say(
                args,
                &format!("no answer from {} (the window closed)", args.uri),
            );
            Exit::Timeout
        }
        (0, _) => Exit::Response,
        _ => Exit::Success,
    }
}

/// A response, and the whole body when it was fetched block by block.
struct Fetched {
    /// The last response (the only one, unless the body came block by block).
    last: IncomingResponse,
    /// The reassembled body of a block-wise GET.
    body: Option<Vec<u8>>,
}

impl Fetched {
    fn body(&self) -> &[u8] {
        self.body.as_deref().unwrap_or(self.last.payload())
    }
}

/// Bodies over this size get a progress bar.
const PROGRESS_THRESHOLD: u64 = 64 * 1024;

/// The largest body fetched block by block (the engine's own limit for whole bodies is
/// alike).
const MAX_STEPWISE_BODY: usize = 64 << 20;

/// A GET fetched one block at a time (RFC 7959 §2.4), so progress can be shown: the first
/// request asks for block 0 and the total size (Size2 = 0, §4); the following ones follow
/// the server's block size. The ETag must stay the same across blocks (§2.4).
async fn get_with_progress(client: &Client, args: &RequestArgs) -> Result<Fetched, Error> {
    let block_request = |block: Block| {
        build(client, Code::GET, args, Vec::new())
            .option_uint(OptionNumber::BLOCK2, block.to_uint())
    };
    let first_block = Block {
        num: 0,
        more: false,
        szx: 6,
    };
    let first = block_request(first_block)
        .option_uint(OptionNumber::SIZE2, 0)
        .send()
        .await?;
    let Some(mut block) = first.options().block2() else {
        return Ok(Fetched {
            last: first,
            body: None,
        });
    };
    if !first.is_success() || !block.more || block.num != 0 {
        return Ok(Fetched {
            last: first,
            body: None,
        });
    }
    let total = first.options().size2().map(u64::from);
    let bar = match total {
        Some(total) if total > PROGRESS_THRESHOLD => {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        }
        _ => indicatif::ProgressBar::hidden(),
    };
    let etag = first.etag().map(<[u8]>::to_vec);
    let mut body = first.payload().to_vec();
    let mut last = first;
    while block.more {
        let next = Block {
            num: u32::try_from(body.len() / block.size()).unwrap_or(u32::MAX),
            more: false,
            szx: block.szx,
        };
        let response = block_request(next).send().await?;
        if !response.is_success() {
            bar.finish_and_clear();
            return Ok(Fetched {
                last: response,
                body: None,
            });
        }
        if response.etag().map(<[u8]>::to_vec) != etag {
            bar.finish_and_clear();
            return Err(Error::ResourceChanged);
        }
        let Some(got) = response.options().block2() else {
            // The server sent the whole body after all.
            bar.finish_and_clear();
            return Ok(Fetched {
                last: response,
                body: None,
            });
        };
        if got.offset() != body.len() {
            bar.finish_and_clear();
            return Err(Error::ResourceChanged);
        }
        body.extend_from_slice(response.payload());
        if body.len() > MAX_STEPWISE_BODY {
            bar.finish_and_clear();
            return Err(Error::BodyTooLarge);
        }
        bar.set_position(body.len() as u64);
        block = got;
        last = response;
    }
    bar.finish_and_clear();
    Ok(Fetched {
        last,
        body: Some(body),
    })
}

/// A spinner on stderr while a response takes long: hidden unless stderr is a terminal.
fn new_spinner(args: &RequestArgs) -> indicatif::ProgressBar {
    if args.quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("waiting for {}", args.uri));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn describe_error(error: &Error, args: &RequestArgs, elapsed: Duration) -> String {
    match error {
        Error::Timeout => format!(
            "no response from {} after {:.1} s (timed out)",
            args.proxy.as_deref().unwrap_or(&args.uri),
            elapsed.as_secs_f64()
        ),
        other => format!("{}: {other}", args.uri),
    }
}

/// `-v`: the response's code, type, peer, timing and options, on stderr.
fn describe_response(fetched: &Fetched, elapsed: Duration) {
    let response = &fetched.last;
    let kind = match response.message_type() {
        MessageType::Con => "CON",
        MessageType::Non => "NON",
        MessageType::Ack => "ACK",
        MessageType::Rst => "RST",
    };
    eprintln!(
        "<- {:?} ({kind}) from {} in {:.1} ms, {} bytes",
        response.code(),
        response.peer(),
        elapsed.as_secs_f64() * 1000.0,
        fetched.body().len()
    );
    for line in format::describe_options(response.options()) {
        eprintln!("   {line}");
    }
}

/// Writes the body where it belongs and picks the exit status.
fn finish(args: &RequestArgs, fetched: &Fetched) -> Exit {
    let response = &fetched.last;
    if !response.is_success() {
        let mut line = format!("{:?}", response.code());
        if let Some(text) = response.payload_str().filter(|t| !t.trim().is_empty()) {
            line.push_str(": ");
            line.push_str(&text.replace(['\r', '\n'], " "));
        }
        say(args, &line);
        return Exit::Response;
    }
    if let Err(e) = write_body(
        args,
        fetched.body(),
        response.content_format(),
        Style::Pretty,
    ) {
        say(args, &e);
        return Exit::Network;
    }
    Exit::Success
}

/// Writes a body to `--output` or stdout; `wanted` is the style used on a terminal.
fn write_body(
    args: &RequestArgs,
    body: &[u8],
    format: Option<ContentFormat>,
    wanted: Style,
) -> Result<(), String> {
    if let Some(path) = &args.output {
        return std::fs::write(path, body)
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
    }
    let stdout = std::io::stdout();
    let style = if args.raw {
        Style::Raw
    } else if args.pretty || stdout.is_terminal() || wanted == Style::OneLine {
        wanted
    } else {
        Style::Raw
    };
    let mut out = stdout.lock();
    let written = match format::render(body, format, style) {
        Some(mut text) => {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            out.write_all(text.as_bytes())
        }
        None => out.write_all(body),
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the body: {e}"))
}

/// Why an observation stopped on our side.
enum Stop {
    Count,
    Duration,
    Interrupted,
}

/// Runs `observe` and returns the exit status.
pub(crate) async fn observe(args: ObserveArgs) -> Exit {
    let ObserveArgs {
        request: args,
        count,
        duration,
    } = args;
    if let Err(message) = check_args(&args) {
        say(&args, &message);
        return Exit::Usage;
    }
    if count == Some(0) {
        return Exit::Success;
    }
    let payload = match read_payload(&args) {
        Ok(p) => p,
        Err(message) => {
            say(&args, &message);
            return Exit::Usage;
        }
    };
    let target = args.proxy.clone().unwrap_or_else(|| args.uri.clone());
    let client = match bind_client(&target).await {
        Ok(c) => c,
        Err(e) => {
            say(&args, &format!("cannot open a socket: {e}"));
            return Exit::Network;
        }
    };
    let started = Instant::now();
    // Without a signal handler Ctrl-C keeps its default effect: never resolve here.
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(ctrl_c);
    let end = duration.map(|d| tokio::time::Instant::now() + d);
    let until_end = async move {
        match end {
            Some(end) => tokio::time::sleep_until(end).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_end);

    // The registration: its own timeout covers only the first response.
    let first_limit = args.timeout.unwrap_or(Duration::MAX);
    let registration = build(&client, Code::GET, &args, payload).observe();
    let mut observation = tokio::select! {
        result = tokio::time::timeout(first_limit, registration) => match result {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                say(&args, &describe_error(&e, &args, started.elapsed()));
                return exit_for(&e);
            }
            Err(_) => {
                say(&args, &describe_error(&Error::Timeout, &args, started.elapsed()));
                return Exit::Timeout;
            }
        },
        () = &mut ctrl_c => return Exit::Success,
    };

    let mut received: u64 = 0;
    let first_deadline = tokio::time::Instant::now()
        .checked_add(first_limit)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
    let stop = loop {
        let first_timeout = async {
            if received == 0 {
                tokio::time::sleep_until(first_deadline).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            item = observation.next() => match item {
                None => {
                    // The server ended it (or never accepted it): nothing to cancel.
                    if received > 0 {
                        say(&args, "the server ended the observation");
                    }
                    return Exit::Success;
                }
                Some(Err(e)) => {
                    say(&args, &describe_error(&e, &args, started.elapsed()));
                    return exit_for(&e);
                }
                Some(Ok(notification)) => {
                    received += 1;
                    let response = notification.response();
                    if args.verbose {
                        eprintln!(
                            "<- notification {} ({:?}, Observe: {})",
                            received,
                            response.code(),
                            notification
                                .sequence()
                                .map_or_else(|| String::from("none"), |s| s.to_string())
                        );
                    }
                    if !response.is_success() {
                        let fetched = Fetched { last: notification.into_response(), body: None };
                        return finish(&args, &fetched);
                    }
                    if let Err(e) = write_body(&args, response.payload(), response.content_format(), Style::OneLine) {
                        say(&args, &e);
                        return Exit::Network;
                    }
                    if notification.sequence().is_none() {
                        say(&args, "the server did not accept the observation (no Observe option)");
                        return Exit::Success;
                    }
                    if count.is_some_and(|n| received >= n) {
                        break Stop::Count;
                    }
                }
            },
            () = first_timeout => {
                say(&args, &describe_error(&Error::Timeout, &args, started.elapsed()));
                return Exit::Timeout;
            }
            () = &mut until_end => break Stop::Duration,
            () = &mut ctrl_c => break Stop::Interrupted,
        }
    };
    if args.verbose {
        let why = match stop {
            Stop::Count => "count reached",
            Stop::Duration => "duration over",
            Stop::Interrupted => "interrupted",
        };
        eprintln!("-- {why}: cancelling the observation");
    }
    // RFC 7641 §3.6: cancel actively with a GET carrying Observe = 1; its answer is the last
    // item of the stream. Wait for it, within bounds.
    let cancelled = tokio::time::timeout(CANCEL_WAIT, async {
        match observation.cancel().await {
            Ok(true) => while observation.next().await.is_some() {},
            Ok(false) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })
    .await;
    match cancelled {
        Ok(Ok(())) => {}
        Ok(Err(e)) => say(&args, &format!("cancelling the observation failed: {e}")),
        Err(_) => say(&args, "no answer to the deregistration; stopped anyway"),
    }
    Exit::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_with_fractions() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn exit_statuses_for_errors() {
        assert_eq!(exit_for(&Error::Timeout), Exit::Timeout);
        assert_eq!(exit_for(&Error::Reset), Exit::Network);
        assert_eq!(exit_for(&Error::Unreachable), Exit::Network);
    }
}
