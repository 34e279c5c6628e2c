"""The HTTP side of ``audiotag serve``: requests parsed, answers formatted, on the standard library's
``http.server`` (a thread per connection, so a slow client holds only its own thread).

What http.server lacks for this use is small and written here or in ``httpbody.py``: chunked request bodies, JSON
errors (its own are HTML), an access log of one line per request, TCP_NODELAY, no DNS look-up at start, no
traceback when a connection goes wrong. The work behind POST /tag is ``serve.Service``'s, reached as
``self.server.service``.
"""

import contextlib
import http.server
import io
import json
import os
import socket
import socketserver
import sys
import time
from urllib.parse import parse_qsl, urlsplit

from .. import __version__
from ..errors import failure_message
from ..hashing import sha256
from ..options import RAW_FORMATS, TagOptions, per_request_options
from .body import Body, HttpError

LINGER_SECONDS, LINGER_BYTES = 2.0, 64 << 20  # an error answered before the body was read: how much to drop after


INPUT_PARAMETERS = ("name", "raw", "rate", "channels")


class TagRequest:
    """The query parameters of POST /tag, checked (400 on anything unknown or out of range). The output options
    are the CLI's, parsed and checked by ``TagOptions.from_strings`` so both front ends refuse the same values."""

    def __init__(self, query: dict, defaults: TagOptions = TagOptions()):
        option_names = per_request_options()  # the TagOptions a request may set (options.py says which)
        unknown = sorted(set(query) - set(option_names) - set(INPUT_PARAMETERS))
        if unknown:
            raise HttpError(400, f"unknown query parameter {unknown[0]!r} (known: "
                                 f"{', '.join(INPUT_PARAMETERS + option_names)})")
        self.name = query.get("name", "-")
        try:
            self.options = TagOptions.from_strings({key: query[key] for key in option_names if key in query},
                                                  base=defaults)
        except ValueError as error:
            raise HttpError(400, str(error)) from None
        self.segments = self.options.segments
        self.raw = query.get("raw")
        if self.raw is not None and self.raw not in RAW_FORMATS:
            raise HttpError(400, f"raw={self.raw}: expected one of {', '.join(RAW_FORMATS)}")
        self.rate = _int_parameter(query, "rate", None, 1)
        self.channels = _int_parameter(query, "channels", 1, 1)
        if self.raw and self.rate is None:
            raise HttpError(400, "raw= needs rate=HZ")
        if not self.raw and ("rate" in query or "channels" in query):  # would be ignored: say so
            raise HttpError(400, "rate= and channels= describe headerless samples: give raw=FORMAT too")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a crawler posts many files on one connection
    server_version = f"audiotag/{__version__}"
    sys_version = ""

    def setup(self):
        self.service = self.server.service
        self.timeout = self.service.args.idle_timeout  # stalled request lines and headers; bodies see Body
        super().setup()
        self.rfile.close()  # makefile's reader, replaced by one that keeps to the request head's deadline
        self._reads = _Reads(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reads)
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # Headers and body go out in two writes: without this, Nagle's algorithm holds the second one back
            # until the client's delayed ACK (40 ms on Linux).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._expects_continue = False

    def handle_one_request(self):
        """One request, whose line and headers must all arrive within --header-timeout of the connection or the
        previous answer, with no silence of --idle-timeout in them: else 408 and the connection closed (an idle
        keep-alive connection, which has begun no request, is just closed)."""
        self.command, self.requestline, self.headers = None, "", None
        self._reads.start_head(self.service.args.header_timeout)
        self.service.awaiting_head(self.connection, self._reads)  # may be closed for a newcomer (Service.connect)
        try:
            super().handle_one_request()
        finally:
            self.service.awaiting_head(self.connection)
        if self._reads.late:
            self.send_error(408, self._reads.late)

    def handle_expect_100(self):
        self._expects_continue = True  # "100 Continue" is sent when the body is read, after the checks
        return True

    def do_GET(self):
        self._route(self.command)

    do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _route(self, method: str):
        started = time.monotonic()
        self.service.awaiting_head(self.connection)  # in a request now: never closed to make room
        self._body = None
        self._reads.deadline = None  # the head is in: the body's reads keep their own time (Body)
        try:
            path, query = self._parse_target()
            if self.service.token is not None and not self._authorized():
                raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
            allowed = {"/tag": ("POST",), "/healthz": ("GET", "HEAD"), "/metrics": ("GET", "HEAD")}.get(path)
            if allowed is None:
                raise HttpError(404, f"no such path {path!r} (POST /tag, GET /healthz, GET /metrics)")
            if method not in allowed:
                raise HttpError(405, f"{path} takes {' or '.join(allowed)}, not {method}")
            if self.service.stopping:
                raise HttpError(503, "shutting down")
            if path == "/tag":
                with self.service.taken_in(self.connection):  # held until answered: a shutdown waits for it
                    try:
                        status, records = self._tag(query, started)
                    except HttpError as error:
                        if self.service.gave_up:  # the shutdown cut its body or its wait short
                            status, records = 503, [{"error": "shutting down: not answered within --drain-timeout"}]
                        else:
                            status, records = error.status, [{"error": error.message}]
                    self._answer(status, records, "application/x-ndjson" if len(records) > 1 else "application/json")
                self.service.count(status, time.monotonic() - started)
            elif path == "/healthz":
                info = self.service.tagger.model.info
                self._answer(200, [{"status": "ok", "model": info.name, "version": __version__,
                                    "checkpoint_sha256": info.checkpoint_sha256}])
                self.service.count(200)
            else:
                self._send(200, self.service.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
                self.service.count(200)
        except HttpError as error:
            self._answer(error.status, [{"error": error.message}])
            self.service.count(error.status, time.monotonic() - started if self.path.startswith("/tag") else None)
        except Exception as error:  # a bug: one line in the log and a 500, never a traceback or a silent drop
            log(f"serve: unexpected {type(error).__name__} answering {self.requestline!r}: {error}")
            self._answer(500, [{"error": failure_message(error)}])  # worded for the client; the log keeps the class
            self.service.count(500)
        finally:
            self.connection.settimeout(self.timeout)  # a body's reads may have shortened it to their deadline
            self._access_log(started)

    def _tag(self, query: dict, started: float) -> tuple:
        request = TagRequest(query, self.service.args.options)
        problem = self.service.tagger.label_problem(request.options)  # only=, exclude=: names the model knows
        if problem:
            raise HttpError(400, f"{problem[0]}: {problem[1]}")
        length, chunked = self._body_framing()
        if length is not None and length > self.service.args.max_body:
            raise HttpError(413, f"body of {length} bytes is over --max-body ({self.service.args.max_body} bytes)")
        self._body = Body(self.rfile, length, chunked, self.service.args.max_body, started + self.service.args.timeout,
                          self.service.args.idle_timeout, self.connection.settimeout, self._send_continue)
        if request.options.hash:
            self._body.digest = sha256()
        return self.service.tag(self._body, request, started + self.service.args.timeout, self._client())

    def _body_framing(self) -> tuple:
        """(Content-Length or None, chunked), as RFC 9112 6.3 has it; 400 for anything else."""
        codings = self.headers.get_all("Transfer-Encoding") or []
        length = self.headers.get_all("Content-Length") or []
        if len(codings) > 1:  # "chunked" then "gzip": a coding this server would not undo
            raise HttpError(400, f"Transfer-Encoding given {len(codings)} times ({', '.join(codings)!r}): only "
                                 "one, chunked")
        coding = codings[0] if codings else None
        if coding is not None:
            if coding.strip().lower() != "chunked" or length:
                raise HttpError(400, f"unsupported Transfer-Encoding {coding!r} (only chunked, without "
                                     "Content-Length)")
            return None, True
        # ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses.
        if len(set(length)) > 1 or (length and not (length[0].strip().isascii() and length[0].strip().isdigit())):
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
        # Header values arrive decoded as ISO-8859-1: encoded back so, they are the bytes the client sent (a
        # UTF-8 token in --token-file then matches).
        return scheme.lower() == "bearer" and _compare_digest(token.strip().encode("latin-1", errors="replace"),
                                                               self.service.token)

    def _answer(self, status: int, records: list, content_type: str = "application/json"):
        from ..records import format_record

        self._send(status, "".join(format_record(rec, "jsonl") for rec in records).encode(errors="surrogateescape"),
                   content_type)

    def _send(self, status: int, payload: bytes, content_type: str):
        # A body left unread (an early error, a stream cut short) would be taken for the next request.
        unread = not self._body.done if self._body is not None else self._reads.late or \
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
                self.send_header("Allow", {"/tag": "POST"}.get(urlsplit(self.path).path, "GET, HEAD"))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
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
            log(f"serve: {self._client()}: {format % args}")

    def _access_log(self, started: float):
        if self.service.args.quiet:
            return
        line = getattr(self, "requestline", "") or "-"
        log(f"{self._client()} \"{line}\" {getattr(self, '_status', '-')} {getattr(self, '_sent', 0)} "
            f"{time.monotonic() - started:.3f}s")

    def _client(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"


class _Reads(socket.SocketIO):
    """The connection's reads, as ``makefile("rb")``'s, but while a request's head arrives none waits past its
    deadline: --idle-timeout alone restarts at every byte, so a byte every few seconds would hold a thread."""

    def __init__(self, connection, idle_timeout: float):
        super().__init__(connection, "rb")
        self._connection, self._idle_timeout = connection, idle_timeout
        self.deadline, self.received, self._head_timeout = None, 0, 0.0
        self.late = ""  # why a begun request head is answered 408
        self.evicted = False  # closed to make room for a new connection (Service.connect): read no more

    def evict(self, limit: int) -> bool:
        """Close this connection, waiting for a request head, for a newcomer; a head begun is answered 503
        (True when it was)."""
        self.evicted = True
        answered = False
        with contextlib.suppress(OSError):
            if self.received:
                self._connection.send(_busy(f"busy: {limit} connections open (--max-connections), and this "
                                            "one's request head was still arriving"), socket.MSG_DONTWAIT)
                answered = True
            self._connection.shutdown(socket.SHUT_RDWR)
        return answered

    def start_head(self, seconds: float) -> None:
        self.deadline, self.received, self.late = time.monotonic() + seconds, 0, ""
        self._head_timeout = seconds

    def readinto(self, buffer):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._late()
            self._connection.settimeout(min(self._idle_timeout, left))
        try:
            count = super().readinto(buffer)
        except TimeoutError:
            if self.deadline is not None:
                if time.monotonic() >= self.deadline:
                    self._late()
                self._late(f"the client sent nothing for {self._idle_timeout:g} s (--idle-timeout) in its "
                           "request line and headers")
            raise
        if self.evicted:  # answered (or an idle connection just closed) by evict()
            raise ConnectionAbortedError("closed for a new connection (--max-connections)")
        self.received += count or 0
        return count

    def _late(self, why: str = ""):
        why = why or f"request line and headers not received within --header-timeout {self._head_timeout:g} s"
        self.late = why if self.received > 0 else ""  # a request had begun: it is answered 408
        raise TimeoutError(why)


class _Server:
    """What both servers share: no DNS at start, no traceback when a connection goes wrong, and at most
    --max-connections open: past it the connection waiting longest for a request head is closed to make room,
    or, when every one is in a request, the new one is answered 503 by the accepting thread and closed, without a
    thread."""

    daemon_threads = True
    request_queue_size = 128  # many crawler threads connecting at once

    def process_request(self, request, client_address):
        admitted = self.service.connect()
        if isinstance(admitted, _Reads):
            if admitted.evict(self.service.args.max_connections):
                self.service.count(503)
        elif not admitted:
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_busy(f"busy: {self.service.args.max_connections} connections open "
                                   "(--max-connections), each in a request"))
                request.recv(1 << 16)  # what the client has sent: closing over unread bytes resets the connection
            self.shutdown_request(request)
            self.service.count(503)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread: the connection is closed by the caller
            self.service.disconnect()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.service.disconnect()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a dropped connection is not worth a line
            log(f"serve: unexpected {type(error).__name__} on a connection: {error}")


class TCPServer(_Server, http.server.ThreadingHTTPServer):
    def __init__(self, address, service, family):
        self.address_family = family
        self.service = service
        super().__init__(address, Handler)

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look up the host's name
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class UnixServer(_Server, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def __init__(self, path, service):
        self.service = service
        super().__init__(path, Handler)


def listen(args, service):
    if args.socket:
        _remove_stale_socket(args.socket)
        return UnixServer(args.socket, service)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    return TCPServer((args.host, args.port), service, family)


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


def _busy(message: str) -> bytes:
    """A whole 503 answer, sent on a connection outside its handler (then closed)."""
    payload = json.dumps({"error": message}).encode() + b"\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(payload), payload))


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


def log(message: str) -> None:
    """One line on stderr (control characters escaped); a failing stderr never stops the server."""
    line = "audiotag: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
