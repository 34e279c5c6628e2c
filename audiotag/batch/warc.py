"""WARC records as inputs (read with warcio, imported only when a WARC is read).

A crawl's WARC holds each HTTP exchange as records; the ``response`` and ``resource`` records whose payload is
audio or video are tagged: by the Content-Type (the HTTP response's, or a resource record's own), or, for any
other type, by sniffing the payload's first bytes as a file's are (``decode.sniff.is_media``). Request, metadata,
warcinfo and revisit records, HTML and images are skipped without a word. The payload is what the server sent with
its HTTP chunked transfer encoding and its gzip/deflate/brotli content encoding undone (warcio's
``content_stream``): the bytes a browser would save. A ``.warc.gz`` is a series of gzip members, one per record,
so a record is entered at its offset in the file, as a plain ``.warc``'s. A WARC compressed whole (``gzip
crawl.warc``: one gzip stream, told by its first member going on past its first record; or zstd) can only be
entered at its start: its records' offsets are counted in its decompressed bytes (``Record.in_stream``).
"""

import collections
import io
import re
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

from ..hashing import CHUNK
from .streams import is_zstd, zstd_reader

WARC_SUFFIXES = (".warc", ".warc.gz", ".warc.zst")
TAGGED_TYPES = ("response", "resource")
RECORD_CUT = "the WARC ends inside this record (truncated)"
SNIFFED = 8192  # payload bytes read to tell audio and video from the rest, when the Content-Type does not
MEDIA_TYPES = ("audio/", "video/", "application/ogg")
PLAYLISTS = ("audio/x-mpegurl", "audio/mpegurl", "audio/x-scpls", "video/x-ms-asx")  # text: sniffed, so skipped
WHOLE_CHECKED = 16 << 20  # a .warc.gz's first record, decompressed, read to tell whether its gzip member ends there
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")


def read_errors() -> tuple:
    """What reading a damaged WARC raises (warcio's own errors, and those of the streams under it)."""
    from warcio.bufferedreaders import ChunkedDataException
    from warcio.exceptions import ArchiveLoadFailed
    from warcio.statusandheaders import StatusAndHeadersParserException

    return ArchiveLoadFailed, StatusAndHeadersParserException, ChunkedDataException, EOFError, zlib.error


@dataclass
class Record:
    """A record to tag: where it starts in the WARC, its URL and id, and its payload (first bytes replayed)."""

    offset: int
    url: str
    record_id: str
    payload: object
    truncated: bool = False  # the WARC ends inside it (known once it was read to its end)
    in_stream: bool = False  # ``offset`` counts the decompressed bytes of a WARC compressed whole, not the file's
    warcio_record: object = field(default=None, repr=False)

    def ends_inside(self) -> bool:
        """Whether the WARC ends inside this record, its payload read (what is left of it is read now): a record
        cut short is said by the record itself, not by the archive after it."""
        self.truncated = _read_to_end(self.warcio_record)
        return self.truncated


class Damaged(Exception):
    """A WARC that cannot be read on: not a WARC, a record's header damaged, or the file cut short."""


def records(binary, every: bool = False) -> Iterator[Record]:
    """The records of a WARC stream to tag (``every``: each response and resource record), in file order;
    ``binary`` is read from the WARC's start (plain, gzipped a record at a time or whole, or in zstd).

    A record's payload is read by the caller before it asks for the next, and a record cut short raises Damaged
    after it, unless the caller asked it (``ends_inside``). A skipped record cut short, a damaged header, or a
    stream that is not a WARC raise Damaged.
    """
    from warcio.archiveiterator import ArchiveIterator

    from ..decode.pcm import read_exactly  # here: a supervisor that lists no WARC loads no decoder (nor numpy)

    start = read_exactly(binary, 512)
    in_stream = is_zstd(start)
    if in_stream:
        binary = _Unpacked(zstd_reader(Replay(start, binary)))
        start = read_exactly(binary, 512)
    if not decompressed(start).startswith(b"WARC/"):
        raise Damaged("not a WARC file (it does not begin with a WARC record)" if start else "empty: no data")
    if start[:2] == b"\x1f\x8b":
        whole, binary = _gzipped_whole(Replay(start, binary))
        in_stream = in_stream or whole
        if whole:
            import gzip

            binary = _Unpacked(gzip.GzipFile(fileobj=binary, mode="rb"))
        start = read_exactly(binary, 512)
    stream = Replay(start, binary, keep_tail=True)
    iterator = ArchiveIterator(stream)  # read as a stream: offsets counted from the start
    records = iter(iterator)
    offset = 0  # where the last record began
    while True:
        try:
            record = next(records, None)
        except Exception as error:  # warcio's parser fails on a damaged header in ways it does not type (a
            # header cut short: AttributeError): whatever it raises here is about the bytes at this offset
            if "non-chunked gzip" in str(error):  # warcio's offset is of no use here
                raise Damaged(f"the gzip member at offset {offset} {MIXED_GZIP}") from error
            detail = f"its gzip data are damaged ({error})" if isinstance(error, zlib.error) else \
                "its header cannot be read"  # warcio's own words quote the bytes (hostile, or NULs)
            raise Damaged(f"a damaged record at offset {iterator.offset}: {detail}") from error
        if record is None:  # the end; bytes after the last whole record are one cut inside its header (warcio
            # ends there without a word)
            if stream.given > iterator.offset and _holds_data(stream.tail(stream.given - iterator.offset)):
                raise Damaged(f"it ends inside the record at offset {iterator.offset} (truncated)")
            return
        offset = iterator.offset  # where this record begins (known once the one before was read to its end)
        if record.rec_type in TAGGED_TYPES:
            payload = record.content_stream()
            head = read_exactly(payload, SNIFFED)
            if every or is_media(_content_type(record), head):
                found = Record(offset, record.rec_headers.get_header("WARC-Target-URI") or "",
                               record.rec_headers.get_header("WARC-Record-ID") or "", Replay(head, payload),
                               in_stream=in_stream, warcio_record=record)
                yield found
                if found.truncated:  # said by it (records may follow: a .warc.gz record's own gzip member ended)
                    continue
        if _read_to_end(record):
            raise Damaged(f"it ends inside the record at offset {offset} (truncated)")


MIXED_GZIP = "holds more than one record (gzipped whole, not a record at a time): read the WARC decompressed \
(zcat FILE | audiotag - --archive warc)"


def _gzipped_whole(binary) -> tuple:
    """(whether a gzipped WARC is one gzip stream, not a gzip member per record as WARC writers write it; the
    stream, what was read replayed). Told by its first member: one that goes on past its first record's
    Content-Length is the whole file's. A first record over WHOLE_CHECKED is taken for a member of its own (if
    it is not, warcio says so at the next record: MIXED_GZIP)."""
    decompressor, read, found = zlib.decompressobj(zlib.MAX_WBITS | 16), [], bytearray()
    end, whole = None, False
    while not decompressor.eof and len(found) <= WHOLE_CHECKED and (chunk := binary.read(CHUNK)):
        read.append(chunk)
        try:
            found += decompressor.decompress(chunk, WHOLE_CHECKED + 1 - len(found))
        except zlib.error:  # said by warcio, reading it as WARC writers write it
            break
        if end is None and (header := found.find(b"\r\n\r\n")) >= 0:
            length = _CONTENT_LENGTH.search(found, 0, header + 2)
            if length is None:
                break
            end = header + 4 + int(length.group(1))
        if end is not None and found[end:].lstrip(b"\r\n"):
            whole = True
            break
    return whole, Replay(b"".join(read), binary)


class _Unpacked(io.RawIOBase):
    """The bytes of a WARC compressed whole (gzip's or zstd's reader), read a block at a time; where the file is
    cut, they end, as a plain WARC's do there (the record it ends inside is said to be cut)."""

    def __init__(self, file):
        super().__init__()
        self._file, self._cut = file, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._cut:
            return 0
        try:
            data = self._file.read1(len(buffer))
        except EOFError:
            self._cut = True
            return 0
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)


def _holds_data(trailing: Optional[bytes]) -> bool:
    """Whether bytes after a WARC's last whole record are more than line ends or empty gzip members (some
    writers end a file so): the start of a record the file ends inside. None: more than was kept."""
    while trailing and trailing[:2] == b"\x1f\x8b":
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            if decompressor.decompress(trailing, 1024).strip() or not decompressor.eof:  # a member cut short too
                return True
        except zlib.error:
            return True
        trailing = decompressor.unused_data
    return trailing is None or bool(trailing.strip())


def decompressed(head: bytes, size: int = 1024) -> bytes:
    """A stream's first bytes, or the first ``size`` they decompress to when they begin a gzip stream (as far as
    they go)."""
    if head[:2] != b"\x1f\x8b":
        return head
    try:
        return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(head, size)
    except zlib.error:
        return b""


def _read_to_end(record) -> bool:
    """Read what is left of a record; whether the file ended before its Content-Length did."""
    while record.raw_stream.read(CHUNK):
        pass
    limit = getattr(record.raw_stream, "limit", None)
    if limit is None:  # no Content-Length read: a header the file ends inside, or (no header at all) line ends or
        # empty gzip members after the last record, as some writers end a file
        return bool(record.rec_headers.protocol or record.rec_headers.headers)
    return limit > 0


def _content_type(record) -> str:
    headers = record.http_headers if record.rec_type == "response" and record.http_headers else record.rec_headers
    return (headers.get_header("Content-Type") or "").split(";")[0].strip().lower()


def is_media(content_type: str, head: bytes) -> bool:
    """Whether a payload is tagged: an audio or video Content-Type (not a playlist), else its first bytes."""
    if content_type.startswith(MEDIA_TYPES) and content_type not in PLAYLISTS:
        return True
    from ..decode import sniff

    return sniff.is_media(head)


def open_payload(path: str, offset: int):
    """(the payload stream of the record at ``offset`` of a WARC file, the file to close after it)."""
    file = open(path, "rb")  # noqa: SIM115 -- the caller closes it
    try:
        file.seek(offset)
        return payload_here(file, offset), file
    except BaseException:
        file.close()
        raise


def payload_here(binary, offset: int) -> "Replay":
    """The payload stream of the record ``binary`` begins with (``offset``: its name, for the error)."""
    from warcio.archiveiterator import ArchiveIterator

    record = next(iter(ArchiveIterator(binary)), None)
    if record is None:
        raise EOFError(f"no WARC record at offset {offset}")
    return Replay(b"", record.content_stream())


class Replay(io.RawIOBase):
    """A stream whose first bytes were read already (``head``): they are read again, then the rest."""

    def __init__(self, head: bytes, rest, keep_tail: bool = False):
        super().__init__()
        self._head, self._rest = memoryview(head), rest
        self.given = 0  # bytes read from it
        # ``keep_tail``: the last reads' bytes (a WARC's own stream, read by warcio 16 kB at a time: what follows
        # its last record). Not a payload's: a decoder reads one whole, and would hold it twice.
        self._last = collections.deque(maxlen=4 if keep_tail else 0)

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
        kept = b"".join(self._last)
        return kept[len(kept) - size:] if size <= len(kept) else None

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)
