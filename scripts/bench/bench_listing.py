"""How fast archives are listed, one at a time and several at once, against how fast one core tags their members.

    .venv/bin/python scripts/bench/bench_listing.py [--count 100] [--seconds 10] [--shards 4] [--rounds 3]
                                                    [--keep DIR]

Listing a .warc.gz or a .tar.gz decompresses it whole, in one thread: the watcher hands the members to the workers
only as fast as that thread finds them. The corpus (``bench_archives.make_shard``: ``--count`` clips of WAV, FLAC,
MP3, Ogg, M4A and Opus made from ../shared/audio with Debian's ffmpeg) is written ``--shards`` times as a .warc.gz
(each clip an HTTP response, beside an HTML page, as a crawl holds them) and as a .tar.gz. Each round lists each
folder with ``inputs.expand(..., open_archives=True, listers=N)`` (what ``audiotag DIR --open-archives`` walks) for
N = 1 and 2, in an order rotated round by round; the median members/s of each, and the ratio of N = 2 to N = 1.
Then ``audiotag FOLDER --in-process --jobs 1`` on the unpacked clips gives what one core tags per second, and so
how many cores one listing keeps busy. (audiotag lists max(1, jobs x workers // 8) archives at once.)
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
from audiotag.batch import inputs  # noqa: E402

PAGE = b"<!doctype html><html><body>" + b"<p>a crawled page with a link to a recording</p>" * 300 + b"</body></html>"


def make_warcs(top: Path, shards: int) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    clips = sorted(p for p in (top / "unpacked").iterdir() if p.suffix != ".json")
    (top / "warc").mkdir()
    (top / "targz").mkdir()
    for shard in range(shards):
        with open(top / "warc" / f"crawl-{shard:03d}.warc.gz", "wb") as file:
            writer = WARCWriter(file, gzip=True)
            for clip in clips:
                for url, body, kind in ((f"http://example.org/{clip.stem}.html", PAGE, "text/html"),
                                        (f"http://example.org/{clip.name}", clip.read_bytes(), "audio/mpeg")):
                    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                        http_headers=StatusAndHeaders("200 OK", [("Content-Type", kind)],
                                                                      protocol="HTTP/1.1")))
        shutil.copyfile(top / "shard.tar.gz", top / "targz" / f"shard-{shard:03d}.tar.gz")


def listing_rate(folder: Path, listers: int) -> tuple:
    """(members/s, CPU seconds) of one listing of every archive in ``folder``."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(1 for item in inputs.expand([str(folder)], open_archives=True, listers=listers)
                if item.error is None)
    return count / (time.perf_counter() - wall), time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="clips in the corpus (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--shards", type=int, default=4, help="archives of each kind (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of listings (default 3)")
    parser.add_argument("--keep", metavar="DIR", type=Path, help="make (or reuse) the corpus in DIR and keep it")
    args = parser.parse_args()
    top = args.keep or Path(tempfile.mkdtemp(prefix="audiotag-listing-"))
    if not (top / "warc").is_dir():
        top.mkdir(parents=True, exist_ok=True)
        make_shard(top, args.count, args.seconds)
        make_warcs(top, args.shards)
    try:
        rates = {(kind, listers): [] for kind in ("warc", "targz") for listers in (1, 2)}
        order = list(rates)
        for round_number in range(args.rounds):
            for kind, listers in order[round_number % len(order):] + order[:round_number % len(order)]:
                rates[kind, listers].append(listing_rate(top / kind, listers)[0])
        print(f"{args.shards} archives of each kind, {args.count} clips each; median of {args.rounds} rounds")
        for kind, name in (("warc", ".warc.gz"), ("targz", ".tar.gz")):
            one, two = (statistics.median(rates[kind, n]) for n in (1, 2))
            print(f"  {name:9} one at a time {one:7.0f} members/s, two at once {two:7.0f}: {two / one:.2f}x")
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "audiotag", str(top / "unpacked"), "--in-process", "--jobs", "1",
                              "-o", str(top / "tags.jsonl")], cwd=REPO, capture_output=True)
        per_core = args.count / (time.perf_counter() - started)
        print(f"  one core tags {per_core:.0f} clips/s (audiotag --in-process --jobs 1, start-up included; exit "
              f"{run.returncode})")
        for kind, name in (("warc", ".warc.gz"), ("targz", ".tar.gz")):
            print(f"  one {name} listing keeps {statistics.median(rates[kind, 1]) / per_core:.0f} cores busy")
    finally:
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
