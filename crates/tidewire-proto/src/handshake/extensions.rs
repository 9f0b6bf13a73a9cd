//! The `Sec-WebSocket-Extensions` header (RFC 6455 §9.1): parsing and formatting.
//!
//! ```text
//! Sec-WebSocket-Extensions = extension-list
//! extension-list = 1#extension
//! extension = extension-token *( ";" extension-param )
//! extension-token = registered-token
//! registered-token = token
//! extension-param = token [ "=" (token | quoted-string) ]
//!     ;When using the quoted-string syntax variant, the value
//!     ;after quoted-string unescaping MUST conform to the
//!     ;'token' ABNF.
//! ```
//!
//! Offers come comma-separated in one header line and across several lines, in order.
//! Whitespace (OWS) is allowed around every separator. Quoted values are unescaped and must
//! then be tokens (also RFC 7692 §7). What an extension means is not decided here:
//! permessage-deflate reads the parsed [`Extension`]s.

use super::{is_tchar, is_token, HandshakeError};
use std::fmt;

/// One extension offer or response: its name and its parameters in order, each with its
/// value when it has one (already unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, such as `permessage-deflate`.
    pub name: String,
    /// Parameters in order: `client_max_window_bits` is `("client_max_window_bits", None)`,
    /// `server_max_window_bits=10` is `("server_max_window_bits", Some("10"))`.
    pub params: Vec<(String, Option<String>)>,
}

/// Parses every line of `Sec-WebSocket-Extensions`, in order, into the offers they hold.
/// Empty list elements are skipped (RFC 9110 §5.6.1), so no header or an empty one gives
/// no extensions. Anything outside the grammar is
/// [`HandshakeError::InvalidExtensions`].
pub fn parse_extensions<'a>(
    header_values: impl Iterator<Item = &'a [u8]>,
) -> Result<Vec<Extension>, HandshakeError> {
    let mut out = Vec::new();
    for value in header_values {
        let mut cursor = Cursor { s: value, at: 0 };
        cursor.extension_list(&mut out)?;
    }
    Ok(out)
}

/// Formats extensions as one `Sec-WebSocket-Extensions` value: offers separated by `, `,
/// parameters by `; `, values that are not tokens quoted.
pub fn format_extensions(extensions: &[Extension]) -> String {
    let mut out = String::new();
    for (i, extension) in extensions.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&extension.to_string());
    }
    out
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (name, value) in &self.params {
            write!(f, "; {name}")?;
            match value {
                None => {}
                Some(v) if is_token(v.as_bytes()) => write!(f, "={v}")?,
                Some(v) => {
                    f.write_str("=\"")?;
                    for c in v.chars() {
                        if c == '"' || c == '\\' {
                            f.write_str("\\")?;
                        }
                        write!(f, "{c}")?;
                    }
                    f.write_str("\"")?;
                }
            }
        }
        Ok(())
    }
}

const INVALID: HandshakeError = HandshakeError::InvalidExtensions;

/// A position in one header value.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        if next {
            self.at += 1;
        }
        next
    }

    /// `token = 1*tchar`
    fn token(&mut self) -> Result<String, HandshakeError> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        match &self.s[start..self.at] {
            [] => Err(INVALID),
            // Only tchars, which are ASCII.
            token => Ok(token.iter().map(|&b| char::from(b)).collect()),
        }
    }

    /// RFC 9110 §5.6.4:
    /// `quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE`,
    /// `qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text`,
    /// `quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )`.
    /// Returns the unescaped bytes. The opening quote is already consumed.
    fn quoted_string(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let mut out = Vec::new();
        loop {
            let b = self.peek().ok_or(INVALID)?;
            self.at += 1;
            match b {
                b'"' => return Ok(out),
                b'\\' => {
                    let escaped = self.peek().ok_or(INVALID)?;
                    if !(escaped == b'\t' || (escaped >= b' ' && escaped != 0x7f)) {
                        return Err(INVALID);
                    }
                    self.at += 1;
                    out.push(escaped);
                }
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => out.push(b),
                _ => return Err(INVALID),
            }
        }
    }

    /// `extension-param = token [ "=" (token | quoted-string) ]`, with OWS around "=".
    fn param(&mut self) -> Result<(String, Option<String>), HandshakeError> {
        let name = self.token()?;
        self.skip_ows();
        if !self.eat(b'=') {
            return Ok((name, None));
        }
        self.skip_ows();
        let value = if self.eat(b'"') {
            let unquoted = self.quoted_string()?;
            // §9.1: "the value after quoted-string unescaping MUST conform to the 'token'
            // ABNF" (likewise RFC 7692 §7).
            if !is_token(&unquoted) {
                return Err(INVALID);
            }
            unquoted.into_iter().map(char::from).collect()
        } else {
            self.token()?
        };
        Ok((name, Some(value)))
    }

    /// `extension = extension-token *( ";" extension-param )`, then "," or the end.
    fn extension(&mut self) -> Result<Extension, HandshakeError> {
        let name = self.token()?;
        let mut params = Vec::new();
        loop {
            self.skip_ows();
            match self.peek() {
                None => break,
                Some(b',') => {
                    self.at += 1;
                    break;
                }
                Some(b';') => {
                    self.at += 1;
                    self.skip_ows();
                    params.push(self.param()?);
                }
                Some(_) => return Err(INVALID),
            }
        }
        Ok(Extension { name, params })
    }

    /// `extension-list = 1#extension`, empty elements skipped.
    fn extension_list(&mut self, out: &mut Vec<Extension>) -> Result<(), HandshakeError> {
        loop {
            self.skip_ows();
            match self.peek() {
                None => return Ok(()),
                Some(b',') => self.at += 1,
                Some(_) => out.push(self.extension()?),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<Vec<Extension>, HandshakeError> {
        parse_extensions(lines.iter().map(|l| l.as_bytes()))
    }

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Extension {
        Extension {
            name: name.into(),
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn single_offer_without_params() {
        assert_eq!(
            parse(&["permessage-deflate"]),
            Ok(vec![ext("permessage-deflate", &[])])
        );
    }

    #[test]
    fn params_with_and_without_values() {
        assert_eq!(
            parse(&["permessage-deflate; client_max_window_bits; server_max_window_bits=10"]),
            Ok(vec![ext(
                "permessage-deflate",
                &[
                    ("client_max_window_bits", None),
                    ("server_max_window_bits", Some("10"))
                ]
            )])
        );
    }

    // RFC 7692 §5.2 example: two offers in one header, the second a fallback.
    #[test]
    fn several_offers_in_one_line_and_across_lines() {
        let parsed = parse(&[
            "permessage-deflate; client_max_window_bits=10, permessage-deflate",
            "x-webkit-deflate-frame",
        ]);
        assert_eq!(
            parsed,
            Ok(vec![
                ext(
                    "permessage-deflate",
                    &[("client_max_window_bits", Some("10"))]
                ),
                ext("permessage-deflate", &[]),
                ext("x-webkit-deflate-frame", &[]),
            ])
        );
    }

    #[test]
    fn quoted_values_are_unquoted() {
        assert_eq!(
            parse(&[r#"foo; a="10"; b="x\yz""#]),
            Ok(vec![ext("foo", &[("a", Some("10")), ("b", Some("xyz"))])])
        );
    }

    #[test]
    fn whitespace_everywhere_allowed() {
        assert_eq!(
            parse(&[" \tfoo ;  a = 1 ;b\t, bar ; c = \"2\"  "]),
            Ok(vec![
                ext("foo", &[("a", Some("1")), ("b", None)]),
                ext("bar", &[("c", Some("2"))])
            ])
        );
    }

    #[test]
    fn empty_elements_and_headers_are_skipped() {
        assert_eq!(parse(&[]), Ok(vec![]));
        assert_eq!(parse(&["", " , ,"]), Ok(vec![]));
        assert_eq!(parse(&[", foo,,"]), Ok(vec![ext("foo", &[])]));
    }

    #[test]
    fn bad_syntax_is_rejected() {
        for bad in [
            "foo;",            // parameter name missing
            "foo; =1",         // parameter name missing
            "foo; a=",         // value missing
            "foo; a=\"\"",     // empty after unquoting: not a token
            "foo; a=\"1 2\"",  // space after unquoting: not a token
            "foo; a=\"10",     // unterminated quote
            "foo; a=\"1\\",    // escape at the end
            "foo; a=1 2",      // two values
            "foo bar",         // two tokens
            "fo\"o",           // quote in a token
            ";a",              // no extension name
            "foo; a=b=c",      // two "="
            "foo; a=\"x\"y",   // junk after the quoted string
            "foo; a=\"\x01\"", // control character in a quoted string
            "f\u{e9}e",        // non-ASCII token
        ] {
            assert_eq!(
                parse(&[bad]),
                Err(HandshakeError::InvalidExtensions),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn format_round_trips() {
        let list = vec![
            ext(
                "permessage-deflate",
                &[("client_max_window_bits", None), ("x", Some("15"))],
            ),
            ext("other", &[]),
        ];
        let text = format_extensions(&list);
        assert_eq!(
            text,
            "permessage-deflate; client_max_window_bits; x=15, other"
        );
        assert_eq!(parse(&[&text]), Ok(list));
    }

    #[test]
    fn format_quotes_non_tokens() {
        let e = ext("foo", &[("a", Some("x y\"z"))]);
        assert_eq!(format_extensions(&[e]), r#"foo; a="x y\"z""#);
    }
}
