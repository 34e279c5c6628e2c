"""Archives as inputs: tar files (plain or gzip-compressed; WebDataset shards are tar files) and zip files, read
where they lie: a member is never written to disk.

A member is tagged as a file is. Its input's name is ``ARCHIVE/MEMBER`` (``shards/000001.tar/000123.flac``): unique
in a run, and what ``--resume`` matches; its record adds "archive", "member" and, for a tar member, "key" (the
WebDataset ``__key__``: the member's path up to the first dot of its file name, ``000123`` for ``000123.flac``).
Which members are audio is decided by extension, as a directory walk decides (``--all-files``: every member), so a
WebDataset's JSON sidecars are skipped without being read.

A member carries where its bytes lie (``Member``), so whichever process tags it, a watched worker after a crash
too, opens the archive again at that member: a plain tar's member or a stored zip member is read in place (a
seekable window on the archive, streamed to the decoder as a file is); a compressed one (tar.gz, a deflated zip
member) is decompressed from the start of its stream and held whole, up to the stdin limit.
"""

import gzip
import io
import os
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

from ..errors import AudioError, failure_message
from ..hashing import CHUNK, sha256

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.[^/]*$")  # WebDataset's key: the path up to the file name's first dot
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra field length (30 bytes)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class Member:
    """Where one member's bytes lie: ``offset`` in the archive file (``in_place``) or in its decompressed stream."""

    archive: str
    name: str
    kind: str  # "tar", "tar.gz" or "zip"
    offset: int
    size: int
    in_place: bool
    key: Optional[str] = None

    @property
    def fields(self) -> dict:
        """What the member's record adds after its path."""
        found = {"archive": self.archive, "member": self.name}
        if self.key is not None:
            found["key"] = self.key
        return found


def members(path: str, wanted) -> Iterator[tuple]:
    """(input name, Member) for each member whose name ``wanted(name)`` accepts, in archive order; an archive that
    cannot be read (on) ends with (path, error message)."""
    try:
        if path.lower().endswith(".zip"):
            yield from _zip_members(path, wanted)
        else:
            yield from _tar_members(path, wanted)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error) as error:
        yield path, f"cannot read the archive: {failure_message(error)}"


def _tar_members(path: str, wanted) -> Iterator[tuple]:
    compressed = not _is_plain_tar(path)
    kind = "tar.gz" if compressed else "tar"
    with tarfile.open(path, "r:gz" if compressed else "r:") as tar:
        while (info := tar.next()) is not None:
            tar.members = []  # tarfile keeps every header it read: a shard of a million members would be held
            if not info.isreg() or not wanted(info.name):
                continue
            match = _KEY.match(info.name)
            yield f"{path}/{info.name}", Member(path, info.name, kind, info.offset_data, info.size, not compressed,
                                                match.group(1) if match else info.name)


def _is_plain_tar(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(2) != b"\x1f\x8b"  # gzip's magic: a .tar that is compressed all the same is read so


def _zip_members(path: str, wanted) -> Iterator[tuple]:
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if info.is_dir() or not wanted(info.filename):
                continue
            stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1  # not encrypted
            offset = info.header_offset
            if stored:  # the data follows the local header, whose lengths may differ from the central directory's
                signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(os.pread(raw.fileno(), 30, offset))
                if signature != b"PK\x03\x04":
                    raise zipfile.BadZipFile(f"{info.filename}: bad local header")
                offset += 30 + name_length + extra_length
            yield f"{path}/{info.filename}", Member(path, info.filename, "zip", offset, info.file_size, stored)


def open_member(member: Member):
    """A decoding stream (``decode.Stream``) on one member, opened as the same bytes in a file would be."""
    from ..decode import open_bytes, open_seekable  # here: walking archives (a supervisor's work) needs no decoder

    if member.in_place:
        window = _Window(member.archive, member.offset, member.size)
        try:
            return open_seekable(window, member.size)
        except BaseException:
            window.close()
            raise
    return open_bytes(_read_whole(member))


def member_sha256(member: Member) -> str:
    """The sha256 of a member's bytes (--hash), read as it is decoded."""
    digest = sha256()
    try:
        with _reader(member) as reader:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
    except (EOFError, zlib.error, zipfile.BadZipFile) as error:  # the decoder will say what is wrong with it
        raise OSError(str(error)) from error
    return digest.hexdigest()


def _reader(member: Member):
    if member.in_place:
        return _Window(member.archive, member.offset, member.size)
    if member.kind == "zip":
        archive = zipfile.ZipFile(member.archive)
        reader = archive.open(member.name)
        reader._archive = archive  # noqa: SLF001 -- kept open as long as the member's reader is
        return reader
    stream = gzip.open(member.archive, "rb")
    stream.seek(member.offset)  # decompresses up to the member: a tar.gz cannot be entered elsewhere
    return _Limited(stream, member.size)


def _read_whole(member: Member) -> bytes:
    from ..decode import STDIN_MEMORY_LIMIT

    if member.size > STDIN_MEMORY_LIMIT:
        raise AudioError(f"a compressed archive's member is held in memory to be decoded, and this one is over "
                         f"{STDIN_MEMORY_LIMIT >> 20} MB: unpack it and give its path")
    with _reader(member) as reader:
        data = reader.read(member.size)
    if len(data) < member.size:
        raise AudioError("the archive ends inside this member (truncated)")
    return data


class _Limited(io.RawIOBase):
    """The first ``size`` bytes of a stream (a tar.gz member, once its stream is at the member)."""

    def __init__(self, stream, size: int):
        super().__init__()
        self._stream, self._left = stream, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(min(len(buffer), self._left))
        memoryview(buffer).cast("B")[:len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


class _Window(io.RawIOBase):
    """A read-only, seekable file over ``size`` bytes at ``offset`` of a file, read with pread (no copy held)."""

    def __init__(self, path: str, offset: int, size: int):
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._offset, self._size, self._position = offset, size, 0

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
        size = max(0, min(size, self._size - offset))
        data = os.pread(self._fd, size, self._offset + offset) if size else b""
        if len(data) < size:
            raise OSError("the archive ends inside this member (truncated)")
        return data

    def file_window(self) -> tuple:
        """(descriptor, offset, size) of what is left from the current position: FFmpeg reads it without Python."""
        return self._fd, self._offset + self._position, max(0, self._size - self._position)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
