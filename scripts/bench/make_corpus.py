#!/usr/bin/env python3
"""Make the benchmark corpus: ``count`` clips of ``seconds`` s, mixed 16/32/44.1/48 kHz, WAV and FLAC (16-bit).

Each clip is real-ish audio: an excerpt of one to three of the recordings in ../shared/audio (music, speech,
typing and the extra set), each at its own gain, summed, with a little noise at a random SNR, resampled from the
source's rate with soxr and written with soundfile; every third clip is stereo (the mix and a slightly different
mix). The corpus is made at bench time and never committed; the same seed gives the same files.

    python scripts/bench/make_corpus.py DIR [--count 200] [--seconds 10] [--seed 0]

scripts/bench/bench.py (audiotag DIR), bench_ray.py (audiotag-ray) and bench_serve.py import ``make_corpus`` from
here, their own folder.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr

REPO = Path(__file__).resolve().parent.parent.parent
RATES = (16000, 32000, 44100, 48000)  # the rates clips are written at, in turn
FORMATS = (("wav", "WAV"), ("flac", "FLAC"))  # alternating every 4 clips, so each rate comes in both
SOURCE_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MAX_SOURCES_PER_CLIP = 3
GAIN_DB = (-18.0, 0.0)  # per source in a mix
SNR_DB = (15.0, 45.0)  # noise under the mix
PEAK = 0.89  # -1 dBFS: a mix louder than this is scaled down, never clipped


def default_sources() -> Path:
    return Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared")) / "audio"


def load_sources(directory: Path) -> list:
    """(name, mono float32 samples, rate) of every recording under ``directory``, sorted by path."""
    sources = []
    for path in sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in SOURCE_EXTENSIONS):
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        if len(data):
            sources.append((path.name, data.mean(axis=1), rate))
    if not sources:
        raise SystemExit(f"make_corpus: no recordings in {directory} (set AUDIOTAG_SHARED)")
    return sources


def make_corpus(directory, count: int = 200, seconds: float = 10, seed: int = 0, sources=None) -> list:
    """Write the corpus into ``directory`` (created if need be); returns the paths written, in order.

    Clip ``i`` is ``clip{i:04d}_{rate}.{wav|flac}``; its content depends only on (seed, i), so a corpus made with a
    larger ``count`` starts with the same clips.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recordings = load_sources(Path(sources) if sources else default_sources())
    resampled = {}  # (source index, rate) -> samples at that rate

    def at_rate(index: int, rate: int) -> np.ndarray:
        if (index, rate) not in resampled:
            _, samples, source_rate = recordings[index]
            resampled[index, rate] = samples if source_rate == rate else soxr.resample(samples, source_rate, rate, "HQ")
        return resampled[index, rate]

    written = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        rate = RATES[i % len(RATES)]
        extension, container = FORMATS[(i // len(RATES)) % len(FORMATS)]
        frames = int(round(seconds * rate))
        channels = 2 if i % 3 == 0 else 1
        chosen = rng.choice(len(recordings), size=rng.integers(1, MAX_SOURCES_PER_CLIP + 1), replace=False)
        mixes = [_mix([at_rate(int(k), rate) for k in chosen], frames, rng) for _ in range(channels)]
        data = np.stack(mixes, axis=1)
        path = directory / f"clip{i:04d}_{rate}.{extension}"
        soundfile.write(str(path), data, rate, format=container, subtype="PCM_16")
        written.append(path)
    return written


def _mix(tracks: list, frames: int, rng) -> np.ndarray:
    """Random excerpts of ``tracks`` (looped when shorter than ``frames``) at random gains, plus noise."""
    mix = np.zeros(frames, np.float64)
    for samples in tracks:
        start = int(rng.integers(0, max(1, len(samples) - frames)))
        excerpt = np.resize(samples[start:start + frames], frames)  # np.resize repeats a short excerpt
        mix += excerpt * 10 ** (rng.uniform(*GAIN_DB) / 20)
    power = float(np.mean(mix ** 2)) or 1e-6
    mix += rng.standard_normal(frames) * np.sqrt(power / 10 ** (rng.uniform(*SNR_DB) / 10))
    peak = float(np.abs(mix).max())
    if peak > PEAK:
        mix *= PEAK / peak
    return mix.astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write the clips")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", help="directory of recordings to mix (default: $AUDIOTAG_SHARED/audio)")
    args = parser.parse_args(argv)
    written = make_corpus(args.directory, args.count, args.seconds, args.seed, args.sources)
    print(f"{len(written)} clips in {args.directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
