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

/// An `http` or `https` URL with a host.
pub(crate) fn is_http_url(s: &str) -> bool {
    reqwest::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Checks that `url` is an http(s) URL; the error names `field`.
#[cfg(any(feature = "gcp", feature = "azure", feature = "infisical", test))]
pub(crate) fn check_url(url: &str, field: &str) -> Result<(), FieldError> {
    if is_http_url(url) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("\"{url}\" is not an http(s) URL")))
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
        assert!(is_http_url("https://vault:8200"));
        for bad in ["vault:8200", "ftp://x", "http://", "not a url"] {
            assert!(!is_http_url(bad), "{bad}");
        }
        assert_eq!(check_url("x", "address").unwrap_err().field, "address");
        assert_eq!(exactly_one([None, Some(2), None]), Ok(2));
        assert_eq!(exactly_one::<u8>([None, None]), Err(0));
        assert_eq!(exactly_one([Some(1), Some(2)]), Err(2));
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
