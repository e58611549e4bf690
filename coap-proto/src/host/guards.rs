//! Guards that tell the driver, from `Drop`, what a dropped handle leaves behind:
//! [`AnswerGuard`] for an incoming request still owed an answer, [`CancelGuard`] for a client
//! exchange nobody waits for any more.

use alloc::boxed::Box;
use core::fmt;

use super::{Channels, Command, Error, ExchangeKey, Reply};
use crate::endpoint::IncomingId;
use crate::request::Response;

/// The duty to answer one incoming request: carried by a handler's task or job, or by a
/// runtime crate's responder. Answer it with [`respond`](AnswerGuard::respond) or
/// [`answer`](AnswerGuard::answer); dropped without an answer (a panic, an aborted task, a
/// responder let go), it reports the request abandoned, and the driver answers 5.00 so the
/// client is not left waiting.
pub struct AnswerGuard<C: Channels> {
    id: IncomingId,
    to: Option<C::Sender>,
}

impl<C: Channels> AnswerGuard<C> {
    /// The duty to answer `id`, reported to the driver through `to`.
    pub fn new(id: IncomingId, to: C::Sender) -> AnswerGuard<C> {
        AnswerGuard { id, to: Some(to) }
    }

    /// The request to answer.
    pub fn id(&self) -> IncomingId {
        self.id
    }

    /// Where the answer goes, while it has not gone yet.
    pub fn sender(&self) -> Option<&C::Sender> {
        self.to.as_ref()
    }

    /// Sends `response` to the driver; `done` learns whether the engine took it.
    ///
    /// # Errors
    ///
    /// [`Error::ShuttingDown`] if the driver is gone.
    pub fn respond(
        mut self,
        response: Response,
        done: Option<C::Reply<Result<(), Error>>>,
    ) -> Result<(), Error> {
        let Some(to) = self.to.take() else {
            return Err(Error::AlreadyAnswered);
        };
        let command = Command::Respond {
            id: self.id,
            response: Box::new(response),
            done,
        };
        if C::post(&to, command) {
            Ok(())
        } else {
            Err(Error::ShuttingDown)
        }
    }

    /// Passes a handler's [`Reply`] on: a response goes to the driver; for
    /// [`Reply::Deferred`] a responder has taken the duty over, and this guard lets go
    /// without reporting anything.
    pub fn answer(mut self, reply: Reply) {
        match reply {
            Reply::Response(response) => {
                let _ = self.respond(response, None);
            }
            Reply::Deferred(_) => self.to = None,
        }
    }
}

impl<C: Channels> Drop for AnswerGuard<C> {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            C::post(&to, Command::Abandoned(self.id));
        }
    }
}

impl<C: Channels> fmt::Debug for AnswerGuard<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerGuard")
            .field("id", &self.id)
            .field("armed", &self.to.is_some())
            .finish()
    }
}

/// Cancels a client exchange when the future or stream that waits for it is dropped before
/// the exchange ended: the engine stops retransmitting and forgets it.
///
/// A runtime crate drops (or closes) the waiter's receiving side first: a driver that has not
/// started the exchange yet then finds the waiter closed and never starts it; one that has
/// started it gets the cancel.
pub struct CancelGuard<C: Channels> {
    ticket: u64,
    to: Option<C::Sender>,
}

impl<C: Channels> CancelGuard<C> {
    /// Cancels the exchange started with `ticket` through `to` when dropped.
    pub fn new(ticket: u64, to: C::Sender) -> CancelGuard<C> {
        CancelGuard {
            ticket,
            to: Some(to),
        }
    }

    /// The ticket of the exchange.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The exchange has ended (or its driver is gone): nothing to cancel.
    pub fn disarm(mut self) {
        self.to = None;
    }
}

impl<C: Channels> Drop for CancelGuard<C> {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let exchange = ExchangeKey::Ticket(self.ticket);
            C::post(
                &to,
                Command::Cancel {
                    exchange,
                    reply: None,
                },
            );
        }
    }
}

impl<C: Channels> fmt::Debug for CancelGuard<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelGuard")
            .field("ticket", &self.ticket)
            .field("armed", &self.to.is_some())
            .finish()
    }
}
