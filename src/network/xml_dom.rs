//! A tiny strict DOM over quick-xml for the libvirt XML converter.
//!
//! The whole document is read first (malformed XML is reported with line and column), then the
//! converter walks it with helpers that refuse unknown attributes, unknown children, stray text
//! and repeated single elements, each error naming the element and its line.

use std::str::FromStr;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::NetworkError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    /// Qualified name as written (`host`, `app1:foo`).
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    pub line: usize,
}

/// The line of each element, counted forward from the last offset asked: the reader's
/// offsets only grow, so a document costs one pass however many elements it has.
struct Lines<'a> {
    src: &'a str,
    offset: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(src: &'a str) -> Lines<'a> {
        Lines { src, offset: 0, line: 1 }
    }

    /// The 1-based line of byte `offset`.
    fn at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.src.len());
        if offset < self.offset {
            (self.offset, self.line) = (0, 1);
        }
        let newlines = self.src.as_bytes()[self.offset..offset].iter().filter(|&&b| b == b'\n').count();
        (self.offset, self.line) = (offset, self.line + newlines);
        self.line
    }
}

/// Line and column (1-based, column in characters) of a byte offset; for errors only (it
/// counts from the start of the document).
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn xml_error(src: &str, offset: usize, message: impl Into<String>) -> NetworkError {
    let (line, column) = line_col(src, offset);
    NetworkError::Xml { line, column, message: message.into() }
}

fn start_element(src: &str, lines: &mut Lines, pos: usize, e: &BytesStart<'_>) -> Result<Element, NetworkError> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut attrs: Vec<(String, String)> = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| xml_error(src, pos, format!("<{name}>: {err}")))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a.unescape_value().map_err(|err| xml_error(src, pos, format!("<{name} {key}>: {err}")))?;
        attrs.push((key, value.into_owned()));
    }
    Ok(Element { name, attrs, children: Vec::new(), text: String::new(), line: lines.at(pos) })
}

/// Put a finished element under its parent, or make it the document element.
fn attach(
    stack: &mut [Element],
    root: &mut Option<Element>,
    el: Element,
    src: &str,
    pos: usize,
) -> Result<(), NetworkError> {
    if let Some(parent) = stack.last_mut() {
        parent.children.push(el);
    } else if root.is_some() {
        return Err(xml_error(src, pos, format!("a second document element <{}>", el.name)));
    } else {
        *root = Some(el);
    }
    Ok(())
}

/// Read a whole document into its document element.
pub(crate) fn parse_document(src: &str) -> Result<Element, NetworkError> {
    let mut reader = Reader::from_str(src);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    let mut lines = Lines::new(src);
    loop {
        let pos = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| xml_error(src, reader.error_position() as usize, e.to_string()))?;
        let text = match event {
            Event::Start(e) => {
                stack.push(start_element(src, &mut lines, pos, &e)?);
                continue;
            }
            Event::Empty(e) => {
                let el = start_element(src, &mut lines, pos, &e)?;
                attach(&mut stack, &mut root, el, src, pos)?;
                continue;
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| xml_error(src, pos, "unexpected end tag"))?;
                attach(&mut stack, &mut root, el, src, pos)?;
                continue;
            }
            Event::Text(t) => t.unescape().map_err(|e| xml_error(src, pos, e.to_string()))?.into_owned(),
            Event::CData(c) => String::from_utf8_lossy(&c.into_inner()).into_owned(),
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => continue,
            Event::Eof => break,
        };
        match stack.last_mut() {
            Some(top) => top.text.push_str(&text),
            None if text.trim().is_empty() => {}
            None => return Err(xml_error(src, pos, "text outside the document element")),
        }
    }
    if let Some(open) = stack.last() {
        return Err(xml_error(src, src.len(), format!("unexpected end of document: <{}> is not closed", open.name)));
    }
    root.ok_or_else(|| xml_error(src, src.len(), "no document element"))
}

/// What kvmctl says about libvirt elements it knows but does not implement.
fn unsupported_child(parent: &str, child: &str) -> Option<&'static str> {
    Some(match (parent, child) {
        (_, "portgroup") => "port groups (<portgroup>)",
        (_, "bandwidth") => "bandwidth limits (<bandwidth>)",
        (_, "virtualport") => "Open vSwitch / 802.1Qbh ports (<virtualport>)",
        (_, "vlan") => "VLAN tagging (<vlan>)",
        ("network", "port") => "port isolation (<port>)",
        ("network", c) if c.starts_with("dnsmasq:") => "custom dnsmasq options (dnsmasq:options)",
        ("forward", "pf") => "SR-IOV physical-function pools (<pf>)",
        ("forward", "address") => "PCI device pools (<address>)",
        ("forward", "driver") => "device pool drivers (<driver>)",
        _ => return None,
    })
}

impl Element {
    /// Refuse attributes and children not listed, and text where none belongs.
    pub fn check(&self, attrs: &[&str], children: &[&str]) -> Result<(), NetworkError> {
        self.check_attrs(attrs)?;
        self.check_children(children)?;
        if !self.text.trim().is_empty() {
            return Err(self.unsupported(format!("text content '{}'", self.text.trim())));
        }
        Ok(())
    }

    pub fn check_attrs(&self, allowed: &[&str]) -> Result<(), NetworkError> {
        for (key, _) in &self.attrs {
            if key.starts_with("xmlns") {
                return Err(self.unsupported(format!("the XML namespace declaration {key}")));
            }
            if !allowed.contains(&key.as_str()) {
                let (element, attribute, line) = (self.name.clone(), key.clone(), self.line);
                return Err(NetworkError::UnknownAttribute { element, attribute, line });
            }
        }
        Ok(())
    }

    pub fn check_children(&self, allowed: &[&str]) -> Result<(), NetworkError> {
        for c in &self.children {
            if allowed.contains(&c.name.as_str()) {
                continue;
            }
            if let Some(what) = unsupported_child(&self.name, &c.name) {
                return Err(c.unsupported(what.to_string()));
            }
            let (parent, element, line) = (self.name.clone(), c.name.clone(), c.line);
            return Err(NetworkError::UnknownElement { parent, element, line });
        }
        Ok(())
    }

    pub fn unsupported(&self, what: String) -> NetworkError {
        NetworkError::Unsupported { element: self.name.clone(), what, line: self.line }
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn req_attr(&self, name: &'static str) -> Result<&str, NetworkError> {
        self.attr(name).ok_or_else(|| NetworkError::MissingAttribute { element: self.name.clone(), attribute: name })
    }

    pub fn bad_value(&self, attribute: &str, value: &str, reason: impl Into<String>) -> NetworkError {
        let (element, attribute, value) = (self.name.clone(), attribute.to_string(), value.to_string());
        NetworkError::BadValue { element, attribute, value, reason: reason.into() }
    }

    /// Parse an optional attribute with `FromStr`; `what` describes the expected form.
    pub fn parse_attr<T: FromStr>(&self, name: &str, what: &str) -> Result<Option<T>, NetworkError> {
        match self.attr(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| self.bad_value(name, v, format!("expected {what}"))),
        }
    }

    pub fn req_parse<T: FromStr>(&self, name: &'static str, what: &str) -> Result<T, NetworkError> {
        self.req_attr(name)?;
        Ok(self.parse_attr(name, what)?.expect("attribute is present"))
    }

    /// A two-valued attribute (`yes`/`no`, `on`/`off`).
    pub fn flag(&self, name: &str, yes: &str, no: &str) -> Result<Option<bool>, NetworkError> {
        match self.attr(name) {
            None => Ok(None),
            Some(v) if v == yes => Ok(Some(true)),
            Some(v) if v == no => Ok(Some(false)),
            Some(v) => Err(self.bad_value(name, v, format!("expected '{yes}' or '{no}'"))),
        }
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The single child `name`, if present; an error when it is repeated.
    pub fn child(&self, name: &str) -> Result<Option<&Element>, NetworkError> {
        let mut found = self.children.iter().filter(|c| c.name == name);
        let first = found.next();
        if let Some(dup) = found.next() {
            let (parent, element, line) = (self.name.clone(), name.to_string(), dup.line);
            return Err(NetworkError::DuplicateElement { parent, element, line });
        }
        Ok(first)
    }

    /// The trimmed text of a text-only element such as `<name>`.
    pub fn text_only(&self) -> Result<String, NetworkError> {
        self.check_attrs(&[])?;
        if let Some(c) = self.children.first() {
            let (parent, element, line) = (self.name.clone(), c.name.clone(), c.line);
            return Err(NetworkError::UnknownElement { parent, element, line });
        }
        Ok(self.text.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_tree_with_lines() {
        let el = parse_document("<?xml version='1.0'?>\n<a x='1'>\n  <b>t&amp;u</b>\n  <c/>\n</a>\n").unwrap();
        assert_eq!(el.name, "a");
        assert_eq!(el.attr("x"), Some("1"));
        assert_eq!(el.children[0].text, "t&u");
        assert_eq!((el.line, el.children[0].line, el.children[1].line), (2, 3, 4));
    }

    #[test]
    fn malformed_xml_reports_line_and_column() {
        let err = parse_document("<network>\n  <name>x</nam>\n</network>").unwrap_err();
        assert!(matches!(err, NetworkError::Xml { line: 2, .. }), "{err}");
        let err = parse_document("<network>\n  <name>x</name>\n").unwrap_err();
        assert!(err.to_string().contains("not closed"), "{err}");
        let err = parse_document("<a/><b/>").unwrap_err();
        assert!(err.to_string().contains("second document element"), "{err}");
        let err = parse_document("<a x='1' x='2'/>").unwrap_err();
        assert!(matches!(err, NetworkError::Xml { line: 1, .. }), "{err}");
        let err = parse_document("<a x=1/>").unwrap_err();
        assert!(matches!(err, NetworkError::Xml { .. }), "{err}");
    }
}
