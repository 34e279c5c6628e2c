"""Tagging many inputs at full machine speed.

Decoding, resampling, the frontend and the model run in worker threads (libsndfile, soxr, numpy's FFT and
onnxruntime release the GIL). Every window goes to one ``infer.batcher.Batcher``: a busy machine makes batches
across files. One onnxruntime session serves everything.

Outcomes come back in input order; inputs may arrive slowly (paths piped in by a crawler), and work on each starts
as soon as it arrives.
"""

import queue
import threading
from concurrent.futures import Future, wait
from typing import Callable, Iterable, Iterator, Optional

from .. import decode
from ..errors import failure_message
from ..infer.batcher import Batcher, model_runners, submit_stream
from ..infer.results import Outcome
from ..infer.tagger import TagOptions, Tagger
from .inputs import Input

# Outcomes done or in work that the consumer has not taken yet (a ten-second clip's about 11 KB; a 20-minute
# file's 31 KB, 235 KB with --events): a reader that stalls (a full pipe, a paused terminal) stops the run here
# instead of letting it pile up a whole directory's results. A slow input at the head holds the others back only
# once this many after it are done (the watcher sends a worker no more: ``supervisor.OUTCOMES_AHEAD``).
OUTCOMES_AHEAD = 1024


def start_input(item: Input, open_input: Callable[[str], decode.Stream], tagger: Tagger, batcher: Batcher,
                options: TagOptions, on_segment=None, on_finished: Callable[[], None] = lambda: None
                ) -> Callable[[], Outcome]:
    """Decode one input and submit its windows; returns ``outcome()``, which waits for the model's last results
    and gives the Outcome; ``on_finished()`` is called once it would not wait. Every failure becomes an error
    message, never an exception."""
    if item.error:
        on_finished()
        return lambda: Outcome(item.name, error=item.error, fields=item.fields)
    stream = None
    # Finished once its last window is taken in and its decoder is closed (a watched worker may crash in a
    # decoder's teardown too: an input said finished is never a suspect)
    untold = [2]
    lock = threading.Lock()

    def one_done() -> None:
        with lock:
            untold[0] -= 1
            last = not untold[0]
        if last:
            on_finished()

    def submit():
        nonlocal stream
        stream = open_input(item.name) if item.member is None else open_input.open_member(item.member)
        callback = None if on_segment is None else (lambda segment: on_segment(item.name, segment))
        return submit_stream(stream, tagger, batcher, options, callback, one_done)

    try:
        submitted = _or_failure(item.name, submit)
    finally:
        if stream is not None:
            stream.close()
    if isinstance(submitted, Outcome):
        submitted.fields = item.fields
        on_finished()
        return lambda: submitted
    one_done()
    finish, timings = submitted
    # The stream is decoded: keep only what the record needs. A finished input may wait behind a slow one to be
    # written, and its item (a tar.gz member's bytes) or its decoder must not wait with it.
    name, fields, codec = item.name, item.fields, stream.codec
    whole = stream.known_frames / stream.rate if stream.truncated and stream.known_frames else None
    facts = (stream.rate, stream.channels, stream.duration, stream.truncated, whole, stream.warning)

    def outcome() -> Outcome:
        prediction = _or_failure(name, finish)
        if isinstance(prediction, Outcome):
            prediction.fields = fields
            return prediction
        return Outcome(name, prediction, *facts, timings=timings, codec=codec, fields=fields)

    return outcome


def tag_input(item: Input, open_input: Callable[[str], decode.Stream], tagger: Tagger, batcher: Batcher,
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


def run(items: Iterable[Input], open_input: Callable[[str], decode.Stream], tagger: Tagger, options: TagOptions,
        jobs: int, on_segment=None, batcher: Optional[Batcher] = None,
        on_finished: Callable[[int], None] = lambda index: None) -> Iterator[Outcome]:
    """Outcomes in input order, ``jobs`` inputs in work at once; ``on_finished(k)`` says, in whatever order, that
    the outcome of the k-th input (from 0) is ready, perhaps behind a slower one before it."""
    batcher = batcher or Batcher(tagger, runners=model_runners(tagger.model, jobs))
    work = queue.Queue(maxsize=2 * jobs)  # bounded: reading far ahead of the workers only costs memory
    ordered = queue.Queue(maxsize=OUTCOMES_AHEAD)
    feeder_error = []
    finished = threading.Event()  # every outcome is out

    def put(into: queue.Queue, entry) -> bool:
        while not finished.is_set():  # the consumer may have stopped early
            try:
                into.put(entry, timeout=0.1)
                if into is work:
                    batcher.wake()  # a worker may be idle in the model, waiting for work
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for index, item in enumerate(items):
                future = Future()
                if not (put(ordered, future) and put(work, (index, item, future))):
                    return
                if item.streamed:  # a member of an archive on stdin: the archive is read on once it is decoded
                    while not (future.done() or finished.is_set()):
                        wait([future], timeout=0.1)
        except BaseException as error:  # e.g. the list of paths became unreadable
            feeder_error.append(error)
        finally:
            put(ordered, None)
            for _ in range(jobs):
                put(work, None)

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
            index, item, future = entry
            try:
                future.set_result(start_input(item, open_input, tagger, batcher, options, on_segment,
                                              lambda k=index: on_finished(k)))
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

