"""Soak test: N minutes of ``audiotag --files-from - -o OUT`` fed by a crawler-like writer, ~2% bad files.

    .venv/bin/python scripts/bench/soak.py [--minutes 20] [--binary dist/audiotag] [--jobs 1] [--crash-every 400]

Every path fed is new (hard links to a pool of the real clips in $AUDIOTAG_SHARED/audio and of bad files made
here: random bytes, truncated FLAC/MP3/OGG, a FLAC with a corrupt frame). With a C compiler, every
``--crash-every``-th path also carries a marker that an LD_PRELOAD library turns into a SIGSEGV in whichever
process opens it (a decoder crash): the supervisor must absorb it. Every ``--sample`` seconds the RSS of the
audiotag processes (supervisor + worker) and their open descriptors are printed; at the end the output must hold
exactly one record per path fed (exit status 1 otherwise).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
OUTSTANDING = 32  # paths fed and not yet answered, at most
CRASH_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
static void check(const char *p) {
    const char *m = getenv("AUDIOTAG_CRASH_MARKER");
    if (p && m && *m && strstr(p, m)) raise(SIGSEGV);
}
#define W(n) int n(const char *p, int f, ...) { static int (*r)(const char *, int, ...); \
    if (!r) r = dlsym(RTLD_NEXT, #n); \
    check(p); va_list a; va_start(a, f); int m = va_arg(a, int); va_end(a); return r(p, f, m); }
W(open) W(open64)
#define WA(n) int n(int d, const char *p, int f, ...) { static int (*r)(int, const char *, int, ...); \
    if (!r) r = dlsym(RTLD_NEXT, #n); \
    check(p); va_list a; va_start(a, f); int m = va_arg(a, int); va_end(a); return r(d, p, f, m); }
WA(openat) WA(openat64)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--binary", help="run this audiotag binary (default: python -m audiotag of this checkout)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--bad-share", type=float, default=0.02, help="share of bad files (default 0.02)")
    parser.add_argument("--crash-every", type=int, default=400, help="every Nth path crashes its opener (0: none)")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples (default 60)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="audiotag-soak-") as scratch:
        scratch = Path(scratch)
        good, bad = _pool(scratch / "pool", rng)
        env = dict(os.environ)
        if args.crash_every:
            library = scratch / "libcrash.so"
            (scratch / "crash.c").write_text(CRASH_SOURCE)
            subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(scratch / "crash.c"), "-ldl"],
                           check=True)
            env.update(LD_PRELOAD=str(library), AUDIOTAG_CRASH_MARKER="SOAKCRASH")
        command = [args.binary] if args.binary else [sys.executable, "-m", "audiotag"]
        output = scratch / "out.jsonl"
        process = subprocess.Popen([*command, "--files-from", "-", "-o", str(output), "--jobs", str(args.jobs)],
                                   stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        fed = []
        links = scratch / "links"
        links.mkdir()
        deadline = time.monotonic() + 60 * args.minutes

        written = [0, None]  # records counted so far, the open output

        def records_written() -> int:
            if written[1] is None and output.exists():
                written[1] = open(output, "rb")
            if written[1] is not None:
                written[0] += written[1].read().count(b"\n")
            return written[0]

        def feed():
            number = 0
            while time.monotonic() < deadline:
                while len(fed) - records_written() > OUTSTANDING and time.monotonic() < deadline:
                    time.sleep(0.05)  # a crawler waits for its answers: no backlog that outlives the soak
                number += 1
                crash = args.crash_every and number % args.crash_every == 0
                source = bad[rng.integers(len(bad))] if rng.random() < args.bad_share else good[rng.integers(len(good))]
                link = links / f"{number:08d}{'-SOAKCRASH' if crash else ''}{source.suffix}"
                os.link(source, link)
                fed.append(str(link))
                try:
                    process.stdin.write(f"{link}\n".encode())
                    process.stdin.flush()
                except BrokenPipeError:
                    return
            process.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        started = time.monotonic()
        feeder.start()
        print(f"soak: {args.minutes:g} min, {' '.join(command)} --files-from - --jobs {args.jobs}; "
              f"{len(good)} good and {len(bad)} bad files in the pool, bad share {args.bad_share:.0%}, "
              f"crash every {args.crash_every or 'never'}")
        print(f"{'minute':>7s} {'fed':>8s} {'records':>8s} {'RSS MB':>7s} {'fds':>5s} {'processes':>9s}")
        while process.poll() is None:
            _sample(started, fed, output, process.pid)
            waited = 0.0
            while waited < args.sample and process.poll() is None:
                time.sleep(1.0)
                waited += 1.0
        _sample(started, fed, output, None)
        feeder.join()
        return _check(fed, output, process.returncode)


def _pool(directory: Path, rng) -> tuple:
    """Good clips (the shared ones) and bad files made from them."""
    directory.mkdir(parents=True)
    good = [p for p in sorted((SHARED / "audio").rglob("*")) if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3")]
    bad = []
    for index, source in enumerate(good[:12]):
        data = source.read_bytes()
        variants = {
            "random.wav": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            f"cut{source.suffix}": data[:max(64, len(data) // 7)],
            f"header{source.suffix}": data[:44],
        }
        mutated = bytearray(data)
        spot = len(mutated) // 2
        mutated[spot:spot + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        variants[f"mutated{source.suffix}"] = bytes(mutated)
        for name, content in variants.items():
            path = directory / f"bad{index:02d}-{name}"
            path.write_bytes(content)
            bad.append(path)
    return good, bad


def _sample(started, fed, output, pid) -> None:
    records = sum(1 for _ in open(output, "rb")) if output.exists() else 0
    rss, fds, count = 0, 0, 0
    for process in _tree(pid) if pid else []:
        try:
            with open(f"/proc/{process}/status") as status:
                rss += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            fds += len(os.listdir(f"/proc/{process}/fd"))
            count += 1
        except (OSError, StopIteration):
            continue
    print(f"{(time.monotonic() - started) / 60:7.1f} {len(fed):8d} {records:8d} {rss / 1024:7.1f} {fds:5d} {count:9d}",
          flush=True)


def _tree(pid: int) -> list:
    """pid and its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _check(fed, output, returncode) -> int:
    counts = {}
    errors = 0
    with open(output, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            record = json.loads(line)
            counts[record["path"]] = counts.get(record["path"], 0) + 1
            errors += "error" in record
    missing = [path for path in fed if path not in counts]
    doubled = [path for path, count in counts.items() if count > 1]
    crashed = sum(1 for path in fed if "SOAKCRASH" in path)
    print(f"soak: {len(fed)} paths fed, {sum(counts.values())} records ({errors} errors, {crashed} crashes "
          f"simulated), {len(missing)} missing, {len(doubled)} doubled; exit status {returncode}")
    return 0 if not missing and not doubled and len(counts) == len(fed) and returncode in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
