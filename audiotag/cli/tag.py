"""Run a command line: load the model (or start watched workers), tag the inputs, write the records; --version
and --self-check."""

import contextlib
import os
import sys
import time
from dataclasses import replace

from .. import __version__
from ..errors import EXIT_INPUT_FAILED, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, failure_message
from ..errors import warn as _warn
from ..options import TagOptions, tag_options
from .args import batch_mode, supervised
from .streams import silence_stdout


def run(args) -> int:
    if args.threads is None:
        args.threads = 1 if batch_mode(args) else 0
    if supervised(args) and not (args.version or args.self_check):
        return _tag_inputs(args, None)  # the model (and numpy, the decoders) are loaded in the worker process only
    from ..infer.model import ModelError
    from ..infer.tagger import Tagger
    from ..options import requested_providers

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

    from .. import records
    from ..batch import inputs, supervisor
    from ..batch.run import Engine
    from ..options import Limits, requested_providers

    lock = threading.Lock()  # segments are written by worker threads, clip records by this one
    writers = []  # the writer, once the output is open

    def on_segment(name, segment):
        with lock:
            writers[0].write(records.segment_record(name, segment))

    options = tag_options(args)
    if args.dedup:
        options = replace(options, hash=True)
    # Stdin cannot be read twice: with --hash it is hashed as it is decoded (files are hashed before: content.py).
    from ..hashing import HashingReader

    replayed = getattr(args, "stdin", None)  # stdin, its first bytes replayed after they were sniffed (args.py)
    stdin = HashingReader(replayed or sys.stdin.buffer) if options.hash and "-" in args.inputs and not args.archive \
        else None
    opener = inputs.Opener(args.raw, args.rate, args.channels, Limits(args.max_duration, args.timeout),
                           None if tagger is None else stdin or replayed)  # a worker never reads stdin itself
    # A watched worker was spawned first (main), so that its start-up (imports, the model) overlaps ours.
    engine = Engine(opener, options, args.jobs, tagger=tagger, workers=args.workers, model=args.model,
                    providers=requested_providers(args.provider), threads=args.threads,
                    on_segment=on_segment if args.segments else None, spawned=getattr(args, "worker", None),
                    arrays=bool(args.embeddings))
    try:
        if args.verbose and tagger is None:
            where = "a watched worker process" if args.workers == 1 else f"{args.workers} watched worker processes"
            _warn(f"execution providers: {', '.join(engine.providers())} (in {where}); "
                  f"jobs {args.jobs}, onnxruntime threads {args.threads or 'all cores'}")
        return _write_outcomes(args, engine, writers, lock, options, stdin)
    except supervisor.WorkerError as error:
        _warn(str(error))
        return EXIT_MODEL
    finally:
        engine.close()


def _write_outcomes(args, engine, writers: list, lock, options, stdin) -> int:
    """Expand the inputs, skip those already recorded (--resume), tag the rest with ``engine`` and write the
    records; with --hash each input is hashed first, and with --dedup a content seen before is not tagged again
    (``batch.content``). The model's label count is asked only when needed: a worker may still be starting."""
    from .. import records
    from ..batch import inputs, listers, writer as results
    from ..batch.embeddings import save_embedding

    in_batch = batch_mode(args)
    problem = engine.label_problem()  # an unknown name in --only, --exclude or --labels: before -o is touched
    if problem:
        return _usage_exit(f"--{problem[0]}: {problem[1]}")
    # A bad LIST must not touch -o: it is opened first.
    listed = _list_source(args.files_from, inputs, args.all_files, args.open_archives) if args.files_from else ()
    try:
        # With --threshold a record has any number of rows: a last table record is tagged again, whole or not.
        rows = None if args.threshold > 0 else (lambda: min(args.top_k, engine.labels()))
        table = None
        if options.hash:  # --hash or --dedup: only then is batch.content (and numpy) loaded
            from ..batch import content

            table = content.DigestTable() if args.dedup else None  # content -> where its first record lies
        if args.format == "parquet":  # a directory of part files (batch.parquet)
            from ..batch import parquet

            done = parquet.recorded_paths(args.output) if args.resume else set()
            writer = parquet.ParquetWriter(args.output, append=args.resume)
        else:
            archived = _may_tag_members(args)
            done = results.recorded_paths(args.output, args.format, rows, options.hash, table, archived) \
                if args.resume else set()
            writer = results.Writer(args.format, args.output, append=args.resume, stream=sys.stdout,
                                    hashed=options.hash, archived=archived)
        reader = results.RecordReader(args.output, args.format, options.hash, writer.archived) if args.dedup \
            else None
    except (OSError, results.ResumeError) as error:
        _warn(f"{args.output or 'stdout'}: {failure_message(error)}")
        return EXIT_USAGE
    except ImportError as error:  # pyarrow found but unusable (a broken install): parquet.ParquetMissing says how
        _warn(str(error))
        return EXIT_USAGE
    writers.append(writer)
    archive = (args.archive, args.stdin) if getattr(args, "archive", None) else None  # members of stdin's archive
    budget = None
    if archive is not None and supervised(args):  # stdin's members go to the workers whole, within a budget
        from ..batch import piped

        budget = piped.Budget()
    recorded = budget.give_back if budget is not None else lambda name: None  # a member's bytes held no more
    # WARC files among the operands may be listed ahead of their turn (``listers``): never a list (--files-from -
    # may wait for a crawler's next line, which reading ahead would wait for too) nor stdin's archive (its members
    # are read as they arrive, each tagged before the next is read).
    lister_count = 0 if archive is not None else \
        listers.lister_count(args.jobs * (args.workers if supervised(args) else 1))
    said = (lambda: _warn(f"WARC files listed ahead by up to {lister_count} lister processes")) if args.verbose \
        else None
    operands = inputs.expand(args.inputs, args.all_files, args.open_archives, archive, budget, list_archives=False)
    items = _chain(listers.listed(operands, lister_count, on_start=said), listed)
    items = (item for item in items if item.name not in done or recorded(item.name))
    contents = None
    if options.hash:
        contents = content.Contents(args.jobs, args.dedup, table, reader.read if reader else None)
        contents.stdin = stdin
        contents.on_held = recorded  # a duplicate held back holds no bytes: its budget is free at once
        items = contents.tagged(items)
    progress = _progress_bar(args) if in_batch else None  # one input: its result is the progress
    total = _count_in_background(args, inputs, done) if progress is not None else []
    # Results and the bar on one terminal: the bar steps aside for each record, so neither runs into the other.
    aside = type(progress).external_write_mode if progress is not None and _on_terminal(sys.stdout) else \
        contextlib.nullcontext
    counts = {"ok": 0, "failed": 0, "audio": 0.0, "duplicates": 0}
    started = time.perf_counter()

    def step():
        if progress is not None:
            if total and progress.total is None:  # known now: done/total, percent and time left
                progress.total = total[0]
            progress.update(1)
            progress.set_postfix(errors=counts["failed"], refresh=False)

    def write_duplicates():
        """The inputs held back as copies of earlier ones, which come next in input order."""
        for duplicate in contents.duplicates_before():
            with lock, aside():
                writer.write_text(_duplicate_text(duplicate, table, reader, args.format))
            counts["duplicates"] += 1
            step()

    try:
        writer.begin()
        for outcome in engine.outcomes(items):
            if contents is not None:
                write_duplicates()
                outcome.sha256 = contents.sha256_of(outcome)
                copy = contents.earlier_copy(outcome)
                if copy is not None:  # known a copy only once decoded (a piped member): recorded as one
                    with lock, aside():
                        writer.write_text(_duplicate_text(copy, table, reader, args.format))
                    recorded(outcome.name)
                    counts["duplicates"] += 1
                    step()
                    continue
            if outcome.error is None and args.embeddings:
                outcome = save_embedding(outcome, args.embeddings)
            if outcome.error is not None:
                counts["failed"] += 1
                _warn(f"{outcome.name}: {outcome.error}", progress)
            else:
                counts["ok"] += 1
                counts["audio"] += outcome.duration
            with lock, aside():
                place = writer.write(records.record(outcome), header=in_batch, before=records.event_records(outcome))
            recorded(outcome.name)
            if contents is not None:
                contents.recorded(outcome.sha256, *place)
            step()
        if contents is not None:
            write_duplicates()  # those after the last input tagged
        writer.close()  # flushed and synced: the results are the product, durable before exit 0
    except BrokenPipeError:
        raise
    except OSError as error:  # writing the results failed: the disk is full, or the device failed
        _warn(f"{args.output or 'stdout'}: cannot write results: {failure_message(error)}", progress)
        if not args.output:
            silence_stdout()  # what is still buffered cannot be written either: drop it quietly at exit
        return EXIT_OUTPUT
    finally:
        if progress is not None:
            progress.close()
        writer.close(quietly=True)  # interrupted: what was written still reaches the disk
        if reader is not None:
            reader.close()
    if in_batch or args.verbose:
        _summary(counts, time.perf_counter() - started)
    return EXIT_INPUT_FAILED if counts["failed"] else EXIT_OK


def _duplicate_text(duplicate, table, reader, fmt) -> str:
    """A duplicate's record: its first copy's, read back from the results file (one line of error where that
    record cannot be read: it was written, so only a failing disk gets here)."""
    from .. import records

    place = table.get(duplicate.sha256)
    first = reader.read(*place) if place is not None else None
    if first is None or first["sha256"] != duplicate.sha256:
        return records.format_record({"path": duplicate.name, "sha256": duplicate.sha256,
                                      "duplicate_of": duplicate.first, **(duplicate.fields or {}),
                                      "error": "the first copy's record cannot be read back"}, fmt, hashed=True,
                                     archived="archive" in reader.columns)
    return reader.duplicate(first, duplicate.name, duplicate.fields)


def _on_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _count_in_background(args, inputs, done) -> list:
    """How many inputs the run has, counted by a second walk beside the tagging (which reads the walk only a
    little ahead of its work): a list that fills with the count once it is known. Not for a list on stdin or in a
    pipe, which may never end and cannot be read twice."""
    total = []
    if args.files_from is not None and not os.path.isfile(args.files_from):  # a pipe: reading it would take lines
        return total
    if args.files_from == "-" or "-" in args.inputs:
        return total

    def count():
        try:
            found = _chain(inputs.expand(args.inputs, args.all_files, args.open_archives, list_archives=False),
                           _list_source(args.files_from, inputs, args.all_files, args.open_archives, False)
                           if args.files_from else ())
            counted = 0
            for item in found:
                if isinstance(item, inputs.Archive):
                    if not item.cheap_to_list:  # a .warc.gz, .tar.gz...: counting would decompress it all a
                        return  # second time, beside the tagging (a run in tmux has a bar): no total
                    counted += sum(1 for member in inputs.archive_members(item.path, item.all_files)
                                   if member.name not in done)
                elif item.name not in done:
                    counted += 1
            total.append(counted)
        except (OSError, SystemExit, ValueError):
            pass  # the run itself reports what cannot be read; the bar just shows no total

    import threading

    threading.Thread(target=count, name="audiotag-count", daemon=True).start()
    return total


def _may_tag_members(args) -> bool:
    """Whether the run may tag an archive's members, known before the first input: a table then has the archive
    columns (``records.ARCHIVE_COLUMNS``, empty for a file's row). An archive operand, --open-archives, an archive
    on stdin (--archive, or sniffed) or a --files-from list (its lines may name archives)."""
    from ..batch.archives import is_archive_name

    return bool(args.open_archives or getattr(args, "archive", None) or args.files_from) or \
        any(operand != "-" and is_archive_name(operand) and os.path.isfile(operand) for operand in args.inputs)


def _list_source(name, inputs, all_files, open_archives=False, list_archives=True):
    if name == "-":
        return inputs.read_list(sys.stdin, all_files=all_files, open_archives=open_archives,
                                list_archives=list_archives)
    try:
        handle = open(name, encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise SystemExit(_usage_exit(f"--files-from {name}: {failure_message(error)}"))
    return inputs.read_list(handle, name, all_files, open_archives, list_archives)


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
    files = counts["ok"] + counts["failed"] + counts["duplicates"]
    rate = files / seconds if seconds > 0 else 0.0
    realtime = counts["audio"] / seconds if seconds > 0 else 0.0
    copies = f", {counts['duplicates']} duplicates" if counts["duplicates"] else ""
    _warn(f"{files} inputs: {counts['ok']} ok, {counts['failed']} failed{copies} in {seconds:.1f} s "
          f"({rate:.1f} files/s, {realtime:.0f}x realtime)")


def _version_text(tagger) -> str:
    import onnxruntime

    from ..decode import ffmpeg
    from ..infer import frontend

    info = tagger.model.info
    return "\n".join([
        f"audiotag {__version__}",
        f"model {info.name} (checkpoint sha256 {info.checkpoint_sha256}, {len(info.labels)} labels)",
        f"onnxruntime {onnxruntime.__version__} "
        f"(available providers: {', '.join(onnxruntime.get_available_providers())};"
        f" in use: {', '.join(tagger.model.providers)})",
        f"decoders: libsndfile, {ffmpeg.describe()}",
        f"frontend: {frontend.implementation()}",
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
        silence_stdout()
        return EXIT_OUTPUT
    return EXIT_OK


def _usage_exit(message: str) -> int:
    _warn(message)
    return EXIT_USAGE
