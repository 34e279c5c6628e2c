"""What a file's first and last bytes say, where that decides the decoder.

- MPEG audio behind junk (an HTTP response header saved with the body, a few kB of garbage): libsndfile refuses
  an MP3 that does not start with a frame or an ID3 tag. When the first bytes hold a run of MPEG audio frames
  further on, libsndfile decodes it from there all the same (``Window``), so it gives the clean file's samples
  bit for bit (its gapless trim included, which FFmpeg would lose behind the junk).
- A chained Ogg (logical streams one after another, as internet radio records them): libsndfile decodes only the
  first one, so such a file goes to FFmpeg, which decodes them all as one recording.
"""

import re
from typing import Optional

SEARCHED = 1 << 18  # bytes searched for the first frame: headers and junk seen in crawls are a few kB
RUN = 4  # frames in a row, same version, layer and rate: a sync word in junk is 1 in 2,000 bytes, four are none
FRAME_MAX = 2881  # the longest MPEG audio frame (MPEG-2 layer II, 160 kbit/s at 8 kHz, padded)
AHEAD = RUN * FRAME_MAX  # read past SEARCHED: a run that starts near its end is checked whole (one frame whose
# length ran past what was read passed for a run: 0.1 s of samples in a headerless WAV was tagged as MP1)

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
    """The offset of the first of RUN consecutive MPEG audio frames that begins in ``head``'s first SEARCHED
    bytes, or None. A shorter run counts where it ends with ``head``: a file of two frames (read SEARCHED +
    AHEAD bytes of a longer file, so that a run beginning in the first SEARCHED lies in them whole)."""
    position = head.find(b"\xff")
    while 0 <= position < min(len(head), SEARCHED) - 4:
        if _run_at(head, position):
            return position
        position = head.find(b"\xff", position + 1)
    return None


def _run_at(head: bytes, position: int) -> bool:
    first = None
    for _ in range(RUN):
        header = head[position:position + 4]
        if len(header) < 4:
            return first is not None and position == len(head)  # the run ends where what was read ends
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


# What libsndfile 1.2.2 (guess_file_type in sndfile.c) makes of a file's first 12 bytes. When none of its markers
# match, it looks for a Mac resource fork (where an SD2 file keeps its sound) before it tries bare MPEG audio: a
# file or body opened without a name makes it open "/..namedfork/rsrc", "._" and ".AppleDouble/" in the working
# directory, and a FIFO planted there hangs it, a folder or file there turns its answer into an SD2 error. So
# libsndfile is given only what it answers without that search (``sndfile_guess``), and bare MPEG audio behind
# an empty ID3 tag (``Prefixed``), which it decodes as the same frames.
_SNDFILE_FORMATS = (  # ((offset, bytes) all of which must match, the format libsndfile names; "": it refuses)
    (((0, b"RIFF"), (8, b"WAVE")), "WAV"), (((0, b"RIFX"), (8, b"WAVE")), "WAV"),
    (((0, b"FORM"), (8, b"AIFF")), "AIFF"), (((0, b"FORM"), (8, b"AIFC")), "AIFF"),
    (((0, b"FORM"), (8, b"8SVX")), "SVX"), (((0, b"FORM"), (8, b"16SV")), "SVX"), (((0, b"FORM"),), ""),
    (((0, b".snd"),), "AU"), (((0, b"dns."),), "AU"), (((0, b"fap "),), "PAF"), (((0, b" paf"),), "PAF"),
    (((0, b"NIST"),), "NIST"), (((0, b"Creative"),), "VOC"), (((0, b"riff"),), "W64"),
    (((0, b"\0\0\x03\xe8\0\0\0\x01\0\0\0\x01"),), "MAT4"), (((0, b"\0\0\0\0\x01\0\0\0\x01\0\0\0"),), "MAT4"),
    (((0, b"MATLAB 5"),), "MAT5"), (((0, b"PVF1"),), "PVF"), (((0, b"Extended Ins"),), "XI"),
    (((0, b"caff"), (8, b"desc")), "CAF"), (((0, b"OggS"),), "OGG"), (((0, b"ALawSoundFil"),), "WVE"),
    (((0, b"DiamondWare "),), "DWD"), (((0, b"LM89"),), "TXW"), (((0, b"53\0\0"),), "TXW"),
    (((0, b"CAT "), (8, b"REX2")), "REX2"), (((0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),), ""),
    (((0, b"fLaC"),), "FLAC"), (((0, b"2BIT"),), "AVR"), (((0, b"RF64"), (8, b"WAVE")), "RF64"),
    (((0, b"SOUND SA"),), ""), (((0, b"SY80"),), ""), (((0, b"SY85"),), ""), (((0, b"ajkg"),), ""),
)
_SNDFILE_BY_HEAD = {}  # the table by the first 4 bytes of its first mark (each lies at 0, 4 bytes or more): a WARC
# of 40 pages per clip sniffs every page, and trying each entry in turn was a quarter of its listing's time
for _entry in _SNDFILE_FORMATS:
    _SNDFILE_BY_HEAD.setdefault(_entry[0][0][1][:4], []).append(_entry)
EMPTY_ID3 = b"ID3\x04\0\0\0\0\0\x0a" + bytes(10)  # an ID3v2.4 tag of 10 bytes of padding (one with none: refused)


def sndfile_format(head: bytes, size: Optional[int] = None) -> Optional[str]:
    """The format libsndfile finds by the marker in ``head`` (12 bytes; ``size``: the file's, when known), ""
    for a marker it refuses, None when no marker decides (ID3 tags and MPEG audio are not markers here)."""
    if len(head) < 12:
        return None
    for marks, name in _SNDFILE_BY_HEAD.get(bytes(head[:4]), ()):  # bytes: a bytearray's slice is no key
        if all(head[at:at + len(mark)] == mark for at, mark in marks):
            return name
    if (head[0] == 0x64 and head[1] == 0xA3 and not head[2] & 0xF8 and not head[3]) or \
            (not head[0] and not head[1] & 0xF8 and head[2] == 0xA3 and head[3] == 0x64):
        return "IRCAM"
    if head[0] == 0xF0 and head[1] == 0x7E and not head[2] & 0x80 and head[3] == 1:
        return "SDS"
    if head[:2] == b"\x01\x04":
        return "MPC2K"
    if head[8:12] == b"\0\x02\0\0" and 2 * int.from_bytes(head[:4], "big") + 12 == size:
        return "HTK"
    return None


def sndfile_guess(read_at, size: int) -> tuple:
    """(what libsndfile's guess makes of a file, the format's name): ("answers", NAME) when a marker decides
    (NAME "" when it refuses), ("bare mpeg", "MPEG") for MPEG audio with no ID3 tag (found only after the
    resource-fork search), ("unknown", "") for what it would search a resource fork for and then refuse.
    ``read_at(offset, count)`` reads the file's bytes."""
    offset, tagged = 0, False
    while True:
        head = read_at(offset, 12)
        if len(head) < 12:
            return "answers", ""  # too short to guess: refused with no search
        name = sndfile_format(head, size)
        if name is not None:
            return "answers", name
        if head[:3] == b"ID3" and head[3] in (2, 3, 4):
            tag = read_at(offset, 10)
            length = 10 + ((tag[6] & 0x7F) << 21 | (tag[7] & 0x7F) << 14 | (tag[8] & 0x7F) << 7 | tag[9] & 0x7F)
            if offset + length >= size:
                return "answers", ""
            offset, tagged = offset + length, True
            continue
        if _identify_mpeg(head):
            return ("answers" if tagged else "bare mpeg"), "MPEG"
        return "unknown", ""


def _identify_mpeg(head: bytes) -> bool:
    """libsndfile's test for an MPEG audio frame header (looser than ``_frame``)."""
    return head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x18 != 0x08 and head[1] & 0x06 != 0 and \
        head[2] & 0xF0 != 0xF0 and head[2] & 0x0C != 0x0C


class Prefixed:
    """A seekable binary file with ``prefix`` before its bytes (bare MPEG audio behind an empty ID3 tag)."""

    def __init__(self, file, prefix: bytes = EMPTY_ID3):
        self._file = file
        self._prefix = prefix
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        data = b""
        if self._position < len(self._prefix):
            data = self._prefix[self._position:self._position + size if size >= 0 else None]
            self._position += len(data)
            if 0 <= size <= len(data):
                return data
            size = size - len(data) if size >= 0 else -1
        self._file.seek(self._position - len(self._prefix))
        rest = self._file.read(size)
        self._position += len(rest)
        return data + rest

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._position
        elif whence == 2:
            offset += len(self._prefix) + self._file.seek(0, 2)
        self._position = max(0, offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True


# Brands of an ISO-BMFF file ("ftyp") that is a still image, not audio or video (AVIF, HEIF/HEIC).
IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
RIFF_MEDIA = (b"WAVE", b"AVI ", b"RMP3")  # RIFF also holds WebP images and other files
FORM_MEDIA = (b"AIFF", b"AIFC", b"8SVX", b"16SV")  # FORM also holds IFF images


def is_media(head: bytes) -> bool:
    """Whether bytes of unknown kind (a crawled payload whose type says nothing) open audio or video that a
    decoder takes: what libsndfile knows by its marker, an ID3 tag, a run of MPEG audio frames, or a container
    (not an image inside RIFF, FORM or ISO-BMFF)."""
    if head[:4] == b"RIFF":
        return head[8:12] in RIFF_MEDIA
    if head[:4] == b"FORM":
        return head[8:12] in FORM_MEDIA
    if head[4:8] == b"ftyp":
        return head[8:12] not in IMAGE_BRANDS
    if sndfile_format(head) or head.startswith(b"ID3") or is_container(head):
        return True
    return mpeg_audio_start(head) is not None


# Compressed files and archives: what their first bytes say, so that the answer is what to do (a .tar.bz2 was
# "not audio, or a format audiotag does not know"). gzip: its magic and deflate's method byte (two bytes alone
# begin one raw PCM stream in 65,536).
_PACKED = ((b"\x1f\x8b\x08", "gzip-compressed data"), (b"\xfd7zXZ\x00", "xz-compressed data"),
           (b"\x28\xb5\x2f\xfd", "zstd-compressed data"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
           (b"Rar!\x1a\x07", "a RAR archive"), (b"PK\x03\x04", "a zip archive"))  # not "WARC/": an MP3 saved
# with its WARC record's header is tagged from its frames
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")


def packed(head: bytes) -> Optional[str]:
    """What compressed file or archive ``head`` (its first 262 bytes or more) begins, else None."""
    for magic, what in _PACKED:
        if head.startswith(magic):
            return what
    if _BZIP2.match(head):
        return "bzip2-compressed data"
    if head[257:262] == b"ustar":
        return "a tar archive"
    return None
