"""Bad input gets one clear line on stderr and a documented exit code, never a traceback."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from conftest import AUDIO, REPO

EXIT_INPUT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_OUTPUT = 1, 2, 3, 4


SUMMARY = re.compile(r"audiotag: \d+ inputs: \d+ ok, \d+ failed in ")


def assert_one_line_error(result, code, *fragments):
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if not SUMMARY.match(line)]  # batch runs end with a summary
    assert len(lines) == 1 and lines[0].startswith("audiotag: "), stderr
    for fragment in fragments:
        assert fragment in stderr


def test_missing_file(cli):
    result = cli("no-such.wav")
    assert_one_line_error(result, EXIT_INPUT_FAILED, "no-such.wav", "no such file")
    assert json.loads(result.stdout) == {"path": "no-such.wav", "error": "no such file or directory"}
    text = cli("--format", "text", "no-such.wav")
    assert_one_line_error(text, EXIT_INPUT_FAILED, "no such file")
    assert text.stdout == b""  # text output is for results only


def test_not_audio(cli, tmp_path):
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 50)
    assert_one_line_error(cli(text), EXIT_INPUT_FAILED, "notes.mp3", "cannot decode")


def test_directory_without_audio(cli, tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    assert_one_line_error(cli(tmp_path), EXIT_INPUT_FAILED, str(tmp_path), "no audio files")


def test_empty_stdin(cli):
    assert_one_line_error(cli("-"), EXIT_INPUT_FAILED, "-: ")


def test_raw_without_rate_is_a_usage_error(cli):
    assert_one_line_error(cli("-", "--raw", "s16le", stdin=b"\0\0" * 1000), EXIT_USAGE, "--rate")


def test_no_input_is_a_usage_error(cli):
    assert_one_line_error(cli(), EXIT_USAGE, "no input")


def test_unknown_provider(cli):
    assert_one_line_error(cli("--provider", "tpu", AUDIO / "music.wav"), EXIT_MODEL, "tpu", "CPUExecutionProvider")


def test_bad_model_file(cli, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"garbage")
    assert_one_line_error(cli("--model", fake, AUDIO / "music.wav"), EXIT_MODEL, "fake.onnx")


def test_one_bad_input_does_not_stop_the_others(cli, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    result = cli("--format", "json", AUDIO / "music.wav", bad, AUDIO / "speech.wav")
    assert_one_line_error(result, EXIT_INPUT_FAILED, "bad.wav")
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [("error" in r) for r in records] == [False, True, False]
    assert records[1]["path"] == str(bad) and records[1]["error"]
    assert records[2]["tags"][0]["label"] == "Speech"


def test_generated_wav_round_trip(cli, tmp_path):
    """A file we write ourselves (24-bit, 48 kHz, stereo) is read, resampled and downmixed."""
    samples, _ = soundfile.read(AUDIO / "music.wav", dtype="float32")
    path = tmp_path / "music48.wav"
    stereo = np.stack([samples, samples], axis=1)
    import soxr

    soundfile.write(path, soxr.resample(stereo, 32000, 48000), 48000, subtype="PCM_24")
    result = cli("--format", "json", path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["sample_rate"], out["channels"]) == (48000, 2)
    assert out["tags"][0]["label"] == "Music"


def test_help_teaches(cli):
    result = cli("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for fragment in ("--format", "--raw", "exit status", "AUDIOTAG_PROVIDERS", "examples"):
        assert fragment in text


def test_version_names_model_and_runtime(cli):
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "audiotag 0." in text and "mn04_as" in text and "onnxruntime" in text
    assert "CPUExecutionProvider" in text


def test_self_check(cli):
    result = cli("--self-check")
    assert result.returncode == 0, result.stderr
    assert "self-check ok" in result.stdout.decode()


def test_self_check_fails_on_a_model_whose_labels_are_wrong(cli, tmp_path):
    """The bundled model with its label list reversed: loads, but calls the test tone something else (exit 3)."""
    import onnx

    from audiotag.assets import DEFAULT_MODEL, asset_path

    model = onnx.load(str(asset_path(DEFAULT_MODEL)))
    for prop in model.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(json.loads(prop.value)[::-1])
    broken = tmp_path / "reversed.onnx"
    onnx.save(model, str(broken))
    result = cli("--self-check", "--model", broken)
    assert_one_line_error(result, EXIT_MODEL, "self-check failed: a 1 kHz tone was tagged")


def test_help_does_not_load_the_heavy_modules():
    """--help answers without importing onnxruntime or numpy (start-up stays light)."""
    code = ("import sys\nfrom audiotag import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('onnxruntime', 'numpy', 'soundfile', 'soxr') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


# --- hostile surroundings: odd names, odd output targets, closed streams -------------------------------------

def test_a_file_name_that_is_not_utf8(cli, tmp_path):
    """Crawled names can be any bytes: records stay valid JSON / CSV and --resume recognises the file."""
    clips = tmp_path / "clips"
    clips.mkdir()
    odd = os.fsdecode(b"caf\xe9-latin1.wav")  # Latin-1 bytes, not UTF-8
    for name in ("a.wav", odd, "z.wav"):
        shutil.copy(AUDIO / "music.wav", clips / name)
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"
        result = cli("-o", out, "-f", fmt, "-k", 2, clips)
        assert result.returncode == 0, result.stderr
        if fmt == "jsonl":
            records = [json.loads(line) for line in out.read_text(encoding="ascii").splitlines()]
            assert [r["path"] for r in records] == [str(clips / n) for n in ("a.wav", odd, "z.wav")]
        else:
            assert os.fsencode(str(clips / odd)) in out.read_bytes()  # the name's own bytes
        before = out.read_bytes()
        resumed = cli("-o", out, "-f", fmt, "-k", 2, "--resume", clips)
        assert resumed.returncode == 0 and "0 inputs" in resumed.stderr.decode()
        assert out.read_bytes() == before


def test_a_newline_in_a_file_name_keeps_errors_on_one_line(cli, tmp_path):
    bad = tmp_path / "two\nlines.wav"
    bad.write_bytes(b"not audio")
    result = cli(bad)
    assert_one_line_error(result, EXIT_INPUT_FAILED, "two\\nlines.wav: cannot decode")


def test_a_carriage_return_in_a_file_name_keeps_csv_rows_whole(cli, tmp_path):
    clip = tmp_path / "cr\rret.wav"
    shutil.copy(AUDIO / "music.wav", clip)
    result = cli("-f", "csv", "-k", 3, clip)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout.decode(), newline="")))
    assert len(rows) == 4 and [row[0] for row in rows[1:]] == [str(clip)] * 3


@pytest.mark.parametrize("content", [b"# A README\n\nsome text\nmore text\n", bytes(range(256)) * 4,
                                     b'{"path": "a.wav", "tags": []}\n[1, 2]\n{"path": "b.wav", "tags": []}\n',
                                     b"notes, no newline", b"precious\n"])
def test_resume_refuses_a_file_that_is_not_its_output(cli, tmp_path, content):
    out = tmp_path / "notes.jsonl"
    out.write_bytes(content)
    result = cli("-o", out, "--resume", AUDIO / "music.wav")
    assert_one_line_error(result, EXIT_USAGE, f"{out}: ", "not resuming into this file")
    assert out.read_bytes() == content  # untouched


@pytest.mark.parametrize("content", ["name,size\na.wav,3\n", "a,b,c"])
def test_resume_refuses_a_table_with_other_columns(cli, tmp_path, content):
    out = tmp_path / "other.csv"
    out.write_text(content)
    result = cli("-o", out, "-f", "csv", "--resume", AUDIO / "music.wav")
    assert_one_line_error(result, EXIT_USAGE, "not an audiotag csv output")
    assert out.read_text() == content


def test_resume_with_unusual_names(cli, tmp_path):
    """U+2028 (a line separator to str.splitlines) in JSONL; a newline inside a quoted CSV field, with the run
    killed inside that record's rows: resumed, each file is recorded once and whole."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a\u2028b.wav", "n\nl.wav", "z.wav"):
        shutil.copy(AUDIO / "music.wav", clips / name)
    out = tmp_path / "u.jsonl"
    assert cli("-o", out, clips).returncode == 0
    resumed = cli("-o", out, "--resume", clips)
    assert resumed.returncode == 0 and "0 inputs" in resumed.stderr.decode(), resumed.stderr
    whole, cut = tmp_path / "whole.csv", tmp_path / "cut.csv"
    assert cli("-o", whole, "-f", "csv", "-k", 3, clips).returncode == 0
    text = whole.read_text()
    rows_of_nl = [i for i in range(len(text)) if text.startswith(f'"{clips}/n\nl.wav"', i)]
    cut.write_text(text[:rows_of_nl[1] + 12])  # one row of n\nl.wav whole, the next torn inside its name
    resumed = cli("-o", cut, "-f", "csv", "-k", 3, "--resume", clips)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 inputs" in resumed.stderr.decode()
    assert cut.read_text() == text  # the torn record dropped whole, then written again with the rest


def test_resume_keeps_the_files_rows_per_record_when_k_changes(cli, tmp_path):
    files = [AUDIO / "music.wav", AUDIO / "speech.wav", AUDIO / "typing.wav"]
    out = tmp_path / "k.csv"
    assert cli("-o", out, "-f", "csv", "-k", 3, *files[:2]).returncode == 0
    before = out.read_text()
    resumed = cli("-o", out, "-f", "csv", "-k", 5, "--resume", *files)  # the last whole record stays
    assert resumed.returncode == 0 and "1 inputs" in resumed.stderr.decode()
    assert out.read_text().startswith(before)


@pytest.mark.parametrize("target", ["directory", "fifo"])
def test_output_that_is_not_a_file(cli, tmp_path, target):
    out = tmp_path / "out"
    out.mkdir() if target == "directory" else os.mkfifo(out)
    result = cli("-o", out, "--resume", AUDIO / "music.wav", timeout=60)
    assert_one_line_error(result, EXIT_USAGE, f"audiotag: {out}: not a regular file")
    if target == "directory":
        assert_one_line_error(cli("-o", out, AUDIO / "music.wav"), EXIT_USAGE, f"audiotag: {out}: is a directory")


def test_a_full_disk_is_one_line_and_exit_4(cli):
    result = cli("-o", "/dev/full", AUDIO / "music.wav", AUDIO / "speech.wav")
    assert_one_line_error(result, EXIT_OUTPUT, "/dev/full: cannot write results: no space left on device")
    shell = subprocess.run(["bash", "-c", cli.shell(AUDIO / "music.wav") + " >/dev/full"], capture_output=True,
                           env=cli.environment(), cwd=cli.workdir, timeout=120)
    assert_one_line_error(shell, EXIT_OUTPUT, "stdout: cannot write results: no space left on device")


@pytest.mark.parametrize("option", ["--version", "--self-check"])
def test_version_and_self_check_to_a_full_disk(cli, option):
    result = subprocess.run(["bash", "-c", cli.shell(option) + " >/dev/full"], capture_output=True,
                            env=cli.environment(), cwd=cli.workdir, timeout=120)
    assert_one_line_error(result, EXIT_OUTPUT, "stdout: cannot write results: no space left on device")


def test_a_full_stderr_does_not_stop_the_tagging(cli, tmp_path):
    out = tmp_path / "out.jsonl"
    command = cli.shell("-o", out, AUDIO / "music.wav", tmp_path / "missing.wav", AUDIO / "speech.wav")
    result = subprocess.run(["bash", "-c", command + " 2>/dev/full"], capture_output=True,
                            env=cli.environment(), cwd=cli.workdir, timeout=120)
    assert result.returncode == EXIT_INPUT_FAILED
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert ["tags" in r for r in records] == [True, False, True]


@pytest.mark.parametrize("closed,arguments,expected", [
    ("<&-", ["-"], "stdin is closed"),
    ("<&-", ["--files-from", "-"], "stdin is closed"),
    (">&-", ["MUSIC"], "stdout is closed: give -o FILE"),
])
def test_a_closed_standard_stream(cli, closed, arguments, expected):
    arguments = [str(AUDIO / "music.wav") if a == "MUSIC" else a for a in arguments]
    result = subprocess.run(["bash", "-c", f"{cli.shell(*arguments)} {closed}"], capture_output=True,
                            env=cli.environment(), cwd=cli.workdir, timeout=120)
    assert_one_line_error(result, EXIT_USAGE, expected)


def test_a_closed_stderr_does_not_stop_the_tagging(cli, tmp_path):
    out = tmp_path / "out.jsonl"
    command = cli.shell("-o", out, AUDIO / "music.wav", AUDIO / "speech.wav") + " 2>&-"
    result = subprocess.run(["bash", "-c", command], capture_output=True, env=cli.environment(),
                            cwd=cli.workdir, timeout=120)
    assert result.returncode == 0
    assert [len(json.loads(line)["tags"]) for line in out.read_text().splitlines()] == [10, 10]


def test_csv_header_to_a_reader_that_has_gone(cli):
    command = cli.shell("-f", "csv", AUDIO / "music.wav") + " | (exec 0<&-; sleep 1)"
    result = subprocess.run(["bash", "-c", command + "; echo ${PIPESTATUS[0]} >&2"], capture_output=True,
                            env=cli.environment(), cwd=cli.workdir, timeout=120)
    stderr = result.stderr.decode()
    assert stderr.splitlines() == ["141"], stderr


@pytest.mark.parametrize("options,fragment", [
    (["--window", "inf"], "--window: must be at most 86400"),
    (["--window", "1e305"], "--window: must be at most 86400"),
    (["--hop", "inf"], "--hop: must be at most 86400"),
    (["--window", "0.01"], "--window must be 0 (the whole file in one pass) or at least 1 s"),
    (["--window", "2", "--hop", "5"], "--hop 5 s is longer than --window 2 s"),
])
def test_window_options_that_cannot_work(cli, options, fragment):
    assert_one_line_error(cli(*options, AUDIO / "music.wav"), EXIT_USAGE, fragment)


def test_output_naming_an_input_is_refused(cli, tmp_path):
    clip = tmp_path / "victim.wav"
    shutil.copy(AUDIO / "music.wav", clip)
    assert_one_line_error(cli(clip, "-o", clip), EXIT_USAGE, "is one of the inputs")
    assert_one_line_error(cli(tmp_path, "-o", clip), EXIT_USAGE, "not an audio file name")  # found by the walk
    listing = tmp_path / "list.txt"
    listing.write_text(f"{clip}\n")
    assert_one_line_error(cli("--files-from", listing, "-o", listing), EXIT_USAGE, "is one of the inputs")
    assert clip.read_bytes() == (AUDIO / "music.wav").read_bytes() and listing.read_text() == f"{clip}\n"


def test_closed_stdin_and_stderr_keep_library_chatter_out_of_the_results(cli, tmp_path):
    """With descriptors 0 and 2 closed, the output file must not become descriptor 2 (where mpg123 writes)."""
    cut = tmp_path / "cut.mp3"
    cut.write_bytes((AUDIO / "extra" / "esc10-babycry-1-60997-B.mp3").read_bytes()[:30000])
    out = tmp_path / "out.jsonl"
    command = cli.shell("-o", out, cut, AUDIO / "music.wav") + " 0<&- 2>&-"
    result = subprocess.run(["bash", "-c", command], capture_output=True, env=cli.environment(),
                            cwd=cli.workdir, timeout=120)
    assert result.returncode == 0
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [str(cut), str(AUDIO / "music.wav")]


def test_a_list_on_stdin_with_names_that_are_not_utf8(cli, tmp_path):
    clip = tmp_path / os.fsdecode(b"caf\xe9.wav")
    shutil.copy(AUDIO / "music.wav", clip)
    result = cli("--files-from", "-", "-f", "jsonl", stdin=os.fsencode(str(clip)) + b"\n",
                 env={"PYTHONIOENCODING": "utf-8"})  # strict UTF-8 on stdin, as in an en_US.UTF-8 locale
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["path"] == str(clip)


def test_a_list_that_cannot_be_read_is_an_inputs_failure(cli):
    result = cli("--files-from", "/proc/self/mem", "-f", "jsonl")  # reading it fails with EIO
    assert_one_line_error(result, EXIT_INPUT_FAILED, "/proc/self/mem: cannot read the list of inputs")


def test_a_full_disk_under_the_csv_header_is_exit_4(cli):
    result = cli("-f", "csv", "-o", "/dev/full", AUDIO / "music.wav")
    assert_one_line_error(result, EXIT_OUTPUT, "/dev/full: cannot write results: no space left on device")


def test_a_short_window_takes_half_of_it_as_hop(cli):
    result = cli("--window", 2, "--segments", "-f", "jsonl", AUDIO / "music.wav")
    assert result.returncode == 0, result.stderr
    starts = [json.loads(line).get("start") for line in result.stdout.decode().splitlines()]
    assert starts == [float(s) for s in range(0, 9)] + [None]


def test_embedding_files_get_the_umasks_permissions(cli, tmp_path):
    command = "umask 022; " + cli.shell("-o", os.devnull, "--embeddings", tmp_path / "emb", AUDIO / "music.wav")
    result = subprocess.run(["bash", "-c", command], capture_output=True, env=cli.environment(),
                            cwd=cli.workdir, timeout=120)
    assert result.returncode == 0, result.stderr
    saved = next((tmp_path / "emb").rglob("*.npy"))
    assert oct(saved.stat().st_mode & 0o777) == oct(0o644)


def test_raw_samples_from_a_pipe_named_as_a_file(cli):
    samples, rate = soundfile.read(AUDIO / "music.wav", dtype="int16")
    command = "cat | " + cli.shell("--raw", "s16le", "--rate", rate, "-f", "jsonl", "/dev/stdin")
    result = subprocess.run(["bash", "-c", command], input=samples.tobytes(), capture_output=True,
                            env=cli.environment(), cwd=cli.workdir, timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["duration"] == 10.0 and record["tags"][0]["label"] == "Music"
