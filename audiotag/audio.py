"""Decoding: files and byte streams to mono float32 samples at the model's rate.

soundfile (libsndfile, bundled in its wheel) decodes; soxr resamples with the same settings upstream's
``librosa.load`` uses ("soxr_hq", float32 in), so resampled input gives upstream's features too.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

TARGET_RATE = 32000
RAW_FORMATS = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4"}
_RAW_SCALE = {"s16le": 32768.0, "s32le": 2147483648.0, "f32le": 1.0}


class AudioError(ValueError):
    """An input that cannot be tagged; the message says what is wrong, for one line on stderr."""


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples at TARGET_RATE, plus what the source was."""

    samples: np.ndarray
    sample_rate: int  # of the source
    channels: int  # of the source
    duration: float  # seconds, of the source


def load(path) -> Audio:
    """Decode a file whole. OSError (missing, a directory, unreadable) passes through with its own reason."""
    with open(path, "rb") as file:
        return _decode(file)


def _decode(file) -> Audio:
    try:
        data, rate = soundfile.read(file, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as error:
        raise AudioError(f"cannot decode: {_sndfile_reason(error)}") from error
    except RuntimeError as error:  # soundfile raises plain RuntimeError for some malformed files
        raise AudioError(f"cannot decode: {error}") from error
    return from_array(data, rate)


def load_bytes(data: bytes) -> Audio:
    """Decode a whole in-memory file (WAV, FLAC, OGG, MP3...)."""
    if not data:
        raise AudioError("no data")
    return _decode(io.BytesIO(data))


def load_raw(data: bytes, raw_format: str, rate: int, channels: int = 1) -> Audio:
    """Headerless little-endian interleaved samples."""
    dtype = np.dtype(RAW_FORMATS[raw_format])
    frame_bytes = dtype.itemsize * channels
    usable = len(data) - len(data) % frame_bytes  # a cut-off last frame is dropped, not an error
    if usable == 0:
        raise AudioError("no data")
    samples = np.frombuffer(data[:usable], dtype=dtype).astype(np.float32) / np.float32(_RAW_SCALE[raw_format])
    return from_array(samples.reshape(-1, channels), rate)


def from_array(data: np.ndarray, rate: int) -> Audio:
    """(frames, channels) or (frames,) samples at ``rate`` -> mono float32 at TARGET_RATE."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.shape[0] == 0:
        raise AudioError("no audio samples")
    if rate <= 0:
        raise AudioError(f"invalid sample rate {rate}")
    channels = data.shape[1]
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    return Audio(resample(mono, rate), rate, channels, data.shape[0] / rate)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """To TARGET_RATE as librosa 0.11 does: soxr "HQ", then trimmed or padded to ceil(n * 32000 / rate)."""
    if rate == TARGET_RATE:
        return np.ascontiguousarray(samples, dtype=np.float32)
    out = soxr.resample(samples, rate, TARGET_RATE, quality="HQ")
    length = math.ceil(len(samples) * TARGET_RATE / rate)
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return np.ascontiguousarray(out[:length], dtype=np.float32)


def _sndfile_reason(error) -> str:
    """libsndfile's message without soundfile's "Error opening <repr of the file>:" prefix."""
    return getattr(error, "error_string", None) or str(error)
