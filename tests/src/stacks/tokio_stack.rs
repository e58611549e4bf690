//! `coap-tokio` as a [`Stack`]: every call is a `block_on` on one multi-threaded runtime per
//! process, whose workers run the drivers, the servers and their handlers in between.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use coap_proto::Config;
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

/// The runtime, created on first use.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Runs `future` to completion on the runtime.
fn wait<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

fn spawn_detached(task: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(task);
}

impl Stack for Tokio {
    const NAME: &'static str = "coap-tokio";
    type Client = Client;
    type Server = Server;

    fn client(addr: &str, config: Config) -> Result<Client, StackError> {
        let bound = wait(coap_tokio::Client::builder().config(config).bind(addr));
        bound.map(Client).map_err(error)
    }

    fn serve_with(
        addr: &str,
        config: Config,
        group: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Server, StackError> {
        let server = wait(coap_tokio::Server::builder().config(config).bind(addr));
        let server = server.map_err(error)?;
        if let Some((group, interface)) = group {
            server.join_multicast_v4(group, interface).map_err(error)?;
        }
        let (state, probe) = app_state();
        let app = super::async_app!(
            coap_tokio,
            tokio::time::sleep,
            tokio::task::yield_now,
            spawn_detached,
            state
        );
        let proxy =
            coap_tokio::Proxy::new(wait(coap_tokio::Client::bind("127.0.0.1:0")).map_err(error)?)
                .relay_observations(server.handle());
        let reverse = proxy
            .reverse(&format!("coap://{}/", server.local_addr()))
            .map_err(error)?;
        let app = app
            .proxy(move |req: coap_tokio::IncomingRequest| {
                let proxy = proxy.clone();
                async move { proxy.forward(req).await }
            })
            .prefix_any("/rev", reverse);
        let (stop, signal) = oneshot::channel::<()>();
        let handle = server.handle();
        let served = runtime().spawn(server.serve_with_shutdown(app, async {
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

impl From<coap_tokio::Client> for Client {
    fn from(client: coap_tokio::Client) -> Client {
        Client(client)
    }
}

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
            None => wait(self.future),
        };
        outcome.map(response).map_err(error)
    }
}

/// A `coap_tokio::Observation`.
#[derive(Debug)]
pub struct Observation(coap_tokio::Observation);

impl From<coap_tokio::Observation> for Observation {
    fn from(observation: coap_tokio::Observation) -> Observation {
        Observation(observation)
    }
}

impl TestObservation for Observation {
    super::observation_calls!(wait);

    fn next_timeout(&mut self, limit: Duration) -> Option<Result<Notif, StackError>> {
        // The timer belongs to the runtime: create it inside.
        match wait(async { tokio::time::timeout(limit, self.0.next()).await }) {
            Ok(item) => Some(item?.map(notification).map_err(error)),
            Err(_) => Some(Err(StackError::Timeout)),
        }
    }
}

impl TestClient for Client {
    type Pending = Pending;
    type Observation = Observation;

    super::client_calls!(wait);

    fn start(&self, req: Req) -> Pending {
        let mut future = builder(&self.0, req).send();
        let early = wait(poll_once(&mut future));
        Pending { future, early }
    }

    super::async_client_calls!(wait);
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

    super::server_calls!(wait);

    fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("not poisoned").take() {
            let _ = stop.send(());
        }
    }

    fn join(&self) -> Result<(), StackError> {
        match self.served.lock().expect("not poisoned").take() {
            Some(task) => wait(task)
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
