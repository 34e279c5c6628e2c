"""Content hashes (``--hash``) and duplicates tagged once (``--dedup``).

An input's sha256 is that of its bytes (``audiotag.hashing``). A file is hashed before it is decoded, in this
process (the parent, which walks, reads lists and writes the records), by ``jobs`` threads a little ahead of the
tagging: the dedup decision must come before decoding, and this is the one place that sees every input when
``--workers`` deals them to several processes. The worker then reads the file a second time, from the page cache
(``scripts/bench/bench_content.py`` measures the cost). Stdin cannot be read twice: it is hashed as the decoder
reads it, then read to its end; so is a member of an archive on stdin (``piped``), which --dedup therefore
decodes even when its bytes were seen, then records as the duplicate it is (``earlier_copy``).

A duplicate is not decoded: its record is the first copy's, read back from the results file (by offset, so the
records are not held in memory), with its own path and ``"duplicate_of": <first path>``. The table from content to
record (``DigestTable``) holds 8 bytes of each distinct sha256 and where its record lies; a match on those 8 bytes
is confirmed on the full sha256 the record carries, so two contents that share them are still told apart.
"""

import collections
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from ..errors import failure_message
from ..hashing import file_sha256
from .archives import member_sha256
from .inputs import Input


def not_hashed(what: str, error: OSError) -> str:
    """The warning of an input tagged from what could be read but not hashed whole (a member the archive is cut or
    damaged inside): the system's words for a read error, or ours as written."""
    return f"{what} not hashed: {failure_message(error) if error.strerror else str(error)}"

class Unhashed:
    """Why a member's bytes could not be hashed: no hash (falsy), said in its record."""

    def __init__(self, reason: str):
        self.reason = reason

    def __bool__(self) -> bool:
        return False


class DigestTable:
    """sha256 -> (offset, length) of its record in the results file, in numpy arrays: an open-addressing table
    keyed by the digest's first 8 bytes, grown to stay at most 2/3 full. 20 bytes a slot (key 8, offset 8,
    length 4), so 30 to 60 bytes per distinct content (``scripts/bench/bench_content.py``: 1M contents)."""

    EMPTY = 0  # a key of 0 is stored as 1: one prefix in 2^64 shares a slot's key, and the full sha256 decides

    def __init__(self, capacity: int = 1024):
        self._keys = np.zeros(capacity, np.uint64)
        self._offsets = np.zeros(capacity, np.int64)
        self._lengths = np.zeros(capacity, np.uint32)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._offsets.nbytes + self._lengths.nbytes

    @staticmethod
    def _key(hexdigest: str) -> int:
        return int(hexdigest[:16], 16) or 1

    def _slot(self, key: int) -> int:
        mask = len(self._keys) - 1
        slot = (key * 0x9E3779B97F4A7C15 >> 64 - mask.bit_length()) & mask  # Fibonacci hashing of the key
        while self._keys[slot] != self.EMPTY and self._keys[slot] != key:
            slot = (slot + 1) & mask
        return slot

    def get(self, hexdigest: str) -> Optional[tuple]:
        """(offset, length) of the record of a content whose sha256 begins as ``hexdigest`` does, or None."""
        slot = self._slot(self._key(hexdigest))
        if self._keys[slot] == self.EMPTY:
            return None
        return int(self._offsets[slot]), int(self._lengths[slot])

    def add(self, hexdigest: str, offset: int, length: int) -> None:
        """Remember the first record of a content (a later one with the same 8 bytes is not stored)."""
        if 3 * (self._count + 1) > 2 * len(self._keys):
            self._grow()
        key = self._key(hexdigest)
        slot = self._slot(key)
        if self._keys[slot] == self.EMPTY:
            self._keys[slot], self._offsets[slot], self._lengths[slot] = key, offset, length
            self._count += 1

    def _grow(self) -> None:
        keys, offsets, lengths = self._keys, self._offsets, self._lengths
        self.__init__(2 * len(keys))
        for index in np.flatnonzero(keys != self.EMPTY):
            slot = self._slot(int(keys[index]))
            self._keys[slot], self._offsets[slot], self._lengths[slot] = keys[index], offsets[index], lengths[index]
            self._count += 1


class Duplicate:
    """An input whose bytes were seen before: it is not tagged."""

    def __init__(self, name: str, sha: str, first: str, fields: Optional[dict] = None):
        self.name, self.sha256, self.first, self.fields = name, sha, first, fields


class Contents:
    """Hashes inputs ahead of the tagging and, with ``dedup``, holds back those seen before.

    ``tagged(items)`` is what goes to the engine (run in its feeder thread); the writer side (``sha256_of``,
    ``duplicates_before``, ``recorded``) is called by the thread that writes records, in input order.
    ``read_record(offset, length)`` reads a record back from the results file (None: not readable).
    """

    def __init__(self, jobs: int, dedup: bool, table: Optional[DigestTable] = None,
                 read_record: Optional[Callable[[int, int], Optional[dict]]] = None):
        self.jobs, self.dedup = jobs, dedup
        self.table = table if table is not None else DigestTable()
        self.read_record = read_record
        self._lock = threading.Lock()
        self._pending = {}  # sha256 -> first path, of contents sent to be tagged and not yet recorded
        self._hashes = collections.deque()  # (name, sha256 or None) of the inputs sent to be tagged, in order
        self._held = collections.deque()  # per input sent: the duplicates that follow it (the first: those before)
        self._held.append([])
        self.stdin = None  # a HashingReader when stdin is an input
        self.on_held = None  # called with a duplicate's name when it is held back (its bytes are dropped then)

    def tagged(self, items: Iterable[Input]) -> Iterator[Input]:
        """The inputs to tag, hashed (a little ahead, by ``jobs`` threads); duplicates are held back."""
        for item, sha in self._hashed(items):
            first = self._first_copy(sha) if self.dedup and sha else None
            with self._lock:
                if first is not None:
                    self._held[-1].append(Duplicate(item.name, sha, first, item.fields))
                    if self.on_held is not None:
                        self.on_held(item.name)
                    continue
                if self.dedup and sha:
                    self._pending[sha] = item.name
                self._hashes.append((item.name, item.member if item.streamed else sha))
                self._held.append([])
            yield item

    def _hashed(self, items: Iterable[Input]) -> Iterator[tuple]:
        def digest(item: Input):
            if item.error or item.name == "-" or item.streamed:  # stdin: hashed as it is decoded
                return None
            try:
                if item.member is not None:  # an archive's member: its bytes, read where they lie
                    return member_sha256(item.member)
                if not stat.S_ISREG(os.stat(item.name).st_mode):  # a pipe named as a file: read once, by the decoder
                    return None
                return file_sha256(item.name)
            except OSError as error:  # a member's bytes (a zip's CRC, say) fail where its decoder may not: said
                # in its record (a file: its decoder says what is wrong with it)
                return Unhashed(failure_message(error) if error.strerror else str(error)) if item.member else None

        ahead = collections.deque()
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="audiotag-hash") as pool:
            for item in items:
                ahead.append((item, pool.submit(digest, item)))
                if item.streamed or getattr(item.member, "archive", None) == "-":  # stdin is read on only once
                    # this one is tagged (streamed), or while its bytes fit in their budget (piped.carried): no
                    # reading ahead
                    while ahead:
                        item, future = ahead.popleft()
                        yield item, future.result()
                if len(ahead) > 2 * self.jobs:
                    item, future = ahead.popleft()
                    yield item, future.result()
            while ahead:
                item, future = ahead.popleft()
                yield item, future.result()

    def _first_copy(self, sha: str) -> Optional[str]:
        """The path of the first input with these bytes, if one was seen (in this run or the resumed one)."""
        with self._lock:
            if sha in self._pending:
                return self._pending[sha]
            place = self.table.get(sha)
        if place is None:
            return None
        record = self.read_record(*place)
        return record["path"] if record is not None and record.get("sha256") == sha else None

    def sha256_of(self, outcome) -> Optional[str]:
        """The sha256 of the input this outcome is of (the next one sent to be tagged)."""
        with self._lock:
            name, sha = self._hashes.popleft()
        if isinstance(sha, Unhashed):
            if outcome.error is None:
                outcome.warning = outcome.warning or f"member not hashed: {sha.reason}"
            return None
        source = self.stdin if name == "-" else sha if hasattr(sha, "hexdigest") else None  # hashed as read
        if source is not None:
            sha = None
            try:
                sha = source.hexdigest()
            except OSError as error:
                outcome.warning = outcome.warning or not_hashed("stdin" if name == "-" else "member", error)
        return sha

    def earlier_copy(self, outcome) -> Optional[Duplicate]:
        """The tagged input as a duplicate, when its bytes' first copy was recorded after all (--dedup): a member
        of an archive on stdin is hashed only as it is decoded, and an input may be hashed before an earlier
        piped copy was recorded. Its record is then the first copy's, as any duplicate's is."""
        if not (self.dedup and outcome.sha256):
            return None
        with self._lock:
            place = self.table.get(outcome.sha256)
        record = self.read_record(*place) if place is not None else None
        if record is None or record.get("sha256") != outcome.sha256:
            return None
        return Duplicate(outcome.name, outcome.sha256, record["path"], outcome.fields)

    def duplicates_before(self) -> list:
        """The duplicates held back before the input whose outcome comes next (call once per outcome, then once
        more at the end for those after the last)."""
        with self._lock:
            return self._held.popleft() if self._held else []

    def recorded(self, sha: Optional[str], offset: int, length: int) -> None:
        """A tagged input's record was written at ``offset``: later copies of its bytes are read back from there."""
        if not (self.dedup and sha):
            return
        with self._lock:
            self._pending.pop(sha, None)
            self.table.add(sha, offset, length)


def duplicate_record(first: dict, duplicate: Duplicate) -> dict:
    """The record of a duplicate: the first copy's, with its own path and "duplicate_of" after the sha256."""
    rec = {"path": duplicate.name, "sha256": duplicate.sha256, "duplicate_of": first["path"]}
    rec.update((key, value) for key, value in first.items() if key not in rec and key != "duplicate_of")
    return rec
