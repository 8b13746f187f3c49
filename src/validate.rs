//! Field validators that several configuration sections and the annotation
//! grammar share, and the error they report. A leaf: it imports nothing
//! from the rest of the crate, so every section can use it.

/// A value that serde accepted but that is not valid: the field, as a path
/// below the section that checks it (`address`, `auth.token`), and why.
/// Callers put their own position in front with [`FieldError::within`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error one level up: `within("vault")` turns `address` into
    /// `vault.address` (and an empty field into `vault`).
    pub fn within(self, parent: &str) -> Self {
        let field = match (parent.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => parent.to_owned(),
            (false, false) if self.field.starts_with('[') => format!("{parent}{}", self.field),
            (false, false) => format!("{parent}.{}", self.field),
        };
        Self { field, ..self }
    }
}

/// RFC 1123 label: what store names, namespaces and container names look like.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Why `s` is not usable as a store's address: not an `http` or `https`
/// URL with a host, or one with `user:password@`. Credentials belong in a
/// store's `auth` section, read from a file or env var; in an address they
/// would be sent to the server and shown wherever the address is.
pub(crate) fn url_problem(s: &str) -> Option<&'static str> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => (!u.username().is_empty()
            || u.password().is_some())
        .then_some("must not carry user:password@; give credentials in the store's auth section"),
        _ => Some("is not an http(s) URL"),
    }
}

/// Checks that `url` is an http(s) URL without credentials; the error names
/// `field` and never quotes the URL (it may hold a password).
pub(crate) fn check_url(url: &str, field: &str) -> Result<(), FieldError> {
    match url_problem(url) {
        None => Ok(()),
        Some(problem) => Err(FieldError::new(field, problem)),
    }
}

/// The one value of `candidates` that is set; otherwise how many were set
/// (0 or more than 1), so that the caller words its own message.
pub(crate) fn exactly_one<T>(candidates: impl IntoIterator<Item = Option<T>>) -> Result<T, usize> {
    let mut set: Vec<T> = candidates.into_iter().flatten().collect();
    match set.len() {
        1 => Ok(set.remove(0)),
        n => Err(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_urls_and_choices() {
        assert!(is_dns_label("team-a1"));
        for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("sesame.dev"));
        assert!(!is_dns_subdomain("sesame..dev"));
        assert_eq!(url_problem("https://vault:8200"), None);
        for bad in ["vault:8200", "ftp://x", "http://", "not a url"] {
            assert_eq!(url_problem(bad), Some("is not an http(s) URL"), "{bad}");
        }
        assert_eq!(check_url("x", "address").unwrap_err().field, "address");
        assert_eq!(exactly_one([None, Some(2), None]), Ok(2));
        assert_eq!(exactly_one::<u8>([None, None]), Err(0));
        assert_eq!(exactly_one([Some(1), Some(2)]), Err(2));
    }

    /// An address with credentials is refused, and the error quotes neither.
    #[test]
    fn addresses_with_userinfo_are_refused_without_quoting_them() {
        for bad in [
            "https://admin:hunter2@vault:8200",
            "https://hunter2@vault:8200",
            "http://:hunter2@vault",
        ] {
            let e = check_url(bad, "address").unwrap_err();
            assert!(e.message.contains("user:password@"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = check_url("https://vault:8200 hunter2", "address").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn fields_nest() {
        let e = FieldError::new("address", "bad")
            .within("vault")
            .within("stores[0]");
        assert_eq!(e.to_string(), "stores[0].vault.address: bad");
        assert_eq!(FieldError::new("", "m").within("stores[1]").field, "stores[1]");
        assert_eq!(FieldError::new("[2]", "m").within("paths").field, "paths[2]");
        assert_eq!(FieldError::new("x", "m").within("").field, "x");
    }
}
