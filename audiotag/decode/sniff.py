"""What a file's first and last bytes say, where that decides the decoder.

- MPEG audio behind junk (an HTTP response header saved with the body, a few kB of garbage): libsndfile refuses
  an MP3 that does not start with a frame or an ID3 tag. When the first bytes hold a run of MPEG audio frames
  further on, libsndfile decodes it from there all the same (``Window``), so it gives the clean file's samples
  bit for bit (its gapless trim included, which FFmpeg would lose behind the junk).
- A chained Ogg (logical streams one after another, as internet radio records them): libsndfile decodes only the
  first one, so such a file goes to FFmpeg, which decodes them all as one recording.
"""

from typing import Optional

SEARCHED = 1 << 18  # bytes searched for the first frame: headers and junk seen in crawls are a few kB
RUN = 4  # frames in a row, same version, layer and rate: a sync word in junk is 1 in 2,000 bytes, four are none

# kbit/s by (version is MPEG-1, layer) for bitrate indexes 1..14; MPEG-2/2.5 share one table per layer kind
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mpeg_audio_start(head: bytes) -> Optional[int]:
    """The offset of the first of RUN consecutive MPEG audio frames in ``head``, or None."""
    position = head.find(b"\xff")
    while 0 <= position < len(head) - 4:
        if _run_at(head, position):
            return position
        position = head.find(b"\xff", position + 1)
    return None


def _run_at(head: bytes, position: int) -> bool:
    first = None
    for _ in range(RUN):
        header = head[position:position + 4]
        if len(header) < 4:
            return first is not None and position >= len(head)  # the run reaches the end of what was read
        length, kind = _frame(header)
        if not length or (first is not None and kind != first):
            return False
        first = kind
        position += length
    return True


def _frame(header: bytes) -> tuple:
    """(frame length in bytes, (version, layer, rate index)) of an MPEG audio frame header; (0, None) if not one."""
    if header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return 0, None
    version, layer = (header[1] >> 3) & 3, 4 - ((header[1] >> 1) & 3)  # version 3: MPEG-1, 2: MPEG-2, 0: 2.5
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer == 4 or bitrate_index in (0, 15) or rate_index == 3:
        return 0, None
    mpeg1 = version == 3
    table = _BITRATES[(True, layer)] if mpeg1 else _BITRATES[(False, 1 if layer == 1 else 2)]
    bitrate, rate = table[bitrate_index - 1] * 1000, _RATES[version][rate_index]
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + padding
    return length, (version, layer, rate_index)


# How containers FFmpeg streams begin: a stream starting so is not searched for MPEG audio frames (an MP3
# inside a Matroska or AVI file is not an MP3 file).
CONTAINERS = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FORM", b"OggS", b"fLaC", b"caff", b"FLV", b"#!AMR",
              b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", b"\x0bw", b"\x7f\xfe\x80\x01", b"wvpk", b"TTA1", b"MAC ",
              b"\x00\x00\x01\xba")


def is_container(head: bytes) -> bool:
    """Whether ``head`` opens a container (Matroska, RIFF, MP4, MPEG-PS/TS...) rather than raw MPEG audio."""
    return head.startswith(CONTAINERS) or head[4:8] == b"ftyp" or (head[:1] == b"G" and head[188:189] == b"G")
TAIL = 1 << 16  # bytes read at the end of an Ogg file for its last page (pages are at most 65,307 bytes)


def is_chained_ogg(head: bytes, tail: bytes) -> bool:
    """Whether an Ogg file's last page belongs to another logical stream than its first page does."""
    last = tail.rfind(b"OggS\0")
    if not head.startswith(b"OggS\0") or last < 0 or len(tail) < last + 18:
        return False
    return head[14:18] != tail[last + 14:last + 18]  # the pages' serial numbers


class Window:
    """A seekable binary file seen from ``start`` on (what libsndfile reads when junk comes first)."""

    def __init__(self, file, start: int):
        self._file = file
        self._start = start
        file.seek(start)

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            return self._file.seek(self._start + max(0, offset)) - self._start
        return max(0, self._file.seek(offset, whence) - self._start)

    def tell(self) -> int:
        return self._file.tell() - self._start

    def seekable(self) -> bool:
        return True
