"""How many corrupted FLAC/MP3/Ogg files are tagged from what could be decoded, instead of being errors.

    .venv/bin/python scripts/studies/salvage_rate.py [--mutants 100] [--seed 0]

Encodes 12 clips of $AUDIOTAG_SHARED/audio as FLAC and Ogg Vorbis with ffmpeg (MP3: the shared MP3 clips),
then makes MUTANTS corrupted copies per format: a run of 16-256 random bytes written over a random place past
the first 10% of the file (the header intact: a corrupt frame, as a crawl meets them). Each is decoded with
audiotag.decode as the CLI does. "before" counts every mutant whose decoding hit an error (audiotag before salvage made
each of them an error record); "after" counts the ones still without usable audio.
"""

import argparse
import collections
import subprocess
import tempfile
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))

from audiotag import decode  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=100, help="corrupted files per format (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    clips = sorted(p for p in (SHARED / "audio").rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg"))
    sources = {"FLAC": [], "OGG": [], "MP3": [p.read_bytes() for p in sorted((SHARED / "audio").rglob("*.mp3"))]}
    for clip in clips[:12]:
        for kind, codec in (("FLAC", "flac"), ("OGG", "libvorbis")):  # ffmpeg: libsndfile's Vorbis encoder can crash
            with tempfile.NamedTemporaryFile(suffix="." + kind.lower()) as target:  # a file: a seekable muxer
                subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip), "-c:a", codec, target.name],
                               check=True)
                sources[kind].append(Path(target.name).read_bytes())
    print(f"{'format':6s} {'mutants':>7s} {'decode error':>12s} {'before: errors':>14s} {'after: errors':>13s} "
          f"{'salvaged':>8s} {'audio kept':>10s}")
    reasons = collections.Counter()
    for kind, files in sources.items():
        hit = salvaged = after_errors = 0
        kept = []
        for index in range(args.mutants):
            original = files[index % len(files)]
            mutant = bytearray(original)
            size = int(rng.integers(16, 257))
            where = int(rng.integers(len(mutant) // 10, max(len(mutant) // 10 + 1, len(mutant) - size)))
            mutant[where:where + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            try:
                stream = decode.open_bytes(bytes(mutant))
                got = stream.read()
            except decode.AudioError as error:
                hit += 1
                after_errors += 1
                reasons[f"{kind}: {error}"] += 1
                continue
            if stream.warning:
                hit += 1
                salvaged += 1
                whole = decode.open_bytes(original).read()
                kept.append(got.duration / whole.duration)
                reasons[f"{kind}: warning: {stream.warning.split(': ', 1)[1]}"] += 1
        rate = f"{salvaged / hit:.0%}" if hit else "-"
        share = f"{np.mean(kept):.0%}" if kept else "-"
        print(f"{kind:6s} {args.mutants:7d} {hit:12d} {hit:14d} {after_errors:13d} {rate:>8s} {share:>10s}")
    print("\nwhat happened (most common):")
    for reason, count in reasons.most_common(12):
        print(f"  {count:4d}  {reason[:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
