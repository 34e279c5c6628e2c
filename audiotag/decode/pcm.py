"""Samples that need no codec: headerless raw samples (``--raw``) and WAV PCM streams, parsed as they arrive (a
streaming writer puts a bogus size in the header, so the data runs to EOF)."""

import struct
from typing import Iterator, Optional

import numpy as np

from ..errors import AudioError
from .stream import Stream, block_frames, check_format


RAW_FORMATS = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4"}


def open_raw(binary, raw_format: str, rate: int, channels: int = 1) -> Stream:
    """Headerless little-endian interleaved samples from a binary file object, read as they arrive."""
    check_format(rate, channels)
    stream = Stream(pcm_blocks(binary, np.dtype(RAW_FORMATS[raw_format]), channels, rate), rate, channels)
    stream.codec = "pcm_" + raw_format
    return stream


class WavEncoding(AudioError):
    """A WAV stream in an encoding the stream parser does not read (libsndfile may)."""


def open_wav_stream(binary) -> Stream:
    """Parse a RIFF/WAVE header from a non-seekable stream; the samples follow as plain PCM."""
    fmt = None
    while True:
        header = read_exactly(binary, 8)
        if len(header) < 8:
            raise AudioError("WAV stream ends before its data chunk")
        chunk, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"data":
            break
        if chunk == b"fmt ":
            if size > 1 << 16:
                raise AudioError(f"WAV stream has an implausible fmt chunk of {size} bytes")
            fmt = read_exactly(binary, size + (size & 1))[:size]
        else:  # cover art, tags, padding: skipped a block at a time, whatever their size
            _skip(binary, size + (size & 1))
    if fmt is None or len(fmt) < 16:
        raise AudioError("WAV stream has no valid fmt chunk before its data")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID
        tag = struct.unpack("<H", fmt[24:26])[0]
    dtypes = {(1, 8): "u1", (1, 16): "<i2", (1, 24): "i3", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}
    dtype = dtypes.get((tag, bits))
    if dtype is None:
        raise WavEncoding(f"WAV stream encoding not supported (format tag {tag:#x}, {bits} bits)")
    # Streaming writers cannot know the size: 0 and 0xFFFFFFFF mean "until the end of the stream".
    limit = None if size in (0, 0xFFFFFFFF) else size
    stream = Stream(pcm_blocks(binary, dtype, channels, rate, limit), rate, channels)
    stream.codec = _WAV_CODECS[dtype]
    return stream


_WAV_CODECS = {"u1": "pcm_u8", "<i2": "pcm_s16le", "i3": "pcm_s24le", "<i4": "pcm_s32le", "<f4": "pcm_f32le",
               "<f8": "pcm_f64le"}


def pcm_blocks(binary, dtype, channels: int, rate: int, limit: Optional[int] = None) -> Iterator[np.ndarray]:
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


def read_exactly(binary, size: int) -> bytes:
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
