//! `dumpxml --xpath`: the XPath 1.0 subset virsh users put in scripts, over the shared DOM.
//!
//! Location paths from the root (`/domain/devices/disk`) or anywhere (`//disk`), `*`,
//! predicates `[@attr]`, `[@attr='v']`, `[child='v']` and `[N]`, a final `/@attr` or
//! `/text()`, and the functions `string(PATH)` and `count(PATH)`. Anything else is refused
//! with the part that is not understood named.

use thiserror::Error;

use crate::xml::Element;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("XPath '{expr}': {reason}")]
pub struct XPathError {
    pub expr: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pred {
    Has(String),
    AttrIs(String, String),
    /// A relative path (`source/@network`, `name`) whose value is the string.
    PathIs(Path, String),
    Nth(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// `//` before this step: any descendant, not only a child.
    deep: bool,
    name: String,
    preds: Vec<Pred>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tail {
    Nodes,
    Attr(String),
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Path {
    steps: Vec<Step>,
    tail: Tail,
}

/// What an expression selects, as virsh prints it: one item per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// Elements (serialized as XML), attributes (`name="value"`) or text nodes.
    Nodes(Vec<String>),
    /// `string()` or `count()`.
    Value(String),
}

/// Evaluate `expr` against the document whose root element is `root`.
pub fn select(root: &Element, expr: &str) -> Result<Selected, XPathError> {
    let err = |reason: &str| XPathError { expr: expr.to_string(), reason: reason.to_string() };
    let e = expr.trim();
    if let Some(inner) = e.strip_prefix("string(").and_then(|r| r.strip_suffix(')')) {
        let path = parse(inner).map_err(|r| err(&r))?;
        return Ok(Selected::Value(eval(root, &path).into_iter().next().map(|v| v.1).unwrap_or_default()));
    }
    if let Some(inner) = e.strip_prefix("count(").and_then(|r| r.strip_suffix(')')) {
        let path = parse(inner).map_err(|r| err(&r))?;
        return Ok(Selected::Value(eval(root, &path).len().to_string()));
    }
    let path = parse(e).map_err(|r| err(&r))?;
    Ok(Selected::Nodes(eval(root, &path).into_iter().map(|v| v.0).collect()))
}

fn parse(expr: &str) -> Result<Path, String> {
    if !expr.starts_with('/') {
        return Err("only absolute paths (/domain/...) or //name are understood".into());
    }
    let mut steps = Vec::new();
    let mut tail = Tail::Nodes;
    let mut rest = expr;
    while !rest.is_empty() {
        let deep = rest.starts_with("//");
        rest = rest.strip_prefix("//").or_else(|| rest.strip_prefix('/')).ok_or_else(|| format!("'{rest}'"))?;
        let end = step_end(rest);
        let (step, after) = rest.split_at(end);
        rest = after;
        if let Some(a) = step.strip_prefix('@') {
            if !rest.is_empty() || deep || !is_name(a) {
                return Err(format!("'@{a}' may only end a path, as /@name"));
            }
            tail = Tail::Attr(a.to_string());
            break;
        }
        if step == "text()" {
            if !rest.is_empty() || deep {
                return Err("'text()' may only end a path".into());
            }
            tail = Tail::Text;
            break;
        }
        steps.push(parse_step(step, deep)?);
    }
    if steps.is_empty() {
        return Err("the path selects no element".into());
    }
    Ok(Path { steps, tail })
}

/// Where a step ends: the next `/` outside brackets and quotes.
fn step_end(s: &str) -> usize {
    let (mut depth, mut quote) = (0, None);
    for (i, c) in s.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('[', None) => depth += 1,
            (']', None) => depth -= 1,
            ('/', None) if depth == 0 => return i,
            _ => {}
        }
    }
    s.len()
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
}

fn parse_step(step: &str, deep: bool) -> Result<Step, String> {
    let (name, mut preds_text) = match step.find('[') {
        Some(i) => step.split_at(i),
        None => (step, ""),
    };
    if name != "*" && !is_name(name) {
        return Err(format!("'{step}' is not an element step"));
    }
    let mut preds = Vec::new();
    while !preds_text.is_empty() {
        let inner_end = step_end_bracket(preds_text).ok_or_else(|| format!("unclosed predicate in '{step}'"))?;
        let inner = preds_text[1..inner_end].trim();
        preds_text = &preds_text[inner_end + 1..];
        preds.push(parse_pred(inner).ok_or_else(|| format!("the predicate [{inner}] is not understood"))?);
    }
    Ok(Step { deep, name: name.to_string(), preds })
}

/// The index of the `]` closing the `[` at the start of `s`.
fn step_end_bracket(s: &str) -> Option<usize> {
    if !s.starts_with('[') {
        return None;
    }
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            (']', None) => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_pred(p: &str) -> Option<Pred> {
    if let Ok(n) = p.parse::<usize>() {
        return (n > 0).then_some(Pred::Nth(n));
    }
    let unquote = |v: &str| {
        let v = v.trim();
        let q = v.chars().next()?;
        (matches!(q, '\'' | '"') && v.len() >= 2 && v.ends_with(q)).then(|| v[1..v.len() - 1].to_string())
    };
    match p.split_once('=') {
        Some((l, r)) => {
            let (l, value) = (l.trim(), unquote(r)?);
            match l.strip_prefix('@') {
                Some(a) if is_name(a) => Some(Pred::AttrIs(a.into(), value)),
                None if !l.starts_with('/') => parse(&format!("/{l}")).ok().map(|p| Pred::PathIs(p, value)),
                _ => None,
            }
        }
        None => p.strip_prefix('@').filter(|a| is_name(a)).map(|a| Pred::Has(a.into())),
    }
}

fn attr<'a>(e: &'a Element, name: &str) -> Option<&'a str> {
    e.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn matches(e: &Element, step: &Step) -> bool {
    step.name == "*" || e.name == step.name
}

fn keep<'a>(found: Vec<&'a Element>, preds: &[Pred]) -> Vec<&'a Element> {
    let mut set = found;
    for p in preds {
        set = match p {
            Pred::Nth(n) => set.get(n - 1).copied().into_iter().collect(),
            Pred::Has(a) => set.into_iter().filter(|e| attr(e, a).is_some()).collect(),
            Pred::AttrIs(a, v) => set.into_iter().filter(|e| attr(e, a) == Some(v.as_str())).collect(),
            Pred::PathIs(p, v) => set.into_iter().filter(|e| eval_from(e, p).iter().any(|(_, s)| s == v)).collect(),
        };
    }
    set
}

fn descendants<'a>(e: &'a Element, out: &mut Vec<&'a Element>) {
    for c in &e.children {
        out.push(c);
        descendants(c, out);
    }
}

/// (printed form, string value) of each selected node, in document order.
fn eval(root: &Element, path: &Path) -> Vec<(String, String)> {
    // The document node: its only child is the root element.
    let doc = Element {
        name: String::new(),
        attrs: vec![],
        children: vec![root.clone()],
        text: String::new(),
        line: 0,
        content: 0..0,
    };
    eval_from(&doc, path)
}

fn eval_from(ctx: &Element, path: &Path) -> Vec<(String, String)> {
    let mut set: Vec<&Element> = vec![ctx];
    for step in &path.steps {
        let mut next = Vec::new();
        for c in set {
            let mut cands = Vec::new();
            if step.deep {
                descendants(c, &mut cands);
            } else {
                cands.extend(c.children.iter());
            }
            // Positions count per context node, as XPath's [N] does.
            next.extend(keep(cands.into_iter().filter(|e| matches(e, step)).collect(), &step.preds));
        }
        set = next;
    }
    match &path.tail {
        Tail::Nodes => set.into_iter().map(|e| (serialize(e, 0), e.text.trim().to_string())).collect(),
        Tail::Attr(a) => set
            .into_iter()
            .filter_map(|e| attr(e, a).map(|v| (format!("{a}=\"{}\"", esc(v, true)), v.to_string())))
            .collect(),
        Tail::Text => set
            .into_iter()
            .filter(|e| !e.text.trim().is_empty())
            .map(|e| (esc(e.text.trim(), false), e.text.trim().to_string()))
            .collect(),
    }
}

fn esc(s: &str, attr: bool) -> String {
    let s = s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    if attr {
        s.replace('"', "&quot;")
    } else {
        s
    }
}

fn serialize(e: &Element, depth: usize) -> String {
    let pad = "  ".repeat(depth);
    let attrs: String = e.attrs.iter().map(|(k, v)| format!(" {k}=\"{}\"", esc(v, true))).collect();
    let text = e.text.trim();
    if e.children.is_empty() && text.is_empty() {
        return format!("{pad}<{}{attrs}/>", e.name);
    }
    if e.children.is_empty() {
        return format!("{pad}<{}{attrs}>{}</{}>", e.name, esc(text, false), e.name);
    }
    let inner: Vec<String> = e.children.iter().map(|c| serialize(c, depth + 1)).collect();
    format!("{pad}<{}{attrs}>\n{}\n{pad}</{}>", e.name, inner.join("\n"), e.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "<domain type='kvm' id='3'><name>web1</name><devices>\
        <disk type='file' device='disk'><source file='/v/a.qcow2'/><target dev='vda' bus='virtio'/></disk>\
        <disk type='file' device='cdrom'><source file='/v/i.iso'/><target dev='hda' bus='ide'/></disk>\
        <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>\
        </devices></domain>";

    fn sel(expr: &str) -> Selected {
        let root = crate::xml::parse_document(DOC).unwrap();
        select(&root, expr).unwrap()
    }

    fn nodes(expr: &str) -> Vec<String> {
        match sel(expr) {
            Selected::Nodes(n) => n,
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn attributes_print_as_name_and_value() {
        assert_eq!(nodes("//disk/source/@file"), ["file=\"/v/a.qcow2\"", "file=\"/v/i.iso\""]);
        assert_eq!(nodes("/domain/@id"), ["id=\"3\""]);
    }

    #[test]
    fn predicates_select_by_attribute_child_and_position() {
        assert_eq!(nodes("//disk[@device='cdrom']/target/@dev"), ["dev=\"hda\""]);
        assert_eq!(nodes("/domain/devices/disk[2]/source/@file"), ["file=\"/v/i.iso\""]);
        assert_eq!(nodes("//interface[source/@network='default']/mac/@address"), ["address=\"52:54:00:00:00:01\""]);
        assert_eq!(nodes("/domain[name='web1']/@type"), ["type=\"kvm\""]);
        assert!(nodes("/domain[name='web2']/@type").is_empty());
        assert_eq!(nodes("//*[@network]/@network"), ["network=\"default\""]);
    }

    #[test]
    fn functions_and_text_nodes() {
        assert_eq!(sel("string(/domain/name)"), Selected::Value("web1".into()));
        assert_eq!(sel("string(//disk[1]/source/@file)"), Selected::Value("/v/a.qcow2".into()));
        assert_eq!(sel("count(//disk)"), Selected::Value("2".into()));
        assert_eq!(nodes("/domain/name/text()"), ["web1"]);
        assert_eq!(nodes("//mac"), ["<mac address=\"52:54:00:00:00:01\"/>"]);
    }

    #[test]
    fn what_is_not_understood_is_named() {
        let root = crate::xml::parse_document(DOC).unwrap();
        for bad in ["domain/name", "//disk[last()]", "//disk/@file/x", "/domain/devices/disk[@a=b]", "/", "//disk[0]"] {
            let e = select(&root, bad).unwrap_err();
            assert_eq!(e.expr, bad);
            assert!(!e.reason.is_empty());
        }
    }
}
