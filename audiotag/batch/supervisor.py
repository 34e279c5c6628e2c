"""Crash isolation: batch inputs are tagged in a worker process that this one watches.

libsndfile, mpg123, libFLAC (and any other decoder) parse bytes nobody vetted; a native crash there (SIGSEGV,
SIGBUS, SIGABRT...) or an out-of-memory kill would end a run of weeks. So the supervisor (this process: it walks,
reads lists, writes the records) sends inputs to a worker process running the ordinary ``pipeline.run``, and
gets their outcomes back in order. It knows which inputs are in flight, and which of them the worker has
finished (their outcomes wait behind a slower input's: the worker is sent more meanwhile): when the worker dies it
starts a new one and reruns the unfinished ones one at a time, so the one that kills a worker alone is the
culprit (its record: "decoder crashed (SIGSEGV)"), and the innocent ones that were beside it are tagged. A worker
that stops answering (a decoder looping in native code, beyond the cooperative ``--timeout``) is killed and
handled the same way.

Why a worker process and not a process per input: one long-lived worker keeps the model loaded and batches
windows across inputs, so supervision costs only the pickling of each input and outcome (``scripts/bench/bench.py``).
The tagging code does not know it is watched: the worker runs ``pipeline.run`` as the CLI would in-process.

Messages are length-prefixed pickles on the worker's stdin (config, then inputs; EOF ends) and on a copy of its
stdout (ready, segments, outcomes); the worker's own file descriptor 1 is pointed at its stderr, so a chatty C
library cannot corrupt the channel.
"""

import collections
import contextlib
import itertools
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Optional

WORKER_FLAG = "--_supervised-worker"  # argv[1] of a worker; not a user option
LISTER_FLAG = "--_archive-lister"  # argv[1] of a lister (``listers``); not a user option
OUTCOMES_AHEAD = 1024  # inputs read and not yet recorded: as far as the worker runs past a slow input (its
# pipeline's own bound is the same)
CARRIED_AHEAD = 64 << 20  # bytes those inputs carry (tar.gz members, up to 2 MB each), at least 3 x --jobs + 2 such
_LENGTH = struct.Struct("<Q")
_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGKILL", "SIGTERM", "SIGSYS", "SIGTRAP")


class WorkerError(RuntimeError):
    """No worker can be started (the model cannot be loaded there, the program cannot be executed)."""


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to tag inputs as the CLI would in-process (all picklable)."""

    opener: Callable  # name -> decode.Stream (``inputs.Opener``)
    options: object  # tagger.TagOptions
    jobs: int
    model: Optional[str] = None
    providers: Optional[tuple] = None
    threads: int = 1
    segments: bool = False
    watchdog: Optional[float] = None  # seconds without an outcome after which the worker counts as hung
    arrays: bool = True  # outcomes keep their logits and embedding; without, they are sent without them (records
    # need neither), so this process unpickles them without loading numpy


def crash_reason(returncode: int) -> str:
    """An input's error message for a worker that ended with ``returncode`` (negative: killed by a signal)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if name == "SIGKILL":
            return "worker killed (SIGKILL: out of memory?)"
        return f"decoder crashed ({name})"
    return f"worker exited with status {returncode}"


class Supervisor:
    """Starts a worker at once (its start-up overlaps this process's own), then ``outcomes(items)``: outcomes in
    input order, as ``pipeline.run`` gives them, whatever happens to the worker."""

    def __init__(self, config: WorkerConfig, on_segment=None, process: Optional[subprocess.Popen] = None):
        self._config = config
        self._on_segment = on_segment
        self._events = queue.Queue()  # ("item", x) ("end",) from the feeder; ("msg"/"exit", worker, x) from readers
        self._worker = None
        self._generation = 0
        self._ready = False
        self._kill_reason = None  # why the supervisor killed the current worker (hung)
        # Enough unfinished inputs in the worker to keep its decoders and batches full, few enough to rerun one at
        # a time after a crash; finished ones (their outcomes behind a slower input's) are rerun together.
        self._window = 3 * config.jobs + 2
        self._sent = 0  # inputs sent to the current worker: the worker's index of the next one
        self.info = None  # the first worker's model: {"labels": count, "providers": [...], "label_problem"}
        self._start_worker(process)

    def ready(self) -> dict:
        """Wait for the first worker to load its model; WorkerError when it cannot."""
        while self.info is None:
            event = self._events.get()
            if event[0] == "exit":
                raise WorkerError(f"the worker process could not start ({crash_reason(event[2])})")
            if event[0] == "msg":
                self._take_ready(event[2])
        return self.info

    def close(self) -> None:
        """Stop the worker now (a run that ends early)."""
        if self._worker is not None and self._worker.poll() is None:
            self._worker.kill()
            self._worker.wait()

    def _take_ready(self, message) -> None:
        if message[0] == "fatal":
            raise WorkerError(message[1])
        if message[0] == "ready":
            self._ready = True
            self.info = self.info or message[1]

    def outcomes(self, items: Iterable) -> Iterator:
        from ..infer.results import Outcome

        ahead = _Ahead(max(CARRIED_AHEAD, self._window * (2 << 20)))  # the feeder reads no further ahead of the
        # records than this
        stop = threading.Event()
        threading.Thread(target=self._feed, args=(items, ahead, stop), name="audiotag-supervisor-feed",
                         daemon=True).start()
        waiting = collections.deque()  # read, not yet sent
        in_flight = collections.deque()  # (the worker's index, input, suspect) sent, no outcome yet, oldest first
        finished = set()  # indexes in flight whose outcome is ready in the worker, behind a slower input's
        rerun = collections.deque()  # (input, suspect) in flight when a worker died, in order, before the rest:
        # each suspect alone in its worker, the finished ones (innocent) together
        ended = False
        last_progress = time.monotonic()

        def send(item, suspect: bool = False) -> None:
            nonlocal last_progress
            if not in_flight:
                last_progress = time.monotonic()
            self._send(item)
            in_flight.append((self._sent - 1, item, suspect))

        def room() -> bool:
            return len(in_flight) - len(finished) < self._window and not (in_flight and in_flight[-1][2])

        try:
            while waiting or in_flight or rerun or not ended:
                while rerun and room() and not (rerun[0][1] and in_flight):
                    send(*rerun.popleft())
                while not rerun and waiting and room():
                    send(waiting.popleft())
                event = self._next_event(in_flight, last_progress)
                kind = event[0]
                if kind == "item":
                    waiting.append(event[1])
                elif kind == "end":
                    ended = True
                    if event[1] is not None:
                        raise event[1]  # the list of inputs could not be read: as pipeline.run does
                elif kind == "hung":
                    self._kill_reason = f"timed out after {self._config.watchdog:g} s"
                    self._worker.kill()
                elif event[1] != self._generation:
                    continue  # from a worker already replaced
                elif kind == "msg":
                    message = event[2]
                    if message[0] in ("ready", "fatal"):
                        self._take_ready(message)
                        last_progress = time.monotonic()
                    elif message[0] == "segment":
                        if self._on_segment is not None:
                            self._on_segment(*message[1:])
                    elif message[0] == "finished":  # not progress for the watchdog: a hung input stays hung
                        if in_flight and message[1] >= in_flight[0][0]:  # not one whose outcome came first
                            finished.add(message[1])
                    elif message[0] == "outcome":
                        index, item, _ = in_flight.popleft()
                        finished.discard(index)
                        last_progress = time.monotonic()
                        ahead.give_back(item)
                        yield message[1]
                elif kind == "exit":
                    returncode = event[2]
                    reason = self._kill_reason or crash_reason(returncode)
                    was_ready = self._ready
                    self._worker = None
                    if not in_flight:
                        continue  # died between inputs: the next input starts a new one
                    if not was_ready:
                        raise WorkerError(f"the worker process could not start ({reason})")
                    if len(in_flight) == 1:  # alone in the worker: the culprit
                        item = in_flight.popleft()[1]
                        ahead.give_back(item)
                        yield Outcome(item.name, error=reason, fields=getattr(item, "fields", None))
                    # which one? each unfinished one alone, in order, before anything newer (all of them if none
                    # was: something else killed the worker), even a lone one (an out-of-memory kill may have
                    # been meant for the whole worker); the finished ones again, together
                    unfinished = [index for index, _, _ in in_flight if index not in finished]
                    rerun.extendleft(reversed([(item, not unfinished or index not in finished)
                                               for index, item, _ in in_flight]))
                    in_flight.clear()
                    finished.clear()
            self._finish_worker()
        finally:
            stop.set()
            ahead.stop()  # a feeder waiting for room sees the stop
            self.close()  # interrupted, or the consumer stopped early

    def _feed(self, items, ahead: "_Ahead", stop) -> None:
        error = None
        try:
            for item in items:
                ahead.take(item)
                if stop.is_set():
                    return
                self._events.put(("item", item))
        except BaseException as failure:  # e.g. the list of paths became unreadable
            error = failure
        self._events.put(("end", error))

    def _next_event(self, in_flight, last_progress):
        watchdog = self._config.watchdog
        if not (watchdog and in_flight):
            return self._events.get()
        try:
            return self._events.get(timeout=max(0.0, last_progress + watchdog - time.monotonic()))
        except queue.Empty:
            return ("hung",)

    def _send(self, item) -> None:
        if self._worker is None:
            self._start_worker()
        self._outbox.put(item)
        self._sent += 1

    def _start_worker(self, worker: Optional[subprocess.Popen] = None) -> None:
        self._generation += 1
        self._sent = 0
        self._ready = False
        self._kill_reason = None
        worker = worker or spawn()
        self._worker = worker
        # Inputs are written by a thread of their own: one can be megabytes (a tar.gz member's bytes), and a
        # worker stuck before reading it must meet the watchdog here, not block this loop in a write.
        self._outbox = queue.SimpleQueue()
        self._outbox.put(self._config)
        threading.Thread(target=_write_all, args=(worker, self._outbox), name="audiotag-supervisor-write",
                         daemon=True).start()
        threading.Thread(target=self._read, args=(worker, self._generation, self._outbox),
                         name="audiotag-supervisor-read", daemon=True).start()

    def _read(self, worker, generation, outbox) -> None:
        try:
            while (message := read_message(worker.stdout)) is not None:
                self._events.put(("msg", generation, message))
        except (OSError, EOFError, pickle.UnpicklingError, ValueError):
            pass  # a torn message from a dying worker: its exit follows
        except Exception:  # a message this process cannot read at all: end that worker, never wait on it
            worker.kill()
        returncode = worker.wait()
        outbox.put(_END)  # its writer ends too
        self._events.put(("exit", generation, returncode))

    def _finish_worker(self) -> None:
        """Every outcome is out: close the worker's input, and it ends."""
        if self._worker is None:
            return
        try:
            self._outbox.put(_END)  # its writer closes the worker's input after what it still has to write
            self._worker.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass  # killed below


class _Ahead:
    """Inputs read and not yet recorded: at most OUTCOMES_AHEAD, carrying at most ``carried`` bytes (a larger
    input alone), so that the worker may run far past a slow input without the watcher holding a shard's bytes."""

    def __init__(self, carried: int):
        self._condition = threading.Condition()
        self._limit, self._count, self._bytes, self._stopped = carried, 0, 0, False

    def take(self, item) -> None:
        size = _carried(item)
        with self._condition:
            self._condition.wait_for(lambda: self._stopped or self._count < OUTCOMES_AHEAD and (
                not self._bytes or self._bytes + size <= self._limit))
            self._count += 1
            self._bytes += size

    def give_back(self, item) -> None:
        with self._condition:
            self._count -= 1
            self._bytes -= _carried(item)
            self._condition.notify_all()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()


def _carried(item) -> int:
    data = getattr(getattr(item, "member", None), "data", None)
    return len(data) if data is not None else 0


class Pool:
    """Several watched workers (``--workers N``), one Supervisor each: inputs are dealt to them in turn and their
    outcomes merged back into input order. Processes, not more threads, because PyAV holds Python's lock for
    its per-packet work: threads decode FFmpeg formats (AAC, WebM...) no faster than one does."""

    def __init__(self, config: WorkerConfig, count: int, on_segment=None, process: Optional[subprocess.Popen] = None):
        self._members = [Supervisor(config, on_segment, process if index == 0 else None) for index in range(count)]
        self._lane_size = 2 * config.jobs + 2

    def ready(self) -> dict:
        """Wait for every worker's model; WorkerError when one cannot start."""
        return [member.ready() for member in self._members][0]

    def close(self) -> None:
        for member in self._members:
            member.close()

    def outcomes(self, items: Iterable) -> Iterator:
        count = len(self._members)
        lanes = [queue.Queue(self._lane_size) for _ in range(count)]
        stop = threading.Event()
        threading.Thread(target=self._deal, args=(items, lanes, stop), name="audiotag-pool-deal",
                         daemon=True).start()
        streams = [member.outcomes(_lane(lane)) for member, lane in zip(self._members, lanes)]
        try:
            for index in itertools.count():
                outcome = next(streams[index % count], None)
                if outcome is None:  # its lane ended, so the inputs did, here: the others end too, gracefully
                    for stream in streams:
                        next(stream, None)
                    return
                yield outcome
        finally:
            stop.set()
            for stream in streams:
                stream.close()

    @staticmethod
    def _deal(items, lanes, stop) -> None:
        """Input k to lane k mod N; at the end (or a failure to read the inputs, raised where it happened, after
        the inputs before it) every lane is closed."""
        index, last = 0, ("end", None)
        try:
            for item in items:
                _put(lanes[index % len(lanes)], ("item", item), stop)
                index += 1
        except BaseException as failure:  # e.g. the list of paths became unreadable
            last = ("error", failure)
        for offset in range(len(lanes)):
            _put(lanes[(index + offset) % len(lanes)], last if offset == 0 else ("end", None), stop)


def _put(lane: queue.Queue, message, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            lane.put(message, timeout=0.5)
            return
        except queue.Full:
            pass


def _lane(lane: queue.Queue):
    while True:
        kind, value = lane.get()
        if kind == "error":
            raise value
        if kind == "end":
            return
        yield value


# --- the worker -------------------------------------------------------------------------------------------------

def spawn() -> subprocess.Popen:
    """Start a worker process; it loads its libraries while it waits for its WorkerConfig (so a caller may spawn
    it first thing and do its own start-up meanwhile)."""
    try:
        return subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=worker_environment(), close_fds=True)
    except OSError as error:
        raise WorkerError(f"cannot start the worker process: {error.strerror or error}") from error


def worker_command(flag: str = WORKER_FLAG) -> list:
    """How to start a worker (or, ``flag``, a lister): this same program, installed package or frozen binary."""
    if getattr(sys, "frozen", False):
        # The frozen program runs through the loader bundled next to it (see scripts/launcher.c): the server's own
        # loader and C library may be too old for the bundle, so the worker starts the same way.
        bundle = sys._MEIPASS  # noqa: SLF001 -- PyInstaller's folder of bundled files
        program = os.path.join(os.path.dirname(bundle), "audiotag")
        loader = os.path.join(bundle, "ld-linux-x86-64.so.2")
        if os.path.exists(loader):
            return [loader, "--library-path", bundle, "--argv0", program, program, flag]
        return [sys.executable, flag]
    # Not "-m audiotag": that finds the package from the working directory first, so a folder named audiotag
    # there (another checkout, a user's project) would be the worker. The worker imports this very package.
    home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds audiotag/
    start = f"import sys; sys.path[0] = {home!r}; from audiotag.cli import main; sys.exit(main())"
    return [sys.executable, "-c", start, flag]


def worker_environment() -> dict:
    """The environment the program started with. PyInstaller's bootloader points LD_LIBRARY_PATH into the bundle
    (keeping the original in LD_LIBRARY_PATH_ORIG); the worker starts the bundle's own way and sets it again."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        env.pop("LD_LIBRARY_PATH", None)
        if original is not None:
            env["LD_LIBRARY_PATH"] = original
    return env


def worker_main() -> int:
    """The worker's main: config, then inputs from stdin; ready, segments and outcomes to the supervisor."""
    # Ctrl-C and SIGTERM reach the whole process group: the supervisor decides, and kills this worker itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # C libraries printing to stdout must not write into the channel
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            write_message(replies, message)

    from ..infer.model import ModelError  # before the config arrives: this start-up overlaps the supervisor's
    from ..infer.tagger import Tagger
    from . import pipeline

    config = read_message(requests)
    if config is None:
        return 0  # the supervisor ended before it needed a worker

    try:
        tagger = Tagger(config.model, providers=config.providers, threads=config.threads)
    except (ModelError, OSError) as error:
        send(("fatal", str(error)))
        return 3
    problem = tagger.label_problem(config.options)  # the supervisor refuses the run: it is told before any input
    send(("ready", {"labels": 0 if problem else tagger.label_count(config.options), "label_problem": problem,
                    "providers": tagger.model.providers}))

    def inputs():
        while (item := read_message(requests)) is not None:
            yield item

    on_segment = (lambda name, segment: send(("segment", name, segment))) if config.segments else None
    try:
        for outcome in pipeline.run(inputs(), config.opener, tagger, config.options, config.jobs, on_segment,
                                    on_finished=lambda index: send(("finished", index))):
            if not config.arrays and outcome.prediction is not None:
                outcome.prediction = replace(outcome.prediction, logits=None, embedding=None)
            send(("outcome", outcome))
    except BrokenPipeError:
        return 141  # the supervisor is gone
    replies.close()
    return 0


_END = object()  # in an outbox: close the worker's input


def _write_all(worker: subprocess.Popen, outbox: queue.SimpleQueue) -> None:
    """Write a worker's messages in order until _END; once its pipe breaks (the worker is dying: its exit event
    follows, and what was sent is in flight) the rest is dropped."""
    stream, broken = worker.stdin, False
    while (message := outbox.get()) is not _END:
        if not broken:
            try:
                write_message(stream, message)
            except (BrokenPipeError, OSError, ValueError):
                broken = True
            except BaseException:  # e.g. MemoryError: a worker left waiting for input would hang the run
                broken = True
                worker.kill()
    with contextlib.suppress(OSError, ValueError):
        stream.close()


def write_message(stream, message) -> None:
    """A length-prefixed pickle: the channel to a worker or a lister (``listers``), both ways."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))  # apart: joined, a carried member's bytes would be copied once more
    stream.write(data)
    stream.flush()


def read_message(stream):
    """The next message, or None at the end of the stream."""
    return read_sized(stream)[0]


def read_sized(stream) -> tuple:
    """(The next message, its size in bytes), or (None, 0) at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None, 0
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("torn message")
    return pickle.loads(data), size
