"""Parquet against JSONL (``-f parquet``): size on disk and write time of the same records, side by side.

    .venv/bin/python scripts/bench/bench_parquet.py [--records 100000] [--rounds 3] [--real DIR]

(a) Synthetic: ``--records`` records made from a real run's records (the shared clips, tagged once), each with a
    crawler-like path and its scores jittered (real scores do not repeat), written through ``batch.writer.Writer``
    (JSONL, one flushed write per record, as a run does) and ``batch.parquet.ParquetWriter`` (a part file every
    1000 records, zstd); median seconds of ``--rounds`` rounds, interleaved, and the bytes each leaves.
(b) Real: ``audiotag DIR -o tags.jsonl`` against ``audiotag DIR -f parquet -o tags/`` on ``--real`` (default the
    shared clips): wall seconds of the whole run and the bytes of each output.
The machine may be shared: compare the ratios, not the absolute figures.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from audiotag.batch import parquet  # noqa: E402
from audiotag.batch.writer import Writer  # noqa: E402

SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size


def tag(folder: Path, *args) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "audiotag", str(folder), *args], capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode not in (0, 1):
        sys.exit(result.stderr.decode())
    return time.perf_counter() - started


def synthetic(base: list, count: int) -> list:
    rng = random.Random(0)
    records = []
    for number in range(count):
        rec = json.loads(json.dumps(base[number % len(base)]))
        rec["path"] = f"/crawl/{number // 1000:05d}/{rng.getrandbits(64):016x}.{rng.choice(['mp3', 'wav', 'ogg'])}"
        for item in rec.get("tags", []) + rec.get("categories", []):
            item["score"] = round(min(1.0, item["score"] * rng.uniform(0.5, 1.5)), 6)
        records.append(rec)
    return records


def write_jsonl(records: list, path: Path) -> float:
    started = time.perf_counter()
    writer = Writer("jsonl", str(path))
    for rec in records:
        writer.write(rec)
    writer.close()
    return time.perf_counter() - started


def write_parquet(records: list, path: Path) -> float:
    started = time.perf_counter()
    writer = parquet.ParquetWriter(str(path))
    for rec in records:
        writer.write(rec)
    writer.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--real", type=Path, default=SHARED / "audio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as scratch:
        scratch = Path(scratch)
        # (b) first: its JSONL records are also (a)'s base
        seconds = {"jsonl": [], "parquet": []}
        for _ in range(args.rounds):
            seconds["jsonl"].append(tag(args.real, "-o", str(scratch / "real.jsonl")))
            seconds["parquet"].append(tag(args.real, "-f", "parquet", "-o", str(scratch / "real")))
        base = [json.loads(line) for line in (scratch / "real.jsonl").read_text().splitlines()]
        real_sizes = size_of(scratch / "real.jsonl"), size_of(scratch / "real")
        real = statistics.median(seconds["jsonl"]), statistics.median(seconds["parquet"])

        records = synthetic(base, args.records)
        times = {"jsonl": [], "parquet": []}
        for _ in range(args.rounds):
            times["jsonl"].append(write_jsonl(records, scratch / "synthetic.jsonl"))
            times["parquet"].append(write_parquet(records, scratch / "synthetic"))
        sizes = size_of(scratch / "synthetic.jsonl"), size_of(scratch / "synthetic")
        written = len(parquet.read_records(str(scratch / "synthetic")))
        assert written == args.records, written
        jsonl_s, parquet_s = statistics.median(times["jsonl"]), statistics.median(times["parquet"])

    print(f"(a) {args.records} synthetic records, median of {args.rounds}:")
    print(f"    jsonl   {sizes[0] / 1e6:9.2f} MB  {jsonl_s:7.2f} s  ({args.records / jsonl_s:,.0f} records/s)")
    print(f"    parquet {sizes[1] / 1e6:9.2f} MB  {parquet_s:7.2f} s  ({args.records / parquet_s:,.0f} records/s)")
    print(f"    parquet/jsonl: size {sizes[1] / sizes[0]:.3f}, write time {parquet_s / jsonl_s:.2f}")
    print(f"(b) a real run over {args.real} ({len(base)} inputs), median of {args.rounds}:")
    print(f"    jsonl   {real_sizes[0] / 1e3:9.1f} kB  {real[0]:7.2f} s")
    print(f"    parquet {real_sizes[1] / 1e3:9.1f} kB  {real[1]:7.2f} s")
    print(f"    parquet/jsonl: size {real_sizes[1] / real_sizes[0]:.3f}, run time {real[1] / real[0]:.2f}")


if __name__ == "__main__":
    main()
