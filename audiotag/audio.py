"""Decoding: files and streams to mono float32 blocks at the model's rate, never the whole file at once.

soundfile (libsndfile, bundled in its wheel) decodes first; what it refuses (AAC/M4A/MP4, WebM/Matroska, WMA,
AC-3, AMR, ALAC, video files...) goes to FFmpeg (``ffmpeg``), chosen by the bytes, never by the name. soxr resamples with the settings upstream's
``librosa.load`` uses ("soxr_hq", float32 in). soxr's streaming resampler gives the same samples as its one-shot
call, so decoding in blocks keeps peak memory flat and still reproduces upstream's waveform bit for bit.

stdin cannot seek, so a WAV stream is parsed here (header, then plain PCM until EOF: streaming writers put a
bogus size in the header), FLAC/OGG streams are read into memory before libsndfile sees them (the same samples
as the file), an MP4/MOV/3GP or CAF (whose index may come last) is read into memory for FFmpeg, and every other
container streams into FFmpeg as it arrives. What is held in memory is bounded by STDIN_MEMORY_LIMIT.
"""

import io
import math
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import soundfile
import soxr

TARGET_RATE = 32000
# Samples per decoded block, 2 MB as float32: 5.5 s of 48 kHz stereo. Each block makes one trip through downmix,
# checks, resampler and windowing in Python; with 1.4 s blocks those trips cost batch runs a tenth of their time.
# The bound holds for the block as decoded (many channels) and as resampled to 32 kHz (low rates).
BLOCK_SAMPLES = 1 << 19
MIN_RATE, MAX_RATE = 1000, 768000  # beyond this a "rate" is a broken header, not audio
MAX_CHANNELS = 1024  # libsndfile's own limit
SAMPLE_LIMIT = np.float32(1e4)  # float files can hold anything; far beyond full scale only overflows the power
RAW_FORMATS = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4"}
# Salvage past a bad frame (a corrupt FLAC frame makes libsndfile report "lost sync" and stop): frames skipped
# per try, growing, and tries per file, so garbage costs a bounded number of reopenings.
RESYNC_SKIPS = (4096, 16384, 65536, 262144)
MAX_RESYNCS = 32
EXACT_LENGTH = ("FLAC", "OGG")  # containers whose announced length is exact: ending short of it is a failure
_HOLD_BACK = 64  # resampled samples kept back until the end, so the total can be trimmed to librosa's length
STDIN_MEMORY_LIMIT = 1 << 30  # bytes of a stdin (or HTTP) input held in memory to be decoded whole (FLAC, Ogg, MP4)


class AudioError(ValueError):
    """An input that cannot be tagged; the message says what is wrong, for one line on stderr."""


class Refused(AudioError):
    """libsndfile would not open the input at all: the second decoder may take it."""


@dataclass(frozen=True)
class Audio:
    """A whole decoded clip: mono float32 samples at TARGET_RATE, plus what the source was."""

    samples: np.ndarray
    sample_rate: int  # of the source
    channels: int  # of the source
    duration: float  # seconds, of the source
    codec: Optional[str] = None  # what was decoded, in FFmpeg's names: "pcm_s16le", "flac", "mp3", "aac"...


class Stream:
    """An open input: its rate and channel count are known at once, its length once it has been read."""

    def __init__(self, blocks: Iterator[np.ndarray], rate: int, channels: int, closer=None):
        _check_format(rate, channels)
        self.rate = rate
        self.channels = channels
        self.frames = 0  # source frames read so far; the total once ``samples()`` is exhausted
        self.known_frames = None  # the length the container announces, when it does
        self.truncated = False  # the blocks were cut short on purpose (``limits``)
        self.warning = None  # what the decoder could not read, when it gave what it had (salvage)
        self.codec = None  # what is decoded, in FFmpeg's names ("pcm_s16le", "aac", ...)
        self._blocks = blocks  # (frames, channels) float32
        self._closer = closer

    @property
    def duration(self) -> float:
        return self.frames / self.rate

    def samples(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks at TARGET_RATE, ``ceil(frames * 32000 / rate)`` samples in all (as librosa)."""
        resampler = None
        if self.rate != TARGET_RATE:
            resampler = soxr.ResampleStream(self.rate, TARGET_RATE, 1, dtype="float32", quality="HQ")
        finite = 0
        held = np.zeros(0, np.float32)
        out_total = 0
        try:
            for block in self._blocks:
                if len(block) == 0:
                    continue
                self.frames += len(block)
                mono = _downmix(block)
                if -SAMPLE_LIMIT <= mono.min() and mono.max() <= SAMPLE_LIMIT:  # false on NaN too
                    finite += len(mono)
                else:
                    mono, valid = _repair(mono, block)
                    finite += valid
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                held = np.concatenate([held, mono])
                if len(held) > _HOLD_BACK:
                    out, held = held[:-_HOLD_BACK], held[-_HOLD_BACK:]
                    out_total += len(out)
                    yield out
            if resampler is not None:
                held = np.concatenate([held, resampler.resample_chunk(np.zeros(0, np.float32), last=True)])
        finally:
            self.close()
        if self.frames == 0:
            raise AudioError("no audio samples")
        if finite == 0:
            raise AudioError("no valid samples: every sample is NaN or infinite")
        wanted = math.ceil(self.frames * TARGET_RATE / self.rate) - out_total
        yield np.pad(held[:wanted], (0, max(0, wanted - len(held))))

    def read(self) -> Audio:
        """The whole clip in memory (for clips the caller wants whole, e.g. one pass over the file)."""
        samples = np.concatenate(list(self.samples()))
        return Audio(samples, self.rate, self.channels, self.duration, self.codec)

    def map_blocks(self, transform) -> None:
        """Pass the source blocks through ``transform`` (an iterator of blocks to one), e.g. to cut an input."""
        self._blocks = transform(self._blocks)

    def add_closer(self, closer) -> None:
        """Also call ``closer`` on close (after what the stream already closes)."""
        first = self._closer
        if first is None:
            self._closer = closer
            return

        def both():
            first()
            closer()

        self._closer = both

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


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
            raise AudioError("empty file")
        # libsndfile reads the descriptor itself: a Python file object would call back into Python (and take
        # the GIL) for every 4 kB read.
        try:
            stream = _open_soundfile(file.fileno(), None)
        except Refused as refused:
            file.seek(0)
            return _second_decoder(refused, file, file.close)
        return _unless_chained(stream, file, info.st_size, file.close)
    except BaseException:
        file.close()
        raise


def open_bytes(data: bytes) -> Stream:
    """Open a whole in-memory file (any format either decoder takes)."""
    if not data:
        raise AudioError("no data")
    try:
        stream = _open_soundfile(io.BytesIO(data), None)
    except Refused as refused:
        return _second_decoder(refused, io.BytesIO(data), None)
    return _unless_chained(stream, io.BytesIO(data), len(data), None)


def _unless_chained(stream: Stream, file, size: int, closer) -> Stream:
    """``stream``, unless it is the first of a chained Ogg's logical streams: then FFmpeg decodes them all."""
    from . import ffmpeg, sniff

    def unchanged():
        if closer:
            stream.add_closer(closer)
        return stream

    if stream.codec not in ("vorbis", "opus", "flac") or size < 2 * 28:
        return unchanged()
    head = os.pread(file.fileno(), 28, 0) if isinstance(file, io.BufferedReader) else file.getvalue()[:28]
    if head[:4] != b"OggS":
        return unchanged()
    start = max(0, size - sniff.TAIL)
    tail = os.pread(file.fileno(), sniff.TAIL, start) if isinstance(file, io.BufferedReader) else \
        file.getvalue()[start:]
    if not sniff.is_chained_ogg(head, tail) or not ffmpeg.available():
        return unchanged()
    stream.close()  # libsndfile's decoder; the file stays open for FFmpeg
    file.seek(0)
    chained = ffmpeg.open_source(file)
    if closer:
        chained.add_closer(closer)
    return chained


def _second_decoder(refused: AudioError, file, closer) -> Stream:
    """What libsndfile refused (``refused``) from the seekable ``file``: MPEG audio behind junk, decoded by
    libsndfile from its first frame (``sniff``), else FFmpeg. When FFmpeg finds no container it knows either, or
    is not installed, libsndfile's answer stands."""
    from . import ffmpeg, sniff

    head = file.read(sniff.SEARCHED)
    start = None if sniff.is_container(head) else sniff.mpeg_audio_start(head)
    if start:
        try:
            stream = _open_soundfile(sniff.Window(file, start), None)
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
        if sniff.is_container(head):  # a container FFmpeg knows, cut short: its reason, not "not recognised"
            raise
        raise refused from None
    except AudioError:
        if "Format not recognised" not in str(refused):  # libsndfile knew the format: its reason is the one
            raise refused from None
        raise
    if closer:
        stream.add_closer(closer)
    return stream


def open_raw(binary, raw_format: str, rate: int, channels: int = 1) -> Stream:
    """Headerless little-endian interleaved samples from a binary file object, read as they arrive."""
    _check_format(rate, channels)
    stream = Stream(_pcm_blocks(binary, np.dtype(RAW_FORMATS[raw_format]), channels, rate), rate, channels)
    stream.codec = "pcm_" + raw_format
    return stream


def open_stdin(binary, raw_format: Optional[str] = None, rate: Optional[int] = None, channels: int = 1) -> Stream:
    """A stream on stdin: raw samples when ``raw_format`` is given, else sniffed from its first bytes (see the
    module's docstring for what is streamed and what is held in memory)."""
    if raw_format:
        return open_raw(binary, raw_format, rate, channels)
    head = _read_exactly(binary, 12)
    if not head:
        raise AudioError("no data")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        recorder = _Recorder(binary)
        try:
            stream = _open_wav_stream(recorder)
        except _WavEncoding:  # mu-law, ADPCM, MP3 in WAV...: libsndfile decodes it whole, as the file
            return open_bytes(_read_whole(head + recorder.stop(), binary, "a compressed WAV stream"))
        recorder.stop()
        return stream
    if head[:4] in (b"fLaC", b"OggS"):
        return open_bytes(_read_whole(head, binary, "a FLAC or Ogg stream"))
    from . import ffmpeg, sniff

    if head.startswith(b"ID3"):  # MP3 (its tag may hold a large cover): libsndfile decodes it, as the file
        return open_bytes(_read_whole(head, binary, "an MP3 stream"))
    if not sniff.is_container(head):
        head += _read_exactly(binary, sniff.SEARCHED - len(head))
        if not sniff.is_container(head) and sniff.mpeg_audio_start(head) is not None:  # MP3, behind junk or not
            return open_bytes(_read_whole(head, binary, "an MP3 stream"))

    if not ffmpeg.available():
        raise AudioError("not a WAV, FLAC or OGG stream, and the FFmpeg decoder is not installed "
                         "(for headerless samples give --raw FORMAT --rate HZ)")
    try:
        if head[4:8] == b"ftyp" or head[:4] == b"caff":  # MP4/M4A/MOV/3GP, CAF: the index may be at the end
            return ffmpeg.open_source(io.BytesIO(_read_whole(head, binary, "an MP4 or CAF stream")))
        return ffmpeg.open_source(ffmpeg.StreamReader(head, binary), seekable=False)
    except ffmpeg.NotMedia:
        raise AudioError("not an audio format audiotag decodes (for headerless samples give --raw FORMAT "
                         "--rate HZ)") from None


class _Recorder:
    """A stream that keeps what is read from it until ``stop()`` (a WAV header, replayed when libsndfile must
    decode the stream whole)."""

    def __init__(self, binary):
        self._binary = binary
        self._kept = []

    def read(self, size: int = -1) -> bytes:
        return self._keep(self._binary.read(size))

    def read1(self, size: int = -1) -> bytes:
        read = getattr(self._binary, "read1", self._binary.read)
        return self._keep(read(size))

    def _keep(self, data: bytes) -> bytes:
        if self._kept is not None:
            self._kept.append(data)
        return data

    def stop(self) -> bytes:
        kept, self._kept = b"".join(self._kept or ()), None
        return kept


class _WavEncoding(AudioError):
    """A WAV stream in an encoding the stream parser does not read (libsndfile may)."""


def _read_whole(head: bytes, binary, what: str) -> bytes:
    """A stream that is decoded whole, read into memory up to STDIN_MEMORY_LIMIT."""
    data = head + _read_exactly(binary, STDIN_MEMORY_LIMIT + 1 - len(head))
    if len(data) > STDIN_MEMORY_LIMIT:
        raise AudioError(f"{what} on stdin is held in memory to be decoded, and this one is over "
                         f"{STDIN_MEMORY_LIMIT >> 20} MB: save it to a file and give its path")
    return data


def load(path) -> Audio:
    """Decode a whole file."""
    return open_file(path).read()


def load_bytes(data: bytes) -> Audio:
    """Decode a whole in-memory file."""
    return open_bytes(data).read()


def from_array(data: np.ndarray, rate: int) -> Audio:
    """(frames, channels) or (frames,) samples at ``rate`` -> a clip at TARGET_RATE."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise AudioError(f"samples must be (frames,) or (frames, channels), got shape {data.shape}")
    step = block_frames(data.shape[1], int(rate))
    blocks = (data[i:i + step] for i in range(0, len(data), step))
    return Stream(blocks, int(rate), data.shape[1]).read()


def block_frames(channels: int, rate: int) -> int:
    """Frames per decoded block: at most BLOCK_SAMPLES samples, before and after resampling to TARGET_RATE."""
    return max(1, min(BLOCK_SAMPLES // max(1, channels), BLOCK_SAMPLES * rate // TARGET_RATE))


def _open_soundfile(file, closer) -> Stream:
    try:
        sound = soundfile.SoundFile(file, closefd=False)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise Refused(f"cannot decode: {_sndfile_reason(error)}") from error
    kind = f"{sound.format} {sound.subtype}"
    codec = _sndfile_codec(sound.format, sound.subtype)
    current = [sound]  # a resync reopens the file: the decoder that is open now

    def close():
        current[0].close()
        if closer:
            closer()

    def blocks():
        frames = block_frames(sound.channels, sound.samplerate)
        decoded = resyncs = 0
        reason = None  # the last decoding error passed
        while True:
            start = current[0].tell()
            out = np.empty((frames, sound.channels), np.float32)
            failure = got = None
            try:
                block = current[0].read(frames, dtype="float32", always_2d=True, out=out)
            except (soundfile.LibsndfileError, RuntimeError) as error:
                failure = error
                reason = _sndfile_reason(error)
                got = _frames_before_error(current[0], start, frames)
            else:
                if len(block) == 0 and sound.format in EXACT_LENGTH and start < (stream.known_frames or 0):
                    reason = f"the decoder stopped at {start / sound.samplerate:.1f} s"  # a hole it cannot cross
                    got = 0
            if got is not None:
                if got:  # the frames decoded before the bad one are good
                    decoded += got
                    yield out[:got]
                skipped = _resync(current, file, start + got) if resyncs < MAX_RESYNCS else None
                if skipped is None:
                    if not decoded:
                        raise AudioError(f"cannot decode {kind}: {reason}") from failure
                    stream.warning = _salvage_warning(decoded, max(stream.known_frames or 0, start + got),
                                                      sound.samplerate, reason, resyncs)
                    return
                resyncs += 1
                for offset in range(0, skipped, frames):  # the frames skipped are silence: times stay right
                    yield np.zeros((min(frames, skipped - offset), sound.channels), np.float32)
                continue
            if len(block) == 0:
                if reason is not None:
                    stream.warning = _salvage_warning(decoded, start, sound.samplerate, reason, resyncs)
                return
            decoded += len(block)
            yield block

    try:
        stream = Stream(blocks(), sound.samplerate, sound.channels, close)
    except AudioError:
        close()
        raise
    stream.codec = codec
    if sound.seekable() and 0 < sound.frames < 1 << 62:
        stream.known_frames = sound.frames
    return stream


_BIG_ENDIAN = ("AIFF", "AU", "CAF", "SVX", "NIST", "IRCAM", "MAT4", "MAT5", "PVF", "XI")
_SNDFILE_CODECS = {"ULAW": "pcm_mulaw", "ALAW": "pcm_alaw", "IMA_ADPCM": "adpcm_ima_wav", "MS_ADPCM": "adpcm_ms",
                   "GSM610": "gsm_ms", "VORBIS": "vorbis", "OPUS": "opus", "MPEG_LAYER_I": "mp1",
                   "MPEG_LAYER_II": "mp2", "MPEG_LAYER_III": "mp3", "PCM_S8": "pcm_s8", "PCM_U8": "pcm_u8"}
_PCM_CODECS = {"PCM_16": "pcm_s16", "PCM_24": "pcm_s24", "PCM_32": "pcm_s32", "FLOAT": "pcm_f32",
               "DOUBLE": "pcm_f64"}


def _sndfile_codec(fmt: str, subtype: str) -> str:
    """libsndfile's format and subtype in FFmpeg's codec names (one vocabulary for the ``codec`` field)."""
    if fmt == "FLAC" or subtype == "FLAC":
        return "flac"
    if subtype.startswith("ALAC"):
        return "alac"
    if subtype in _PCM_CODECS:
        return _PCM_CODECS[subtype] + ("be" if fmt in _BIG_ENDIAN else "le")
    return _SNDFILE_CODECS.get(subtype, subtype.lower())


def _salvage_warning(decoded: int, whole: int, rate: int, reason: str, resyncs: int) -> str:
    """E.g. "decoded 16.2 of 30.0 s: flac decoder lost sync (2 bad spots skipped)"."""
    text = f"decoded {decoded / rate:.1f} of {whole / rate:.1f} s: {reason.removeprefix('Error : ').rstrip('.')}"
    return text + (f" ({resyncs} bad spot{'s' if resyncs > 1 else ''} skipped)" if resyncs else "")


def _frames_before_error(sound, start: int, frames: int) -> int:
    """How many frames a read that failed had decoded into its buffer (libsndfile's position moved on)."""
    try:
        return max(0, min(frames, sound.tell() - start))
    except (soundfile.LibsndfileError, RuntimeError):
        return 0


def _resync(current: list, file, position: int) -> Optional[int]:
    """Past a bad frame: reopen the file and seek a little further each try (a seek finds the next frame that
    parses). Returns the frames skipped, or None when no later position decodes; ``current[0]`` is then the new
    decoder."""
    old = current[0]
    if not old.seekable():
        return None
    for skip in RESYNC_SKIPS:
        if old.frames and position + skip >= old.frames:
            return None
        try:
            if isinstance(file, int):
                os.lseek(file, 0, os.SEEK_SET)
            else:
                file.seek(0)
            fresh = soundfile.SoundFile(file, closefd=False)
        except (soundfile.LibsndfileError, RuntimeError, OSError):
            return None
        try:
            fresh.seek(position + skip)
            fresh.read(1, dtype="float32", always_2d=True)  # the next frame must decode, too
            fresh.seek(position + skip)
        except (soundfile.LibsndfileError, RuntimeError):
            fresh.close()
            continue
        old.close()
        current[0] = fresh
        return skip
    return None


def _open_wav_stream(binary) -> Stream:
    """Parse a RIFF/WAVE header from a non-seekable stream; the samples follow as plain PCM."""
    fmt = None
    while True:
        header = _read_exactly(binary, 8)
        if len(header) < 8:
            raise AudioError("WAV stream ends before its data chunk")
        chunk, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"data":
            break
        if chunk == b"fmt ":
            if size > 1 << 16:
                raise AudioError(f"WAV stream has an implausible fmt chunk of {size} bytes")
            fmt = _read_exactly(binary, size + (size & 1))[:size]
        else:  # cover art, tags, padding: skipped a block at a time, whatever their size
            _skip(binary, size + (size & 1))
    if fmt is None or len(fmt) < 16:
        raise AudioError("WAV stream has no valid fmt chunk before its data")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID
        tag = struct.unpack("<H", fmt[24:26])[0]
    dtype = {(1, 8): "u1", (1, 16): "<i2", (1, 24): "i3", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}.get((tag, bits))
    if dtype is None:
        raise _WavEncoding(f"WAV stream encoding not supported (format tag {tag:#x}, {bits} bits)")
    # Streaming writers cannot know the size: 0 and 0xFFFFFFFF mean "until the end of the stream".
    limit = None if size in (0, 0xFFFFFFFF) else size
    stream = Stream(_pcm_blocks(binary, dtype, channels, rate, limit), rate, channels)
    stream.codec = _WAV_CODECS[dtype]
    return stream


_WAV_CODECS = {"u1": "pcm_u8", "<i2": "pcm_s16le", "i3": "pcm_s24le", "<i4": "pcm_s32le", "<f4": "pcm_f32le",
               "<f8": "pcm_f64le"}


def _pcm_blocks(binary, dtype, channels: int, rate: int, limit: Optional[int] = None) -> Iterator[np.ndarray]:
    """Interleaved little-endian PCM from a stream, as (frames, channels) float32 blocks; a cut-off frame is dropped."""
    width = 3 if dtype == "i3" else np.dtype(dtype).itemsize
    frame_bytes = width * channels
    block_bytes = block_frames(channels, rate) * frame_bytes
    pending = b""
    remaining = limit
    while remaining is None or remaining > 0:
        want = block_bytes if remaining is None else min(remaining, block_bytes)
        chunk = binary.read1(want) if hasattr(binary, "read1") else binary.read(want)
        if not chunk:
            break
        if remaining is not None:
            remaining -= len(chunk)
        pending += chunk
        usable = len(pending) - len(pending) % frame_bytes
        if usable:
            yield _pcm_to_float(pending[:usable], dtype).reshape(-1, channels)
            pending = pending[usable:]


def _pcm_to_float(data: bytes, dtype) -> np.ndarray:
    """PCM bytes to float32 in [-1, 1), scaled as libsndfile scales them."""
    if dtype == "i3":  # 24-bit: widen to int32 by putting the three bytes on top
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
        wide = np.zeros((len(raw), 4), np.uint8)
        wide[:, 1:] = raw
        return (wide.view("<i4")[:, 0] / np.float32(2 ** 31)).astype(np.float32)
    samples = np.frombuffer(data, dtype)
    if dtype == "u1":
        return ((samples.astype(np.float32) - 128) / np.float32(128)).astype(np.float32)
    if samples.dtype.kind == "i":
        return (samples / np.float32(2 ** (8 * samples.dtype.itemsize - 1))).astype(np.float32)
    return samples.astype(np.float32)


def _downmix(block: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,): the mean over channels, as librosa.to_mono."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0], dtype=np.float32)
    # Channel by channel, in librosa's order (its mean runs over the outer axis of (channels, frames)):
    # the same sums as mean(axis=1), which reduces each 2-sample row separately and is 20 times slower.
    with np.errstate(over="ignore", invalid="ignore"):
        mono = block[:, 0] + block[:, 1]
        for channel in range(2, block.shape[1]):
            mono += block[:, channel]
        mono /= np.float32(block.shape[1])
    return mono


def _repair(mono: np.ndarray, block: np.ndarray) -> tuple:
    """A block with NaN, infinite or absurdly large samples: (usable mono samples, how many were finite).

    Frames of huge finite samples whose float32 channel sum overflowed are averaged in float64 instead; NaN and
    infinite samples become silence; magnitudes beyond SAMPLE_LIMIT are clipped (they would overflow the power).
    """
    if block.shape[1] > 1:
        overflowed = ~np.isfinite(mono) & np.isfinite(block).all(axis=1)
        if overflowed.any():
            mono[overflowed] = block[overflowed].mean(axis=1, dtype=np.float64)
    finite = np.isfinite(mono)
    if not finite.all():
        mono = np.where(finite, mono, np.float32(0))
    return np.clip(mono, -SAMPLE_LIMIT, SAMPLE_LIMIT), int(np.count_nonzero(finite))


def _check_format(rate, channels) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"unsupported sample rate {rate} Hz (supported: {MIN_RATE}..{MAX_RATE})")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"unsupported channel count {channels} (supported: 1..{MAX_CHANNELS})")


def _read_exactly(binary, size: int) -> bytes:
    """Up to ``size`` bytes: fewer only at the end of the stream (pipes return short reads)."""
    parts = []
    while size > 0:
        chunk = binary.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _skip(binary, size: int) -> None:
    while size > 0:
        chunk = binary.read(min(size, 1 << 20))
        if not chunk:
            raise AudioError("WAV stream ends before its data chunk")
        size -= len(chunk)


def _sndfile_reason(error) -> str:
    """libsndfile's message without soundfile's "Error opening <repr of the file>:" prefix; one misleading message
    (libsndfile's answer when its MPEG decoder rejects a file's first frames) says what is really wrong."""
    reason = (getattr(error, "error_string", None) or str(error)).strip()
    if reason.startswith("File does not exist or is not a regular file"):
        return "no valid audio stream at its start (the decoder could not parse its first frames)"
    return reason
