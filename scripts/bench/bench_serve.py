"""How fast ``audiotag serve`` tags what clients POST, against ``audiotag DIR`` on the same files, in one run.

    .venv/bin/python scripts/bench/bench_serve.py [--count 200] [--seconds 10] [--clients 4] [--keep DIR] [--quick]
                                                  [--binary dist/audiotag | --checkout DIR]
    .venv/bin/python scripts/bench/bench_serve.py --uploads 8 [--checkout DIR]      # (e) only
    .venv/bin/python scripts/bench/bench_serve.py --hostile [--slow-uploads 32] [--slow-headers 500] [--clients 4]
                                                  [--duration 75] [--new-connections] [--checkout DIR]  # (f)

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

Two more measurements, each on its own (default settings of the server):
  (e) --uploads N: N concurrent uploads of one 59.5 MB WAV (44.1 kHz stereo, made from the real clips), each from its
      own loopback address (127.0.0.2...), so --max-uploads-per-client does not refuse them: the server's peak RSS
      before and after, and what it grew by per byte of the bodies held at once;
  (f) --hostile: slow uploads (one byte every 5 s, each from its own address, reconnecting once answered) and
      slow-header connections (a request head trickling a byte every 5 s, reconnecting once answered or refused)
      while --clients normal clients, connected first on keep-alive connections (--new-connections: a connection
      per request, which must get past --max-connections), post real 10 s clips: their p50/p99 latency (connecting
      included) and non-200 share (no answer counts as 0), the server's peak RSS and threads. Targets (exit status 1
      when missed): >= 95% of 200s, p99 <= 1 s, peak RSS within the bound `audiotag serve --help` states.
--checkout DIR runs the server from another checkout's package (PYTHONPATH=DIR; its audiotag/assets must hold the
model), e.g. `git worktree add /tmp/base main` and the model copied in, to compare two versions on one machine.
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
BIG_UPLOAD_BYTES = 59_500_000  # (e): the 59.5 MB uploads
SERVER_ENV = None  # the server's environment (--checkout sets PYTHONPATH)
HOSTILE_TARGETS = (0.95, 1.0)  # (f): share of 200s, p99 seconds for the normal clients
SLOW_BYTE_SECONDS = 5.0  # (f): each slow connection sends one byte this often (under --idle-timeout's 10 s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="clips in the corpus (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--keep", metavar="DIR", help="make (or reuse) the corpus in DIR and keep it")
    parser.add_argument("--quick", action="store_true", help="one round, fewer latency requests")
    parser.add_argument("--binary", metavar="PATH", help="run this frozen audiotag instead of python -m audiotag")
    parser.add_argument("--checkout", metavar="DIR", help="run the server from this checkout's package (PYTHONPATH)")
    parser.add_argument("--uploads", type=int, metavar="N", help="only (e): N concurrent 59.5 MB uploads")
    parser.add_argument("--hostile", action="store_true", help="only (f): the hostile mix")
    parser.add_argument("--slow-uploads", type=int, default=32, help="(f) slow uploads (default 32)")
    parser.add_argument("--slow-headers", type=int, default=500, help="(f) slow-header connections (default 500)")
    parser.add_argument("--duration", type=float, default=75.0,
                        help="(f) seconds of the mix (default 75: the slow uploads meet --timeout's 60 s)")
    parser.add_argument("--new-connections", action="store_true",
                        help="(f) the normal clients open a connection per request (default: one kept alive each)")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    command = [str(Path(args.binary).resolve())] if args.binary else [sys.executable, "-m", "audiotag"]
    global SERVER_ENV
    if args.checkout:
        SERVER_ENV = dict(os.environ, PYTHONPATH=str(Path(args.checkout).resolve()))
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores; audiotag: {' '.join(command)}"
          f"{f' from {Path(args.checkout).resolve()}' if args.checkout else ''}; load average at start: {_load()}")
    if args.uploads:
        _big_uploads(command, args.uploads)
        return 0
    if args.hostile:
        return _hostile(command, args)

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
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=scratch, env=SERVER_ENV)
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
    return _proc_status(pid).get("VmHWM", 0)


def _proc_status(pid: int) -> dict:
    """VmRSS, VmHWM (bytes) and Threads of a running process."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                values[key] = int(value)
    return values


def _big_wav() -> bytes:
    """BIG_UPLOAD_BYTES of 16-bit 44.1 kHz stereo WAV: the real clips, resampled, one after another, repeated."""
    import io

    import numpy as np
    import soundfile
    import soxr
    from make_corpus import default_sources, load_sources

    rate = 44100
    mono = np.concatenate([soxr.resample(samples, source_rate, rate) for _, samples, source_rate in
                           load_sources(default_sources())])
    frames = (BIG_UPLOAD_BYTES - 44) // 4
    mono = np.tile(mono, frames // len(mono) + 1)[:frames]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([mono, np.roll(mono, rate // 100)], axis=1) * 0.9, rate, subtype="PCM_16",
                    format="WAV")
    return buffer.getvalue()


def _big_uploads(command, count: int) -> None:
    """(e) ``count`` concurrent uploads of a 59.5 MB WAV, each from its own address: the server's peak RSS."""
    body = _big_wav()
    with tempfile.TemporaryDirectory(prefix="audiotag-bench-serve-") as scratch:
        server = _start_server(command, Path(scratch))
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
            _post(connection, "warm-up", body[:44 + 4 * 441000])  # 10 s of it: the model and decoders loaded
            before = _peak_rss(server.pid)

            def upload(number):
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600,
                                                        source_address=(f"127.0.0.{2 + number}", 0))
                return _post(connection, f"big{number}", body)[0]

            started = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                statuses = list(pool.map(upload, range(count)))
            wall = time.perf_counter() - started
            after = _peak_rss(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    held = count * len(body)
    print(f"\n(e) {count} concurrent uploads of a {len(body) / 1e6:.1f} MB WAV (statuses {sorted(set(statuses))}) in "
          f"{wall:.1f} s: server peak RSS {before / 2**20:.0f} MB before, {after / 2**20:.0f} MB after: grew by "
          f"{(after - before) / 2**20:.0f} MB, {(after - before) / held:.2f} x the {held / 2**20:.0f} MB of bodies")


def _hostile(command, args) -> int:
    """(f) Slow uploads and slow-header connections against a server that normal clients use meanwhile."""
    import collections
    import selectors
    import socket
    from make_corpus import default_sources

    bodies = [(default_sources() / f"{name}.wav").read_bytes() for name in ("music", "speech", "typing")]  # 10 s
    results, attack = [], collections.Counter()  # (seconds, status) per normal request; the attackers' answers
    stop, attacking = threading.Event(), threading.Event()
    with tempfile.TemporaryDirectory(prefix="audiotag-bench-serve-") as scratch:
        server = _start_server(command, Path(scratch))
        samples = []

        def sample():
            while not stop.wait(0.25):
                samples.append(_proc_status(server.pid))

        def normal(number):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            _post(connection, "warm-up", bodies[0])  # connected before the attack, as a crawler's kept connection
            attacking.wait()
            count = 0
            while not stop.is_set():
                count += 1
                started = time.perf_counter()
                if args.new_connections:
                    connection.close()  # http.client connects again for the request
                try:
                    status = _post(connection, f"normal{number}-{count}", bodies[(number + count) % len(bodies)])[0]
                except (OSError, http.client.HTTPException, ValueError):
                    status = 0  # no answer: the connection is opened again
                    connection.close()
                results.append((time.perf_counter() - started, status))

        def attacker():
            selector, next_byte, reopen = selectors.DefaultSelector(), {}, []

            def connect(kind, index):
                source = f"127.0.0.{2 + index}" if kind == "upload" else "127.0.0.1"  # uploads: an address each
                try:
                    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
                    sock.sendall(b"POST /tag?name=slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nRIFF"
                                 % len(bodies[0]) if kind == "upload" else b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                except OSError:
                    attack[kind, "refused"] += 1
                    reopen.append((time.monotonic() + 1, kind, index))
                    return
                attack[kind, "opened"] += 1
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, (kind, index))
                next_byte[sock] = time.monotonic() + SLOW_BYTE_SECONDS * (index % 10) / 10  # spread out

            for index in range(args.slow_uploads):
                connect("upload", index)
            for index in range(args.slow_headers):
                connect("header", index)
            attacking.set()
            while not stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    sock, (kind, index) = key.fileobj, key.data
                    try:
                        data = sock.recv(1 << 16)
                    except OSError:
                        data = b""
                    attack[kind, data[9:12].decode() if data.startswith(b"HTTP/") else "closed"] += 1
                    selector.unregister(sock)
                    del next_byte[sock]
                    sock.close()
                    reopen.append((time.monotonic() + (1 if data[9:12] == b"503" else 0), kind, index))
                now = time.monotonic()
                for sock, due in list(next_byte.items()):
                    if due <= now:
                        try:
                            sock.send(b"X")
                        except OSError:
                            pass
                        next_byte[sock] = now + SLOW_BYTE_SECONDS
                for entry in [e for e in reopen if e[0] <= now]:
                    reopen.remove(entry)
                    connect(*entry[1:])
            for sock in list(next_byte):
                sock.close()

        threads = [threading.Thread(target=target, args=extra, daemon=True) for target, extra in
                   [(sample, ()), (attacker, ()), *[(normal, (n,)) for n in range(args.clients)]]]
        try:
            for thread in threads:
                thread.start()
            attacking.wait()
            time.sleep(args.duration)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=30)
    if code != 0:
        raise SystemExit(f"bench_serve: the server exited {code}")
    latencies = [seconds for seconds, _ in results]
    errors = sum(status != 200 for _, status in results) / max(1, len(results))
    peak, threads_max = max(s.get("VmHWM", 0) for s in samples), max(s.get("Threads", 0) for s in samples)
    bound = _documented_bound()
    ok = results and 1 - errors >= HOSTILE_TARGETS[0] and _percentile(latencies, 99) <= HOSTILE_TARGETS[1] \
        and peak <= bound
    print(f"\n(f) hostile mix for {args.duration:g} s: {args.slow_uploads} slow uploads + {args.slow_headers} "
          f"slow-header connections (a byte every {SLOW_BYTE_SECONDS:g} s each, reconnecting once answered); "
          "what they met:")
    for kind in ("upload", "header"):
        print(f"    {kind:6s}: " + ", ".join(f"{what} {n}" for (k, what), n in sorted(attack.items()) if k == kind))
    statuses = collections.Counter(status for _, status in results)
    print(f"    {args.clients} normal clients (10 s clips, "
          f"{'a connection per request' if args.new_connections else 'keep-alive'}): {len(results)} requests, p50 "
          f"{1e3 * _percentile(latencies, 50):.1f} ms, p99 {1e3 * _percentile(latencies, 99):.1f} ms, non-200 "
          f"{100 * errors:.1f}% ({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))})")
    print(f"    server: peak RSS {peak / 2**20:.0f} MB (bound stated by --help at the defaults: "
          f"{bound / 2**20:.0f} MB), threads at most {threads_max}")
    print(f"    targets: >= {100 * HOSTILE_TARGETS[0]:.0f}% 200s, p99 <= {HOSTILE_TARGETS[1]:g} s, RSS within the "
          f"bound: {'ok' if ok else 'MISSED'}   load average at end: {_load()}")
    return 0 if ok else 1


def _documented_bound(max_pending: int = 32, max_body: int = 64 << 20) -> int:
    """The peak memory `audiotag serve --help` states for these settings (the defaults)."""
    from audiotag.serve import MEMORY_BASE_MB, MEMORY_PER_DECODE_MB

    return MEMORY_BASE_MB * 2**20 + 3 * max_pending * (max_body + MEMORY_PER_DECODE_MB * 2**20)


def _percentile(values, percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))]


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
