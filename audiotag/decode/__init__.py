"""Decoding: files, bytes and streams to mono float32 blocks at the model's rate (``stream.Stream``).

The decoder is chosen by the bytes, never by the name: libsndfile (``sndfile``) first; what it refuses (AAC/M4A/
MP4, WebM/Matroska, WMA, AC-3, AMR, ALAC, video files...) goes to FFmpeg (``ffmpeg``), and so do chained Ogg and,
with FFmpeg's block decoder, Ogg Vorbis (``_unless_chained``); MPEG audio behind junk and chained Ogg are found
by ``sniff``. Raw samples and WAV streams are read by ``pcm``. (One exception: an SD2 file keeps its header in a
resource fork beside it, "._NAME", which libsndfile finds by the file's name.)

stdin cannot seek, so a WAV stream is parsed as it arrives (``pcm``), what libsndfile knows by its first bytes (FLAC,
Ogg, AIFF, AU, ID3-tagged or bare MP3...) is read into memory before libsndfile sees it (the same samples as the
file), an MP4/MOV/3GP or CAF (whose index may come last) is read into memory for FFmpeg, and every other container
streams into FFmpeg as it arrives. A stream that fails to open so (a damaged WAV header, a container FFmpeg cannot
open without seeking) is then read whole and opened as its file is: the same bytes give the same answer. What is
held in memory is bounded by STDIN_MEMORY_LIMIT.
"""

import io
import os
import stat
from typing import Optional

from ..errors import AudioError
from . import ffmpeg, sniff
from .pcm import RAW_FORMATS, open_raw, open_wav_stream, read_exactly
from .sndfile import Refused, not_audio, open_soundfile
from .stream import TARGET_RATE, Audio, Stream, block_frames, from_array

__all__ = ["AudioError", "Audio", "Stream", "TARGET_RATE", "RAW_FORMATS", "STDIN_MEMORY_LIMIT", "open_file",
           "open_bytes", "open_seekable", "open_stdin", "open_raw", "open_source", "load", "load_bytes", "from_array",
           "block_frames"]


STDIN_MEMORY_LIMIT = 1 << 30  # bytes of a stdin (or HTTP) input held in memory to be decoded whole (FLAC, Ogg, MP4)


def open_file(path, raw_format: Optional[str] = None, rate: Optional[int] = None, channels: int = 1) -> Stream:
    """Open an audio file for block decoding. OSError (missing, a directory, unreadable) passes through.

    A pipe named as a file (``audiotag <(curl ...)``, ``/dev/stdin``) is read as a stream, as ``-`` is (raw
    samples when ``raw_format`` is given).
    """
    file = open(path, "rb")
    try:
        info = os.fstat(file.fileno())
        if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode) or stat.S_ISSOCK(info.st_mode):
            stream = open_stdin(file, raw_format, rate, channels)
            stream.add_closer(file.close)
            return stream
        if not stat.S_ISREG(info.st_mode):
            raise AudioError("not a regular file")
        if info.st_size == 0:
            raise AudioError("empty: no data")
        try:
            stream = open_soundfile(file, None, path)
        except Refused as refused:
            file.seek(0)
            return _second_decoder(refused, file, file.close)
        return _unless_chained(stream, file, info.st_size, file.close)
    except BaseException:
        file.close()
        raise


def open_bytes(data) -> Stream:
    """Open a whole in-memory file (any format either decoder takes): bytes, or a bytearray or memoryview, read
    where it lies (``serve`` hands over the one copy of a request's body)."""
    if not len(data):
        raise AudioError("empty: no data")
    try:
        stream = open_soundfile(_BufferFile(data), None)
    except Refused as refused:
        return _second_decoder(refused, _BufferFile(data), None)
    return _unless_chained(stream, _BufferFile(data), len(data), None)


def open_seekable(file, size: int) -> Stream:
    """Open a seekable binary file object holding one whole file of ``size`` bytes (an archive's member read in
    place) as the same bytes in a file are opened; the stream closes ``file``. ``file.pread(size, offset)``, when it
    has one, reads without moving it."""
    if not size:
        raise AudioError("empty: no data")
    try:
        stream = open_soundfile(file, None)
    except Refused as refused:
        file.seek(0)
        return _second_decoder(refused, file, file.close)
    return _unless_chained(stream, file, size, file.close)


class _BufferFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying it (``io.BytesIO`` copies anything but bytes)."""

    def __init__(self, data):
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        piece = self._view[self._position:self._position + len(buffer)]
        memoryview(buffer).cast("B")[:len(piece)] = piece
        self._position += len(piece)
        return len(piece)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def pread(self, size: int, offset: int) -> bytes:
        return bytes(self._view[offset:offset + size])

    def getbuffer(self) -> memoryview:
        """The whole buffer, for a decoder that reads memory itself (``avblocks``)."""
        return self._view


def _unless_chained(stream: Stream, file, size: int, closer) -> Stream:
    """``stream``, unless FFmpeg takes the Ogg file: a chained Ogg's logical streams (libsndfile stops after the
    first), and Ogg Vorbis when FFmpeg decodes in blocks without Python's lock (``ffmpeg.native()``): FFmpeg's own
    Vorbis decoder holds the parity bar (samples within 4.8e-7 of libsndfile's, logits within 4.5e-5 of
    upstream's on the extra set: scripts/studies/native_opus_vorbis.py). If FFmpeg cannot open it, libsndfile
    keeps it."""

    def unchanged():
        if closer:
            stream.add_closer(closer)
        return stream

    if stream.codec not in ("vorbis", "opus", "flac") or size < 2 * 28:
        return unchanged()
    pread = file.pread if hasattr(file, "pread") else \
        lambda count, offset: os.pread(file.fileno(), count, offset)
    head = pread(28, 0)
    if head[:4] != b"OggS":
        return unchanged()
    if not (stream.codec == "vorbis" and ffmpeg.native()):
        start = max(0, size - sniff.TAIL)
        tail = pread(sniff.TAIL, start)
        if not sniff.is_chained_ogg(head, tail) or not ffmpeg.available():
            return unchanged()
    file.seek(0)
    try:
        taken = ffmpeg.open_source(file)
    except AudioError:
        return unchanged()
    stream.close()  # libsndfile's decoder; the file stays open for FFmpeg
    if closer:
        taken.add_closer(closer)
    return taken


def _second_decoder(refused: AudioError, file, closer) -> Stream:
    """What libsndfile refused (``refused``) from the seekable ``file``: MPEG audio behind junk, decoded by
    libsndfile from its first frame (``sniff``), else FFmpeg. When FFmpeg finds no container it knows either, or
    is not installed, libsndfile's answer stands."""

    head = file.read(4096)  # a short read first: a large one lets go of Python's lock long enough to lose it
    if not refused.known and sniff.packed(head):  # before the MP3 search: zstd keeps an MP3's frames as they are
        raise AudioError(not_audio(head)) from None
    if not sniff.is_container(head):
        head += read_exactly(file, sniff.SEARCHED + sniff.AHEAD - len(head))
    start = None if sniff.is_container(head) else sniff.mpeg_audio_start(head)
    if start:
        try:
            stream = open_soundfile(sniff.Window(file, start), None)
        except Refused:
            pass
        else:
            if closer:
                stream.add_closer(closer)
            return stream
    file.seek(0)
    if not ffmpeg.available():
        raise refused
    try:
        stream = ffmpeg.open_source(file)
    except ffmpeg.NotMedia:
        if sniff.is_container(head) and not refused.known:  # a container FFmpeg knows, cut short: its reason
            raise
        raise refused from None
    except AudioError:
        if refused.known:  # libsndfile knew the format: its reason is the one
            raise refused from None
        raise
    if closer:
        stream.add_closer(closer)
    return stream


def open_stdin(binary, raw_format: Optional[str] = None, rate: Optional[int] = None, channels: int = 1) -> Stream:
    """A stream on stdin: raw samples when ``raw_format`` is given, else sniffed from its first bytes (see the
    module's docstring for what is streamed and what is held in memory)."""
    if raw_format:
        return open_raw(binary, raw_format, rate, channels)
    head = read_exactly(binary, 12)
    if not head:
        raise AudioError("empty: no data")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        recorder = _Recorder(binary)
        try:
            stream = open_wav_stream(recorder)
        except AudioError:  # mu-law, ADPCM, MP3 in WAV..., or a header the stream parser refuses: libsndfile
            # decodes it whole, as the file (its answer, damaged or not)
            kept = head + _replayed(recorder.stop())
            return open_bytes(_read_whole(kept, binary, "a compressed or damaged WAV stream"))
        recorder.stop()
        return stream
    known = sniff.sndfile_format(head)
    if known:  # FLAC, Ogg, AIFF, CAF, AU, W64...: libsndfile decodes it, as the file
        return open_bytes(_read_whole(head, binary, f"{known} audio"))
    if head.startswith(b"ID3"):  # MP3 (its tag may hold a large cover): libsndfile decodes it, as the file
        return open_bytes(_read_whole(head, binary, "an MP3 stream"))
    if not sniff.is_container(head):
        head += read_exactly(binary, sniff.SEARCHED + sniff.AHEAD - len(head))
        if sniff.packed(head):  # before the MP3 search: zstd keeps an MP3's frames as they are
            raise AudioError(not_audio(head))
        if not sniff.is_container(head) and sniff.mpeg_audio_start(head) is not None:  # MP3, behind junk or not
            return open_bytes(_read_whole(head, binary, "an MP3 stream"))

    if not ffmpeg.available():
        raise AudioError("not a WAV, FLAC or OGG stream, and the FFmpeg decoder is not installed "
                         "(for headerless samples give --raw FORMAT --rate HZ)")
    if head[4:8] == b"ftyp" or head[:4] == b"caff":  # MP4/M4A/MOV/3GP, CAF: the index may be at the end
        # Held whole and opened as the same bytes in a file are, so both give one answer, damaged or not.
        return open_bytes(_read_whole(head, binary, "an MP4 or CAF stream"))
    reader = ffmpeg.StreamReader(head, binary, STDIN_MEMORY_LIMIT)
    try:
        stream = ffmpeg.open_source(reader, seekable=False)
    except ffmpeg.NotMedia:
        if sniff.is_container(head):  # a container FFmpeg knows, cut short: its reason, as for the file
            raise
        raise AudioError(not_audio(head)) from None
    except AudioError:  # a container FFmpeg cannot open as a stream (a damaged one whose index is at the end, a
        # stream header it finds only by seeking): opened whole, as the same bytes in a file are
        return open_bytes(_read_whole(_replayed(reader.stop()), binary, "a stream FFmpeg cannot read as it arrives"))
    reader.stop()
    return stream


class _Recorder:
    """A stream that keeps what is read from it until ``stop()`` (a WAV header, replayed when libsndfile must
    decode the stream whole)."""

    def __init__(self, binary):
        self._binary = binary
        self._kept = []
        self._size = 0

    def read(self, size: int = -1) -> bytes:
        return self._keep(self._binary.read(size))

    def read1(self, size: int = -1) -> bytes:
        read = getattr(self._binary, "read1", self._binary.read)
        return self._keep(read(size))

    def _keep(self, data: bytes) -> bytes:
        if self._kept is not None:
            self._kept.append(data)
            self._size += len(data)
            if self._size > STDIN_MEMORY_LIMIT:  # a header that skips gigabytes: no longer kept
                self._kept = []
        return data

    def stop(self) -> Optional[bytes]:
        """What was read, or None when it was over STDIN_MEMORY_LIMIT."""
        kept, self._kept = b"".join(self._kept or ()), None
        return None if self._size > STDIN_MEMORY_LIMIT else kept


def _replayed(kept: Optional[bytes]) -> bytes:
    """The bytes a stream's first reader kept, to be decoded whole; None: they were over the limit."""
    if kept is None:
        raise AudioError(f"this stream is held in memory to be decoded, and its header alone is over "
                         f"{STDIN_MEMORY_LIMIT >> 20} MB: save it to a file and give its path")
    return kept


def _read_whole(head: bytes, binary, what: str):
    """A stream that is decoded whole, read into memory up to STDIN_MEMORY_LIMIT. A reader with ``read_all`` (a
    request body of ``serve``, bounded by --max-body) fills one buffer in place: joined pieces would be held twice."""
    if hasattr(binary, "read_all"):
        data = binary.read_all(prefix=head)
    else:
        data = head + read_exactly(binary, STDIN_MEMORY_LIMIT + 1 - len(head))
    if len(data) > STDIN_MEMORY_LIMIT:
        raise AudioError(f"{what} on stdin is held in memory to be decoded, and this one is over "
                         f"{STDIN_MEMORY_LIMIT >> 20} MB: save it to a file and give its path")
    return data


def open_source(source) -> Stream:
    """Open what a caller holds: a path (str or os.PathLike), the bytes of a whole file, or a binary file object
    (a pipe too, read as stdin is: streamed where the format allows). Any format the command line reads."""
    if isinstance(source, (str, os.PathLike)):
        return open_file(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return open_bytes(bytes(source))
    if hasattr(source, "read"):
        return open_stdin(getattr(source, "buffer", source))  # a text stream's bytes (sys.stdin)
    raise TypeError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")


def load(source) -> Audio:
    """Decode a whole input into memory.

    Args:
        source: a path, the bytes of a whole file, or a binary file object (see ``open_source``).

    Returns:
        ``Audio``: ``samples`` (mono float32 at 32 kHz, as upstream's librosa.load gives them), and the source's
        ``sample_rate``, ``channels``, ``duration`` (seconds) and ``codec``.

    Raises:
        AudioError: the input cannot be decoded (the message is the command line's); OSError: it cannot be read.
    """
    return open_source(source).read()


def load_bytes(data: bytes) -> Audio:
    """Decode a whole in-memory file."""
    return open_bytes(data).read()
