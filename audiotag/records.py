"""Result records and their formats (jsonl, csv, tsv, text), for every front end.

One record shape everywhere (CLI, batch output, serve, distributed rows); ``batch.writer`` writes them, each with
a single ``write`` of whole lines, flushed at once, so a killed run leaves at most one torn line at the end of the
file, which ``--resume`` cuts off before it carries on.
"""

import csv
import io
import json

FORMATS = ("text", "jsonl", "json", "csv", "tsv")  # "json" is jsonl: one object per line
TABLE_COLUMNS = ("path", "duration", "sample_rate", "channels", "codec", "rank", "label", "mid", "index", "score",
                 "categories", "warning", "error")
# A run that may tag an archive's members has their fields as columns (empty for a file), and one with --hash (or
# --dedup) two more; all before the error, which stays last.
ARCHIVE_COLUMNS = ("archive", "member", "key", "url", "warc_record_id")  # a member's own fields (batch.archives)
HASH_COLUMNS = ("sha256", "duplicate_of")


def table_columns(hashed: bool = False, archived: bool = False) -> tuple:
    return TABLE_COLUMNS[:-1] + (ARCHIVE_COLUMNS if archived else ()) + (HASH_COLUMNS if hashed else ()) + ("error",)


def record(outcome) -> dict:
    """The JSON object for one input, as ``audiotag --format jsonl`` writes it (scripts rely on this shape).

    Args:
        outcome: an ``Outcome`` (``Tagger.tag_file``, a batch run).

    Returns:
        ``{"path", ["sha256"], [archive fields], "duration", "sample_rate", "channels", "codec",
        ["truncated", "audio_duration"], ["warning"], "categories", "tags"}``, or ``{"path", ["sha256"], [archive
        fields], "error"}``; "sha256" with --hash; the archive fields for an archive's member (``batch.archives``):
        "archive", "member" (and "key"), or a WARC record's "archive", "url" and "warc_record_id".
    """
    head = {"path": outcome.name}
    if outcome.sha256 is not None:
        head["sha256"] = outcome.sha256
    if outcome.fields:  # an archive's member: "archive", "member"/"key" or "url"/"warc_record_id", after the hash
        head.update(outcome.fields)
    if outcome.error is not None:
        return {**head, "error": outcome.error}
    rec = {
        **head,
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


def format_record(rec: dict, fmt: str, header: bool = True, hashed: bool = False, archived: bool = False) -> str:
    """Whole lines, newline-terminated; ``hashed``: a table with the sha256 and duplicate_of columns,
    ``archived``: with the archive columns (``table_columns``)."""
    if fmt in ("jsonl", "json"):
        text = json.dumps(rec, ensure_ascii=False)
        if not _encodable(text):  # a file name that is not UTF-8 (its bytes live on as lone surrogates)
            text = json.dumps(rec)  # \udcXX escapes: valid JSON, and json.loads gives back the same name
        return text + "\n"
    if fmt == "text":
        return _text(rec, header)
    return _table_rows(rec, table_delimiter(fmt), hashed, archived)


def table_header(fmt: str, hashed: bool = False, archived: bool = False) -> str:
    return table_line(table_columns(hashed, archived), table_delimiter(fmt))


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


def _table_rows(rec: dict, delimiter: str, hashed: bool = False, archived: bool = False) -> str:
    if "start" in rec:
        return ""  # tables hold one kind of row: clips (not windows, not events)
    base = [rec["path"], rec.get("duration", ""), rec.get("sample_rate", ""), rec.get("channels", ""),
            rec.get("codec", "")]
    extra = (ARCHIVE_COLUMNS if archived else ()) + (HASH_COLUMNS if hashed else ())
    last = [rec.get(column, "") for column in extra]  # then the error
    if "error" in rec:
        return table_line(base + [""] * (len(TABLE_COLUMNS) - len(base) - 1) + last + [rec["error"]], delimiter)
    categories = categories_cell(rec["categories"])
    warning = _table_warning(rec)
    if not rec["tags"]:  # nothing reached --threshold: one row still records the clip and its categories
        return table_line(base + ["", "", "", "", "", categories, warning] + last + [""], delimiter)
    return "".join(table_line(base + [rank, t["label"], t["mid"], t["index"], t["score"], categories, warning]
                              + last + [""], delimiter) for rank, t in enumerate(rec["tags"], 1))


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


def table_line(values, delimiter: str) -> str:
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


RECORD_START = '{"path": '  # how every JSON line audiotag writes begins


def table_delimiter(fmt: str) -> str:
    return "," if fmt == "csv" else "\t"
