"""What --hash and --dedup cost: the dedup table's memory at 1M distinct contents, and hashing before decoding.

    .venv/bin/python scripts/bench/bench_content.py [--contents 1000000] [--count 200] [--rounds 3] [--keep DIR]

(a) Memory: ``batch.content.DigestTable`` (8 bytes of each sha256, the offset and length of its record) filled
    with ``--contents`` distinct digests; its arrays' bytes and the process's peak RSS growth, per content.
(b) Hashing: ``audiotag DIR -o FILE`` against ``--hash`` and ``--dedup`` on the benchmark corpus
    (``make_corpus.py``: 10 s WAV and FLAC clips), interleaved round by round, median files/s and the ratio; and
    the hashing alone (``hashing.file_sha256`` on every file, warm page cache) as a share of the plain run's time.
    A file is read twice (hashed, then decoded): the second read comes from the page cache.
The machine may be shared: compare the ratios, not the absolute figures.
"""

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_corpus import make_corpus  # noqa: E402

from audiotag.batch.content import DigestTable  # noqa: E402
from audiotag.hashing import file_sha256  # noqa: E402


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def table_memory(count: int) -> None:
    before = peak_rss()
    table = DigestTable()
    started = time.perf_counter()
    for n in range(count):
        table.add(hashlib.sha256(n.to_bytes(8, "little")).hexdigest(), n * 900, 900)
    seconds = time.perf_counter() - started
    grown = peak_rss() - before  # includes growing's transient copy (the old arrays, while rehashed)
    print(f"(a) DigestTable, {count} distinct contents: {table.nbytes / count:.1f} bytes per content in its arrays "
          f"({table.nbytes / 1e6:.1f} MB, {len(table._keys)} slots), peak RSS +{grown / count:.1f} bytes per "
          f"content; {count / seconds:,.0f} adds/s")


def run(directory: Path, output: Path, *flags) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "audiotag", str(directory), "-o", str(output), *flags], check=True,
                   cwd=REPO, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def hashing_cost(directory: Path, rounds: int) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    times = {"plain": [], "--hash": [], "--dedup": []}
    with tempfile.TemporaryDirectory() as scratch:
        run(directory, Path(scratch) / "warm.jsonl")  # the page cache and the model file, warm for every run
        for _ in range(rounds):
            for name, flags in (("plain", ()), ("--hash", ("--hash",)), ("--dedup", ("--dedup",))):
                times[name].append(run(directory, Path(scratch) / "out.jsonl", *flags))
    started = time.perf_counter()
    for path in files:
        file_sha256(path)
    alone = time.perf_counter() - started
    plain = statistics.median(times["plain"])
    print(f"(b) {len(files)} files, {size / 1e6:.1f} MB, load {os.getloadavg()[0]:.1f}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"    {name:8} {len(files) / median:7.1f} files/s  ({median / plain:.3f}x the plain run's time)")
    print(f"    hashing alone: {alone:.3f} s on one thread, {size / alone / 1e6:.0f} MB/s, "
          f"{alone / plain:.1%} of the plain run's time")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contents", type=int, default=1_000_000)
    parser.add_argument("--count", type=int, default=200, help="clips in the corpus for (b)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="make (or reuse) the corpus here")
    args = parser.parse_args(argv)
    table_memory(args.contents)
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or Path(scratch) / "corpus"
        if not directory.is_dir() or not any(directory.iterdir()):
            make_corpus(directory, args.count)
        hashing_cost(directory, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
