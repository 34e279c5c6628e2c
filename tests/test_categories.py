"""--threshold, the seven top-level categories, --aggregate, and the options every front end shares."""

import csv
import io
import json
import math

import numpy as np
import pytest

from audiotag import TagOptions, decode
from conftest import AUDIO, MAIN_CLIPS, SHARED, reference_arrays, reference_records

ONTOLOGY = SHARED / "upstream" / "ontology.json"
LABELS_CSV = SHARED / "upstream" / "class_labels_indices.csv"
ALL_CLIPS = sorted(AUDIO.glob("*.wav")) + sorted(p for p in (AUDIO / "extra").iterdir() if p.suffix != ".csv")


def brute_force_categories(scores: np.ndarray) -> dict:
    """Category name -> the max score over the labels of its subtree, walking ontology.json recursively (a
    second, independent reading of the ontology: the export walks it with a stack)."""
    with open(ONTOLOGY) as f:
        classes = {c["id"]: c for c in json.load(f)}
    with open(LABELS_CSV, newline="") as f:
        index_of = {row["mid"]: int(row["index"]) for row in csv.DictReader(f)}

    def subtree(mid):
        yield mid
        for child in classes[mid]["child_ids"]:
            yield from subtree(child)

    children = {child for c in classes.values() for child in c["child_ids"]}
    return {c["name"]: max(scores[index_of[m]] for m in subtree(c["id"]) if m in index_of)
            for c in classes.values() if c["id"] not in children}


def sigmoid(logits):
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


@pytest.mark.parametrize("path", ALL_CLIPS, ids=lambda p: p.name)
def test_categories_are_the_max_over_each_ontology_subtree(tagger, path):
    prediction = tagger.predict(decode.load(path))
    expected = brute_force_categories(sigmoid(prediction.logits))
    assert len(prediction.categories) == len(expected) == 7
    assert {c.name: c.score for c in prediction.categories} == pytest.approx(expected, abs=1e-9)
    scores = [c.score for c in prediction.categories]
    assert scores == sorted(scores, reverse=True)


def test_categories_in_the_cli_match_upstream_scores(cli):
    records = [r for r in reference_records() if r["file"][:-4] in MAIN_CLIPS]
    result = cli("--format", "jsonl", *[AUDIO / r["file"] for r in records])
    assert result.returncode == 0, result.stderr
    for line, record in zip(result.stdout.decode().splitlines(), records):
        out = json.loads(line)
        expected = brute_force_categories(reference_arrays(record)["probs"])  # upstream's own scores
        assert [c["name"] for c in out["categories"]] == sorted(expected, key=lambda n: -expected[n])
        assert {c["name"]: c["score"] for c in out["categories"]} == pytest.approx(expected, abs=1e-4)
    best = {json.loads(line)["path"].rsplit("/", 1)[1]: json.loads(line)["categories"][0]["name"]
            for line in result.stdout.decode().splitlines()}
    assert best == {"music.wav": "Music", "speech.wav": "Human sounds", "typing.wav": "Sounds of things"}


def test_threshold_keeps_exactly_the_labels_at_or_above_it(cli, tagger):
    path = AUDIO / "speech.wav"
    scores = sigmoid(tagger.predict(decode.load(path)).logits)
    result = cli("-k", 527, "--threshold", 0.2, "--format", "jsonl", path)
    assert result.returncode == 0, result.stderr
    tags = json.loads(result.stdout)["tags"]
    assert sorted(t["index"] for t in tags) == sorted(np.flatnonzero(scores >= 0.2).tolist())
    assert len(tags) >= 2 and all(t["score"] >= 0.2 for t in tags)
    assert [t["score"] for t in tags] == sorted((t["score"] for t in tags), reverse=True)
    # Within --top-k: the threshold never adds labels beyond k.
    two = json.loads(cli("-k", 2, "-t", 0.2, "--format", "jsonl", path).stdout)["tags"]
    assert two == tags[:2]
    # Below every score it changes nothing.
    assert json.loads(cli("-t", 0.0001, "--format", "jsonl", path).stdout)["tags"] == \
        json.loads(cli("--format", "jsonl", path).stdout)["tags"]


def test_a_threshold_no_label_reaches_leaves_the_categories(cli):
    path = AUDIO / "music.wav"
    out = json.loads(cli("-t", 1, "--format", "jsonl", path).stdout)
    assert out["tags"] == [] and len(out["categories"]) == 7
    rows = list(csv.DictReader(io.StringIO(cli("-t", 1, "--format", "csv", path).stdout.decode())))
    assert len(rows) == 1 and rows[0]["label"] == "" and rows[0]["categories"].startswith("Music:0.598")
    text = cli("-t", 1, "--format", "text", path).stdout.decode()
    assert text == "category: Music 0.598\n"


def test_csv_carries_all_seven_categories_in_every_row(cli):
    rows = list(csv.DictReader(io.StringIO(cli("--format", "csv", "-k", 3, AUDIO / "typing.wav").stdout.decode())))
    typing = next(r for r in reference_records() if r["file"] == "typing.wav")
    assert [r["label"] for r in rows] == [t["display_name"] for t in typing["top10"][:3]]
    cells = {r["categories"] for r in rows}
    assert len(cells) == 1
    parsed = [entry.rsplit(":", 1) for entry in cells.pop().split(";")]
    assert [name for name, _ in parsed][0] == "Sounds of things" and len(parsed) == 7
    assert float(parsed[0][1]) == float(rows[0]["score"])  # its best label, Computer keyboard, is a thing
    tsv = cli("--format", "tsv", "-k", 3, AUDIO / "typing.wav").stdout.decode().splitlines()
    assert tsv[0].split("\t")[-3:] == ["categories", "warning", "error"]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "x"])
def test_bad_threshold_is_a_usage_error(cli, value):
    result = cli("--threshold", value, AUDIO / "music.wav")
    assert result.returncode == 2 and "--threshold" in result.stderr.decode()
    assert len(result.stderr.decode().splitlines()) == 1 and result.stdout == b""


def test_resume_with_a_threshold_tags_the_last_table_record_again(cli, tmp_path):
    """With -t a record has any number of rows, so a torn last record cannot be told from a whole one: it is
    always tagged again, and the file ends up exactly as one uninterrupted run writes it."""
    out = tmp_path / "tags.csv"
    inputs = [AUDIO / "typing.wav", AUDIO / "speech.wav"]  # 2 and 3 labels score 0.1 or more
    assert cli("-t", 0.1, "-o", out, "--format", "csv", *inputs).returncode == 0
    whole = out.read_bytes()
    rows = whole.splitlines(keepends=True)
    assert len(rows) == 1 + 2 + 3
    out.write_bytes(b"".join(rows[:-1]))  # speech's last row lost: 2 rows left, as many as typing's record has
    result = cli("-t", 0.1, "-o", out, "--format", "csv", "--resume", *inputs)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == whole


def test_aggregate_mean_and_max_of_the_window_scores(tagger):
    clip = decode.load(AUDIO / "extra" / "librosa-pibble.ogg")  # 47 s: 9 windows
    windows = tagger.predict(clip, TagOptions(top_k=527, segments=True)).segments
    scores = np.zeros((len(windows), 527))
    for row, segment in enumerate(windows):
        for tag in segment.tags:
            scores[row, tag.index] = tag.score
    for aggregate, expected in (("max", scores.max(axis=0)), ("mean", scores.mean(axis=0))):
        prediction = tagger.predict(clip, TagOptions(top_k=527, aggregate=aggregate))
        assert {t.index: t.score for t in prediction.tags} == pytest.approx(dict(enumerate(expected)), abs=1e-6)
        best = max(prediction.categories, key=lambda c: c.score)
        assert best.score == pytest.approx(expected.max(), abs=1e-6)


def test_aggregate_on_the_command_line(cli):
    path = AUDIO / "extra" / "librosa-pibble.ogg"
    tags = {a: json.loads(cli("--aggregate", a, "-k", 527, path).stdout)["tags"] for a in ("max", "mean")}
    assert json.loads(cli("-k", 527, path).stdout)["tags"] == tags["max"]  # the default
    mean, best = {t["label"]: t["score"] for t in tags["mean"]}, {t["label"]: t["score"] for t in tags["max"]}
    assert all(mean[label] <= best[label] + 1e-6 for label in best) and mean != best
    short = AUDIO / "music.wav"  # one window: both are that window's scores
    assert cli("--aggregate", "mean", short).stdout == cli(short).stdout
    result = cli("--aggregate", "median", path)
    assert result.returncode == 2 and "--aggregate" in result.stderr.decode()


def test_options_are_checked_when_made_and_read_from_strings():
    options = TagOptions.from_strings({"top_k": "5", "threshold": "0.25", "aggregate": "mean", "events": "1"})
    assert options == TagOptions(top_k=5, threshold=0.25, aggregate="mean", events=True)
    assert TagOptions.from_strings({}) == TagOptions()
    for values, message in (({"threshold": "2"}, "threshold must be between 0 and 1"),
                            ({"threshold": "nan"}, "threshold"),
                            ({"top_k": "0"}, "top_k must be"),
                            ({"top_k": "2.5"}, "top_k: expected int"),
                            ({"aggregate": "median"}, "aggregate must be one of max, mean"),
                            ({"events": "maybe"}, "events: expected bool"),
                            ({"hop": "20"}, "hop must be"),
                            ({"colour": "red"}, "unknown option 'colour'")):
        with pytest.raises(ValueError, match=message):
            TagOptions.from_strings(values)
    with pytest.raises(ValueError):
        TagOptions(threshold=math.inf)


def test_a_model_exported_before_categories_is_one_line_and_exit_3(cli, tmp_path):
    import onnx

    from audiotag.assets import DEFAULT_MODEL, asset_path

    proto = onnx.load(str(asset_path(DEFAULT_MODEL)))
    for prop in [p for p in proto.metadata_props if p.key in ("categories", "ontology_sha256")]:
        proto.metadata_props.remove(prop)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    result = cli("--model", old, AUDIO / "music.wav")
    stderr = result.stderr.decode()
    assert result.returncode == 3 and result.stdout == b"" and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"audiotag: {old} has no category metadata") and "scripts/model/export_model.py" in stderr
