"""Scores are stable to about 1e-6 across CPUs and BLAS kernels, not bit for bit: OpenBLAS picks a kernel per CPU
(or per $OPENBLAS_CORETYPE, set on some CI hosts), and kernels round the filterbank products differently. So two
ways of running audiotag are compared with scripts/tools/compare_records.py (scores within 1e-5, every other field
equal), and these tests show that comparison tolerates a kernel change and nothing more."""

import json

import pytest

from conftest import AUDIO, compare_lines

KERNELS = {  # what CI hosts carry, and one whose rounding differs on the Intel CPUs these machines have
    "default": {},
    "haswell-l2-512": {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"},
    "sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
}
CLIPS = [AUDIO / "speech.wav", AUDIO / "music.wav", AUDIO / "extra" / "esc10-babycry-1-60997-B.mp3"]


@pytest.fixture(scope="module")
def default_records(tmp_path_factory):
    from conftest import CLI_COMMANDS, Cli

    result = Cli(CLI_COMMANDS["python"], tmp_path_factory.mktemp("default"))("--format", "json", *CLIPS)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_every_kernel_agrees_with_the_package_default(cli, kernel, default_records):
    """Package and binary under each kernel setting against the package with none: agree within 1e-5."""
    result = cli("--format", "json", *CLIPS, env=KERNELS[kernel])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(CLIPS)
    assert compare_lines(default_records, lines) == []


def test_the_comparison_catches_what_a_kernel_cannot_cause(default_records):
    record = json.loads(default_records[0])

    def changed(edit) -> list:
        other = json.loads(default_records[0])
        edit(other)
        return compare_lines([record], [other])

    def nudge(by):
        return lambda r: r["tags"][3].update(score=r["tags"][3]["score"] + by)

    assert changed(nudge(2e-6)) == []  # a kernel's rounding
    assert changed(nudge(3e-5))  # a real change of score
    assert changed(lambda r: r.update(duration=r["duration"] + 0.5))
    assert changed(lambda r: r["tags"][0].update(label="Music"))
    assert changed(lambda r: r.update(error="cannot decode"))
    assert changed(lambda r: r["tags"].pop(0))  # the best label missing
    assert compare_lines([record], [record, record]) != []


def test_a_near_tie_at_the_cut_off_may_fall_either_way(default_records):
    record = json.loads(default_records[0])
    last = record["tags"][-1]
    other = json.loads(default_records[0])
    other["tags"][-1] = dict(last, label="Runner-up", mid="/m/x", index=526, score=last["score"] - 1e-6)
    assert compare_lines([record], [other]) == []
    other["tags"][-1]["score"] = last["score"] - 1e-3  # a runner-up well below: not a tie, the records differ
    assert compare_lines([record], [other]) != []
