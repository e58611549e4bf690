//! `coap-blocking` as a [`Stack`]: its calls block already; the server runs `serve` on a
//! thread of its own, the handlers on the crate's worker pool.

use std::net::Ipv4Addr;
use std::sync::{mpsc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use coap_blocking::{
    CoapError, IncomingRequest, ObserveHooks, ResourceAttributes, Response, Router,
};
use coap_proto::Config;

use super::ready;
use crate::stack::{
    app_state, AppEvent, AppProbe, AppState, PendingResponse, Stack, TestClient, TestObservation,
    TestServer,
};

super::glue!(coap_blocking);

/// `coap-blocking`: threads and blocking calls.
#[derive(Debug)]
pub enum Blocking {}

impl Stack for Blocking {
    const NAME: &'static str = "coap-blocking";
    type Client = Client;
    type Server = Server;

    fn client(addr: &str, config: Config) -> Result<Client, StackError> {
        let bound = coap_blocking::Client::builder().config(config).bind(addr);
        bound.map(Client).map_err(error)
    }

    fn serve_with(
        addr: &str,
        config: Config,
        group: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Server, StackError> {
        let server = coap_blocking::Server::builder()
            .config(config)
            .bind(addr)
            .map_err(error)?;
        if let Some((group, interface)) = group {
            server.join_multicast_v4(group, interface).map_err(error)?;
        }
        let (state, probe) = app_state();
        let app = with_proxy(app(state), &server)?;
        let (stop, signal) = mpsc::channel::<()>();
        let handle = server.handle();
        let served = thread::Builder::new()
            .name("coap-blocking server".into())
            .spawn(move || {
                server.serve_with_shutdown(app, move || {
                    let _ = signal.recv();
                })
            })
            .map_err(|e| StackError::Other(e.to_string()))?;
        Ok(Server {
            handle,
            probe,
            stop: Mutex::new(Some(stop)),
            served: Mutex::new(Some(served)),
        })
    }
}

/// The standard application (see [`crate::stack`]) with the crate's synchronous handlers.
fn app(state: AppState) -> Router {
    let AppState {
        events,
        counter,
        gate,
    } = state;
    let (deferred_events, twice_events) = (events.clone(), events.clone());
    let deferred_gate = gate.clone();
    let hooks = ObserveHooks::new()
        .accept(|req: &IncomingRequest| req.query_value("deny").is_none())
        .on_observer_count(move |n| {
            let _ = events.send(AppEvent::Observers(n));
        });
    let ok = |_req: IncomingRequest| Response::content("x");
    let echo = |req: IncomingRequest| super::echo(req.message());
    let mut sensors = Router::new()
        .get("/temp", ok)
        .get("/hum", ok)
        .observable_with(
            "/counter",
            move |_req: IncomingRequest| Response::content(counter.get().to_string()),
            hooks,
        );
    for (path, attributes) in super::sensor_attributes() {
        sensors = sensors.attributes(path, attributes);
    }
    let mut app = Router::new();
    for method in super::ECHO_METHODS {
        app = app.route("/echo", method, echo);
    }
    app.post("/echo-big", |req: IncomingRequest| {
        Response::content(req.payload().clone())
    })
    .post("/opts", |req: IncomingRequest| {
        Response::content(crate::stack::options_summary(req.message()))
    })
    .get("/only-get", ok)
    .get("/peer", |req: IncomingRequest| {
        Response::content(req.peer().to_string())
    })
    .put("/cf", |req: IncomingRequest| {
        super::content_format_check(req.message())
    })
    .get("/bad", |_req: IncomingRequest| {
        Err::<Response, _>(CoapError::bad_request("missing ?id"))
    })
    .get("/boom", |_req: IncomingRequest| {
        Err::<Response, _>(CoapError::internal("database down"))
    })
    .get("/panic/now", |_req: IncomingRequest| -> Response {
        panic!("handler bug ({})", crate::stack::EXPECTED_PANIC)
    })
    .get("/panic/later", |_req: IncomingRequest| -> Response {
        thread::yield_now();
        panic!(
            "handler bug after a wait ({})",
            crate::stack::EXPECTED_PANIC
        )
    })
    .get("/slow", |req: IncomingRequest| {
        thread::sleep(super::millis(req.message(), 100));
        Response::content("done")
    })
    .get("/gate", move |_req: IncomingRequest| {
        gate.pass_blocking();
        Response::content("released")
    })
    .get("/deferred", move |req: IncomingRequest| {
        let (responder, deferred) = req.defer();
        let _ = deferred_events.send(AppEvent::Deferred(responder.id()));
        let gate = deferred_gate.clone();
        thread::spawn(move || {
            gate.pass_blocking();
            let _ = responder.send(Response::content("from another task"));
        });
        deferred
    })
    .get("/dropped", |req: IncomingRequest| {
        let (responder, deferred) = req.defer();
        drop(responder);
        deferred
    })
    .get("/twice", move |req: IncomingRequest| {
        let (responder, _deferred) = req.defer();
        let events = twice_events.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            let again = responder.send(Response::content("second"));
            let _ = events.send(AppEvent::SecondAnswer(again.map_err(error)));
        });
        // The handler answers itself after all: the responder comes too late.
        Response::content("first")
    })
    .get("/hello", |_req: IncomingRequest| Response::content("hello"))
    .get("/secret", ok)
    .attributes("/secret", ResourceAttributes::new().hidden())
    .nest("/sensors", sensors)
    .prefix_get("/files", |req: IncomingRequest| {
        let rest = req.rest().collect::<Vec<_>>().join("/");
        req.with_etag(Response::content(format!("file {rest}")))
    })
    .get("/files/special", |_req: IncomingRequest| {
        Response::content("exact route wins")
    })
    .get("/big", |req: IncomingRequest| super::big(req.message()))
    .put("/big", |req: IncomingRequest| {
        super::upload_check(req.message())
    })
    .get("/n", |req: IncomingRequest| super::number(req.message()))
    .get("/hits", {
        let hits = super::Hits::default();
        move |_req: IncomingRequest| Response::content(hits.next().to_string())
    })
}

/// The standard application's proxy routes: a forward proxy, and `/rev` onto `origin`.
fn with_proxy(app: Router, server: &coap_blocking::Server) -> Result<Router, StackError> {
    let origin = server.local_addr();
    let client = coap_blocking::Client::bind("127.0.0.1:0").map_err(error)?;
    let proxy = coap_blocking::Proxy::new(client).relay_observations(server.handle());
    let reverse = proxy.reverse(&format!("coap://{origin}/")).map_err(error)?;
    Ok(app
        .proxy(move |req: IncomingRequest| proxy.forward(req))
        .prefix_any("/rev", reverse))
}

/// A `coap_blocking::Client`.
#[derive(Clone, Debug)]
pub struct Client(coap_blocking::Client);

impl From<coap_blocking::Client> for Client {
    fn from(client: coap_blocking::Client) -> Client {
        Client(client)
    }
}

/// A started request of `coap-blocking` (or why it did not start).
#[derive(Debug)]
pub struct Pending(Result<coap_blocking::ResponseHandle, coap_blocking::Error>);

impl PendingResponse for Pending {
    fn wait(self) -> Result<Rsp, StackError> {
        let outcome = self.0.and_then(coap_blocking::ResponseHandle::wait);
        outcome.map(response).map_err(error)
    }
}

/// A `coap_blocking::Observation`.
#[derive(Debug)]
pub struct Observation(coap_blocking::Observation);

impl From<coap_blocking::Observation> for Observation {
    fn from(observation: coap_blocking::Observation) -> Observation {
        Observation(observation)
    }
}

impl TestObservation for Observation {
    super::observation_calls!(ready);

    fn next_timeout(&mut self, limit: Duration) -> Option<Result<Notif, StackError>> {
        let item = self.0.next_timeout(limit)?;
        Some(item.map(notification).map_err(error))
    }
}

impl TestClient for Client {
    type Pending = Pending;
    type Observation = Observation;

    super::client_calls!(ready);

    fn start(&self, req: Req) -> Pending {
        Pending(builder(&self.0, req).start())
    }

    fn drop_unsent(&self, req: Req) {
        drop(builder(&self.0, req));
    }

    fn observe_req(&self, req: Req) -> Result<Observation, StackError> {
        builder(&self.0, req)
            .observe()
            .map(Observation::from)
            .map_err(error)
    }

    fn multicast(&self, req: Req) -> Result<Vec<Result<Rsp, StackError>>, StackError> {
        let responses = builder(&self.0, req).multicast().map_err(error)?;
        Ok(results(responses.collect(), response))
    }
}

/// A `coap_blocking::Server` serving the standard application on a thread.
#[derive(Debug)]
pub struct Server {
    handle: coap_blocking::ServerHandle,
    probe: AppProbe,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    served: Mutex<Option<JoinHandle<Result<(), coap_blocking::Error>>>>,
}

impl TestServer for Server {
    type Client = Client;

    super::server_calls!(ready);

    fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("not poisoned").take() {
            let _ = stop.send(());
        }
    }

    fn join(&self) -> Result<(), StackError> {
        match self.served.lock().expect("not poisoned").take() {
            Some(thread) => thread
                .join()
                .expect("the server thread ends without a panic")
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
