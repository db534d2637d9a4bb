//! The network converter's view of the shared DOM (`crate::xml`): the whole document is read
//! first (malformed XML is reported with line and column; size, depth and attributes are
//! bounded), then the converter walks it with helpers that refuse unknown attributes, unknown
//! children, stray text and repeated single elements, each error naming the element and its line.

use std::str::FromStr;

pub(crate) use crate::xml::{parse_document, Element};

use super::NetworkError;

/// What kvmctl says about libvirt elements it knows but does not implement.
fn unsupported_child(parent: &str, child: &str) -> Option<&'static str> {
    Some(match (parent, child) {
        (_, "portgroup") => "port groups (<portgroup>)",
        (_, "bandwidth") => "bandwidth limits (<bandwidth>)",
        (_, "virtualport") => "Open vSwitch / 802.1Qbh ports (<virtualport>)",
        (_, "vlan") => "VLAN tagging (<vlan>)",
        ("forward", "pf") => "SR-IOV physical-function pools (<pf>)",
        ("forward", "address") => "PCI device pools (<address>)",
        ("forward", "driver") => "device pool drivers (<driver>)",
        _ => return None,
    })
}

/// Take one foreign XML namespace out of `root`: its `xmlns:P='uri'` declarations (any
/// prefix P) and its `<P:...>` children, which are returned with their names (and their
/// descendants' names) rewritten to the `usual` prefix, so that errors name them as documents
/// usually write them (`kvmctl:interface`, `dnsmasq:option`). `xmlns:usual` bound to another
/// URI, and a `<usual:...>` child without a declaration, are refused with the fix.
pub fn take_namespace(root: &mut Element, uri: &str, usual: &str) -> Result<Vec<Element>, NetworkError> {
    let mut prefixes = vec![];
    let mut wrong = None;
    root.attrs.retain(|(k, v)| match k.strip_prefix("xmlns:") {
        Some(p) if v == uri => {
            prefixes.push(format!("{p}:"));
            false
        }
        Some(p) if p == usual => {
            wrong = Some(v.clone());
            true
        }
        _ => true,
    });
    if let Some(v) = wrong {
        return Err(root.bad_value(&format!("xmlns:{usual}"), &v, format!("{usual}'s namespace is '{uri}'")));
    }
    let mut taken = vec![];
    let mut rest = vec![];
    for mut c in std::mem::take(&mut root.children) {
        if let Some(p) = prefixes.iter().find(|p| c.name.starts_with(p.as_str())) {
            rename_prefix(&mut c, p, &format!("{usual}:"));
            taken.push(c);
        } else if c.name.starts_with(&format!("{usual}:")) {
            return Err(c.unsupported(format!(
                "the undeclared namespace prefix '{usual}' (declare xmlns:{usual}='{uri}' on <{}>)",
                root.name
            )));
        } else {
            rest.push(c);
        }
    }
    root.children = rest;
    Ok(taken)
}

fn rename_prefix(el: &mut Element, from: &str, to: &str) {
    if let Some(local) = el.name.strip_prefix(from) {
        el.name = format!("{to}{local}");
    }
    for c in &mut el.children {
        rename_prefix(c, from, to);
    }
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
