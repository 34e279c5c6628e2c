"""Result records and their formats. One record shape everywhere: CLI, batch output and distributed rows."""

import json


def record(path: str, clip, prediction) -> dict:
    """The JSON object for one tagged input (scripts rely on this shape)."""
    return {
        "path": path,
        "duration": round(clip.duration, 6),
        "sample_rate": clip.sample_rate,
        "channels": clip.channels,
        "tags": [{"label": t.label, "mid": t.mid, "index": t.index, "score": round(t.score, 6)}
                 for t in prediction.tags],
    }


def error_record(path: str, message: str) -> dict:
    """The JSON object for an input that could not be tagged."""
    return {"path": path, "error": message}


def to_json(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False)


def to_text(rec: dict, header: bool) -> str:
    """Human-readable: "SCORE  LABEL" lines, best first, under a "== PATH" line when there are several inputs."""
    lines = [f"== {rec['path']}"] if header else []
    lines += [f"{tag['score']:.3f}  {tag['label']}" for tag in rec["tags"]]
    return "\n".join(lines)
