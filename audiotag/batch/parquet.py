"""Parquet output (``-f parquet -o DIR``): the JSON records as rows of a directory of part files.

A Parquet file is readable only once its footer is written, at close. So every flush (``FLUSH_RECORDS`` records,
or ``FLUSH_SECONDS`` after the oldest record waiting, whichever comes first) writes the records waiting as one
whole file, ``part-NNNNN.parquet``: written as ``.tmp``, synced, then renamed, so a killed run leaves only whole
parts, holding every record up to its last flush. ``--resume`` reads the paths back from the parts, deletes a
``.tmp`` left over, and carries on in the next part number. pyarrow is imported here only (the ``parquet`` extra).
"""

import os
import re
import threading
import time
from typing import Optional, Sequence

FLUSH_RECORDS = 1000
FLUSH_SECONDS = 60.0


def flush_settings() -> tuple:
    """(records, seconds) between flushes: $AUDIOTAG_PARQUET_FLUSH "RECORDS[,SECONDS]", else the defaults."""
    value = os.environ.get("AUDIOTAG_PARQUET_FLUSH", "")
    try:
        records, _, seconds = value.partition(",")
        return max(1, int(records)) if records else FLUSH_RECORDS, float(seconds) if seconds else FLUSH_SECONDS
    except ValueError:
        return FLUSH_RECORDS, FLUSH_SECONDS


# Names from disk, archives or WARC headers: maybe not UTF-8.
NAME_FIELDS = ("path", "archive", "member", "key", "url", "warc_record_id", "duplicate_of")
PART = re.compile(r"part-(\d{5,})\.parquet")
INSTALL_HINT = "-f parquet needs pyarrow: pip install 'audiotag[parquet]' (the single-file binary does not have it)"


class ParquetMissing(ImportError):
    """pyarrow is not installed (the package without its ``parquet`` extra, or the frozen binary)."""


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise ParquetMissing(INSTALL_HINT) from error
    return pyarrow, pyarrow.parquet


def schema():
    """Every field a JSON record may hold; a record without one has null there. ``events`` (--events): the
    input's events as a list of {label, start, end, score}."""
    pa, _ = _pyarrow()
    return pa.schema([
        ("path", pa.string()), ("sha256", pa.string()), ("archive", pa.string()), ("member", pa.string()),
        ("key", pa.string()), ("url", pa.string()), ("warc_record_id", pa.string()), ("duplicate_of", pa.string()),
        ("duration", pa.float64()), ("sample_rate", pa.int32()), ("channels", pa.int32()), ("codec", pa.string()),
        ("truncated", pa.bool_()), ("audio_duration", pa.float64()), ("warning", pa.string()),
        ("error", pa.string()),
        ("categories", pa.list_(pa.struct([("name", pa.string()), ("score", pa.float64())]))),
        ("tags", pa.list_(pa.struct([("label", pa.string()), ("mid", pa.string()), ("index", pa.int32()),
                                     ("score", pa.float64())]))),
        ("events", pa.list_(pa.struct([("label", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
                                       ("score", pa.float64())]))),
    ])


def utf8(name: str) -> str:
    """A name as Parquet can hold it (UTF-8): the bytes of a name that is not UTF-8 as \\xNN escapes."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def _parts(directory: str) -> list:
    return sorted(name for name in os.listdir(directory) if PART.fullmatch(name))


def _check_directory(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"-f parquet writes a directory of part files, and {path} is a file")


class RecordedNames:
    """The paths the parts record, for ``name in recorded`` (names compared as ``utf8`` stores them)."""

    def __init__(self, names):
        self._names = set(names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return utf8(name) in self._names


def recorded_paths(path: str) -> RecordedNames:
    """The inputs already recorded in the parts of ``path`` (for --resume); a ``.tmp`` part, never renamed (a
    killed flush), is deleted: its inputs are tagged again. Raises ``writer.ResumeError`` where a part cannot be
    read (not resuming into it)."""
    from .writer import ResumeError

    if not os.path.exists(path):
        return RecordedNames(())
    _check_directory(path)
    _, pq = _pyarrow()
    names = []
    for name in os.listdir(path):
        if name.startswith("part-") and name.endswith(".parquet.tmp"):
            os.remove(os.path.join(path, name))
    for name in _parts(path):
        try:
            names += pq.read_table(os.path.join(path, name), columns=["path"]).column("path").to_pylist()
        except Exception as error:  # pyarrow's errors: ArrowInvalid, OSError...
            raise ResumeError(f"{name} is not a readable Parquet part ({error}): not resuming into this directory")
    return RecordedNames(names)


class ParquetWriter:
    """The ``batch.writer.Writer`` interface for Parquet: records wait in memory and go out as whole part files
    (see the module's note). A thread flushes records that have waited ``seconds``, also while no new record
    comes."""

    def __init__(self, path: str, append: bool = False, records: Optional[int] = None,
                 seconds: Optional[float] = None):
        self._pa, self._pq = _pyarrow()
        self._schema = schema()
        _check_directory(path)
        os.makedirs(path, exist_ok=True)
        existing = _parts(path)
        if not append:  # a new run replaces the old results, as a JSONL file is overwritten
            for name in existing:
                os.remove(os.path.join(path, name))
            existing = []
        self.path = path
        self.fmt = "parquet"
        self._number = int(PART.fullmatch(existing[-1]).group(1)) + 1 if existing else 0
        default_records, default_seconds = flush_settings()
        self._records = records or default_records
        self._seconds = seconds or default_seconds
        self._rows: list = []
        self._oldest: Optional[float] = None
        self._lock = threading.Lock()
        self._closed = False
        self._error: Optional[BaseException] = None
        self._ticker = threading.Thread(target=self._tick, name="audiotag-parquet-flush", daemon=True)
        self._ticker.start()

    def begin(self) -> None:
        pass

    def write(self, rec: dict, header: bool = True, before: Sequence[dict] = ()) -> tuple:
        """``rec`` as one row; ``before`` (its events) goes into its ``events`` column."""
        if "start" in rec:
            return 0, 0  # a window (--segments): refused with parquet before the run
        row = dict(rec)
        for field in NAME_FIELDS:
            if field in row:
                row[field] = utf8(row[field])
        if before:
            row["events"] = [{k: e[k] for k in ("label", "start", "end", "score")} for e in before]
        with self._lock:
            self._raise_error()
            self._rows.append(row)
            if self._oldest is None:
                self._oldest = time.monotonic()
            if len(self._rows) >= self._records:
                self._flush()
        return 0, 0

    def _tick(self) -> None:
        while True:
            time.sleep(min(1.0, self._seconds / 4))
            with self._lock:
                if self._closed:
                    return
                if self._oldest is not None and time.monotonic() - self._oldest >= self._seconds:
                    try:
                        self._flush()
                    except OSError as error:  # raised in the run's thread at its next write or close
                        self._error = error

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _flush(self) -> None:
        """The waiting rows as one part file, whole or not at all (the lock is held)."""
        if not self._rows:
            return
        table = self._pa.Table.from_pylist(self._rows, schema=self._schema)
        final = os.path.join(self.path, f"part-{self._number:05d}.parquet")
        temporary = final + ".tmp"
        self._pq.write_table(table, temporary, compression="zstd")
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, final)
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself is durable
        finally:
            os.close(directory)
        self._number += 1
        self._rows = []
        self._oldest = None

    def close(self, quietly: bool = False) -> None:
        """Write what waits and stop the flushing thread, once; ``quietly``: on the way out after an error."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._raise_error()
                self._flush()
            except OSError:
                if not quietly:
                    raise


def read_records(path: str) -> list:
    """The records of a Parquet output as JSON-like dicts (null fields left out), in the order written."""
    _, pq = _pyarrow()
    rows = []
    for name in _parts(path):
        rows += pq.read_table(os.path.join(path, name)).to_pylist()
    return [{k: v for k, v in row.items() if v is not None} for row in rows]
