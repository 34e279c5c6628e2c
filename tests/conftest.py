"""Shared fixtures. Data from ../shared is found through one setting: $AUDIOTAG_SHARED (default ../shared)."""

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared")).resolve()
REFERENCE = SHARED / "reference"
AUDIO = SHARED / "audio"
MAIN_CLIPS = ("music", "speech", "typing")  # the 32 kHz reference clips

sys.path.insert(0, str(REPO / "scripts" / "tools"))
from compare_records import compare_lines  # noqa: E402,F401  (two runs agree: scores within 1e-5, all else equal)

if not (REFERENCE / "reference.jsonl").is_file():
    raise pytest.UsageError(f"reference data not found in {SHARED}: set AUDIOTAG_SHARED to the shared directory")


def reference_records(subdir: str = "") -> list:
    """The lines of reference.jsonl (or extra/reference.jsonl), one dict per clip."""
    with open(REFERENCE / subdir / "reference.jsonl") as lines:
        return [json.loads(line) for line in lines]


def reference_arrays(record: dict, subdir: str = "") -> dict:
    with np.load(REFERENCE / subdir / record["npz"]) as arrays:
        return dict(arrays)


def cpu_while_the_lock_is_held(work, enough: float = 0.005) -> tuple:
    """(seconds of CPU a second thread running ``work()`` used while this thread held Python's lock, up to
    ``enough``; what ``work`` returned). This thread holds the lock in a busy loop with no forced switch for 100 s:
    the other thread's CPU grows only while it runs without the lock. CPU time, not wall time: a loaded machine
    slows both sides alike (the 20 s bound only ends a failing run)."""
    import threading
    import time

    started, got = threading.Event(), []

    def run():
        started.set()
        got.append(work())

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=run)
    sys.setswitchinterval(100)
    try:
        thread.start()
        started.wait()  # the lock comes back to this thread when the other one lets go of it
        clock = time.pthread_getcpuclockid(thread.ident)
        before, give_up = time.clock_gettime(clock), time.monotonic() + 20
        while time.clock_gettime(clock) - before < enough and time.monotonic() < give_up:
            pass
        grown = time.clock_gettime(clock) - before
    finally:
        sys.setswitchinterval(interval)
    thread.join()
    return grown, got[0]


def _binary() -> Path:
    return Path(os.environ.get("AUDIOTAG_BINARY", REPO / "dist" / "audiotag"))


# The commands the CLI suite runs against: the package always; the frozen binary when it has been built
# (CI always builds it first, so there the suite covers both).
CLI_COMMANDS = {"python": [sys.executable, "-m", "audiotag"]}
if _binary().is_file():
    CLI_COMMANDS["binary"] = [str(_binary())]


@pytest.fixture(scope="session")
def binary() -> Path:
    """The frozen binary: a test that needs it fails, not skips, when it is missing (CI always builds it)."""
    path = _binary()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"no frozen binary at {path}: build it with scripts/build/build_binary.sh (or set AUDIOTAG_BINARY)")
    return path


BINARY_CACHE = Path(tempfile.mkdtemp(prefix="binary-test-cache-"))


class Cli:
    """One way of starting audiotag, run as a user would: a clean environment and an empty working directory."""

    def __init__(self, command, workdir: Path):
        self.command = command
        self.workdir = workdir

    def __call__(self, *args, stdin: bytes = b"", env: dict = None, timeout: float = 300):
        return subprocess.run([*self.command, *map(str, args)], input=stdin, capture_output=True,
                              env=self.environment(env), cwd=self.workdir, timeout=timeout)

    def popen(self, *args, env: dict = None) -> subprocess.Popen:
        """A running audiotag with pipes on stdin, stdout and stderr (for live streams and kills)."""
        return subprocess.Popen([*self.command, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.environment(env), cwd=self.workdir)

    def shell(self, *args) -> str:
        """The command line, quoted for ``bash -c`` (for pipelines such as ``| head -1``)."""
        return shlex.join([*self.command, *map(str, args)])

    def environment(self, env: dict = None) -> dict:
        clean = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir), "LANG": "C.UTF-8",
                 "AUDIOTAG_CACHE_DIR": str(BINARY_CACHE)}  # the binary unpacks once per test session
        if self.command[0] == sys.executable:
            clean["PYTHONPATH"] = str(REPO)  # the package under test, not whatever is installed
        if "AUDIOTAG_FFMPEG" in os.environ:  # AUDIOTAG_FFMPEG=pyav runs the suite on PyAV, the fallback
            clean["AUDIOTAG_FFMPEG"] = os.environ["AUDIOTAG_FFMPEG"]
        clean.update(env or {})
        return clean


@pytest.fixture(params=sorted(CLI_COMMANDS))
def cli(request, tmp_path) -> Cli:
    return Cli(CLI_COMMANDS[request.param], tmp_path)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(BINARY_CACHE, ignore_errors=True)


def readline_within(stream, seconds: float = 120) -> bytes:
    """The next line of a subprocess's output; fails (instead of hanging the suite) when none comes in time."""
    ready, _, _ = select.select([stream], [], [], seconds)
    assert ready, f"no output within {seconds} s"
    return stream.readline()


@pytest.fixture(scope="session")
def tagger():
    from audiotag import Tagger

    return Tagger()


def save_as_format_1(source, target) -> None:
    """An audiotag model as exported before the categories (model format 1): no category metadata."""
    import onnx

    proto = onnx.load(str(source))
    for prop in list(proto.metadata_props):
        if prop.key in ("categories", "ontology_sha256"):
            proto.metadata_props.remove(prop)
        elif prop.key == "audiotag_model_format":
            prop.value = "1"
    onnx.save(proto, str(target))
