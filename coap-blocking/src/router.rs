//! The [`Router`]: handlers by path and method, over the engine's routing layer
//! ([`coap_proto::resource::Router`]), which decides 4.04, 4.05 and `/.well-known/core`.

use coap_proto::host;

use crate::incoming::IncomingRequest;

/// Handlers by path and method, and the attributes `/.well-known/core` lists.
///
/// A handler is any `Fn(IncomingRequest) -> R + Send + Sync` where `R` is a
/// [`Response`](crate::Response), a `Result<Response, CoapError>`, a
/// [`Deferred`](crate::Deferred) or a [`Reply`](crate::Reply); unlike `coap-tokio`, where it
/// returns a future of one. The methods are those of [`host::Router`], shared by every runtime
/// crate. It runs on one of the server's worker
/// threads and may block for as long as it needs: the engine sends an empty ACK and a
/// separate response (RFC 7252 §5.2.2). With
/// [`ServerBuilder::workers(0)`](crate::ServerBuilder::workers) it runs on the I/O thread
/// instead, and must answer at once.
///
/// Unknown paths are answered 4.04, methods a route does not serve 4.05, and a GET for
/// `/.well-known/core` with the routes in link-format, filtered by the query (RFC 6690 §4.1).
///
/// ```
/// use coap_blocking::{CoapError, Code, IncomingRequest, Response, Router};
///
/// let app = Router::new()
///     .get("/hello", |_req: IncomingRequest| Response::content("hi"))
///     .put("/config", |req: IncomingRequest| match req.payload_str() {
///         Some(_) => Ok(Response::new(Code::CHANGED)),
///         None => Err(CoapError::bad_request("not UTF-8")),
///     })
///     .prefix_get("/files", |req: IncomingRequest| {
///         Response::content(req.rest().collect::<Vec<_>>().join("/"))
///     });
/// # let _ = app;
/// ```
pub type Router = host::Router<IncomingRequest, host::Blocking>;

/// Hooks of an observable route (see [`Router::observable_with`]): an accept hook that reads
/// the registration as an [`IncomingRequest`], and an observer count hook. Both run on the
/// I/O thread: keep them short.
pub type ObserveHooks = host::ObserveHooks<IncomingRequest>;
