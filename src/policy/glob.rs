//! Globs for namespaces (`team-*`) and secret paths (`apps/{namespace}/**`).

/// Matches `text` against a single-segment glob: `*` is any run of
/// characters, `?` one character; everything else is literal.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `s` is a usable namespace glob: a name with `*`/`?` wildcards.
pub(crate) fn glob_is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    Any,
    /// A segment glob; `{namespace}` is substituted before matching.
    Glob(String),
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    /// Parses a pattern; the only placeholder is `{namespace}`, and `**` must
    /// be a whole segment.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() || pattern.starts_with('/') || pattern.ends_with('/') {
            return Err(format!(
                "\"{pattern}\" must be non-empty and must not start or end with '/'"
            ));
        }
        let mut segments = Vec::new();
        for seg in pattern.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(format!("\"{pattern}\" has an empty, '.' or '..' segment"));
            }
            if seg == "**" {
                segments.push(Segment::Any);
                continue;
            }
            if seg.contains("**") {
                return Err(format!("\"{pattern}\": '**' must be a whole segment"));
            }
            let without = seg.replace("{namespace}", "");
            if without.contains(['{', '}', '%', '\\', '[', ']']) || without.chars().any(char::is_whitespace) {
                return Err(format!("\"{pattern}\": only {{namespace}} may appear in braces; no '%', '\\', '[', ']' or spaces"));
            }
            segments.push(Segment::Glob(seg.to_owned()));
        }
        Ok(Self {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The pattern with `{namespace}` filled in, for messages.
    pub fn render(&self, namespace: &str) -> String {
        self.source.replace("{namespace}", namespace)
    }

    /// The first segment when it is a plain name: no wildcard, no
    /// `{namespace}`. Cross-namespace grants need one.
    pub(crate) fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Glob(g)) if !g.contains(['*', '?', '{']) => Some(g),
            _ => None,
        }
    }

    /// Matches a validated path (see `validate_secret_path`).
    pub fn matches(&self, path: &str, namespace: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        match_segments(&self.segments, &parts, namespace)
    }
}

fn match_segments(pattern: &[Segment], parts: &[&str], namespace: &str) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..], namespace))
        }
        Some((Segment::Glob(g), rest)) => match parts.split_first() {
            None => false,
            Some((first, tail)) => {
                let matched = if g.contains("{namespace}") {
                    glob_match(&g.replace("{namespace}", namespace), first)
                } else {
                    glob_match(g, first)
                };
                matched && match_segments(rest, tail, namespace)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_globs() {
        assert!(glob_match("team-*", "team-a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("t?am", "team"));
        assert!(!glob_match("team-*", "teams"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn path_patterns() {
        let p = PathPattern::parse("apps/{namespace}/**").unwrap();
        assert!(p.matches("apps/team-a/db", "team-a"));
        assert!(p.matches("apps/team-a", "team-a"));
        assert!(!p.matches("apps/team-b/db", "team-a"));
        assert!(!p.matches("apps/team-a-x/db", "team-a"));
        let q = PathPattern::parse("prod/{namespace}-*/key").unwrap();
        assert!(q.matches("prod/web-1/key", "web"));
        assert!(!q.matches("prod/web-1/x/key", "web"));
        let r = PathPattern::parse("**/public").unwrap();
        assert!(r.matches("a/b/c/public", "x"));
        assert!(r.matches("public", "x"));
    }

    #[test]
    fn bad_patterns() {
        for p in ["", "/a", "a/", "a//b", "a/../b", "a/**b", "a/{name}", "a/%2e"] {
            assert!(PathPattern::parse(p).is_err(), "{p}");
        }
    }
}
