#!/usr/bin/env python3
"""Files per second of audiotag-ray with 1 and 2 tagging worker processes on this machine, against `audiotag DIR`.

    .venv/bin/python scripts/bench/bench_ray.py [--corpus DIR] [--count 200] [--seconds 10] [--workers 1,2] [--rounds 1]

The corpus is scripts/bench/make_corpus.py's (200 x 10 s clips, mixed 16/32/44.1/48 kHz WAV and FLAC), made in a
scratch directory unless --corpus names one to make or reuse. Ray runs as a local instance in this process (on
127.0.0.1) with one CPU per core; each configuration tags the whole corpus into a fresh Parquet directory.

First, the compute bound: CPU per file of a tagging worker's work, in one thread of this process. Then, for
each configuration:
- job: the wall time of the whole Ray Data job (actor start and model load included, Ray start not) and files/s;
- steady: files/s once running, (count - small) / (T(count) - T(small)), where T(small) is the same job on the
  first --small files: it takes out the fixed cost (actor start, model load, first read, last write);
- fixed: that fixed cost, seconds.
The baseline is `audiotag DIR -o out.jsonl` (the batch mode: decode in parallel threads, one model session), run
the same way. The load average is printed too: figures taken on a shared machine are only as quiet as it was.
Results go to stdout; progress to stderr.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

# A one-machine benchmark: keep Ray on the loopback address (by default it advertises the machine's network
# address, which a sandbox or a firewall may refuse), and send no usage statistics.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", metavar="DIR", help="make (or reuse) the corpus here and keep it")
    parser.add_argument("--count", type=int, default=200, help="clips (default 200)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per clip (default 10)")
    parser.add_argument("--workers", default="1,2", help="tagging processes to measure, comma-separated (default 1,2)")
    parser.add_argument("--small", type=int, default=8,
                        help="files in the run that measures the fixed cost (default 8)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per configuration; the fastest counts (default 1)")
    args = parser.parse_args(argv)
    worker_counts = [int(n) for n in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        scratch = Path(scratch)
        corpus = Path(args.corpus) if args.corpus else scratch / "corpus"
        files = corpus_files(corpus, args.count, args.seconds)
        small = files[:args.small]
        cores = os.cpu_count()
        print(f"corpus: {len(files)} clips of {args.seconds:g} s in {corpus}; {cores} cores; "
              f"python {sys.version.split()[0]}")

        per_file = compute_cost(files[:args.small * 4])
        print(f"compute bound: {per_file * 1000:.1f} ms CPU per file in one thread (decode, resample, frontend, model)"
              f" = {1 / per_file:.1f} files/s per fully used core")

        cli = {}
        whole_dir = len(list(corpus.glob("clip*"))) == len(files)  # else the corpus holds more: name the files
        for name, inputs in (("small", small), ("all", [corpus] if whole_dir else files)):
            cli[name] = best(args.rounds,
                             lambda: run_cli(inputs, scratch / "cli.jsonl", len(small if name == "small" else files)))
        report(f"audiotag {'DIR' if whole_dir else 'FILE...'} (batch mode)", len(files), len(small),
               cli["all"], cli["small"])

        import ray

        from audiotag import __version__, distributed

        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        distributed.quiet_ray_data()
        print(f"ray {ray.__version__} local instance ({cores} CPUs) started in {time.perf_counter() - started:.1f} s; "
              f"audiotag {__version__}")
        results = {}
        try:
            run_ray([str(p) for p in small], scratch, 1)  # Ray starts its worker processes on the first job: not timed
            for workers in worker_counts:
                runs = {}
                for name, paths in (("small", small), ("all", files)):
                    runs[name] = best(args.rounds, lambda: run_ray([str(p) for p in paths], scratch, workers))
                results[workers] = runs
                report(f"audiotag-ray, {workers} worker process{'es' if workers > 1 else ''}", len(files), len(small),
                       runs["all"], runs["small"])
        finally:
            ray.shutdown()

        base = len(files) / cli["all"]
        base_steady = steady(len(files), len(small), cli["all"], cli["small"])
        for workers, runs in results.items():
            job = len(files) / runs["all"]
            print(f"ratio, {workers} worker(s) / audiotag DIR: job {job / base:.2f}, "
                  f"steady {steady(len(files), len(small), runs['all'], runs['small']) / base_steady:.2f}")
    return 0


def corpus_files(directory: Path, count: int, seconds: float) -> list:
    existing = sorted(p for p in directory.glob("clip*") if p.suffix in (".wav", ".flac")) if directory.is_dir() else []
    if len(existing) >= count:
        log(f"reusing the corpus in {directory}")
        return existing[:count]
    from make_corpus import make_corpus

    started = time.perf_counter()
    files = make_corpus(directory, count=count, seconds=seconds, seed=0)
    log(f"made {len(files)} clips in {time.perf_counter() - started:.1f} s")
    return files


def compute_cost(paths: list) -> float:
    """CPU seconds per file of what a tagging worker does for it (TagBatch.row), in this process, one thread."""
    from audiotag.distributed import TagBatch

    worker = TagBatch(threads=1)
    data = [Path(p).read_bytes() for p in paths]
    worker.row(str(paths[0]), data[0])  # the first call touches fresh memory: not counted
    started = time.process_time()
    for path, blob in zip(paths, data):
        worker.row(str(path), blob)
    return (time.process_time() - started) / len(paths)


def run_cli(inputs, output: Path, expected: int) -> float:
    """Wall seconds of `audiotag INPUT... -o output` (batch mode, all cores)."""
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "audiotag", *map(str, inputs),
                             "--format", "jsonl", "-o", str(output)],
                            capture_output=True, cwd=REPO)
    seconds = time.perf_counter() - started
    lines = output.read_text().splitlines() if output.exists() else []
    if result.returncode != 0 or len(lines) != expected:
        raise SystemExit(f"audiotag failed ({result.returncode}, {len(lines)} of {expected} records): "
                         f"{result.stderr.decode()[-500:]}")
    return seconds


def run_ray(paths: list, scratch: Path, workers: int) -> float:
    """Wall seconds of one Ray Data job tagging ``paths`` into a fresh Parquet directory."""
    from pyarrow import fs

    from audiotag import distributed

    output = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    started = time.perf_counter()
    distributed.tag(paths, str(output), filesystem=fs.LocalFileSystem(), workers=workers, worker_cpus=1)
    seconds = time.perf_counter() - started
    rows = distributed.read_rows(str(output))
    errors = [e for e in rows.column("error").to_pylist() if e is not None]
    if rows.num_rows != len(paths) or errors:
        raise SystemExit(f"audiotag-ray wrote {rows.num_rows} rows for {len(paths)} files, {len(errors)} errors")
    return seconds


def best(rounds: int, measure) -> float:
    times = []
    for _ in range(rounds):
        load = os.getloadavg()[0]
        times.append(measure())
        log(f"  {times[-1]:.2f} s (load average before: {load:.1f})")
    return min(times)


def steady(count: int, small: int, whole: float, fixed_run: float) -> float:
    return (count - small) / max(whole - fixed_run, 1e-9)


def report(name: str, count: int, small: int, whole: float, fixed_run: float) -> None:
    rate = steady(count, small, whole, fixed_run)
    fixed = whole - count / rate
    print(f"{name}: job {whole:.1f} s = {count / whole:.2f} files/s; steady {rate:.2f} files/s; fixed {fixed:.1f} s "
          f"(load average now {os.getloadavg()[0]:.1f})", flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
