"""The Tagger: samples in, ranked AudioSet labels out.

Clips up to one window (10 s) go through the model in one pass, as upstream does. Longer clips are cut into
windows with a hop (``windows.py``); a label's clip score is its highest window score, so a short event in a
long file still shows, and the clip's embedding is the mean of its windows' embeddings.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import audio, frontend
from .assets import DEFAULT_MODEL, asset_path
from .model import Model, ModelError
from .windows import windows

# The short-clip rule, measured by scripts/short_clip_study.py on the real clips of ../shared/audio: clips under
# 1 s are repeated up to 1 s (it beats both upstream's answer and zero padding from 0.25 s on, and is the one length
# with no jump at the threshold); under 16 ms (upstream's own minimum) repeating makes a tone, not the sound, and
# the model answers confidently wrong, so those are refused.
SHORT_CLIP_SAMPLES = frontend.SAMPLE_RATE  # 1 s
MIN_CLIP_SAMPLES = frontend.MIN_SAMPLES  # 514 samples, 16 ms


@dataclass(frozen=True)
class TagOptions:
    """How a clip is cut into model passes and how much of the ranking is returned."""

    top_k: int = 10  # labels per result
    window: float = 10.0  # seconds per model pass (the length the model was trained on); 0 = whole clip
    hop: float = 5.0  # seconds between window starts for clips longer than a window
    segments: bool = False  # keep each window's top-k as well

    @property
    def window_samples(self) -> int:
        return int(round(self.window * frontend.SAMPLE_RATE))

    @property
    def hop_samples(self) -> int:
        return max(1, int(round(self.hop * frontend.SAMPLE_RATE)))


@dataclass(frozen=True)
class Tag:
    label: str  # AudioSet display name
    mid: str  # AudioSet machine id, e.g. /m/04rlf
    index: int  # output index, 0..526
    score: float  # sigmoid of the logit, 0..1 (independent per label, not a distribution)


@dataclass(frozen=True)
class Segment:
    start: float  # seconds into the clip (at 32 kHz, i.e. of the source too)
    end: float
    tags: list  # of Tag, best first


@dataclass(frozen=True)
class Prediction:
    """A clip's result: ranked tags and the raw arrays behind them."""

    tags: list  # of Tag, best first
    logits: np.ndarray  # (527,), per-label max over windows
    embedding: np.ndarray  # pooled features, mean over windows
    segments: list = field(default_factory=list)  # of Segment, when asked for


def model_input(samples: np.ndarray) -> np.ndarray:
    """One window's samples -> its log-mel, after the short-clip rule."""
    if len(samples) < MIN_CLIP_SAMPLES:
        milliseconds = 1000 * len(samples) / frontend.SAMPLE_RATE
        raise audio.AudioError(f"too short: {milliseconds:.1f} ms of audio, audiotag needs at least "
                               f"{1000 * MIN_CLIP_SAMPLES / frontend.SAMPLE_RATE:.0f} ms")
    if len(samples) < SHORT_CLIP_SAMPLES:
        samples = np.resize(samples, SHORT_CLIP_SAMPLES)  # np.resize repeats the clip to fill
    return frontend.log_mel(samples)


class Accumulator:
    """Combines the window results of one clip as they arrive, in any order."""

    def __init__(self, tagger: "Tagger", options: "TagOptions"):
        self.tagger, self.options = tagger, options
        self.logits = None
        self.embedding_sum = None
        self.count = 0
        self.segments = []

    def add(self, start: int, length: int, logits: np.ndarray, embedding: np.ndarray) -> Segment:
        self.logits = logits.copy() if self.logits is None else np.maximum(self.logits, logits)
        self.embedding_sum = embedding.astype(np.float64) if self.embedding_sum is None else self.embedding_sum + embedding
        self.count += 1
        segment = Segment(start / frontend.SAMPLE_RATE, (start + length) / frontend.SAMPLE_RATE,
                          self.tagger.top_tags(logits, self.options.top_k))
        if self.options.segments:
            self.segments.append(segment)
        return segment

    def prediction(self) -> Prediction:
        embedding = (self.embedding_sum / self.count).astype(np.float32)
        segments = sorted(self.segments, key=lambda s: s.start)
        return Prediction(self.tagger.top_tags(self.logits, self.options.top_k), self.logits, embedding, segments)


class Tagger:
    """Loads the model once; ``tag`` and ``predict`` may be called from several threads at once."""

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
        """Tag (frames,) or (frames, channels) float samples at any rate."""
        return self.predict(audio.from_array(samples, sample_rate), options)

    def predict(self, clip: audio.Audio, options: TagOptions = TagOptions()) -> Prediction:
        """Tag a decoded clip, in batches of windows."""
        accumulator = Accumulator(self, options)
        batch = []
        for start, samples in windows([clip.samples], options.window_samples, options.hop_samples):
            batch.append((start, len(samples), model_input(samples)))
            if len(batch) == self.model.max_batch:
                self._run(batch, accumulator)
                batch = []
        if batch:
            self._run(batch, accumulator)
        return accumulator.prediction()

    def _run(self, batch, accumulator) -> None:
        logits, embeddings = self.model.run(np.stack([mel for _, _, mel in batch]))
        for (start, length, _), row, embedding in zip(batch, logits, embeddings):
            accumulator.add(start, length, row, embedding)

    def top_tags(self, logits: np.ndarray, k: int) -> list:
        """The k highest-scoring labels, best first (ties broken by index, so output is stable)."""
        order = np.lexsort((np.arange(len(logits)), -logits))[:k]
        scores = 1.0 / (1.0 + np.exp(-logits[order].astype(np.float64)))
        info = self.model.info
        return [Tag(info.labels[i], info.mids[i], int(i), float(s)) for i, s in zip(order, scores)]
