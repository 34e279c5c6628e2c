"""The Python API gives what the command line gives: ``Tagger.tag_file`` on a path, bytes or a file object,
``audiotag.load``, ``audiotag.tag_many`` over a directory; bad input is one typed error with the CLI's message.
And the tag options, declared once in ``audiotag.options``, reach every front end."""

import dataclasses
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import AUDIO, REPO
from test_formats import KINDS, fixtures  # noqa: F401  (the format kinds, made once for this module)

import audiotag
from audiotag import options as options_module


def cli_records(*args) -> list:
    """What `python -m audiotag --format jsonl ARGS` prints, one dict per line."""
    result = subprocess.run([sys.executable, "-m", "audiotag", "--format", "jsonl", *map(str, args)],
                            capture_output=True, cwd=REPO)
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def assert_same_record(got: dict, expected: dict) -> None:
    """Equal but for scores, which may differ by 1e-6 (float sums in another batch)."""
    assert {k: v for k, v in got.items() if k not in ("tags", "categories")} == \
        {k: v for k, v in expected.items() if k not in ("tags", "categories")}
    for key, name in (("tags", "label"), ("categories", "name")):
        assert [item[name] for item in got[key]] == [item[name] for item in expected[key]]
        assert [item["score"] for item in got[key]] == pytest.approx([item["score"] for item in expected[key]],
                                                                      abs=1e-6)


def test_tag_file_equals_the_cli_for_every_format_kind(fixtures, tagger):  # noqa: F811
    expected = {record["path"]: record for record in cli_records(*(fixtures / name for name in KINDS))}
    for name in KINDS:
        path = fixtures / name
        for source in (path, str(path), path.read_bytes()):
            record = audiotag.record(tagger.tag_file(source))
            record["path"] = str(path)  # bytes have no name: "-"
            assert_same_record(record, expected[str(path)])
        with open(path, "rb") as file:  # a file object is read as stdin is
            record = audiotag.record(tagger.tag_file(file))
        assert record["path"] == str(path)
        assert_same_record(record, expected[str(path)])


def test_tag_file_reads_a_pipe(tagger):
    path = AUDIO / "music.wav"
    expected = audiotag.record(tagger.tag_file(path))
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as cat:
        record = audiotag.record(tagger.tag_file(cat.stdout))
    assert record["path"] == "-"
    assert_same_record({**record, "path": expected["path"]}, expected)


def test_tag_file_takes_the_limits(tagger):
    outcome = tagger.tag_file(AUDIO / "music.wav", max_duration=4)
    assert outcome.truncated and outcome.duration == pytest.approx(4.0)


def test_load_gives_the_same_samples_from_a_path_bytes_and_a_file(fixtures):  # noqa: F811
    path = fixtures / "aac.m4a"
    clip = audiotag.load(path)
    assert clip.codec == "aac" and clip.samples.dtype == np.float32
    assert np.array_equal(audiotag.load(path.read_bytes()).samples, clip.samples)
    with open(path, "rb") as file:
        assert np.array_equal(audiotag.load(file).samples, clip.samples)


@pytest.mark.parametrize("content, name", [(None, "missing.wav"), (b"", "empty.wav"),
                                           (b"<html>not found</html>" * 40, "page.mp3")])
def test_bad_input_is_one_typed_error_with_the_clis_message(tagger, tmp_path, content, name):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "audiotag", str(path)], capture_output=True, cwd=REPO)
    line = result.stderr.decode().strip()
    assert result.returncode == 1 and line.startswith(f"audiotag: {path}: ")
    with pytest.raises(audiotag.AudioError) as raised:
        tagger.tag_file(path)
    assert str(raised.value) == line.split(": ", 2)[2]
    if content:  # bytes too
        with pytest.raises(audiotag.AudioError, match="cannot decode|not an audio"):
            tagger.tag_file(content)


def test_tag_file_refuses_what_is_not_a_source(tagger):
    with pytest.raises(TypeError, match="expected a path, bytes or a binary file object"):
        tagger.tag_file(42)


@pytest.mark.parametrize("isolate", [True, False])
def test_tag_many_over_a_directory_equals_audiotag_dir(tmp_path, isolate):
    for name in ("music.wav", "speech.wav", "typing.wav"):
        (tmp_path / name).write_bytes((AUDIO / name).read_bytes())
    (tmp_path / "broken.mp3").write_bytes(b"\xff\xfb" + bytes(100))
    expected = cli_records(tmp_path)
    got = list(audiotag.tag_many([tmp_path], jobs=2, isolate=isolate))
    assert [r["path"] for r in got] == [r["path"] for r in expected] == sorted(r["path"] for r in expected)
    for record, want in zip(got, expected):
        if "error" in want:
            assert record == want
        else:
            assert_same_record(record, want)


def test_tag_many_opens_archives_in_a_walk_when_asked(tmp_path):
    shard = tmp_path / "corpus" / "shard.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for number, name in enumerate(("music.wav", "speech.wav")):
            tar.add(AUDIO / name, arcname=f"{number:06d}.wav")
    expected = cli_records(shard.parent, "--open-archives")
    assert [r["member"] for r in expected] == ["000000.wav", "000001.wav"]
    got = list(audiotag.tag_many([shard.parent], jobs=2, isolate=False, open_archives=True))
    assert [(r["path"], r["archive"], r["key"]) for r in got] == [(r["path"], r["archive"], r["key"]) for r in expected]
    for record, want in zip(got, expected):
        assert_same_record(record, want)
    [alone] = audiotag.tag_many([shard.parent], isolate=False)  # without it, a .tar is not audio by its name
    assert alone == {"path": str(shard.parent), "error": "no audio files in this directory"}


def test_tag_many_gives_events_with_their_clip(tmp_path):
    events = [r for r in cli_records("--events", AUDIO / "music.wav") if "label" in r]
    [record] = audiotag.tag_many(AUDIO / "music.wav", audiotag.TagOptions(events=True), isolate=False)
    assert [e["label"] for e in record["events"]] == [e["label"] for e in events] and events


def test_the_public_names():
    assert audiotag.__version__ and sorted(audiotag.__all__) == sorted(set(audiotag.__all__))
    for name in audiotag.__all__:
        value = getattr(audiotag, name)
        if callable(value) and name not in ("AudioError",):
            assert value.__doc__, name


def test_a_new_tag_option_reaches_the_cli_serve_and_ray(monkeypatch):
    """Declared once, in options.TagOptions: a new field is a flag of all three front ends and a query parameter
    of serve, with no other change."""
    from audiotag import cli, distributed, serve
    from audiotag.serve.handler import TagRequest

    extended = dataclasses.make_dataclass(
        "TagOptions", [("loudest", bool, options_module._option(False, "--loudest", help="only the loudest"))],
        bases=(options_module.TagOptions,), frozen=True)
    monkeypatch.setattr(options_module, "TagOptions", extended)

    args = cli.build_parser().parse_args(["clip.wav", "--loudest"])
    assert options_module.tag_options(args).loudest is True
    args = distributed.build_parser().parse_args(["clip.wav", "-o", "out", "--loudest"])
    assert options_module.tag_options(args).loudest is True
    args = serve.build_parser().parse_args([])
    defaults = options_module.tag_options(args)
    assert defaults.loudest is False
    assert TagRequest({"loudest": "1"}, defaults).options.loudest is True
    assert "--loudest" in serve.build_parser().format_help()


def test_every_tag_option_is_a_flag_of_every_front_end():
    from audiotag import cli, distributed, serve

    helps = {"cli": cli.build_parser().format_help(), "serve": serve.build_parser().format_help(),
             "ray": distributed.build_parser().format_help()}
    for option in dataclasses.fields(audiotag.TagOptions):
        for front_end, text in helps.items():
            if (front_end, option.name) != ("ray", "segments"):  # Parquet rows are per file
                assert option.metadata["flags"][-1] in text, (front_end, option.name)


def test_serve_takes_tag_option_defaults_for_its_requests():
    from audiotag import serve
    from audiotag.serve.handler import TagRequest

    defaults = options_module.tag_options(serve.build_parser().parse_args(["--top-k", "3", "--window", "4"]))
    request = TagRequest({"threshold": "0.1"}, defaults)
    assert (request.options.top_k, request.options.window, request.options.hop, request.options.threshold) == \
        (3, 4.0, 2.0, 0.1)


def test_one_set_of_exit_codes():
    """Exit codes are numbers in errors.py only; every other module takes them from there."""
    import ast

    package = REPO / "audiotag"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and path.name != "errors.py":
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                assert not [n for n in names if n.startswith("EXIT_")], (path, names)
    from audiotag import distributed, errors, serve

    assert (serve.EXIT_USAGE, distributed.EXIT_MODEL) == (errors.EXIT_USAGE, errors.EXIT_MODEL)


def test_load_from_a_byte_stream():
    data = (AUDIO / "speech.wav").read_bytes()
    assert np.array_equal(audiotag.load(io.BytesIO(data)).samples, audiotag.load(data).samples)


def test_a_damaged_mp4_gives_one_answer_as_a_file_and_on_stdin(tagger, tmp_path):
    """The same bytes, as a path and as a stream (stdin, a pipe, a file object), give the same record or the same
    error. An MP4 on stdin was decoded by FFmpeg alone, so a damaged one got "not an audio format ... give --raw"
    on stdin where the file said "Invalid data found when processing input"."""
    import random
    import subprocess

    clean = tmp_path / "clean.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", AUDIO / "music.wav", "-c:a", "aac", "-b:a", "96k", clean],
                   check=True)  # Debian's ffmpeg (scripts/build/install_test_tools.sh)
    data, rng, answers = clean.read_bytes(), random.Random(1), set()
    for _ in range(40):  # damage in the first 4 kB, where MP4 keeps its boxes' headers
        damaged = bytearray(data)
        start = rng.randrange(0, 4096)
        for offset in range(rng.choice([8, 64, 256])):
            damaged[start + offset] = rng.randrange(256)
        path = tmp_path / "damaged.m4a"
        path.write_bytes(damaged)
        results = []
        for source in (path, io.BytesIO(bytes(damaged))):
            try:
                record = audiotag.record(tagger.tag_file(source))
                results.append(("tagged", record["duration"], record["tags"][0]["label"], record.get("warning")))
            except audiotag.AudioError as error:
                results.append(("error", str(error)))
        assert results[0] == results[1], (start, results)
        answers.add(results[0][0])
    assert answers == {"tagged", "error"}  # the sweep meets both kinds


def test_label_control_in_the_api(tagger, tmp_path):
    """TagOptions' only, exclude and labels: the CLI's --only, --exclude and --labels, as text, sequences or a
    mapping; an unknown name is a ValueError with the nearest label, from tag_file and from tag_many before any
    input is tagged."""
    clip = AUDIO / "music.wav"
    assert audiotag.TagOptions(only=["Male speech, man speaking", "Music"]).only == "Male speech, man speaking,Music"
    assert options_module.TagOptions.from_strings({"exclude": "Speech"}).exclude == "Speech"
    label_map = tmp_path / "labels.csv"
    label_map.write_text("dog,Bark\ndog,Yip\nmusic,Music\n")
    from_file = audiotag.TagOptions(labels=label_map)
    assert from_file.labels == (("dog", "Bark"), ("dog", "Yip"), ("music", "Music"))
    assert audiotag.TagOptions(labels={"dog": ["Bark", "Yip"], "music": "Music"}) == from_file
    expected = cli_records(clip, "--labels", label_map)[0]
    assert_same_record(audiotag.record(tagger.tag_file(clip, from_file)), expected)
    assert [t["label"] for t in expected["tags"]] == ["music", "dog"]
    expected = cli_records(clip, "--only", "Music", "--exclude", "Guitar", "-k", 30)[0]
    got = audiotag.record(tagger.tag_file(clip, audiotag.TagOptions(only="Music", exclude=["Guitar"], top_k=30)))
    assert_same_record(got, expected)
    assert got["tags"][0]["label"] == "Music" and not {"Guitar", "Bass guitar"} & {t["label"] for t in got["tags"]}
    with pytest.raises(ValueError, match="only: unknown label 'Musik'; did you mean 'Music'"):
        tagger.tag_file(clip, audiotag.TagOptions(only="Musik"))
    for isolate in (True, False):
        with pytest.raises(ValueError, match="exclude: unknown label 'Speach'; did you mean 'Speech'"):
            next(audiotag.tag_many([clip], audiotag.TagOptions(exclude="Speach"), isolate=isolate))
    with pytest.raises(ValueError, match="cannot be combined"):
        audiotag.TagOptions(labels=label_map, only="Music")
