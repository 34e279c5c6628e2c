"""Per-clip parity with upstream EfficientAT: mel and logit max abs differences, top-10 match.

    .venv/bin/python scripts/tools/parity_report.py          # reads $AUDIOTAG_SHARED (default ../shared)

The tests assert the tolerances; this prints the figures behind them, for every reference clip: the three 32 kHz
clips of ``audio/`` (mel, logits) and the real recordings of ``audio/extra/`` (mel and logits; where the clip
was resampled, the mel difference includes the resampler's rounding, and only the logits have a tolerance).
Clips over 10 s are tagged with ``--window 0``, as upstream tags them; clips under 1 s fall under the short-clip
rule and are listed apart.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent

from audiotag import Tagger, TagOptions, decode
from audiotag.infer import frontend  # noqa: E402

SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))


def main() -> int:
    tagger = Tagger(threads=1)
    worst_mel = {True: 0.0, False: 0.0}  # by "recorded at 32 kHz"
    worst_logit = 0.0
    mismatches = 0
    print(f"{'clip':44s} {'rate':>6s} {'seconds':>7s} {'mel diff':>9s} {'logit diff':>10s}  top-10")
    for subdir in ("", "extra"):
        for record in _records(subdir):
            clip = decode.load(SHARED / "audio" / subdir / record["file"])
            with np.load(SHARED / "reference" / subdir / record["npz"]) as arrays:
                ref = dict(arrays)
            if clip.duration < 1.0:
                print(f"{record['file']:44s} {clip.sample_rate:6d} {clip.duration:7.2f} {'':>9s} {'':>10s}  "
                      "(short-clip rule applies)")
                continue
            options = TagOptions() if clip.duration <= 10.0 else TagOptions(window=0)
            prediction = tagger.predict(clip, options)
            mel_text = ""
            if "mel" in ref and ref["mel"].shape[-1] == frontend.frame_count(len(clip.samples)):
                mel_diff = float(np.abs(frontend.log_mel(clip.samples) - ref["mel"]).max())
                native = clip.sample_rate == frontend.SAMPLE_RATE
                worst_mel[native] = max(worst_mel[native], mel_diff)
                mel_text = f"{mel_diff:.2e}"
            logit_diff = float(np.abs(prediction.logits - ref["logits"]).max())
            worst_logit = max(worst_logit, logit_diff)
            same = [t.index for t in prediction.tags] == [t["index"] for t in record["top10"]]
            mismatches += not same
            print(f"{record['file']:44s} {clip.sample_rate:6d} {clip.duration:7.2f} {mel_text:>9s} {logit_diff:10.2e}  "
                  f"{'identical' if same else 'DIFFERENT'}")
    print(f"worst mel diff: {worst_mel[True]:.2e} on 32 kHz clips (tolerance 1e-4), {worst_mel[False]:.2e} on "
          f"resampled ones; worst logit diff {worst_logit:.2e} (tolerance 2e-4 at 32 kHz, 1e-3 resampled); "
          f"top-10 different on {mismatches} clips")
    return 1 if mismatches else 0


def _records(subdir: str) -> list:
    with open(SHARED / "reference" / subdir / "reference.jsonl") as lines:
        return [json.loads(line) for line in lines]


if __name__ == "__main__":
    sys.exit(main())
