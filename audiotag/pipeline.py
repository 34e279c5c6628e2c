"""Tagging many inputs at full machine speed.

Decoding, resampling, the frontend and the model run in worker threads (libsndfile, soxr, numpy's FFT and
onnxruntime release the GIL). Every window goes to one ``Batcher``, which runs the model on all the windows
waiting, up to the model's ``max_batch`` of one length, as one batch: a busy machine makes batches across files,
an idle one answers at once (a live stream's windows are not held back waiting for company). One onnxruntime
session serves everything.

Outcomes come back in input order; inputs may arrive slowly (paths piped in by a crawler), and work on each starts
as soon as it arrives.
"""

import collections
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from . import audio, limits
from .limits import Limits
from .tagger import CLIP_LAYOUT, Accumulator, Prediction, Segment, TagOptions, Tagger, layouts, model_input
from .windows import passes

WINDOWS_IN_FLIGHT = 32  # per input: bounds the log-mels (0.5 MB each) a long file holds while the model catches up
QUEUED_BATCHES = 4  # in all: a submitter waits while this many full batches wait for the model


@dataclass(frozen=True)
class Input:
    """One thing to tag: a path, or "-" for stdin; ``error`` when it was known to be bad before opening."""

    name: str
    error: Optional[str] = None


@dataclass(frozen=True)
class Opener:
    """Opens an input by name, with the per-input limits (picklable, so a supervised worker opens the same way)."""

    raw: Optional[str] = None  # headerless samples: their format, rate and channels
    rate: Optional[int] = None
    channels: int = 1
    limits: Limits = Limits()

    def __call__(self, name: str) -> audio.Stream:
        if name == "-":
            stream = audio.open_stdin(sys.stdin.buffer, self.raw, self.rate, self.channels)
        else:
            stream = audio.open_file(name, self.raw, self.rate, self.channels)
        return limits.apply(stream, self.limits)


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


class Batcher:
    """Runs the model for many producers: ``submit`` a log-mel, get a Future of (logits, embedding).

    There is no model thread. The model runs in a worker with nothing else to do (``idle_until``), so a lone long
    file's decoding overlaps its model runs; when every worker is busy, in the thread that submits: it runs all
    the windows waiting (up to ``max_batch`` of one length, from any input) unless ``runners`` threads already
    are in the model, one of which then takes the window in its next batch. So the model runs wherever a core is
    free, without handing each window to a thread that must first take a core from a decoder. With one-thread
    CPU sessions, one runner per worker: onnxruntime's ``run`` is thread-safe and computes on its caller's core.
    Batches form from the windows that wait: on an accelerator (one runner), or when the model falls behind.
    """

    def __init__(self, tagger: Tagger, max_batch: Optional[int] = None, runners: int = 1):
        self._model = tagger.model
        self._max_batch = max_batch or tagger.model.max_batch
        self._runners = runners
        self._condition = threading.Condition()  # guards everything below
        self._waiting = collections.deque()  # (mel, future), oldest first
        self._running = 0  # threads running batches
        self._idle = 0  # threads in idle_until, waiting for something to do
        self._blocked = 0  # threads in submit, waiting for the queue to shrink
        self.model_seconds = 0.0
        self.batches = 0
        self.windows = 0

    def submit(self, mel: np.ndarray) -> Future:
        future = Future()
        with self._condition:
            self._waiting.append((mel, future))
            while True:
                if self._idle:
                    self._condition.notify()  # an idle thread runs it: this one goes on decoding
                    return future
                if self._take_runner_place():
                    break
                if len(self._waiting) <= QUEUED_BATCHES * self._max_batch:
                    return future  # a runner takes it after its current batch
                self._blocked += 1  # the model is far behind (one runner, many workers): decode no further ahead
                self._condition.wait()
                self._blocked -= 1
        self._drain()
        return future

    def idle_until(self, ready: Callable[[], bool]) -> None:
        """For a thread with nothing else to do: run the windows that come in until ``ready()``, which the caller
        makes true and then announces with ``wake()``."""
        with self._condition:
            while True:
                if self._waiting and self._take_runner_place():
                    self._condition.release()
                    try:
                        self._drain()
                    finally:
                        self._condition.acquire()
                elif ready():
                    return
                else:
                    self._idle += 1
                    self._condition.wait()
                    self._idle -= 1

    def wake(self) -> None:
        with self._condition:
            self._condition.notify_all()

    def _take_runner_place(self) -> bool:
        if self._running == self._runners:
            return False
        self._running += 1
        return True

    def _drain(self) -> None:
        """Run batches until no window waits, then give the runner's place back."""
        try:
            while True:
                with self._condition:
                    batch = self._next_batch()
                    if self._blocked:
                        self._condition.notify_all()
                    if not batch:
                        self._running -= 1
                        return
                self._run(batch)
        except BaseException:
            with self._condition:
                self._running -= 1
            raise

    def _next_batch(self) -> list:
        """The oldest waiting window and up to max_batch - 1 more of its length, taken off the queue."""
        if not self._waiting:
            return []
        first = self._waiting.popleft()
        batch, others = [first], collections.deque()
        while self._waiting and len(batch) < self._max_batch:
            item = self._waiting.popleft()
            (batch if item[0].shape == first[0].shape else others).append(item)
        others.extend(self._waiting)
        self._waiting = others
        return batch

    def _run(self, batch) -> None:
        started = time.perf_counter()
        try:
            logits, embeddings = self._model.run(np.stack([mel for mel, _ in batch]))
            if len(logits) != len(batch) or len(embeddings) != len(batch):
                raise RuntimeError(f"the model answered {len(logits)} windows of {len(batch)}")
        except BaseException as error:  # reported on each waiting input: nobody waits for ever
            for _, future in batch:
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        with self._condition:
            self.model_seconds += time.perf_counter() - started
            self.batches += 1
            self.windows += len(batch)
        for (_, future), row, embedding in zip(batch, logits, embeddings):
            future.set_result((row, embedding))


def submit_stream(stream: audio.Stream, tagger: Tagger, batcher: Batcher, options: TagOptions,
                  on_segment: Optional[Callable[[Segment], None]] = None) -> tuple:
    """Decode an open stream and submit its windows; returns (finish, timings): ``finish()`` waits for the
    results still in the model and gives the Prediction, so the caller may start on something else first.
    Memory stays flat with length.

    Each window's result is taken in as soon as the model has it (in whichever thread ran it), not when the next
    window is ready, so a live feed shows a window's tags while the stream is still waiting for more input.
    Segments go to ``on_segment`` in time order, also when two threads run an input's windows at once.
    """
    accumulator = Accumulator(tagger, options)
    lock = threading.Lock()
    failures = []
    in_flight = collections.deque()  # one Event per window not yet taken in
    finished_segments = {}  # window number -> Segment, held until the windows before it are out
    next_segment = 0
    # "model": this thread's time in submit, running the model (for this input or others) or waiting for it
    timings = {"decode": 0.0, "frontend": 0.0, "model": 0.0}

    def take_in(layout: int, number: int, start: int, length: int, done: threading.Event, future: Future) -> None:
        nonlocal next_segment
        try:
            with lock:
                if layout != CLIP_LAYOUT:  # a short window of --events: no segment of its own
                    accumulator.add_event_window(start, length, future.result()[0])
                    return
                finished_segments[number] = accumulator.add(start, length, *future.result())
                while next_segment in finished_segments:
                    segment = finished_segments.pop(next_segment)
                    next_segment += 1
                    if on_segment is not None:
                        on_segment(segment)
        except BaseException as error:  # raised again in the stream's own thread below
            failures.append(error)
        finally:
            done.set()

    clock = time.perf_counter()
    numbers = collections.Counter()  # windows so far, per layout
    for layout, start, samples in passes(stream.samples(), layouts(options)):
        number = numbers[layout]
        numbers[layout] += 1
        now = time.perf_counter()
        timings["decode"] += now - clock
        mel = model_input(samples)
        clock = time.perf_counter()
        timings["frontend"] += clock - now
        done = threading.Event()
        future = batcher.submit(mel)  # may run the model, on this window and others waiting
        future.add_done_callback(
            lambda f, k=layout, i=number, s=start, n=len(samples), d=done: take_in(k, i, s, n, d, f))
        in_flight.append(done)
        while len(in_flight) > WINDOWS_IN_FLIGHT or (in_flight and in_flight[0].is_set()):
            in_flight.popleft().wait()
        if failures:
            raise failures[0]
        now = time.perf_counter()
        timings["model"] += now - clock
        clock = now
    timings["decode"] += time.perf_counter() - clock

    def finish() -> Prediction:
        for done in in_flight:
            done.wait()
        if failures:
            raise failures[0]
        return accumulator.prediction()

    return finish, timings


def tag_stream(stream: audio.Stream, tagger: Tagger, batcher: Batcher, options: TagOptions,
               on_segment: Optional[Callable[[Segment], None]] = None) -> tuple:
    """Tag an open stream window by window; returns (Prediction, timings)."""
    finish, timings = submit_stream(stream, tagger, batcher, options, on_segment)
    return finish(), timings


def start_input(item: Input, open_input: Callable[[str], audio.Stream], tagger: Tagger, batcher: Batcher,
                options: TagOptions, on_segment=None) -> Callable[[], Outcome]:
    """Decode one input and submit its windows; returns ``outcome()``, which waits for the model's last results
    and gives the Outcome. Every failure becomes an error message, never an exception."""
    if item.error:
        return lambda: Outcome(item.name, error=item.error)
    stream = None

    def submit():
        nonlocal stream
        stream = open_input(item.name)
        callback = None if on_segment is None else (lambda segment: on_segment(item.name, segment))
        return submit_stream(stream, tagger, batcher, options, callback)

    try:
        submitted = _or_failure(item.name, submit)
    finally:
        if stream is not None:
            stream.close()
    if isinstance(submitted, Outcome):
        return lambda: submitted
    finish, timings = submitted

    def outcome() -> Outcome:
        prediction = _or_failure(item.name, finish)
        if isinstance(prediction, Outcome):
            return prediction
        whole = stream.known_frames / stream.rate if stream.truncated and stream.known_frames else None
        return Outcome(item.name, prediction, stream.rate, stream.channels, stream.duration, stream.truncated,
                       whole, stream.warning, timings=timings, codec=stream.codec)

    return outcome


def tag_input(item: Input, open_input: Callable[[str], audio.Stream], tagger: Tagger, batcher: Batcher,
              options: TagOptions, on_segment=None) -> Outcome:
    """One input to one Outcome; every failure becomes an error message, never an exception."""
    return start_input(item, open_input, tagger, batcher, options, on_segment)()


def _or_failure(name: str, work: Callable):
    """``work()``, or the Outcome saying why it failed on this input."""
    try:
        return work()
    except BrokenPipeError:
        raise  # our stdout is gone (a --segments reader quit): the run ends, it is not this input's fault
    except Exception as error:
        return Outcome(name, error=failure_message(error))


def failure_message(error: Exception) -> str:
    """What went wrong with one input, for its record. Anything unforeseen (a decoder or onnxruntime error on one
    strange file) is that input's failure too: a run of weeks must not end on one file."""
    if isinstance(error, (audio.AudioError, ValueError)):
        return str(error)
    if isinstance(error, OSError):
        return (error.strerror or str(error)).lower()
    if isinstance(error, MemoryError):
        return "out of memory"
    return f"unexpected {type(error).__name__}: {error}"


def model_runners(model, jobs: int) -> int:
    """Threads allowed in the model at once for ``jobs`` workers: all of them when the session computes on the CPU
    in the calling thread, so the model can take any core the decoders leave idle; otherwise one (an accelerator,
    or a session with a thread pool of its own)."""
    return jobs if model.providers == ["CPUExecutionProvider"] and model.threads == 1 else 1


def run(items: Iterable[Input], open_input: Callable[[str], audio.Stream], tagger: Tagger, options: TagOptions,
        jobs: int, on_segment=None, batcher: Optional[Batcher] = None) -> Iterator[Outcome]:
    """Outcomes in input order, ``jobs`` inputs in work at once."""
    batcher = batcher or Batcher(tagger, runners=model_runners(tagger.model, jobs))
    work = queue.Queue(maxsize=2 * jobs)  # bounded: reading far ahead of the workers only costs memory
    ordered = queue.Queue()
    feeder_error = []
    finished = threading.Event()  # every outcome is out

    def put_work(entry) -> bool:
        while not finished.is_set():  # the consumer may have stopped early
            try:
                work.put(entry, timeout=0.1)
                batcher.wake()
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for item in items:
                future = Future()
                ordered.put(future)
                if not put_work((item, future)):
                    return
        except BaseException as error:  # e.g. the list of paths became unreadable
            feeder_error.append(error)
        finally:
            ordered.put(None)
            for _ in range(jobs):
                put_work(None)

    def next_entry():
        while not finished.is_set():
            batcher.idle_until(lambda: finished.is_set() or not work.empty())  # runs the model meanwhile
            try:
                return work.get_nowait()
            except queue.Empty:  # another worker took it, or the run is over
                continue
        return None

    def work_loop() -> None:
        # A worker moves on once an input's windows are submitted: this thread waits for their results, in
        # order, so no worker idles while the model finishes an input's last window.
        while (entry := next_entry()) is not None:
            item, future = entry
            try:
                future.set_result(start_input(item, open_input, tagger, batcher, options, on_segment))
            except BaseException as error:  # a bug, not bad input: surface it in the main thread
                future.set_exception(error)
        batcher.idle_until(finished.is_set)  # no input left: run the model for the others until the end

    threading.Thread(target=feed, name="audiotag-feed", daemon=True).start()
    for index in range(jobs):
        threading.Thread(target=work_loop, name=f"audiotag-worker-{index}", daemon=True).start()
    try:
        while (future := ordered.get()) is not None:
            yield future.result()()
    finally:
        finished.set()
        batcher.wake()
    if feeder_error:
        raise feeder_error[0]
