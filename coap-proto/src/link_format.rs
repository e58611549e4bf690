//! The CoRE Link Format (RFC 6690): parsing, writing and `/.well-known/core` query filtering.
//!
//! A document is a comma-separated list of links, each a target URI-reference in angle brackets
//! followed by `;`-separated attributes:
//!
//! ```text
//! </sensors/temp>;rt="temperature-c";if="sensor";obs,</sensors/light>;ct=40
//! ```
//!
//! [`parse`] turns such a document into [`Link`] values (attribute values unquoted), [`write()`]
//! turns links back into a document, and [`Filter`] / [`filter_links`] implement the query
//! filtering of RFC 6690 §4.1 that a server applies to `GET /.well-known/core?rt=...`.
//!
//! ```
//! use coap_proto::link_format::{self, Link};
//!
//! let links = link_format::parse("</sensors/temp>;rt=\"temperature-c\";if=\"sensor\";obs").unwrap();
//! assert_eq!(links[0].attr("rt"), Some("temperature-c"));
//! assert!(links[0].has("obs"));
//! let hits = link_format::filter_links(&links, ["rt=temp*"]).unwrap();
//! assert_eq!(hits.len(), 1);
//!
//! let mut doc = String::new();
//! link_format::write(&[Link::new("/light").with("rt", "light-lux").with("ct", "0")], &mut doc)
//!     .unwrap();
//! assert_eq!(doc, "</light>;rt=\"light-lux\";ct=0");
//! ```
//!
//! Parsing runs in time linear in the document and never panics. Memory is linear in the
//! document too; [`parse_with_limit`] additionally caps the number of links, and [`Links`]
//! yields links one at a time for callers that want to stop early.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The number of links [`parse`] accepts before failing with [`LinkFormatError::TooManyLinks`].
///
/// Generous for any `/.well-known/core` document a constrained server serves; use
/// [`parse_with_limit`] for another bound.
pub const DEFAULT_MAX_LINKS: usize = 4096;

/// One link of a CoRE Link Format document.
///
/// Attribute values are stored unquoted and unescaped; a value-less attribute such as `obs` has
/// the value `None`. Attributes keep their document order and may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Link {
    /// The target URI-reference, as written between `<` and `>`.
    pub target: String,
    /// The attributes (link parameters) in document order: name and optional value.
    pub attributes: Vec<(String, Option<String>)>,
}

impl Link {
    /// A link to `target` with no attributes.
    pub fn new(target: impl Into<String>) -> Link {
        Link {
            target: target.into(),
            attributes: Vec::new(),
        }
    }

    /// Adds the attribute `name="value"` (builder style).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Link {
        self.attributes.push((name.into(), Some(value.into())));
        self
    }

    /// Adds the value-less attribute `name`, such as `obs` (builder style).
    #[must_use]
    pub fn with_flag(mut self, name: impl Into<String>) -> Link {
        self.attributes.push((name.into(), None));
        self
    }

    /// The value of the first attribute called `name` (compared ignoring ASCII case, as link
    /// parameter names are case-insensitive), or `None` if there is none.
    ///
    /// A value-less attribute (a flag such as `obs`) gives `Some("")`, so
    /// `link.attr("obs").is_some()` tests for its presence.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs(name).next()
    }

    /// The values of every attribute called `name`, in document order (flags give `""`).
    pub fn attrs<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.attributes
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// Whether an attribute called `name` is present (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.attrs(name).next().is_some()
    }

    /// The space-separated words of every attribute called `name`: for relation-type attributes
    /// (`rel`, `rev`, `rt`, `if`) each word is a separate value (RFC 6690 §3.1, §3.2, §4.1).
    pub fn attr_words<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.attrs(name)
            .flat_map(|v| v.split(' ').filter(|w| !w.is_empty()))
    }

    /// Checks that this link can be written as a document that parses back to it: every
    /// attribute name must be a `parmname` (RFC 5987 `attr-char`s, optionally ending in `*`).
    pub fn validate(&self) -> Result<(), LinkFormatError> {
        for (name, _) in &self.attributes {
            if !is_param_name(name) {
                return Err(LinkFormatError::InvalidAttributeName);
            }
        }
        Ok(())
    }
}

/// Writes the link in link format. Use [`write()`] for output that must parse: this impl does not
/// check attribute names (see [`Link::validate`]).
impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        write_link(self, &mut s);
        f.write_str(&s)
    }
}

/// What went wrong while parsing a link-format document or a filter, or writing links.
///
/// Offsets are byte offsets into the parsed document.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkFormatError {
    /// A link did not start with `<` (this includes an empty link between two commas and a
    /// trailing comma).
    ExpectedTarget {
        /// Where the `<` was expected.
        offset: usize,
    },
    /// The target's closing `>` is missing.
    UnterminatedTarget {
        /// Where the target started.
        offset: usize,
    },
    /// The target contains a character a URI-reference cannot contain (whitespace, a control
    /// character, `<` or `"`).
    InvalidTargetCharacter {
        /// Where the character is.
        offset: usize,
    },
    /// After `;` there is no valid attribute name.
    ExpectedAttributeName {
        /// Where the name was expected.
        offset: usize,
    },
    /// After `=` there is neither a token nor a quoted string.
    ExpectedAttributeValue {
        /// Where the value was expected.
        offset: usize,
    },
    /// A quoted string has no closing `"`.
    UnterminatedQuotedString {
        /// Where the opening `"` is.
        offset: usize,
    },
    /// Something other than `;`, `,` or the end of the document follows a link's target or an
    /// attribute.
    UnexpectedCharacter {
        /// Where the character is.
        offset: usize,
    },
    /// The document holds more links than the limit given to [`parse_with_limit`].
    TooManyLinks {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// An attribute name cannot be written (it is empty or holds characters outside RFC 5987
    /// `attr-char`); see [`Link::validate`].
    InvalidAttributeName,
    /// A filter query is not of the form `name=value`.
    FilterNotNameValue,
    /// A filter query has an empty name.
    FilterEmptyName,
}

impl fmt::Display for LinkFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFormatError::ExpectedTarget { offset } => {
                write!(f, "expected '<' starting a link at byte {offset}")
            }
            LinkFormatError::UnterminatedTarget { offset } => {
                write!(
                    f,
                    "link target starting at byte {offset} has no closing '>'"
                )
            }
            LinkFormatError::InvalidTargetCharacter { offset } => {
                write!(f, "invalid character in link target at byte {offset}")
            }
            LinkFormatError::ExpectedAttributeName { offset } => {
                write!(f, "expected an attribute name at byte {offset}")
            }
            LinkFormatError::ExpectedAttributeValue { offset } => {
                write!(f, "expected an attribute value at byte {offset}")
            }
            LinkFormatError::UnterminatedQuotedString { offset } => {
                write!(
                    f,
                    "quoted string starting at byte {offset} has no closing '\"'"
                )
            }
            LinkFormatError::UnexpectedCharacter { offset } => {
                write!(
                    f,
                    "expected ';', ',' or the end of the document at byte {offset}"
                )
            }
            LinkFormatError::TooManyLinks { limit } => {
                write!(f, "document has more than {limit} links")
            }
            LinkFormatError::InvalidAttributeName => {
                f.write_str("attribute name cannot be written")
            }
            LinkFormatError::FilterNotNameValue => f.write_str("filter query is not name=value"),
            LinkFormatError::FilterEmptyName => f.write_str("filter query has an empty name"),
        }
    }
}

#[cfg(feature = "std")]
impl core::error::Error for LinkFormatError {}

/// Parses a link-format document, accepting up to [`DEFAULT_MAX_LINKS`] links.
///
/// An empty (or all-whitespace) document has no links. Whitespace (space, tab, CR, LF) is
/// accepted around `,`, `;` and `=`, so documents broken over lines as in RFC 6690 §5 parse.
pub fn parse(doc: &str) -> Result<Vec<Link>, LinkFormatError> {
    parse_with_limit(doc, DEFAULT_MAX_LINKS)
}

/// Parses a link-format document, failing with [`LinkFormatError::TooManyLinks`] once it holds
/// more than `max_links` links.
pub fn parse_with_limit(doc: &str, max_links: usize) -> Result<Vec<Link>, LinkFormatError> {
    let mut links = Vec::new();
    for link in Links::new(doc) {
        if links.len() == max_links {
            return Err(LinkFormatError::TooManyLinks { limit: max_links });
        }
        links.push(link?);
    }
    Ok(links)
}

/// An iterator over the links of a document, parsing one link per step.
///
/// After the first error it yields nothing more.
#[derive(Clone, Debug)]
pub struct Links<'a> {
    doc: &'a str,
    pos: usize,
    done: bool,
}

impl<'a> Links<'a> {
    /// An iterator over the links of `doc`.
    pub fn new(doc: &'a str) -> Links<'a> {
        let mut it = Links {
            doc,
            pos: 0,
            done: false,
        };
        it.skip_ws();
        it.done = it.pos >= doc.len();
        it
    }

    fn peek(&self) -> Option<u8> {
        self.doc.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// Takes bytes while `pred` holds and returns them (always on a char boundary, as `pred`
    /// only accepts ASCII).
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        self.doc.get(start..self.pos).unwrap_or("")
    }

    fn parse_link(&mut self) -> Result<Link, LinkFormatError> {
        if self.peek() != Some(b'<') {
            return Err(LinkFormatError::ExpectedTarget { offset: self.pos });
        }
        let open = self.pos;
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                None => return Err(LinkFormatError::UnterminatedTarget { offset: open }),
                Some(b'>') => break,
                Some(b) if b <= b' ' || b == 0x7f || b == b'<' || b == b'"' => {
                    return Err(LinkFormatError::InvalidTargetCharacter { offset: self.pos });
                }
                Some(_) => self.pos += 1,
            }
        }
        let target = self.doc.get(start..self.pos).unwrap_or("").into();
        self.pos += 1;
        let mut link = Link {
            target,
            attributes: Vec::new(),
        };
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(link),
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                    return Ok(link);
                }
                Some(b';') => {
                    self.pos += 1;
                    self.skip_ws();
                    let attr = self.parse_attribute()?;
                    link.attributes.push(attr);
                }
                Some(_) => return Err(LinkFormatError::UnexpectedCharacter { offset: self.pos }),
            }
        }
    }

    fn parse_attribute(&mut self) -> Result<(String, Option<String>), LinkFormatError> {
        let name_at = self.pos;
        let mut name_len = self.take_while(is_attr_char).len();
        if name_len > 0 && self.peek() == Some(b'*') {
            // ext-name-star: `title*` and the like (RFC 6690 §2, RFC 5987).
            self.pos += 1;
            name_len += 1;
        }
        if name_len == 0 {
            return Err(LinkFormatError::ExpectedAttributeName { offset: name_at });
        }
        let name = self.doc.get(name_at..name_at + name_len).unwrap_or("");
        self.skip_ws();
        if self.peek() != Some(b'=') {
            return Ok((name.into(), None));
        }
        self.pos += 1;
        self.skip_ws();
        let value = if self.peek() == Some(b'"') {
            self.parse_quoted()?
        } else {
            let token = self.take_while(is_ptoken_char);
            if token.is_empty() {
                return Err(LinkFormatError::ExpectedAttributeValue { offset: self.pos });
            }
            token.into()
        };
        Ok((name.into(), Some(value)))
    }

    /// Parses a quoted-string (RFC 2616 §2.2) starting at the opening quote: `\` escapes the
    /// character after it.
    fn parse_quoted(&mut self) -> Result<String, LinkFormatError> {
        let open = self.pos;
        self.pos += 1;
        let mut value = String::new();
        let mut chunk_start = self.pos;
        loop {
            match self.peek() {
                None => return Err(LinkFormatError::UnterminatedQuotedString { offset: open }),
                Some(b'"') => {
                    value.push_str(self.doc.get(chunk_start..self.pos).unwrap_or(""));
                    self.pos += 1;
                    return Ok(value);
                }
                Some(b'\\') => {
                    value.push_str(self.doc.get(chunk_start..self.pos).unwrap_or(""));
                    self.pos += 1;
                    // The escaped character may be multi-byte: copy it whole.
                    let Some(c) = self.doc.get(self.pos..).and_then(|r| r.chars().next()) else {
                        return Err(LinkFormatError::UnterminatedQuotedString { offset: open });
                    };
                    value.push(c);
                    self.pos += c.len_utf8();
                    chunk_start = self.pos;
                }
                Some(_) => self.pos += 1,
            }
        }
    }
}

impl Iterator for Links<'_> {
    type Item = Result<Link, LinkFormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.parse_link();
        // Stop after an error or at the end; a ',' followed by nothing is caught as a missing
        // target by the next call.
        self.done = result.is_err() || (self.pos >= self.doc.len() && !self.ended_with_comma());
        Some(result)
    }
}

impl Links<'_> {
    /// Whether the last non-whitespace byte consumed was a separating comma.
    fn ended_with_comma(&self) -> bool {
        self.doc.as_bytes().get(..self.pos).and_then(|b| {
            b.iter()
                .rev()
                .find(|c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        }) == Some(&b',')
    }
}

/// RFC 5987 `attr-char`, the characters of a `parmname`.
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

/// RFC 6690 §2 `ptokenchar`, the characters of an unquoted attribute value.
fn is_ptoken_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b'<'
                | b'='
                | b'>'
                | b'?'
                | b'@'
                | b'['
                | b']'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        )
}

fn is_param_name(name: &str) -> bool {
    let base = name.strip_suffix('*').unwrap_or(name);
    !base.is_empty() && base.bytes().all(is_attr_char)
}

/// Attributes whose values are always written as quoted strings: relation types (`rel`, `rev`,
/// `rt`, `if`, quoted in every example of RFC 6690 §5), `anchor` and `title`, whose grammar
/// requires quotes (RFC 6690 §2).
fn always_quoted(name: &str) -> bool {
    ["rel", "rev", "rt", "if", "anchor", "title"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// Writes `links` as a link-format document into `out`, separated by `,` without whitespace.
///
/// Values of `rel`, `rev`, `rt`, `if`, `anchor` and `title` are always quoted; other values
/// (such as `ct=40` or `sz=262144`) are written bare when they are a valid token and quoted
/// otherwise. Characters a URI-reference cannot hold in a target (whitespace, controls, `<`,
/// `>`, `"`) are percent-encoded. Fails without writing anything if an attribute name is invalid
/// (see [`Link::validate`]). For valid links, [`parse`] of the output gives back `links`.
pub fn write(links: &[Link], out: &mut String) -> Result<(), LinkFormatError> {
    for link in links {
        link.validate()?;
    }
    for (i, link) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_link(link, out);
    }
    Ok(())
}

fn write_link(link: &Link, out: &mut String) {
    out.push('<');
    for c in link.target.chars() {
        if c.is_ascii() && (c <= ' ' || c == '\x7f' || matches!(c, '<' | '>' | '"')) {
            push_percent(out, c as u8);
        } else {
            out.push(c);
        }
    }
    out.push('>');
    for (name, value) in &link.attributes {
        out.push(';');
        out.push_str(name);
        let Some(value) = value else { continue };
        out.push('=');
        let bare = !always_quoted(name) && !value.is_empty() && value.bytes().all(is_ptoken_char);
        if bare {
            out.push_str(value);
        } else {
            out.push('"');
            for c in value.chars() {
                if matches!(c, '"' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
}

fn push_percent(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// One `/.well-known/core` query filter (RFC 6690 §4.1): `name=value` or `name=prefix*`.
///
/// The filter borrows the query text. It takes a Uri-Query option value, which CoAP has already
/// percent-decoded (RFC 7252 §6.4 step 9), so no further decoding is done here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter<'a> {
    name: &'a str,
    value: &'a str,
    prefix: bool,
}

impl<'a> Filter<'a> {
    /// Parses one query argument such as `rt=temperature-c`, `href=/sensors/*` or `ct=*`.
    ///
    /// A trailing `*` makes the value a prefix; `name=*` matches any link that has the attribute.
    pub fn parse(query: &'a str) -> Result<Filter<'a>, LinkFormatError> {
        let (name, value) = query
            .split_once('=')
            .ok_or(LinkFormatError::FilterNotNameValue)?;
        if name.is_empty() {
            return Err(LinkFormatError::FilterEmptyName);
        }
        let (value, prefix) = match value.strip_suffix('*') {
            Some(v) => (v, true),
            None => (value, false),
        };
        Ok(Filter {
            name,
            value,
            prefix,
        })
    }

    /// The attribute name filtered on (`href` means the link target).
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The value to match, without the trailing `*` of a prefix filter.
    pub fn value(&self) -> &'a str {
        self.value
    }

    /// Whether the value is a prefix (the query ended in `*`).
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    fn matches_value(&self, candidate: &str) -> bool {
        if self.prefix {
            candidate.starts_with(self.value)
        } else {
            candidate == self.value
        }
    }

    /// Whether `link` passes this filter.
    ///
    /// `href` compares against the target; any other name compares against each attribute of
    /// that name (a value-less attribute counts as the empty string). For the relation-type
    /// attributes `rel`, `rev`, `rt` and `if`, each space-separated word is a separate value
    /// (RFC 6690 §4.1). Comparison is bitwise; names are compared ignoring ASCII case.
    pub fn matches(&self, link: &Link) -> bool {
        if self.name.eq_ignore_ascii_case("href") {
            return self.matches_value(&link.target);
        }
        let relation = ["rel", "rev", "rt", "if"]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(self.name));
        if relation {
            link.attr_words(self.name).any(|w| self.matches_value(w))
                // An attribute that exists but holds no word still matches an empty prefix.
                || (self.prefix && self.value.is_empty() && link.has(self.name))
        } else {
            link.attrs(self.name).any(|v| self.matches_value(v))
        }
    }
}

/// The links that pass every filter in `queries` (Uri-Query values, one filter each).
///
/// With no queries every link is returned. Fails on the first query that is not a valid filter;
/// a server that does not want to reject such requests can skip those queries itself.
pub fn filter_links<'l, 'q>(
    links: &'l [Link],
    queries: impl IntoIterator<Item = &'q str>,
) -> Result<Vec<&'l Link>, LinkFormatError> {
    let filters = queries
        .into_iter()
        .map(Filter::parse)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(links
        .iter()
        .filter(|l| filters.iter().all(|f| f.matches(l)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn doc(links: &[Link]) -> String {
        let mut s = String::new();
        write(links, &mut s).unwrap();
        s
    }

    #[test]
    fn rfc6690_example_two_sensors() {
        let links = parse("</sensors/temp>;if=\"sensor\",</sensors/light>;if=\"sensor\"").unwrap();
        assert_eq!(
            links,
            vec![
                Link::new("/sensors/temp").with("if", "sensor"),
                Link::new("/sensors/light").with("if", "sensor"),
            ]
        );
        // The same document broken over lines, as printed in RFC 6690 §5.
        let wrapped =
            parse("</sensors/temp>;if=\"sensor\",\r\n   </sensors/light>;if=\"sensor\"\n");
        assert_eq!(wrapped.unwrap(), links);
        assert_eq!(
            doc(&links),
            "</sensors/temp>;if=\"sensor\",</sensors/light>;if=\"sensor\""
        );
    }

    #[test]
    fn rfc6690_example_with_anchor_and_title() {
        let text = "</sensors>;ct=40;title=\"Sensor Index\",\n\
                    </sensors/temp>;rt=\"temperature-c\";if=\"sensor\",\n\
                    </sensors/light>;rt=\"light-lux\";if=\"sensor\",\n\
                    <http://www.example.com/sensors/t123>;anchor=\"/sensors/temp\"\n\
                    ;rel=\"describedby\",\n\
                    </t>;anchor=\"/sensors/temp\";rel=\"alternate\"";
        let links = parse(text).unwrap();
        assert_eq!(links.len(), 5);
        assert_eq!(links[0].attr("ct"), Some("40"));
        assert_eq!(links[0].attr("title"), Some("Sensor Index"));
        assert_eq!(links[3].target, "http://www.example.com/sensors/t123");
        assert_eq!(links[3].attr("rel"), Some("describedby"));
        assert_eq!(links[4].attr("anchor"), Some("/sensors/temp"));

        let anchored = filter_links(&links, ["anchor=/sensors/temp"]).unwrap();
        assert_eq!(anchored, vec![&links[3], &links[4]]);
        // ct is written bare, title quoted.
        assert!(doc(&links).starts_with("</sensors>;ct=40;title=\"Sensor Index\","));
    }

    #[test]
    fn rfc6690_filtering() {
        let links = parse(
            "</sensors/temp>;rt=\"temperature-c\";if=\"sensor\",\
             </sensors/light>;rt=\"light-lux core.sen-light\";if=\"sensor\",\
             </firmware/v2.1>;rt=\"firmware\";sz=262144",
        )
        .unwrap();
        let pick = |q: &[&str]| filter_links(&links, q.iter().copied()).unwrap();
        assert_eq!(pick(&["rt=temperature-c"]), vec![&links[0]]);
        // Any one word of a relation-type attribute matches.
        assert_eq!(pick(&["rt=light-lux"]), vec![&links[1]]);
        assert_eq!(pick(&["rt=core.sen-light"]), vec![&links[1]]);
        assert_eq!(pick(&["rt=core.sen*"]), vec![&links[1]]);
        // A complete value must match a whole word, not a prefix of one.
        assert!(pick(&["rt=light"]).is_empty());
        assert_eq!(pick(&["href=/sensors/*"]), vec![&links[0], &links[1]]);
        assert_eq!(pick(&["href=/firmware/v2.1"]), vec![&links[2]]);
        assert!(pick(&["href=/firmware"]).is_empty());
        assert_eq!(pick(&["sz=*"]), vec![&links[2]]);
        assert_eq!(pick(&["if=sensor", "rt=light-lux"]), vec![&links[1]]);
        assert_eq!(pick(&[]).len(), 3);
        assert!(pick(&["nonexistent=*"]).is_empty());
        assert_eq!(pick(&["RT=firmware"]), vec![&links[2]]);
    }

    #[test]
    fn flags_and_accessors() {
        let links = parse("</obs>;obs;rt=\"a b\";ct=0;ct=41,</x>").unwrap();
        let l = &links[0];
        assert_eq!(l.attributes[0], ("obs".into(), None));
        assert_eq!(l.attr("obs"), Some(""));
        assert!(l.has("obs"));
        assert!(!links[1].has("obs"));
        assert_eq!(l.attrs("ct").collect::<Vec<_>>(), vec!["0", "41"]);
        assert_eq!(l.attr_words("rt").collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(l.attr("missing"), None);
        let f = Filter::parse("obs=*").unwrap();
        assert!(f.matches(l));
        assert!(!f.matches(&links[1]));
        assert_eq!(
            l.to_string(),
            "</obs>;obs;rt=\"a b\";ct=0;ct=41",
            "Display writes the link"
        );
    }

    #[test]
    fn builder_and_quoting() {
        let l = Link::new("/a")
            .with("rt", "temperature")
            .with("title", "say \"hi\", \\ ok")
            .with("ct", "40")
            .with("foo", "two words")
            .with("bar", "")
            .with_flag("obs");
        let s = doc(core::slice::from_ref(&l));
        assert_eq!(
            s,
            "</a>;rt=\"temperature\";title=\"say \\\"hi\\\", \\\\ ok\";ct=40;foo=\"two words\";bar=\"\";obs"
        );
        assert_eq!(parse(&s).unwrap(), vec![l]);
    }

    #[test]
    fn whitespace_and_empty_documents() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse(" \r\n\t").unwrap(), vec![]);
        let links = parse("  </a> ; rt = \"x\" ; ct = 40 ,\n </b>  ").unwrap();
        assert_eq!(
            links,
            vec![
                Link::new("/a").with("rt", "x").with("ct", "40"),
                Link::new("/b")
            ]
        );
    }

    #[test]
    fn targets_may_hold_separators() {
        let links = parse("<coap://h/a;b,c?x=1>;rt=\"q\"").unwrap();
        assert_eq!(links[0].target, "coap://h/a;b,c?x=1");
    }

    #[test]
    fn malformed_documents() {
        use LinkFormatError::*;
        let cases: &[(&str, LinkFormatError)] = &[
            ("/a", ExpectedTarget { offset: 0 }),
            ("</a>,", ExpectedTarget { offset: 5 }),
            ("</a>, ", ExpectedTarget { offset: 6 }),
            ("</a>,,</b>", ExpectedTarget { offset: 5 }),
            ("</a", UnterminatedTarget { offset: 0 }),
            ("</a b>", InvalidTargetCharacter { offset: 3 }),
            ("</a<b>", InvalidTargetCharacter { offset: 3 }),
            ("</a>;", ExpectedAttributeName { offset: 5 }),
            ("</a>;=1", ExpectedAttributeName { offset: 5 }),
            ("</a>;*", ExpectedAttributeName { offset: 5 }),
            ("</a>;rt=", ExpectedAttributeValue { offset: 8 }),
            ("</a>;rt=,</b>", ExpectedAttributeValue { offset: 8 }),
            ("</a>;rt=\"x", UnterminatedQuotedString { offset: 8 }),
            ("</a>;rt=\"x\\", UnterminatedQuotedString { offset: 8 }),
            ("</a>;rt=\"x\\\"", UnterminatedQuotedString { offset: 8 }),
            ("</a>x", UnexpectedCharacter { offset: 4 }),
            ("</a>;rt=\"x\"y", UnexpectedCharacter { offset: 11 }),
            ("</a>;rt=x y", UnexpectedCharacter { offset: 10 }),
        ];
        for (text, err) in cases {
            assert_eq!(parse(text).as_ref(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn escaped_multibyte_character() {
        let links = parse("</a>;title=\"\\é\"").unwrap();
        assert_eq!(links[0].attr("title"), Some("é"));
    }

    #[test]
    fn link_limit() {
        assert_eq!(parse_with_limit("</a>,</b>", 2).unwrap().len(), 2);
        assert_eq!(
            parse_with_limit("</a>,</b>,</c>", 2),
            Err(LinkFormatError::TooManyLinks { limit: 2 })
        );
        assert_eq!(
            parse_with_limit("</a>", 0),
            Err(LinkFormatError::TooManyLinks { limit: 0 })
        );
        assert_eq!(parse_with_limit("", 0).unwrap(), vec![]);
    }

    #[test]
    fn iterator_stops_after_error() {
        let mut it = Links::new("</a>,x,</b>");
        assert_eq!(it.next(), Some(Ok(Link::new("/a"))));
        assert!(matches!(it.next(), Some(Err(_))));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn write_rejects_bad_names_and_encodes_targets() {
        let mut out = String::new();
        let bad = [Link::new("/a").with("bad name", "x")];
        assert_eq!(
            write(&bad, &mut out),
            Err(LinkFormatError::InvalidAttributeName)
        );
        assert_eq!(
            write(&[Link::new("/a").with_flag("")], &mut out),
            Err(LinkFormatError::InvalidAttributeName)
        );
        assert!(out.is_empty());
        write(&[Link::new("/my file<1>\"")], &mut out).unwrap();
        assert_eq!(out, "</my%20file%3C1%3E%22>");
        out.clear();
        write(
            &[Link::new("/a").with("title*", "UTF-8'de'n%c3%a4chstes")],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, "</a>;title*=UTF-8'de'n%c3%a4chstes");
        assert_eq!(
            parse(&out).unwrap()[0].attr("title*"),
            Some("UTF-8'de'n%c3%a4chstes")
        );
    }

    #[test]
    fn filter_parsing() {
        let f = Filter::parse("href=/foo*").unwrap();
        assert_eq!((f.name(), f.value(), f.is_prefix()), ("href", "/foo", true));
        let f = Filter::parse("foo=bar=baz").unwrap();
        assert_eq!(
            (f.name(), f.value(), f.is_prefix()),
            ("foo", "bar=baz", false)
        );
        assert_eq!(
            Filter::parse("foo"),
            Err(LinkFormatError::FilterNotNameValue)
        );
        assert_eq!(Filter::parse("=x"), Err(LinkFormatError::FilterEmptyName));
        assert_eq!(
            filter_links(&[], ["rt=x", "bad"]),
            Err(LinkFormatError::FilterNotNameValue)
        );
        // ?foo=bar* matches bar and barley (RFC 6690 §4.1); ?foo= matches only the empty value.
        let links = [
            Link::new("/1").with("foo", "bar"),
            Link::new("/2").with("foo", "barley"),
            Link::new("/3").with("foo", "ba"),
            Link::new("/4").with_flag("foo"),
        ];
        let got = filter_links(&links, ["foo=bar*"]).unwrap();
        assert_eq!(got, vec![&links[0], &links[1]]);
        let got = filter_links(&links, ["foo="]).unwrap();
        assert_eq!(got, vec![&links[3]]);
        assert_eq!(filter_links(&links, ["foo=*"]).unwrap().len(), 4);
    }

    #[test]
    fn relation_type_with_only_spaces_matches_empty_prefix() {
        let l = Link::new("/a").with("rt", " ");
        assert!(Filter::parse("rt=*").unwrap().matches(&l));
        assert!(!Filter::parse("rt=x*").unwrap().matches(&l));
    }

    #[test]
    fn long_document_is_linear() {
        // 100k links and a 1 MB quoted value: finishes quickly if parsing is linear.
        let mut text = String::new();
        for i in 0..100_000 {
            if i > 0 {
                text.push(',');
            }
            text.push_str("</x>;a");
        }
        assert_eq!(parse_with_limit(&text, usize::MAX).unwrap().len(), 100_000);
        let big = alloc::format!("</x>;t=\"{}\"", "\\a".repeat(500_000));
        assert_eq!(
            parse(&big).unwrap()[0].attr("t").map(str::len),
            Some(500_000)
        );
    }

    fn arb_link() -> impl Strategy<Value = Link> {
        let target = "[A-Za-z0-9/._~:@!$&'()*+,;=?#%\\[\\]-]{0,24}";
        let name = prop_oneof![
            Just("rt".to_string()),
            Just("if".to_string()),
            Just("ct".to_string()),
            Just("title".to_string()),
            "[A-Za-z0-9!#$&+.^_`|~-]{1,8}\\*?",
        ];
        let value = prop_oneof![
            Just(None),
            "[a-z0-9]{1,6}".prop_map(Some),
            ".{0,12}".prop_map(Some),
            "[\" \\\\,;a]{0,6}".prop_map(Some),
        ];
        (target, proptest::collection::vec((name, value), 0..5))
            .prop_map(|(target, attributes)| Link { target, attributes })
    }

    proptest! {
        #[test]
        fn write_then_parse_round_trips(links in proptest::collection::vec(arb_link(), 0..6)) {
            let text = doc(&links);
            prop_assert_eq!(parse(&text).unwrap(), links);
        }

        #[test]
        fn parse_never_panics(text in "[<>;,=\"\\\\a-z* \n]{0,40}") {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_any_string(text in ".{0,60}") {
            let _ = parse(&text);
        }

        #[test]
        fn exact_filter_matches_its_own_value(link in arb_link(), i in 0usize..5) {
            if let Some((name, Some(value))) = link.attributes.get(i) {
                if !name.eq_ignore_ascii_case("href") && !value.ends_with('*') {
                    let relation = ["rel", "rev", "rt", "if"].iter().any(|n| n.eq_ignore_ascii_case(name));
                    let q = alloc::format!("{name}={value}");
                    let f = Filter::parse(&q).unwrap();
                    if !relation {
                        prop_assert!(f.matches(&link));
                    } else if let Some(w) = value.split(' ').find(|w| !w.is_empty()) {
                        let q = alloc::format!("{name}={w}");
                        prop_assert!(Filter::parse(&q).unwrap().matches(&link));
                    }
                }
            }
        }
    }
}
