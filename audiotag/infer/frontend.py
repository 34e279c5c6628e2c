"""Log-mel features exactly as upstream EfficientAT computes them at inference, in float32.

Two implementations of the same formulas: ``_logmel.c`` (scripts/build/build_avblocks.sh compiles it against the
FFmpeg libraries the decoders use, for their FFT), one call per clip without Python's lock, and numpy, used where
that library was not built. The numpy version hands Python's lock over 40-60 times per 10 s clip (once per numpy
call): with many threads on few cores each hand-off queues behind the other threads.

Why not torchaudio: the frozen binary must not carry torch. The filterbank and window are frozen
arrays (see ``assets.py``) rather than recomputed here, so every install uses the very numbers the parity tests
checked. Formulas: ``../shared/reference/FRONTEND.md``.

Why frames go through in chunks and the filterbank in blocks (speed, not arithmetic: every value is the one a
whole-clip matmul gives within float32 rounding): a chunk's arrays stay in cache and are kept per thread, where
whole-clip temporaries of several MB cost a page fault per 4 kB on every call (rfft's output alone doubled its
time). The filterbank is sparse (947 of 128 x 479 weights are non-zero, each band a run of
adjacent FFT bins), so each block of adjacent bands is multiplied with only the bins it covers: under a quarter
of the arithmetic, and products so small that BLAS runs them on the calling thread instead of waking (and spinning) its
own threads while the pipeline's workers and onnxruntime want the cores.
"""

import ctypes
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..assets import load_array

SAMPLE_RATE = 32000  # the model was trained on 32 kHz audio
N_FFT = 1024  # FFT size; the 800-sample window sits centred inside it
WIN_LENGTH = 800  # 25 ms analysis window
HOP_LENGTH = 320  # 10 ms between frames: 100 frames per second
N_MELS = 128
PREEMPHASIS = np.float32(0.97)  # upstream's conv1d kernel [-0.97, 1]
LOG_OFFSET = np.float32(1e-5)  # keeps log finite on silence
NORM_SHIFT = np.float32(4.5)  # upstream's fixed "fast normalisation": (log_mel + 4.5) / 5
NORM_SCALE = np.float32(5.0)
MIN_SAMPLES = N_FFT // 2 + 2  # reflect padding of n_fft / 2 needs more than that many samples after pre-emphasis

# Frames per FFT pass: ~1 MB of arrays, cache-sized. Alone, 32 to 128 run as fast; with the pipeline's workers
# running it side by side, 128 is a fifth faster than 64 (each numpy call hands the GIL over: fewer calls).
CHUNK_FRAMES = 128
# Frames per filterbank pass. Each block of bands is one matmul per pass, and each matmul hands Python's lock over
# and takes it back: per chunk, that was 88 hand-offs per 10 s clip, and `--jobs 16` on 2 cores ran 1.3-1.4x as long
# as `--jobs 2` (threads queueing for the lock); per 4 chunks, 22, and 1.2x (scripts/bench/bench_families.py).
MEL_FRAMES = 4 * CHUNK_FRAMES
BLOCK_MACS = 1 << 18  # multiply-adds per filterbank block and pass; OpenBLAS runs products this small on one thread

# rfft is asked for X / sqrt(N_FFT) (norm="ortho") because a float32 scale factor is numpy's only way to its
# float32 transform: with the default norm it computes in float64 and casts both ways, twice the time. The factor
# is 1/32, a power of two, so the scaling is exact, and the filterbank takes the power's 1/1024 back, exactly too
# ("forward", 1/1024, would push the power of very quiet audio into slow float32 denormals).
FFT_SCALE = np.float32(32)

_WINDOW_OFFSET = (N_FFT - WIN_LENGTH) // 2  # where torch.stft places the window in the frame
LIBRARY = Path(__file__).with_name("_logmel.so")
INTERFACE = 1  # audiotag_log_mel_interface() of the _logmel.c this module calls


def frame_count(n_samples: int) -> int:
    """Frames upstream produces for n samples (pre-emphasis drops one sample first)."""
    return 1 + (n_samples - 1) // HOP_LENGTH


def log_mel(samples: np.ndarray) -> np.ndarray:
    """(..., n) float samples at 32 kHz -> (..., 128, frames) float32 model input."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.shape[-1] < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} samples at {SAMPLE_RATE} Hz, got {samples.shape[-1]}")
    if samples.ndim == 1:
        return _log_mel(samples)
    rows = samples.reshape(-1, samples.shape[-1])
    out = np.empty((len(rows), N_MELS, frame_count(samples.shape[-1])), np.float32)
    for row, mel in zip(rows, out):
        mel[...] = _log_mel(row)
    return out.reshape(*samples.shape[:-1], *out.shape[1:])


def implementation() -> str:
    """Which frontend runs, for ``--version``."""
    return "native, one call per clip without Python's lock" if _native() else f"numpy ({_missing[0]})"


def _log_mel(samples: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (128, frames) float32."""
    native = _native()
    if native is None:
        return _numpy_log_mel(samples)
    samples = np.require(samples, np.float32, ["C", "A"])
    mel = np.empty((N_MELS, frame_count(len(samples))), np.float32)
    window, weights, lows, highs, first = _native_constants()
    status = native(samples.ctypes.data, len(samples), N_FFT, HOP_LENGTH, window.ctypes.data, WIN_LENGTH,
                    weights.ctypes.data, lows.ctypes.data, highs.ctypes.data, N_MELS, first, weights.shape[1],
                    PREEMPHASIS, LOG_OFFSET, NORM_SHIFT, NORM_SCALE, mel.ctypes.data)
    if status != 0:  # -1: no memory; -2: FFmpeg's FFT could not be set up (its tables: memory too)
        raise MemoryError(f"no memory for the log-mel of {len(samples)} samples ({LIBRARY.name}: {status})")
    return mel


_missing = ["not loaded yet"]  # why _native() is None, for --version


@lru_cache(maxsize=None)
def _native():
    """_logmel.so's audiotag_log_mel, or None where the library is missing or from another _logmel.c."""
    if not LIBRARY.is_file():
        _missing[0] = f"{LIBRARY.name} not built: run scripts/build/setup.sh"
        return None
    try:
        library = ctypes.CDLL(str(LIBRARY))  # a CDLL: each call lets go of Python's lock
        interface = library.audiotag_log_mel_interface
    except (OSError, AttributeError) as error:
        _missing[0] = f"{LIBRARY.name} cannot be used: {error}"
        return None
    if interface() != INTERFACE:
        _missing[0] = f"{LIBRARY.name} was built from another _logmel.c: run scripts/build/setup.sh"
        return None
    function = library.audiotag_log_mel
    pointer, c_int, c_float = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    function.restype = c_int
    function.argtypes = [pointer, ctypes.c_int64, c_int, c_int, pointer, c_int, pointer, pointer, pointer, c_int,
                         c_int, c_int, c_float, c_float, c_float, c_float, pointer]
    return function


@lru_cache(maxsize=None)
def _native_constants():
    """(window, weights, lows, highs, first bin) for _logmel.c: the window's 800 non-zero samples, the filterbank
    cut to its non-zero bins, each band's first and end bin within that cut."""
    window = np.ascontiguousarray(load_array("stft_window.npy")[_WINDOW_OFFSET:_WINDOW_OFFSET + WIN_LENGTH],
                                  np.float32)
    full = load_array("mel_filterbank.npy")
    used = np.flatnonzero(full.any(axis=0))
    first, stop = int(used[0]), int(used[-1]) + 1
    weights = np.ascontiguousarray(full[:, first:stop], np.float32)
    spans = [np.flatnonzero(row) for row in weights]
    lows = np.array([span[0] if len(span) else 0 for span in spans], np.int32)
    highs = np.array([span[-1] + 1 if len(span) else 0 for span in spans], np.int32)
    return window, weights, lows, highs, first


def _numpy_log_mel(samples: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (128, frames) float32, in numpy."""
    padded = _emphasise_and_pad(samples)
    n_frames = frame_count(len(samples))
    # Only the 800 window samples of each 1024-point frame are non-zero: frame them directly (a strided view,
    # no copy), then zero-pad after them. The shift this implies changes the phase, not the power.
    frames = np.lib.stride_tricks.sliding_window_view(padded[_WINDOW_OFFSET:], WIN_LENGTH)[::HOP_LENGTH][:n_frames]
    window, first, stop, blocks = _constants()
    mel = np.empty((N_MELS, n_frames), np.float32)
    windowed, spectrum, power = _chunk_buffers()
    for base in range(0, n_frames, MEL_FRAMES):
        total = min(MEL_FRAMES, n_frames - base)
        for start in range(0, total, CHUNK_FRAMES):
            count = min(CHUNK_FRAMES, total - start)
            np.multiply(frames[base + start:base + start + count], window, out=windowed[:count, :WIN_LENGTH])
            np.fft.rfft(windowed[:count], out=spectrum[:count], norm="ortho")  # float32 FFT: see FFT_SCALE
            np.abs(spectrum[:count, first:stop], out=power[start:start + count])  # |X| through hypot, then
        power[:total] *= power[:total]  # squared: as exact as re^2 + im^2, and a third faster
        for bands, low, high, weights in blocks:
            np.matmul(weights, power[:total, low:high].T, out=mel[bands, base:base + total])
    mel += LOG_OFFSET
    np.log(mel, out=mel)
    mel += NORM_SHIFT
    mel /= NORM_SCALE
    return mel


_scratch = threading.local()


def _chunk_buffers() -> tuple:
    """This thread's (windowed, spectrum, power) chunk buffers, made on its first call and reused by every chunk
    of every clip after: fresh ones would cost a page fault per 4 kB on each call.

    Frames go into the first 800 columns of the zeroed 1024-wide ``windowed``, whose last columns stay zero:
    rfft(n=1024) would zero-pad a copy of every frame on every call, a quarter of its time.
    """
    if not hasattr(_scratch, "buffers"):
        _, first, stop, _ = _constants()
        _scratch.buffers = (np.zeros((CHUNK_FRAMES, N_FFT), np.float32),
                            np.empty((CHUNK_FRAMES, N_FFT // 2 + 1), np.complex64),
                            np.empty((MEL_FRAMES, stop - first), np.float32))
    return _scratch.buffers


def _emphasise_and_pad(samples: np.ndarray) -> np.ndarray:
    """Pre-emphasis, then reflect padding by n_fft / 2 on each side, written into one new array.

    The same numbers as ``np.pad(samples[1:] - PREEMPHASIS * samples[:-1], N_FFT // 2, mode="reflect")``
    (x + (-a) rounds as x - a), without a second clip-sized temporary.
    """
    half = N_FFT // 2
    padded = np.empty(len(samples) - 1 + 2 * half, np.float32)
    middle = padded[half:-half]
    np.multiply(samples[:-1], -PREEMPHASIS, out=middle)
    middle += samples[1:]
    padded[:half] = padded[2 * half:half:-1]  # padded[i] = middle[half - i]
    padded[-half:] = padded[-half - 2:-2 * half - 2:-1]  # mirrored about the last sample, which is not repeated
    return padded


@lru_cache(maxsize=None)
def _constants():
    """(window, first bin, stop bin, filterbank blocks), made once from the bundled arrays.

    The window is cut to its 800 non-zero samples and the filterbank to its non-zero FFT bins (1..479 of 513).
    Each block is (band slice, low bin, high bin, weights (bands, high - low)), relative to ``first``: adjacent
    bands, as many as keep MEL_FRAMES x bins x bands within BLOCK_MACS. The weights carry FFT_SCALE ** 2.
    """
    window = np.ascontiguousarray(load_array("stft_window.npy")[_WINDOW_OFFSET:_WINDOW_OFFSET + WIN_LENGTH])
    full = load_array("mel_filterbank.npy")
    used = np.flatnonzero(full.any(axis=0))
    first, stop = int(used[0]), int(used[-1]) + 1
    filterbank = full[:, first:stop]
    spans = [(int(nonzero[0]), int(nonzero[-1]) + 1) for nonzero in map(np.flatnonzero, filterbank)]
    blocks, band = [], 0
    while band < N_MELS:
        end = band + 1
        while end < N_MELS and MEL_FRAMES * (spans[end][1] - spans[band][0]) * (end + 1 - band) <= BLOCK_MACS:
            end += 1
        low, high = spans[band][0], spans[end - 1][1]
        weights = np.ascontiguousarray(filterbank[band:end, low:high] * FFT_SCALE**2)
        for array in (window, weights):
            array.setflags(write=False)
        blocks.append((slice(band, end), low, high, weights))
        band = end
    return window, first, stop, tuple(blocks)
