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

import functools
import io
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

from ..hashing import CHUNK
from .streams import TRUNCATED, ByBlock, Replay, failed_check, is_zstd, read_exactly, zstd_reader

WARC_SUFFIXES = (".warc", ".warc.gz", ".warc.zst")
TAGGED_TYPES = ("response", "resource")
RECORD_CUT = "the WARC ends inside this record (truncated)"
SNIFFED = 8192  # payload bytes read to tell audio and video from the rest, when the Content-Type does not
MEDIA_TYPES = ("audio/", "video/", "application/ogg")
PLAYLISTS = ("audio/x-mpegurl", "audio/mpegurl", "audio/x-scpls", "video/x-ms-asx")  # text: sniffed, so skipped
LINE_MAX = 1 << 20  # a WARC or HTTP header line, or a chunk's size line, longer than this is not one
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
    """A WARC that cannot be read on: not a WARC, a record's header damaged, or the file cut short (``at``: the
    offset of a record whose gzip data or header are damaged, where a .warc.gz may be read on past it)."""

    def __init__(self, message: str, at: Optional[int] = None):
        super().__init__(message)
        self.at = at


def records(binary, every: bool = False) -> Iterator[Record]:
    """The records of a WARC stream to tag (``every``: each response and resource record), in file order;
    ``binary`` is read from the WARC's start (plain, gzipped a record at a time or whole, or in zstd).

    A record's payload is read by the caller before it asks for the next, and a record cut short raises Damaged
    after it, unless the caller asked it (``ends_inside``). A skipped record cut short, a damaged header, or a
    stream that is not a WARC raise Damaged. In a .warc.gz of a gzip member per record, damaged gzip data end
    only their record: the records are read on from the next member that begins one, and Damaged, raised after
    the last, says where (a bad sector in a crawl of weeks loses one record, not those after it).
    """

    read_at = _reader_at(binary)  # a named file's bytes at an offset (None: a stream, read once)
    stream, unpacked = _opened(binary)
    start = read_exactly(stream, 512)
    per_record = unpacked is None and start[:2] == b"\x1f\x8b"
    stream = Replay(start, stream, keep_tail=True)
    first, damages = None, 0  # the first damage read past (its words, where the records went on), how many
    damaged_first = None  # its first member's gzip data damaged: read on from the next member that begins a record
    if not decompressed(start).startswith(b"WARC/"):  # not a WARC, or its first member damaged (a bad first
        damage = _damaged_gzip(start)  # sector): read on from the first gzip member that begins a record, if any
        if unpacked is not None or not start:
            raise Damaged("not a WARC file (it does not begin with a WARC record)" if start else "empty: no data")
        if damage is not None:
            damaged_first = Damaged(f"a damaged record at offset 0: its gzip data are damaged ({damage})", at=0)
            damaged_first.__cause__ = damage
        else:  # not gzip's bytes at all, or a first member whose header is longer than those looked at
            stream = _next_record_member(stream, -1)
            if stream is None:
                raise Damaged("not a WARC file (it does not begin with a WARC record)")
            if stream.base:
                first, damages = ("a damaged record at offset 0: its first bytes are not a WARC record's",
                                  stream.base), 1
        per_record = True
    while True:
        try:
            if damaged_first is not None:
                damage, damaged_first = damaged_first, None
                raise damage
            yield from _records_from(stream, every, unpacked)
            break
        except Damaged as error:
            resumed = None
            if per_record and error.at is not None:
                after = error.at
                if failed_check(error.__cause__):  # zlib inflated the member to its end: read on after it (a member
                    # of gzip stored in its payload, a crawled .warc.gz, is not one of this WARC's)
                    reader = read_at or (_kept_reader(stream) if stream.given else lambda at, size: start[at:at + size])
                    end = _member_end(reader, error.at)
                    after = error.at if end is None else end - 1
                resumed = _next_record_member(stream, after)
            if resumed is None:
                if first is not None:
                    raise Damaged(f"{_read_on(first, damages)}; then {error}") from error
                raise
            stream, damages = resumed, damages + 1
            first = first or (str(error), stream.base)
    if first is not None:
        raise Damaged(_read_on(first, damages))


def _reader_at(binary):
    """``read_at(offset, size)`` on a named file's bytes (os.pread: its position untouched), or None."""
    try:
        if isinstance(binary, io.BufferedReader) and binary.seekable() and binary.tell() == 0:
            descriptor = binary.fileno()
            return lambda offset, size: os.pread(descriptor, size, offset)
    except (OSError, ValueError):
        pass
    return None


def _kept_reader(stream: "Replay"):
    """``read_at`` on the bytes a stream read last (a piped WARC's, which cannot be read again)."""
    kept = stream.kept()
    start = stream.base + stream.given - len(kept)
    return lambda offset, size: kept[offset - start:offset - start + size] if offset >= start else b""


def _member_end(read_at, offset: int) -> Optional[int]:
    """Where the gzip member at ``offset`` ends, its deflate data inflated to their end (unchecked: a member whose
    CRC or length fails ends there all the same); None where they cannot be read."""
    header = _gzip_header_size(read_at(offset, GZIP_HEADER_MAX))
    if header is None:
        return None
    inflater, position = zlib.decompressobj(-zlib.MAX_WBITS), offset + header
    try:
        while data := read_at(position, CHUNK):
            pending = data
            while pending:
                inflater.decompress(pending, CHUNK)  # output bounded: a bomb is passed through, not held
                if inflater.eof:
                    return position + len(data) - len(inflater.unused_data) + 8  # its CRC-32 and length after
                pending = inflater.unconsumed_tail
            position += len(data)
    except zlib.error:
        pass
    return None


GZIP_HEADER_MAX = 70_000  # a gzip header's bytes: 10, an extra field of up to 64 kB, a name and a comment


def _gzip_header_size(head: bytes) -> Optional[int]:
    if len(head) < 10 or head[:3] != GZIP_MEMBER:
        return None
    flags, size = head[3], 10
    if flags & 4:  # FEXTRA
        size += 2 + int.from_bytes(head[10:12], "little")
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            end = head.find(b"\0", size)
            if end < 0:
                return None
            size = end + 1
    size += 2 if flags & 2 else 0  # FHCRC
    return size if size <= len(head) else None


def _read_on(first: tuple, count: int) -> str:
    """Words for the damage records were read on past: the first's, and how many more."""
    said = f"{first[0]} (the records after it were read on from offset {first[1]})"
    return said if count == 1 else f"{said}; {count} damaged places in all"


def _records_from(stream: "Replay", every: bool, unpacked) -> Iterator[Record]:
    """``records``' work, from where ``stream`` begins (``stream.base``: its offset in the file)."""
    iterator, base = _iterator(stream), stream.base  # read as a stream: offsets counted from its start
    following = iter(iterator)
    offset, cut_inside = base, False  # where the last record began; whether the WARC ends inside it
    while True:
        try:
            record = next(following, None)
        except Exception as error:  # warcio's parser fails on a damaged header in ways it does not type (a
            # header cut short: AttributeError): whatever it raises here is about the bytes at this offset
            if unpacked is not None and unpacked.failure is not None:
                raise _damaged_past(offset, unpacked.failure) from error
            if "non-chunked gzip" in str(error):  # warcio's words for a gzip member that goes on past its record
                raise Damaged(f"the gzip member at offset {offset} {MIXED_GZIP}") from error
            detail = f"its gzip data are damaged ({error})" if isinstance(error, zlib.error) else \
                "its header cannot be read"  # warcio's own words quote the bytes (hostile, or NULs)
            raise Damaged(f"a damaged record at offset {base + iterator.offset}: {detail}",
                          at=base + iterator.offset) from error
        if record is None:  # the end; bytes after the last whole record are one cut inside its header (warcio
            # ends there without a word)
            if stream.given > iterator.offset and _holds_data(stream.tail(stream.given - iterator.offset)):
                raise Damaged(f"it ends inside the record at offset {base + iterator.offset} (truncated)")
            if unpacked is not None and unpacked.unchecked is not None:  # which record holds the damage is not
                raise Damaged(f"its compressed data fail their check ({unpacked.unchecked}): the records before "
                              f"it may hold damaged bytes (tagged as they decoded), and any after it could not be "
                              f"read")  # known: each was tagged as it came (the words of a tar's: ``archives``)
            if unpacked is not None and unpacked.cut is not None and not cut_inside:  # cut between records, or
                raise Damaged(TRUNCATED)  # in the compressed data's end marker: no record says it
            return
        offset = base + iterator.offset  # where this record begins (known once the one before was read to its end)
        try:
            if record.rec_type in TAGGED_TYPES:
                payload = record.content_stream()
                head = read_exactly(payload, SNIFFED)
                if every or is_media(_content_type(record), head):
                    found = Record(offset, record.rec_headers.get_header("WARC-Target-URI") or "",
                                   record.rec_headers.get_header("WARC-Record-ID") or "", Replay(head, payload),
                                   in_stream=unpacked is not None, warcio_record=record)
                    yield found
                    cut_inside = found.truncated
                    if found.truncated:  # said by it (records may follow: a .warc.gz record's own gzip member
                        continue  # ended)
            cut = _read_to_end(record)
        except Exception as error:  # the compressed data are damaged inside the record (said by it, if tagged)
            if unpacked is not None and unpacked.failure is not None:
                raise _damaged_past(offset, unpacked.failure) from error
            if isinstance(error, zlib.error):
                raise Damaged(f"a damaged record at offset {offset}: its gzip data are damaged ({error})",
                              at=offset) from error
            raise
        if iterator.reader.failure is not None:  # met while its payload was read (the file read to its end then)
            raise Damaged(f"a damaged record at offset {offset}: its gzip data are damaged "
                          f"({iterator.reader.failure})", at=offset) from iterator.reader.failure
        if cut:
            raise Damaged(f"it ends inside the record at offset {offset} (truncated)")


GZIP_MEMBER = b"\x1f\x8b\x08"  # a gzip member's first bytes (deflate: the only method gzip has)
MEMBER_CHECKED = 4096  # a candidate member's bytes decompressed to see a WARC record begin
MEMBERS_TRIED = 100_000  # candidates that begin no record, past which a damaged WARC is not read on


def _next_record_member(stream: "Replay", after: int) -> Optional["Replay"]:
    """A stream at the first gzip member past offset ``after`` that begins a WARC record (``base``: its offset),
    read on from ``stream`` (the bytes it read last kept: warcio reads ahead); None if the stream ends first, or
    after MEMBERS_TRIED members that begin none."""
    buffer = bytearray(stream.kept())
    start, ended = stream.base + stream.given - len(buffer), False  # the offset of the buffer's first byte
    tried = 0
    while True:
        if start <= after:  # bytes up to the damaged member's first are passed by
            dropped = min(len(buffer), after + 1 - start)
            del buffer[:dropped]
            start += dropped
        index = buffer.find(GZIP_MEMBER)
        while index >= 0 and (ended or len(buffer) - index >= MEMBER_CHECKED):
            if _begins_record(buffer, index):
                found = stream.replayed_from(bytes(buffer[index:]))  # not nested in it: damage after damage
                found.base = start + index
                return found
            tried += 1
            if tried > MEMBERS_TRIED:  # a hostile stream of gzip magics: ~3 us each
                return None
            index = buffer.find(GZIP_MEMBER, index + 1)
        if ended:
            return None
        keep = index if index >= 0 else max(0, len(buffer) - len(GZIP_MEMBER) + 1)  # a magic the read cut in two
        del buffer[:keep]
        start += keep
        more = stream.read(CHUNK)
        buffer += more
        ended = not more


def _begins_record(buffer: bytearray, index: int) -> bool:
    """Whether the gzip member at ``index`` begins with a WARC record (a hostile stream of gzip magics: each
    looked at without a copy)."""
    with memoryview(buffer) as view:
        try:
            found = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(view[index:index + MEMBER_CHECKED], 8)
        except zlib.error:
            return False
    return found.startswith(b"WARC/")


MIXED_GZIP = "holds more than one record (gzipped whole, not a record at a time): read the WARC decompressed \
(zcat FILE | audiotag - --archive warc)"


def _opened(binary) -> tuple:
    """(the WARC's bytes as warcio is to read them, the ByBlock that decompresses them or None). A WARC in zstd,
    or gzipped whole, is decompressed here: its records' offsets count decompressed bytes. A .warc.gz of a gzip
    member per record is left to warcio: its offsets are the file's, where a worker enters it."""
    start = read_exactly(binary, 512)
    binary = Replay(start, binary)
    if is_zstd(start):
        unpacked = ByBlock(zstd_reader(binary), quiet=True)
    elif start[:2] == b"\x1f\x8b":
        whole, binary = _gzipped_whole(binary)
        if not whole:
            return binary, None
        import gzip

        unpacked = ByBlock(gzip.GzipFile(fileobj=binary, mode="rb"), quiet=True)
    else:
        return binary, None
    return unpacked, unpacked


def _damaged_past(offset: int, error: Exception) -> Damaged:
    """The compressed data of a WARC compressed whole are damaged (or end in bytes that are not of them), somewhere
    after where the record at ``offset`` began."""
    return Damaged(f"its compressed data are damaged past offset {offset} ({str(error).strip() or 'damaged'})")


def _gzipped_whole(binary) -> tuple:
    """(whether a gzipped WARC is gzipped whole, not a gzip member per record as WARC writers write it; the
    stream, what was read replayed). Told by its first gzip member: one that goes on past its first record's
    Content-Length, or ends inside it (BGZF's members of 64 kB), is not the record's own. Up to WHOLE_CHECKED
    bytes are looked at, decompressed or not; a first record longer is taken for one with a member of its own
    (if it is not, warcio says so at the next record: MIXED_GZIP)."""
    decompressor, read, found = zlib.decompressobj(zlib.MAX_WBITS | 16), [], bytearray()
    end, whole, taken = None, False, 0
    while not decompressor.eof and max(len(found), taken) <= WHOLE_CHECKED and (chunk := binary.read(CHUNK)):
        read.append(chunk)
        taken += len(chunk)
        try:
            found += decompressor.decompress(chunk, WHOLE_CHECKED + 1 - len(found))
            while decompressor.eof and not found:  # an empty member first (some writers begin a file so): the
                rest, decompressor = decompressor.unused_data, zlib.decompressobj(zlib.MAX_WBITS | 16)  # next one
                found += decompressor.decompress(rest, WHOLE_CHECKED + 1)  # is the first record's
        except zlib.error:  # damaged: taken for a member per record (the records read on past a damaged member;
            break  # gzipped whole, none is found, and the damage is said)
        if end is None and (header := found.find(b"\r\n\r\n")) >= 0:
            length = _CONTENT_LENGTH.search(found, 0, header + 2)
            if length is None:
                break
            end = header + 4 + int(length.group(1))
        if end is not None and found[end:].lstrip(b"\r\n"):
            whole = True
            break
    if decompressor.eof and (end is None or len(found) < end):  # the member ended inside the first record
        whole = True
    return whole, Replay(b"".join(read), binary)


def _iterator(binary):
    """warcio's iterator on a WARC, its reader raising where gzip data are damaged (``failure``): warcio's own wrote
    zlib's error on stderr once per block read (hundreds of lines) and read on as if the data ended there, so the
    record was said cut and those after it were lost without a word. (It replaces warcio 1.7's reader, whose
    ``_decompress`` it overrides: the tests of damaged .warc.gz files fail where that changes.)"""
    from warcio.archiveiterator import ArchiveIterator

    iterator = ArchiveIterator(binary)
    iterator.reader = _strict_reader()(iterator.fh, block_size=iterator.reader.block_size)
    iterator.INC_RECORD = ""  # warcio's stderr warning, four lines, for a record whose Content-Length is not where
    # its end is: audiotag's stderr holds one line per input that failed
    return iterator


@functools.lru_cache(maxsize=None)
def _strict_reader():
    from warcio.bufferedreaders import DecompressingBufferedReader

    class Strict(DecompressingBufferedReader):
        failure = None  # raised again on each read after: the data are not read on past damage

        def readline(self, length=None):
            """A line of at most LINE_MAX bytes: warcio reads a line whole, growing it by concatenation (60 MB of
            bytes without a line end after a record took 60 s and 420 MB)."""
            return super().readline(LINE_MAX if length is None or not 0 <= length <= LINE_MAX else length)

        def _decompress(self, data):
            if self.failure is not None:
                raise self.failure
            if self.decompressor and data and (self.num_block_read or data[:2] == b"\x1f\x8b"):  # gzip's data
                try:  # (warcio takes a first block that fails for plain data: a plain WARC's, or damaged gzip's)
                    return self.decompressor.decompress(data)
                except zlib.error as error:
                    self.failure = error
                    raise
            return super()._decompress(data)

    return Strict


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


def _damaged_gzip(head: bytes) -> Optional[zlib.error]:
    """zlib's error if a gzip stream's first bytes are damaged (those of the first record's member)."""
    if head[:2] != b"\x1f\x8b":
        return None
    try:
        zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(head, 1024)
    except zlib.error as error:
        return error
    return None


def decompressed(head: bytes, size: int = 1024) -> bytes:
    """A stream's first bytes, or the first ``size`` they decompress to when they begin a gzip stream (as far as
    they go; empty gzip members first, as some writers begin a .warc.gz, passed by)."""
    try:
        while head[:2] == b"\x1f\x8b":
            decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
            found = decompressor.decompress(head, size)
            if found or not decompressor.eof:
                return found
            head = decompressor.unused_data
    except zlib.error:
        return b""
    return head


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

    record = next(iter(_iterator(binary)), None)
    if record is None:
        raise EOFError(f"no WARC record at offset {offset}")
    return Replay(b"", record.content_stream())
