//! `coap://` and `coaps://` URIs (RFC 7252 §6) and their mapping to and from the Uri-Host,
//! Uri-Port, Uri-Path and Uri-Query options.
//!
//! [`CoapUri::parse`] implements "Decomposing URIs into Options" (§6.4): it checks the scheme,
//! rejects fragments, resolves `.` and `..` segments (RFC 3986 §5.2.4) and percent-decodes every
//! component exactly once, so a [`CoapUri`] holds the values the options will carry.
//! [`CoapUri::to_options`] writes them into an [`Options`]; [`CoapUri::from_options`] implements
//! "Composing URIs from Options" (§6.5); `Display` writes the URI in the normal form of §6.3.
//!
//! ```
//! use coap_proto::uri::{CoapUri, HostOption};
//! use coap_proto::msg::Options;
//!
//! let uri = CoapUri::parse("coap://EXAMPLE.com/%7Esensors/temp.xml?unit=C").unwrap();
//! assert_eq!(uri.path(), ["~sensors", "temp.xml"]);
//! let mut opts = Options::new();
//! uri.to_options(&mut opts, HostOption::default());
//! assert_eq!(opts.uri_host(), Some("example.com"));
//! assert_eq!(uri.to_string(), "coap://example.com/~sensors/temp.xml?unit=C");
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use core::str::FromStr;

use crate::msg::{OptionNumber, Options};

/// The longest Uri-Host, Uri-Path or Uri-Query value in bytes (RFC 7252 §5.10, Table 4).
pub const MAX_COMPONENT_LEN: usize = 255;

/// The default port of the `coap` scheme (RFC 7252 §6.1).
pub const COAP_PORT: u16 = 5683;
/// The default port of the `coaps` scheme (RFC 7252 §6.2).
pub const COAPS_PORT: u16 = 5684;

/// A URI scheme this crate speaks.
///
/// `coap+tcp`, `coaps+tcp`, `coap+ws` and `coaps+ws` (RFC 8323) are not supported yet: parsing
/// them gives [`UriError::UnsupportedScheme`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `coap`: CoAP over UDP, default port 5683.
    Coap,
    /// `coaps`: CoAP over DTLS, default port 5684.
    Coaps,
}

impl Scheme {
    /// The port assumed when a URI gives none.
    pub const fn default_port(self) -> u16 {
        match self {
            Scheme::Coap => COAP_PORT,
            Scheme::Coaps => COAPS_PORT,
        }
    }

    /// The scheme name in lowercase, without the colon.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Coap => "coap",
            Scheme::Coaps => "coaps",
        }
    }

    /// Whether requests under this scheme are secured (DTLS).
    pub const fn is_secure(self) -> bool {
        matches!(self, Scheme::Coaps)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host of a [`CoapUri`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IP literal (`[2001:db8::1]`) or IPv4 address (`192.0.2.1`).
    Ip {
        /// The address.
        addr: IpAddr,
        /// The zone of a scoped IPv6 address, such as `eth0` in `[fe80::1%25eth0]`
        /// (RFC 6874); it has meaning only on this host and is never sent in a Uri-Host.
        zone: Option<String>,
    },
    /// A registered name, percent-decoded and in ASCII lowercase (RFC 7252 §6.4 step 5).
    Name(String),
}

impl Host {
    /// An IP host without zone. IPv4-mapped IPv6 addresses are kept as IPv6.
    pub fn ip(addr: IpAddr) -> Host {
        Host::Ip { addr, zone: None }
    }

    /// A registered-name host in normal form: ASCII letters lowercased (host names are case
    /// insensitive, §6.3); a name that is an IPv4 address in dotted form becomes [`Host::Ip`].
    ///
    /// Fails if `name` is empty or longer than [`MAX_COMPONENT_LEN`] bytes, and with
    /// [`UriError::BadHost`] if it starts with `[`: in a Uri-Host option such a name could not be
    /// told apart from an IP literal.
    pub fn name(name: &str) -> Result<Host, UriError> {
        if name.is_empty() {
            return Err(UriError::EmptyHost);
        }
        if name.len() > MAX_COMPONENT_LEN {
            return Err(UriError::ComponentTooLong);
        }
        if name.starts_with('[') {
            return Err(UriError::BadHost);
        }
        if let Ok(v4) = Ipv4Addr::from_str(name) {
            return Ok(Host::ip(IpAddr::V4(v4)));
        }
        Ok(Host::Name(name.to_ascii_lowercase()))
    }

    /// Brings a host built by hand into the normal form [`CoapUri`] relies on.
    fn normalize(self) -> Result<Host, UriError> {
        match self {
            Host::Name(name) => Host::name(&name),
            Host::Ip {
                addr: IpAddr::V4(_),
                zone: Some(_),
            } => Err(UriError::BadHost),
            Host::Ip {
                zone: Some(ref z), ..
            } if z.is_empty() || z.len() > MAX_COMPONENT_LEN => Err(UriError::BadHost),
            ip => Ok(ip),
        }
    }

    /// Writes the value a Uri-Host option carries for this host: the name, the dotted IPv4
    /// address or the bracketed IPv6 address (without zone).
    fn write_option_value(&self, out: &mut String) {
        match self {
            Host::Name(name) => out.push_str(name),
            Host::Ip {
                addr: IpAddr::V4(a),
                ..
            } => {
                let _ = write!(out, "{a}");
            }
            Host::Ip {
                addr: IpAddr::V6(a),
                ..
            } => {
                let _ = write!(out, "[{a}]");
            }
        }
    }
}

impl From<IpAddr> for Host {
    fn from(addr: IpAddr) -> Host {
        Host::ip(addr)
    }
}

/// Writes the host as it appears in a URI: names percent-encoded where needed, IPv6 addresses in
/// brackets (RFC 5952 text form) with any zone as `%25zone` (RFC 6874).
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        match self {
            Host::Name(name) => encode_into(name, is_host_char, &mut s),
            Host::Ip {
                addr: IpAddr::V4(a),
                ..
            } => {
                let _ = write!(s, "{a}");
            }
            Host::Ip {
                addr: IpAddr::V6(a),
                zone,
            } => {
                let _ = write!(s, "[{a}");
                if let Some(zone) = zone {
                    s.push_str("%25");
                    encode_into(zone, is_unreserved, &mut s);
                }
                s.push(']');
            }
        }
        f.write_str(&s)
    }
}

/// Which Uri-Host option [`CoapUri::to_options`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HostOption {
    /// Always write Uri-Host, also for IP literals (for example towards a proxy).
    Always,
    /// Write Uri-Host for registered names only. When the request goes to the address the URI
    /// names, an IP literal is the destination address and needs no Uri-Host (§6.4 step 5).
    #[default]
    OmitLiteralAddress,
    /// Never write Uri-Host.
    Never,
}

/// Why a URI or a set of options could not be turned into a [`CoapUri`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriError {
    /// The text is not an absolute URI: it has no `scheme:` (§6.4 step 1).
    NotAbsolute,
    /// The scheme is neither `coap` nor `coaps` (§6.4 step 3); holds it in lowercase.
    UnsupportedScheme(String),
    /// The scheme is not followed by `//` and an authority (§6.1: the host must not be missing).
    MissingAuthority,
    /// The host is empty (§6.1).
    EmptyHost,
    /// The host is not a valid IP literal, IPv4 address or registered name, or has an invalid
    /// zone.
    BadHost,
    /// The authority has user information (`user@host`), which CoAP URIs do not have.
    UserInfo,
    /// The port is not a decimal number up to 65535 (or a Uri-Port is too large).
    BadPort,
    /// The URI has a `#fragment` (§6.4 step 4).
    Fragment,
    /// A `%` is not followed by two hexadecimal digits.
    BadPercentEncoding,
    /// A decoded component (or an option value) is not UTF-8.
    InvalidUtf8,
    /// A character that the URI syntax does not allow where it appears.
    InvalidCharacter(char),
    /// A decoded host, path segment or query argument is longer than [`MAX_COMPONENT_LEN`]
    /// bytes and would not fit its option.
    ComponentTooLong,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriError::NotAbsolute => f.write_str("not an absolute URI (no scheme)"),
            UriError::UnsupportedScheme(s) => write!(f, "unsupported URI scheme {s:?}"),
            UriError::MissingAuthority => f.write_str("URI has no authority (\"//host\")"),
            UriError::EmptyHost => f.write_str("URI host is empty"),
            UriError::BadHost => f.write_str("invalid URI host"),
            UriError::UserInfo => f.write_str("URI has user information, which CoAP does not use"),
            UriError::BadPort => f.write_str("invalid port"),
            UriError::Fragment => f.write_str("CoAP URIs cannot have a fragment"),
            UriError::BadPercentEncoding => f.write_str("'%' not followed by two hex digits"),
            UriError::InvalidUtf8 => f.write_str("decoded URI component is not UTF-8"),
            UriError::InvalidCharacter(c) => write!(f, "character {c:?} not allowed in URI"),
            UriError::ComponentTooLong => {
                write!(f, "URI component longer than {MAX_COMPONENT_LEN} bytes")
            }
        }
    }
}

#[cfg(feature = "std")]
impl core::error::Error for UriError {}

/// An absolute `coap` or `coaps` URI, decomposed into the values of its request options.
///
/// Path segments and query arguments are percent-decoded; the port is always known (the
/// scheme's default when the URI gives none), so `coap://h:5683/` and `coap://h` are equal.
/// Every host, segment and argument fits its option ([`MAX_COMPONENT_LEN`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CoapUri {
    scheme: Scheme,
    host: Host,
    port: u16,
    path: Vec<String>,
    query: Vec<String>,
}

impl CoapUri {
    /// A URI with no path and no query. `port: None` means the scheme's default.
    ///
    /// The host is normalised as by [`Host::name`]; fails for an empty or too long name, or a
    /// zone on an IPv4 address or an empty zone.
    pub fn new(scheme: Scheme, host: Host, port: Option<u16>) -> Result<CoapUri, UriError> {
        Ok(CoapUri {
            scheme,
            host: host.normalize()?,
            port: port.unwrap_or(scheme.default_port()),
            path: Vec::new(),
            query: Vec::new(),
        })
    }

    /// Parses an absolute URI, as in "Decomposing URIs into Options" (RFC 7252 §6.4).
    ///
    /// The scheme and host are case insensitive. `.` and `..` segments are resolved before
    /// percent-decoding (RFC 3986 §5.2.4), so `%2E` stays a literal dot. An empty path and `/`
    /// both give no segments; a trailing slash gives an empty last segment (`/a/` is `["a", ""]`).
    /// The query is split on `&`; empty arguments are kept. Non-ASCII characters are accepted
    /// as if percent-encoded in UTF-8.
    pub fn parse(text: &str) -> Result<CoapUri, UriError> {
        let (scheme, rest) = split_scheme(text)?;
        // §6.4 step 4.
        if rest.contains('#') {
            return Err(UriError::Fragment);
        }
        let rest = rest.strip_prefix("//").ok_or(UriError::MissingAuthority)?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(authority_end);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (host, port) = parse_authority(authority)?;
        let mut uri = CoapUri::new(scheme, host, port)?;
        uri.path = parse_path(path)?;
        if let Some(query) = query {
            for arg in query.split('&') {
                check_chars(arg, |b| is_pchar(b) || b == b'/' || b == b'?')?;
                uri.query.push(decode_component(arg)?);
            }
        }
        Ok(uri)
    }

    /// Builds the URI of a request from its options, as in "Composing URIs from Options"
    /// (RFC 7252 §6.5).
    ///
    /// `scheme` says whether the request came over DTLS; `destination` is the address the
    /// request was sent to, used when Uri-Host or Uri-Port is absent. An IPv4-mapped IPv6
    /// destination (as dual-stack sockets report) is taken as the IPv4 address. A single empty
    /// Uri-Path composes to `/` and so gives no segments.
    pub fn from_options(
        opts: &Options,
        scheme: Scheme,
        destination: SocketAddr,
    ) -> Result<CoapUri, UriError> {
        let host = match opts.get(OptionNumber::URI_HOST) {
            Some(value) => {
                let value = core::str::from_utf8(value).map_err(|_| UriError::InvalidUtf8)?;
                parse_host_option(value)?
            }
            None => Host::ip(unmap(destination.ip())),
        };
        let port = match opts.get(OptionNumber::URI_PORT) {
            Some(value) => Some(decode_port_option(value)?),
            None => Some(destination.port()),
        };
        let mut uri = CoapUri::new(scheme, host, port)?;
        for value in opts.get_all(OptionNumber::URI_PATH) {
            uri.path.push(option_string(value)?);
        }
        if uri.path.len() == 1 && uri.path.first().is_some_and(String::is_empty) {
            uri.path.clear();
        }
        for value in opts.get_all(OptionNumber::URI_QUERY) {
            uri.query.push(option_string(value)?);
        }
        Ok(uri)
    }

    /// Writes the URI into `opts` as Uri-Host, Uri-Port, Uri-Path and Uri-Query options,
    /// replacing any such options already there (other options are left alone).
    ///
    /// Meant for a request sent to the address the URI names. Uri-Host follows `host_option`;
    /// Uri-Port is written only when the port differs from the scheme's default. (§6.4 step 7
    /// compares with the destination port instead; when the request goes elsewhere, such as to a
    /// proxy, use [`CoapUri::to_options_for`].)
    pub fn to_options(&self, opts: &mut Options, host_option: HostOption) {
        let with_host = match host_option {
            HostOption::Always => true,
            HostOption::OmitLiteralAddress => matches!(self.host, Host::Name(_)),
            HostOption::Never => false,
        };
        let with_port = self.port != self.scheme.default_port();
        self.write_options(opts, with_host, with_port);
    }

    /// Writes the options exactly as §6.4 steps 5 to 9 say for a request sent to
    /// `destination`: Uri-Host unless the host is the destination's IP address, Uri-Port unless
    /// the port is the destination's port. Existing Uri-* options are replaced.
    pub fn to_options_for(&self, opts: &mut Options, destination: SocketAddr) {
        let with_host = match &self.host {
            Host::Ip { addr, .. } => unmap(*addr) != unmap(destination.ip()),
            Host::Name(_) => true,
        };
        let with_port = self.port != destination.port();
        self.write_options(opts, with_host, with_port);
    }

    fn write_options(&self, opts: &mut Options, with_host: bool, with_port: bool) {
        // A new request's options are empty: nothing to replace (each removal is a search).
        if !opts.is_empty() {
            for n in [
                OptionNumber::URI_HOST,
                OptionNumber::URI_PORT,
                OptionNumber::URI_PATH,
                OptionNumber::URI_QUERY,
            ] {
                opts.remove(n);
            }
        }
        if with_host {
            let mut value = String::new();
            self.host.write_option_value(&mut value);
            opts.push_str(OptionNumber::URI_HOST, &value);
        }
        if with_port {
            opts.push_uint(OptionNumber::URI_PORT, u32::from(self.port));
        }
        for segment in &self.path {
            opts.push_str(OptionNumber::URI_PATH, segment);
        }
        for arg in &self.query {
            opts.push_str(OptionNumber::URI_QUERY, arg);
        }
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port: the one the URI gives, or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The decoded path segments (the Uri-Path values); empty for `/`.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// The decoded query arguments (the Uri-Query values).
    pub fn query(&self) -> &[String] {
        &self.query
    }

    /// Appends a path segment (not percent-encoded: `"a/b"` is one segment holding a slash).
    ///
    /// A path of one empty segment is written as `/`, which reads back as no segments.
    pub fn push_path(&mut self, segment: &str) -> Result<(), UriError> {
        if segment.len() > MAX_COMPONENT_LEN {
            return Err(UriError::ComponentTooLong);
        }
        self.path.push(segment.into());
        Ok(())
    }

    /// Appends a query argument (not percent-encoded: `"a&b"` is one argument).
    pub fn push_query(&mut self, arg: &str) -> Result<(), UriError> {
        if arg.len() > MAX_COMPONENT_LEN {
            return Err(UriError::ComponentTooLong);
        }
        self.query.push(arg.into());
        Ok(())
    }

    /// The path as it appears in the URI, percent-encoded: `/` when there are no segments,
    /// else `/` before each segment (`"/a/b"`).
    pub fn path_string(&self) -> String {
        let mut out = String::new();
        self.write_path(&mut out);
        out
    }

    fn write_path(&self, out: &mut String) {
        if self.path.is_empty() {
            out.push('/');
        }
        for segment in &self.path {
            out.push('/');
            // A segment that is exactly "." or ".." is encoded so that parsing does not
            // resolve it away (RFC 3986 §5.2.4 works on the encoded text).
            if segment == "." || segment == ".." {
                for _ in 0..segment.len() {
                    out.push_str("%2E");
                }
            } else {
                percent_encode_segment(segment, out);
            }
        }
    }

    /// The socket address to send to when the host is an IP address (no name resolution
    /// needed); `None` for a registered name. A numeric zone becomes the IPv6 scope id; a named
    /// zone (such as `eth0`) also gives `None`, as mapping it to an interface index needs the
    /// operating system.
    pub fn socket_addr_hint(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Name(_) => None,
            Host::Ip { addr, zone: None } => Some(SocketAddr::new(*addr, self.port)),
            Host::Ip {
                addr: IpAddr::V6(a),
                zone: Some(zone),
            } => {
                let scope = zone.parse::<u32>().ok()?;
                Some(SocketAddr::V6(SocketAddrV6::new(*a, self.port, 0, scope)))
            }
            Host::Ip { .. } => None,
        }
    }
}

impl FromStr for CoapUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<CoapUri, UriError> {
        CoapUri::parse(s)
    }
}

/// Writes the URI in normal form (RFC 7252 §6.3, §6.5): lowercase scheme and host, no port when
/// it is the default, `/` for an empty path, and percent-encoding (uppercase hex) exactly where
/// §6.5 steps 6 and 8 require it.
impl fmt::Display for CoapUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        let _ = write!(s, "{}://{}", self.scheme, self.host);
        if self.port != self.scheme.default_port() {
            let _ = write!(s, ":{}", self.port);
        }
        self.write_path(&mut s);
        for (i, arg) in self.query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            percent_encode_query(arg, &mut s);
        }
        f.write_str(&s)
    }
}

/// Appends `segment` percent-encoded for a path segment: every byte except unreserved
/// characters, sub-delims, `:` and `@` becomes `%XX` (RFC 7252 §6.5 step 6).
pub fn percent_encode_segment(segment: &str, out: &mut String) {
    encode_into(segment, is_pchar_literal, out);
}

/// Appends `arg` percent-encoded for a query argument: as for a path segment, but `/` and `?`
/// stay and `&` is encoded (RFC 7252 §6.5 step 8).
pub fn percent_encode_query(arg: &str, out: &mut String) {
    encode_into(
        arg,
        |b| (is_pchar_literal(b) && b != b'&') || b == b'/' || b == b'?',
        out,
    );
}

/// Decodes every `%XX` in `s` and checks that the result is UTF-8.
pub fn percent_decode(s: &str) -> Result<String, UriError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex_value(*c));
            let lo = bytes.get(i + 2).and_then(|c| hex_value(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(UriError::BadPercentEncoding);
            };
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError::InvalidUtf8)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn encode_into(s: &str, keep: impl Fn(u8) -> bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for c in s.chars() {
        if c.is_ascii() && keep(c as u8) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `sub-delims`.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Characters of a reg-name that need no encoding.
fn is_host_char(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b)
}

/// Characters of a path segment that need no encoding (RFC 3986 `pchar` without `%`).
fn is_pchar_literal(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@'
}

/// ASCII characters allowed in an encoded path segment: `pchar`, with `%` of pct-encoded.
fn is_pchar(b: u8) -> bool {
    is_pchar_literal(b) || b == b'%'
}

/// Checks that every ASCII character of `s` passes `allowed`; non-ASCII characters are
/// accepted (they stand for their UTF-8 percent-encoding).
fn check_chars(s: &str, allowed: impl Fn(u8) -> bool) -> Result<(), UriError> {
    match s.chars().find(|c| c.is_ascii() && !allowed(*c as u8)) {
        Some(c) => Err(UriError::InvalidCharacter(c)),
        None => Ok(()),
    }
}

/// Percent-decodes a path segment or query argument and checks its length.
fn decode_component(s: &str) -> Result<String, UriError> {
    let decoded = percent_decode(s)?;
    if decoded.len() > MAX_COMPONENT_LEN {
        return Err(UriError::ComponentTooLong);
    }
    Ok(decoded)
}

/// Splits off and checks the scheme (§6.4 steps 1 and 3).
fn split_scheme(text: &str) -> Result<(Scheme, &str), UriError> {
    let (name, rest) = text.split_once(':').ok_or(UriError::NotAbsolute)?;
    let mut bytes = name.bytes();
    let valid = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid {
        return Err(UriError::NotAbsolute);
    }
    if name.eq_ignore_ascii_case("coap") {
        Ok((Scheme::Coap, rest))
    } else if name.eq_ignore_ascii_case("coaps") {
        Ok((Scheme::Coaps, rest))
    } else {
        Err(UriError::UnsupportedScheme(name.to_ascii_lowercase()))
    }
}

/// Parses `host [":" port]`.
fn parse_authority(authority: &str) -> Result<(Host, Option<u16>), UriError> {
    if authority.contains('@') {
        return Err(UriError::UserInfo);
    }
    let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
        let (inner, after) = literal.split_once(']').ok_or(UriError::BadHost)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(UriError::BadHost)?),
        };
        (parse_ip_literal(inner)?, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        (parse_reg_name_or_ipv4(host)?, port)
    };
    let port = match port {
        // `coap://h:/` has an empty port, which means the default (§6.1).
        None | Some("") => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<u16, UriError> {
    let mut value: u32 = 0;
    for b in p.bytes() {
        if !b.is_ascii_digit() {
            return Err(UriError::BadPort);
        }
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return Err(UriError::BadPort);
        }
    }
    u16::try_from(value).map_err(|_| UriError::BadPort)
}

/// Parses the inside of `[...]`: an IPv6 address with an optional zone, written `%25zone`
/// (RFC 6874) or, as many tools print it, `%zone`.
fn parse_ip_literal(inner: &str) -> Result<Host, UriError> {
    let (addr, zone) = match inner.split_once('%') {
        Some((a, z)) => (a, Some(z)),
        None => (inner, None),
    };
    let addr = Ipv6Addr::from_str(addr).map_err(|_| UriError::BadHost)?;
    let zone = match zone {
        None => None,
        Some(z) => {
            let zone = match z.strip_prefix("25") {
                // RFC 6874: ZoneID = 1*( unreserved / pct-encoded ) after "%25".
                Some(encoded) if !encoded.is_empty() => {
                    check_chars(encoded, |b| is_unreserved(b) || b == b'%')
                        .map_err(|_| UriError::BadHost)?;
                    percent_decode(encoded).map_err(|_| UriError::BadHost)?
                }
                // The bare form: `%eth0` (and `%25` alone, zone "25").
                _ => {
                    if !z.bytes().all(is_unreserved) {
                        return Err(UriError::BadHost);
                    }
                    z.into()
                }
            };
            if zone.is_empty() {
                return Err(UriError::BadHost);
            }
            Some(zone)
        }
    };
    Ok(Host::Ip {
        addr: IpAddr::V6(addr),
        zone,
    })
}

fn parse_reg_name_or_ipv4(host: &str) -> Result<Host, UriError> {
    if host.is_empty() {
        return Err(UriError::EmptyHost);
    }
    check_chars(host, |b| is_host_char(b) || b == b'%')?;
    // §6.4 step 5 lowercases before decoding; `Host::name` lowercases after it, which also
    // folds letters that were percent-encoded (RFC 3986 §6.2.2.2 makes them equivalent).
    Host::name(&percent_decode(host)?)
}

/// Parses a Uri-Host value (§6.5 step 2): an IP literal in brackets, an IPv4 address or a
/// registered name. The name is taken as it is (already percent-decoded): §6.4 step 5 puts any
/// decoded reg-name into Uri-Host, so characters outside reg-name are accepted here too and
/// percent-encoded when the URI is written.
fn parse_host_option(value: &str) -> Result<Host, UriError> {
    if let Some(literal) = value.strip_prefix('[') {
        let inner = literal.strip_suffix(']').ok_or(UriError::BadHost)?;
        return parse_ip_literal(inner);
    }
    if value.is_empty() {
        return Err(UriError::EmptyHost);
    }
    Host::name(value)
}

fn decode_port_option(value: &[u8]) -> Result<u16, UriError> {
    if value.len() > 2 && value.iter().take(value.len() - 2).any(|b| *b != 0) {
        return Err(UriError::BadPort);
    }
    Ok(value.iter().fold(0u16, |acc, b| (acc << 8) | u16::from(*b)))
}

fn option_string(value: &[u8]) -> Result<String, UriError> {
    let s = core::str::from_utf8(value).map_err(|_| UriError::InvalidUtf8)?;
    if s.len() > MAX_COMPONENT_LEN {
        return Err(UriError::ComponentTooLong);
    }
    Ok(s.into())
}

/// The IPv4 address behind an IPv4-mapped IPv6 address, else the address itself.
fn unmap(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

/// Splits `path` (empty or starting with `/`), resolves dot segments (RFC 3986 §5.2.4) and
/// decodes the segments (§6.4 step 8).
fn parse_path(path: &str) -> Result<Vec<String>, UriError> {
    let Some(path) = path.strip_prefix('/') else {
        // path-abempty: after the authority comes nothing or a '/'.
        return match path.chars().next() {
            None => Ok(Vec::new()),
            Some(c) => Err(UriError::InvalidCharacter(c)),
        };
    };
    let raw: Vec<&str> = path.split('/').collect();
    let last = raw.len().saturating_sub(1);
    let mut kept: Vec<&str> = Vec::with_capacity(raw.len());
    for (i, segment) in raw.iter().enumerate() {
        check_chars(segment, is_pchar)?;
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    kept.pop();
                }
                // A dot segment at the end leaves the path ending in '/'.
                if i == last {
                    kept.push("");
                }
            }
            s => kept.push(s),
        }
    }
    // A path of just "/" has no segments (§6.4 step 8).
    if kept.len() == 1 && kept.first() == Some(&"") {
        kept.clear();
    }
    kept.into_iter().map(decode_component).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn opts_of(uri: &str) -> Options {
        let mut opts = Options::new();
        CoapUri::parse(uri)
            .unwrap()
            .to_options(&mut opts, HostOption::default());
        opts
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).into()).collect()
    }

    fn dest(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rfc7252_section_6_3_equivalent_uris() {
        let a = opts_of("coap://example.com:5683/~sensors/temp.xml");
        let b = opts_of("coap://EXAMPLE.com/%7Esensors/temp.xml");
        let c = opts_of("coap://EXAMPLE.com:/%7esensors/temp.xml");
        assert_eq!(a, b);
        assert_eq!(a, c);
        let listed: Vec<_> = a.iter().collect();
        assert_eq!(
            listed,
            vec![
                (OptionNumber::URI_HOST, &b"example.com"[..]),
                (OptionNumber::URI_PATH, &b"~sensors"[..]),
                (OptionNumber::URI_PATH, &b"temp.xml"[..]),
            ]
        );
        for text in [
            "coap://example.com:5683/~sensors/temp.xml",
            "coap://EXAMPLE.com/%7Esensors/temp.xml",
            "coap://EXAMPLE.com:/%7esensors/temp.xml",
        ] {
            assert_eq!(
                CoapUri::parse(text).unwrap().to_string(),
                "coap://example.com/~sensors/temp.xml"
            );
        }
    }

    #[test]
    fn components() {
        let u = CoapUri::parse("COAPS://Sensor.Example:61616/a/b%20c?x=1&y=%26&&z").unwrap();
        assert_eq!(u.scheme(), Scheme::Coaps);
        assert_eq!(u.host(), &Host::Name("sensor.example".into()));
        assert_eq!(u.port(), 61616);
        assert_eq!(u.path(), strings(&["a", "b c"]));
        assert_eq!(u.query(), strings(&["x=1", "y=&", "", "z"]));
        assert_eq!(u.path_string(), "/a/b%20c");
        assert_eq!(
            u.to_string(),
            "coaps://sensor.example:61616/a/b%20c?x=1&y=%26&&z"
        );
        assert_eq!("coap://h".parse::<CoapUri>().unwrap().path_string(), "/");
    }

    #[test]
    fn empty_path_slash_and_trailing_slash() {
        let none = CoapUri::parse("coap://h").unwrap();
        assert!(none.path().is_empty());
        assert_eq!(CoapUri::parse("coap://h/").unwrap(), none);
        assert_eq!(
            CoapUri::parse("coap://h/a/").unwrap().path(),
            strings(&["a", ""])
        );
        assert_eq!(
            CoapUri::parse("coap://h//").unwrap().path(),
            strings(&["", ""])
        );
        assert_eq!(
            CoapUri::parse("coap://h?q").unwrap().query(),
            strings(&["q"])
        );
        assert_eq!(
            CoapUri::parse("coap://h/?").unwrap().query(),
            strings(&[""])
        );
        assert!(CoapUri::parse("coap://h/").unwrap().query().is_empty());
        let mut opts = Options::new();
        none.to_options(&mut opts, HostOption::Always);
        assert_eq!(opts.uri_path().count(), 0);
    }

    #[test]
    fn dot_segments() {
        let cases: &[(&str, &[&str])] = &[
            ("coap://h/a/./b", &["a", "b"]),
            ("coap://h/a/../b", &["b"]),
            ("coap://h/a/b/.", &["a", "b", ""]),
            ("coap://h/a/b/..", &["a", ""]),
            ("coap://h/a/b/../", &["a", ""]),
            ("coap://h/..", &[]),
            ("coap://h/../../a", &["a"]),
            ("coap://h/a/..", &[]),
            ("coap://h/a/.//b", &["a", "", "b"]),
            ("coap://h/.a/..b/...", &[".a", "..b", "..."]),
            // Encoded dots are not dot segments: resolution happens before decoding.
            ("coap://h/%2E%2E/a/%2e", &["..", "a", "."]),
        ];
        for (text, path) in cases {
            assert_eq!(
                CoapUri::parse(text).unwrap().path(),
                strings(path),
                "{text}"
            );
        }
        let u = CoapUri::parse("coap://h/%2E%2E/./%2E").unwrap();
        assert_eq!(u.to_string(), "coap://h/%2E%2E/%2E");
    }

    #[test]
    fn default_ports() {
        let u = CoapUri::parse("coap://h").unwrap();
        assert_eq!(u.port(), 5683);
        assert_eq!(CoapUri::parse("coaps://h").unwrap().port(), 5684);
        assert_eq!(CoapUri::parse("coap://h:5683").unwrap(), u);
        assert_eq!(CoapUri::parse("coap://h:05683").unwrap(), u);
        let secure_on_5683 = CoapUri::parse("coaps://h:5683").unwrap();
        assert_eq!(secure_on_5683.to_string(), "coaps://h:5683/");
        assert_eq!(
            CoapUri::parse("coaps://h:5684").unwrap().to_string(),
            "coaps://h/"
        );

        let mut opts = Options::new();
        secure_on_5683.to_options(&mut opts, HostOption::default());
        assert_eq!(opts.uri_port(), Some(5683));
        CoapUri::parse("coap://h:5683/x")
            .unwrap()
            .to_options(&mut opts, HostOption::default());
        assert_eq!(opts.uri_port(), None, "default port is left out");
        CoapUri::parse("coap://h:1234/x")
            .unwrap()
            .to_options(&mut opts, HostOption::default());
        assert_eq!(opts.uri_port(), Some(1234));
    }

    #[test]
    fn ip_literals_and_zones() {
        let u = CoapUri::parse("coap://[2001:DB8::1]:61616/x").unwrap();
        assert_eq!(u.host(), &Host::ip("2001:db8::1".parse().unwrap()));
        assert_eq!(u.to_string(), "coap://[2001:db8::1]:61616/x");
        assert_eq!(u.socket_addr_hint(), Some(dest("[2001:db8::1]:61616")));

        let v4 = CoapUri::parse("coap://192.0.2.1/x").unwrap();
        assert_eq!(v4.host(), &Host::ip("192.0.2.1".parse().unwrap()));
        assert_eq!(v4.socket_addr_hint(), Some(dest("192.0.2.1:5683")));

        let rfc6874 = CoapUri::parse("coap://[fe80::1%25eth0]/").unwrap();
        let bare = CoapUri::parse("coap://[fe80::1%eth0]/").unwrap();
        assert_eq!(rfc6874, bare);
        assert_eq!(
            rfc6874.host(),
            &Host::Ip {
                addr: "fe80::1".parse().unwrap(),
                zone: Some("eth0".into())
            }
        );
        assert_eq!(rfc6874.to_string(), "coap://[fe80::1%25eth0]/");
        assert_eq!(rfc6874.socket_addr_hint(), None, "named zone needs the OS");
        let numeric = CoapUri::parse("coap://[fe80::1%253]:9/").unwrap();
        let SocketAddr::V6(sa) = numeric.socket_addr_hint().unwrap() else {
            panic!("not v6")
        };
        assert_eq!((sa.port(), sa.scope_id()), (9, 3));
        // An encoded zone character is decoded (RFC 6874 pct-encoded).
        let enc = CoapUri::parse("coap://[fe80::1%25en%2D1]/").unwrap();
        assert!(matches!(enc.host(), Host::Ip { zone: Some(z), .. } if z == "en-1"));

        for bad in [
            "coap://[fe80::1/",
            "coap://[fe80::1]x/",
            "coap://[fe80::zz]/",
            "coap://[192.0.2.1]/",
            "coap://[v1.x]/",
            "coap://[fe80::1%]/",
            "coap://[fe80::1%25%]/",
            "coap://[fe80::1%e/th]/",
        ] {
            assert_eq!(CoapUri::parse(bad), Err(UriError::BadHost), "{bad}");
        }
        // A literal is written as Uri-Host only when asked.
        let mut opts = Options::new();
        rfc6874.to_options(&mut opts, HostOption::default());
        assert_eq!(opts.uri_host(), None);
        rfc6874.to_options(&mut opts, HostOption::Always);
        assert_eq!(opts.uri_host(), Some("[fe80::1]"), "zone is never sent");
        v4.to_options(&mut opts, HostOption::Always);
        assert_eq!(opts.uri_host(), Some("192.0.2.1"));
        CoapUri::parse("coap://name/")
            .unwrap()
            .to_options(&mut opts, HostOption::Never);
        assert_eq!(opts.uri_host(), None);
    }

    #[test]
    fn host_normalisation() {
        let u = CoapUri::parse("coap://EX%41MPLE.%63om/").unwrap();
        assert_eq!(u.host(), &Host::Name("example.com".into()));
        // A percent-encoded dotted quad is the IPv4 address.
        let u = CoapUri::parse("coap://%31%39%32.0.2.1/").unwrap();
        assert_eq!(u.host(), &Host::ip("192.0.2.1".parse().unwrap()));
        // Characters that are not host characters are encoded when written.
        let u = CoapUri::parse("coap://a%2Fb%C3%A9/").unwrap();
        assert_eq!(u.host(), &Host::Name("a/bé".into()));
        assert_eq!(u.to_string(), "coap://a%2Fb%C3%A9/");
        assert_eq!(CoapUri::parse("coap://%5B::1%5D/"), Err(UriError::BadHost));
        assert_eq!(
            Host::name("Ünï.EXAMPLE").unwrap(),
            Host::Name("Ünï.example".into())
        );
    }

    #[test]
    fn errors() {
        use UriError::*;
        let long = alloc::format!("coap://h/{}", "a".repeat(256));
        let long_host = alloc::format!("coap://{}/", "a".repeat(256));
        let cases: &[(&str, UriError)] = &[
            ("/path", NotAbsolute),
            ("example.com/a", NotAbsolute),
            ("1coap://h", NotAbsolute),
            ("", NotAbsolute),
            ("http://h/", UnsupportedScheme("http".into())),
            ("coap+tcp://h/", UnsupportedScheme("coap+tcp".into())),
            ("COAPS+WS://h/", UnsupportedScheme("coaps+ws".into())),
            ("coap://h/a#frag", Fragment),
            ("coap://h#", Fragment),
            ("coap:/h/a", MissingAuthority),
            ("coap:h", MissingAuthority),
            ("coap:///a", EmptyHost),
            ("coap://:5683/a", EmptyHost),
            ("coap://u@h/", UserInfo),
            ("coap://h:65536/", BadPort),
            ("coap://h:99999999999999999999/", BadPort),
            ("coap://h:-1/", BadPort),
            ("coap://h:1:2/", BadPort),
            ("coap://h/%", BadPercentEncoding),
            ("coap://h/%4", BadPercentEncoding),
            ("coap://h/%zz", BadPercentEncoding),
            ("coap://h/?a=%G0", BadPercentEncoding),
            ("coap://h%/", BadPercentEncoding),
            ("coap://h/%FF", InvalidUtf8),
            ("coap://h/?%C3", InvalidUtf8),
            ("coap://h/a b", InvalidCharacter(' ')),
            ("coap://h/a<b", InvalidCharacter('<')),
            ("coap://h/?a[1]", InvalidCharacter('[')),
            ("coap://h\\x/", InvalidCharacter('\\')),
            (&long, ComponentTooLong),
            (&long_host, ComponentTooLong),
        ];
        for (text, err) in cases {
            assert_eq!(CoapUri::parse(text).as_ref(), Err(err), "{text}");
            // Display says something for every error.
            assert!(!err.to_string().is_empty());
        }
        // 255 bytes fit, and encoded bytes count decoded.
        let ok = alloc::format!("coap://h/{}", "%41".repeat(255));
        assert_eq!(CoapUri::parse(&ok).unwrap().path()[0].len(), 255);
    }

    #[test]
    fn non_ascii_is_accepted_as_utf8() {
        let u = CoapUri::parse("coap://h/température?v=é").unwrap();
        assert_eq!(u.path(), strings(&["température"]));
        assert_eq!(u.to_string(), "coap://h/temp%C3%A9rature?v=%C3%A9");
    }

    #[test]
    fn query_escaping() {
        let mut u =
            CoapUri::new(Scheme::Coap, Host::ip("192.0.2.1".parse().unwrap()), None).unwrap();
        u.push_path("a/b?#").unwrap();
        u.push_query("k=v&w").unwrap();
        u.push_query("p/q?r#s").unwrap();
        assert_eq!(
            u.to_string(),
            "coap://192.0.2.1/a%2Fb%3F%23?k=v%26w&p/q?r%23s"
        );
        assert_eq!(CoapUri::parse(&u.to_string()).unwrap(), u);
        assert_eq!(
            u.push_path(&"x".repeat(256)),
            Err(UriError::ComponentTooLong)
        );
    }

    #[test]
    fn new_validates_host() {
        let v4 = "192.0.2.1".parse().unwrap();
        let bad_zone = Host::Ip {
            addr: v4,
            zone: Some("eth0".into()),
        };
        assert_eq!(
            CoapUri::new(Scheme::Coap, bad_zone, None),
            Err(UriError::BadHost)
        );
        assert_eq!(
            CoapUri::new(Scheme::Coap, Host::Name(String::new()), None),
            Err(UriError::EmptyHost)
        );
        let u = CoapUri::new(Scheme::Coaps, Host::Name("HoSt".into()), Some(1)).unwrap();
        assert_eq!(u.to_string(), "coaps://host:1/");
        let u = CoapUri::new(Scheme::Coap, Host::Name("10.0.0.1".into()), None).unwrap();
        assert_eq!(u.host(), &Host::ip(v4_of("10.0.0.1")));
    }

    fn v4_of(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rfc7252_appendix_b_examples() {
        let d = dest("[2001:db8::2:1]:5683");
        let compose = |opts: &Options, d| {
            CoapUri::from_options(opts, Scheme::Coap, d)
                .unwrap()
                .to_string()
        };

        let mut opts = Options::new();
        assert_eq!(compose(&opts, d), "coap://[2001:db8::2:1]/");

        opts.push_str(OptionNumber::URI_HOST, "example.net");
        assert_eq!(compose(&opts, d), "coap://example.net/");

        opts.push_str(OptionNumber::URI_PATH, ".well-known");
        opts.push_str(OptionNumber::URI_PATH, "core");
        assert_eq!(compose(&opts, d), "coap://example.net/.well-known/core");

        let mut opts = Options::new();
        opts.push_str(OptionNumber::URI_HOST, "xn--18j4d.example");
        opts.push_str(OptionNumber::URI_PATH, "こんにちは");
        assert_eq!(
            compose(&opts, d),
            "coap://xn--18j4d.example/%E3%81%93%E3%82%93%E3%81%AB%E3%81%A1%E3%81%AF"
        );

        let mut opts = Options::new();
        for p in ["", "/", "", ""] {
            opts.push_str(OptionNumber::URI_PATH, p);
        }
        opts.push_str(OptionNumber::URI_QUERY, "//");
        opts.push_str(OptionNumber::URI_QUERY, "?&");
        let uri = CoapUri::from_options(&opts, Scheme::Coap, dest("198.51.100.1:61616")).unwrap();
        // The RFC prints the first argument as `%2F%2F`, but §6.5 step 8 leaves '/' unencoded
        // in a query; both forms decode to the same option.
        assert_eq!(uri.to_string(), "coap://198.51.100.1:61616//%2F//?//&?%26");
        // Decomposing the composed URI gives back the same options.
        let mut back = Options::new();
        CoapUri::parse("coap://198.51.100.1:61616//%2F//?%2F%2F&?%26")
            .unwrap()
            .to_options_for(&mut back, dest("198.51.100.1:61616"));
        assert_eq!(back, opts);
    }

    #[test]
    fn from_options_details() {
        let d = dest("[::ffff:192.0.2.7]:1234");
        let mut opts = Options::new();
        let u = CoapUri::from_options(&opts, Scheme::Coaps, d).unwrap();
        assert_eq!(
            u.to_string(),
            "coaps://192.0.2.7:1234/",
            "mapped address unmapped"
        );

        opts.push_uint(OptionNumber::URI_PORT, 5684);
        opts.push_str(OptionNumber::URI_HOST, "[2001:DB8::1]");
        opts.push_str(OptionNumber::URI_PATH, "");
        let u = CoapUri::from_options(&opts, Scheme::Coaps, d).unwrap();
        assert_eq!(u.to_string(), "coaps://[2001:db8::1]/");
        assert!(u.path().is_empty(), "single empty Uri-Path is '/'");

        let bad = |value: &[u8], n: OptionNumber| {
            let mut o = Options::new();
            o.push(n, value);
            CoapUri::from_options(&o, Scheme::Coap, d)
        };
        assert_eq!(bad(b"", OptionNumber::URI_HOST), Err(UriError::EmptyHost));
        assert_eq!(
            bad(b"a b", OptionNumber::URI_HOST).map(|u| u.to_string()),
            Ok("coap://a%20b:1234/".into())
        );
        assert_eq!(bad(b"[::1", OptionNumber::URI_HOST), Err(UriError::BadHost));
        assert_eq!(
            bad(b"\xff", OptionNumber::URI_HOST),
            Err(UriError::InvalidUtf8)
        );
        assert_eq!(
            bad(b"\xff", OptionNumber::URI_PATH),
            Err(UriError::InvalidUtf8)
        );
        assert_eq!(
            bad(b"\xff", OptionNumber::URI_QUERY),
            Err(UriError::InvalidUtf8)
        );
        assert_eq!(
            bad(&[1, 0, 0], OptionNumber::URI_PORT),
            Err(UriError::BadPort)
        );
        assert_eq!(
            bad(&[0, 0, 0x16, 0x33], OptionNumber::URI_PORT).map(|u| u.port()),
            Ok(5683)
        );
        assert_eq!(
            bad(&[0x80; 256], OptionNumber::URI_PATH),
            Err(UriError::InvalidUtf8)
        );
        assert_eq!(
            bad(&[b'a'; 256], OptionNumber::URI_QUERY),
            Err(UriError::ComponentTooLong)
        );
        assert_eq!(
            bad(b"Host.Example", OptionNumber::URI_HOST).map(|u| u.host().clone()),
            Ok(Host::Name("host.example".into()))
        );
    }

    #[test]
    fn to_options_replaces_uri_options_only() {
        let mut opts = Options::new();
        opts.push_str(OptionNumber::URI_PATH, "old");
        opts.push_str(OptionNumber::URI_QUERY, "old");
        opts.push_uint(OptionNumber::URI_PORT, 9);
        opts.push_uint(OptionNumber::ACCEPT, 50);
        CoapUri::parse("coap://h/new")
            .unwrap()
            .to_options(&mut opts, HostOption::default());
        let listed: Vec<_> = opts.iter().collect();
        assert_eq!(
            listed,
            vec![
                (OptionNumber::URI_HOST, &b"h"[..]),
                (OptionNumber::URI_PATH, &b"new"[..]),
                (OptionNumber::ACCEPT, &[50][..]),
            ]
        );
    }

    #[test]
    fn to_options_for_destination() {
        let u = CoapUri::parse("coap://[2001:db8::1]:5683/x").unwrap();
        let mut opts = Options::new();
        u.to_options_for(&mut opts, dest("[2001:db8::1]:5683"));
        assert_eq!((opts.uri_host(), opts.uri_port()), (None, None));
        // Towards a proxy on another address and port, both are needed, even the default port.
        u.to_options_for(&mut opts, dest("192.0.2.9:7000"));
        assert_eq!(opts.uri_host(), Some("[2001:db8::1]"));
        assert_eq!(opts.uri_port(), Some(5683));
        let named = CoapUri::parse("coap://n:7000/").unwrap();
        named.to_options_for(&mut opts, dest("192.0.2.9:7000"));
        assert_eq!((opts.uri_host(), opts.uri_port()), (Some("n"), None));
        let v4 = CoapUri::parse("coap://192.0.2.9/").unwrap();
        v4.to_options_for(&mut opts, dest("[::ffff:192.0.2.9]:5683"));
        assert_eq!(opts.uri_host(), None);
    }

    #[test]
    fn percent_helpers() {
        let mut s = String::new();
        percent_encode_segment("a b/c:d@e&f=g~é", &mut s);
        assert_eq!(s, "a%20b%2Fc:d@e&f=g~%C3%A9");
        s.clear();
        percent_encode_query("a b/c?d&e=f", &mut s);
        assert_eq!(s, "a%20b/c?d%26e=f");
        assert_eq!(percent_decode("%41%c3%A9").unwrap(), "Aé");
        assert_eq!(percent_decode("%"), Err(UriError::BadPercentEncoding));
    }

    fn arb_host() -> impl Strategy<Value = Host> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| Host::ip(IpAddr::from(b))),
            (
                any::<[u8; 16]>(),
                proptest::option::of("[a-zA-Z0-9%~._-]{1,6}")
            )
                .prop_map(|(b, zone)| Host::Ip {
                    addr: IpAddr::from(b),
                    zone
                }),
            "[a-z0-9.-]{1,20}".prop_map(Host::Name),
            ".{1,10}".prop_map(Host::Name),
        ]
    }

    fn arb_uri() -> impl Strategy<Value = CoapUri> {
        (
            prop_oneof![Just(Scheme::Coap), Just(Scheme::Coaps)],
            arb_host(),
            proptest::option::of(any::<u16>()),
            proptest::collection::vec(
                prop_oneof![".{0,8}", "[./%a]{0,3}", "[:@!$&'()*+,;=?#/]{0,4}"],
                0..5,
            ),
            proptest::collection::vec(prop_oneof![".{0,8}", "[:@!$&'()*+,;=?#/%]{0,4}"], 0..4),
        )
            .prop_filter_map("path of one empty segment", |(s, h, p, path, query)| {
                if path.len() == 1 && path[0].is_empty() {
                    return None;
                }
                let mut u = CoapUri::new(s, h, p).ok()?;
                for seg in &path {
                    u.push_path(seg).ok()?;
                }
                for arg in &query {
                    u.push_query(arg).ok()?;
                }
                Some(u)
            })
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(u in arb_uri()) {
            let text = u.to_string();
            prop_assert_eq!(CoapUri::parse(&text), Ok(u), "{}", text);
        }

        #[test]
        fn options_round_trip(u in arb_uri()) {
            // With the destination the URI names, composing from the options gives the URI
            // back (zones are local and not carried).
            let mut u = u;
            if let Host::Ip { zone, .. } = &mut u.host {
                *zone = None;
            }
            let d = match &u.host {
                Host::Ip { addr, .. } => SocketAddr::new(*addr, u.port()),
                Host::Name(_) => SocketAddr::new(v4_of("2001:db8::99"), u.port()),
            };
            for host_option in [HostOption::Always, HostOption::OmitLiteralAddress] {
                let mut opts = Options::new();
                u.to_options(&mut opts, host_option);
                let mut back = CoapUri::from_options(&opts, u.scheme(), d).unwrap();
                if let (Host::Ip { addr, .. }, Host::Ip { addr: b, .. }) = (&u.host, &mut back.host) {
                    // IPv4-mapped addresses come back as IPv4 when no Uri-Host carried them.
                    if unmap(*addr) == *b { *b = *addr; }
                }
                prop_assert_eq!(&back, &u);
            }
            let mut opts = Options::new();
            u.to_options_for(&mut opts, d);
            prop_assert_eq!(CoapUri::from_options(&opts, u.scheme(), d).map(|b| b.path), Ok(u.path.clone()));
        }

        #[test]
        fn parse_never_panics(text in "(coaps?://)?[\\[\\]%:@/?#a-f0-9.&=-]{0,30}") {
            let _ = CoapUri::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_any_string(text in ".{0,40}") {
            let _ = CoapUri::parse(&text);
        }
    }
}
