"""The short-clip rule (evidence: scripts/studies/short_clip_study.py): under 1 s repeat to 1 s, under 16 ms refuse."""

import json

import numpy as np
import pytest
import soundfile

from audiotag import decode
from audiotag.infer import frontend
from audiotag.infer.clip import MIN_CLIP_SAMPLES, SHORT_CLIP_SAMPLES, model_input
from conftest import AUDIO


def loudest(samples, length):
    energy = np.convolve(samples.astype(np.float64) ** 2, np.ones(length), "valid")
    start = int(energy.argmax())
    return samples[start:start + length]


def test_thresholds():
    assert SHORT_CLIP_SAMPLES == 32000 and MIN_CLIP_SAMPLES == frontend.MIN_SAMPLES == 514


def test_a_clip_under_one_second_is_repeated_to_one_second():
    clip = decode.load(AUDIO / "extra" / "gcompris-melody-xylofon_son1.wav")  # 0.39 s
    assert len(clip.samples) == 12346
    tiled = np.concatenate([clip.samples, clip.samples, clip.samples[:32000 - 2 * 12346]])
    np.testing.assert_array_equal(model_input(clip.samples), frontend.log_mel(tiled))


def test_one_second_and_longer_is_untouched():
    samples = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    np.testing.assert_array_equal(model_input(samples), frontend.log_mel(samples))


def test_a_quarter_second_snare_is_still_a_drum(tagger):
    snare = decode.load(AUDIO / "extra" / "hydrogen-GMRockKit-Snare-Hard.wav").samples
    prediction = tagger.predict(decode.Audio(loudest(snare, 8000), 32000, 1, 0.25))
    assert {"Drum", "Snare drum"} <= {t.label for t in prediction.tags[:3]}


def test_half_a_second_of_a_bark_is_still_a_dog(tagger):
    bark = decode.load(AUDIO / "extra" / "gcompris-mem-LRBark_1_LA_cut.ogg").samples
    prediction = tagger.predict(decode.Audio(loudest(bark, 16000), 32000, 1, 0.5))
    assert "Dog" in [t.label for t in prediction.tags[:3]]


@pytest.mark.parametrize("n_samples", [1, 10, 513])
def test_under_16_ms_is_refused_with_a_reason(n_samples):
    with pytest.raises(decode.AudioError, match=r"too short: .* ms of audio, audiotag needs at least 16 ms"):
        model_input(np.full(n_samples, 0.1, np.float32))


def test_exactly_16_ms_is_tagged(tagger):
    samples = loudest(decode.load(AUDIO / "music.wav").samples, 514)
    prediction = tagger.predict(decode.Audio(samples, 32000, 1, 514 / 32000))
    assert len(prediction.tags) == 10 and np.isfinite(prediction.logits).all()


def test_too_short_files_through_the_cli(cli, tmp_path):
    one = tmp_path / "one-sample.wav"
    soundfile.write(one, np.array([0.5], np.float32), 32000)
    low_rate = tmp_path / "ten-samples-8k.wav"  # 10 samples at 8 kHz = 40 samples at 32 kHz
    soundfile.write(low_rate, np.full(10, 0.1, np.float32), 8000)
    result = cli("--format", "jsonl", one, low_rate)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["error"] for r in records] == [
        "too short: 0.0 ms of audio, audiotag needs at least 16 ms",
        "too short: 1.2 ms of audio, audiotag needs at least 16 ms",
    ]


def test_silence_is_tagged_not_refused(cli, tmp_path):
    silent = tmp_path / "silence.wav"
    soundfile.write(silent, np.zeros(16000, np.float32), 32000)
    result = cli("--format", "jsonl", silent)
    assert result.returncode == 0, result.stderr
    labels = [t["label"] for t in json.loads(result.stdout)["tags"]]
    assert "Silence" in labels[:3] and json.loads(result.stdout)["tags"][0]["score"] < 0.2
