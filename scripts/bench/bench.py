"""How fast audiotag tags a directory, against what the model alone allows and against one process per file.

    .venv/bin/python scripts/bench/bench.py [--count 200] [--seconds 10] [--keep DIR] [--quick] [--checkout DIR]

One run makes a corpus of clips (``scripts/bench/make_corpus.py``: mixed 16/32/44.1/48 kHz WAV and FLAC) and measures
  (a) the compute bound: the model alone on precomputed log-mels, at the best batch size, onnxruntime thread
      count and number of threads calling run() (one session, as the pipeline has);
  (b) ``audiotag DIR -o FILE`` end to end in a subprocess, with the default --jobs/--threads and a few others;
  (c) one file at a time: a fresh ``audiotag FILE`` process per file on a subset, extrapolated per file;
and, in this process and one thread, what each stage costs per clip: decode, resample, frontend, model.

The machine may be shared: the load average is printed with every figure, configurations are interleaved
round by round and each figure is the median of its rounds. Targets (exit status 1 when one is missed):
(b) reaches TARGET_OF_BOUND of (a)'s files/s, (b) is TARGET_OVER_SINGLE times (c), and the frontend costs no more
than the model per clip. Performance is asserted here only, never in the test suite.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr

REPO = Path(__file__).resolve().parent.parent.parent
ENVIRONMENT = dict(os.environ)  # what audiotag runs with: importing audiotag.cli sets OPENBLAS_NUM_THREADS here

from audiotag import decode  # noqa: E402
from audiotag.assets import DEFAULT_MODEL, asset_path  # noqa: E402
from audiotag.infer.model import Model  # noqa: E402
from audiotag import TagOptions
from audiotag.infer.clip import model_input  # noqa: E402
from audiotag.infer.windows import windows  # noqa: E402
from audiotag.cli import keep_freed_memory  # noqa: E402

TARGET_OF_BOUND = 0.40  # end to end must reach this share of the model-alone files/s
TARGET_OVER_SINGLE = 5.0  # end to end must be this many times faster than a process per file
BATCH_SIZES = (1, 4, 8, 16, 32)
SINGLE_SUBSET = 20  # files run one process each for (c)
STAGE_SUBSET = 40  # files whose stages are timed in-process
MEL_SUBSET = 64  # distinct log-mels cycled through for (a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="clips in the corpus (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--keep", metavar="DIR", help="make (or reuse) the corpus in DIR and keep it")
    parser.add_argument("--quick", action="store_true", help="one round of everything, smaller subsets")
    parser.add_argument("--checkout", metavar="DIR", type=Path, default=REPO,
                        help="run (b) and (c) with the audiotag of another checkout (to measure a proposed change)")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    import onnxruntime

    print(f"machine: {cores} cores available ({os.cpu_count()} online), {_cpu_name()}")
    print(f"numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, python {sys.version.split()[0]}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"load average at start: {_load()}")
    _warn_if_busy(cores)

    with tempfile.TemporaryDirectory(prefix="audiotag-bench-") as scratch:
        corpus = Path(args.keep) if args.keep else Path(scratch) / "corpus"
        files = _corpus(corpus, args.count, args.seconds)
        audio_seconds = sum(soundfile.info(str(path)).duration for path in files)
        rates = sorted({soundfile.info(str(path)).samplerate for path in files})
        print(f"corpus: {len(files)} files in {corpus}, {audio_seconds / len(files):.1f} s each on average, "
              f"rates {rates} Hz, {sorted({path.suffix for path in files})}")
        options = TagOptions()

        # The stages run with the command line's malloc settings (audiotag.cli.keep_freed_memory): without them, the
        # pages freed blocks give back and take again cost decode+resample 2 ms per clip, which is no stage's work.
        keep_freed_memory()
        stage_files = files[:min(len(files), 10 if args.quick else STAGE_SUBSET)]
        stages, mels, windows_per_file = measure_stages(stage_files, options, rounds)
        bound = measure_model(mels, cores, rounds, windows_per_file)
        stages["model"] = bound["single-thread per clip"]
        end_to_end = measure_cli(corpus, len(files), cores, rounds, Path(scratch), args.checkout, files[0])
        single = measure_single(files[:min(len(files), 5 if args.quick else SINGLE_SUBSET)], Path(scratch),
                                args.checkout)

    return report(len(files), audio_seconds, cores, stages, bound, end_to_end, single)


# --- the corpus -------------------------------------------------------------------------------------------------

def _corpus(directory: Path, count: int, seconds: float) -> list:
    existing = sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".wav", ".flac")) \
        if directory.is_dir() else []
    if len(existing) >= count:
        print(f"corpus: reusing {directory}")
        return existing[:count]
    try:
        from make_corpus import make_corpus  # the Ray benchmark's generator, so both measure the same clips
    except ImportError:
        make_corpus = _make_corpus
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    make_corpus(directory, count=count, seconds=seconds, seed=0)
    print(f"corpus: made by {make_corpus.__module__}.{make_corpus.__name__} in {time.perf_counter() - started:.1f} s")
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".wav", ".flac"))


def _make_corpus(directory, count: int = 200, seconds: float = 10, seed: int = 0) -> None:
    """Stand-in for scripts/bench/make_corpus.py: 16/32/44.1/48 kHz, WAV and FLAC (16-bit), every third clip stereo;
    tones with a moving pitch, noise bursts and clicks, so FLAC has real work to do."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        rate = (16000, 32000, 44100, 48000)[index % 4]
        kind = ("wav", "flac")[(index // 4) % 2]
        channels = 2 if index % 3 == 0 else 1
        t = np.arange(int(seconds * rate)) / rate
        pitch = rng.uniform(100, 2000) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
        signal = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / rate)
        bursts = np.sin(2 * np.pi * rng.uniform(0.2, 2) * t) > 0
        signal += rng.uniform(0.01, 0.1) * rng.standard_normal(len(t)) * bursts
        signal[rng.integers(0, len(t), 20)] += 0.8
        data = np.stack([signal * rng.uniform(0.5, 1) for _ in range(channels)], axis=1)
        soundfile.write(str(Path(directory) / f"clip{index:04d}.{kind}"), np.clip(data, -1, 1), rate, subtype="PCM_16")


# --- stages, in this process, one thread ------------------------------------------------------------------------

STAGES = ("decode", "resample", "decode+resample (decode/)", "frontend")


def measure_stages(files: list, options: TagOptions, rounds: int) -> tuple:
    """Per-clip (CPU, wall) seconds of each stage: CPU of this thread is what a stage costs whatever else runs on
    the machine. Each the median of ``rounds`` passes, then the mean over files. Also returns the clips' log-mels
    and their windows per file."""
    per_file = {name: [] for name in STAGES}
    mels, window_counts = [], []
    model_input(_resample(*_decode(files[0])))  # first calls load assets and touch fresh memory: not timed
    for path in files:
        times = {name: [] for name in STAGES}
        for _ in range(rounds):
            blocks, rate = _timed(times["decode"], _decode, path)
            samples = _timed(times["resample"], _resample, blocks, rate)
            clip_windows = windows([samples], options.window_samples, options.hop_samples)
            window_mels = _timed(times["frontend"], lambda: [model_input(w) for _, w in clip_windows])
            packaged = _timed(times["decode+resample (decode/)"],
                              lambda: np.concatenate(list(decode.open_file(path).samples())))
        assert len(packaged) == len(samples), (path, len(packaged), len(samples))
        for name in STAGES:
            per_file[name].append(np.median(times[name], axis=0))
        mels.extend(window_mels)
        window_counts.append(len(window_mels))
    print(f"stages: timed on {len(files)} files x {rounds} rounds (load {_load()})")
    return {name: tuple(np.mean(values, axis=0)) for name, values in per_file.items()}, mels, \
        float(np.mean(window_counts))


def _timed(record: list, function, *arguments):
    """function(*arguments), appending (thread CPU, wall) seconds to ``record``."""
    cpu, wall = time.thread_time(), time.perf_counter()
    result = function(*arguments)
    record.append((time.thread_time() - cpu, time.perf_counter() - wall))
    return result


def _decode(path):
    """soundfile blocks -> mono float32, as audiotag.decode reads them."""
    blocks = []
    with soundfile.SoundFile(str(path)) as sound:
        rate = sound.samplerate
        while len(block := sound.read(decode.block_frames(sound.channels, sound.samplerate), dtype="float32",
                                      always_2d=True)):
            blocks.append(decode.stream._downmix(block))
    return blocks, rate


def _resample(blocks, rate):
    if rate == decode.TARGET_RATE:
        return np.concatenate(blocks)
    stream = soxr.ResampleStream(rate, decode.TARGET_RATE, 1, dtype="float32", quality="HQ")
    out = [stream.resample_chunk(block) for block in blocks]
    out.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(out)


# --- (a) the model alone ----------------------------------------------------------------------------------------

def measure_model(mels: list, cores: int, rounds: int, windows_per_file: float) -> dict:
    """Seconds per window for every (onnxruntime setting, batch) on the same mels; the best one is the bound."""
    model_path = asset_path(DEFAULT_MODEL)
    sessions = {"1 thread": Model(model_path, threads=1)}
    if cores > 1:
        sessions[f"{cores} threads"] = Model(model_path, threads=cores)
    by_shape = {}
    for mel in mels[:MEL_SUBSET]:
        by_shape.setdefault(mel.shape, []).append(mel)
    shape, same = max(by_shape.items(), key=lambda item: len(item[1]))  # one length: the model's input is fixed
    windows_per_round = max(BATCH_SIZES) * 4
    batches = {size: [np.stack([same[(i + j) % len(same)] for j in range(size)])
                      for i in range(0, windows_per_round, size)] for size in BATCH_SIZES}
    for session in sessions.values():
        for size in BATCH_SIZES:
            session.run(batches[size][0])  # first call of a shape allocates
    seconds = {(name, size): [] for name in sessions for size in BATCH_SIZES}
    for _ in range(rounds):
        for name, session in sessions.items():
            for size in BATCH_SIZES:
                cpu, wall = time.process_time(), time.perf_counter()
                for batch in batches[size]:
                    session.run(batch)
                seconds[(name, size)].append(((time.process_time() - cpu) / windows_per_round,
                                              (time.perf_counter() - wall) / windows_per_round))
    per_window = {key: tuple(np.median(values, axis=0)) for key, values in seconds.items()}  # (cpu, wall)
    single_session = min(wall for _, wall in per_window.values())
    if cores > 1:  # as the pipeline runs it: the one-thread session, its run() called from every core at once
        concurrent = f"1 thread, {cores} callers"
        for size in BATCH_SIZES:
            per_window[(concurrent, size)] = _concurrent_calls(sessions["1 thread"], batches[size], cores, rounds)
    print(f"(a) model alone, {windows_per_round} windows of {shape} per setting x {rounds} rounds (load {_load()})")
    print("    ms per window, wall (CPU)" + "".join(f"    batch {size:<3d}" for size in BATCH_SIZES))
    for name in dict.fromkeys(name for name, _ in per_window):
        cells = [per_window[(name, size)] for size in BATCH_SIZES]
        print(f"    {name:25s}" + "".join(f"  {1e3 * wall:5.2f} ({1e3 * cpu:5.2f})" for cpu, wall in cells))
    single_best = min((key for key in per_window if key[0] == "1 thread"), key=lambda key: per_window[key][0])
    best = min(per_window, key=lambda key: per_window[key][1])
    contention = None
    if cores > 1:
        batch = single_best[1]
        contention = per_window[(f"1 thread, {cores} callers", batch)][0] / per_window[single_best][0]
    return {
        "concurrent per window": contention,
        "best": best,
        "per clip": per_window[best][1] * windows_per_file,
        "single-thread per clip": tuple(value * windows_per_file for value in per_window[single_best]),
        "single-thread batch": single_best[1],
        "single caller per clip": single_session * windows_per_file,
    }


def _concurrent_calls(session, batches, cores: int, rounds: int) -> tuple:
    """(CPU, wall) seconds per window with ``cores`` threads calling one session's run() side by side."""
    results = []
    for _ in range(rounds):
        barrier = threading.Barrier(cores + 1)

        def work():
            barrier.wait()
            for batch in batches:
                session.run(batch)

        workers = [threading.Thread(target=work) for _ in range(cores)]
        for worker in workers:
            worker.start()
        barrier.wait()
        cpu, started = time.process_time(), time.perf_counter()
        for worker in workers:
            worker.join()
        windows = cores * sum(len(b) for b in batches)
        results.append(((time.process_time() - cpu) / windows, (time.perf_counter() - started) / windows))
    return tuple(np.median(results, axis=0))


# --- (b) end to end, (c) a process per file ---------------------------------------------------------------------

def _cli(args: list, output: Path, checkout: Path) -> tuple:
    """Run ``audiotag ARGS -o OUTPUT`` from ``checkout``; (wall seconds, CPU seconds of the child and its worker,
    lines written, minor page faults)."""
    if output.exists():
        output.unlink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "audiotag", *map(str, args), "-o", str(output), "-f", "jsonl"],
                            cwd=checkout, capture_output=True, env=ENVIRONMENT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"bench: audiotag {' '.join(map(str, args))} failed ({result.returncode}): "
                         f"{result.stderr.decode(errors='replace').strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(output) as lines:
        return wall, cpu, sum(1 for _ in lines), after.ru_minflt - before.ru_minflt


def measure_cli(corpus: Path, count: int, cores: int, rounds: int, scratch: Path, checkout: Path,
                first: Path) -> dict:
    """Wall and CPU seconds of ``audiotag DIR`` for the default and a few --jobs/--threads settings, interleaved;
    and of the default and --in-process on a folder of one clip (ONE_CLIP), their start-up and end: what a run of
    weeks pays once, taken from the run on the corpus to leave what each file costs."""
    settings = {"default": [], "--in-process (no crash isolation)": ["--in-process"]}
    for jobs, threads in ((1, 1), (cores, 1), (cores + 1, 1), (2 * cores, 1)):
        settings[f"--jobs {jobs} --threads {threads}"] = ["--jobs", jobs, "--threads", threads]
    one = scratch / "one-clip"
    one.mkdir(exist_ok=True)
    (one / first.name).unlink(missing_ok=True)
    (one / first.name).symlink_to(first.resolve())
    runs = {name: [] for name in (*settings, *(ONE_CLIP + name for name in list(settings)[:2]))}
    loads = []
    for _ in range(rounds):
        for name in runs:
            folder, extra = (one, settings[name[len(ONE_CLIP):]]) if name.startswith(ONE_CLIP) else \
                (corpus, settings[name])
            loads.append(os.getloadavg()[0])
            wall, cpu, lines, faults = _cli([folder, *extra], scratch / "out.jsonl", checkout)
            if lines != (1 if folder == one else count):
                raise SystemExit(f"bench: audiotag {name} wrote {lines} records")
            runs[name].append((wall, cpu, faults))
    print(f"(b) audiotag DIR from {checkout}, {rounds} rounds interleaved (1-min load {min(loads):.2f}.."
          f"{max(loads):.2f})")
    return {name: tuple(statistics.median(run[i] for run in values) for i in range(3)) for name, values in runs.items()}


ONE_CLIP = "one clip: "  # the key of a setting's run on one clip (measure_cli)


def measure_single(files: list, scratch: Path, checkout: Path) -> dict:
    """A fresh ``audiotag FILE`` per file, one after another; and ``audiotag --version``, the start-up alone."""
    load = os.getloadavg()[0]
    walls = []
    for path in files:
        wall, _, lines, _ = _cli([path], scratch / "one.jsonl", checkout)
        assert lines == 1
        walls.append(wall)
    startups, startup_cpu = [], []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "audiotag", "--version"], cwd=checkout, capture_output=True,
                       env=ENVIRONMENT, check=True)
        startups.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        startup_cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    print(f"(c) one process per file on {len(files)} files (1-min load {load:.2f})")
    return {"per file": statistics.mean(walls), "startup": statistics.median(startups),
            "startup cpu": statistics.median(startup_cpu)}


# --- the report -------------------------------------------------------------------------------------------------

def report(count, audio_seconds, cores, stages, bound, end_to_end, single) -> int:
    clip = audio_seconds / count
    rates = {"a": 1 / bound["per clip"], "b": count / end_to_end["default"][0], "c": 1 / single["per file"]}
    setting, batch = bound["best"]
    print()
    print(f"{'':46s} {'files/s':>9s} {'x realtime':>11s}")
    rows = [
        (f"(a) model alone ({setting}, batch {batch})", rates["a"]),
        ("    best with run() called from one thread", 1 / bound["single caller per clip"]),
        ("(b) audiotag DIR (default --jobs/--threads)", rates["b"]),
    ]
    runs = {name: run for name, run in end_to_end.items() if not name.startswith(ONE_CLIP)}
    rows += [(f"    audiotag DIR {name}", count / wall) for name, (wall, *_) in runs.items() if name != "default"]
    rows.append(("(c) audiotag FILE, one process per file", rates["c"]))
    for name, rate in rows:
        print(f"{name:46s} {rate:9.1f} {rate * clip:11.0f}")
    isolated = end_to_end["--in-process (no crash isolation)"][0] / end_to_end["default"][0]
    print(f"    crash isolation (default) / --in-process throughput: {isolated:.3f} (target >= 0.95)")
    print(f"    start-up alone (audiotag --version): {single['startup']:.2f} s; "
          f"(b) without it: {count / (end_to_end['default'][0] - single['startup']):.1f} files/s")
    print()
    print("CPU use of (b), user+sys over wall x cores (and minor page faults: fresh memory touched):")
    for name, (wall, cpu, faults) in runs.items():
        share = 100 * cpu / (wall * cores)
        print(f"    {name:28s} {wall:6.2f} s wall, {cpu:6.2f} s CPU ({1e3 * cpu / count:5.1f} ms per file), "
              f"{share:3.0f}% of {cores} cores, {faults / count:5.0f} faults per file")
    print()
    print(f"per clip ({clip:.1f} s of audio), one thread, in this process:   CPU      wall")
    for name in (*STAGES, "model"):
        note = f"  (batch {bound['single-thread batch']})" if name == "model" else ""
        cpu, wall = stages[name]
        print(f"    {name:45s} {1e3 * cpu:6.2f} ms {1e3 * wall:6.2f} ms{note}")
    total = sum(stages[name][0] for name in ("decode+resample (decode/)", "frontend", "model"))
    print(f"    {'sum (decode/, frontend, model)':45s} {1e3 * total:6.2f} ms: "
          f"at most {cores / total:.0f} files/s on {cores} cores")
    watched, alone = (end_to_end[name][1] / count for name in ("default", "--in-process (no crash isolation)"))
    print(f"    CPU per file / the sum: default {watched / total:.2f}, --in-process {alone / total:.2f} "
          f"(target <= 1.15); crash isolation's CPU: default / --in-process {watched / alone:.3f} (target <= 1.05)")
    # Where the CPU beyond the sum goes: the start-up, paid once per run (a crawler's run of weeks never sees it;
    # a worker's is the same again), and the cores slowing each other (the model alone, run() from every core at
    # once against one caller: shared caches and memory); the rest is the pipeline's and the supervisor's own.
    startup = single["startup cpu"]
    concurrent = bound.get("concurrent per window")
    print(f"    start-up (audiotag --version, CPU): {startup:.2f} s, {1e3 * startup / count:.1f} ms per file of this "
          f"run; without it: default {(watched - startup / count) / total:.2f}, --in-process "
          f"{(alone - startup / count) / total:.2f}")
    if concurrent:
        print(f"    cores slowing each other: the model's CPU per window with {cores} callers / 1 caller "
              f"{concurrent:.2f} (batch {bound['single-thread batch']})")
    # Each file's own cost: the run on the corpus less the same run on one clip (start-up, the first clip, the
    # end), over the other files. What a run of weeks pays per file; the figures above include a start-up that a
    # run of 200 clips pays 10-15% of its time for (two processes start with crash isolation, one without).
    beyond = {}
    for name in ("default", "--in-process (no crash isolation)"):
        (wall, cpu, _), (wall_one, cpu_one, _) = end_to_end[name], end_to_end[ONE_CLIP + name]
        beyond[name] = ((wall - wall_one) / (count - 1), (cpu - cpu_one) / (count - 1))
        print(f"    per file beyond one clip's run, {name}: {1e3 * beyond[name][0]:.2f} ms wall, "
              f"{1e3 * beyond[name][1]:.2f} ms CPU = {beyond[name][1] / total:.2f} of the sum (one clip's run: "
              f"{wall_one:.2f} s wall, {cpu_one:.2f} s CPU)")
    watched_file, alone_file = beyond["default"], beyond["--in-process (no crash isolation)"]
    print(f"    crash isolation per file beyond one clip's run: throughput {alone_file[0] / watched_file[0]:.3f} "
          f"(target >= 0.95), CPU {watched_file[1] / alone_file[1]:.3f} (target <= 1.05)")
    one = end_to_end.get("--jobs 1 --threads 1")
    if one:
        print(f"    --jobs 1 --threads 1 (one core at a time), start-up excluded: "
              f"{(one[1] - startup) / count / total:.2f} of the sum")
    print()
    frontend, model = stages["frontend"][0], stages["model"][0]
    checks = [
        (f"(b)/(a) = {rates['b'] / rates['a']:.2f}", rates["b"] / rates["a"] >= TARGET_OF_BOUND,
         f">= {TARGET_OF_BOUND:.2f}"),
        (f"(b)/(c) = {rates['b'] / rates['c']:.1f}", rates["b"] / rates["c"] >= TARGET_OVER_SINGLE,
         f">= {TARGET_OVER_SINGLE:.0f}"),
        (f"frontend/model = {frontend / model:.2f}", frontend <= model, "<= 1 (CPU per clip)"),
    ]
    for text, ok, target in checks:
        print(f"{text:32s} target {target:24s} {'ok' if ok else 'MISSED'}")
    print(f"load average at end: {_load()}")
    return 0 if all(ok for _, ok, _ in checks) else 1


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _warn_if_busy(cores: int) -> None:
    if os.getloadavg()[0] > 0.5 * cores:
        print(f"warning: the machine is busy (1-min load {os.getloadavg()[0]:.2f} on {cores} cores): "
              "figures will be noisy; ratios measured in the same run are the ones to read")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
