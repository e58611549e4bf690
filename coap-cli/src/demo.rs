//! The demo server (`coap serve`), with resources like aiocoap's demo server:
//!
//! | path | methods | what |
//! |---|---|---|
//! | `/.well-known/core` | GET | the resources in link-format (RFC 6690) |
//! | `/time` | GET, observe | the current UTC time; observers are notified every 2 s |
//! | `/other/block` | GET, PUT | a body of about 2.3 KB (block-wise, RFC 7959); PUT replaces it |
//! | `/other/separate` | GET | answers after 3 s, so a separate response is used (RFC 7252 §5.2.2) |
//! | `/whoami` | GET | the address the request came from |
//! | `/echo` | POST, PUT, DELETE, FETCH, PATCH, iPATCH | echoes method and body |

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coap_tokio::{
    Code, ContentFormat, IncomingRequest, ResourceAttributes, Response, Router, Server,
};

use crate::group::Multicast;

/// How often observers of `/time` are notified.
const TIME_PERIOD: Duration = Duration::from_secs(2);

/// How long `/other/separate` takes to answer.
const SEPARATE_DELAY: Duration = Duration::from_secs(3);

/// How long a shutdown waits for handlers and Confirmable responses.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The body of `/other/block` and its Content-Format.
type Stored = Arc<Mutex<(Bytes, Option<ContentFormat>)>>;

/// The initial body of `/other/block`: numbered lines, long enough for several blocks.
fn initial_block_body() -> Bytes {
    let mut body = String::new();
    for i in 0..40 {
        body.push_str(&format!(
            "{i:02}: This is a large resource, sent block-wise (RFC 7959).\n"
        ));
    }
    Bytes::from(body)
}

/// Logs a request at info level (not the renders the engine asks for to notify observers).
fn log_request(req: &IncomingRequest) {
    if req.is_notification_render() {
        tracing::debug!(path = %req.path_string(), "rendering a notification");
    } else {
        tracing::info!(
            "{} {} from {}{}",
            req.method().name().unwrap_or("?"),
            req.path_string(),
            req.peer(),
            if req.is_observe_registration() {
                " (observe)"
            } else {
                ""
            }
        );
    }
}

/// The routes of the demo server.
pub(crate) fn router(block: Stored) -> Router {
    let put_block = Arc::clone(&block);
    Router::new()
        .observable("/time", |req: IncomingRequest| async move {
            log_request(&req);
            Response::content(utc_now()).with_content_format(ContentFormat::TEXT_PLAIN)
        })
        .attributes(
            "/time",
            ResourceAttributes::new().rt("time").ct(0u16).title("The current time"),
        )
        .get("/other/block", move |req: IncomingRequest| {
            let block = Arc::clone(&block);
            async move {
                log_request(&req);
                let (body, format) = block
                    .lock()
                    .map(|g| g.clone())
                    .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
                let mut response = Response::content(body);
                if let Some(cf) = format {
                    response = response.with_content_format(cf);
                }
                req.with_etag(response)
            }
        })
        .put("/other/block", move |req: IncomingRequest| {
            let block = Arc::clone(&put_block);
            async move {
                log_request(&req);
                let new = (req.payload().clone(), req.content_format());
                match block.lock() {
                    Ok(mut guard) => *guard = new,
                    Err(poisoned) => *poisoned.into_inner() = new,
                }
                Response::new(Code::CHANGED)
            }
        })
        .attributes(
            "/other/block",
            ResourceAttributes::new().title("A large resource, replaceable by PUT"),
        )
        .get("/other/separate", |req: IncomingRequest| async move {
            log_request(&req);
            tokio::time::sleep(SEPARATE_DELAY).await;
            Response::content("Three rings for the elven kings under the sky, seven rings for dwarven lords in their halls of stone, nine rings for mortal men doomed to die, one ring for the dark lord on his dark throne.")
        })
        .attributes(
            "/other/separate",
            ResourceAttributes::new().title("A slow resource: a separate response after 3 s"),
        )
        .get("/whoami", |req: IncomingRequest| async move {
            log_request(&req);
            Response::content(format!("Used protocol: coap.\nRequest came from {}.\n", req.peer()))
        })
        .attributes(
            "/whoami",
            ResourceAttributes::new().title("The address the request came from"),
        )
        .any("/echo", |req: IncomingRequest| async move {
            log_request(&req);
            let code = match req.method() {
                Code::DELETE => Code::DELETED,
                Code::FETCH => Code::CONTENT,
                Code::GET => return Response::new(Code::METHOD_NOT_ALLOWED),
                _ => Code::CHANGED,
            };
            let mut body = Vec::from(req.method().name().unwrap_or("?").as_bytes());
            if !req.payload().is_empty() {
                body.push(b' ');
                body.extend_from_slice(req.payload());
            }
            let mut response = Response::new(code).with_payload(body);
            if let Some(cf) = req.content_format() {
                response = response.with_content_format(cf);
            }
            response
        })
        .attributes(
            "/echo",
            ResourceAttributes::new().title("Echoes method and body of POST, PUT, DELETE, FETCH, PATCH, iPATCH"),
        )
}

/// Serves the demo resources on exactly `bind` until `shutdown` resolves.
pub(crate) async fn run(
    bind: SocketAddr,
    multicast: &Multicast,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let server = Server::builder()
        .config(multicast.configure(coap_tokio::Config::default()))
        .shutdown_grace(SHUTDOWN_GRACE)
        .bind(bind)
        .await
        .map_err(|e| format!("cannot bind {bind}: {e}"))?;
    multicast.join_all(&server)?;
    let handle = server.handle();
    tracing::info!("listening on {}", server.local_addr());
    let block: Stored = Arc::new(Mutex::new((initial_block_body(), None)));
    let app = router(block);

    let notifier = handle.notifier("/time");
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(TIME_PERIOD);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            if notifier.notify().await.is_err() {
                break;
            }
        }
    });
    let result = server.serve_with_shutdown(app, shutdown).await;
    ticker.abort();
    result.map_err(|e| e.into())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Seconds since the Unix epoch as a UTC date and time.
fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (the well-known era-based
/// conversion: 400-year eras of 146097 days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31 23:59:59");
    }

    #[test]
    fn block_body_needs_several_blocks() {
        assert!(initial_block_body().len() > 2048);
    }

    #[test]
    fn well_known_core_lists_the_demo() {
        let app = router(Arc::new(Mutex::new((Bytes::new(), None))));
        let doc = app.well_known_core([]).unwrap();
        for path in [
            "</time>",
            "</other/block>",
            "</other/separate>",
            "</whoami>",
            "</echo>",
        ] {
            assert!(doc.contains(path), "{path} missing from {doc}");
        }
        assert!(doc.contains("obs"));
    }
}
