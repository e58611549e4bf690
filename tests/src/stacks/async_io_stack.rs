//! `coap-async-std` as a [`Stack`], under async-std's executor ([`AsyncStd`]) or smol's
//! ([`Smol`]): the server future and the tasks of the handlers are spawned on the executor,
//! the client's driver runs on its own thread (as the crate does it), and every blocking
//! call is the executor's `block_on`.

use std::future::Future;
use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use async_io::Timer;
use coap_proto::Config;
use futures_lite::future::{self, poll_once};

use crate::stack::{
    app_state, AppProbe, PendingResponse, Stack, TestClient, TestObservation, TestServer,
};

super::glue!(coap_async_std);

/// An executor the crate's futures run on.
pub trait Executor: Send + Sync + 'static {
    /// The executor, for messages.
    const NAME: &'static str;

    /// Runs `future` to completion on the calling thread.
    fn block_on<T>(future: impl Future<Output = T>) -> T;

    /// Runs `task` on the executor, detached.
    fn spawn(task: impl Future<Output = ()> + Send + 'static);
}

/// async-std's executor.
#[derive(Debug)]
pub enum AsyncStdExecutor {}

impl Executor for AsyncStdExecutor {
    const NAME: &'static str = "coap-async-std on async-std";

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        async_std::task::block_on(future)
    }

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        async_std::task::spawn(task);
    }
}

/// smol's executor.
#[derive(Debug)]
pub enum SmolExecutor {}

impl Executor for SmolExecutor {
    const NAME: &'static str = "coap-async-std on smol";

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        smol::block_on(future)
    }

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }
}

/// `coap-async-std` with its futures run by the executor `E`.
#[derive(Debug)]
pub struct AsyncIoStack<E>(PhantomData<E>);

/// `coap-async-std` under async-std.
pub type AsyncStd = AsyncIoStack<AsyncStdExecutor>;

/// `coap-async-std` under smol.
pub type Smol = AsyncIoStack<SmolExecutor>;

async fn sleep(d: Duration) {
    Timer::after(d).await;
}

impl<E: Executor> Stack for AsyncIoStack<E> {
    const NAME: &'static str = E::NAME;
    type Client = Client<E>;
    type Server = Server<E>;

    fn client(addr: &str, config: Config) -> Result<Client<E>, StackError> {
        let bound = E::block_on(coap_async_std::Client::builder().config(config).bind(addr));
        bound.map(Client::from).map_err(error)
    }

    fn serve_with(
        addr: &str,
        config: Config,
        group: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Server<E>, StackError> {
        let server = E::block_on(coap_async_std::Server::builder().config(config).bind(addr))
            .map_err(error)?;
        if let Some((group, interface)) = group {
            server.join_multicast_v4(group, interface).map_err(error)?;
        }
        let (state, probe) = app_state();
        let app = super::async_app!(coap_async_std, sleep, future::yield_now, E::spawn, state);
        let proxy = coap_async_std::Proxy::new(
            E::block_on(coap_async_std::Client::bind("127.0.0.1:0")).map_err(error)?,
        )
        .relay_observations(server.handle());
        let reverse = proxy
            .reverse(&format!("coap://{}/", server.local_addr()))
            .map_err(error)?;
        let app = app
            .proxy(move |req: coap_async_std::IncomingRequest| {
                let proxy = proxy.clone();
                async move { proxy.forward(req).await }
            })
            .prefix_any("/rev", reverse);
        let (stop, signal) = async_channel::bounded::<()>(1);
        let (done, served) = async_channel::bounded(1);
        let handle = server.handle();
        E::spawn(async move {
            let result = server
                .serve_with_shutdown(app, async move {
                    let _ = signal.recv().await;
                })
                .await;
            let _ = done.send(result).await;
        });
        Ok(Server {
            handle,
            probe,
            stop,
            served: Mutex::new(Some(served)),
            executor: PhantomData,
        })
    }
}

/// A `coap_async_std::Client`.
#[derive(Debug)]
pub struct Client<E>(coap_async_std::Client, PhantomData<E>);

impl<E> Clone for Client<E> {
    fn clone(&self) -> Self {
        Client(self.0.clone(), PhantomData)
    }
}

impl<E> From<coap_async_std::Client> for Client<E> {
    fn from(client: coap_async_std::Client) -> Client<E> {
        Client(client, PhantomData)
    }
}

/// A request future of `coap-async-std`, polled once.
#[derive(Debug)]
pub struct Pending<E> {
    future: coap_async_std::ResponseFuture,
    early: Option<Result<coap_async_std::IncomingResponse, coap_async_std::Error>>,
    executor: PhantomData<E>,
}

impl<E: Executor> PendingResponse for Pending<E> {
    fn wait(self) -> Result<Rsp, StackError> {
        let outcome = match self.early {
            Some(outcome) => outcome,
            None => E::block_on(self.future),
        };
        outcome.map(response).map_err(error)
    }
}

/// A `coap_async_std::Observation`.
#[derive(Debug)]
pub struct Observation<E>(coap_async_std::Observation, PhantomData<E>);

impl<E> From<coap_async_std::Observation> for Observation<E> {
    fn from(observation: coap_async_std::Observation) -> Observation<E> {
        Observation(observation, PhantomData)
    }
}

impl<E: Executor> TestObservation for Observation<E> {
    super::observation_calls!(E::block_on);

    fn next_timeout(&mut self, limit: Duration) -> Option<Result<Notif, StackError>> {
        let item = E::block_on(future::or(async { Some(self.0.next().await) }, async {
            sleep(limit).await;
            None
        }));
        match item {
            Some(item) => Some(item?.map(notification).map_err(error)),
            None => Some(Err(StackError::Timeout)),
        }
    }
}

impl<E: Executor> TestClient for Client<E> {
    type Pending = Pending<E>;
    type Observation = Observation<E>;

    super::client_calls!(E::block_on);

    fn start(&self, req: Req) -> Pending<E> {
        let mut future = builder(&self.0, req).send();
        let early = E::block_on(poll_once(&mut future));
        Pending {
            future,
            early,
            executor: PhantomData,
        }
    }

    super::async_client_calls!(E::block_on);
}

/// A `coap_async_std::Server` serving the standard application on the executor `E`.
#[derive(Debug)]
pub struct Server<E> {
    handle: coap_async_std::ServerHandle,
    probe: AppProbe,
    stop: async_channel::Sender<()>,
    served: Mutex<Option<async_channel::Receiver<Result<(), coap_async_std::Error>>>>,
    executor: PhantomData<E>,
}

impl<E: Executor> TestServer for Server<E> {
    type Client = Client<E>;

    super::server_calls!(E::block_on);

    fn stop(&self) {
        let _ = self.stop.try_send(());
    }

    fn join(&self) -> Result<(), StackError> {
        match self.served.lock().expect("not poisoned").take() {
            Some(served) => E::block_on(served.recv())
                .expect("the server task ends without a panic")
                .map_err(error),
            None => Ok(()),
        }
    }
}

impl<E> Drop for Server<E> {
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
    }
}
