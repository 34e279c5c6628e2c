"""How to find when a sound starts and ends: the evidence for the --events method.

    .venv/bin/python scripts/studies/event_study.py [--quick]

Builds recordings of 20 s speech, 20 s music, 20 s typing from ../shared/audio (each 10 s clip looped; the
acceptance recording, plus the two other orders so a method is not tuned to one), tags them with several window
lengths and hops, and turns the window scores into events with two attributions and several presence thresholds:

- span: a window where the label is present marks its whole span (start to end) present;
- centre: a window's score stands for the hop-long stretch around the window's centre.

A label is present where its score is at least ``max(FLOOR, relative x its peak in the file)``. For each method the
table gives the worst start/end error (seconds) of the Speech, Music and Typing events (Typing or Computer
keyboard, whichever is nearer), over the three recordings, and the model cost relative to plain tagging (10 s
windows every 5 s), measured side by side in this run. A missing or split event counts as an error of 60 s.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parent.parent.parent
from audiotag import TagOptions, Tagger  # noqa: E402
from audiotag.infer.events import find_events  # noqa: E402

SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
PART_SECONDS = 20
TARGETS = {"speech": ("Speech",), "music": ("Music",), "typing": ("Typing", "Computer keyboard")}
ORDERS = (("speech", "music", "typing"), ("typing", "speech", "music"), ("music", "typing", "speech"))
LAYOUTS = ((10, 5), (10, 1), (5, 1), (4, 1), (3, 1), (2, 1), (2, 0.5), (1, 0.5))
RELATIVE = (0.0, 0.3, 0.5, 0.7)
FLOORS = (0.1, 0.2, 0.3)
GAPS = (0.0, 1.0, 2.0)
MISSING = 60.0


def part(name: str, seconds: float = PART_SECONDS) -> np.ndarray:
    samples, rate = soundfile.read(SHARED / "audio" / f"{name}.wav", dtype="float32")
    assert rate == 32000 and samples.ndim == 1
    return np.resize(samples, int(seconds * rate))  # np.resize loops the clip


def recording(order) -> np.ndarray:
    return np.concatenate([part(name) for name in order])


def window_scores(tagger: Tagger, samples: np.ndarray, window: float, hop: float):
    """(starts, ends, scores (windows, 527)) of every window, and the seconds it took."""
    started = time.perf_counter()
    prediction = tagger.tag(samples, 32000, TagOptions(top_k=527, window=window, hop=hop, segments=True))
    seconds = time.perf_counter() - started
    starts = np.array([s.start for s in prediction.segments])
    ends = np.array([s.end for s in prediction.segments])
    scores = np.zeros((len(starts), 527))
    for row, segment in enumerate(prediction.segments):
        for tag in segment.tags:
            scores[row, tag.index] = tag.score
    return starts, ends, scores, seconds


def worst_error(events, labels, order) -> float:
    """Worst boundary error over the three parts: for each, the event of its label(s) nearest to the truth."""
    worst = 0.0
    for position, name in enumerate(order):
        truth = (position * PART_SECONDS, (position + 1) * PART_SECONDS)
        candidates = [e for e in events if labels[e.index] in TARGETS[name]]
        errors = [max(abs(e.start - truth[0]), abs(e.end - truth[1])) for e in candidates]
        worst = max(worst, min(errors, default=MISSING))
    return worst


def cost_of_events(tagger: Tagger, samples: np.ndarray, runs: int = 5) -> None:
    """What --events as shipped adds: plain tagging against tagging with events, interleaved, best of ``runs``."""
    seconds = {False: [], True: []}
    for _ in range(runs):
        for events in (False, True):
            started = time.perf_counter()
            tagger.tag(samples, 32000, TagOptions(events=events))
            seconds[events].append(time.perf_counter() - started)
    hours = len(samples) / 32000 / 3600
    plain, with_events = min(seconds[False]) / hours, min(seconds[True]) / hours
    print(f"\nas shipped (one thread, best of {runs}): plain tagging {plain:.1f} s per hour of audio, with --events "
          f"{with_events:.1f} s per hour ({with_events / plain:.2f}x; the event windows' scores hold "
          f"{3600 / 1.0 * 527 * 4 / 1e6:.1f} MB per hour of audio until the clip ends)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the acceptance recording only, fewer layouts")
    args = parser.parse_args()
    tagger = Tagger(threads=1)
    labels = tagger.model.info.labels
    orders = ORDERS[:1] if args.quick else ORDERS
    layouts = LAYOUTS[:1] + LAYOUTS[-3:] if args.quick else LAYOUTS
    recordings = [recording(order) for order in orders]
    tagger.tag(recordings[0][:32000 * 10], 32000)  # warm up

    results, costs = [], {}
    for window, hop in layouts:
        scored = [window_scores(tagger, samples, window, hop) for samples in recordings]
        costs[(window, hop)] = sum(s[3] for s in scored)
        for attribution in ("span", "centre"):
            for relative in RELATIVE:
                for floor in FLOORS:
                    for gap in GAPS:
                        worst = 0.0
                        for order, (starts, ends, scores, _) in zip(orders, scored):
                            events = find_events(starts, ends, scores, attribution=attribution, floor=floor,
                                                 relative=relative, gap=gap, duration=len(recordings[0]) / 32000)
                            worst = max(worst, worst_error(events, labels, order))
                        results.append((worst, window, hop, attribution, relative, floor, gap))
    base = costs[LAYOUTS[0]]
    print(f"model cost per hour of audio, plain tagging (10 s / 5 s): {base / (60 * len(orders)) * 3600:.1f} s "
          f"on one thread")
    print(f"{'window':>6} {'hop':>5} {'attribution':>11} {'relative':>8} {'floor':>5} {'gap':>4} "
          f"{'worst error s':>13} {'cost x plain':>12}")
    for worst, window, hop, attribution, relative, floor, gap in sorted(results, key=lambda r: (r[0], costs[r[1:3]])):
        print(f"{window:>6g} {hop:>5g} {attribution:>11} {relative:>8g} {floor:>5g} {gap:>4g} {worst:>13.2f} "
              f"{costs[(window, hop)] / base:>12.2f}")
    cost_of_events(tagger, recordings[0])
    print("\nbest per layout:")
    for window, hop in layouts:
        best = min(r for r in results if r[1:3] == (window, hop))
        print(f"  {window:g} s / {hop:g} s: worst error {best[0]:.2f} s ({best[3]}, relative {best[4]:g}, "
              f"floor {best[5]:g}, gap {best[6]:g}), cost {costs[(window, hop)] / base:.2f}x plain, "
              f"{costs[(window, hop)] / (60 * len(orders)) * 3600:.0f} s per hour of audio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
