"""Peak memory of tagging long recordings: 1, 10 and 60 minutes of 48 kHz stereo.

Writes the recordings (16-bit WAV, music.wav resampled and repeated with some noise) into a temporary directory,
tags each in a fresh `python -m audiotag` process and reports the child's peak RSS (ru_maxrss) and wall time.
Decoding in blocks should keep the peak flat as the recording grows.

With --packets instead: a crafted Matroska of 3 s in one-sample PCM packets (132,300 of them) against the same
3 s as a WAV, each decoded (``decode.load``) in a fresh process, peak memory (VmHWM) of each. Decoded frames are
joined into blocks as they come, so the two should be close (42 MB against 270 MB when the frames were kept
until their block was joined).

    .venv/bin/python scripts/bench/bench_memory.py [--minutes 1 10 60] [--format WAV|FLAC] [--packets]
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


def decode_peak_mb(path: Path) -> float:
    """VmHWM of a fresh process that decodes ``path`` (ru_maxrss would carry over the forking parent's)."""
    measure = ("import sys; from audiotag import decode; decode.load(sys.argv[1]); "
               "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    result = subprocess.run([sys.executable, "-c", measure, str(path)], check=True, capture_output=True, cwd=REPO,
                            text=True)
    return int(result.stdout) / 1024


def one_sample_packets() -> None:
    music = SHARED / "audio" / "music.wav"
    print(f"{'decoded':>34} {'peak MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        tiny, wav = Path(tmp) / "tiny.mkv", Path(tmp) / "cut.wav"
        ffmpeg = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(music), "-t", "3"]
        subprocess.run([*ffmpeg, "-af", "asetnsamples=n=1:p=0", "-c:a", "pcm_s16le", str(tiny)], check=True)
        subprocess.run([*ffmpeg, "-c:a", "pcm_s16le", str(wav)], check=True)
        for name, path in (("3 s WAV", wav), ("3 s Matroska, one-sample packets", tiny)):
            print(f"{name:>34} {decode_peak_mb(path):8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--format", default="WAV", choices=("WAV", "FLAC"))
    parser.add_argument("--packets", action="store_true", help="only the one-sample-packet Matroska against its WAV")
    args = parser.parse_args()
    if args.packets:
        return one_sample_packets()
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
