"""Archives as inputs (issue 20, item 1): tar, tar.gz (WebDataset shards) and zip members are tagged where they lie,
as the same files unpacked are; a member is one input for every guarantee of a batch run: --resume, limits, crash
isolation, --dedup. The fixture is the issue's, built once per session from ../shared/audio with ffmpeg, soundfile,
tarfile and zipfile: a WebDataset shard of 50 members of 7 formats, each beside its JSON sidecar, 15 of them (30%)
the same bytes as an earlier member under another key, one that crashes the decoder and one FLAC bomb; the same
files as a tar.gz, a tar.zst and a zip, and unpacked in a directory."""

import gzip
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from backports import zstd

import audiotag
from compare_records import differences
from conftest import AUDIO, CLI_COMMANDS, REPO, Cli

ARCHIVES = ("shard.tar", "shard.tar.gz", "shard.tar.zst", "shard.zip")
# ffmpeg's encoder per member extension: 7 formats, cycled over the distinct clips.
ENCODERS = {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libvorbis", ".m4a": "aac",
            ".opus": "libopus", ".webm": "libopus"}
MEMBERS, DUPLICATES = 50, 15
CRASH_KEY, BOMB_KEY = "000020", "000033"
MARKER = b"CRASHME-MEMBER"
ARCHIVE_FIELDS = ("path", "archive", "member", "key")


@dataclass(frozen=True)
class Shard:
    top: Path
    audio: list  # the audio members' names, in archive order (000000.flac...)
    copies: dict  # the duplicates: member name -> the name of the first member with its bytes


@pytest.fixture
def cli(tmp_path) -> Cli:
    """The package (a frozen binary built before this branch would not know archives)."""
    return Cli(CLI_COMMANDS["python"], tmp_path)


def _records(stdout: bytes) -> list:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def _flac_bomb() -> bytes:
    """10 hours of 8 kHz silence in about 1 MB of FLAC (the bomb of issue 21)."""
    bomb = io.BytesIO()
    with soundfile.SoundFile(bomb, "w", 8000, 1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(60):
            out.write(np.zeros(8000 * 600, np.int16))
    return bomb.getvalue()


def _crashing_wav() -> bytes:
    """3 s of speech with the crash library's marker over a few samples in its middle: audio all the same."""
    speech = io.BytesIO()
    soundfile.write(speech, soundfile.read(AUDIO / "speech.wav", frames=96000)[0], 32000, format="WAV")
    data = speech.getvalue()
    return data[:len(data) // 2] + MARKER + data[len(data) // 2 + len(MARKER):]


@pytest.fixture(scope="session")
def shard(tmp_path_factory) -> Shard:
    """unpacked/: KEY.EXT + KEY.json for 50 keys, then the same 100 files as shard.tar, .tar.gz, .tar.zst and .zip.
    35 distinct contents (33 clips of 3 s in 7 formats, the crashing WAV, the bomb) and 15 copies of earlier clips,
    each under a new key, at places drawn once (a fixed seed)."""
    top = tmp_path_factory.mktemp("shard")
    unpacked = top / "unpacked"
    unpacked.mkdir()
    sources = sorted(p for p in (AUDIO / "extra").iterdir() if p.suffix != ".csv")[:33]
    rng = random.Random(20)
    duplicate_at = set(rng.sample([k for k in range(5, MEMBERS) if f"{k:06d}" not in (CRASH_KEY, BOMB_KEY)],
                                  DUPLICATES))
    audio, copies, clips = [], {}, []
    encoders = []
    for index in range(MEMBERS):
        key = f"{index:06d}"
        if key == CRASH_KEY:
            name = f"{key}.wav"
            (unpacked / name).write_bytes(_crashing_wav())
        elif key == BOMB_KEY:
            name = f"{key}.flac"
            (unpacked / name).write_bytes(_flac_bomb())
        elif index in duplicate_at:
            first = rng.choice(clips)
            name = key + Path(first).suffix
            copies[name] = first  # copied once every ffmpeg has ended
        else:
            source = sources[len(clips)]
            name = key + list(ENCODERS)[len(clips) % len(ENCODERS)]
            encoders.append(subprocess.Popen(
                ["ffmpeg", "-v", "error", "-t", "3", "-i", str(source), "-vn", "-c:a", ENCODERS[Path(name).suffix],
                 str(unpacked / name)]))
            if len(encoders) >= 2:
                assert encoders.pop(0).wait() == 0
            clips.append(name)
        audio.append(name)
        (unpacked / f"{key}.json").write_text(json.dumps({"key": key, "source": "a crawl"}))
    assert all(encoder.wait() == 0 for encoder in encoders)
    for name in copies:
        shutil.copyfile(unpacked / copies[name], unpacked / name)
    files = sorted(path.name for path in unpacked.iterdir())
    for name, mode in (("shard.tar", "w"), ("shard.tar.gz", "w:gz")):
        with tarfile.open(top / name, mode) as tar:
            for member in files:
                tar.add(unpacked / member, member)
    (top / "shard.tar.zst").write_bytes(zstd.compress((top / "shard.tar").read_bytes()))
    with zipfile.ZipFile(top / "shard.zip", "w") as archive:
        for member in files:  # audio stored (read in place), sidecars and Ogg deflated: both ways are read
            compression = zipfile.ZIP_DEFLATED if member.endswith((".json", ".ogg")) else zipfile.ZIP_STORED
            archive.write(unpacked / member, member, compress_type=compression)
    return Shard(top, audio, copies)


# A decoder crashing on a member's bytes. A member is not opened by a path of its own (the LD_PRELOAD library of
# test_robustness crashes on a path), so this one acts in a watched worker (a process whose arguments hold the
# worker flag) that reads bytes holding the marker: with $READ_CRASH=segv it crashes there, with "hang" it hangs
# for ever (a run to be killed midway). With $READ_LOG it appends "OFFSET COUNT" to that file for each read of a
# worker from a file whose path ends in $READ_LOG_MATCH: which bytes of an archive the workers read.
READ_LIBRARY = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
static int armed = -1;
static void check(int fd, const void *data, ssize_t n, off_t at) {
    if (armed < 0) {
        char line[8192];
        armed = 0;
        int fd = syscall(SYS_openat, AT_FDCWD, "/proc/self/cmdline", O_RDONLY);
        ssize_t got = fd >= 0 ? syscall(SYS_read, fd, line, sizeof line) : 0;
        if (fd >= 0) close(fd);
        armed = got > 0 && memmem(line, got, "--_supervised-worker", 20) != NULL;
    }
    if (!armed || n <= 0) return;
    const char *crash = getenv("READ_CRASH"), *log = getenv("READ_LOG"), *match = getenv("READ_LOG_MATCH");
    if (crash && memmem(data, n, "CRASHME-MEMBER", 14)) {
        if (!strcmp(crash, "hang")) for (;;) pause();
        raise(SIGSEGV);
    }
    if (log && match) {
        char link[64], target[4096], entry[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t length = readlink(link, target, sizeof target - 1);
        size_t tail = strlen(match);
        if (length < (ssize_t)tail || memcmp(target + length - tail, match, tail)) return;
        int out = syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        int size = snprintf(entry, sizeof entry, "%lld %lld\n", (long long)at, (long long)n);
        if (out >= 0) { if (write(out, entry, size) < 0) {} close(out); }
    }
}
ssize_t read(int fd, void *b, size_t c) {
    static ssize_t (*real)(int, void *, size_t); if (!real) real = dlsym(RTLD_NEXT, "read");
    ssize_t n = real(fd, b, c); int e = errno; if (n > 0) check(fd, b, n, lseek(fd, 0, SEEK_CUR) - n); errno = e;
    return n; }
ssize_t pread(int fd, void *b, size_t c, off_t o) {
    static ssize_t (*real)(int, void *, size_t, off_t); if (!real) real = dlsym(RTLD_NEXT, "pread");
    ssize_t n = real(fd, b, c, o); check(fd, b, n, o); return n; }
ssize_t pread64(int fd, void *b, size_t c, off_t o) {
    static ssize_t (*real)(int, void *, size_t, off_t); if (!real) real = dlsym(RTLD_NEXT, "pread64");
    ssize_t n = real(fd, b, c, o); check(fd, b, n, o); return n; }
"""


# A compressed member (a tar.gz's, a deflated zip member) reaches the decoder from zlib, never through a read() of
# its bytes, and a hook on zlib would fire for every later member too (each is decompressed from the stream's
# start): in a watched worker this sitecustomize makes the decoder crash (SIGSEGV) or hang where such a member
# holding the marker is opened, as the library above does for bytes read in place. (A small tar.gz member's bytes
# travel to the worker with its input, archives.CARRIED_MAX: the library above already fires as the worker reads
# them from its pipe, which is where such a member would first meet a fault.)
COMPRESSED_CRASH = """
import os, signal  # the marker is built at run time: a worker reading this file (or its .pyc) must not crash
if b"--_supervised-worker" in open("/proc/self/cmdline", "rb").read() and os.environ.get("READ_CRASH"):
    from audiotag.batch import archives
    opened = archives.open_member
    def open_member(member):
        data = None if member.in_place else member.data or archives._compressed_window(member).read()
        if data and "-".join(["CRASHME", "MEMBER"]).encode() in data:
            while os.environ["READ_CRASH"] == "hang":
                signal.pause()
            os.kill(os.getpid(), signal.SIGSEGV)
        return opened(member)
    archives.open_member = open_member
"""


@pytest.fixture(scope="session")
def harness(tmp_path_factory) -> dict:
    """The environment that arms READ_LIBRARY and COMPRESSED_CRASH (add READ_CRASH or READ_LOG to use them)."""
    directory = tmp_path_factory.mktemp("readcrash")
    (directory / "read.c").write_text(READ_LIBRARY)
    library = directory / "libread.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(directory / "read.c"), "-ldl"],
                   check=True)
    (directory / "sitecustomize.py").write_text(COMPRESSED_CRASH)
    return {"LD_PRELOAD": str(library), "PYTHONPATH": f"{directory}{os.pathsep}{REPO}"}


# Every run on the shard: 2 watched workers, the bomb cut at 30 s (a batch run's default, 2 hours, would decode it
# for minutes).
RUN = ("--workers", 2, "--jobs", 1, "--max-duration", 30, "-f", "jsonl")


@pytest.fixture(scope="session")
def unpacked_records(shard, harness) -> dict:
    """member name -> the record of the same file unpacked (--hash, the crashing decoder armed)."""
    run = Cli(CLI_COMMANDS["python"], shard.top)(shard.top / "unpacked", *RUN, "--hash",
                                                  env={**harness, "READ_CRASH": "segv"})
    assert run.returncode == 1, run.stderr
    return {Path(r["path"]).name: r for r in _records(run.stdout)}


def _without_archive_fields(record: dict, *more) -> dict:
    return {k: v for k, v in record.items() if k not in (*ARCHIVE_FIELDS, *more)}


@pytest.mark.parametrize("archive", ARCHIVES)
def test_a_shard_is_tagged_as_its_files_unpacked(cli, shard, unpacked_records, harness, archive):
    """Every audio member once, in order, no sidecar; each record is the unpacked file's, scores within 1e-6 (the
    sha256 too: a member's bytes); the crashing member fails alone under --workers; the bomb is cut as a file is."""
    result = cli(shard.top / archive, *RUN, "--hash", env={**harness, "READ_CRASH": "segv"})
    assert result.returncode == 1, result.stderr  # the crashing member
    records = _records(result.stdout)
    path = str(shard.top / archive)
    assert [r["member"] for r in records] == shard.audio  # every audio member, in order: no JSON sidecar
    assert sorted(unpacked_records) == sorted(shard.audio)
    for rec in records:
        assert rec["path"] == f"{path}/{rec['member']}" and rec["archive"] == path
        assert rec.get("key") == (rec["member"].split(".")[0] if archive != "shard.zip" else None)
        theirs = {k: v for k, v in unpacked_records[rec["member"]].items() if k != "path"}
        assert differences(_without_archive_fields(rec), theirs, 1e-6) == [], rec["member"]
    failed = [r for r in records if "error" in r]
    assert [(r["member"], r["error"]) for r in failed] == [(f"{CRASH_KEY}.wav", "decoder crashed (SIGSEGV)")]
    assert f"{path}/{CRASH_KEY}.wav: decoder crashed (SIGSEGV)".encode() in result.stderr
    (bomb,) = [r for r in records if r["member"] == f"{BOMB_KEY}.flac"]
    assert (bomb["duration"], bomb["truncated"], bomb["audio_duration"]) == (30.0, True, 36000.0)
    assert {r["codec"] for r in records if "codec" in r} >= {"pcm_s16le", "flac", "mp3", "vorbis", "aac", "opus"}


def _member_spans(archive: Path) -> dict:
    """member name -> (offset, size) of its bytes in a plain tar."""
    with tarfile.open(archive) as tar:
        return {info.name: (info.offset_data, info.size) for info in tar.getmembers()}


def _read_spans(log: Path) -> list:
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("archive", ARCHIVES)
def test_duplicate_members_are_tagged_once_without_being_decoded(cli, shard, unpacked_records, harness, tmp_path,
                                                                 archive):
    """--dedup in a shard: each of the 15 copies gets the first copy's record and "duplicate_of" its path; in the
    plain tar (read in place, by offset) the workers never read a byte of a copy (the read log), and read every
    first copy."""
    log, out = tmp_path / "reads.log", tmp_path / "dedup.jsonl"
    result = cli(shard.top / archive, *RUN, "--dedup", "-o", out,
                 env={**harness, "READ_LOG": str(log), "READ_LOG_MATCH": "/shard.tar"})
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    path = str(shard.top / archive)
    assert [r["member"] for r in records] == shard.audio
    assert {r["member"]: r["duplicate_of"] for r in records if "duplicate_of" in r} == \
        {name: f"{path}/{first}" for name, first in shard.copies.items()}
    for rec in records:
        assert rec["path"] == f"{path}/{rec['member']}"
        assert rec.get("key") == (rec["member"].split(".")[0] if archive != "shard.zip" else None)
        if rec["member"] != f"{CRASH_KEY}.wav":  # crashed in the unpacked run; tagged here
            theirs = {k: v for k, v in unpacked_records[rec["member"]].items() if k != "path"}
            assert differences(_without_archive_fields(rec, "duplicate_of"), theirs, 1e-6) == [], rec["member"]
    if archive == "shard.tar":
        spans, reads = _member_spans(shard.top / archive), _read_spans(log)
        read = {name for name, (start, size) in spans.items()
                if any(at < start + size and start < at + count for at, count in reads)}
        assert read == set(shard.audio) - set(shard.copies)  # every first copy decoded, no copy, no sidecar


def test_resume_after_a_kill_midway_through_a_shard(cli, shard, harness, tmp_path):
    """A run on the tar.gz (--dedup) killed (SIGKILL, workers and all) midway: stuck on member 20, whose decoder
    hangs; --resume tags the members left, each once, after the records written, which are kept as they were; a
    copy whose first copy was recorded before the kill is still a duplicate of it."""
    out, archive = tmp_path / "tags.jsonl", str(shard.top / "shard.tar.gz")
    options = [archive, "--workers", 2, "--jobs", 1, "--max-duration", 30, "-k", 1, "--dedup", "-o", out]
    first = subprocess.Popen([*cli.command, *map(str, options)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=cli.environment({**harness, "READ_CRASH": "hang"}),
                             cwd=cli.workdir, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and out.read_text().count("\n") >= 20):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()
    written = out.read_text()
    assert [json.loads(line)["member"] for line in written.splitlines()] == shard.audio[:20]
    with open(out, "a") as torn:  # what a kill mid-write can leave
        torn.write('{"path": "torn')
    resumed = cli(*options, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert b"30 inputs" in resumed.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert out.read_text().startswith(written)
    assert [r["path"] for r in records] == [f"{archive}/{name}" for name in shard.audio]  # each once, in order
    assert not [r for r in records if "error" in r]
    assert {r["member"]: r["duplicate_of"] for r in records if "duplicate_of" in r} == \
        {name: f"{archive}/{first}" for name, first in shard.copies.items()}
    assert any(shard.audio.index(first) < 20 <= shard.audio.index(name) for name, first in shard.copies.items())


def test_archives_in_a_walk_are_opened_with_open_archives(cli, shard):
    top = shard.top / "walk"
    top.mkdir(exist_ok=True)
    shutil.copyfile(shard.top / "shard.tar", top / "a.tar")
    shutil.copyfile(AUDIO / "speech.wav", top / "b.wav")
    run = ("-f", "jsonl", "-k", 1, "--max-duration", 30)
    plain = _records(cli(top, *run).stdout)
    assert [r["path"] for r in plain] == [str(top / "b.wav")]  # an archive in a walk is what it was: not audio
    opened = _records(cli(top, "--open-archives", *run).stdout)
    assert [r["path"] for r in opened] == [f"{top / 'a.tar'}/{name}" for name in shard.audio] + [str(top / "b.wav")]
    listed = _records(cli("--files-from", "-", *run, stdin=f"{top / 'a.tar'}\n".encode()).stdout)
    assert [r["path"] for r in listed] == [r["path"] for r in opened[:-1]]  # a listed archive is always opened


def test_a_damaged_archive_is_one_line_not_a_traceback(cli, tmp_path, shard):
    data = (shard.top / "shard.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[:len(data) // 2])
    result = cli(tmp_path / "cut.tar.gz", "-f", "jsonl", "-k", 1, "--max-duration", 30)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    records = _records(result.stdout)
    assert "error" not in records[0]  # the members before the cut are tagged
    assert records[-1]["path"] == str(tmp_path / "cut.tar.gz")
    assert records[-1]["error"].startswith("cannot read the archive: ")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_tagged_members_bytes_are_not_kept_until_its_record_is_written(tagger, tmp_path):
    """A finished input may wait behind a slow one before its record is written (outcomes go out in input order):
    what waits must not hold a carried tar.gz member's bytes (archives.CARRIED_MAX), or a slow first input would
    pile up megabytes per member finished meanwhile. Everything reachable from the waiting ``outcome()`` is
    searched for those bytes."""
    import gc
    import types

    from audiotag import TagOptions
    from audiotag.batch import archives, pipeline
    from audiotag.batch.inputs import Input, Opener
    from audiotag.infer.batcher import Batcher, model_runners

    shard = tmp_path / "one.tar.gz"
    with tarfile.open(shard, "w:gz") as tar:
        tar.add(AUDIO / "speech.wav", arcname="000000.wav")
    [(name, member, error)] = archives.members(str(shard), lambda _: True)
    assert error is None and member.data == (AUDIO / "speech.wav").read_bytes()  # carried
    batcher = Batcher(tagger, runners=model_runners(tagger.model, 1))
    outcome = pipeline.start_input(Input(name, member=member), Opener(), tagger, batcher, TagOptions())
    held, seen, todo = member.data, set(), [outcome]
    del member
    stop = (tagger, batcher, held.__class__)
    while todo and len(seen) < 200_000:
        thing = todo.pop()
        if id(thing) in seen or isinstance(thing, (types.ModuleType, type)) or any(thing is s for s in stop):
            continue
        seen.add(id(thing))
        assert thing is not held, "the waiting outcome still holds the member's bytes"
        todo.extend(gc.get_referents(thing))
    assert outcome().prediction.tags[0].label == "Speech"


def test_a_shards_table_has_the_members_archive_and_key(cli, shard, tmp_path):
    """CSV of a shard named in a --files-from list: every row's archive, member and key are its JSON record's."""
    import csv

    listing = tmp_path / "list.txt"
    listing.write_text(f"{shard.top / 'shard.tar'}\n")
    options = ["--files-from", listing, "--max-duration", 30, "-k", 1]
    lines = _records(cli(*options, "-f", "jsonl").stdout)
    table = list(csv.DictReader(io.StringIO(cli(*options, "-f", "csv").stdout.decode())))
    assert [row["path"] for row in table] == [rec["path"] for rec in lines] and len(lines) == len(shard.audio)
    assert [(row["archive"], row["member"], row["key"]) for row in table] == \
        [(rec["archive"], rec["member"], rec["key"]) for rec in lines]
    assert {row["url"] for row in table} == {""} and table[0]["key"] == shard.audio[0].split(".")[0]


def _small_clips(count: int) -> dict:
    """``count`` distinct 2 s WAV clips of real speech: member name -> bytes."""
    speech, rate = soundfile.read(AUDIO / "speech.wav", frames=32000 * 2 + 1000 * count)
    clips = {}
    for index in range(count):
        data = io.BytesIO()
        soundfile.write(data, speech[1000 * index:1000 * index + 64000], rate, format="WAV")
        clips[f"{index:06d}.wav"] = data.getvalue()
    return clips


def _tar_bytes(clips: dict) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, clip in clips.items():
            info = tarfile.TarInfo(name)
            info.size = len(clip)
            tar.addfile(info, io.BytesIO(clip))
    return data.getvalue()


@pytest.mark.parametrize("where", ["tar", "tar.gz", "stdin"])
def test_a_damaged_header_after_the_first_is_an_error_not_the_archives_end(cli, tmp_path, where):
    """tarfile takes a bad header after the first for the end of the archive: a shard damaged midway would end
    early, exit 0, without a word. The members before the damage are tagged, then one error names the header."""
    data = bytearray(_tar_bytes(_small_clips(5)))
    third = 2 * (512 + (len(_small_clips(1)["000000.wav"]) + 511) // 512 * 512)
    assert data[third:third + 10] == b"000002.wav"
    data[third:third + 4] = b"XXXX"  # its checksum no longer holds
    data = bytes(data) if where == "tar" else gzip.compress(bytes(data))
    archive = tmp_path / ("shard.tar" if where == "tar" else "shard.tar.gz")
    archive.write_bytes(data)
    result = cli("-", "-f", "jsonl", "-k", 1, stdin=data) if where == "stdin" else \
        cli(archive, "-f", "jsonl", "-k", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    records = _records(result.stdout)
    assert [rec.get("member") for rec in records[:2]] == ["000000.wav", "000001.wav"]
    assert all("error" not in rec for rec in records[:2]) and len(records) == 3
    name = "-" if where == "stdin" else str(archive)
    assert records[2] == {"path": name, "archive": name,
                          "error": f"cannot read the archive: a damaged tar header at byte {third} (bad checksum)"}


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_an_encrypted_zip_member_is_said_as_such_and_the_others_are_tagged(cli, tmp_path, where):
    clips = _small_clips(2)
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name, clip in clips.items():
            archive.writestr(name, clip, compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(data.getvalue())  # zipfile writes no encryption: the first member's flag is set by hand
    data[data.find(b"PK\x03\x04") + 6] |= 1
    data[data.find(b"PK\x01\x02") + 8] |= 1
    (tmp_path / "crawl.zip").write_bytes(data)
    result = cli("-", "-f", "jsonl", "-k", 1, stdin=bytes(data)) if where == "stdin" else \
        cli(tmp_path / "crawl.zip", "-f", "jsonl", "-k", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    first, second = _records(result.stdout)
    prefix = "-" if where == "stdin" else str(tmp_path / "crawl.zip")
    assert first == {"path": f"{prefix}/000000.wav", "archive": prefix, "member": "000000.wav",
                     "error": "the member is encrypted (audiotag reads no passwords): unpack it and give its path"}
    assert second["member"] == "000001.wav" and "error" not in second


def test_copies_inside_an_archive_on_stdin_are_recorded_as_duplicates(cli, tmp_path):
    """A piped member is hashed only as it is decoded, so --dedup decodes it: its record is still its first
    copy's, with "duplicate_of", as a file's copy's is."""
    clips = _small_clips(2)
    shard = _tar_bytes({"a.wav": clips["000000.wav"], "b.wav": clips["000001.wav"], "c.wav": clips["000000.wav"]})
    result = cli("-", "-f", "jsonl", "-k", 3, "--dedup", "-o", tmp_path / "out.jsonl", stdin=shard)
    assert result.returncode == 0, result.stderr
    first, other, copy = _records((tmp_path / "out.jsonl").read_bytes())
    assert "duplicate_of" not in first and "duplicate_of" not in other
    assert copy["duplicate_of"] == "-/a.wav" and copy["member"] == "c.wav" and copy["key"] == "c"
    assert _without_archive_fields(copy, "duplicate_of") == _without_archive_fields(first)
    assert b"1 duplicates" in result.stderr


@pytest.fixture(scope="session")
def long_members(tmp_path_factory) -> Path:
    """unpacked/: members over CARRIED_MAX, so none is carried whole to its worker: 340 s of a real guitar
    recording (44.1 kHz stereo) as 16-bit WAV (60 MB) and FLAC, and 120 s of it as AAC in M4A (index at its end,
    where ffmpeg writes it), MP3 and Ogg Vorbis; then long.tar.gz and long.zip (every member deflated)."""
    from audiotag.batch import archives

    top = tmp_path_factory.mktemp("long")
    unpacked = top / "unpacked"
    unpacked.mkdir()
    music, rate = soundfile.read(AUDIO / "extra" / "max-guitar.wav", dtype="int16")
    long = np.tile(music, (34, 1))
    soundfile.write(unpacked / "long.wav", long, rate, subtype="PCM_16")
    soundfile.write(unpacked / "long.flac", long, rate)
    for name, codec in (("long.m4a", "aac"), ("long.mp3", "libmp3lame"), ("long.ogg", "libvorbis")):
        subprocess.run(["ffmpeg", "-v", "error", "-t", "120", "-i", str(unpacked / "long.wav"), "-c:a", codec,
                        "-b:a", "192k", str(unpacked / name)], check=True)
    assert all(path.stat().st_size > archives.CARRIED_MAX for path in unpacked.iterdir())
    with tarfile.open(top / "long.tar.gz", "w:gz", compresslevel=1) as out:
        for path in sorted(unpacked.iterdir()):
            out.add(path, path.name)
    with zstd.ZstdFile(top / "long.tar.zst", "w", level=1) as packed, tarfile.open(fileobj=packed, mode="w|") as out:
        for path in sorted(unpacked.iterdir()):
            out.add(path, path.name)
    with zipfile.ZipFile(top / "long.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for path in sorted(unpacked.iterdir()):
            out.write(path, path.name)
    return top


@pytest.mark.parametrize("archive", ["long.tar.gz", "long.tar.zst", "long.zip"])
def test_a_large_compressed_members_record_is_its_files(cli, long_members, archive):
    """A compressed member too large to carry is decompressed as its decoder reads it, seeking included (FFmpeg
    goes to the M4A's index at its end and back): each record is the file's, scores within 1e-6, and cut at 30 s
    it still says how long the audio was (``audio_duration``)."""
    run = ("--max-duration", 30, "-f", "jsonl", "--hash", "-k", 5)
    files = {Path(r["path"]).name: r for r in _records(cli(long_members / "unpacked", *run).stdout)}
    result = cli(long_members / archive, *run)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    records = _records(result.stdout)
    assert sorted(r["member"] for r in records) == sorted(files) and len(files) == 5
    for rec in records:
        theirs = {k: v for k, v in files[rec["member"]].items() if k != "path"}
        assert differences(_without_archive_fields(rec), theirs, 1e-6) == [], rec["member"]
        assert rec["truncated"] and rec["audio_duration"] > 119, rec["member"]


@pytest.mark.parametrize("archive", ["long.tar.gz", "long.zip"])
def test_a_large_compressed_member_is_not_held_whole(long_members, archive):
    """Python's allocations while a 60 MB WAV member and a 24 MB FLAC member are decoded (cut at 30 s) stay a
    fraction of their size (held whole, as before: all of it, and over 1 GB a refusal); the samples are the
    file's."""
    import tracemalloc

    from audiotag import decode
    from audiotag.batch import archives
    from audiotag.decode import limits
    from audiotag.options import Limits

    found = {name.rsplit("/", 1)[1]: member for name, member, _ in archives.members(str(long_members / archive),
                                                                                    bool)}
    for name in ("long.wav", "long.flac"):
        member = found[name]
        assert member.size > 24e6 and not member.in_place and member.data is None, name
        expected = limits.apply(decode.open_file(long_members / "unpacked" / name), Limits(max_duration=30)).read()
        tracemalloc.start()
        try:
            got = limits.apply(archives.open_member(member), Limits(max_duration=30)).read()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.array_equal(got.samples, expected.samples), name
        assert peak < 20e6, (name, peak)  # 30 s at 32 kHz and the blocks in flight


def test_a_compressed_members_damage_is_its_records_warning(cli, long_members, tmp_path):
    """Where a large member's compressed data end (the tar.gz cut inside it), its decoder meets the end of its
    data there: the audio before is tagged, with a warning that says why, then the archive's error. No traceback,
    in a watched worker or in-process. Bytes flipped where zlib does not notice (a stored block) are found by
    gzip's CRC at the archive's end: the archive's error says so."""
    data = (long_members / "long.tar.gz").read_bytes()
    with tarfile.open(long_members / "long.tar.gz") as tar:
        ends = {info.name: info.offset_data + info.size for info in tar.getmembers()}
    assert max(ends, key=ends.get) == "long.wav"  # the last member: the cut falls inside it
    (tmp_path / "cut.tar.gz").write_bytes(data[:int(len(data) * 0.8)])
    for mode in ((), ("--in-process",)):
        result = cli(tmp_path / "cut.tar.gz", "-f", "jsonl", "-k", 1, "--max-duration", 400, *mode)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        records = {r["path"].rsplit("/", 1)[-1]: r for r in _records(result.stdout)}
        rec = records["long.wav"]
        assert 0 < rec["duration"] < 300 and "error" not in rec, rec
        assert rec["warning"] == f"the archive ends inside this member (truncated): tagged the " \
                                 f"{rec['duration']:.1f} s before it"
        assert records["cut.tar.gz"]["error"].startswith("cannot read the archive: ")
    def unnoticed_by_zlib(position: int):  # the shard is made anew each run (its mtimes): a byte whose change
        flipped = bytearray(data)  # zlib does not notice is looked for, not assumed at one place
        flipped[position] ^= 0x55
        try:
            gzip.decompress(bytes(flipped))
        except gzip.BadGzipFile as error:
            return flipped if "CRC check failed" in str(error) else None
        except (zlib.error, EOFError):
            return None
        return None

    flipped = next(f for f in map(unnoticed_by_zlib, range(int(len(data) * 0.8), len(data), 4099)) if f is not None)
    (tmp_path / "flipped.tar.gz").write_bytes(flipped)
    result = cli(tmp_path / "flipped.tar.gz", "-f", "jsonl", "-k", 1, "--max-duration", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    last = _records(result.stdout)[-1]
    assert last["path"] == str(tmp_path / "flipped.tar.gz")
    assert last["error"].startswith("cannot read the archive: its compressed data fail their check (CRC check "
                                    "failed "), last
    assert last["error"].endswith("): the members before it may hold damaged bytes (tagged as they decoded), and "
                                  "any after it could not be read"), last


def test_a_plain_tars_member_cut_short_is_tagged_up_to_the_cut(cli, tmp_path):
    """A plain tar cut inside a member: the audio before the cut is tagged with a warning (in-process it printed
    a traceback per read of libsndfile's, and tagged nothing)."""
    clip = _small_clips(1)["000000.wav"]
    (tmp_path / "cut.tar").write_bytes(_tar_bytes({"a.wav": clip})[:512 + len(clip) // 2])
    for mode in ((), ("--in-process",)):
        result = cli(tmp_path / "cut.tar", "-f", "jsonl", "-k", 1, *mode)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        member, archive = _records(result.stdout)
        assert member["duration"] == pytest.approx(1.0, abs=0.01) and "error" not in member
        assert member["warning"] == "the archive ends inside this member (truncated): tagged the 1.0 s before it"
        assert archive["error"].startswith("cannot read the archive: ")


def test_a_tar_zst_is_read_from_a_file_and_from_stdin_and_its_cut_end_is_one_error(cli, tmp_path):
    """A .tar.zst (zstd: Python 3.11's tarfile lacks it) gives the plain tar's records, named as a file and piped
    (told by its first bytes, no --archive); cut short, the members before the cut are tagged and the cut is said
    in words, one line, not a traceback."""
    clips = _small_clips(6)
    plain, packed = tmp_path / "clips.tar", tmp_path / "clips.tar.zst"
    plain.write_bytes(_tar_bytes(clips))
    packed.write_bytes(zstd.compress(plain.read_bytes()))
    expected = _records(cli(plain, "-f", "jsonl", "--hash").stdout)
    assert [r["member"] for r in expected] == list(clips)
    for source, stdin in ((packed, b""), ("-", packed.read_bytes())):
        result = cli(source, "-f", "jsonl", "--hash", stdin=stdin)
        assert result.returncode == 0, result.stderr
        found = _records(result.stdout)
        assert [r["member"] for r in found] == list(clips), source
        for rec, theirs in zip(found, expected):
            assert differences(_without_archive_fields(rec), _without_archive_fields(theirs), 1e-6) == []
            assert rec["path"] == f"{source}/{rec['member']}" and rec["archive"] == str(source)

    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(packed.read_bytes()[:-2000])  # inside the last member (the first holds a third of the bytes)
    result = cli(cut, "-f", "jsonl")
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    records = _records(result.stdout)
    tagged = [r["member"] for r in records if "error" not in r]
    assert 0 < len(tagged) < len(clips) and tagged == list(clips)[:len(tagged)]
    assert [r for r in records if "error" in r][-1]["error"].startswith("cannot read the archive: ")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.zst"])
def test_a_member_an_archive_on_stdin_is_cut_inside_is_tagged_from_what_came_as_the_files_is(cli, tmp_path, suffix):
    """An archive cut inside a member (a download that stopped): piped, the member is tagged from the bytes that
    came, with the file's warning, and the archive's cut is said in the file's words (on stdin it was an error
    record, "the archive is damaged: unexpected end of data"; a .tar.zst's, in a file too). The records equal
    the named file's."""
    clips = {name: (AUDIO / "extra" / name).read_bytes() for name in ("max-guitar.wav", "max-birds1.wav")}
    plain = _tar_bytes(clips)
    packed = gzip.compress(plain, mtime=0) if suffix == ".tar.gz" else zstd.compress(plain)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(packed[:len(packed) * 3 // 4])  # inside the second member
    named = _records(cli(cut, "-f", "jsonl", "-k", 3).stdout)
    piped = cli("-", "-f", "jsonl", "-k", 3, stdin=cut.read_bytes())
    assert piped.returncode == 1 and b"Traceback" not in piped.stderr, piped.stderr
    records = _records(piped.stdout)
    assert [r.get("member") for r in records] == [r.get("member") for r in named] == [*clips, None]
    assert records[1]["warning"].startswith("the archive ends inside this member (truncated): tagged the ")
    assert 0 < records[1]["duration"] < len(clips["max-birds1.wav"]) / (44100 * 4)
    for mine, theirs in zip(records, named):
        assert differences(_without_archive_fields(mine), _without_archive_fields(theirs), 1e-6) == []
    assert records[-1] == {"path": "-", "archive": "-", "error": "cannot read the archive: it is cut short (truncated)"}
    assert named[-1]["error"] == records[-1]["error"]


def test_a_tar_gz_whose_crc_fails_is_said_damaged_named_piped_and_in_ray_rows(cli, tmp_path):
    """gzip's CRC checks a tar.gz's data at its end: the named file's last record said it failed, but on stdin
    (tarfile's stream mode never checks it, and stopped reading at the tar's end) and in audiotag-ray's rows the
    members were tagged without a word. Now each ends with the archive's error record, as the named file does."""
    import pyarrow as pa

    from audiotag import distributed

    packed = bytearray(gzip.compress(_tar_bytes(_small_clips(2)), mtime=0))
    packed[-8] ^= 0xFF  # the CRC-32 in gzip's trailer: every byte of data still decodes
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(packed)
    named = _records(cli(bad, "-f", "jsonl", "-k", 1).stdout)
    piped = cli("-", "-f", "jsonl", "-k", 1, stdin=bytes(packed))
    assert piped.returncode == 1 and b"Traceback" not in piped.stderr, piped.stderr
    records = _records(piped.stdout)
    assert len(records) == len(named) == 3
    assert named[-1]["error"].startswith("cannot read the archive: its compressed data fail their check (CRC check")
    assert records[-1] == {"path": "-", "archive": "-", "error": named[-1]["error"]}
    rows = distributed.TagBatch()(pa.table({"path": [str(bad)], "bytes": [bytes(packed)]})).to_pylist()
    assert [distributed.record(row) for row in rows][-1] == {"path": str(bad), "archive": str(bad),
                                                            "error": named[-1]["error"]}


@pytest.mark.parametrize("kind", ["tar.gz", "tar.zst"])
def test_a_compressed_tar_cut_in_its_end_marker_is_said_on_stdin_as_named(cli, tmp_path, kind):
    """Its last 4 bytes lost (gzip's length, zstd's checksum): named, the archive's error said it was cut; on
    stdin the run ended clean."""
    plain = _tar_bytes(_small_clips(2))
    packed = (gzip.compress(plain, mtime=0) if kind == "tar.gz" else zstd.compress(plain))[:-4]
    (tmp_path / f"cut.{kind}").write_bytes(packed)
    named = _records(cli(tmp_path / f"cut.{kind}", "-f", "jsonl", "-k", 1).stdout)
    piped = cli("-", "-f", "jsonl", "-k", 1, stdin=packed)
    assert piped.returncode == 1 and b"Traceback" not in piped.stderr, piped.stderr
    assert named[-1]["error"] == "cannot read the archive: it is cut short (truncated)" and len(named) == 3
    assert _records(piped.stdout)[-1] == {"path": "-", "archive": "-", "error": named[-1]["error"]}


@pytest.mark.parametrize("kind", ["tar.gz", "tar.zst"])
def test_a_compressed_tar_failing_its_check_says_so_in_one_wording_named_and_piped(cli, tmp_path, kind):
    """gzip's CRC or zstd's checksum fails at the data's end: the archive's error says what that means for the
    records (gzip's "CRC check failed 0x5467 != 0x5468" alone did not), named and on stdin alike (on stdin it read
    "the archive is damaged: " twice: a member's words wrapped in the archive's)."""
    plain = _tar_bytes(_small_clips(2))
    packed = bytearray(gzip.compress(plain, mtime=0) if kind == "tar.gz" else
                       zstd.compress(plain, options={zstd.CompressionParameter.checksum_flag: 1}))  # as zstd's CLI
    packed[-8 if kind == "tar.gz" else -2] ^= 0x01  # in gzip's CRC-32, in zstd's checksum
    (tmp_path / f"bad.{kind}").write_bytes(packed)
    named = _records(cli(tmp_path / f"bad.{kind}", "-f", "jsonl", "-k", 1).stdout)
    piped = cli("-", "-f", "jsonl", "-k", 1, stdin=bytes(packed))
    assert piped.returncode == 1 and b"Traceback" not in piped.stderr, piped.stderr
    error = named[-1]["error"]
    assert error.startswith("cannot read the archive: its compressed data fail their check (" +
                            ("CRC check failed 0x" if kind == "tar.gz" else "Unable to decompress Zstandard data: "
                             "Restored data doesn't match checksum")), error
    assert error.endswith("): the members before it may hold damaged bytes (tagged as they decoded), and any "
                          "after it could not be read"), error
    assert _records(piped.stdout)[-1] == {"path": "-", "archive": "-", "error": error}


def test_a_member_in_a_tar_zst_frame_failing_its_checksum_has_its_record(cli, tmp_path):
    """A .tar.zst of two zstd frames, the first's checksum changed: its member (read whole by the listing, to
    carry it) was lost without a record, and the archive's error blamed the frame after ("Unknown frame
    descriptor"). Now the member is tagged by its worker, and the archive's error says the check failed."""
    clips = _small_clips(2)
    plain = _tar_bytes(clips)
    split = 512 + -(-len(clips["000000.wav"]) // 512) * 512  # the first member's header and data
    checked = {zstd.CompressionParameter.checksum_flag: 1}
    first = bytearray(zstd.compress(plain[:split], options=checked))
    first[-1] ^= 0x01
    (tmp_path / "frames.tar.zst").write_bytes(bytes(first) + zstd.compress(plain[split:], options=checked))
    result = cli(tmp_path / "frames.tar.zst", "-f", "jsonl", "-k", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    records = _records(result.stdout)
    assert [record.get("member") for record in records] == ["000000.wav", None], records
    assert records[0]["duration"] == 2.0 and "error" not in records[0], records[0]
    assert records[1]["error"] == "cannot read the archive: its compressed data fail their check (Unable to " \
        "decompress Zstandard data: Restored data doesn't match checksum): the members before it may hold damaged " \
        "bytes (tagged as they decoded), and any after it could not be read"


def test_a_zstd_frame_that_only_looks_like_a_dictionary_is_passed_by(cli, tmp_path):
    """A first skippable frame of the dictionary's magic (IIPC's .warc.zst keeps its dictionary so) whose content
    is no usable dictionary (too short; an id of 0): zstd passes such a frame by, and so does audiotag (it ended
    the whole run on a traceback, the other inputs' records lost, and audiotag-ray's rows raised)."""
    from audiotag import distributed

    frames = zstd.compress(_tar_bytes(_small_clips(2)))
    for name, content in (("short", b"\x37\xa4\x30\xec"), ("id0", b"\x37\xa4\x30\xec" + bytes(4) + bytes(300))):
        data = (0x184D2A5D).to_bytes(4, "little") + len(content).to_bytes(4, "little") + content + frames
        archive = tmp_path / f"{name}.tar.zst"
        archive.write_bytes(data)
        result = cli(AUDIO / "speech.wav", archive, "-f", "jsonl", "-k", 1)
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
        assert len(_records(result.stdout)) == 3
        piped = cli("-", "-f", "jsonl", "-k", 1, stdin=data)
        assert piped.returncode == 0 and len(_records(piped.stdout)) == 2, piped.stderr
        rows = distributed.TagBatch().rows(str(archive), data)
        assert len(rows) == 2 and not any(distributed.record(row).get("error") for row in rows)


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg (scripts/build/install_test_tools.sh)")
def test_a_member_cut_short_gives_one_record_named_piped_and_compressed(cli, tmp_path):
    """Each decoder meets a member the archive is cut inside the same way, named or piped, plain or compressed:
    FFmpeg's formats through its own reads too (they saw the archive's end as the member's, without a word). With
    --in-process a piped member is tagged from what came as well (it read to where its decoder stops, not a
    window of the member's size: a FLAC's last frames may differ). A cut inside a header is a cut archive as any
    other."""
    speech = AUDIO / "speech.wav"
    for name, options in (("sp.flac", []), ("sp.m4a", ["-c:a", "aac"]), ("sp.webm", ["-c:a", "libopus"]),
                          ("sp.mp3", ["-c:a", "libmp3lame"])):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "3", "-i", str(speech), *options,
                        str(tmp_path / name)], check=True)  # 40 s: a zstd block (128 kB) or more before the cut
        plain = _tar_bytes({name: (tmp_path / name).read_bytes()})
        for suffix, packed in ((".tar", plain), (".tar.gz", gzip.compress(plain, mtime=0)),
                               (".tar.zst", zstd.compress(plain))):
            cut = tmp_path / f"cut{suffix}"
            cut.write_bytes(packed[:len(packed) * 3 // 4])
            named = cli(cut, "-f", "jsonl", "-k", 3)
            piped = cli("-", "-f", "jsonl", "-k", 3, stdin=cut.read_bytes())
            assert b"Traceback" not in named.stderr + piped.stderr
            records = _records(named.stdout)
            assert _records(piped.stdout.replace(b'"-', f'"{cut}'.encode())) == records, (name, suffix)
            member = records[0]
            assert member.get("error", member.get("warning", "")).startswith(
                "the archive ends inside this member (truncated)"), (name, suffix, member)
            if suffix == ".tar":
                cut_plain, named_plain = cut.read_bytes(), member
        # --in-process, the member streamed to its decoder: what came is tagged too (it was an error), not hashed
        in_process = _records(cli("-", "-f", "jsonl", "-k", 3, "--in-process", "--hash", stdin=cut_plain).stdout)
        streamed = in_process[0]
        assert "sha256" not in streamed and in_process[-1]["error"] == "cannot read the archive: it is cut short " \
            "(truncated)"
        assert ("error" in streamed) == ("error" in named_plain), (streamed, named_plain)  # an M4A's index is last
        if "error" not in streamed:
            assert streamed["warning"].startswith("the archive ends inside this member (truncated): tagged the ")
            assert streamed["tags"][0]["label"] == named_plain["tags"][0]["label"]
            # as far as each went (a FLAC's named window lost its last 10 s block: 20.5 s of 30 s)
            assert abs(streamed["duration"] - named_plain["duration"]) < 0.5, (streamed, named_plain)

    second = _tar_bytes({"a.wav": speech.read_bytes(), "b.wav": speech.read_bytes()})
    start = second.index(b"b.wav")
    for suffix, data in ((".tar", second[:start + 256]), (".tar.gz", gzip.compress(second[:start + 256]))):
        cut = tmp_path / f"header{suffix}"
        cut.write_bytes(data)
        for source, stdin in ((cut, b""), ("-", data)):
            records = _records(cli(source, "-f", "jsonl", "-k", 1, stdin=stdin).stdout)
            assert [r.get("member") for r in records] == ["a.wav", None]
            assert records[-1]["error"] == "cannot read the archive: it is cut short (truncated)", (suffix, source)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_zip_members_are_decoded_through_a_window_never_held_whole(tmp_path, monkeypatch, method):
    """A bzip2 or LZMA zip member (its decompressor cannot be copied) is read through a window as a .tar.zst's is:
    a seek back beyond the kept bytes decompresses the member again from its start. Never held whole; its
    records are the files'."""
    from audiotag.batch import archives

    folder = tmp_path / "files"
    folder.mkdir()
    for name, options in (("long.m4a", ["-c:a", "aac"]), ("long.flac", []), ("long.mp3", ["-c:a", "libmp3lame"])):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "3", "-i",
                        str(AUDIO / "extra" / "max-guitar.wav"), *options, str(folder / name)], check=True)
    packed = tmp_path / "clips.zip"
    with zipfile.ZipFile(packed, "w", method) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)

    def refuse(member):
        raise AssertionError(f"{member.name} was read whole")
    monkeypatch.setattr(archives, "_read_whole", refuse)
    run = dict(isolate=False, jobs=1, max_duration=None, timeout=None)
    expected = list(audiotag.tag_many(sorted(map(str, folder.iterdir())), audiotag.TagOptions(hash=True), **run))
    found = list(audiotag.tag_many([str(packed)], audiotag.TagOptions(hash=True), **run))
    assert [r["member"] for r in found] == [Path(r["path"]).name for r in expected]
    for mine, theirs in zip(found, expected):
        assert "error" not in mine and "warning" not in mine, mine
        assert differences(_without_archive_fields(mine), _without_archive_fields(theirs), 1e-6) == []


def test_a_zips_members_are_read_without_parsing_its_index_again_each(tmp_path, monkeypatch):
    """A zip's central directory is parsed once, when it is listed: parsing it again for each member cost 0.8 s a
    member in a zip of 100k (a day of it). Members stored, deflated, bzip2 and LZMA: the files' records and
    sha256."""
    clips = _small_clips(4)
    packed = tmp_path / "clips.zip"
    methods = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
    with zipfile.ZipFile(packed, "w") as archive:
        for (name, data), method in zip(clips.items(), methods):
            archive.writestr(name, data, compress_type=method)
    folder = tmp_path / "files"
    folder.mkdir()
    for name, data in clips.items():
        (folder / name).write_bytes(data)
    run = dict(isolate=False, jobs=1, max_duration=None, timeout=None)
    expected = list(audiotag.tag_many(sorted(map(str, folder.iterdir())), audiotag.TagOptions(hash=True), **run))
    parsed = []
    listing = zipfile.ZipFile._RealGetContents  # noqa: SLF001 -- what reads the central directory

    def counted(self):
        parsed.append(self.filename)
        return listing(self)
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", counted)
    found = list(audiotag.tag_many([str(packed)], audiotag.TagOptions(hash=True), **run))
    assert parsed == [str(packed)]
    assert sorted(r["member"] for r in found) == [Path(r["path"]).name for r in expected]
    found.sort(key=lambda record: record["member"])
    for mine, theirs in zip(found, expected):
        assert "error" not in mine and "warning" not in mine, mine
        assert mine["sha256"] == theirs["sha256"]
        assert differences(_without_archive_fields(mine), _without_archive_fields(theirs), 1e-6) == []


def test_a_zip_member_whose_crc_or_data_is_bad_is_said_named_piped_and_in_ray_rows(cli, tmp_path):
    """A zip with deflated, stored and LZMA members whose CRC-32 is wrong (their data decode: tagged, with a
    warning saying the archive is damaged there, and no sha256), an LZMA member whose data are damaged (a
    traceback ended the whole run) and a deflated one damaged ("too short: 0.1 ms of audio"): each says the archive
    is damaged there; the intact member is tagged. One rule named (with --hash or not: without, a bad CRC had no
    word, a stored one a sha256), piped (the watched run and --in-process: a bad CRC was an error record) and in
    audiotag-ray's rows (an error row)."""
    import pyarrow as pa

    from audiotag import TagOptions, distributed

    clips = _small_clips(6)
    packed = tmp_path / "bad.zip"
    methods = (zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA, zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_STORED,
               zipfile.ZIP_LZMA)
    with zipfile.ZipFile(packed, "w") as archive:
        for (name, data), method in zip(clips.items(), methods):
            archive.writestr(name, data, compress_type=method)
    data = bytearray(packed.read_bytes())
    with zipfile.ZipFile(packed) as archive:
        infos = archive.infolist()
    for info in (infos[0], infos[3], infos[5]):
        crc = struct.pack("<I", info.CRC)
        for _ in range(2):  # the local header's and the central directory's
            at = data.index(crc)
            data[at:at + 4] = struct.pack("<I", info.CRC ^ 1)
    for info, at in ((infos[1], 20), (infos[2], infos[2].compress_size // 2)):  # the LZMA one near its start
        start = info.header_offset + 30 + len(info.filename) + at
        data[start:start + 64] = bytes(64)
    packed.write_bytes(bytes(data))
    bad_crc = "the archive is damaged inside this member: its bytes fail the zip's CRC-32 check (tagged as they decode)"

    def check(records, hashed):
        assert [r["member"] for r in records] == list(clips)
        for record in (records[0], records[3], records[5]):
            assert record["warning"] == bad_crc, record
            assert "sha256" not in record and record["tags"][0]["label"] == "Speech"
        assert "damaged" in records[1]["error"], records[1]
        assert "damaged" in records[2].get("error", records[2].get("warning")), records[2]
        assert "sha256" not in records[2] and "error" not in records[4] and "warning" not in records[4]
        assert ("sha256" in records[4]) == hashed

    named = {}
    for hashed in (False, True):
        result = cli(packed, *(["--hash"] if hashed else []), "-f", "jsonl", "-k", 1)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        named[hashed] = _records(result.stdout)
        check(named[hashed], hashed)
    assert named[True][1]["error"].startswith("the archive is damaged inside this member ("), named[True][1]
    for extra in ([], ["--in-process"], ["--hash"], ["--in-process", "--hash"]):  # the last: a traceback, once
        piped = _records(cli("-", *extra, "-f", "jsonl", "-k", 1, stdin=bytes(data)).stdout)
        check(piped, "--hash" in extra)
        assert [r.get("warning") for r in piped[::3]] == [r.get("warning") for r in named[False][::3]]
    assert piped[4]["sha256"] == named[True][4]["sha256"]
    for source, extra in ((packed, []), ("-", []), ("-", ["--in-process"])):  # decoding stopped early: still said
        cut = _records(cli(source, "--max-duration", 1, *extra, "-f", "jsonl", "-k", 1, stdin=bytes(data)).stdout)
        assert [r.get("warning") for r in cut[::3]] == [r.get("warning") for r in named[False][::3]], (source, extra)
        assert all(r["truncated"] for r in cut if "error" not in r)
    junk = io.BytesIO()  # a member that fails to decode: its hash is read after zipfile closed it (a traceback, once)
    with zipfile.ZipFile(junk, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("junk.wav", b"not audio " * 100)
        archive.writestr("000000.wav", clips["000000.wav"])
    result = cli("-", "--in-process", "--hash", "-f", "jsonl", "-k", 1, stdin=junk.getvalue())
    assert b"Traceback" not in result.stderr, result.stderr
    assert [("sha256" in r, "error" in r) for r in _records(result.stdout)] == [(True, True), (True, False)]
    for hashed in (False, True):
        table = pa.table({"path": [str(packed)], "bytes": [bytes(data)]})
        rows = distributed.TagBatch(TagOptions(hash=hashed))(table).to_pylist()
        check([distributed.record(row) for row in rows], hashed)


@pytest.mark.parametrize("where", ["before its start", "past its end", "at another member", "with another name flag",
                                   "without a name"])
def test_a_zip_whose_index_points_a_member_elsewhere_is_that_members_error(cli, tmp_path, where):
    """A zip index pointing a member where its own header is not: before the archive (zipfile reads Info-ZIP's
    `zip -fz -fd` so, which unzip refuses: a traceback on stdin and in audiotag-ray, "invalid argument" named),
    past its end (named: a traceback that ended the whole run), at another member (named: tagged from the other's
    bytes; piped: the archive's error, the members after it lost); a local header whose name decodes otherwise
    (named: tagged; piped: an error); a member without a name (a traceback everywhere). Now that member's error
    record, the same named, piped and in Ray rows; the members before and after it are tagged."""
    import pyarrow as pa

    from audiotag import distributed

    clips = _small_clips(3)
    if where == "with another name flag":
        clips = {"é.wav" if name == "000001.wav" else name: data for name, data in clips.items()}
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for name, data in clips.items():
            archive.writestr(zipfile.ZipInfo("") if where == "without a name" and name == "000001.wav" else name,
                             data)
    data = bytearray(packed.getvalue())
    names = [("" if where == "without a name" and name == "000001.wav" else name) for name in clips]
    bad = [names[1]]
    entry = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)  # the second member's entry in the index
    if where == "before its start":  # the end record's offset of the index raised: zipfile shifts every member
        end = data.rindex(b"PK\x05\x06")
        (start,) = struct.unpack("<I", data[end + 16:end + 20])
        data[end + 16:end + 20] = struct.pack("<I", start + 40)
        bad = [names[0]]
    elif where in ("past its end", "at another member"):
        data[entry + 42:entry + 46] = struct.pack("<I", 0xFFFFFFF0 if where == "past its end" else 0)
    elif where == "with another name flag":  # the UTF-8 flag cleared in the member's own header only
        (local,) = struct.unpack("<I", data[entry + 42:entry + 46])
        (flags,) = struct.unpack("<H", data[local + 6:local + 8])
        data[local + 6:local + 8] = struct.pack("<H", flags & ~0x800)
    path = tmp_path / "index.zip"
    path.write_bytes(bytes(data))
    said = {"before its start": "the zip's index places this member outside the archive (a damaged zip64 index)",
            "without a name": "a member without a name (a damaged zip)"}.get(
        where, "this member's own header is not where the zip's index says, or does not match it (a damaged zip)")
    for source in (path, "-"):
        result = cli(source, "-f", "jsonl", "-k", 1, stdin=bytes(data))
        assert b"Traceback" not in result.stderr, result.stderr
        records = _records(result.stdout)
        assert [r["member"] for r in records] == names, records
        assert [r["member"] for r in records if r.get("error") == said] == bad, records
        if where != "before its start":  # every member shifted: the others fail their own way
            assert [r["tags"][0]["label"] for r in records if "error" not in r] == ["Speech", "Speech"]
    rows = distributed.TagBatch()(pa.table({"path": [str(path)], "bytes": [bytes(data)]})).to_pylist()
    assert [row["member"] for row in rows if row["error"] == said] == bad


def test_a_zip64_offset_past_what_a_file_can_hold_is_refused():
    """A zip64 index may say 2**64 - 1: pread and seek fail on it with OverflowError (a traceback everywhere)."""
    from audiotag.batch.archives import zip_member_problem

    info = zipfile.ZipInfo("a.wav")
    for offset, refused in ((0, False), ((1 << 63) - 1, False), (1 << 63, True), (-1, True)):
        info.header_offset = offset
        assert (zip_member_problem(info) is not None) == refused, offset


def test_a_build_without_bzip2_or_lzma_says_so_for_such_zip_members(tmp_path):
    """The single-file binary leaves Python's bz2 and lzma modules out: a zip member compressed so is one line
    saying what to do, not "an internal error of audiotag" (what the binary said). Here the package runs with
    those modules hidden, as the binary is built."""
    clips = _small_clips(2)
    packed = tmp_path / "clips.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        for (name, data), method in zip(clips.items(), (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)):
            archive.writestr(name, data, compress_type=method)
    start = ("import sys; sys.modules['bz2'] = sys.modules['lzma'] = None; from audiotag.cli import main; "
             "sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", start, str(packed), "-f", "jsonl"], capture_output=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    assert [record["error"] for record in _records(result.stdout)] == [
        f"the member is compressed with {name}, which this build of audiotag cannot read (the Python package can): "
        f"unpack it and give its path" for name in ("bzip2", "LZMA")]


@pytest.mark.skipif(not shutil.which("tar"), reason="GNU tar writes sparse members")
def test_a_sparse_member_is_read_with_its_holes_named_and_piped(cli, tmp_path):
    """tar -S leaves a member's runs of zeros out and stores a map: its bytes are not where they lie. Named and
    piped, it is the dense file's record (with its sha256), and the member after it is read (piped, it was read
    past the sparse member's stored bytes into the next one's, and the archive failed after it)."""
    folder = tmp_path / "files"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(AUDIO / "speech.wav"), "-af",
                    "apad=pad_dur=8", str(folder / "dense.wav")], check=True)
    subprocess.run(["cp", "--sparse=always", str(folder / "dense.wav"), str(folder / "holey.wav")], check=True)
    shutil.copy(AUDIO / "music.wav", folder / "music.wav")
    sparse = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--format=gnu", "-S", "-cf", str(sparse), "-C", str(folder), "holey.wav", "music.wav"],
                   check=True)
    with tarfile.open(sparse) as archive:
        assert archive.getmember("holey.wav").issparse()  # the filesystem kept the holes: the case is real
    dense = _records(cli(folder / "holey.wav", folder / "music.wav", "-f", "jsonl", "--hash", "-k", 3).stdout)
    packed = tmp_path / "sparse.tar.gz"
    packed.write_bytes(gzip.compress(sparse.read_bytes()))
    for archive in (sparse, packed):
        for source, stdin in ((archive, b""), ("-", archive.read_bytes())):
            result = cli(source, "-f", "jsonl", "--hash", "-k", 3, stdin=stdin)
            assert result.returncode == 0, result.stderr
            found = _records(result.stdout)
            assert [r["member"] for r in found] == ["holey.wav", "music.wav"]
            for mine, theirs in zip(found, dense):
                assert differences(_without_archive_fields(mine), _without_archive_fields(theirs), 1e-6) == []

    bomb = folder / "bomb.wav"  # 100 GB of holes in a few kB of map: refused, named or piped, without filling them
    shutil.copy(AUDIO / "music.wav", bomb)
    os.truncate(bomb, 100 << 30)
    bombed = tmp_path / "bomb.tar"
    subprocess.run(["tar", "--format=gnu", "-S", "-cf", str(bombed), "-C", str(folder), "bomb.wav", "music.wav"],
                   check=True)
    bomb.unlink()
    for source, stdin in ((bombed, b""), ("-", bombed.read_bytes())):
        result = cli(source, "-f", "jsonl", "-k", 1, stdin=stdin, timeout=60)
        records = _records(result.stdout)
        assert [r["member"] for r in records] == ["bomb.wav", "music.wav"] and "error" not in records[1]
        assert records[0]["error"].startswith("a sparse member (holes, as tar -S writes them) is held whole to be "
                                              "decoded, and this one is 102400 MB with its holes, over 64 MB: ")


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg (scripts/build/install_test_tools.sh)")
def test_large_tar_zst_members_are_decoded_through_a_window_never_held_whole(tmp_path, monkeypatch):
    """A .tar.zst member too large to carry (over 2 MB) is read through a seekable window, as a tar.gz's: its
    first MB kept, a seek back beyond it decompressing the archive again from its start (an MP4 whose index
    comes last seeks to its end and back). Never held whole; its records are the plain tar's."""
    from audiotag.batch import archives, inflate, streams

    source = AUDIO / "extra" / "max-guitar.wav"
    made = {}
    for name, options in (("long.m4a", ["-c:a", "aac", "-b:a", "256k"]), ("long.flac", []),
                          ("long.wav", ["-c:a", "pcm_s16le"])):  # 90 s each: 2.9, 6.5 and 16 MB
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "8", "-i", str(source), *options,
                        str(tmp_path / name)], check=True)
        made[name] = (tmp_path / name).read_bytes()
    made["small.wav"] = source.read_bytes()  # carried: 1.7 MB
    assert all(len(data) > archives.CARRIED_MAX for name, data in made.items() if name != "small.wav")
    plain, packed = tmp_path / "clips.tar", tmp_path / "clips.tar.zst"
    plain.write_bytes(_tar_bytes(made))
    packed.write_bytes(zstd.compress(plain.read_bytes()))

    def refuse(member):
        raise AssertionError(f"{member.name} was read whole")
    monkeypatch.setattr(archives, "_read_whole", refuse)
    restarts = []  # seeks back past what the window keeps: decompressing the archive again from its start
    restore = streams.ZstdStream.restore

    def counted(stream, position):
        if stream.ended or position < stream.position:
            restarts.append(position)
        restore(stream, position)
    monkeypatch.setattr(streams.ZstdStream, "restore", counted)
    run = dict(isolate=False, jobs=1, max_duration=None, timeout=None)
    expected = list(audiotag.tag_many([str(plain)], audiotag.TagOptions(top_k=5, hash=True), **run))
    for kept, restarted in ((inflate.HEAD_KEPT, 0), (1 << 20, 1)):  # the M4A's 2.9 MB kept whole; or its first MB:
        # then the seek back from its index at the end starts the archive again, once
        monkeypatch.setattr(inflate, "HEAD_KEPT", kept)
        restarts.clear()
        found = list(audiotag.tag_many([str(packed)], audiotag.TagOptions(top_k=5, hash=True), **run))
        assert [r["member"] for r in found] == [r["member"] for r in expected] == list(made)
        for mine, theirs in zip(found, expected):
            assert "error" not in mine and "warning" not in mine, mine
            assert differences(_without_archive_fields(mine), _without_archive_fields(theirs), 1e-6) == []
        assert len(restarts) == restarted, kept  # FLAC's seeks back after each block (libsndfile's) fall in the
        # last MB read, kept too


def test_a_tar_zst_behind_a_skippable_frame_is_read_and_a_window_too_large_is_said(cli, tmp_path):
    """zstd's skippable frames (metadata some writers put first) are passed by, in a file and on stdin alike; a
    stream whose window is over what zstd allows by default is one line saying so and what to do, on stdin too
    (it was "not audio" there)."""
    clips = _small_clips(2)
    plain = _tar_bytes(clips)
    for size in (6, 300 << 10):  # a skippable frame that fills all the first bytes stdin is sniffed by, too
        skippable = b"\x5a\x2a\x4d\x18" + size.to_bytes(4, "little") + b"crawl!" * (size // 6)
        packed = tmp_path / "clips.tar.zst"
        packed.write_bytes(skippable + zstd.compress(plain))
        for source, stdin in ((packed, b""), ("-", packed.read_bytes())):
            result = cli(source, "-f", "jsonl", "-k", 1, stdin=stdin)
            assert result.returncode == 0, (size, result.stderr)
            assert [r["member"] for r in _records(result.stdout)] == list(clips)

    wide = tmp_path / "wide.tar.zst"  # a 256 MB window, as zstd --long=28 writes for a stream of unknown size
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 28})
    wide.write_bytes(compressor.compress(plain) + compressor.flush())  # streamed: its size unknown, the window kept
    assert zstd.get_frame_info(wide.read_bytes()).decompressed_size is None
    for source, stdin in ((wide, b""), ("-", wide.read_bytes())):
        result = cli(source, "-f", "jsonl", stdin=stdin)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        assert _records(result.stdout) == [{"path": str(source), "archive": str(source), "error": (
            "cannot read the archive: its zstd frames need a window over 128 MB (compressed with --long above 27), "
            "which audiotag refuses: recompress it with a smaller window (zstd -d --long=31 -c FILE | zstd -o NEW)")}]


@pytest.mark.parametrize("kind", ["zip", "warc"])
def test_a_zip_or_warc_inside_zstd_on_stdin_is_read_as_the_archive(cli, tmp_path, kind):
    """The sniff looks inside zstd for every kind (a WARC or zip compressed whole, as crawl tools store them): the
    records are those of the uncompressed archive on stdin (before: only a tar was read inside zstd, and a WARC
    was "not a WARC file")."""
    clips = _small_clips(2)
    if kind == "zip":
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w") as archive:
            for name, data in clips.items():
                archive.writestr(name, data)
    else:
        from warcio.warcwriter import WARCWriter

        packed = io.BytesIO()
        writer = WARCWriter(packed, gzip=False)
        for name, data in clips.items():
            writer.write_record(writer.create_warc_record(f"http://example.org/{name}", "resource",
                                                          payload=io.BytesIO(data), warc_content_type="audio/wav"))
    plain = _records(cli("-", "-f", "jsonl", "-k", 1, stdin=packed.getvalue()).stdout)
    assert len(plain) == len(clips) and all("error" not in rec for rec in plain)
    result = cli("-", "-f", "jsonl", "-k", 1, stdin=zstd.compress(packed.getvalue()))
    assert result.returncode == 0, result.stderr
    found = _records(result.stdout)
    if kind == "warc":  # a record's id is its own; the offsets are the decompressed stream's, as they are plain
        assert [rec["url"] for rec in found] == [rec["url"] for rec in plain]
    assert [rec["path"] for rec in found] == [rec["path"] for rec in plain]
    assert [rec["tags"] for rec in found] == [rec["tags"] for rec in plain]


@pytest.mark.parametrize("kind", ["tar", "zip", "warc"])
def test_an_archive_without_audio_is_one_error_and_resume_passes_it_by(cli, tmp_path, kind):
    """An archive that holds nothing to tag is said, as a directory without audio is (before: exit 0 and not a
    line), named or piped, and recorded, so that --resume does not open it again."""
    archive = tmp_path / f"pages.{kind}"
    if kind == "tar":
        with tarfile.open(archive, "w") as tar:
            tar.add(Path(__file__), "000001.json")
    elif kind == "zip":
        with zipfile.ZipFile(archive, "w") as packed:
            packed.writestr("000001.json", "{}")
        empty = tmp_path / "empty.zip"  # its end record alone: known as a zip on stdin too
        zipfile.ZipFile(empty, "w").close()
        for source, stdin in ((empty, b""), ("-", empty.read_bytes())):
            assert _records(cli(source, "-f", "jsonl", stdin=stdin).stdout) == [{
                "path": str(source), "archive": str(source),
                "error": "no audio members in this archive (chosen by their names' extensions)"}]
    else:
        from warcio.warcwriter import WARCWriter

        with open(archive, "wb") as file:
            writer = WARCWriter(file, gzip=False)
            writer.write_record(writer.create_warc_record("http://example.org/", "resource", payload=io.BytesIO(
                b"<html>no audio here</html>"), warc_content_type="text/html"))
    said = ("no audio or video records in this WARC (by their Content-Type or first bytes)" if kind == "warc"
            else "no audio members in this archive (chosen by their names' extensions)")
    for source, stdin in ((archive, b""), ("-", archive.read_bytes())):
        result = cli(source, "-f", "jsonl", stdin=stdin)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        assert _records(result.stdout) == [{"path": str(source), "archive": str(source), "error": said}]
        assert result.stderr.decode().count(said) == 1

    output = tmp_path / "tags.jsonl"
    cli(archive, "-o", output)
    written = output.read_bytes()
    again = cli(archive, "-o", output, "--resume")
    assert again.returncode == 0 and said not in again.stderr.decode(), again.stderr
    assert output.read_bytes() == written


def test_an_empty_tar_is_an_empty_archive_on_stdin_and_in_ray_rows(cli, tmp_path):
    """An empty tar (its end blocks of zeros alone: no "ustar" to tell it by), plain, in gzip or in zstd: named, it
    was an empty archive; on stdin "not audio" (a tar.gz "gzip-compressed data, not audio: decompress or unpack
    it first", which audiotag does itself), and an error row in audiotag-ray. Now the named file's words in each.
    A stream of zeros longer than a tar's record is still no archive."""
    import pyarrow as pa

    from audiotag import distributed

    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    plain = empty.getvalue()
    said = "no audio members in this archive (chosen by their names' extensions)"
    for suffix, data in ((".tar", plain), (".tar.gz", gzip.compress(plain)), (".tar.zst", zstd.compress(plain)),
                         (".tar", bytes(1024))):
        path = tmp_path / f"empty{suffix}"
        path.write_bytes(data)
        for source, stdin in ((path, b""), ("-", data)):
            result = cli(source, "-f", "jsonl", stdin=stdin)
            assert _records(result.stdout) == [{"path": str(source), "archive": str(source), "error": said}], \
                (suffix, source, result.stdout)
        rows = distributed.TagBatch()(pa.table({"path": [str(path)], "bytes": [data]})).to_pylist()
        assert [distributed.record(row) for row in rows] == [{"path": str(path), "archive": str(path),
                                                              "error": said}]
    zeros = cli("-", "-f", "jsonl", stdin=bytes(20 * 1024 + 512))
    assert _records(zeros.stdout)[0]["error"].startswith("cannot decode: not audio"), zeros.stdout
    for suffix, data in ((".tar", b""), (".tar.zst", zstd.compress(b"")), (".warc.zst", zstd.compress(b"")),
                         (".zip", b"")):
        path = tmp_path / f"nothing{suffix}"  # no bytes at all: said as an empty WARC or file is (tarfile's
        path.write_bytes(data)  # "empty file" before, where a WARC says "empty: no data")
        for source, stdin in ((path, b""), ("-", data)):
            said = {"path": "-", "error": "empty: no data"} if source == "-" and not data else \
                {"path": str(source), "archive": str(source), "error": "cannot read the archive: empty: no data"}
            assert _records(cli(source, "-f", "jsonl", stdin=stdin).stdout) == [said], (suffix, source)


@pytest.mark.parametrize("archive", ["shard.tar.gz", "shard.tar.zst"])
def test_a_shard_on_stdin_is_tagged_in_watched_workers(cli, shard, unpacked_records, harness, archive):
    """An archive's members on stdin are read whole and carried to the watched workers, as a file's are: the
    member that crashes the decoder fails alone (tagged in-process, it ended the run), every other record is the
    unpacked file's, named -/MEMBER; --hash hashes each before it is tagged."""
    result = cli("-", *RUN, "--hash", stdin=(shard.top / archive).read_bytes(), env={**harness, "READ_CRASH": "segv"})
    assert result.returncode == 1, result.stderr
    records = _records(result.stdout)
    assert [r["member"] for r in records] == shard.audio
    for rec in records:
        assert (rec["path"], rec["archive"]) == (f"-/{rec['member']}", "-")
        theirs = {k: v for k, v in unpacked_records[rec["member"]].items() if k != "path"}
        assert differences(_without_archive_fields(rec), theirs, 1e-6) == [], rec["member"]
    failed = [(r["member"], r["error"]) for r in records if "error" in r]
    assert failed == [(f"{CRASH_KEY}.wav", "decoder crashed (SIGSEGV)")]


def test_members_carried_from_stdin_wait_for_their_budget():
    """Reading stdin on waits while the members carried and not yet recorded hold the budget's bytes (one larger
    member is carried alone), and goes on once one's record is written (``give_back`` by its name)."""
    import threading

    from audiotag.batch import piped

    clips = _small_clips(3)  # 128 kB each
    budget = piped.Budget(limit=200_000)
    stream = piped.members(io.BytesIO(_tar_bytes(clips)), "tar", lambda name: True)
    name, member, _ = next(stream)
    first, error = piped.carried(name, member, budget)
    assert error is None and first.data == clips["000000.wav"] and first.fields["key"] == "000000"
    name, second, _ = next(stream)
    got = []
    reader = threading.Thread(target=lambda: got.append(piped.carried(name, second, budget)))
    reader.start()
    reader.join(1)
    assert reader.is_alive() and not got  # 2 x 128 kB > 200 kB: waits
    budget.give_back("-/000000.wav")
    reader.join(10)
    assert not reader.is_alive() and got[0][0].data == clips["000001.wav"]


def test_the_budget_counts_members_of_the_same_name_apart():
    """A tar may hold a name twice (tar -r): each member's bytes are given back once, in input order."""
    from audiotag.batch import piped

    budget = piped.Budget(limit=300)
    budget.take("-/a.wav", 100)
    budget.take("-/a.wav", 100)
    budget.give_back("-/a.wav")
    budget.give_back("-/b.wav")  # never taken: nothing
    assert budget._used == 100  # noqa: SLF001 -- what a third member of 250 bytes would wait for
    budget.give_back("-/a.wav")
    assert budget._used == 0  # noqa: SLF001


@pytest.mark.parametrize("workers", [1, 3])
def test_a_budget_smaller_than_the_members_in_flight_never_stalls_a_run(tmp_path, workers):
    """With a budget of one and a half members, every member of an archive on stdin is tagged, with --dedup and
    then --resume too: the pipeline's threads still hold the last inputs they handled while they wait for the next
    (a budget given back when a member was collected waited for ever), and copies held back by --dedup give their
    bytes back at once (given back when their record was written, after the next member's, it waited for ever)."""
    distinct = _small_clips(8)
    clips = dict(list(distinct.items())[:2])
    clips.update({"copy-a.wav": distinct["000001.wav"], "copy-b.wav": distinct["000001.wav"]})  # held back by
    clips.update(list(distinct.items())[2:])  # --dedup, undecoded, while the members after them are read
    clips["copy-c.wav"] = distinct["000001.wav"]
    start = ("import sys; from audiotag.batch import piped; piped.CARRIED_BUDGET = 200_000; "
             "piped.Budget.__init__.__defaults__ = (200_000,); from audiotag.cli import main; sys.exit(main())")
    out = tmp_path / "tags.jsonl"
    for extra in (("--dedup",), ("--resume", "--dedup")):
        result = subprocess.run([sys.executable, "-c", start, "-", "-f", "jsonl", "-o", out, "--workers",
                                 str(workers), *extra], input=_tar_bytes(clips), capture_output=True, timeout=120,
                                cwd=REPO)
        assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["member"] for r in records] == list(clips)
    assert [r["path"] for r in records if "duplicate_of" in r] == ["-/copy-a.wav", "-/copy-b.wav", "-/copy-c.wav"]
    assert {r["duplicate_of"] for r in records if "duplicate_of" in r} == {"-/000001.wav"}
    assert "error" not in str(records)


def test_a_damaged_lzma_zip_member_on_stdin_is_said_in_words(cli, tmp_path):
    """lzma's own error (not an OSError) where a zip on stdin is damaged inside an LZMA member: one record for the
    member, in words, not a traceback that ends the run (nor an error for the archive: a zip's next member is
    read from its own offset, as the named file's is)."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("a.wav", (AUDIO / "speech.wav").read_bytes())
    damaged = bytearray(data.getvalue())
    damaged[2000:2400] = bytes(400)
    result = cli("-", "-f", "jsonl", stdin=bytes(damaged))
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    assert [(r["path"], r["error"].startswith(("the archive is damaged", "cannot read the archive")))
            for r in _records(result.stdout)] == [("-/a.wav", True)]
