"""Write the frontend's frozen arrays: the mel filterbank and the STFT window.

numpy only. The formulas are upstream's (torchaudio ``kaldi.get_mel_banks`` and ``torch.hann_window`` as
EfficientAT's ``AugmentMelSTFT`` uses them in eval mode), reproduced in float32 so that the arrays match
upstream's to float32 rounding. See ``../shared/reference/FRONTEND.md`` for the derivation.

    python scripts/model/make_frontend_assets.py [--output-dir audiotag/assets]
"""

import argparse
import math
from pathlib import Path

import numpy as np

SAMPLE_RATE = 32000
N_FFT = 1024
WIN_LENGTH = 800
N_MELS = 128
FMIN = 0.0
FMAX = 15000.0  # upstream: sr // 2 - fmax_aug_range // 2 when fmax is None

FILTERBANK_FILE = "mel_filterbank.npy"
WINDOW_FILE = "stft_window.npy"


def hz_to_mel(freq):
    """Kaldi/HTK mel: natural log, 1127 * ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq) / 700.0)


def mel_filterbank() -> np.ndarray:
    """128 x 513 float32 triangles, linear in mel, peak 1, no area normalisation; Nyquist column zero."""
    mel_lo = 1127.0 * math.log(1.0 + FMIN / 700.0)
    mel_hi = 1127.0 * math.log(1.0 + FMAX / 700.0)
    delta = np.float32((mel_hi - mel_lo) / (N_MELS + 1))  # torch multiplies a float32 tensor by it
    bins = np.arange(N_MELS, dtype=np.float32)[:, None]
    left = np.float32(mel_lo) + bins * delta
    center = np.float32(mel_lo) + (bins + 1) * delta
    right = np.float32(mel_lo) + (bins + 2) * delta
    # Kaldi's grid has n_fft / 2 bins: the Nyquist bin is added below as a zero column.
    fft_freqs = np.float32(SAMPLE_RATE / N_FFT) * np.arange(N_FFT // 2, dtype=np.float32)
    mel = hz_to_mel(fft_freqs.astype(np.float64)).astype(np.float32)[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(np.float32(0), np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


def stft_window() -> np.ndarray:
    """Symmetric Hann of 800 samples, zero-padded centred into the 1024-point frame as torch.stft does."""
    i = np.arange(WIN_LENGTH, dtype=np.float64)
    hann = (0.5 - 0.5 * np.cos(2.0 * np.pi * i / (WIN_LENGTH - 1))).astype(np.float32)
    left = (N_FFT - WIN_LENGTH) // 2
    return np.pad(hann, (left, N_FFT - WIN_LENGTH - left)).astype(np.float32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parent.parent.parent / "audiotag" / "assets"
    parser.add_argument("--output-dir", type=Path, default=default_dir, help="where to write the .npy files")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, array in ((FILTERBANK_FILE, mel_filterbank()), (WINDOW_FILE, stft_window())):
        path = args.output_dir / name
        np.save(path, array, allow_pickle=False)
        print(f"wrote {path} {array.shape} {array.dtype}")


if __name__ == "__main__":
    main()
