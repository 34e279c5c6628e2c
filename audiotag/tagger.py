"""The Tagger: samples in, ranked AudioSet labels out.

Clips up to one window (10 s) go through the model in one pass, as upstream does. Longer clips are cut into
windows with a hop, every window goes through the model in one batch, and a label's clip score is its highest
window score, so a short event in a long file still shows.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import audio, frontend
from .assets import DEFAULT_MODEL, asset_path
from .model import Model, ModelError


@dataclass(frozen=True)
class TagOptions:
    """How a clip is cut into model passes and how much of the ranking is returned."""

    top_k: int = 10  # labels per result
    window: float = 10.0  # seconds per model pass (the length the model was trained on); 0 = whole clip
    hop: float = 5.0  # seconds between window starts for clips longer than a window


@dataclass(frozen=True)
class Tag:
    label: str  # AudioSet display name
    mid: str  # AudioSet machine id, e.g. /m/04rlf
    index: int  # output index, 0..526
    score: float  # sigmoid of the logit, 0..1 (independent per label, not a distribution)


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    tags: list


@dataclass(frozen=True)
class Prediction:
    """A clip's result: ranked tags and the raw arrays behind them."""

    tags: list  # of Tag, best first
    logits: np.ndarray  # (527,), per-label max over windows
    embedding: np.ndarray  # pooled features, mean over windows
    segments: list = field(default_factory=list)  # of Segment, one per window


def window_starts(n_samples: int, window: int, hop: int) -> list:
    """Window start offsets covering n samples; the last window ends at the clip's end."""
    if window <= 0 or n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


class Tagger:
    """Loads the model once; ``tag`` may be called from several threads at once."""

    def __init__(self, model_path: Optional[Path] = None, *, providers: Optional[Sequence[str]] = None,
                 threads: int = 0):
        self.model = Model(model_path or asset_path(DEFAULT_MODEL), providers=providers, threads=threads)
        info = self.model.info
        expected = {"sample_rate": frontend.SAMPLE_RATE, "n_mels": frontend.N_MELS,
                    "hop_length": frontend.HOP_LENGTH, "win_length": frontend.WIN_LENGTH}
        found = {key: info.frontend.get(key) for key in expected}
        if found != expected:
            raise ModelError(f"{self.model.path} expects frontend {found}, this audiotag computes {expected}")

    def tag(self, samples: np.ndarray, sample_rate: int, options: TagOptions = TagOptions()) -> Prediction:
        """Tag (frames,) or (frames, channels) samples at any rate."""
        return self.predict(audio.from_array(samples, sample_rate), options)

    def predict(self, clip: audio.Audio, options: TagOptions = TagOptions()) -> Prediction:
        samples = clip.samples
        window = int(round(options.window * frontend.SAMPLE_RATE))
        hop = max(1, int(round(options.hop * frontend.SAMPLE_RATE)))
        starts = window_starts(len(samples), window, hop)
        span = len(samples) if len(starts) == 1 else window
        mels = np.stack([frontend.log_mel(samples[start:start + span]) for start in starts])
        logits, embeddings = self.model.run(mels)
        segments = [Segment(start / frontend.SAMPLE_RATE, (start + span) / frontend.SAMPLE_RATE,
                            self.top_tags(row, options.top_k)) for start, row in zip(starts, logits)]
        clip_logits = logits.max(axis=0)
        return Prediction(self.top_tags(clip_logits, options.top_k), clip_logits, embeddings.mean(axis=0), segments)

    def top_tags(self, logits: np.ndarray, k: int) -> list:
        """The k highest-scoring labels, best first (ties broken by index, so output is stable)."""
        order = np.lexsort((np.arange(len(logits)), -logits))[:k]
        scores = 1.0 / (1.0 + np.exp(-logits[order].astype(np.float64)))
        info = self.model.info
        return [Tag(info.labels[i], info.mids[i], int(i), float(s)) for i, s in zip(order, scores)]
