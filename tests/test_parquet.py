"""-f parquet -o DIR (audiotag/batch/parquet.py): rows equal the JSONL records of the same run, a killed run
leaves whole part files up to its last flush, --resume completes it without duplicates, errors are rows.
Run with the package (the single-file binary has no pyarrow: tests/test_binary.py checks its answer)."""

import json
import os
import shutil
import signal
import sys
import tarfile
import time

import pyarrow.parquet as pq
import pytest

from audiotag.batch import parquet
from conftest import AUDIO, Cli, compare_lines

CLIPS = sorted(str(p) for p in [*AUDIO.iterdir(), *(AUDIO / "extra").iterdir()] if p.is_file()
               and p.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"})


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli([sys.executable, "-m", "audiotag"], tmp_path)


@pytest.fixture
def corpus(tmp_path):
    """The shared clips, and a .wav that is not audio (its record is an error)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for clip in CLIPS[:24]:
        shutil.copy(clip, folder / os.path.basename(clip))
    (folder / "not-audio.wav").write_text("<html>a web page saved under an audio name</html>\n")
    return folder


def jsonl(text: str) -> list:
    return [json.loads(line) for line in text.splitlines()]


def test_rows_equal_the_jsonl_records(cli, corpus, tmp_path):
    as_jsonl = cli(corpus, "-o", tmp_path / "tags.jsonl", "--hash", "--events")
    as_parquet = cli(corpus, "-f", "parquet", "-o", tmp_path / "tags", "--hash", "--events",
                     env={"AUDIOTAG_PARQUET_FLUSH": "7"})
    assert as_jsonl.returncode == as_parquet.returncode == 1, as_parquet.stderr  # 1: the input that is not audio
    expected = [r for r in jsonl((tmp_path / "tags.jsonl").read_text()) if "label" not in r]  # clips, not events
    events = {}
    for line in jsonl((tmp_path / "tags.jsonl").read_text()):
        if "label" in line:
            events.setdefault(line.pop("path"), []).append(line)
    for rec in expected:
        if rec["path"] in events:
            rec["events"] = events[rec["path"]]
    rows = parquet.read_records(str(tmp_path / "tags"))
    assert sorted(os.listdir(tmp_path / "tags")) == ["part-00000.parquet", "part-00001.parquet",
                                                     "part-00002.parquet", "part-00003.parquet"]  # 25 rows by 7
    assert len(rows) == len(expected) == 25
    assert any("events" in r for r in rows)
    compare_lines([json.dumps(r) for r in rows], [json.dumps(r) for r in expected])
    for row, rec in zip(rows, expected):
        for got, want in zip(row.get("tags", []), rec.get("tags", [])):
            assert abs(got["score"] - want["score"]) <= 1e-6
    error = next(r for r in rows if r["path"].endswith("not-audio.wav"))
    assert error["error"] and "tags" not in error and len(error["sha256"]) == 64
    table = pq.read_table(tmp_path / "tags")  # one dataset for any Parquet reader
    assert table.num_rows == 25 and table.schema.field("tags").type.value_type.names == ["label", "mid", "index",
                                                                                           "score"]


def test_killed_run_leaves_whole_parts_and_resume_completes_it(cli, corpus, tmp_path):
    out = tmp_path / "tags"
    files = sorted(str(p) for p in corpus.iterdir())
    env = {"AUDIOTAG_PARQUET_FLUSH": "3"}
    process = cli.popen("--files-from", "-", "-f", "parquet", "-o", out, "--jobs", "1", env=env)
    process.stdin.write("".join(f"{name}\n" for name in files[:16]).encode())
    process.stdin.flush()  # stdin stays open: the run waits for more names, so it is killed mid-run
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "part-00002.parquet").exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -9
    process.stdin.close()
    parts = sorted(os.listdir(out))
    assert len(parts) >= 3 and all(parquet.PART.fullmatch(name) for name in parts), parts
    done = parquet.read_records(str(out))
    assert len(done) == 3 * len(parts)  # every flushed group is whole and readable; what waited is lost
    assert [r["path"] for r in done] == files[:len(done)]
    (out / f"part-{len(parts):05d}.parquet.tmp").write_bytes(b"PAR1 a flush cut short")  # a kill mid-write

    resumed = cli(corpus, "-f", "parquet", "-o", out, "--resume", env=env)
    assert resumed.returncode == 1, resumed.stderr  # the input that is not audio
    assert f"{len(files) - len(done)} inputs" in resumed.stderr.decode()
    rows = parquet.read_records(str(out))
    paths = [r["path"] for r in rows]
    assert sorted(paths) == files and len(set(paths)) == len(paths)
    assert rows[:len(done)] == done
    assert not any(name.endswith(".tmp") for name in os.listdir(out))
    assert sorted(os.listdir(out))[:len(parts)] == parts  # the old parts are kept, new ones follow


def test_rows_are_flushed_after_the_seconds_even_while_no_record_comes(cli, corpus, tmp_path):
    out = tmp_path / "tags"
    process = cli.popen("--files-from", "-", "-f", "parquet", "-o", out, env={"AUDIOTAG_PARQUET_FLUSH": "1000,1"})
    process.stdin.write(f"{corpus / os.listdir(corpus)[0]}\n".encode())
    process.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "part-00000.parquet").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stdin.close()
    assert len(parquet.read_records(str(out))) == 1


def test_a_new_run_replaces_the_parts_and_refusals(cli, corpus, tmp_path):
    out = tmp_path / "tags"
    assert cli(corpus, "-f", "parquet", "-o", out, env={"AUDIOTAG_PARQUET_FLUSH": "5"}).returncode == 1
    assert len(os.listdir(out)) == 5
    assert cli(corpus, "-f", "parquet", "-o", out).returncode == 1
    assert os.listdir(out) == ["part-00000.parquet"] and len(parquet.read_records(str(out))) == 25
    for args, words in [(("-f", "parquet"), "-f parquet needs -o DIR"),
                        (("-f", "parquet", "-o", out, "--segments"), "--segments needs jsonl or text output"),
                        (("-f", "parquet", "-o", out, "--dedup"), "--dedup needs -o FILE in jsonl, csv or tsv"),
                        (("-f", "parquet", "-o", tmp_path / "file.txt"), "is a file")]:
        (tmp_path / "file.txt").write_text("x")
        result = cli(corpus, *args)
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr


def test_an_archives_members_keep_their_archive_fields(cli, corpus, tmp_path):
    """A member's record says which archive and member it came from: the rows hold those fields as JSONL does."""
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for number, clip in enumerate(CLIPS[:4]):
            tar.add(clip, arcname=f"{number:06d}{os.path.splitext(clip)[1]}")
    as_jsonl = cli(shard, "-o", tmp_path / "tags.jsonl")
    as_parquet = cli(shard, "-f", "parquet", "-o", tmp_path / "tags")
    assert as_jsonl.returncode == as_parquet.returncode == 0, as_parquet.stderr
    expected = jsonl((tmp_path / "tags.jsonl").read_text())
    rows = parquet.read_records(str(tmp_path / "tags"))
    assert [r["member"] for r in rows] == [r["member"] for r in expected] == [
        f"{n:06d}{os.path.splitext(c)[1]}" for n, c in enumerate(CLIPS[:4])]
    compare_lines([json.dumps(r) for r in rows], [json.dumps(r) for r in expected])
    assert {r["archive"] for r in rows} == {str(shard)} and rows[0]["key"] == "000000"
