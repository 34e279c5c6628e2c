"""Archives as inputs: tar files (plain, gzip- or zstd-compressed; WebDataset shards are tar files), zip files and
WARC files (plain, .warc.gz or .warc.zst: ``warc``), read where they lie: a member is never written to disk.

A member is tagged as a file is. Its input's name is ``ARCHIVE/MEMBER`` (``shards/000001.tar/000123.flac``): unique
in a run, and what ``--resume`` matches; its record adds "archive", "member" and, for a tar member, "key" (the
WebDataset ``__key__``: the member's path up to the first dot of its file name, ``000123`` for ``000123.flac``).
Which members are audio is decided by extension, as a directory walk decides (``--all-files``: every member), so a
WebDataset's JSON sidecars are skipped without being read.

A member carries where its bytes lie (``Member``), so whichever process tags it, a watched worker after a crash
too, opens the archive again at that member: a plain tar's member or a stored zip member is read in place (a
seekable window on the archive, streamed to the decoder as a file is). A deflated zip member of up to CARRIED_MAX
is decompressed whole into memory in one call; a larger one, and a tar.gz member too large to carry (below), is
decompressed as its decoder reads it: a seekable file all the same
(``inflate.Window``: a seek back resumes from a checkpoint), so its record is its file's and memory stays
bounded, whatever its size. A tar.gz can only be read from its start, and listing it decompresses it all: so a
member of up to ``CARRIED_MAX`` is kept as the listing passes it and travels with its input (``Member.data``) to
the worker, which decodes it without decompressing anything (one pass over the archive in all, not one in the
listing and one more in each worker); a larger member is found again by decompressing up to its offset, from
where a stream on the archive kept open for an earlier member ended. A .tar.zst is read the same way, except that
zstd's decompressor cannot be copied: a checkpoint is a position, reached again from the archive's start
(``inflate.Window`` keeps a member's first 32 MB as read, and the last MB: most seeks back land there; a
member is never held whole beyond that).

Where the archive ends inside a member, or its compressed data are damaged there, the member's decoder meets the
end of its data at that point: the audio before it is tagged, with a warning that says why. A zip member whose
bytes fail its CRC-32 is tagged as they decode, with a warning (``zipcheck``).

A WARC record's input is named ``ARCHIVE#OFFSET`` (``crawl.warc.gz#48213``): OFFSET is where the record starts in
the file (in a .warc.gz, where its gzip member starts; in a WARC compressed whole, gzip's one stream or zstd's,
where it starts in the decompressed bytes), so the name is unique and stable, and it is what ``--resume`` matches
(a URL is not: a crawl may fetch one twice). Its record adds "archive", "url" (the WARC-Target-URI) and
"warc_record_id" (the WARC-Record-ID). A worker enters the WARC at that offset (one compressed whole: a record of
up to CARRIED_MAX travels from the listing, a larger one is reached as a tar.gz's member is); the payload
goes to the decoder as stdin does (``decode.open_stdin``: a WAV and the containers FFmpeg reads as a stream are
streamed; FLAC, Ogg, MP3, MP4 and CAF are held whole, up to the stdin limit). A WARC that ends inside a record
(a crawl cut short): the records before are tagged, that record is one error, "the WARC ends inside this record
(truncated)"; a WARC damaged elsewhere ends with one error naming the offset (a record its compressed data are
damaged inside is that record's error first). Listing a WARC's records reads it once (a .warc.gz is decompressed
once, in the process that walks the inputs); a worker then reads only its records.
"""

import importlib.util
import io
import os
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

from ..errors import AudioError, failure_message
from ..hashing import CHUNK, sha256
from . import inflate, streams, warc
from .zipcheck import CrcChecked, CrcCheckedInPlace, CrcCheckedReader, Damaged, without_crc_check
from .streams import CUT_MEMBER, TRUNCATED, is_zstd, lzma_errors, read_exactly, zstd_errors, zstd_reader

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".zip") + warc.WARC_SUFFIXES
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_WINDOW_MAX = 128  # MB: libzstd's default refusal (a hostile frame could ask for 2 GB); the zstd tool's too
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.[^/]*$")  # WebDataset's key: the path up to the file name's first dot
_ZIP_LOCAL_HEADER = struct.Struct("<4s2xH18xHH")  # signature, flags, ... name and extra field lengths (30 bytes)
# A tar.gz member up to this size is carried, bytes and all, from the listing to the worker (most crawled clips
# are smaller). What that holds at once, at most, per worker: in the watcher 64 MB or this times 3 x --jobs + 2,
# the more (supervisor.CARRIED_AHEAD; 2 x --jobs + 2 more waiting for their turn with --workers), and this times
# 3 x --jobs in the worker.
SPARSE_MAX = 64 << 20  # a sparse member's size with its holes: an hour of 8 kHz WAV, minutes of CD audio
CARRIED_MAX = 2 << 20  # 10 s of 48 kHz stereo 16-bit WAV; an MP3 or M4A clip of minutes
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)  # zipfile reads


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def kind_by_name(name: str) -> str:
    """"zip", "warc" or "tar" (plain, gzip or zstd: told by its first bytes), as an archive's name says: a named
    archive is read as what its name says, by every front end (a .zip of zeros is no zip, not an empty tar)."""
    name = name.lower()
    return "zip" if name.endswith(".zip") else "warc" if name.endswith(warc.WARC_SUFFIXES) else "tar"


@dataclass(frozen=True)
class Member:
    """Where one member's bytes lie: ``offset`` in the archive file (``in_place``) or in its decompressed stream."""

    archive: str
    name: str
    kind: str  # "tar", "tar.gz", "tar.zst", "zip" or "warc" (compressed whole: not ``in_place``)
    offset: int
    size: int  # a WARC record's: not known before it is read (0)
    in_place: bool
    key: Optional[str] = None
    url: Optional[str] = None  # a WARC record's
    record_id: Optional[str] = None
    data: Optional[bytes] = field(default=None, repr=False, compare=False)  # a small tar.gz member's bytes
    cut: Optional[str] = None  # why ``data`` ends before the member does (an archive on stdin cut inside it)
    packed: Optional[tuple] = None  # a zip member's (method, compressed size, CRC): read without parsing the
    # archive's central directory again for each member (0.8 s for 100k members)
    damaged: Optional[str] = None  # why ``data`` are not the bytes archived (a zip member failing its CRC-32)

    @property
    def fields(self) -> dict:
        """What the member's record adds after its path."""
        if self.kind == "warc":
            return {"archive": self.archive, "url": self.url, "warc_record_id": self.record_id}
        found = {"archive": self.archive, "member": self.name}
        if self.key is not None:
            found["key"] = self.key
        return found

    def open(self):
        return open_member(self)


def members(path: str, wanted, every: bool = False) -> Iterator[tuple]:
    """(input name, Member, error) for each member whose name ``wanted(name)`` accepts (a WARC's: each audio or
    video record; ``every``: each response and resource record), in archive order: error None, or why that member
    cannot be tagged; an archive that cannot be read (on), or holds nothing to tag, ends with (path, Refused,
    error message)."""
    kind = kind_by_name(path)
    yield from said_through(path, lambda: _zip_members(path, wanted) if kind == "zip" else
                            _warc_members(path, every) if kind == "warc" else _tar_members(path, wanted),
                            kind == "warc", every)


def said_through(name: str, open_reader, is_warc: bool, every: bool) -> Iterator[tuple]:
    """What ``open_reader()`` yields, then, if the archive (``name``: its path, or "-") cannot be read on, or held
    nothing to tag, one (name, Refused, why) more: said, as a directory without audio is, and recorded, so that
    --resume and Ray's runs pass it by."""
    found = 0
    try:
        for found, item in enumerate(open_reader(), 1):
            yield item
    except Exception as error:
        cause = error.__cause__ if isinstance(error, OSError) else None  # a member's read error on stdin (piped):
        if cause is not None and damage(cause) is not None:  # the archive's reader's words, not the member's
            error = cause
        problem = damage(error)
        if problem is None:
            raise
        if streams.failed_check(error):  # gzip's "CRC check failed 0x5467 != 0x5468" alone said nothing to act on
            problem = f"its compressed data fail their check ({problem}): the members before it may hold damaged " \
                      f"bytes (tagged as they decoded), and any after it could not be read"
        yield name, Refused({"archive": name}), f"cannot read the archive: {problem}"
    else:
        if not found:
            yield name, Refused({"archive": name}), nothing_to_tag(is_warc, every)


def nothing_to_tag(is_warc: bool, every: bool) -> str:
    """Why an archive gives no input (in words every front end can show: no option names)."""
    if is_warc:
        return "no response or resource records in this WARC" if every else \
            "no audio or video records in this WARC (by their Content-Type or first bytes)"
    return "no files in this archive" if every else \
        "no audio members in this archive (chosen by their names' extensions)"


class Refused:
    """A member that cannot be read, or an archive: its input carries the reason, this only its record's fields."""

    def __init__(self, fields: dict):
        self.fields = fields


def cut_short(error: Exception) -> bool:
    """Whether ``error`` is a reader meeting the end of a cut archive (gzip's and zstd's EOFError, tarfile's
    "unexpected end of data"), not damage inside it."""
    return isinstance(error, (EOFError, CutHeader)) or (isinstance(error, tarfile.ReadError) and
                                                         str(error) == "unexpected end of data")


def damage(error: Exception) -> Optional[str]:
    """Why an archive cannot be read, in its reader's words (tarfile's, zipfile's, zlib's, warcio's: not "an
    internal error"); None for anything else (a bug: raised on)."""
    if isinstance(error, OSError):
        return failure_message(error)
    if cut_short(error):
        return TRUNCATED
    if isinstance(error, tarfile.ReadError) and str(error) == "empty file":  # in the words of an empty WARC or file
        return "empty: no data"
    if isinstance(error, zstd_errors()) and "too much memory" in str(error):
        return f"its zstd frames need a window over {ZSTD_WINDOW_MAX} MB (compressed with --long above 27), which " \
               f"audiotag refuses: recompress it with a smaller window (zstd -d --long=31 -c FILE | zstd -o NEW)"
    if isinstance(error, (warc.Damaged, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error)) or \
            isinstance(error, warc.read_errors() + zstd_errors() + lzma_errors()):
        return str(error).strip() or "damaged"
    return None


class CheckedTarInfo(tarfile.TarInfo):
    """A tar header that is damaged is an error wherever it lies: tarfile takes a bad header after the first for
    the archive's end, which would end a damaged shard early without a word."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.TruncatedHeaderError as error:  # the archive ends inside it
            raise CutHeader(f"a tar header cut short at byte {tar.offset} ({error})") from None
        except tarfile.InvalidHeaderError as error:
            raise tarfile.ReadError(f"a damaged tar header at byte {tar.offset} ({error})") from None


class CutHeader(tarfile.ReadError):
    """The archive ends inside a tar header."""


def zip_member_problem(info: zipfile.ZipInfo) -> Optional[str]:
    """Why a zip member cannot be read (encrypted, or compressed by a method zipfile lacks, or placed where it
    cannot be), or None."""
    if not info.filename:  # zipfile's own is_dir() fails on it: a traceback, the whole run lost
        return "a member without a name (a damaged zip)"
    if not 0 <= info.header_offset < 1 << 63:  # a zip64 index zipfile reads so (Info-ZIP's `zip -fz -fd`, which
        # unzip refuses; a zip64 offset over 2**63): a traceback, or "invalid argument"
        return "the zip's index places this member outside the archive (a damaged zip64 index)"
    if info.flag_bits & 0x1:
        return "the member is encrypted (audiotag reads no passwords): unpack it and give its path"
    if info.compress_type not in ZIP_METHODS:
        return f"the member is compressed by zip method {info.compress_type}, which audiotag cannot read: " \
               f"unpack it and give its path"
    module, name = _ZIP_MODULES.get(info.compress_type, (None, ""))
    if module is not None and importlib.util.find_spec(module) is None:  # the single-file binary leaves them out
        return f"the member is compressed with {name}, which this build of audiotag cannot read (the Python " \
               f"package can): unpack it and give its path"
    return None


_ZIP_MODULES = {zipfile.ZIP_BZIP2: ("bz2", "bzip2"), zipfile.ZIP_LZMA: ("lzma", "LZMA")}


def _tar_members(path: str, wanted) -> Iterator[tuple]:
    kind = _tar_kind(path)
    compressed = kind != "tar"
    with open(path, "rb") as raw, tarfile.open(fileobj=zstd_reader(raw) if kind == "tar.zst" else raw,  # zstd:
                                               mode="r:gz" if kind == "tar.gz" else "r:",  # 3.11's tarfile lacks it
                                               tarinfo=CheckedTarInfo) as tar:
        while (info := tar.next()) is not None:
            tar.members = []  # tarfile keeps every header it read: a shard of a million members would be held
            if not info.isreg() or not wanted(info.name):
                continue
            member = Member(path, info.name, kind, info.offset_data, info.size, not compressed,
                            webdataset_key(info.name))
            if info.issparse():  # its bytes are not where they lie: tarfile puts the holes back
                yield (f"{path}/{info.name}", *_sparse(tar, info, member))
            else:
                data, failed = _carried(tar, info) if compressed else (None, None)
                yield f"{path}/{info.name}", replace(member, data=data), None
                if failed is not None:  # the archive's error, after this member (its worker reads it again,
                    raise failed  # and says what it meets there)
        while compressed and tar.fileobj.read(CHUNK):  # to gzip's end, where it checks its CRC: damage that
            pass  # zlib passed (in a stored block) is said, not left unseen after the tar's last header


def _sparse(tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member) -> tuple:
    """(member, None) holding a sparse member's bytes (tar -S: holes left out, a map of where its data go), read
    whole through tarfile, or (member, why not): larger than SPARSE_MAX once its holes are back."""
    problem = sparse_problem(info)
    if problem:
        return member, problem
    return replace(member, data=tar.extractfile(info).read(), in_place=False), None


def sparse_problem(info: tarfile.TarInfo) -> Optional[str]:
    """Why a sparse member is not read (its holes put back, it is held whole and travels to a worker: a few kB
    of map can stand for terabytes of zeros), or None."""
    if info.size <= SPARSE_MAX:
        return None
    return (f"a sparse member (holes, as tar -S writes them) is held whole to be decoded, and this one is "
            f"{info.size >> 20} MB with its holes, over {SPARSE_MAX >> 20} MB: unpack it and give its path")


def _carried(tar: tarfile.TarFile, info: tarfile.TarInfo) -> tuple:
    """(a small tar.gz or tar.zst member's bytes, read as the listing passes it (the listing decompresses them
    anyway), or None for a large one; the error that stopped reading it, or None)."""
    if info.size > CARRIED_MAX:
        return None, None
    try:
        data = tar.extractfile(info).read()
    except (EOFError, zlib.error, tarfile.TarError, OSError) + zstd_errors() as error:
        return None, error
    return (data, None) if len(data) == info.size else (None, None)


def webdataset_key(name: str) -> str:
    match = _KEY.match(name)
    return match.group(1) if match else name


def _tar_kind(path: str) -> str:
    """"tar.gz", "tar.zst" or "tar", by the file's first bytes: a .tar compressed all the same is read so."""
    with open(path, "rb") as file:
        head = file.read(4)
    return "tar.gz" if head.startswith(GZIP_MAGIC) else "tar.zst" if is_zstd(head) else "tar"


def _zip_members(path: str, wanted) -> Iterator[tuple]:
    if os.path.getsize(path) == 0:  # zipfile's words, "File is not a zip file", for what an empty tar or WARC says
        raise zipfile.BadZipFile("empty: no data")
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if info.filename and (info.is_dir() or not wanted(info.filename)):
                continue
            problem = zip_member_problem(info)
            offset = info.header_offset
            if problem is None:  # the data follow the local header, whose lengths may differ from the central
                # directory's
                offset = _zip_data_offset(lambda size, at: os.pread(raw.fileno(), size, at), info)
                problem = BAD_LOCAL_HEADER if offset is None else None
            stored = info.compress_type == zipfile.ZIP_STORED and problem is None
            packed = info.compress_type, info.compress_size, info.CRC
            yield f"{path}/{info.filename}", Member(path, info.filename, "zip", offset, info.file_size, stored,
                                                    packed=packed), problem


BAD_LOCAL_HEADER = "this member's own header is not where the zip's index says, or does not match it (a damaged zip)"


def _zip_data_offset(read_at, info: zipfile.ZipInfo) -> Optional[int]:
    """Where a zip member's data start, past its own (local) header; None where that is not a header of this
    member (the index points past the end, into another member: a run ended on a traceback, or tagged another's
    bytes), checked as zipfile checks it on stdin: the local name, decoded as its own flags say, is the index's."""
    expected = len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", errors="replace"))
    header = read_at(30 + expected, info.header_offset)  # one read: the local name is the index's, in the main
    if len(header) < 30:
        return None
    signature, flags, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(header[:30])
    name = header[30:30 + name_length] if name_length <= expected else read_at(name_length, info.header_offset + 30)
    try:
        same = name.decode("utf-8" if flags & 0x800 else "cp437") == info.orig_filename
    except UnicodeDecodeError:
        same = False
    return info.header_offset + 30 + name_length + extra_length if signature == b"PK\x03\x04" and same else None


def _warc_members(path: str, every: bool) -> Iterator[tuple]:
    """A WARC's records: entered at their offset in the file (``in_place``), or, in a WARC compressed whole, at
    their offset in its decompressed bytes, reached by decompressing up to there: so a record of up to
    CARRIED_MAX is kept as the listing passes it and travels with its input, as a small tar.gz member does."""
    with open(path, "rb") as file:
        for found in warc.records(file, every):
            member = Member(path, found.url, "warc", found.offset, 0, not found.in_stream, url=found.url,
                            record_id=found.record_id)
            try:
                data = read_exactly(found.payload, CARRIED_MAX + 1) if found.in_stream else None
                truncated = found.ends_inside()
            except Exception as error:  # its compressed data are damaged: said by its record, as on stdin, then
                problem = damage(error)  # by the archive's, where the WARC's reader meets the damage again
                if problem is None:
                    raise
                yield f"{path}#{found.offset}", member, failure_message(OSError(f"the archive is damaged: {problem}"))
                continue
            carried = data is not None and len(data) <= CARRIED_MAX and not truncated
            yield f"{path}#{found.offset}", replace(member, data=data if carried else None), \
                warc.RECORD_CUT if truncated else None


def open_member(member: Member):
    """A decoding stream (``decode.Stream``) on one member, opened as the same bytes in a file would be (a WARC
    record's payload as the same bytes on stdin are)."""
    from ..decode import open_bytes, open_seekable, open_stdin  # here: a supervisor walks archives, no decoder
    if member.kind == "warc" and member.data is not None:  # a record of a WARC on stdin, carried (piped.carried;
        # one the WARC ends inside is an error there, as the named file's)
        return open_stdin(io.BytesIO(member.data))
    if member.kind == "warc":
        payload, close = _warc_payload(member)
        try:
            stream = open_stdin(payload)
        except BaseException:
            close()
            raise
        stream.add_closer(close)
        return stream
    if member.data is not None and member.cut is not None and member.size > len(member.data):  # cut short on
        # stdin: what came, in a window of the member's size ending at the cut, as the named file's window ends
        window = streams.Held(member.data, member.size, member.cut)
    elif member.data is not None:
        stream = open_bytes(member.data)
        return reporting_failure(stream, Damaged(member.damaged)) if member.damaged else stream
    elif (data := _small_deflated(member)) is not None:
        return open_bytes(data)
    elif member.in_place or member.kind in ("tar.gz", "tar.zst", "zip"):  # read in place, or decompressed as it
        # is read: seekable all the same
        window = streams.FileWindow(member.archive, member.offset, member.size) if member.in_place else \
            _compressed_window(member)
        if member.kind == "zip":
            window = (CrcCheckedInPlace if member.in_place else CrcChecked)(window, member.size, member.packed[2])
    else:
        return open_bytes(_read_whole(member))
    try:
        return reporting_failure(open_seekable(window, member.size), window)
    except AudioError as error:
        window.close()
        if window.failure is not None:
            raise AudioError(window.failure) from error
        raise
    except BaseException:
        window.close()
        raise


def reporting_failure(stream, window):
    """``stream`` on a member whose bytes may fail to read (``window.failure``: the archive ends inside it, or is
    damaged there): its decoder meets the end of its data there; the record says why, a warning when audio came
    before, else the error."""
    def checked(blocks):
        frames, whole = 0, False
        try:
            for block in blocks:
                frames += len(block)
                yield block
            whole = True
        except AudioError as error:  # the decoder's words for where its data ended: after the reason
            if window.failure is None:
                raise
            raise AudioError(f"{window.failure}: {error}") from error
        finally:
            if not whole:  # stopped early (--max-duration): damage known without reading on is still said
                damaged(False)
        if window.failure is not None:
            from ..infer.clip import MIN_CLIP_SAMPLES, frontend

            if frames * frontend.SAMPLE_RATE < MIN_CLIP_SAMPLES * stream.rate:  # too little to tag: said so,
                # not "too short" (a member damaged or cut after its header)
                raise AudioError(window.failure)
            stream.warning = f"{window.failure}: tagged the {frames / stream.rate:.1f} s before it"
        else:
            damaged(True)

    def damaged(whole: bool) -> None:
        """The window's damage found once its decoder is done (a zip member failing its CRC-32), said."""
        if (problem := getattr(window, "damage", lambda whole: None)(whole)) is not None:
            stream.warning = f"{problem}; {stream.warning}" if stream.warning else problem

    stream.map_blocks(checked)
    return stream


def _compressed_window(member: Member) -> inflate.Window:
    """A tar.gz, tar.zst or compressed zip member as a seekable file, decompressed as it is read."""
    if member.kind in ("tar.gz", "tar.zst"):
        return COMPRESSED_STREAMS.window(member)
    if member.packed[0] == zipfile.ZIP_DEFLATED:
        return inflate.Window(inflate.Inflater(member.archive, member.offset, inflate.DEFLATE), member.size)
    return inflate.Window(streams.ZipStream(lambda: _zip_reader(member, checked=False)), member.size)  # bzip2 or
    # LZMA: read again from the member's start to seek back


def _small_deflated(member: Member) -> Optional[bytes]:
    """A deflated zip member of up to CARRIED_MAX, decompressed whole in one call and its CRC-32 checked; None for
    any other member, or where its data fail (the window reads it again, and says why as it does for a large one).
    Decoding bytes in memory costs less than a window read piecemeal through Python: a zip of 200 10 s clips
    (WAV, FLAC, MP3, Vorbis, AAC, Opus) is tagged in 0.97 of the time and CPU (farm-bench, 8 pairs)."""
    if member.kind != "zip" or member.size > CARRIED_MAX or member.packed[0] != zipfile.ZIP_DEFLATED:
        return None
    inflater = inflate.Inflater(member.archive, member.offset, inflate.DEFLATE)
    try:
        data = inflater.read(member.size)
    except inflater.errors:
        return None
    finally:
        inflater.close()
    return data if len(data) == member.size and zlib.crc32(data) == member.packed[2] else None


def _zip_reader(member: Member, checked: bool = True) -> zipfile.ZipExtFile:
    """zipfile's reader of one member (its CRC checked at the end, unless not ``checked``: then by the caller),
    opened at the member's data as listed."""
    info = zipfile.ZipInfo(member.name)
    info.compress_type, info.compress_size, info.CRC = member.packed
    info.file_size = member.size
    file = open(member.archive, "rb")  # noqa: SIM115 -- the reader closes it
    file.seek(member.offset)
    reader = zipfile.ZipExtFile(file, "r", info, close_fileobj=True)
    return reader if checked else without_crc_check(reader)


def member_sha256(member: Member) -> str:
    """The sha256 of a member's bytes (--hash), read as it is decoded."""
    digest = sha256()
    try:
        if member.cut is not None or member.damaged is not None:  # not the member's bytes: no hash (the
            # decoder says what it got)
            raise OSError(member.cut or member.damaged)
        if member.data is not None:
            digest.update(member.data)
        elif member.kind in ("tar.gz", "tar.zst"):
            COMPRESSED_STREAMS.read(member, digest.update)
        else:
            with _reader(member) as reader:
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                problem = getattr(reader, "failure", None) or getattr(reader, "damage", lambda: None)()
                if problem:  # the archive ends inside it, or a zip member fails its CRC: not its bytes' hash
                    raise OSError(problem)
    except EOFError as error:  # said in the member's record
        raise OSError(CUT_MEMBER) from error
    except (zlib.error, zipfile.BadZipFile) + zstd_errors() + lzma_errors() as error:
        raise OSError(f"the archive is damaged inside this member ({error})") from error
    except Exception as error:
        if member.kind == "warc" and isinstance(error, warc.read_errors()):
            raise OSError(str(error)) from error
        raise
    return digest.hexdigest()


def _warc_payload(member: Member) -> tuple:
    """(a WARC record's payload stream, what closes it): entered at its offset in the file, or in the
    decompressed bytes of a WARC compressed whole (a stream kept for the records after it)."""
    if member.in_place:
        payload, file = warc.open_payload(member.archive, member.offset)
        return payload, file.close
    key, stream = COMPRESSED_STREAMS.take(member)  # at the record's start: warcio reads on past its end
    try:
        return warc.payload_here(stream, member.offset), lambda: COMPRESSED_STREAMS.give_back(key, stream)
    except BaseException:
        stream.close()
        raise


def _reader(member: Member):
    if member.kind == "warc":
        payload, close = _warc_payload(member)
        return streams.Closing(payload, close)
    if member.kind == "zip":  # its CRC checked as the decoder's window checks it: one wording
        return CrcCheckedReader(_zip_reader(member, checked=False), member.packed[2])
    return streams.FileWindow(member.archive, member.offset, member.size)  # a tar's (a tar.gz's: CompressedStreams)


def _read_whole(member: Member) -> bytes:
    from ..decode import STDIN_MEMORY_LIMIT

    if member.size > STDIN_MEMORY_LIMIT:
        raise AudioError(f"a compressed archive's member is held in memory to be decoded, and this one is over "
                         f"{STDIN_MEMORY_LIMIT >> 20} MB: unpack it and give its path")
    try:
        if member.kind == "tar.zst":
            data = bytearray()
            COMPRESSED_STREAMS.read(member, data.extend)
            return bytes(data)
        with _reader(member) as reader:
            data = reader.read(member.size)
    except EOFError as error:
        raise AudioError(CUT_MEMBER) from error
    except (zlib.error, zipfile.BadZipFile, tarfile.TarError) + zstd_errors() as error:
        raise AudioError(f"the archive is damaged here: {damage(error)}") from error
    if len(data) < member.size:
        raise AudioError(CUT_MEMBER)
    return data


COMPRESSED_STREAMS = streams.CompressedStreams()  # shared by the members of .tar.gz and .tar.zst archives, and WARCs
# compressed whole
