"""Result records, their formats, and a crash-safe writer.

One record shape everywhere (CLI, batch output, distributed rows). A record is written with a single ``write``
of whole lines and flushed at once, so a killed run leaves at most one torn line at the end of the file, which
``--resume`` cuts off before it carries on.
"""

import csv
import io
import json
import os
from typing import Optional, Sequence

FORMATS = ("text", "jsonl", "json", "csv", "tsv")  # "json" is jsonl: one object per line
TABLE_COLUMNS = ("path", "duration", "sample_rate", "channels", "codec", "rank", "label", "mid", "index", "score", "categories",
                 "warning", "error")


def record(outcome) -> dict:
    """The JSON object for one input (scripts rely on this shape)."""
    if outcome.error is not None:
        return {"path": outcome.name, "error": outcome.error}
    rec = {
        "path": outcome.name,
        "duration": round(outcome.duration, 6),
        "sample_rate": outcome.sample_rate,
        "channels": outcome.channels,
    }
    if outcome.codec is not None:
        rec["codec"] = outcome.codec
    if outcome.truncated:  # only the first --max-duration seconds were tagged
        rec["truncated"] = True
        if outcome.audio_duration is not None:
            rec["audio_duration"] = round(outcome.audio_duration, 6)
    if outcome.warning is not None:
        rec["warning"] = outcome.warning
    rec["categories"] = categories_json(outcome.prediction.categories)
    rec["tags"] = tags_json(outcome.prediction.tags)
    return rec


def categories_json(categories) -> list:
    return [{"name": c.name, "score": round(c.score, 6)} for c in categories]


def event_records(outcome) -> list:
    """An input's events (``--events``), in time order: written just before its record, in the same write."""
    if outcome.error is not None:
        return []
    return [{"path": outcome.name, "label": e.label, "start": round(e.start, 3), "end": round(e.end, 3),
             "score": round(e.score, 6)} for e in outcome.prediction.events]


def tags_json(tags) -> list:
    return [{"label": t.label, "mid": t.mid, "index": t.index, "score": round(t.score, 6)} for t in tags]


def segment_record(name: str, segment) -> dict:
    """A window's result, written as soon as it is known (``--segments``); it has "start", a clip record not."""
    return {"path": name, "start": round(segment.start, 3), "end": round(segment.end, 3),
            "tags": tags_json(segment.tags)}


def format_record(rec: dict, fmt: str, header: bool = True) -> str:
    """Whole lines, newline-terminated."""
    if fmt in ("jsonl", "json"):
        text = json.dumps(rec, ensure_ascii=False)
        if not _encodable(text):  # a file name that is not UTF-8 (its bytes live on as lone surrogates)
            text = json.dumps(rec)  # \udcXX escapes: valid JSON, and json.loads gives back the same name
        return text + "\n"
    if fmt == "text":
        return _text(rec, header)
    return _table_rows(rec, _delimiter(fmt))


def table_header(fmt: str) -> str:
    return _table_line(TABLE_COLUMNS, _delimiter(fmt))


def _text(rec: dict, header: bool) -> str:
    if "label" in rec:
        return f"{rec['path']} [{rec['start']:.1f}-{rec['end']:.1f}s] {rec['label']} {rec['score']:.3f}\n"
    if "start" in rec:
        tags = ", ".join(f"{t['label']} {t['score']:.3f}" for t in rec["tags"])
        return f"{rec['path']} [{rec['start']:.1f}-{rec['end']:.1f}s] {tags}\n"
    if "error" in rec:
        return ""  # text is for people: the error is already on stderr
    lines = [f"== {rec['path']}"] if header else []
    lines += [f"{t['score']:.3f}  {t['label']}" for t in rec["tags"]]
    best = rec["categories"][0]
    lines.append(f"category: {best['name']} {best['score']:.3f}")
    return "\n".join(lines) + "\n"


def _table_rows(rec: dict, delimiter: str) -> str:
    if "start" in rec:
        return ""  # tables hold one kind of row: clips (not windows, not events)
    base = [rec["path"], rec.get("duration", ""), rec.get("sample_rate", ""), rec.get("channels", ""),
            rec.get("codec", "")]
    if "error" in rec:
        return _table_line(base + [""] * (len(TABLE_COLUMNS) - len(base) - 1) + [rec["error"]], delimiter)
    categories = categories_cell(rec["categories"])
    warning = _table_warning(rec)
    if not rec["tags"]:  # nothing reached --threshold: one row still records the clip and its categories
        return _table_line(base + ["", "", "", "", "", categories, warning, ""], delimiter)
    return "".join(_table_line(base + [rank, t["label"], t["mid"], t["index"], t["score"], categories, warning, ""],
                               delimiter) for rank, t in enumerate(rec["tags"], 1))


def categories_cell(categories) -> str:
    """All seven categories in one cell, best first: "Music:0.598102;Human sounds:0.012..." (no category name
    holds ":" or ";")."""
    return ";".join(f"{c['name']}:{c['score']}" for c in categories)


def _table_warning(rec: dict) -> str:
    """The warning column: the decoder's warning, and a cut at --max-duration (tables have no column for it)."""
    notes = [rec["warning"]] if "warning" in rec else []
    if rec.get("truncated"):
        whole = f" of {rec['audio_duration']:g} s" if "audio_duration" in rec else ""
        notes.append(f"truncated: tagged the first {rec['duration']:g} s{whole}")
    return "; ".join(notes)


def _table_line(values, delimiter: str) -> str:
    buffer = io.StringIO()
    # The csv module quotes a field holding "\n" but not one holding a lone "\r" (legal in a file name), which
    # readers then split into two rows: such a row has every field quoted.
    quoting = csv.QUOTE_ALL if any("\r" in str(value) for value in values) else csv.QUOTE_MINIMAL
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n", quoting=quoting).writerow(values)
    return buffer.getvalue()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class ResumeError(ValueError):
    """The -o file cannot be resumed into (it is not an audiotag output of this format); it was left untouched."""


RECORD_START = '{"path": '  # how every JSON line audiotag writes begins


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
    delimiter = _delimiter(fmt)
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
                raw.decode("utf-8", errors="surrogateescape") != _table_line(row, delimiter):
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


def _delimiter(fmt: str) -> str:
    return "," if fmt == "csv" else "\t"


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
