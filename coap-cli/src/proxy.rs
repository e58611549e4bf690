//! `coap proxy`: a CoAP-to-CoAP forward proxy (requests naming their target in Proxy-Uri or
//! Proxy-Scheme, RFC 7252 §5.7.2), reverse proxy routes (a path prefix mapped onto an origin
//! server, §5.7.3), and a response cache (§5.6), on `coap_tokio::Proxy`.
//!
//! Towards each origin the proxy is one client and keeps the RFC's rules: at most NSTART
//! requests in flight (§4.7), and no Message ID used twice within EXCHANGE_LIFETIME (§4.4),
//! so at most 65 536 requests per 247 s, about 265 a second sustained, to one origin. What
//! goes beyond waits, and is answered 5.04 once `--upstream-timeout` passes. The cache
//! answers repeated reads without the origin.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use coap_tokio::{CacheLimits, Client, Config, Host, IncomingRequest, Proxy, Router, Server};

/// What `coap proxy` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// The address to bind, IPv4 or bracketed IPv6; port 0 picks a free port, which is logged.
    #[arg(
        long,
        short = 'b',
        value_name = "ADDR:PORT",
        default_value = "[::]:5683"
    )]
    pub(crate) bind: SocketAddr,

    /// Serve PREFIX by forwarding to URI: `/sensors/temp?x` goes to `URI/temp?x` (a reverse
    /// proxy). May be given several times, such as `--reverse /sensors=coap://[::1]:5684/`.
    #[arg(long, value_name = "PREFIX=URI", value_parser = parse_reverse)]
    pub(crate) reverse: Vec<(String, String)>,

    /// Do not act as a forward proxy: requests with Proxy-Uri or Proxy-Scheme get 5.05.
    #[arg(long)]
    pub(crate) no_forward: bool,

    /// Forward only to this host (a name, an IPv4 address, or an IPv6 address with or without
    /// brackets); may be given several times. Requests for other hosts get 5.05. Without it
    /// the forward proxy relays to any host: do not leave such a proxy where strangers can
    /// reach it.
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub(crate) allow_host: Vec<Host>,

    /// The most responses the cache keeps (0: no cache).
    #[arg(long, value_name = "N", default_value_t = CacheLimits::default().max_entries)]
    pub(crate) cache_entries: usize,

    /// The most bytes the cache keeps.
    #[arg(long, value_name = "BYTES", default_value_t = CacheLimits::default().max_bytes)]
    pub(crate) cache_bytes: usize,

    /// Requests the proxy keeps in flight towards one origin server at a time (NSTART, RFC
    /// 7252 §4.7); more wait in a queue. The RFC's default is 1, which makes every client of
    /// the proxy wait behind the others; raise it only towards servers that cope.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) upstream_nstart: u16,

    /// Seconds to wait for an origin server before answering 5.04 Gateway Timeout.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub(crate) upstream_timeout: f64,
}

fn parse_host(text: &str) -> Result<Host, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(Host::ip(ip)),
        Err(_) => Host::name(bare).map_err(|e| format!("{text:?}: {e}")),
    }
}

fn parse_reverse(text: &str) -> Result<(String, String), String> {
    let (prefix, uri) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not PREFIX=URI"))?;
    if !prefix.starts_with('/') {
        return Err(format!("the prefix {prefix:?} must start with '/'"));
    }
    coap_proto::uri::CoapUri::parse(uri).map_err(|e| format!("{uri:?}: {e}"))?;
    Ok((prefix.to_string(), uri.to_string()))
}

/// Serves until `shutdown` resolves.
pub(crate) async fn run(
    args: ProxyArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    if !(args.upstream_timeout > 0.0 && args.upstream_timeout <= 3600.0) {
        return Err("--upstream-timeout must be between 0 and 3600 seconds".into());
    }
    let server = Server::bind(args.bind)
        .await
        .map_err(|e| format!("cannot bind {}: {e}", args.bind))?;
    // The upstream leg leaves from an ephemeral port of the same address family.
    let upstream = match args.bind {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    };
    if args.upstream_nstart == 0 {
        return Err("--upstream-nstart must be at least 1".into());
    }
    let mut config = Config::default();
    config.nstart = args.upstream_nstart.into();
    let client = Client::builder()
        .config(config)
        .bind(upstream)
        .await
        .map_err(|e| format!("cannot bind the upstream socket {upstream}: {e}"))?;
    let limits = CacheLimits {
        max_entries: args.cache_entries,
        max_bytes: args.cache_bytes,
        ..CacheLimits::default()
    };
    // Observations through the forward proxy are relayed: one observation of the origin
    // per target, its notifications passed on to every client observing it.
    let mut proxy = Proxy::with_cache(client, limits)
        .upstream_timeout(Duration::from_secs_f64(args.upstream_timeout))
        .relay_observations(server.handle());
    if !args.allow_host.is_empty() {
        let hosts = args.allow_host.clone();
        proxy = proxy.allow_destinations(move |uri| hosts.contains(uri.host()));
    }
    let mut app = Router::new();
    if !args.no_forward {
        let forward = proxy.clone();
        app = app.proxy(move |req: IncomingRequest| {
            let proxy = forward.clone();
            async move { proxy.forward(req).await }
        });
    }
    for (prefix, uri) in &args.reverse {
        app = app.prefix_any(prefix, proxy.reverse(uri)?);
        tracing::info!("{prefix} -> {uri}");
    }
    tracing::info!(
        "proxy listening on {} (forward proxy {})",
        server.local_addr(),
        if args.no_forward { "off" } else { "on" }
    );
    server
        .serve_with_shutdown(app, shutdown)
        .await
        .map_err(|e| e.into())
}
