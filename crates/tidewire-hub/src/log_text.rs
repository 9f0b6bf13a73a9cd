//! Peer-supplied text in log lines: escaped and bounded, so that no room or channel name,
//! origin, user agent, subprotocol, close reason, token claim or error text that embeds
//! one can start a line of its own, reorder what a terminal shows, or fill the disk.
//!
//! In a message, log it as a Display argument: `"...: {}", peer(&e)`. As a field, log
//! its text: `room = peer(&room).to_string()`. The human format then quotes the field
//! (`room="x\\n..."`: a value with spaces cannot pass for more fields) and the JSON
//! format gets the escaped text as a plain string (`"room":"x\\n..."`, a backslash and an
//! `n` once decoded, never a newline). Never log peer text as a bare `&str` field or with
//! `%`: the human format writes `%` fields raw, and the JSON format writes a `&str`
//! unescaped apart from JSON's own quoting, bidi overrides and line separators included.
//!
//! The escaping is [`char::escape_debug`]'s (`\n`, `\"`, `\\`, `\u{1b}`, `\u{202e}` for
//! control, format and separator characters such as bidi overrides and U+2028), except
//! that `'` stays as it is. At most [`MAX_CHARS`] characters of the text are shown; a
//! longer one ends with `…(N chars)`, its length.

use std::fmt::{self, Display, Write};

/// How many characters of a peer's text a log line shows.
pub const MAX_CHARS: usize = 200;

/// Peer-supplied text, escaped and bounded when displayed (see the module's doc).
#[derive(Clone, Copy)]
pub struct Peer<T>(pub T);

/// Wraps `text` (anything `Display`: a `&str`, a `String`, an error) for a log line.
pub fn peer<T: Display>(text: T) -> Peer<T> {
    Peer(text)
}

impl<T: Display> Display for Peer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Escaper {
            out: f,
            seen: 0,
            max: MAX_CHARS,
        };
        write!(out, "{}", self.0)?;
        let (seen, f) = (out.seen, out.out);
        if seen > MAX_CHARS {
            write!(f, "…({seen} chars)")?;
        }
        Ok(())
    }
}

impl<T: Display> fmt::Debug for Peer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Writes the first `max` characters escaped, and counts all of them.
struct Escaper<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    seen: usize,
    max: usize,
}

impl Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            self.seen += 1;
            if self.seen > self.max {
                continue;
            }
            match c {
                '\'' => self.out.write_char(c)?,
                c => write!(self.out, "{}", c.escape_debug())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_controls_quotes_and_bidi_are_escaped() {
        let forged = "x\n2026-12-02T00:00:00Z ERROR \"forged\"\r\t\\ \u{1b}[31m \u{7f} \u{85}";
        assert_eq!(
            peer(forged).to_string(),
            r#"x\n2026-12-02T00:00:00Z ERROR \"forged\"\r\t\\ \u{1b}[31m \u{7f} \u{85}"#
        );
        assert_eq!(
            peer("a\u{202e}b\u{2028}c\u{2029}d\u{2066}e\u{200b}f\u{feff}").to_string(),
            r"a\u{202e}b\u{2028}c\u{2029}d\u{2066}e\u{200b}f\u{feff}"
        );
        // Printable text, quotes and non-ASCII letters are left alone.
        assert_eq!(
            peer("chat:room's café 日本").to_string(),
            "chat:room's café 日本"
        );
        assert_eq!(format!("{:?}", peer("a\nb")), r#""a\nb""#);
    }

    #[test]
    fn long_text_is_cut_with_its_length() {
        let long = "é".repeat(1000);
        let shown = peer(&long).to_string();
        assert_eq!(shown, format!("{}…(1000 chars)", "é".repeat(MAX_CHARS)));
        let exact = "a".repeat(MAX_CHARS);
        assert_eq!(peer(&exact).to_string(), exact);
        // Escapes do not count against the bound: a text of controls stays bounded too.
        let controls = "\n".repeat(5000);
        let shown = peer(&controls).to_string();
        assert_eq!(shown, format!("{}…(5000 chars)", r"\n".repeat(MAX_CHARS)));
    }

    #[test]
    fn any_display_is_escaped_as_it_is_written() {
        let e = std::io::Error::other("bad name \"x\ny\"");
        assert_eq!(peer(&e).to_string(), r#"bad name \"x\ny\""#);
    }
}
