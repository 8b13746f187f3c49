//! The text log format with every field and message escaped: control
//! characters (C0, DEL, C1) and Unicode bidirectional controls are written
//! as `\n`, `\r`, `\t` or `\u{…}`. Fields carry what app teams wrote (an
//! annotation key with a newline is passed through by the API server, since
//! webhooks run before validation), and a raw newline there would start a
//! forged log line; a bidirectional override would make a line read other
//! than it is. JSON logs are escaped by their encoder.

use std::fmt::{self, Write};

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;

/// `DefaultFields`, written through [`Escaping`].
#[derive(Debug, Default)]
pub(crate) struct EscapedFields {
    inner: DefaultFields,
}

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut escaping = Escaping { inner: &mut writer };
        // Without ANSI styling: its escape codes would be escaped too.
        self.inner.format_fields(Writer::new(&mut escaping), fields)
    }
}

/// Writes text through, escaping what could break or disguise a log line.
pub(crate) struct Escaping<'a, W: Write> {
    pub(crate) inner: &'a mut W,
}

/// Whether `c` is written escaped.
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.inner.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.inner.write_str("\\n")?,
                '\r' => self.inner.write_str("\\r")?,
                '\t' => self.inner.write_str("\\t")?,
                c => write!(self.inner, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.inner.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        Escaping { inner: &mut out }.write_str(s).unwrap();
        out
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("plain ünïcödé ✓"), "plain ünïcödé ✓");
        assert_eq!(escaped("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(
            escaped("\u{1b}[31mred\u{7}\u{7f}\u{85}\u{9b}"),
            "\\u{1b}[31mred\\u{7}\\u{7f}\\u{85}\\u{9b}"
        );
        assert_eq!(escaped("x\u{202e}gpj.exe\u{202c}"), "x\\u{202e}gpj.exe\\u{202c}");
        assert_eq!(
            escaped("\u{2066}\u{2067}\u{2068}\u{2069}"),
            "\\u{2066}\\u{2067}\\u{2068}\\u{2069}"
        );
        assert_eq!(escaped("\0"), "\\u{0}");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!escaped(&c.to_string()).contains(c), "{c:?}");
        }
    }
}
