"""May FFmpeg's own Opus and Vorbis decoders take Ogg Opus/Vorbis from libsndfile? The parity rule (issue 22):
upstream reads Ogg through libsndfile, so its samples are the reference, and another decoder is allowed only if
top-10 stays identical and logits stay within 5e-5 (32 kHz clips) / 2.5e-4 (the extra set).

    .venv/bin/python scripts/studies/native_opus_vorbis.py

Vorbis: the extra set's 15 Ogg Vorbis recordings, through libsndfile (today) and through FFmpeg's `vorbis`
decoder in our slim build (audiotag.decode.ffmpeg), each against upstream's logits in ../shared/reference/extra.
Opus: our slim build has no native `opus` decoder (libopus only), so Debian's ffmpeg decodes with its native
`opus` (and with `libopus`, as a control) to float32 at 48 kHz; the Ogg Opus files are made with Debian's ffmpeg
(libopus, 96 kb/s) from the three 32 kHz clips and the extra set's WAVs. Both go through the same downmix and soxr.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))


def top10(logits):
    return list(np.argsort(-logits, kind="stable")[:10])


def logits(tagger, clip):
    """As tests/test_real_world.py tags the extra set: default windows up to 10 s, --window 0 beyond."""
    from audiotag import TagOptions

    return tagger.predict(clip, TagOptions() if clip.duration <= 10.0 else TagOptions(window=0)).logits


def ffmpeg_decode(path: Path, decoder: str):
    """(float32 frames x channels at 48 kHz) from Debian's ffmpeg with ``decoder``."""
    channels = int(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                                   "stream=channels", "-of", "csv=p=0", str(path)], check=True, capture_output=True,
                                  text=True).stdout)
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "quiet", "-c:a", decoder, "-i", str(path), "-f", "f32le",
                          "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, channels)


def main() -> int:
    from audiotag import Tagger, decode
    from audiotag.decode import ffmpeg

    tagger = Tagger()
    reference = {r["file"]: r for r in map(json.loads, open(SHARED / "reference" / "extra" / "reference.jsonl"))}

    print("## Vorbis in Ogg: libsndfile (today) vs FFmpeg's vorbis (slim build), against upstream (extra set)\n")
    print("| clip | samples max diff | logits vs upstream: libsndfile | FFmpeg vorbis | top-10 same (ours/upstream) |")
    print("|---|---|---|---|---|")
    worst = {"sample": 0.0, "sndfile": 0.0, "ffmpeg": 0.0}
    for path in sorted((SHARED / "audio" / "extra").glob("*.ogg")):
        ref_logits = np.load(SHARED / "reference" / "extra" / reference[path.name]["npz"])["logits"]
        sndfile = decode.load(path)
        with open(path, "rb") as file:
            native = ffmpeg.open_source(file).read()
        assert sndfile.codec == native.codec == "vorbis"
        same_length = len(sndfile.samples) == len(native.samples)
        diff = float(np.abs(sndfile.samples - native.samples).max()) if same_length else float("nan")
        a, b = logits(tagger, sndfile), logits(tagger, native)
        da, db = float(np.abs(a - ref_logits).max()), float(np.abs(b - ref_logits).max())
        same = top10(a) == top10(b) == top10(ref_logits)
        worst["sample"], worst["sndfile"], worst["ffmpeg"] = max(worst["sample"], diff), max(worst["sndfile"], da), \
            max(worst["ffmpeg"], db)
        lengths = "" if same_length else f" (lengths {len(sndfile.samples)} vs {len(native.samples)})"
        print(f"| {path.name} | {diff:.2e}{lengths} | {da:.2e} | {db:.2e} | {same} |")
    print(f"\nworst: samples {worst['sample']:.2e}; logits vs upstream: libsndfile {worst['sndfile']:.2e}, "
          f"FFmpeg vorbis {worst['ffmpeg']:.2e} (bar 2.5e-4)\n")

    print("## Opus in Ogg: libsndfile (libopus, float) vs Debian ffmpeg's native opus and libopus\n")
    print("libsndfile decodes Ogg Opus at the Opus rate at or above the header's input rate (24 kHz for a 16-24 kHz\n"
          "source); FFmpeg's decoders give 48 kHz always: those files cannot match whatever the decoder.\n")
    print("| clip | libsndfile rate | native: samples max diff | logits max diff | top-10 same | libopus: samples "
          "| logits |")
    print("|---|---|---|---|---|---|---|")
    sources = [SHARED / "audio" / f"{name}.wav" for name in ("music", "speech", "typing")] + \
        sorted((SHARED / "audio" / "extra").glob("*.wav"))
    with tempfile.TemporaryDirectory() as work:
        for source in sources:
            opus = Path(work) / (source.stem + ".opus")
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(source), "-c:a", "libopus", "-b:a",
                            "96k", str(opus)], check=True)
            sndfile = decode.load(opus)
            base = logits(tagger, sndfile)
            cells = []
            for decoder in ("opus", "libopus"):
                clip = decode.from_array(ffmpeg_decode(opus, decoder), 48000)
                samples = clip.samples
                n = min(len(samples), len(sndfile.samples))
                diff = float(np.abs(samples[:n] - sndfile.samples[:n]).max())
                theirs = logits(tagger, clip)
                cells += [f"{diff:.2e}" + ("" if len(samples) == len(sndfile.samples) else
                                           f" ({len(samples) - len(sndfile.samples):+d} samples)"),
                          f"{float(np.abs(theirs - base).max()):.2e}"]
                if decoder == "opus":
                    cells.append(str(top10(theirs) == top10(base)))
            main = " (32 kHz clip)" if source.parent.name == "audio" else ""
            print(f"| {source.name}{main} | {sndfile.sample_rate} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
