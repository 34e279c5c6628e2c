"""How window scores should become a clip score (--aggregate): the evidence for the default.

    .venv/bin/python scripts/studies/aggregate_study.py

On every clip of ../shared/audio/extra longer than one 10 s window, tags with 10 s windows every 5 s and each
aggregation, and reports per clip and in all:

- recall: of the clip's expected labels (extra/labels.csv), the share found in the top 10;
- agreement: of upstream's whole-clip top 10 (reference/extra/reference.jsonl, upstream's inference.py on the
  whole file), the share also in our top 10.

The whole-clip pass (--window 0, what upstream does) is shown as a third row for scale: it is upstream's own
answer, so its agreement is about 1 by construction.

A second table shows the other side of the choice: each clip of extra/ up to 10 s, put at a random place in
two minutes of quiet noise (a short sound in a long file), and the recall of its expected labels in the top 10.
"""

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
from audiotag import TagOptions, Tagger, decode  # noqa: E402

SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
EXTRA = SHARED / "audio" / "extra"
TOP = 10
METHODS = {"max": TagOptions(aggregate="max"), "mean": TagOptions(aggregate="mean"),
           "whole clip": TagOptions(window=0)}
NOISE_SECONDS = 120
NOISE_LEVEL = 0.003  # quiet background (rms), as in tests/test_real_world.py


def main() -> int:
    with open(EXTRA / "labels.csv", newline="", encoding="utf-8") as f:
        expected = {row["file"]: row["expected_labels"].split(";") for row in csv.DictReader(f)}
    with open(SHARED / "reference" / "extra" / "reference.jsonl") as f:
        upstream = {r["file"]: {t["index"] for t in r["top10"]} for r in map(json.loads, f)}
    tagger = Tagger(threads=1)
    totals = {name: [0, 0, 0.0] for name in METHODS}  # expected labels found, expected labels, agreement sum
    clips = 0
    print(f"{'clip':<44} {'s':>5} " + " ".join(f"{name + ' rec':>14} {name + ' agr':>14}" for name in METHODS))
    for name in sorted(expected):
        clip = decode.load(EXTRA / name)
        if clip.duration <= 10.0:
            continue
        clips += 1
        cells = []
        for method, options in METHODS.items():
            tags = tagger.predict(clip, options).tags[:TOP]
            found = sum(label in {t.label for t in tags} for label in expected[name])
            agreement = len({t.index for t in tags} & upstream[name]) / TOP
            totals[method][0] += found
            totals[method][1] += len(expected[name])
            totals[method][2] += agreement
            cells.append(f"{found:>10}/{len(expected[name]):<3} {agreement:>14.1f}")
        print(f"{name:<44} {clip.duration:>5.1f} " + " ".join(cells))
    print(f"\n{clips} clips over 10 s; recall = expected labels in the top {TOP}, agreement = share of upstream's "
          f"whole-clip top {TOP}")
    print(f"{'aggregate':<12} {'recall':>14} {'agreement':>10}")
    for method, (found, count, agreement) in totals.items():
        print(f"{method:<12} {found:>4}/{count:<4} {found / count:>5.3f} {agreement / clips:>10.3f}")
    short_events(tagger, expected)
    return 0


def short_events(tagger: Tagger, expected: dict) -> None:
    rng = np.random.default_rng(0)
    totals = {name: [0, 0] for name in METHODS}
    clips = 0
    for name in sorted(expected):
        clip = decode.load(EXTRA / name)
        if clip.duration > 10.0:
            continue
        clips += 1
        recording = (NOISE_LEVEL * rng.standard_normal(NOISE_SECONDS * 32000)).astype(np.float32)
        at = int(rng.integers(0, len(recording) - len(clip.samples)))
        recording[at:at + len(clip.samples)] += clip.samples
        for method, options in METHODS.items():
            labels = {t.label for t in tagger.tag(recording, 32000, options).tags[:TOP]}
            totals[method][0] += sum(label in labels for label in expected[name])
            totals[method][1] += len(expected[name])
    print(f"\n{clips} clips up to 10 s, each placed in {NOISE_SECONDS} s of quiet noise: expected labels in the "
          f"top {TOP}")
    for method, (found, count) in totals.items():
        print(f"{method:<12} {found:>4}/{count:<4} {found / count:>5.3f}")


if __name__ == "__main__":
    sys.exit(main())
