//! The file server (`coap fileserver DIR [--write]`), after aiocoap's file server.
//!
//! * GET of a file: its content (block-wise when large, RFC 7959), with a Content-Format
//!   guessed from the file name and an ETag computed from the content; a request that lists
//!   the current ETag is answered 2.03 Valid without payload (RFC 7252 §5.10.6).
//! * GET of a directory: a link-format listing (RFC 6690) of its entries, directories with a
//!   trailing `/`.
//! * Observation (RFC 7641) of the files and directories that exist when the server starts:
//!   their modification time and size are polled every second and observers notified on a
//!   change (a file that disappears ends its observations with 4.04).
//! * With `--write`: PUT creates or replaces a file (2.01 Created / 2.04 Changed; missing
//!   parent directories are created; If-Match and If-None-Match are honoured, RFC 7252
//!   §5.10.8), DELETE removes a file (2.02 Deleted). Without it both are 4.05.
//!
//! Nothing outside DIR is served: `.` and `..` segments are refused with 4.03, hidden names
//! (starting with `.`) are 4.04, and a path whose real location (after symbolic links)
//! leaves DIR is 4.03.

use std::error::Error;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use coap_proto::link_format::{self, Link};
use coap_proto::msg::{ContentFormat, Options};
use coap_proto::resource::payload_etag;
use coap_tokio::{Code, IncomingRequest, Notifier, Response, Router, Server};

/// How often the files under observation are checked for changes.
const POLL_PERIOD: Duration = Duration::from_secs(1);

/// At most this many files and directories are made observable at start.
const MAX_OBSERVABLE: usize = 1000;

/// Directories deeper than this are not walked for observable paths.
const MAX_DEPTH: usize = 8;

/// Files larger than this are not served (the engine holds a representation in memory).
const MAX_FILE_SIZE: u64 = 8 << 20;

/// How long a shutdown waits for handlers and Confirmable responses.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What every request handler needs.
#[derive(Debug)]
struct Served {
    /// The served directory, canonical.
    root: PathBuf,
    /// Whether PUT and DELETE are allowed.
    write: bool,
}

/// Serves `dir` on exactly `bind` until `shutdown` resolves.
pub(crate) async fn run(
    dir: PathBuf,
    write: bool,
    bind: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let root =
        std::fs::canonicalize(&dir).map_err(|e| format!("cannot serve {}: {e}", dir.display()))?;
    if !root.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    let served = Arc::new(Served { root, write });
    let observable = observable_paths(&served.root);
    let app = router(&served, &observable);
    let server = Server::builder()
        .shutdown_grace(SHUTDOWN_GRACE)
        .bind(bind)
        .await
        .map_err(|e| format!("cannot bind {bind}: {e}"))?;
    tracing::info!(
        "serving {} ({}, {} paths observable)",
        served.root.display(),
        if write { "read-write" } else { "read-only" },
        observable.len()
    );
    tracing::info!("listening on {}", server.local_addr());
    let handle = server.handle();
    let watched: Vec<Watched> = observable
        .iter()
        .map(|(uri_path, fs_path)| Watched {
            notifier: handle.notifier(uri_path),
            fs_path: fs_path.clone(),
            last: stamp(fs_path),
        })
        .collect();
    let poller = tokio::spawn(poll_changes(watched));
    let result = server.serve_with_shutdown(app, shutdown).await;
    poller.abort();
    result.map_err(|e| e.into())
}

/// A file or directory under observation.
struct Watched {
    notifier: Notifier,
    fs_path: PathBuf,
    last: Option<(SystemTime, u64)>,
}

/// Modification time and size, or `None` if the path is gone.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Notifies observers of every watched path whose modification time or size changed.
async fn poll_changes(mut watched: Vec<Watched>) {
    let mut interval = tokio::time::interval(POLL_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        for w in &mut watched {
            let now = stamp(&w.fs_path);
            if now != w.last {
                w.last = now;
                tracing::debug!(path = %w.notifier.path(), "changed, notifying observers");
                if w.notifier.notify().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The files and directories (URI path, file system path) that exist at start, breadth
/// first, hidden names skipped, at most [`MAX_OBSERVABLE`].
fn observable_paths(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = vec![(String::from("/"), root.to_path_buf())];
    let mut queue = vec![(String::new(), root.to_path_buf(), 0usize)];
    while let Some((prefix, dir, depth)) = queue.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<(String, PathBuf, bool)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let kind = e.file_type().ok()?;
                (!name.starts_with('.') && !kind.is_symlink())
                    .then(|| (name, e.path(), kind.is_dir()))
            })
            .collect();
        names.sort();
        for (name, path, is_dir) in names {
            if found.len() >= MAX_OBSERVABLE {
                return found;
            }
            let uri_path = format!("{prefix}/{name}");
            if is_dir && depth < MAX_DEPTH {
                queue.insert(0, (uri_path.clone(), path.clone(), depth + 1));
            }
            found.push((uri_path, path));
        }
    }
    found
}

/// The routes: an observable route per path that exists at start, and a catch-all for the
/// rest.
fn router(served: &Arc<Served>, observable: &[(String, PathBuf)]) -> Router {
    let mut app = Router::new();
    for (uri_path, _) in observable {
        let get = Arc::clone(served);
        let other = Arc::clone(served);
        app = app
            .observable(uri_path, move |req: IncomingRequest| {
                handle(Arc::clone(&get), req)
            })
            .any(uri_path, move |req: IncomingRequest| {
                handle(Arc::clone(&other), req)
            });
    }
    let rest = Arc::clone(served);
    app.prefix_any("/", move |req: IncomingRequest| {
        handle(Arc::clone(&rest), req)
    })
}

/// Answers one request: the file system work runs on the blocking pool.
async fn handle(served: Arc<Served>, req: IncomingRequest) -> Response {
    if !req.is_notification_render() {
        tracing::info!(
            "{} {} from {}",
            req.method().name().unwrap_or("?"),
            req.path_string(),
            req.peer()
        );
    }
    let method = req.method();
    let segments: Vec<String> = req.path().map(str::to_owned).collect();
    let payload = req.payload().clone();
    let options = req.options().clone();
    let work = tokio::task::spawn_blocking(move || {
        serve_path(&served, method, &segments, payload, &options)
    });
    let response = match work.await {
        Ok(r) => r,
        Err(_) => Response::new(Code::INTERNAL_SERVER_ERROR),
    };
    req.with_etag(response)
}

/// A response with a diagnostic payload (RFC 7252 §5.5.2).
fn error(code: Code, diagnostic: &str) -> Response {
    Response::new(code).with_payload(diagnostic.to_owned())
}

/// Where a request path leads.
enum Target {
    /// A path inside the root (it may not exist yet); `dir_hint` when the URI ended in `/`.
    Inside { path: PathBuf, dir_hint: bool },
    /// Refused.
    Refused(Box<Response>),
}

/// Maps Uri-Path segments to a path inside `root`, refusing anything that could leave it.
fn resolve(root: &Path, segments: &[String]) -> Target {
    let mut path = root.to_path_buf();
    let mut dir_hint = false;
    let count = segments.len();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            // A trailing empty segment is the `/` of a directory URI; others are refused.
            if i + 1 == count {
                dir_hint = true;
                continue;
            }
            return Target::Refused(Box::new(error(Code::FORBIDDEN, "empty path segment")));
        }
        if segment == "." || segment == ".." {
            return Target::Refused(Box::new(error(
                Code::FORBIDDEN,
                "dot segments are not allowed",
            )));
        }
        if segment.contains(['/', '\\', '\0']) {
            return Target::Refused(Box::new(error(
                Code::FORBIDDEN,
                "bad character in a path segment",
            )));
        }
        if segment.starts_with('.') {
            return Target::Refused(Box::new(error(Code::NOT_FOUND, "hidden")));
        }
        path.push(segment);
    }
    // Follow symbolic links of the deepest existing ancestor: the real place must be inside.
    let mut existing = path.as_path();
    loop {
        if existing.symlink_metadata().is_ok() {
            break;
        }
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    match std::fs::canonicalize(existing) {
        Ok(real) if real.starts_with(root) => Target::Inside { path, dir_hint },
        Ok(_) => Target::Refused(Box::new(error(
            Code::FORBIDDEN,
            "outside the served directory",
        ))),
        // A dangling link or a path we may not see.
        Err(_) => Target::Refused(Box::new(error(Code::NOT_FOUND, "not found"))),
    }
}

/// The file system side of a request.
fn serve_path(
    served: &Served,
    method: Code,
    segments: &[String],
    payload: Bytes,
    options: &Options,
) -> Response {
    let (path, dir_hint) = match resolve(&served.root, segments) {
        Target::Inside { path, dir_hint } => (path, dir_hint),
        Target::Refused(response) => return *response,
    };
    match method {
        Code::GET => get(&served.root, &path),
        Code::PUT | Code::DELETE if !served.write => error(
            Code::METHOD_NOT_ALLOWED,
            "read-only (start the server with --write)",
        ),
        Code::PUT if dir_hint => error(Code::METHOD_NOT_ALLOWED, "cannot PUT a directory"),
        Code::PUT => put(&path, payload, options),
        Code::DELETE => delete(&path),
        _ => Response::new(Code::METHOD_NOT_ALLOWED),
    }
}

fn get(root: &Path, path: &Path) -> Response {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Response::new(Code::NOT_FOUND),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => return Response::new(Code::FORBIDDEN),
        Err(_) => return Response::new(Code::INTERNAL_SERVER_ERROR),
    };
    if meta.is_dir() {
        return listing(root, path);
    }
    if meta.len() > MAX_FILE_SIZE {
        return error(Code::INTERNAL_SERVER_ERROR, "file too large to serve");
    }
    match std::fs::read(path) {
        Ok(content) => {
            let format = guess_format(path, &content);
            Response::content(content).with_content_format(format)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Response::new(Code::NOT_FOUND),
        Err(_) => Response::new(Code::FORBIDDEN),
    }
}

/// A directory as link-format: one link per visible entry, directories ending in `/`, with
/// the Content-Format of files and their size (`sz`).
fn listing(root: &Path, dir: &Path) -> Response {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Response::new(Code::FORBIDDEN);
    };
    let base = uri_path_of(root, dir);
    let mut items: Vec<(String, Option<std::fs::Metadata>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (!name.starts_with('.')).then(|| (name, std::fs::metadata(e.path()).ok()))
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut links = Vec::with_capacity(items.len());
    for (name, meta) in items {
        let mut target = format!("{base}{}", encode_segment(&name));
        let mut link;
        if meta.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            target.push('/');
            link = Link::new(target);
        } else {
            link = Link::new(target);
            if let Some(m) = &meta {
                link = link.with("sz", m.len().to_string());
            }
        }
        links.push(link);
    }
    let mut doc = String::new();
    if link_format::write(&links, &mut doc).is_err() {
        return Response::new(Code::INTERNAL_SERVER_ERROR);
    }
    Response::content(doc).with_content_format(ContentFormat::LINK_FORMAT)
}

/// The URI path of a directory inside the root, with a trailing `/`.
fn uri_path_of(root: &Path, dir: &Path) -> String {
    let mut out = String::from("/");
    if let Ok(rel) = dir.strip_prefix(root) {
        for part in rel.iter() {
            out.push_str(&encode_segment(&part.to_string_lossy()));
            out.push('/');
        }
    }
    out
}

fn encode_segment(segment: &str) -> String {
    let mut out = String::new();
    coap_proto::uri::percent_encode_segment(segment, &mut out);
    out
}

/// The Content-Format of a file, from its extension; text/plain for other UTF-8 content,
/// application/octet-stream for the rest.
fn guess_format(path: &Path, content: &[u8]) -> ContentFormat {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => ContentFormat::JSON,
        Some("cbor") => ContentFormat::CBOR,
        Some("xml") => ContentFormat::XML,
        Some("wlnk" | "link") => ContentFormat::LINK_FORMAT,
        Some("gif") => ContentFormat::IMAGE_GIF,
        Some("jpg" | "jpeg") => ContentFormat::IMAGE_JPEG,
        Some("png") => ContentFormat::IMAGE_PNG,
        Some("txt" | "md" | "csv" | "log") => ContentFormat::TEXT_PLAIN,
        _ if std::str::from_utf8(content).is_ok() => ContentFormat::TEXT_PLAIN,
        _ => ContentFormat::OCTET_STREAM,
    }
}

fn put(path: &Path, payload: Bytes, options: &Options) -> Response {
    let current = std::fs::metadata(path);
    if current.as_ref().is_ok_and(std::fs::Metadata::is_dir) {
        return error(Code::METHOD_NOT_ALLOWED, "cannot PUT a directory");
    }
    let exists = current.is_ok();
    // RFC 7252 §5.10.8.2: If-None-Match applies only if there is no current representation.
    if options.if_none_match() && exists {
        return Response::new(Code::PRECONDITION_FAILED);
    }
    // §5.10.8.1: If-Match with an empty value asks for existence, otherwise for a current ETag.
    let wanted: Vec<&[u8]> = options.if_match().collect();
    if !wanted.is_empty() {
        let etag = exists
            .then(|| std::fs::read(path).ok())
            .flatten()
            .map(|content| {
                let format = guess_format(path, &content);
                let mut o = Options::new();
                o.set_content_format(format);
                payload_etag(&o, &content)
            });
        let ok = wanted.iter().any(|w| match &etag {
            Some(tag) => w.is_empty() || *w == tag.as_slice(),
            None => false,
        });
        if !ok {
            return Response::new(Code::PRECONDITION_FAILED);
        }
    }
    if let Some(parent) = path.parent() {
        if let Err(e) = std::fs::create_dir_all(parent) {
            return error(
                Code::INTERNAL_SERVER_ERROR,
                &format!("cannot create directory: {e}"),
            );
        }
    }
    // Write beside the file, then rename: readers never see half a file.
    let Some(name) = path.file_name() else {
        return error(Code::METHOD_NOT_ALLOWED, "cannot PUT the root");
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".coap-upload");
    let temp = path.with_file_name(temp_name);
    let written = std::fs::write(&temp, &payload).and_then(|()| std::fs::rename(&temp, path));
    match written {
        Ok(()) if exists => Response::new(Code::CHANGED),
        Ok(()) => Response::new(Code::CREATED),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            error(Code::INTERNAL_SERVER_ERROR, &format!("cannot write: {e}"))
        }
    }
}

fn delete(path: &Path) -> Response {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => error(Code::METHOD_NOT_ALLOWED, "cannot DELETE a directory"),
        Ok(_) => match std::fs::remove_file(path) {
            Ok(()) => Response::new(Code::DELETED),
            Err(e) => error(Code::INTERNAL_SERVER_ERROR, &format!("cannot delete: {e}")),
        },
        Err(_) => Response::new(Code::NOT_FOUND),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes a test directory when dropped.
    struct Cleanup(PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_root(name: &str) -> (Cleanup, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "coap-fileserver-unit-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("hello.txt"), "hello").unwrap();
        std::fs::write(dir.join("sub").join("data.json"), "{\"a\":1}").unwrap();
        std::fs::write(dir.join(".secret"), "no").unwrap();
        let root = std::fs::canonicalize(dir).unwrap();
        (Cleanup(root.clone()), root)
    }

    fn segs(path: &str) -> Vec<String> {
        path.split('/').skip(1).map(str::to_owned).collect()
    }

    fn req(served: &Served, method: Code, path: &str, payload: &str) -> Response {
        serve_path(
            served,
            method,
            &segs(path),
            Bytes::from(payload.to_owned()),
            &Options::new(),
        )
    }

    #[test]
    fn files_and_listings() {
        let (_cleanup, root) = temp_root("get");
        let served = Served { root, write: false };
        let r = req(&served, Code::GET, "/hello.txt", "");
        assert_eq!(r.code, Code::CONTENT);
        assert_eq!(&r.payload[..], b"hello");
        assert_eq!(r.options.content_format(), Some(ContentFormat::TEXT_PLAIN));
        let r = req(&served, Code::GET, "/sub/data.json", "");
        assert_eq!(r.options.content_format(), Some(ContentFormat::JSON));
        let r = req(&served, Code::GET, "/", "");
        assert_eq!(r.options.content_format(), Some(ContentFormat::LINK_FORMAT));
        let doc = String::from_utf8(r.payload.to_vec()).unwrap();
        assert!(doc.contains("</hello.txt>;sz=5"), "{doc}");
        assert!(doc.contains("</sub/>"), "{doc}");
        assert!(!doc.contains("secret"), "{doc}");
        let r = req(&served, Code::GET, "/sub/", "");
        let doc = String::from_utf8(r.payload.to_vec()).unwrap();
        assert!(doc.contains("</sub/data.json>"), "{doc}");
        assert_eq!(req(&served, Code::GET, "/nope", "").code, Code::NOT_FOUND);
    }

    #[test]
    fn traversal_is_refused() {
        let (_cleanup, root) = temp_root("traversal");
        let served = Served { root, write: true };
        for path in ["/..", "/sub/../..", "/sub/../hello.txt", "/.", "/a//b"] {
            assert_eq!(
                req(&served, Code::GET, path, "").code,
                Code::FORBIDDEN,
                "{path}"
            );
            assert_eq!(
                req(&served, Code::PUT, path, "x").code,
                Code::FORBIDDEN,
                "{path}"
            );
        }
        assert_eq!(
            req(&served, Code::GET, "/.secret", "").code,
            Code::NOT_FOUND
        );
        assert_eq!(
            req(&served, Code::DELETE, "/.secret", "").code,
            Code::NOT_FOUND
        );
        assert!(served.root.join(".secret").exists());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", served.root.join("escape")).unwrap();
            assert_eq!(
                req(&served, Code::GET, "/escape/hostname", "").code,
                Code::FORBIDDEN
            );
            assert_eq!(
                req(&served, Code::PUT, "/escape/new-file", "x").code,
                Code::FORBIDDEN
            );
        }
    }

    #[test]
    fn writing_needs_write() {
        let (_cleanup, root) = temp_root("readonly");
        let served = Served { root, write: false };
        assert_eq!(
            req(&served, Code::PUT, "/new.txt", "x").code,
            Code::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            req(&served, Code::DELETE, "/hello.txt", "").code,
            Code::METHOD_NOT_ALLOWED
        );
        assert!(served.root.join("hello.txt").exists());
        assert!(!served.root.join("new.txt").exists());
    }

    #[test]
    fn put_and_delete_with_write() {
        let (_cleanup, root) = temp_root("write");
        let served = Served { root, write: true };
        assert_eq!(
            req(&served, Code::PUT, "/new/deep/file.txt", "one").code,
            Code::CREATED
        );
        assert_eq!(
            req(&served, Code::PUT, "/new/deep/file.txt", "two").code,
            Code::CHANGED
        );
        let r = req(&served, Code::GET, "/new/deep/file.txt", "");
        assert_eq!(&r.payload[..], b"two");
        assert_eq!(
            req(&served, Code::PUT, "/sub", "x").code,
            Code::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            req(&served, Code::DELETE, "/sub", "").code,
            Code::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            req(&served, Code::DELETE, "/new/deep/file.txt", "").code,
            Code::DELETED
        );
        assert_eq!(
            req(&served, Code::DELETE, "/new/deep/file.txt", "").code,
            Code::NOT_FOUND
        );

        // If-None-Match: only when absent. If-Match: only with the current ETag.
        let mut none_match = Options::new();
        none_match.set_if_none_match(true);
        let put = |opts: &Options, body: &str| {
            serve_path(
                &served,
                Code::PUT,
                &segs("/hello.txt"),
                Bytes::from(body.to_owned()),
                opts,
            )
            .code
        };
        assert_eq!(put(&none_match, "x"), Code::PRECONDITION_FAILED);
        let current = req(&served, Code::GET, "/hello.txt", "");
        let mut with_etag = Options::new();
        let mut probe = current.clone();
        coap_proto::resource::hashing_etag(&Options::new(), &mut probe);
        with_etag.push_if_match(probe.options.etag().unwrap());
        let mut stale = Options::new();
        stale.push_if_match(b"stale");
        assert_eq!(put(&stale, "x"), Code::PRECONDITION_FAILED);
        assert_eq!(put(&with_etag, "new"), Code::CHANGED);
        assert_eq!(
            &req(&served, Code::GET, "/hello.txt", "").payload[..],
            b"new"
        );
    }

    #[test]
    fn observable_paths_skip_hidden_and_are_bounded() {
        let (_cleanup, root) = temp_root("walk");
        let paths: Vec<String> = observable_paths(&root).into_iter().map(|p| p.0).collect();
        assert_eq!(paths, ["/", "/hello.txt", "/sub", "/sub/data.json"]);
    }
}
