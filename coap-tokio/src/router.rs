//! The [`Router`]: async handlers by path and method, on top of the engine's routing layer
//! ([`coap_proto::resource::Router`]), which decides 4.04, 4.05 and `/.well-known/core`.

use coap_proto::host;

use crate::incoming::IncomingRequest;

/// Async handlers by path and method, and the resource attributes `/.well-known/core` lists.
///
/// A handler is any `Fn(IncomingRequest) -> impl Future<Output = R>` where `R` is a
/// [`Response`](crate::Response), a `Result<Response, CoapError>` (or any error that converts
/// into a `Response`), a [`Deferred`](crate::Deferred), or a [`Reply`](crate::Reply). The
/// methods are those of [`host::Router`], shared by every runtime crate.
///
/// Requests for a path no route serves are answered 4.04 Not Found, methods a route does not
/// serve 4.05 Method Not Allowed, and a GET for `/.well-known/core` with the link-format
/// document of the routes, filtered by the query (RFC 6690 §4.1). The routing rules are those
/// of [`coap_proto::resource`].
///
/// ```
/// use coap_tokio::{CoapError, IncomingRequest, ResourceAttributes, Response, Router};
///
/// let sensors = Router::new()
///     .get("/temp", |_req: IncomingRequest| async { Response::content("21.5") })
///     .attributes("/temp", ResourceAttributes::new().rt("temperature-c").ct(0u16));
/// let app = Router::new()
///     .get("/hello", |_req: IncomingRequest| async { Response::content("hi") })
///     .put("/config", |req: IncomingRequest| async move {
///         match req.payload_str() {
///             Some(_) => Ok(Response::new(coap_tokio::Code::CHANGED)),
///             None => Err(CoapError::bad_request("not UTF-8")),
///         }
///     })
///     .prefix_get("/files", |req: IncomingRequest| async move {
///         Response::content(req.rest().collect::<Vec<_>>().join("/"))
///     })
///     .nest("/sensors", sensors);
/// # let _ = app;
/// ```
pub type Router = host::Router<IncomingRequest, host::Async>;

/// Hooks of an observable route (see [`Router::observable_with`]): an accept hook that reads
/// the registration as an [`IncomingRequest`], and an observer count hook.
pub type ObserveHooks = host::ObserveHooks<IncomingRequest>;
