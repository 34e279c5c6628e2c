"""audiotag against upstream EfficientAT's own inference loop, whole processes, on the batch benchmark's clips.

    .venv/bin/python scripts/bench/bench_upstream.py [--count 200] [--seconds 10] [--rounds 3] [--keep DIR]

Upstream's loop is its inference.py applied to every clip in one process: ``librosa.load(sr=32000, mono=True)``
(soundfile in float32, the mean over channels, soxr HQ: ../shared/reference/FRONTEND.md, section 0), then
``AugmentMelSTFT`` in eval (pre-emphasis, ``torch.stft`` with a symmetric Hann window, power, the Kaldi mel
filterbank, ``log(x + 1e-5)``, ``(x + 4.5) / 5``) and the mn04_as network in torch with torch's default threads, then
the sigmoid and its top labels, printed. Upstream's repository, librosa and torchaudio are not installed here, so the
loop is written from FRONTEND.md with the same operations in the same libraries (the network is
scripts/model/efficientat_mn.py, loaded from the checkpoint in ../shared/upstream; the Kaldi filterbank is made on
every call, as upstream's forward makes it, from FRONTEND.md's formulas). torch is the export-time install (setup.sh).
Not modelled: librosa's own import and checks (numba), so upstream's real loop can only be slower than this one.

Timed: each whole process (Python's start, imports, model load, every clip) - ``python THIS --upstream-loop DIR``
against ``audiotag DIR -o FILE`` with its defaults - taking turns, the best of ``--rounds`` each. The two runs'
top labels are compared as a check that both tagged the same clips. Target (issue 22): audiotag >= 8x.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))


def upstream_loop(directory: Path) -> None:
    """Tag every clip of ``directory`` as upstream's inference.py does, one line per clip: name, top label index."""
    import numpy as np
    import soundfile
    import soxr
    import torch

    sys.path.insert(0, str(REPO / "scripts" / "model"))
    from efficientat_mn import MobileNetV3, width_from_name

    model = MobileNetV3(width_from_name("mn04_as"))
    model.load_state_dict(torch.load(SHARED / "upstream" / "mn04_as_mAP_432.pt", map_location="cpu",
                                     weights_only=True))
    model.eval()
    window = torch.hann_window(800, periodic=False)
    preemphasis = torch.tensor([[[-0.97, 1.0]]])

    def mel_banks() -> torch.Tensor:  # torchaudio's kaldi get_mel_banks(128, 1024, 32000, 0, 15000), padded to 513
        def to_mel(hz):
            return 1127.0 * torch.log(1.0 + hz / 700.0)

        low, high = 0.0, 1127.0 * np.log(1.0 + 15000 / 700.0)
        delta = torch.tensor((high - low) / 129, dtype=torch.float32)
        bins = torch.arange(128, dtype=torch.float32).unsqueeze(1)
        left, center, right = low + bins * delta, low + (bins + 1.0) * delta, low + (bins + 2.0) * delta
        mel = to_mel(31.25 * torch.arange(512, dtype=torch.float32)).unsqueeze(0)
        up, down = (mel - left) / (center - left), (right - mel) / (right - center)
        banks = torch.max(torch.zeros(1), torch.min(up, down))
        return torch.nn.functional.pad(banks, (0, 1))

    def mel(waveform: torch.Tensor) -> torch.Tensor:  # AugmentMelSTFT.forward in eval
        x = torch.nn.functional.conv1d(waveform.unsqueeze(1), preemphasis).squeeze(1)
        x = torch.stft(x, 1024, hop_length=320, win_length=800, center=True, normalized=False, window=window,
                       return_complex=False)
        x = (x ** 2).sum(dim=-1)
        torch.randint(10, (1,)), torch.randint(2000, (1,))  # the augmentation's draws, discarded in eval
        x = torch.matmul(mel_banks(), x)  # upstream makes the filterbank on every call
        return (torch.log(x + 1e-5) + 4.5) / 5

    for path in sorted(directory.iterdir()):
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)  # librosa.load(sr=32000, mono=True)
        samples = samples.mean(axis=1)
        if rate != 32000:
            samples = soxr.resample(samples, rate, 32000, quality="soxr_hq").astype(np.float32)
        with torch.no_grad():
            logits, _ = model(mel(torch.from_numpy(samples[None, :])).unsqueeze(0))
        scores = torch.sigmoid(logits.float()).squeeze().numpy()
        print(path.name, int(np.argmax(scores)), flush=True)


def timed(command: list, **kwargs) -> tuple:
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - start, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="clips in the corpus (scripts/bench/make_corpus.py)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="make (or reuse) the corpus here instead of a temporary folder")
    parser.add_argument("--upstream-loop", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.upstream_loop:
        upstream_loop(args.upstream_loop)
        return 0

    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    from make_corpus import make_corpus

    with tempfile.TemporaryDirectory() as scratch:
        corpus = args.keep or Path(scratch) / "corpus"
        if not corpus.exists() or not any(corpus.iterdir()):
            corpus.mkdir(parents=True, exist_ok=True)
            make_corpus(corpus, args.count, args.seconds)
        count = sum(1 for _ in corpus.iterdir())
        out = Path(scratch) / "out.jsonl"
        commands = {"upstream loop": [sys.executable, __file__, "--upstream-loop", str(corpus)],
                    "audiotag DIR": [sys.executable, "-m", "audiotag", str(corpus), "-o", str(out)]}
        seconds = {name: [] for name in commands}
        outputs = {}
        for _ in range(args.rounds):  # the two take turns
            for name, command in commands.items():
                wall, outputs[name] = timed(command, cwd=REPO)
                seconds[name].append(wall)
        upstream_top = dict(line.split() for line in outputs["upstream loop"].splitlines())
        ours_top = {Path(record["path"]).name: str(record["tags"][0]["index"])
                    for record in map(json.loads, out.read_text().splitlines())}
        same = sum(ours_top.get(name) == top for name, top in upstream_top.items())
    print(f"{count} clips of {args.seconds:g} s, {os.cpu_count()} CPUs, whole processes, the best of {args.rounds}\n")
    print("| run | wall s | files/s |")
    print("|---|---|---|")
    for name, times in seconds.items():
        print(f"| {name} | {min(times):.2f} | {count / min(times):.1f} |")
    ratio = min(seconds["upstream loop"]) / min(seconds["audiotag DIR"])
    print(f"\naudiotag / upstream: {ratio:.1f}x (target >= 8x); the same top label on {same} of {count} clips")
    return 0 if ratio >= 8 and same == count else 1


if __name__ == "__main__":
    sys.exit(main())
