"""Tag a corpus on every node of a Ray cluster: ``audiotag-ray INPUT... --output DIR`` (``pip install audiotag[ray]``).

Ray Data reads the files' bytes (``read_binary_files``: local paths or any filesystem pyarrow supports), a pool of
actors tags them (``TagBatch``: one onnxruntime session per actor, built once), and the rows go to Parquet, one row per
file with the fields of the JSONL records plus an ``embedding`` list column. An archive (named, or in a directory with
--open-archives) gives a row per audio member, its bytes read as an archive on the CLI's stdin is (``batch.piped``),
with the CLI's paths and archive fields; it is done once any of its rows is in the output. Bad files become rows with an
``error``; a worker that dies is restarted by Ray and its batches are run again (only a finished task's output is kept,
and a retried write task rewrites the same file name, so nothing is lost or doubled). Ray Data's own defaults govern
this (actors restarted and their tasks retried without limit): a file that crashed the decoder process itself every time
would be retried for ever. Re-running with the same ``--output`` tags only the files not in it yet.

The unusual choice: this module imports ray and pyarrow only inside functions, and nothing in the package imports
this module. The frozen ``audiotag`` binary must not carry Ray (hundreds of MB), and ``audiotag-ray --help``
should answer without loading it.
"""

import argparse
import io
import logging
import math
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from . import __version__
from .errors import EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_OK, EXIT_USAGE
from .options import Parser, add_engine_arguments, add_tag_arguments, number, tag_options

if TYPE_CHECKING:
    from .options import TagOptions

EXIT_RUN_FAILED = EXIT_MODEL  # the run itself failed (cluster, workers, output); what was written stays and is resumed

BATCH_FILES = 16  # files per actor call (0.3 s of work for 10 s clips on one core): the unit Ray retries
ROWS_PER_FILE = 1000  # rows gathered per Parquet file: fewer, larger files; a killed run redoes at most this many
# CPUs a read or write task reserves: none. They mostly wait on storage, and the tagging actors may hold every CPU
# of the cluster: a read waiting for a CPU to come free would wait for ever. Tasks that need no CPU are not limited
# by the CPUs either, so their number is capped instead: at most this many per tagging worker (each runs in a Ray
# worker process of its own, and starting those is not free).
IO_CPUS = 0
IO_TASKS_PER_WORKER = 1
ERRORS_SHOWN = 20  # failed files named on stderr at the end; the rest are in the error column

# The row layout is built from this: JSONL record fields first, then the events and the embedding, then the error.
COLUMNS = ("path", "sha256", "archive", "member", "key", "url", "warc_record_id", "duration", "sample_rate",
           "channels", "codec", "warning", "categories", "tags", "events", "embedding", "error")
EXTRA_COLUMNS = ("events", "embedding")  # not in the CLI's clip record (events are records of their own there)


def schema():
    """The Parquet schema every row conforms to (also for batches of only errors, so every file has it)."""
    import pyarrow as pa

    tag = pa.struct([("label", pa.string()), ("mid", pa.string()), ("index", pa.int32()), ("score", pa.float64())])
    category = pa.struct([("name", pa.string()), ("score", pa.float64())])
    event = pa.struct([("label", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("score", pa.float64())])
    return pa.schema([
        ("path", pa.string()),
        ("sha256", pa.string()),  # null unless asked for (--hash)
        ("archive", pa.string()),  # the rest null unless the row is an archive's member (as the CLI's records)
        ("member", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("warc_record_id", pa.string()),
        ("duration", pa.float64()),
        ("sample_rate", pa.int32()),
        ("channels", pa.int32()),
        ("codec", pa.string()),
        ("warning", pa.string()),  # null unless the decoder tagged what it could read of a damaged input
        ("categories", pa.list_(category)),
        ("tags", pa.list_(tag)),
        ("events", pa.list_(event)),  # null unless asked for (--events)
        ("embedding", pa.list_(pa.float32())),  # null unless asked for
        ("error", pa.string()),  # null when the file was tagged
    ])


class TagBatch:
    """The callable class for ``Dataset.map_batches(TagBatch, batch_format="pyarrow", compute=ActorPoolStrategy(...))``.

    Each actor builds one ``Tagger`` (one onnxruntime session) when it starts. A call takes a batch with the
    ``bytes`` and ``path`` columns of ``read_binary_files(..., include_paths=True)`` and returns one row per file
    (see ``schema()``): the file's record, or its path and an error. ``prefix`` is put before each path (e.g.
    ``s3://``, which pyarrow filesystems leave out).
    """

    def __init__(self, options: Optional["TagOptions"] = None, *, embeddings: bool = False,
                 model: Optional[str] = None, threads: int = 1, prefix: str = "", filesystem=None):
        from .infer.tagger import Tagger
        from .options import TagOptions, requested_providers

        self.tagger = Tagger(model, providers=requested_providers(None), threads=threads)
        self.options = options or TagOptions()
        self.embeddings = embeddings
        self.prefix = prefix
        self.filesystem = filesystem  # where an archive's row without bytes is read from, as a stream
        self.schema = schema()

    def __call__(self, batch):
        import pyarrow as pa

        from .batch.archives import is_archive_name

        rows = []
        for path, data in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist()):
            if not data and self.filesystem is not None and is_archive_name(path):  # ``tag`` left it unread
                rows.extend(self.streamed_archive_rows(path))
            else:
                rows.extend(self.rows(self.prefix + path, data))
        return pa.Table.from_pylist(rows, schema=self.schema)

    def streamed_archive_rows(self, path: str) -> list:
        """An archive's rows, its bytes read from ``filesystem`` as they are tagged: a WARC or shard of gigabytes
        is never held whole (a zip is opened as a random-access file: its index comes last)."""
        from .batch.archives import kind_by_name

        is_zip = kind_by_name(path) == "zip"  # its index is at its end: read in place, not the zip whole
        try:
            stream = self.filesystem.open_input_file(path) if is_zip else \
                self.filesystem.open_input_stream(path, compression=None)  # not undone by its name: read as the CLI
            # reads it (a .warc.gz's offsets are the file's; a cut .tar.gz is not a read failure)
        except OSError as error:  # cannot be opened (gone, permissions): a row, as a file's would be
            from .errors import failure_message

            return [self._failed(self.prefix + path, failure_message(error), {"archive": self.prefix + path})]
        with stream:
            stream = _Failing(stream, self.prefix + path)
            return list(self.archive_rows(self.prefix + path, stream=stream))

    def rows(self, path: str, data: bytes) -> list:
        """A file's row, or an archive's (by its name, as the CLI opens one): a row per audio member."""
        from .batch.archives import is_archive_name

        return list(self.archive_rows(path, data)) if is_archive_name(path) else [self.row(path, data)]

    def row(self, path: str, data: bytes) -> dict:
        """One file's bytes to its row; a file that cannot be tagged gives a row with its error, never an exception."""
        from . import decode, hashing

        def load():
            if not data:
                raise decode.AudioError("empty: no data")  # what the CLI says of the same file
            return decode.load_bytes(data)

        return self._row(path, load, lambda: hashing.bytes_sha256(data))

    def archive_rows(self, path: str, data: bytes = b"", stream=None):
        """An archive's rows, read from its bytes (or a binary ``stream``) as an archive on the CLI's stdin is
        (``batch.piped``), of the kind its name says, as the CLI's named archives: its members are named and carry
        fields as the CLI's records of the same archive; an archive that cannot be read (or be read on) gives a
        row with its path and the error."""
        import io

        from .batch import piped
        from .batch.archives import kind_by_name
        from .batch.inputs import is_audio_name

        stream = io.BytesIO(data) if stream is None else stream
        for name, member, error in piped.members(stream, kind_by_name(path), is_audio_name):
            name = path + name[1:]  # "-/MEMBER" or "-#OFFSET" as the CLI names a member of an archive on stdin
            fields = dict(member.fields, archive=path) if member is not None else None
            if error is not None or member is None:
                yield self._failed(name, error, fields)
            else:
                yield self._row(name, member.read, member.hexdigest, fields)

    def _failed(self, path: str, error: str, fields: Optional[dict] = None) -> dict:
        from .infer.results import Outcome

        return self._as_row(Outcome(path, error=error, fields=fields))

    def _row(self, path: str, load, digest, fields: Optional[dict] = None) -> dict:
        from .errors import failure_message
        from .infer.results import Outcome

        prediction = None
        try:
            clip = load()
            prediction = self.tagger.predict(clip, self.options)
        except ReadFailed:
            raise
        except Exception as error:  # worded as the CLI words the same failure
            outcome = Outcome(path, error=failure_message(error), fields=fields)
        else:
            outcome = Outcome(path, prediction, clip.sample_rate, clip.channels, clip.duration,
                              warning=clip.warning, codec=clip.codec, fields=fields)
        if self.options.hash:
            try:
                outcome.sha256 = digest()
            except OSError as error:  # a member the archive could not give whole: tagged from what came, unhashed
                if outcome.error is None:  # as the CLI's record of the same member
                    from .batch.content import not_hashed

                    outcome.warning = outcome.warning or not_hashed("member", error)
        return self._as_row(outcome, prediction)

    def _as_row(self, outcome, prediction=None) -> dict:
        from . import records

        row = dict.fromkeys(COLUMNS)
        row.update(records.record(outcome))
        if self.options.events and outcome.error is None:  # the CLI's event records, less the path
            row["events"] = [{key: value for key, value in event.items() if key != "path"}
                             for event in records.event_records(outcome)]
        if self.embeddings and outcome.error is None:
            row["embedding"] = prediction.embedding.tolist()
        return row


class ReadFailed(Exception):
    """The filesystem failed while an archive was streamed (not an OSError: those are the archive's damage, said
    in its rows, and a rerun would take the archive as done). The task fails, and its archive has no rows."""


class _Failing(io.RawIOBase):
    """A filesystem's stream whose read errors are ``ReadFailed``."""

    def __init__(self, stream, name: str):
        super().__init__()
        self._stream, self._name = stream, name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:  # a zip's random-access file (its members are read in place)
        return self._stream.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._failing(self._stream.seek, offset, whence)
        except ValueError as error:  # pyarrow's ArrowInvalid for a position before the start, where zipfile
            # expects an OSError (a zip under 22 bytes, say)
            raise OSError(22, f"invalid seek: {error}") from error

    def tell(self) -> int:
        return self._failing(self._stream.tell)

    def read(self, size: int = -1) -> bytes:  # not RawIOBase's: it would allocate ``size`` bytes first
        return self._failing(self._stream.read) if size is None or size < 0 else \
            self._failing(self._stream.read, size)

    def _failing(self, call, *arguments):
        try:
            return call(*arguments)
        except OSError as error:
            raise ReadFailed(f"{self._name}: reading failed: {error}") from error

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)


def record(row: dict) -> dict:
    """A Parquet row back to the JSONL record the CLI prints for the same file (no events, no embedding, no null
    fields)."""
    return {key: row[key] for key in COLUMNS if key not in EXTRA_COLUMNS and row.get(key) is not None}


def event_records(row: dict) -> list:
    """A Parquet row's events back to the event records the CLI prints before the same file's record."""
    return [{"path": row["path"], **event} for event in row.get("events") or []]


# -- inputs and outputs ------------------------------------------------------------------------------------------


def resolve(location: str):
    """(pyarrow filesystem, path in it, prefix that makes a path a full name again) for a local path or a URI."""
    from pyarrow import fs

    if "://" not in location:
        return fs.LocalFileSystem(), os.path.abspath(location), ""
    filesystem, path = fs.FileSystem.from_uri(location)
    scheme = location.split("://", 1)[0]
    return filesystem, path, "" if scheme == "file" else scheme + "://"


def list_inputs(locations: Sequence[str], open_archives: bool = False) -> Tuple[object, str, List[str]]:
    """The audio files named by ``locations``: files as given, directories walked for audio extensions (and for
    archives' with ``open_archives``: an archive, named or found, is tagged member by member, ``TagBatch``).

    Returns (filesystem, prefix, sorted unique paths). All inputs must be on one filesystem (Ray reads with one).
    Raises FileNotFoundError naming a location that does not exist, ValueError when they span filesystems.
    """
    from pyarrow import fs

    from .batch.archives import is_archive_name
    from .batch.inputs import is_audio_name

    def wanted(name: str) -> bool:
        return is_audio_name(name) or (open_archives and is_archive_name(name))

    filesystem, prefix, paths = None, None, set()
    for location in locations:
        here, path, here_prefix = resolve(location)
        if filesystem is None:
            filesystem, prefix = here, here_prefix
        elif here_prefix != prefix or here.type_name != filesystem.type_name:
            raise ValueError(f"{location}: all inputs must be on one filesystem ({prefix or 'local'} first)")
        info = here.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise FileNotFoundError(f"{location}: no such file or directory")
        if info.type == fs.FileType.Directory:
            found = here.get_file_info(fs.FileSelector(path, recursive=True))
            paths.update(f.path for f in found if f.type == fs.FileType.File and wanted(f.base_name))
        else:
            paths.add(path)  # a file named on the command line is tagged whatever its extension, as the CLI does
    return filesystem, prefix, sorted(paths)


def read_rows(output: str, columns: Sequence[str] = ("path", "error"), repair: bool = False):
    """The rows already in an output directory, as a pyarrow Table (empty when there is none).

    With ``repair``, a Parquet file that cannot be read (cut short when a run was killed while writing it) is
    deleted, so that the directory stays readable; its files are simply tagged again.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    filesystem, path, _ = resolve(output)
    empty = schema().empty_table().select(list(columns))
    if filesystem.get_file_info(path).type != fs.FileType.Directory:
        return empty
    tables = [empty]
    for info in filesystem.get_file_info(fs.FileSelector(path)):
        if info.type != fs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        try:
            table = pq.read_table(info.path, filesystem=filesystem,
                                  columns=[name for name in columns if name in _column_names(info.path, filesystem)])
        except (pa.ArrowInvalid, OSError) as error:
            if not repair:
                raise
            _warn(f"{info.path}: removing an incomplete file left by an interrupted run ({error})")
            filesystem.delete_file(info.path)
            continue
        for name in columns:  # a file written before a column existed (an older audiotag's): nulls there
            if name not in table.column_names:
                field = empty.schema.field(name)
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        tables.append(table.select(list(columns)))
    return pa.concat_tables(tables)


def _column_names(path: str, filesystem) -> set:
    import pyarrow.parquet as pq

    with filesystem.open_input_file(path) as file:
        return set(pq.read_schema(file).names)


# -- the run -----------------------------------------------------------------------------------------------------


def tag(paths: Sequence[str], output: str, *, filesystem=None, prefix: str = "", workers: Optional[int] = None,
        worker_cpus: float = 1, batch_size: int = BATCH_FILES, rows_per_file: int = ROWS_PER_FILE,
        options: Optional["TagOptions"] = None, embeddings: bool = False,
        model: Optional[str] = None) -> None:
    """Tag ``paths`` (in ``filesystem``) on the Ray cluster this process is connected to; append rows to ``output``.

    ``workers`` tagging actors (default: as many as the cluster's CPUs allow at ``worker_cpus`` each), spread
    over the nodes; each runs onnxruntime on ``worker_cpus`` threads.
    """
    import ray

    # Ray Data's hint that a cap above the number of blocks is not reached (a small run): nothing to act on.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", module=r"ray\.data\.")
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1) // worker_cpus))
    out_fs, out_path, _ = resolve(output)
    io_tasks = workers * IO_TASKS_PER_WORKER
    # One read task per batch: a block is what an actor task receives whole, so it is also the unit Ray retries
    # and balances; Ray's default (about a file per block) costs a task per file.
    # An archive is not read here: its actor streams it from the filesystem (a WARC of gigabytes would be one
    # block of that size in the object store); its row carries no bytes.
    from .batch.archives import is_archive_name

    files = [path for path in paths if not is_archive_name(path)]
    archives = [{"bytes": b"", "path": path} for path in paths if is_archive_name(path)]
    parts = []
    if files:
        parts.append(ray.data.read_binary_files(files, filesystem=filesystem, include_paths=True, num_cpus=IO_CPUS,
                                                concurrency=io_tasks,
                                                override_num_blocks=math.ceil(len(files) / batch_size)))
    if archives:
        parts.append(ray.data.from_items(archives, override_num_blocks=len(archives)))
    if not parts:
        return
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    dataset = dataset.map_batches(
        TagBatch,
        fn_constructor_args=(options,),
        fn_constructor_kwargs=dict(embeddings=embeddings, model=model,
                                   threads=max(1, int(worker_cpus)), prefix=prefix,
                                   filesystem=filesystem or resolve(".")[0]),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
        num_cpus=worker_cpus,
    )
    dataset.write_parquet(out_path, filesystem=out_fs, min_rows_per_file=rows_per_file, concurrency=io_tasks,
                          ray_remote_args={"num_cpus": IO_CPUS}, schema=schema())


def connect(address: Optional[str], verbose: bool = False) -> None:
    """ray.init with quiet logs: Ray's and Ray Data's INFO lines stay in the session's log files, not on stderr."""
    import ray

    if not verbose:  # a notice that a new local instance uses token authentication: nothing to act on here
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    ray.init(address=address, logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose)
    quiet_ray_data(verbose)


def quiet_ray_data(verbose: bool = False) -> None:
    """Ray Data's console lines (plans, progress when stderr is not a terminal) down to warnings. Progress bars,
    drawn only on a terminal, stay."""
    import ray.data  # noqa: F401 -- its import sets up the "ray.data" logger adjusted here

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; the session's log file keeps everything
            handler.setLevel(logging.INFO if verbose else logging.WARNING)


# -- the command -------------------------------------------------------------------------------------------------

EPILOG = """\
Rows (one per file, one per audio member of an archive; Parquet files under DIR): path, sha256 (with --hash),
archive, member, key, url, warc_record_id (an archive's member, as audiotag's records), duration, sample_rate,
channels, categories (list of {name, score}: the seven AudioSet top-level categories, best first),
tags (list of {label, mid, index, score}, best first), events (list of {label, start, end, score}, with
--events), embedding (list of float, with --embeddings), error (set when the file could not be tagged; the
other fields are then null).

The cluster: --address, else $RAY_ADDRESS, else one started on this machine with `ray start`, else a new
local Ray instance. Every node needs the same audiotag installed (pip install audiotag[ray]); local paths must
be readable on every node (a shared mount), or use a URI any node can read (s3://, gs://, hdfs://...).

exit status: 0 all tagged; 1 some files could not be tagged (their rows carry the error); 2 bad command line;
3 the model cannot be loaded, or the run failed (what was written stays: run the same command again to carry
on); 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="audiotag-ray", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tag audio files on every node of a Ray cluster; write one Parquet row per file. "
                    "Files already in the output are skipped, so the same command resumes an interrupted run.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file or directory: a local path or a URI")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="Parquet directory (local path or URI)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, `ray start`'s, or local)")
    add_tag_arguments(parser.add_argument_group("tagging (as audiotag's)"), exclude=("segments",))
    parser.add_argument("--embeddings", action="store_true", help="also store each file's embedding")
    add_engine_arguments(parser, "model", "open_archives",
                         model=dict(help="an audiotag .onnx model, at this path on every node"))
    parser.add_argument("--workers", type=number(int, 1), metavar="N",
                        help="tagging processes in all (default: the cluster's CPUs / --worker-cpus)")
    parser.add_argument("--worker-cpus", type=number(int, 1), default=1, metavar="C",
                        help="CPUs (onnxruntime threads) per tagging process (default 1)")
    parser.add_argument("--batch-size", type=number(int, 1), default=BATCH_FILES, metavar="N",
                        help=f"files per task (default {BATCH_FILES})")
    parser.add_argument("--rows-per-file", type=number(int, 1), default=ROWS_PER_FILE, metavar="N",
                        help=f"rows gathered per Parquet file (default {ROWS_PER_FILE})")
    parser.add_argument("-v", "--verbose", action="store_true", help="let Ray's own logs through to stderr")
    parser.add_argument("--version", action="version", version=f"audiotag-ray {__version__}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        _warn("interrupted: run the same command again to carry on")
        return EXIT_INTERRUPTED


def _run(args) -> int:
    from .batch.archives import is_archive_name

    try:
        options = tag_options(args)  # checked before anything is listed or started
    except ValueError as error:
        _warn(str(error))
        return EXIT_USAGE

    try:
        filesystem, prefix, paths = list_inputs(args.inputs, args.open_archives)
        done = read_rows(args.output, ("path", "archive"), repair=True)
    except (OSError, ValueError) as error:  # pyarrow's errors for a bad URI or an unreachable store are among these
        _warn(str(error))
        return EXIT_USAGE
    if not paths:
        _warn(f"no audio files in {' '.join(args.inputs)}")
        return EXIT_USAGE
    # An archive is done once a row names it as its archive (a member's, or the archive's own error); a row with
    # its path alone is older output's, which tagged it as a file: it is opened now.
    files, archives = set(done.column("path").to_pylist()), set(done.column("archive").to_pylist())
    todo = [path for path in paths if prefix + path not in (archives if is_archive_name(path) else files)]
    if not todo:
        _warn(f"nothing to do: all {len(paths)} files are already in {args.output}")
        return EXIT_OK
    if len(todo) < len(paths):
        _warn(f"{len(paths) - len(todo)} of {len(paths)} files are already in {args.output}; "
              f"tagging the other {len(todo)}")

    model = args.model and os.path.abspath(args.model)  # the workers' working directory is not ours
    problem, labels_problem = _model_problem(model, options)
    if problem:
        _warn(problem)
        return EXIT_MODEL
    if labels_problem:  # an unknown name in --only, --exclude or --labels
        _warn(f"--{labels_problem[0]}: {labels_problem[1]}")
        return EXIT_USAGE

    started = time.perf_counter()
    try:
        connect(args.address, args.verbose)
        tag(todo, args.output, filesystem=filesystem, prefix=prefix, workers=args.workers,
            worker_cpus=args.worker_cpus, batch_size=args.batch_size, rows_per_file=args.rows_per_file,
            options=options,
            embeddings=args.embeddings, model=model)
        rows = read_rows(args.output, ("path", "archive", "error"))
    except KeyboardInterrupt:
        raise
    except Exception as error:  # Ray wraps a worker's exception in its own types: report it as one line
        _warn(f"the run failed: {_first_line(error)}")
        return EXIT_RUN_FAILED
    seconds = time.perf_counter() - started
    wanted = {prefix + path for path in todo}

    def this_runs(path, archive) -> bool:  # a row of an input run now (not an older run's row of an archive)
        return archive in wanted or (archive is None and path in wanted and not is_archive_name(path))

    errors = [(path, error) for path, archive, error in zip(*(rows.column(name).to_pylist()
                                                              for name in ("path", "archive", "error")))
              if this_runs(path, archive) and error is not None]
    for path, error in errors[:ERRORS_SHOWN]:
        _warn(f"{path}: {error}")
    if len(errors) > ERRORS_SHOWN:
        _warn(f"... and {len(errors) - ERRORS_SHOWN} more files with an error (see the error column)")
    tagged = sum(this_runs(path, archive)
                 for path, archive in zip(rows.column("path").to_pylist(), rows.column("archive").to_pylist()))
    members = f" ({tagged} rows: an archive has a row per member)" if tagged != len(todo) else ""
    _warn(f"{len(todo)} files{members}: {tagged - len(errors)} ok, {len(errors)} failed in {seconds:.1f} s "
          f"({len(todo) / seconds:.1f} files/s); {args.output} holds {rows.num_rows} rows")
    return EXIT_INPUT_FAILED if errors else EXIT_OK


def _model_problem(model: Optional[str], options: "TagOptions") -> tuple:
    """Load the model here first: a missing or mismatched model is one clear line, not every worker's traceback;
    so is a label the options name that the model does not know. (The workers load the same path, or the same
    bundled model: every node runs the same audiotag.) Returns (the model's problem, the labels' problem)."""
    from .infer.model import ModelError
    from .infer.tagger import Tagger

    try:
        tagger = Tagger(model, threads=1)
    except (ModelError, FileNotFoundError) as error:
        return str(error), None
    return None, tagger.label_problem(options)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _warn(message: str) -> None:
    sys.stderr.write(f"audiotag-ray: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
