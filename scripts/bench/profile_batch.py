"""Where the time of a batch run goes: ``pipeline.run`` in this process, with CPU time per thread.

    .venv/bin/python scripts/bench/profile_batch.py DIR [--jobs N] [--threads N] [--runners N] [--max-batch N]
                                                    [--cprofile]

Defaults are those of ``audiotag DIR``. Prints the wall time, the CPU time of every thread (pipeline workers, which
also run the model; onnxruntime's intra-op pool; OpenBLAS's pool; read from /proc), the model batches, and where
each worker's time went. (audiotag's sessions never spin: idle pool threads sleep.) ``--cprofile`` adds the top
functions of the main thread.
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

import numpy  # noqa: E402,F401  (its OpenBLAS pool starts here: threads born by now are OpenBLAS's)


def thread_cpu() -> dict:
    """tid -> CPU seconds (user + system) of every thread of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    result = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        result[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads (default 1, as audiotag DIR; 0: all cores)")
    parser.add_argument("--runners", type=int, default=0,
                        help="threads allowed in the model at once (default: the pipeline's)")
    parser.add_argument("--max-batch", type=int, default=0, help="Batcher's max batch (default: the pipeline's)")
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()

    openblas = set(thread_cpu()) - {threading.get_native_id()}
    from audiotag import decode
    from audiotag.batch import inputs
    from audiotag.batch import pipeline
    from audiotag.infer import batcher as batching
    from audiotag import TagOptions, Tagger

    before_ort = set(thread_cpu())
    tagger = Tagger(threads=args.threads)
    ort_pool = set(thread_cpu()) - before_ort
    runners = args.runners or batching.model_runners(tagger.model, args.jobs)
    batcher = batching.Batcher(tagger, args.max_batch or None, runners)
    items = list(inputs.expand([args.directory]))
    input_walls = []
    entry = "start_input" if hasattr(pipeline, "start_input") else "tag_input"  # what a worker runs per input
    worker_entry = getattr(pipeline, entry)

    def timed(*arguments, **keywords):  # a worker's whole time on one input, waiting included
        started = time.perf_counter()
        try:
            return worker_entry(*arguments, **keywords)
        finally:
            input_walls.append(time.perf_counter() - started)

    setattr(pipeline, entry, timed)

    profiler = None
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
    cpu_before, process_before, load = thread_cpu(), time.process_time(), os.getloadavg()
    last_seen, names, done = {}, {}, threading.Event()

    def sample() -> None:  # threads that end take their /proc entry with them: keep what they had last
        while not done.wait(0.02):
            names.update({t.native_id: t.name for t in threading.enumerate()})
            last_seen.update(thread_cpu())

    sampler = threading.Thread(target=sample, name="profile-sampler", daemon=True)
    sampler.start()
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    outcomes = list(pipeline.run(items, decode.open_file, tagger, TagOptions(), args.jobs, batcher=batcher))
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    cpu_after, process = {**last_seen, **thread_cpu()}, time.process_time() - process_before

    failed = [o for o in outcomes if o.error]
    cores = len(os.sched_getaffinity(0))
    print(f"{len(outcomes)} files ({len(failed)} failed), jobs {args.jobs}, onnxruntime threads "
          f"{args.threads or 'all'}, model runners {runners}; load before {load[0]:.2f}")
    print(f"wall {wall:.2f} s, {len(outcomes) / wall:.1f} files/s; process CPU {process:.2f} s "
          f"= {100 * process / (wall * cores):.0f}% of {cores} cores")
    groups = {}
    for tid, seconds in cpu_after.items():
        spent = seconds - cpu_before.get(tid, 0.0)
        if tid == threading.get_native_id():
            group = "main (ordering, output)"
        elif tid in openblas:
            group = "OpenBLAS pool"
        elif tid in ort_pool:
            group = "onnxruntime intra-op pool"
        elif names.get(tid, "").startswith("audiotag-worker"):
            group = "pipeline workers (decode, resample, frontend, model)"
        elif tid == sampler.native_id:
            continue
        else:
            group = f"other ({names.get(tid, 'native')})"
        count, total = groups.get(group, (0, 0.0))
        groups[group] = (count + 1, total + spent)
    print("CPU by thread:")
    for group, (count, seconds) in sorted(groups.items(), key=lambda item: -item[1][1]):
        print(f"    {group:58s} {count:2d} threads {seconds:7.2f} s")
    stages = {"decode": 0.0, "frontend": 0.0, "model": 0.0}
    for outcome in outcomes:
        for key, value in (outcome.timings or {}).items():
            stages[key] += value
    print(f"model: {batcher.model_seconds:.2f} s of runs (summed over threads) in {batcher.batches} batches, "
          f"{batcher.windows / max(1, batcher.batches):.1f} windows per batch, "
          f"{1e3 * batcher.model_seconds / max(1, batcher.windows):.2f} ms per window")
    rest = sum(input_walls) - sum(stages.values())
    print(f"workers: {sum(input_walls):.2f} s on inputs (wall, summed): decode+resample {stages['decode']:.2f} s, "
          f"frontend {stages['frontend']:.2f} s, model {stages['model']:.2f} s (runs for any input and waits), "
          f"finishing {rest:.2f} s; {args.jobs * wall - sum(input_walls):.2f} s between inputs")
    if profiler:
        import pstats

        pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)
    return 0




if __name__ == "__main__":
    sys.exit(main())
