"""Bad input gets one clear line on stderr and a documented exit code, never a traceback."""

import json
import re

import numpy as np
import soundfile

from conftest import AUDIO

EXIT_INPUT_FAILED, EXIT_USAGE, EXIT_MODEL = 1, 2, 3


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
