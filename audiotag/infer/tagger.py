"""The Tagger: samples in, ranked AudioSet labels, top-level categories and (if asked) sound events out.

Clips up to one window (10 s) go through the model in one pass, as upstream does. Longer clips are cut into
windows with a hop (``windows.py``); a label's clip score is its highest window score by default (``aggregate``),
so a short event in a long file still shows, and the clip's embedding is the mean of its windows' embeddings.
With ``events`` the same stream is also cut into short windows (``events.py``), used for the events only.
"""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import os
import threading

from .. import decode, hashing
from ..decode.limits import Limits, apply
from ..errors import AudioError, failure_message
from ..assets import DEFAULT_MODEL, asset_path
from ..options import TagOptions
from . import frontend
from .model import Model, ModelError
from .clip import CLIP_LAYOUT, Accumulator, layouts, model_input, sigmoid
from .batcher import Batcher, tag_stream
from .labels import LabelError, LabelView, Vocabulary, resolve
from .results import Category, Outcome, Prediction, Tag
from .windows import passes

VIEWS = 64  # label choices kept resolved


class Tagger:
    """Loads the model once; ``tag``, ``tag_file`` and ``predict`` may be called from several threads at once.

    Args:
        model_path: an audiotag .onnx model (default: the bundled mn04_as).
        providers: onnxruntime execution providers, e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]
            (default: $AUDIOTAG_PROVIDERS, else the best available).
        threads: onnxruntime intra-op threads (0: all cores).

    Raises:
        infer.model.ModelError: the model cannot be loaded, or expects another frontend.
    """

    def __init__(self, model_path: Optional[Path] = None, *, providers: Optional[Sequence[str]] = None,
                 threads: int = 0):
        self.model = Model(model_path or asset_path(DEFAULT_MODEL), providers=providers, threads=threads)
        info = self.model.info
        expected = {"sample_rate": frontend.SAMPLE_RATE, "n_mels": frontend.N_MELS,
                    "hop_length": frontend.HOP_LENGTH, "win_length": frontend.WIN_LENGTH}
        found = {key: info.frontend.get(key) for key in expected}
        if found != expected:
            raise ModelError(f"{self.model.path} expects frontend {found}, this audiotag computes {expected}")
        self._vocabulary = None
        self._views = {}  # (only, exclude, labels) -> LabelView: resolved once per choice, the last VIEWS kept
        self._views_lock = threading.Lock()  # serve's requests choose their own

    def label_view(self, options: TagOptions) -> Optional[LabelView]:
        """The labels ``options`` give (``infer.labels``); None for all of them. Raises LabelError (a ValueError)
        naming an unknown label and the nearest real one."""
        key = (options.only, options.exclude, options.labels)
        if key == ("", "", ()):
            return None
        with self._views_lock:
            if key in self._views:
                return self._views[key]
            self._vocabulary = self._vocabulary or Vocabulary(self.model.info)
        view = resolve(self._vocabulary, options)
        with self._views_lock:
            self._views[key] = view
            while len(self._views) > VIEWS:  # a service's clients may choose many: the oldest go
                self._views.pop(next(iter(self._views)))
        return view

    def label_count(self, options: TagOptions) -> int:
        """How many labels a result may hold with ``options``."""
        view = self.label_view(options)
        return len(self.model.info.labels) if view is None else len(view.names)

    def label_problem(self, options: TagOptions) -> Optional[tuple]:
        """(option, what is wrong) when ``options`` name a label the model does not know, else None."""
        try:
            self.label_view(options)
        except LabelError as error:
            return error.option, error.detail
        return None

    def tag(self, samples: np.ndarray, sample_rate: int, options: TagOptions = TagOptions()) -> Prediction:
        """Tag samples already in memory.

        Args:
            samples: (frames,) or (frames, channels) floats at ``sample_rate`` (resampled to 32 kHz as upstream).
            sample_rate: their rate in Hz.
            options: how to cut and rank (``TagOptions``).

        Returns:
            ``Prediction``: tags (best first), categories, logits, embedding, and segments/events when asked.
        """
        return self.predict(decode.from_array(samples, sample_rate), options)

    def tag_file(self, source, options: TagOptions = TagOptions(), *, max_duration: Optional[float] = None,
                 timeout: Optional[float] = None) -> Outcome:
        """Decode and tag one input exactly as ``audiotag FILE`` does (block by block: memory stays flat).

        Args:
            source: a path (str or os.PathLike), the bytes of a whole file, or a binary file object (a pipe too:
                read as ``audiotag -`` reads stdin). Any format the command line reads.
            options: how to cut and rank (``TagOptions``).
            max_duration: tag only the first this many seconds (the outcome then says ``truncated``).
            timeout: give up after this many seconds.

        Returns:
            ``Outcome``: ``prediction`` (tags, categories, logits, embedding, segments, events) and what was
            decoded (``sample_rate``, ``channels``, ``duration``, ``codec``, ``warning``, ``truncated``);
            ``audiotag.records.record(outcome)`` is the command line's JSON record.

        Raises:
            AudioError: the input cannot be tagged; its message is the one the command line prints for it.
        """
        if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) and not hasattr(source, "read"):
            raise TypeError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "-")
        name = name if isinstance(name, str) else "-"
        stream = sha = None
        try:
            if options.hash:  # a path or bytes are hashed first; a file object as it is read, then to its end
                if isinstance(source, (str, os.PathLike)):
                    sha = hashing.file_sha256(source) if os.path.isfile(source) else None
                elif isinstance(source, (bytes, bytearray, memoryview)):
                    sha = hashing.bytes_sha256(source)
                else:
                    source = hashing.HashingReader(getattr(source, "buffer", source))
            stream = apply(decode.open_source(source), Limits(max_duration or None, timeout or None))
            prediction, timings = tag_stream(stream, self, Batcher(self), options)
        except AudioError:
            raise
        except Exception as error:  # OSError, MemoryError, a decoder's own: the CLI's one-line reason
            raise AudioError(failure_message(error)) from error
        finally:
            if stream is not None:
                stream.close()
        whole = stream.known_frames / stream.rate if stream.truncated and stream.known_frames else None
        if isinstance(source, hashing.HashingReader):
            try:
                sha = source.hexdigest()  # what the decoder left is read for the hash
            except OSError as error:
                raise AudioError(f"cannot read the input to its end to hash it: {failure_message(error)}") from error
        return Outcome(name, prediction, stream.rate, stream.channels, stream.duration, stream.truncated, whole,
                       stream.warning, timings=timings, codec=stream.codec, sha256=sha)

    def predict(self, clip: decode.Audio, options: TagOptions = TagOptions()) -> Prediction:
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

    def top_tags(self, logits: np.ndarray, k: int, threshold: float = 0.0, view: Optional[LabelView] = None) -> list:
        """The k highest-scoring labels, best first (ties broken by index, so output is stable), less those
        scoring under ``threshold``. With a ``view`` (``label_view``), its labels: a user label's tag carries the
        mid and index of its best member."""
        info = self.model.info
        if view is None:
            order = np.lexsort((np.arange(len(logits)), -logits))[:k]
            scores = sigmoid(logits[order])
            return [Tag(info.labels[i], info.mids[i], int(i), float(s)) for i, s in zip(order, scores)
                    if s >= threshold]
        best = view.best(logits)
        order = np.lexsort((np.arange(len(best)), -logits[best]))[:k]
        scores = sigmoid(logits[best[order]])
        return [Tag(view.names[j], info.mids[best[j]], int(best[j]), float(s)) for j, s in zip(order, scores)
                if s >= threshold]

    def categories(self, logits: np.ndarray) -> list:
        """The seven top-level categories, best first (ties in the ontology's order): each scores as its best
        label (the ontology subtrees are stored in the model by scripts/model/export_model.py)."""
        scores = sigmoid(logits)
        found = [Category(name, float(scores[indices].max())) for name, indices in self.model.info.categories]
        return sorted(found, key=lambda c: -c.score)
