#!/usr/bin/env python3
"""Do two runs of audiotag agree? Compares two JSONL outputs record by record, scores within a tolerance.

    scripts/tools/compare_records.py A.jsonl B.jsonl [--tolerance 1e-5] [--ignore-path]

Scores are not bit-stable across machines: OpenBLAS picks a kernel per CPU (or per $OPENBLAS_CORETYPE), and its
kernels round the filterbank products differently, so the same audio can score 1e-6 apart on two hosts. Two ways
of running audiotag (package and binary, host and chroot, CLI and server) are therefore compared here, never
byte by byte unless both ran in one environment. Every field must be equal except floats, which may differ by
``tolerance``; lists of labelled items (tags, categories) are matched by label, and an item present on one side
only is accepted where it sits at the cut-off (its score within ``tolerance`` of the other side's lowest), since a
near-tie there can fall either way. Exit 0 when they agree, 1 (one line per difference) when not.
"""

import argparse
import json
import math
import sys

TOLERANCE = 1e-5  # an order above the spread seen between OpenBLAS kernels (1e-6), far below any meaningful score


def differences(a, b, tolerance: float = TOLERANCE, where: str = "") -> list:
    """What differs between two decoded JSON values, as readable lines (empty when they agree)."""
    if _is_number(a) and _is_number(b):
        if isinstance(a, float) or isinstance(b, float):
            if math.isclose(a, b, rel_tol=0, abs_tol=tolerance) or (math.isnan(a) and math.isnan(b)):
                return []
            return [f"{where}: {a} != {b} (tolerance {tolerance:g})"]
        return [] if a == b else [f"{where}: {a} != {b}"]
    if type(a) is not type(b):
        return [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, dict):
        found = [f"{where}: keys {sorted(a)} != {sorted(b)}"] if a.keys() != b.keys() else []
        for key in a.keys() & b.keys():
            found += differences(a[key], b[key], tolerance, f"{where}.{key}")
        return found
    if isinstance(a, list):
        key = _item_key(a) or _item_key(b)
        if key and a and b:
            return _labelled_differences(a, b, key, tolerance, where)
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in differences(x, y, tolerance, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _item_key(items: list):
    """The field that names each item of a list of scored items ("label" for tags, "name" for categories)."""
    for key in ("label", "name"):
        if items and all(isinstance(item, dict) and key in item and "score" in item for item in items):
            return key
    return None


def _labelled_differences(a: list, b: list, key: str, tolerance: float, where: str) -> list:
    found = []
    scores_a = [item["score"] for item in a]
    scores_b = [item["score"] for item in b]
    if len(a) != len(b):
        found.append(f"{where}: {len(a)} items != {len(b)}")
    by_a = {item[key]: item for item in a}
    by_b = {item[key]: item for item in b}
    for name in by_a.keys() & by_b.keys():
        found += differences(by_a[name], by_b[name], tolerance, f"{where}[{name!r}]")
    for name, lone, other in [(n, by_a[n], scores_b) for n in by_a.keys() - by_b.keys()] + \
                             [(n, by_b[n], scores_a) for n in by_b.keys() - by_a.keys()]:
        if lone["score"] > min(other) + tolerance:
            found.append(f"{where}: {name!r} (score {lone['score']}) is on one side only")
    return found


def compare_lines(lines_a: list, lines_b: list, tolerance: float = TOLERANCE, ignore_path: bool = False) -> list:
    """Differences between two JSONL outputs (lists of lines or of decoded records)."""
    records_a = [json.loads(line) if isinstance(line, (str, bytes)) else line for line in lines_a]
    records_b = [json.loads(line) if isinstance(line, (str, bytes)) else line for line in lines_b]
    if len(records_a) != len(records_b):
        return [f"{len(records_a)} records != {len(records_b)}"]
    found = []
    for number, (a, b) in enumerate(zip(records_a, records_b), 1):
        if ignore_path:
            a, b = dict(a, path=None), dict(b, path=None)
        found += differences(a, b, tolerance, f"record {number} ({a.get('path') or b.get('path')})")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest score difference (default {TOLERANCE:g})")
    parser.add_argument("--ignore-path", action="store_true", help="the records' paths may differ")
    args = parser.parse_args()
    with open(args.a, "rb") as a, open(args.b, "rb") as b:
        lines_a, lines_b = a.read().splitlines(), b.read().splitlines()
    found = compare_lines(lines_a, lines_b, args.tolerance, args.ignore_path)
    for line in found:
        print(f"compare_records: {line}", file=sys.stderr)
    if not found:
        exact = compare_lines(lines_a, lines_b, 0.0, args.ignore_path) == []
        same = "exactly equal" if exact else "not exactly equal"
        print(f"compare_records: {len(lines_a)} records agree within {args.tolerance:g} ({same})", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
