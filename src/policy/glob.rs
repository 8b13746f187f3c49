//! Globs for namespaces (`team-*`) and secret paths (`apps/{namespace}/**`).
//!
//! Every match takes time linear in pattern × subject and allocates
//! nothing. Both levels (characters in a segment, segments in a path) use
//! the same idea: the pieces between two wildcards (`*` in a segment, `**`
//! in a path) have a fixed shape, so placing each such block at the
//! leftmost position where it fits never loses a match; only the most
//! recent wildcard ever needs to take one more character (or segment).
//! Each (pattern piece, subject position) pair is then tried at most once
//! per wildcard block, instead of once per way to split the subject.

/// A wildcard-or-literal unit of a segment glob, as the matcher sees it.
#[derive(Clone, Copy)]
enum Atom<'a> {
    /// `*`: any run of characters, the empty one included.
    Star,
    /// `?`: exactly one character.
    One,
    /// Bytes compared as they are.
    Literal(&'a [u8]),
}

/// A segment glob seen as a sequence of atoms.
trait Atoms {
    fn len(&self) -> usize;
    fn atom(&self, i: usize) -> Atom<'_>;
}

/// An uncompiled glob: each byte is an atom (`*`, `?` or itself).
struct Raw<'a>(&'a [u8]);

impl Atoms for Raw<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn atom(&self, i: usize) -> Atom<'_> {
        match self.0.get(i..=i) {
            Some(b"*") => Atom::Star,
            Some(b"?") => Atom::One,
            Some(byte) => Atom::Literal(byte),
            None => Atom::Literal(&[]),
        }
    }
}

/// A compiled segment with the namespace it is matched for.
struct Bound<'a> {
    pieces: &'a [Piece],
    namespace: &'a str,
}

impl Atoms for Bound<'_> {
    fn len(&self) -> usize {
        self.pieces.len()
    }

    fn atom(&self, i: usize) -> Atom<'_> {
        match self.pieces.get(i) {
            Some(Piece::Star) => Atom::Star,
            Some(Piece::One) => Atom::One,
            Some(Piece::Literal(s)) => Atom::Literal(s.as_bytes()),
            // Substituted as text: a namespace such as `*` is a literal star.
            Some(Piece::Namespace) => Atom::Literal(self.namespace.as_bytes()),
            None => Atom::Literal(&[]),
        }
    }
}

/// The length of the UTF-8 character that starts with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Matches `text` against `pattern`, a sequence of atoms. The text
/// position only ever lands on character boundaries: literals are whole
/// characters, and `?` and the wildcard's run advance by whole characters.
fn match_atoms(pattern: &impl Atoms, text: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and where its run ends so far.
    let mut star: Option<(usize, usize)> = None;
    loop {
        steps::count();
        if pi < pattern.len() {
            match pattern.atom(pi) {
                Atom::Star => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                Atom::One if ti < text.len() => {
                    ti = (ti + char_len(text[ti])).min(text.len());
                    pi += 1;
                    continue;
                }
                Atom::Literal(l) if text.get(ti..).is_some_and(|t| t.starts_with(l)) => {
                    ti += l.len();
                    pi += 1;
                    continue;
                }
                _ => {}
            }
        } else if ti == text.len() {
            return true;
        }
        // A mismatch, or text left over: the last `*` takes one more character.
        match star {
            Some((s, run_end)) if run_end < text.len() => {
                let run_end = (run_end + char_len(text[run_end])).min(text.len());
                star = Some((s, run_end));
                pi = s + 1;
                ti = run_end;
            }
            _ => return false,
        }
    }
}

/// Matches `text` against a single-segment glob: `*` is any run of
/// characters, `?` one character; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match_atoms(&Raw(pattern.as_bytes()), text.as_bytes())
}

/// Whether `s` is a usable namespace glob: a name with `*`/`?` wildcards.
pub fn glob_is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?'))
}

/// A unit of a compiled segment glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Star,
    One,
    Literal(String),
    /// `{namespace}`, filled in at match time.
    Namespace,
}

const NAMESPACE: &str = "{namespace}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    Any,
    /// A segment glob.
    Glob(Vec<Piece>),
}

impl Segment {
    /// Splits a checked segment (every `{` starts `{namespace}`) into pieces.
    fn compile(segment: &str) -> Self {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = segment;
        while let Some(c) = rest.chars().next() {
            let piece = if let Some(after) = rest.strip_prefix(NAMESPACE) {
                rest = after;
                Piece::Namespace
            } else {
                rest = &rest[c.len_utf8()..];
                match c {
                    '*' => Piece::Star,
                    '?' => Piece::One,
                    _ => {
                        literal.push(c);
                        continue;
                    }
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Segment::Glob(pieces)
    }
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
            let without = seg.replace(NAMESPACE, "");
            if without.contains(['{', '}', '%', '\\', '[', ']']) || without.chars().any(char::is_whitespace) {
                return Err(format!("\"{pattern}\": only {{namespace}} may appear in braces; no '%', '\\', '[', ']' or spaces"));
            }
            segments.push(Segment::compile(seg));
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
        self.source.replace(NAMESPACE, namespace)
    }

    /// The first segment when it is a plain name: no wildcard, no
    /// `{namespace}`. Cross-namespace grants need one.
    pub fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Glob(pieces)) => match pieces.as_slice() {
                [Piece::Literal(name)] => Some(name),
                _ => None,
            },
            _ => None,
        }
    }

    /// Matches a validated path (see `validate_secret_path`); `namespace`
    /// fills `{namespace}` as literal text. Any other string is matched as
    /// its `/`-separated segments, without panicking or allocating.
    pub fn matches(&self, path: &str, namespace: &str) -> bool {
        let segments = &self.segments;
        let end = path.len();
        // `at` is where the next path segment starts; past `end`, none is left.
        let (mut pi, mut at) = (0, 0);
        // The last `**` seen and where the segments it takes end so far.
        let mut any: Option<(usize, usize)> = None;
        loop {
            steps::count();
            if pi < segments.len() {
                match &segments[pi] {
                    Segment::Any => {
                        any = Some((pi, at));
                        pi += 1;
                        continue;
                    }
                    Segment::Glob(pieces) if at <= end => {
                        let (segment, next) = segment_at(path, at);
                        if match_atoms(&Bound { pieces, namespace }, segment.as_bytes()) {
                            pi += 1;
                            at = next;
                            continue;
                        }
                    }
                    Segment::Glob(_) => {}
                }
            } else if at > end {
                return true;
            }
            // A mismatch, or segments left over: the last `**` takes one more.
            match any {
                Some((a, taken)) if taken <= end => {
                    let (_, next) = segment_at(path, taken);
                    any = Some((a, next));
                    pi = a + 1;
                    at = next;
                }
                _ => return false,
            }
        }
    }
}

/// The path segment starting at byte `at` and where the next one starts.
fn segment_at(path: &str, at: usize) -> (&str, usize) {
    let rest = path.get(at..).unwrap_or("");
    let segment = rest.split('/').next().unwrap_or("");
    (segment, at + segment.len() + 1)
}

/// Counts matcher steps in tests, so that tests can check the work is
/// linear without measuring time. Nothing in other builds.
#[cfg(test)]
mod steps {
    use std::cell::Cell;

    thread_local!(static STEPS: Cell<u64> = const { Cell::new(0) });

    pub(super) fn count() {
        STEPS.with(|s| s.set(s.get() + 1));
    }

    /// Runs `f` and returns its result with the steps it took.
    pub(super) fn measure<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = STEPS.with(Cell::get);
        let out = f();
        (out, STEPS.with(Cell::get) - before)
    }
}

#[cfg(not(test))]
mod steps {
    #[inline(always)]
    pub(super) fn count() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segment_globs() {
        assert!(glob_match("team-*", "team-a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("t?am", "team"));
        assert!(!glob_match("team-*", "teams"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("*ab", "abab"));
        assert!(glob_match("?", "é"), "'?' is one character, not one byte");
        assert!(!glob_match("??", "é"));
        assert!(glob_match("*é?", "aéé"));
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
        assert!(!r.matches("public/x", "x"));
        let s = PathPattern::parse("a/**/b/**/c").unwrap();
        assert!(s.matches("a/b/c", "x"));
        assert!(s.matches("a/x/b/y/b/z/c", "x"));
        assert!(!s.matches("a/c/b", "x"));
    }

    #[test]
    fn bad_patterns() {
        for p in ["", "/a", "a/", "a//b", "a/../b", "a/**b", "a/{name}", "a/%2e"] {
            assert!(PathPattern::parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn first_literal_is_a_plain_first_segment() {
        let first = |p: &str| PathPattern::parse(p).unwrap().first_literal().map(str::to_owned);
        assert_eq!(first("shared/ca").as_deref(), Some("shared"));
        assert_eq!(first("shared").as_deref(), Some("shared"));
        assert_eq!(first("*/db"), None);
        assert_eq!(first("s?ared/db"), None);
        assert_eq!(first("{namespace}/db"), None);
        assert_eq!(first("x-{namespace}/db"), None);
        assert_eq!(first("**/db"), None);
    }

    /// The attack: a namespace whose name is a glob must not widen a
    /// `{namespace}` pattern to other namespaces' paths.
    #[test]
    fn namespace_is_substituted_as_text_never_as_a_glob() {
        let own = PathPattern::parse("apps/{namespace}/**").unwrap();
        assert!(!own.matches("apps/team-b/db", "*"));
        assert!(!own.matches("apps/team-b/db", "team-?"));
        assert!(!own.matches("apps/team-b/db", "team-*"));
        // What a glob-named namespace does match is its own name, literally.
        assert!(own.matches("apps/*/db", "*"));
        assert!(own.matches("apps/team-?/db", "team-?"));
        let prefixed = PathPattern::parse("prod/{namespace}-*/key").unwrap();
        assert!(!prefixed.matches("prod/web-1/key", "?eb"));
        assert!(prefixed.matches("prod/web-1/key", "web"));
        // A namespace with a '/' never spans segments.
        assert!(!own.matches("apps/a/b/db", "a/b"));
    }

    /// The review that spent over a minute of CPU: four `**` against a
    /// 1 KiB path of 509 segments that does not match.
    #[test]
    fn pathological_pattern_against_a_long_path_is_linear() {
        let pattern = PathPattern::parse("apps/**/a/**/a/**/a/**/b").unwrap();
        let path = format!("apps{}", "/a".repeat(508));
        assert_eq!(path.split('/').count(), 509);
        assert!(path.len() <= 1024 && crate::policy::validate_secret_path(&path).is_ok());
        let (matched, steps) = steps::measure(|| pattern.matches(&path, "ns"));
        assert!(!matched);
        assert!(
            steps <= linear_bound(pattern.source.len(), path.len()),
            "{steps} steps"
        );
        let hit = format!("{path}/b");
        assert!(pattern.matches(&hit, "ns"));
        // The reference agrees on a size it can still try every split of.
        let short = format!("apps{}", "/a".repeat(24));
        for path in [short.clone(), format!("{short}/b"), format!("{short}/b/a")] {
            assert_eq!(
                pattern.matches(&path, "ns"),
                reference::path_match(&pattern.source, &path, "ns"),
                "{path}"
            );
        }
    }

    #[test]
    fn pathological_segment_glob_is_linear() {
        let text = "a".repeat(1024);
        let pattern = "*a*a*a*a*b";
        let (matched, steps) = steps::measure(|| glob_match(pattern, &text));
        assert!(!matched);
        assert!(steps <= linear_bound(pattern.len(), text.len()), "{steps} steps");
    }

    /// Work allowed for one match, in matcher steps: a constant times
    /// (pattern + 1) × (subject + 1).
    fn linear_bound(pattern: usize, subject: usize) -> u64 {
        4 * (pattern as u64 + 1) * (subject as u64 + 2)
    }

    /// A deliberately naive matcher that tries every way to split the
    /// subject: exponential, but obviously right.
    mod reference {
        enum Token {
            Star,
            One,
            Char(char),
        }

        /// `{namespace}` becomes the namespace's characters, each literal.
        fn tokens(glob: &str, namespace: &str) -> Vec<Token> {
            let mut out = Vec::new();
            let mut rest = glob;
            while let Some(c) = rest.chars().next() {
                if let Some(after) = rest.strip_prefix("{namespace}") {
                    out.extend(namespace.chars().map(Token::Char));
                    rest = after;
                    continue;
                }
                out.push(match c {
                    '*' => Token::Star,
                    '?' => Token::One,
                    c => Token::Char(c),
                });
                rest = &rest[c.len_utf8()..];
            }
            out
        }

        fn chars_match(p: &[Token], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((Token::Star, rest)) => (0..=t.len()).any(|k| chars_match(rest, &t[k..])),
                Some((Token::One, rest)) => !t.is_empty() && chars_match(rest, &t[1..]),
                Some((Token::Char(c), rest)) => t.first() == Some(c) && chars_match(rest, &t[1..]),
            }
        }

        pub fn segment_match(glob: &str, text: &str, namespace: &str) -> bool {
            let t: Vec<char> = text.chars().collect();
            chars_match(&tokens(glob, namespace), &t)
        }

        fn segments_match(p: &[&str], t: &[&str], namespace: &str) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((&"**", rest)) => (0..=t.len()).any(|k| segments_match(rest, &t[k..], namespace)),
                Some((glob, rest)) => {
                    !t.is_empty()
                        && segment_match(glob, t[0], namespace)
                        && segments_match(rest, &t[1..], namespace)
                }
            }
        }

        pub fn path_match(pattern: &str, path: &str, namespace: &str) -> bool {
            let p: Vec<&str> = pattern.split('/').collect();
            let t: Vec<&str> = path.split('/').collect();
            segments_match(&p, &t, namespace)
        }
    }

    /// Small alphabets, so that random patterns and subjects often meet.
    fn text(chars: &'static str, max: usize) -> impl Strategy<Value = String> {
        let chars: Vec<char> = chars.chars().collect();
        prop::collection::vec(prop::sample::select(chars), 0..=max).prop_map(|v| v.into_iter().collect())
    }

    fn segment_glob() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec!["a", "b", "é", "*", "?", "{namespace}", "-"]);
        prop::collection::vec(piece, 1..=4).prop_map(|v| v.concat())
    }

    fn path_pattern() -> impl Strategy<Value = String> {
        let segment = prop_oneof![3 => segment_glob(), 1 => Just("**".to_owned())];
        prop::collection::vec(segment, 1..=5).prop_map(|v| v.join("/"))
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(text("abé-*?", 3), 1..=7).prop_map(|v| v.join("/"))
    }

    proptest! {
        #[test]
        fn segment_glob_agrees_with_the_reference(
            pattern in text("ab*?é", 8),
            subject in text("abé", 8),
        ) {
            let (fast, steps) = steps::measure(|| glob_match(&pattern, &subject));
            prop_assert_eq!(fast, reference::segment_match(&pattern, &subject, ""));
            prop_assert!(steps <= linear_bound(pattern.len(), subject.len()));
        }

        #[test]
        fn path_pattern_agrees_with_the_reference(
            pattern in path_pattern(),
            path in path(),
            namespace in text("ab*?é", 3),
        ) {
            // Random pieces can make a "**" inside a segment, which parse refuses.
            let Ok(compiled) = PathPattern::parse(&pattern) else {
                prop_assert!(pattern.split('/').any(|s| s != "**" && s.contains("**")));
                return Ok(());
            };
            let (fast, steps) = steps::measure(|| compiled.matches(&path, &namespace));
            prop_assert_eq!(fast, reference::path_match(&pattern, &path, &namespace));
            let pattern_len = compiled.render(&namespace).len();
            prop_assert!(steps <= linear_bound(pattern_len, path.len()), "{} steps", steps);
        }
    }
}
