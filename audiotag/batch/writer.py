"""The results file of a batch run: written record by record, durably (``Writer``), and read back by
``--resume`` (``recorded_paths``) to skip the inputs already recorded.
"""

import csv
import io
import json
import os
from typing import Optional, Sequence

from ..records import (ARCHIVE_COLUMNS, RECORD_START, format_record, table_columns, table_delimiter, table_header,
                       table_line)


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


def recorded_paths(path: str, fmt: str, rows_per_record=lambda: 1, hashed: bool = False,
                   contents=None, archived: bool = False) -> RecordedPaths:
    """Inputs already recorded in an output file, after cutting off a torn end (for --resume).

    Only the end of the file is ever cut: what follows the last newline (a record the writer did not finish), a
    last JSON line that does not parse (a disk that lost the tail), or a last CSV/TSV record with fewer rows than
    the file's other records have (``rows_per_record()`` when there are none), so that input is tagged again. With
    ``rows_per_record`` None (``--threshold``: records have any number of rows) a last CSV/TSV clip record is
    always cut and tagged again, since whether it is whole cannot be told. A file that is not an audiotag output
    of this format raises ResumeError and is not touched; OSError passes.
    The file is read once, line by line: memory does not grow with its size beyond 16 bytes per record.
    ``hashed``: a table has the sha256 and duplicate_of columns (--hash), ``archived`` the archive columns.
    ``contents`` (a ``content.DigestTable``, --dedup) is given where each record with a sha256 lies.
    """
    if not os.path.exists(path):
        return RecordedPaths()
    if not os.path.isfile(path):
        raise ResumeError("not a regular file: --resume needs the output file of an earlier run")
    with open(path, "rb+") as file:
        if fmt in ("jsonl", "json"):
            keep, digests = _jsonl_records(file, contents)
        else:
            keep, digests = _table_records(file, fmt, rows_per_record, hashed, contents, archived)
        if keep < file.seek(0, os.SEEK_END):
            file.truncate(keep)
    return RecordedPaths(bytes(digests))


def _jsonl_records(file, contents=None) -> tuple:
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
            sha = _record_sha256(line) if contents is not None else None
            if sha:
                contents.add(sha, keep, len(raw))
        keep += len(raw)
    return keep, digests


SHA256_KEY = ', "sha256": "'  # how a record with a hash goes on after its path


def _record_sha256(line: str):
    """The sha256 a clip record's JSON line holds (None without one); only its start is decoded."""
    try:
        _, end = _DECODER.raw_decode(line, len(RECORD_START))
    except ValueError:
        end = None
    if end is not None and line.startswith(SHA256_KEY, end):
        return line[end + len(SHA256_KEY):end + len(SHA256_KEY) + 64]
    rec = _record(line)
    return rec.get("sha256") if rec is not None else None


def _table_records(file, fmt: str, rows_per_record: int, hashed: bool = False, contents=None,
                   archived: bool = False) -> tuple:
    """(bytes to keep, digests of the paths recorded) of a CSV/TSV output.

    Rows are matched by writing them again: the kept part of the file is exactly what the writer would write for
    the rows it holds, whatever newlines or quotes the names contain.
    """
    delimiter = table_delimiter(fmt)
    header = table_header(fmt, hashed, archived)
    columns = table_columns(hashed, archived)
    first = file.readline().decode("utf-8", errors="surrogateescape")
    if first != header:
        if header.startswith(first):
            return 0, bytearray()  # empty, or a header cut short: start again
        if first == table_header(fmt, not hashed, archived):
            raise ResumeError(f"written {'without' if hashed else 'with'} --hash (or --dedup): resume it "
                              f"{'without' if hashed else 'with'} them")
        if first in (table_header(fmt, hashed, not archived), table_header(fmt, not hashed, not archived)):
            # an older audiotag's table (no archive columns), or the same inputs now named otherwise
            raise ResumeError(f"its columns are not this run's ({'no' if archived else 'with'} archive columns: "
                              "this run " + ("may" if archived else "cannot") + " tag an archive's members): "
                              "write to a new file, or resume with the inputs and options it was written with")
        raise ResumeError(f"not an audiotag {fmt} output (columns {','.join(columns)}): "
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
        if row is None or len(row) != len(columns) or \
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
                _recorded(current, digests, contents)
                if not current[1]:
                    most_rows = max(most_rows, current[2])
            # path, error, rows, bytes, where it starts, its sha256 (hashed tables: the third column from the end)
            current = [row[0], row[-1], 1, len(raw), position, row[-3] if hashed else ""]
        position += len(raw)
    if current:
        whole = rows_per_record is not None and current[2] >= (most_rows or rows_per_record())
        if not current[1] and not whole:  # a clip's rows, not all there (or it cannot be told)
            position -= current[3]
        else:
            _recorded(current, digests, contents)
    return position, digests


def _recorded(current: list, digests: bytearray, contents) -> None:
    digests += name_digest(current[0])
    if contents is not None and current[5]:
        contents.add(current[5], current[4], current[3])


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

    def __init__(self, fmt: str, path: Optional[str] = None, append: bool = False, stream=None,
                 hashed: bool = False, archived: bool = False):
        self.fmt = fmt
        self.hashed = hashed  # tables: with the sha256 and duplicate_of columns
        self.archived = archived  # tables: with the archive columns
        # surrogateescape: a file name that is not UTF-8 goes out as its own bytes (text, CSV/TSV)
        self._file = open(path, "a" if append else "w", encoding="utf-8", newline="",
                          errors="surrogateescape") if path else stream
        self._owned = path is not None
        self._closed = False
        self.position = os.path.getsize(path) if path else 0  # bytes in the file: where the next record goes

    def begin(self) -> None:
        """Write the table header, unless the file already has one (resuming)."""
        if self.fmt in ("csv", "tsv") and not (self._owned and self.position > 0):
            self._write(table_header(self.fmt, self.hashed, self.archived))

    def write(self, rec: dict, header: bool = True, before: Sequence[dict] = ()) -> tuple:
        """``rec`` and the records ``before`` it (an input's events) in one write: all or none reach the file.
        Returns where ``rec``'s own lines went: (offset, length) in bytes."""
        lead = "".join(format_record(r, self.fmt, header, self.hashed, self.archived) for r in before)
        text = format_record(rec, self.fmt, header, self.hashed, self.archived)
        start = self.position + _size(lead)
        self._write(lead + text)
        return start, _size(text)

    def write_text(self, text: str) -> tuple:
        """Lines already formatted (a duplicate's record); (offset, length) as ``write``."""
        start = self.position
        self._write(text)
        return start, _size(text)

    def _write(self, text: str) -> None:
        if text:
            self._file.write(text)
            self._file.flush()
            self.position += _size(text)

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


def _size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogateescape"))


class RecordReader:
    """Reads records back from the results file being written, by (offset, length): a duplicate's record is its
    first copy's (``--dedup``), which is never held in memory."""

    def __init__(self, path: str, fmt: str, hashed: bool, archived: bool = False):
        self._fd = os.open(path, os.O_RDONLY)
        self.fmt, self.hashed = fmt, hashed
        self.columns = table_columns(True, archived)  # of a table (--dedup: always hashed)

    def read(self, offset: int, length: int) -> Optional[dict]:
        """{"path", "sha256", "text"} of the record there (None where it cannot be read back)."""
        try:
            text = os.pread(self._fd, length, offset).decode("utf-8", errors="surrogateescape")
        except OSError:
            return None
        if self.fmt in ("jsonl", "json"):
            rec = _record(text.rstrip("\n"))
            return None if rec is None else {"path": rec["path"], "sha256": rec.get("sha256"), "text": text}
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=table_delimiter(self.fmt)))
        if not rows or len(rows[0]) != len(self.columns):
            return None
        return {"path": rows[0][0], "sha256": rows[0][-3], "text": text}

    def duplicate(self, first: dict, name: str, fields: Optional[dict] = None) -> str:
        """The lines of a duplicate's record: the first copy's, with its own path (and archive ``fields``) and
        "duplicate_of"."""
        if self.fmt in ("jsonl", "json"):
            rec = json.loads(first["text"])
            head = {"path": name, "sha256": rec.get("sha256"), "duplicate_of": rec["path"], **(fields or {})}
            rest = {k: v for k, v in rec.items() if k not in head and k not in ARCHIVE_COLUMNS}
            return format_record({**head, **rest}, self.fmt)
        delimiter = table_delimiter(self.fmt)
        rows = list(csv.reader(io.StringIO(first["text"], newline=""), delimiter=delimiter))
        own = {"path": name, "duplicate_of": first["path"],
               **{column: (fields or {}).get(column, "") for column in ARCHIVE_COLUMNS if column in self.columns}}
        return "".join(table_line([own.get(column, cell) for column, cell in zip(self.columns, row)], delimiter)
                       for row in rows)

    def close(self) -> None:
        os.close(self._fd)
