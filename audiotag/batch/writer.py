"""The results file of a batch run: written record by record, durably (``Writer``), and read back by
``--resume`` (``recorded_paths``) to skip the inputs already recorded.
"""

import csv
import json
import os
from typing import Optional, Sequence

from ..records import RECORD_START, TABLE_COLUMNS, format_record, table_delimiter, table_header, table_line


class ResumeError(ValueError):
    """The -o file cannot be resumed into (it is not an audiotag output of this format); it was left untouched."""




class RecordedPaths:
    """The inputs an output file records, for ``name in recorded``: a sorted array of 16-byte BLAKE2b digests of
    the names, so a resume of 10 million records holds 160 MB, not the names and records themselves. (Two names
    share a digest with odds of about 1 in 10^24 at that size.)"""

    def __init__(self, digests: bytes = b""):
        import numpy as np

        # "V16", raw bytes: "S16" would drop a digest's trailing zero bytes when read back, and a name whose
        # digest ends in 0x00 (1 in 256) would never be found, so --resume tagged it again.
        self._digests = np.sort(np.frombuffer(digests, dtype="V16"))

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, name: str) -> bool:
        import numpy as np

        digest = np.void(name_digest(name))
        index = int(self._digests.searchsorted(digest))
        return index < len(self._digests) and self._digests[index] == digest


def name_digest(name: str) -> bytes:
    """16 bytes that stand for an input's name (its bytes, when it is not UTF-8)."""
    # _blake2 directly: hashlib would bring OpenSSL into the frozen binary (build.spec leaves it out).
    from _blake2 import blake2b

    return blake2b(name.encode("utf-8", errors="surrogateescape"), digest_size=16).digest()


def recorded_paths(path: str, fmt: str, rows_per_record=lambda: 1) -> RecordedPaths:
    """Inputs already recorded in an output file, after cutting off a torn end (for --resume).

    Only the end of the file is ever cut: what follows the last newline (a record the writer did not finish), a
    last JSON line that does not parse (a disk that lost the tail), or a last CSV/TSV record with fewer rows than
    the file's other records have (``rows_per_record()`` when there are none), so that input is tagged again. With
    ``rows_per_record`` None (``--threshold``: records have any number of rows) a last CSV/TSV clip record is
    always cut and tagged again, since whether it is whole cannot be told. A file that is not an audiotag output
    of this format raises ResumeError and is not touched; OSError passes.
    The file is read once, line by line: memory does not grow with its size beyond 16 bytes per record.
    """
    if not os.path.exists(path):
        return RecordedPaths()
    if not os.path.isfile(path):
        raise ResumeError("not a regular file: --resume needs the output file of an earlier run")
    with open(path, "rb+") as file:
        if fmt in ("jsonl", "json"):
            keep, digests = _jsonl_records(file)
        else:
            keep, digests = _table_records(file, fmt, rows_per_record)
        if keep < file.seek(0, os.SEEK_END):
            file.truncate(keep)
    return RecordedPaths(bytes(digests))


def _jsonl_records(file) -> tuple:
    """(bytes to keep, digests of the paths recorded) of a JSONL output; only "\n" ends a record (a name may
    hold U+2028)."""
    keep, digests, dropped = 0, bytearray(), None  # dropped: a line that does not parse, kept only if last
    for number, raw in enumerate(file, 1):
        if dropped is not None:
            raise ResumeError(f"line {dropped} is not an audiotag record: not resuming into this file")
        line = raw.decode("utf-8", errors="surrogateescape")
        if not line.endswith("\n"):  # what follows the last newline: a torn record
            if not (line.startswith(RECORD_START) or RECORD_START.startswith(line)):
                raise ResumeError("its last line is not an audiotag record: not resuming into this file")
            break
        line = line[:-1]
        name = _record_path(line)
        if name is None and line.strip():
            if not line.startswith(RECORD_START):
                raise ResumeError(f"line {number} is not an audiotag record: not resuming into this file")
            dropped = number  # the last line, cut short by a lost tail: dropped, its input tagged again
            continue
        if name:
            digests += name_digest(name)
        keep += len(raw)
    return keep, digests


def _table_records(file, fmt: str, rows_per_record: int) -> tuple:
    """(bytes to keep, digests of the paths recorded) of a CSV/TSV output.

    Rows are matched by writing them again: the kept part of the file is exactly what the writer would write for
    the rows it holds, whatever newlines or quotes the names contain.
    """
    delimiter = table_delimiter(fmt)
    header = table_header(fmt)
    first = file.readline().decode("utf-8", errors="surrogateescape")
    if first != header:
        if header.startswith(first):
            return 0, bytearray()  # empty, or a header cut short: start again
        raise ResumeError(f"not an audiotag {fmt} output (columns {','.join(TABLE_COLUMNS)}): "
                          "not resuming into this file")
    taken = []  # the lines the csv reader took for the row it gives next

    def lines():
        for raw in file:
            taken.append(raw)
            yield raw.decode("utf-8", errors="surrogateescape")

    position, digests = len(first.encode("utf-8", errors="surrogateescape")), bytearray()
    current, most_rows = None, 0  # current: [path, error, row count, bytes] of the record being read
    torn = None  # the number of a row that does not match: only the last row may be one
    reader = csv.reader(lines(), delimiter=delimiter)
    number = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:  # e.g. a quote left open by a torn end
            row = None
        number += 1
        raw = b"".join(taken)
        taken.clear()
        if torn is not None:
            raise ResumeError(f"row {torn} is not an audiotag {fmt} row: not resuming into this file")
        if row is None or len(row) != len(TABLE_COLUMNS) or \
                raw.decode("utf-8", errors="surrogateescape") != table_line(row, delimiter):
            torn = number
            if row is None:
                break
            continue
        if current and current[0] == row[0] and not row[-1] and not current[1]:
            current[2] += 1
            current[3] += len(raw)
        else:
            if current:
                digests += name_digest(current[0])
                if not current[1]:
                    most_rows = max(most_rows, current[2])
            current = [row[0], row[-1], 1, len(raw)]
        position += len(raw)
    if current:
        whole = rows_per_record is not None and current[2] >= (most_rows or rows_per_record())
        if not current[1] and not whole:  # a clip's rows, not all there (or it cannot be told)
            position -= current[3]
        else:
            digests += name_digest(current[0])
    return position, digests


_DECODER = json.JSONDecoder()


def _record_path(line: str):
    """The path of the clip record a JSON line holds, "" for a window record, None when it is not a record.
    A line as audiotag writes it has its path first: only that is decoded (a full parse of 10 million lines
    would dominate a resume)."""
    if line.startswith(RECORD_START) and line.endswith("}"):
        try:
            name, end = _DECODER.raw_decode(line, len(RECORD_START))
        except ValueError:
            name = None
        if isinstance(name, str) and line.startswith(", ", end):
            return "" if line.startswith(', "start": ', end) else name
    rec = _record(line)  # written some other way (key order, spacing): parse it whole
    if rec is None:
        return None
    return "" if "start" in rec else rec["path"]


def _record(line: str):
    """The record a JSON line holds, or None when it is not one."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("path"), str) else None


class Writer:
    """Writes formatted records to a file or stdout, one flushed write per record."""

    def __init__(self, fmt: str, path: Optional[str] = None, append: bool = False, stream=None):
        self.fmt = fmt
        # surrogateescape: a file name that is not UTF-8 goes out as its own bytes (text, CSV/TSV)
        self._file = open(path, "a" if append else "w", encoding="utf-8", newline="",
                          errors="surrogateescape") if path else stream
        self._owned = path is not None
        self._closed = False

    def begin(self) -> None:
        """Write the table header, unless the file already has one (resuming)."""
        if self.fmt in ("csv", "tsv") and not (self._owned and self._file.tell() > 0):
            self._write(table_header(self.fmt))

    def write(self, rec: dict, header: bool = True, before: Sequence[dict] = ()) -> None:
        """``rec`` and the records ``before`` it (an input's events) in one write: all or none reach the file."""
        self._write("".join(format_record(r, self.fmt, header) for r in [*before, rec]))

    def _write(self, text: str) -> None:
        if text:
            self._file.write(text)
            self._file.flush()

    def close(self, quietly: bool = False) -> None:
        """Flush, sync (a file) and close, once; ``quietly``: on the way out after an error, which it must not
        mask."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
            if self._owned:
                if os.path.isfile(self._file.name):  # /dev/null or a pipe cannot be synced
                    os.fsync(self._file.fileno())
                self._file.close()
        except (OSError, ValueError):
            if not quietly:
                raise
