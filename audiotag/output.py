"""Result records, their formats, and a crash-safe writer.

One record shape everywhere (CLI, batch output, distributed rows). A record is written with a single ``write``
of whole lines and flushed at once, so a killed run leaves at most one torn line at the end of the file, which
``--resume`` cuts off before it carries on.
"""

import csv
import io
import json
import os
from typing import Optional

FORMATS = ("text", "jsonl", "json", "csv", "tsv")  # "json" is jsonl: one object per line
TABLE_COLUMNS = ("path", "duration", "sample_rate", "channels", "rank", "label", "mid", "index", "score", "error")


def record(outcome) -> dict:
    """The JSON object for one input (scripts rely on this shape)."""
    if outcome.error is not None:
        return {"path": outcome.name, "error": outcome.error}
    return {
        "path": outcome.name,
        "duration": round(outcome.duration, 6),
        "sample_rate": outcome.sample_rate,
        "channels": outcome.channels,
        "tags": tags_json(outcome.prediction.tags),
    }


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
    return _table_rows(rec, "," if fmt == "csv" else "\t")


def table_header(fmt: str) -> str:
    return _table_line(TABLE_COLUMNS, "," if fmt == "csv" else "\t")


def _text(rec: dict, header: bool) -> str:
    if "start" in rec:
        tags = ", ".join(f"{t['label']} {t['score']:.3f}" for t in rec["tags"])
        return f"{rec['path']} [{rec['start']:.1f}-{rec['end']:.1f}s] {tags}\n"
    if "error" in rec:
        return ""  # text is for people: the error is already on stderr
    lines = [f"== {rec['path']}"] if header else []
    lines += [f"{t['score']:.3f}  {t['label']}" for t in rec["tags"]]
    return "\n".join(lines) + "\n"


def _table_rows(rec: dict, delimiter: str) -> str:
    if "start" in rec:
        return ""  # tables hold one kind of row: clips
    base = [rec["path"], rec.get("duration", ""), rec.get("sample_rate", ""), rec.get("channels", "")]
    if "error" in rec:
        return _table_line(base + ["", "", "", "", "", rec["error"]], delimiter)
    return "".join(_table_line(base + [rank, t["label"], t["mid"], t["index"], t["score"], ""], delimiter)
                   for rank, t in enumerate(rec["tags"], 1))


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


def recorded_paths(path: str, fmt: str, rows_per_record: int = 1) -> set:
    """Inputs already recorded in an output file, after cutting off a torn last record (for --resume).

    Only the end of the file is ever cut: the bytes after the last newline (a line the writer did not finish),
    a last JSON line that does not parse (a disk that lost the tail), or the rows of a last CSV/TSV record with
    fewer than ``rows_per_record`` rows (one per label; an error is one row), so that input is tagged again.
    A file that is not an audiotag output of this format raises ResumeError and is not touched; OSError passes.
    """
    if not os.path.exists(path):
        return set()
    if not os.path.isfile(path):
        raise ResumeError("not a regular file: --resume needs the output file of an earlier run")
    with open(path, "rb+") as file:
        data = file.read()
        complete = data.rfind(b"\n") + 1  # a killed writer can leave only the last line torn
        text = data[:complete].decode("utf-8", errors="surrogateescape")  # names need not be UTF-8
        if fmt in ("jsonl", "json"):
            lines = text.splitlines(keepends=True)
            if lines and lines[-1].strip() and _record(lines[-1]) is None:
                complete -= len(lines.pop().encode("utf-8", errors="surrogateescape"))
            records = {number: _record(line) for number, line in enumerate(lines, 1) if line.strip()}
            bad = next((number for number, rec in records.items() if rec is None), None)
            if bad is not None:
                raise ResumeError(f"line {bad} is not an audiotag record: not resuming into this file")
            paths = {rec["path"] for rec in records.values() if "start" not in rec}
        else:
            rows = list(_table_reader(text, fmt))
            if rows and rows[0] != list(TABLE_COLUMNS) or any(len(row) != len(TABLE_COLUMNS) for row in rows):
                raise ResumeError(f"not an audiotag {fmt} output (columns {','.join(TABLE_COLUMNS)}): "
                                  "not resuming into this file")
            complete -= _short_last_record(data[:complete], fmt, rows_per_record)
            paths = {row[0] for row in _table_reader(data[:complete].decode("utf-8", errors="surrogateescape"), fmt)
                     if row[0] != "path"}
        if complete < len(data):
            file.truncate(complete)
    return paths


def _record(line: str):
    """The record a JSON line holds, or None when it is not one."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("path"), str) else None


def _short_last_record(data: bytes, fmt: str, rows_per_record: int) -> int:
    """Bytes at the end of a table that belong to a last record with too few rows (0 when it is whole)."""
    lines = data.splitlines(keepends=True)
    rows = list(_table_reader(data.decode("utf-8", errors="surrogateescape"), fmt))
    if len(rows) != len(lines) or not rows or rows[-1][0] == "path":
        return 0  # quoted newlines inside a field (or only a header): leave the file as it is
    last = [i for i, row in enumerate(rows) if row[0] == rows[-1][0]]
    tail = list(range(len(rows) - len(last), len(rows)))
    if last != tail or rows[-1][-1] or len(tail) >= rows_per_record:
        return 0  # an error row, or a whole record
    return sum(len(lines[i]) for i in tail)


def _table_reader(text: str, fmt: str):
    return csv.reader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


class Writer:
    """Writes formatted records to a file or stdout, one flushed write per record."""

    def __init__(self, fmt: str, path: Optional[str] = None, append: bool = False, stream=None):
        self.fmt = fmt
        # surrogateescape: a file name that is not UTF-8 goes out as its own bytes (text, CSV/TSV)
        self._file = open(path, "a" if append else "w", encoding="utf-8", newline="",
                          errors="surrogateescape") if path else stream
        self._owned = path is not None
        if fmt in ("csv", "tsv") and not (append and self._file.tell() > 0):
            self._write(table_header(fmt))

    def write(self, rec: dict, header: bool = True) -> None:
        self._write(format_record(rec, self.fmt, header))

    def _write(self, text: str) -> None:
        if text:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        if self._owned:
            self._file.flush()
            if os.path.isfile(self._file.name):  # /dev/null or a pipe cannot be synced
                os.fsync(self._file.fileno())  # the results are the product: durable before exit 0
            self._file.close()
