#!/usr/bin/env python3
"""Cost of permessage-deflate per server: join an uncompressed and a COMPRESSION=1 run.

usage: zratio.py UNCOMPRESSED_RESULTS_DIR COMPRESSED_RESULTS_DIR
Best with the same payload in both (run the uncompressed one with PAYLOAD=json).
Prints, per server and case, median server CPU µs/msg and msgs/s of each run and the
compressed/uncompressed ratio of the CPU cost.
"""
import json
import statistics
import sys
from pathlib import Path


def load(d):
    g = {}
    for l in (Path(d) / "runs.jsonl").read_text().splitlines():
        if l.strip():
            r = json.loads(l)
            g.setdefault((r["server"], r["size"], r["conns"]), []).append(r)
    return g


def med(rs, f):
    xs = [f(r) for r in rs if f(r) is not None]
    return statistics.median(xs) if xs else None


u, z = load(sys.argv[1]), load(sys.argv[2])
pu = sorted({r.get("payload", "alpha") for rs in u.values() for r in rs})
print(f"Uncompressed payload: {', '.join(pu)}; compressed payload: json. "
      "CPU ratio = compressed / uncompressed server CPU µs/msg.\n")
print("| server | size B | conns | µs/msg plain | µs/msg deflate | CPU ratio | msgs/s plain | msgs/s deflate | wire B/msg s→c deflate |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for key in sorted(set(u) & set(z), key=lambda k: (k[0], k[2], k[1])):
    cu = med(u[key], lambda r: r.get("server_cpu_us_per_msg"))
    cz = med(z[key], lambda r: r.get("server_cpu_us_per_msg"))
    ru = med(u[key], lambda r: r.get("msgs_per_s"))
    rz = med(z[key], lambda r: r.get("msgs_per_s"))
    w = med(z[key], lambda r: r.get("rx_wire_bytes_per_msg"))
    ratio = f"{cz / cu:.2f}×" if cu and cz else "—"
    f = lambda v, nd=2: "—" if v is None else f"{v:,.{nd}f}"
    print(f"| {key[0]} | {key[1]} | {key[2]} | {f(cu)} | {f(cz)} | {ratio} | {f(ru, 0)} | {f(rz, 0)} | {f(w, 0)} |")
