"""The second decoder: FFmpeg's libraries, for what libsndfile refuses.

AAC/M4A/MP4, WebM/Matroska, WMA/ASF, AC-3/E-AC-3, AMR, ALAC, FLAC in Ogg or Matroska, chained Ogg, the audio of
video files; and Ogg Vorbis when avblocks is in use (``decode._unless_chained``: FFmpeg's Vorbis decoder holds
upstream's parity bar). libsndfile stays the first decoder for everything else, so what it decoded before keeps
its samples bit for bit. The FFmpeg here is a slim LGPL build made by scripts/build/build_ffmpeg.sh: audio
demuxers, decoders and parsers only, no network, no encoders.

Two ways in: ``avblocks`` (our C over the same libraries: whole blocks per call without Python's lock, so
``--jobs`` threads scale) when its library is built, else PyAV (a frame per step, each under the lock). The
environment variable AUDIOTAG_FFMPEG=pyav picks PyAV (for comparisons). Only the first (default) audio stream is
decoded; video packets are read past, never decoded. Samples come out as float32 scaled as libsndfile scales
them (int16 / 32768, ...), in blocks of ``audio.block_frames``; resampling stays with ``audio.Stream`` (soxr), as
for every decoder.
"""

import os
from typing import Optional

import numpy as np

from . import avblocks
from . import stream as audio

# A stream that changes rate or channel count midway (HE-AAC signalling, a spliced MPEG-TS, a chained Ogg) is
# kept at its first rate and layout: later frames are resampled (soxr, one shot) and down- or up-mixed to it.
_MAX_BAD_PACKETS = 1000  # packets that fail to decode before an input counts as garbage
# PyAV 12 finds a frame's planes through its channel layout: with none (FFmpeg names no layout for 10-channel
# Vorbis, say) it walks past the real ones into garbage pointers, and reading them crashes. Such frames are
# skipped as bad ones. Past 16 channels it misreads the layout itself (a different count on every run, and the
# decoder then decodes with it), so those streams are refused.
_NO_LAYOUT = "channels without a channel layout (PyAV 12 cannot read them)"
_MAX_CHANNELS = 16
_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32, "dbl": np.float64}

# Decoder names to the codec's own name (FFmpeg's codec id names), so a record says "opus", not "libopus".
_CODEC_NAMES = {"libopus": "opus", "libopencore_amrnb": "amr_nb", "amrwb": "amr_wb", "mp3float": "mp3",
                "mp2float": "mp2", "mp1float": "mp1", "mp3adufloat": "mp3adu", "mp3on4float": "mp3on4",
                "aac_fixed": "aac", "ac3_fixed": "ac3", "dca": "dts", "real_144": "ra_144", "real_288": "ra_288"}

_av = None


def _import_av():
    """PyAV, imported on the first input libsndfile refuses (``import av`` costs about 70 ms), with FFmpeg's own
    log lines off: a bad input is reported once, by audiotag."""
    global _av
    if _av is None:
        import av
        import av.logging

        av.logging.set_level(av.logging.PANIC)
        _av = av
    return _av


def native() -> bool:
    """Whether inputs are decoded by ``avblocks`` (else by PyAV)."""
    return os.environ.get("AUDIOTAG_FFMPEG") != "pyav" and avblocks.available()


def describe() -> str:
    """How FFmpeg's formats are decoded here, for --version."""
    if native():
        return "FFmpeg 5.1 (slim LGPL build) in whole blocks, without Python's lock"
    why = "AUDIOTAG_FFMPEG=pyav" if os.environ.get("AUDIOTAG_FFMPEG") == "pyav" else avblocks.missing()
    if not available():
        return f"FFmpeg: not installed ({why})"
    return f"FFmpeg 5.1 through PyAV {_av.__version__}, a frame at a time under Python's lock ({why})"


def available() -> bool:
    if native():
        return True
    try:
        _import_av()
    except ImportError:
        return False
    return True


NO_DECODER = "cannot decode: its audio is in a codec audiotag does not decode, or its header is damaged"


class NotMedia(audio.AudioError):
    """FFmpeg found no container it knows in the input: the caller may prefer libsndfile's message."""


def open_source(source, seekable: bool = True) -> audio.Stream:
    """Decode ``source`` (a binary file object; ``seekable`` False for a pipe) with FFmpeg."""
    if native():
        return _open_native(source, seekable)
    av = _import_av()
    if hasattr(source, "read") and hasattr(source, "name"):
        source = _Unnamed(source)  # PyAV passes a file object's name to FFmpeg, which guesses by its extension
    try:
        # No options: PyAV 12 frees per-stream option arrays sized before probing, and a container whose
        # streams appear while it is probed (FLV) then crashes it.
        container = av.open(source, mode="r", metadata_errors="ignore")
    except av.error.EOFError as error:  # too short to probe: a container header and nothing after it, or noise
        raise NotMedia("cannot decode: it ends before any audio") from error
    except av.error.InvalidDataError as error:
        raise NotMedia(f"cannot decode: {_reason(error)}") from error
    except (av.error.FFmpegError, ValueError) as error:
        raise audio.AudioError(f"cannot decode: {_reason(error)}") from error
    try:
        return _stream(container, seekable)
    except BaseException:
        container.close()
        raise


def _open_native(source, seekable: bool) -> audio.Stream:
    """``open_source`` through ``avblocks``: the same stream, record and messages as through PyAV, but blocks
    decoded whole, without the lock. Layouts PyAV could not read (10-channel Vorbis, 17 channels) decode here."""
    try:
        decoder = avblocks.Decoder(source, _MAX_BAD_PACKETS)
    except avblocks.Error as error:
        if error.code == _AVERROR_EOF:  # too short to probe: a container header and nothing after it, or noise
            raise NotMedia("cannot decode: it ends before any audio") from None
        if error.code == avblocks.NO_AUDIO:
            what = f" (it holds {', '.join(sorted(error.stream_kinds))})" if error.stream_kinds else ""
            raise audio.AudioError(f"no audio stream in this {error.format_name.split(',')[0]} file{what}") \
                from None
        if error.code == avblocks.NO_DECODER:
            raise audio.AudioError(NO_DECODER) from None
        kind = NotMedia if error.code == _AVERROR_INVALIDDATA else audio.AudioError
        raise kind(f"cannot decode: {_code_reason(error.code)}") from None
    try:
        return _native_stream(decoder, seekable)
    except BaseException:
        decoder.close()
        raise


def _native_stream(decoder, seekable: bool) -> audio.Stream:
    codec = _CODEC_NAMES.get(decoder.codec_name, decoder.codec_name)
    try:
        first = decoder.first()
    except avblocks.Error:  # more bad packets than an input may have
        first = None
    bad, bad_error, stop_error = decoder.bad()
    if bad > _MAX_BAD_PACKETS:
        raise audio.AudioError(f"cannot decode: {_code_reason(bad_error)} ({bad} bad packets)")
    if first is None:
        error = bad_error or stop_error
        raise audio.AudioError(f"cannot decode {codec}: {_code_reason(error) if error else 'no audio frames'}")
    rate, channels = first
    audio.check_format(rate, channels)

    def blocks():
        decoded, step = 0, audio.block_frames(channels, rate)
        while True:
            try:
                # the first call: no lock taken before it; the block comes back downmixed and checked when it can
                block = decoder.read(step, audio.BLOCK_SAMPLES, (rate, channels, audio.SAMPLE_LIMIT))
            except avblocks.Error:
                block = None
            bad, bad_error, stop_error = decoder.bad()
            if bad > _MAX_BAD_PACKETS:
                raise audio.AudioError(f"cannot decode: {_code_reason(bad_error)} ({bad} bad packets)")
            if block is None:
                break
            samples = _conform(block, rate, channels)
            decoded += len(samples)
            yield samples
        if bad or (stop_error and seekable):
            state = {"bad": bad, "reason": _code_reason(bad_error) if bad else None,
                     "stopped": _code_reason(stop_error) if stop_error else None}
            stream.warning = _warning(decoded, stream.known_frames, rate, state)

    stream = audio.Stream(blocks(), rate, channels, decoder.close)
    stream.codec = codec
    seconds = decoder.duration()
    if seekable and seconds > 0:
        stream.known_frames = round(seconds * rate)
    return stream


def _stream(container, seekable: bool) -> audio.Stream:
    av = _av
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams})
        what = f" (it holds {', '.join(kinds)})" if kinds else ""
        raise audio.AudioError(f"no audio stream in this {container.format.name.split(',')[0]} file{what}")
    # The first audio stream: muxers put the default one first (PyAV 12 shows no disposition). Packets of the
    # other streams (a video file's video) are read past by demux(), never decoded.
    source = container.streams.audio[0]
    context = source.codec_context
    if context is None or context.codec is None:  # a codec this build has no decoder for
        raise audio.AudioError(NO_DECODER)
    # PyAV takes FFmpeg's default decoder: its own Opus decoder, in Ogg too (avblocks keeps libopus there, as
    # libsndfile; a chained Ogg Opus differs by about 2e-7 between the two paths).
    if context.codec.name == "libopus":
        context.options = {"request_sample_fmt": "flt"}  # libopus in float: as libsndfile's Opus (1.8e-7)
    codec = _CODEC_NAMES.get(context.codec.name, context.codec.name)
    if context.channels > _MAX_CHANNELS:
        raise audio.AudioError(f"cannot decode {codec}: {context.channels} channels (at most {_MAX_CHANNELS} "
                               f"through FFmpeg: PyAV 12 misreads the layout of more)")
    state = {"bad": 0, "stopped": None, "reason": None}
    frames = _frames(container, source, state)
    first = next(frames, None)
    if first is None:
        reason = state["reason"] or state["stopped"]
        raise audio.AudioError(f"cannot decode {codec}: "
                               f"{'no audio frames' if reason in (None, 'End of file') else reason}")
    rate, channels = first.sample_rate, len(first.layout.channels)
    audio.check_format(rate, channels)

    def blocks():
        decoded = 0
        for block in _gathered(_chain(first, frames), audio.block_frames(channels, rate)):
            samples = _conform(block, rate, channels)
            decoded += len(samples)
            yield samples
        # On a pipe, a container error after the audio is how some demuxers (WavPack) meet the end they cannot
        # seek to: what arrived was tagged, and there is no length to say it fell short of.
        if state["bad"] or (state["stopped"] and seekable):
            stream.warning = _warning(decoded, stream.known_frames, rate, state)

    stream = audio.Stream(blocks(), rate, channels, container.close)
    stream.codec = codec
    if seekable:
        seconds = None
        if source.duration and source.time_base:
            seconds = float(source.duration * source.time_base)
        elif container.duration:
            seconds = container.duration / av.time_base
        if seconds and seconds > 0:
            stream.known_frames = round(seconds * rate)
    return stream


def _chain(first, rest):
    yield first
    yield from rest


def _frames(container, source, state):
    """The decoded audio frames. A packet that fails to decode is skipped (counted in ``state``: a bad frame is
    resynced past); a container that cannot be read on ends the stream there (``state["stopped"]``), and what
    came before stands."""
    av = _av
    try:
        for packet in container.demux(source):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as error:
                _bad(state, _reason(error))
                continue
            for frame in decoded:
                if not frame.samples:
                    continue
                channels = len(frame.layout.channels)
                if not channels:
                    _bad(state, f"{source.codec_context.channels} {_NO_LAYOUT}")
                elif channels > _MAX_CHANNELS:  # a stream gone wrong midway: its planes cannot be trusted
                    _bad(state, f"frames of {channels} channels (at most {_MAX_CHANNELS} through FFmpeg)")
                else:
                    yield frame
    except av.error.FFmpegError as error:
        state["stopped"] = _reason(error)


def _bad(state: dict, reason: str) -> None:
    """One more packet or frame skipped; too many, and the input counts as garbage."""
    state["bad"] += 1
    state["reason"] = reason
    if state["bad"] > _MAX_BAD_PACKETS:
        raise audio.AudioError(f"cannot decode: {reason} ({state['bad']} bad packets)")


def _gathered(frames, step: int):
    """(samples (frames, channels) float32, rate) in blocks of about ``step`` frames. Each frame is copied into
    the block at once (and so freed: FFmpeg reuses its buffers), and the block is converted to float when full:
    PyAV's to_ndarray per frame (430 frames per 10 s of AAC) cost more than FFmpeg's decoding, and frames kept
    alive until their block was joined cost a third of it. A frame of another format, rate or layout, or one
    that does not fit, starts a block."""
    block, kind, room, filled = None, None, 0, 0
    for frame in frames:
        frame_kind = (frame.format.name, frame.sample_rate, len(frame.layout.channels))
        count = frame.samples
        if block is not None and (frame_kind != kind or filled + count > room):
            yield _finished(block, filled, kind)
            block = None
        if block is None:
            kind, room, filled = frame_kind, max(step, count), 0
            block, width = _new_block(kind, room)
            rows = list(block)
        start, end = filled * width, (filled + count) * width
        try:
            for row, plane in zip(rows, frame.planes):
                row[start:end] = np.frombuffer(plane, row.dtype, end - start)
        except ValueError as error:  # a plane smaller than the frame says
            raise audio.AudioError(f"cannot decode: {error}") from error
        filled += count
        if filled >= step:
            yield _finished(block, filled, kind)
            block = None
    if block is not None and filled:
        yield _finished(block, filled, kind)


def _new_block(kind: tuple, frames: int):
    """(room for ``frames`` frames in the decoder's own sample format, values per frame in a row): a row per
    channel for planar formats, else one row of interleaved frames."""
    name, _, channels = kind
    dtype = _DTYPES.get(name.rstrip("p"))
    if dtype is None:
        raise audio.AudioError(f"cannot decode: unexpected sample format {name}")
    if name.endswith("p"):
        return np.empty((channels, frames), dtype), 1
    return np.empty((1, frames * channels), dtype), channels


def _finished(block: np.ndarray, filled: int, kind: tuple):
    """A block's first ``filled`` frames as (samples (frames, channels) float32, rate), scaled as libsndfile
    scales integer samples. Planar data stays planar, as a transposed view: the downmix reads a channel at a
    time, and interleaving the block first cost more than FFmpeg took to decode it."""
    name, rate, channels = kind
    data = block[:, :filled].T if name.endswith("p") else block[0, :filled * channels].reshape(-1, channels)
    base = name.rstrip("p")
    if base == "u8":
        return (data.astype(np.float32) - 128) / np.float32(128), rate
    if base == "flt":
        return data, rate
    if base in ("dbl", "s64"):
        with np.errstate(over="ignore"):  # doubles past float32's range become inf, which the stream repairs
            return (data if base == "dbl" else data * 2.0 ** -63).astype(np.float32), rate
    # s16, s32: the scale is a power of two, so scaling in float32 rounds as scaling in float64 does
    return np.multiply(data, np.float32(2.0 ** -15 if base == "s16" else 2.0 ** -31), dtype=np.float32), rate


def _conform(block, rate: int, channels: int) -> np.ndarray:
    """A block (samples, its rate) in the stream's first rate and channel count (a mid-stream change is rare,
    but real)."""
    samples, frame_rate = block
    if samples.ndim == 1:  # downmixed by the decoder: of the stream's rate and channel count
        return samples
    if samples.shape[1] != channels:
        mono = samples.mean(axis=1, dtype=np.float32, keepdims=True)
        samples = np.repeat(mono, channels, axis=1)
    if frame_rate != rate and audio.MIN_RATE <= frame_rate <= audio.MAX_RATE:
        import soxr

        samples = soxr.resample(np.ascontiguousarray(samples), frame_rate, rate, quality="HQ").astype(np.float32)
    return samples


def _warning(decoded: int, known: Optional[int], rate: int, state: dict) -> str:
    """E.g. "decoded 16.2 of 30.0 s: Invalid data found when processing input (3 bad packets skipped)"."""
    whole = max(decoded, known or 0)
    text = f"decoded {decoded / rate:.1f} of {whole / rate:.1f} s" if whole > decoded else \
        f"decoded {decoded / rate:.1f} s"
    reason = state["stopped"] or state["reason"]
    text += f": {reason}"
    if state["bad"]:
        text += f" ({state['bad']} bad packet{'s' if state['bad'] > 1 else ''} skipped)"
    return text


def _reason(error) -> str:
    """What is wrong with the input in words a user can act on, FFmpeg's own message (without PyAV's "[Errno N]
    ...: 'path'" wrapping) kept after it: "damaged or not audio (FFmpeg: Invalid data found when processing
    input)". FFmpeg's words alone name its internals ("Cannot allocate memory" for a corrupt MP4 index)."""
    text = str(getattr(error, "strerror", None) or error).strip().rstrip(".")
    av = _av
    if isinstance(error, av.error.InvalidDataError):
        kind = "invalid"
    elif isinstance(error, av.error.MemoryError):
        kind = "memory"
    elif isinstance(error, (av.error.PatchWelcomeError, av.error.NotImplementedError)):
        kind = "unsupported"
    elif getattr(error, "errno", None) in (1, 5, 22):
        kind = "rules"
    elif isinstance(error, (av.error.UndefinedError, av.error.UnknownError, av.error.BugError)):
        kind = "damaged"
    else:
        kind = None
    return _in_words(kind, text)


def _tag(name: str) -> int:
    """FFmpeg's FFERRTAG: an error code made of four letters."""
    return -int.from_bytes(name.encode(), "little")


_AVERROR_EOF, _AVERROR_INVALIDDATA = _tag("EOF "), _tag("INDA")
_CODE_KINDS = {_AVERROR_INVALIDDATA: "invalid", -12: "memory", _tag("PAWE"): "unsupported", -38: "unsupported",
               -1: "rules", -5: "rules", -22: "rules", _tag("UNKN"): "damaged", _tag("BUG!"): "damaged",
               _tag("BUG "): "damaged"}  # -12 ENOMEM, -38 ENOSYS, -1 EPERM, -5 EIO, -22 EINVAL


def _code_reason(code: int) -> str:
    """``_reason`` for an FFmpeg error code (``avblocks``)."""
    return _in_words(_CODE_KINDS.get(code), avblocks.strerror(code).strip().rstrip("."))


_WORDS = {
    "invalid": "damaged or not audio",
    "memory": "a corrupt index or header (it asks for more memory than its audio can need)",
    "unsupported": "a damaged frame, or a feature of its codec FFmpeg cannot decode",
    "rules": "damaged data (it breaks off or contradicts itself)",  # EPERM, EIO, EINVAL: what demuxers and
    "damaged": "damaged data",  # decoders say of bytes that break their rules
}


def _in_words(kind: Optional[str], text: str) -> str:
    if kind is None and text.startswith("Error number"):
        kind = "damaged"
    return f"{_WORDS[kind]} (FFmpeg: {text})" if kind else text


class _Unnamed:
    """A seekable binary file without its name: the decoder is chosen by the bytes, as for the same bytes on
    stdin (FFmpeg took a damaged FLAC named .flac for FLAC, and refused the same bytes without the name)."""

    def __init__(self, file):
        self.read, self.seek, self.tell = file.read, file.seek, file.tell


class StreamReader:
    """A pipe for FFmpeg: the bytes already read to sniff it (``head``), then the rest as it arrives. No seek
    method, so FFmpeg treats it as the stream it is. What FFmpeg reads is kept until ``stop()`` (it gives them
    back, or None when they were over ``limit``): a stream FFmpeg cannot open as a stream is then opened whole,
    as its file would be."""

    def __init__(self, head: bytes, binary, limit: int = 1 << 30):
        self._head = head
        self._binary = binary
        self._kept, self._size, self._limit = [], 0, limit

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        if self._kept is not None:
            self._kept.append(data)
            self._size += len(data)
            if self._size > self._limit:
                self._kept = []
        return data

    def stop(self) -> Optional[bytes]:
        kept, self._kept = b"".join(self._kept or ()), None
        return None if self._size > self._limit else kept

    def _read(self, size: int) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._binary.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        if hasattr(self._binary, "read1"):
            return self._binary.read1(size if size > 0 else 1 << 16)
        return self._binary.read(size)
