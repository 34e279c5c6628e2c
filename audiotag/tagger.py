"""The Tagger: samples in, ranked AudioSet labels, top-level categories and (if asked) sound events out.

Clips up to one window (10 s) go through the model in one pass, as upstream does. Longer clips are cut into
windows with a hop (``windows.py``); a label's clip score is its highest window score by default (``aggregate``),
so a short event in a long file still shows, and the clip's embedding is the mean of its windows' embeddings.
With ``events`` the same stream is also cut into short windows (``events.py``), used for the events only.
"""

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from . import audio, events, frontend
from .assets import DEFAULT_MODEL, asset_path
from .model import Model, ModelError
from .windows import passes

# The short-clip rule, measured by scripts/short_clip_study.py on the real clips of ../shared/audio: clips under
# 1 s are repeated up to 1 s (it beats both upstream's answer and zero padding from 0.25 s on, and is the one length
# with no jump at the threshold); under 16 ms (upstream's own minimum) repeating makes a tone, not the sound, and
# the model answers confidently wrong, so those are refused.
SHORT_CLIP_SAMPLES = frontend.SAMPLE_RATE  # 1 s
MIN_CLIP_SAMPLES = frontend.MIN_SAMPLES  # 514 samples, 16 ms


AGGREGATES = ("max", "mean")  # how window scores become a clip score; scripts/aggregate_study.py chose the default


@dataclass(frozen=True)
class TagOptions:
    """Everything one request may choose: how a clip is cut into model passes, how window scores become the
    clip's, and what is returned. Checked when made (ValueError naming the field), so every front end (command
    line, Ray, a server filling it from a query string with ``from_strings``) refuses the same values."""

    top_k: int = 10  # at most this many labels per result, best first
    threshold: float = 0.0  # ... and only those scoring at least this (0..1)
    window: float = 10.0  # seconds per model pass (the length the model was trained on); 0 = whole clip
    hop: float = 5.0  # seconds between window starts for clips longer than a window
    aggregate: str = "max"  # a label's clip score from its window scores: "max" (best window) or "mean"
    segments: bool = False  # keep each window's top-k as well
    events: bool = False  # find the stretches where each label is present (events.py), from short windows

    def __post_init__(self):
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k must be a whole number of at least 1, got {self.top_k!r}")
        if not 0.0 <= self.threshold <= 1.0:  # also refuses NaN
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold!r}")
        if not (self.window == 0 or 1.0 <= self.window <= 86400.0):
            raise ValueError(f"window must be 0 (the whole clip in one pass) or 1 to 86400 s, got {self.window!r}")
        if not 0.01 <= self.hop <= 86400.0 or (self.window and self.hop > self.window):
            raise ValueError(f"hop must be 0.01 s to the window's length, got {self.hop!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> "TagOptions":
        """Options from text (a query string, a form): {"top_k": "5", "threshold": "0.2", "events": "1"}; a
        field left out keeps its default. Raises ValueError naming an unknown field or a bad value."""
        kinds = {f.name: type(f.default) for f in fields(cls)}
        parsed = {}
        for name, text in values.items():
            if name not in kinds:
                raise ValueError(f"unknown option {name!r} (known: {', '.join(kinds)})")
            kind = kinds[name]
            try:
                if kind is bool:
                    if text.lower() not in ("1", "0", "true", "false", "yes", "no", ""):
                        raise ValueError
                    parsed[name] = text.lower() in ("1", "true", "yes", "")
                else:
                    parsed[name] = kind(text)
            except ValueError:
                raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}") from None
            if kind is float and not math.isfinite(parsed[name]):
                raise ValueError(f"{name}: expected a finite number, got {text!r}")
        return cls(**parsed)

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
class Category:
    name: str  # an AudioSet top-level category, e.g. "Music"
    score: float  # the highest clip score among the labels of its ontology subtree


@dataclass(frozen=True)
class Prediction:
    """A clip's result: ranked tags, categories, and the raw arrays behind them."""

    tags: list  # of Tag, best first, at most top_k, none under the threshold
    logits: np.ndarray  # (527,), per-label clip logits (the windows' max, or the logit of their mean score)
    embedding: np.ndarray  # pooled features, mean over windows
    categories: list = field(default_factory=list)  # of Category: all seven, best first
    segments: list = field(default_factory=list)  # of Segment, when asked for
    events: list = field(default_factory=list)  # of events.Event, in time order, when asked for


def model_input(samples: np.ndarray) -> np.ndarray:
    """One window's samples -> its log-mel, after the short-clip rule."""
    if len(samples) < MIN_CLIP_SAMPLES:
        milliseconds = 1000 * len(samples) / frontend.SAMPLE_RATE
        raise audio.AudioError(f"too short: {milliseconds:.1f} ms of audio, audiotag needs at least "
                               f"{1000 * MIN_CLIP_SAMPLES / frontend.SAMPLE_RATE:.0f} ms")
    if len(samples) < SHORT_CLIP_SAMPLES:
        samples = np.resize(samples, SHORT_CLIP_SAMPLES)  # np.resize repeats the clip to fill
    return frontend.log_mel(samples)


def layouts(options: TagOptions) -> list:
    """The (window, hop) layouts, in samples, a clip is cut into: the clip's own, then the events' if asked."""
    clip = (options.window_samples, options.hop_samples)
    if not options.events:
        return [clip]
    return [clip, (int(round(events.EVENT_WINDOW * frontend.SAMPLE_RATE)),
                   int(round(events.EVENT_HOP * frontend.SAMPLE_RATE)))]


CLIP_LAYOUT, EVENT_LAYOUT = 0, 1  # layout numbers in layouts()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


class Accumulator:
    """Combines the window results of one clip as they arrive, in any order."""

    def __init__(self, tagger: "Tagger", options: "TagOptions"):
        self.tagger, self.options = tagger, options
        self.logits = None  # per-label max over windows
        self.score_sum = None  # per-label sum of window scores (for aggregate "mean")
        self.embedding_sum = None
        self.count = 0
        self.segments = []
        self.event_windows = []  # (start, end, scores) of the event layout's windows

    def add(self, start: int, length: int, logits: np.ndarray, embedding: np.ndarray) -> Segment:
        self.logits = logits.copy() if self.logits is None else np.maximum(self.logits, logits)
        scores = sigmoid(logits)
        self.score_sum = scores if self.score_sum is None else self.score_sum + scores
        self.embedding_sum = embedding.astype(np.float64) if self.embedding_sum is None else self.embedding_sum + embedding
        self.count += 1
        segment = Segment(start / frontend.SAMPLE_RATE, (start + length) / frontend.SAMPLE_RATE,
                          self.tagger.top_tags(logits, self.options.top_k, self.options.threshold))
        if self.options.segments:
            self.segments.append(segment)
        return segment

    def add_event_window(self, start: int, length: int, logits: np.ndarray) -> None:
        """One short window of the event layout: its scores are kept (527 floats) until the clip is done."""
        self.event_windows.append((start, start + length, sigmoid(logits).astype(np.float32)))

    def clip_logits(self) -> np.ndarray:
        if self.options.aggregate == "max":
            return self.logits
        mean = np.clip(self.score_sum / self.count, 1e-12, 1 - 1e-12)
        return np.log(mean / (1 - mean)).astype(np.float32)

    def prediction(self) -> Prediction:
        embedding = (self.embedding_sum / self.count).astype(np.float32)
        segments = sorted(self.segments, key=lambda s: s.start)
        logits = self.clip_logits()
        return Prediction(self.tagger.top_tags(logits, self.options.top_k, self.options.threshold), logits,
                          embedding, self.tagger.categories(logits), segments, self._events())

    def _events(self) -> list:
        if not self.options.events:
            return []
        self.event_windows.sort(key=lambda w: w[0])
        rate = frontend.SAMPLE_RATE
        starts = [start / rate for start, _, _ in self.event_windows]
        ends = [end / rate for _, end, _ in self.event_windows]
        found = events.find_events(starts, ends, np.stack([s for _, _, s in self.event_windows]),
                                   duration=max(ends), floor=max(events.EVENT_FLOOR, self.options.threshold),
                                   labels=self.tagger.model.info.labels)
        return found


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
        batches = {}  # layout -> windows waiting (one mel length per batch)
        for layout, start, samples in passes([clip.samples], layouts(options)):
            batch = batches.setdefault(layout, [])
            batch.append((layout, start, len(samples), model_input(samples)))
            if len(batch) == self.model.max_batch:
                self._run(batches.pop(layout), accumulator)
        for batch in batches.values():
            self._run(batch, accumulator)
        return accumulator.prediction()

    def _run(self, batch, accumulator) -> None:
        logits, embeddings = self.model.run(np.stack([mel for *_, mel in batch]))
        for (layout, start, length, _), row, embedding in zip(batch, logits, embeddings):
            if layout == CLIP_LAYOUT:
                accumulator.add(start, length, row, embedding)
            else:
                accumulator.add_event_window(start, length, row)

    def top_tags(self, logits: np.ndarray, k: int, threshold: float = 0.0) -> list:
        """The k highest-scoring labels, best first (ties broken by index, so output is stable), less those
        scoring under ``threshold``."""
        order = np.lexsort((np.arange(len(logits)), -logits))[:k]
        scores = sigmoid(logits[order])
        info = self.model.info
        return [Tag(info.labels[i], info.mids[i], int(i), float(s)) for i, s in zip(order, scores) if s >= threshold]

    def categories(self, logits: np.ndarray) -> list:
        """The seven top-level categories, best first (ties in the ontology's order): each scores as its best
        label (the ontology subtrees are stored in the model by scripts/export_model.py)."""
        scores = sigmoid(logits)
        found = [Category(name, float(scores[indices].max())) for name, indices in self.model.info.categories]
        return sorted(found, key=lambda c: -c.score)
