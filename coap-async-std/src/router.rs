//! [`Router`]: async handlers by path and method over the engine's routing table
//! ([`coap_proto::resource::Router`]), which decides 4.04, 4.05 and `/.well-known/core`.

use coap_proto::host;

use crate::incoming::IncomingRequest;

/// Async handlers by path and method, and what `/.well-known/core` says about each path.
///
/// A handler is any `Fn(IncomingRequest) -> impl Future<Output = R>` whose `R` implements
/// [`IntoReply`](crate::IntoReply): a [`Response`](crate::Response), a
/// `Result<Response, CoapError>` (or another error that converts into a `Response`), a
/// [`Deferred`](crate::Deferred) or a [`Reply`](crate::Reply). The methods are those of
/// [`host::Router`], shared by every runtime crate.
///
/// A path no route serves is answered 4.04 Not Found, a method the path does not serve 4.05
/// Method Not Allowed, and a GET of `/.well-known/core` with the link-format list of the
/// routes, filtered by its query (RFC 6690 §4.1). The matching rules are those of
/// [`coap_proto::resource`].
///
/// ```
/// use coap_async_std::{CoapError, Code, IncomingRequest, ResourceAttributes, Response, Router};
///
/// let sensors = Router::new()
///     .get("/temp", |_req: IncomingRequest| async { Response::content("21.5") })
///     .attributes("/temp", ResourceAttributes::new().rt("temperature-c"));
/// let app = Router::new()
///     .put("/config", |req: IncomingRequest| async move {
///         match req.payload_str() {
///             Some(_) => Ok(Response::new(Code::CHANGED)),
///             None => Err(CoapError::bad_request("not UTF-8")),
///         }
///     })
///     .prefix_get("/files", |req: IncomingRequest| async move {
///         Response::content(req.rest().collect::<Vec<_>>().join("/"))
///     })
///     .nest("/sensors", sensors);
/// assert_eq!(app.routes().count(), 3);
/// ```
pub type Router = host::Router<IncomingRequest, host::Async>;

/// What an observable route may add (see [`Router::observable_with`]): an accept hook that
/// reads the registration as an [`IncomingRequest`], and an observer count hook.
pub type ObserveHooks = host::ObserveHooks<IncomingRequest>;
