//! What a server handler receives, [`IncomingRequest`], and the [`Responder`] that answers
//! a request later.

use std::fmt;
use std::ops::Deref;

use coap_proto::host::{AnswerGuard, Deferred, Incoming};
use coap_proto::{IncomingId, Response};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Chan, Command};
use crate::Error;

/// A request received by a [`Server`](crate::Server), handed to the handler of its route.
///
/// It derefs to [`Incoming`], which reads the request: [`method`](Incoming::method),
/// [`path`](Incoming::path), [`rest`](Incoming::rest), [`query_value`](Incoming::query_value),
/// [`payload`](Incoming::payload), [`accept`](Incoming::accept),
/// [`with_etag`](Incoming::with_etag) and the rest.
pub struct IncomingRequest {
    pub(crate) head: Incoming,
    pub(crate) internal: mpsc::UnboundedSender<Command>,
}

impl Deref for IncomingRequest {
    type Target = Incoming;

    fn deref(&self) -> &Incoming {
        &self.head
    }
}

impl IncomingRequest {
    /// Takes the right to answer this request out of the handler: the handler returns the
    /// [`Deferred`] marker, and the request is answered when the [`Responder`] sends, from any
    /// task, however much later. Until then the engine has acknowledged a Confirmable request
    /// with an empty ACK (RFC 7252 §5.2.2), and the answer goes out as a separate response.
    ///
    /// A `Responder` dropped without sending answers 5.00 Internal Server Error, so the
    /// client is never left waiting and the server keeps no state for it.
    pub fn defer(&self) -> (Responder, Deferred) {
        let responder = Responder {
            guard: AnswerGuard::new(self.id(), self.internal.clone()),
        };
        (responder, Deferred::new())
    }
}

impl fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.head.fmt(f)
    }
}

/// Answers one request later, from any task (see [`IncomingRequest::defer`]).
pub struct Responder {
    guard: AnswerGuard<Chan>,
}

impl Responder {
    /// The request this responder answers.
    pub fn id(&self) -> IncomingId {
        self.guard.id()
    }

    /// Sends the response and waits until the engine has taken it.
    ///
    /// Fails with [`Error::AlreadyAnswered`] if the request was answered already (by the
    /// handler's own return value, or another responder), [`Error::MessageTooBig`] or
    /// [`Error::NotAResponse`] if the engine refused the response, and
    /// [`Error::ShuttingDown`] if the server has stopped.
    pub async fn send(self, response: Response) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.guard.respond(response, Some(tx))?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("id", &self.id()).finish()
    }
}
