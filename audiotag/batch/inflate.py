"""A compressed archive's member as a seekable file, without holding it: a tar.gz member, a deflated zip member.

Decoders seek: FFmpeg to an MP4's index at its end and back, libsndfile about a header, audiotag itself to an Ogg
file's last page. A member of a compressed archive can only be decompressed forward, so ``Window`` keeps
checkpoints: a copy of the decompressor's state every ``CHECKPOINT`` bytes of the member, taken as the reading
first passes there. A seek back resumes from the checkpoint before it and decompresses forward; a seek forward
decompresses up to it. What this holds: about 45 kB per checkpoint (32 per GB of member) and one chunk of
compressed input; a seek costs at most ``CHECKPOINT`` bytes of decompression beyond where it lands.

A stream whose decompressor cannot be copied (zstd's: ``restarts``) takes a checkpoint as a position, reached
again by decompressing from the archive's start, a cost that grows with the member's depth in the archive. So the
member's first ``HEAD_KEPT`` bytes are kept as they are read: all of an MP3 or M4A of minutes, whose decoder's
seeks to the end and back (an index, a tag) then cost nothing; only a seek back beyond them, in a longer member,
decompresses the archive again up to there.

``Inflater`` is the forward reader underneath: a gzip file (several gzip members one after another too, as bgzip
writes them) or raw deflate data (a zip member) from an offset of a file, read with pread in large chunks (each
decompress call hands Python's lock over: gzip's own reader calls it once per 8 kB).
"""

import bisect
import io
import os
import zlib

CHUNK = 1 << 18  # compressed bytes read per call
CHECKPOINT = 32 << 20
HEAD_KEPT = 32 << 20  # a restarting stream's member: its first bytes, where decoders seek back to
RECENT_KEPT = 1 << 20  # the bytes just before where the stream is: libsndfile's FLAC reader seeks back ~10 kB
# after every block it reads, and each such seek restored a checkpoint (up to CHECKPOINT bytes decompressed again)
GZIP, DEFLATE = 31, -15  # zlib's wbits: a gzip stream; raw deflate data (a zip member's)


class Inflater:
    """The decompressed bytes of a gzip file or of raw deflate data at ``offset`` of a file, read forward."""

    errors = (EOFError, zlib.error)  # what ``read`` raises where the data end or are damaged
    restarts = False  # its checkpoints are copies of the decompressor: a seek back costs at most CHECKPOINT

    def __init__(self, path: str, offset: int = 0, wbits: int = GZIP):
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._wbits, self._at = wbits, offset  # the next compressed byte to read
        self._decompressor = zlib.decompressobj(wbits)
        self._input = b""  # read and not yet decompressed
        self._fresh = True  # the decompressor has been given nothing: the file may end here (gzip)
        self.position = 0  # decompressed bytes handed out
        self.ended = False
        self._error = None  # what stopped the data, once the bytes before it were handed out

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer at the end only). EOFError where the data end inside the stream, zlib.error
        where they are damaged: raised once the bytes before it were handed out."""
        if self._error is not None:
            raise self._error
        pieces = []
        try:
            while size > 0 and not self.ended:
                if not self._input:
                    self._input = os.pread(self._fd, CHUNK, self._at)
                    self._at += len(self._input)
                    if not self._input:
                        if not self._fresh:
                            raise EOFError("the compressed data end before their end marker (truncated)")
                        self.ended = True
                        break
                data = self._decompressor.decompress(self._input, size)
                self._fresh = False
                self._input = self._decompressor.unconsumed_tail
                if self._decompressor.eof:
                    self._next_member()
                pieces.append(data)
                size -= len(data)
                self.position += len(data)
        except (EOFError, zlib.error) as error:
            if not pieces:
                raise
            self._error = error  # the next read raises it
        return b"".join(pieces)

    def _next_member(self) -> None:
        rest = self._decompressor.unused_data
        if self._wbits != GZIP:  # a zip member's data end here
            self.ended = True
            return
        self._decompressor = zlib.decompressobj(self._wbits)  # the next gzip member, if the file goes on
        self._input, self._fresh = rest.lstrip(b"\0"), True  # gzip pads with zeros: as Python's gzip reads it

    def checkpoint(self) -> tuple:
        """What ``restore`` needs to continue from here (the input not yet decompressed is read again)."""
        return self._decompressor.copy(), self._at - len(self._input), self._fresh, self.position, self.ended

    def restore(self, checkpoint: tuple) -> None:
        decompressor, self._at, self._fresh, self.position, self.ended = checkpoint
        self._decompressor, self._input, self._error = decompressor.copy(), b"", None  # the checkpoint stays
        # reusable

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PreadFile(io.RawIOBase):
    """A read-only, seekable file of ``_size`` bytes whose subclass reads with ``pread(size, offset)``."""

    _size = 0
    _position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.pread(len(buffer), self._position)
        memoryview(buffer).cast("B")[:len(data)] = data
        self._position += len(data)
        return len(data)

    def pread(self, size: int, offset: int) -> bytes:
        raise NotImplementedError

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position


class Window(PreadFile):
    """A read-only, seekable file over ``size`` bytes of an ``Inflater`` from its current position.

    Where the data cannot be decompressed (the archive ends inside the member, or is damaged there), the member
    ends for its reader: ``failure`` says why, and reads stop at that point (a read error raised inside a
    decoder's callback would be printed as a traceback and lose the audio before it)."""

    def __init__(self, inflater: Inflater, size: int, on_close=None):
        super().__init__()
        self._inflater, self._size, self._on_close = inflater, size, on_close
        self._start = inflater.position
        self._marks = [0]  # offsets in the member with a checkpoint, ascending
        self._checkpoints = [inflater.checkpoint()]
        self._position = 0
        self._readable = size  # up to the failure, once there is one
        self.failure = None
        self._recent = bytearray()  # the member's last bytes decompressed, up to here (at most RECENT_KEPT)
        self._head = bytearray()  # a restarting stream's member from its start, up to HEAD_KEPT, as it is read

    def pread(self, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer past the end, or the failure), without moving the file's position."""
        size = max(0, min(size, self._readable - offset))
        if not size:
            return b""
        if offset < len(self._head):  # kept: no restart
            first = bytes(self._head[offset:offset + size])
            return first + self.pread(size - len(first), offset + len(first)) if len(first) < size else first
        here = self._here()
        if here - len(self._recent) <= offset < here:  # just read: kept
            start = offset - (here - len(self._recent))
            first = bytes(self._recent[start:start + size])
            return first + self.pread(size - len(first), here) if len(first) < size else first
        index = bisect.bisect_right(self._marks, offset) - 1  # the last checkpoint at or before offset
        if offset < here or self._marks[index] > here or self._inflater.ended:  # back, or a checkpoint lies
            # between (or the stream failed): resume from it
            self._inflater.restore(self._checkpoints[index])
            self._recent.clear()
        self._advance(offset - self._here(), keep=False)
        if self._here() < offset:  # the data fail before it
            return b""
        return self._advance(size, keep=True)

    def _here(self) -> int:
        return self._inflater.position - self._start

    def _advance(self, size: int, keep: bool) -> bytes:
        """Decompress ``size`` bytes from here (kept, or dropped), with a checkpoint at each new mark passed;
        fewer where the data fail (``failure``)."""
        pieces = []
        while size > 0:
            mark = self._marks[-1] + CHECKPOINT  # always ahead: reading stops at a mark and takes it
            try:
                data = self._inflater.read(min(size, mark - self._here(), 4 * CHUNK))
                if not data:
                    raise EOFError
            except self._inflater.errors as error:
                self.failure = self.failure or ("the archive ends inside this member (truncated)"
                                                if isinstance(error, EOFError) else
                                                f"the archive is damaged inside this member ({error})")
                self._readable = min(self._readable, self._here())
                self._inflater.ended = True  # its state is unusable: the next read restores a checkpoint
                break
            if keep:
                pieces.append(data)
            if self._inflater.restarts and len(self._head) == self._here() - len(data) < HEAD_KEPT:
                self._head += data[:HEAD_KEPT - len(self._head)]
            self._recent += data
            del self._recent[:max(0, len(self._recent) - RECENT_KEPT)]
            size -= len(data)
            if self._here() == mark:
                self._marks.append(mark)
                self._checkpoints.append(self._inflater.checkpoint())
        return b"".join(pieces)

    def close(self) -> None:
        if not self.closed:
            self._checkpoints = []
            if self._on_close is not None and self.failure is None:  # a failed stream is not reused
                self._on_close(self._inflater)
            else:
                self._inflater.close()
        super().close()
