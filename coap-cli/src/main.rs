//! `coap`: a CoAP (RFC 7252) command-line client, and servers to try it against.
//!
//! ```text
//! coap serve                                  # the demo server on [::]:5683
//! coap get coap://[::1]/time                  # a request
//! coap observe coap://[::1]/time --count 3    # three notifications, then cancel
//! coap fileserver ./public --write            # a directory over CoAP
//! coap proxy -b [::]:5684                      # a forward proxy with a cache
//! coap get coap://[::1]/time --proxy coap://[::1]:5684   # a request through it
//! ```
//!
//! Exit status: 0 for a 2.xx response, 1 for any other response code, 2 for bad arguments,
//! 3 for a timeout, 4 for other network errors (reset, unreachable, socket errors).

mod client;
mod demo;
mod fileserver;
mod format;
mod group;
mod plugtest;
mod proxy;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coap_proto::msg::Code;

use crate::client::{ObserveArgs, RequestArgs};

/// The exit statuses of `coap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// A 2.xx response, or a server that stopped cleanly.
    Success = 0,
    /// A response with a code other than 2.xx.
    Response = 1,
    /// Bad arguments (clap uses 2 for its own errors too).
    Usage = 2,
    /// No response in time.
    Timeout = 3,
    /// Another network failure: reset, unreachable, a socket error; or a server that failed.
    Network = 4,
}

/// A CoAP (RFC 7252) client and servers in one tool.
///
/// Exit status: 0 for a 2.xx response, 1 for another response code (4.xx, 5.xx), 2 for bad
/// arguments, 3 for a timeout, 4 for other network errors (reset, unreachable).
#[derive(Debug, Parser)]
#[command(name = "coap", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// GET a resource and print its body.
    Get(RequestArgs),
    /// POST a body to a resource.
    Post(RequestArgs),
    /// PUT a body to a resource (create or replace).
    Put(RequestArgs),
    /// DELETE a resource.
    Delete(RequestArgs),
    /// FETCH a resource with a request body (RFC 8132).
    Fetch(RequestArgs),
    /// PATCH a resource (RFC 8132).
    Patch(RequestArgs),
    /// iPATCH (idempotent PATCH) a resource (RFC 8132).
    Ipatch(RequestArgs),
    /// Observe a resource (RFC 7641): print each notification as it arrives, one per line.
    ///
    /// Stops after --count notifications, after --duration seconds, or on Ctrl-C, and then
    /// cancels the observation actively (a GET with Observe = 1).
    Observe(ObserveArgs),
    /// Run the demo server: /time (observable), /other/block (large, PUT replaces it),
    /// /other/separate (a separate response after 3 s), /whoami, /echo, /.well-known/core.
    Serve(ServeArgs),
    /// Run the ETSI CoAP plugtest server (the TD_COAP_* test resources).
    PlugtestServer(ServeArgs),
    /// Serve a directory: files with Block2 and ETags, directories as link-format listings,
    /// observation of files; with --write, PUT and DELETE of files.
    Fileserver(FileserverArgs),
    /// Run a CoAP-to-CoAP proxy (RFC 7252 §5.7) with a response cache: a forward proxy for
    /// requests naming their target in Proxy-Uri or Proxy-Scheme (`coap get URI --proxy
    /// coap://this-proxy`), and reverse routes mapping a path prefix onto an origin server.
    Proxy(proxy::ProxyArgs),
}

/// Where a server listens.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The address to bind, IPv4 or bracketed IPv6 (such as `127.0.0.1:5683` or `[::1]:5683`);
    /// port 0 picks a free port, which is logged.
    #[arg(
        long,
        short = 'b',
        value_name = "ADDR:PORT",
        default_value = "[::]:5683"
    )]
    bind: SocketAddr,

    #[command(flatten)]
    multicast: group::Multicast,
}

/// What the file server takes.
#[derive(Debug, clap::Args)]
struct FileserverArgs {
    /// The directory to serve.
    #[arg(default_value = ".")]
    dir: PathBuf,

    /// The address to bind, IPv4 or bracketed IPv6; port 0 picks a free port.
    #[arg(
        long,
        short = 'b',
        value_name = "ADDR:PORT",
        default_value = "[::]:5683"
    )]
    bind: SocketAddr,

    /// Allow PUT (create or replace a file) and DELETE.
    #[arg(long)]
    write: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Serve(_) | Command::PlugtestServer(_) | Command::Fileserver(_) | Command::Proxy(_)
    );
    init_logging(server);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coap: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Network as u8);
        }
    };
    let exit = runtime.block_on(run(cli.command));
    // Handler tasks that are still sleeping must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    ExitCode::from(exit as u8)
}

async fn run(command: Command) -> Exit {
    match command {
        Command::Get(args) => client::request(Code::GET, args).await,
        Command::Post(args) => client::request(Code::POST, args).await,
        Command::Put(args) => client::request(Code::PUT, args).await,
        Command::Delete(args) => client::request(Code::DELETE, args).await,
        Command::Fetch(args) => client::request(Code::FETCH, args).await,
        Command::Patch(args) => client::request(Code::PATCH, args).await,
        Command::Ipatch(args) => client::request(Code::IPATCH, args).await,
        Command::Observe(args) => client::observe(args).await,
        Command::Serve(args) => {
            server_exit(demo::run(args.bind, &args.multicast, shutdown_signal()).await)
        }
        Command::PlugtestServer(args) => {
            server_exit(plugtest::run(args.bind, &args.multicast, shutdown_signal()).await)
        }
        Command::Fileserver(args) => {
            server_exit(fileserver::run(args.dir, args.write, args.bind, shutdown_signal()).await)
        }
        Command::Proxy(args) => server_exit(proxy::run(args, shutdown_signal()).await),
    }
}

fn server_exit(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) -> Exit {
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            eprintln!("coap: {e}");
            Exit::Network
        }
    }
}

/// Logs to stderr: servers at info (each request, where they listen), clients at warn.
fn init_logging(server: bool) {
    let level = if server {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    {
        // A handler that cannot be installed must not stop the server at once.
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bind_addresses_parse() {
        let cli = Cli::try_parse_from(["coap", "serve", "--bind", "[::1]:0"]).unwrap();
        match cli.command {
            Command::Serve(a) => assert_eq!(a.bind, "[::1]:0".parse().unwrap()),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["coap", "serve"]).unwrap();
        match cli.command {
            Command::Serve(a) => assert_eq!(a.bind, "[::]:5683".parse().unwrap()),
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["coap", "serve", "--bind", "localhost"]).is_err());
    }

    #[test]
    fn request_options_parse() {
        let cli = Cli::try_parse_from([
            "coap",
            "put",
            "coap://127.0.0.1/x",
            "--payload",
            "hi",
            "--content-format",
            "json",
            "--option",
            "15=a=1",
            "--option",
            "4=0x01",
            "--non",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        let Command::Put(args) = cli.command else {
            panic!("not a put");
        };
        assert_eq!(args.options.len(), 2);
        assert!(args.non);
        assert_eq!(args.timeout, Some(std::time::Duration::from_millis(2500)));
        assert!(Cli::try_parse_from([
            "coap",
            "put",
            "coap://h/x",
            "--payload",
            "a",
            "--payload-file",
            "f"
        ])
        .is_err());
    }
}
