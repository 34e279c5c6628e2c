"""How fast archives are listed, against how fast one core tags their members: how many cores one listing feeds.

    .venv/bin/python scripts/bench/bench_listing.py [--count 100] [--seconds 10] [--shards 4] [--rounds 3]
                                                    [--repeat 4] [--keep DIR]

Listing a .warc.gz or a .tar.gz decompresses it whole, in the watcher, one archive after another: the workers get
members only as fast as it finds them. The corpus (``bench_archives.make_shard``: ``--count`` clips of WAV, FLAC,
MP3, Ogg, M4A and Opus made from ../shared/audio with Debian's ffmpeg) is written ``--shards`` times as a .warc.gz
of each clip beside one HTML page ("shard"), as a .warc.gz of each clip among 40 pages of 5 kB ("crawl": what a
crawl holds), and as a .tar.gz. Each round lists each folder with ``inputs.expand(..., open_archives=True)`` (what
``audiotag DIR --open-archives`` walks) in this thread, then with its WARC files handed to two lister processes
(``listers``: what a run does on a server of 16 cores or more; tar.gz files are listed in the thread all the same);
the median audio members/s of each. Then ``audiotag FOLDER --in-process --jobs 1`` on the unpacked clips gives
what one core tags per second, and so how many cores one listing keeps busy.
"""

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_archives import REPO, make_shard  # noqa: E402

sys.path.insert(0, str(REPO))
from audiotag.batch import inputs, listers  # noqa: E402

PAGE = b"<!doctype html><html><body>" + b"<p>a crawled page with a link to a recording</p>" * 300 + b"</body></html>"
SMALL_PAGE = PAGE[:5000]
KINDS = {"shard": ".warc.gz, a page per clip", "crawl": ".warc.gz, 40 small pages per clip", "targz": ".tar.gz"}


def make_warcs(top: Path, shards: int) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    clips = sorted(p for p in (top / "unpacked").iterdir() if p.suffix != ".json")
    for kind in KINDS:
        (top / kind).mkdir()
    for shard in range(shards):
        for kind, pages in (("shard", [PAGE]), ("crawl", [SMALL_PAGE] * 40)):
            with open(top / kind / f"crawl-{shard:03d}.warc.gz", "wb") as file:
                writer = WARCWriter(file, gzip=True)
                for clip in clips:
                    bodies = [(f"http://example.org/{clip.stem}-{i}.html", page, "text/html")
                              for i, page in enumerate(pages)] + \
                        [(f"http://example.org/{clip.name}", clip.read_bytes(), "audio/mpeg")]
                    for url, body, content_type in bodies:
                        writer.write_record(writer.create_warc_record(
                            url, "response", payload=io.BytesIO(body), http_headers=StatusAndHeaders(
                                "200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")))
        shutil.copyfile(top / "shard.tar.gz", top / "targz" / f"shard-{shard:03d}.tar.gz")


def listing_rate(folder: Path, processes: int, repeat: int) -> float:
    """Audio members/s of listing every archive in ``folder``, ``repeat`` times over (a run of a few archives
    would mostly time the listers' start): in this thread (0), or WARC files handed to ``processes`` lister
    processes, as a run on a large server does (``listers``)."""
    archives = sorted(str(path) for path in folder.iterdir()) * repeat
    wall = time.perf_counter()
    count = sum(1 for item in listers.listed(inputs.expand(archives, list_archives=False), processes)
                if item.error is None)
    return count / (time.perf_counter() - wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="clips in the corpus (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--shards", type=int, default=4, help="archives of each kind (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of listings (default 3)")
    parser.add_argument("--repeat", type=int, default=4, help="each listing lists the archives this many times over")
    parser.add_argument("--keep", metavar="DIR", type=Path, help="make (or reuse) the corpus in DIR and keep it")
    args = parser.parse_args()
    top = args.keep or Path(tempfile.mkdtemp(prefix="audiotag-listing-"))
    if not (top / "crawl").is_dir():
        top.mkdir(parents=True, exist_ok=True)
        make_shard(top, args.count, args.seconds)
        make_warcs(top, args.shards)
    try:
        rates = {(kind, processes): [] for kind in KINDS for processes in (0, 2)}
        order = list(rates)
        for round_number in range(args.rounds):
            for kind, processes in order[round_number % len(order):] + order[:round_number % len(order)]:
                rates[kind, processes].append(listing_rate(top / kind, processes, args.repeat))
        print(f"{args.shards} archives of each kind, {args.count} clips each, listed {args.repeat} times over; median "
              f"of {args.rounds} rounds")
        for kind, name in KINDS.items():
            one, two = (statistics.median(rates[kind, n]) for n in (0, 2))
            print(f"  {name:34} one listing {one:6.0f} audio members/s; two lister processes {two:6.0f}: "
                  f"{two / one:.2f}x")
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "audiotag", str(top / "unpacked"), "--in-process", "--jobs", "1",
                              "-o", str(top / "tags.jsonl")], cwd=REPO, capture_output=True)
        per_core = args.count / (time.perf_counter() - started)
        print(f"  one core tags {per_core:.0f} clips/s (audiotag --in-process --jobs 1, start-up included; exit "
              f"{run.returncode})")
        for kind, name in KINDS.items():
            print(f"  one listing of {name} keeps {statistics.median(rates[kind, 0]) / per_core:.0f} cores busy")
    finally:
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
