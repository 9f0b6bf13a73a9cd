//! Helpers shared by the handshake tests.

use std::fmt::Debug;

/// Feeds `input` to `parse` whole and then as every proper prefix. Partial input is not an
/// error: each prefix must give `Ok(None)` or, for input that is already broken, the same
/// error as the whole. Returns the result for the whole input.
pub fn parse_at_every_split<T, E>(
    input: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<Option<T>, E>
where
    T: Debug,
    E: Debug + PartialEq,
{
    let whole = parse(input);
    for end in 0..input.len() {
        match (parse(&input[..end]), &whole) {
            (Ok(None), _) => {}
            (Err(e), Err(w)) if e == *w => {}
            (other, _) => panic!("prefix of {end} bytes gave {other:?}, whole gave {whole:?}"),
        }
    }
    whole
}

/// An HTTP head: the start line, these header lines, and the empty line.
pub fn head(start_line: &str, lines: &[&str]) -> Vec<u8> {
    let mut out = format!("{start_line}\r\n");
    for line in lines {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}
