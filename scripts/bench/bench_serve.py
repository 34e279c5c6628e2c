"""How fast ``audiotag serve`` tags what clients POST, against ``audiotag DIR`` on the same files, in one run.

    .venv/bin/python scripts/bench/bench_serve.py [--count 200] [--seconds 10] [--clients 4] [--keep DIR] [--quick]
                                                  [--binary dist/audiotag]

One run makes the batch benchmark's corpus (``scripts/bench/make_corpus.py``: mixed 16/32/44.1/48 kHz WAV and FLAC) and
measures, rounds interleaved:
  (a) ``audiotag DIR -o FILE`` end to end in a subprocess (default --jobs/--threads), start-up included;
  (b) the same files POSTed to a running ``audiotag serve`` (default settings) by ``--clients`` concurrent clients,
      each on one keep-alive connection, from the first request to the last answer (the server is started once,
      before: a service's start-up is paid once);
  (c) the latency of one 10 s clip, posted over and over by 1 client and by ``--clients`` clients: p50 and p99;
  (d) (not with --quick) the server's peak memory before and after a 20-minute WAV uploaded chunked.
Every answer must be 200 and agree with (a)'s record for that file (scripts/tools/compare_records.py). Target (exit
status 1 when missed): (b) reaches TARGET_OF_DIR of (a)'s files/s. Figures are medians over rounds; the load average
is shown.
"""

import argparse
import http.client
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from make_corpus import make_corpus  # this folder's (Python puts a script's own folder on sys.path)

REPO = Path(__file__).resolve().parent.parent.parent


def _load_script(path: Path):
    """A script of another folder of scripts/, imported from its path (sys.path left alone)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_lines = _load_script(REPO / "scripts" / "tools" / "compare_records.py").compare_lines

TARGET_OF_DIR = 0.7
LATENCY_REQUESTS = 100  # per latency measurement, split among the clients
STREAM_MINUTES = 20  # (d): 220 MB of WAV, far more than the server's own memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="clips in the corpus (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--keep", metavar="DIR", help="make (or reuse) the corpus in DIR and keep it")
    parser.add_argument("--quick", action="store_true", help="one round, fewer latency requests")
    parser.add_argument("--binary", metavar="PATH", help="run this frozen audiotag instead of python -m audiotag")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    command = [str(Path(args.binary).resolve())] if args.binary else [sys.executable, "-m", "audiotag"]
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores; audiotag: {' '.join(command)}; load average at start: {_load()}")

    with tempfile.TemporaryDirectory(prefix="audiotag-bench-serve-") as scratch:
        corpus = Path(args.keep) if args.keep else Path(scratch) / "corpus"
        files = sorted(p for p in corpus.glob("clip*") if p.suffix in (".wav", ".flac")) if corpus.is_dir() else []
        if len(files) < args.count:
            files = make_corpus(corpus, count=args.count, seconds=args.seconds, seed=0)
        files = files[:args.count]
        bodies = [path.read_bytes() for path in files]
        print(f"corpus: {len(files)} files in {corpus}, {sum(map(len, bodies)) / 2**20:.0f} MB")
        server = _start_server(command, Path(scratch))
        try:
            _post_all(server, files[:2 * args.clients], bodies[:2 * args.clients], args.clients)  # first runs allocate
            dir_runs, serve_runs, records = [], [], None
            for _ in range(rounds):
                wall, records = _run_dir(command, corpus, Path(scratch) / "out.jsonl", len(files))
                dir_runs.append((wall, os.getloadavg()[0]))
                wall, answers = _post_all(server, files, bodies, args.clients)
                serve_runs.append((wall, os.getloadavg()[0]))
                _check(answers, files, records)
            clip = next((i for i, p in enumerate(files) if "44100" in p.name), 0)
            requests = 20 if args.quick else LATENCY_REQUESTS
            latencies = {n: _latencies(server, bodies[clip], n, requests) for n in (1, args.clients)}
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=30)
        if code != 0:
            raise SystemExit(f"bench_serve: the server exited {code}")

    dir_rate = len(files) / statistics.median(w for w, _ in dir_runs)
    serve_rate = len(files) / statistics.median(w for w, _ in serve_runs)
    print(f"\n{'':58s} {'files/s':>8s}   1-min load")
    print(f"{'(a) audiotag DIR (start-up included)':58s} {dir_rate:8.1f}   "
          f"{' '.join(f'{load:.2f}' for _, load in dir_runs)}")
    print(f"{f'(b) audiotag serve, {args.clients} clients POSTing the same files':58s} {serve_rate:8.1f}   "
          f"{' '.join(f'{load:.2f}' for _, load in serve_runs)}")
    print(f"\n(c) latency of one {args.seconds:g} s clip ({files[clip].name}), {requests} requests each:")
    for clients, values in latencies.items():
        print(f"    {clients} client{'s' if clients > 1 else ' '}: p50 {1e3 * _percentile(values, 50):6.1f} ms, "
              f"p99 {1e3 * _percentile(values, 99):6.1f} ms")
    if not args.quick:
        _streamed_memory(command)
    ok = serve_rate >= TARGET_OF_DIR * dir_rate
    print(f"\n(b)/(a) = {serve_rate / dir_rate:.2f}   target >= {TARGET_OF_DIR:.2f}   {'ok' if ok else 'MISSED'}")
    print(f"load average at end: {_load()}")
    return 0 if ok else 1


def _start_server(command, scratch: Path, *options) -> subprocess.Popen:
    log = open(scratch / "serve.log", "wb")
    process = subprocess.Popen([*command, "serve", "--port", "0", "--quiet", *options], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=scratch)
    first = process.stderr.readline().decode()
    if not first.startswith("audiotag: serving http://"):
        raise SystemExit(f"bench_serve: the server did not start: {first}{process.stderr.read().decode()}")
    threading.Thread(target=lambda: log.write(process.stderr.read()), daemon=True).start()
    process.port = int(first.split("://", 1)[1].split(" ")[0].rsplit(":", 1)[1])
    return process


def _run_dir(command, corpus: Path, output: Path, count: int) -> tuple:
    started = time.perf_counter()
    result = subprocess.run([*command, str(corpus), "-o", str(output), "-f", "jsonl"], capture_output=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"bench_serve: audiotag DIR failed: {result.stderr.decode(errors='replace')}")
    records = {rec["path"]: rec for rec in map(json.loads, output.read_text().splitlines())}
    if len(records) != count:
        raise SystemExit(f"bench_serve: audiotag DIR wrote {len(records)} records for {count} files")
    return wall, records


def _post(connection, name: str, body: bytes) -> tuple:
    connection.request("POST", f"/tag?name={quote(name)}", body=body)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def _post_all(server, files, bodies, clients: int) -> tuple:
    """Every file once, ``clients`` connections taking the next file in turn; (wall seconds, answers)."""
    answers = [None] * len(files)
    next_index = iter(range(len(files)))
    lock = threading.Lock()

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            answers[index] = _post(connection, str(files[index]), bodies[index])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return time.perf_counter() - started, answers


def _check(answers, files, records) -> None:
    for path, (status, answer) in zip(files, answers):
        if status != 200 or compare_lines([answer], [records[str(path)]]):
            raise SystemExit(f"bench_serve: {path}: answer {status} {answer} differs from audiotag DIR's record "
                             f"{records[str(path)]}")


def _latencies(server, body: bytes, clients: int, requests: int) -> list:
    """Seconds per request, ``requests`` in all from ``clients`` keep-alive connections at once."""
    def client(count):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        _post(connection, "warm-up", body)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            status, _ = _post(connection, "latency", body)
            times.append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"bench_serve: latency request answered {status}")
        return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for times in pool.map(client, [requests // clients] * clients) for t in times]


def _streamed_memory(command) -> None:
    """(d) A chunked WAV upload of STREAM_MINUTES minutes (48 kHz stereo, generated as it is sent) to a fresh server:
    its peak memory before and after shows whether memory grows with the body."""
    import numpy as np

    rate, channels = 48000, 2
    block = (np.random.default_rng(0).standard_normal((5 * rate, channels)) * 3000).astype("<i2").tobytes()
    blocks = STREAM_MINUTES * 60 // 5
    size = blocks * len(block)
    header = b"RIFF" + (size + 36).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little") + \
        (1).to_bytes(2, "little") + channels.to_bytes(2, "little") + rate.to_bytes(4, "little") + \
        (rate * channels * 2).to_bytes(4, "little") + (channels * 2).to_bytes(2, "little") + \
        (16).to_bytes(2, "little") + b"data" + size.to_bytes(4, "little")
    with tempfile.TemporaryDirectory(prefix="audiotag-bench-serve-") as scratch:
        server = _start_server(command, Path(scratch), "--max-body", "2G", "--timeout", "3600")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
            _post(connection, "warm-up", header[:40] + (len(block)).to_bytes(4, "little") + block)
            before = _peak_rss(server.pid)
            started = time.perf_counter()
            connection.request("POST", "/tag?name=stream", body=(chunk for chunk in [header, *[block] * blocks]),
                               encode_chunked=True)
            response = connection.getresponse()
            answer = json.loads(response.read())
            wall = time.perf_counter() - started
            after = _peak_rss(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    if response.status != 200:
        raise SystemExit(f"bench_serve: the streamed upload was answered {response.status} {answer}")
    print(f"\n(d) a chunked {STREAM_MINUTES}-minute 48 kHz stereo WAV upload ({size / 2**20:.0f} MB) in {wall:.1f} s: "
          f"server peak RSS {before / 2**20:.0f} MB before, {after / 2**20:.0f} MB after")


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _percentile(values, percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))]


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
