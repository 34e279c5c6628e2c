"""Both frontends, _logmel.c and numpy, reproduce upstream's log-mel features; the set-up uses _logmel.c."""

import subprocess
import sys

import numpy as np
import pytest

from audiotag.infer import frontend
from audiotag.assets import asset_path
from conftest import MAIN_CLIPS, REPO, cpu_while_the_lock_is_held, reference_arrays, reference_records

MEL_TOLERANCE = 1e-4
# On the quietest mel bins upstream's own float32 arithmetic strays: for librosa-trumpet.ogg an exact float64
# computation differs from upstream's mel by 1.55e-4, so the extra clips get a looser bound.
EXTRA_MEL_TOLERANCE = 2e-4


@pytest.fixture(params=["native", "numpy"])
def implementation(request, monkeypatch):
    """Each test that takes it runs on both frontends: numpy is what runs where _logmel.so was not built."""
    if request.param == "numpy":
        monkeypatch.setattr(frontend, "_native", lambda: None)
    else:
        assert frontend._native() is not None, "_logmel.so is not built: run scripts/build/setup.sh"
    return request.param


@pytest.mark.parametrize("record", [r for r in reference_records() if r["file"][:-4] in MAIN_CLIPS],
                         ids=lambda r: r["file"])
def test_mel_matches_upstream(record, implementation):
    ref = reference_arrays(record)
    mel = frontend.log_mel(ref["waveform"])
    assert mel.shape == ref["mel"].shape == (128, record["n_frames"])
    assert mel.dtype == np.float32
    assert np.abs(mel - ref["mel"]).max() <= MEL_TOLERANCE


def test_mel_matches_upstream_on_resampled_clips(implementation):
    """Every extra clip whose waveform is stored: features from upstream's waveform match its mel."""
    records = [r for r in reference_records("extra")]
    checked = 0
    for record in records:
        ref = reference_arrays(record, "extra")
        if "waveform" not in ref:
            continue
        assert np.abs(frontend.log_mel(ref["waveform"]) - ref["mel"]).max() <= EXTRA_MEL_TOLERANCE, record["file"]
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("n_samples", [frontend.MIN_SAMPLES, 1000, 32000, 320000, 320001, 320320])
def test_frame_count_matches_upstream_rule(n_samples, implementation):
    samples = np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32)
    mel = frontend.log_mel(samples)
    assert mel.shape == (128, 1 + (n_samples - 1) // 320)
    assert np.isfinite(mel).all()


def test_batched_input_equals_one_by_one(implementation):
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((3, 32000)).astype(np.float32)
    stacked = frontend.log_mel(batch)
    for row, mel in zip(batch, stacked):
        np.testing.assert_array_equal(frontend.log_mel(row), mel)


def test_silence_gives_the_log_floor(implementation):
    mel = frontend.log_mel(np.zeros(32000, np.float32))
    np.testing.assert_allclose(mel, (np.log(np.float32(1e-5)) + 4.5) / 5, rtol=1e-6)


def test_too_short_input_is_refused_with_a_reason(implementation):
    with pytest.raises(ValueError, match="at least"):
        frontend.log_mel(np.zeros(frontend.MIN_SAMPLES - 1, np.float32))


def test_bundled_assets_are_what_the_script_makes(tmp_path):
    script = REPO / "scripts" / "model" / "make_frontend_assets.py"
    subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path)], check=True, capture_output=True)
    for name in ("mel_filterbank.npy", "stft_window.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / name), np.load(asset_path(name)))


def test_filterbank_has_upstreams_shape():
    fb = np.load(asset_path("mel_filterbank.npy"))
    assert fb.shape == (128, 513)
    assert not fb[:, 0].any() and not fb[:, 512].any()  # DC and Nyquist never contribute
    assert fb.max() <= 1.0 and fb.min() >= 0.0
    window = np.load(asset_path("stft_window.npy"))
    assert window.shape == (1024,) and abs(window.sum() - 399.5) < 1e-3
    assert not window[:112].any() and not window[912:].any()


def test_the_numpy_filterbank_hands_pythons_lock_over_once_per_block_and_pass(monkeypatch):
    """Where _logmel.so is missing: each matmul releases Python's lock and takes it back, where threads beside it
    queue (`--jobs 16` on 2 cores ran 1.3-1.4x as long as `--jobs 2` with a matmul per block and 128-frame chunk):
    a 10 s clip takes one per block of bands and 512 frames, 22, not 88. The mel is the upstream one either way."""
    calls = []

    class CountingNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        def matmul(self, *args, **kwargs):
            calls.append(1)
            return np.matmul(*args, **kwargs)

    ref = reference_arrays(next(r for r in reference_records() if r["file"][:-4] in MAIN_CLIPS))
    ten_seconds = ref["waveform"][:320000]
    monkeypatch.setattr(frontend, "_native", lambda: None)
    monkeypatch.setattr(frontend, "np", CountingNumpy())
    mel = frontend.log_mel(ten_seconds)
    blocks = len(frontend._constants()[3])
    assert mel.shape == (128, 1000)
    assert len(calls) == blocks * 2 <= 24


def test_a_clips_frontend_runs_while_another_thread_holds_pythons_lock():
    """`--jobs` threads scale only if the frontend needs Python's lock rarely. The main thread holds the lock here
    (a busy loop, and no forced switch for 100 s) while a second thread computes a minute's log-mel: it still
    does most of the work it does alone (60% of the CPU time of a run in this thread first). numpy's version stops
    after its first calls (about 40% of the work: the pre-emphasis of the whole minute and fresh memory), waiting
    for the lock."""
    import time

    samples = np.random.default_rng(1).standard_normal(60 * frontend.SAMPLE_RATE).astype(np.float32)
    frontend.log_mel(samples)  # the library and its arrays loaded first (file reads let go of the lock)
    alone = float("inf")
    for _ in range(3):  # the least of three: a noisy machine inflates one measure of ~15 ms, and the bar with it
        before = time.thread_time()
        frontend.log_mel(samples)
        alone = min(alone, time.thread_time() - before)
    grown, mel = cpu_while_the_lock_is_held(lambda: frontend.log_mel(samples), enough=0.6 * alone)
    assert grown >= 0.6 * alone, (f"the frontend thread ran {grown * 1000:.2f} ms of CPU while this thread held "
                                  f"the lock, of the {alone * 1000:.2f} ms it takes alone")
    assert mel.shape == (128, 6000)
