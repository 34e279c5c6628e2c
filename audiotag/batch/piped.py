"""Archives on stdin: ``cat shard.tar | audiotag - --archive tar`` (tar, tar.gz, tar.zst, WARC, WARC.gz, zip), or
told by their first bytes without --archive (``sniff``: "ustar" at offset 257, "WARC/" at 0, a zip's "PK\\3\\4",
and the same inside gzip or zstd).

A stream is read once, in order, and nothing of it is written to disk. In a watched run (the default) each member is
read whole and carried, bytes and all, to a watched worker (``carried``), as a small tar.gz member is: a member that
crashes the decoder fails alone, and --hash/--dedup know its hash before it is tagged (a copy is not decoded). What
that holds at once: the members read and not yet tagged, up to ``CARRIED_BUDGET`` bytes (reading stdin on waits
meanwhile; one larger member, up to the stdin limit, is read alone). With --in-process a tar's or WARC's member goes
to the decoder as it arrives (``Piped``), read as stdin is (``decode.open_stdin``): a WAV, and the containers FFmpeg
reads as a stream, are streamed; what is held whole on stdin (FLAC, Ogg, MP3; an MP4 or CAF, whose index may come
last) is held whole here too, up to the stdin limit. The archive is read on to the next member only once the decoder
is done with this one: ``batch.pipeline`` tags a piped member before it takes the next input. A zip keeps its index
at its end: it is read whole into memory (up to the stdin limit), its members from there. A WARC cut short on stdin: the
record it ends inside is one error, "the WARC ends inside this record (truncated)", as the named file's is; with
--in-process it is tagged as far as it goes (it cannot be known cut before it was read) and says so.

Names: ``-/MEMBER`` (tar, zip) and ``-#OFFSET`` (WARC), with "archive": "-" and the fields of the same archive
named as a path. Streamed (--in-process), a member is hashed as it is read; ``--dedup`` cannot spare it its decoding
(its hash is known only once it was read), but a copy's record is its first copy's, with "duplicate_of".
"""

import collections
import io
import tarfile
import threading
import zipfile
from typing import Iterator, Optional

from ..decode import STDIN_MEMORY_LIMIT, Stream, open_stdin
from ..errors import AudioError, failure_message
from ..hashing import CHUNK, sha256
from . import warc
from .archives import (BAD_LOCAL_HEADER, CUT_MEMBER, GZIP_MAGIC, TRUNCATED, CheckedTarInfo, Member, Refused,
                       cut_short, damage, is_zstd, reporting_failure, said_through, sparse_problem, webdataset_key,
                       zip_member_problem)
from .streams import DICTIONARY_FRAME, DICTIONARY_MAX, ByBlock, Replay, read_exactly, zstd_errors, zstd_reader
from .zipcheck import CrcCheckedReader, without_crc_check

KINDS = ("tar", "warc", "zip")
CARRIED_BUDGET = 256 << 20  # bytes of stdin's members carried to watched workers at once (a larger one alone)
HEAD = 512  # a tar header's length: its "ustar" magic is at offset 257
ZSTD_HEAD = 256 << 10  # a zstd stream's first bytes read to tell what it holds: its first block, whole (<= 128 kB)
EMPTY_TAR_MAX = 10240  # an empty tar: two blocks of zeros, padded to a record (GNU tar's: 20 blocks)


def sniff(binary, kind: Optional[str] = None) -> tuple:
    """(the kind of archive stdin holds, or None for audio; the stream to read stdin from, its first bytes
    replayed). ``kind`` (--archive) is taken as given."""
    asked = HEAD
    try:
        head = read_exactly(binary, HEAD)
        if is_zstd(head) and kind is None:  # a zstd block gives nothing until it is whole
            asked = ZSTD_HEAD + _dictionary_size(head)
            head += read_exactly(binary, asked - HEAD)
        elif head == bytes(HEAD) and kind is None:  # a tar's end blocks: an empty tar, if only zeros follow
            asked = EMPTY_TAR_MAX + 1
            head += read_exactly(binary, asked - HEAD)
    except OSError:  # said when stdin is read as the input
        head = b""
    return kind or kind_of(head, ended=len(head) < asked), Replay(head, binary)


def kind_of(head: bytes, ended: bool = False) -> Optional[str]:
    """"tar", "warc", "zip" or None, from a stream's first bytes (gzip, zstd: their decompressed first bytes);
    ``ended``: the stream ends with them."""
    if ended and _only_zero_blocks(head):
        return "tar"  # an empty tar (it was "not audio" on stdin, and an error in audiotag-ray's rows)
    if is_zstd(head):
        if ended and _only_zero_blocks(_zstd_decompressed(head, EMPTY_TAR_MAX + 1)):
            return "tar"
        head = _zstd_decompressed(head)
        if not head:  # zstd refused it, or its first bytes lie beyond the head (skippable frames): only a tar is
            # read inside zstd, where what is wrong is said in words
            return "tar"
    else:
        if ended and head[:2] == GZIP_MAGIC and _only_zero_blocks(warc.decompressed(head, EMPTY_TAR_MAX + 1)):
            return "tar"
        head = warc.decompressed(head)
    if head.startswith(b"WARC/"):
        return "warc"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a member's header; an empty zip's end record
        return "zip"
    return None


def _only_zero_blocks(data: bytes) -> bool:
    """Whether ``data`` (a whole stream) is an empty tar: only its end blocks of zeros, padded to a record."""
    return 2 * HEAD <= len(data) <= EMPTY_TAR_MAX and len(data) % HEAD == 0 and not data.strip(b"\0")


def _dictionary_size(head: bytes) -> int:
    """The bytes of the dictionary frame a zstd stream begins with (a .warc.zst's), up to DICTIONARY_MAX; else 0."""
    if not head.startswith(DICTIONARY_FRAME):
        return 0
    return min(int.from_bytes(head[4:8], "little"), DICTIONARY_MAX) + 8


def _zstd_decompressed(head: bytes, size: int = HEAD) -> bytes:
    """The first ``size`` bytes inside a zstd stream (frame after frame: skippable ones give none; its dictionary
    applied), as far as ``head`` goes; b"" if it holds none of them, or zstd refuses the stream (damaged, or a
    window too large)."""
    found = b""
    try:
        reader = zstd_reader(io.BytesIO(head))
        while len(found) < size and (piece := reader.read1(size - len(found))):
            found += piece
    except (EOFError,) + zstd_errors():  # the head ends inside a frame: what came before it
        pass
    return found


def members(binary, kind: str, wanted, every: bool = False) -> Iterator[tuple]:
    """(input name, Piped, None) for each member to tag, in stream order (``wanted(name)`` chooses a tar's or
    zip's, as in a file; a WARC's: its audio and video records, ``every``: all response and resource records);
    an archive that cannot be read on, or holds nothing to tag, ends with ("-", Refused, error message)."""
    def open_reader():
        stream = binary if kind == "zip" and _seekable(binary) else _undone(binary, kind)
        return _warc(stream, every) if kind == "warc" else _zip(stream, wanted) if kind == "zip" else \
            _tar(stream, wanted)

    return said_through("-", open_reader, kind == "warc", every)


def _warc(binary, every: bool) -> Iterator[tuple]:
    for found in warc.records(binary, every):
        piped = Piped(found.payload, {"archive": "-", "url": found.url, "warc_record_id": found.record_id},
                      warc_record=found)
        yield f"-#{found.offset}", piped, None
        try:
            piped.finish()
        except OSError:  # its data are damaged: said by its record; the WARC's reader raises again at its next
            pass  # read (warc._iterator's reader, ByBlock: each keeps its failure), saying where


def _undone(binary, kind: str):
    """The stream, decompressed if it is a tar or zip in zstd, or a tar in gzip (Python 3.11's tarfile reads gzip,
    bzip2 and xz itself, not zstd, and its stream mode never checks gzip's CRC: damage was tagged without a word;
    a WARC's reader undoes gzip and zstd itself)."""
    head = read_exactly(binary, 4)
    binary = Replay(head, binary)
    if is_zstd(head) and kind != "warc":  # a WARC's reader undoes zstd itself, as it does the named file's
        return ByBlock(zstd_reader(binary))
    if kind == "tar" and head.startswith(b"\x1f\x8b"):
        import gzip

        return ByBlock(gzip.GzipFile(fileobj=binary, mode="rb"))
    return binary


def _tar(binary, wanted) -> Iterator[tuple]:
    with tarfile.open(fileobj=binary, mode="r|*", tarinfo=CheckedTarInfo) as tar:  # a stream, plain or compressed
        while (info := tar.next()) is not None:
            tar.members = []  # tarfile keeps every header it read
            if not info.isreg() or not wanted(info.name):
                continue
            if info.issparse() and sparse_problem(info):  # its holes are not put back: the next header is read
                yield f"-/{info.name}", Refused({"archive": "-", "member": info.name,
                                                 "key": webdataset_key(info.name)}), sparse_problem(info)
                continue
            reader = tar.extractfile(info) if info.issparse() else _TarMember(tar.fileobj, info)  # tarfile puts
            # a sparse member's holes back
            piped = Piped(reader, {"archive": "-", "member": info.name, "key": webdataset_key(info.name)}, info.size)
            yield f"-/{info.name}", piped, None
            piped.finish()
    while isinstance(binary, ByBlock) and binary.read(CHUNK):  # gzip and zstd check their data at their end,
        pass  # past the tar's (a plain tar's stream is left where the tar ends, as before)
    if isinstance(binary, ByBlock) and binary.cut is not None:  # cut in their end marker: as the named file says
        raise binary.cut


class _TarMember(io.RawIOBase):
    """A member of a tar stream: its bytes as they come (tarfile's own reader drops those of a read the archive
    ends inside, and a cut member could not be tagged from what came, as a file's is). EOFError where it is cut."""

    def __init__(self, stream, info: tarfile.TarInfo):
        super().__init__()
        stream.seek(info.offset_data)  # forward only: tarfile's stream reads up to there
        self._stream, self._left = stream, info.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._left:
            return 0
        data = self._stream.read(min(len(buffer), self._left))
        if not data:
            raise EOFError("unexpected end of data")
        self._left -= len(data)
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)


def _zip(binary, wanted) -> Iterator[tuple]:
    """A zip's members: from ``binary`` itself where it can seek (a file a Ray actor reads, whose index at its end
    is then read in place), else from its bytes read whole."""
    if not _seekable(binary):
        data = read_exactly(binary, STDIN_MEMORY_LIMIT + 1)
        if len(data) > STDIN_MEMORY_LIMIT:
            raise OSError(f"a zip on stdin is read whole (its index is at its end), and this one is over "
                          f"{STDIN_MEMORY_LIMIT >> 20} MB: save it to a file and give its path")
        binary = io.BytesIO(data)
    with zipfile.ZipFile(binary) as archive:
        for info in archive.infolist():
            if info.filename and (info.is_dir() or not wanted(info.filename)):
                continue
            fields = {"archive": "-", "member": info.filename}
            if (problem := zip_member_problem(info)) is not None:
                yield f"-/{info.filename}", Refused(fields), problem
                continue
            try:
                opened = without_crc_check(archive.open(info))  # its CRC checked as a named zip's members' is: a
                # warning, not an error
            except (zipfile.BadZipFile, ValueError, OverflowError):  # its index points to no header of this member
                # (or one whose name does not decode, or an offset past 2**63): the others have their own
                yield f"-/{info.filename}", Refused(fields), BAD_LOCAL_HEADER
                continue
            with opened as member:
                piped = Piped(CrcCheckedReader(member, info.CRC), fields)
                yield f"-/{info.filename}", piped, None
                try:
                    piped.finish()
                except OSError:  # this member is damaged (its record says so); the next one has its own offset
                    pass


def _seekable(binary) -> bool:
    return getattr(binary, "seekable", lambda: False)()


class Budget:
    """Bytes held at once by members carried from stdin to the watched workers (``carried``): reading stdin on
    waits while the members read and not yet recorded hold ``limit`` bytes (one larger member is read alone).
    The writer gives a member's bytes back by its input's name once its record is written (or it is skipped):
    explicitly, not when the member is collected, since the pipeline's threads may hold the last inputs they
    handled while they wait for the next one."""

    def __init__(self, limit: int = CARRIED_BUDGET):
        self._limit, self._used = limit, 0
        self._held = {}  # input name -> bytes of each member of that name not yet given back, in input order
        self._changed = threading.Condition()

    def take(self, name: str, size: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: not self._used or self._used + size <= self._limit)
            self._used += size
            self._held.setdefault(name, collections.deque()).append(size)  # a tar may hold a name twice

    def give_back(self, name: str) -> None:
        """The bytes of the first member of this name still held (records are written in input order)."""
        with self._changed:
            sizes = self._held.get(name)
            if sizes:
                self._used -= sizes.popleft()
                if not sizes:
                    del self._held[name]
                self._changed.notify_all()


def carried(name: str, piped: "Piped", budget: Budget) -> tuple:
    """(a member holding its bytes, None), or (Refused, why not): a member of an archive on stdin read whole, so
    that it can go to a watched worker (a crash then fails it alone) and be hashed before it is tagged. Its bytes
    count against ``budget`` until its record is written (``Budget.give_back(name)``)."""
    data, error = _read_up_to(piped._reader, STDIN_MEMORY_LIMIT + 1)
    cut = piped._reader.failure  # the archive ends inside it: what came is tagged, as a file's cut member is
    if error is not None:  # the archive is damaged inside it: said by its reader
        problem = damage(error)
        if problem is None:
            raise error
        return Refused(piped.fields), problem
    if cut and (not data or piped.warc_record is not None):  # nothing came (zstd drops what its last read held),
        # or a WARC record (its size is not known): one error, the file's words
        return Refused(piped.fields), warc.RECORD_CUT if piped.warc_record is not None else CUT_MEMBER
    if len(data) > STDIN_MEMORY_LIMIT:
        return Refused(piped.fields), (f"a member of an archive on stdin is held in memory to be tagged in a "
                                       f"watched worker, and this one is over {STDIN_MEMORY_LIMIT >> 20} MB: "
                                       f"--in-process decodes it as it arrives")
    budget.take(name, len(data))
    fields = piped.fields
    size = piped.size if cut and piped.size else len(data)  # a cut member: the size its file has
    member = Member("-", fields.get("member", ""), "warc" if "url" in fields else "tar", 0, size, False,
                    fields.get("key"), fields.get("url"), fields.get("warc_record_id"), data=data, cut=cut,
                    damaged=piped._reader.damage())
    return member, None


def _read_up_to(reader, limit: int) -> tuple:
    """(up to ``limit`` bytes, the error that stopped the reading or None), read a chunk at a time (a
    RawIOBase's read(limit) allocates ``limit`` first)."""
    pieces, size = [], 0
    try:
        while size < limit and (piece := reader.read(min(CHUNK << 4, limit - size))):
            pieces.append(piece)
            size += len(piece)
    except Exception as error:
        return b"".join(pieces), error
    return b"".join(pieces), None


class Piped:
    """A member of an archive on stdin: read once, as it arrives. ``open()`` gives the decoder its bytes;
    ``finish()`` (the archive's reader, before it reads on) reads what the decoder left; ``hexdigest()`` is the
    sha256 of all of them."""

    streamed = True  # tagged before the next input is taken (batch.pipeline)

    def __init__(self, reader, fields: dict, size: Optional[int] = None, warc_record: Optional[warc.Record] = None):
        self.fields = fields
        self.size = size  # a tar member's, as its header says
        self.warc_record = warc_record  # a WARC record's: whether the WARC ends inside it, once its payload ended
        self._reader = _Hashing(reader, self._warc_record_end if warc_record is not None else None)
        self._lock = threading.Lock()
        self._done = False
        self._error: Optional[str] = None
        self._cause: Optional[Exception] = None

    def open(self) -> Stream:
        """The decoder on the member's bytes; an archive cut inside it: what came is tagged, as the file's is."""
        try:
            return reporting_failure(open_stdin(self._reader), self._reader)
        except AudioError as error:
            if self._reader.failure is not None:
                raise AudioError(self._reader.failure) from error
            raise

    def _warc_record_end(self) -> Optional[str]:
        return warc.RECORD_CUT if self.warc_record.ends_inside() else None

    def read(self):
        """The member decoded whole (``decode.Audio``: audiotag-ray's way). A WARC record the WARC ends inside is
        an error, as the CLI's record of it is (its payload's end is known once it was read)."""
        clip = self.open().read()
        if self.warc_record is not None and self.warc_record.ends_inside():
            raise AudioError(warc.RECORD_CUT)
        return clip

    def finish(self) -> None:
        with self._lock:
            self._read_rest()
        if self._error is not None:
            raise OSError(self._error) from self._cause

    def hexdigest(self) -> str:
        """The member's sha256 (OSError when it could not be read to its end)."""
        with self._lock:
            self._read_rest()
        problem = self._reader.failure or self._error or self._reader.damage()
        if problem is not None:
            raise OSError(problem)
        return self._reader.digest.hexdigest()

    def _read_rest(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            while self._reader.read(CHUNK):
                pass
        except Exception as error:  # the archive's own errors (tarfile, zlib, warcio): said by the archive's reader
            self._error = failure_message(error)  # _Hashing: OSErrors
            self._cause = error.__cause__ or error  # the archive's reader's own: what the archive's record says
        else:
            self._reader.damage()  # known now, while the member's reader is open
        if self._reader.failure == CUT_MEMBER:  # cut inside this member: the archive's reader says so after it
            self._error = TRUNCATED  # (a WARC record cut short: the WARC's records go on, .warc.gz members may)


class _Hashing(io.RawIOBase):
    """A member's bytes as a binary stream, hashed as they are read. Where the archive is cut inside it, the
    stream ends there (``failure`` says so: its decoder tags what came, as the named file's window ends at the
    cut); where it is damaged, the read fails."""

    def __init__(self, reader, at_end=None):
        super().__init__()
        self._member, self.digest = reader, sha256()
        self._at_end = at_end  # asked once where the bytes end: why they end early, or None
        self._damaged: Optional[str] = None  # the first read that failed: the stream is not read again after it
        self._damage_cause: Optional[Exception] = None
        self._known_damage = _UNKNOWN  # ``damage()``, once known
        self.failure: Optional[str] = None  # why the member's bytes end early (the archive is cut inside it)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._damaged is not None:
            raise OSError(self._damaged) from self._damage_cause
        if self.failure is not None:
            return 0
        try:
            data = self._member.read(len(buffer))
        except Exception as error:  # the archive is damaged here: said in its reader's words, as a read error
            problem = damage(error)
            if problem is None:
                raise
            if cut_short(error):
                self.failure = CUT_MEMBER
                return 0
            self._damaged, self._damage_cause = f"the archive is damaged: {problem}", error
            raise OSError(self._damaged) from error
        if not data and self._at_end is not None:
            self.failure, self._at_end = self._at_end(), None
        memoryview(buffer).cast("B")[:len(data)] = data
        self.digest.update(data)
        return len(data)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def damage(self, whole: bool = True) -> Optional[str]:  # noqa: ARG002 -- read on all the same
        """Once the decoder is done: the rest of the member read (and hashed: the stream is read past it anyway,
        where its decoder stopped early too), and why its bytes are not the ones archived (a zip member failing its
        CRC-32, a WARC record cut short), or None. Known once read to the end, and kept: the archive's reader
        closes the member after."""
        if self._known_damage is not _UNKNOWN:
            return self._known_damage
        try:
            while self.read(CHUNK):
                pass
        except OSError:  # damaged there: said by Piped.finish
            return None
        self._known_damage = None
        if self.failure == warc.RECORD_CUT:  # the WARC ends inside the record after where its decoder stopped
            # (--in-process: tagged as far as it goes, and said, as a record its decoder meets the cut in is)
            self._known_damage = self.failure
        elif self.failure is None:
            self._known_damage = getattr(self._member, "damage", lambda: None)()
        return self._known_damage


_UNKNOWN = object()  # not known yet
