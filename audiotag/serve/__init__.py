"""``audiotag serve``: an HTTP front end for crawlers that hold each download in memory.

``POST /tag`` takes a file's bytes and answers the JSON record ``audiotag FILE`` prints; ``GET /healthz`` and
``GET /metrics`` (Prometheus text) say how it is doing. Like the CLI this module only parses and formats: the
bytes decode through ``decode.open_bytes`` (or, as they arrive, ``decode.open_stdin``) and every request's windows
go to one ``infer.batcher.Batcher``, so concurrent requests share one model session and its batches, as the inputs
of ``audiotag DIR`` do.

Here: the command line, start-up checks, the shutdown, and the ``Service`` that tags a request's body. The HTTP
side is ``httpserver.py`` (on the standard library's ``http.server``: no dependency, 0.05 MB in the binary),
request bodies ``httpbody.py``, the counters ``metrics.py``.
"""

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ..errors import EXIT_MODEL, EXIT_OK, EXIT_USAGE
from ..options import (MAX_SECONDS, Parser, add_engine_arguments, add_tag_arguments, number, per_request_options,
                       requested_providers, tag_options, window_problem)
from .body import Body, HttpError
from .handler import TagRequest, listen, log
from .metrics import Metrics

DEFAULT_PORT = 8750
DEFAULT_MAX_BODY = 64 << 20  # 64 MiB: 6 minutes of CD-quality WAV, an hour of 128 kbit/s MP3
DEFAULT_MAX_PENDING = 32  # requests in work at once; 2 x as many bodies may be arriving: memory is 3 x this many
MEMORY_BASE_MB, MEMORY_PER_DECODE_MB = 100, 30  # measured: the server, model loaded; each decode under way
DEFAULT_MAX_UPLOADS_PER_CLIENT = 4  # bodies arriving at once from one address: slow uploads cannot fill the places
DEFAULT_MAX_CONNECTIONS = 512  # connections open at once (a thread each)
DEFAULT_TIMEOUT = 60.0  # seconds from a request's headers to its answer
DEFAULT_MAX_DURATION = 7200.0  # seconds of audio tagged per request, as the CLI's batch default
DEFAULT_IDLE_TIMEOUT = 10.0  # a client that sends nothing for this long is dropped
DEFAULT_HEADER_TIMEOUT = 30.0  # a request line and headers must all arrive within this
DEFAULT_DRAIN_TIMEOUT = 9.0  # after SIGTERM, requests in work get this long to finish (exit within 10 s)
ANSWER_SECONDS = 1.0  # then this long for the 503s of those that did not

EPILOG = f"""\
endpoints:
  POST /tag       the body is an audio file's bytes (any format `audiotag FILE` reads); the answer is the JSON
                  record `audiotag FILE` prints (Content-Type application/json):
                    {{"path": "a.wav", "duration": 10.0, "sample_rate": 32000, "channels": 1, "tags": [...]}}
                  query parameters:
                    name=NAME       echoed as "path" (default "-")
                    top_k=N         labels in the answer (default 10)
                    threshold=T     only labels scoring at least T (within top_k), as --threshold
                    aggregate=mean  window scores to the clip's by their mean (default max), as --aggregate
                    segments=1      also each window's tags: JSON lines, window records before the clip's
                    events=1        also when each sound is present: JSON lines, event records
                                    {{"path", "label", "start", "end", "score"}} before the clip's, as --events
                    raw=FORMAT&rate=HZ[&channels=C]   headerless samples (s16le, s32le, f32le)
                  A body with Content-Length is read whole (up to --max-body), then decoded as a file is. A
                  chunked body (Transfer-Encoding: chunked) holding a WAV stream or raw samples is decoded as
                  it arrives: memory stays flat however long the upload.
  GET /healthz    200 {{"status": "ok", "model": ..., "version": ...}} (HEAD: the same headers, no body)
  GET /metrics    Prometheus text (HEAD too): audiotag_requests_total{{code}}, audiotag_audio_seconds_total,
                  audiotag_model_seconds_total, audiotag_queue_depth, audiotag_uploads_in_progress,
                  audiotag_requests_in_work (work counts until it ends, cancelled work too),
                  audiotag_requests_cancelled_total{{stage="queued"|"working"}}, audiotag_connections,
                  audiotag_request_duration_seconds...

status codes (errors are JSON {{"error": "reason"}}):
  200  tagged: the record
  400  empty or malformed request (body, framing, query parameter)
  401  missing or wrong bearer token (with --token-file)
  404  no such path; 405 wrong method for the path
  408  the client sent nothing for --idle-timeout seconds, or not its request line and headers within
       --header-timeout seconds (the connection is then closed)
  413  body over --max-body
  422  audio that cannot be tagged: the CLI's error record {{"path": NAME, "error": "cannot decode: ..."}}
  503  busy (Retry-After: 1): --max-pending requests already in work, --max-uploads-per-client bodies
       arriving from this address or 2 x --max-pending from all, --max-connections open and each in a
       request (answered and closed at once; else the connection waiting longest for its request head
       makes room, answered 503 if its head had begun); or shutting down
  504  not answered within --timeout seconds of its headers (waiting for a worker included); its work is
       then cancelled: not started if it still waits for a worker, else stopped at its next decoded block

safety: binds 127.0.0.1 by default; any other (non-loopback) address needs --token-file, and every request
must then carry "Authorization: Bearer TOKEN".

memory (measured): about {MEMORY_BASE_MB} MB for the server; each body held once (an arriving one only as far as it
has arrived; a streamed PCM WAV or raw upload not at all); up to {MEMORY_PER_DECODE_MB} MB for each decode under way
(--jobs bodies in work, and every streamed upload). With --max-pending bodies in work and 2 x --max-pending
arriving, at worst 3 x --max-pending x (--max-body + {MEMORY_PER_DECODE_MB} MB) + {MEMORY_BASE_MB} MB: 9 GB with
the defaults (8 concurrent 59.5 MB uploads raised the peak by 1.08 x their bytes).

SIGTERM or SIGINT: stops accepting, answers every request taken in: what finishes within --drain-timeout (9 s)
with its answer, the rest 503 (Retry-After: 1), their work cancelled; exits 0 within --drain-timeout + 1 s. One
access-log line per request on stderr (--quiet: none).

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
    parser = Parser(
        prog="audiotag serve",
        description="Serve AudioSet tags over HTTP: POST a file's bytes to /tag, get the record `audiotag FILE` "
                    "prints. One model, shared by every request.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen = parser.add_argument_group("listening")
    listen.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; a non-loopback one needs --token-file)")
    listen.add_argument("--port", type=number(int, 0, 65535), default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one, named in the start-up line)")
    listen.add_argument("--socket", metavar="PATH", help="listen on a Unix socket at PATH instead of TCP")
    listen.add_argument("--token-file", metavar="FILE",
                        help="require 'Authorization: Bearer TOKEN' on every request, TOKEN being FILE's content")
    listen.add_argument("-q", "--quiet", action="store_true", help="no access-log line per request on stderr")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-body", type=_size, default=DEFAULT_MAX_BODY, metavar="BYTES",
                        help="largest body accepted, e.g. 64M (default 64M); more is answered 413")
    limits.add_argument("--max-pending", type=number(int, 1), default=DEFAULT_MAX_PENDING, metavar="N",
                        help=f"requests in work at once, their bodies received, queued or tagged (default "
                             f"{DEFAULT_MAX_PENDING}); more are answered 503. At most 2 x N bodies arrive at once")
    limits.add_argument("--max-uploads-per-client", type=number(int, 1), default=DEFAULT_MAX_UPLOADS_PER_CLIENT,
                        metavar="N", help=f"bodies arriving at once from one client address (default "
                                          f"{DEFAULT_MAX_UPLOADS_PER_CLIENT}); more are answered 503")
    limits.add_argument("--max-connections", type=number(int, 1), default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help=f"connections open at once (default {DEFAULT_MAX_CONNECTIONS}); one more closes the "
                             "one waiting longest for a request head (a head begun is answered 503), or when all "
                             "are in a request is itself answered 503 and closed")
    add_engine_arguments(limits, "timeout", "max_duration", **{
        "timeout": dict(type=number(float, 0.001, MAX_SECONDS), default=DEFAULT_TIMEOUT,
                        help=f"seconds from a request's headers to its answer, waiting for a worker included "
                             f"(default {DEFAULT_TIMEOUT:g}); later is answered 504 and its work cancelled"),
        "max_duration": dict(type=number(float, 0, MAX_SECONDS), default=DEFAULT_MAX_DURATION,
                             help=f"tag only the first SEC seconds of each body, as the CLI's option; the record "
                                  f"says it was cut (default {DEFAULT_MAX_DURATION:g}; 0 = no limit)")})
    limits.add_argument("--idle-timeout", type=number(float, 0.001, MAX_SECONDS), default=DEFAULT_IDLE_TIMEOUT,
                        metavar="SEC", help=f"a client that sends nothing for this long is dropped (default "
                                            f"{DEFAULT_IDLE_TIMEOUT:g})")
    limits.add_argument("--header-timeout", type=number(float, 0.001, MAX_SECONDS), default=DEFAULT_HEADER_TIMEOUT,
                        metavar="SEC", help=f"a request's line and headers must all arrive within this, from the "
                                            f"connection or the previous answer; else 408 (default "
                                            f"{DEFAULT_HEADER_TIMEOUT:g})")
    limits.add_argument("--drain-timeout", type=number(float, 0, MAX_SECONDS), default=DEFAULT_DRAIN_TIMEOUT,
                        metavar="SEC", help=f"after SIGTERM/SIGINT, requests in work get this long to finish; the "
                                            f"rest are answered 503 (default {DEFAULT_DRAIN_TIMEOUT:g})")
    tagging = parser.add_argument_group("tagging (as the CLI's; the defaults for every request, which may set "
                                        f"{', '.join(per_request_options())} itself)")
    add_tag_arguments(tagging)
    engine = parser.add_argument_group("engine (as the CLI's)")
    add_engine_arguments(engine, "model", "provider", "jobs", "threads", **{
        "jobs": dict(help="uploads decoded at once (default: the cores it may use); a streamed upload decodes as it "
                          "arrives, in its own connection's thread"),
        "threads": dict(default=1, help="onnxruntime intra-op threads (default 1: the jobs keep every core busy)")})
    engine.add_argument("-v", "--verbose", action="store_true", help="say which execution provider runs")
    return parser


def main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = window_problem(args.window, args.hop)
    if problem:
        parser.error(problem)
    try:
        args.options = tag_options(args)  # every request's defaults
    except ValueError as error:
        parser.error(str(error))
    token = _read_token(parser, args.token_file)
    if args.socket is None and token is None and not _is_loopback(args.host):
        parser.error(f"--host {args.host} is reachable from other machines: give --token-file FILE (a secret "
                     "every request must send as 'Authorization: Bearer TOKEN'), or bind 127.0.0.1")

    from ..infer.model import ModelError
    from ..infer.tagger import Tagger

    try:
        tagger = Tagger(args.model, providers=requested_providers(args.provider), threads=args.threads)
    except (ModelError, FileNotFoundError) as error:
        log(str(error))
        return EXIT_MODEL
    problem = tagger.label_problem(args.options)
    if problem:
        parser.error(f"--{problem[0]}: {problem[1]}")
    service = Service(tagger, args, token)
    try:
        server = listen(args, service)
    except OSError as error:
        log(f"serve: cannot listen on {args.socket or f'{args.host}:{args.port}'}: "
            f"{(error.strerror or str(error)).lower()}")
        return EXIT_USAGE
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="audiotag-serve",
                     daemon=True).start()
    where = f"unix:{args.socket}" if args.socket else f"http://{_url_host(args.host)}:{server.server_address[1]}"
    log(f"serving {where} (model {tagger.model.info.name}, jobs {args.jobs}"
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
    unfinished = service.wait_idle(args.drain_timeout - (time.monotonic() - stopped))
    if unfinished:
        service.give_up()  # each is answered 503, not dropped
        unanswered = service.wait_idle(ANSWER_SECONDS)
        log(f"serve: {unfinished} requests not finished within --drain-timeout were answered 503, their work "
            f"cancelled" + (f" ({unanswered} could not be answered)" if unanswered else ""))
    service.close()  # what still runs (work whose answer went first) stops at its next block
    log("serve: stopped")
    return EXIT_OK


class Service:
    """What the handlers share: the tagger, the batcher, the decode workers, the limits and the metrics.

    A POST /tag passes three counts: taken in (headers read, until answered: what a shutdown waits for), receiving
    (its body arriving: at most --max-uploads-per-client per client address and 2 x --max-pending in all) and in
    work (its body whole, queued, decoded and tagged, until the work ends, cancelled or not: at most --max-pending).
    A slow upload holds only an upload place, so slow clients cannot keep the work places from everyone else."""

    def __init__(self, tagger, args, token):
        from ..infer.batcher import Batcher, model_runners

        self.tagger = tagger
        self.token = token
        self.args = args
        self.batcher = Batcher(tagger, runners=model_runners(tagger.model, args.jobs))
        self._workers = ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="audiotag-job")
        self._lock = threading.Condition()
        self.connections = 0  # open connections (--max-connections)
        self._heads = {}  # connection -> (since when, its reader): the connections waiting for a request head
        self.taken = 0  # requests taken in and not yet answered
        self.uploads = {}  # client address -> bodies being received from it
        self.pending = 0  # requests in work: bodies received, queued for a worker or being tagged
        self.queued = 0  # of those, waiting for a worker
        self.stopping = False
        self._in_flight = set()  # the connections of the requests taken in, for give_up()
        self._given_up = Future()  # done when a shutdown gives up on what is still in work
        self._cancel_events = set()  # one per request in work: set, its work stops (close)
        self.metrics = Metrics()

    def connect(self):
        """Whether one more connection may open (it then counts until ``disconnect``): True, False, or at
        --max-connections the reader of the connection that has waited longest for a request head (a trickling
        head, an idle keep-alive connection), which the caller closes to make room. So slow heads cannot keep
        clients with a request out; only when every connection is in a request is the new one refused."""
        with self._lock:
            if self.connections < self.args.max_connections:
                self.connections += 1
                return True
            if not self._heads:
                return False
            oldest = min(self._heads, key=lambda connection: self._heads[connection][0])
            self.connections += 1  # for a moment one over: the closed one's thread ends at once
            return self._heads.pop(oldest)[1]

    def awaiting_head(self, connection, reads=None) -> None:
        """``connection`` waits for a request head (``reads``, its reader, given), or no longer (None)."""
        with self._lock:
            if reads is None:
                self._heads.pop(connection, None)
            else:
                self._heads[connection] = (time.monotonic(), reads)

    def disconnect(self) -> None:
        with self._lock:
            self.connections -= 1

    @contextlib.contextmanager
    def taken_in(self, connection):
        """A request from its headers to its answer; a shutdown waits for it, or gives up on it (``give_up``)."""
        with self._lock:
            self.taken += 1
            self._in_flight.add(connection)
        try:
            yield
        finally:
            with self._lock:
                self.taken -= 1
                self._in_flight.discard(connection)
                self._lock.notify_all()

    @contextlib.contextmanager
    def receiving(self, client: str):
        """A body being received from ``client``: 503 past the per-client or the overall cap on uploads, or when
        every work place is taken (before the body is sent for nothing)."""
        limit, total_limit = self.args.max_uploads_per_client, 2 * self.args.max_pending
        with self._lock:
            if self.pending >= self.args.max_pending:
                raise HttpError(503, f"busy: {self.pending} requests in work (--max-pending)")
            if self.uploads.get(client, 0) >= limit:
                raise HttpError(503, f"busy: {limit} uploads from this client in progress "
                                     "(--max-uploads-per-client)")
            if sum(self.uploads.values()) >= total_limit:
                raise HttpError(503, f"busy: {total_limit} uploads in progress (2 x --max-pending)")
            self.uploads[client] = self.uploads.get(client, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self.uploads[client] -= 1
                if not self.uploads[client]:
                    del self.uploads[client]

    def wait_idle(self, seconds: float) -> int:
        """Wait until no request is taken in, or ``seconds``; the requests still taken in."""
        end = time.monotonic() + seconds
        with self._lock:
            while self.taken and (left := end - time.monotonic()) > 0:
                self._lock.wait(left)
            return self.taken

    def give_up(self) -> None:
        """Shutting down: what is still in work is answered 503 now. Waits for a worker end at once; body reads
        end too (the connections are shut for reading), and their requests are answered 503, not dropped."""
        self._given_up.set_result(None)
        with self._lock:
            for connection in self._in_flight:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RD)

    @property
    def gave_up(self) -> bool:
        return self._given_up.done()

    def tag(self, body: Body, request: "TagRequest", deadline: float, client: str) -> tuple:
        """(status, records) for one POST /tag from ``client`` (its address)."""
        from .. import decode, records
        from ..batch import pipeline
        from ..decode import limits

        options = request.options
        max_duration = self.args.max_duration or None  # the CLI's --max-duration: the record says it was cut
        segments = []

        def on_segment(name, segment):
            segments.append(records.segment_record(name, segment))

        def tag_with(open_input, cancelled=None):
            bounds = limits.Limits(max_duration)
            return pipeline.tag_input(pipeline.Input(request.name),
                                      lambda name: limits.apply(open_input(name), bounds, cancelled),
                                      self.tagger, self.batcher, options, on_segment if request.segments else None)

        with self.receiving(client):
            head = body.peek(12)
            if not head:
                raise HttpError(400, "empty body: POST the audio file's bytes")
            streamed = request.raw or (body.chunked and head[:4] == b"RIFF" and head[8:12] == b"WAVE")
            if streamed:
                # Decoded as it arrives, in this connection's thread: its pace is the client's, and its memory
                # does not grow, so it holds an upload place only.
                outcome = tag_with(lambda _: _open_stream(body, request))
                with contextlib.suppress(HttpError):  # what follows the samples (the last chunk, tags), so the
                    while body.failure is None and body.read(1 << 16):  # connection can take the next request
                        pass
            else:
                data = body.read_all()  # one copy of the body, read in place; the decoder reads that copy
        if not streamed:
            outcome = self._in_worker(lambda cancelled: tag_with(lambda _: decode.open_bytes(data), cancelled),
                                      deadline)
        if body.failure is not None:
            raise body.failure
        if body.digest is not None:  # hash=1: every byte of the body was read (a stream to its end, above)
            outcome.sha256 = body.digest.hexdigest()
        if outcome.error is None:
            self.metrics.tagged(outcome.duration)
        return (200 if outcome.error is None else 422), [*segments, *records.event_records(outcome),
                                                          records.record(outcome)]

    def _in_worker(self, work, deadline: float):
        """``work(cancelled)`` in one of the --jobs workers, its place in --max-pending held until the work ends.
        At ``deadline`` (from the request's headers) it is answered 504, and when a shutdown gives up on it 503;
        either way its work is cancelled then: not started if it still waits for a worker, else stopped at its
        next decoded block (``cancelled``), so the worker is free for the next request."""
        cancelled = threading.Event()

        def job():
            with self._lock:
                self.queued -= 1
            try:
                if cancelled.is_set() or time.monotonic() >= deadline:
                    return None  # answered already (or about to be): not started
                return work(cancelled)
            finally:
                self._work_ended(cancelled)

        with self._lock:
            if self.pending >= self.args.max_pending:
                raise HttpError(503, f"busy: {self.pending} requests in work (--max-pending)")
            self.pending += 1
            self.queued += 1
            self._cancel_events.add(cancelled)
        try:
            future = self._workers.submit(job)
        except RuntimeError:  # the workers are shut down (close): the server is stopping
            with self._lock:
                self.queued -= 1
            self._work_ended(cancelled)
            raise HttpError(503, "shutting down") from None
        wait([future, self._given_up], timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
        if future.done() and not future.cancelled():  # (cancelled: by close(), below it counts as never started)
            outcome = future.result()
            if outcome is not None:
                return outcome
            stage = "queued"  # a worker took it up past its deadline, and left it
        else:
            cancelled.set()
            stage = "working"
            if future.cancel():  # it never reached a worker
                stage = "queued"
                with self._lock:
                    self.queued -= 1
                self._work_ended(cancelled)
        self.metrics.cancelled(stage)
        if self.gave_up:
            raise HttpError(503, "shutting down: not tagged within --drain-timeout")
        raise HttpError(504, f"not answered within --timeout {self.args.timeout:g} s")

    def _work_ended(self, cancelled: threading.Event) -> None:
        with self._lock:
            self.pending -= 1
            self._cancel_events.discard(cancelled)

    def close(self) -> None:
        """The end: work still queued is dropped, work still running stops at its next decoded block."""
        self._workers.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for cancelled in self._cancel_events:
                cancelled.set()

    def count(self, status: int, seconds=None) -> None:
        self.metrics.count(status, seconds)

    def metrics_text(self) -> str:
        with self._lock:
            gauges = {"connections": self.connections, "requests_in_progress": self.taken,
                      "uploads_in_progress": sum(self.uploads.values()), "requests_in_work": self.pending,
                      "queue_depth": self.queued}
        return self.metrics.text(self.batcher, gauges)


def _open_stream(body: Body, request: TagRequest):
    """A WAV stream or raw samples, decoded as they arrive. A WAV whose header the stream parser does not take
    (an encoding other than PCM or float) is decoded whole, as a file, as long as the bytes read can be replayed."""
    from .. import decode

    try:
        return decode.open_stdin(body, request.raw, request.rate, request.channels)
    except decode.AudioError:
        replay = None if request.raw or body.failure else body.replay()
        if replay is None:
            raise
        return decode.open_bytes(body.read_all(prefix=replay))


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
