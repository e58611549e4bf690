//! What a handler receives, [`IncomingRequest`], and the [`Responder`] that answers later.

use std::fmt;
use std::ops::Deref;
use std::sync::mpsc;

use coap_proto::host::{AnswerGuard, Deferred, Incoming};
use coap_proto::{IncomingId, Response};

use crate::io::{Chan, Mailbox};
use crate::Error;

/// A request received by a [`Server`](crate::Server), handed to its route's handler on a
/// worker thread.
///
/// It derefs to [`Incoming`], which reads the request: [`method`](Incoming::method),
/// [`path`](Incoming::path), [`rest`](Incoming::rest), [`query_value`](Incoming::query_value),
/// [`payload`](Incoming::payload), [`accept`](Incoming::accept),
/// [`with_etag`](Incoming::with_etag) and the rest.
pub struct IncomingRequest {
    pub(crate) head: Incoming,
    pub(crate) mailbox: Mailbox,
}

impl Deref for IncomingRequest {
    type Target = Incoming;

    fn deref(&self) -> &Incoming {
        &self.head
    }
}

impl IncomingRequest {
    /// Takes the answer out of the handler: the handler returns the [`Deferred`] marker and
    /// the [`Responder`] answers from any thread, however much later. Meanwhile the engine has
    /// acknowledged a Confirmable request with an empty ACK (RFC 7252 §5.2.2). A responder
    /// dropped without answering answers 5.00.
    pub fn defer(&self) -> (Responder, Deferred) {
        let responder = Responder {
            guard: AnswerGuard::new(self.id(), self.mailbox.clone()),
        };
        (responder, Deferred::new())
    }
}

impl fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.head.fmt(f)
    }
}

/// Answers one request later, from any thread (see [`IncomingRequest::defer`]).
pub struct Responder {
    guard: AnswerGuard<Chan>,
}

impl Responder {
    /// The request it answers.
    pub fn id(&self) -> IncomingId {
        self.guard.id()
    }

    /// Sends the response and blocks until the engine has taken it (not until the client
    /// has it).
    ///
    /// Fails with [`Error::AlreadyAnswered`] if the request was answered already,
    /// [`Error::MessageTooBig`] or [`Error::NotAResponse`] if the engine refused the response
    /// (the client then gets 5.00), and [`Error::ShuttingDown`] if the server has stopped.
    pub fn send(self, response: Response) -> Result<(), Error> {
        // On the I/O thread (a handler run with `workers(0)`) the wait would never end;
        // the guard, dropped unanswered, reports the request abandoned (5.00).
        if let Some(mailbox) = self.guard.sender() {
            mailbox.refuse_on_io_thread()?;
        }
        let (tx, rx) = mpsc::channel();
        self.guard.respond(response, Some(tx))?;
        rx.recv().map_err(|_| Error::ShuttingDown)?
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("id", &self.id()).finish()
    }
}
