"""Decode speed per format for both decoders, and `audiotag DIR` on a corpus of M4A files.

    .venv/bin/python scripts/bench/bench_decoders.py [--repeat 20] [--corpus 100]

Fixtures are made with Debian's ffmpeg (a benchmark-time tool) from a 10 s 44.1 kHz stereo clip of
../shared/audio. "decode ms" is the median time to open a file and decode all of it to float32 blocks at its own
rate (no resampling, no model), pinned to one core, for libsndfile where it takes the format and for FFmpeg
(audiotag.ffmpeg) on every format; "PyAV alone" is the floor under FFmpeg's figure: PyAV's own demux and
decode loop, the samples left untouched. Then `audiotag DIR -o out.jsonl` over N copies of the M4A file and N
of the WAV it was made from, by default and with `--workers CORES --jobs 1`: files/s of each, and the ratios.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
SOURCE = SHARED / "audio" / "extra" / "max-guitar.wav"

FORMATS = {  # file name -> ffmpeg options
    "pcm.wav": [], "clip.flac": [], "vorbis.ogg": ["-c:a", "libvorbis"], "opus.opus": ["-c:a", "libopus"],
    "cbr.mp3": ["-b:a", "128k"], "aac.m4a": ["-c:a", "aac", "-b:a", "128k"], "adts.aac": ["-c:a", "aac"],
    "opus.webm": ["-c:a", "libopus"], "vorbis.webm": ["-c:a", "libvorbis"], "alac.m4a": ["-c:a", "alac"],
    "wmav2.wma": ["-c:a", "wmav2"], "ac3.ac3": [], "eac3.eac3": [], "flac.mkv": ["-c:a", "flac"],
    "h264-aac.mp4": ["video"],
}


def make(folder: Path) -> None:
    for name, options in FORMATS.items():
        if options == ["video"]:
            command = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=10", "-i", str(SOURCE),
                       "-shortest", "-c:v", "libx264", "-c:a", "aac"]
        else:
            command = ["-i", str(SOURCE), *options]
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *command, str(folder / name)], check=True)


DECODERS = ("libsndfile", "ffmpeg", "pyav")


def decoder_run(path: Path, decoder: str):
    """A function decoding ``path`` whole with ``decoder``, or None when that decoder refuses the file."""
    import soundfile

    from audiotag import decode
    from audiotag.decode import ffmpeg

    def once():
        if decoder == "pyav":
            import av

            with av.open(str(path)) as container:
                for _ in container.decode(audio=0):
                    pass
            return
        with open(path, "rb") as file:
            stream = decode.sndfile.open_soundfile(file, None) if decoder == "libsndfile" else \
                ffmpeg.open_source(file)
            for _ in stream._blocks:
                pass
            stream.close()

    try:
        once()
    except (decode.AudioError, soundfile.LibsndfileError):
        return None
    return once


def decode_ms(path: Path, repeat: int) -> dict:
    """Median ms per decoder, the decoders taking turns round by round (a machine that slows down or speeds up
    midway slows all of them alike)."""
    runs = {decoder: decoder_run(path, decoder) for decoder in DECODERS}
    times = {decoder: [] for decoder, run in runs.items() if run is not None}
    for _ in range(repeat):
        for decoder in times:
            start = time.perf_counter()
            runs[decoder]()
            times[decoder].append(time.perf_counter() - start)
    return {decoder: statistics.median(times[decoder]) * 1000 if decoder in times else None for decoder in DECODERS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--corpus", type=int, default=100, help="M4A files in the directory run")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("bench_decoders: Debian's ffmpeg makes the fixtures (scripts/build/install_test_tools.sh)")
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        make(folder)
        print("| format | libsndfile ms | FFmpeg ms | PyAV alone ms |\n|---|---|---|---|")
        for name in FORMATS:
            results = decode_ms(folder / name, args.repeat)
            cells = ["refused" if ms is None else f"{ms:.1f}" for ms in results.values()]
            print(f"| {name} | {' | '.join(cells)} |")
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        rates = {}
        cores = os.cpu_count()
        runs = (("M4A", "aac.m4a", []), ("WAV", "pcm.wav", []),
                (f"M4A --workers {cores} --jobs 1", "aac.m4a", ["--workers", str(cores), "--jobs", "1"]),
                (f"WAV --workers {cores} --jobs 1", "pcm.wav", ["--workers", str(cores), "--jobs", "1"]))
        for kind, source, options in runs:  # the same clip, side by side
            corpus = folder / f"corpus-{Path(source).suffix}"
            if not corpus.exists():
                corpus.mkdir()
                for index in range(args.corpus):
                    os.link(folder / source, corpus / f"clip{index:04d}{Path(source).suffix}")
            command = [sys.executable, "-m", "audiotag", str(corpus), *options, "-o", str(folder / "out.jsonl")]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds = time.perf_counter() - start
            rates[kind] = args.corpus / seconds
            print(f"\naudiotag DIR {' '.join(options)} on {args.corpus} {kind[:3]} files (the 10 s clip, 44.1 kHz "
                  f"stereo): {seconds:.1f} s, {rates[kind]:.1f} files/s ({cores} cores)", end="")
        print(f"\nM4A / WAV: {rates['M4A'] / rates['WAV']:.2f}; with --workers {cores} --jobs 1: "
              f"M4A {rates[runs[2][0]] / rates['M4A']:.2f}x, WAV {rates[runs[3][0]] / rates['WAV']:.2f}x the default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
