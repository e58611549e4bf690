//! The proxy end to end: a client, a proxy server and an origin server on loopback, in
//! tokio's virtual time (Max-Age and timeouts pass without waiting).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_tokio::{Client, Code, IncomingRequest, OptionNumber, Proxy, Response, Router, Server};

const LIMIT: Duration = Duration::from_secs(600);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

/// What the origin has seen.
#[derive(Default)]
struct Origin {
    /// GETs answered with a body.
    gets: AtomicU32,
    /// GETs answered 2.03 because the request's ETag was current.
    validations: AtomicU32,
    /// The representation's version, changed by PUT.
    version: AtomicU32,
}

/// An origin with `/temp` (Max-Age 10, an ETag per version, 2.03 for a current ETag, PUT
/// makes a new version) and `/big` (3000 bytes, sent block-wise).
async fn origin() -> (SocketAddr, Arc<Origin>) {
    let state = Arc::new(Origin::default());
    let (get, put) = (Arc::clone(&state), Arc::clone(&state));
    let app = Router::new()
        .get("/temp", move |req: IncomingRequest| {
            let state = Arc::clone(&get);
            async move {
                let version = state.version.load(Ordering::SeqCst);
                let etag = [b'v', b'0' + version as u8];
                if req.message().options.etags().any(|e| e == etag) {
                    state.validations.fetch_add(1, Ordering::SeqCst);
                    return Response::new(Code::VALID)
                        .with_option(OptionNumber::ETAG, &etag)
                        .with_max_age(10);
                }
                state.gets.fetch_add(1, Ordering::SeqCst);
                Response::content(format!("version {version}"))
                    .with_option(OptionNumber::ETAG, &etag)
                    .with_max_age(10)
            }
        })
        .put("/temp", move |_req: IncomingRequest| {
            let state = Arc::clone(&put);
            async move {
                state.version.fetch_add(1, Ordering::SeqCst);
                Response::new(Code::CHANGED)
            }
        })
        .get("/big", |_req: IncomingRequest| async {
            Response::content(vec![b'x'; 3000])
        })
        .post("/items", |_req: IncomingRequest| async {
            let mut created = Response::new(Code::CREATED);
            created.options.push_location_path("items");
            created.options.push_location_path("7");
            created
        });
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(app));
    (addr, state)
}

/// A proxy server: forward proxy, and `/rev` mapped onto `reverse_base`.
async fn proxy_server(reverse_base: &str, timeout: Duration) -> (SocketAddr, Proxy) {
    let upstream = Client::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::new(upstream).upstream_timeout(timeout);
    let forward = proxy.clone();
    let app = Router::new()
        .proxy(move |req: IncomingRequest| {
            let proxy = forward.clone();
            async move { proxy.forward(req).await }
        })
        .prefix_any("/rev", proxy.reverse(reverse_base).unwrap());
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(app));
    (addr, proxy)
}

/// A GET through the forward proxy at `proxy` for `uri`.
async fn get_via(client: &Client, proxy: SocketAddr, uri: &str) -> coap_tokio::IncomingResponse {
    client
        .get(format!("coap://{proxy}"))
        .option_str(OptionNumber::PROXY_URI, uri)
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn responses_are_cached_revalidated_and_invalidated() {
    bounded(async {
        let (origin_addr, origin) = origin().await;
        let base = format!("coap://{origin_addr}/");
        let (proxy_addr, proxy) = proxy_server(&base, Duration::from_secs(5)).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("coap://{origin_addr}/temp");

        let r = get_via(&client, proxy_addr, &uri).await;
        assert_eq!(r.payload_str(), Some("version 0"));
        assert_eq!(r.message().options.max_age(), Some(10));
        assert_eq!(origin.gets.load(Ordering::SeqCst), 1);

        // 4 s later: from the cache, with the Max-Age it has left (RFC 7252 §5.7.1).
        tokio::time::sleep(Duration::from_secs(4)).await;
        let r = get_via(&client, proxy_addr, &uri).await;
        assert_eq!(r.payload_str(), Some("version 0"));
        assert_eq!(r.message().options.max_age(), Some(6));
        assert_eq!(origin.gets.load(Ordering::SeqCst), 1);
        // The reverse route reaches the same resource, and the same cache entry.
        let r = client
            .get(format!("coap://{proxy_addr}/rev/temp"))
            .await
            .unwrap();
        assert_eq!(r.payload_str(), Some("version 0"));
        assert_eq!(origin.gets.load(Ordering::SeqCst), 1);

        // Stale: revalidated with the stored ETag; the origin answers 2.03 and the client
        // gets the stored body, fresh again (§5.6.2).
        tokio::time::sleep(Duration::from_secs(7)).await;
        let r = get_via(&client, proxy_addr, &uri).await;
        assert_eq!(r.code(), Code::CONTENT);
        assert_eq!(r.payload_str(), Some("version 0"));
        assert_eq!(r.message().options.max_age(), Some(10));
        assert_eq!(origin.validations.load(Ordering::SeqCst), 1);
        assert_eq!(origin.gets.load(Ordering::SeqCst), 1);

        // A client holding the current ETag gets 2.03 from the cache (§5.10.6.2).
        let r = client
            .get(format!("coap://{proxy_addr}"))
            .option_str(OptionNumber::PROXY_URI, &uri)
            .etag(b"v0")
            .await
            .unwrap();
        assert_eq!(r.code(), Code::VALID);
        assert_eq!(origin.validations.load(Ordering::SeqCst), 1);

        // A PUT through the proxy changes the resource: what is stored is not fresh any
        // more (§5.9.1.4), and the next GET fetches the new version.
        let r = client
            .put(format!("coap://{proxy_addr}"))
            .option_str(OptionNumber::PROXY_URI, &uri)
            .payload("x")
            .await
            .unwrap();
        assert_eq!(r.code(), Code::CHANGED);
        let r = get_via(&client, proxy_addr, &uri).await;
        assert_eq!(r.payload_str(), Some("version 1"));
        assert_eq!(origin.gets.load(Ordering::SeqCst), 2);

        let stats = proxy.stats();
        assert_eq!((stats.hits, stats.revalidated), (3, 1), "{stats:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_large_body_goes_block_wise_on_both_legs() {
    bounded(async {
        let (origin_addr, _) = origin().await;
        let (proxy_addr, _) = proxy_server("coap://127.0.0.1/", Duration::from_secs(5)).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let r = get_via(&client, proxy_addr, &format!("coap://{origin_addr}/big")).await;
        assert_eq!(r.payload().len(), 3000);
        assert!(r.payload().iter().all(|b| *b == b'x'));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_proxy_answers_what_it_cannot_forward_as_the_rfc_says() {
    bounded(async {
        let (origin_addr, _) = origin().await;
        let (proxy_addr, _) = proxy_server("coap://127.0.0.1/", Duration::from_secs(5)).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();

        // Another scheme: 5.05 Proxying Not Supported (§5.7.2).
        let r = get_via(&client, proxy_addr, "http://example.org/").await;
        assert_eq!(r.code(), Code::PROXYING_NOT_SUPPORTED);

        // An origin that never answers: 5.04 Gateway Timeout once the upstream timeout passes.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = tokio::time::Instant::now();
        let r = get_via(
            &client,
            proxy_addr,
            &format!("coap://{}/x", silent.local_addr().unwrap()),
        )
        .await;
        assert_eq!(r.code(), Code::GATEWAY_TIMEOUT);
        assert!(start.elapsed() >= Duration::from_secs(5));

        // An unrecognized Unsafe option: 4.02 (§5.7.1); an unrecognized Safe-to-Forward one,
        // even a critical one, reaches the origin (which ignores the elective one and, not
        // being a proxy, rejects the critical one with 4.02, relayed as such).
        let uri = format!("coap://{origin_addr}/temp");
        let with = |number: u16| {
            client
                .get(format!("coap://{proxy_addr}"))
                .option_str(OptionNumber::PROXY_URI, &uri)
                .option(OptionNumber(number), b"v")
        };
        assert_eq!(with(65002).await.unwrap().code(), Code::BAD_OPTION);
        let r = with(65000).await.unwrap();
        assert_eq!(r.payload_str(), Some("version 0"));
        let r = with(65001).await.unwrap();
        assert_eq!(r.code(), Code::BAD_OPTION);
        assert!(r.payload_str().unwrap_or("").contains("65001"), "{r:?}");

        // Hop-Limit 1 ends here: 5.08 (RFC 8768 §3).
        let r = client
            .get(format!("coap://{proxy_addr}"))
            .option_str(OptionNumber::PROXY_URI, &uri)
            .option_uint(OptionNumber::HOP_LIMIT, 1)
            .await
            .unwrap();
        assert_eq!(r.code(), Code::HOP_LIMIT_REACHED);

        // A server without a proxy route answers 5.05.
        let r = get_via(&client, origin_addr, &uri).await;
        assert_eq!(r.code(), Code::PROXYING_NOT_SUPPORTED);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_reverse_proxy_answers_with_locations_in_its_own_namespace() {
    bounded(async {
        let (origin_addr, _) = origin().await;
        let (proxy_addr, _) =
            proxy_server(&format!("coap://{origin_addr}/"), Duration::from_secs(5)).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        // The origin says /items/7; through the proxy's /rev route that is /rev/items/7.
        let r = client
            .post(format!("coap://{proxy_addr}/rev/items"))
            .await
            .unwrap();
        assert_eq!(r.code(), Code::CREATED);
        let location: Vec<&str> = r.message().options.location_path().collect();
        assert_eq!(location, ["rev", "items", "7"]);
        // A forward request keeps the origin's own location.
        let r = client
            .post(format!("coap://{proxy_addr}"))
            .option_str(
                OptionNumber::PROXY_URI,
                &format!("coap://{origin_addr}/items"),
            )
            .await
            .unwrap();
        let location: Vec<&str> = r.message().options.location_path().collect();
        assert_eq!(location, ["items", "7"]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_destination_filter_refuses_with_5_05() {
    bounded(async {
        let (origin_addr, _) = origin().await;
        let upstream = Client::bind("127.0.0.1:0").await.unwrap();
        let allowed = origin_addr.port();
        let proxy = Proxy::new(upstream).allow_destinations(move |uri| uri.port() == allowed);
        let app = Router::new().proxy(move |req: IncomingRequest| {
            let proxy = proxy.clone();
            async move { proxy.forward(req).await }
        });
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = server.local_addr();
        tokio::spawn(server.serve(app));
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let r = get_via(&client, proxy_addr, &format!("coap://{origin_addr}/temp")).await;
        assert_eq!(r.code(), Code::CONTENT);
        let r = get_via(&client, proxy_addr, "coap://127.0.0.1:9/temp").await;
        assert_eq!(r.code(), Code::PROXYING_NOT_SUPPORTED);
    })
    .await;
}

/// A relayed observation ends once nobody observes the target: the first notification
/// after the last observer left (and after the grace period) deregisters the proxy from the
/// origin, and the next registration opens a new observation.
#[tokio::test(start_paused = true)]
async fn a_relayed_observation_ends_when_its_observers_are_gone() {
    bounded(async {
        let value = Arc::new(AtomicU32::new(0));
        let shown = Arc::clone(&value);
        let origin = Server::bind("127.0.0.1:0").await.unwrap();
        let origin_addr = origin.local_addr();
        let origin_handle = origin.handle();
        tokio::spawn(origin.serve(Router::new().observable("/obs", move |_req| {
            let v = shown.load(Ordering::SeqCst);
            async move { Response::content(v.to_string()) }
        })));
        let notifier = origin_handle.notifier("/obs");

        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = server.local_addr();
        let proxy = Proxy::new(Client::bind("127.0.0.1:0").await.unwrap())
            .relay_observations(server.handle());
        let forward = proxy.clone();
        tokio::spawn(
            server.serve(Router::new().proxy(move |req: IncomingRequest| {
                let proxy = forward.clone();
                async move { proxy.forward(req).await }
            })),
        );

        let target = format!("coap://{origin_addr}/obs");
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let observe = || {
            client
                .get(format!("coap://{proxy_addr}"))
                .option_str(OptionNumber::PROXY_URI, &target)
                .observe()
        };
        let mut observation = observe().await.unwrap();
        let first = observation.next().await.unwrap().unwrap();
        assert_eq!(first.response().payload_str(), Some("0"));
        assert!(first.sequence().is_some());
        assert_eq!(notifier.observer_count().await.unwrap(), 1);

        // The client forgets the observation: the proxy's next notification to it draws a
        // Reset, which takes it off the proxy's list.
        drop(observation);
        value.store(1, Ordering::SeqCst);
        assert_eq!(notifier.notify().await.unwrap(), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            notifier.observer_count().await.unwrap(),
            1,
            "within the grace period"
        );
        // Past the grace period, the next notification finds nobody: the proxy deregisters.
        tokio::time::sleep(coap_proto::host::RELAY_GRACE).await;
        value.store(2, Ordering::SeqCst);
        assert_eq!(notifier.notify().await.unwrap(), 1);
        for _ in 0..100 {
            if notifier.observer_count().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(notifier.observer_count().await.unwrap(), 0);
        assert_eq!(proxy.stats().relays_opened, 1);

        // A new registration opens a new observation of the origin.
        let mut again = observe().await.unwrap();
        let first = again.next().await.unwrap().unwrap();
        assert_eq!(first.response().payload_str(), Some("2"));
        assert!(first.sequence().is_some());
        assert_eq!(proxy.stats().relays_opened, 2);
    })
    .await;
}

/// A reverse route relays an observation too, its observers kept under the local path.
#[tokio::test(start_paused = true)]
async fn a_reverse_route_relays_an_observation() {
    bounded(async {
        let value = Arc::new(AtomicU32::new(5));
        let shown = Arc::clone(&value);
        let origin = Server::bind("127.0.0.1:0").await.unwrap();
        let origin_addr = origin.local_addr();
        let notifier = origin.handle().notifier("/obs");
        let other = origin.handle().notifier("/other");
        let render = move |_req| {
            let v = shown.load(Ordering::SeqCst);
            async move { Response::content(v.to_string()) }
        };
        let app = Router::new()
            .observable("/obs", render.clone())
            .observable("/other", render);
        tokio::spawn(origin.serve(app));
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = server.local_addr();
        let proxy = Proxy::new(Client::bind("127.0.0.1:0").await.unwrap())
            .relay_observations(server.handle());
        let reverse = proxy.reverse(&format!("coap://{origin_addr}/")).unwrap();
        tokio::spawn(server.serve(Router::new().prefix_any("/", reverse)));

        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let mut observation = client
            .observe(format!("coap://{proxy_addr}/obs"))
            .await
            .unwrap();
        let first = observation.next().await.unwrap().unwrap();
        assert_eq!(first.response().payload_str(), Some("5"));
        assert!(
            first.sequence().is_some(),
            "registered through the reverse route"
        );
        value.store(6, Ordering::SeqCst);
        assert_eq!(notifier.notify().await.unwrap(), 1);
        let next = observation.next().await.unwrap().unwrap();
        assert_eq!(next.response().payload_str(), Some("6"));

        // A burst of registrations for a target nobody observes yet: the first opens the
        // observation of the origin, the others wait for its answer and join it.
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let uri = format!("coap://{proxy_addr}/other");
                tokio::spawn(async move {
                    // A client each: one client sends one request at a time (NSTART 1).
                    let client = Client::bind("127.0.0.1:0").await.unwrap();
                    let mut observation = client.observe(uri).await.unwrap();
                    let first = observation.next().await.unwrap().unwrap();
                    (first.sequence().is_some(), (client, observation))
                })
            })
            .collect();
        let mut joined = Vec::new();
        for task in burst {
            let (registered, observation) = task.await.unwrap();
            assert!(registered, "every registration of the burst is taken");
            joined.push(observation);
        }
        assert_eq!(other.observer_count().await.unwrap(), 1, "the proxy alone");
        assert_eq!(proxy.stats().relays_opened, 2);

        // The server keeps observers by path: one with a query is not relayed, it gets one
        // answer without Observe.
        let mut with_query = client
            .observe(format!("coap://{proxy_addr}/obs?unit=c"))
            .await
            .unwrap();
        let only = with_query.next().await.unwrap().unwrap();
        assert_eq!(only.sequence(), None);
        assert_eq!(notifier.observer_count().await.unwrap(), 1);
    })
    .await;
}
