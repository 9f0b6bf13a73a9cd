"""The interop SCENARIO, shared by the Python peers (see README.md).

Every implementation (Python, Node, Rust `interop_client`) builds the same
payloads with the same rules, so a byte dump from any of them is comparable.
"""

from __future__ import annotations

import array
import sys

MIB = 1024 * 1024

# Each one sits on (or next to) a WebSocket length-encoding boundary:
# 7-bit (<=125), 16-bit (126..=65535), 64-bit (>=65536).
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 1 * MIB, 16 * MIB - 64]

# Peers must accept messages at least this large (16 MiB - 64 fits easily).
MAX_MESSAGE_SIZE = 17 * MIB

# 19 bytes: ASCII, then 2-, 3- and 4-byte UTF-8 sequences.
TEXT_PATTERN = "tidewire:é€𝄞|"

PING_PAYLOAD = b"tidewire-ping\x00\xff"

CLOSE_CODE = 1000
CLOSE_REASON = "interop done"


def text_payload(n: int) -> str:
    """Exactly `n` UTF-8 bytes: TEXT_PATTERN repeated, cut at a char
    boundary, then padded with '.' (at most 3) to reach `n` bytes."""
    pat_bytes = TEXT_PATTERN.encode()
    reps, rem = divmod(n, len(pat_bytes))
    tail = []
    for ch in TEXT_PATTERN:
        w = len(ch.encode())
        if w > rem:
            break
        tail.append(ch)
        rem -= w
    s = TEXT_PATTERN * reps + "".join(tail) + "." * rem
    assert len(s.encode()) == n
    return s


def binary_payload(n: int) -> bytes:
    """Exactly `n` bytes of xorshift32 (13, 17, 5) output, seeded with
    0x9E3779B9 ^ n, each 32-bit word written little-endian."""
    x = (0x9E3779B9 ^ n) & 0xFFFFFFFF
    words = (n + 3) // 4
    a = array.array("I", bytes(4 * words))
    assert a.itemsize == 4
    for i in range(words):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        a[i] = x
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()[:n]


def describe(data: bytes | str) -> str:
    """Short description for failure messages."""
    if isinstance(data, str):
        return f"text({len(data.encode())} bytes) {data[:24]!r}..."
    return f"binary({len(data)} bytes) {data[:12].hex()}..."


def first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
