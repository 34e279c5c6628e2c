"""What tagging gives: ranked tags, categories, segments and events of a clip (``Prediction``), and what became
of one input (``Outcome``: the prediction and what was decoded, or why it failed)."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # only named here: a batch's supervisor unpickles outcomes without loading numpy
    import numpy as np


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
    logits: "np.ndarray"  # (527,), per-label clip logits (the windows' max, or the logit of their mean score)
    embedding: "np.ndarray"  # pooled features, mean over windows
    categories: list = field(default_factory=list)  # of Category: all seven, best first
    segments: list = field(default_factory=list)  # of Segment, when asked for
    events: list = field(default_factory=list)  # of events.Event, in time order, when asked for


@dataclass
class Outcome:
    """What became of one input: a prediction and where it came from, or an error message."""

    name: str
    prediction: Optional[Prediction] = None
    sample_rate: int = 0
    channels: int = 0
    duration: float = 0.0  # seconds of audio tagged
    truncated: bool = False  # cut at --max-duration
    audio_duration: Optional[float] = None  # seconds the input holds, when cut and known
    warning: Optional[str] = None  # tagged from what could be decoded; this says what could not
    error: Optional[str] = None
    timings: Optional[dict] = None  # seconds spent per stage in this input's worker
    codec: Optional[str] = None  # what was decoded ("aac", "pcm_s16le", ...)
    sha256: Optional[str] = None  # of the input's bytes (--hash)
    fields: Optional[dict] = None  # what the record adds after the path (an archive's member: archive, member, key)
