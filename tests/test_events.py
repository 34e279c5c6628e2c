"""--events: when each sound is present, on recordings built from the shared clips."""

import json

import numpy as np
import pytest
import soundfile

from audiotag import TagOptions
from audiotag.infer.events import find_events
from conftest import AUDIO

PART = 20  # seconds of each sound in the acceptance recording
TOLERANCE = 3.0  # seconds, start and end
TARGETS = {"speech": {"Speech"}, "music": {"Music"}, "typing": {"Typing", "Computer keyboard"}}
EVENT_FIELDS = ["path", "label", "start", "end", "score"]


def recording(order) -> np.ndarray:
    """20 s of each clip (10 s clips looped), one after the other."""
    parts = []
    for name in order:
        samples, rate = soundfile.read(AUDIO / f"{name}.wav", dtype="float32")
        assert rate == 32000
        parts.append(np.resize(samples, PART * rate))
    return np.concatenate(parts)


def assert_found(events, order):
    """For each part, an event of its label starting and ending within TOLERANCE of the part's boundaries."""
    for position, name in enumerate(order):
        start, end = position * PART, (position + 1) * PART
        near = [e for e in events if e["label"] in TARGETS[name]
                and abs(e["start"] - start) <= TOLERANCE and abs(e["end"] - end) <= TOLERANCE]
        assert near, (name, [e for e in events if e["label"] in TARGETS[name]])


def test_acceptance_speech_music_typing(cli, tmp_path):
    path = tmp_path / "sixty.wav"
    soundfile.write(path, recording(("speech", "music", "typing")), 32000)
    result = cli("--events", "--format", "jsonl", path)
    assert result.returncode == 0, result.stderr
    *events, clip = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert clip["duration"] == 60.0 and "tags" in clip and events  # the events come before the clip's record
    for event in events:  # the schema
        assert list(event) == EVENT_FIELDS
        assert event["path"] == str(path) and isinstance(event["label"], str)
        assert all(isinstance(event[key], float) for key in ("start", "end", "score"))
        assert 0 <= event["start"] < event["end"] <= 60.0 and 0 < event["score"] <= 1
    assert [e["start"] for e in events] == sorted(e["start"] for e in events)
    assert_found(events, ("speech", "music", "typing"))
    # One event per stretch: a label's events never overlap or touch.
    for label in {e["label"] for e in events}:
        mine = [e for e in events if e["label"] == label]
        assert all(a["end"] < b["start"] for a, b in zip(mine, mine[1:]))


@pytest.mark.parametrize("order", [("typing", "speech", "music"), ("music", "typing", "speech")])
def test_other_orders(tagger, order):
    prediction = tagger.tag(recording(order), 32000, TagOptions(events=True))
    assert_found([{"label": e.label, "start": e.start, "end": e.end} for e in prediction.events], order)


def test_events_do_not_change_the_clip_record(cli):
    path = AUDIO / "extra" / "librosa-pibble.ogg"
    plain = cli("--format", "jsonl", path).stdout.decode().splitlines()
    with_events = cli("--events", "--format", "jsonl", path).stdout.decode().splitlines()
    assert with_events[-1] == plain[0] and len(with_events) > 1
    assert {json.loads(line)["label"] for line in with_events[:-1]} >= {"Dog"}


def test_events_in_text_and_with_segments(cli):
    path = AUDIO / "music.wav"
    text = cli("--events", "--format", "text", path).stdout.decode().splitlines()
    music = [line for line in text if line.startswith(f"{path} [") and line.split("] ", 1)[1].startswith("Music ")]
    assert len(music) == 1
    records = [json.loads(line) for line in cli("--events", "--segments", path).stdout.decode().splitlines()]
    kinds = ["event" if "label" in r else "window" if "start" in r else "clip" for r in records]
    # The window's record as soon as it is done, then the events, then the clip's record.
    assert kinds == ["window"] + ["event"] * (len(kinds) - 2) + ["clip"] and len(kinds) > 2
    assert [list(r) for r in records if "label" in r] == [EVENT_FIELDS] * (len(kinds) - 2)


def test_events_from_the_pipeline_equal_events_from_the_api(cli, tagger, tmp_path):
    path = tmp_path / "mix.wav"
    samples = recording(("music", "typing", "speech"))
    soundfile.write(path, samples, 32000, subtype="FLOAT")
    events = [json.loads(line) for line in cli("--events", path).stdout.decode().splitlines()][:-1]
    expected = tagger.tag(samples, 32000, TagOptions(events=True)).events
    assert [(e["label"], e["start"], e["end"]) for e in events] == [(e.label, round(e.start, 3), round(e.end, 3))
                                                                   for e in expected]
    # Records round to 1e-6 (up to 5e-7 off), and the pipeline batches windows differently from tag(): onnxruntime's
    # kernels for another batch size differ by up to 1.3e-6 in a score on this machine (measured on main before the
    # layout change too), so 2e-6.
    assert [e["score"] for e in events] == pytest.approx([e.score for e in expected], abs=2e-6)


def test_threshold_raises_the_event_floor(tagger):
    samples = recording(("speech", "music", "typing"))
    events = tagger.tag(samples, 32000, TagOptions(events=True, threshold=0.5)).events
    assert events and all(e.score >= 0.5 for e in events)
    assert len(events) < len(tagger.tag(samples, 32000, TagOptions(events=True)).events)


def test_events_in_a_table_are_refused(cli):
    result = cli("--events", "--format", "csv", AUDIO / "music.wav")
    assert result.returncode == 2 and "--events needs jsonl or text" in result.stderr.decode()


def test_find_events_attribution_gap_and_relative_threshold():
    # Four windows of 2 s every 1 s: centres 1, 2, 3, 4; label 0 present in windows 0-1 and 3, label 1 weak.
    starts, ends = np.arange(4.0), np.arange(4.0) + 2
    scores = np.array([[0.9, 0.25], [0.8, 0.1], [0.1, 0.1], [0.7, 0.1]])
    centre = find_events(starts, ends, scores, duration=5.0, floor=0.2, relative=0.0, gap=0.0)
    # Window 0 owns 0-1.5, window 1 1.5-2.5, window 3 3.5-5: a 1 s hole (window 2) splits label 0.
    assert [(e.index, e.start, e.end, e.score) for e in centre] == [(0, 0.0, 2.5, 0.9), (1, 0.0, 1.5, 0.25),
                                                                    (0, 3.5, 5.0, 0.7)]
    bridged = find_events(starts, ends, scores, duration=5.0, floor=0.2, relative=0.0, gap=1.0)
    assert [(e.index, e.start, e.end) for e in bridged] == [(0, 0.0, 5.0), (1, 0.0, 1.5)]
    span = find_events(starts, ends, scores, duration=5.0, floor=0.2, relative=0.0, gap=0.0, attribution="span")
    assert [(e.index, e.start, e.end) for e in span] == [(0, 0.0, 5.0), (1, 0.0, 2.0)]  # spans 0-3 and 3-5 touch
    # Relative 0.9: label 0 needs 0.81 (window 1, 0.8, is out), label 1 needs 0.225.
    relative = find_events(starts, ends, scores, duration=5.0, floor=0.2, relative=0.9, gap=0.0)
    assert [(e.index, e.start, e.end) for e in relative] == [(0, 0.0, 1.5), (1, 0.0, 1.5)]
    assert find_events([], [], np.zeros((0, 2)), duration=0.0) == []
