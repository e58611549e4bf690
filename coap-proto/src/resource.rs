//! Routing requests to handlers and resource discovery (`/.well-known/core`, RFC 6690).
//!
//! [`Router`] maps a path and a method to a handler of any type `H`; each runtime crate wraps a
//! `Router<TheirBoxedHandler>` so the routing rules live in one place:
//!
//! - [`Router::add`] registers a handler for one method on an exact path, [`Router::add_any`] for
//!   every method on it; [`Router::add_prefix`] and [`Router::add_prefix_any`] register
//!   catch-alls that also serve every path below the prefix.
//! - [`Router::resolve`] picks the handler for a request, or says why there is none
//!   ([`Resolution`]): 4.04 Not Found, 4.05 Method Not Allowed, or "serve the discovery
//!   document".
//! - [`Router::well_known_core`] writes the link-format document of every listed route, with the
//!   [`ResourceAttributes`] given to [`Router::set_attributes`], filtered by the request's
//!   Uri-Query as RFC 6690 §4.1 describes.
//!
//! Handlers report failures as [`CoapError`]; [`hashing_etag`] adds an ETag derived from the
//! payload and answers 2.03 Valid when the client already holds that representation.
//!
//! # Routing rules
//!
//! The path alone picks the route, then the route picks the handler for the method:
//!
//! 1. An exact route for the whole path wins.
//! 2. Otherwise a request for [`WELL_KNOWN_CORE`] is the discovery resource
//!    ([`Resolution::WellKnownCore`] for GET, 4.05 for any other method); registering an exact
//!    route there replaces the built-in document. Prefix routes never capture it.
//! 3. Otherwise the longest prefix route that covers the path wins.
//! 4. Otherwise the path is not found.
//!
//! Within the chosen route a handler registered for the method with `add` or `add_prefix` wins
//! over one registered for every method; if there is neither, the answer is 4.05, even if a
//! shorter prefix route would accept the method. Registered paths are split at `/` and empty
//! segments are dropped (`"/a//b/"` is `a`, `b`); request paths are matched segment by segment
//! as given, so a request with an empty segment is only served by a prefix route.
//!
//! # Cost
//!
//! Routes are kept in a tree with one node per path segment; each node finds its children by
//! segment in a hash map. [`Router::resolve`] walks the request's segments once, does one hash
//! lookup per segment and never allocates: a prefix route reports the segments below it as a
//! range of indices into the request path ([`Resolution::Found::rest`]) instead of copying them.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use bytes::Bytes;
use hashbrown::HashMap;

use crate::link_format::{self, Filter, Link, LinkFormatError};
use crate::msg::{Code, ContentFormat, OptionNumber, Options};
use crate::request::Response;

/// A resource path in the one form routes, observers and notifiers name resources by: `/`
/// followed by the non-empty segments joined with `/` (`"/"` for none).
pub fn path_from_segments<'a>(segments: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// [`path_from_segments`] of a `/`-separated path, empty segments dropped: `"a//b/"` and
/// `"/a/b"` both become `"/a/b"`.
pub fn normalize_path(path: &str) -> String {
    path_from_segments(path.split('/').filter(|s| !s.is_empty()))
}

/// The name the engine keeps a resource's observers under (what
/// [`Endpoint::notify`](crate::Endpoint::notify) takes): the [`normalize_path`] of a path,
/// or a URI as it is: a forward proxy keeps the observers of a target it relays under the
/// target's URI ([`proxy::observe_key`](crate::proxy::observe_key)).
pub fn resource_name(path: &str) -> String {
    if path.contains("://") {
        String::from(path)
    } else {
        normalize_path(path)
    }
}

/// The path of the resource discovery resource, as Uri-Path segments (RFC 6690 §4).
///
/// [`Router::resolve`] answers a GET for it with [`Resolution::WellKnownCore`] unless the
/// application registered an exact route at this path; the runtime then serves
/// [`Router::well_known_core`].
pub const WELL_KNOWN_CORE: &[&str] = &[".well-known", "core"];

/// Discovery attributes of a resource, listed for it in `/.well-known/core`.
///
/// The fields are the target attributes of RFC 6690 §3 (`rt`, `if`, `sz`, `title`), `ct` of
/// RFC 7252 §7.2.1 and `obs` of RFC 7641 §6; anything else goes in `extra`. Build with the
/// chained helpers:
///
/// ```
/// use coap_proto::resource::ResourceAttributes;
///
/// let attrs = ResourceAttributes::new()
///     .rt("temperature-c")
///     .interface("sensor")
///     .ct(0u16)
///     .observable();
/// assert_eq!(attrs.rt, ["temperature-c"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// Resource types (`rt`), written as one space-separated value (RFC 6690 §3.1).
    pub rt: Vec<String>,
    /// Interface descriptions (`if`), written as one space-separated value (RFC 6690 §3.2).
    pub interface: Vec<String>,
    /// Content-Format codes the resource returns (`ct`); several are written as one quoted,
    /// space-separated value (RFC 7252 §7.2.1).
    pub ct: Vec<u16>,
    /// Maximum size estimate of the representation in bytes (`sz`, RFC 6690 §3.3).
    pub sz: Option<u64>,
    /// A human-readable title (`title`, RFC 5988 §5.4).
    pub title: Option<String>,
    /// Whether the resource is observable (the value-less `obs`, RFC 7641 §6).
    pub observable: bool,
    /// Further attributes in order, as name and optional value. Names that are not valid link
    /// parameter names (RFC 5987 `attr-char`s, optionally ending in `*`) are left out of the
    /// document.
    pub extra: Vec<(String, Option<String>)>,
    /// Leaves the resource out of `/.well-known/core`; it is still routed.
    pub hidden: bool,
}

impl ResourceAttributes {
    /// No attributes: the resource is listed with its path only.
    pub fn new() -> ResourceAttributes {
        ResourceAttributes::default()
    }

    /// Adds a resource type (`rt`).
    #[must_use]
    pub fn rt(mut self, resource_type: impl Into<String>) -> ResourceAttributes {
        self.rt.push(resource_type.into());
        self
    }

    /// Adds an interface description (`if`).
    #[must_use]
    pub fn interface(mut self, interface: impl Into<String>) -> ResourceAttributes {
        self.interface.push(interface.into());
        self
    }

    /// Adds a Content-Format code (`ct`); takes a `u16` or a
    /// [`ContentFormat`].
    #[must_use]
    pub fn ct(mut self, content_format: impl Into<u16>) -> ResourceAttributes {
        self.ct.push(content_format.into());
        self
    }

    /// Sets the maximum size estimate (`sz`).
    #[must_use]
    pub fn sz(mut self, size: u64) -> ResourceAttributes {
        self.sz = Some(size);
        self
    }

    /// Sets the title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> ResourceAttributes {
        self.title = Some(title.into());
        self
    }

    /// Marks the resource observable (`obs`).
    #[must_use]
    pub fn observable(mut self) -> ResourceAttributes {
        self.observable = true;
        self
    }

    /// Leaves the resource out of `/.well-known/core`.
    #[must_use]
    pub fn hidden(mut self) -> ResourceAttributes {
        self.hidden = true;
        self
    }

    /// Adds the attribute `name="value"`.
    #[must_use]
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> ResourceAttributes {
        self.extra.push((name.into(), Some(value.into())));
        self
    }

    /// Adds the value-less attribute `name`.
    #[must_use]
    pub fn flag(mut self, name: impl Into<String>) -> ResourceAttributes {
        self.extra.push((name.into(), None));
        self
    }

    /// The link to `target` carrying these attributes, in the order `rt`, `if`, `ct`, `sz`,
    /// `title`, `obs`, then `extra` (invalid `extra` names left out). `hidden` is not an
    /// attribute and is ignored here.
    pub fn to_link(&self, target: impl Into<String>) -> Link {
        let mut link = Link::new(target);
        if !self.rt.is_empty() {
            link = link.with("rt", self.rt.join(" "));
        }
        if !self.interface.is_empty() {
            link = link.with("if", self.interface.join(" "));
        }
        if !self.ct.is_empty() {
            let mut ct = String::new();
            for (i, code) in self.ct.iter().enumerate() {
                if i > 0 {
                    ct.push(' ');
                }
                ct.push_str(&code.to_string());
            }
            link = link.with("ct", ct);
        }
        if let Some(sz) = self.sz {
            link = link.with("sz", sz.to_string());
        }
        if let Some(title) = &self.title {
            link = link.with("title", title.clone());
        }
        if self.observable {
            link = link.with_flag("obs");
        }
        for (name, value) in &self.extra {
            if Link::new("").with_flag(name.clone()).validate().is_err() {
                continue;
            }
            link.attributes.push((name.clone(), value.clone()));
        }
        link
    }
}

/// Attributes of a route that was given none.
static NO_ATTRIBUTES: ResourceAttributes = ResourceAttributes {
    rt: Vec::new(),
    interface: Vec::new(),
    ct: Vec::new(),
    sz: None,
    title: None,
    observable: false,
    extra: Vec::new(),
    hidden: false,
};

/// A description of one route, for introspection and in [`Resolution::Found`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteInfo<'r> {
    /// The route's path with a leading `/` and segments joined by `/`, not percent-encoded;
    /// `/` for the root.
    pub path: &'r str,
    /// The methods registered one by one, in ascending code order.
    pub methods: &'r [Code],
    /// Whether a handler serves every method not in `methods`.
    pub any_method: bool,
    /// Whether this is a prefix route (it also serves every path below `path`).
    pub prefix: bool,
    /// The attributes given to the route's path (empty if none were given).
    pub attributes: &'r ResourceAttributes,
}

impl RouteInfo<'_> {
    /// Whether the route has a handler for `method`.
    pub fn allows(&self, method: Code) -> bool {
        self.any_method || self.methods.contains(&method)
    }
}

/// What [`Router::resolve`] found for a request.
///
/// `Clone` and `Debug` do not need them from `H` (`Debug` does not show the handler).
pub enum Resolution<'r, H> {
    /// A handler serves the request.
    Found {
        /// The handler.
        handler: &'r H,
        /// The indices of the request path segments below the route's path: for a prefix
        /// route `"/files"` and the request path `files/a/b` this is `1..3`; for an exact
        /// route (or a prefix route asked for its own path) it is empty, with `start` and `end`
        /// equal to the number of request segments.
        rest: Range<usize>,
        /// The route that matched.
        route: RouteInfo<'r>,
    },
    /// A GET for [`WELL_KNOWN_CORE`] that no exact route serves: answer it with
    /// [`Router::well_known_core`] (or [`Router::well_known_core_response`]).
    WellKnownCore,
    /// No route serves the path: answer 4.04 Not Found.
    NotFound,
    /// A route serves the path but not the method: answer 4.05 Method Not Allowed.
    MethodNotAllowed,
}

impl<H> Clone for Resolution<'_, H> {
    fn clone(&self) -> Self {
        match self {
            Resolution::Found {
                handler,
                rest,
                route,
            } => Resolution::Found {
                handler,
                rest: rest.clone(),
                route: *route,
            },
            Resolution::WellKnownCore => Resolution::WellKnownCore,
            Resolution::NotFound => Resolution::NotFound,
            Resolution::MethodNotAllowed => Resolution::MethodNotAllowed,
        }
    }
}

impl<H> fmt::Debug for Resolution<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolution::Found { rest, route, .. } => f
                .debug_struct("Found")
                .field("rest", rest)
                .field("route", route)
                .finish_non_exhaustive(),
            Resolution::WellKnownCore => f.write_str("WellKnownCore"),
            Resolution::NotFound => f.write_str("NotFound"),
            Resolution::MethodNotAllowed => f.write_str("MethodNotAllowed"),
        }
    }
}

/// The handlers of one route (exact or prefix) at one path.
#[derive(Clone)]
struct Handlers<H> {
    /// Registered methods, sorted ascending, parallel to `handlers`.
    methods: Vec<Code>,
    handlers: Vec<H>,
    any: Option<H>,
}

impl<H> Handlers<H> {
    const fn new() -> Handlers<H> {
        Handlers {
            methods: Vec::new(),
            handlers: Vec::new(),
            any: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.methods.is_empty() && self.any.is_none()
    }

    fn get(&self, method: Code) -> Option<&H> {
        match self.methods.iter().position(|m| *m == method) {
            Some(i) => self.handlers.get(i),
            None => self.any.as_ref(),
        }
    }

    fn insert(&mut self, method: Code, handler: H) {
        match self.methods.binary_search(&method) {
            Ok(i) => {
                if let Some(slot) = self.handlers.get_mut(i) {
                    *slot = handler;
                }
            }
            Err(i) => {
                self.methods.insert(i, method);
                self.handlers.insert(i, handler);
            }
        }
    }

    /// Moves every handler of `other` in, replacing handlers for the same method.
    fn merge(&mut self, other: Handlers<H>) {
        for (method, handler) in other.methods.into_iter().zip(other.handlers) {
            self.insert(method, handler);
        }
        if other.any.is_some() {
            self.any = other.any;
        }
    }

    fn map<G>(self, f: &mut impl FnMut(H) -> G) -> Handlers<G> {
        Handlers {
            methods: self.methods,
            handlers: self.handlers.into_iter().map(&mut *f).collect(),
            any: self.any.map(f),
        }
    }
}

/// One path segment in the route tree.
#[derive(Clone)]
struct Node<H> {
    /// The full path of this node (`/` for the root), not percent-encoded.
    path: String,
    /// Children in the order they were first registered (the listing order).
    children: Vec<Node<H>>,
    /// Child index by segment.
    index: HashMap<String, usize>,
    exact: Handlers<H>,
    prefix: Handlers<H>,
    attributes: Option<ResourceAttributes>,
}

impl<H> Node<H> {
    fn new(path: String) -> Node<H> {
        Node {
            path,
            children: Vec::new(),
            index: HashMap::new(),
            exact: Handlers::new(),
            prefix: Handlers::new(),
            attributes: None,
        }
    }

    fn child(&self, segment: &str) -> Option<&Node<H>> {
        self.index.get(segment).and_then(|&i| self.children.get(i))
    }

    /// The child for `segment`, created if missing.
    fn child_mut(&mut self, segment: &str) -> &mut Node<H> {
        let i = match self.index.get(segment) {
            Some(&i) => i,
            None => {
                let i = self.children.len();
                self.children
                    .push(Node::new(join_path(&self.path, segment)));
                self.index.insert(segment.into(), i);
                i
            }
        };
        // `i` indexes `children`: either it was just pushed or the index map holds it.
        &mut self.children[i]
    }

    /// The node for `path`, created with its ancestors if missing.
    fn descend_mut(&mut self, path: &str) -> &mut Node<H> {
        let mut node = self;
        for segment in registered_segments(path) {
            node = node.child_mut(segment);
        }
        node
    }

    fn info(&self, prefix: bool) -> RouteInfo<'_> {
        let handlers = if prefix { &self.prefix } else { &self.exact };
        RouteInfo {
            path: &self.path,
            methods: &handlers.methods,
            any_method: handlers.any.is_some(),
            prefix,
            attributes: self.attributes.as_ref().unwrap_or(&NO_ATTRIBUTES),
        }
    }

    /// Moves `other`'s routes, attributes and children into this node.
    fn merge(&mut self, other: Node<H>) {
        self.exact.merge(other.exact);
        self.prefix.merge(other.prefix);
        if other.attributes.is_some() {
            self.attributes = other.attributes;
        }
        let mut segments: Vec<(usize, String)> =
            other.index.into_iter().map(|(s, i)| (i, s)).collect();
        segments.sort_unstable_by_key(|(i, _)| *i);
        for ((_, segment), child) in segments.into_iter().zip(other.children) {
            self.child_mut(&segment).merge(child);
        }
    }

    fn map<G>(self, f: &mut impl FnMut(H) -> G) -> Node<G> {
        Node {
            path: self.path,
            children: self.children.into_iter().map(|c| c.map(f)).collect(),
            index: self.index,
            exact: self.exact.map(f),
            prefix: self.prefix.map(f),
            attributes: self.attributes,
        }
    }

    /// Whether `/.well-known/core` lists this node: it has a route or attributes, and is not
    /// hidden.
    fn listed(&self) -> bool {
        let has_route = !self.exact.is_empty() || !self.prefix.is_empty();
        match &self.attributes {
            Some(attrs) => !attrs.hidden,
            None => has_route,
        }
    }

    /// Calls `f` on this node and every node below it, depth first, children in registration
    /// order.
    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Node<H>)) {
        let mut stack: Vec<&'a Node<H>> = Vec::from([self]);
        while let Some(node) = stack.pop() {
            f(node);
            stack.extend(node.children.iter().rev());
        }
    }
}

/// The full path of a child of `parent` called `segment`.
fn join_path(parent: &str, segment: &str) -> String {
    let mut path = String::with_capacity(parent.len() + 1 + segment.len());
    path.push_str(parent.strip_suffix('/').unwrap_or(parent));
    path.push('/');
    path.push_str(segment);
    path
}

/// The segments of a path given to a registration method: split at `/`, empty ones dropped.
fn registered_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// A route table mapping paths and methods to handlers of type `H`, with the discovery
/// attributes of each resource.
///
/// See the [module documentation](self) for the routing rules.
///
/// ```
/// use coap_proto::msg::Code;
/// use coap_proto::resource::{Resolution, ResourceAttributes, Router};
///
/// let mut router: Router<&str> = Router::new();
/// router
///     .add("/sensors/temp", Code::GET, "read temperature")
///     .set_attributes("/sensors/temp", ResourceAttributes::new().rt("temperature-c").observable())
///     .add_prefix("/files", Code::GET, "serve a file");
///
/// match router.resolve(Code::GET, ["files", "a", "b.txt"]) {
///     Resolution::Found { handler, rest, .. } => {
///         assert_eq!(*handler, "serve a file");
///         assert_eq!(rest, 1..3);
///     }
///     other => panic!("{other:?}"),
/// }
/// assert!(matches!(router.resolve(Code::PUT, ["sensors", "temp"]), Resolution::MethodNotAllowed));
/// assert_eq!(
///     router.well_known_core(["obs"]).unwrap(),
///     "</sensors/temp>;rt=\"temperature-c\";obs"
/// );
/// ```
#[derive(Clone)]
pub struct Router<H> {
    root: Node<H>,
}

impl<H> Default for Router<H> {
    fn default() -> Router<H> {
        Router::new()
    }
}

impl<H> fmt::Debug for Router<H> {
    /// Lists the routes (paths, methods, attributes); handlers are not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.routes()).finish()
    }
}

impl<H> Router<H> {
    /// An empty router: every request resolves to 4.04, except GET `/.well-known/core`.
    pub fn new() -> Router<H> {
        Router {
            root: Node::new("/".into()),
        }
    }

    /// Registers `handler` for `method` on the exact path `path` ("/a/b"; the leading slash is
    /// optional, and `""` or `"/"` is the root), replacing any handler registered for the same
    /// path and method.
    pub fn add(&mut self, path: &str, method: Code, handler: H) -> &mut Self {
        self.root.descend_mut(path).exact.insert(method, handler);
        self
    }

    /// Registers `handler` for every method on the exact path `path`, replacing any previous
    /// such handler; handlers registered for one method with [`Router::add`] take precedence.
    pub fn add_any(&mut self, path: &str, handler: H) -> &mut Self {
        self.root.descend_mut(path).exact.any = Some(handler);
        self
    }

    /// Registers `handler` for `method` on `prefix` and every path below it: `"/files"` serves
    /// `/files`, `/files/a` and `/files/a/b` (but not `/filesystem`). `""` or `"/"` serves every
    /// path. Exact routes and longer prefixes take precedence.
    pub fn add_prefix(&mut self, prefix: &str, method: Code, handler: H) -> &mut Self {
        self.root.descend_mut(prefix).prefix.insert(method, handler);
        self
    }

    /// Registers `handler` for every method on `prefix` and every path below it; handlers
    /// registered for one method with [`Router::add_prefix`] on the same prefix take precedence.
    pub fn add_prefix_any(&mut self, prefix: &str, handler: H) -> &mut Self {
        self.root.descend_mut(prefix).prefix.any = Some(handler);
        self
    }

    /// Sets the discovery attributes of the resource at `path`, replacing earlier ones.
    ///
    /// A path with attributes is listed in `/.well-known/core` (unless
    /// [`ResourceAttributes::hidden`]) even if it has no route of its own, e.g. because a
    /// prefix route serves it.
    pub fn set_attributes(&mut self, path: &str, attrs: ResourceAttributes) -> &mut Self {
        self.root.descend_mut(path).attributes = Some(attrs);
        self
    }

    /// The attributes set for `path`, if any.
    pub fn attributes(&self, path: &str) -> Option<&ResourceAttributes> {
        let mut node = &self.root;
        for segment in registered_segments(path) {
            node = node.child(segment)?;
        }
        node.attributes.as_ref()
    }

    /// Mounts `other` under `prefix`: its routes and attributes appear below that prefix (in
    /// [`Router::resolve`], [`Router::routes`] and `/.well-known/core`). Where both routers
    /// have a handler for the same route and method, or attributes for the same path, `other`'s
    /// replace this router's.
    pub fn nest(&mut self, prefix: &str, other: Router<H>) -> &mut Self {
        // Merging rebuilds every node of `other` under the prefix, so path strings are right.
        self.root.descend_mut(prefix).merge(other.root);
        self
    }

    /// Finds the handler for a request with `method` and the Uri-Path segments `path` (already
    /// percent-decoded, as CoAP options are; empty for the root).
    ///
    /// Walks the segments once with one hash lookup each and never allocates.
    pub fn resolve<'r, 'p>(
        &'r self,
        method: Code,
        path: impl IntoIterator<Item = &'p str>,
    ) -> Resolution<'r, H> {
        let mut node = Some(&self.root);
        let mut prefix = (!self.root.prefix.is_empty()).then_some((&self.root, 0));
        let mut count = 0;
        let mut well_known = true;
        for segment in path {
            well_known = well_known && WELL_KNOWN_CORE.get(count) == Some(&segment);
            count += 1;
            node = node.and_then(|n| n.child(segment));
            if let Some(n) = node {
                if !n.prefix.is_empty() {
                    prefix = Some((n, count));
                }
            }
        }
        well_known = well_known && count == WELL_KNOWN_CORE.len();

        if let Some(n) = node.filter(|n| !n.exact.is_empty()) {
            return match n.exact.get(method) {
                Some(handler) => Resolution::Found {
                    handler,
                    rest: count..count,
                    route: n.info(false),
                },
                None => Resolution::MethodNotAllowed,
            };
        }
        if well_known {
            return if method == Code::GET {
                Resolution::WellKnownCore
            } else {
                Resolution::MethodNotAllowed
            };
        }
        match prefix {
            Some((n, depth)) => match n.prefix.get(method) {
                Some(handler) => Resolution::Found {
                    handler,
                    rest: depth..count,
                    route: n.info(true),
                },
                None => Resolution::MethodNotAllowed,
            },
            None => Resolution::NotFound,
        }
    }

    /// The links `/.well-known/core` lists, in registration order (depth first), before
    /// filtering: one per path that has a route or attributes and is not hidden, with the
    /// path percent-encoded as the target.
    pub fn links(&self) -> Vec<Link> {
        let mut links = Vec::new();
        self.root.walk(&mut |node| {
            if node.listed() {
                links.push(node_link(node));
            }
        });
        links
    }

    /// The link-format document for `/.well-known/core`, filtered by the request's Uri-Query
    /// values `queries` (RFC 6690 §4.1).
    ///
    /// Each query is one filter and a link must pass all of them:
    ///
    /// - `name=value` keeps links with an attribute `name` equal to `value`; `name=prefix*`
    ///   those with a value starting with `prefix` (`name=*`: any value). Each space-separated
    ///   word of `rt`, `if`, `rel`, `rev` and `ct` is a separate value.
    /// - `href=...` matches the link target, or equally the path before percent-encoding.
    /// - A query without `=`, such as `obs`, keeps links that have the attribute, like
    ///   `obs=*` (RFC 6690 defines only `name=value`; this reading is common and harmless).
    /// - Empty queries are ignored; a name nobody uses matches no link.
    ///
    /// # Errors
    ///
    /// A query with an empty name (`=x`) is not a filter; the error says so. RFC 6690 §4.1
    /// lets a server that does not filter ignore the query, but this one does filter, and a
    /// filter it cannot read should not silently list everything: answer a unicast request
    /// 4.00 Bad Request ([`CoapError::from`] does), and send nothing to a multicast one (§4.1:
    /// no response to a multicast query that does not match).
    ///
    /// An empty document means no link passed; §4.1 says a multicast request should then get
    /// no response at all.
    pub fn well_known_core<'q>(
        &self,
        queries: impl IntoIterator<Item = &'q str>,
    ) -> Result<String, LinkFormatError> {
        let queries = queries
            .into_iter()
            .filter(|q| !q.is_empty())
            .map(Query::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let mut links = Vec::new();
        self.root.walk(&mut |node| {
            if node.listed() {
                let link = node_link(node);
                if queries.iter().all(|q| q.matches(&link, &node.path)) {
                    links.push(link);
                }
            }
        });
        let mut doc = String::new();
        link_format::write(&links, &mut doc)?;
        Ok(doc)
    }

    /// The whole answer to a GET for `/.well-known/core` with `request` options: 2.05 Content
    /// with Content-Format 40 (`application/link-format`) and the filtered document, or 4.00
    /// Bad Request with a diagnostic for a malformed filter (see [`Router::well_known_core`]).
    pub fn well_known_core_response(&self, request: &Options) -> Response {
        match self.well_known_core(request.uri_query()) {
            Ok(doc) => Response::content(Bytes::from(doc.into_bytes()))
                .with_content_format(ContentFormat::LINK_FORMAT),
            Err(e) => CoapError::from(e).into_response(),
        }
    }

    /// Every route, depth first in registration order: a path with both exact and prefix
    /// handlers gives two entries, the exact one first.
    pub fn routes(&self) -> impl Iterator<Item = RouteInfo<'_>> {
        let mut routes = Vec::new();
        self.root.walk(&mut |node| {
            if !node.exact.is_empty() {
                routes.push(node.info(false));
            }
            if !node.prefix.is_empty() {
                routes.push(node.info(true));
            }
        });
        routes.into_iter()
    }

    /// The same routes and attributes with every handler passed through `f` (for wrappers that
    /// box or adapt handlers).
    pub fn map_handlers<G>(self, mut f: impl FnMut(H) -> G) -> Router<G> {
        Router {
            root: self.root.map(&mut f),
        }
    }
}

/// The link listed for `node`.
fn node_link<H>(node: &Node<H>) -> Link {
    let mut target = String::with_capacity(node.path.len());
    if node.path == "/" {
        target.push('/');
    }
    for segment in registered_segments(&node.path) {
        target.push('/');
        crate::uri::percent_encode_segment(segment, &mut target);
    }
    node.attributes
        .as_ref()
        .unwrap_or(&NO_ATTRIBUTES)
        .to_link(target)
}

/// One parsed `/.well-known/core` query.
enum Query<'q> {
    /// `name=value` or `name=prefix*`.
    Match(Filter<'q>),
    /// A bare `name`: the attribute is present.
    Has(&'q str),
}

impl<'q> Query<'q> {
    fn parse(query: &'q str) -> Result<Query<'q>, LinkFormatError> {
        if query.contains('=') {
            Filter::parse(query).map(Query::Match)
        } else {
            Ok(Query::Has(query))
        }
    }

    /// Whether `link`, listed for the (unencoded) path `path`, passes.
    fn matches(&self, link: &Link, path: &str) -> bool {
        match self {
            Query::Has(name) => name.eq_ignore_ascii_case("href") || link.has(name),
            Query::Match(f) if f.name().eq_ignore_ascii_case("ct") => {
                // `ct` may hold several space-separated codes (RFC 7252 §7.2.1); each is a
                // value of its own, as for relation types.
                link.attr_words("ct").any(|w| value_matches(f, w))
                    || (f.is_prefix() && f.value().is_empty() && link.has("ct"))
            }
            Query::Match(f) if f.name().eq_ignore_ascii_case("href") => {
                f.matches(link) || value_matches(f, path)
            }
            Query::Match(f) => f.matches(link),
        }
    }
}

fn value_matches(filter: &Filter<'_>, candidate: &str) -> bool {
    if filter.is_prefix() {
        candidate.starts_with(filter.value())
    } else {
        candidate == filter.value()
    }
}

/// An error a handler returns instead of a response: a 4.xx or 5.xx code and an optional
/// diagnostic message (RFC 7252 §5.5.2).
///
/// [`CoapError::into_response`] turns it into the response to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoapError {
    /// The response code, normally a client (4.xx) or server (5.xx) error.
    pub code: Code,
    /// A short human-readable explanation, sent as the payload.
    pub diagnostic: Option<String>,
}

impl CoapError {
    /// An error with `code` and no diagnostic.
    pub fn new(code: Code) -> CoapError {
        CoapError {
            code,
            diagnostic: None,
        }
    }

    /// Adds (or replaces) the diagnostic message.
    #[must_use]
    pub fn with_diagnostic(mut self, diagnostic: impl Into<String>) -> CoapError {
        self.diagnostic = Some(diagnostic.into());
        self
    }

    /// 4.00 Bad Request with a diagnostic saying what is wrong with the request.
    pub fn bad_request(diagnostic: impl Into<String>) -> CoapError {
        CoapError::new(Code::BAD_REQUEST).with_diagnostic(diagnostic)
    }

    /// 4.01 Unauthorized.
    pub fn unauthorized() -> CoapError {
        CoapError::new(Code::UNAUTHORIZED)
    }

    /// 4.02 Bad Option: a critical option was not understood.
    pub fn bad_option(diagnostic: impl Into<String>) -> CoapError {
        CoapError::new(Code::BAD_OPTION).with_diagnostic(diagnostic)
    }

    /// 4.03 Forbidden.
    pub fn forbidden() -> CoapError {
        CoapError::new(Code::FORBIDDEN)
    }

    /// 4.04 Not Found.
    pub fn not_found() -> CoapError {
        CoapError::new(Code::NOT_FOUND)
    }

    /// 4.05 Method Not Allowed.
    pub fn method_not_allowed() -> CoapError {
        CoapError::new(Code::METHOD_NOT_ALLOWED)
    }

    /// 4.06 Not Acceptable: no representation matches the Accept option.
    pub fn not_acceptable() -> CoapError {
        CoapError::new(Code::NOT_ACCEPTABLE)
    }

    /// 4.12 Precondition Failed (If-Match or If-None-Match).
    pub fn precondition_failed() -> CoapError {
        CoapError::new(Code::PRECONDITION_FAILED)
    }

    /// 4.13 Request Entity Too Large.
    pub fn request_entity_too_large() -> CoapError {
        CoapError::new(Code::REQUEST_ENTITY_TOO_LARGE)
    }

    /// 4.15 Unsupported Content-Format.
    pub fn unsupported_content_format() -> CoapError {
        CoapError::new(Code::UNSUPPORTED_CONTENT_FORMAT)
    }

    /// 5.00 Internal Server Error with a diagnostic.
    pub fn internal(diagnostic: impl Into<String>) -> CoapError {
        CoapError::new(Code::INTERNAL_SERVER_ERROR).with_diagnostic(diagnostic)
    }

    /// 5.01 Not Implemented.
    pub fn not_implemented() -> CoapError {
        CoapError::new(Code::NOT_IMPLEMENTED)
    }

    /// 5.03 Service Unavailable.
    pub fn service_unavailable() -> CoapError {
        CoapError::new(Code::SERVICE_UNAVAILABLE)
    }

    /// The response: the code, and the diagnostic (if any) as UTF-8 payload without a
    /// Content-Format option, which is how RFC 7252 §5.5.2 marks a diagnostic payload
    /// (text/plain in effect).
    pub fn into_response(self) -> Response {
        let response = Response::new(self.code);
        match self.diagnostic {
            Some(text) if !text.is_empty() => response.with_payload(Bytes::from(text.into_bytes())),
            _ => response,
        }
    }
}

impl From<Code> for CoapError {
    fn from(code: Code) -> CoapError {
        CoapError::new(code)
    }
}

/// A malformed `/.well-known/core` filter: 4.00 Bad Request with the parser's message.
impl From<LinkFormatError> for CoapError {
    fn from(e: LinkFormatError) -> CoapError {
        CoapError::bad_request(e.to_string())
    }
}

impl From<CoapError> for Response {
    fn from(e: CoapError) -> Response {
        e.into_response()
    }
}

impl fmt::Display for CoapError {
    /// The code with its name, then the diagnostic: `4.04 Not Found: no such sensor`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.code)?;
        if let Some(d) = &self.diagnostic {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
impl core::error::Error for CoapError {}

/// FNV-1a, 64-bit: a small, stable, non-cryptographic hash.
fn fnv1a64(hash: u64, data: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    data.iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The ETag [`hashing_etag`] gives a representation: FNV-1a 64 over the Content-Format option
/// value (so the same bytes in two formats differ) and the payload, big-endian, 8 bytes.
pub fn payload_etag(options: &Options, payload: &[u8]) -> [u8; 8] {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h = OFFSET_BASIS;
    match options.get(OptionNumber::CONTENT_FORMAT) {
        Some(cf) => {
            // Length-prefixed so the split between format and payload is unambiguous.
            h = fnv1a64(h, &[1, u8::try_from(cf.len()).unwrap_or(u8::MAX)]);
            h = fnv1a64(h, cf);
        }
        None => h = fnv1a64(h, &[0]),
    }
    fnv1a64(h, payload).to_be_bytes()
}

/// Gives a 2.05 Content `response` an ETag computed from its content, and turns it into 2.03
/// Valid when the `request` (its options) already lists that ETag.
///
/// The ETag is [`payload_etag`] unless the response already carries one, which is kept. A
/// request may list several ETags (RFC 7252 §5.10.6.2); if any equals the response's, the
/// response becomes 2.03 Valid with the ETag and no payload (§5.9.1.3), and its
/// Content-Format option, which would describe the absent payload, is removed. Other options,
/// such as Max-Age, stay to refresh the client's copy. Responses other than 2.05 are left
/// alone: only they carry a representation to validate.
pub fn hashing_etag(request: &Options, response: &mut Response) {
    if response.code != Code::CONTENT {
        return;
    }
    let etag: crate::msg::OptionValue = match response.options.etag() {
        Some(existing) => existing.into(),
        None => {
            let tag = payload_etag(&response.options, &response.payload);
            response.options.set_etag(&tag);
            tag.as_slice().into()
        }
    };
    if request.etags().any(|t| t == etag.as_slice()) {
        response.code = Code::VALID;
        response.payload = Bytes::new();
        response.options.remove(OptionNumber::CONTENT_FORMAT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_have_one_form() {
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("a//b/"), "/a/b");
        assert_eq!(path_from_segments(["sensors", "temp"]), "/sensors/temp");
    }
    use alloc::vec;
    use proptest::prelude::*;

    /// The handler a resolution found, or a marker for the other outcomes.
    fn outcome<'r>(r: &Resolution<'r, &'static str>) -> &'r str {
        match r {
            Resolution::Found { handler, .. } => handler,
            Resolution::WellKnownCore => "<well-known>",
            Resolution::NotFound => "<4.04>",
            Resolution::MethodNotAllowed => "<4.05>",
        }
    }

    fn go(router: &Router<&'static str>, method: Code, path: &str) -> &'static str {
        let segs: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        match router.resolve(method, segs) {
            Resolution::Found { handler, .. } => handler,
            Resolution::WellKnownCore => "<well-known>",
            Resolution::NotFound => "<4.04>",
            Resolution::MethodNotAllowed => "<4.05>",
        }
    }

    #[test]
    fn exact_routes() {
        let mut r = Router::new();
        r.add("/sensors/temp", Code::GET, "temp-get")
            .add("sensors/temp", Code::PUT, "temp-put")
            .add("", Code::GET, "root")
            .add("/a//b/", Code::GET, "ab");
        assert_eq!(go(&r, Code::GET, "sensors/temp"), "temp-get");
        assert_eq!(go(&r, Code::PUT, "sensors/temp"), "temp-put");
        assert_eq!(go(&r, Code::GET, ""), "root");
        assert_eq!(go(&r, Code::GET, "a/b"), "ab");
        // Intermediate nodes are not routes.
        assert_eq!(go(&r, Code::GET, "sensors"), "<4.04>");
        assert_eq!(go(&r, Code::GET, "sensors/temp/x"), "<4.04>");
        assert_eq!(go(&r, Code::GET, "nothing"), "<4.04>");
        // An empty segment is a segment of its own.
        assert_eq!(go(&r, Code::GET, "sensors/temp/"), "<4.04>");
        // Segments compare exactly (case, no decoding).
        assert_eq!(go(&r, Code::GET, "Sensors/temp"), "<4.04>");
        // Registering again replaces.
        r.add("/sensors/temp", Code::GET, "temp-get-2");
        assert_eq!(go(&r, Code::GET, "sensors/temp"), "temp-get-2");
        assert_eq!(go(&r, Code::PUT, "sensors/temp"), "temp-put");

        match r.resolve(Code::GET, ["sensors", "temp"]) {
            Resolution::Found { rest, route, .. } => {
                assert_eq!(rest, 2..2);
                assert_eq!(route.path, "/sensors/temp");
                assert_eq!(route.methods, &[Code::GET, Code::PUT]);
                assert!(!route.prefix && !route.any_method);
                assert!(route.allows(Code::PUT) && !route.allows(Code::POST));
            }
            other => panic!("{:?}", outcome(&other)),
        }
    }

    #[test]
    fn not_found_versus_method_not_allowed() {
        let mut r = Router::new();
        r.add("/time", Code::GET, "time");
        assert_eq!(go(&r, Code::GET, "time"), "time");
        assert_eq!(go(&r, Code::POST, "time"), "<4.05>");
        assert_eq!(go(&r, Code::DELETE, "time"), "<4.05>");
        assert_eq!(go(&r, Code::GET, "date"), "<4.04>");
        assert_eq!(go(&r, Code::POST, "date"), "<4.04>");
        // A path with attributes but no handler is not a route.
        r.set_attributes("/date", ResourceAttributes::new().title("Date"));
        assert_eq!(go(&r, Code::GET, "date"), "<4.04>");
    }

    #[test]
    fn any_method_and_precedence() {
        let mut r = Router::new();
        r.add_any("/x", "any").add("/x", Code::GET, "get");
        assert_eq!(go(&r, Code::GET, "x"), "get");
        assert_eq!(go(&r, Code::POST, "x"), "any");
        assert_eq!(go(&r, Code::FETCH, "x"), "any");
        r.add_any("/x", "any-2");
        assert_eq!(go(&r, Code::IPATCH, "x"), "any-2");
        let route = r.routes().next().unwrap();
        assert!(route.any_method && route.allows(Code::DELETE));
    }

    #[test]
    fn prefix_routes() {
        let mut r = Router::new();
        r.add_prefix("/files", Code::GET, "files")
            .add_prefix("/files/private", Code::GET, "private")
            .add("/files/index", Code::GET, "index")
            .add_prefix_any("/", "fallback")
            .add_prefix("/", Code::GET, "fallback-get");
        assert_eq!(go(&r, Code::GET, "files"), "files");
        assert_eq!(go(&r, Code::GET, "files/a/b"), "files");
        assert_eq!(go(&r, Code::GET, "files/private"), "private");
        assert_eq!(go(&r, Code::GET, "files/private/key"), "private");
        assert_eq!(go(&r, Code::GET, "files/privateer"), "files");
        // Exact beats prefix, but only for exactly that path.
        assert_eq!(go(&r, Code::GET, "files/index"), "index");
        assert_eq!(go(&r, Code::GET, "files/index/2"), "files");
        // Not a segment prefix: served by the root catch-all.
        assert_eq!(go(&r, Code::GET, "filesystem"), "fallback-get");
        assert_eq!(go(&r, Code::POST, "filesystem"), "fallback");
        assert_eq!(go(&r, Code::GET, ""), "fallback-get");
        // The longest prefix decides, even when a shorter one would take the method.
        assert_eq!(go(&r, Code::POST, "files/a"), "<4.05>");
        // So does an exact route.
        assert_eq!(go(&r, Code::POST, "files/index"), "<4.05>");

        match r.resolve(Code::GET, ["files", "a", "b.txt"]) {
            Resolution::Found {
                handler,
                rest,
                route,
            } => {
                assert_eq!(*handler, "files");
                assert_eq!(rest, 1..3);
                assert_eq!(route.path, "/files");
                assert!(route.prefix);
            }
            other => panic!("{:?}", outcome(&other)),
        }
        match r.resolve(Code::GET, ["files"]) {
            Resolution::Found { rest, .. } => assert_eq!(rest, 1..1),
            other => panic!("{:?}", outcome(&other)),
        }
        match r.resolve(Code::GET, ["x", "y"]) {
            Resolution::Found { rest, route, .. } => {
                assert_eq!(rest, 0..2);
                assert_eq!(route.path, "/");
            }
            other => panic!("{:?}", outcome(&other)),
        }
    }

    #[test]
    fn well_known_core_resolution() {
        let mut r: Router<&str> = Router::new();
        assert_eq!(go(&r, Code::GET, ".well-known/core"), "<well-known>");
        assert_eq!(go(&r, Code::POST, ".well-known/core"), "<4.05>");
        assert_eq!(go(&r, Code::GET, ".well-known"), "<4.04>");
        assert_eq!(go(&r, Code::GET, ".well-known/core/x"), "<4.04>");
        assert_eq!(go(&r, Code::GET, ".well-known/cor"), "<4.04>");
        // A catch-all does not capture discovery.
        r.add_prefix_any("/", "fallback");
        assert_eq!(go(&r, Code::GET, ".well-known/core"), "<well-known>");
        assert_eq!(go(&r, Code::GET, ".well-known/core/x"), "fallback");
        // An exact route replaces it.
        r.add("/.well-known/core", Code::GET, "mine");
        assert_eq!(go(&r, Code::GET, ".well-known/core"), "mine");
        assert_eq!(go(&r, Code::POST, ".well-known/core"), "<4.05>");
    }

    #[test]
    fn nested_routers() {
        let mut api = Router::new();
        api.add("/temp", Code::GET, "temp")
            .add_prefix("/logs", Code::GET, "logs")
            .add("", Code::GET, "api-root")
            .set_attributes(
                "/temp",
                ResourceAttributes::new().rt("temperature-c").observable(),
            )
            .set_attributes("/logs", ResourceAttributes::new().ct(0u16));
        let mut r = Router::new();
        r.add("/status", Code::GET, "status")
            .add("/v1/temp", Code::GET, "old-temp")
            .add("/v1/temp", Code::PUT, "old-put")
            .nest("/v1", api);
        assert_eq!(go(&r, Code::GET, "v1/temp"), "temp");
        // Handlers for other methods at the same route survive the merge.
        assert_eq!(go(&r, Code::PUT, "v1/temp"), "old-put");
        assert_eq!(go(&r, Code::GET, "v1"), "api-root");
        assert_eq!(go(&r, Code::GET, "v1/logs/2024/01"), "logs");
        assert_eq!(go(&r, Code::GET, "temp"), "<4.04>");
        assert_eq!(go(&r, Code::GET, "status"), "status");
        match r.resolve(Code::GET, ["v1", "logs", "x"]) {
            Resolution::Found { rest, route, .. } => {
                assert_eq!(rest, 2..3);
                assert_eq!(route.path, "/v1/logs");
                assert_eq!(route.attributes.ct, [0]);
            }
            other => panic!("{:?}", outcome(&other)),
        }
        let paths: Vec<(&str, bool)> = r.routes().map(|i| (i.path, i.prefix)).collect();
        assert_eq!(
            paths,
            vec![
                ("/status", false),
                ("/v1", false),
                ("/v1/temp", false),
                ("/v1/logs", true)
            ]
        );
        assert_eq!(
            r.well_known_core([]).unwrap(),
            "</status>,</v1>,</v1/temp>;rt=\"temperature-c\";obs,</v1/logs>;ct=0"
        );
        assert_eq!(
            r.well_known_core(["href=/v1/*"]).unwrap(),
            "</v1/temp>;rt=\"temperature-c\";obs,</v1/logs>;ct=0"
        );
        assert_eq!(r.attributes("v1/temp").map(|a| a.observable), Some(true));

        // Nesting at the root merges.
        let mut inner = Router::new();
        inner.add("/a/b", Code::GET, "ab");
        let mut outer = Router::new();
        outer.add("/a", Code::GET, "a").nest("/", inner);
        assert_eq!(go(&outer, Code::GET, "a/b"), "ab");
        assert_eq!(go(&outer, Code::GET, "a"), "a");
        // Nested twice deep.
        let mut leaf = Router::new();
        leaf.add("x", Code::GET, "x");
        let mut mid = Router::new();
        mid.nest("/m", leaf);
        let mut top = Router::new();
        top.nest("/t", mid);
        assert_eq!(go(&top, Code::GET, "t/m/x"), "x");
        assert_eq!(top.routes().next().unwrap().path, "/t/m/x");
    }

    /// The RFC 6690 §5 example with the sensor index, in registration order.
    fn rfc6690_sensors() -> Router<&'static str> {
        let mut r = Router::new();
        r.add("/sensors", Code::GET, "index")
            .set_attributes(
                "/sensors",
                ResourceAttributes::new()
                    .ct(ContentFormat::LINK_FORMAT)
                    .title("Sensor Index"),
            )
            .add("/sensors/temp", Code::GET, "temp")
            .set_attributes(
                "/sensors/temp",
                ResourceAttributes::new()
                    .rt("temperature-c")
                    .interface("sensor")
                    .observable(),
            )
            .add("/sensors/light", Code::GET, "light")
            .set_attributes(
                "/sensors/light",
                ResourceAttributes::new()
                    .rt("light-lux")
                    .rt("core.sen-light")
                    .interface("sensor"),
            )
            .add("/firmware/v2.1", Code::GET, "firmware")
            .set_attributes(
                "/firmware/v2.1",
                ResourceAttributes::new().rt("firmware").sz(262_144),
            );
        r
    }

    #[test]
    fn rfc6690_two_sensors_document() {
        let mut r = Router::new();
        let sensor = ResourceAttributes::new().interface("sensor");
        r.add("/sensors/temp", Code::GET, "t")
            .set_attributes("/sensors/temp", sensor.clone())
            .add("/sensors/light", Code::GET, "l")
            .set_attributes("/sensors/light", sensor);
        assert_eq!(
            r.well_known_core([]).unwrap(),
            "</sensors/temp>;if=\"sensor\",</sensors/light>;if=\"sensor\""
        );
        // The hierarchical example: only the index is listed at the top.
        let mut r = Router::new();
        r.add("/sensors", Code::GET, "index")
            .set_attributes("/sensors", ResourceAttributes::new().ct(40u16));
        assert_eq!(r.well_known_core([]).unwrap(), "</sensors>;ct=40");
    }

    #[test]
    fn rfc6690_listing_and_filters() {
        let r = rfc6690_sensors();
        let all = r.well_known_core([]).unwrap();
        assert_eq!(
            all,
            "</sensors>;ct=40;title=\"Sensor Index\",\
             </sensors/temp>;rt=\"temperature-c\";if=\"sensor\";obs,\
             </sensors/light>;rt=\"light-lux core.sen-light\";if=\"sensor\",\
             </firmware/v2.1>;rt=\"firmware\";sz=262144"
        );
        // The document parses back to the links we list.
        assert_eq!(link_format::parse(&all).unwrap(), r.links());

        let q = |queries: &[&str]| r.well_known_core(queries.iter().copied()).unwrap();
        assert_eq!(
            q(&["rt=light-lux"]),
            "</sensors/light>;rt=\"light-lux core.sen-light\";if=\"sensor\""
        );
        assert_eq!(q(&["rt=core.sen-light"]), q(&["rt=light-lux"]));
        assert_eq!(
            q(&["rt=temp*"]),
            "</sensors/temp>;rt=\"temperature-c\";if=\"sensor\";obs"
        );
        assert_eq!(
            q(&["rt=firmware"]),
            "</firmware/v2.1>;rt=\"firmware\";sz=262144"
        );
        assert_eq!(
            q(&["href=/sensors/*"]),
            "</sensors/temp>;rt=\"temperature-c\";if=\"sensor\";obs,\
             </sensors/light>;rt=\"light-lux core.sen-light\";if=\"sensor\""
        );
        assert_eq!(
            q(&["href=/sensors"]),
            "</sensors>;ct=40;title=\"Sensor Index\""
        );
        assert_eq!(q(&["href=/sensors*"]).matches("</sensors").count(), 3);
        assert_eq!(q(&["if=sensor"]), q(&["href=/sensors/*"]));
        let observable = "</sensors/temp>;rt=\"temperature-c\";if=\"sensor\";obs";
        assert_eq!(q(&["obs"]), observable);
        assert_eq!(q(&["obs=*"]), observable);
        assert_eq!(q(&["ct=40"]), "</sensors>;ct=40;title=\"Sensor Index\"");
        assert_eq!(q(&["ct=4"]), "");
        assert_eq!(q(&["title=Sensor*"]), q(&["ct=40"]));
        assert_eq!(q(&["sz=*"]), q(&["rt=firmware"]));
        // Filters combine with AND.
        assert_eq!(q(&["if=sensor", "obs"]), observable);
        assert_eq!(q(&["if=sensor", "rt=firmware"]), "");
        // A whole value must match a whole word.
        assert_eq!(q(&["rt=light"]), "");
        assert_eq!(q(&["rt=temperature"]), "");
        // Unknown names match nothing; empty queries are ignored.
        assert_eq!(q(&["foo=*"]), "");
        assert_eq!(q(&[""]), all);
        assert_eq!(q(&["href"]), all);
    }

    #[test]
    fn malformed_filters_are_errors() {
        let r = rfc6690_sensors();
        assert_eq!(
            r.well_known_core(["=x"]),
            Err(LinkFormatError::FilterEmptyName)
        );
        assert_eq!(
            r.well_known_core(["rt=firmware", "="]),
            Err(LinkFormatError::FilterEmptyName)
        );
        let mut req = Options::new();
        req.push_uri_query("=oops");
        let rsp = r.well_known_core_response(&req);
        assert_eq!(rsp.code, Code::BAD_REQUEST);
        assert!(!rsp.payload.is_empty());
        assert_eq!(rsp.options.content_format(), None);

        let mut req = Options::new();
        req.push_uri_query("rt=firmware");
        let rsp = r.well_known_core_response(&req);
        assert_eq!(rsp.code, Code::CONTENT);
        assert_eq!(
            rsp.options.content_format(),
            Some(ContentFormat::LINK_FORMAT)
        );
        assert_eq!(
            &rsp.payload[..],
            b"</firmware/v2.1>;rt=\"firmware\";sz=262144"
        );
    }

    #[test]
    fn hidden_and_attribute_only_resources() {
        let mut r = Router::new();
        r.add("/public", Code::GET, "public")
            .add("/secret", Code::GET, "secret")
            .set_attributes("/secret", ResourceAttributes::new().rt("x").hidden())
            .add_prefix("/files", Code::GET, "files")
            .set_attributes("/files/readme", ResourceAttributes::new().title("Read me"))
            .add("/quiet", Code::GET, "quiet")
            .set_attributes("/quiet", ResourceAttributes::new().hidden());
        assert_eq!(
            r.well_known_core([]).unwrap(),
            "</public>,</files>,</files/readme>;title=\"Read me\""
        );
        assert_eq!(r.well_known_core(["rt=x"]).unwrap(), "");
        // Hidden routes are still served.
        assert_eq!(go(&r, Code::GET, "secret"), "secret");
        assert_eq!(go(&r, Code::GET, "files/readme"), "files");
        // Hidden attributes on a nested router stay hidden under the prefix.
        let mut outer = Router::new();
        outer.nest("/n", r);
        assert_eq!(
            outer.well_known_core([]).unwrap(),
            "</n/public>,</n/files>,</n/files/readme>;title=\"Read me\""
        );
    }

    #[test]
    fn targets_are_percent_encoded_and_href_matches_either_form() {
        let mut r = Router::new();
        r.add("/a b/ü", Code::GET, "odd")
            .add("/", Code::GET, "root");
        assert_eq!(r.well_known_core([]).unwrap(), "</>,</a%20b/%C3%BC>");
        assert_eq!(
            r.well_known_core(["href=/a b/ü"]).unwrap(),
            "</a%20b/%C3%BC>"
        );
        assert_eq!(
            r.well_known_core(["href=/a%20b/%C3%BC"]).unwrap(),
            "</a%20b/%C3%BC>"
        );
        assert_eq!(r.well_known_core(["href=/"]).unwrap(), "</>");
        assert_eq!(go(&r, Code::GET, "a b/ü"), "odd");
    }

    #[test]
    fn attributes_to_link() {
        let attrs = ResourceAttributes::new()
            .rt("a")
            .rt("b")
            .interface("core.s")
            .ct(0u16)
            .ct(ContentFormat::CBOR)
            .sz(7)
            .title("T \"q\"")
            .observable()
            .attr("anchor", "/x")
            .flag("foo")
            .attr("bad name", "dropped")
            .hidden();
        let link = attrs.to_link("/r");
        let mut doc = String::new();
        link_format::write(core::slice::from_ref(&link), &mut doc).unwrap();
        assert_eq!(
            doc,
            "</r>;rt=\"a b\";if=\"core.s\";ct=\"0 60\";sz=7;title=\"T \\\"q\\\"\";obs;anchor=\"/x\";foo"
        );
        // Several ct codes are matched one by one.
        let mut r = Router::new();
        r.add("/r", Code::GET, "r")
            .set_attributes("/r", attrs.clone());
        r.set_attributes(
            "/r",
            ResourceAttributes {
                hidden: false,
                ..attrs
            },
        );
        assert_eq!(r.well_known_core(["ct=60"]).unwrap().len(), doc.len());
        assert_eq!(r.well_known_core(["ct=0"]).unwrap().len(), doc.len());
        assert_eq!(r.well_known_core(["ct=6*"]).unwrap().len(), doc.len());
        assert_eq!(r.well_known_core(["ct=6"]).unwrap(), "");
        assert_eq!(r.well_known_core(["ct=*"]).unwrap().len(), doc.len());
    }

    #[test]
    fn routes_and_map_handlers() {
        let mut r = Router::new();
        r.add("/a", Code::GET, 1)
            .add_prefix("/a", Code::POST, 2)
            .add("/b", Code::GET, 3);
        let routes: Vec<RouteInfo<'_>> = r.routes().collect();
        assert_eq!(routes.len(), 3);
        assert_eq!((routes[0].path, routes[0].prefix), ("/a", false));
        assert_eq!((routes[1].path, routes[1].prefix), ("/a", true));
        assert_eq!(routes[1].methods, &[Code::POST]);
        assert_eq!(routes[2].path, "/b");
        assert_eq!(routes[2].attributes, &ResourceAttributes::default());

        let mapped = r.map_handlers(|n| n * 10);
        match mapped.resolve(Code::POST, ["a", "z"]) {
            Resolution::Found { handler, .. } => assert_eq!(*handler, 20),
            _ => panic!("prefix route lost"),
        }
        match mapped.resolve(Code::GET, ["b"]) {
            Resolution::Found { handler, .. } => assert_eq!(*handler, 30),
            _ => panic!("exact route lost"),
        }
        let debug = alloc::format!("{mapped:?}");
        assert!(
            debug.contains("\"/a\"") && debug.contains("\"/b\""),
            "{debug}"
        );
    }

    #[test]
    fn resolution_is_debug_and_clone_for_any_handler() {
        struct Opaque;
        let mut r = Router::new();
        r.add("/o", Code::GET, Opaque);
        let res = r.resolve(Code::GET, ["o"]);
        let copy = res.clone();
        let text = alloc::format!("{copy:?}");
        assert!(
            text.starts_with("Found { rest: 1..1, route: RouteInfo { path: \"/o\""),
            "{text}"
        );
        assert_eq!(
            alloc::format!("{:?}", r.resolve(Code::GET, ["x"])),
            "NotFound"
        );
    }

    #[test]
    fn fnv1a64_test_vectors() {
        // Published FNV-1a 64 values.
        const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
        assert_eq!(fnv1a64(BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn hashing_etag_sets_a_stable_tag() {
        let req = Options::new();
        let mut rsp = Response::content("22.5 C");
        hashing_etag(&req, &mut rsp);
        assert_eq!(rsp.code, Code::CONTENT);
        let tag = rsp.options.etag().unwrap().to_vec();
        assert_eq!(tag.len(), 8);
        assert_eq!(&rsp.payload[..], b"22.5 C");

        // Same content, same tag; other content or another format, another tag.
        let mut again = Response::content("22.5 C");
        hashing_etag(&req, &mut again);
        assert_eq!(again.options.etag(), Some(&tag[..]));
        let mut other = Response::content("22.6 C");
        hashing_etag(&req, &mut other);
        assert_ne!(other.options.etag(), Some(&tag[..]));
        let mut json = Response::content("22.5 C").with_content_format(ContentFormat::JSON);
        hashing_etag(&req, &mut json);
        assert_ne!(json.options.etag(), Some(&tag[..]));
        let mut text = Response::content("22.5 C").with_content_format(ContentFormat::TEXT_PLAIN);
        hashing_etag(&req, &mut text);
        assert_ne!(text.options.etag(), json.options.etag());
    }

    #[test]
    fn hashing_etag_answers_valid() {
        let mut fresh = Response::content("hello")
            .with_content_format(ContentFormat::TEXT_PLAIN)
            .with_max_age(30);
        hashing_etag(&Options::new(), &mut fresh);
        let tag = fresh.options.etag().unwrap().to_vec();

        // The client lists several ETags, one of them current.
        let mut req = Options::new();
        req.push_etag(b"old");
        req.push_etag(&tag);
        let mut rsp = Response::content("hello")
            .with_content_format(ContentFormat::TEXT_PLAIN)
            .with_max_age(30);
        hashing_etag(&req, &mut rsp);
        assert_eq!(rsp.code, Code::VALID);
        assert!(rsp.payload.is_empty());
        assert_eq!(rsp.options.etag(), Some(&tag[..]));
        assert_eq!(rsp.options.etags().count(), 1);
        assert_eq!(rsp.options.max_age(), Some(30));
        assert_eq!(rsp.options.content_format(), None);

        // Only stale ETags: the full response.
        let mut stale = Options::new();
        stale.push_etag(b"old");
        let mut rsp = Response::content("hello");
        hashing_etag(&stale, &mut rsp);
        assert_eq!(rsp.code, Code::CONTENT);
        assert_eq!(&rsp.payload[..], b"hello");

        // An ETag the handler set is kept and compared.
        let mut req = Options::new();
        req.push_etag(b"v7");
        let mut rsp = Response::content("x").with_option(OptionNumber::ETAG, b"v7");
        hashing_etag(&req, &mut rsp);
        assert_eq!(rsp.code, Code::VALID);
        assert_eq!(rsp.options.etag(), Some(&b"v7"[..]));

        // Errors and other codes are left alone.
        let mut err = CoapError::not_found()
            .with_diagnostic("gone")
            .into_response();
        let before = err.clone();
        hashing_etag(&req, &mut err);
        assert_eq!(err, before);
        let mut changed = Response::new(Code::CHANGED).with_payload("ok");
        hashing_etag(&req, &mut changed);
        assert_eq!(changed.options.etag(), None);
    }

    #[test]
    fn coap_error_responses() {
        let cases: &[(CoapError, Code)] = &[
            (CoapError::bad_request("no"), Code::BAD_REQUEST),
            (CoapError::unauthorized(), Code::UNAUTHORIZED),
            (CoapError::bad_option("x"), Code::BAD_OPTION),
            (CoapError::forbidden(), Code::FORBIDDEN),
            (CoapError::not_found(), Code::NOT_FOUND),
            (CoapError::method_not_allowed(), Code::METHOD_NOT_ALLOWED),
            (CoapError::not_acceptable(), Code::NOT_ACCEPTABLE),
            (CoapError::precondition_failed(), Code::PRECONDITION_FAILED),
            (
                CoapError::request_entity_too_large(),
                Code::REQUEST_ENTITY_TOO_LARGE,
            ),
            (
                CoapError::unsupported_content_format(),
                Code::UNSUPPORTED_CONTENT_FORMAT,
            ),
            (CoapError::internal("boom"), Code::INTERNAL_SERVER_ERROR),
            (CoapError::not_implemented(), Code::NOT_IMPLEMENTED),
            (CoapError::service_unavailable(), Code::SERVICE_UNAVAILABLE),
            (CoapError::from(Code::CONFLICT), Code::CONFLICT),
        ];
        for (err, code) in cases {
            assert_eq!(err.code, *code);
            let rsp = err.clone().into_response();
            assert_eq!(rsp.code, *code);
            assert_eq!(
                rsp.payload,
                err.diagnostic.clone().unwrap_or_default().into_bytes()
            );
            // A diagnostic payload carries no Content-Format (RFC 7252 §5.5.2).
            assert!(rsp.options.is_empty());
        }
        let rsp: Response = CoapError::bad_request("rt filter empty").into();
        assert_eq!(&rsp.payload[..], b"rt filter empty");
        assert_eq!(
            CoapError::not_found()
                .with_diagnostic("no such sensor")
                .to_string(),
            "4.04 Not Found: no such sensor"
        );
        assert_eq!(
            CoapError::method_not_allowed().to_string(),
            "4.05 Method Not Allowed"
        );
        let e = CoapError::from(LinkFormatError::FilterEmptyName);
        assert_eq!(e.code, Code::BAD_REQUEST);
        assert_eq!(
            e.diagnostic.as_deref(),
            Some("filter query has an empty name")
        );
        assert!(CoapError::new(Code::NOT_FOUND)
            .with_diagnostic("")
            .into_response()
            .payload
            .is_empty());
    }

    /// A route in the reference model: its segments, exact or prefix, and its methods
    /// (`None` = any).
    type ModelRoute = (Vec<String>, bool, Option<u8>);

    /// A straightforward reading of the routing rules, to check the tree against.
    fn model(routes: &[ModelRoute], method: u8, path: &[String]) -> Result<usize, &'static str> {
        // Later registrations replace earlier ones for the same route and method.
        let find = |prefix: bool, route_path: &[String]| {
            let here: Vec<usize> = (0..routes.len())
                .filter(|&i| routes[i].1 == prefix && routes[i].0 == route_path)
                .collect();
            if here.is_empty() {
                return None;
            }
            let specific = here.iter().rev().find(|&&i| routes[i].2 == Some(method));
            let any = here.iter().rev().find(|&&i| routes[i].2.is_none());
            Some(specific.or(any).copied())
        };
        if let Some(found) = find(false, path) {
            return found.ok_or("4.05");
        }
        if path.len() == 2 && path[0] == ".well-known" && path[1] == "core" {
            return Err(if method == 1 { "wkc" } else { "4.05" });
        }
        for depth in (0..=path.len()).rev() {
            if let Some(found) = find(true, &path[..depth]) {
                return found.ok_or("4.05");
            }
        }
        Err("4.04")
    }

    fn arb_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string()),
            Just(".well-known".to_string()),
            Just("core".to_string()),
        ]
    }

    fn arb_route() -> impl Strategy<Value = ModelRoute> {
        (
            proptest::collection::vec(arb_segment(), 0..4),
            any::<bool>(),
            prop_oneof![Just(None), (1u8..4).prop_map(Some)],
        )
    }

    proptest! {
        #[test]
        fn resolve_agrees_with_the_model(
            routes in proptest::collection::vec(arb_route(), 0..12),
            method in 1u8..4,
            path in proptest::collection::vec(arb_segment(), 0..5),
        ) {
            let mut r: Router<usize> = Router::new();
            for (i, (segs, prefix, m)) in routes.iter().enumerate() {
                let p = segs.join("/");
                match (prefix, m) {
                    (false, Some(m)) => r.add(&p, Code::from_u8(*m), i),
                    (false, None) => r.add_any(&p, i),
                    (true, Some(m)) => r.add_prefix(&p, Code::from_u8(*m), i),
                    (true, None) => r.add_prefix_any(&p, i),
                };
            }
            let want = model(&routes, method, &path);
            let got = r.resolve(Code::from_u8(method), path.iter().map(String::as_str));
            match (got, want) {
                (Resolution::Found { handler, rest, route }, Ok(i)) => {
                    prop_assert_eq!(*handler, i);
                    let (segs, prefix, _) = &routes[i];
                    prop_assert_eq!(rest.clone(), segs.len()..path.len());
                    prop_assert_eq!(route.prefix, *prefix);
                    prop_assert_eq!(route.path, alloc::format!("/{}", segs.join("/")));
                }
                (Resolution::WellKnownCore, Err("wkc")) => {}
                (Resolution::NotFound, Err("4.04")) => {}
                (Resolution::MethodNotAllowed, Err("4.05")) => {}
                (got, want) => {
                    prop_assert!(false, "got {:?}, want {:?}", got, want);
                }
            }

            // The listing parses back and names every route once.
            let doc = r.well_known_core([]).unwrap();
            let links = link_format::parse(&doc).unwrap();
            let mut want_targets: Vec<String> = routes
                .iter()
                .map(|(segs, _, _)| alloc::format!("/{}", segs.join("/")))
                .collect();
            want_targets.sort();
            want_targets.dedup();
            let mut targets: Vec<String> = links.into_iter().map(|l| l.target).collect();
            targets.sort();
            prop_assert_eq!(targets, want_targets);
        }

        #[test]
        fn resolve_and_listing_never_panic(
            paths in proptest::collection::vec(".{0,12}", 0..6),
            request in proptest::collection::vec(".{0,6}", 0..6),
            queries in proptest::collection::vec(".{0,10}", 0..3),
            method in any::<u8>(),
        ) {
            let mut r = Router::new();
            for (i, p) in paths.iter().enumerate() {
                r.add(p, Code::GET, i).add_prefix(p, Code::POST, i);
                r.set_attributes(p, ResourceAttributes::new().rt(p.clone()).attr(p.clone(), p.clone()));
            }
            let _ = r.resolve(Code::from_u8(method), request.iter().map(String::as_str));
            if let Ok(doc) = r.well_known_core(queries.iter().map(String::as_str)) {
                prop_assert!(link_format::parse(&doc).is_ok(), "{}", doc);
            }
        }
    }
}
