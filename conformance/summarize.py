#!/usr/bin/env python3
"""Summarize an Autobahn TestSuite report (index.json) and exit non-zero on failure.

Usage: summarize.py REPORT_DIR [--agent tidewire] [--expected FILE] [--write-expected] [--title T]

Exit codes: 0 all cases OK / NON-STRICT / INFORMATIONAL and no regression against FILE;
1 a case FAILED or UNIMPLEMENTED, or a regression; 2 no report, no cases, or agent missing.
"""
import argparse
import json
import os
import sys
from collections import Counter, defaultdict

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]
BAD = {"FAILED", "UNIMPLEMENTED"}
# Higher is worse; a case whose rank rises against the expected file is a regression.
RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1, "WRONG CODE": 2, "UNCLEAN": 2,
        "UNIMPLEMENTED": 3, "FAILED": 4, "MISSING": 4}


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def table(title, rows, columns):
    """rows: list of (label, Counter)."""
    width = max([len(title)] + [len(label) for label, _ in rows])
    colw = [max(len(c), 5) for c in columns]
    out = [title.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(columns, colw)) + "  total"]
    for label, counts in rows:
        cells = "  ".join(str(counts.get(c, 0)).rjust(w) for c, w in zip(columns, colw))
        out.append(label.ljust(width) + "  " + cells + "  " + str(sum(counts.values())).rjust(5))
    return "\n".join(out)


def columns_for(counters, base):
    seen = set()
    for c in counters:
        seen.update(c)
    return base + sorted(seen - set(base))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", help="directory holding the report's index.json")
    ap.add_argument("--agent", default="tidewire", help="agent name in the report (default: tidewire)")
    ap.add_argument("--expected", help="JSON file {case id: behavior} to compare against (if it exists)")
    ap.add_argument("--write-expected", action="store_true", help="(re)write --expected from this report")
    ap.add_argument("--title", default=None, help="heading for the summary")
    args = ap.parse_args()

    index_path = os.path.join(args.report_dir, "index.json")
    heading = "Autobahn TestSuite: %s" % (args.title or args.report_dir)
    print("=" * len(heading))
    print(heading)
    print("=" * len(heading))
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("ERROR: cannot read %s: %s (did wstest run to the end?)" % (index_path, e))
        return 2
    if args.agent not in index:
        print("ERROR: agent %r is not in %s (agents present: %s)"
              % (args.agent, index_path, ", ".join(sorted(index)) or "none"))
        return 2
    cases = index[args.agent]
    if not cases:
        print("ERROR: no cases ran for agent %r" % args.agent)
        return 2

    ids = sorted(cases, key=case_key)
    behavior = {c: cases[c].get("behavior", "MISSING") for c in ids}
    close = {c: cases[c].get("behaviorClose", "MISSING") for c in ids}

    total = Counter(behavior.values())
    by_group = defaultdict(Counter)
    close_by_group = defaultdict(Counter)
    for c in ids:
        by_group[c.split(".")[0]][behavior[c]] += 1
        close_by_group[c.split(".")[0]][close[c]] += 1
    groups = sorted(by_group, key=case_key)

    cols = columns_for([total], BEHAVIORS)
    print("agent %s: %d cases" % (args.agent, len(ids)))
    print()
    print(table("behavior", [("all", total)] + [("%s.*" % g, by_group[g]) for g in groups], cols))
    print()
    close_total = Counter(close.values())
    ccols = columns_for([close_total], ["OK", "INFORMATIONAL", "NON-STRICT", "WRONG CODE", "UNCLEAN", "FAILED"])
    ccols = [c for c in ccols if close_total.get(c) or c in ("OK", "FAILED")]
    print(table("behaviorClose", [("all", close_total)] + [("%s.*" % g, close_by_group[g]) for g in groups], ccols))
    print()

    not_ok = [c for c in ids if behavior[c] != "OK" or close[c] not in ("OK", "INFORMATIONAL")]
    if not_ok:
        print("non-OK cases (%d):" % len(not_ok))
        for c in not_ok:
            extra = cases[c].get("remoteCloseCode")
            print("  %-10s %-14s close=%-14s remoteCloseCode=%s" % (c, behavior[c], close[c], extra))
    else:
        print("non-OK cases: none")
    print()

    status = 0
    bad = [c for c in ids if behavior[c] in BAD]
    if bad:
        status = 1

    if args.expected and os.path.exists(args.expected) and not args.write_expected:
        with open(args.expected) as f:
            expected = json.load(f)
        regressions, improvements, changed, not_run = [], [], [], []
        for c in sorted(set(expected) | set(behavior), key=case_key):
            old, new = expected.get(c), behavior.get(c)
            if old == new:
                continue
            if new is None:
                not_run.append(c)
            elif old is None:
                changed.append((c, "(not in file)", new))
            elif RANK.get(new, 4) > RANK.get(old, 4):
                regressions.append((c, old, new))
            elif RANK.get(new, 4) < RANK.get(old, 4):
                improvements.append((c, old, new))
            else:
                changed.append((c, old, new))
        shown = os.path.relpath(args.expected)
        print("against %s:" % (args.expected if shown.startswith("..") else shown))
        if not (regressions or improvements or changed or not_run):
            print("  no differences")
        for label, items in (("REGRESSION", regressions), ("improved", improvements), ("changed", changed)):
            for c, old, new in items:
                print("  %-10s %-10s %s -> %s" % (label, c, old, new))
        if not_run:
            print("  not run    %d expected case(s): %s%s" % (
                len(not_run), " ".join(not_run[:10]), " ..." if len(not_run) > 10 else ""))
        if improvements:
            print("  (update the expectations with --write-expected)")
        print()
        if regressions:
            status = 1

    if args.write_expected:
        if not args.expected:
            print("ERROR: --write-expected needs --expected FILE")
            return 2
        with open(args.expected, "w") as f:
            json.dump({c: behavior[c] for c in ids}, f, indent=1, sort_keys=False)
            f.write("\n")
        print("wrote %s (%d cases)" % (args.expected, len(ids)))
        print()

    verdict = "PASS" if status == 0 else "FAIL"
    summary = ", ".join("%d %s" % (total[b], b) for b in cols if total.get(b))
    print("%s: %s" % (verdict, summary))
    if bad:
        print("  %d case(s) FAILED or UNIMPLEMENTED" % len(bad))
    # Plain closing line that CI tooling reads: "passed" = OK, NON-STRICT or INFORMATIONAL.
    print("autobahn: %d passed, %d failed" % (len(ids) - len(bad), len(bad)))
    return status


if __name__ == "__main__":
    sys.exit(main())
