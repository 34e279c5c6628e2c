"""The decoded stream every decoder gives: mono float32 blocks at the model's rate, never the whole file at once.

A decoder hands ``Stream`` its source blocks (frames, channels); the stream downmixes, repairs non-finite samples
and resamples with soxr, with the settings upstream's ``librosa.load`` uses ("soxr_hq", float32 in). soxr's
streaming resampler gives the same samples as its one-shot call, so decoding in blocks keeps peak memory flat and
still reproduces upstream's waveform bit for bit.
"""

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import soxr

from ..errors import AudioError


TARGET_RATE = 32000
# Samples per decoded block, 2 MB as float32: 5.5 s of 48 kHz stereo. Each block makes one trip through downmix,
# checks, resampler and windowing in Python; with 1.4 s blocks those trips cost batch runs a tenth of their time.
# The bound holds for the block as decoded (many channels) and as resampled to 32 kHz (low rates).
BLOCK_SAMPLES = 1 << 19
MIN_RATE, MAX_RATE = 1000, 768000  # beyond this a "rate" is a broken header, not audio
MAX_CHANNELS = 1024  # libsndfile's own limit
SAMPLE_LIMIT = np.float32(1e4)  # float files can hold anything; far beyond full scale only overflows the power
_HOLD_BACK = 64  # resampled samples kept back until the end, so the total can be trimmed to librosa's length


@dataclass(frozen=True)
class Audio:
    """A whole decoded clip: mono float32 samples at TARGET_RATE, plus what the source was."""

    samples: np.ndarray
    sample_rate: int  # of the source
    channels: int  # of the source
    duration: float  # seconds, of the source
    codec: Optional[str] = None  # what was decoded, in FFmpeg's names: "pcm_s16le", "flac", "mp3", "aac"...
    warning: Optional[str] = None  # what the decoder could not read, when it gave what it had (salvage)


class Stream:
    """An open input: its rate and channel count are known at once, its length once it has been read."""

    def __init__(self, blocks: Iterator[np.ndarray], rate: int, channels: int, closer=None):
        check_format(rate, channels)
        self.rate = rate
        self.channels = channels
        self.frames = 0  # source frames read so far; the total once ``samples()`` is exhausted
        self.known_frames = None  # the length the container announces, when it does
        self.truncated = False  # the blocks were cut short on purpose (``limits``)
        self.warning = None  # what the decoder could not read, when it gave what it had (salvage)
        self.codec = None  # what is decoded, in FFmpeg's names ("pcm_s16le", "aac", ...)
        self._blocks = blocks  # (frames, channels) float32, or (frames,): see ``samples``
        self._closer = closer

    @property
    def duration(self) -> float:
        return self.frames / self.rate

    def samples(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks at TARGET_RATE, ``ceil(frames * 32000 / rate)`` samples in all (as librosa).

        A decoder's block (frames,) is one it has downmixed (as ``_downmix``) and checked (every sample within
        SAMPLE_LIMIT) itself, in the native call that decoded it: numpy here would hand Python's lock over for
        each step, and beside busy threads each hand-off may wait 5 ms to take it back."""
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
                if block.ndim == 1:  # downmixed by its decoder, every sample checked to lie within SAMPLE_LIMIT
                    mono = block
                    finite += len(mono)
                elif -SAMPLE_LIMIT <= (mono := _downmix(block)).min() and mono.max() <= SAMPLE_LIMIT:  # not NaN
                    finite += len(mono)
                else:
                    mono, valid = _repair(mono, block)
                    finite += valid
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                held = joined(held, mono)
                if len(held) > _HOLD_BACK:
                    out, held = held[:-_HOLD_BACK], held[-_HOLD_BACK:]
                    out_total += len(out)
                    yield out
            if resampler is not None:
                held = joined(held, resampler.resample_chunk(np.zeros(0, np.float32), last=True))
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
        return Audio(samples, self.rate, self.channels, self.duration, self.codec, self.warning)

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


def joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``first`` then ``second`` (float32, 1-D) in one new array, copied without letting go of Python's lock:
    np.concatenate lets go of it for large arrays, and beside busy threads taking it back may wait 5 ms, where the
    copy itself takes a tenth of a millisecond."""
    out = np.empty(len(first) + len(second), np.float32)
    view = memoryview(out)
    view[:len(first)] = memoryview(np.ascontiguousarray(first, np.float32))
    view[len(first):] = memoryview(np.ascontiguousarray(second, np.float32))
    return out


def block_frames(channels: int, rate: int) -> int:
    """Frames per decoded block: at most BLOCK_SAMPLES samples, before and after resampling to TARGET_RATE."""
    return max(1, min(BLOCK_SAMPLES // max(1, channels), BLOCK_SAMPLES * rate // TARGET_RATE))


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


def check_format(rate, channels) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"unsupported sample rate {rate} Hz (supported: {MIN_RATE}..{MAX_RATE})")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"unsupported channel count {channels} (supported: 1..{MAX_CHANNELS})")
