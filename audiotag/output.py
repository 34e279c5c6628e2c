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
TABLE_COLUMNS = ("path", "duration", "sample_rate", "channels", "rank", "label", "mid", "index", "score", "categories",
                 "error")


def record(outcome) -> dict:
    """The JSON object for one input (scripts rely on this shape)."""
    if outcome.error is not None:
        return {"path": outcome.name, "error": outcome.error}
    return {
        "path": outcome.name,
        "duration": round(outcome.duration, 6),
        "sample_rate": outcome.sample_rate,
        "channels": outcome.channels,
        "categories": categories_json(outcome.prediction.categories),
        "tags": tags_json(outcome.prediction.tags),
    }


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
    base = [rec["path"], rec.get("duration", ""), rec.get("sample_rate", ""), rec.get("channels", "")]
    if "error" in rec:
        return _table_line(base + ["", "", "", "", "", "", rec["error"]], delimiter)
    categories = categories_cell(rec["categories"])
    if not rec["tags"]:  # nothing reached --threshold: one row still records the clip and its categories
        return _table_line(base + ["", "", "", "", "", categories, ""], delimiter)
    return "".join(_table_line(base + [rank, t["label"], t["mid"], t["index"], t["score"], categories, ""], delimiter)
                   for rank, t in enumerate(rec["tags"], 1))


def categories_cell(categories) -> str:
    """All seven categories in one cell, best first: "Music:0.598102;Human sounds:0.012..." (no category name
    holds ":" or ";")."""
    return ";".join(f"{c['name']}:{c['score']}" for c in categories)


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


def recorded_paths(path: str, fmt: str, rows_per_record: Optional[int] = 1) -> set:
    """Inputs already recorded in an output file, after cutting off a torn end (for --resume).

    Only the end of the file is ever cut: what follows the last newline (a record the writer did not finish), a
    last JSON line that does not parse (a disk that lost the tail), or a last CSV/TSV record with fewer rows than
    the file's other records have (``rows_per_record`` when there are none), so that input is tagged again. With
    ``rows_per_record`` None (``--threshold``: records have any number of rows) a last CSV/TSV clip record is
    always cut and tagged again, since whether it is whole cannot be told. A file that is not an audiotag output
    of this format raises ResumeError and is not touched; OSError passes.
    """
    if not os.path.exists(path):
        return set()
    if not os.path.isfile(path):
        raise ResumeError("not a regular file: --resume needs the output file of an earlier run")
    with open(path, "rb+") as file:
        data = file.read()
        text = data.decode("utf-8", errors="surrogateescape")  # names need not be UTF-8
        if fmt in ("jsonl", "json"):
            keep, paths = _jsonl_records(text)
        else:
            keep, paths = _table_records(text, fmt, rows_per_record)
        size = len(text[:keep].encode("utf-8", errors="surrogateescape"))
        if size < len(data):
            file.truncate(size)
    return paths


def _jsonl_records(text: str) -> tuple:
    """(characters to keep, paths recorded) of a JSONL output; only "\n" ends a record (a name may hold U+2028)."""
    *lines, torn = text.split("\n")
    keep, paths = 0, set()
    for number, line in enumerate(lines, 1):
        rec = _record(line)
        if rec is None and line.strip():
            if number == len(lines) and not torn and line.startswith(RECORD_START):
                break  # the last line, cut short by a lost tail: dropped, its input tagged again
            raise ResumeError(f"line {number} is not an audiotag record: not resuming into this file")
        if rec is not None and "start" not in rec:
            paths.add(rec["path"])
        keep += len(line) + 1
    if torn and not (torn.startswith(RECORD_START) or RECORD_START.startswith(torn)):
        raise ResumeError("its last line is not an audiotag record: not resuming into this file")
    return keep, paths


def _table_records(text: str, fmt: str, rows_per_record: int) -> tuple:
    """(characters to keep, paths recorded) of a CSV/TSV output.

    Rows are matched by writing them again: the kept part of the file is exactly what the writer would write for
    the rows it holds, whatever newlines or quotes the names contain.
    """
    delimiter = _delimiter(fmt)
    header = table_header(fmt)
    if not text.startswith(header):
        if header.startswith(text):
            return 0, set()  # empty, or a header cut short: start again
        raise ResumeError(f"not an audiotag {fmt} output (columns {','.join(TABLE_COLUMNS)}): "
                          "not resuming into this file")
    rows = list(csv.reader(io.StringIO(text[len(header):]), delimiter=delimiter))
    position, records = len(header), []  # records: [path, error, row count, characters]
    for index, row in enumerate(rows):
        line = _table_line(row, delimiter)
        if len(row) != len(TABLE_COLUMNS) or not text.startswith(line, position):
            if index < len(rows) - 1:  # more rows follow: not a torn end but a file written by someone else
                raise ResumeError(f"row {index + 2} is not an audiotag {fmt} row: not resuming into this file")
            break
        if records and records[-1][0] == row[0] and not row[-1]:
            records[-1][2] += 1
            records[-1][3] += len(line)
        else:
            records.append([row[0], row[-1], 1, len(line)])
        position += len(line)
    if records and not records[-1][1]:  # the last record is a clip's rows: are they all there?
        earlier = [count for _, error, count, _ in records[:-1] if not error]
        if rows_per_record is None or records[-1][2] < (max(earlier) if earlier else rows_per_record):
            position -= records.pop()[3]
    return position, {record[0] for record in records}


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
