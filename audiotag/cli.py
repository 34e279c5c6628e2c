"""Command line: parse, dispatch, format. The work is done by ``Tagger`` and ``pipeline``; results go to stdout
(or ``-o``), problems to stderr as one line each (``audiotag: INPUT: what is wrong``)."""

import argparse
import os
import signal
import sys
import time

from . import __version__
from .errors import (EXIT_BROKEN_PIPE, EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT,
                     EXIT_TERMINATED, EXIT_USAGE, failure_message)
from .errors import warn as _warn
from .options import RAW_FORMATS, Parser, TagOptions, add_engine_arguments, add_tag_arguments, number, tag_options, window_problem

WORKER_FLAG = "--_supervised-worker"  # argv[1] of a batch worker process (batch.supervisor); not a user option

EPILOG = """\
inputs:
  FILE     an audio or video file, told by its bytes, not its name: WAV, FLAC, Ogg Vorbis/Opus/FLAC, MP3 (junk
           before the first frame is skipped), AIFF, CAF, AAC/M4A/MP4/3GP, WebM/MKV/MKA, WMA/ASF, AC-3/E-AC-3,
           AMR-NB/WB, ALAC, MPEG-TS, FLV, AVI, MOV... (any rate, any channel count); of a video file, its default
           audio stream (the video is never decoded). libsndfile decodes what it can, FFmpeg the rest.
  DIR      every audio or video file below it (by extension, case-insensitive; --all-files: every regular file),
           in sorted order
  -        any of those on stdin (curl URL | audiotag -): WAV and most containers are decoded as they arrive;
           FLAC, Ogg, MP4/MOV/3GP and CAF (whose index may come last) are held in memory, up to 1024 MB;
           with --raw, headerless samples (consumed as they arrive)

output formats (default: text on a terminal, jsonl otherwise):
  text   "SCORE  LABEL" lines, best first, then "category: NAME SCORE" (the best top-level category);
         "== INPUT" heads each input when there are several
  jsonl  one object per input per line ("json" is the same):
           {"path": "a.wav", "duration": 10.0, "sample_rate": 32000, "channels": 1, "codec": "pcm_s16le",
            "categories": [{"name": "Music", "score": 0.598}, ...all seven, best first],
            "tags": [{"label": "Music", "mid": "/m/04rlf", "index": 137, "score": 0.598}, ...]}
         or {"path": "b.wav", "error": "..."}; with --segments also {"path", "start", "end", "tags"} per window;
         with --events, before the input's record, {"path", "label", "start", "end", "score"} per event
  csv, tsv  one row per label:
           path,duration,sample_rate,channels,codec,rank,label,mid,index,score,categories,warning,error
         (categories: "NAME:SCORE;..." all seven, best first; a clip with no label above --threshold: one row)
scores are per-label sigmoid outputs in 0..1 (labels are not exclusive; scores do not sum to 1). A category
(the seven AudioSet top-level classes) scores as the best label of its ontology subtree.
Clips up to --window seconds are tagged in one pass; longer ones in windows every --hop seconds, a label's
score being its best window's (--aggregate mean: the windows' mean).

exit status:
  0    every input was tagged
  1    some input could not be tagged (the others were; one line each on stderr)
  2    bad command line
  3    the model or its assets could not be loaded
  4    the results could not be written (disk full, I/O error): what was written before is complete
  130  interrupted (SIGINT), 143 terminated (SIGTERM): what was written is complete; --resume carries on
  141  stdout was closed early

environment:
  AUDIOTAG_PROVIDERS   onnxruntime execution providers, comma-separated (e.g. "cuda,cpu"); default automatic:
                       CUDA, ROCm, MIGraphX, CoreML, DirectML, then CPU, whichever are available

HTTP service: audiotag serve [--host 127.0.0.1] [--port 8750] (audiotag serve --help)

examples:
  audiotag clip.wav
  audiotag /data/crawl -o tags.jsonl --resume --embeddings emb/
  crawler | audiotag --files-from - -o tags.jsonl
  arecord -f S16_LE -r 16000 -c 1 | audiotag - --raw s16le --rate 16000 --segments
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="audiotag",
        description="Print the most likely AudioSet labels (527 classes) for audio files, directories or stdin.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="audio file, directory, or - for stdin")
    parser.add_argument("--files-from", metavar="LIST", help="also read input paths, one per line, from LIST (- for stdin)")
    parser.add_argument("--all-files", action="store_true",
                        help="in directories, try every regular file, whatever its name (crawlers save index.php?id=1); "
                             "what is not audio becomes an error record")
    out = parser.add_argument_group("output")
    out.add_argument("-f", "--format", choices=("text", "jsonl", "json", "csv", "tsv"),
                     help="output format (default: text on a terminal, else jsonl)")
    out.add_argument("-o", "--output", metavar="FILE", help="write results to FILE instead of stdout")
    out.add_argument("--resume", action="store_true",
                     help="with -o: skip inputs already recorded in FILE and append the rest")
    out.add_argument("--embeddings", metavar="DIR", help="also save each clip's embedding as DIR/<input path>.npy")
    out.add_argument("--progress", action="store_true", help="show a progress bar on stderr (default: when stderr is a terminal)")
    out.add_argument("-v", "--verbose", action="store_true", help="say which execution provider runs, and timings")
    raw = parser.add_argument_group("raw samples on stdin")
    raw.add_argument("--raw", choices=tuple(RAW_FORMATS), help="stdin carries headerless little-endian samples")
    raw.add_argument("--rate", type=number(int, 1), metavar="HZ", help="sample rate of --raw input (required with --raw)")
    raw.add_argument("--channels", type=number(int, 1), default=1, metavar="C", help="interleaved channels of --raw input (default 1)")
    tagging = parser.add_argument_group("tagging (the same options as audiotag serve's and audiotag-ray's)")
    add_tag_arguments(tagging)
    limits = parser.add_argument_group("limits per input (defaults apply to batch runs: a directory, a list, several inputs)")
    add_engine_arguments(limits, "max_duration", "timeout")
    limits.add_argument("--in-process", action="store_true",
                        help="tag batch inputs in this process, without a watched worker: a crashing decoder "
                             "then ends the run (default: a native crash fails only the input that caused it)")
    engine = parser.add_argument_group("engine")
    add_engine_arguments(engine, "model", "provider", "jobs")
    engine.add_argument("--workers", type=number(int, 1), default=1, metavar="N",
                        help="worker processes for a batch, each decoding --jobs inputs at a time and loading "
                             "its own model (about 115 MB each). FFmpeg formats (AAC/M4A, WebM, WMA...) keep at "
                             "most one core per process busy: for those use --workers CORES --jobs 1 (default: 1)")
    add_engine_arguments(engine, "threads")
    parser.add_argument("--version", action="store_true",
                        help="print versions of audiotag, its model and onnxruntime, and the providers available")
    parser.add_argument("--self-check", action="store_true",
                        help="load every asset and tag a built-in test tone; exit 0 when all is sound")
    return parser


def main(argv=None) -> int:
    # Before numpy loads: audiotag runs its own workers and its matrix products are small, so OpenBLAS's thread
    # pool would only compete with them, and it spins for a tenth of a second of CPU at every start.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == [WORKER_FLAG]:
        from .batch import supervisor

        return _finish(supervisor.worker_main())
    _make_std_streams_safe()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the HTTP front end (a file named "serve" is ./serve)
        return _serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    _check_arguments(parser, args)
    signal.signal(signal.SIGTERM, _terminate)
    if not args.verbose:
        _quiet_native_stderr()
    try:
        if _supervised(args) and not (args.version or args.self_check):
            from .batch import supervisor

            try:
                args.worker = supervisor.spawn()  # first thing: it starts up while this process does
            except supervisor.WorkerError:
                pass  # tried again, and reported, where the worker is needed
        code = _run(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except _Terminated:
        code = EXIT_TERMINATED
    except BrokenPipeError:
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    return _finish(code)


def _serve(argv) -> int:
    from . import serve

    if not {"-v", "--verbose", "-h", "--help"} & set(argv):
        _quiet_native_stderr()
    return _finish(serve.main(argv))


def _check_arguments(parser, args) -> None:
    """Refuse (one line, exit 2) what cannot work, before anything is opened or written; fill in defaults."""
    if not (args.inputs or args.files_from or args.version or args.self_check):
        parser.error("no input given (a file, a directory, - for stdin, or --files-from LIST)")
    if args.raw and not args.rate:
        parser.error("--raw needs --rate HZ")
    if (args.inputs.count("-") + (args.files_from == "-")) > 1:
        parser.error("stdin (-) can be read only once")
    if args.resume and not args.output:
        parser.error("--resume needs -o FILE")
    if args.workers > 1 and args.in_process:
        parser.error("--workers starts worker processes: it cannot be combined with --in-process")
    if args.workers > 256:
        parser.error(f"--workers {args.workers}: at most 256")
    problem = window_problem(args.window, args.hop)
    if problem:
        parser.error(problem)
    if args.events and args.format in ("csv", "tsv"):
        parser.error("--events needs jsonl or text output: a table has one kind of row (clips)")
    if sys.stdin is None and "-" in (*args.inputs, args.files_from):
        parser.error("stdin is closed")
    if sys.stdout is None:
        if not args.output:
            parser.error("stdout is closed: give -o FILE")
        sys.stdout = open(os.devnull, "w")
    if args.output and _names_an_input(args.output, [*args.inputs, *filter(None, [args.files_from])]):
        parser.error(f"-o {args.output} is one of the inputs: it would be overwritten")
    if args.output and _is_audio_name(args.output):
        parser.error(f"-o {args.output}: results go to a .jsonl/.csv/.tsv/.txt file, not an audio file name "
                     "(a directory walk would take it for an input)")
    args.format = args.format or ("text" if sys.stdout.isatty() and not args.output else "jsonl")
    from .decode.limits import BATCH  # defaults for batch runs only: one file named on its own is tagged whole
    batch = _batch_mode(args)
    for name in ("max_duration", "timeout"):
        value = getattr(args, name)
        setattr(args, name, (getattr(BATCH, name) if batch else None) if value is None else (value or None))
    if args.resume and args.format == "text":
        parser.error("--resume needs a machine-readable format: jsonl, csv or tsv")


def _finish(code: int) -> int:
    """Flush stdout and stderr here, where a full disk or a closed reader cannot turn ``code`` into the
    interpreter's own exit status 120; then leave at once if worker threads may still be inside onnxruntime or
    libsndfile: letting the interpreter tear them down aborts the process ("terminate called without an active
    exception")."""
    import threading

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as error:
            _silence_stdout(stream)
            if stream is sys.stdout and code == EXIT_OK:  # a failing stderr never fails the run; stdout does
                code = EXIT_BROKEN_PIPE if isinstance(error, BrokenPipeError) else EXIT_OUTPUT
    if threading.active_count() > 1:
        os._exit(code)
    return code


def _run(args) -> int:
    from .infer.model import ModelError, requested_providers
    from .infer.tagger import Tagger

    if args.threads is None:
        args.threads = 1 if _batch_mode(args) else 0
    if _supervised(args) and not (args.version or args.self_check):
        return _tag_inputs(args, None)  # the model is loaded in the worker process only
    try:
        tagger = Tagger(args.model, providers=requested_providers(args.provider), threads=args.threads)
    except (ModelError, FileNotFoundError) as error:
        if args.version:
            print(f"audiotag {__version__}")
        _warn(str(error))
        return EXIT_MODEL
    if args.version:
        return _print_result(_version_text(tagger))
    if args.self_check:
        return _self_check(tagger)
    if args.verbose:
        _warn(f"execution providers: {', '.join(tagger.model.providers)}; jobs {args.jobs}, "
              f"onnxruntime threads {args.threads or 'all cores'}")
    return _tag_inputs(args, tagger)


def _tag_inputs(args, tagger) -> int:
    """Tag every input with ``tagger``, or, when it is None, in watched worker processes (``batch.supervisor``)."""
    import threading

    from . import records
    from .batch import pipeline, supervisor
    from .batch.run import Engine
    from .decode.limits import Limits
    from .infer.model import requested_providers

    lock = threading.Lock()  # segments are written by worker threads, clip records by this one
    writers = []  # the writer, once the output is open

    def on_segment(name, segment):
        with lock:
            writers[0].write(records.segment_record(name, segment))

    opener = pipeline.Opener(args.raw, args.rate, args.channels, Limits(args.max_duration, args.timeout))
    options = tag_options(args)
    # A watched worker was spawned first (main), so that its start-up (imports, the model) overlaps ours.
    engine = Engine(opener, options, args.jobs, tagger=tagger, workers=args.workers, model=args.model,
                    providers=requested_providers(args.provider), threads=args.threads,
                    on_segment=on_segment if args.segments else None, spawned=getattr(args, "worker", None))
    try:
        if args.verbose and tagger is None:
            where = "a watched worker process" if args.workers == 1 else f"{args.workers} watched worker processes"
            _warn(f"execution providers: {', '.join(engine.providers())} (in {where}); "
                  f"jobs {args.jobs}, onnxruntime threads {args.threads or 'all cores'}")
        return _write_outcomes(args, engine, writers, lock)
    except supervisor.WorkerError as error:
        _warn(str(error))
        return EXIT_MODEL
    finally:
        engine.close()


def _write_outcomes(args, engine, writers: list, lock) -> int:
    """Expand the inputs, skip those already recorded (--resume), tag the rest with ``engine`` and write the
    records. The model's label count is asked only when needed: a worker may still be starting."""
    from . import records
    from .batch import inputs, writer as results
    from .batch.embeddings import save_embedding

    batch_mode = _batch_mode(args)
    listed = _list_source(args.files_from, inputs, args.all_files) if args.files_from else ()  # a bad LIST must not touch -o
    try:
        # With --threshold a record has any number of rows: a last table record is tagged again, whole or not.
        rows = None if args.threshold > 0 else (lambda: min(args.top_k, engine.labels()))
        done = results.recorded_paths(args.output, args.format, rows) if args.resume else set()
        writer = results.Writer(args.format, args.output, append=args.resume, stream=sys.stdout)
    except (OSError, results.ResumeError) as error:
        _warn(f"{args.output or 'stdout'}: {failure_message(error)}")
        return EXIT_USAGE
    writers.append(writer)
    items = _chain(inputs.expand(args.inputs, args.all_files), listed)
    items = (item for item in items if item.name not in done)
    progress = _progress_bar(args)
    counts = {"ok": 0, "failed": 0, "audio": 0.0}
    started = time.perf_counter()
    try:
        writer.begin()
        for outcome in engine.outcomes(items):
            if outcome.error is None and args.embeddings:
                outcome = save_embedding(outcome, args.embeddings)
            if outcome.error is not None:
                counts["failed"] += 1
                _warn(f"{outcome.name}: {outcome.error}", progress)
            else:
                counts["ok"] += 1
                counts["audio"] += outcome.duration
            with lock:
                writer.write(records.record(outcome), header=batch_mode, before=records.event_records(outcome))
            if progress is not None:
                progress.update(1)
                progress.set_postfix(errors=counts["failed"], refresh=False)
        writer.close()  # flushed and synced: the results are the product, durable before exit 0
    except BrokenPipeError:
        raise
    except OSError as error:  # writing the results failed: the disk is full, or the device failed
        _warn(f"{args.output or 'stdout'}: cannot write results: {failure_message(error)}", progress)
        if not args.output:
            _silence_stdout()  # what is still buffered cannot be written either: drop it quietly at exit
        return EXIT_OUTPUT
    finally:
        if progress is not None:
            progress.close()
        writer.close(quietly=True)  # interrupted: what was written still reaches the disk
    if batch_mode or args.verbose:
        _summary(counts, time.perf_counter() - started)
    return EXIT_INPUT_FAILED if counts["failed"] else EXIT_OK


def _batch_mode(args) -> bool:
    """Several inputs (or a directory, or a list): one record per input, each headed by its path."""
    return len(args.inputs) > 1 or bool(args.files_from) or any(os.path.isdir(p) for p in args.inputs if p != "-")


def _supervised(args) -> bool:
    """Batch inputs go to a watched worker (see supervisor), unless audio comes on stdin: it cannot be read
    twice, so it could not be retried."""
    return _batch_mode(args) and not args.in_process and "-" not in args.inputs


def _list_source(name, inputs, all_files):
    if name == "-":
        return inputs.read_list(sys.stdin, all_files=all_files)
    try:
        handle = open(name, encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise SystemExit(_usage_exit(f"--files-from {name}: {failure_message(error)}"))
    return inputs.read_list(handle, name, all_files)


def _chain(*iterables):
    for iterable in iterables:
        yield from iterable


def _progress_bar(args):
    if not (args.progress or sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        sized = size.columns > 0 and size.lines > 0
    except (OSError, ValueError):
        sized = False
    # A terminal that reports no size (a pty under script or expect, some CI runners): tqdm would hide the bar.
    fixed = {} if sized else {"ncols": 80, "nrows": 24}
    return tqdm(unit="file", dynamic_ncols=sized, file=sys.stderr, disable=False, **fixed)


def _summary(counts, seconds) -> None:
    files = counts["ok"] + counts["failed"]
    rate = files / seconds if seconds > 0 else 0.0
    realtime = counts["audio"] / seconds if seconds > 0 else 0.0
    _warn(f"{files} inputs: {counts['ok']} ok, {counts['failed']} failed in {seconds:.1f} s "
          f"({rate:.1f} files/s, {realtime:.0f}x realtime)")


def _version_text(tagger) -> str:
    import onnxruntime

    info = tagger.model.info
    return "\n".join([
        f"audiotag {__version__}",
        f"model {info.name} (checkpoint sha256 {info.checkpoint_sha256}, {len(info.labels)} labels)",
        f"onnxruntime {onnxruntime.__version__} (available providers: {', '.join(onnxruntime.get_available_providers())};"
        f" in use: {', '.join(tagger.model.providers)})",
    ])


def _self_check(tagger) -> int:
    """Tag a 1 kHz tone: the model must call it a beep or a sine wave. Proves assets, frontend and model agree."""
    import numpy as np

    rate = 32000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(3 * rate) / rate)
    labels = [tag.label for tag in tagger.tag(tone.astype(np.float32), rate, TagOptions(top_k=3)).tags]
    if not {"Sine wave", "Beep, bleep"} <= set(labels):
        _warn(f"self-check failed: a 1 kHz tone was tagged {labels}")
        return EXIT_MODEL
    return _print_result(f"self-check ok: a 1 kHz tone is tagged {', '.join(labels)}")


def _print_result(text: str) -> int:
    """One line to stdout: EXIT_OK, or EXIT_OUTPUT with one line on stderr when it cannot be written (a closed
    reader still ends as EPIPE does everywhere: exit 141)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise
    except OSError as error:
        _warn(f"stdout: cannot write results: {failure_message(error)}")
        _silence_stdout()
        return EXIT_OUTPUT
    return EXIT_OK


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread: like KeyboardInterrupt, not an error that one input's handling may
    catch."""


def _terminate(signum, frame):
    raise _Terminated()


def _make_std_streams_safe() -> None:
    """Started with a standard stream closed (``2>&-``), Python has None there: stderr goes to /dev/null so
    that tagging goes on; closed stdin/stdout are refused where they are needed (see main). Output is written
    with surrogateescape: a file name that is not UTF-8 comes out as its own bytes instead of an exception."""
    for fd in (0, 1, 2):  # a closed descriptor would be reused by the next file opened: the output, say, where
        try:              # C libraries would then write their warnings as if to stderr
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    for stream in (sys.stdin, sys.stdout):  # names in a piped list or in records need not be UTF-8
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


def _is_audio_name(path: str) -> bool:
    from .batch.inputs import is_audio_name  # not at the top: it brings numpy and the decoders, --help needs neither

    return is_audio_name(path)


def _names_an_input(output_path: str, operands) -> bool:
    """Whether -o is one of the input files (it would be emptied before being read)."""
    for operand in operands:
        try:
            if operand != "-" and os.path.samefile(output_path, operand):
                return True
        except OSError:
            continue
    return False


def _usage_exit(message: str) -> int:
    _warn(message)
    return EXIT_USAGE


def _quiet_native_stderr() -> None:
    """Keep decoder libraries' own chatter (mpg123's "Warning: Xing stream size off...") off our stderr.

    Python's stderr moves to a duplicate of file descriptor 2, and descriptor 2, where C libraries write, goes to
    /dev/null; our one-line messages are unaffected. --verbose leaves everything as it is.
    """
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = open(saved, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",
                          closefd=True)
    except OSError:
        pass  # no usable stderr: nothing to keep quiet


def _silence_stdout(stream=None) -> None:
    """After EPIPE or a write error, point stdout (or ``stream``) at /dev/null so that the interpreter's final
    flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (stream or sys.stdout).fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


