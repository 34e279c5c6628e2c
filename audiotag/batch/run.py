"""A batch run: many inputs in, their outcomes out in input order, tagged in this process or in watched worker
processes (``supervisor``: a decoder's native crash then fails only its input). The command line and
``tag_many`` both run batches through ``Engine``."""

import os
from typing import Iterable, Iterator, Optional, Sequence

from ..options import BATCH, Limits, TagOptions, requested_providers, usable_cores
from ..records import event_records, record, segment_record
from . import inputs, supervisor


class Engine:
    """Where a batch's outcomes come from: ``tagger`` in this process when given, else ``workers`` watched worker
    processes, each loading the model (``model``, ``providers``, ``threads``) and decoding ``jobs`` inputs at
    once. ``on_segment(name, segment)`` gets each window as it is done (``options.segments``). Without ``arrays``
    the workers' outcomes may come without their logits and embedding (records need neither). Raises
    ``supervisor.WorkerError`` where no worker can be started."""

    def __init__(self, opener: inputs.Opener, options: TagOptions, jobs: int, *, tagger=None, workers: int = 1,
                 model=None, providers: Optional[Sequence[str]] = None, threads: int = 1, on_segment=None,
                 spawned=None, arrays: bool = True):
        self._tagger = tagger
        self._options = options
        self._run = None
        self._watched = None
        if tagger is not None:
            from . import pipeline  # here: a supervisor never loads the decoders or the model

            self._run = lambda items: pipeline.run(items, opener, tagger, options, jobs, on_segment)
            return
        timeout = opener.limits.timeout
        config = supervisor.WorkerConfig(opener, options, jobs, model, providers, threads, options.segments,
                                         watchdog=2 * timeout + 10 if timeout else None, arrays=arrays)
        if workers > 1:
            self._watched = supervisor.Pool(config, workers, on_segment, spawned)
        else:
            self._watched = supervisor.Supervisor(config, on_segment, spawned)

    def labels(self) -> int:
        """How many labels a result may hold: the model's, or those the options choose (waits for a worker to be
        ready)."""
        if self._tagger is not None:
            return self._tagger.label_count(self._options)
        return self._watched.ready()["labels"]

    def label_problem(self) -> Optional[tuple]:
        """(option, what is wrong) when the tag options name a label the model does not know (``infer.labels``);
        None without waiting when they choose no labels."""
        if not (self._options.only or self._options.exclude or self._options.labels):
            return None
        if self._tagger is not None:
            return self._tagger.label_problem(self._options)
        return self._watched.ready()["label_problem"]

    def providers(self) -> list:
        """The execution providers in use (waits for a worker to be ready)."""
        if self._tagger is not None:
            return self._tagger.model.providers
        return self._watched.ready()["providers"]

    def outcomes(self, items: Iterable[inputs.Input]) -> Iterator:
        """``infer.results.Outcome``s in input order."""
        return self._run(items) if self._tagger is not None else self._watched.outcomes(items)

    def close(self) -> None:
        if self._watched is not None:
            self._watched.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tag_many(paths: Iterable[str], options: TagOptions = TagOptions(), *, jobs: Optional[int] = None,
             workers: int = 1, isolate: bool = True, max_duration: Optional[float] = BATCH.max_duration,
             timeout: Optional[float] = BATCH.timeout, all_files: bool = False, open_archives: bool = False,
             model=None,
             providers: Optional[Sequence[str]] = None, threads: int = 1) -> Iterator[dict]:
    """Tag many files and directories as ``audiotag DIR...`` does, yielding each input's record as it is done.

    Args:
        paths: files and directories (walked in sorted order, audio files by extension; every regular file with
            ``all_files``). A generator may still be producing paths: tagging starts at the first.
        options: the tag options (``TagOptions``). With ``events`` or ``segments`` the record also has an
            "events" or "segments" list (the command line writes those as lines of their own).
        jobs: inputs decoded at once (default: the cores this process may use, ``options.usable_cores``).
        workers: worker processes (each loads the model, about 115 MB).
        isolate: tag in watched worker processes, so that a decoder's native crash (or a hang past ``timeout``)
            fails only its input; False tags in this process (for a Ray task, say, that is isolated already).
        max_duration: seconds of audio tagged per input (None: all); the record then says it was cut.
        timeout: seconds an input may take before it is an error record (None: no limit).
        all_files: in directories, try every regular file whatever its name.
        open_archives: in directories, also tag the audio members of archives (an archive among ``paths`` is
            always opened; a member's record adds "archive", "member" and "key" after its path).
        model, providers, threads: the ONNX model file (default: the bundled one), execution providers (default:
            automatic, or $AUDIOTAG_PROVIDERS), onnxruntime threads per process.

    Returns:
        An iterator of records in input order, as ``audiotag --format jsonl`` writes them:
        ``{"path", "duration", "sample_rate", "channels", "codec", "categories", "tags"}``, or
        ``{"path", "error"}`` for an input that could not be tagged (the run goes on); an archive's member adds
        "archive", "member" (a tar's: "key"; a WARC record's: "url", "warc_record_id") after the path, and an
        archive's own error record (damaged, or nothing to tag) "archive".

    Raises:
        supervisor.WorkerError: no worker process could be started (e.g. the model cannot be loaded).
        infer.model.ModelError: with ``isolate=False``, the model cannot be loaded.
        ValueError: ``options`` name a label the model does not know (before any input is tagged).
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    jobs = jobs or usable_cores()
    opener = inputs.Opener(limits=Limits(max_duration or None, timeout or None))
    segments = {}  # name -> its windows so far (they arrive before the input's outcome)
    on_segment = (lambda name, segment: segments.setdefault(name, []).append(segment_record(name, segment))) \
        if options.segments else None
    providers = requested_providers(",".join(providers) if providers else None)
    tagger = None
    if not isolate:
        from ..infer.tagger import Tagger

        tagger = Tagger(model, providers=providers, threads=threads)
    items = inputs.expand((os.fspath(path) for path in paths), all_files, open_archives)
    contents = None
    if options.hash:  # files hashed before they are tagged
        from . import content

        contents = content.Contents(jobs, dedup=False)
        items = contents.tagged(items)
    with Engine(opener, options, jobs, tagger=tagger, workers=workers, model=model, providers=providers,
                threads=threads, on_segment=on_segment, arrays=False) as engine:
        problem = engine.label_problem()
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        for outcome in engine.outcomes(items):
            if contents is not None:
                contents.duplicates_before()  # none: no dedup here
                outcome.sha256 = contents.sha256_of(outcome)
            result = record(outcome)
            if options.events and outcome.error is None:
                result["events"] = [{k: v for k, v in e.items() if k != "path"} for e in event_records(outcome)]
            if options.segments:
                result["segments"] = [{k: v for k, v in s.items() if k != "path"}
                                      for s in segments.pop(outcome.name, [])]
            yield result
