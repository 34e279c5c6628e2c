"""Start-up of two builds of the binary, side by side: this one against a baseline (e.g. the last release).

    .venv/bin/python scripts/bench/bench_startup.py --baseline OLD/dist/audiotag [--binary dist/audiotag] [--pairs 15]

Each measure alternates the two binaries (A B, B A, ...) from a clean environment, so load on a shared machine
hits both alike:
  - first start: `--version`, and tagging one 10 s clip (shared/audio/speech.wav), each on a fresh, empty cache
    folder (the launcher unpacks, then Python starts);
  - repeated `--version` and tag-one-clip on a warm cache.
Prints medians and the ratio binary / baseline. Targets of issue 11 (exit 1 when missed): first start
(`--version`, empty cache) <= 0.5 s; repeated tag-one-clip <= 1.05 x the baseline.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_binary import CLIP, REPO, clean_env, median_ms, paired, report, run_rusage  # noqa: E402

TARGET_FIRST_START_S = 0.5
TARGET_RATIO = 1.05


def first_starts(binaries: dict, args: list, runs: int, work: Path, home: Path) -> dict:
    """Median wall ms of ``args`` on a new, empty cache folder each time, binaries alternating."""
    times = {name: [] for name in binaries}
    for i in range(runs):
        for name in (list(binaries) if i % 2 == 0 else list(binaries)[::-1]):
            fresh = work / f"first-{name}-{i}"
            times[name].append(run_rusage([str(binaries[name]), *args], work,
                                          clean_env(home, AUDIOTAG_CACHE_DIR=fresh))[0])
            shutil.rmtree(fresh)
    return {name: median_ms(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, default=REPO / "dist" / "audiotag")
    parser.add_argument("--baseline", type=Path, required=True, help="the binary to compare against")
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args()
    binaries = {"binary": args.binary.resolve(), "baseline": args.baseline.resolve()}
    for path in binaries.values():
        if not path.is_file():
            raise SystemExit(f"{path} missing")
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        home = work / "home"
        home.mkdir()
        tag = ["--format", "json", CLIP]
        print(f"bench_startup: {binaries['binary']} vs baseline {binaries['baseline']}; {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        sizes = {name: round(path.stat().st_size / 1e6, 2) for name, path in binaries.items()}
        first_version = first_starts(binaries, ["--version"], args.pairs, work, home)
        first_tag = first_starts(binaries, tag, max(3, args.pairs // 2), work, home)
        commands = {name: {"name": name, "argv": [str(path)],
                           "env": clean_env(home, AUDIOTAG_CACHE_DIR=work / f"cache-{name}")}
                    for name, path in binaries.items()}
        for command in commands.values():
            for _ in range(2):  # unpack, then warm the page cache
                run_rusage([*command["argv"], *tag], work, command["env"])
        version = paired("--version", commands["binary"], commands["baseline"], ["--version"], args.pairs, work)
        tagging = paired("tag one 10 s clip", commands["binary"], commands["baseline"], tag, args.pairs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [("size (MB)", sizes["binary"], sizes["baseline"]),
            ("first start, --version (ms)", first_version["binary"], first_version["baseline"]),
            ("first start, tag one clip (ms)", first_tag["binary"], first_tag["baseline"]),
            ("repeated --version (ms)", version["binary"]["median_ms"], version["baseline"]["median_ms"]),
            ("repeated tag one clip (ms)", tagging["binary"]["median_ms"], tagging["baseline"]["median_ms"]),
            ("peak RSS, tag one clip (MB)", tagging["binary"]["rss_mb"], tagging["baseline"]["rss_mb"])]
    print(f"\n(load {os.getloadavg()[0]:.2f} at the end)\n| measure | binary | baseline | ratio |\n|---|---|---|---|")
    for label, new, old in rows:
        print(f"| {label} | {new} | {old} | {new / old:.2f} |")
    ratio = tagging["binary"]["median_ms"] / tagging["baseline"]["median_ms"]
    checks = {f"first start (--version) <= {TARGET_FIRST_START_S} s":
                  first_version["binary"] <= TARGET_FIRST_START_S * 1000,
              f"repeated tag one clip <= {TARGET_RATIO} x baseline ({ratio:.3f})": ratio <= TARGET_RATIO}
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
