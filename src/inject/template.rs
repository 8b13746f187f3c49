//! The template language: literal text with placeholders `{{ <reference> }}`
//! or `{{ <reference> | <function> | ... }}`, and the escape `{{ "{{" }}` for
//! a literal `{{`. Pure: parsing gives an AST of literals and placeholders,
//! rendering takes one value per placeholder and a fixed set of functions.
//! There is nothing else: no conditionals, loops, includes, environment or
//! file access, so a template can read nothing but its placeholders.
//!
//! The AST is generic over the reference type so that this module needs
//! nothing of the grammar that uses it (`annotations` parses references).

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The most placeholders one template may hold (the per-Pod limits count
/// them again, with every other reference).
pub(crate) const MAX_PLACEHOLDERS: usize = 100;
/// The most functions one placeholder may apply.
const MAX_FUNCTIONS: usize = 8;

/// One function of the fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Percent-encodes every byte but `A-Z a-z 0-9 - . _ ~`: safe in a
    /// URL's userinfo, path segment or query.
    Urlquery,
    /// Standard base64 with padding.
    Base64,
    /// Standard base64 (padding optional) to the bytes it encodes.
    Base64decode,
    /// A JSON string literal, quotes included.
    Json,
    /// A double-quoted YAML scalar, quotes included.
    Yaml,
    /// Without leading and trailing whitespace.
    Trim,
}

impl Function {
    const ALL: [(&'static str, Function); 6] = [
        ("urlquery", Function::Urlquery),
        ("base64", Function::Base64),
        ("base64decode", Function::Base64decode),
        ("json", Function::Json),
        ("yaml", Function::Yaml),
        ("trim", Function::Trim),
    ];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map_or("?", |(n, _)| n)
    }

    /// Applies the function. Errors say what is wrong with the value's
    /// form, never the value.
    /// Every buffer that held a value is zeroed when dropped.
    fn apply(self, input: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, &'static str> {
        self.apply_bytes(&input).map(Zeroizing::new)
    }

    fn apply_bytes(self, input: &[u8]) -> Result<Vec<u8>, &'static str> {
        match self {
            Self::Urlquery => Ok(urlquery(input).into_bytes()),
            Self::Base64 => Ok(base64::engine::general_purpose::STANDARD
                .encode(input)
                .into_bytes()),
            Self::Base64decode => {
                let text = input.trim_ascii();
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                    .map_err(|_| "the value is not valid base64")
            }
            Self::Json => {
                let text = std::str::from_utf8(input).map_err(|_| "json needs UTF-8 text")?;
                serde_json::to_string(text)
                    .map(String::into_bytes)
                    .map_err(|_| "the value cannot be a JSON string")
            }
            Self::Yaml => {
                let text = std::str::from_utf8(input).map_err(|_| "yaml needs UTF-8 text")?;
                Ok(yaml_quoted(text).into_bytes())
            }
            Self::Trim => Ok(input.trim_ascii().to_vec()),
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value in a placeholder: where it comes from and what is done to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placeholder<R> {
    #[serde(rename = "ref")]
    pub reference: R,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<Function>,
}

impl<R: fmt::Display> fmt::Display for Placeholder<R> {
    /// As written, for messages: `{{ vault:a/b#c | urlquery }}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{{ {}", self.reference)?;
        for func in &self.functions {
            write!(f, " | {func}")?;
        }
        f.write_str(" }}")
    }
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part<R> {
    Text(String),
    Value(Placeholder<R>),
}

/// A parsed template: what a managed Secret records for a key it renders.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Template<R> {
    pub parts: Vec<Part<R>>,
}

/// A template that does not parse. The message quotes at most the
/// placeholder's own text (cut by the caller), never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub message: String,
}

/// Why a template could not be rendered: which placeholder (by its index
/// among the placeholders) and what went wrong. `E` is the caller's error
/// for a value it could not give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError<E> {
    Value {
        index: usize,
        error: E,
    },
    Function {
        index: usize,
        function: Function,
        problem: &'static str,
    },
}

impl<R> Template<R> {
    /// Parses `text`, reading each placeholder's reference with
    /// `reference` (which returns a message on failure).
    pub fn parse(text: &str, reference: impl Fn(&str) -> Result<R, String>) -> Result<Self, SyntaxError> {
        let err = |message: String| SyntaxError { message };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut count = 0usize;
        while let Some(open) = rest.find("{{") {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                err(format!(
                    "placeholder {} has no closing }}}}; write a literal {{{{ as {{{{ \"{{{{\" }}}}",
                    count + 1
                ))
            })?;
            let inner = after[..close].trim();
            rest = &after[close + 2..];
            if inner == "\"{{\"" {
                literal.push_str("{{");
                continue;
            }
            count += 1;
            if count > MAX_PLACEHOLDERS {
                return Err(err(format!("more than {MAX_PLACEHOLDERS} placeholders")));
            }
            let mut pieces = inner.split('|').map(str::trim);
            let reference_text = pieces.next().unwrap_or_default();
            if reference_text.is_empty() {
                return Err(err(format!(
                    "placeholder {count} is empty; expected {{{{ <store>:<path>#<property> }}}}"
                )));
            }
            let r = reference(reference_text).map_err(|m| err(format!("placeholder {count}: {m}")))?;
            let mut functions = Vec::new();
            for name in pieces {
                let f = Function::ALL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| {
                        err(format!(
                            "placeholder {count}: unknown function; use urlquery, base64, base64decode, json, yaml or trim"
                        ))
                    })?;
                functions.push(f);
            }
            if functions.len() > MAX_FUNCTIONS {
                return Err(err(format!(
                    "placeholder {count}: at most {MAX_FUNCTIONS} functions"
                )));
            }
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Value(Placeholder {
                reference: r,
                functions,
            }));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if count == 0 {
            return Err(err(
                "a template needs at least one placeholder {{ <store>:<path>#<property> }}".to_owned(),
            ));
        }
        Ok(Self { parts })
    }

    /// The placeholders, in the order they appear.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder<R>> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// The placeholders, to change their references in place (the
    /// pipeline qualifies paths of namespaced stores).
    pub fn placeholders_mut(&mut self) -> impl Iterator<Item = &mut Placeholder<R>> {
        self.parts.iter_mut().filter_map(|p| match p {
            Part::Value(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// The bytes of the literal text alone.
    pub fn literal_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Value(_) => 0,
            })
            .sum()
    }

    /// Renders the template with `value` giving each placeholder's bytes.
    /// The value buffers and what the functions make of them are zeroed
    /// when dropped; the result is the caller's to wrap.
    pub fn render<E>(
        &self,
        mut value: impl FnMut(&R) -> Result<Vec<u8>, E>,
    ) -> Result<Vec<u8>, RenderError<E>> {
        let mut out = Zeroizing::new(Vec::new());
        let mut index = 0;
        for part in &self.parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Value(p) => {
                    let mut v = Zeroizing::new(
                        value(&p.reference).map_err(|error| RenderError::Value { index, error })?,
                    );
                    for f in &p.functions {
                        v = f.apply(v).map_err(|problem| RenderError::Function {
                            index,
                            function: *f,
                            problem,
                        })?;
                    }
                    out.extend_from_slice(&v);
                    index += 1;
                }
            }
        }
        Ok(std::mem::take(&mut *out))
    }
}

/// Percent-encoding of everything but the unreserved characters of RFC 3986.
fn urlquery(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A YAML double-quoted scalar: `\` and `"` escaped, and every character
/// outside YAML's printable set (controls, DEL, C1, BOM, the line and
/// paragraph separators) written as an escape, so the value stays one
/// scalar whatever it holds.
fn yaml_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// References are plain strings here; the grammar's are tested with it.
    fn parse(text: &str) -> Result<Template<String>, SyntaxError> {
        Template::parse(text, |r| {
            if r.contains(':') && !r.contains(' ') {
                Ok(r.to_owned())
            } else {
                Err("not a reference".to_owned())
            }
        })
    }

    fn render(t: &Template<String>, values: &[(&str, &[u8])]) -> Result<Vec<u8>, RenderError<()>> {
        t.render(|r| {
            values
                .iter()
                .find(|(k, _)| *k == r.as_str())
                .map(|(_, v)| v.to_vec())
                .ok_or(())
        })
    }

    fn text(t: &Template<String>, values: &[(&str, &[u8])]) -> String {
        String::from_utf8(render(t, values).unwrap()).unwrap()
    }

    #[test]
    fn literals_and_placeholders() {
        let t =
            parse("postgres://{{ db:a#user }}:{{db:a#password|urlquery}}@{{ db:a#host }}:5432/x").unwrap();
        let refs: Vec<&str> = t.placeholders().map(|p| p.reference.as_str()).collect();
        assert_eq!(refs, ["db:a#user", "db:a#password", "db:a#host"]);
        assert_eq!(
            t.placeholders().nth(1).unwrap().functions,
            vec![Function::Urlquery]
        );
        assert_eq!(
            t.placeholders().nth(1).unwrap().to_string(),
            "{{ db:a#password | urlquery }}"
        );
        assert_eq!(t.literal_len(), "postgres://:@:5432/x".len());
        // A password that would break the URL is percent-encoded.
        let url = text(
            &t,
            &[
                ("db:a#user", b"app"),
                ("db:a#password", b"p@ss:w/rd%?#& x"),
                ("db:a#host", b"db.svc"),
            ],
        );
        assert_eq!(
            url,
            "postgres://app:p%40ss%3Aw%2Frd%25%3F%23%26%20x@db.svc:5432/x"
        );
    }

    #[test]
    fn every_function() {
        let one = |f: &str, v: &[u8]| -> Result<Vec<u8>, RenderError<()>> {
            let t = parse(&format!("{{{{ s:a | {f} }}}}")).unwrap();
            render(&t, &[("s:a", v)])
        };
        let s = |f: &str, v: &[u8]| String::from_utf8(one(f, v).unwrap()).unwrap();
        assert_eq!(s("urlquery", "a-b_c.d~e é".as_bytes()), "a-b_c.d~e%20%C3%A9");
        assert_eq!(s("base64", b"\x00\xffhi"), "AP9oaQ==");
        assert_eq!(one("base64decode", b"AP9oaQ==").unwrap(), b"\x00\xffhi");
        assert_eq!(
            one("base64decode", b"AP9oaQ\n").unwrap(),
            b"\x00\xffhi",
            "padding optional"
        );
        assert_eq!(s("json", b"a\"b\\c\nd"), r#""a\"b\\c\nd""#);
        assert_eq!(s("yaml", b"a\"b\\c\nd: #x"), r#""a\"b\\c\nd: #x""#);
        assert_eq!(
            s("yaml", "\u{7f}\u{85}\u{2028}".as_bytes()),
            r#""\x7f\x85\u2028""#
        );
        assert_eq!(s("trim", b" \t pw\n"), "pw");
        // Chained left to right.
        let t = parse("{{ s:a | trim | base64 }}").unwrap();
        assert_eq!(text(&t, &[("s:a", b" x \n")]), "eA==");
        // Errors say what is wrong, never the value.
        for (f, v) in [
            ("base64decode", &b"!!secret!!"[..]),
            ("json", b"\xffsecret"),
            ("yaml", b"\xffsecret"),
        ] {
            let Err(RenderError::Function {
                index,
                function,
                problem,
            }) = one(f, v)
            else {
                panic!("{f} accepted it")
            };
            assert_eq!((index, function.name()), (0, f));
            assert!(!problem.contains("secret"), "{problem}");
        }
    }

    /// The YAML quoting keeps any value one scalar: a value that tries to
    /// add a key or end the document stays inside its string.
    #[test]
    fn yaml_values_cannot_escape_their_scalar() {
        let t = parse("password: {{ s:a | yaml }}\nadmin: false\n").unwrap();
        let hostile: &[u8] = b"x\"\nadmin: true\n---\n\"";
        let doc = text(&t, &[("s:a", hostile)]);
        let parsed: std::collections::BTreeMap<String, serde_json::Value> =
            serde_norway::from_str(&doc).unwrap();
        assert_eq!(parsed["password"], serde_json::json!("x\"\nadmin: true\n---\n\""));
        assert_eq!(parsed["admin"], serde_json::json!(false));
        let t = parse("{\"password\": {{ s:a | json }}}").unwrap();
        let doc = text(&t, &[("s:a", hostile)]);
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(parsed["password"].as_str().unwrap().as_bytes(), hostile);
    }

    #[test]
    fn the_escape_writes_a_literal_opening() {
        let t = parse("{{ \"{{\" }} not a placeholder }} {{ s:a }}").unwrap();
        assert_eq!(t.placeholders().count(), 1);
        assert_eq!(text(&t, &[("s:a", b"v")]), "{{ not a placeholder }} v");
        // A closing `}}` alone is text.
        let t = parse("a }} {{ s:a }}").unwrap();
        assert_eq!(text(&t, &[("s:a", b"v")]), "a }} v");
    }

    #[test]
    fn malformed_templates_are_refused() {
        for (bad, says) in [
            ("no placeholder at all", "at least one placeholder"),
            ("{{ \"{{\" }} only the escape", "at least one placeholder"),
            ("{{ s:a", "no closing"),
            ("{{ s:a }} {{ }}", "placeholder 2 is empty"),
            ("{{ not-a-ref }}", "placeholder 1: not a reference"),
            ("{{ s:a | upper }}", "unknown function"),
            ("{{ s:a | }}", "unknown function"),
            ("{{ s:a | env }}", "unknown function"),
            (
                "{{ s:a | trim | trim | trim | trim | trim | trim | trim | trim | trim }}",
                "at most 8",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {e}");
        }
        let many = "{{ s:a }}".repeat(MAX_PLACEHOLDERS + 1);
        assert!(parse(&many).unwrap_err().message.contains("more than"));
        assert_eq!(
            parse(&"{{ s:a }}".repeat(MAX_PLACEHOLDERS))
                .unwrap()
                .placeholders()
                .count(),
            MAX_PLACEHOLDERS
        );
    }

    #[test]
    fn a_missing_value_names_its_placeholder() {
        let t = parse("{{ s:a }}-{{ s:b }}").unwrap();
        assert_eq!(
            render(&t, &[("s:a", b"1")]),
            Err(RenderError::Value { index: 1, error: () })
        );
    }

    #[test]
    fn the_record_round_trips() {
        let t = parse("x={{ s:a | urlquery | base64 }}\n{{ s:b }}").unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"[{"text":"x="},{"value":{"ref":"s:a","functions":["urlquery","base64"]}},{"text":"\n"},{"value":{"ref":"s:b"}}]"#
        );
        assert_eq!(serde_json::from_str::<Template<String>>(&json).unwrap(), t);
    }
}
