"""Export an EfficientAT `mnXX_as` checkpoint to the single ONNX file audiotag runs.

    python scripts/model/export_model.py                  # mn04_as -> audiotag/assets/mn04_as.onnx
    AUDIOTAG_ASSETS_DIR=../shared/upstream python scripts/model/export_model.py

Inputs (the checkpoint, the label CSV, the AudioSet ontology) come from, in order: --checkpoint/--labels/--ontology;
the directory in --assets-dir or $AUDIOTAG_ASSETS_DIR; the
download cache ${XDG_CACHE_HOME:-~/.cache}/audiotag/, filled from the upstream release and the AudioSet site.

The model is traced with torch's legacy TorchScript exporter (`dynamo=False`): here it takes about 3 s against
15 s for the dynamo exporter, folds BatchNorm into the convolutions, and writes one file (dynamo puts the weights
in a side `.data` file by default); both give the same operators. The result is checked against the PyTorch
module with onnxruntime, on the reference log-mels when present (`--reference-dir`), before it replaces the
output; the script exits non-zero if they disagree by more than --tolerance.

Needs torch, onnx, onnxruntime and numpy; torch is needed here only, never by the audiotag package.
"""

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from efficientat_mn import NUM_CLASSES, MobileNetV3, width_from_name

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_MODEL = "mn04_as"
RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
# Release file names of the AudioSet checkpoints (upstream models/mn/model.py); sha256 where we have checked it.
CHECKPOINTS = {
    "mn01_as": ("mn01_as_mAP_298.pt", None),
    "mn02_as": ("mn02_as_mAP_378.pt", None),
    "mn04_as": ("mn04_as_mAP_432.pt", "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"),
    "mn05_as": ("mn05_as_mAP_443.pt", None),
    "mn10_as": ("mn10_as_mAP_471.pt", None),
    "mn20_as": ("mn20_as_mAP_478.pt", None),
    "mn30_as": ("mn30_as_mAP_482.pt", None),
    "mn40_as": ("mn40_as_mAP_484.pt", None),
}
LABELS_FILE = "class_labels_indices.csv"
LABELS_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"
# The AudioSet ontology (CC BY-SA 4.0, Google): its nodes' names, MIDs and label sets go into the model.
ONTOLOGY_FILE = "ontology.json"
ONTOLOGY_URL = "https://raw.githubusercontent.com/audioset/ontology/master/ontology.json"
TOP_LEVEL_CATEGORIES = 7  # Human sounds, Animal, Music, Natural sounds, Sounds of things, Source-ambiguous, Channel

# The upstream inference frontend (AugmentMelSTFT in eval mode), stored so the package can check it matches.
FRONTEND = {
    "sample_rate": 32000, "n_fft": 1024, "win_length": 800, "hop_length": 320, "n_mels": 128,
    "fmin": 0.0, "fmax": 15000.0, "preemphasis": 0.97, "log_offset": 1e-05, "norm_shift": 4.5, "norm_scale": 5.0,
}
MODEL_FORMAT = "3"  # bump when inputs, outputs or metadata keys change meaning (2: "categories", 3: "ontology")
OPSET = 17
INPUT, OUTPUTS = "melspec", ("logits", "embedding")
TRAINING_OPS = {"Dropout", "BatchNormalization"}  # must not survive an eval-mode export
REFERENCE_MODEL = "mn04_as"  # the model upstream's reference logits come from; other models use only the mels


class ExportError(Exception):
    """A failure the user can act on; reported as one line, without a traceback."""


# ---------------------------------------------------------------------------------------------------- inputs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None) -> Path:
    """Fetch `url` to `dest` via a temporary `.part` file renamed into place only once complete and verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=dest.name + ".", suffix=".part", delete=False) as f:
        part = Path(f.name)
        try:
            digest = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=60) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    f.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            part.unlink(missing_ok=True)
            detail = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
            raise ExportError(f"cannot download {url}: {detail} (offline? pass --checkpoint/--labels or set "
                              "AUDIOTAG_ASSETS_DIR)") from e
    if sha256 and digest.hexdigest() != sha256:
        part.unlink()
        raise ExportError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}")
    os.replace(part, dest)
    return dest


def resolve(kind: str, explicit: Path | None, assets_dir: Path | None, filename: str, url: str,
            sha256: str | None) -> Path:
    """Find one input file: the explicit path, else the assets dir, else the download cache (downloading once)."""
    if explicit is not None:
        if not explicit.is_file():
            raise ExportError(f"{kind} file not found: {explicit}")
        return explicit
    if assets_dir is not None:
        path = assets_dir / filename
        if not path.is_file():
            raise ExportError(f"{kind} {filename} not found in the assets dir {assets_dir}")
        return path
    cached = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audiotag" / filename
    if cached.is_file() and (sha256 is None or sha256_of(cached) == sha256):
        return cached
    return download(url, cached, sha256)


def load_labels(path: Path) -> tuple[list[str], list[str]]:
    """(display names, mids) in class-index order, from the AudioSet CSV (names contain quoted commas)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"index", "mid", "display_name"}:
        raise ExportError(f"{path}: expected columns index,mid,display_name")
    if [int(r["index"]) for r in rows] != list(range(NUM_CLASSES)):
        raise ExportError(f"{path}: expected indices 0..{NUM_CLASSES - 1} in order, found {len(rows)} rows")
    return [r["display_name"] for r in rows], [r["mid"] for r in rows]


def load_ontology(path: Path, mids: list[str]) -> tuple[list[dict], list[dict]]:
    """The ontology's top-level categories (classes nobody lists as a child) and every node of it, each with the
    output indices of the labels in its subtree, the node itself included (a label under two parents belongs to
    both; an abstract node that is not a model class has its descendants' indices). The nodes let a user name a
    node for its whole subtree (``--only Music``) without the package reading the ontology."""
    try:
        with open(path, encoding="utf-8") as f:
            classes = {c["id"]: c for c in json.load(f)}
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path}: not the AudioSet ontology.json ({e})") from e
    children = {child for c in classes.values() for child in c["child_ids"]}
    tops = [c for c in classes.values() if c["id"] not in children]
    if len(tops) != TOP_LEVEL_CATEGORIES:
        raise ExportError(f"{path}: expected {TOP_LEVEL_CATEGORIES} top-level classes, found {len(tops)}")
    index_of = {mid: i for i, mid in enumerate(mids)}

    def indices(root: str) -> list[int]:
        subtree, stack = set(), [root]
        while stack:
            mid = stack.pop()
            if mid not in subtree:
                subtree.add(mid)
                stack.extend(classes[mid]["child_ids"])
        return sorted(index_of[mid] for mid in subtree if mid in index_of)

    categories = [{"name": top["name"], "mid": top["id"], "indices": indices(top["id"])} for top in tops]
    missing = set(range(len(mids))) - {i for c in categories for i in c["indices"]}
    if missing:
        raise ExportError(f"{path}: {len(missing)} labels are in no category (e.g. {mids[min(missing)]})")
    nodes = [{"name": c["name"], "mid": c["id"], "indices": indices(c["id"])} for c in classes.values()]
    return categories, nodes


def load_model(name: str, checkpoint: Path) -> MobileNetV3:
    """Build the network for `name` and load the checkpoint strictly; upstream saves a raw state_dict."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{checkpoint}: expected a raw state_dict (name -> tensor), as upstream publishes")
    model = MobileNetV3(width_from_name(name))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{checkpoint} does not fit {name}: {str(e).splitlines()[0]}") from e
    return model.eval()


# ---------------------------------------------------------------------------------------------------- export


def export(model: MobileNetV3, path: Path, metadata: dict[str, str], doc: str) -> None:
    """Trace to ONNX at `path` (in an otherwise empty directory) with dynamic batch/frames, and add metadata."""
    example = torch.randn(2, 1, FRONTEND["n_mels"], 1000)
    axes = {INPUT: {0: "batch", 3: "frames"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}}
    with warnings.catch_warnings():  # the exporter is legacy by choice (module docstring); don't say so twice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    if [p.name for p in path.parent.iterdir()] != [path.name]:
        raise ExportError("the exporter wrote external data files; expected one self-contained .onnx")
    proto = with_shapes(onnx.load(str(path)))
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name = "audiotag scripts/model/export_model.py"
    proto.producer_version = f"torch {torch.__version__}"
    proto.doc_string = doc
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def with_shapes(proto):
    """The graph with every intermediate tensor's shape, in terms of the symbolic batch and frames: onnxruntime's
    optimiser fuses what it can prove the shapes of (without them, 6 residual Adds and 18 Reshapes stay unfused;
    the model runs 3-5% faster with them, outputs within 1e-5)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    if inferred is None:
        raise ExportError("onnxruntime's symbolic shape inference failed on the exported graph")
    return inferred


def check_ops(path: Path) -> Counter:
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    if TRAINING_OPS & set(ops):
        raise ExportError(f"training-mode ops left in the graph: {sorted(TRAINING_OPS & set(ops))}")
    return ops


# ---------------------------------------------------------------------------------------------------- verify


def default_reference_dir() -> Path | None:
    if os.environ.get("AUDIOTAG_SHARED"):
        return Path(os.environ["AUDIOTAG_SHARED"]) / "reference"
    fallback = REPO_ROOT.parent / "shared" / "reference"
    return fallback if fallback.is_dir() else None


def reference_mels(ref_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, mel (128, T), upstream logits) for every reference clip that stored its mel."""
    clips = []
    for npz in sorted(ref_dir.glob("*.npz")) + sorted(ref_dir.glob("extra/*.npz")):
        with np.load(npz) as data:
            if "mel" in data.files:  # long clips keep only their logits
                clips.append((npz.stem, data["mel"], data["logits"]))
    if not clips:
        raise ExportError(f"no reference mels (*.npz with a 'mel' array) in {ref_dir}")
    return clips


def verify(model: MobileNetV3, path: Path, ref_dir: Path | None, tolerance: float, ref_tolerance: float,
           ref_logits: bool = True) -> None:
    """Compare onnxruntime with the PyTorch module, and (if `ref_logits`) the module with upstream's logits."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # see run(): one thread each
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_both(mel: np.ndarray) -> tuple[float, np.ndarray]:
        """Max abs diff ONNX vs torch over both outputs, and torch's logits."""
        with torch.inference_mode():
            expected = [t.numpy() for t in model(torch.from_numpy(mel))]
        got = session.run(list(OUTPUTS), {INPUT: mel})
        return max(float(np.abs(g - e).max()) for g, e in zip(got, expected)), expected[0]

    rng = np.random.default_rng(0)
    # Shapes other than the traced one prove the dynamic axes; upstream's mels lie in about [-1.5, 2].
    cases = [(f"random batch {b} x {t} frames",
              rng.uniform(-1.5, 2.0, (b, 1, FRONTEND["n_mels"], t)).astype(np.float32), None)
             for b, t in ((3, 1000), (1, 37))]
    if ref_dir is None:
        print("no reference dir: verifying on random mels only", file=sys.stderr)
    else:
        print(f"verifying against {ref_dir}", file=sys.stderr)
        cases += [(name, mel[None, None], logits[None] if ref_logits else None)
                  for name, mel, logits in reference_mels(ref_dir)]

    print(f"{'clip':<40} {'frames':>6} {'onnx-torch':>10} {'torch-ref':>10}")
    worst_onnx = worst_ref = 0.0
    for name, mel, ref in cases:
        diff, logits = run_both(mel)
        ref_diff = float(np.abs(logits - ref).max()) if ref is not None else None
        worst_onnx, worst_ref = max(worst_onnx, diff), max(worst_ref, ref_diff or 0.0)
        print(f"{name:<40} {mel.shape[-1]:>6} {diff:>10.2e} {'-' if ref is None else f'{ref_diff:.2e}':>10}")
    print(f"max abs diff onnx vs torch (logits and embedding): {worst_onnx:.2e}, tolerance {tolerance:g}")
    if ref_dir is not None and ref_logits:
        print(f"max abs logit diff torch vs upstream reference: {worst_ref:.2e}, tolerance {ref_tolerance:g}")
    if worst_onnx > tolerance:
        raise ExportError(f"ONNX outputs differ from PyTorch by {worst_onnx:.2e} > {tolerance:g}")
    if worst_ref > ref_tolerance:
        raise ExportError(f"PyTorch logits differ from the upstream reference by {worst_ref:.2e} > {ref_tolerance:g}")


# ---------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(CHECKPOINTS),
                   help="upstream model name (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, help="upstream .pt checkpoint (default: assets dir, else download)")
    p.add_argument("--labels", type=Path, help=f"AudioSet {LABELS_FILE} (default: assets dir, else download)")
    p.add_argument("--ontology", type=Path, help=f"AudioSet {ONTOLOGY_FILE} (default: assets dir, else download)")
    p.add_argument("--assets-dir", type=Path, default=os.environ.get("AUDIOTAG_ASSETS_DIR") or None,
                   help="directory holding the three files (default: $AUDIOTAG_ASSETS_DIR)")
    p.add_argument("--checkpoint-url", help="download URL for the checkpoint (default: the upstream release)")
    p.add_argument("--labels-url", default=LABELS_URL, help="download URL for the label CSV (default: AudioSet)")
    p.add_argument("--ontology-url", default=ONTOLOGY_URL, help="download URL for the ontology (default: GitHub)")
    p.add_argument("--if-stale", action="store_true",
                   help="do nothing when the output exists and has this script's model format (for setup.sh)")
    p.add_argument("--output", type=Path, help="ONNX file to write (default: audiotag/assets/<model>.onnx)")
    p.add_argument("--reference-dir", type=Path, default=default_reference_dir(),
                   help="reference *.npz (mel, logits) to verify on (default: $AUDIOTAG_SHARED/reference, else "
                        "../shared/reference; without one, random mels are used)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs output diff, ONNX vs torch")
    p.add_argument("--reference-tolerance", type=float, default=1e-3,
                   help="max abs logit diff, torch vs the upstream reference (catches a wrong architecture)")
    return p.parse_args(argv)


def model_format(path: Path) -> str | None:
    """The audiotag_model_format an existing .onnx says it has (None when unreadable or not an audiotag model)."""
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # a torn or foreign file: simply re-exported
        return None
    return meta.get("audiotag_model_format")


def run(args: argparse.Namespace) -> None:
    output = args.output or REPO_ROOT / "audiotag" / "assets" / f"{args.model}.onnx"
    if args.if_stale and output.is_file() and model_format(output) == MODEL_FORMAT:
        print(f"{output} is up to date (model format {MODEL_FORMAT})", file=sys.stderr)
        return
    filename, sha256 = CHECKPOINTS[args.model]
    checkpoint = resolve("checkpoint", args.checkpoint, args.assets_dir, filename,
                         args.checkpoint_url or RELEASE_URL + filename, sha256)
    labels_csv = resolve("labels", args.labels, args.assets_dir, LABELS_FILE, args.labels_url, None)
    ontology = resolve("ontology", args.ontology, args.assets_dir, ONTOLOGY_FILE, args.ontology_url, None)
    output.parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    # The model is tiny: one thread each for torch and onnxruntime beats their spinning thread pools (verification
    # took 2-4x longer with 2+2 threads on 2 cores, and 10x+ when another process was busy).
    torch.set_num_threads(1)
    checkpoint_sha = sha256_of(checkpoint)
    if sha256 and checkpoint_sha != sha256:
        print(f"warning: {checkpoint} has sha256 {checkpoint_sha}, not the published {sha256}", file=sys.stderr)
    names, mids = load_labels(labels_csv)
    categories, nodes = load_ontology(ontology, mids)
    model = load_model(args.model, checkpoint)
    metadata = {
        "model_name": args.model,
        "checkpoint_sha256": checkpoint_sha,
        "labels": json.dumps(names),
        "mids": json.dumps(mids),
        "frontend": json.dumps(FRONTEND),
        "categories": json.dumps(categories),
        "ontology": json.dumps(nodes, separators=(",", ":")),
        "ontology_sha256": sha256_of(ontology),
        "audiotag_model_format": MODEL_FORMAT,
    }
    doc = (f"EfficientAT {args.model} (MobileNetV3, width {width_from_name(args.model)}) AudioSet tagger. "
           f"Input {INPUT}: float32 log-mel [batch, 1, {FRONTEND['n_mels']}, frames] (see metadata 'frontend'). "
           f"Outputs: {OUTPUTS[0]} [batch, {NUM_CLASSES}] before the sigmoid; "
           f"{OUTPUTS[1]} [batch, {model.classifier[2].in_features}], "
           "the time-frequency average of the last conv layer, which feeds the classifier.")
    # Staged next to the output and renamed only once verified, so a failed run never leaves a bad model behind.
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / output.name
        export(model, staged, metadata, doc)
        ops = check_ops(staged)
        print(f"exported {staged.stat().st_size / 1e6:.2f} MB, opset {OPSET}; ops: {dict(sorted(ops.items()))}",
              file=sys.stderr)
        verify(model, staged, args.reference_dir, args.tolerance, args.reference_tolerance,
               ref_logits=args.model == REFERENCE_MODEL)
        os.replace(staged, output)
    print(f"wrote {output} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ExportError as e:
        print(f"export_model: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
