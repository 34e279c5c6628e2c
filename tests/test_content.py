"""Content hashes and duplicates (issue 20, item 2): --hash gives each record the sha256 of the input's bytes (file
or stdin, JSON and CSV/TSV); --dedup tags each distinct content once, a later copy's record being the first copy's
with "duplicate_of", without decoding it, across --resume and with --workers."""

import csv
import hashlib
import io
import json
import shutil
import subprocess

import pytest
from conftest import AUDIO

from audiotag.batch.content import Contents, DigestTable
from audiotag.batch.inputs import Input

# A decoder crash in the worker only: the parent (which hashes) opens every file too, so the suite's crash library
# (tests/test_robustness.py) would end the run there. Here a worker that opens a path holding CRASHME dies: a
# duplicate so named proves it was never decoded.
WORKER_CRASH_LIBRARY = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static int in_worker(void) {
    char buffer[4096]; int fd = syscall(SYS_openat, AT_FDCWD, "/proc/self/cmdline", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buffer, sizeof buffer - 1); close(fd);
    for (ssize_t i = 0; i < n; i++) if (!buffer[i]) buffer[i] = ' ';
    buffer[n > 0 ? n : 0] = 0;
    return strstr(buffer, "--_supervised-worker") != NULL;
}
static void check(const char *path) { if (path && strstr(path, "CRASHME") && in_worker()) raise(SIGSEGV); }
#define WRAPAT(name) int name(int d, const char *p, int f, ...) { static int (*real)(int, const char *, int, ...); \
    if (!real) real = dlsym(RTLD_NEXT, #name); check(p); va_list a; va_start(a, f); int m = va_arg(a, int); \
    va_end(a); return real(d, p, f, m); }
#define WRAP(name) int name(const char *p, int f, ...) { static int (*real)(const char *, int, ...); \
    if (!real) real = dlsym(RTLD_NEXT, #name); check(p); va_list a; va_start(a, f); int m = va_arg(a, int); \
    va_end(a); return real(p, f, m); }
WRAP(open) WRAP(open64) WRAPAT(openat) WRAPAT(openat64)
"""
SOURCES = ["music.wav", "speech.wav", "extra/librosa-pibble.ogg", "extra/esc10-babycry-1-60997-B.mp3",
           "extra/sonicpi-loop_amen.flac", "extra/max-rain.wav", "extra/librosa-trumpet.ogg"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def records(result) -> list:
    assert result.returncode in (0, 1), result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


@pytest.fixture(scope="module")
def worker_crash(tmp_path_factory):
    directory = tmp_path_factory.mktemp("crash")
    (directory / "crash.c").write_text(WORKER_CRASH_LIBRARY)
    library = directory / "libcrash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(directory / "crash.c"), "-ldl"],
                   check=True)
    return {"LD_PRELOAD": str(library)}


def corpus(root):
    """7 real clips of 4 formats and a file that is no audio, then 30% more: copies under other names, in other
    folders (walked later), two of them named to crash a worker that opens them, and a copy of the bad file."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for index, source in enumerate(SOURCES):
        shutil.copy(AUDIO / source, root / "a" / f"{index}-{source.split('/')[-1]}")
    (root / "a" / "page.mp3").write_bytes(b"<html>not found</html>" * 40)
    shutil.copy(AUDIO / SOURCES[0], root / "b" / "CRASHME-music-copy.wav")
    shutil.copy(AUDIO / SOURCES[0], root / "b" / "music-again.wav")
    shutil.copy(AUDIO / SOURCES[2], root / "b" / "dog-CRASHME.ogg")
    shutil.copy(root / "a" / "page.mp3", root / "b" / "page-copy.mp3")
    return root


def test_hash_is_the_sha256_of_the_bytes_in_every_format(cli, tmp_path):
    root = corpus(tmp_path / "corpus")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    plain = {r["path"]: r for r in records(cli(root, "-f", "jsonl"))}
    hashed = records(cli(root, "-f", "jsonl", "--hash"))
    assert [r["path"] for r in hashed] == [str(p) for p in files]
    for rec, path in zip(hashed, files):
        assert list(rec)[:2] == ["path", "sha256"] and rec["sha256"] == sha256(path), path
        assert {k: v for k, v in rec.items() if k != "sha256"} == plain[str(path)]  # nothing else changes
    assert any("error" in rec for rec in hashed)  # a file that is no audio still has its hash
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        header, *rows = csv.reader(io.StringIO(cli(root, "-f", fmt, "--hash", "-k", 1).stdout.decode()),
                                   delimiter=delimiter)
        assert header[-3:] == ["sha256", "duplicate_of", "error"]
        assert {row[0]: row[header.index("sha256")] for row in rows} == {str(p): sha256(p) for p in files}
    # stdin: hashed as it is decoded, then read to its end (a WAV is decoded as it arrives: 1 s of it is read)
    clip = AUDIO / "music.wav"
    [rec] = records(cli("-", "--hash", "--max-duration", 1, "-f", "jsonl", stdin=clip.read_bytes()))
    assert rec["sha256"] == sha256(clip) and rec["truncated"] is True


def test_hash_in_the_api(tagger, tmp_path):
    import audiotag

    clip = AUDIO / SOURCES[3]
    options = audiotag.TagOptions(hash=True)
    with open(clip, "rb") as file:
        for source in (clip, str(clip), clip.read_bytes(), file):
            assert tagger.tag_file(source, options).sha256 == sha256(clip)
    assert tagger.tag_file(clip).sha256 is None
    root = corpus(tmp_path / "corpus")
    got = {r["path"]: r.get("sha256") for r in audiotag.tag_many([root], options)}
    assert got == {str(p): sha256(p) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("workers", [1, 2])
def test_dedup_tags_each_content_once_and_never_decodes_a_copy(cli, tmp_path, worker_crash, workers):
    root = corpus(tmp_path / "corpus")
    out = tmp_path / "out.jsonl"
    args = (root, "-o", out, "--workers", workers, "--jobs", 2)
    control = cli(*args, env=worker_crash)  # without --dedup the copies named CRASHME crash the worker
    crashed = [r["path"] for r in map(json.loads, out.read_text().splitlines()) if "crashed" in r.get("error", "")]
    assert control.returncode == 1 and sorted(crashed) == [str(root / "b" / n) for n in ("CRASHME-music-copy.wav",
                                                                                          "dog-CRASHME.ogg")]
    result = cli(*args, "--dedup", env=worker_crash)
    assert result.returncode == 1, result.stderr.decode()  # page.mp3 is no audio
    assert "12 inputs: 7 ok, 1 failed, 4 duplicates" in result.stderr.decode()
    got = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {r["path"]: r for r in got}
    assert [r["path"] for r in got] == sorted(str(p) for p in root.rglob("*") if p.is_file())
    firsts = {}
    for rec in got:
        assert rec["sha256"] == sha256(root / rec["path"])
        first = firsts.setdefault(rec["sha256"], rec["path"])
        if first == rec["path"]:
            assert "duplicate_of" not in rec
            continue
        assert list(rec)[:3] == ["path", "sha256", "duplicate_of"] and rec["duplicate_of"] == first
        assert {k: v for k, v in rec.items() if k not in ("path", "duplicate_of")} == \
            {k: v for k, v in by_path[first].items() if k != "path"}  # the first copy's tags, or its error
    assert sum("duplicate_of" in rec for rec in got) == 4 and "crashed" not in out.read_text()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_dedup_across_resume_equals_one_run(cli, tmp_path, fmt):
    root = corpus(tmp_path / "corpus")
    whole = tmp_path / f"whole.{fmt}"
    assert cli(root, "-o", whole, "-f", fmt, "--dedup").returncode == 1
    # The first folder, then the whole corpus with --resume: the copies in b/ are of records of the first run.
    parts = tmp_path / f"parts.{fmt}"
    assert cli(root / "a", "-o", parts, "-f", fmt, "--dedup").returncode == 1
    resumed = cli(root, "-o", parts, "-f", fmt, "--dedup", "--resume")
    assert "4 inputs: 0 ok, 0 failed, 4 duplicates" in resumed.stderr.decode()
    assert parts.read_text() == whole.read_text()
    assert "duplicate_of" in whole.read_text() and whole.read_text().count(str(root / "b")) >= 4


def test_dedup_needs_a_results_file(cli, tmp_path):
    for args in ((AUDIO,), (AUDIO, "-o", tmp_path / "out.txt", "-f", "text")):
        result = cli(*args, "--dedup")
        assert result.returncode == 2 and "--dedup needs -o FILE in jsonl, csv or tsv" in result.stderr.decode()
    out = tmp_path / "out.csv"
    assert cli(AUDIO / "music.wav", AUDIO / "speech.wav", "-o", out, "-f", "csv").returncode == 0
    result = cli(AUDIO, "-o", out, "-f", "csv", "--dedup", "--resume")  # a table written without the columns
    assert result.returncode == 2 and "written without --hash (or --dedup)" in result.stderr.decode()


def test_the_digest_table_keeps_8_bytes_and_confirms_on_the_full_hash():
    table = DigestTable(capacity=4)
    digests = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(5000)]
    for n, digest in enumerate(digests):
        table.add(digest, n * 100, n)
    assert len(table) == 5000 and all(table.get(d) == (n * 100, n) for n, d in enumerate(digests))
    assert table.get(hashlib.sha256(b"other").hexdigest()) is None
    assert table.nbytes <= 5000 * 20 * 3  # 20 bytes a slot, at least a third of the slots full
    # Two contents that share their first 8 bytes: the record read back (its full sha256) tells them apart.
    twin = digests[7][:16] + "0" * 48
    written = {(700, 7): {"path": "seven.wav", "sha256": digests[7]}}
    contents = Contents(1, dedup=True, table=table, read_record=lambda offset, length: written[(offset, length)])
    items = [Input("copy-of-seven.wav"), Input("twin.wav")]
    contents._hashed = lambda items: zip(items, [digests[7], twin])  # what hashing the two files would give
    assert [item.name for item in contents.tagged(items)] == ["twin.wav"]  # tagged: not a copy of seven.wav
    [duplicate] = contents.duplicates_before()
    assert (duplicate.name, duplicate.first) == ("copy-of-seven.wav", "seven.wav")
