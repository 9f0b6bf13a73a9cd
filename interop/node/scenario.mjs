// The interop SCENARIO, shared by the Node peers (see ../README.md).
// Same payload rules as ../scenario.py and the Rust interop_client.

const MIB = 1024 * 1024;

// 7-bit (<=125), 16-bit (126..=65535) and 64-bit (>=65536) length encodings.
export const SIZES = [0, 1, 125, 126, 127, 65535, 65536, 1 * MIB, 16 * MIB - 64];
export const MAX_MESSAGE_SIZE = 17 * MIB;
// 19 bytes: ASCII, then 2-, 3- and 4-byte UTF-8 sequences.
export const TEXT_PATTERN = 'tidewire:é€𝄞|';
export const PING_PAYLOAD = Buffer.from('tidewire-ping\x00\xff', 'latin1');
export const CLOSE_CODE = 1000;
export const CLOSE_REASON = 'interop done';

/** Exactly n UTF-8 bytes: the pattern repeated, cut at a char boundary, padded with '.'. */
export function textPayload(n) {
  const patLen = Buffer.byteLength(TEXT_PATTERN, 'utf8');
  const reps = Math.floor(n / patLen);
  let rem = n - reps * patLen;
  let tail = '';
  for (const ch of TEXT_PATTERN) {
    const w = Buffer.byteLength(ch, 'utf8');
    if (w > rem) break;
    tail += ch;
    rem -= w;
  }
  const s = TEXT_PATTERN.repeat(reps) + tail + '.'.repeat(rem);
  if (Buffer.byteLength(s, 'utf8') !== n) throw new Error(`textPayload(${n}) is wrong`);
  return s;
}

/** Exactly n bytes of xorshift32 (13, 17, 5) seeded with 0x9E3779B9 ^ n, words little-endian. */
export function binaryPayload(n) {
  let x = (0x9e3779b9 ^ n) >>> 0;
  const words = Math.ceil(n / 4);
  const buf = Buffer.alloc(words * 4);
  for (let i = 0; i < words; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, i * 4);
  }
  return buf.subarray(0, n);
}

export function describe(data, isBinary) {
  if (isBinary) return `binary(${data.length} bytes) ${data.subarray(0, 12).toString('hex')}...`;
  return `text(${data.length} bytes) ${JSON.stringify(data.subarray(0, 24).toString('utf8'))}...`;
}

export function firstDifference(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Tiny argv parser: positional args plus --flag / --key value. */
export function parseArgs(argv, valued = []) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--')) {
      const [k, v] = a.slice(2).split('=', 2);
      if (v !== undefined) out[k] = v;
      else if (valued.includes(k)) out[k] = argv[++i];
      else out[k] = true;
    } else out._.push(a);
  }
  return out;
}
