"""Archives as inputs (issue 20, item 1): tar, tar.gz (WebDataset shards) and zip members are tagged where they lie,
as the same files unpacked are; a member is one input for every guarantee of a batch run: --resume, limits, crash
isolation. Fixtures are built here from ../shared/audio with tarfile, zipfile and ffmpeg."""

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from compare_records import differences
from conftest import AUDIO, CLI_COMMANDS, Cli

# Mixed formats, each under a WebDataset key; the last ones repeat earlier bytes (~30% duplicates).
SOURCES = ["music.wav", "speech.wav", "typing.wav", "extra/esc10-babycry-1-60997-B.mp3", "extra/librosa-robin.ogg",
           "extra/max-birds1.wav", "extra/librosa-trumpet.ogg"]
CONVERTED = {"speech.wav": ".flac", "music.wav": ".m4a"}  # ffmpeg: FLAC and AAC in MP4 as well
ARCHIVES = ("shard.tar", "shard.tar.gz", "shard.zip")


@pytest.fixture
def cli(tmp_path) -> Cli:
    """The package (a frozen binary built before this branch would not know archives)."""
    return Cli(CLI_COMMANDS["python"], tmp_path)


def _records(stdout: bytes) -> list:
    return [json.loads(line) for line in stdout.decode().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """unpacked/: 000000.EXT + 000000.json per key, 10 audio members of 4+ formats, 3 of them duplicates; and the
    same files as shard.tar, shard.tar.gz and shard.zip."""
    top = tmp_path_factory.mktemp("archives")
    unpacked = top / "unpacked"
    unpacked.mkdir()
    for index, source in enumerate(SOURCES):
        name = f"{index:06d}"
        if source in CONVERTED:
            target = unpacked / f"{name}{CONVERTED[source]}"
            subprocess.run(["ffmpeg", "-v", "error", "-i", str(AUDIO / source), str(target)], check=True)
        else:
            shutil.copyfile(AUDIO / source, unpacked / f"{name}{Path(source).suffix}")
        (unpacked / f"{name}.json").write_text(json.dumps({"source": source}))
    for index, copied in enumerate([0, 3, 4], len(SOURCES)):  # duplicates: the same bytes under new keys
        (original,) = unpacked.glob(f"{copied:06d}.[!j]*")
        shutil.copyfile(original, unpacked / f"{index:06d}{original.suffix}")
        (unpacked / f"{index:06d}.json").write_text("{}")
    members = sorted(path.name for path in unpacked.iterdir())
    for name, mode in (("shard.tar", "w"), ("shard.tar.gz", "w:gz")):
        with tarfile.open(top / name, mode) as tar:
            for member in members:
                tar.add(unpacked / member, member)
    with zipfile.ZipFile(top / "shard.zip", "w") as archive:
        for member in members:  # audio stored (read in place), sidecars deflated: both ways are read
            compression = zipfile.ZIP_DEFLATED if member.endswith((".json", ".ogg")) else zipfile.ZIP_STORED
            archive.write(unpacked / member, member, compress_type=compression)
    return top


@pytest.fixture(scope="module")
def unpacked_records(corpus) -> dict:
    """member name -> the record of the same file unpacked (one run, --hash)."""
    run = subprocess.run([*CLI_COMMANDS["python"], str(corpus / "unpacked"), "--hash", "-f", "jsonl"],
                         capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return {Path(r["path"]).name: r for r in _records(run.stdout)}


@pytest.mark.parametrize("archive", ARCHIVES)
def test_an_archive_is_tagged_as_its_files_unpacked(cli, corpus, unpacked_records, archive):
    result = cli(corpus / archive, "--hash", "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    records = _records(result.stdout)
    path = str(corpus / archive)
    assert sorted(r["member"] for r in records) == sorted(unpacked_records)  # every audio member, no sidecar
    for rec in records:
        assert rec["path"] == f"{path}/{rec['member']}" and rec["archive"] == path
        assert rec.get("key") == (rec["member"].split(".")[0] if archive != "shard.zip" else None)
        mine = {k: v for k, v in rec.items() if k not in ("path", "archive", "member", "key")}
        theirs = {k: v for k, v in unpacked_records[rec["member"]].items() if k != "path"}
        assert differences(mine, theirs, 1e-6) == [], rec["member"]  # the sha256 is the member's bytes' too
    assert len({r["codec"] for r in records}) >= 4


def test_duplicate_members_are_tagged_once(cli, corpus, unpacked_records):
    result = cli(corpus / "shard.tar", "--dedup", "-f", "jsonl", "-o", corpus / "dedup.jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (corpus / "dedup.jsonl").read_text().splitlines()]
    copies = {r["member"]: r["duplicate_of"] for r in records if "duplicate_of" in r}
    shard = str(corpus / "shard.tar")
    assert copies == {"000007.m4a": f"{shard}/000000.m4a", "000008.mp3": f"{shard}/000003.mp3",
                      "000009.ogg": f"{shard}/000004.ogg"}
    for rec in records:
        assert rec["path"] == f"{shard}/{rec['member']}" and rec["key"] == rec["member"].split(".")[0]
        theirs = {k: v for k, v in unpacked_records[rec["member"]].items() if k != "path"}
        assert differences({k: v for k, v in rec.items() if k not in ("path", "archive", "member", "key",
                                                                      "duplicate_of")}, theirs, 1e-6) == []


def test_archives_in_a_walk_are_opened_with_open_archives(cli, corpus):
    top = corpus / "walk"
    top.mkdir(exist_ok=True)
    shutil.copyfile(corpus / "shard.tar", top / "a.tar")
    shutil.copyfile(AUDIO / "speech.wav", top / "b.wav")
    plain = _records(cli(top, "-f", "jsonl", "-k", 1).stdout)
    assert [r["path"] for r in plain] == [str(top / "b.wav")]  # an archive in a walk is what it was: not audio
    opened = _records(cli(top, "--open-archives", "-f", "jsonl", "-k", 1).stdout)
    assert len(opened) == 11 and opened[-1]["path"] == str(top / "b.wav")
    assert all(r["path"].startswith(str(top / "a.tar") + "/0000") for r in opened[:-1])
    listed = _records(cli("--files-from", "-", "-f", "jsonl", "-k", 1, stdin=f"{top / 'a.tar'}\n".encode()).stdout)
    assert [r["path"] for r in listed] == [r["path"] for r in opened[:-1]]  # a listed archive is always opened


def test_resume_skips_the_members_already_recorded(cli, corpus):
    out = corpus / "resume.jsonl"
    shard = str(corpus / "shard.tar.gz")
    # A run killed after four members: their records (one marked, to show it is kept, not tagged again).
    first = _records(cli(shard, "-f", "jsonl", "-k", 1).stdout)
    seeded = [dict(r) for r in first[:4]]
    seeded[0]["duration"] = 12345.0
    out.write_text("".join(json.dumps(r) + "\n" for r in seeded) + '{"path": "torn')
    result = cli(shard, "-f", "jsonl", "-k", 1, "-o", out, "--resume")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [r["path"] for r in first]  # each member once, in order
    assert records[0]["duration"] == 12345.0 and records[4:] == first[4:]
    assert b"6 inputs" in result.stderr


def test_a_flac_bomb_member_is_cut_at_max_duration(cli, tmp_path):
    bomb = io.BytesIO()
    with soundfile.SoundFile(bomb, "w", 8000, 1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(60):  # 10 h of silence, about 1 MB
            out.write(np.zeros(8000 * 600, np.int16))
    with tarfile.open(tmp_path / "bomb.tar", "w") as tar:
        for name, data in (("000000.flac", bomb.getvalue()), ("000001.wav", (AUDIO / "speech.wav").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = cli(tmp_path / "bomb.tar", "--max-duration", 30, "-f", "jsonl", "-k", 1)
    assert result.returncode == 0, result.stderr
    cut, speech = _records(result.stdout)
    assert (cut["member"], cut["duration"], cut["truncated"], cut["audio_duration"]) == \
        ("000000.flac", 30.0, True, 36000.0)
    assert speech["member"] == "000001.wav" and speech["tags"][0]["label"] == "Speech"


# A decoder crashing on a member's bytes. A member is not opened by a path of its own (the LD_PRELOAD library of
# test_robustness crashes on a path), so this one crashes a watched worker (a process whose arguments hold the
# worker flag) that reads bytes holding the marker: only the member whose data holds it.
READ_CRASH_LIBRARY = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
static int armed = -1;
static void check(const void *data, ssize_t n) {
    if (armed < 0) {
        char line[8192];
        armed = 0;
        int fd = syscall(SYS_openat, AT_FDCWD, "/proc/self/cmdline", O_RDONLY);
        ssize_t got = fd >= 0 ? syscall(SYS_read, fd, line, sizeof line) : 0;
        if (fd >= 0) close(fd);
        armed = got > 0 && memmem(line, got, "--_supervised-worker", 20) != NULL;
    }
    if (armed && n > 0 && memmem(data, n, "CRASHME-MEMBER", 14)) raise(SIGSEGV);
}
ssize_t read(int fd, void *b, size_t c) {
    static ssize_t (*real)(int, void *, size_t); if (!real) real = dlsym(RTLD_NEXT, "read");
    ssize_t n = real(fd, b, c); check(b, n); return n; }
ssize_t pread(int fd, void *b, size_t c, off_t o) {
    static ssize_t (*real)(int, void *, size_t, off_t); if (!real) real = dlsym(RTLD_NEXT, "pread");
    ssize_t n = real(fd, b, c, o); check(b, n); return n; }
ssize_t pread64(int fd, void *b, size_t c, off_t o) {
    static ssize_t (*real)(int, void *, size_t, off_t); if (!real) real = dlsym(RTLD_NEXT, "pread64");
    ssize_t n = real(fd, b, c, o); check(b, n); return n; }
"""


def test_a_member_that_crashes_the_decoder_fails_alone(cli, tmp_path):
    (tmp_path / "crash.c").write_text(READ_CRASH_LIBRARY)
    library = tmp_path / "libreadcrash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(tmp_path / "crash.c"), "-ldl"],
                   check=True)
    speech = (AUDIO / "speech.wav").read_bytes()
    middle = len(speech) // 2
    poisoned = speech[:middle] + b"CRASHME-MEMBER" + speech[middle + 14:]  # a few samples of noise, as audio
    names = [f"{i:06d}.wav" for i in range(8)]
    with tarfile.open(tmp_path / "crash.tar", "w") as tar:
        for name in names:
            data = poisoned if name == "000003.wav" else speech
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = cli(tmp_path / "crash.tar", "--jobs", 2, "-k", 1, "-f", "jsonl", env={"LD_PRELOAD": str(library)})
    assert result.returncode == 1, result.stderr
    records = _records(result.stdout)
    assert [r["member"] for r in records] == names  # every member once, in order
    failed = [r for r in records if "error" in r]
    assert failed == [{"path": f"{tmp_path / 'crash.tar'}/000003.wav", "archive": str(tmp_path / "crash.tar"),
                       "member": "000003.wav", "key": "000003", "error": "decoder crashed (SIGSEGV)"}]
    assert all(r["tags"][0]["label"] == "Speech" for r in records if "error" not in r)


def test_a_damaged_archive_is_one_line_not_a_traceback(cli, tmp_path, corpus):
    data = (corpus / "shard.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[:len(data) // 2])
    result = cli(tmp_path / "cut.tar.gz", "-f", "jsonl", "-k", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    records = _records(result.stdout)
    assert "error" not in records[0]  # the members before the cut are tagged
    assert records[-1]["path"] == str(tmp_path / "cut.tar.gz")
    assert records[-1]["error"].startswith("cannot read the archive: ")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
