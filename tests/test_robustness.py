"""A run of weeks survives any single input (issue 12): native crashes, deep trees, bombs, corrupt frames, long
names. Native crashes are simulated by an LD_PRELOAD library compiled here: any process that opens a path
holding a marker dies with the signal asked for, as a decoder crashing on that file would. With $OPEN_LOG set it
also appends "PID PATH" to that file for each open of a path holding $OPEN_LOG_MATCH (default ".wav"), and
"PID exit CODE" when a process exits on its own (exit or _exit; a process killed by a signal writes none): which
processes tagged which inputs, and how they ended."""

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import AUDIO

CRASH_LIBRARY = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static void note(const char *what) {
    const char *log = getenv("OPEN_LOG");
    if (!log || !*log) return;
    char line[4400];
    int n = snprintf(line, sizeof line, "%d %s\n", (int)getpid(), what);
    int fd = syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) { if (write(fd, line, n < (int)sizeof line ? n : (int)sizeof line - 1) < 0) {} close(fd); }
}
static void check(const char *path) {
    const char *match = getenv("OPEN_LOG_MATCH");
    if (path && strstr(path, match && *match ? match : ".wav")) note(path);
    const char *marker = getenv("CRASH_MARKER");
    if (path && marker && *marker && strstr(path, marker)) {
        const char *how = getenv("CRASH_SIGNAL");
        if (how && !strcmp(how, "hang")) for (;;) pause();
        raise(how ? atoi(how) : SIGSEGV);
        _exit(99);
    }
}
#define WRAP(name) int name(const char *p, int f, ...) { static int (*real)(const char *, int, ...); \
    if (!real) real = dlsym(RTLD_NEXT, #name); check(p); va_list a; va_start(a, f); int m = va_arg(a, int); \
    va_end(a); return real(p, f, m); }
#define WRAPAT(name) int name(int d, const char *p, int f, ...) { static int (*real)(int, const char *, int, ...); \
    if (!real) real = dlsym(RTLD_NEXT, #name); check(p); va_list a; va_start(a, f); int m = va_arg(a, int); \
    va_end(a); return real(d, p, f, m); }
WRAP(open) WRAP(open64) WRAPAT(openat) WRAPAT(openat64)
#define WRAPEXIT(name) void name(int code) { void (*real)(int) = (void (*)(int))dlsym(RTLD_NEXT, #name); \
    char what[32]; snprintf(what, sizeof what, "exit %d", code); note(what); real(code); for (;;) pause(); }
WRAPEXIT(exit) WRAPEXIT(_exit)
"""


@pytest.fixture(scope="module")
def crash_library(tmp_path_factory):
    directory = tmp_path_factory.mktemp("crash")
    (directory / "crash.c").write_text(CRASH_LIBRARY)
    library = directory / "libcrash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(directory / "crash.c"), "-ldl"],
                   check=True)
    return library


def _corpus(directory, names):
    directory.mkdir(exist_ok=True)
    clip = (AUDIO / "speech.wav").read_bytes()
    for name in names:
        (directory / name).write_bytes(clip)
    return [str(directory / name) for name in sorted(names)]


def _records(stdout: bytes) -> list:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def _crash_env(library, sig="11", log=None):
    env = {"LD_PRELOAD": str(library), "CRASH_MARKER": "CRASHME", "CRASH_SIGNAL": sig}
    if log is not None:
        env["OPEN_LOG"] = str(log)
    return env


def _opened(log) -> dict:
    """{path: [pid, ...]} from the crash library's log: the processes that opened each .wav, in order."""
    opened = {}
    for line in Path(log).read_text().splitlines():
        pid, what = line.split(" ", 1)
        if not what.startswith("exit "):
            opened.setdefault(what, []).append(int(pid))
    return opened


def _exits(log) -> dict:
    """{pid: exit code} of the processes that exited on their own (none for a process killed by a signal)."""
    return {int(pid): int(what[5:]) for pid, what in
            (line.split(" ", 1) for line in Path(log).read_text().splitlines()) if what.startswith("exit ")}


def _dealt_to_workers(opened: dict, items: list, count: int) -> None:
    """A pool of ``count`` worker processes was at work: input k of ``items`` goes to worker k mod ``count`` (a
    crashed or hung worker's successor takes its inputs), so every lane was opened by processes of its own, which
    opened no input of another lane; one process tagging them all would have opened every lane's."""
    lanes = [{pid for item in items[lane::count] for pid in opened.get(item, ())} for lane in range(count)]
    assert all(lanes), opened
    assert all(not lanes[a] & lanes[b] for a in range(count) for b in range(a)), opened


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended, unreaped
    except FileNotFoundError:
        return False


def test_a_native_crash_fails_only_its_input(cli, tmp_path, crash_library):
    names = [f"c{i:02d}.wav" for i in range(12)] + ["c04-CRASHME.wav"]
    paths = _corpus(tmp_path / "corpus", names)
    result = cli(tmp_path / "corpus", "--jobs", 2, "--top-k", 1, env=_crash_env(crash_library))
    assert result.returncode == 1, result.stderr
    records = _records(result.stdout)
    assert [r["path"] for r in records] == paths  # every input once, in order
    failed = [r for r in records if "error" in r]
    assert failed == [{"path": str(tmp_path / "corpus" / "c04-CRASHME.wav"), "error": "decoder crashed (SIGSEGV)"}]
    assert all(r["tags"][0]["label"] == "Speech" for r in records if "error" not in r)  # innocents tagged
    assert b"c04-CRASHME.wav: decoder crashed (SIGSEGV)" in result.stderr


def test_without_isolation_the_same_crash_ends_the_run(cli, tmp_path, crash_library):
    """The control: the LD_PRELOAD library does crash a process, so the test above shows the supervisor at work."""
    _corpus(tmp_path / "corpus", ["a.wav", "b-CRASHME.wav"])
    result = cli(tmp_path / "corpus", "--in-process", env=_crash_env(crash_library))
    assert result.returncode == -signal.SIGSEGV or result.returncode == 128 + signal.SIGSEGV


@pytest.mark.parametrize("sig, reason", [("6", "decoder crashed (SIGABRT)"), ("7", "decoder crashed (SIGBUS)"),
                                         ("9", "worker killed (SIGKILL: out of memory?)")])
def test_crashes_in_a_piped_list_and_resume(cli, tmp_path, crash_library, sig, reason):
    names = ["a.wav", "b-CRASHME.wav", "c.wav", "d-CRASHME.wav", "e.wav"]
    paths = _corpus(tmp_path / "corpus", names)
    out = tmp_path / "out.jsonl"
    listing = "".join(f"{path}\n" for path in paths).encode()
    result = cli("--files-from", "-", "-o", out, stdin=listing, env=_crash_env(crash_library, sig))
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == paths
    assert [r.get("error") for r in records] == [None, reason, None, reason, None]
    # --resume skips what is recorded, crashes included: it never crashes on the same file again
    _corpus(tmp_path / "corpus", ["f.wav"])
    again = cli(tmp_path / "corpus", "-o", out, "--resume", env=_crash_env(crash_library, sig))
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["path"]
            for line in out.read_text().splitlines()] == paths + [str(tmp_path / "corpus/f.wav")]


def test_the_long_lived_process_survives_a_crash(cli, tmp_path, crash_library):
    """A crawler pipes paths and waits for each answer: after a crash the same process answers the next one."""
    paths = _corpus(tmp_path / "corpus", ["a-CRASHME.wav", "b.wav"])
    process = cli.popen("--files-from", "-", env=_crash_env(crash_library))
    from conftest import readline_within

    try:
        for path, expected in zip(paths, ("decoder crashed (SIGSEGV)", None)):
            process.stdin.write(f"{path}\n".encode())
            process.stdin.flush()
            record = json.loads(readline_within(process.stdout))
            assert record["path"] == path and record.get("error") == expected
        process.stdin.close()
        assert process.wait(timeout=60) == 1
    finally:
        process.kill()
        process.wait()


def test_a_long_input_first_does_not_hold_the_others_back(cli, tmp_path):
    """The worker's threads go on past a long input: they are not held to the 3 x --jobs + 2 inputs sent with it
    until its record is out (the others' outcomes wait, finished, behind it). Segments are written as each window
    is done, so they show it: inputs far past those the long one came with have theirs before its last one (before,
    none did: on a 32-core server, 31 cores idled through every long download)."""
    paths = _long_first_corpus(tmp_path / "corpus")
    result = cli(tmp_path / "corpus", "--jobs", 2, "--segments", "-f", "jsonl", "-k", 1)
    assert result.returncode == 0, result.stderr
    lines = _records(result.stdout)
    records = [line for line in lines if "start" not in line]
    assert [record["path"] for record in records] == [str(tmp_path / "corpus" / "a-long.flac"), *paths]
    long_ends = max(number for number, line in enumerate(lines)
                    if "start" in line and line["path"] == records[0]["path"])
    started = {}
    for number, line in enumerate(lines):
        started.setdefault(line["path"], number)
    past_the_window = paths[3 * 2 + 2:]
    early = sum(started[path] < long_ends for path in past_the_window)  # 32 of 32 here; 0 before
    assert early >= 10, (long_ends, started)


def _long_first_corpus(directory, clips: int = 40) -> list:
    """20 minutes of FLAC, then ten-second clips (their paths)."""
    data, rate = soundfile.read(str(AUDIO / "music.wav"), dtype="int16")
    directory.mkdir()
    soundfile.write(str(directory / "a-long.flac"), np.tile(data, 120), rate)
    return _corpus(directory, [f"b{i:02d}.wav" for i in range(clips)])


def _descendants(pid: int) -> list:
    """Every process under ``pid`` (the frozen binary's bootloader runs its program as a child)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(child) for child in children.read().split()]
                found += kids
                todo += kids
        except FileNotFoundError:  # it ended meanwhile
            pass
    return found


def test_a_worker_killed_from_outside_blames_nobody_who_had_not_crashed_alone(cli, tmp_path):
    """An out-of-memory kill (or an admin's kill -9) of the worker while a long input is tagged and the clips after
    it are finished: the long one is not the culprit for being the one unfinished (a review's find: it was said
    "worker killed"); it is rerun alone and tagged, and so is everything else."""
    paths = _long_first_corpus(tmp_path / "corpus", clips=8)
    process = cli.popen(tmp_path / "corpus", "--jobs", 2, "--segments", "-f", "jsonl", "-k", 1)
    from conftest import readline_within

    try:
        while json.loads(readline_within(process.stdout))["path"] != paths[-1]:
            pass  # the last clip's window is done, the long one is still in work
        time.sleep(0.2)  # and the clip's decoder closed: the long one is the only input unfinished
        worker = next(pid for pid in _descendants(process.pid)
                      if b"--_supervised-worker" in open(f"/proc/{pid}/cmdline", "rb").read())
        os.kill(worker, signal.SIGKILL)
        rest, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    records = [record for record in _records(rest) if "start" not in record]
    assert process.returncode == 0 and all("error" not in record for record in records), records
    assert records[-1]["path"] == paths[-1]


def test_a_hung_decoder_is_killed_and_the_run_goes_on(cli, tmp_path, crash_library):
    paths = _corpus(tmp_path / "corpus", ["a.wav", "b-CRASHME.wav", "c.wav"])
    result = cli(tmp_path / "corpus", "--timeout", 1, env=_crash_env(crash_library, "hang"), timeout=200)
    assert result.returncode == 1, result.stderr
    assert [(r["path"], r.get("error")) for r in _records(result.stdout)] == \
        [(paths[0], None), (paths[1], "timed out after 12 s"), (paths[2], None)]


def test_a_tree_deeper_than_the_recursion_limit(cli, tmp_path):
    top = tmp_path / "deep"
    os.makedirs(top)
    depth = 1100  # Python's recursion limit is 1,000
    fd = os.open(top, os.O_RDONLY)
    try:  # made relative to a descriptor: the whole path is longer than some tools like
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("deep.wav", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as clip:
            clip.write((AUDIO / "speech.wav").read_bytes())
    finally:
        os.close(fd)
    (top / "z.wav").write_bytes((AUDIO / "music.wav").read_bytes())
    try:
        result = cli(top, "--top-k", 1)
    finally:  # pytest's own clean-up of tmp_path recurses and would fail on this tree; GNU rm does not
        subprocess.run(["rm", "-rf", str(top / "d")], check=True)
    assert result.returncode == 0, result.stderr
    records = _records(result.stdout)
    assert [r["path"] for r in records] == [str(top) + "/d" * depth + "/deep.wav", str(top / "z.wav")]
    assert records[0]["tags"][0]["label"] == "Speech"


def _long_flac(path, seconds, rate=8000):
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype="PCM_16")


def test_max_duration_tags_the_start_and_says_so(cli, tmp_path):
    _long_flac(tmp_path / "long.flac", 120)
    result = cli(tmp_path / "long.flac", "--max-duration", 30, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    (record,) = _records(result.stdout)
    assert record["duration"] == 30.0 and record["truncated"] is True and record["audio_duration"] == 120.0
    assert list(record)[:9] == ["path", "duration", "sample_rate", "channels", "codec", "truncated",
                               "audio_duration", "categories", "tags"]
    whole = _records(cli(tmp_path / "long.flac", "--format", "jsonl").stdout)[0]
    assert whole["duration"] == 120.0 and "truncated" not in whole
    table = cli(tmp_path / "long.flac", "--max-duration", 30, "--format", "csv", "--top-k", 1).stdout.decode()
    assert "truncated: tagged the first 30 s of 120 s" in table.splitlines()[1]


def test_batch_runs_cut_inputs_at_two_hours_by_default(cli, tmp_path):
    """options.py's BATCH: with no --max-duration, a batch (two inputs) tags 7,200 s of a 7,800 s file (a
    196 kB FLAC of silence) and says so; the other input is whole."""
    with soundfile.SoundFile(str(tmp_path / "long.flac"), "w", 8000, 1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(13):  # 13 x 600 s
            out.write(np.zeros(8000 * 600, np.int16))
    (tmp_path / "speech.wav").write_bytes((AUDIO / "speech.wav").read_bytes())
    result = cli(tmp_path / "long.flac", tmp_path / "speech.wav", "--top-k", 1)
    assert result.returncode == 0, result.stderr
    cut, whole = _records(result.stdout)
    assert (cut["duration"], cut["truncated"], cut["audio_duration"]) == (7200.0, True, 7800.0)
    assert whole["duration"] == 10.0 and "truncated" not in whole


@pytest.mark.parametrize("argv, batch", [
    (["a.wav"], False), (["-"], False), (["a.wav", "b.wav"], True), (["DIR"], True), (["--files-from", "-"], True),
    (["a.wav", "-"], True)])
def test_the_batch_limits_are_the_defaults_of_batch_runs_only(tmp_path, argv, batch):
    """One file named on its own is tagged whole, in any time; a batch (several inputs, a directory, a list)
    gets --max-duration 7200 and --timeout 300 unless told otherwise (0: none)."""
    from audiotag import tag_many
    from audiotag.cli.args import build_parser, check_arguments

    argv = [str(tmp_path) if a == "DIR" else a for a in argv]

    def limits(*extra):
        parser = build_parser()
        args = parser.parse_args([*argv, "-f", "jsonl", *extra])
        check_arguments(parser, args)
        return args.max_duration, args.timeout

    assert limits() == ((7200.0, 300.0) if batch else (None, None))
    assert limits("--max-duration", "60") == (60.0, 300.0 if batch else None)
    assert limits("--timeout", "5") == (7200.0 if batch else None, 5.0)
    assert limits("--max-duration", "0", "--timeout", "0") == (None, None)
    defaults = inspect.signature(tag_many).parameters  # the API's batches: the same
    assert (defaults["max_duration"].default, defaults["timeout"].default) == (7200.0, 300.0)


def test_timeout_is_an_error_record_and_the_run_goes_on(cli, tmp_path):
    # An hour (seconds of work) against 0.5 s, which the 10 s clip beside it needs a few ms of, on a slow
    # machine too (0.05 s left a stalled thread little room)
    _long_flac(tmp_path / "a-long.flac", 3600)
    (tmp_path / "b.wav").write_bytes((AUDIO / "speech.wav").read_bytes())
    result = cli(tmp_path / "a-long.flac", tmp_path / "b.wav", "--timeout", 0.5)
    records = _records(result.stdout)
    assert records[0] == {"path": str(tmp_path / "a-long.flac"), "error": "timed out after 0.5 s"}
    assert result.returncode == 1 and records[1]["tags"][0]["label"] == "Speech"


def test_a_corrupt_flac_frame_is_skipped_with_a_warning(cli, tmp_path):
    data, rate = soundfile.read(str(AUDIO / "music.wav"))
    soundfile.write(str(tmp_path / "clip.flac"), data, rate)
    corrupt = bytearray((tmp_path / "clip.flac").read_bytes())
    middle = len(corrupt) // 3
    corrupt[middle:middle + 50] = bytes(range(50))
    (tmp_path / "clip.flac").write_bytes(corrupt)
    (tmp_path / "noise.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    result = cli(tmp_path / "clip.flac", tmp_path / "noise.flac", "--top-k", 1)
    good, bad = _records(result.stdout)
    assert good["warning"].startswith("decoded 9.")
    assert "of 10.0 s: damaged FLAC data (libsndfile: flac decoder lost sync)" in good["warning"]
    assert good["duration"] == 10.0 and good["tags"][0]["label"] == "Music"
    assert "error" in bad and result.returncode == 1  # no usable audio at all: still an error


def test_an_embedding_for_a_name_too_long_for_a_file(cli, tmp_path):
    name = "x" * 251 + ".wav"  # 255 bytes: the name is legal, name + ".npy" is not
    (tmp_path / name).write_bytes((AUDIO / "speech.wav").read_bytes())
    result = cli(tmp_path / name, "--embeddings", tmp_path / "emb", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    from audiotag.batch.embeddings import hashed_embedding_path
    import hashlib

    target = hashed_embedding_path(str(tmp_path / "emb"), str(tmp_path / name))
    digest = hashlib.blake2b(os.fsencode(str(tmp_path / name)), digest_size=16).hexdigest()
    assert target == str(tmp_path / "emb" / "%hash" / f"{digest}.npy")  # as the README says
    assert np.load(target).shape == (384,)


def test_mutated_mp3s_are_not_called_pipes():
    """libsndfile says "File does not exist or is not a regular file (possibly a pipe?)" when its MPEG decoder
    rejects a file's first frames: the record must say what is wrong instead."""
    from audiotag import decode

    source = (AUDIO / "extra" / "esc10-babycry-1-60997-B.mp3").read_bytes()
    rng = np.random.default_rng(0)
    messages = set()
    for index in range(300):  # the mutants scripts/studies/salvage_rate.py style: bytes near the start, cuts, bad runs
        mutant = bytearray(source)
        kind = index % 3
        if kind == 0:
            for _ in range(rng.integers(1, 20)):
                mutant[rng.integers(0, min(len(mutant), 2000))] = rng.integers(0, 256)
        elif kind == 1:
            mutant = mutant[:rng.integers(10, len(mutant))]
        else:
            spot = rng.integers(0, len(mutant))
            mutant[spot:spot + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        try:
            decode.open_bytes(bytes(mutant)).read()
        except decode.AudioError as error:
            messages.add(str(error))
    assert not any("possibly a pipe" in message for message in messages)
    assert ("cannot decode: no valid audio stream at its start "
            "(the decoder could not parse its first frames)") in messages


def test_several_workers_tag_in_order_and_survive_crashes(cli, tmp_path, crash_library):
    """--workers 2: inputs are dealt to two worker processes and their records come back in input order; a crash
    in one fails only its input (the other process goes on), and the records equal a one-worker run's."""
    names = [f"c{i:02d}.wav" for i in range(12)] + ["c04-CRASHME.wav", "c09-CRASHME.wav"]
    paths = _corpus(tmp_path / "corpus", names)
    log = tmp_path / "opened.log"
    result = cli(tmp_path / "corpus", "--workers", 2, "--jobs", 1, "--top-k", 1,
                 env=_crash_env(crash_library, log=log))
    assert result.returncode == 1, result.stderr
    records = _records(result.stdout)
    assert [r["path"] for r in records] == paths
    assert [r["path"] for r in records if "error" in r] == [p for p in paths if "CRASHME" in p]
    assert all(r["error"] == "decoder crashed (SIGSEGV)" for r in records if "error" in r)
    assert sorted(_opened(log)) == sorted(paths)
    _dealt_to_workers(_opened(log), paths, 2)
    single = cli(tmp_path / "corpus", "--top-k", 1, env=_crash_env(crash_library))
    assert _records(single.stdout) == records


def test_workers_with_segments_and_a_list(cli, tmp_path, crash_library):
    """Segments of each input come before its record, whichever worker tagged it; a piped list works too."""
    paths = _corpus(tmp_path / "corpus", [f"s{i}.wav" for i in range(5)])
    listing = "".join(f"{path}\n" for path in paths).encode()
    log = tmp_path / "opened.log"
    result = cli("--files-from", "-", "--workers", 3, "--segments", "--window", 4, "-f", "jsonl", stdin=listing,
                 env={"LD_PRELOAD": str(crash_library), "OPEN_LOG": str(log)})
    assert result.returncode == 0, result.stderr
    opened = _opened(log)  # three processes: input k opened by worker k mod 3 alone
    assert len({pid for pids in opened.values() for pid in pids}) == 3, opened
    assert all(len(set(opened[path])) == 1 for path in paths), opened
    assert all((opened[a] == opened[b]) == (i % 3 == j % 3) for i, a in enumerate(paths) for j, b in enumerate(paths))
    lines = _records(result.stdout)
    clips = [line["path"] for line in lines if "tags" in line and "start" not in line]
    assert clips == paths
    for path in paths:  # this input's segments, then its record
        own = [index for index, line in enumerate(lines) if line["path"] == path]
        assert len(own) > 1 and "start" not in lines[own[-1]], (path, [lines[i] for i in own])


def test_a_pool_says_its_size_and_ends_gracefully(cli, tmp_path, crash_library):
    """-v names the worker count; at the end every worker exits on its own with status 0 (not killed), before the
    run does: no process is left behind."""
    paths = _corpus(tmp_path / "corpus", [f"g{i}.wav" for i in range(6)])
    log = tmp_path / "opened.log"
    process = cli.popen(tmp_path / "corpus", "--workers", 2, "-v", "--top-k", 1,
                        env={"LD_PRELOAD": str(crash_library), "OPEN_LOG": str(log)})
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert [r["path"] for r in _records(stdout)] == paths
    assert b"(in 2 watched worker processes)" in stderr and b"6 inputs: 6 ok, 0 failed" in stderr, stderr
    workers = {pid for pids in _opened(log).values() for pid in pids}
    assert len(workers) == 2 and process.pid not in workers  # tagged by two processes, neither the supervisor
    exits = _exits(log)
    assert {pid: exits.get(pid) for pid in workers} == dict.fromkeys(workers, 0)  # no signal, no error status
    assert not [pid for pid in workers if _alive(pid)]  # nothing orphaned


def test_a_killed_pool_run_resumes_and_its_hung_input_meets_the_watchdog(cli, tmp_path, crash_library):
    """--workers 2 -o: a run killed (SIGKILL) midway, stuck on an input whose decoder hangs, then --resume with
    --timeout: the records written stay, every input is recorded once, and the hung one is the watchdog's error."""
    names = [f"k{i:02d}.wav" for i in range(12)]
    names[5] = "k05-CRASHME.wav"
    paths = _corpus(tmp_path / "corpus", names)
    out, logs = tmp_path / "out.jsonl", (tmp_path / "first.log", tmp_path / "resumed.log")
    first = cli.popen(tmp_path / "corpus", "--workers", 2, "--jobs", 1, "-o", out,
                      env=_crash_env(crash_library, "hang", logs[0]))
    try:
        # No --timeout: the run stops at the hung input (records come in input order), and is killed there.
        deadline = time.monotonic() + 200
        while not (out.exists() and len(out.read_text().splitlines()) >= 5 and paths[5] in _opened(logs[0])):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        written = out.read_text().splitlines()
        assert [json.loads(line)["path"] for line in written] == paths[:5]
        (hung,) = set(_opened(logs[0])[paths[5]])
        os.kill(hung, signal.SIGKILL)  # stuck in the decoder for ever, orphaned: this test's own clean-up
        again = cli(tmp_path / "corpus", "--workers", 2, "--jobs", 1, "-o", out, "--resume", "--timeout", 1,
                    env=_crash_env(crash_library, "hang", logs[1]), timeout=150)  # the watchdog acts at 12 s
        assert again.returncode == 1, again.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert out.read_text().splitlines()[:5] == written
        assert sorted(r["path"] for r in records) == paths  # each once
        assert [(r["path"], r.get("error")) for r in records if "error" in r] == [(paths[5], "timed out after 12 s")]
        assert set(_opened(logs[1])) == set(paths[5:])  # the recorded ones were not tagged again
        _dealt_to_workers(_opened(logs[1]), paths[5:], 2)
    finally:  # whatever failed: no worker of this test outlives it (the first run's see their input end)
        first.kill()
        first.wait()
        workers = {pid for log in logs if log.exists() for pids in _opened(log).values() for pid in pids}
        deadline = time.monotonic() + 30
        while (left := [pid for pid in workers if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"workers left running: {left}"


def test_a_list_failing_midway_under_workers(cli, tmp_path, crash_library):
    """A piped list with a missing file and a crashing decoder in its middle, --workers 3: each is its input's
    error record, every other input is tagged, in list order."""
    paths = _corpus(tmp_path / "corpus", [f"m{i}.wav" for i in range(8)])
    paths[3] = str(tmp_path / "corpus" / "gone.wav")
    paths[5] = _corpus(tmp_path / "corpus", ["m5-CRASHME.wav"])[0]
    log = tmp_path / "opened.log"
    listing = "".join(f"{path}\n" for path in paths).encode()
    result = cli("--files-from", "-", "--workers", 3, "--jobs", 1, "--top-k", 1, stdin=listing,
                 env=_crash_env(crash_library, log=log))
    assert result.returncode == 1, result.stderr
    records = _records(result.stdout)
    assert [r["path"] for r in records] == paths
    errors = {r["path"]: r["error"] for r in records if "error" in r}
    assert list(errors) == [paths[3], paths[5]] and errors[paths[5]] == "decoder crashed (SIGSEGV)"
    assert f"{paths[3]}: {errors[paths[3]]}" in result.stderr.decode()
    assert all(r["tags"][0]["label"] == "Speech" for r in records if "error" not in r)
    # the same records as tagging in this process gives (without the crash, which would end that run)
    listing = "".join(f"{path}\n" for path in paths if "CRASHME" not in path).encode()
    alone = cli("--files-from", "-", "--in-process", "--top-k", 1, stdin=listing)
    assert _records(alone.stdout) == [r for r in records if r["path"] != paths[5]]
    _dealt_to_workers(_opened(log), paths, 3)


def test_a_folder_named_audiotag_in_the_working_directory_is_not_the_worker(tmp_path):
    """The worker is this same package, wherever the run starts: started as "python -m audiotag", a folder named
    audiotag in the working directory (another checkout, a user's project) became the worker, and an older one's
    outcomes could not be read: the run hung. The installed command, as users run it, from such a folder:"""
    command = Path(sys.executable).parent / "audiotag"  # the entry point scripts/build/setup.sh installs
    impostor = tmp_path / "work" / "audiotag"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("")
    (impostor / "__main__.py").write_text("raise SystemExit('not audiotag')\n")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("music.wav", "speech.wav"):
        (folder / name).write_bytes((AUDIO / name).read_bytes())
    result = subprocess.run([command, folder], capture_output=True, cwd=impostor.parent, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr.decode()
    assert [r["tags"][0]["label"] for r in _records(result.stdout)] == ["Music", "Speech"]


def test_a_worker_message_that_cannot_be_read_ends_that_worker_not_the_run():
    """A worker whose messages this process cannot unpickle (another audiotag's classes) is killed and counts
    as failed: the supervisor's reader used to die with it, and the run waited for ever."""
    import threading

    from audiotag import TagOptions
    from audiotag.batch import inputs, supervisor

    stranger = ("import pickle, struct, sys, time\n"
                "class Ghost: pass\n"  # __main__.Ghost exists in this process only
                "data = pickle.dumps(('ready', Ghost()))\n"
                "sys.stdout.buffer.write(struct.pack('<Q', len(data)) + data); sys.stdout.buffer.flush()\n"
                "time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", stranger], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    watched = supervisor.Supervisor(supervisor.WorkerConfig(inputs.Opener(), TagOptions(), jobs=1),
                                    process=process)
    outcome = []

    def wait_ready():
        try:
            watched.ready()
        except supervisor.WorkerError as error:
            outcome.append(str(error))

    waiter = threading.Thread(target=wait_ready, daemon=True)
    waiter.start()
    waiter.join(30)
    watched.close()
    assert outcome and "could not start" in outcome[0] and "SIGKILL" in outcome[0]
    assert process.poll() is not None


def test_the_supervisor_loads_neither_the_decoders_nor_numpy(tmp_path):
    """The process that watches the worker walks, hands out inputs and writes records: it loads no decoder, no
    model and no numpy (the worker sends outcomes without the arrays records do not need), so supervising costs
    one light interpreter, not a second copy of the stack. Its records are those of tagging in one process."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("music.wav", "speech.wav"):
        (folder / name).write_bytes((AUDIO / name).read_bytes())
    program = ("import os, sys\n"
               "from audiotag import cli\n"
               "def leave(code):\n"
               "    heavy = ('numpy', 'onnxruntime', 'soundfile', 'soxr', 'av')\n"
               "    print(sorted(name for name in heavy if name in sys.modules), flush=True)\n"
               "    exit_now(code)\n"
               "exit_now, os._exit = os._exit, leave\n"  # main leaves through os._exit while threads remain
               "leave(cli.main(sys.argv[1:]))\n")
    watched, alone = tmp_path / "watched.jsonl", tmp_path / "alone.jsonl"
    result = subprocess.run([sys.executable, "-c", program, folder, "-o", watched], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    result = subprocess.run([sys.executable, "-m", "audiotag", folder, "-o", alone, "--in-process"], timeout=120)
    assert result.returncode == 0
    records = _records(watched.read_bytes())
    assert [r["tags"][0]["label"] for r in records] == ["Music", "Speech"]
    assert records == _records(alone.read_bytes())
