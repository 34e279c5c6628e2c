"""Real-world input: every reference clip, every common format and rate, long recordings, stdin streams."""

import json
import math
import shlex
import struct
import subprocess

import numpy as np
import pytest
import soundfile
import soxr

from audiotag import TagOptions, decode
from conftest import AUDIO, readline_within, reference_arrays, reference_records

EXTRA_LOGIT_TOLERANCE = 1e-4  # measured: at most 5.1e-5 (pra-doing_the_dishes.wav)
EXTRA = reference_records("extra")
# Below 1 s the short-clip rule applies instead of upstream's behaviour (tests/test_short_clips.py).
EXTRA_UPSTREAM = [r for r in EXTRA if r["n_samples"] >= 32000]


def test_the_reference_set_is_what_we_think():
    assert len(EXTRA) == 49 and len(EXTRA_UPSTREAM) == 48


@pytest.mark.parametrize("record", EXTRA_UPSTREAM, ids=lambda r: r["file"])
def test_extra_clip_matches_upstream(tagger, record):
    """1-10 s clips with default settings, longer ones with --window 0: upstream's top-10 and logits."""
    clip = decode.load(AUDIO / "extra" / record["file"])
    assert len(clip.samples) == record["n_samples"]
    options = TagOptions() if clip.duration <= 10.0 else TagOptions(window=0)
    prediction = tagger.predict(clip, options)
    ref = reference_arrays(record, "extra")
    assert np.abs(prediction.logits - ref["logits"]).max() <= EXTRA_LOGIT_TOLERANCE
    assert [t.index for t in prediction.tags] == [t["index"] for t in record["top10"]]


def test_long_clips_through_the_cli_with_window_0(cli):
    long = [r for r in EXTRA if r["n_samples"] > 10 * 32000][:6]
    result = cli("--format", "jsonl", "--window", "0", *[AUDIO / "extra" / r["file"] for r in long])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == len(long) == 6
    for line, record in zip(lines, long):
        assert [t["index"] for t in json.loads(line)["tags"]] == [t["index"] for t in record["top10"]]


@pytest.fixture(scope="module")
def music():
    samples, rate = soundfile.read(AUDIO / "music.wav", dtype="float32")
    return samples, rate


FORMATS = [  # (extension, soundfile format, subtype)
    ("wav", "WAV", "PCM_U8"), ("wav", "WAV", "PCM_16"), ("wav", "WAV", "PCM_24"), ("wav", "WAV", "PCM_32"),
    ("wav", "WAV", "FLOAT"), ("wav", "WAV", "DOUBLE"), ("wav", "WAVEX", "PCM_16"), ("flac", "FLAC", "PCM_16"),
    ("flac", "FLAC", "PCM_24"), ("ogg", "OGG", "VORBIS"), ("opus", "OGG", "OPUS"), ("mp3", "MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize("ext,container,subtype", FORMATS, ids=lambda v: str(v))
def test_every_common_format(tagger, music, tmp_path, ext, container, subtype):
    samples, rate = music
    rate_out = 48000 if subtype == "OPUS" else 44100  # Opus only knows 8/12/16/24/48 kHz
    data = soxr.resample(np.stack([samples, samples], axis=1), rate, rate_out, quality="HQ")
    path = tmp_path / f"music.{ext}"
    soundfile.write(path, data, rate_out, format=container, subtype=subtype)
    clip = decode.load(path)
    assert (clip.sample_rate, clip.channels) == (rate_out, 2)
    assert abs(clip.duration - 10.0) < 0.1
    labels = [t.label for t in tagger.predict(clip).tags]
    reference = [t["display_name"] for t in reference_records()[0]["top10"]]
    assert labels[0] == "Music"
    assert len(set(labels[:5]) & set(reference[:5])) >= 3


# One stored reference per source rate: librosa.load(sr=32000)'s own samples, read from a file of that rate.
RESAMPLED = {rate: next(r for r in EXTRA if soundfile.info(AUDIO / "extra" / r["file"]).samplerate == rate
                        and "waveform" in reference_arrays(r, "extra")) for rate in (16000, 22050, 44100, 48000)}


@pytest.mark.parametrize("rate", sorted(RESAMPLED))
def test_any_rate_is_resampled_like_librosa(rate):
    """decode.from_array (samples already decoded, at their own rate) against librosa's resampling as upstream
    ran it: the stored waveform, bit for bit."""
    record = RESAMPLED[rate]
    samples, source_rate = soundfile.read(AUDIO / "extra" / record["file"], dtype="float32")
    assert source_rate == rate
    clip = decode.from_array(samples, rate)
    np.testing.assert_array_equal(clip.samples, reference_arrays(record, "extra")["waveform"])


@pytest.mark.parametrize("rate", [8000, 11025, 96000, 192000])
def test_rates_without_a_reference_keep_librosas_length_and_the_tags(tagger, music, rate):
    samples, source_rate = music
    resampled = soxr.resample(samples, source_rate, rate, quality="HQ")
    clip = decode.from_array(resampled, rate)
    assert len(clip.samples) == math.ceil(len(resampled) * 32000 / rate)  # librosa's fix_length
    top = [t.label for t in tagger.predict(clip).tags[:3]]
    assert "Music" in top


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 8])
def test_channels_are_downmixed_by_the_mean(music, channels):
    samples, rate = music
    gains = np.linspace(0.2, 1.0, channels, dtype=np.float32)
    clip = decode.from_array(samples[:, None] * gains, rate)
    np.testing.assert_allclose(clip.samples, samples * gains.mean(), atol=1e-6)
    assert clip.channels == channels


def test_block_decoding_equals_whole_file_decoding(tmp_path, music):
    samples, rate = music
    long = np.tile(samples, 3)  # 30 s: several blocks
    path = tmp_path / "long.flac"
    soundfile.write(path, soxr.resample(long, rate, 44100, quality="HQ"), 44100)
    whole, _ = soundfile.read(path, dtype="float32")
    expected = soxr.resample(whole, 44100, 32000, quality="HQ")
    got = decode.load(path).samples
    assert len(got) == math.ceil(len(whole) * 32000 / 44100)
    np.testing.assert_array_equal(got[:len(expected)], expected[:len(got)])


def test_a_short_event_in_a_long_recording_still_shows(tagger, tmp_path):
    """A 2 s bark in a 10-minute recording of quiet noise: windows keep it; the score is the max over windows."""
    bark = decode.load(AUDIO / "extra" / "gcompris-mem-LRBark_1_LA_cut.ogg").samples
    rng = np.random.default_rng(0)
    recording = (0.003 * rng.standard_normal(600 * 32000)).astype(np.float32)
    at = 377 * 32000
    recording[at:at + len(bark)] += bark
    path = tmp_path / "ten-minutes.flac"
    soundfile.write(path, recording, 32000)
    prediction = tagger.predict(decode.load(path), TagOptions(segments=True))
    labels = [t.label for t in prediction.tags]
    assert "Dog" in labels[:3] and "Bark" in labels
    windows = prediction.segments
    assert len(windows) == 119 and windows[-1].end == 600.0
    hits = [s for s in windows if "Dog" in [t.label for t in s.tags[:3]]]
    assert hits and all(s.start <= 377 + 2 and s.end >= 377 for s in hits)


def test_segments_in_jsonl(cli, tmp_path):
    path = AUDIO / "extra" / "librosa-pibble.ogg"  # 47 s
    result = cli("--segments", "--format", "jsonl", "-k", "3", path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    segments, clips = records[:-1], records[-1:]
    end = round(1502549 / 32000, 3)  # upstream's sample count for this clip
    assert [(s["start"], s["end"]) for s in segments] == [(float(s), float(s + 10))
                                                          for s in range(0, 40, 5)] + [(round(end - 10, 3), end)]
    assert all(len(s["tags"]) == 3 for s in segments)
    assert "start" not in clips[0] and clips[0]["tags"][0]["score"] == max(
        t["score"] for s in segments for t in s["tags"] if t["label"] == clips[0]["tags"][0]["label"])


def test_window_and_hop_options(tagger, music):
    samples, rate = music
    long = np.tile(samples, 2)  # 20 s
    prediction = tagger.tag(long, rate, TagOptions(window=4, hop=3, segments=True))
    assert [(s.start, s.end) for s in prediction.segments] == [(0, 4), (3, 7), (6, 10), (9, 13), (12, 16), (15, 19),
                                                               (16, 20)]


def wav_header(channels, rate, bits, data_size, tag=1):
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + \
        b"data" + struct.pack("<I", data_size)


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF], ids=["zero", "max"])
def test_stdin_wav_with_a_streaming_writers_bogus_size(cli, music, data_size):
    samples, rate = music
    pcm = (samples * 32767).astype("<i2").tobytes()
    result = cli("--format", "jsonl", "-", stdin=wav_header(1, rate, 16, data_size) + pcm)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["duration"] == 10.0
    assert [t["label"] for t in out["tags"][:3]] == ["Music", "Musical instrument", "Guitar"]


def test_stdin_wav_with_a_large_chunk_before_its_data(cli, music):
    """Cover art or tags of several MB ahead of the samples are skipped, not refused and not held in memory."""
    samples, rate = music
    header = wav_header(1, rate, 16, 0xFFFFFFFF)
    art = b"id3 " + struct.pack("<I", 3_000_001) + bytes(3_000_001) + b"\0"  # odd size: one pad byte
    stream = header[:-8] + art + header[-8:] + (samples * 32767).astype("<i2").tobytes()
    result = cli("--format", "jsonl", "-", stdin=stream)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["duration"] == 10.0 and out["tags"][0]["label"] == "Music"


def test_a_pipe_named_as_a_file_is_read_as_a_stream(cli):
    """`audiotag <(curl ...)` or `... | audiotag /dev/stdin`: the path is a pipe, read like `-`."""
    for clip in (AUDIO / "music.wav", AUDIO / "extra" / "sonicpi-loop_amen.flac"):
        command = f"cat {shlex.quote(str(clip))} | {cli.shell('--format', 'jsonl', '/dev/stdin')}"
        result = subprocess.run(["bash", "-c", command], capture_output=True, env=cli.environment(),
                                cwd=cli.workdir, timeout=120)
        assert result.returncode == 0, result.stderr
        piped = json.loads(result.stdout)
        direct = json.loads(cli("--format", "jsonl", clip).stdout)
        assert piped == {**direct, "path": "/dev/stdin"}


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_stdin_wav_stream_equals_file(music, tmp_path, subtype):
    samples, rate = music
    path = tmp_path / "clip.wav"
    soundfile.write(path, samples[:64000], rate, subtype=subtype)
    with open(path, "rb") as pipe:
        streamed = decode.open_stdin(pipe).read()
    np.testing.assert_array_equal(streamed.samples, decode.load(path).samples)


def test_stdin_wavex_stream(music, tmp_path):
    samples, rate = music
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.stack([samples, samples], 1), rate, format="WAVEX", subtype="PCM_24")
    with open(path, "rb") as pipe:
        streamed = decode.open_stdin(pipe).read()
    np.testing.assert_array_equal(streamed.samples, decode.load(path).samples)


@pytest.mark.parametrize("container,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_stdin_flac_and_ogg_streams(cli, music, tmp_path, container, subtype):
    samples, rate = music
    path = tmp_path / f"clip.{container.lower()}"
    soundfile.write(path, samples, rate, format=container, subtype=subtype)
    result = cli("--format", "jsonl", "-", stdin=path.read_bytes())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tags"][0]["label"] == "Music"


def test_unknown_stdin_stream_asks_for_raw(cli):
    result = cli("-", stdin=b"\x01\x02" * 5000)
    assert result.returncode == 1
    assert "--raw" in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_raw_stream_is_tagged_while_it_runs(cli, music):
    """A live feed: the first window's tags appear before the stream ends."""
    samples, rate = music
    pcm = (np.tile(samples, 3) * 32767).astype("<i2").tobytes()  # 30 s
    process = cli.popen("-", "--raw", "s16le", "--rate", rate, "--segments", "--format", "jsonl")
    try:
        process.stdin.write(pcm[:len(pcm) * 2 // 3])  # 20 s: enough for the first window to complete
        process.stdin.flush()
        first = json.loads(readline_within(process.stdout))  # a segment, printed while the stream is open
        assert process.poll() is None  # still running: the stream has not ended
        assert (first["start"], first["end"]) == (0.0, 10.0)
        assert first["tags"][0]["label"] == "Music"
        process.stdin.write(pcm[len(pcm) * 2 // 3:])
        process.stdin.close()
        rest = [json.loads(line) for line in process.stdout.read().decode().splitlines()]
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert [r.get("start") for r in rest] == [5.0, 10.0, 15.0, 20.0, None]
    assert rest[-1]["duration"] == 30.0


def test_closed_pipe_ends_quietly(cli):
    """`audiotag ... | head -1`: no traceback, no abort."""
    command = cli.shell("--format", "text", AUDIO / "music.wav", AUDIO / "speech.wav") + " | head -1"
    result = subprocess.run(["bash", "-c", f"{command}; echo ${{PIPESTATUS[0]}} >&2"], capture_output=True,
                            env=cli.environment(), cwd=cli.workdir, timeout=120)
    assert result.stdout.decode().splitlines() == ["== " + str(AUDIO / "music.wav")]
    status = result.stderr.decode().splitlines()[-1]
    assert status in ("0", "141")  # head may exit before or after we finish writing
    assert "Traceback" not in result.stderr.decode()


def test_segments_to_a_closed_pipe(cli):
    path = AUDIO / "extra" / "librosa-karissa-hobbs-lets-go-fishin.ogg"
    command = cli.shell("--segments", "--format", "text", path) + " | head -1"
    result = subprocess.run(["bash", "-c", f"{command}; echo ${{PIPESTATUS[0]}} >&2"], capture_output=True,
                            env=cli.environment(), cwd=cli.workdir, timeout=120)
    assert result.stderr.decode().splitlines()[-1] in ("0", "141"), result.stderr
    assert "Traceback" not in result.stderr.decode()
    assert len(result.stdout.decode().splitlines()) == 1
