"""WARC files listed ahead, each by a process of its own, so that listing keeps up with many cores.

Listing a WARC is mostly Python's work (warcio parses every record's headers, each payload is sniffed), under one
process's lock: one listing finds about 340 clips a second in a crawl's .warc.gz of 40 pages per clip, what 8-10
cores tag (``scripts/bench/bench_listing.py``); threads listing several at once were measured no faster. On a larger
server the workers would wait for it. So there, ``Listers`` hands the WARC files among the inputs, in order, to
a few lister processes (this same program, started as the watched worker is), each listing one WARC at a time
while the watcher takes the members of the one before: the members still come in input order, a WARC's after the
one before it. Tars and zips are listed in the watcher as before (their listing is zlib's work, or an index).
Only the command line's operands (and the directories they walk) are read ahead looking for WARC files: never a
list (``--files-from -`` may wait for a crawler's next line) nor an archive on stdin (its members are read as they
arrive, each tagged or carried before the next is read).

What a lister finds waits for its turn in the watcher, up to ``AHEAD_BYTES`` per WARC (members are small: a
record's offset and names; a WARC compressed whole carries records of up to 2 MB, as the watcher's own listing
does); past that the lister waits. A lister that dies (killed, out of memory) ends its WARC with an error record
saying so, after the members it had found; a new one takes the next WARC. The default is one lister per
``CORES_PER_LISTING`` cores that tag (``--jobs`` x ``--workers``), none below twice that: there one listing in the
watcher keeps up. ``AUDIOTAG_LISTERS`` sets the number (0: none).
"""

import collections
import os
import signal
import subprocess
import threading
import time
from typing import Iterable, Iterator, Optional

from . import archives, inputs, supervisor, warc

CORES_PER_LISTING = 8  # a crawl's WARC: one listing keeps 8-10 cores tagging
AHEAD_BYTES = 64 << 20  # found and not yet taken, per WARC
WINDOW = 4096  # inputs read ahead of the one being taken, looking for WARC files to hand out
BATCH = 64  # members a lister sends at once (or what it found in BATCH_SECONDS, or BATCH_BYTES of carried records)
BATCH_SECONDS = 0.05
BATCH_BYTES = 1 << 20
PARENT_CHECK_SECONDS = 0.5


def lister_count(tagging_cores: int) -> int:
    """Listers for a run whose workers tag on ``tagging_cores`` cores (``AUDIOTAG_LISTERS`` overrides)."""
    setting = os.environ.get("AUDIOTAG_LISTERS", "").strip()
    if setting.isdigit():
        return int(setting)
    count = tagging_cores // CORES_PER_LISTING
    return count if count >= 2 else 0


def listed(items: Iterable, count: int, on_start=None) -> Iterator:
    """``inputs.listed``: each archive among ``items`` replaced by its members, in order; WARC files listed by
    ``count`` lister processes ahead of their turn (none: all in this thread). ``on_start()`` is called once the
    first lister has started (for --verbose)."""
    if count <= 0:
        yield from inputs.listed(items)
        return
    pool = _Pool(count, on_start)
    try:
        yield from pool.listed(iter(items))
    finally:
        pool.close()


def _is_warc(item) -> bool:
    return isinstance(item, inputs.Archive) and item.path.lower().endswith(warc.WARC_SUFFIXES)


class _Listing:
    """One WARC's members as its lister sends them: batches of inputs, then its end (or why it ended)."""

    def __init__(self, archive: inputs.Archive):
        self.archive = archive
        self._batches = collections.deque()
        self._bytes = 0
        self._ended: Optional[str] = None  # "" once whole; else why it ended early
        self._changed = threading.Condition()

    def put(self, batch: list, size: int) -> None:
        with self._changed:
            while self._bytes > AHEAD_BYTES:
                self._changed.wait()
            self._batches.append((batch, size))
            self._bytes += size
            self._changed.notify_all()

    def end(self, why: str = "") -> None:
        with self._changed:
            self._ended = why
            self._changed.notify_all()

    def items(self) -> Iterator:
        while True:
            with self._changed:
                while not self._batches and self._ended is None:
                    self._changed.wait()
                if not self._batches:
                    break
                batch, size = self._batches.popleft()
                self._bytes -= size
                self._changed.notify_all()
            yield from batch
        if self._ended:
            yield inputs.Input(self.archive.path, error=f"cannot read the archive: {self._ended}",
                               member=archives.Refused({"archive": self.archive.path}))


class _Lister:
    """A lister process and the thread that reads what it sends into each of its listings in turn."""

    def __init__(self):
        command = [*supervisor.worker_command(supervisor.LISTER_FLAG), str(os.getpid())]  # the watcher: it ends
        # with it (a frozen binary's lister may have a parent process of its own in between)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=supervisor.worker_environment(), close_fds=True)
        self.busy = False
        self._listings = collections.deque()  # handed out, in order: the one being read first
        self._given = threading.Condition()
        threading.Thread(target=self._read, daemon=True, name="lister").start()

    def give(self, listing: _Listing) -> bool:
        """Start listing ``listing``'s WARC; False if this lister is gone."""
        with self._given:
            self._listings.append(listing)
            self._given.notify_all()
        self.busy = True
        try:
            supervisor.write_message(self.process.stdin, (listing.archive.path, listing.archive.all_files))
        except (BrokenPipeError, OSError, ValueError):
            self.busy = False
            with self._given:
                self._listings.clear()
            return False
        return True

    def _read(self) -> None:
        stream = self.process.stdout
        while True:
            try:
                message, size = supervisor.read_sized(stream)
            except (EOFError, OSError, ValueError):
                message = None
            if message is None:
                break
            with self._given:
                while not self._listings:
                    self._given.wait()
                listing = self._listings[0]
            if message[0] == "items":
                listing.put(message[1], size)
                continue
            with self._given:
                self._listings.popleft()
            self.busy = False
            listing.end("" if message[0] == "end" else message[1])
        returncode = self.process.wait()
        why = f"its listing process ended ({supervisor.crash_reason(returncode).split(' (')[-1].rstrip(')')})" \
            if returncode < 0 else f"its listing process exited with status {returncode}"
        with self._given:
            gone = list(self._listings)
            self._listings.clear()
        for listing in gone:
            listing.end(why)
        self.busy = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.busy:  # listing a WARC no one will take (the run was stopped): no need to finish it
            self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:
            pass
        self.process.wait()


class _Pool:
    def __init__(self, count: int, on_start=None):
        self._count, self._on_start = count, on_start
        self._listers: list = []

    def _free_lister(self) -> Optional[_Lister]:
        self._listers = [lister for lister in self._listers if lister.alive]  # a dead one's listing is ended
        # by its reading thread
        for lister in self._listers:
            if not lister.busy and lister.alive:
                return lister
        if len(self._listers) < self._count:
            try:
                lister = _Lister()
            except OSError:  # no process can be started: listed here instead
                return None
            self._listers.append(lister)
            if self._on_start is not None:
                self._on_start()
                self._on_start = None
            return lister
        return None

    def listed(self, items: Iterator) -> Iterator:
        window = collections.deque()  # inputs, archives and listings, in order
        source_ended = False
        while True:
            while not source_ended and len(window) < WINDOW:  # read ahead while a lister is free for a WARC
                if window and _is_warc(window[-1]):  # one waiting for a lister
                    lister = self._free_lister()
                    if lister is None:
                        break
                    listing = _Listing(window.pop())
                    window.append(listing if lister.give(listing) else listing.archive)
                    continue
                item = next(items, None)
                if item is None:
                    source_ended = True
                    break
                window.append(item)
            if not window:
                return
            item = window.popleft()
            if isinstance(item, _Listing):
                yield from item.items()
            elif isinstance(item, inputs.Archive):
                yield from inputs.archive_members(item.path, item.all_files)
            else:
                yield item

    def close(self) -> None:
        for lister in self._listers:
            lister.close()


def lister_main(watcher: int) -> int:
    """A lister's main: (path, all_files) requests on stdin; for each, batches of its inputs, then its end. It
    exits once the ``watcher`` process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the watcher decides, and closes or kills this lister
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # as the worker's: a C library's prints must not enter the channel
    threading.Thread(target=_end_with_watcher, args=(watcher,), daemon=True, name="watcher").start()
    try:
        while (request := supervisor.read_message(requests)) is not None:
            path, all_files = request
            batch, sent, size = [], time.monotonic(), 0
            try:
                for item in inputs.archive_members(path, all_files):
                    batch.append(item)
                    size += len(getattr(item.member, "data", None) or b"")
                    if len(batch) >= BATCH or size >= BATCH_BYTES or time.monotonic() - sent > BATCH_SECONDS:
                        supervisor.write_message(replies, ("items", batch))
                        batch, sent, size = [], time.monotonic(), 0
            except Exception as error:  # a bug: the watcher says it, with the archive's name
                supervisor.write_message(replies, ("items", batch))
                supervisor.write_message(replies, ("failed", f"an internal error of audiotag (please report it, with "
                                                      f"this input): {type(error).__name__}: {error}"))
                continue
            supervisor.write_message(replies, ("items", batch))
            supervisor.write_message(replies, ("end",))
    except BrokenPipeError:
        return 141
    return 0


def _end_with_watcher(watcher: int) -> None:
    """Exit once the watcher is gone: it may end without closing its listers (Ctrl-C, a closed pipe: os._exit),
    and a lister finds out only when it next writes, which on a WARC without audio may be minutes away. (Its
    pid, not the parent's: one that died while this lister started was gone before it could be looked at.)"""
    while _alive(watcher):
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: the pid was taken again
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie waiting for its parent is gone
    except (OSError, IndexError):  # no /proc (not Linux): alive, as far as kill tells
        return True
