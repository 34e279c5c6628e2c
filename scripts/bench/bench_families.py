"""FFmpeg through PyAV (the old path) against audiotag/decode/_avblocks.c (the new one), per family, side by side.

    .venv/bin/python scripts/bench/bench_families.py [--files 6] [--rounds 3] [--jobs-copies 25] [--tables 1,2,3,4]

Fixtures are made at run time with Debian's ffmpeg from the max-*.wav recordings of ../shared/audio (10-17 s,
44.1/48 kHz, mostly stereo): one file per recording and family (MP3, AAC in M4A, Opus in WebM, Vorbis in Ogg,
H.264+AAC in MP4, WAV, FLAC). Families libsndfile decodes (MP3, Vorbis/Ogg, WAV, FLAC) take the same path both
times: they are the control. The two paths are switched by AUDIOTAG_FFMPEG=pyav, in this process and in the
`audiotag` subprocesses. Every figure is a ratio of runs made in turn in this one run (the machine is shared).

1. Decode rate (decode + downmix + soxr to 32 kHz: ``Stream.samples()``, no model), files/s alone, and beside a
   busy Python thread (``while True: n += 1``): the share of the solo rate kept is how rarely decoding needs
   Python's lock. Target: >= 25% for the FFmpeg families. The old path runs first (see ``busy_table``).
2. `audiotag DIR --jobs 2` against `--jobs 16` (the family's files, copied --jobs-copies times): wall seconds.
   Target: --jobs 16 within 15% of --jobs 2.
3. CPU seconds of audiotag's decode + resample (one thread) against FFmpeg's own decoder
   (`ffmpeg -benchmark -threads 1 -f null`, Debian's build: its native Opus) + soxr HQ on its samples.
   Target: <= 1.3x.
4. As 1, for the decoder's own blocks alone (no downmix, no soxr): the lock as the decoder alone needs it.
5. `audiotag DIR` with no flags against --jobs 1, --jobs 4xCPUs, --workers CPUs (--jobs 1, and default --jobs):
   wall seconds, new path. Target: the default within 5% of the best setting on every family.
Another checkout's figures, side by side: PYTHONPATH=CHECKOUT runs this script on it (from outside both).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soxr

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
VIDEO = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=20"]
FAMILIES = {  # name -> (suffix, ffmpeg options; "video" first: a picture stream goes with it)
    "MP3": (".mp3", ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "AAC/M4A": (".m4a", ["-c:a", "aac", "-b:a", "128k"]),
    "Opus/WebM": (".webm", ["-c:a", "libopus"]),
    "Vorbis/Ogg": (".ogg", ["-c:a", "libvorbis"]),
    "H.264+AAC MP4": (".mp4", ["video", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]),
    "WAV": (".wav", ["-c:a", "pcm_s16le"]),
    "FLAC": (".flac", []),
}
PATHS = {"old (PyAV)": "pyav", "new (avblocks)": "native"}


def make(folder: Path, count: int) -> dict:
    """family -> its files."""
    sources = sorted((SHARED / "audio" / "extra").glob("max-*.wav"))[:count]
    files = {}
    for family, (suffix, options) in FAMILIES.items():
        target = folder / re.sub(r"\W+", "-", family)
        target.mkdir()
        files[family] = []
        for source in sources:
            out = target / (source.stem + suffix)
            if options[:1] == ["video"]:
                command = [*VIDEO, "-i", str(source), "-shortest", *options[1:]]
            else:
                command = ["-i", str(source), *options]
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *command, str(out)], check=True)
            files[family].append(out)
    return files


def use(path: str) -> None:
    os.environ["AUDIOTAG_FFMPEG"] = path


def decode_all(files, resample: bool = True) -> None:
    """Decode ``files``: through ``Stream.samples()`` (downmix, soxr), or the decoder's own blocks alone."""
    from audiotag import decode

    for path in files:
        stream = decode.open_file(path)
        for _ in stream.samples() if resample else stream._blocks:
            pass
        stream.close()


def seconds_of(run, busy: bool) -> float:
    """Wall seconds of ``run()``, alone or beside a thread spinning in Python."""
    stop = threading.Event()

    def spin():
        count = 0
        while not stop.is_set():
            count += 1

    spinner = threading.Thread(target=spin, daemon=True)
    if busy:
        spinner.start()
        time.sleep(0.05)
    start = time.perf_counter()
    try:
        run()
    finally:
        stop.set()
    seconds = time.perf_counter() - start
    if busy:
        spinner.join()
    return seconds


def busy_table(files: dict, rounds: int, resample: bool = True) -> None:
    """The old path's runs all come first: once avblocks has opened an input, PyAV's log callback (which takes the
    lock for every message, printed or not) is replaced by a silent one, and PyAV would look better than it is."""
    what = "1. Decode + resample" if resample else "4. The decoder alone (its blocks at their own rate)"
    print(f"\n## {what}, files/s: alone, beside a busy Python thread, the share kept\n")
    print("| family | " + " | ".join(f"{name} alone | busy | kept" for name in PATHS) + " |")
    print("|---|" + "---|---|---|" * len(PATHS))
    times = {(name, family, busy): [] for name in PATHS for family in files for busy in (False, True)}
    for name, path in PATHS.items():
        use(path)
        for family, paths in files.items():
            decode_all(paths[:1], resample)  # warm: imports, the library, the page cache
            for _ in range(rounds):  # the modes take turns, round by round
                for busy in (False, True):
                    times[name, family, busy].append(seconds_of(lambda: decode_all(paths, resample), busy))
    for family, paths in files.items():
        cells = []
        for name in PATHS:
            alone = len(paths) / statistics.median(times[name, family, False])
            busy = len(paths) / statistics.median(times[name, family, True])
            cells += [f"{alone:.1f}", f"{busy:.2f}", f"{busy / alone:.0%}"]
        print(f"| {family} | {' | '.join(cells)} |", flush=True)


def copies_of(paths: list, copies: int, folder: Path) -> Path:
    """A folder of ``copies`` hard links to each of ``paths`` (made once per family)."""
    corpus = folder / f"corpus-{paths[0].parent.name}"
    if not corpus.exists():
        corpus.mkdir()
        for copy in range(copies):
            for path in paths:
                os.link(path, corpus / f"{copy}-{path.name}")
    return corpus


def settings_table(files: dict, copies: int, rounds: int, folder: Path) -> None:
    """The default (no flags) against the other ways of spending the cores, on the new path."""
    cores = os.cpu_count() or 1
    settings = {"default": [], "--jobs 1": ["--jobs", "1"], f"--jobs {4 * cores}": ["--jobs", str(4 * cores)],
                f"--workers {cores} --jobs 1": ["--workers", str(cores), "--jobs", "1"],
                f"--workers {cores}": ["--workers", str(cores)]}
    print(f"\n## 5. `audiotag DIR` wall s per setting, the best of {rounds} ({copies} copies of each file), new path; "
          "default / best\n")
    print("| family (files) | " + " | ".join(settings) + " | default / best |")
    print("|---|" + "---|" * len(settings) + "---|")
    for family, paths in files.items():
        corpus = copies_of(paths, copies, folder)
        wall = {name: [] for name in settings}
        for _ in range(rounds):  # the settings take turns, round by round
            for name, flags in settings.items():
                command = [sys.executable, "-m", "audiotag", str(corpus), *flags, "-o", str(folder / "out.jsonl")]
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, env={**os.environ, "AUDIOTAG_FFMPEG": ""})
                wall[name].append(time.perf_counter() - start)
        best = {name: min(times) for name, times in wall.items()}
        fastest = min(best.values())
        cells = [f"{best[name]:.1f}" for name in settings]
        print(f"| {family} ({len(paths) * copies}) | {' | '.join(cells)} | {best['default'] / fastest:.2f} |",
              flush=True)


def jobs_table(files: dict, copies: int, rounds: int, folder: Path) -> None:
    print(f"\n## 2. `audiotag DIR --jobs N` wall s, the best of {rounds} ({copies} copies of each file), "
          "--jobs 16 / --jobs 2\n")
    print("| family (files) | " + " | ".join(f"{name} -j2 | -j16 | ratio" for name in PATHS) + " |")
    print("|---|" + "---|---|---|" * len(PATHS))
    for family, paths in files.items():
        corpus = copies_of(paths, copies, folder)
        wall = {(path, jobs): [] for path in PATHS.values() for jobs in (2, 16)}
        for _ in range(rounds):  # the paths and settings take turns, round by round
            for path, jobs in wall:
                env = {**os.environ, "AUDIOTAG_FFMPEG": path}
                command = [sys.executable, "-m", "audiotag", str(corpus), "--jobs", str(jobs), "-o",
                           str(folder / "out.jsonl")]
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, env=env)
                wall[path, jobs].append(time.perf_counter() - start)
        cells = []
        for path in PATHS.values():
            two, sixteen = min(wall[path, 2]), min(wall[path, 16])
            cells += [f"{two:.1f}", f"{sixteen:.1f}", f"{sixteen / two:.2f}"]
        print(f"| {family} ({len(paths) * copies}) | {' | '.join(cells)} |", flush=True)


def ffmpeg_cpu(path: Path) -> float:
    """CPU s of Debian's ffmpeg decoding ``path`` (one thread) plus soxr HQ to 32 kHz on its downmixed samples."""
    out = subprocess.run(["ffmpeg", "-nostdin", "-benchmark", "-threads", "1", "-i", str(path), "-vn", "-f", "null",
                          "-"], check=True, capture_output=True, text=True).stderr
    decode = float(re.search(r"utime=([\d.]+)s", out).group(1))
    probe = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-vn", "-f", "f32le", "-"],
                           check=True, capture_output=True).stdout
    info = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                           "stream=sample_rate,channels", "-of", "csv=p=0", str(path)], check=True,
                          capture_output=True, text=True).stdout.split(",")
    rate, channels = int(info[0]), int(info[1])
    mono = np.frombuffer(probe, np.float32).reshape(-1, channels).mean(axis=1, dtype=np.float32)
    start = time.process_time()
    soxr.resample(mono, rate, 32000, quality="HQ")
    return decode + time.process_time() - start


def cpu_table(files: dict, rounds: int) -> None:
    print("\n## 3. CPU s, decode + resample: audiotag (each path) against ffmpeg -threads 1 + soxr HQ\n")
    print("| family | " + " | ".join(f"{name} | ratio" for name in PATHS) + " | FFmpeg + soxr |")
    print("|---|" + "---|---|" * len(PATHS) + "---|")
    for family, paths in files.items():
        reference = sum(min(ffmpeg_cpu(path) for _ in range(rounds)) for path in paths)
        cells = []
        for name, path in PATHS.items():
            use(path)
            decode_all(paths[:1])
            best = []
            for _ in range(rounds):
                start = time.process_time()
                decode_all(paths)
                best.append(time.process_time() - start)
            cells += [f"{min(best):.3f}", f"{min(best) / reference:.2f}"]
        print(f"| {family} | {' | '.join(cells)} | {reference:.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6, help="recordings per family (max-*.wav, at most 14)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs-copies", type=int, default=25, help="copies of each file in the --jobs runs")
    parser.add_argument("--tables", default="1,2,3,4,5", help="which tables, e.g. 2 (default: 1,2,3,4,5)")
    parser.add_argument("--new-only", action="store_true", help="tables 1, 2, 4: the new path alone (PyAV's runs "
                        "beside a busy thread take minutes)")
    args = parser.parse_args()
    if args.new_only:
        del PATHS["old (PyAV)"]
    if shutil.which("ffmpeg") is None:
        sys.exit("bench_families: Debian's ffmpeg makes the fixtures (scripts/build/install_test_tools.sh)")
    from audiotag.decode import avblocks

    if not avblocks.available():
        sys.exit("bench_families: audiotag/decode/_avblocks.so is not built (scripts/build/setup.sh)")
    print(f"{os.cpu_count()} CPUs; {args.files} files per family; medians/minima of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        files = make(folder, args.files)
        tables = set(args.tables.split(","))
        if "1" in tables:
            busy_table(files, args.rounds)
        if "3" in tables:
            cpu_table(files, args.rounds)
        if "2" in tables:
            jobs_table(files, args.jobs_copies, args.rounds, folder)
        if "4" in tables:
            busy_table(files, args.rounds, resample=False)
        if "5" in tables:
            settings_table(files, args.jobs_copies, args.rounds, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
