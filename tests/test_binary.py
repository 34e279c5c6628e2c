"""The frozen single-file binary (scripts/build/build_binary.sh -> dist/audiotag, or $AUDIOTAG_BINARY).

These tests fail, not skip, when the binary is missing: CI always builds it first. The shared CLI suite runs
against it too (the ``cli`` fixture in conftest.py); this file holds what only the binary has: the same JSON
as the package on every clip, the launcher's cache (unpacked once, atomically, safe under concurrency and
SIGKILL, nothing in /tmp), what the bundle leaves out, and a system without /proc. Everything runs from a clean
environment in an empty working directory, as a user would run it. Where a test looks at temporary files, the
binary gets temporary folders of its own (TMPDIR, and /tmp itself in a mount namespace where ``unshare`` can make
one): the machine's shared /tmp, where other jobs come and go, is never scanned.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audiotag import __version__
from conftest import AUDIO, REPO

BINARY = Path(os.environ.get("AUDIOTAG_BINARY", REPO / "dist" / "audiotag"))
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
CLIPS = sorted(p for p in AUDIO.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
EXTRA_CLIPS = sorted(p for p in (AUDIO / "extra").iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """One cache folder for the tests that do not test the cache itself, so the binary unpacks once."""
    return tmp_path_factory.mktemp("binary-cache")


def clean_env(home: Path, **extra) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_binary(binary, cwd, *args, cache=None, stdin=b"", env=None, timeout=300):
    extra = dict(env or {})
    if cache is not None:
        extra["AUDIOTAG_CACHE_DIR"] = cache
    return subprocess.run([str(binary), *map(str, args)], input=stdin, capture_output=True, cwd=cwd,
                          env=clean_env(cwd, **extra), timeout=timeout)


def run_package(cwd, *args, timeout=300):
    env = clean_env(cwd, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "audiotag", *map(str, args)], capture_output=True, cwd=cwd,
                          env=env, timeout=timeout)


def ok(result) -> bytes:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr.decode(errors='replace')[-2000:]}"
    return result.stdout


def unpacked(cache: Path) -> list:
    """Folders in a cache: finished versions and partial ones."""
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def can_unshare() -> bool:
    """Whether this user may make a user and mount namespace (``unshare``, util-linux), to give a process its own
    /tmp or hide /proc from it."""
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kept_in_tmp(tmp_path: Path) -> list:
    """The folders directly under /tmp that a program in a private /tmp must still see: pytest's (the test's cache
    and working directory) and the checkout's, when it lies under /tmp (a clone made there: the binary is in it)."""
    kept = []
    for path in (Path(tmp_path).resolve(), REPO.resolve()):
        if path.is_relative_to("/tmp") and path != Path("/tmp"):
            top = Path("/tmp", path.relative_to("/tmp").parts[0])
            if top not in kept and not any(char.isspace() for char in str(top)):
                kept.append(top)
    return kept


def with_private_tmp(tmp_path: Path, command: list) -> tuple:
    """(command, env entries, folders): ``command`` with TMPDIR set to a folder of its own and, where a mount
    namespace can be made, another folder of its own mounted on /tmp (with the folders under /tmp it needs mounted
    back in it: ``_kept_in_tmp``), so that what the program leaves in either place is in ``folders``, and nobody
    else's files are."""
    folders = [tmp_path / "tmpdir"]
    if can_unshare():
        folders.append(tmp_path / "slash-tmp")
        keep = " ".join(str(path) for path in _kept_in_tmp(tmp_path))
        script = ('own=$0 keep=$1; shift; for kept in $keep; do mkdir "$own/${kept#/tmp/}" && '
                  'mount --bind "$kept" "$own/${kept#/tmp/}" || exit 125; done; mount --rbind "$own" /tmp && '
                  'exec "$@"')
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(folders[1]), keep,
                   *command]
    for folder in folders:
        folder.mkdir()
    return command, {"TMPDIR": str(folders[0])}, folders


def leftovers(folders) -> list:
    """What a frozen program left in its temporary folders (PyInstaller's _MEI*, anything else), but the mount
    points of the folders kept in its private /tmp."""
    kept = {path.name for path in _kept_in_tmp(folders[0])}
    return sorted(entry.name for folder in folders for entry in folder.iterdir()
                  if not (folder.name == "slash-tmp" and entry.name in kept and entry.is_dir()
                          and not any(entry.iterdir())))


def source_sha256() -> str:
    """The digest build.spec stores in the bundle: audiotag's sources and assets, as in this checkout."""
    assets = REPO / "audiotag" / "assets"
    paths = sorted((REPO / "audiotag").rglob("*.py")) + [assets / n for n in
                                                         ("mel_filterbank.npy", "stft_window.npy", "mn04_as.onnx")]
    paths += [REPO / "audiotag" / "decode" / "_avblocks.c", REPO / "audiotag" / "infer" / "_logmel.c"]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ---- same answers ----

def test_binary_is_built_from_this_checkout(binary, cache, tmp_path):
    version = ok(run_binary(binary, tmp_path, "--version", cache=cache))
    assert b"frontend: native, one call per clip without Python's lock" in version  # _logmel.so is bundled
    (folder,) = [cache / name for name in unpacked(cache) if not name.startswith(".")]
    info = json.loads((folder / "_internal" / "audiotag-build.json").read_text())
    assert info["source_sha256"] == source_sha256(), ("the binary is stale: rebuild it with "
                                                      "scripts/build/build_binary.sh")


@pytest.mark.parametrize("clips", [CLIPS, EXTRA_CLIPS], ids=["audio", "audio-extra"])
def test_json_identical_to_package_for_every_clip(binary, cache, tmp_path, clips):
    assert clips, f"no clips found in {AUDIO}"
    expected = ok(run_package(tmp_path, "--format", "json", *clips))
    got = ok(run_binary(binary, tmp_path, "--format", "json", *clips, cache=cache))
    assert len(expected.splitlines()) == len(clips)
    for want, have in zip(expected.splitlines(), got.splitlines()):
        assert have == want, f"binary and package disagree on {json.loads(want)['path']}"
    assert got == expected


@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_json_identical_one_clip_per_run(binary, cache, tmp_path, clip):
    expected = ok(run_package(tmp_path, "--format", "json", clip))
    assert ok(run_binary(binary, tmp_path, "--format", "json", clip, cache=cache)) == expected


def test_archives_of_every_kind_identical_to_package(binary, cache, tmp_path):
    """What archives need beyond the decoders is bundled: tarfile and zlib, backports.zstd's extension (.tar.zst,
    also sniffed on stdin), zipfile, warcio (WARC.gz), gzip (a WARC gzipped whole): the binary's records are the
    package's, byte for byte."""
    import io
    import tarfile
    import zipfile

    from backports import zstd
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    clips = {"000000.wav": (AUDIO / "speech.wav").read_bytes(), "000001.ogg": EXTRA_CLIPS[0].read_bytes()}
    for name, mode in (("clips.tar", "w"), ("clips.tar.gz", "w:gz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            for member, data in clips.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "clips.tar.zst").write_bytes(zstd.compress((tmp_path / "clips.tar").read_bytes()))
    with zipfile.ZipFile(tmp_path / "clips.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in clips.items():
            archive.writestr(member, data)
    with open(tmp_path / "crawl.warc.gz", "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for member, data in clips.items():
            head = StatusAndHeaders("200 OK", [("Content-Type", "application/octet-stream")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"https://example.org/{member}", "response",
                                                          payload=io.BytesIO(data), http_headers=head))
    import gzip  # a WARC gzipped whole: read through gzip's own reader

    (tmp_path / "whole.warc.gz").write_bytes(gzip.compress(gzip.decompress((tmp_path / "crawl.warc.gz").read_bytes())))
    archives = ["clips.tar", "clips.tar.gz", "clips.tar.zst", "clips.zip", "crawl.warc.gz", "whole.warc.gz"]
    expected = ok(run_package(tmp_path, "--format", "json", "--hash", *archives))
    assert len(expected.splitlines()) == 2 * len(archives) and b'"error"' not in expected
    assert ok(run_binary(binary, tmp_path, "--format", "json", "--hash", *archives, cache=cache)) == expected
    piped = run_binary(binary, tmp_path, "--format", "json", "-", stdin=(tmp_path / "clips.tar.zst").read_bytes(),
                       cache=cache)
    assert [json.loads(line)["member"] for line in ok(piped).splitlines()] == list(clips)


def test_version_names_model_checkpoint_runtime_and_providers(binary, cache, tmp_path):
    import onnxruntime

    from audiotag.assets import DEFAULT_MODEL, asset_path

    text = ok(run_binary(binary, tmp_path, "--version", cache=cache)).decode()
    assert text == ok(run_package(tmp_path, "--version")).decode()
    meta = onnxruntime.InferenceSession(str(asset_path(DEFAULT_MODEL)),
                                        providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert re.search(rf"^audiotag {re.escape(__version__)}$", text, re.M)
    assert meta["model_name"] in text
    assert re.fullmatch(r"[0-9a-f]{64}", meta["checkpoint_sha256"]) and meta["checkpoint_sha256"] in text
    assert f"onnxruntime {onnxruntime.__version__}" in text
    assert "CPUExecutionProvider" in text


def test_self_check_passes(binary, cache, tmp_path):
    result = run_binary(binary, tmp_path, "--self-check", cache=cache)
    assert ok(result).startswith(b"self-check ok")


def test_parquet_is_one_line_saying_how_to_get_it(binary, cache, tmp_path):
    """pyarrow (+40.7 MB measured) would take the binary past 36 MB: -f parquet is the package's, with its extra."""
    result = run_binary(binary, tmp_path, AUDIO / "speech.wav", "-f", "parquet", "-o", tmp_path / "tags",
                        cache=cache)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "pip install 'audiotag[parquet]'" in lines[0]
    assert not (tmp_path / "tags").exists()


# ---- what is in the bundle ----

def test_bundle_is_lean(binary, cache, tmp_path):
    ok(run_binary(binary, tmp_path, "--version", cache=cache))
    (folder,) = [cache / name for name in unpacked(cache) if not name.startswith(".")]
    files = [p for p in folder.rglob("*") if p.is_file()]
    names = [p.relative_to(folder).as_posix() for p in files]
    tops = {name.split("/")[1].split(".")[0] for name in names if name.startswith("_internal/") and "/" in name[10:]}
    tops |= {Path(name).name.split(".")[0] for name in names if name.startswith("_internal/") and "/" not in name[10:]}
    assert {"audiotag", "numpy", "onnxruntime", "soundfile", "soxr"} <= tops
    for banned in ("torch", "onnx", "pytest", "_pytest", "hypothesis", "PyInstaller", "setuptools", "pandas",
                   "pyarrow", "ray", "tkinter", "_tkinter"):
        assert banned not in tops, f"{banned} is in the bundle"
    for banned in ("libonnxruntime.so", "providers_cuda", "providers_tensorrt", "_ssl.", "libcrypto", "libssl"):
        assert not [n for n in names if banned in n], f"{banned} is in the bundle"
    assert "_internal/audiotag/assets/mn04_as.onnx" in names
    assert "_internal/ld-linux-x86-64.so.2" in names  # the program never uses the server's glibc
    for path in files:  # no UPX: packed executables start slower and upset scanners
        with open(path, "rb") as handle:
            assert b"UPX!" not in handle.read(4096), f"{path} is UPX-packed"


# ---- the launcher's cache ----

def test_unpacks_once_into_home_cache_and_reuses_it(binary, tmp_path):
    first = run_binary(binary, tmp_path, "--version")  # no AUDIOTAG_CACHE_DIR: $HOME/.cache/audiotag
    ok(first)
    cache = tmp_path / ".cache" / "audiotag"
    (version,) = unpacked(cache)
    assert version.startswith(f"{__version__}-")
    marker = cache / version / "_internal" / "audiotag"
    stamp = marker.stat().st_mtime_ns
    assert ok(run_binary(binary, tmp_path, "--version")) == first.stdout
    assert unpacked(cache) == [version] and marker.stat().st_mtime_ns == stamp  # reused, not unpacked again


def test_unwritable_cache_is_a_one_line_error(binary, tmp_path):
    result = run_binary(binary, tmp_path, "--version", cache="/proc/audiotag-cache")
    assert result.returncode != 0
    assert b"AUDIOTAG_CACHE_DIR" in result.stderr and len(result.stderr.splitlines()) == 1


def test_concurrent_first_start(binary, tmp_path):
    cache = tmp_path / "cache"
    clip = AUDIO / "speech.wav"
    expected = ok(run_package(tmp_path, "--format", "json", clip))
    env = clean_env(tmp_path, AUDIOTAG_CACHE_DIR=cache)
    runs = [subprocess.Popen([str(binary), "--format", "json", str(clip)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=tmp_path, env=env) for _ in range(8)]
    results = [(run.communicate(timeout=300), run.returncode) for run in runs]
    for (out, err), code in results:
        assert code == 0, err.decode(errors="replace")
        assert out == expected
    assert len(unpacked(cache)) == 1, f"expected one unpacked version and no partial folders: {unpacked(cache)}"


def test_sigkill_leaves_nothing_in_tmp(binary, cache, tmp_path):
    ok(run_binary(binary, tmp_path, "--version", cache=cache))
    # Waiting on a stdin that stays open: the program is fully started and busy when it is killed.
    command, extra, folders = with_private_tmp(tmp_path, [str(binary), "-"])
    run = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           cwd=tmp_path, env=clean_env(tmp_path, AUDIOTAG_CACHE_DIR=cache, **extra))
    try:
        _wait_for_stdin_read(run.pid)
        assert run.poll() is None, "the binary exited before it was killed"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL
    assert leftovers(folders) == []


def test_sigkill_while_unpacking_then_recovers(binary, tmp_path):
    cache = tmp_path / "cache"
    command, extra, folders = with_private_tmp(tmp_path, [str(binary), "--version"])
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                           env=clean_env(tmp_path, AUDIOTAG_CACHE_DIR=cache, **extra))
    deadline = time.time() + 30
    while not any(".partial-" in name for name in unpacked(cache)) and run.poll() is None:
        assert time.time() < deadline, "the launcher never started unpacking"
        time.sleep(0.002)
    assert run.poll() is None, "the launcher ended before it was killed"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    assert leftovers(folders) == []
    assert [name for name in unpacked(cache) if not name.startswith(".")] == [], "a half-unpacked version is visible"
    # The dead launcher's partial folder holds no lock any more; once it is old enough the next start removes it.
    for name in unpacked(cache):
        os.utime(cache / name, (time.time() - 3600, time.time() - 3600))
    ok(run_binary(binary, tmp_path, "--version", cache=cache))
    assert len(unpacked(cache)) == 1 and not unpacked(cache)[0].startswith(".")


# ---- without /proc ----

def test_without_proc_one_line_and_exit_127(binary, tmp_path):
    """Where /proc is not mounted (a bare chroot, some sandboxes) the bundled program cannot start through
    /proc/self/exe with its own loader, and the server's would fail with a cryptic "GLIBC_2.xx not found": the
    launcher says what is missing in one line, exit 127, having unpacked from its argv[0] all the same."""
    if not can_unshare():
        pytest.skip("cannot hide /proc: no user and mount namespaces here (unshare --user --mount failed)")
    cache = tmp_path / "cache"
    hidden = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
              'mount -t tmpfs none /proc && exec "$@"', "sh", str(binary)]
    result = subprocess.run([*hidden, "--version"], capture_output=True, cwd=tmp_path, timeout=300,
                            env=clean_env(tmp_path, AUDIOTAG_CACHE_DIR=cache))
    assert result.returncode == 127 and result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "audiotag: launcher: needs /proc (the bundled program starts through /proc/self/exe): mount it, e.g. "
        "mount -t proc proc /proc"]
    (version,) = unpacked(cache)
    assert not version.startswith(".")
    assert ok(run_binary(binary, tmp_path, "--version", cache=cache)).startswith(b"audiotag ")  # /proc back


def _wait_for_stdin_read(pid: int, timeout: float = 60) -> None:
    """Until one of the process's threads sits in read(0, ...): the launcher has exec'd the frozen program,
    which has started and is waiting for its input (/proc/PID/task/*/syscall: number 0 is read, then the fd)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            calls = [(task / "syscall").read_text() for task in Path(f"/proc/{pid}/task").iterdir()]
        except (FileNotFoundError, ProcessLookupError):
            raise AssertionError("the binary exited before it was killed")
        if any(call.startswith("0 0x0 ") for call in calls):
            return
        time.sleep(0.01)
    raise AssertionError("the binary did not reach its read of stdin within the time limit")
