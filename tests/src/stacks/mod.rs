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
use coap_proto::resource::{path_from_segments, CoapError};
use coap_proto::Response;

use crate::stack::pattern;

mod async_io_stack;
mod blocking_stack;
mod tokio_stack;

pub use async_io_stack::{AsyncIoStack, AsyncStd, AsyncStdExecutor, Executor, Smol, SmolExecutor};
pub use blocking_stack::Blocking;
pub use tokio_stack::Tokio;

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

/// The standard application (see [`crate::stack`]) on one of the async crates.
///
/// `$sleep` is an `async fn(Duration)` of the runtime, `$yield` its `yield_now`, `$spawn` a
/// `fn(impl Future<Output = ()> + Send + 'static)` that runs a task on it, `$state` the
/// [`AppState`](crate::stack::AppState).
macro_rules! async_app {
    ($krate:ident, $sleep:path, $yield:path, $spawn:path, $state:expr) => {{
        use $crate::stack::{AppEvent, AppState};
        use $krate::{
            CoapError, Code, IncomingRequest, ObserveHooks, ResourceAttributes, Response, Router,
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
        let sensors = Router::new()
            .get("/temp", ok)
            .attributes(
                "/temp",
                ResourceAttributes::new()
                    .rt("temperature-c")
                    .interface("sensor")
                    .ct(0u16)
                    .observable(),
            )
            .get("/hum", ok)
            .attributes(
                "/hum",
                ResourceAttributes::new().rt("humidity").title("Humidity"),
            )
            .observable_with(
                "/counter",
                move |_req: IncomingRequest| {
                    let value = counter.get();
                    async move { Response::content(value.to_string()) }
                },
                hooks,
            )
            .attributes("/counter", ResourceAttributes::new().rt("counter"));
        Router::new()
            .get("/echo", echo)
            .post("/echo", echo)
            .put("/echo", echo)
            .delete("/echo", echo)
            .fetch("/echo", echo)
            .patch("/echo", echo)
            .ipatch("/echo", echo)
            .route("/echo", Code::new(0, 20), echo)
            .post("/echo-big", |req: IncomingRequest| async move {
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
    }};
}
use async_app;
