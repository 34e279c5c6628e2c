"""Issue 3, "Very short clips": what should audiotag do with a clip shorter than 1 s?

Upstream EfficientAT tags a clip in one pass over the clip as it is, and crashes below 514 samples. Clips of
1 s and more must stay exactly that, so only a rule for clips under 1 s is open. This script measures the
candidates on real audio:

1. Excerpts. Every clip of ``../shared/audio/extra/`` longer than 0.95 s (expected labels from its
   ``labels.csv``) and of ``../shared/audio/*.wav`` (expected = the top 3 of the whole clip) is cut to
   0.05..0.95 s, at its loudest region and at its start, and each excerpt is tagged after each remedy:
   ``asis`` (zero-padded only up to the 514-sample minimum), ``zpadL`` (zero-padded at the end to L s),
   ``tileL`` (repeated to L s, ``np.resize``) and ``xfade3`` (repeated to 3 s as a seamless loop: the excerpt's
   last 10 ms cross-faded, equal power, into its first 10 ms).
   Metrics: ``top3`` / ``top10`` = % of excerpts with an expected label in the top 3 / 10; ``rank`` = mean rank
   of the best expected label (1 = top); ``ov10`` = mean overlap of the excerpt's top 10 with the whole clip's
   top 10 (audiotag's own prediction: 10 s windows, 5 s hop); ``mus`` = % of excerpts with "Music" in the top 3
   although it is not in the whole clip's top 10 (the buzz of a short repetition); ``p1`` = mean top-1 score.
   Then paired differences (same excerpts) against ``tile1`` and against a no-information baseline: a fixed
   answer that never looks at the clip (the mean whole-clip logits of the other clips).
1b. Continuity at the 1 s threshold: a clip cut to 0.9 / 0.99 s and remedied, against the same clip at 1 s as is.
2. Whole clips under 2 s, each remedy applied to the whole clip (for clips of 1 s and more no rule may apply;
   the numbers only show how upstream's own one-pass answer holds up at that length).
3. Tiny excerpts, 1..1600 samples of the loudest region, tiled: where tiling stops carrying information.
4. Degenerate input: silence and constant (DC) clips of several lengths; one tiled sample is a constant.

Findings (mn04_as, 52 clips) and the rule they support, for clips of n samples after resampling to 32 kHz:
  n >= 32000 (1 s): untouched, one pass as upstream.  514 <= n < 32000: tiled (``np.resize``) to exactly 32000.
  n < 514 (16 ms, upstream's own minimum; includes a single sample): an error, "too short".
- Tiling beats the clip as is from 0.25 s on (0.5 s: top 10 82% vs 76%, ov10 +0.77 +-0.33) and never loses on
  ov10 or rank. Below 0.25 s ``asis`` gets more top-3 hits (34-42% vs 28-39%) by answering "Music" confidently
  (top-1 0.4-0.5, a spurious "Music" for 25%). Zero-padding loses to tiling at every length (ov10 -0.2..-2.2).
- Longer tiling buys little: 2 or 3 s gain ov10 +0.2..+0.4 over 1 s (beyond the noise only at 0.75-0.95 s,
  where it is a gain over upstream's own 1 s answer) and nothing in top 3; 10 s and the cross-fade gain nothing.
  Only 1 s is continuous at the threshold: 0.99 s tiled to 1 s agrees with the same clip at 1 s as is (ov10
  9.2, same top-1 90%) better than upstream agrees with itself between 1.00 and 1.01 s (8.1, 82%); tiled to
  3 s: 7.7, 82%.
- Below ~0.2 s every remedy is no better than the fixed answer (the model hears the repetition, not the
  sound), but scores stay low (top-1 0.2-0.3). Below 514 samples the tiled clip is a tone at 32000/n Hz that the
  model tags confidently (1-8 samples: top-1 0.63-0.78, "Sine wave 0.80" for one sample of 0.5): an error.
- Silence and constant clips need no case of their own: tiled, they are the same constant at 1 s and get
  upstream's answer for it (silence: "Sound effect" 0.08, "Silence" #3; DC 0.5: "Sine wave" 0.80).

Run from the repository root: ``.venv/bin/python scripts/studies/short_clip_study.py`` (about a minute on 2 cores).
"""

import argparse
import csv
import glob
import os
import time

import numpy as np

from audiotag import Tagger, TagOptions, decode
from audiotag.infer import frontend

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "audio")
SR = frontend.SAMPLE_RATE
LENGTHS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75, 0.95)  # excerpt lengths, seconds
TINY = (1, 2, 8, 32, 128, 320, 514, 800, 1600)  # excerpt lengths, samples at 32 kHz
XFADE = 0.01  # seconds of cross-fade at the seam of a looped excerpt
BATCH = 16


def remedies():
    """name -> function(samples) -> samples the frontend sees."""
    out = {"asis": lambda x: pad(x, frontend.MIN_SAMPLES)}
    for seconds in (1, 2):
        out[f"zpad{seconds}"] = lambda x, n=seconds * SR: pad(x, n)
    for seconds in (1, 2, 3, 10):
        out[f"tile{seconds}"] = lambda x, n=seconds * SR: tile(x, n)
    out["xfade3"] = lambda x: loop(x, 3 * SR)
    return out


def pad(x, n):
    return np.pad(x, (0, max(0, n - len(x))))


def tile(x, n):
    return np.resize(x, max(n, len(x)))


def loop(x, n):
    """Repeat x to n samples as a loop without a click: its tail fades out over its head fading in."""
    fade = min(int(XFADE * SR), len(x) // 4)
    if fade < 1:
        return tile(x, n)
    period = x[:len(x) - fade].copy()
    angle = np.linspace(0, np.pi / 2, fade + 2, dtype=np.float32)[1:-1]
    period[:fade] = x[:fade] * np.sin(angle) + x[len(x) - fade:] * np.cos(angle)
    return tile(period, n)


def loudest(x, n):
    """The n samples of x with the most energy."""
    if len(x) <= n:
        return x
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    start = int(np.argmax(energy[n:] - energy[:-n]))
    return x[start:start + n]


class Runner:
    def __init__(self, tagger):
        self.tagger = tagger

    def logits(self, signals):
        """Logits for a list of signals: log-mel one by one (a batched frontend is slower), model in batches."""
        out = [None] * len(signals)
        by_length = {}
        for i, x in enumerate(signals):
            by_length.setdefault(len(x), []).append(i)
        for indices in by_length.values():
            for k in range(0, len(indices), BATCH):
                chunk = indices[k:k + BATCH]
                mels = np.stack([frontend.log_mel(signals[i]) for i in chunk])
                logits, _ = self.tagger.model.run(mels)
                for i, row in zip(chunk, logits):
                    out[i] = row
        return out


def ranks(logits):
    """1-based rank of every label."""
    order = np.lexsort((np.arange(len(logits)), -logits))
    r = np.empty(len(logits), int)
    r[order] = np.arange(1, len(logits) + 1)
    return r


def score(logits, expected, full_top10, music):
    """One tagged excerpt -> (top3 hit, top10 hit, best expected rank, ov10, spurious Music, top-1 score)."""
    r = ranks(logits)
    best = min(r[i] for i in expected)
    top10 = set(np.flatnonzero(r <= 10))
    spurious = r[music] <= 3 and music not in full_top10
    return best <= 3, best <= 10, best, len(top10 & full_top10), spurious, 1 / (1 + np.exp(-logits.max()))


METRICS = [("top3 %", "{:.0f}"), ("top10 %", "{:.0f}"), ("rank", "{:.1f}"), ("ov10", "{:.2f}"), ("mus %", "{:.0f}"),
           ("p1", "{:.2f}")]


def summarise(rows):
    """rows of score() -> (top3 %, top10 %, mean rank, mean ov10, spurious Music %, mean top-1 score)."""
    a = np.array(rows, dtype=float)
    return tuple(a.mean(axis=0) * [100, 100, 1, 1, 100, 1])


def load_clips(tagger):
    labels = tagger.model.info.labels
    index = {name: i for i, name in enumerate(labels)}
    clips = []
    with open(os.path.join(SHARED, "extra", "labels.csv"), newline="") as f:
        for row in csv.DictReader(f):
            names = row["expected_labels"].split(";")
            missing = [n for n in names if n not in index]
            assert not missing, (row["file"], missing)
            clips.append((row["file"], os.path.join(SHARED, "extra", row["file"]), [index[n] for n in names]))
    for path in sorted(glob.glob(os.path.join(SHARED, "*.wav"))):
        clips.append((os.path.basename(path), path, None))  # expected: top 3 of the whole clip
    out = []
    for name, path, expected in clips:
        samples = decode.load(path).samples
        full = tagger.predict(decode.Audio(samples, SR, 1, len(samples) / SR), TagOptions(top_k=10))
        top10 = {t.index for t in full.tags}
        if expected is None:
            expected = [t.index for t in full.tags[:3]]
        out.append(dict(name=name, samples=samples, expected=expected, top10=top10, logits=full.logits,
                        full_best=min(ranks(full.logits)[i] for i in expected)))
    return out, index


def table(title, row_names, col_names, cells, fmt):
    print(f"\n{title}")
    width = max(6, max(len(c) for c in col_names) + 1, max(len(fmt(v)) for v in cells.values()) + 1)
    print(f"{'':>8}" + "".join(f"{c:>{width}}" for c in col_names))
    for r in row_names:
        print(f"{r:>8}" + "".join(f"{fmt(cells[r, c]):>{width}}" for c in col_names))


def excerpt_study(clips, runner, music, positions):
    rem = remedies()
    results = {}  # (length, remedy) -> rows
    for seconds in LENGTHS:
        n = int(round(seconds * SR))
        jobs = []
        for clip in clips:
            x = clip["samples"]
            if len(x) <= max(LENGTHS) * SR:  # the same clips at every length: all longer than the longest cut
                continue
            for position in positions:
                piece = loudest(x, n) if position == "loud" else x[:n]
                jobs.append((clip, position, piece))
        for name, fn in rem.items():
            logits = runner.logits([fn(piece) for _, _, piece in jobs])
            for (c, position, _), lg in zip(jobs, logits):
                row = score(lg, c["expected"], c["top10"], music)
                results.setdefault((seconds, name, "all"), []).append(row)
                results.setdefault((seconds, name, position), []).append(row)
    return results, list(rem)


def baseline(clips, cut, music):
    """score() of a fixed, clip-blind answer for each clip of ``cut``: the mean whole-clip logits of all other clips."""
    total = np.sum([c["logits"] for c in clips], axis=0)
    return [score((total - c["logits"]) / (len(clips) - 1), c["expected"], c["top10"], music) for c in cut]


def vs_prior(rows, prior, positions):
    """rows (clip-major, one per position) against the baseline of their clip."""
    a = np.array(rows, dtype=float)
    b = np.repeat(np.array(prior, dtype=float), len(positions), axis=0)
    d = a[:, 3] - b[:, 3]
    return f"{d.mean():+.2f}±{1.96 * d.std(ddof=1) / np.sqrt(len(d)):.2f} {int(a[:, 0].sum())}:{int(b[:, 0].sum())}"


def paired(results, seconds, name, base):
    """name vs base on the same excerpts: (mean ov10 difference, its 95% half-width, rank wins, rank losses)."""
    a = np.array(results[seconds, name, "all"], dtype=float)
    b = np.array(results[seconds, base, "all"], dtype=float)
    d = a[:, 3] - b[:, 3]
    return d.mean(), 1.96 * d.std(ddof=1) / np.sqrt(len(d)), int((a[:, 2] < b[:, 2]).sum()), \
        int((a[:, 2] > b[:, 2]).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--positions", default="loud,start", help="excerpt positions: loud, start or both")
    args = parser.parse_args()
    began = time.time()
    tagger = Tagger(threads=args.threads)
    runner = Runner(tagger)
    clips, index = load_clips(tagger)
    music, silence = index["Music"], index["Silence"]
    labels = tagger.model.info.labels
    full = np.array([c["full_best"] for c in clips])
    print(f"{len(clips)} clips; whole clip (audiotag as is): "
          f"expected label in top 3 for {100 * (full <= 3).mean():.0f}%, "
          f"top 10 for {100 * (full <= 10).mean():.0f}%, mean best rank {full.mean():.1f}")

    # 1. Excerpts
    positions = args.positions.split(",")
    results, names = excerpt_study(clips, runner, music, positions)
    cut = [c for c in clips if len(c["samples"]) > max(LENGTHS) * SR]
    rows = [f"{s:g}s" for s in LENGTHS]
    print(f"\n1. Excerpts of {len(cut)} clips, cut at: {' + '.join(positions)} [{time.time() - began:.0f}s]")
    prior = baseline(clips, cut, music)
    print("   no-information baseline (a fixed answer that knows nothing of the clip: the mean whole-clip logits of "
          "the other clips): " + ", ".join(f"{m} {f.format(v)}" for (m, f), v in zip(METRICS[:4], summarise(prior))))
    for k, (metric, fmt) in enumerate(METRICS):
        cells = {(f"{s:g}s", n): fmt.format(summarise(results[s, n, "all"])[k]) for s in LENGTHS for n in names}
        if k == 0 and len(positions) > 1:  # top3 also by position
            for s in LENGTHS:
                for n in names:
                    cells[f"{s:g}s", n] += "(" + "/".join(f"{summarise(results[s, n, p])[0]:.0f}"
                                                          for p in positions) + ")"
            metric += " all (" + "/".join(positions) + ")"
        table(metric, rows, names, cells, str)
    cells = {}
    for s in LENGTHS:
        for n in names:
            d, ci, win, loss = paired(results, s, n, "tile1")
            cells[f"{s:g}s", n] = "" if n == "tile1" else f"{d:+.2f}±{ci:.2f} {win}:{loss}"
    table("paired against tile1: ov10 difference ±95% and best-rank wins:losses", rows,
          [n for n in names if n != "tile1"], cells, str)
    cells = {}
    for s in LENGTHS:
        for n in ("asis", "tile1", "tile3"):
            cells[f"{s:g}s", n] = vs_prior(results[s, n, "all"], prior, positions)
    table("against the no-information baseline, same clips: ov10 difference ±95% and top-3 hits (remedy:baseline)",
          rows, ["asis", "tile1", "tile3"], cells, str)

    # 1b. Continuity at the threshold: a clip just under 1 s, remedied, against the same clip at 1 s as it is
    print(f"\n1b. At the threshold [{time.time() - began:.0f}s]: loudest 1 s of each clip; its first 0.9 / 0.99 s "
          "with a remedy vs the whole 1 s as is: top-10 overlap, top-1 agreement %")
    rem = remedies()
    ones = [loudest(c["samples"], SR) for c in cut]
    reference = runner.logits(ones)
    longer = runner.logits([loudest(c["samples"], SR + 320)[:SR + 320] for c in cut])  # upstream's own jitter
    def agree(a, b):
        return np.mean([len(set(np.argsort(-x)[:10]) & set(np.argsort(-y)[:10])) for x, y in zip(a, b)]), \
            100 * np.mean([np.argmax(x) == np.argmax(y) for x, y in zip(a, b)])
    print(f"   noise floor: 1.01 s as is vs 1 s as is: ov10 {agree(longer, reference)[0]:.2f}, "
          f"top-1 {agree(longer, reference)[1]:.0f}%")
    for seconds in (0.9, 0.99):
        n = int(round(seconds * SR))
        line = []
        for name in ("asis", "zpad1", "tile1", "tile2", "tile3", "tile10"):
            o, t1 = agree(runner.logits([rem[name](x[:n]) for x in ones]), reference)
            line.append(f"{name} {o:.2f}/{t1:.0f}")
        print(f"   {seconds:g}s: " + ", ".join(line))

    # 2. Whole short clips
    short = sorted((c for c in clips if len(c["samples"]) < 2 * SR), key=lambda c: len(c["samples"]))
    print(f"\n2. Whole clips under 2 s [{time.time() - began:.0f}s]: rank of the best expected label "
          "(top-1 label as is / tile1 / tile3)")
    print(f"{'clip':>34} {'dur':>5}" + "".join(f"{n:>7}" for n in names))
    for c in short:
        logits = runner.logits([fn(c["samples"]) for fn in rem.values()])
        best = [min(ranks(lg)[i] for i in c["expected"]) for lg in logits]
        tops = [labels[int(np.argmax(logits[names.index(n)]))] for n in ("asis", "tile1", "tile3")]
        print(f"{c['name'][:34]:>34} {len(c['samples']) / SR:5.2f}" + "".join(f"{b:>7}" for b in best)
              + "   " + " / ".join(tops))

    # 3. Tiny excerpts, tiled
    tiny_rem = {"tile514": lambda x: tile(x, frontend.MIN_SAMPLES), "tile1": lambda x: tile(x, SR),
                "tile3": lambda x: tile(x, 3 * SR)}
    cells = {}
    for n in TINY:
        pieces = [(c, loudest(c["samples"], n)) for c in clips]
        for name, fn in tiny_rem.items():
            logits = runner.logits([fn(p) for _, p in pieces])
            s = summarise([score(lg, c["expected"], c["top10"], music) for (c, _), lg in zip(pieces, logits)])
            cells[str(n), name] = f"{s[0]:.0f}/{s[3]:.1f}/{s[4]:.0f}/{s[5]:.2f}"
    table(f"3. Tiny excerpts (samples at 32 kHz) of the loudest region of all {len(clips)} clips, tiled: "
          f"top3 % / ov10 / mus % / p1 [{time.time() - began:.0f}s]",
          [str(n) for n in TINY], list(tiny_rem), cells, str)
    s = summarise(baseline(clips, clips, music))
    print(f"   no-information baseline on these clips: top3 {s[0]:.0f}% / ov10 {s[3]:.1f}")

    # 4. Degenerate input
    print(f"\n4. Degenerate input [{time.time() - began:.0f}s] (top 3, sigmoid scores; rank of Silence)")
    cases = [("zeros", 0.0), ("dc 1e-4", 1e-4), ("dc 0.01", 0.01), ("dc 0.5", 0.5)]
    for seconds in (0.016, 1, 3, 10):
        n = max(frontend.MIN_SAMPLES, int(round(seconds * SR)))
        logits = runner.logits([np.full(n, v, np.float32) for _, v in cases])
        for (case, _), lg in zip(cases, logits):
            order = np.argsort(-lg)[:3]
            text = ", ".join(f"{labels[i]} {1 / (1 + np.exp(-lg[i])):.2f}" for i in order)
            print(f"  {case:>8} {n / SR:6.3f}s: {text}  (Silence #{ranks(lg)[silence]})")
    print(f"\nruntime {time.time() - began:.1f}s wall, {time.process_time():.1f}s CPU")


if __name__ == "__main__":
    main()
