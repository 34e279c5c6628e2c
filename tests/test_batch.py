"""Batch mode: directories and path lists, output formats, resumable output, embeddings, parallel batching."""

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
import soundfile

from audiotag import TagOptions, decode
from audiotag.infer import batcher as batching
from audiotag.batch import writer
from audiotag.batch import inputs
from audiotag.batch import pipeline
from audiotag.infer.model import Model
from conftest import AUDIO, REPO, readline_within


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 real clips of a few seconds in nested folders, mixed formats and case, plus non-audio files."""
    root = tmp_path_factory.mktemp("corpus")
    sources = sorted((AUDIO / "extra").glob("*.*"))
    sources = [p for p in sources if p.suffix != ".csv"][:12]
    for index, source in enumerate(sources):
        clip = decode.load(source)
        head = clip.samples[:3 * 32000]
        folder = root / ("a" if index % 2 else "b") / ("deep" if index % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"clip{index:02d}.wav", head, 32000)
        soundfile.write(folder / f"clip{index:02d}.FLAC", head[::-1].copy(), 32000, format="FLAC")
    (root / "notes.txt").write_text("not audio")
    (root / "a" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    return root


def audio_files(root):
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac"))


def records_of(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_directory_walk_is_sorted_recursive_and_by_extension(corpus):
    walked = [item.name for item in inputs.expand([str(corpus)])]
    assert sorted(walked) == audio_files(corpus) and len(walked) == 24
    assert walked == sorted(walked, key=lambda p: [part for part in os.path.relpath(p, corpus).split(os.sep)])


def test_symlink_loop_is_reported_not_fatal(cli, tmp_path):
    (tmp_path / "music").mkdir()
    shutil.copy(AUDIO / "music.wav", tmp_path / "music" / "m.wav")
    os.symlink(tmp_path, tmp_path / "music" / "loop")
    items = list(inputs.expand([str(tmp_path)]))
    assert [i.name for i in items if i.error is None] == [str(tmp_path / "music" / "m.wav")]
    loop_error = "symlink loop: a link back to a directory above it"
    assert [(i.name, i.error) for i in items if i.error] == [(str(tmp_path / "music" / "loop"), loop_error)]
    result = cli("--format", "jsonl", tmp_path)
    assert result.returncode == 1
    assert f"audiotag: {tmp_path / 'music' / 'loop'}: {loop_error}\n" in result.stderr.decode()
    assert [r["path"] for r in records_of(result.stdout.decode()) if "tags" in r] == [str(tmp_path / "music" / "m.wav")]


def test_two_links_to_one_directory_are_not_a_loop_and_it_is_walked_once(tmp_path):
    (tmp_path / "target").mkdir()
    shutil.copy(AUDIO / "music.wav", tmp_path / "target" / "m.wav")
    for link in ("l1", "l2"):
        os.symlink(tmp_path / "target", tmp_path / link)
    items = list(inputs.expand([str(tmp_path)]))
    assert [(i.name, i.error) for i in items] == [(str(tmp_path / "l1" / "m.wav"), None)]  # first name in order


def test_a_tree_of_links_is_not_walked_exponentially(tmp_path):
    """17 levels, each with two links to the next: every name walked would be 65,536 inputs."""
    levels = [tmp_path / f"d{i}" for i in range(17)]
    for level in levels:
        level.mkdir()
    for upper, lower in zip(levels, levels[1:]):
        for link in ("x", "y"):
            os.symlink(lower, upper / link)
    shutil.copy(AUDIO / "music.wav", levels[-1] / "m.wav")
    items = list(inputs.expand([str(levels[0])]))
    assert len(items) == 1 and items[0].error is None and items[0].name.endswith("/x" * 16 + "/m.wav")


def test_a_fifo_in_a_directory_is_reported_not_opened(cli, tmp_path):
    shutil.copy(AUDIO / "music.wav", tmp_path / "a.wav")
    os.mkfifo(tmp_path / "b.wav")  # opening it would wait for a writer for ever
    shutil.copy(AUDIO / "speech.wav", tmp_path / "c.wav")
    result = cli("--format", "jsonl", tmp_path, timeout=120)
    assert result.returncode == 1
    records = records_of(result.stdout.decode())
    assert [r["path"] for r in records] == [str(tmp_path / n) for n in ("a.wav", "b.wav", "c.wav")]
    assert records[1]["error"] == "not a regular file (a FIFO, socket or device)"
    assert "tags" in records[0] and "tags" in records[2]


def test_jobs_do_not_change_results_or_order(cli, corpus):
    one = cli("--jobs", 1, "-k", 5, corpus)
    two = cli("--jobs", 2, "--threads", 1, "-k", 5, corpus)
    assert one.returncode == two.returncode == 0, one.stderr
    assert one.stdout == two.stdout
    records = records_of(one.stdout.decode())
    assert [r["path"] for r in records] == [item.name for item in inputs.expand([str(corpus)])]
    assert "24 inputs: 24 ok, 0 failed" in one.stderr.decode()


def test_files_from_a_list_file(cli, corpus, tmp_path):
    files = audio_files(corpus)[:5]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files[:3]) + "\n\n" + "\n".join(files[3:]) + "\n")
    result = cli("--files-from", listing)
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in records_of(result.stdout.decode())] == files


@pytest.mark.parametrize("listers", ["0", "2"])
def test_files_from_stdin_starts_before_the_list_ends(cli, corpus, listers):
    """With lister processes too (AUDIOTAG_LISTERS=2: a large server): a list is never read ahead of its turn
    (reading ahead for WARC files to hand out waited for the crawler's next line before tagging this one)."""
    files = audio_files(corpus)
    process = cli.popen("--files-from", "-", "--format", "jsonl", env={"AUDIOTAG_LISTERS": listers})
    try:
        process.stdin.write((files[0] + "\n").encode())
        process.stdin.flush()
        first = json.loads(readline_within(process.stdout))  # answered while the list is still open
        assert first["path"] == files[0] and process.poll() is None
        process.stdin.write((files[1] + "\n").encode())
        process.stdin.close()
        rest = records_of(process.stdout.read().decode())
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert [r["path"] for r in rest] == [files[1]]


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_table_formats_parse(cli, corpus, fmt, delimiter):
    bad = corpus.parent / "bad.wav"
    bad.write_bytes(b"RIFFjunk")
    result = cli("--format", fmt, "-k", 3, audio_files(corpus)[0], bad)
    assert result.returncode == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout.decode()), delimiter=delimiter))
    assert [r["rank"] for r in rows] == ["1", "2", "3", ""]
    assert rows[0]["path"] == audio_files(corpus)[0] and float(rows[0]["score"]) > 0
    assert rows[-1]["path"] == str(bad) and rows[-1]["error"].startswith("cannot decode")


def test_output_file_and_embeddings(cli, corpus, tmp_path, tagger):
    out = tmp_path / "tags.jsonl"
    embeddings = tmp_path / "emb"
    result = cli("-o", out, "--embeddings", embeddings, corpus)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""  # -o takes the results
    records = records_of(out.read_text())
    assert len(records) == 24
    first = records[0]["path"]
    saved = np.load(str(embeddings) + os.path.abspath(first) + ".npy") if os.path.isabs(first) else None
    expected = tagger.predict(decode.load(first)).embedding
    assert saved is not None and saved.shape == expected.shape and saved.dtype == np.float32
    np.testing.assert_allclose(saved, expected, atol=1e-5)


def test_embedding_files_never_collide(cli, tmp_path):
    """Names that an earlier mapping folded together, and a name as long as the file system allows."""
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    names = ["a..b.wav", "a__b.wav", "%2E%2E.wav", "sub/x.wav", "x" * 247 + ".wav"]
    for name in names:
        shutil.copy(AUDIO / "music.wav", clips / name)
    assert cli.workdir == tmp_path  # relative paths below are relative to it
    result = cli("-o", "out.jsonl", "--embeddings", "emb", "clips", "clips/sub/../a..b.wav")
    assert result.returncode == 0, result.stderr
    records = records_of((tmp_path / "out.jsonl").read_text())
    assert len(records) == 6 and all("tags" in r for r in records)
    saved = sorted(str(p.relative_to(tmp_path / "emb")) for p in (tmp_path / "emb").rglob("*.npy"))
    assert len(saved) == 6 and "clips/sub/%2E%2E/a..b.wav.npy" in saved and "clips/%252E%252E.wav.npy" in saved
    assert not list((tmp_path / "emb").rglob("*.part"))


def test_progress_and_summary_on_stderr(cli, corpus):
    result = cli("--progress", "-o", os.devnull, corpus)
    stderr = result.stderr.decode()
    assert result.returncode == 0
    assert "24/24" in stderr and "errors=0" in stderr
    assert "24 inputs: 24 ok, 0 failed" in stderr and "files/s" in stderr and "realtime" in stderr


def kill_midway(process, paths, out, signal_number, at_least):
    """Feed ``paths`` to a run reading its list on stdin, which stays open: the run waits for more and cannot
    finish before it is killed, however fast it tags. Kill it once ``at_least`` records are out."""
    process.stdin.write("".join(f"{path}\n" for path in paths).encode())
    process.stdin.flush()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") >= at_least:
            break
        time.sleep(0.02)
    process.send_signal(signal_number)
    code = process.wait(timeout=60)
    process.stdin.close()
    return code


@pytest.mark.parametrize("signal_number,code", [(signal.SIGKILL, -9), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_resume_after_a_killed_run(cli, corpus, tmp_path, signal_number, code):
    out = tmp_path / "tags.jsonl"
    files = audio_files(corpus)
    options = ["-o", out, "--jobs", "1"]
    process = cli.popen("--files-from", "-", *options)
    assert kill_midway(process, files[:16], out, signal_number, at_least=4) == code
    done = records_of(out.read_text())
    assert 4 <= len(done) <= 16
    if signal_number == signal.SIGKILL:
        with open(out, "a") as torn:  # what a power cut mid-write can leave
            torn.write('{"path": "half a rec')
    resumed = cli(corpus, *options, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    records = records_of(out.read_text())  # every line parses: the torn tail was cut off
    paths = [r["path"] for r in records]
    assert sorted(paths) == files and len(set(paths)) == len(paths)
    assert paths[:len(done)] == [r["path"] for r in done]
    assert f"{24 - len(done)} inputs" in resumed.stderr.decode()


def _names_whose_digest_ends_in_zero(folder, count):
    """File names in folder whose full path's digest ends in a zero byte (1 name in 256 has one)."""
    names = (f"clip{index}.wav" for index in range(100000))
    return [name for name in names if writer.name_digest(str(folder / name))[-1] == 0][:count]


def test_resume_finds_names_whose_digest_ends_in_zero_bytes(cli, tmp_path):
    """A digest is raw bytes: one ending in 0x00 is still found (numpy's "S16" dropped that byte, so --resume
    tagged such a file again: a flaky CI run)."""
    names = _names_whose_digest_ends_in_zero(tmp_path / "in", 3)
    recorded = writer.RecordedPaths(b"".join(writer.name_digest(str(tmp_path / "in" / n)) for n in names))
    assert all(str(tmp_path / "in" / n) in recorded for n in names)
    assert str(tmp_path / "in" / "other.wav") not in recorded
    (tmp_path / "in").mkdir()
    clip = decode.load(AUDIO / "speech.wav").samples[:32000]
    for name in names:
        soundfile.write(tmp_path / "in" / name, clip, 32000)
    out = tmp_path / "tags.jsonl"
    assert cli(tmp_path / "in", "-o", out).returncode == 0
    again = cli(tmp_path / "in", "-o", out, "--resume")
    assert again.returncode == 0 and "0 inputs" in again.stderr.decode(), again.stderr
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_resume_cuts_a_half_written_table_record(cli, corpus, tmp_path, fmt):
    """A kill can land inside a record's rows: --resume drops that record's rows and tags the input again."""
    files = audio_files(corpus)[:4]
    whole, out = tmp_path / f"whole.{fmt}", tmp_path / f"cut.{fmt}"
    assert cli("-o", whole, "--format", fmt, *files).returncode == 0
    lines = whole.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 4 * 10
    out.write_text("".join(lines[:1 + 2 * 10 + 3]) + lines[1 + 2 * 10 + 3][:7])  # 3 rows and a torn one of the 3rd
    resumed = cli("-o", out, "--format", fmt, "--resume", *files)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 inputs: 2 ok" in resumed.stderr.decode()
    assert out.read_text() == whole.read_text()


def test_a_missing_list_leaves_the_output_alone(cli, corpus, tmp_path):
    out = tmp_path / "tags.jsonl"
    assert cli("-o", out, *audio_files(corpus)[:2]).returncode == 0
    before = out.read_bytes()
    result = cli("-o", out, "--files-from", tmp_path / "no-such-list.txt")
    assert result.returncode == 2 and result.stderr.decode().count("\n") == 1
    assert "no-such-list.txt: no such file or directory" in result.stderr.decode()
    assert out.read_bytes() == before


def test_exit_status_when_some_fail(cli, corpus, tmp_path):
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC" + os.urandom(100))
    result = cli("-o", tmp_path / "out.jsonl", corpus, bad)
    assert result.returncode == 1
    assert "25 inputs: 24 ok, 1 failed" in result.stderr.decode()


def test_pipeline_results_equal_one_by_one(tagger, corpus):
    items = list(inputs.expand([str(corpus)]))
    outcomes = list(pipeline.run(items, decode.open_file, tagger, TagOptions(), jobs=2))
    assert [o.name for o in outcomes] == [i.name for i in items] and all(o.error is None for o in outcomes)
    for index in (0, 5, 23):
        single = tagger.predict(decode.load(items[index].name))
        np.testing.assert_allclose(outcomes[index].prediction.logits, single.logits, atol=1e-5)


def test_an_unforeseen_failure_is_that_inputs_error(tagger, corpus):
    """A decoder raising something nobody planned for (here a RuntimeError) fails its input, not the run."""
    items = list(inputs.expand([str(corpus)]))[:3]

    def open_input(name):
        if name == items[1].name:
            raise RuntimeError("decoder exploded")
        return decode.open_file(name)

    outcomes = list(pipeline.run(items, open_input, tagger, TagOptions(), jobs=2))
    bug = "an internal error of audiotag (please report it, with this input): decoder exploded"
    assert [o.error for o in outcomes] == [None, bug, None]
    assert outcomes[0].prediction is not None and outcomes[2].prediction is not None


class GatedModel:
    """The real model, whose first ``hold`` calls wait for ``gate``: windows submitted meanwhile have to queue."""

    def __init__(self, model, hold: int = 1):
        self.model, self.hold = model, hold
        self.max_batch = model.max_batch
        self.gate = threading.Event()
        self.inside = threading.Semaphore(0)  # released by each held call as it starts waiting
        self.shapes = []  # the shape of every batch, in call order
        self._lock = threading.Lock()

    def run(self, mels):
        with self._lock:
            self.shapes.append(mels.shape)
            held = len(self.shapes) <= self.hold
        if held:
            self.inside.release()
            assert self.gate.wait(timeout=60)
        return self.model.run(mels)


def _batcher_with_gate(tagger, runners=1):
    gated = GatedModel(tagger.model, hold=runners)
    return batching.Batcher(types.SimpleNamespace(model=gated), runners=runners), gated


def _submit_in_thread(batcher, mel):
    futures = []
    thread = threading.Thread(target=lambda: futures.append(batcher.submit(mel)))
    thread.start()
    return thread, futures


def test_windows_waiting_while_the_model_runs_go_in_one_batch(tagger):
    """While one thread is in the model, a burst of windows (from many files at once) queues; they are then run
    in batches of the model's max_batch, with the same answers as one by one."""
    batcher, gated = _batcher_with_gate(tagger)
    size = tagger.model.max_batch
    queued = batching.QUEUED_BATCHES * size
    mels = np.random.default_rng(0).standard_normal((1 + queued, 128, 300)).astype(np.float32)
    first, _ = _submit_in_thread(batcher, mels[0])
    assert gated.inside.acquire(timeout=60)  # that thread now runs the model and holds the only runner's place
    futures = [batcher.submit(mel) for mel in mels[1:]]  # returns at once: the windows wait
    assert not any(future.done() for future in futures)
    gated.gate.set()
    results = [future.result(timeout=60) for future in futures]
    first.join(timeout=60)
    assert [shape[0] for shape in gated.shapes] == [1] + [size] * batching.QUEUED_BATCHES
    assert batcher.windows == 1 + queued and batcher.batches == len(gated.shapes)
    logits, _ = tagger.model.run(mels[1:4])
    np.testing.assert_allclose(np.stack([r[0] for r in results[:3]]), logits, atol=1e-5)


def test_a_submitter_waits_while_the_model_is_far_behind(tagger):
    """One runner, many workers (an accelerator): beyond QUEUED_BATCHES full batches waiting, submit blocks, so
    workers cannot decode a whole corpus ahead of the model into memory."""
    batcher, gated = _batcher_with_gate(tagger)
    mel = np.zeros((128, 300), np.float32)
    first, _ = _submit_in_thread(batcher, mel)
    assert gated.inside.acquire(timeout=60)
    for _ in range(batching.QUEUED_BATCHES * tagger.model.max_batch):
        batcher.submit(mel)  # up to the bound: returns at once
    late, futures = _submit_in_thread(batcher, mel)
    late.join(timeout=0.5)
    assert late.is_alive() and not futures  # blocked in submit
    gated.gate.set()
    late.join(timeout=60)
    assert not late.is_alive() and futures[0].result(timeout=60)[0].shape == (527,)


def test_a_model_that_answers_short_fails_the_batch_instead_of_hanging(tagger):
    short = types.SimpleNamespace(max_batch=4, run=lambda mels: tuple(a[:-1] for a in tagger.model.run(mels)))
    batcher = batching.Batcher(types.SimpleNamespace(model=short))
    future = batcher.submit(np.zeros((128, 300), np.float32))
    with pytest.raises(RuntimeError, match="answered 0 windows of 1"):
        future.result(timeout=60)


def test_windows_of_different_lengths_are_not_mixed(tagger):
    batcher, gated = _batcher_with_gate(tagger)
    first, _ = _submit_in_thread(batcher, np.zeros((128, 400), np.float32))
    assert gated.inside.acquire(timeout=60)
    mels = [np.zeros((128, frames), np.float32) for frames in (100, 200, 100, 200, 300)]
    futures = [batcher.submit(mel) for mel in mels]  # queued together: the batcher must split them by length
    gated.gate.set()
    results = [future.result(timeout=60) for future in futures]
    first.join(timeout=60)
    assert gated.shapes[1:] == [(2, 128, 100), (2, 128, 200), (1, 128, 300)]
    for mel, (logits, _) in zip(mels, results):
        np.testing.assert_allclose(logits, tagger.model.run(mel[None])[0][0], atol=1e-5)


def test_runners_call_the_one_session_side_by_side(tagger):
    """With two runners, two threads are inside the model at once; a third window waits for one of them."""
    batcher, gated = _batcher_with_gate(tagger, runners=2)
    mels = np.random.default_rng(1).standard_normal((3, 128, 300)).astype(np.float32)
    threads = [_submit_in_thread(batcher, mel) for mel in mels[:2]]
    assert gated.inside.acquire(timeout=60) and gated.inside.acquire(timeout=60)  # both are in run() now
    third = batcher.submit(mels[2])
    assert not third.done()
    gated.gate.set()
    for thread, _ in threads:
        thread.join(timeout=60)
    np.testing.assert_allclose(third.result(timeout=60)[0], tagger.model.run(mels[2:])[0][0], atol=1e-5)
    assert batcher.windows == 3 and len(gated.shapes) == 3


def test_a_window_submitted_when_the_model_is_idle_is_run_at_once(tagger):
    """Nobody waits for company: the submitting thread runs its window itself and returns with the result."""
    batcher = batching.Batcher(tagger)
    future = batcher.submit(np.zeros((128, 300), np.float32))
    assert future.done() and batcher.batches == 1


class ThreadRecordingModel:
    """The real model, noting which thread makes each call."""

    def __init__(self, model):
        self.model, self.threads = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def run(self, mels):
        self.threads.append(threading.current_thread().name)
        return self.model.run(mels)


def test_a_lone_long_input_has_its_model_runs_in_the_idle_worker(tagger, tmp_path):
    """One long file, two workers: the one with no input runs the model while the other decodes, so the two
    overlap (as they would with a model thread); the answer is the one-pass answer."""
    music, rate = soundfile.read(str(AUDIO / "music.wav"), dtype="float32")
    path = tmp_path / "long.wav"
    soundfile.write(str(path), np.tile(music, 6), rate)  # 60 s: 11 windows
    decoders = []

    def open_input(name):
        decoders.append(threading.current_thread().name)
        return decode.open_file(name)

    recording = ThreadRecordingModel(tagger.model)
    batcher = batching.Batcher(types.SimpleNamespace(model=recording), runners=2)
    [outcome] = pipeline.run([inputs.Input(str(path))], open_input, tagger, TagOptions(), jobs=2, batcher=batcher)
    assert outcome.error is None and batcher.windows == 11
    assert set(recording.threads) - set(decoders), recording.threads  # not all in the decoding thread
    single = tagger.predict(decode.load(path))
    np.testing.assert_allclose(outcome.prediction.logits, single.logits, atol=1e-5)


class JitteryModel(ThreadRecordingModel):
    """The real model, taking a random few milliseconds longer on each call, so that concurrent calls finish in
    any order."""

    def __init__(self, model):
        super().__init__(model)
        self.random = random.Random(0)

    def run(self, mels):
        time.sleep(self.random.uniform(0, 0.01))
        return super().run(mels)


def test_segments_of_an_input_come_out_in_time_order(tagger, tmp_path):
    music, rate = soundfile.read(str(AUDIO / "music.wav"), dtype="float32")
    path = tmp_path / "long.wav"
    soundfile.write(str(path), np.tile(music, 6), rate)  # 60 s: 11 windows, run by two threads at once
    segments = []
    batcher = batching.Batcher(types.SimpleNamespace(model=JitteryModel(tagger.model)), runners=2)
    options = TagOptions(segments=True)
    for _ in range(3):
        segments.clear()
        [outcome] = pipeline.run([inputs.Input(str(path))], decode.open_file, tagger, options, jobs=2,
                                 on_segment=lambda name, segment: segments.append(segment.start), batcher=batcher)
        assert outcome.error is None and segments == sorted(segments) and len(segments) == 11


def _threads_end():
    deadline = time.monotonic() + 30
    while any(t.name.startswith(("audiotag-worker", "audiotag-feed")) for t in threading.enumerate()):
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.05)


def _counting_opener() -> tuple:
    """(the names opened so far, an open_input that adds to them)."""
    opened = []

    def open_input(name):
        opened.append(name)
        return decode.open_file(name)

    return opened, open_input


def test_closing_the_outcomes_early_stops_the_workers(tagger, corpus):
    """A consumer that stops reading (an exception in the caller) must not leave threads tagging the rest."""
    opened, open_input = _counting_opener()
    items = list(inputs.expand([str(corpus)])) * 100
    outcomes = pipeline.run(items, open_input, tagger, TagOptions(), jobs=2)
    next(outcomes)
    outcomes.close()
    at_close = len(opened)  # how far the workers got depends on the machine; what follows must not
    _threads_end()
    assert at_close < len(items) and len(opened) <= at_close + 2  # at most the input each worker had taken


def test_a_stalled_consumer_holds_the_run_back(tagger, corpus, monkeypatch):
    """Outcomes nobody takes yet (stdout blocked by a slow reader) are bounded, not a whole directory's."""
    monkeypatch.setattr(pipeline, "OUTCOMES_AHEAD", 8)
    opened, open_input = _counting_opener()
    items = list(inputs.expand([str(corpus)])) * 10
    outcomes = pipeline.run(items, open_input, tagger, TagOptions(), jobs=2)
    assert next(outcomes).error is None
    seen, deadline = -1, time.monotonic() + 30
    while len(opened) != seen and time.monotonic() < deadline:  # until the workers stop for want of room
        seen = len(opened)
        time.sleep(1)
    assert len(opened) <= 1 + 8 + 1  # the one taken, those waiting to be taken, the one the feed holds
    assert [outcome.error for outcome in outcomes] == [None] * (len(items) - 1)  # and the run goes on
    _threads_end()


def test_batches_are_small_on_the_cpu_and_large_on_an_accelerator(tagger):
    """Each window in a batch holds ~15 MB of activations: on the CPU, where larger batches are no faster per
    window, 4 keeps a backlog from costing hundreds of MB."""
    assert Model.max_batch.fget(types.SimpleNamespace(providers=["CPUExecutionProvider"])) == 4
    gpu = types.SimpleNamespace(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert Model.max_batch.fget(gpu) == 16


def test_the_model_runs_in_one_thread_per_worker_only_on_a_one_thread_cpu_session():
    cpu = types.SimpleNamespace(providers=["CPUExecutionProvider"], threads=1)
    assert batching.model_runners(cpu, jobs=4) == 4
    assert batching.model_runners(types.SimpleNamespace(providers=["CPUExecutionProvider"], threads=0), 4) == 1
    gpu = types.SimpleNamespace(providers=["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1)
    assert batching.model_runners(gpu, jobs=4) == 1


def test_verbose_names_the_provider(cli):
    result = cli("-v", "--provider", "cpu", AUDIO / "music.wav")
    assert result.returncode == 0, result.stderr
    assert "execution providers: CPUExecutionProvider" in result.stderr.decode()


def test_text_and_a_progress_bar_by_default_on_a_terminal(cli):
    """On a terminal: "SCORE  LABEL" text on stdout, tqdm's bar (files, files/s, errors) on stderr."""
    main, terminal = os.openpty()
    process = subprocess.Popen([*cli.command, AUDIO / "music.wav", AUDIO / "speech.wav"], stdin=subprocess.DEVNULL,
                               stdout=terminal, stderr=terminal, env=cli.environment(), cwd=cli.workdir)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the program has closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert process.wait(timeout=120) == 0
    text = shown.decode()
    assert f"== {AUDIO / 'music.wav'}" in text and "0.598  Music" in text
    assert "2/2" in text and "file/s" in text and "errors=0" in text
    assert "\n0.598  Music" in text  # the bar stepped aside: the result starts its own line


def test_the_progress_bar_knows_the_total_and_a_single_input_has_none(cli, corpus, tmp_path):
    """A directory or a list file: done/total, percent and the time left, once a second walk has counted them.
    One input shows no bar (its result is its progress). A list in a pipe is never read twice."""
    result = cli("--progress", "-o", os.devnull, corpus)
    bar = result.stderr.decode().replace("\r", "\n")
    assert "100%" in bar and "24/24" in bar and "errors=0" in bar, bar
    listing = tmp_path / "list.txt"
    files = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in (".wav", ".ogg", ".mp3", ".flac"))[:5]
    listing.write_text("".join(f"{path}\n" for path in files))
    bar = cli("--progress", "-o", os.devnull, "--files-from", listing).stderr.decode().replace("\r", "\n")
    assert "5/5" in bar and "100%" in bar, bar
    piped = cli("--progress", "--files-from", "-", stdin=listing.read_bytes())
    assert len(piped.stdout.decode().splitlines()) == 5 and "5file" in piped.stderr.decode().replace(" ", "")
    single = cli("--progress", AUDIO / "music.wav")
    assert single.returncode == 0 and "file/s" not in single.stderr.decode() and "%" not in single.stderr.decode()


def test_the_progress_bars_count_does_not_decompress_archives_a_second_time(cli, archives_tree, tmp_path):
    """The bar's total came from a second walk that listed every archive again: a .warc.gz or .tar.gz decompressed
    whole a second time beside the tagging (a run in tmux has a bar). A plain tar's or zip's members are counted
    (their headers, their index); with a compressed archive the bar has no total."""
    import tarfile

    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copyfile(archives_tree / "d.zip", plain / "d.zip")
    with tarfile.open(plain / "e.tar", "w") as tar:
        tar.add(AUDIO / "speech.wav", "speech.wav")
    bar = cli("--progress", "--open-archives", "-o", os.devnull, plain).stderr.decode().replace("\r", "\n")
    assert "4/4" in bar and "100%" in bar, bar
    bar = cli("--progress", "--open-archives", "-o", os.devnull, archives_tree).stderr.decode().replace("\r", "\n")
    assert "25/" not in bar and "%" not in bar and "25file" in bar.replace(" ", ""), bar


def test_the_command_line_starts_openblas_without_its_thread_pool():
    """audiotag runs its own worker threads, so OpenBLAS's pool (a thread per core, spinning at start) only costs
    CPU: the command line asks for one thread before numpy loads. Loading it loaded numpy first, so the setting
    came too late in the supervisor and in --in-process runs. A fresh process that loads the command line, as the
    entry point does, has no thread but its own (unless the user set OPENBLAS_NUM_THREADS)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("OpenBLAS starts no pool on one core")
    environment = {key: value for key, value in os.environ.items() if key != "OPENBLAS_NUM_THREADS"}
    count = "import os, audiotag.cli, numpy; print(len(os.listdir('/proc/self/task')), numpy.__name__)"
    started = subprocess.run([sys.executable, "-c", count], capture_output=True, text=True, env=environment)
    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["1", "numpy"]
    chosen = subprocess.run([sys.executable, "-c", count], capture_output=True, text=True,
                            env={**environment, "OPENBLAS_NUM_THREADS": "2"})
    assert chosen.stdout.split() == ["2", "numpy"]


def test_the_command_line_reuses_freed_memory_for_the_next_input():
    """glibc gave every block of a few MB back to the system when it was freed, so each input touched fresh pages
    (700 page faults per 10 s clip, a tenth of a batch's CPU). Once the command line has started (as the worker and
    ``serve`` start too), a 6 MB array made again after it was freed touches pages already there. A user's own
    malloc settings are left alone."""
    touch = ("import resource, sys, numpy\n"
             "from audiotag import cli\n"
             "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "def make():\n    numpy.ones(3 << 18)\n"  # 6 MB: a few decoded blocks' worth
             "make()\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "make(); make()\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    environment["NUMPY_MADVISE_HUGEPAGE"] = "0"  # a fresh 6 MB array in huge pages is 3 faults: counts would vary
    tuned = subprocess.run([sys.executable, "-c", touch], capture_output=True, text=True, env=environment)
    assert tuned.returncode == 0, tuned.stderr
    assert int(tuned.stdout.split()[-1]) < 100  # none fresh (glibc's own thresholds: ~500, huge pages included)
    chosen = subprocess.run([sys.executable, "-c", touch], capture_output=True, text=True,
                            env={**environment, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    assert int(chosen.stdout.split()[-1]) > 300  # the user's threshold: every array mapped afresh (~1,000)


def test_jobs_default_to_the_cores_the_process_may_use(tmp_path):
    """--jobs defaults to the cores this process may run on, not the host's: a CPU affinity (taskset, a cpuset)
    and a cgroup CPU quota (docker --cpus, a Kubernetes limit) each cap it; a quota of "max" or -1 is none."""
    from audiotag.options import usable_cores

    script = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from audiotag import options; "
              "print(options.ENGINE_OPTIONS['jobs'][1]['default'], options.usable_cores())")
    assert subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.split() == ["1", "1"]
    cores = len(os.sched_getaffinity(0))
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    v2.mkdir()
    for text, expected in (("50000 100000", 1), ("max 100000", cores), (f"{cores * 300000} 100000", cores)):
        (v2 / "cpu.max").write_text(text + "\n")
        assert usable_cores(str(v2)) == expected, text
    for quota, expected in (("50000", 1), ("-1", cores)):
        (v1 / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
        (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
        assert usable_cores(str(v1)) == expected, quota
    assert usable_cores(str(tmp_path / "none")) == cores

    from audiotag.options import _cgroup_quota  # a quota set on a cgroup above this process's holds too

    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "pods" / "pod1").mkdir(parents=True)
    (v2 / "pods" / "cpu.max").write_text("150000 100000\n")
    (v2 / "pods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(str(v2), "/pods/pod1") == 1.5 and _cgroup_quota(str(v2), "/") is None


def test_the_watcher_holds_a_bounded_number_of_inputs_and_carried_bytes_ahead():
    """The worker may run up to 1,024 inputs past a slow one, but the watcher holds those it has read (for a rerun
    after a crash): their carried bytes (a tar.gz member's, up to 2 MB each) stay under the bound, a larger input
    alone, and a stop frees a feeder that waits for room."""
    from audiotag.batch import supervisor

    def carrying(size):
        return types.SimpleNamespace(member=types.SimpleNamespace(data=bytes(size)))

    ahead = supervisor._Ahead(carried=10)
    first, second = carrying(6), carrying(6)
    ahead.take(first)
    ahead.take(carrying(0))  # names carry nothing
    late = threading.Thread(target=ahead.take, args=(second,), daemon=True)
    late.start()
    late.join(0.5)
    assert late.is_alive()  # 6 + 6 > 10: it waits for room
    ahead.give_back(first)
    late.join(30)
    assert not late.is_alive()
    alone = supervisor._Ahead(carried=10)
    alone.take(carrying(50))  # larger than the bound, and nothing else held: taken
    stopped = threading.Thread(target=alone.take, args=(carrying(1),), daemon=True)
    stopped.start()
    stopped.join(0.5)
    assert stopped.is_alive()
    alone.stop()
    stopped.join(30)
    assert not stopped.is_alive()
    counted = supervisor._Ahead(carried=10)
    for _ in range(supervisor.OUTCOMES_AHEAD):
        counted.take(object())
    full = threading.Thread(target=counted.take, args=(object(),), daemon=True)
    full.start()
    full.join(0.5)
    assert full.is_alive()  # at most OUTCOMES_AHEAD inputs, whatever they carry
    counted.give_back(object())
    full.join(30)
    assert not full.is_alive()


@pytest.fixture(scope="module")
def archives_tree(tmp_path_factory):
    """A folder of archives, as a crawler's disk holds them: two .warc.gz (one with a damaged member), a .tar.gz
    of 8 WAV members (small: carried with their listing), a zip, a WAV and a folder with another .warc.gz."""
    import tarfile
    import zipfile

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    root = tmp_path_factory.mktemp("archives")
    clips = [AUDIO / "music.wav", AUDIO / "speech.wav", AUDIO / "typing.wav"]

    def warc(path, count):
        with open(path, "wb") as file:
            writer = WARCWriter(file, gzip=True)
            for index in range(count):
                writer.write_record(writer.create_warc_record(
                    f"http://example.org/{index}.wav", "response",
                    payload=io.BytesIO(clips[index % 3].read_bytes()[:200_000]),
                    http_headers=StatusAndHeaders("200 OK", [("Content-Type", "audio/wav")], protocol="HTTP/1.1")))

    warc(root / "a.warc.gz", 5)
    warc(root / "b.warc.gz", 4)
    damaged = bytearray((root / "b.warc.gz").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (root / "b.warc.gz").write_bytes(damaged)
    with tarfile.open(root / "c.tar.gz", "w:gz") as tar:
        for index in range(8):
            tar.add(clips[index % 3], f"{index:06d}.wav")
    with zipfile.ZipFile(root / "d.zip", "w") as packed:
        for index in range(3):
            packed.write(clips[index], f"{index}.wav")
    shutil.copyfile(clips[0], root / "e.wav")
    (root / "f").mkdir()
    warc(root / "f" / "g.warc.gz", 3)
    return root
