"""Log-mel features exactly as upstream EfficientAT computes them at inference, in float32 numpy.

Why numpy and not torchaudio: the frozen binary must not carry torch. The filterbank and window are frozen
arrays (see ``assets.py``) rather than recomputed here, so every install uses the very numbers the parity tests
checked. Formulas: ``../shared/reference/FRONTEND.md``.
"""

import numpy as np

from .assets import load_array

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

_WINDOW_OFFSET = (N_FFT - WIN_LENGTH) // 2  # where torch.stft places the window in the frame


def frame_count(n_samples: int) -> int:
    """Frames upstream produces for n samples (pre-emphasis drops one sample first)."""
    return 1 + (n_samples - 1) // HOP_LENGTH


def log_mel(samples: np.ndarray) -> np.ndarray:
    """(..., n) float samples at 32 kHz -> (..., 128, frames) float32 model input."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.shape[-1] < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} samples at {SAMPLE_RATE} Hz, got {samples.shape[-1]}")
    emphasised = samples[..., 1:] - PREEMPHASIS * samples[..., :-1]
    pad = [(0, 0)] * (emphasised.ndim - 1) + [(N_FFT // 2, N_FFT // 2)]
    padded = np.pad(emphasised, pad, mode="reflect")
    # Only the 800 window samples of each 1024-point frame are non-zero: frame them directly (a strided view,
    # no copy) and let rfft zero-pad. The shift this implies changes the phase, not the power.
    window = load_array("stft_window.npy")[_WINDOW_OFFSET:_WINDOW_OFFSET + WIN_LENGTH]
    frames = np.lib.stride_tricks.sliding_window_view(padded[..., _WINDOW_OFFSET:], WIN_LENGTH, axis=-1)
    frames = frames[..., ::HOP_LENGTH, :][..., :frame_count(samples.shape[-1]), :]
    spectrum = np.fft.rfft(frames * window, n=N_FFT, axis=-1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    filterbank, first, stop = _nonzero_filterbank()
    mel = np.matmul(power[..., first:stop], filterbank.T)  # (..., frames, 128)
    out = (np.log(mel + LOG_OFFSET) + NORM_SHIFT) / NORM_SCALE
    return np.ascontiguousarray(np.swapaxes(out, -1, -2), dtype=np.float32)


def _nonzero_filterbank():
    """The filterbank cut to its non-zero FFT columns (1..479 of 513): a quarter less matmul."""
    full = load_array("mel_filterbank.npy")
    used = np.flatnonzero(full.any(axis=0))
    first, stop = int(used[0]), int(used[-1]) + 1
    return np.ascontiguousarray(full[:, first:stop]), first, stop
