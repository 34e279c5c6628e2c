"""Archives as inputs: files/s of a WebDataset shard (plain tar, tar.gz, tar.zst; zip) against the same files unpacked.

    .venv/bin/python scripts/bench/bench_archives.py [--count 200] [--seconds 10] [--rounds 3] [--keep DIR]
                                                     [-- AUDIOTAG OPTIONS...]

The corpus is made at run time from ../shared/audio ($AUDIOTAG_SHARED) with Debian's ffmpeg: ``--count`` clips of
``--seconds`` s, excerpts of the shared recordings in turn, encoded in turn as WAV, FLAC, MP3, Ogg Vorbis, M4A (AAC)
and Opus, each named KEY.EXT beside a small KEY.json sidecar (a WebDataset shard); the same files as shard.tar,
shard.tar.gz and shard.tar.zst, and as shard.zip (deflated) and shard-stored.zip. Each round runs ``audiotag INPUT -o
FILE`` on the directory and each archive, in an order rotated round by round (the page cache is warm for all: one
untimed run of each first); the median files/s and CPU time per file of each, and its ratio to the directory's: the
median over rounds of each round's ratio (target: >= 0.95), by wall time and by CPU time (children's user + system:
steadier on a loaded machine). Then the CPU that decompressing each compressed archive alone takes, and the ratio
by CPU time it leaves at best: work the unpacked files never do. Options after ``--`` go to every run
(``--workers 2``...). The machine may be shared: compare the ratios, not the absolute figures.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
ENCODERS = {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libvorbis", ".m4a": "aac",
            ".opus": "libopus"}
TARGET = 0.95


def make_shard(top: Path, count: int, seconds: float) -> None:
    """top/unpacked (KEY.EXT + KEY.json), top/shard.tar, .tar.gz and .tar.zst of the same files."""
    unpacked = top / "unpacked"
    unpacked.mkdir(parents=True)
    audio = SHARED / "audio"
    sources = sorted(p for p in [*audio.iterdir(), *(audio / "extra").iterdir()] if p.suffix in (".wav", ".ogg",
                                                                                                   ".mp3", ".flac"))
    running = []
    for index in range(count):
        source = sources[index % len(sources)]  # looped when shorter than --seconds
        # the format moves on by one each time the sources come round: no two members are the same bytes (until
        # every source has been in every format), which --dedup would skip
        extension = list(ENCODERS)[(index + index // len(sources)) % len(ENCODERS)]
        key = f"{index:06d}"
        running.append(subprocess.Popen(
            ["ffmpeg", "-v", "fatal", "-stream_loop", "-1", "-t", str(seconds), "-i", str(source),
             "-c:a", ENCODERS[extension], str(unpacked / f"{key}{extension}")]))
        (unpacked / f"{key}.json").write_text(json.dumps({"__key__": key, "source": "bench"}))
        if len(running) >= os.cpu_count():
            if running.pop(0).wait():
                sys.exit("ffmpeg failed")
    if any(process.wait() for process in running):
        sys.exit("ffmpeg failed")
    files = sorted(unpacked.iterdir())
    for name, mode in (("shard.tar", "w"), ("shard.tar.gz", "w:gz")):
        with tarfile.open(top / name, mode) as tar:
            for path in files:
                tar.add(path, path.name)
    write_zst(top)
    write_zips(top)


def write_zips(top: Path) -> None:
    files = sorted((top / "unpacked").iterdir())
    for name, method in (("shard.zip", zipfile.ZIP_DEFLATED), ("shard-stored.zip", zipfile.ZIP_STORED)):
        with zipfile.ZipFile(top / name, "w", method) as archive:
            for path in files:
                archive.write(path, path.name)


def write_zst(top: Path) -> None:
    from backports import zstd  # zstd's default level, as `tar --zstd` writes it

    (top / "shard.tar.zst").write_bytes(zstd.compress((top / "shard.tar").read_bytes()))


def decompression_seconds(top: Path) -> dict:
    """CPU seconds (best of 3, this process) that decompressing each compressed archive alone takes: work the
    unpacked files never do, so a bound on its ratio by CPU time."""
    import gzip

    from backports import zstd

    def read_all(file) -> None:
        while file.read(1 << 18):
            pass

    def zip_members() -> None:
        with zipfile.ZipFile(top / "shard.zip") as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    read_all(member)

    readers = {"tar.gz": lambda: read_all(gzip.open(top / "shard.tar.gz")),
               "tar.zst": lambda: read_all(zstd.open(top / "shard.tar.zst")), "zip": zip_members}
    best = {}
    for name, read in readers.items():
        for _ in range(3):
            started = time.process_time()
            read()
            best[name] = min(best.get(name, float("inf")), time.process_time() - started)
    return best


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the runs ended so far, their workers included
    return usage.ru_utime + usage.ru_stime


def run(target: Path, output: Path, options: list) -> tuple:
    """(wall seconds, CPU seconds) of one run."""
    started, cpu = time.perf_counter(), cpu_seconds()
    result = subprocess.run([sys.executable, "-m", "audiotag", str(target), "-o", str(output), *options],
                            cwd=REPO, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"audiotag {target.name}: exit {result.returncode}: {result.stderr.decode().strip()}")
    return seconds, cpu_seconds() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="audio members in the shard")
    parser.add_argument("--seconds", type=float, default=10, help="length of each clip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="make (or reuse) the corpus here")
    parser.add_argument("options", nargs="*", help="after --: options for every audiotag run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        top = args.keep or Path(scratch) / "corpus"
        if not (top / "shard.tar.gz").is_file():
            make_shard(top, args.count, args.seconds)
        if not (top / "shard.tar.zst").is_file():  # a corpus kept from before the tar.zst
            write_zst(top)
        if not (top / "shard.zip").is_file():  # or the zips
            write_zips(top)
        count = sum(1 for path in (top / "unpacked").iterdir() if path.suffix != ".json")
        targets = {"unpacked": top / "unpacked", "tar": top / "shard.tar", "tar.gz": top / "shard.tar.gz",
                   "tar.zst": top / "shard.tar.zst", "zip": top / "shard.zip",
                   "zip stored": top / "shard-stored.zip"}
        times = {name: [] for name in targets}
        out = Path(scratch) / "out.jsonl"
        for target in targets.values():
            run(target, out, args.options)  # warm: page cache, model file
        for round_ in range(args.rounds):
            names = list(targets)[round_ % len(targets):] + list(targets)[:round_ % len(targets)]
            for name in names:
                times[name].append(run(targets[name], out, args.options))
        sizes = {name: sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
                 for name, path in targets.items()}
        decompressing = decompression_seconds(top)
    print(f"{count} audio members (+{count} JSON sidecars), {args.seconds:g} s each, options {args.options or '-'}, "
          f"{args.rounds} rounds, load {os.getloadavg()[0]:.1f}:")
    missed = False
    for name, values in times.items():
        walls = [wall for wall, _ in values]
        # Each round's ratio to the directory's run of the same round: a shared machine's load moves both alike.
        ratio = statistics.median(base[0] / value[0] for base, value in zip(times["unpacked"], values))
        cpu_ratio = statistics.median(base[1] / value[1] for base, value in zip(times["unpacked"], values))
        missed |= ratio < TARGET
        rounds = " ".join(f"{count / wall:.1f}" for wall in walls)
        print(f"  {name:10} {count / statistics.median(walls):6.1f} files/s (rounds: {rounds}), "
              f"{statistics.median(cpu for _, cpu in values) / count * 1000:5.1f} CPU ms/file, "
              f"{sizes[name] / 1e6:5.1f} MB; ratio {ratio:.3f}, by CPU time {cpu_ratio:.3f}"
              + ("" if name == "unpacked" else f" (target >= {TARGET})"))
    unpacked_cpu = statistics.median(cpu for _, cpu in times["unpacked"])
    for name, seconds in decompressing.items():
        print(f"  {name:10} decompressing it alone: {seconds / count * 1000:.2f} CPU ms/file, so at best "
              f"{unpacked_cpu / (unpacked_cpu + seconds):.3f} by CPU time")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
