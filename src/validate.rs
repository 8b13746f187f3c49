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

/// How much of one piece of input (an annotation's key, a token of its
/// value, a path, a container name) a message may quote: at most so many
/// characters, then `…`. Messages name what to fix; an attacker's megabyte
/// does not need repeating to do that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote(pub usize);

impl Quote {
    /// `limits.maxQuotedChars` when the configuration gives none.
    pub const DEFAULT: Self = Self(128);

    /// `text` as a message shows it: cut to the limit, with the characters
    /// of [`needs_escape`] escaped.
    pub fn of(self, text: &str) -> Quoted<'_> {
        Quoted { text, max: self.0 }
    }
}

/// Text shown by [`Quote::of`].
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a> {
    text: &'a str,
    max: usize,
}

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut chars = self.text.chars();
        for c in chars.by_ref().take(self.max) {
            write_escaped(f, c)?;
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Characters a message never carries raw: control characters (C0, DEL,
/// C1), the line and paragraph separators, and the Unicode bidirectional
/// controls, which make text read other than it is (U+202E reversed the
/// rest of a denial message).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{2028}' | '\u{2029}'
        )
}

fn write_escaped(out: &mut impl std::fmt::Write, c: char) -> std::fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if needs_escape(c) => write!(out, "\\u{{{:x}}}", c as u32),
        c => out.write_char(c),
    }
}

/// `text` with the characters of [`needs_escape`] escaped (`\n`,
/// `\u{202e}`); the last step of every message that goes back to a Pod's
/// author. Escaping twice changes nothing.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(needs_escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        // Writing to a String cannot fail.
        let _ = write_escaped(&mut out, c);
    }
    std::borrow::Cow::Owned(out)
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
    fn quotes_are_cut_and_escaped() {
        let q = Quote(5);
        assert_eq!(q.of("abc").to_string(), "abc");
        assert_eq!(q.of("abcde").to_string(), "abcde");
        assert_eq!(q.of("abcdef").to_string(), "abcde…");
        assert_eq!(q.of("a\u{202e}b\nc").to_string(), "a\\u{202e}b\\nc");
        assert_eq!(Quote(3).of("ééééé").to_string(), "ééé…");
        let evil = "x\u{202e}\u{2066}\u{0007}\u{2028}y";
        let escaped = escape_controls(evil);
        assert_eq!(escaped, "x\\u{202e}\\u{2066}\\u{7}\\u{2028}y");
        assert_eq!(escape_controls(&escaped), escaped, "idempotent");
        assert!(matches!(escape_controls("plain"), std::borrow::Cow::Borrowed(_)));
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
