"""In-process time to tag one 10 s clip: frontend and model, median of N runs (one onnxruntime thread and all).

    .venv/bin/python scripts/bench/bench_clip.py [--runs 30] [--clip ../shared/audio/music.wav]
"""

import argparse
import os
import statistics
import time
from pathlib import Path


from audiotag import Tagger, decode
from audiotag.infer import frontend

SHARED = Path(os.environ.get("AUDIOTAG_SHARED", Path(__file__).resolve().parent.parent.parent.parent / "shared"))


def median_ms(function, runs: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--clip", type=Path, default=SHARED / "audio" / "music.wav")
    args = parser.parse_args()
    clip = decode.load(args.clip)
    print(f"clip {args.clip.name}: {clip.duration:.1f} s; load average {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} cores")
    mel = frontend.log_mel(clip.samples)
    decoding = median_ms(lambda: decode.load(args.clip), args.runs)
    front = median_ms(lambda: frontend.log_mel(clip.samples), args.runs)
    print(f"decode {decoding:6.2f} ms   frontend {front:6.2f} ms")
    for threads in (1, 0):
        tagger = Tagger(threads=threads)
        model = median_ms(lambda: tagger.model.run(mel[None]), args.runs)
        whole = median_ms(lambda: tagger.predict(clip), args.runs)
        print(f"onnxruntime threads {threads or 'all'}: model {model:6.2f} ms   tag (frontend + model) {whole:6.2f} ms")


if __name__ == "__main__":
    main()
