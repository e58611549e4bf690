//! `coap-tokio` as a [`Stack`]: every call is a `block_on` on one multi-threaded runtime per
//! process, whose workers run the drivers, the servers and their handlers in between.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use coap_proto::endpoint::Stats;
use coap_proto::{Config, RequestId, Response};
use futures_lite::future::poll_once;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::stack::{
    app_state, AppProbe, PendingResponse, Stack, TestClient, TestObservation, TestServer,
};

super::glue!(coap_tokio);

/// `coap-tokio` on a multi-threaded tokio runtime.
#[derive(Debug)]
pub enum Tokio {}

fn rt() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn spawn_detached(task: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(task);
}

impl Stack for Tokio {
    const NAME: &'static str = "coap-tokio";
    type Client = Client;
    type Server = Server;

    fn client(addr: &str, config: Config) -> Result<Client, StackError> {
        let bound = rt().block_on(coap_tokio::Client::builder().config(config).bind(addr));
        Ok(Client(bound.map_err(error)?))
    }

    fn serve(addr: &str, config: Config) -> Result<Server, StackError> {
        let server = rt()
            .block_on(coap_tokio::Server::builder().config(config).bind(addr))
            .map_err(error)?;
        let (state, probe) = app_state();
        let app = super::async_app!(
            coap_tokio,
            tokio::time::sleep,
            tokio::task::yield_now,
            spawn_detached,
            state
        );
        let (stop, signal) = oneshot::channel::<()>();
        let handle = server.handle();
        let served = rt().spawn(server.serve_with_shutdown(app, async {
            let _ = signal.await;
        }));
        Ok(Server {
            handle,
            probe,
            stop: Mutex::new(Some(stop)),
            served: Mutex::new(Some(served)),
        })
    }
}

/// A `coap_tokio::Client`.
#[derive(Clone, Debug)]
pub struct Client(coap_tokio::Client);

/// A request future of `coap-tokio`, polled once.
#[derive(Debug)]
pub struct Pending {
    future: coap_tokio::ResponseFuture,
    early: Option<Result<coap_tokio::IncomingResponse, coap_tokio::Error>>,
}

impl PendingResponse for Pending {
    fn wait(self) -> Result<Rsp, StackError> {
        let outcome = match self.early {
            Some(outcome) => outcome,
            None => rt().block_on(self.future),
        };
        outcome.map(response).map_err(error)
    }
}

/// A `coap_tokio::Observation`.
#[derive(Debug)]
pub struct Observation(coap_tokio::Observation);

impl TestObservation for Observation {
    fn next(&mut self) -> Option<Result<Notif, StackError>> {
        let item = rt().block_on(self.0.next())?;
        Some(item.map(notification).map_err(error))
    }

    fn next_timeout(&mut self, limit: Duration) -> Option<Result<Notif, StackError>> {
        // The timer belongs to the runtime: create it inside.
        let item = rt().block_on(async { tokio::time::timeout(limit, self.0.next()).await });
        match item {
            Ok(item) => Some(item?.map(notification).map_err(error)),
            Err(_) => Some(Err(StackError::Timeout)),
        }
    }

    fn cancel(&mut self) -> Result<bool, StackError> {
        rt().block_on(self.0.cancel()).map_err(error)
    }
}

impl TestClient for Client {
    type Pending = Pending;
    type Observation = Observation;

    fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    fn send(&self, req: Req) -> Result<Rsp, StackError> {
        let outcome = rt().block_on(builder(&self.0, req).send());
        outcome.map(response).map_err(error)
    }

    fn start(&self, req: Req) -> Pending {
        let mut future = builder(&self.0, req).send();
        let early = rt().block_on(poll_once(&mut future));
        Pending { future, early }
    }

    fn drop_unsent(&self, req: Req) {
        drop(builder(&self.0, req).send());
    }

    fn observe(&self, uri: &str) -> Result<Observation, StackError> {
        let observation = rt().block_on(self.0.observe(uri)).map_err(error)?;
        Ok(Observation(observation))
    }

    fn multicast(&self, req: Req) -> Result<Vec<Result<Rsp, StackError>>, StackError> {
        let items = rt().block_on(async {
            let mut responses = builder(&self.0, req).multicast().await?;
            let mut items = Vec::new();
            while let Some(item) = responses.next().await {
                items.push(item);
            }
            Ok(items)
        });
        Ok(results(items.map_err(error)?, response))
    }

    fn ping(&self, uri: &str) -> Result<Duration, StackError> {
        rt().block_on(self.0.ping(uri)).map_err(error)
    }

    fn pending(&self) -> Result<Vec<Outgoing>, StackError> {
        let listed = rt().block_on(self.0.pending_requests()).map_err(error)?;
        Ok(listed.into_iter().map(outgoing).collect())
    }

    fn cancel(&self, id: RequestId) -> Result<bool, StackError> {
        rt().block_on(self.0.cancel(id)).map_err(error)
    }

    fn stats(&self) -> Result<Stats, StackError> {
        rt().block_on(self.0.stats()).map_err(error)
    }

    fn shutdown(&self) -> Result<(), StackError> {
        rt().block_on(self.0.shutdown()).map_err(error)
    }
}

/// A `coap_tokio::Server` serving the standard application on the runtime.
#[derive(Debug)]
pub struct Server {
    handle: coap_tokio::ServerHandle,
    probe: AppProbe,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    served: Mutex<Option<JoinHandle<Result<(), coap_tokio::Error>>>>,
}

impl TestServer for Server {
    type Client = Client;

    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    fn client(&self) -> Client {
        Client(self.handle.client())
    }

    fn probe(&self) -> &AppProbe {
        &self.probe
    }

    fn notify(&self, path: &str) -> Result<usize, StackError> {
        rt().block_on(self.handle.notifier(path).notify())
            .map_err(error)
    }

    fn notify_with(&self, path: &str, representation: Response) -> Result<usize, StackError> {
        let notifier = self.handle.notifier(path);
        rt().block_on(notifier.notify_with(representation))
            .map_err(error)
    }

    fn observer_count(&self, path: &str) -> Result<usize, StackError> {
        rt().block_on(self.handle.notifier(path).observer_count())
            .map_err(error)
    }

    fn pending_incoming(&self) -> Result<Vec<Incoming>, StackError> {
        let listed = rt()
            .block_on(self.handle.pending_incoming())
            .map_err(error)?;
        Ok(listed.into_iter().map(incoming).collect())
    }

    fn stats(&self) -> Result<Stats, StackError> {
        rt().block_on(self.handle.stats()).map_err(error)
    }

    fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("not poisoned").take() {
            let _ = stop.send(());
        }
    }

    fn shutdown(&self) -> Result<(), StackError> {
        rt().block_on(self.handle.shutdown()).map_err(error)
    }

    fn join(&self) -> Result<(), StackError> {
        let served = self.served.lock().expect("not poisoned").take();
        match served {
            Some(task) => rt()
                .block_on(task)
                .expect("the server task ends without a panic")
                .map_err(error),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
