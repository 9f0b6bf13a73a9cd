//! QPACK (RFC 9204) as this HTTP/3 layer uses it: the static table and literals only.
//!
//! Both sides announce `SETTINGS_QPACK_MAX_TABLE_CAPACITY = 0`, so no dynamic table ever
//! exists: an encoded field section is its two-byte prefix (Required Insert Count 0,
//! Delta Base 0) followed by field lines that either name a static entry or spell the
//! name and value out. The encoder never uses Huffman coding (a WebSocket handshake is a
//! few hundred bytes, once per stream); the decoder accepts it, as a peer may use it. A
//! field line that refers to a dynamic table is an error (`QPACK_DECOMPRESSION_FAILED`).

use std::fmt;

/// Why a field section could not be decoded (the connection's error is
/// `QPACK_DECOMPRESSION_FAILED`, 0x200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QpackError(pub(crate) &'static str);

impl fmt::Display for QpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QPACK: {}", self.0)
    }
}

/// The static table of RFC 9204 Appendix A, indexed from 0.
pub(crate) const STATIC: [(&str, &str); 99] = [
    (":authority", ""),
    (":path", "/"),
    ("age", "0"),
    ("content-disposition", ""),
    ("content-length", "0"),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("referer", ""),
    ("set-cookie", ""),
    (":method", "CONNECT"),
    (":method", "DELETE"),
    (":method", "GET"),
    (":method", "HEAD"),
    (":method", "OPTIONS"),
    (":method", "POST"),
    (":method", "PUT"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "103"),
    (":status", "200"),
    (":status", "304"),
    (":status", "404"),
    (":status", "503"),
    ("accept", "*/*"),
    ("accept", "application/dns-message"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-ranges", "bytes"),
    ("access-control-allow-headers", "cache-control"),
    ("access-control-allow-headers", "content-type"),
    ("access-control-allow-origin", "*"),
    ("cache-control", "max-age=0"),
    ("cache-control", "max-age=2592000"),
    ("cache-control", "max-age=604800"),
    ("cache-control", "no-cache"),
    ("cache-control", "no-store"),
    ("cache-control", "public, max-age=31536000"),
    ("content-encoding", "br"),
    ("content-encoding", "gzip"),
    ("content-type", "application/dns-message"),
    ("content-type", "application/javascript"),
    ("content-type", "application/json"),
    ("content-type", "application/x-www-form-urlencoded"),
    ("content-type", "image/gif"),
    ("content-type", "image/jpeg"),
    ("content-type", "image/png"),
    ("content-type", "text/css"),
    ("content-type", "text/html; charset=utf-8"),
    ("content-type", "text/plain"),
    ("content-type", "text/plain;charset=utf-8"),
    ("range", "bytes=0-"),
    ("strict-transport-security", "max-age=31536000"),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains",
    ),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains; preload",
    ),
    ("vary", "accept-encoding"),
    ("vary", "origin"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    (":status", "100"),
    (":status", "204"),
    (":status", "206"),
    (":status", "302"),
    (":status", "400"),
    (":status", "403"),
    (":status", "421"),
    (":status", "425"),
    (":status", "500"),
    ("accept-language", ""),
    ("access-control-allow-credentials", "FALSE"),
    ("access-control-allow-credentials", "TRUE"),
    ("access-control-allow-headers", "*"),
    ("access-control-allow-methods", "get"),
    ("access-control-allow-methods", "get, post, options"),
    ("access-control-allow-methods", "options"),
    ("access-control-expose-headers", "content-length"),
    ("access-control-request-headers", "content-type"),
    ("access-control-request-method", "get"),
    ("access-control-request-method", "post"),
    ("alt-svc", "clear"),
    ("authorization", ""),
    (
        "content-security-policy",
        "script-src 'none'; object-src 'none'; base-uri 'none'",
    ),
    ("early-data", "1"),
    ("expect-ct", ""),
    ("forwarded", ""),
    ("if-range", ""),
    ("origin", ""),
    ("purpose", "prefetch"),
    ("server", ""),
    ("timing-allow-origin", "*"),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", ""),
    ("x-forwarded-for", ""),
    ("x-frame-options", "deny"),
    ("x-frame-options", "sameorigin"),
];

/// Encodes one field section (a request's or a response's headers, pseudo-headers first).
pub(crate) fn encode<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    out: &mut Vec<u8>,
) {
    // Required Insert Count 0, Delta Base 0: no dynamic table.
    out.extend_from_slice(&[0, 0]);
    for (name, value) in fields {
        let mut by_name = None;
        let mut exact = None;
        for (i, (n, v)) in STATIC.iter().enumerate() {
            if n.as_bytes() == name {
                by_name.get_or_insert(i);
                if v.as_bytes() == value {
                    exact = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = exact {
            // Indexed field line, static: 1 T=1 index(6).
            put_int(out, 0b1100_0000, 6, i as u64);
        } else if let Some(i) = by_name {
            // Literal with name reference, static: 01 N=0 T=1 index(4), then the value.
            put_int(out, 0b0101_0000, 4, i as u64);
            put_int(out, 0, 7, value.len() as u64);
            out.extend_from_slice(value);
        } else {
            // Literal with literal name: 001 N=0 H=0 length(3), the name, then the value.
            put_int(out, 0b0010_0000, 3, name.len() as u64);
            out.extend_from_slice(name);
            put_int(out, 0, 7, value.len() as u64);
            out.extend_from_slice(value);
        }
    }
}

/// A decoded field line: its name and value, as sent.
pub(crate) type Field = (Vec<u8>, Vec<u8>);

/// Decodes one field section into name/value pairs, in order. `limit` bounds the decoded
/// size (names and values, plus 32 bytes per field as RFC 9114 §4.2.2 counts them).
pub(crate) fn decode(block: &[u8], limit: usize) -> Result<Vec<Field>, QpackError> {
    let mut r = Reader { buf: block, pos: 0 };
    let required_insert_count = r.int(8)?;
    if required_insert_count != 0 {
        return Err(QpackError(
            "a field section refers to a dynamic table, which is disabled",
        ));
    }
    let _delta_base = r.int(7)?;
    let mut fields = Vec::new();
    let mut size = 0usize;
    while !r.done() {
        let first = r.peek()?;
        let (name, value) = if first & 0b1000_0000 != 0 {
            if first & 0b0100_0000 == 0 {
                return Err(QpackError("indexed field line into the dynamic table"));
            }
            let (n, v) = static_entry(r.int(6)?)?;
            (n.as_bytes().to_vec(), v.as_bytes().to_vec())
        } else if first & 0b0100_0000 != 0 {
            if first & 0b0001_0000 == 0 {
                return Err(QpackError("literal with a name from the dynamic table"));
            }
            let (n, _) = static_entry(r.int(4)?)?;
            (n.as_bytes().to_vec(), r.string(7)?)
        } else if first & 0b0010_0000 != 0 {
            let name = r.string(3)?;
            (name, r.string(7)?)
        } else {
            return Err(QpackError("post-base field line without a dynamic table"));
        };
        size += name.len() + value.len() + 32;
        if size > limit {
            return Err(QpackError("field section larger than the limit"));
        }
        fields.push((name, value));
    }
    Ok(fields)
}

fn static_entry(index: u64) -> Result<(&'static str, &'static str), QpackError> {
    STATIC
        .get(index as usize)
        .copied()
        .ok_or(QpackError("static table index out of range"))
}

/// A prefixed integer (RFC 7541 §5.1): `flags` in the bits above the `prefix` low bits.
fn put_int(out: &mut Vec<u8>, flags: u8, prefix: u32, mut value: u64) {
    let max = (1u64 << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn peek(&self) -> Result<u8, QpackError> {
        self.buf.get(self.pos).copied().ok_or(QpackError(
            "field section ends in the middle of a field line",
        ))
    }

    fn byte(&mut self) -> Result<u8, QpackError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn int(&mut self, prefix: u32) -> Result<u64, QpackError> {
        let max = (1u64 << prefix) - 1;
        let mut value = u64::from(self.byte()?) & max;
        if value < max {
            return Ok(value);
        }
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift > 56 {
                return Err(QpackError("integer too large"));
            }
            value += u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    /// A string literal whose Huffman flag is the bit just above the `prefix` bits.
    fn string(&mut self, prefix: u32) -> Result<Vec<u8>, QpackError> {
        let huffman = self.peek()? & (1 << prefix) != 0;
        let len = self.int(prefix)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or(QpackError("string literal longer than the field section"))?;
        let raw = &self.buf[self.pos..end];
        self.pos = end;
        if huffman {
            huffman::decode(raw)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// The Huffman code of RFC 7541 Appendix B, which QPACK reuses. It is canonical: codes
/// are assigned in order of length, then of symbol, so the lengths alone define it.
pub(crate) mod huffman {
    use super::QpackError;
    use std::sync::OnceLock;

    /// The code length of each byte value (RFC 7541 Appendix B); EOS (256) is 30 ones.
    const LENGTHS: [u8; 256] = [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30,
        28, 28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
        5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5,
        7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22,
        22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23,
        22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22,
        21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26,
        26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20,
        24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27,
        27, 28, 27, 27, 27, 27, 27, 26,
    ];

    const EOS_LEN: u8 = 30;

    /// Per code length: the first code of that length, the number of codes, and where
    /// its symbols start in `symbols` (canonical decoding).
    struct Table {
        first: [u32; 31],
        count: [u32; 31],
        offset: [u32; 31],
        symbols: Vec<u16>,
    }

    fn table() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut symbols: Vec<u16> = (0..=256).collect();
            let len_of = |s: u16| {
                if s == 256 {
                    EOS_LEN
                } else {
                    LENGTHS[s as usize]
                }
            };
            symbols.sort_by_key(|&s| (len_of(s), s));
            let mut t = Table {
                first: [0; 31],
                count: [0; 31],
                offset: [0; 31],
                symbols,
            };
            let mut code = 0u32;
            let mut prev_len = 0u8;
            for (k, &s) in t.symbols.iter().enumerate() {
                let len = len_of(s);
                if k > 0 {
                    code = (code + 1) << (len - prev_len);
                }
                if t.count[len as usize] == 0 {
                    t.first[len as usize] = code;
                    t.offset[len as usize] = k as u32;
                }
                t.count[len as usize] += 1;
                prev_len = len;
            }
            t
        })
    }

    /// The code of `symbol` (0..=256) and its length, for tests and the encoder of tests.
    #[cfg(test)]
    pub(crate) fn code_of(symbol: u16) -> (u32, u8) {
        let t = table();
        let pos = t.symbols.iter().position(|&s| s == symbol).unwrap() as u32;
        for len in 1..31 {
            if t.count[len] > 0 && pos >= t.offset[len] && pos < t.offset[len] + t.count[len] {
                return (t.first[len] + pos - t.offset[len], len as u8);
            }
        }
        unreachable!()
    }

    /// Decodes a Huffman-coded string literal. The padding must be at most seven 1 bits
    /// (the start of EOS), and EOS itself must not appear (RFC 7541 §5.2).
    pub(crate) fn decode(input: &[u8]) -> Result<Vec<u8>, QpackError> {
        let t = table();
        let mut out = Vec::with_capacity(input.len() * 8 / 5 + 1);
        let mut code = 0u32;
        let mut len = 0usize;
        for &byte in input {
            for bit in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> bit) & 1);
                len += 1;
                if len > EOS_LEN as usize {
                    return Err(QpackError("invalid Huffman code"));
                }
                let count = t.count[len];
                if count > 0 && code >= t.first[len] && code - t.first[len] < count {
                    let symbol = t.symbols[(t.offset[len] + code - t.first[len]) as usize];
                    if symbol == 256 {
                        return Err(QpackError("EOS inside a Huffman-coded string"));
                    }
                    out.push(symbol as u8);
                    code = 0;
                    len = 0;
                }
            }
        }
        // What is left must be a prefix of EOS (all ones), shorter than a byte.
        if len > 7 || code != (1u32 << len) - 1 {
            return Err(QpackError("invalid Huffman padding"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn huffman_decodes_the_examples_of_rfc_7541() {
        // RFC 7541 C.4.1–C.4.3 and C.6.1.
        for (coded, plain) in [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
        ] {
            assert_eq!(
                huffman::decode(&hex(coded)).unwrap(),
                plain.as_bytes(),
                "{plain}"
            );
        }
    }

    #[test]
    fn huffman_round_trips_every_byte_and_refuses_bad_padding() {
        // Encode every byte value with the derived codes, pad with ones, decode.
        let input: Vec<u8> = (0..=255u8).chain(b"websocket".iter().copied()).collect();
        let mut bits: Vec<bool> = Vec::new();
        for &b in &input {
            let (code, len) = huffman::code_of(u16::from(b));
            for i in (0..len).rev() {
                bits.push((code >> i) & 1 == 1);
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        let bytes: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |acc, &b| (acc << 1) | b as u8))
            .collect();
        assert_eq!(huffman::decode(&bytes).unwrap(), input);
        assert_eq!(huffman::code_of(256), (0x3fff_ffff, 30));
        // 'a' is 00011: padded with ones it decodes, with zeros it is an error, and a
        // whole byte of padding is too many.
        assert_eq!(huffman::decode(&[0b0001_1111]).unwrap(), b"a");
        assert!(huffman::decode(&[0b0001_1000]).is_err());
        assert!(huffman::decode(&[0b0001_1111, 0xff]).is_err());
        // EOS spelled out (30 ones, then padding).
        assert!(huffman::decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_request_round_trips_through_static_references_and_literals() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":authority", b"example.com:4433"),
            (b":path", b"/rooms/lobby?x=1"),
            (b"sec-websocket-version", b"13"),
            (b"origin", b"https://example.com"),
            (b"x-long", &[b'a'; 300]),
        ];
        let mut block = Vec::new();
        encode(fields.iter().copied(), &mut block);
        // :method CONNECT is static entry 15, indexed: 0xc0 | 15.
        assert_eq!(&block[..3], &[0, 0, 0xc0 | 15]);
        let decoded = decode(&block, 64 << 10).unwrap();
        let back: Vec<(&[u8], &[u8])> = decoded
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(back, fields);
        assert!(decode(&block, 200).is_err(), "limit");
    }

    #[test]
    fn dynamic_table_references_and_truncation_are_errors() {
        // Required Insert Count 1.
        assert!(decode(&[1, 0, 0xc0 | 17], 4096).is_err());
        // Indexed dynamic (T=0), post-base indexed, post-base name reference.
        assert!(decode(&[0, 0, 0x80], 4096).is_err());
        assert!(decode(&[0, 0, 0x10], 4096).is_err());
        assert!(decode(&[0, 0, 0x00], 4096).is_err());
        // Literal with a dynamic name reference (T=0).
        assert!(decode(&[0, 0, 0x40, 0x01, b'a'], 4096).is_err());
        // Static index 99 is past the table; a string longer than the block.
        assert!(decode(&[0, 0, 0xff, 0x24], 4096).is_err());
        assert!(decode(&[0, 0, 0x51, 0x05, b'a'], 4096).is_err());
        assert!(decode(&[0, 0], 4096).unwrap().is_empty());
        // Huffman value in a literal with name reference: :path (1) = "/" coded.
        let mut block = vec![0, 0, 0x51, 0x81];
        let (code, len) = huffman::code_of(u16::from(b'/'));
        assert_eq!(len, 6);
        block.push(((code << 2) | 0b11) as u8);
        assert_eq!(
            decode(&block, 4096).unwrap(),
            vec![(b":path".to_vec(), b"/".to_vec())]
        );
    }
}
