//! The runtime crates as [`Stack`](crate::stack::Stack)s: [`Tokio`], [`AsyncStd`] and
//! [`Smol`] (`coap-async-std` under either executor), and [`Blocking`].
//!
//! The three crates share their type and method names, so the conversions to and from the
//! runtime-neutral types of [`crate::stack`] are written once, as the `glue!` macro each
//! module expands for its crate; likewise the standard application of the two async crates
//! (`async_app!`). The handlers' logic lives in plain functions of this module, which work on the
//! request message every crate hands out.

use std::time::Duration;

use coap_proto::msg::{Code, ContentFormat, Message};
use coap_proto::resource::{path_from_segments, CoapError, ResourceAttributes};
use coap_proto::Response;

use crate::stack::pattern;

/// The count of GETs of `/hits` on one server: each answer is the next number, so a
/// response served from a cache shows as a number repeated.
#[derive(Clone, Debug, Default)]
pub struct Hits(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Hits {
    /// The next number, from 1.
    pub fn next(&self) -> u32 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }
}

mod async_io_stack;
mod blocking_stack;
mod tokio_stack;

pub use async_io_stack::{AsyncIoStack, AsyncStd, AsyncStdExecutor, Executor, Smol, SmolExecutor};
pub use blocking_stack::Blocking;
pub use tokio_stack::Tokio;

/// The methods `/echo` answers: all of RFC 7252 and RFC 8132, and the unassigned 0.20.
const ECHO_METHODS: [Code; 8] = [
    Code::GET,
    Code::POST,
    Code::PUT,
    Code::DELETE,
    Code::FETCH,
    Code::PATCH,
    Code::IPATCH,
    Code::new(0, 20),
];

/// The link-format attributes of the routes under `/sensors`, by their path there.
fn sensor_attributes() -> [(&'static str, ResourceAttributes); 3] {
    [
        (
            "/temp",
            ResourceAttributes::new()
                .rt("temperature-c")
                .interface("sensor")
                .ct(0u16)
                .observable(),
        ),
        (
            "/hum",
            ResourceAttributes::new().rt("humidity").title("Humidity"),
        ),
        ("/counter", ResourceAttributes::new().rt("counter")),
    ]
}

/// The value of the first query argument `name=value` of `request`.
fn query_value<'a>(request: &'a Message, name: &str) -> Option<&'a str> {
    request.options.uri_query().find_map(|arg| {
        let (n, v) = arg.split_once('=').unwrap_or((arg, ""));
        (n == name).then_some(v)
    })
}

/// `/echo`: the method, the path and the payload.
fn echo(request: &Message) -> Response {
    Response::content(format!(
        "{} {} {}",
        request.code,
        path_from_segments(request.options.uri_path()),
        std::str::from_utf8(&request.payload).unwrap_or("<binary>")
    ))
}

/// `/cf`: only JSON is accepted.
fn content_format_check(request: &Message) -> Result<Response, CoapError> {
    if request.options.content_format() != Some(ContentFormat::JSON) {
        return Err(CoapError::unsupported_content_format());
    }
    Ok(Response::new(Code::CHANGED))
}

/// The `ms` query argument of `request`, or `default` milliseconds.
fn millis(request: &Message, default: u64) -> Duration {
    let ms = query_value(request, "ms").and_then(|v| v.parse().ok());
    Duration::from_millis(ms.unwrap_or(default))
}

/// `GET /big?len=N`: N bytes of the pattern.
fn big(request: &Message) -> Response {
    let len = query_value(request, "len").and_then(|v| v.parse().ok());
    Response::content(pattern(len.unwrap_or(0)))
}

/// `PUT /big`: the length of the body, and whether it is the pattern.
fn upload_check(request: &Message) -> Response {
    let body = &request.payload;
    let intact = body[..] == pattern(body.len())[..];
    Response::new(Code::CHANGED).with_payload(format!("{} {intact}", body.len()))
}

/// `/n?i=N`: N.
fn number(request: &Message) -> Response {
    Response::content(query_value(request, "i").unwrap_or("?").to_owned())
}

/// The conversions between one runtime crate's types and those of [`crate::stack`]; expanded
/// once in each stack module with the crate's name.
macro_rules! glue {
    ($krate:ident) => {
        use $crate::stack::{Incoming, Notif, Outgoing, Req, ReqOption, Rsp, StackError};

        fn error(e: $krate::Error) -> StackError {
            use $krate::Error as E;
            match e {
                E::InvalidUri(_) => StackError::InvalidUri,
                E::UnsupportedScheme(_) => StackError::UnsupportedScheme,
                E::Resolve { .. } => StackError::Resolve,
                E::NoUsableAddress { .. } => StackError::NoUsableAddress,
                E::Timeout => StackError::Timeout,
                E::Reset => StackError::Reset,
                E::Cancelled => StackError::Cancelled,
                E::Unreachable => StackError::Unreachable,
                E::Exchange(_) => StackError::Exchange,
                E::NotARequest(code) => StackError::NotARequest(code),
                E::AlreadyAnswered => StackError::AlreadyAnswered,
                E::ShuttingDown => StackError::ShuttingDown,
                other => StackError::Other(other.to_string()),
            }
        }

        fn response(r: $krate::IncomingResponse) -> Rsp {
            Rsp {
                peer: r.peer(),
                uri: r.uri().to_string(),
                message: r.into_message(),
            }
        }

        fn notification(n: $krate::Notification) -> Notif {
            Notif {
                fresh: n.is_fresh(),
                sequence: n.sequence(),
                response: response(n.into_response()),
            }
        }

        fn outgoing(p: $krate::PendingRequest) -> Outgoing {
            Outgoing {
                id: p.id,
                method: p.method,
                uri: p.uri,
                peer: p.peer,
                token: p.token,
            }
        }

        fn incoming(p: $krate::PendingIncoming) -> Incoming {
            Incoming {
                id: p.id,
                method: p.method,
                uri: p.uri,
                peer: p.peer,
                token: p.token,
            }
        }

        /// The crate's request builder for `req`.
        fn builder(client: &$krate::Client, req: Req) -> $krate::RequestBuilder {
            let mut b = client.request(req.method, req.uri);
            if !req.payload.is_empty() {
                b = b.payload(req.payload);
            }
            for option in req.options {
                b = match option {
                    ReqOption::ContentFormat(cf) => b.content_format(cf),
                    ReqOption::Accept(cf) => b.accept(cf),
                    ReqOption::Etag(etag) => b.etag(etag),
                    ReqOption::IfMatch(etag) => b.if_match(etag),
                    ReqOption::IfNoneMatch => b.if_none_match(),
                    ReqOption::Query(arg) => b.query(&arg),
                    ReqOption::Str(n, v) => b.option_str(n, &v),
                    ReqOption::Uint(n, v) => b.option_uint(n, v),
                    ReqOption::Opaque(n, v) => b.option(n, v),
                };
            }
            if req.non {
                b = b.non();
            }
            if let Some(limit) = req.timeout {
                b = b.timeout(limit);
            }
            b
        }

        fn results<T, U>(
            items: Vec<Result<T, $krate::Error>>,
            f: impl Fn(T) -> U,
        ) -> Vec<Result<U, StackError>> {
            items
                .into_iter()
                .map(|item| item.map(&f).map_err(error))
                .collect()
        }
    };
}
use glue;

/// Waits for nothing: the blocking crate's calls return their outcome already (the `$wait`
/// of its expansions of the macros below).
fn ready<T>(outcome: T) -> T {
    outcome
}

/// The methods of [`TestClient`](crate::stack::TestClient) that are one call on the crate's
/// client (the wrapper's field `0`), waited for with `$wait`: the runtime's `block_on`, or
/// [`ready`]. Expanded inside the `impl`.
macro_rules! client_calls {
    ($wait:path) => {
        fn local_addr(&self) -> std::net::SocketAddr {
            self.0.local_addr()
        }

        fn send(&self, req: Req) -> Result<Rsp, StackError> {
            let outcome = $wait(builder(&self.0, req).send());
            outcome.map(response).map_err(error)
        }

        fn observe(&self, uri: &str) -> Result<Self::Observation, StackError> {
            let observation = $wait(self.0.observe(uri));
            observation.map(<Self::Observation>::from).map_err(error)
        }

        fn ping(&self, uri: &str) -> Result<std::time::Duration, StackError> {
            $wait(self.0.ping(uri)).map_err(error)
        }

        fn pending(&self) -> Result<Vec<Outgoing>, StackError> {
            let listed = $wait(self.0.pending_requests()).map_err(error)?;
            Ok(listed.into_iter().map(outgoing).collect())
        }

        fn cancel(&self, id: coap_proto::RequestId) -> Result<bool, StackError> {
            $wait(self.0.cancel(id)).map_err(error)
        }

        fn stats(&self) -> Result<coap_proto::endpoint::Stats, StackError> {
            $wait(self.0.stats()).map_err(error)
        }

        fn shutdown(&self) -> Result<(), StackError> {
            $wait(self.0.shutdown()).map_err(error)
        }
    };
}
use client_calls;

/// The methods of [`TestClient`](crate::stack::TestClient) that are the same on both async
/// crates but for `$wait`, the runtime's `block_on`.
macro_rules! async_client_calls {
    ($wait:path) => {
        fn drop_unsent(&self, req: Req) {
            drop(builder(&self.0, req).send());
        }

        fn observe_req(&self, req: Req) -> Result<Self::Observation, StackError> {
            let observation = $wait(builder(&self.0, req).observe());
            observation.map(<Self::Observation>::from).map_err(error)
        }

        fn multicast(&self, req: Req) -> Result<Vec<Result<Rsp, StackError>>, StackError> {
            let items = $wait(async {
                let mut responses = builder(&self.0, req).multicast().await?;
                let mut items = Vec::new();
                while let Some(item) = responses.next().await {
                    items.push(item);
                }
                Ok(items)
            });
            Ok(results(items.map_err(error)?, response))
        }
    };
}
use async_client_calls;

/// The methods of [`TestObservation`](crate::stack::TestObservation) that are one call on
/// the crate's observation (field `0`), waited for with `$wait`.
macro_rules! observation_calls {
    ($wait:path) => {
        fn next(&mut self) -> Option<Result<Notif, StackError>> {
            let item = $wait(self.0.next())?;
            Some(item.map(notification).map_err(error))
        }

        fn cancel(&mut self) -> Result<bool, StackError> {
            $wait(self.0.cancel()).map_err(error)
        }
    };
}
use observation_calls;

/// The methods of [`TestServer`](crate::stack::TestServer) that are one call on the crate's
/// server handle (field `handle`), waited for with `$wait`; the wrapper keeps its
/// [`AppProbe`](crate::stack::AppProbe) in the field `probe`.
macro_rules! server_calls {
    ($wait:path) => {
        fn addr(&self) -> std::net::SocketAddr {
            self.handle.local_addr()
        }

        fn client(&self) -> Self::Client {
            self.handle.client().into()
        }

        fn probe(&self) -> &$crate::stack::AppProbe {
            &self.probe
        }

        fn notify(&self, path: &str) -> Result<usize, StackError> {
            $wait(self.handle.notifier(path).notify()).map_err(error)
        }

        fn notify_with(
            &self,
            path: &str,
            representation: coap_proto::Response,
        ) -> Result<usize, StackError> {
            let notifier = self.handle.notifier(path);
            $wait(notifier.notify_with(representation)).map_err(error)
        }

        fn observer_count(&self, path: &str) -> Result<usize, StackError> {
            $wait(self.handle.notifier(path).observer_count()).map_err(error)
        }

        fn pending_incoming(&self) -> Result<Vec<Incoming>, StackError> {
            let listed = $wait(self.handle.pending_incoming()).map_err(error)?;
            Ok(listed.into_iter().map(incoming).collect())
        }

        fn stats(&self) -> Result<coap_proto::endpoint::Stats, StackError> {
            $wait(self.handle.stats()).map_err(error)
        }

        fn shutdown(&self) -> Result<(), StackError> {
            $wait(self.handle.shutdown()).map_err(error)
        }
    };
}
use server_calls;

/// The standard application (see [`crate::stack`]) on one of the async crates.
///
/// `$sleep` is an `async fn(Duration)` of the runtime, `$yield` its `yield_now`, `$spawn` a
/// `fn(impl Future<Output = ()> + Send + 'static)` that runs a task on it, `$state` the
/// [`AppState`](crate::stack::AppState).
macro_rules! async_app {
    ($krate:ident, $sleep:path, $yield:path, $spawn:path, $state:expr) => {{
        use $crate::stack::{AppEvent, AppState};
        use $krate::{
            CoapError, IncomingRequest, ObserveHooks, ResourceAttributes, Response, Router,
        };

        let AppState {
            events,
            counter,
            gate,
        } = $state;
        let (deferred_events, twice_events) = (events.clone(), events.clone());
        let deferred_gate = gate.clone();
        let hooks = ObserveHooks::new()
            .accept(|req: &IncomingRequest| req.query_value("deny").is_none())
            .on_observer_count(move |n| {
                let _ = events.send(AppEvent::Observers(n));
            });
        let ok = |_req: IncomingRequest| async { Response::content("x") };
        let echo = |req: IncomingRequest| async move { $crate::stacks::echo(req.message()) };
        let mut sensors = Router::new()
            .get("/temp", ok)
            .get("/hum", ok)
            .observable_with(
                "/counter",
                move |_req: IncomingRequest| {
                    let value = counter.get();
                    async move { Response::content(value.to_string()) }
                },
                hooks,
            );
        for (path, attributes) in $crate::stacks::sensor_attributes() {
            sensors = sensors.attributes(path, attributes);
        }
        let mut app = Router::new();
        for method in $crate::stacks::ECHO_METHODS {
            app = app.route("/echo", method, echo);
        }
        app.post("/echo-big", |req: IncomingRequest| async move {
            Response::content(req.payload().clone())
        })
        .post("/opts", |req: IncomingRequest| async move {
            Response::content($crate::stack::options_summary(req.message()))
        })
        .get("/only-get", ok)
        .get("/peer", |req: IncomingRequest| async move {
            Response::content(req.peer().to_string())
        })
        .put("/cf", |req: IncomingRequest| async move {
            $crate::stacks::content_format_check(req.message())
        })
        .get("/bad", |_req: IncomingRequest| async {
            Err::<Response, _>(CoapError::bad_request("missing ?id"))
        })
        .get("/boom", |_req: IncomingRequest| async {
            Err::<Response, _>(CoapError::internal("database down"))
        })
        .get("/panic/now", |_req: IncomingRequest| async {
            if true {
                panic!("handler bug ({})", $crate::stack::EXPECTED_PANIC);
            }
            Response::content("unreachable")
        })
        .get("/panic/later", |_req: IncomingRequest| async {
            $yield().await;
            if true {
                panic!(
                    "handler bug after a wait ({})",
                    $crate::stack::EXPECTED_PANIC
                );
            }
            Response::content("unreachable")
        })
        .get("/slow", |req: IncomingRequest| async move {
            $sleep($crate::stacks::millis(req.message(), 100)).await;
            Response::content("done")
        })
        .get("/gate", move |_req: IncomingRequest| {
            let gate = gate.clone();
            async move {
                gate.pass().await;
                Response::content("released")
            }
        })
        .get("/deferred", move |req: IncomingRequest| {
            let (events, gate) = (deferred_events.clone(), deferred_gate.clone());
            async move {
                let (responder, deferred) = req.defer();
                let _ = events.send(AppEvent::Deferred(responder.id()));
                $spawn(async move {
                    gate.pass().await;
                    let _ = responder.send(Response::content("from another task")).await;
                });
                deferred
            }
        })
        .get("/dropped", |req: IncomingRequest| async move {
            let (responder, deferred) = req.defer();
            drop(responder);
            deferred
        })
        .get("/twice", move |req: IncomingRequest| {
            let events = twice_events.clone();
            async move {
                let (responder, _deferred) = req.defer();
                $spawn(async move {
                    $sleep(std::time::Duration::from_millis(20)).await;
                    let again = responder.send(Response::content("second")).await;
                    let _ = events.send(AppEvent::SecondAnswer(again.map_err(error)));
                });
                // The handler answers itself after all: the responder comes too late.
                Response::content("first")
            }
        })
        .get("/hello", |_req: IncomingRequest| async {
            Response::content("hello")
        })
        .get("/secret", ok)
        .attributes("/secret", ResourceAttributes::new().hidden())
        .nest("/sensors", sensors)
        .prefix_get("/files", |req: IncomingRequest| async move {
            let rest = req.rest().collect::<Vec<_>>().join("/");
            req.with_etag(Response::content(format!("file {rest}")))
        })
        .get("/files/special", |_req: IncomingRequest| async {
            Response::content("exact route wins")
        })
        .get("/big", |req: IncomingRequest| async move {
            $crate::stacks::big(req.message())
        })
        .put("/big", |req: IncomingRequest| async move {
            $crate::stacks::upload_check(req.message())
        })
        .get("/n", |req: IncomingRequest| async move {
            $crate::stacks::number(req.message())
        })
        .get("/hits", {
            let hits = $crate::stacks::Hits::default();
            move |_req: IncomingRequest| {
                let n = hits.next();
                async move { Response::content(n.to_string()) }
            }
        })
    }};
}
use async_app;
