"""The ONNX model: one factory that builds the onnxruntime session, and the labels the file carries.

onnxruntime is imported inside ``Model.__init__`` so that ``--help`` and ``--version`` never pay for it.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# Accelerators first; CPU always last so it is the fallback when nothing better is present.
PREFERRED_PROVIDERS = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
# Windows per run() call. Each window in a batch holds ~15 MB of activations (10 s windows). On the CPU larger
# batches are hardly faster per window (one thread: 3.7 ms at batch 1, 4.1 at 4; two: 2.9 at 4, 2.7 at 8), so 4
# bounds the memory; accelerators want large batches.
CPU_MAX_BATCH = 4
ACCELERATOR_MAX_BATCH = 16

_SHORT_NAMES = {name.removesuffix("ExecutionProvider").lower(): name for name in PREFERRED_PROVIDERS}
_SHORT_NAMES["directml"] = "DmlExecutionProvider"


class ModelError(RuntimeError):
    """The model file is missing, unreadable or not an audiotag model."""


def choose_providers(available: Sequence[str], requested: Optional[Sequence[str]] = None) -> list:
    """Execution providers to use, best first.

    ``requested`` (from ``--provider`` or ``AUDIOTAG_PROVIDERS``) is taken as given, in order, and each must be
    available; names may be short ("cuda", "cpu"). Otherwise the preferred order filtered by availability.
    """
    if requested:
        chosen = []
        for name in requested:
            full = _SHORT_NAMES.get(name.strip().lower(), name.strip())
            if full not in available:
                raise ModelError(f"execution provider {name!r} is not available (available: {', '.join(available)})")
            if full not in chosen:
                chosen.append(full)
        return chosen
    chosen = [name for name in PREFERRED_PROVIDERS if name in available]
    return chosen or list(available)


@dataclass(frozen=True)
class ModelInfo:
    """What the .onnx file says about itself (written by scripts/model/export_model.py)."""

    name: str
    checkpoint_sha256: str
    labels: tuple  # display names, index order
    mids: tuple  # AudioSet machine ids, index order
    frontend: dict  # settings the features must be computed with
    categories: tuple  # (name, output indices of the labels in its ontology subtree) per top-level category
    ontology: tuple = ()  # (name, mid, output indices of its subtree) per ontology node (model format 3 on)


class Model:
    """An onnxruntime session for an audiotag .onnx file; ``run`` is safe to call from many threads."""

    def __init__(self, path: Path, providers: Optional[Sequence[str]] = None, threads: int = 0):
        """``threads``: onnxruntime intra-op threads, 0 lets onnxruntime use every core."""
        # onnxruntime 1.31 otherwise writes telemetry files ($TMPDIR/.ses, ~/.cache/Microsoft) on every run.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning between ops: a spinning pool takes the cores that decoding
        # and the frontend need (in batch mode a 2-thread pool spent more CPU spinning than the model computing).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1  # the graph is a chain: parallelism lives inside ops
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: ORT's warnings are not for our users
        chosen = choose_providers(ort.get_available_providers(), providers)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as error:  # ORT raises several private exception types
            raise ModelError(f"cannot load model {path}: {error}") from error
        self.path = Path(path)
        self.threads = threads
        self.providers = self.session.get_providers()
        self.info = _read_info(self.session, path)

    @property
    def max_batch(self) -> int:
        """Windows worth putting in one run() call with the provider in use."""
        return CPU_MAX_BATCH if self.providers[0] == "CPUExecutionProvider" else ACCELERATOR_MAX_BATCH

    def run(self, mels: np.ndarray):
        """(batch, 128, frames) log-mels -> (logits (batch, 527), embeddings (batch, dim))."""
        logits, embedding = self.session.run(["logits", "embedding"], {"melspec": mels[:, None]})
        return logits, embedding


MODEL_FORMAT = "3"  # the audiotag_model_format scripts/model/export_model.py writes; 2 (no "ontology") is read too


def _read_info(session, path) -> ModelInfo:
    meta = session.get_modelmeta().custom_metadata_map
    if "categories" not in meta and "labels" in meta:  # exported before categories existed: say what to do
        raise ModelError(f"{path} has no category metadata (model format {meta.get('audiotag_model_format', '?')}, "
                         f"this audiotag reads {MODEL_FORMAT}): export it again with scripts/model/export_model.py")
    try:
        info = ModelInfo(
            name=meta["model_name"],
            checkpoint_sha256=meta["checkpoint_sha256"],
            labels=tuple(json.loads(meta["labels"])),
            mids=tuple(json.loads(meta["mids"])),
            frontend=json.loads(meta["frontend"]),
            categories=tuple((c["name"], np.array(c["indices"], np.int64)) for c in json.loads(meta["categories"])),
            ontology=tuple((n["name"], n["mid"], np.array(n["indices"], np.int64))
                           for n in json.loads(meta.get("ontology", "[]"))),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ModelError(f"{path} is not an audiotag model: metadata {error} missing or invalid") from error
    widths = {output.name: output.shape[-1] for output in session.get_outputs()}
    width = widths.get("logits")
    if len(info.labels) != width or len(info.mids) != width:
        raise ModelError(f"{path}: {len(info.labels)} labels but the model outputs {width} scores")
    if not all(len(indices) and indices.min() >= 0 and indices.max() < width for _, indices in info.categories):
        raise ModelError(f"{path}: a category names an empty or out-of-range set of labels")
    if not all(not len(indices) or (indices.min() >= 0 and indices.max() < width) for *_, indices in info.ontology):
        raise ModelError(f"{path}: an ontology node names an out-of-range label")
    return info
