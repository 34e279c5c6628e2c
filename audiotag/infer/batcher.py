"""The model for many producers: every window of every input in work goes to one ``Batcher``, which runs the
model on all the windows waiting, up to the model's ``max_batch`` of one length, as one batch: a busy machine
makes batches across inputs, an idle one answers at once (a live stream's windows are not held back waiting for
company). ``submit_stream`` decodes one stream into it, memory flat with length; the batch runs, ``serve`` and
``Tagger.tag_file`` all tag through here.
"""

import collections
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

import numpy as np

from ..decode import Stream
from .results import Prediction, Segment
from ..options import TagOptions
from .clip import CLIP_LAYOUT, Accumulator, layouts, model_input
from .windows import passes

WINDOWS_IN_FLIGHT = 32  # per input: bounds the log-mels (0.5 MB each) a long file holds while the model catches up
QUEUED_BATCHES = 4  # in all: a submitter waits while this many full batches wait for the model


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

    def __init__(self, tagger, max_batch: Optional[int] = None, runners: int = 1):
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


def submit_stream(stream: Stream, tagger, batcher: Batcher, options: TagOptions,
                  on_segment: Optional[Callable[[Segment], None]] = None,
                  on_finished: Optional[Callable[[], None]] = None) -> tuple:
    """Decode an open stream and submit its windows; returns (finish, timings): ``finish()`` waits for the
    results still in the model and gives the Prediction, so the caller may start on something else first.
    ``on_finished()`` is called once ``finish()`` would not wait (in whichever thread took the last result in).
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
    untaken = 0  # windows submitted and not yet taken in
    submitted = False  # every window is submitted: the last one taken in finishes the stream
    # "model": this thread's time in submit, running the model (for this input or others) or waiting for it
    timings = {"decode": 0.0, "frontend": 0.0, "model": 0.0}

    def take_in(layout: int, number: int, start: int, length: int, done: threading.Event, future: Future) -> None:
        nonlocal next_segment, untaken
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
            with lock:
                untaken -= 1
                last = submitted and not untaken
            if last and on_finished is not None:
                on_finished()

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
        with lock:
            untaken += 1
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
    with lock:
        submitted = True
        last = not untaken
    if last and on_finished is not None:
        on_finished()

    def finish() -> Prediction:
        for done in in_flight:
            done.wait()
        if failures:
            raise failures[0]
        return accumulator.prediction()

    return finish, timings


def tag_stream(stream: Stream, tagger, batcher: Batcher, options: TagOptions,
               on_segment: Optional[Callable[[Segment], None]] = None) -> tuple:
    """Tag an open stream window by window; returns (Prediction, timings)."""
    finish, timings = submit_stream(stream, tagger, batcher, options, on_segment)
    return finish(), timings


def model_runners(model, jobs: int) -> int:
    """Threads allowed in the model at once for ``jobs`` workers: all of them when the session computes on the CPU
    in the calling thread, so the model can take any core the decoders leave idle; otherwise one (an accelerator,
    or a session with a thread pool of its own)."""
    return jobs if model.providers == ["CPUExecutionProvider"] and model.threads == 1 else 1
