"""One clip's windows to its result: the short-clip rule and the log-mel each window gets (``model_input``), the
layouts a clip is cut into (``layouts``), and the ``Accumulator`` that combines window results, in any order, into
the clip's ``Prediction``."""

import numpy as np

from ..errors import AudioError
from ..options import TagOptions
from . import events, frontend
from .results import Prediction, Segment

# The short-clip rule, measured by scripts/studies/short_clip_study.py on the real clips of ../shared/audio: clips under
# 1 s are repeated up to 1 s (it beats both upstream's answer and zero padding from 0.25 s on, and is the one length
# with no jump at the threshold); under 16 ms (upstream's own minimum) repeating makes a tone, not the sound, and
# the model answers confidently wrong, so those are refused.
SHORT_CLIP_SAMPLES = frontend.SAMPLE_RATE  # 1 s
MIN_CLIP_SAMPLES = frontend.MIN_SAMPLES  # 514 samples, 16 ms


def model_input(samples: np.ndarray) -> np.ndarray:
    """One window's samples -> its log-mel, after the short-clip rule."""
    if len(samples) < MIN_CLIP_SAMPLES:
        milliseconds = 1000 * len(samples) / frontend.SAMPLE_RATE
        raise AudioError(f"too short: {milliseconds:.1f} ms of audio, audiotag needs at least "
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

    def __init__(self, tagger, options: TagOptions):  # tagger: an infer.tagger.Tagger
        self.tagger, self.options = tagger, options
        self.view = tagger.label_view(options)  # the labels results hold (--only, --exclude, --labels)
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
        wide = embedding.astype(np.float64)
        self.embedding_sum = wide if self.embedding_sum is None else self.embedding_sum + wide
        self.count += 1
        segment = Segment(start / frontend.SAMPLE_RATE, (start + length) / frontend.SAMPLE_RATE,
                          self.tagger.top_tags(logits, self.options.top_k, self.options.threshold, self.view))
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
        return Prediction(self.tagger.top_tags(logits, self.options.top_k, self.options.threshold, self.view), logits,
                          embedding, self.tagger.categories(logits), segments, self._events())

    def _events(self) -> list:
        if not self.options.events:
            return []
        self.event_windows.sort(key=lambda w: w[0])
        rate = frontend.SAMPLE_RATE
        starts = [start / rate for start, _, _ in self.event_windows]
        ends = [end / rate for _, end, _ in self.event_windows]
        scores = np.stack([s for _, _, s in self.event_windows])
        labels = self.tagger.model.info.labels
        if self.view is not None:  # events of the labels results hold
            scores, labels = self.view.scores(scores), self.view.names
        found = events.find_events(starts, ends, scores, duration=max(ends),
                                   floor=max(events.EVENT_FLOOR, self.options.threshold), labels=labels)
        return found
