"""A zip member's CRC-32, checked the same way wherever the member is read.

zipfile checks it only for a member read through its own reader, to its end, and then raises, dropping the bytes
of that last read. audiotag reads members its own ways: in place (a stored member: FFmpeg reads the archive's
descriptor itself), with its own inflater (a deflated one), streamed on stdin and in audiotag-ray's rows (through
zipfile's reader). Each checks the CRC here, so that one damaged member is said the same way in each: tagged as
its bytes decode, with a warning (as a member an archive is cut inside is), and without a sha256 (they are not the
bytes archived).
"""

import zipfile
import zlib
from typing import Optional

from ..hashing import CHUNK
from . import inflate

REST_MAX = 16 << 20
BAD_CRC = "the archive is damaged inside this member: its bytes fail the zip's CRC-32 check (tagged as they decode)"


class Damaged:
    """A member's bytes known not to be the ones archived (``Member.damaged``), for ``reporting_failure``."""

    failure = None

    def __init__(self, problem: str):
        self._problem = problem

    def damage(self, whole: bool = True) -> str:  # noqa: ARG002 -- known before decoding: said however far it went
        return self._problem


class CrcCheck:
    """A zip member's CRC-32 over its bytes as they are read, in order from its start (a decoder's seeks ahead
    and back are not; what it never reads, ``CrcChecked.damage`` reads after it)."""

    def __init__(self, expected: int):
        self.expected, self.crc, self.checked = expected, 0, 0  # checked: bytes from the start seen in order

    def see(self, offset: int, data) -> None:
        if offset <= self.checked < offset + len(data):
            self.crc = zlib.crc32(memoryview(data)[self.checked - offset:], self.crc)
            self.checked = offset + len(data)

    def problem(self, size: int) -> Optional[str]:
        return BAD_CRC if self.checked == size and self.crc != self.expected else None


class CrcChecked(inflate.PreadFile):
    """A zip member's window (a stored member's in place, a compressed one's decompressed as it is read), its
    bytes checked against the zip's CRC-32 (``CrcCheck``); ``damage()``, once the decoder is done, reads what
    it skipped or left (a tag after the audio: usually little) and says whether the check failed. A compressed
    member's rest is decompressed for it only up to ``REST_MAX`` or what the decoder read, whichever is more (a
    small zip can hold a gigabyte of zeros its decoder skips): beyond, it is left unchecked."""

    compressed = True

    def __init__(self, window, size: int, expected: int):
        super().__init__()
        self._window, self._size, self._check = window, size, CrcCheck(expected)

    @property
    def failure(self) -> Optional[str]:
        return self._window.failure

    def pread(self, size: int, offset: int) -> bytes:
        data = self._window.pread(size, offset)
        self._check.see(offset, data)
        return data

    def damage(self, whole: bool = True) -> Optional[str]:
        """``whole``: the decoder read to its data's end (not stopped by --max-duration), so the rest is read."""
        rest = self._size - self._check.checked
        if whole and not (self.compressed and rest > max(REST_MAX, self._check.checked)):
            while self._check.checked < self._size and self.failure is None:
                if not self.pread(CHUNK, self._check.checked):
                    break
        return self._check.problem(self._size)

    def close(self) -> None:
        self._window.close()
        super().close()


class CrcCheckedInPlace(CrcChecked):
    """A stored member's: FFmpeg reads it from the archive's descriptor itself (``FileWindow.file_window``); the
    check then reads it again after decoding, from the page cache (no bound: its bytes are on the disk)."""

    compressed = False

    def file_window(self) -> tuple:
        self._window.seek(self._position)
        return self._window.file_window()


def without_crc_check(reader: zipfile.ZipExtFile) -> zipfile.ZipExtFile:
    """``reader`` without zipfile's check of the CRC-32 at the member's end, where the caller checks it
    (``CrcCheck``): zipfile raises there, and drops the bytes of that last read. It skips the check where its
    ``_expected_crc`` is None (as for a ZipInfo without a CRC; but such a reader cannot seek, in Python 3.11)."""
    reader._expected_crc = None  # noqa: SLF001 -- no public switch; the tests of a bad CRC fail if this changes
    return reader


class CrcCheckedReader:
    """zipfile's reader of a member (``without_crc_check``), its bytes checked as they are read: ``damage()``, once
    all were read, says whether they fail the check."""

    def __init__(self, reader, expected: int):
        self._reader, self._check = reader, CrcCheck(expected)
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        self._check.see(self._check.checked, data)
        self._ended = self._ended or (not data and size != 0)
        return data

    def damage(self) -> Optional[str]:
        return self._check.problem(self._check.checked) if self._ended else None

    def close(self) -> None:
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *failure) -> None:
        self.close()
