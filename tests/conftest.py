"""Shared fixtures. Data from ../shared is found through one setting: $AUDIOTAG_SHARED (default ../shared)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared")).resolve()
REFERENCE = SHARED / "reference"
AUDIO = SHARED / "audio"
MAIN_CLIPS = ("music", "speech", "typing")  # the 32 kHz reference clips

if not (REFERENCE / "reference.jsonl").is_file():
    raise pytest.UsageError(f"reference data not found in {SHARED}: set AUDIOTAG_SHARED to the shared directory")


def reference_records(subdir: str = "") -> list:
    """The lines of reference.jsonl (or extra/reference.jsonl), one dict per clip."""
    with open(REFERENCE / subdir / "reference.jsonl") as lines:
        return [json.loads(line) for line in lines]


def reference_arrays(record: dict, subdir: str = "") -> dict:
    with np.load(REFERENCE / subdir / record["npz"]) as arrays:
        return dict(arrays)


def run_cli(*args, stdin: bytes = b"", env=None) -> subprocess.CompletedProcess:
    """Run `python -m audiotag` as a user would; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "audiotag", *map(str, args)], input=stdin,
                          capture_output=True, env=env, timeout=300)


@pytest.fixture(scope="session")
def tagger():
    from audiotag import Tagger

    return Tagger()
