"""audiotag-ray on a real Ray cluster of two nodes on 127.0.0.1 (a head and a worker node, each its own raylet):
rows equal the CLI's JSON records, bad files become rows, a re-run tags only what is missing, and a tagging worker
killed mid-run costs no row and doubles none.

Runs the command as a user would (``python -m audiotag.distributed --address ...``); the nodes are started with
``ray.cluster_utils.Cluster``. Ray by default advertises a machine's network address even for a cluster on one
machine: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes its address lookup answer 127.0.0.1, so nothing leaves loopback.
"""

import glob
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None:
    # not a skip: CI installs the extra, and these tests must run there
    raise ImportError("tests/test_distributed.py needs the ray extra: pip install -e '.[ray]' (scripts/build/setup.sh)")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402 -- ray itself is imported by the cluster fixture, after its settings

from audiotag import distributed
from audiotag.batch.inputs import is_audio_name
from conftest import AUDIO, REPO, compare_lines

LOOPBACK = "127.0.0.1"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
TAG_WORKER = "MapWorker(MapBatches(TagBatch))"  # the process title Ray gives a tagging actor
RUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second worker node, one CPU each; yields (address, head raylet pid, worker raylet pid).

    With the default --workers (one per CPU) the tagging actors take every CPU, one on each node: reads and writes
    must still get through, and the second node is sure to tag."""
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)  # inherited by the raylets, hence by every Ray worker process
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, node_ip_address=LOOPBACK, include_dashboard=False, dashboard_agent_listen_port=0))
    try:
        worker = nodes.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        yield nodes.address, _raylet_pid(nodes.head_node), _raylet_pid(worker)
    finally:
        nodes.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Files that cannot be tagged, or only in part."""
    directory = tmp_path_factory.mktemp("bad")
    (directory / "corrupt.wav").write_bytes(b"RIFF" + (4000).to_bytes(4, "little") + b"WAVE" + b"garbage!" * 500)
    (directory / "empty.flac").write_bytes(b"")
    (directory / "truncated.wav").write_bytes((AUDIO / "music.wav").read_bytes()[:50000])  # header promises more
    return directory


@pytest.fixture(scope="module")
def expected(bad_files, tmp_path_factory) -> dict:
    """The CLI's JSON record and embedding for every file under ../shared/audio and the bad files, by path."""
    files = sorted(str(p) for p in [*AUDIO.rglob("*"), *bad_files.iterdir()] if p.is_file() and is_audio_name(p.name))
    embeddings = tmp_path_factory.mktemp("cli-embeddings")
    result = subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", "--embeddings", str(embeddings),
                             *files], capture_output=True, env={**os.environ, **RAY_ENV}, timeout=RUN_TIMEOUT)
    assert result.returncode == 1, result.stderr.decode()  # the bad files
    records = {}
    for line in result.stdout.decode().splitlines():
        rec = json.loads(line)
        npy = embeddings / (rec["path"].lstrip(os.sep) + ".npy")
        records[rec["path"]] = (rec, np.load(npy) if "error" not in rec else None)
    assert sorted(records) == files
    assert sum("error" in rec for rec, _ in records.values()) == 2  # corrupt and empty; truncated is tagged
    return records


def tag(address, *args) -> subprocess.CompletedProcess:
    return subprocess.run(_command(address, *args), capture_output=True, env={**os.environ, **RAY_ENV},
                          timeout=RUN_TIMEOUT)


def rows(output) -> list:
    return pq.read_table(output).to_pylist()


def assert_rows_match(table: list, expected: dict, paths) -> None:
    """One row per file, no more, and each row is the CLI's record (plus its embedding when there is one)."""
    found = [row["path"] for row in table]
    assert len(found) == len(set(found)), "a file has more than one row"
    assert sorted(found) == sorted(paths)
    for row in table:
        rec, embedding = expected[row["path"]]
        assert compare_lines([distributed.record(row)], [rec]) == []  # two processes: scores within 1e-5
        if row["embedding"] is not None or embedding is not None:
            np.testing.assert_allclose(row["embedding"], embedding, rtol=0, atol=1e-5)


def test_rows_equal_cli_records_and_rerun_tags_only_missing_files(cluster, bad_files, expected, tmp_path):
    address = cluster[0]
    output = tmp_path / "tags"
    extra = [path for path in expected if path.startswith(str(AUDIO / "extra") + os.sep)]

    first = tag(address, AUDIO / "extra", "-o", output, "--embeddings")
    assert first.returncode == 0, first.stderr.decode()
    assert_rows_match(rows(output), expected, extra)

    # The whole tree, its subdirectory again (files are counted once) and the bad files: only the new ones run.
    second = tag(address, AUDIO, AUDIO / "extra", bad_files, "-o", output, "--embeddings")
    stderr = second.stderr.decode()
    assert second.returncode == distributed.EXIT_INPUT_FAILED, stderr
    assert f"{len(extra)} of {len(expected)} files are already in" in stderr
    assert f"{len(expected) - len(extra)} files: {len(expected) - len(extra) - 2} ok, 2 failed" in stderr
    assert "Traceback" not in stderr
    assert_rows_match(rows(output), expected, expected)

    # A file cut short by a run killed while writing is removed; with every file present, nothing runs. This
    # run goes through the installed `audiotag-ray` command, with the tree as a file:// URI (rows keep plain paths).
    (output / "torn.parquet").write_bytes(b"PAR1 cut short")
    console_script = Path(sys.executable).parent / "audiotag-ray"
    third = subprocess.run([console_script, f"file://{AUDIO}", bad_files, "-o", output, "--address", address],
                           capture_output=True, env={**os.environ, **RAY_ENV}, timeout=RUN_TIMEOUT)
    stderr = third.stderr.decode()
    assert third.returncode == 0, stderr
    assert "removing an incomplete file" in stderr and f"all {len(expected)} files are already in" in stderr
    assert not (output / "torn.parquet").exists()
    assert_rows_match(rows(output), expected, expected)


def test_worker_killed_mid_run_loses_and_doubles_nothing(cluster, expected, tmp_path):
    """SIGKILL the tagging worker on the second node while it runs a batch, after some rows are written and
    before the run ends. Ray restarts the actor and runs its unfinished batches again; the output must still
    hold every file exactly once, each row equal to the CLI's record."""
    address, _, worker_raylet = cluster
    output = tmp_path / "tags"
    paths = [path for path in expected if path.startswith(str(AUDIO) + os.sep)]
    driver = subprocess.Popen(_command(address, AUDIO, "-o", output, "--batch-size", "1",
                                       "--rows-per-file", "2", "--embeddings"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **RAY_ENV})
    killed, files_at_kill = None, 0
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            files_at_kill = len(glob.glob(str(output / "*.parquet")))
            busy = [pid for pid, title in _children(worker_raylet) if title.startswith(f"ray::{TAG_WORKER}.submit")]
            if busy and files_at_kill:
                os.kill(busy[0], signal.SIGKILL)
                killed = busy[0]
            time.sleep(0.02)
        assert killed is not None, "the run ended before a tagging worker on the second node could be killed"
        still_running = driver.poll() is None
        _, stderr = driver.communicate(timeout=RUN_TIMEOUT)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    stderr = stderr.decode()
    assert still_running and 0 < files_at_kill, "the kill did not land mid-run"
    assert driver.returncode == 0, stderr
    assert killed not in [pid for pid, _ in _children(worker_raylet)]
    assert f"{len(paths)} files: {len(paths)} ok, 0 failed" in stderr
    assert_rows_match(rows(output), expected, paths)


def test_bad_command_lines_are_one_line_errors(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "audiotag.distributed", tmp_path / "nope", "-o", tmp_path / "o"],
                             capture_output=True, timeout=60)
    assert missing.returncode == distributed.EXIT_USAGE
    assert missing.stderr.decode().splitlines() == [f"audiotag-ray: {tmp_path / 'nope'}: no such file or directory"]
    (tmp_path / "notes.txt").write_text("no audio")
    empty = subprocess.run([sys.executable, "-m", "audiotag.distributed", tmp_path, "-o", tmp_path / "o"],
                           capture_output=True, timeout=60)
    assert empty.returncode == distributed.EXIT_USAGE
    assert "no audio files" in empty.stderr.decode()
    no_model = subprocess.run([sys.executable, "-m", "audiotag.distributed", AUDIO / "music.wav", "-o", tmp_path / "o",
                               "--model", tmp_path / "none.onnx"], capture_output=True, timeout=60)
    assert no_model.returncode == distributed.EXIT_MODEL
    assert no_model.stderr.decode().startswith(f"audiotag-ray: cannot load model {tmp_path / 'none.onnx'}")
    assert len(no_model.stderr.decode().splitlines()) == 1  # checked before Ray starts: no worker tracebacks


def test_cli_and_package_never_import_ray():
    """The frozen binary must not carry Ray: nothing the CLI loads may import it, or this module."""
    code = ("import sys, audiotag, audiotag.cli, audiotag.infer.tagger, audiotag.batch.pipeline, "
            "audiotag.batch.inputs; "
            "audiotag.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow') "
            "or m == 'audiotag.distributed'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **RAY_ENV},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # and `audiotag-ray --help` answers without loading Ray
    help_code = ("import sys; from audiotag import distributed; distributed.build_parser().format_help(); "
                 "print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", help_code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def _command(address, *args) -> list:
    return [sys.executable, "-m", "audiotag.distributed", *map(str, args), "--address", address]


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _children(parent: int) -> list:
    """(pid, process title) of the processes whose parent is ``parent`` (Ray's workers are its raylet's children)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as file:
                ppid = int(file.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(stat[:-4] + "cmdline", "rb") as file:
                title = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # the process ended while being looked at
        found.append((int(stat.split("/")[2]), title))
    return found


def test_any_failure_on_one_file_is_a_row_not_a_failed_task(monkeypatch):
    """Called as Ray calls it, on a pyarrow batch: a decoder raising something unforeseen gives that file an error
    row (a failed task would be retried by Ray for ever), and the batch's other files are tagged."""
    import pyarrow as pa

    from audiotag import decode

    good = (AUDIO / "music.wav").read_bytes()
    real_load_bytes = decode.load_bytes

    def load_bytes(data):
        if data == b"odd":
            raise RuntimeError("boom")
        return real_load_bytes(data)

    monkeypatch.setattr(decode, "load_bytes", load_bytes)
    batch = pa.table({"path": ["a.wav", "odd.wav", "b.wav"], "bytes": [good, b"odd", good]})
    rows = distributed.TagBatch()(batch).to_pylist()
    bug = "an internal error of audiotag (please report it, with this input): boom"
    assert [row["error"] for row in rows] == [None, bug, None]
    assert rows[0]["tags"][0]["label"] == "Music" and rows[2]["tags"] == rows[0]["tags"]


def test_rows_carry_the_options_and_fields_of_the_cli(tmp_path):
    """Called as Ray calls it: with --threshold, --aggregate and --events, a row is the CLI's record for the same
    options (categories included), and its events column holds the CLI's event records."""
    import pyarrow as pa

    from audiotag import TagOptions

    path = AUDIO / "extra" / "librosa-pibble.ogg"
    cli = subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", "-t", "0.2", "--aggregate", "mean",
                          "--events", str(path)], capture_output=True, timeout=RUN_TIMEOUT)
    assert cli.returncode == 0, cli.stderr.decode()
    *events, rec = [json.loads(line) for line in cli.stdout.decode().splitlines()]
    options = TagOptions(threshold=0.2, aggregate="mean", events=True)
    batch = pa.table({"path": [str(path)], "bytes": [path.read_bytes()]})
    row, = distributed.TagBatch(options)(batch).to_pylist()
    assert len(rec["categories"]) == 7 and events
    assert compare_lines([distributed.record(row)], [rec]) == []  # two processes: scores within 1e-5
    assert compare_lines(distributed.event_records(row), events) == []


def test_bad_options_are_one_line_usage_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "audiotag.distributed", AUDIO / "music.wav", "-o", tmp_path / "o",
                             "--window", "0.5"], capture_output=True, timeout=60)
    assert result.returncode == distributed.EXIT_USAGE
    assert result.stderr.decode().splitlines() == [
        "audiotag-ray: window must be 0 (the whole clip in one pass) or 1 to 86400 s, got 0.5"]


def test_label_control_reaches_the_actors(tmp_path):
    """--only, --exclude and --labels are audiotag's: an unknown name is refused by the driver, one line and exit 2,
    before Ray starts; the options given reach the tagging actors (``TagBatch``), whose rows are the CLI's."""
    clip = AUDIO / "music.wav"
    result = subprocess.run([sys.executable, "-m", "audiotag.distributed", clip, "-o", tmp_path / "o",
                             "--only", "Musik"], capture_output=True, timeout=60)
    assert (result.returncode, result.stderr.decode().splitlines()) == (
        distributed.EXIT_USAGE, ["audiotag-ray: --only: unknown label 'Musik'; did you mean 'Music'?"])
    label_map = tmp_path / "labels.csv"
    label_map.write_text("strings,Guitar\nstrings,Violin, fiddle\nvoice,Human voice\n")
    for args in (("--labels", label_map), ("--only", "Music", "--exclude", "Guitar", "-k", 20)):
        command_line = distributed.build_parser().parse_args([str(clip), "-o", "o", *map(str, args)])
        options = distributed.tag_options(command_line)
        row = distributed.TagBatch(options).row(str(clip), clip.read_bytes())
        expected = subprocess.run([sys.executable, "-m", "audiotag", clip, "-f", "jsonl", *map(str, args)],
                                  capture_output=True, timeout=60).stdout.decode().splitlines()
        assert compare_lines([distributed.record(row)], expected) == [], args
    assert [tag["label"] for tag in distributed.record(row)["tags"]][:2] == ["Music", "Musical instrument"]


def test_hash_reaches_the_actors():
    """--hash: each row's sha256 is that of the file's bytes (the driver reads nothing; the actor has them)."""
    import hashlib

    clip = AUDIO / "extra" / "librosa-pibble.ogg"
    command_line = distributed.build_parser().parse_args([str(clip), "-o", "o", "--hash"])
    row = distributed.TagBatch(distributed.tag_options(command_line)).row(str(clip), clip.read_bytes())
    assert distributed.record(row)["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert list(distributed.record(row))[:2] == ["path", "sha256"]
    assert distributed.TagBatch().row(str(clip), clip.read_bytes())["sha256"] is None


def _archive_bytes(kind: str, members: dict) -> bytes:
    """A tar.gz, tar.zst or zip holding ``members`` (name -> bytes)."""
    import io
    import tarfile
    import zipfile

    data = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, member in members.items():
                archive.writestr(name, member)
    else:
        with tarfile.open(fileobj=data, mode="w:gz" if kind == "tar.gz" else "w") as archive:
            for name, member in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(member)
                archive.addfile(info, io.BytesIO(member))
    if kind == "tar.zst":
        from backports import zstd

        return zstd.compress(data.getvalue())
    return data.getvalue()


SHARD = {"000000.wav": (AUDIO / "speech.wav").read_bytes(), "000000.json": b'{"caption": "speech"}',
         "000001.ogg": (AUDIO / "extra" / "librosa-pibble.ogg").read_bytes(),
         "000002.wav": b"RIFF" + (4000).to_bytes(4, "little") + b"WAVE" + b"garbage!" * 500,
         "000003.wav": (AUDIO / "music.wav").read_bytes()}


@pytest.mark.parametrize("kind", ["tar.gz", "tar.zst", "zip"])
def test_an_archives_rows_are_the_cli_records_of_its_members(tmp_path, kind):
    """Called as Ray calls it: an archive's bytes give a row per audio member (the JSON sidecar none), each the
    CLI's record of the same archive file (path ARCHIVE/MEMBER, archive, member, key, sha256, the bad member's
    error); an archive cut short gives the rows before the cut and a row naming the archive with the error."""
    import pyarrow as pa
    import pyarrow.fs  # noqa: F401 -- pa.fs

    from audiotag import TagOptions

    archive = tmp_path / f"shard.{kind}"
    archive.write_bytes(_archive_bytes(kind, SHARD))
    cli = subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", "--hash", archive],
                         capture_output=True, timeout=RUN_TIMEOUT)
    assert cli.returncode == 1, cli.stderr.decode()  # the garbage member
    expected = [json.loads(line) for line in cli.stdout.decode().splitlines()]
    assert len(expected) == 4 and sum("error" in rec for rec in expected) == 1
    batch = pa.table({"path": [str(archive)], "bytes": [archive.read_bytes()]})
    found = [distributed.record(row) for row in distributed.TagBatch(TagOptions(hash=True))(batch).to_pylist()]
    assert [list(rec) for rec in found] == [list(rec) for rec in expected]  # the same fields in the same order
    assert compare_lines(found, expected) == []

    # As tag() hands an archive over: a row without bytes, the archive read by the actor from its filesystem as a
    # stream (a zip, whose index comes last, as a random-access file), never read whole; the same rows.
    reads = []

    class Streams:
        def open_input_stream(self, path, compression="detect"):
            assert kind != "zip" and compression is None  # pyarrow's default undoes .gz and .zst by the name
            file = open(path, "rb")  # noqa: SIM115 -- closed by the caller's with block
            real = file.read
            file.read = lambda size=-1: reads.append(size) or real(size)
            file.seekable = lambda: False  # as pyarrow's input streams
            return file

        def open_input_file(self, path):
            assert kind == "zip"
            file = open(path, "rb")  # noqa: SIM115 -- closed by the caller's with block
            real = file.read

            def read(size=-1):  # zipfile reads its end record with read(): what each read gave is counted
                data = real(size)
                reads.append(len(data))
                return data
            file.read = read
            return file

    unread = pa.table({"path": [str(archive)], "bytes": [b""]})
    streamed = distributed.TagBatch(TagOptions(hash=True), filesystem=Streams())(unread).to_pylist()
    assert [distributed.record(row) for row in streamed] == found
    assert 0 < min(reads) and max(reads) <= min(1 << 20, archive.stat().st_size // 2), reads
    # pyarrow's own local filesystem (its input streams undo .gz and .zst by the name unless told not to: a cut
    # .tar.gz was a read failure, a .warc.gz's offsets were of its decompressed bytes)
    local = distributed.TagBatch(TagOptions(hash=True), filesystem=pa.fs.LocalFileSystem())
    assert [distributed.record(row) for row in local(unread).to_pylist()] == found
    if kind != "zip":  # cut short: the CLI's records, not a failed read
        cut = tmp_path / f"cut.{kind}"
        cut.write_bytes(archive.read_bytes()[:archive.stat().st_size * 3 // 4])
        cli_cut = subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", "--hash", cut],
                                 capture_output=True, timeout=RUN_TIMEOUT)
        rows = local(pa.table({"path": [str(cut)], "bytes": [b""]})).to_pylist()
        theirs = [json.loads(line) for line in cli_cut.stdout.decode().splitlines()]
        mine = [distributed.record(row) for row in rows]
        assert [list(rec) for rec in mine] == [list(rec) for rec in theirs] and compare_lines(mine, theirs) == []
    if kind == "zip":  # an empty zip (22 bytes): zipfile seeks before its start (pyarrow: ArrowInvalid)
        (tmp_path / "empty.zip").write_bytes(_archive_bytes("zip", {}))
        rows = local(pa.table({"path": [str(tmp_path / "empty.zip")], "bytes": [b""]})).to_pylist()
        assert [distributed.record(row)["error"] for row in rows] == [
            json.loads(subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", tmp_path / "empty.zip"],
                                      capture_output=True, timeout=RUN_TIMEOUT).stdout)["error"]]

    class Failing(Streams):  # the filesystem fails on the second read: the task fails, no row says "damaged"
        def open_input_stream(self, path, compression="detect"):
            return self._failing(super().open_input_stream(path, compression))

        def open_input_file(self, path):
            return self._failing(super().open_input_file(path))

        def _failing(self, file):
            reader = file.read

            def read(size=-1):
                if len(reads) >= 1:  # the second read
                    raise OSError(5, "Input/output error")
                return reader(size)
            file.read = read
            return file

    reads.clear()
    with pytest.raises(distributed.ReadFailed):
        distributed.TagBatch(TagOptions(hash=True), filesystem=Failing())(unread)

    if kind == "tar.gz":
        cut = archive.read_bytes()[:len(archive.read_bytes()) // 2]
        rows = [distributed.record(row) for row in distributed.TagBatch().rows(str(archive), cut)]
        assert rows[-1]["path"] == str(archive) and rows[-1]["error"].startswith("cannot read the archive: ")
        assert [rec["path"] for rec in rows[:-1]] == [rec["path"] for rec in expected][:len(rows) - 1]
        assert rows[0] == {key: value for key, value in found[0].items() if key != "sha256"}


def test_a_member_an_archive_is_cut_inside_is_the_clis_record_warning_and_all(tmp_path):
    """A tar cut inside its last member: the audio before the cut is tagged with a warning that says why, in the
    row as in the CLI's record (rows had no warning column: the row read as a clean one)."""
    import pyarrow as pa

    from audiotag import TagOptions

    cut = tmp_path / "cut.tar"
    whole = _archive_bytes("tar", {"a.wav": (AUDIO / "speech.wav").read_bytes()})
    cut.write_bytes(whole[:512 + len(whole) // 3])
    cli = subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", cut], capture_output=True,
                         timeout=RUN_TIMEOUT)
    expected = [json.loads(line) for line in cli.stdout.decode().splitlines()]
    assert "warning" in expected[0] and "error" in expected[1], expected
    rows = distributed.TagBatch(TagOptions())(pa.table({"path": [str(cut)], "bytes": [cut.read_bytes()]}))
    found = [distributed.record(row) for row in rows.to_pylist()]
    assert [list(rec) for rec in found] == [list(rec) for rec in expected] and compare_lines(found, expected) == []


def test_archives_are_opened_with_open_archives_and_resumed(cluster, tmp_path):
    """audiotag-ray DIR tags an archive in it only with --open-archives, as audiotag does: a row per member (the
    CLI's records; an archive without audio: one row with its error), and a re-run counts an archive as done by
    the rows that name it as their archive (not by a row of an older run that tagged it as a file)."""
    address = cluster[0]
    corpus, output = tmp_path / "corpus", tmp_path / "tags"
    corpus.mkdir()
    (corpus / "shard.tar.gz").write_bytes(_archive_bytes("tar.gz", SHARD))
    (corpus / "loose.wav").write_bytes(SHARD["000003.wav"])
    with tarfile.open(corpus / "pages.tar", "w") as pages:
        info = tarfile.TarInfo("000001.json")
        info.size = 2
        pages.addfile(info, io.BytesIO(b"{}"))

    first = tag(address, corpus, "-o", output)
    assert first.returncode == 0, first.stderr.decode()
    assert [row["path"] for row in rows(output)] == [str(corpus / "loose.wav")]
    older = pq.read_table(output).to_pylist()[0]  # as a run before archives were opened wrote a shard's row
    older.update(path=str(corpus / "shard.tar.gz"), error="cannot decode: not audio")
    pq.write_table(pa.Table.from_pylist([older], schema=pq.read_schema(next(output.glob("*.parquet")))),
                   output / "older.parquet")

    second = tag(address, corpus, "-o", output, "--open-archives")
    stderr = second.stderr.decode()
    assert second.returncode == distributed.EXIT_INPUT_FAILED, stderr  # the garbage member
    assert "1 of 3 files are already in" in stderr and "2 files (5 rows: an archive has a row per member)" in stderr
    assert f"{corpus / 'shard.tar.gz'}/000002.wav: cannot decode: a damaged or unsupported WAV header" in stderr
    (output / "older.parquet").unlink()
    cli = subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", corpus, "--open-archives"],
                         capture_output=True, timeout=RUN_TIMEOUT)
    expected = [json.loads(line) for line in cli.stdout.decode().splitlines()]
    found = sorted((distributed.record(row) for row in rows(output)), key=lambda rec: rec["path"])
    assert len(found) == 6 and compare_lines(found, sorted(expected, key=lambda rec: rec["path"])) == []
    assert {"path": str(corpus / "pages.tar"), "archive": str(corpus / "pages.tar"),
            "error": "no audio members in this archive (chosen by their names' extensions)"} \
        in found

    third = tag(address, corpus, "-o", output, "--open-archives")
    assert third.returncode == 0 and "all 3 files are already in" in third.stderr.decode()


def test_a_file_named_as_an_archive_is_read_as_its_name_says_as_the_cli_does(tmp_path):
    """A row for bytes that are not what their archive name says is the CLI's record of the same file: a .zip of
    zeros is no zip (its bytes were sniffed as an empty tar: "no audio members"), a zip named .tar is no tar."""
    import pyarrow as pa
    import pyarrow.fs  # noqa: F401 -- pa.fs

    from audiotag import TagOptions

    tar = _archive_bytes("tar", {"a.wav": (AUDIO / "speech.wav").read_bytes()})
    files = {"zeros.zip": bytes(4096), "zeros.warc": bytes(4096), "zeros.warc.gz": bytes(4096),
             "zip.tar": _archive_bytes("zip", {"a.wav": b"RIFF"}), "tar.zip": tar, "tar.warc.gz": tar,
             "noise.tar.gz": np.random.default_rng(5).bytes(3000)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in files]
    cli = subprocess.run([sys.executable, "-m", "audiotag", "--format", "json", *paths], capture_output=True,
                         timeout=RUN_TIMEOUT)
    expected = [json.loads(line) for line in cli.stdout.decode().splitlines()]
    assert [rec["path"] for rec in expected] == paths and all("error" in rec for rec in expected), expected
    batch = distributed.TagBatch(TagOptions())
    held = batch(pa.table({"path": paths, "bytes": list(files.values())})).to_pylist()
    streamed = distributed.TagBatch(TagOptions(), filesystem=pa.fs.LocalFileSystem())(
        pa.table({"path": paths, "bytes": [b""] * len(paths)})).to_pylist()
    for rows in (held, streamed):
        assert [distributed.record(row) for row in rows] == expected
