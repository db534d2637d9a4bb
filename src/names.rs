//! Object names: the only strings that ever become path components.
//!
//! `[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}`, checked before any path is built.

use thiserror::Error;

pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name '{name}' is too long ({len} bytes, at most {MAX_NAME_LEN})")]
    TooLong { kind: &'static str, name: String, len: usize },
    #[error("{kind} name '{name}' must start with a letter or digit")]
    BadStart { kind: &'static str, name: String },
    #[error("{kind} name '{name}' contains {what}; allowed: letters, digits, '_', '.', '+', '-'")]
    BadChar { kind: &'static str, name: String, what: String },
}

/// Validate `name` as the name of an object of `kind` ("pool", "volume", "network", "domain").
pub fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    let printable = || name.escape_debug().to_string();
    let first = name.chars().next().ok_or(NameError::Empty { kind })?;
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, name: printable(), len: name.len() });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart { kind, name: printable() });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.+-".contains(*c))) {
        let what = match bad {
            '/' => "'/'".to_string(),
            '\0' => "a NUL byte".to_string(),
            '\n' => "a newline".to_string(),
            c if c.is_control() => format!("control character {:?}", c),
            c => format!("'{c}'"),
        };
        return Err(NameError::BadChar { kind, name: printable(), what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_virsh_style_names() {
        for n in ["default", "vm1", "ubuntu-16.04.qcow2", "a+b_c", "192.168.160.0", "A"] {
            validate("volume", n).unwrap();
        }
        validate("pool", &"x".repeat(64)).unwrap();
    }

    #[test]
    fn refuses_paths_and_control_characters() {
        assert!(matches!(validate("pool", ""), Err(NameError::Empty { .. })));
        assert!(matches!(validate("pool", ".."), Err(NameError::BadStart { .. })));
        assert!(matches!(validate("pool", ".hidden"), Err(NameError::BadStart { .. })));
        assert!(matches!(validate("pool", "-rf"), Err(NameError::BadStart { .. })));
        assert!(matches!(validate("pool", "a/b"), Err(NameError::BadChar { .. })));
        assert!(matches!(validate("pool", "a/../b"), Err(NameError::BadChar { .. })));
        assert!(matches!(validate("pool", "a\0b"), Err(NameError::BadChar { .. })));
        assert!(matches!(validate("pool", "a\nb"), Err(NameError::BadChar { .. })));
        assert!(matches!(validate("pool", "a b"), Err(NameError::BadChar { .. })));
        assert!(matches!(validate("pool", "é"), Err(NameError::BadStart { .. })));
        assert!(matches!(validate("pool", &"x".repeat(65)), Err(NameError::TooLong { len: 65, .. })));
    }

    #[test]
    fn error_names_the_object_and_reason() {
        let e = validate("volume", "a/b").unwrap_err().to_string();
        assert!(e.contains("volume name 'a/b'") && e.contains("'/'"), "{e}");
    }
}
