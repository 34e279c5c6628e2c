"""Size, start-up and memory of the frozen binary against `python -m audiotag`, in one paired run.

    .venv/bin/python scripts/bench/bench_binary.py [--pairs 15] [--first-runs 7] [--binary dist/audiotag] [--cold]

Measures (each command from a clean environment -- env -i style, empty working directory, no virtualenv on
PATH -- as a user would start it):
  - file size of the binary, its launcher and payload, and the unpacked folder;
  - `--version` and tagging one 10 s clip (shared/audio/speech.wav, --format json): median wall time over
    paired runs, binary and package alternating (A B, B A, ...), so load on this shared 2-core machine hits
    both alike; peak RSS of each (wait4's ru_maxrss, which spans the launcher's exec of the program);
  - the first run: a fresh, empty cache folder before every run (unpack + tag), against the package's warm run;
  - 8 copies started at once on an empty cache (all must succeed, one unpacked folder, no partial left);
  - SIGKILL of a running binary: nothing left in /tmp or $TMPDIR;
  - with --cold (root): the page cache dropped before each run of one more pairing (tag one clip).
Targets (exit 1 when one is missed): size <= 36 MB; repeated tag-one-clip median <= 1.15 x the package's;
first run <= 1.2 s; nothing in /tmp after SIGKILL; concurrent first start all OK. Performance is asserted
here only, never in the test suite. Results also go to build/bench_binary.json.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared")).resolve()
CLIP = SHARED / "audio" / "speech.wav"
TRAILER_SIZE = 96  # struct trailer in scripts/build/launcher.c

TARGET_SIZE_MB = 36.0
TARGET_RATIO = 1.15
TARGET_FIRST_RUN_S = 1.2


def clean_env(home: Path, **extra) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_rusage(argv, cwd, env, cpu=None):
    """(wall seconds, peak RSS MB, stdout) via fork/exec + wait4, so the figure is this process's alone; the
    process's user+system CPU seconds are appended to ``cpu`` when given (less sensitive to a loaded machine)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))}: exit {proc.returncode}: {err.decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024, out


def median_ms(values):
    return round(statistics.median(values) * 1000, 1)


def sizes(binary: Path, cache: Path) -> dict:
    data = binary.read_bytes()
    _, offset, size, ident = struct.unpack("<16sQQ64s", data[-TRAILER_SIZE:])
    folder = cache / ident.rstrip(b"\0").decode()
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    unpacked = sum(p.stat().st_size for p in files)
    return {"binary_mb": round(len(data) / 1e6, 2), "launcher_kb": round(offset / 1e3),
            "payload_mb": round(size / 1e6, 2), "unpacked_mb": round(unpacked / 1e6, 1),
            "unpacked_files": len(files)}


def paired(label, a, b, args, pairs, cwd):
    """Alternate a and b `pairs` times; returns {name: {"median_ms", "min_ms", "rss_mb"}}."""
    times = {a["name"]: [], b["name"]: []}
    cpus = {a["name"]: [], b["name"]: []}
    rss = {a["name"]: [], b["name"]: []}
    outputs = {}
    for i in range(pairs):
        for cmd in ((a, b) if i % 2 == 0 else (b, a)):
            wall, peak, out = run_rusage([*cmd["argv"], *args], cwd, cmd["env"], cpus[cmd["name"]])
            times[cmd["name"]].append(wall)
            rss[cmd["name"]].append(peak)
            outputs.setdefault(cmd["name"], out)
    result = {name: {"median_ms": median_ms(t), "min_ms": round(min(t) * 1000, 1), "cpu_ms": median_ms(cpus[name]),
                     "rss_mb": round(max(rss[name]), 1)} for name, t in times.items()}
    result["same_output"] = outputs[a["name"]] == outputs[b["name"]]
    print(f"  {label}: " + ", ".join(f"{n} median {r['median_ms']} ms (min {r['min_ms']}, CPU {r['cpu_ms']}), "
                                     f"peak RSS {r['rss_mb']} MB"
                                     for n, r in result.items() if isinstance(r, dict)), flush=True)
    return result


def report(checks: dict) -> int:
    """Print each target as ok or MISS; the exit status: 1 when one is missed."""
    print()
    for name, passed in checks.items():
        print(f"{'ok  ' if passed else 'MISS'} {name}")
    return 0 if all(checks.values()) else 1


def drop_caches():
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path,
                        default=Path(os.environ.get("AUDIOTAG_BINARY", REPO / "dist" / "audiotag")))
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--first-runs", type=int, default=7)
    parser.add_argument("--cold", action="store_true", help="also time runs with the page cache dropped (root)")
    args = parser.parse_args()
    binary = args.binary.resolve()
    if not binary.is_file():
        raise SystemExit(f"{binary} missing: run scripts/build/build_binary.sh first")

    work = Path(tempfile.mkdtemp(prefix="bench-binary-"))
    try:
        cache = work / "cache"
        home = work / "home"
        home.mkdir()
        package = {"name": "python -m audiotag", "argv": [sys.executable, "-m", "audiotag"],
                   "env": clean_env(home, PYTHONPATH=REPO)}
        frozen = {"name": "binary", "argv": [str(binary)], "env": clean_env(home, AUDIOTAG_CACHE_DIR=cache)}
        tag = ["--format", "json", CLIP]
        load = os.getloadavg()[0]
        print(f"bench_binary: {binary} vs {sys.executable} -m audiotag; clip {CLIP.name}; "
              f"{os.cpu_count()} cores, load {load:.2f}", flush=True)

        # First runs: a new empty cache every time (unpack, then tag), paired with the package's warm run.
        first, package_warm = [], []
        run_rusage([*package["argv"], *tag], work, package["env"])  # warm the package's files
        for i in range(args.first_runs):
            fresh = work / f"first-{i}"
            env = clean_env(home, AUDIOTAG_CACHE_DIR=fresh)
            order = ("binary", "package") if i % 2 == 0 else ("package", "binary")
            for which in order:
                if which == "binary":
                    first.append(run_rusage([str(binary), *tag], work, env)[0])
                else:
                    package_warm.append(run_rusage([*package["argv"], *tag], work, package["env"])[0])
            shutil.rmtree(fresh)
        first_run = {"binary_first_run_median_ms": median_ms(first),
                     "binary_first_run_max_ms": round(max(first) * 1000, 1),
                     "package_median_ms": median_ms(package_warm)}
        print(f"  first run (empty cache, unpack + tag): median {first_run['binary_first_run_median_ms']} ms, "
              f"max {first_run['binary_first_run_max_ms']} ms; package {first_run['package_median_ms']} ms", flush=True)

        # Repeated runs, paired.
        run_rusage([str(binary), "--version"], work, frozen["env"])  # unpack once
        for cmd in (package, frozen):
            for _ in range(2):
                run_rusage([*cmd["argv"], *tag], work, cmd["env"])
        version = paired("--version", frozen, package, ["--version"], args.pairs, work)
        tagging = paired("tag one 10 s clip", frozen, package, tag, args.pairs, work)
        cold = None
        if args.cold:
            cold_times = {"binary": [], "python -m audiotag": []}
            for i in range(max(3, args.pairs // 3)):
                for cmd in ((frozen, package) if i % 2 == 0 else (package, frozen)):
                    drop_caches()
                    cold_times[cmd["name"]].append(run_rusage([*cmd["argv"], *tag], work, cmd["env"])[0])
            cold = {n: median_ms(t) for n, t in cold_times.items()}
            print(f"  tag one clip, page cache dropped: {cold}", flush=True)

        # Many copies at once on an empty cache.
        crowd = work / "crowd"
        env = clean_env(home, AUDIOTAG_CACHE_DIR=crowd)
        start = time.perf_counter()
        procs = [subprocess.Popen([str(binary), *map(str, tag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  cwd=work, env=env) for _ in range(8)]
        outs = [p.communicate() for p in procs]
        crowd_wall = time.perf_counter() - start
        expected = run_rusage([*package["argv"], *tag], work, package["env"])[2]
        crowd_ok = all(p.returncode == 0 for p in procs) and all(o == expected for o, _ in outs)
        crowd_entries = sorted(p.name for p in crowd.iterdir())
        concurrent = {"copies": 8, "wall_ms": round(crowd_wall * 1000), "all_ok_same_json": crowd_ok,
                      "cache_entries": crowd_entries}
        print(f"  8 copies at once, empty cache: {concurrent}", flush=True)

        # SIGKILL of a running binary.
        private_tmp = work / "tmp"
        private_tmp.mkdir()
        before = set(os.listdir("/tmp"))
        env = clean_env(home, AUDIOTAG_CACHE_DIR=cache, TMPDIR=private_tmp)
        proc = subprocess.Popen([str(binary), "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=work, env=env)
        time.sleep(1.0)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        new_in_tmp = sorted(n for n in set(os.listdir("/tmp")) - before if n.startswith("_MEI") or "audiotag" in n)
        killed = {"killed_while_running": alive, "left_in_TMPDIR": sorted(os.listdir(private_tmp)),
                  "left_in_/tmp": new_in_tmp}
        print(f"  SIGKILL: {killed}", flush=True)

        size = sizes(binary, cache)
        print(f"  size: {size}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio = tagging["binary"]["median_ms"] / tagging["python -m audiotag"]["median_ms"]
    checks = {
        f"size <= {TARGET_SIZE_MB} MB": size["binary_mb"] <= TARGET_SIZE_MB,
        f"repeated tag-one-clip <= {TARGET_RATIO} x package ({ratio:.2f})": ratio <= TARGET_RATIO,
        f"first run <= {TARGET_FIRST_RUN_S} s": first_run["binary_first_run_median_ms"] <= TARGET_FIRST_RUN_S * 1000,
        "nothing left after SIGKILL": killed["killed_while_running"] and not killed["left_in_TMPDIR"]
        and not killed["left_in_/tmp"],
        "8 concurrent first starts OK": crowd_ok and len(crowd_entries) == 1,
        "binary and package print the same": version["same_output"] and tagging["same_output"],
    }
    result = {"load_avg_1m": round(load, 2), "size": size, "first_run": first_run, "version": version,
              "tag_one_clip": tagging, "tag_one_clip_cold": cold, "concurrent": concurrent, "sigkill": killed,
              "checks": checks}
    out = REPO / "build" / "bench_binary.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n(load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end)")
    print("\n| measure | binary | python -m audiotag |\n|---|---|---|")
    print(f"| size | {size['binary_mb']} MB (launcher {size['launcher_kb']} kB + payload {size['payload_mb']} MB; "
          f"unpacked {size['unpacked_mb']} MB, {size['unpacked_files']} files) | — |")
    for label, r in (("--version", version), ("tag one 10 s clip", tagging)):
        b, p = r["binary"], r["python -m audiotag"]
        print(f"| {label}, repeated: wall median / min; CPU median | {b['median_ms']} / {b['min_ms']} ms; "
              f"{b['cpu_ms']} ms | {p['median_ms']} / {p['min_ms']} ms; {p['cpu_ms']} ms |")
    print(f"| tag one 10 s clip, first run (empty cache) | {first_run['binary_first_run_median_ms']} ms "
          f"(max {first_run['binary_first_run_max_ms']}) | {first_run['package_median_ms']} ms (warm) |")
    if cold:
        print(f"| tag one 10 s clip, page cache dropped | {cold['binary']} ms | {cold['python -m audiotag']} ms |")
    print(f"| peak RSS, tag one clip | {tagging['binary']['rss_mb']} MB | "
          f"{tagging['python -m audiotag']['rss_mb']} MB |")
    print(f"| peak RSS, --version | {version['binary']['rss_mb']} MB | {version['python -m audiotag']['rss_mb']} MB |")
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
