"""Two exports of the model side by side: run time per window and how far their outputs differ.

    .venv/bin/python scripts/bench/bench_model_files.py OTHER.onnx [--model audiotag/assets/mn04_as.onnx] [--rounds 15]

Both are loaded as audiotag loads its model (audiotag.model.Model, one onnxruntime thread) and fed the same log-mel
input of the shared clips (10 s windows, batch 1 and 8); the runs alternate (A B, B A, ...) so load on the machine
hits both alike. Made to measure what onnxruntime's symbolic shape inference in scripts/model/export_model.py is worth
(OTHER: a model exported without it).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))

from audiotag import decode
from audiotag.infer import frontend  # noqa: E402
from audiotag.infer.model import Model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path)
    parser.add_argument("--model", type=Path, default=REPO / "audiotag" / "assets" / "mn04_as.onnx")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    models = {"model": Model(args.model, threads=1), "other": Model(args.other, threads=1)}
    clips = sorted((SHARED / "audio").glob("*.wav"))[:8]
    mels = [frontend.log_mel(decode.load(clip).samples[:decode.TARGET_RATE * 10]) for clip in clips]
    frames = min(mel.shape[-1] for mel in mels)
    batch = np.stack([mel[:, :frames] for mel in mels])  # (clips, 128, frames)
    inputs = {"batch 1": batch[:1], f"batch {len(batch)}": batch}
    print(f"{args.model.name} vs {args.other}; {len(batch)} clips, {frames} frames; load {os.getloadavg()[0]:.2f}")
    print("| input | model ms | other ms | ratio | max abs output diff |\n|---|---|---|---|---|")
    for label, mel in inputs.items():
        outputs = {name: model.run(mel) for name, model in models.items()}
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(outputs["model"], outputs["other"]))
        times = {name: [] for name in models}
        for round_ in range(args.rounds):
            for name in (("model", "other") if round_ % 2 == 0 else ("other", "model")):
                started = time.perf_counter()
                models[name].run(mel)
                times[name].append(time.perf_counter() - started)
        ms = {name: statistics.median(values) * 1000 / len(mel) for name, values in times.items()}
        print(f"| {label} | {ms['model']:.2f} per window | {ms['other']:.2f} per window | "
              f"{ms['model'] / ms['other']:.3f} | {diff:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
