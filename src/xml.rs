//! A small strict DOM over quick-xml, shared by the libvirt XML readers (networks, domains).
//!
//! The whole document is read first: malformed XML is reported with line and column, and the
//! document is bounded ([`crate::limits`]): its size, how deep its elements nest and how many
//! attributes one element has. Reading costs one pass over the text whatever its shape: lines
//! are counted forward, the stack of open elements never exceeds the depth limit, and
//! quick-xml's duplicate-attribute check (quadratic in an element's attributes) stops at the
//! attribute limit.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use thiserror::Error;

use crate::limits::{MAX_DEFINITION_BYTES, MAX_XML_ATTRIBUTES, MAX_XML_DEPTH};

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("malformed XML at line {line}, column {column}: {message}")]
    Malformed { line: usize, column: usize, message: String },
    #[error("the document is too large ({size} bytes): a definition may have at most {limit} bytes (16 MiB)")]
    TooLarge { size: u64, limit: u64 },
    #[error("elements nest deeper than {limit} levels: <{element}> at line {line} is at depth {depth}")]
    TooDeep { element: String, line: usize, depth: usize, limit: usize },
    #[error("<{element}> at line {line} has more than {limit} attributes")]
    TooManyAttributes { element: String, line: usize, limit: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Qualified name as written (`host`, `app1:foo`).
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    pub line: usize,
    /// Byte range of the element's content in the source (between its start and end tags;
    /// empty for `<x/>`): what `<metadata>` keeps verbatim.
    pub content: std::ops::Range<usize>,
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

/// A malformed-XML error at byte `offset` of `src`.
pub fn error_at(src: &str, offset: usize, message: impl Into<String>) -> XmlError {
    let (line, column) = line_col(src, offset);
    XmlError::Malformed { line, column, message: message.into() }
}

fn start_element(src: &str, lines: &mut Lines, pos: usize, e: &BytesStart<'_>) -> Result<Element, XmlError> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let line = lines.at(pos);
    let mut attrs: Vec<(String, String)> = Vec::new();
    for a in e.attributes() {
        if attrs.len() == MAX_XML_ATTRIBUTES {
            return Err(XmlError::TooManyAttributes { element: name, line, limit: MAX_XML_ATTRIBUTES });
        }
        let a = a.map_err(|err| error_at(src, pos, format!("<{name}>: {err}")))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a.unescape_value().map_err(|err| error_at(src, pos, format!("<{name} {key}>: {err}")))?;
        attrs.push((key, value.into_owned()));
    }
    Ok(Element { name, attrs, children: Vec::new(), text: String::new(), line, content: 0..0 })
}

/// Refuse an element that would sit deeper than the limit (`open` elements above it).
fn check_depth(open: usize, el: &Element) -> Result<(), XmlError> {
    let depth = open + 1;
    if depth > MAX_XML_DEPTH {
        return Err(XmlError::TooDeep { element: el.name.clone(), line: el.line, depth, limit: MAX_XML_DEPTH });
    }
    Ok(())
}

/// Put a finished element under its parent, or make it the document element.
fn attach(
    stack: &mut [Element],
    root: &mut Option<Element>,
    el: Element,
    src: &str,
    pos: usize,
) -> Result<(), XmlError> {
    if let Some(parent) = stack.last_mut() {
        parent.children.push(el);
    } else if root.is_some() {
        return Err(error_at(src, pos, format!("a second document element <{}>", el.name)));
    } else {
        *root = Some(el);
    }
    Ok(())
}

/// Read a whole document into its document element.
pub fn parse_document(src: &str) -> Result<Element, XmlError> {
    if src.len() as u64 > MAX_DEFINITION_BYTES {
        return Err(XmlError::TooLarge { size: src.len() as u64, limit: MAX_DEFINITION_BYTES });
    }
    let mut reader = Reader::from_str(src);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    let mut lines = Lines::new(src);
    loop {
        let pos = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| error_at(src, reader.error_position() as usize, e.to_string()))?;
        let text = match event {
            Event::Start(e) => {
                let mut el = start_element(src, &mut lines, pos, &e)?;
                check_depth(stack.len(), &el)?;
                let inside = reader.buffer_position() as usize;
                el.content = inside..inside;
                stack.push(el);
                continue;
            }
            Event::Empty(e) => {
                let el = start_element(src, &mut lines, pos, &e)?;
                check_depth(stack.len(), &el)?;
                attach(&mut stack, &mut root, el, src, pos)?;
                continue;
            }
            Event::End(_) => {
                let mut el = stack.pop().ok_or_else(|| error_at(src, pos, "unexpected end tag"))?;
                el.content.end = pos;
                attach(&mut stack, &mut root, el, src, pos)?;
                continue;
            }
            Event::Text(t) => t.unescape().map_err(|e| error_at(src, pos, e.to_string()))?.into_owned(),
            Event::CData(c) => String::from_utf8_lossy(&c.into_inner()).into_owned(),
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => continue,
            Event::Eof => break,
        };
        match stack.last_mut() {
            Some(top) => top.text.push_str(&text),
            None if text.trim().is_empty() => {}
            None => return Err(error_at(src, pos, "text outside the document element")),
        }
    }
    if let Some(open) = stack.last() {
        return Err(error_at(src, src.len(), format!("unexpected end of document: <{}> is not closed", open.name)));
    }
    root.ok_or_else(|| error_at(src, src.len(), "no document element"))
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The element's content exactly as written in `src` (the document it was read from).
    pub fn raw_content<'s>(&self, src: &'s str) -> &'s str {
        src.get(self.content.clone()).unwrap_or_default()
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
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
        let src = "<a><m:x xmlns:m='u'>1 &lt; 2</m:x>\n</a>";
        let el = parse_document(src).unwrap();
        assert_eq!(el.raw_content(src), "<m:x xmlns:m='u'>1 &lt; 2</m:x>\n");
        assert_eq!(el.children[0].raw_content(src), "1 &lt; 2");
    }

    #[test]
    fn malformed_xml_reports_line_and_column() {
        let err = parse_document("<network>\n  <name>x</nam>\n</network>").unwrap_err();
        assert!(matches!(err, XmlError::Malformed { line: 2, .. }), "{err}");
        let err = parse_document("<network>\n  <name>x</name>\n").unwrap_err();
        assert!(err.to_string().contains("not closed"), "{err}");
        let err = parse_document("<a/><b/>").unwrap_err();
        assert!(err.to_string().contains("second document element"), "{err}");
        let err = parse_document("<a x='1' x='2'/>").unwrap_err();
        assert!(matches!(err, XmlError::Malformed { line: 1, .. }), "{err}");
        let err = parse_document("<a x=1/>").unwrap_err();
        assert!(matches!(err, XmlError::Malformed { .. }), "{err}");
    }

    fn nested(depth: usize, empty_innermost: bool) -> String {
        let (open, close) = ("<a>".repeat(depth - 1), "</a>".repeat(depth - 1));
        let inner = if empty_innermost { "<b/>".to_string() } else { "<b></b>".to_string() };
        format!("{open}\n{inner}{close}")
    }

    #[test]
    fn depth_is_bounded_at_64_levels() {
        for empty in [true, false] {
            let el = parse_document(&nested(MAX_XML_DEPTH, empty)).unwrap();
            assert_eq!(el.name, "a");
            let err = parse_document(&nested(MAX_XML_DEPTH + 1, empty)).unwrap_err();
            assert_eq!(err, XmlError::TooDeep { element: "b".into(), line: 2, depth: 65, limit: 64 });
            assert_eq!(err.to_string(), "elements nest deeper than 64 levels: <b> at line 2 is at depth 65");
        }
        // 100,000 levels stop at the 65th: nothing deeper is built (or dropped recursively).
        let err = parse_document(&format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000))).unwrap_err();
        assert!(matches!(err, XmlError::TooDeep { depth: 65, line: 1, .. }), "{err}");
    }

    #[test]
    fn size_and_attributes_are_bounded() {
        let big = format!("<a>{}</a>", " ".repeat(MAX_DEFINITION_BYTES as usize));
        let err = parse_document(&big).unwrap_err();
        assert_eq!(err, XmlError::TooLarge { size: MAX_DEFINITION_BYTES + 7, limit: MAX_DEFINITION_BYTES });
        assert!(err.to_string().contains("(16777223 bytes): a definition may have at most 16777216 bytes"), "{err}");
        let attrs = |n: usize| (0..n).map(|i| format!(" a{i}='x'")).collect::<String>();
        let el = parse_document(&format!("<a{}/>", attrs(MAX_XML_ATTRIBUTES))).unwrap();
        assert_eq!(el.attrs.len(), MAX_XML_ATTRIBUTES);
        let err = parse_document(&format!("<a>\n<b{}/></a>", attrs(100_000))).unwrap_err();
        assert_eq!(err.to_string(), "<b> at line 2 has more than 256 attributes");
    }
}
