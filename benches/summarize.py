#!/usr/bin/env python3
"""Turn benches/results/RUN/runs.jsonl (+ idle.jsonl) into the markdown table.

usage: summarize.py RESULTS_DIR BASELINE SERVER...
Medians are taken over rounds; ratios are each server's median over the baseline's.
Each run is one generator's JSON object (compare.sh maps `tidewire bench`'s to loadgen's
field names; the count check is `kernel_echoes` from tidewire bench, `server_echoes_by_ss`
from loadgen), tagged with `generator` (absent in older runs: loadgen).
"""
import json
import statistics
import sys
from pathlib import Path

out, baseline, servers = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
runs = [json.loads(l) for l in (out / "runs.jsonl").read_text().splitlines() if l.strip()]
idle = {}
if (out / "idle.jsonl").exists():
    for l in (out / "idle.jsonl").read_text().splitlines():
        if l.strip():
            j = json.loads(l)
            idle[j["server"]] = j

def echoes_by_kernel(r):
    """Echoes counted from the kernel's byte counters, independently of the parser."""
    v = r.get("kernel_echoes")
    return v if v is not None else r.get("server_echoes_by_ss")


GENERATORS = {
    "tidewire": "`tidewire bench echo` (the project's generator, on its own client)",
    "loadgen": "`benches/peers/loadgen` (independent, no WebSocket library inside)",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

groups = {}
for r in runs:
    groups.setdefault((r["size"], r["conns"], r["server"]), []).append(r)

cases = sorted({(s, c) for (s, c, _) in groups}, key=lambda k: (k[1], k[0]))
rows = {}
for key, rs in groups.items():
    rows[key] = {
        "n": len(rs),
        "rate": med([r["msgs_per_s"] for r in rs]),
        "mbps": med([r["mb_per_s"] for r in rs]),
        "p50": med([r["lat_us"]["p50"] for r in rs]),
        "p99": med([r["lat_us"]["p99"] for r in rs]),
        "cpu": med([r["server_cpu_us_per_msg"] for r in rs]),
        "util": med([r["server_cpu_util"] for r in rs]),
        "lg": med([r["loadgen_cpu_util"] for r in rs]),
        "err": sum(r["errors_total"] for r in rs),
        "txw": med([r.get("tx_wire_bytes_per_msg") for r in rs]),
        "rxw": med([r.get("rx_wire_bytes_per_msg") for r in rs]),
        "z": any(r.get("compression") for r in rs),
        "pmd": next((r.get("pmd") for r in rs if r.get("pmd")), None),
        "payload": next((r.get("payload") for r in rs if r.get("payload")), None),
        "ss": med([echoes_by_kernel(r) / r["msgs"] if echoes_by_kernel(r) and r["msgs"] else None for r in rs]),
    }

def fmt(v, nd=0):
    if v is None:
        return "—"
    return f"{v:,.{nd}f}"

def ratio(v, b):
    if v is None or b in (None, 0):
        return ""
    return f" ({v / b:.2f}×)"

loads = [r.get("loadavg1") for r in runs if r.get("loadavg1") is not None]
if loads and max(loads) > 1.5:
    print(f"> **Noisy host:** 1-minute load average reached {max(loads):.1f} during the runs "
          f"(2 cores; the server and the generator alone account for ~2). Other processes competed for "
          f"the pinned cores, so absolute numbers are depressed and ratios are less reliable.\n")
compressed = any(r["z"] for r in rows.values())
gens = sorted({r.get("generator", "loadgen") for r in runs})
print("Load generator: " + "; ".join(GENERATORS.get(g, g) for g in gens) + ".\n")
payloads = sorted({r["payload"] for r in rows.values() if r["payload"]})
print(f"Ratios (×) are relative to **{baseline}**; values are medians of "
      f"{max((r['n'] for r in rows.values()), default=0)} round(s). Payload: {', '.join(payloads) or 'alpha'}"
      + (" (deterministic JSON-like records, varied per message)" if "json" in payloads else "")
      + (". **permessage-deflate** on; negotiated: "
         + "; ".join(sorted({f"{k[2]}: `{r['pmd']}`" for k, r in rows.items() if r["pmd"]}))
         + ". wire B/msg = bytes per message on the wire (frame header + compressed payload), client→server / server→client."
         if compressed else "") + "\n")
extra_h = " wire B/msg c→s / s→c |" if compressed else ""
print("| server | size B | conns | msgs/s | MB/s | p50 µs | p99 µs | server CPU µs/msg | server CPU % | generator CPU % |" + extra_h + " count check | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if compressed else "") + "---:|---:|")
for size, conns in cases:
    b = rows.get((size, conns, baseline), {})
    for s in servers:
        r = rows.get((size, conns, s))
        if not r:
            continue
        print(f"| {s} | {size} | {conns} | {fmt(r['rate'])}{ratio(r['rate'], b.get('rate'))} | {fmt(r['mbps'], 2)} "
              f"| {fmt(r['p50'], 1)}{ratio(r['p50'], b.get('p50'))} | {fmt(r['p99'], 1)}{ratio(r['p99'], b.get('p99'))} "
              f"| {fmt(r['cpu'], 2)}{ratio(r['cpu'], b.get('cpu'))} "
              f"| {fmt(r['util'] * 100 if r['util'] is not None else None)} | {fmt(r['lg'] * 100 if r['lg'] is not None else None)} |"
              + (f" {fmt(r['txw'], 0)} / {fmt(r['rxw'], 0)} |" if compressed else "")
              + f" {fmt(r['ss'], 3)} | {r['err']} |")
if idle:
    b = idle.get(baseline, {}).get("kb_per_conn")
    zidle = any(j.get("compression") for j in idle.values())
    if zidle:
        sz = next(j.get("msg_size") for j in idle.values())
        print(f"\nIdle memory with permessage-deflate: each connection negotiated compression and echoed ONE "
              f"{sz} B compressible message (so the server's compressor and decompressor exist), then idled.")
        print("\n| server | compressed conns | replies compressed | RSS before KB | RSS after KB | KB per compressed conn |")
        print("|---|---:|---:|---:|---:|---:|")
    else:
        print("\n| server | idle conns | RSS before KB | RSS after KB | KB per idle conn |")
        print("|---|---:|---:|---:|---:|")
    for s in servers:
        j = idle.get(s)
        if j:
            mid = f" {j.get('compressed_replies', 0)} |" if zidle else ""
            print(f"| {s} | {j['open']} |{mid} {j['rss_before_kb']:,} | {j['rss_after_kb']:,} | {fmt(j['kb_per_conn'], 1)}{ratio(j['kb_per_conn'], b)} |")

# On a shared VM the cost of a run can flip between two levels for every server alike (on the
# AMD host of 2026-11-24: 8.5 vs 12.3 µs per 16 KiB echo, and at 64 KiB perf put the
# kernel's copy from user space, _copy_from_iter, at 34% of the core in slow runs and 11-14%
# in quick ones, same binary; the level persists for tens of seconds). Medians of a few rounds then depend on how many runs of each server
# fell in the slow level. Two estimators that do not: the runs of one round are adjacent in
# time, so the per-round ratio compares servers under the same conditions; and the best
# round of each server is its cost when the machine was at its quickest.
def paired(key_a, key_b, field):
    a = {r["round"]: r[field] for r in groups.get(key_a, []) if r.get(field)}
    b = {r["round"]: r[field] for r in groups.get(key_b, []) if r.get(field)}
    return [a[k] / b[k] for k in sorted(a) if k in b]


others = [s for s in servers if s != baseline]
if others and any(s == baseline for (_, _, s) in groups):
    print(f"\n**{baseline} ÷ each server, run by run.** \"paired\" is the median over rounds of "
          f"the ratio of the two runs of one round (min–max in brackets); \"best\" is the ratio of "
          f"the two servers' best rounds (highest msgs/s, lowest CPU per message). msgs/s: above 1 "
          f"means {baseline} is faster; CPU: below 1 means {baseline} costs less.\n")
    print("| vs server | size B | conns | msgs/s paired | msgs/s best | server CPU paired | server CPU best |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, conns in cases:
        mine = groups.get((size, conns, baseline), [])
        if not mine:
            continue
        for s in others:
            theirs = groups.get((size, conns, s), [])
            if not theirs:
                continue
            pr = paired((size, conns, baseline), (size, conns, s), "msgs_per_s")
            pc = paired((size, conns, baseline), (size, conns, s), "server_cpu_us_per_msg")
            best_r = max(r["msgs_per_s"] for r in mine) / max(r["msgs_per_s"] for r in theirs)
            cm = [r["server_cpu_us_per_msg"] for r in mine if r.get("server_cpu_us_per_msg")]
            ct = [r["server_cpu_us_per_msg"] for r in theirs if r.get("server_cpu_us_per_msg")]
            best_c = min(cm) / min(ct) if cm and ct else None

            def span(xs):
                return f"{statistics.median(xs):.3f} ({min(xs):.2f}–{max(xs):.2f})" if xs else "—"

            print(f"| {s} | {size} | {conns} | {span(pr)} | {best_r:.3f} | {span(pc)} | "
                  f"{fmt(best_c, 3)} |")
