//! What a handler gets, [`IncomingRequest`], and how it answers later: through a
//! [`Responder`].

use std::fmt;
use std::ops::Deref;

use async_channel::Sender;
use coap_proto::host::{AnswerGuard, Deferred, Incoming};
use coap_proto::{IncomingId, Response};

use crate::driver::{oneshot, Chan, Command};
use crate::Error;

/// A request a [`Server`](crate::Server) received, handed to the handler of its route.
///
/// It derefs to [`Incoming`], which reads the request: [`method`](Incoming::method),
/// [`path`](Incoming::path), [`rest`](Incoming::rest), [`query_value`](Incoming::query_value),
/// [`payload`](Incoming::payload), [`accept`](Incoming::accept),
/// [`with_etag`](Incoming::with_etag) and the rest.
pub struct IncomingRequest {
    pub(crate) head: Incoming,
    pub(crate) internal: Sender<Command>,
}

impl Deref for IncomingRequest {
    type Target = Incoming;

    fn deref(&self) -> &Incoming {
        &self.head
    }
}

impl IncomingRequest {
    /// Moves the duty to answer out of the handler: it returns the [`Deferred`] marker, and
    /// the [`Responder`] answers from any task, however much later. A Confirmable request
    /// gets an empty ACK meanwhile (RFC 7252 §5.2.2) and the answer goes as a separate
    /// response.
    ///
    /// A `Responder` dropped without answering sends 5.00 Internal Server Error, so no client
    /// is left waiting and the server keeps nothing for it.
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

/// The right to answer one request, usable from any task (see [`IncomingRequest::defer`]).
pub struct Responder {
    guard: AnswerGuard<Chan>,
}

impl Responder {
    /// The request it answers.
    pub fn id(&self) -> IncomingId {
        self.guard.id()
    }

    /// Sends `response` and waits until the engine has taken it.
    ///
    /// Fails with [`Error::AlreadyAnswered`] if the request has an answer already (the
    /// handler returned one, say), with [`Error::MessageTooBig`] or [`Error::NotAResponse`]
    /// if the engine refused it, and with [`Error::ShuttingDown`] once the server stopped.
    pub async fn send(self, response: Response) -> Result<(), Error> {
        let (done, taken) = oneshot();
        self.guard.respond(response, Some(done))?;
        taken.recv().await.map_err(|_| Error::ShuttingDown)?
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("id", &self.id()).finish()
    }
}
