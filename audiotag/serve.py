"""``audiotag serve``: an HTTP front end for crawlers that hold each download in memory.

``POST /tag`` takes a file's bytes and answers the JSON record ``audiotag FILE`` prints; ``GET /healthz`` and
``GET /metrics`` (Prometheus text) say how it is doing. Like the CLI this module only parses and formats: the
bytes decode through ``audio.open_bytes`` (or, as they arrive, ``audio.open_stdin``) and every request's windows
go to one ``pipeline.Batcher``, so concurrent requests share one model session and its batches, as the inputs
of ``audiotag DIR`` do.

The HTTP layer is the standard library's ``http.server`` (a thread per connection): it adds about 0.3 MB to the
binary (no new dependency), a slow client only holds its own thread, and what it lacks for this use is small
and written here: chunked request bodies (``httpbody.py``), JSON errors, limits and a clean shutdown.
"""

import argparse
import contextlib
import http.server
import ipaddress
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import parse_qsl, urlsplit

from . import __version__
from .httpbody import Body, HttpError

EXIT_OK, EXIT_USAGE, EXIT_MODEL = 0, 2, 3  # as the CLI's
DEFAULT_PORT = 8750
DEFAULT_MAX_BODY = 64 << 20  # 64 MiB: 6 minutes of CD-quality WAV, an hour of 128 kbit/s MP3
DEFAULT_MAX_PENDING = 32  # requests taken in at once; worst-case memory is about this many bodies
DEFAULT_TIMEOUT = 60.0  # seconds from a request's headers to its answer
DEFAULT_IDLE_TIMEOUT = 10.0  # a client that sends nothing for this long is dropped
SHUTDOWN_GRACE = 9.0  # after SIGTERM, requests in flight get this long to be answered (exit within 10 s)
LINGER_SECONDS, LINGER_BYTES = 2.0, 64 << 20  # an error answered before the body was read: how much to drop after
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_SECONDS = 86400.0
RAW_FORMATS = ("s16le", "s32le", "f32le")

EPILOG = f"""\
endpoints:
  POST /tag       the body is an audio file's bytes (any format `audiotag FILE` reads); the answer is the JSON
                  record `audiotag FILE` prints (Content-Type application/json):
                    {{"path": "a.wav", "duration": 10.0, "sample_rate": 32000, "channels": 1, "tags": [...]}}
                  query parameters:
                    name=NAME       echoed as "path" (default "-")
                    top_k=N         labels in the answer (default 10)
                    segments=1      also each window's tags: JSON lines, window records before the clip's
                    raw=FORMAT&rate=HZ[&channels=C]   headerless samples (s16le, s32le, f32le)
                  A body with Content-Length is read whole (up to --max-body), then decoded as a file is. A
                  chunked body (Transfer-Encoding: chunked) holding a WAV stream or raw samples is decoded as
                  it arrives: memory stays flat however long the upload.
  GET /healthz    200 {{"status": "ok", "model": ..., "version": ...}}
  GET /metrics    Prometheus text: audiotag_requests_total{{code}}, audiotag_audio_seconds_total,
                  audiotag_model_seconds_total, audiotag_queue_depth, audiotag_request_duration_seconds...

status codes (errors are JSON {{"error": "reason"}}):
  200  tagged: the record
  400  empty or malformed request (body, framing, query parameter)
  401  missing or wrong bearer token (with --token-file)
  404  no such path; 405 wrong method for the path
  408  the client sent nothing for --idle-timeout seconds
  413  body over --max-body
  422  audio that cannot be tagged: the CLI's error record {{"path": NAME, "error": "cannot decode: ..."}}
  503  --max-pending requests already in work (Retry-After: 1), or shutting down
  504  not answered within --timeout seconds

safety: binds 127.0.0.1 by default; any other (non-loopback) address needs --token-file, and every request
must then carry "Authorization: Bearer TOKEN". SIGTERM or SIGINT: stops accepting, answers what is in
flight, exits 0 within 10 s. One access-log line per request on stderr (--quiet: none).

exit status: 0 stopped by SIGTERM/SIGINT; 2 bad command line, or the address cannot be used; 3 the model
cannot be loaded.

examples:
  audiotag serve --port {DEFAULT_PORT}
  curl --data-binary @clip.mp3 'http://127.0.0.1:{DEFAULT_PORT}/tag?name=clip.mp3&top_k=5'
  ffmpeg -i talk.m4a -f wav - | curl -X POST -T - 'http://127.0.0.1:{DEFAULT_PORT}/tag?name=talk.m4a&segments=1'
      (curl sends stdin chunked: the WAV stream is tagged as it arrives)
  curl --unix-socket /run/audiotag.sock --data-binary @clip.wav 'http://localhost/tag?name=clip.wav'
  audiotag serve --host 0.0.0.0 --token-file /etc/audiotag/token
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="audiotag serve",
        description="Serve AudioSet tags over HTTP: POST a file's bytes to /tag, get the record `audiotag FILE` "
                    "prints. One model, shared by every request.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen = parser.add_argument_group("listening")
    listen.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; a non-loopback one needs --token-file)")
    listen.add_argument("--port", type=_number(int, 0, 65535), default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one, named in the start-up line)")
    listen.add_argument("--socket", metavar="PATH", help="listen on a Unix socket at PATH instead of TCP")
    listen.add_argument("--token-file", metavar="FILE",
                        help="require 'Authorization: Bearer TOKEN' on every request, TOKEN being FILE's content")
    listen.add_argument("-q", "--quiet", action="store_true", help="no access-log line per request on stderr")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-body", type=_size, default=DEFAULT_MAX_BODY, metavar="BYTES",
                        help="largest body accepted, e.g. 64M (default 64M); more is answered 413")
    limits.add_argument("--max-pending", type=_number(int, 1), default=DEFAULT_MAX_PENDING, metavar="N",
                        help=f"requests taken in at once, uploading, queued or tagged (default "
                             f"{DEFAULT_MAX_PENDING}); more are answered 503 at once")
    limits.add_argument("--timeout", type=_number(float, 0.001, MAX_SECONDS), default=DEFAULT_TIMEOUT,
                        metavar="SEC", help=f"seconds from a request's headers to its answer (default "
                                            f"{DEFAULT_TIMEOUT:g}); later is answered 504")
    limits.add_argument("--idle-timeout", type=_number(float, 0.001, MAX_SECONDS), default=DEFAULT_IDLE_TIMEOUT,
                        metavar="SEC", help=f"a client that sends nothing for this long is dropped (default "
                                            f"{DEFAULT_IDLE_TIMEOUT:g})")
    windows = parser.add_argument_group("long recordings (as the CLI's)")
    windows.add_argument("--window", type=_number(float, 0, MAX_SECONDS), default=10.0, metavar="SEC",
                         help="seconds per model pass (default 10); 0 = the whole file in one pass")
    windows.add_argument("--hop", type=_number(float, 0.01, MAX_SECONDS), metavar="SEC",
                         help="seconds between windows (default: half the window, 5)")
    engine = parser.add_argument_group("engine (as the CLI's)")
    engine.add_argument("--model", metavar="PATH", help="an audiotag .onnx model (default: the bundled mn04_as)")
    engine.add_argument("--provider", metavar="LIST",
                        help="execution providers, comma-separated (default: $AUDIOTAG_PROVIDERS or automatic)")
    engine.add_argument("--jobs", type=_number(int, 1), default=os.cpu_count() or 1, metavar="N",
                        help="uploads decoded at once (default: all cores); a streamed upload decodes as it "
                             "arrives, in its own connection's thread")
    engine.add_argument("--threads", type=_number(int, 0), default=1, metavar="N",
                        help="onnxruntime intra-op threads (default 1: the jobs keep every core busy)")
    engine.add_argument("-v", "--verbose", action="store_true", help="say which execution provider runs")
    return parser


def main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hop is None:
        args.hop = args.window / 2 if args.window else 5.0
    if 0 < args.window < 1:
        parser.error(f"--window must be 0 (the whole file in one pass) or at least 1 s, got {args.window:g}")
    if args.window and args.hop > args.window:
        parser.error(f"--hop {args.hop:g} s is longer than --window {args.window:g} s")
    token = _read_token(parser, args.token_file)
    if args.socket is None and token is None and not _is_loopback(args.host):
        parser.error(f"--host {args.host} is reachable from other machines: give --token-file FILE (a secret "
                     "every request must send as 'Authorization: Bearer TOKEN'), or bind 127.0.0.1")

    from .model import ModelError, requested_providers
    from .tagger import Tagger

    try:
        tagger = Tagger(args.model, providers=requested_providers(args.provider), threads=args.threads)
    except (ModelError, FileNotFoundError) as error:
        _log(str(error))
        return EXIT_MODEL
    service = Service(tagger, args, token)
    try:
        server = _listen(args, service)
    except OSError as error:
        _log(f"serve: cannot listen on {args.socket or f'{args.host}:{args.port}'}: "
             f"{(error.strerror or str(error)).lower()}")
        return EXIT_USAGE
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="audiotag-serve",
                     daemon=True).start()
    where = f"unix:{args.socket}" if args.socket else f"http://{_url_host(args.host)}:{server.server_address[1]}"
    _log(f"serving {where} (model {tagger.model.info.name}, jobs {args.jobs}"
         + (f", providers {', '.join(tagger.model.providers)}" if args.verbose else "") + ")")
    while not stop.wait(1.0):
        pass
    stopped = time.monotonic()
    service.stopping = True  # keep-alive connections get 503 from now on
    server.shutdown()
    server.server_close()  # no more connections are accepted
    if args.socket:
        with contextlib.suppress(OSError):
            os.unlink(args.socket)
    unanswered = service.wait_idle(SHUTDOWN_GRACE - (time.monotonic() - stopped))
    _log("serve: stopped" + (f"; {unanswered} requests were still in work" if unanswered else ""))
    return EXIT_OK


class Service:
    """What the handlers share: the tagger, the batcher, the decode workers, the limits and the metrics."""

    def __init__(self, tagger, args, token):
        from . import pipeline

        self.tagger = tagger
        self.token = token
        self.args = args
        self.batcher = pipeline.Batcher(tagger, runners=pipeline.model_runners(tagger.model, args.jobs))
        self._workers = ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="audiotag-job")
        self._lock = threading.Condition()
        self.pending = 0  # requests taken in and not yet answered
        self.queued = 0  # of those, bodies read and waiting for a worker
        self.stopping = False
        self.counts = {}  # HTTP status -> requests answered
        self.audio_seconds = 0.0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    @contextlib.contextmanager
    def admitted(self):
        with self._lock:
            if self.pending >= self.args.max_pending:
                raise HttpError(503, f"busy: {self.pending} requests in work (--max-pending)")
            self.pending += 1
        try:
            yield
        finally:
            with self._lock:
                self.pending -= 1
                self._lock.notify_all()

    def wait_idle(self, seconds: float) -> int:
        """Wait until no request is in work, or ``seconds``; the requests still in work."""
        end = time.monotonic() + seconds
        with self._lock:
            while self.pending and (left := end - time.monotonic()) > 0:
                self._lock.wait(left)
            return self.pending

    def tag(self, body: Body, request: "_TagRequest", deadline: float) -> tuple:
        """(status, records) for one POST /tag."""
        from . import audio, output, pipeline
        from .tagger import TagOptions

        options = TagOptions(top_k=request.top_k, window=self.args.window, hop=self.args.hop,
                             segments=request.segments)
        segments = []

        def on_segment(name, segment):
            segments.append(output.segment_record(name, segment))

        def tag_with(open_input):
            return pipeline.tag_input(pipeline.Input(request.name), open_input, self.tagger, self.batcher,
                                      options, on_segment if request.segments else None)

        head = body.peek(12)
        if not head:
            raise HttpError(400, "empty body: POST the audio file's bytes")
        if request.raw or (body.chunked and head[:4] == b"RIFF" and head[8:12] == b"WAVE"):
            # Decoded as it arrives, in this connection's thread: its pace is the client's.
            outcome = tag_with(lambda _: _open_stream(body, request))
        else:
            data = body.read()
            outcome = self._in_worker(lambda: tag_with(lambda _: audio.open_bytes(data)), deadline)
        if body.failure is not None:
            raise body.failure
        if outcome.error is None:
            with self._lock:
                self.audio_seconds += outcome.duration
        return (200 if outcome.error is None else 422), [*segments, output.record(outcome)]

    def _in_worker(self, work, deadline: float):
        """``work()`` in one of the --jobs workers; 504 at the deadline (the work then ends unheard: it is bounded
        by --max-body)."""
        def job():
            with self._lock:
                self.queued -= 1
            return work()

        with self._lock:
            self.queued += 1
        future = self._workers.submit(job)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            if future.cancel():
                with self._lock:
                    self.queued -= 1
            raise HttpError(504, f"not answered within --timeout {self.args.timeout:g} s") from None

    def count(self, status: int, seconds=None) -> None:
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            if seconds is not None:
                self.latency_sum += seconds
                self.latency[next((i for i, le in enumerate(LATENCY_BUCKETS) if seconds <= le),
                                  len(LATENCY_BUCKETS))] += 1

    def metrics(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            counts, latency, latency_sum = dict(self.counts), list(self.latency), self.latency_sum
            audio_seconds, pending, queued = self.audio_seconds, self.pending, self.queued
        batcher = self.batcher
        lines = []

        def metric(name, kind, text, samples):
            lines.extend([f"# HELP audiotag_{name} {text}", f"# TYPE audiotag_{name} {kind}"])
            lines.extend(f"audiotag_{name}{labels} {value:.9g}" for labels, value in samples)

        metric("requests_total", "counter", "Requests answered, by HTTP status.",
               [(f'{{code="{code}"}}', n) for code, n in sorted(counts.items())])
        metric("audio_seconds_total", "counter", "Seconds of audio tagged.", [("", audio_seconds)])
        metric("model_seconds_total", "counter", "Seconds spent running the model.", [("", batcher.model_seconds)])
        metric("model_windows_total", "counter", "Windows the model has tagged.", [("", batcher.windows)])
        metric("model_batches_total", "counter", "Batches the model has run.", [("", batcher.batches)])
        metric("queue_depth", "gauge", "Uploads read and waiting for a worker.", [("", queued)])
        metric("requests_in_progress", "gauge", "Requests taken in and not yet answered.", [("", pending)])
        cumulative, buckets = 0, []
        for le, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), latency):
            cumulative += n
            buckets.append((f'_bucket{{le="{le}"}}', cumulative))
        metric("request_duration_seconds", "histogram", "POST /tag: from the request's headers to its answer.",
               [*buckets, ("_sum", latency_sum), ("_count", cumulative)])
        return "\n".join(lines) + "\n"


class _TagRequest:
    """The query parameters of POST /tag, checked (400 on anything unknown or out of range)."""

    def __init__(self, query: dict):
        unknown = sorted(set(query) - {"name", "top_k", "segments", "raw", "rate", "channels"})
        if unknown:
            raise HttpError(400, f"unknown query parameter {unknown[0]!r} (known: name, top_k, segments, raw, "
                                 "rate, channels)")
        self.name = query.get("name", "-")
        self.top_k = _int_parameter(query, "top_k", 10, 1)
        self.segments = _flag(query, "segments")
        self.raw = query.get("raw")
        if self.raw is not None and self.raw not in RAW_FORMATS:
            raise HttpError(400, f"raw={self.raw}: expected one of {', '.join(RAW_FORMATS)}")
        self.rate = _int_parameter(query, "rate", None, 1)
        self.channels = _int_parameter(query, "channels", 1, 1)
        if self.raw and self.rate is None:
            raise HttpError(400, "raw= needs rate=HZ")


def _open_stream(body: Body, request: _TagRequest):
    """A WAV stream or raw samples, decoded as they arrive. A WAV whose header the stream parser does not take
    (an encoding other than PCM or float) is decoded whole, as a file, as long as the bytes read can be replayed."""
    from . import audio

    try:
        return audio.open_stdin(body, request.raw, request.rate, request.channels)
    except audio.AudioError:
        replay = None if request.raw or body.failure else body.replay()
        if replay is None:
            raise
        return audio.open_bytes(replay + body.read())


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a crawler posts many files on one connection
    server_version = f"audiotag/{__version__}"
    sys_version = ""

    def setup(self):
        self.service = self.server.service
        self.timeout = self.service.args.idle_timeout  # stalled request lines and headers; bodies see Body
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # Headers and body go out in two writes: without this, Nagle's algorithm holds the second one back
            # until the client's delayed ACK (40 ms on Linux).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._expects_continue = False

    def handle_expect_100(self):
        self._expects_continue = True  # "100 Continue" is sent when the body is read, after the checks
        return True

    def do_GET(self):
        self._route(self.command)

    do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _route(self, method: str):
        started = time.monotonic()
        self._body = None
        try:
            path, query = self._parse_target()
            if self.service.token is not None and not self._authorized():
                raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
            allowed = {"/tag": "POST", "/healthz": "GET", "/metrics": "GET"}.get(path)
            if allowed is None:
                raise HttpError(404, f"no such path {path!r} (POST /tag, GET /healthz, GET /metrics)")
            if method != allowed:
                raise HttpError(405, f"{path} takes {allowed}, not {method}")
            if self.service.stopping:
                raise HttpError(503, "shutting down")
            if path == "/tag":
                with self.service.admitted():  # held until answered: a shutdown waits for the answer
                    try:
                        status, records = self._tag(query, started)
                    except HttpError as error:
                        status, records = error.status, [{"error": error.message}]
                    self._answer(status, records, "application/x-ndjson" if len(records) > 1 else "application/json")
                self.service.count(status, time.monotonic() - started)
            elif path == "/healthz":
                info = self.service.tagger.model.info
                self._answer(200, [{"status": "ok", "model": info.name, "version": __version__,
                                    "checkpoint_sha256": info.checkpoint_sha256}])
                self.service.count(200)
            else:
                self._send(200, self.service.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
                self.service.count(200)
        except HttpError as error:
            self._answer(error.status, [{"error": error.message}])
            self.service.count(error.status, time.monotonic() - started if self.path.startswith("/tag") else None)
        except Exception as error:  # a bug: one line in the log and a 500, never a traceback or a silent drop
            _log(f"serve: unexpected {type(error).__name__} answering {self.requestline!r}: {error}")
            self._answer(500, [{"error": f"unexpected {type(error).__name__}: {error}"}])
            self.service.count(500)
        finally:
            self._access_log(started)

    def _tag(self, query: dict, started: float) -> tuple:
        request = _TagRequest(query)
        length, chunked = self._body_framing()
        if length is not None and length > self.service.args.max_body:
            raise HttpError(413, f"body of {length} bytes is over --max-body ({self.service.args.max_body} bytes)")
        self._body = Body(self.rfile, length, chunked, self.service.args.max_body, started + self.service.args.timeout,
                          self.service.args.idle_timeout, self.connection.settimeout, self._send_continue)
        return self.service.tag(self._body, request, started + self.service.args.timeout)

    def _body_framing(self) -> tuple:
        """(Content-Length or None, chunked), as RFC 9112 6.3 has it; 400 for anything else."""
        coding = self.headers.get("Transfer-Encoding")
        length = self.headers.get_all("Content-Length") or []
        if coding is not None:
            if coding.strip().lower() != "chunked" or length:
                raise HttpError(400, f"unsupported Transfer-Encoding {coding!r} (only chunked, without "
                                     "Content-Length)")
            return None, True
        if len(set(length)) > 1 or (length and not length[0].strip().isdigit()):
            raise HttpError(400, f"malformed Content-Length {', '.join(length)!r}")
        if not length or int(length[0]) == 0:
            raise HttpError(400, "empty body: POST the audio file's bytes (with a Content-Length, or chunked)")
        return int(length[0]), False

    def _send_continue(self):
        if self._expects_continue:
            self.send_response_only(100)
            self.end_headers()

    def _parse_target(self) -> tuple:
        target = urlsplit(self.path)
        try:
            pairs = parse_qsl(target.query, keep_blank_values=True, strict_parsing=bool(target.query),
                              encoding="utf-8", errors="surrogateescape")
        except ValueError:
            raise HttpError(400, f"malformed query string {target.query[:80]!r}") from None
        query = {}
        for key, value in pairs:
            if key in query:
                raise HttpError(400, f"query parameter {key!r} given twice")
            query[key] = value
        return target.path, query

    def _authorized(self) -> bool:
        from _operator import _compare_digest  # hmac.compare_digest without hashlib (not in the binary)

        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and _compare_digest(token.strip().encode(errors="surrogateescape"),
                                                               self.service.token)

    def _answer(self, status: int, records: list, content_type: str = "application/json"):
        from .output import format_record

        self._send(status, "".join(format_record(rec, "jsonl") for rec in records).encode(errors="surrogateescape"),
                   content_type)

    def _send(self, status: int, payload: bytes, content_type: str):
        # A body left unread (an early error, a stream cut short) would be taken for the next request.
        unread = not self._body.done if self._body is not None else \
            any(name in (getattr(self, "headers", None) or ()) for name in ("Content-Length", "Transfer-Encoding"))
        if unread or self.service.stopping:
            self.close_connection = True
        self._status, self._sent = status, len(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            if status == 503:
                self.send_header("Retry-After", "1")
            if status == 405:
                self.send_header("Allow", {"/tag": "POST"}.get(urlsplit(self.path).path, "GET"))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            if unread:
                self._discard_rest()
        except OSError:  # the client has gone: nothing to tell it
            self.close_connection = True
            self._status = 499

    def _discard_rest(self):
        """Read (and drop) what the client is still sending before closing: closing with unread bytes resets the
        connection, and the client, still busy sending, would never read the answer. Bounded in time and size."""
        self.connection.shutdown(socket.SHUT_WR)
        end, dropped = time.monotonic() + LINGER_SECONDS, 0
        while dropped < LINGER_BYTES and (left := end - time.monotonic()) > 0:
            self.connection.settimeout(left)
            try:
                data = self.connection.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            dropped += len(data)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (malformed request line, huge headers, unknown method) as JSON, logged."""
        self._body = None
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # not 0.9 (what a garbled request line is taken for): a status line
        started = time.monotonic()
        self._answer(code, [{"error": message or self.responses.get(code, ("error",))[0]}])
        self.service.count(code)
        self._access_log(started)

    def log_request(self, code="-", size="-"):
        pass  # one line per request is written by _access_log, with its size and time

    def log_message(self, format, *args):
        if not self.service.args.quiet:
            _log(f"serve: {self._client()}: {format % args}")

    def _access_log(self, started: float):
        if self.service.args.quiet:
            return
        line = getattr(self, "requestline", "") or "-"
        _log(f"{self._client()} \"{line}\" {getattr(self, '_status', '-')} {getattr(self, '_sent', 0)} "
             f"{time.monotonic() - started:.3f}s")

    def _client(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"


class _Quiet:
    """What both servers share: no DNS at start, no traceback when a connection goes wrong."""

    daemon_threads = True
    request_queue_size = 128  # many crawler threads connecting at once

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a dropped connection is not worth a line
            _log(f"serve: unexpected {type(error).__name__} on a connection: {error}")


class _TCPServer(_Quiet, http.server.ThreadingHTTPServer):
    def __init__(self, address, service, family):
        self.address_family = family
        self.service = service
        super().__init__(address, _Handler)

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look up the host's name
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _UnixServer(_Quiet, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def __init__(self, path, service):
        self.service = service
        super().__init__(path, _Handler)


def _listen(args, service):
    if args.socket:
        _remove_stale_socket(args.socket)
        return _UnixServer(args.socket, service)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    return _TCPServer((args.host, args.port), service, family)


def _remove_stale_socket(path: str) -> None:
    """A socket left by a server that is gone is removed; a live one, or any other file, is not."""
    import stat

    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(17, "file exists and is not a socket", path)
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
        raise OSError(98, "address already in use (a server answers there)")
    except ConnectionRefusedError:
        os.unlink(path)
    finally:
        probe.close()


def _is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (only this machine can connect)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def _read_token(parser, path):
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            token = file.read().strip()
    except OSError as error:
        parser.error(f"--token-file {path}: {(error.strerror or str(error)).lower()}")
    if not token or b"\n" in token or b" " in token:
        parser.error(f"--token-file {path}: expected one token (no spaces) on one line")
    return token


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _int_parameter(query, name, default, minimum):
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise HttpError(400, f"{name}={query[name]}: expected a whole number") from None
    if value < minimum:
        raise HttpError(400, f"{name}={value}: must be at least {minimum}")
    return value


def _flag(query, name) -> bool:
    value = query.get(name, "0").lower()
    if value not in ("0", "1", "true", "false", ""):
        raise HttpError(400, f"{name}={value}: expected 1 or 0")
    return value in ("1", "true", "")


def _log(message: str) -> None:
    """One line on stderr (control characters escaped); a failing stderr never stops the server."""
    line = "audiotag: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        self.exit(EXIT_USAGE, f"audiotag serve: {message} (audiotag serve --help for usage)\n")


def _number(kind, minimum, maximum=None):
    """An argparse type: a number of ``kind`` within [minimum, maximum]."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= minimum or (maximum is not None and not value <= maximum):  # also refuses NaN, inf
            raise argparse.ArgumentTypeError(f"must be within {minimum}..{maximum or 'any'}, got {text}")
        return value

    return parse


def _size(text: str) -> int:
    """Bytes, with an optional K, M or G (powers of 1024)."""
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bytes such as 64M, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text}")
    return value
