"""Peak memory of tagging long recordings: 1, 10 and 60 minutes of 48 kHz stereo.

Writes the recordings (16-bit WAV, music.wav resampled and repeated with some noise) into a temporary directory,
tags each in a fresh `python -m audiotag` process and reports the child's peak RSS (ru_maxrss) and wall time.
Decoding in blocks should keep the peak flat as the recording grows.

    .venv/bin/python scripts/bench/bench_memory.py [--minutes 1 10 60] [--format WAV|FLAC]
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
RATE = 48000


def write_recording(path: Path, minutes: float, fmt: str) -> None:
    """Stream the file out block by block, so making it does not need the memory we are measuring."""
    music, rate = soundfile.read(SHARED / "audio" / "music.wav", dtype="float32")
    block = soxr.resample(music, rate, RATE, quality="HQ")
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * RATE)
    with soundfile.SoundFile(path, "w", RATE, 2, format=fmt, subtype="PCM_16") as out:
        written = 0
        while written < total:
            n = min(len(block), total - written)
            left = block[:n] + 0.01 * rng.standard_normal(n).astype(np.float32)
            out.write(np.stack([left, block[:n][::-1]], axis=1))
            written += n


def peak_rss_of(command) -> tuple:
    """(peak RSS in MB, wall seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, command))}: {result.stderr.decode()}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the maximum over all waited-for children: measure in increasing size order.
    return max(peak, before) / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--format", default="WAV", choices=("WAV", "FLAC"))
    args = parser.parse_args()
    print(f"{'recording':>24} {'file MB':>8} {'peak RSS MB':>12} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in sorted(args.minutes):
            path = Path(tmp) / f"{minutes:g}min.{args.format.lower()}"
            write_recording(path, minutes, args.format)
            rss, wall = peak_rss_of([sys.executable, "-m", "audiotag", "--format", "jsonl", str(path)])
            size = path.stat().st_size / 1e6
            print(f"{f'{minutes:g} min 48 kHz stereo':>24} {size:8.0f} {rss:12.0f} {wall:7.1f}")
            path.unlink()


if __name__ == "__main__":
    main()
