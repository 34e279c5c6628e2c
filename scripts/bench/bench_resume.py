"""--resume on a big output: peak memory and time of reading what is recorded, before and after a change.

    .venv/bin/python scripts/bench/bench_resume.py [--records 1000000] [--before REV] [--format jsonl|csv]

Writes an output of RECORDS records (10 tags each, as audiotag writes them, a torn record at the end), then
reads it with ``recorded_paths`` (``audiotag.batch.writer``) of this checkout and of git revision REV (default
main), each in a fresh process: its peak RSS, its wall time, the records found, and whether the torn end was cut.
Target: at most 300 MB and 30 s for 1,000,000 records (exit status 1 when missed).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
TARGET_MB, TARGET_S = 300, 30.0
READER = """
import inspect, json, sys, time
sys.path.insert(0, sys.argv[1])  # the checkout under test
try:
    from audiotag.batch.writer import recorded_paths
except ImportError:  # before the package was laid out in folders
    from audiotag.output import recorded_paths
started = time.perf_counter()
rows = (lambda: 10) if "lambda: 1" in inspect.getsource(recorded_paths) else 10
paths = recorded_paths(sys.argv[2], sys.argv[3], rows)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "records": len(paths), "first": "/crawl/d0/f0000000.mp3" in paths,
                  "torn": "/crawl/torn.mp3" in paths}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--before", default="main", help="git revision to compare with (default main)")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="audiotag-resume-") as scratch:
        scratch = Path(scratch)
        path = scratch / f"out.{args.format}"
        started = time.perf_counter()
        _write(path, args.records, args.format)
        print(f"wrote {args.records} records ({path.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - started:.1f} s")
        before = scratch / "before"  # the package at REV, unpacked
        before.mkdir()
        archive = subprocess.run(["git", "archive", args.before, "audiotag"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        results = {}
        for name, module in ((f"before ({args.before})", before), ("after (this checkout)", REPO)):
            copy = scratch / "copy"  # a reader cuts the torn end: each reads its own copy
            subprocess.run(["cp", "--reflink=auto", str(path), str(copy)], check=True)
            results[name] = _measure(module, copy, args.format)
            copy.unlink()
    ok = True
    for name, result in results.items():
        print(f"{name:28s} peak RSS {result['mb']:7.0f} MB  {result['seconds']:6.1f} s"
              f" ({result['cpu']:.1f} s CPU)  records {result['records']}  torn end cut: {not result['torn']}")
    after = results["after (this checkout)"]
    print(f"after/before: memory {after['mb'] / results[next(iter(results))]['mb']:.3f}, "
          f"CPU {after['cpu'] / results[next(iter(results))]['cpu']:.2f}")
    ok = after["mb"] <= TARGET_MB * args.records / 1e6 and after["seconds"] <= TARGET_S * args.records / 1e6 \
        and after["records"] == args.records and not after["torn"]
    print(f"target (per 1M records) <= {TARGET_MB} MB and <= {TARGET_S:.0f} s: {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


def _write(path: Path, count: int, fmt: str) -> None:
    from audiotag import records

    tags = [{"label": f"Label {i}", "mid": f"/m/0{i:05d}", "index": i, "score": round(0.9 / (i + 1), 6)}
            for i in range(10)]
    with open(path, "w", encoding="utf-8") as file:
        if fmt == "csv":
            file.write(records.table_header("csv"))
        chunk = []
        sample = records.format_record({"path": "@", "duration": 10.0, "sample_rate": 44100, "channels": 2,
                                       "tags": tags}, fmt)
        head, tail = sample.split("@")  # every record alike but its path: formatted once
        for number in range(count):
            chunk.append(head + f"/crawl/d{number % 1000}/f{number:07d}.mp3" + tail if fmt == "jsonl" else
                         sample.replace("@", f"/crawl/d{number % 1000}/f{number:07d}.mp3"))
            if len(chunk) == 10000:
                file.write("".join(chunk))
                chunk.clear()
        file.write("".join(chunk))
        torn = records.format_record({"path": "/crawl/torn.mp3", "duration": 1.0, "sample_rate": 8000, "channels": 1,
                                     "tags": tags}, fmt)
        file.write(torn[:len(torn) // 2])


def _measure(module: Path, path: Path, fmt: str) -> dict:
    """Run the reader in a fresh process; its own peak RSS comes from wait4."""
    with tempfile.TemporaryFile("w+") as out:
        reader = subprocess.Popen([sys.executable, "-c", READER, str(module), str(path), fmt], stdout=out,
                                  stderr=subprocess.PIPE)
        _, status, usage = os.wait4(reader.pid, 0)
        reader.returncode = os.waitstatus_to_exitcode(status)
        if reader.returncode:
            raise SystemExit(f"bench_resume: reader failed: {reader.stderr.read().decode()[-500:]}")
        out.seek(0)
        found = json.loads(out.read())
    found["mb"] = usage.ru_maxrss / 1024
    found["cpu"] = usage.ru_utime + usage.ru_stime
    return found


if __name__ == "__main__":
    sys.exit(main())
