"""Label control on real clips: --only and --exclude (names, MIDs, ontology nodes meaning their subtree), --labels
FILE (the user's own labels, each the best of its members), and unknown names refused with the nearest real one.
What the labels mean is checked against AudioSet's own ontology.json, read here, not the model's copy of it."""

import csv
import io
import json

import pytest
from conftest import AUDIO, SHARED

MUSIC = AUDIO / "music.wav"  # labels.csv of the main clips: music (guitar), speech, typing
SPEECH = AUDIO / "extra" / "librosa-librispeech-198-209-0000.ogg"  # Speech;Female speech, woman speaking;Narration
BARKING = AUDIO / "extra" / "gcompris-mem-LRBark_1_LA_cut.ogg"  # Dog;Bark


@pytest.fixture(scope="module")
def ontology():
    """name -> the MIDs of its subtree, and mid -> name, from the AudioSet ontology."""
    nodes = {node["id"]: node for node in json.loads((SHARED / "upstream" / "ontology.json").read_text())}

    def subtree(mid):
        found = {mid}
        for child in nodes[mid]["child_ids"]:
            found |= subtree(child)
        return found

    return {node["name"]: subtree(mid) for mid, node in nodes.items()}


def records(cli, *args) -> list:
    result = cli(*args, "-f", "jsonl")
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def all_scores(cli, clip) -> dict:
    """A plain run's score for each of the 527 labels: mid -> (label, index, score)."""
    [record] = records(cli, clip, "-k", 527)
    assert len(record["tags"]) == 527
    return {tag["mid"]: (tag["label"], tag["index"], tag["score"]) for tag in record["tags"]}


def test_only_music_keeps_the_music_subtree_in_the_plain_order(cli, ontology):
    plain = records(cli, MUSIC, "-k", 527)[0]["tags"]
    under_music = [tag for tag in plain if tag["mid"] in ontology["Music"]]
    assert len(under_music) == 150  # of the 527 labels, Music's subtree holds 150
    for only in ("Music", "music", "/m/04rlf"):  # by name, in any case, or by MID
        [record] = records(cli, MUSIC, "--only", only, "-k", 527)
        assert record["tags"] == under_music, only
        assert record["categories"] == records(cli, MUSIC)[0]["categories"]  # categories as a plain run's
    [top] = records(cli, MUSIC, "--only", "Music")
    assert top["tags"] == under_music[:10] and top["tags"][0]["label"] == "Music"


def test_exclude_speech_drops_speech_and_its_subtree(cli, ontology):
    plain = records(cli, SPEECH, "-k", 527)[0]["tags"]
    assert plain[0]["label"] == "Speech"
    speech = ontology["Speech"]
    assert len(speech) > 1 and any(tag["mid"] in speech - {"/m/09x0r"} for tag in plain[:10])  # its kinds rank high
    [record] = records(cli, SPEECH, "--exclude", "Speech", "-k", 527)
    assert record["tags"] == [tag for tag in plain if tag["mid"] not in speech]
    # A node that is no label of the model ("Human voice" is abstract) means the labels under it.
    [record] = records(cli, SPEECH, "--exclude", "Human voice", "-k", 527)
    assert record["tags"] == [tag for tag in plain if tag["mid"] not in ontology["Human voice"]]
    assert len(record["tags"]) == 527 - 40
    # Names holding commas, several of them: the longest known name wins.
    [record] = records(cli, SPEECH, "--only", "Male speech, man speaking,Female speech, woman speaking", "-k", 527)
    assert [tag["label"] for tag in record["tags"]] == [tag["label"] for tag in plain if tag["label"] in (
        "Male speech, man speaking", "Female speech, woman speaking")]


def test_a_label_map_scores_each_user_label_as_its_best_member(cli, ontology, tmp_path):
    label_map = tmp_path / "labels.csv"
    label_map.write_text("user_label,audioset_label\n"
                         "dog_bark,Bark\ndog_bark,Yip\ndog_bark,/m/07rc7d9\n"  # Bow-wow by MID
                         "man,Male speech, man speaking\n"  # the name's comma unquoted
                         '"talk, any","Speech"\n'  # quoted, a node: Speech and its kinds
                         "vehicle,Vehicle\n"
                         "# a comment\n\n")
    members = {"dog_bark": {"/m/05tny_", "/m/07r_k2n", "/m/07rc7d9"}, "man": {"/m/05zppz"},
               "talk, any": ontology["Speech"], "vehicle": ontology["Vehicle"]}
    for clip in (BARKING, SPEECH):
        scores = all_scores(cli, clip)  # mid -> (label, index, score)
        [record] = records(cli, clip, "--labels", label_map)
        best = {user: max((scores[mid][2], -scores[mid][1], mid) for mid in mids if mid in scores)
                for user, mids in members.items()}
        expected = sorted(best, key=lambda user: -best[user][0])
        assert [tag["label"] for tag in record["tags"]] == expected
        for tag in record["tags"]:  # the score is the best member's, and the tag says which member that was
            score, _, mid = best[tag["label"]]
            assert (tag["score"], tag["mid"], tag["index"]) == (score, mid, scores[mid][1]), tag
        assert record["categories"] == records(cli, clip)[0]["categories"]
    assert records(cli, BARKING, "--labels", label_map)[0]["tags"][0]["label"] == "dog_bark"
    assert expected[0] == "talk, any"  # the last clip's: speech
    # top-k and the threshold apply to the user labels
    [record] = records(cli, SPEECH, "--labels", label_map, "-k", 2)
    assert [tag["label"] for tag in record["tags"]] == expected[:2]
    [record] = records(cli, SPEECH, "--labels", label_map, "-t", 0.3)
    assert [tag["label"] for tag in record["tags"]] == [user for user in expected if best[user][0] >= 0.3] != expected
    rows = list(csv.reader(io.StringIO(cli(SPEECH, "--labels", label_map, "-f", "csv").stdout.decode())))
    assert [(row[5], row[6]) for row in rows[1:]] == [(str(rank), user) for rank, user in enumerate(expected, 1)]


@pytest.mark.parametrize("args, line", [
    (("--only", "Musik"), "audiotag: --only: unknown label 'Musik'; did you mean 'Music'?"),
    (("--exclude", "Music,Speach"), "audiotag: --exclude: unknown label 'Speach'; did you mean 'Speech'?"),
    (("--only", "Dog", "--exclude", "Animal"), "audiotag: --exclude: 'Animal' leaves no label to give of 'Dog'"),
    (("--only", "Yawn"), "audiotag: --only: 'Yawn' is in the AudioSet ontology but the model has no label under it"),
])
def test_an_unknown_name_is_one_line_with_the_nearest_and_exit_2(cli, tmp_path, args, line):
    out = tmp_path / "out.jsonl"
    for inputs in ([MUSIC], [MUSIC, SPEECH]):  # tagged in this process, and by a watched worker
        result = cli(*inputs, *args, "-o", out)
        assert (result.returncode, result.stderr.decode().splitlines()) == (2, [line])
        assert not out.exists()  # refused before the results file is touched


def test_a_label_map_with_an_unknown_name_or_no_rows_is_refused(cli, tmp_path):
    label_map = tmp_path / "labels.csv"
    label_map.write_text("dog,Bark\ndog,Barkk\n")
    result = cli(MUSIC, "--labels", label_map)
    assert (result.returncode, result.stderr.decode().splitlines()) == (
        2, ["audiotag: --labels: unknown label 'Barkk' (for 'dog'); did you mean 'Bark'?"])
    result = cli(MUSIC, "--labels", label_map, "--only", "Music")
    assert result.returncode == 2 and "cannot be combined" in result.stderr.decode()
    label_map.write_text("user_label,audioset_label\n")
    result = cli(MUSIC, "--labels", label_map)
    assert (result.returncode, result.stderr.decode().splitlines()) == (
        2, [f"audiotag: argument --labels: {label_map}: no user_label,audioset_label rows (audiotag --help for usage)"])


def test_a_model_exported_before_the_ontology_knows_labels_but_no_nodes(tmp_path):
    """Model format 2 (no "ontology" metadata) still loads: labels by name or MID work, a node that is no label
    says how to get one that knows it."""
    import onnx

    from audiotag import TagOptions, Tagger
    from audiotag.assets import DEFAULT_MODEL, asset_path

    proto = onnx.load(str(asset_path(DEFAULT_MODEL)))
    for prop in list(proto.metadata_props):
        if prop.key == "ontology":
            proto.metadata_props.remove(prop)
        elif prop.key == "audiotag_model_format":
            prop.value = "2"
    old = tmp_path / "format2.onnx"
    onnx.save(proto, str(old))
    tagger = Tagger(old)
    tags = tagger.tag_file(MUSIC, TagOptions(only="Music,/m/0342h")).prediction.tags
    assert [tag.label for tag in tags] == ["Music", "Guitar"]  # a label means itself alone in such a model
    with pytest.raises(ValueError, match=r"unknown label 'Human voice'.*\(this model has no ontology nodes: export "
                                         r"it again with scripts/model/export_model.py\)"):
        tagger.tag_file(MUSIC, TagOptions(only="Human voice"))


def test_segments_and_events_hold_the_chosen_labels(cli, ontology, tmp_path):
    female = "Female speech, woman speaking"
    plain = records(cli, SPEECH, "--events", "--segments")
    plain_events = [r for r in plain if "label" in r]
    assert {female, "Speech", "Narration, monologue"} <= {e["label"] for e in plain_events}
    chosen = records(cli, SPEECH, "--events", "--segments", "--only", "Speech", "--exclude", female)
    assert [r for r in chosen if "label" in r] == [e for e in plain_events if e["label"] != female and
                                                    ontology[e["label"]] <= ontology["Speech"]]
    segments = [r for r in chosen if "start" in r and "tags" in r]
    kept = {name for name, mids in ontology.items() if mids <= ontology["Speech"]} - {female}
    assert segments and {t["label"] for s in segments for t in s["tags"]} <= kept
    label_map = tmp_path / "labels.csv"
    label_map.write_text(f"woman,{female}\n")  # one member: its events, renamed
    events = [r for r in records(cli, SPEECH, "--events", "--labels", label_map) if "label" in r]
    assert events == [{**e, "label": "woman"} for e in plain_events if e["label"] == female]


def test_a_service_with_many_label_choices_keeps_only_the_last_resolved():
    """serve's clients choose their own only=/exclude=: the resolved choices kept are bounded (infer.tagger.VIEWS)."""
    from audiotag import TagOptions, Tagger
    from audiotag.infer import tagger as tagger_module

    tagger = Tagger()
    labels = tagger.model.info.labels
    first = tagger.label_view(TagOptions(only=labels[0])).names
    assert first[0] == "Speech" and len(first) == 8  # Speech and its kinds
    for index in range(1, tagger_module.VIEWS + 36):
        assert labels[index] in tagger.label_view(TagOptions(only=labels[index])).names
    assert len(tagger._views) == tagger_module.VIEWS
    assert tagger.label_view(TagOptions(only=labels[0])).names == first  # resolved again when asked again
