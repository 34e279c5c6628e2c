"""The files a member is read through, and the decompressing streams under them (``archives`` lists members;
this module opens their bytes). ``FileWindow``: a plain tar's or stored zip member's bytes where they lie;
``CompressedStreams``: streams on a .tar.gz, a .tar.zst or a WARC compressed whole kept open between members, entered in
archive order; ``ByBlock``: a compressed stream read forward, its cut said; ``Replay``: a stream whose first bytes
were read already;
``RestartingStream``: a reader whose decompressor cannot be copied (zstd's, bzip2's, LZMA's), for
``inflate.Window``, its checkpoints positions reached again from its start; ``Held``: a member's bytes in memory
cut short on stdin, as a window of its declared size.
"""

import collections
import io
import os
import re
import sys
import threading
import zipfile
import zlib
from typing import Optional

from ..hashing import CHUNK
from . import inflate

CUT_MEMBER = "the archive ends inside this member (truncated)"
TRUNCATED = "it is cut short (truncated)"  # an archive
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = re.compile(rb"[\x50-\x5f]\x2a\x4d\x18")  # a zstd frame of metadata, ahead of the data
DICTIONARY_FRAME, DICTIONARY_MAGIC = b"\x5d\x2a\x4d\x18", b"\x37\xa4\x30\xec"
DICTIONARY_MAX = 16 << 20  # a .warc.zst's dictionaries are of about 100 kB to a few MB


def is_zstd(head: bytes) -> bool:
    """A zstd stream's first bytes: a frame's magic, or a skippable frame's (metadata some writers put first)."""
    return head.startswith(ZSTD_MAGIC) or ZSTD_SKIPPABLE.match(head) is not None


def zstd_reader(binary):
    """A zstd stream's decompressed bytes (``binary``: a binary file object at its start), read forward. A
    dictionary kept in the stream's first frame (IIPC's .warc.zst: a skippable frame of magic 0x184D2A5D holding
    a zstd dictionary, itself maybe compressed) is the one its frames are decompressed with."""
    from backports import zstd  # Python 3.14's compression.zstd; here: only zstd inputs need it

    head = read_exactly(binary, 8)
    if head[:4] != DICTIONARY_FRAME or len(head) < 8:
        if binary.seekable():  # kept seekable (Replay is not): tarfile seeks past a .tar.zst's members
            binary.seek(-len(head), io.SEEK_CUR)
            return zstd.ZstdFile(binary)
        return zstd.ZstdFile(Replay(head, binary))
    size = int.from_bytes(head[4:], "little")
    if size > DICTIONARY_MAX:
        raise zstd.ZstdError(f"its dictionary frame is {size >> 20} MB, over {DICTIONARY_MAX >> 20} MB")
    content = read_exactly(binary, size)
    if is_zstd(content):  # compressed: bounded, as a hostile frame could be a bomb
        decompressor = zstd.ZstdDecompressor()
        content = decompressor.decompress(content, DICTIONARY_MAX + 1)
        if len(content) > DICTIONARY_MAX or not decompressor.eof:
            raise zstd.ZstdError(f"its dictionary is over {DICTIONARY_MAX >> 20} MB")
    dictionary = None  # not a dictionary (metadata): skipped, as zstd skips such frames
    if content.startswith(DICTIONARY_MAGIC):
        try:
            dictionary = zstd.ZstdDict(content)
        except (ValueError, zstd.ZstdError):  # too short, or an id of 0: no dictionary the frames could use
            pass
    return zstd.ZstdFile(binary, zstd_dict=dictionary)  # the frames after it (seekable or not: read forward)


def read_exactly(binary, size: int) -> bytes:
    """Up to ``size`` bytes: fewer only at the stream's end (``decode.pcm.read_exactly``, which loads numpy with
    the decoders: the watcher lists archives without them)."""
    pieces = []
    while size > 0 and (piece := binary.read(size)):
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)


def lzma_errors() -> tuple:
    """An LZMA zip member's damage (lzma is loaded only where zipfile meets such a member: not in the binary)."""
    lzma = sys.modules.get("lzma")
    return (lzma.LZMAError,) if lzma is not None else ()


def zstd_errors() -> tuple:
    from backports import zstd

    return (zstd.ZstdError,)


def failed_check(error: Exception) -> bool:
    """Whether a decompressor's error is its data failing the check at their end (gzip's CRC or length, in the
    gzip module's words or zlib's; zstd's checksum), not data it cannot decompress."""
    text = str(error).lower()
    if isinstance(error, zlib.error):
        return "incorrect data check" in text or "incorrect length check" in text
    return ("crc check failed" in text or "incorrect length" in text) if isinstance(error, OSError) else \
        isinstance(error, zstd_errors()) and "checksum" in text


class ByBlock(io.RawIOBase):
    """A zstd or gzip stream read a block at a time (read1). Where it is cut, one read gives the end of the data
    (``cut``: the EOFError) and the next ones the EOFError, or, ``quiet``, the end again: tarfile's stream drops
    the bytes it gathered when a read raises, so a member the archive is cut inside could not be tagged from what
    came; warcio takes an end for the end, and the WARC's reader says the cut. Damaged data raise, now and on
    each read after (``failure``)."""

    def __init__(self, file, quiet: bool = False):
        super().__init__()
        self._file, self._quiet, self._given = file, quiet, 0
        self.cut = self.failure = None
        self.unchecked = None  # ``quiet``: the data came whole, and failed the check at their end (gzip's CRC,
        # zstd's checksum): the bytes given before may be damaged anywhere, so they end there, and this says why

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.failure is not None:
            raise self.failure
        if self.cut is not None or self.unchecked is not None:
            if self._quiet:
                return 0
            raise self.cut
        try:
            data = self._file.read1(len(buffer))
        except EOFError as error:
            if not self._given:  # nothing came: an end here would read as an empty archive
                raise
            self.cut = error
            return 0
        except Exception as error:
            if self._quiet and failed_check(error):
                self.unchecked = error
                return 0
            self.failure = error
            raise
        self._given += len(data)
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


class Replay(io.RawIOBase):
    """A stream whose first bytes were read already (``head``): they are read again, then the rest."""

    def __init__(self, head: bytes, rest, keep_tail: bool = False):
        super().__init__()
        self._head, self._rest = memoryview(head), rest
        self.given = 0  # bytes read from it
        self.base = 0  # where its first byte lies in the file (a WARC read on past damage: warc.records)
        # ``keep_tail``: the last reads' bytes (a WARC's own stream, read by warcio 16 kB at a time: what follows
        # its last record). Not a payload's: a decoder reads one whole, and would hold it twice.
        self._last = collections.deque(maxlen=8 if keep_tail else 0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count], self._head = self._head[:count], self._head[count:]
            self._kept(bytes(view[:count]))
            return count
        data = self._rest.read(len(view))
        view[:len(data)] = data
        self._kept(data)
        return len(data)

    def _kept(self, data: bytes) -> None:
        self.given += len(data)
        if data:
            self._last.append(data)

    def tail(self, size: int) -> Optional[bytes]:
        """The last ``size`` bytes read, or None if more than the last reads held."""
        kept = self.kept()
        return kept[len(kept) - size:] if size <= len(kept) else None

    def replayed_from(self, data: bytes) -> "Replay":
        """A stream of ``data``, then what this one has not given yet: read from what is under it, not through it
        (a WARC read on past damage after damage would nest a Replay each time)."""
        return Replay(data + bytes(self._head), self._rest, keep_tail=self._last.maxlen > 0)

    def kept(self) -> bytes:
        """The bytes of the last reads (``keep_tail``), up to the last byte read."""
        return b"".join(self._last)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


class Held(inflate.PreadFile):
    """A member's first bytes held in memory (an archive on stdin cut inside it), as a file of the member's size
    whose reads stop at the cut, ``failure`` saying why: what the named archive's window gives its decoder."""

    def __init__(self, data: bytes, size: int, failure: str):
        super().__init__()
        self._data, self._size, self._cut = data, size, failure
        self.failure = None

    def pread(self, size: int, offset: int) -> bytes:
        size = max(0, min(size, self._size - offset))
        data = self._data[offset:offset + size]
        if len(data) < size:
            self.failure = self._cut
        return data


class CompressedStreams:
    """Decompressing streams on tar.gz archives (``inflate.Inflater``; zstd's: ``ZstdStream``; a WARC compressed
    whole, its records as members), kept open between members. A tar.gz can
    only be entered at its start; members are asked for in archive order, so each one continues a stream where
    an earlier member ended (a new stream from the start for each member made a shard of N members cost N/2 times
    its decompression). At most ``KEEP`` are kept: ``--jobs`` threads ask at once, a little out of order. A
    ``member`` is an ``archives.Member``: its archive, kind, offset and size."""

    KEEP = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list = []  # (archive's identity, stream) not in use, oldest first

    def read(self, member, consume) -> None:
        """Hand the member's bytes to ``consume`` chunk by chunk (EOFError where the archive ends first)."""
        key, stream = self.take(member)
        try:
            left = member.size
            while left and (chunk := stream.read(min(CHUNK, left))):
                consume(chunk)
                left -= len(chunk)
            if left:
                raise EOFError(CUT_MEMBER)
        except BaseException:
            stream.close()
            raise
        self.give_back(key, stream)

    def window(self, member) -> inflate.Window:
        """The member as a seekable file, decompressed as it is read; its stream comes back here when it closes."""
        key, stream = self.take(member)
        return inflate.Window(stream, member.size, on_close=lambda used: self.give_back(key, used))

    def take(self, member) -> tuple:
        """(the archive's identity, a stream at the member's start), to give back when done."""
        status = os.stat(member.archive)
        key = (member.archive, status.st_ino, status.st_mtime_ns)  # a shard replaced on disk is a new one
        with self._lock:
            behind = [(stream.position, index) for index, (known, stream) in enumerate(self._idle)
                      if known == key and stream.position <= member.offset]
            stream = self._idle.pop(max(behind)[1])[1] if behind else None
        if stream is None:
            stream = inflate.Inflater(member.archive) if _gzipped(member) else ZstdStream(member.archive)
        try:
            while stream.position < member.offset:  # forward: decompresses only the gap
                if not stream.read(min(member.offset - stream.position, 4 * inflate.CHUNK)):
                    raise EOFError("the archive ends before this member (truncated)")
        except BaseException:
            stream.close()
            raise
        return key, stream

    def give_back(self, key: tuple, stream: inflate.Inflater) -> None:
        with self._lock:
            self._idle.append((key, stream))
            while len(self._idle) > self.KEEP:
                self._idle.pop(0)[1].close()


def _gzipped(member) -> bool:
    """Whether a member's archive is gzip's (a .tar.gz; a WARC gzipped whole), not zstd's."""
    if member.kind != "warc":
        return member.kind == "tar.gz"
    with open(member.archive, "rb") as file:
        return file.read(2) == b"\x1f\x8b"


class RestartingStream:
    """Decompressed bytes read forward from a reader that cannot be copied (zstd's, bzip2's, LZMA's), as
    ``CompressedStreams`` reads an ``inflate.Inflater``; for ``inflate.Window``, a checkpoint is a position, restored by
    opening the reader again (``_open``) and decompressing forward to it."""

    restarts = True

    def __init__(self):
        self._file = self._open()
        self.ended = False  # a read failed: the next restore starts again
        self._error = None

    def _open(self):
        raise NotImplementedError

    @property
    def position(self) -> int:
        return self._file.tell()

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; read1: where the data end or are damaged, the bytes before come first (read()
        drops those it holds when it raises)."""
        if self._error is not None:
            raise self._error
        pieces = []
        try:
            while size > 0 and (data := self._file.read1(size)):
                pieces.append(data)
                size -= len(data)
        except self.errors as error:
            if not pieces:
                raise
            self._error = error  # the next read raises it
        return b"".join(pieces)

    def checkpoint(self) -> int:
        return self.position

    def restore(self, position: int) -> None:
        if self.ended or position < self.position:
            self._file.close()
            self._file, self.ended, self._error = self._open(), False, None
        while self.position < position and self.read(min(position - self.position, 4 * CHUNK)):
            pass

    def close(self) -> None:
        self._file.close()


class ZstdStream(RestartingStream):
    """A .tar.zst's decompressed bytes: a checkpoint is restored by decompressing from the archive's start, of the
    file opened first (a shard replaced on disk meanwhile is not read into this one's members)."""

    def __init__(self, path: str):
        self._raw, self.errors = open(path, "rb"), (EOFError,) + zstd_errors()  # noqa: SIM115 -- closed in close()
        super().__init__()

    def _open(self):
        self._raw.seek(0)
        return zstd_reader(self._raw)

    def close(self) -> None:
        self._file.close()
        self._raw.close()


class ZipStream(RestartingStream):
    """A bzip2 or LZMA zip member's bytes (``open_reader()``: zipfile's reader): a checkpoint is restored by
    decompressing the member again from its start."""

    def __init__(self, open_reader):
        self._open = open_reader
        super().__init__()
        self.errors = (EOFError, OSError, zipfile.BadZipFile) + lzma_errors()  # bz2: OSError; lzma: loaded now


class Closing(io.RawIOBase):
    """A stream read through; ``close()`` calls ``close``, which closes what is under it (a WARC record's
    payload: its file, or the decompressing stream it was read from, given back)."""

    def __init__(self, stream, close):
        super().__init__()
        self._stream, self._close = stream, close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._close()
        super().close()


class FileWindow(inflate.PreadFile):
    """A read-only, seekable file over ``size`` bytes at ``offset`` of a file, read with pread (no copy held)."""

    def __init__(self, path: str, offset: int, size: int):
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._offset, self._size, self._position = offset, size, 0
        self.failure = None  # the archive ends inside the member: reads stop there (as inflate.Window's)

    def pread(self, size: int, offset: int) -> bytes:
        size = max(0, min(size, self._size - offset))
        data = os.pread(self._fd, size, self._offset + offset) if size else b""
        if len(data) < size:
            self.failure = CUT_MEMBER
        return data

    def file_window(self) -> tuple:
        """(descriptor, offset, size) of what is left from the current position: FFmpeg reads it without Python,
        so that an archive ending inside the member is seen here, as ``pread`` would see it."""
        if os.fstat(self._fd).st_size < self._offset + self._size:
            self.failure = CUT_MEMBER
        return self._fd, self._offset + self._position, max(0, self._size - self._position)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
