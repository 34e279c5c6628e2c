"""A request body as a file object the decoders read as it arrives: Content-Length or chunked transfer coding,
at most ``limit`` bytes, every read before a deadline and within an idle timeout.

The decoders turn any exception into an input's error message, so a failure here is also kept in ``failure``
(an ``HttpError``) before it is raised: the answer then gives the client the real reason (413, 408...), not
what the decoder made of it. http.server does not decode chunked bodies; this does, strictly (RFC 9112 7.1).
"""

import mmap
import time
from typing import Callable, Optional

CHUNK_LINE_LIMIT = 4096  # a chunk-size line (with extensions) or trailer line longer than this is malformed
REPLAY_LIMIT = 1 << 16  # the first bytes are kept, so a stream parser that gives up early can hand them on


class HttpError(Exception):
    """An answer other than 200: the status and the one-line reason sent as {"error": reason}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Body:
    def __init__(self, rfile, length: Optional[int], chunked: bool, limit: int, deadline: float,
                 idle_timeout: float, set_timeout: Callable[[float], None], before_first_read: Callable[[], None]):
        self._rfile = rfile
        self._chunked = chunked
        self.chunked = chunked
        self._left = 0 if chunked else length  # bytes left in the body, or in the current chunk
        self._limit = limit
        self._deadline = deadline
        self._idle_timeout = idle_timeout
        self._set_timeout = set_timeout
        self._before_first_read = before_first_read  # sends "100 Continue" when the client waits for it
        self._pushed_back = b""
        self._kept = []  # the first REPLAY_LIMIT bytes or so, for replay()
        self.received = 0
        self.done = not chunked and not length
        self.failure: Optional[HttpError] = None
        self.digest = None  # a hashing.sha256 that sees every byte of the body once (hash=1)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); b"" at the end of the body."""
        if size is None or size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        if self._pushed_back:
            data, self._pushed_back = self._pushed_back[:size], self._pushed_back[size:]
            return data
        if size == 0 or not self._open_chunk():
            return b""
        data = self._receive(lambda: self._rfile.read1(min(size, self._left)))
        self._took(data)
        return data

    def read_all(self, prefix: bytes = b"") -> memoryview:
        """``prefix`` and the rest of the body in one buffer, filled in place as it arrives: joining read()'s
        pieces would hold the body twice for a moment, and the decoder reads this buffer without a copy. The
        buffer is an anonymous mapping: only what has arrived takes memory, not the length a client announces."""
        head, self._pushed_back = prefix + self._pushed_back, b""
        more = self._limit + 1 - self.received if self._chunked else self._left  # one byte over: 413
        buffer = mmap.mmap(-1, max(1, len(head) + more), flags=mmap.MAP_PRIVATE)
        view = memoryview(buffer)
        view[:len(head)] = head
        filled = len(head)
        while self._open_chunk():
            space = view[filled:filled + min(self._left, len(view) - filled)]
            count = self._receive(lambda: self._rfile.readinto1(space))
            self._took(space[:count])
            filled += count
        return view[:filled]

    def _open_chunk(self) -> bool:
        """Whether body bytes follow (the next chunk's size read, with chunked coding); False at the end."""
        if self.done:
            return False
        if self._chunked and self._left == 0:
            self._left = self._next_chunk_size()
            if self._left == 0:
                self._read_trailers()
                self.done = True
                return False
        return True

    def _took(self, data) -> None:
        """``data`` (bytes or a view) has been read from the body."""
        if not len(data):
            self._fail(400, "the body ends early (closed before its Content-Length or its last chunk)")
        self._left -= len(data)
        self.received += len(data)
        if self.digest is not None:
            self.digest.update(data)
        if self.received > self._limit:
            self._fail(413, f"body over --max-body ({self._limit} bytes)")
        if self.received - len(data) < REPLAY_LIMIT:
            self._kept.append(bytes(data[:REPLAY_LIMIT]))  # replay() gives nothing past it
        if self._left == 0:
            if self._chunked:
                if self._line() != b"":
                    self._fail(400, "malformed chunked body: a chunk is longer than its size says")
            else:
                self.done = True

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), left to be read again."""
        parts = []
        while sum(map(len, parts)) < size and (chunk := self.read(size - sum(map(len, parts)))):
            parts.append(chunk)
        head = b"".join(parts)
        self._pushed_back = head + self._pushed_back
        return head

    def replay(self) -> Optional[bytes]:
        """Everything received so far, when it was little enough to keep (else None); what was pushed back is
        part of it, so it is dropped here."""
        if self.received > REPLAY_LIMIT:
            return None
        self._pushed_back = b""
        return b"".join(self._kept)

    def _next_chunk_size(self) -> int:
        line = self._line()
        size = line.split(b";", 1)[0].strip()
        if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
            self._fail(400, f"malformed chunked body: bad chunk size line {line[:40]!r}")
        return int(size, 16)

    def _read_trailers(self) -> None:
        for _ in range(100):
            if self._line() == b"":
                return
        self._fail(400, "malformed chunked body: too many trailer lines")

    def _line(self) -> bytes:
        line = self._receive(lambda: self._rfile.readline(CHUNK_LINE_LIMIT + 1))
        if not line.endswith(b"\n"):
            if len(line) > CHUNK_LINE_LIMIT:
                self._fail(400, "malformed chunked body: a chunk line is too long")
            self._fail(400, "the body ends early (closed before its last chunk)")
        return line.rstrip(b"\r\n")

    def _receive(self, read: Callable[[], bytes]) -> bytes:
        """One read from the connection, given the time left and the idle timeout (both OSError when passed)."""
        if self._before_first_read is not None:
            self._before_first_read()
            self._before_first_read = None
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._fail(504, "request timed out (--timeout) while its body was arriving")
        self._set_timeout(min(left, self._idle_timeout))
        try:
            return read()
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                self._fail(504, "request timed out (--timeout) while its body was arriving")
            self._fail(408, f"the client sent nothing for {self._idle_timeout:g} s (--idle-timeout)")
        except OSError as error:
            self._fail(400, f"connection failed while reading the body: {error.strerror or error}")

    def _fail(self, status: int, message: str):
        self.failure = HttpError(status, message)
        raise self.failure
