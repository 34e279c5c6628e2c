"""The command line, declared and checked: the tag and engine options come from ``audiotag.options`` (shared
with serve and audiotag-ray), the rest is the CLI's own. Standard library only: --help is instant."""

import argparse
import os
import sys

from ..options import (BATCH, RAW_FORMATS, Parser, add_engine_arguments, add_tag_arguments, number, tag_options,
                       window_problem)

EPILOG = """\
inputs:
  FILE     an audio or video file, told by its bytes, not its name: WAV, FLAC, Ogg Vorbis/Opus/FLAC, MP3 (junk
           before the first frame is skipped), AIFF, CAF, AAC/M4A/MP4/3GP, WebM/MKV/MKA, WMA/ASF, AC-3/E-AC-3,
           AMR-NB/WB, ALAC, MPEG-TS, FLV, AVI, MOV... (any rate, any channel count); of a video file, its default
           audio stream (the video is never decoded). libsndfile decodes what it can, FFmpeg the rest.
  DIR      every audio or video file below it (by extension, case-insensitive; --all-files: every regular file),
           in sorted order
  ARCHIVE  a .tar, .tar.gz/.tgz, .tar.zst (a WebDataset shard), .zip, .warc, .warc.gz or .warc.zst: its audio members
           are tagged where they lie, as ARCHIVE/MEMBER (a WARC's audio and video responses: ARCHIVE#OFFSET, with the
           record's "url" and "warc_record_id"); in a DIR only with --open-archives
  -        any of those on stdin (curl URL | audiotag -): WAV and most containers are decoded as they arrive;
           FLAC, Ogg, MP4/MOV/3GP and CAF (whose index may come last) are held in memory, up to 1024 MB;
           with --raw, headerless samples (consumed as they arrive); a tar, WARC or zip on stdin (told by its
           first bytes, or --archive): its members, read in order, never written to disk (-/MEMBER, -#OFFSET),
           each held whole (up to 1024 MB) to be tagged in a watched worker; --in-process streams them

output formats (default: text on a terminal, jsonl otherwise):
  text   "SCORE  LABEL" lines, best first, then "category: NAME SCORE" (the best top-level category);
         "== INPUT" heads each input when there are several
  jsonl  one object per input per line ("json" is the same):
           {"path": "a.wav", "duration": 10.0, "sample_rate": 32000, "channels": 1, "codec": "pcm_s16le",
            "categories": [{"name": "Music", "score": 0.598}, ...all seven, best first],
            "tags": [{"label": "Music", "mid": "/m/04rlf", "index": 137, "score": 0.598}, ...]}
         or {"path": "b.wav", "error": "..."}; with --segments also {"path", "start", "end", "tags"} per window;
         with --events, before the input's record, {"path", "label", "start", "end", "score"} per event
         with --hash, "sha256" after "path"; with --dedup a copy's record is its first copy's, with
         its own "path" and "duplicate_of": the first copy's path; an archive's member adds "archive",
         "member" (and a tar's WebDataset "key"), a WARC record "archive", "url" and "warc_record_id"
  csv, tsv  one row per label:
           path,duration,sample_rate,channels,codec,rank,label,mid,index,score,categories,warning,error
         (categories: "NAME:SCORE;..." all seven, best first; a clip with no label above --threshold: one row;
         a run that may tag archive members (an archive operand, --open-archives, --archive, --files-from)
         adds archive,member,key,url,warc_record_id, and --hash or --dedup sha256,duplicate_of, before error)
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
  AUDIOTAG_PARQUET_FLUSH  -f parquet: a part file every RECORDS records or SECONDS s: "RECORDS[,SECONDS]"
                       (default 1000,60)
  AUDIOTAG_PROVIDERS   onnxruntime execution providers, comma-separated (e.g. "cuda,cpu"); default automatic:
                       CUDA, ROCm, MIGraphX, CoreML, DirectML, then CPU, whichever are available

HTTP service: audiotag serve [--host 127.0.0.1] [--port 8750] (audiotag serve --help)

examples:
  audiotag clip.wav
  audiotag /data/crawl -o tags.jsonl --resume --embeddings emb/
  audiotag /data/crawl -o tags.jsonl --dedup --resume --only Music
  audiotag /data/crawl -o tags.jsonl --labels mine.csv     (mine.csv: dog,Bark / dog,Yip / vehicle,Vehicle)
  crawler | audiotag --files-from - -o tags.jsonl
  audiotag crawl.warc.gz shards/ --open-archives -o tags.jsonl --resume
  curl -s https://example.org/crawl.warc.gz | audiotag - --archive warc -o tags.jsonl
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
    parser.add_argument("--files-from", metavar="LIST",
                        help="also read input paths, one per line, from LIST (- for stdin)")
    parser.add_argument("--all-files", action="store_true",
                        help="in directories, try every regular file, whatever its name (crawlers save "
                             "index.php?id=1); "
                             "what is not audio becomes an error record")
    add_engine_arguments(parser, "open_archives")
    out = parser.add_argument_group("output")
    out.add_argument("-f", "--format", choices=("text", "jsonl", "json", "csv", "tsv", "parquet"),
                     help="output format (default: text on a terminal, else jsonl; parquet: -o names a directory "
                          "of part files, needs the parquet extra)")
    out.add_argument("-o", "--output", metavar="FILE", help="write results to FILE instead of stdout")
    out.add_argument("--resume", action="store_true",
                     help="with -o: skip inputs already recorded in FILE and append the rest")
    add_engine_arguments(out, "dedup")
    out.add_argument("--embeddings", metavar="DIR", help="also save each clip's embedding as DIR/<input path>.npy")
    out.add_argument("--progress", action="store_true",
                     help="show a progress bar on stderr for a batch run: done/total, percent, time left "
                          "(default: when stderr is a terminal)")
    out.add_argument("-v", "--verbose", action="store_true", help="say which execution provider runs, and timings")
    raw = parser.add_argument_group("stdin: raw samples or an archive")
    raw.add_argument("--archive", choices=("tar", "warc", "zip"),
                     help="stdin carries an archive: tag its members as they arrive (tar, tar.gz, tar.zst, WARC, "
                          "WARC.gz and WARC.zst: read as a stream, each member whole for a watched worker; zip: "
                          "read whole first, up to 1024 MB). Default: told by its first bytes")
    raw.add_argument("--raw", choices=tuple(RAW_FORMATS), help="stdin carries headerless little-endian samples")
    raw.add_argument("--rate", type=number(int, 1), metavar="HZ",
                     help="sample rate of --raw input (required with --raw)")
    raw.add_argument("--channels", type=number(int, 1), default=1, metavar="C",
                     help="interleaved channels of --raw input (default 1)")
    tagging = parser.add_argument_group("tagging (the same options as audiotag serve's and audiotag-ray's)")
    add_tag_arguments(tagging)
    limits = parser.add_argument_group(
        "limits per input (defaults apply to batch runs: a directory, a list, several inputs)")
    add_engine_arguments(limits, "max_duration", "timeout")
    limits.add_argument("--in-process", action="store_true",
                        help="tag batch inputs in this process, without a watched worker: a crashing decoder "
                             "then ends the run (default: a native crash fails only the input that caused it)")
    engine = parser.add_argument_group("engine")
    add_engine_arguments(engine, "model", "provider", "jobs")
    engine.add_argument("--workers", type=number(int, 1), default=1, metavar="N",
                        help="worker processes for a batch, each decoding --jobs inputs at a time and loading "
                             "its own model (about 115 MB each), so that they share no Python lock. One worker "
                             "was within 6%% of the best setting on every format measured (README: Execution "
                             "providers and threads) (default: 1)")
    add_engine_arguments(engine, "threads")
    parser.add_argument("--version", action="store_true",
                        help="print versions of audiotag, its model and onnxruntime, and the providers available")
    parser.add_argument("--self-check", action="store_true",
                        help="load every asset and tag a built-in test tone; exit 0 when all is sound")
    return parser


def check_arguments(parser, args) -> None:
    """Refuse (one line, exit 2) what cannot work, before anything is opened or written; fill in defaults."""
    if not (args.inputs or args.files_from or args.version or args.self_check):
        parser.error("no input given (a file, a directory, - for stdin, or --files-from LIST)")
    if args.raw and not args.rate:
        parser.error("--raw needs --rate HZ")
    if args.archive and (args.raw or "-" not in args.inputs):
        parser.error("--archive reads stdin: give - as an input (and no --raw)")
    if (args.inputs.count("-") + (args.files_from == "-")) > 1:
        parser.error("stdin (-) can be read only once")
    if args.resume and not args.output:
        parser.error("--resume needs -o FILE")
    if args.dedup and not (args.output and args.format in (None, "jsonl", "json", "csv", "tsv")):
        parser.error("--dedup needs -o FILE in jsonl, csv or tsv: a duplicate's record is read back from it")
    if args.format == "parquet":
        _check_parquet(parser, args)
    if args.workers > 1 and args.in_process:
        parser.error("--workers starts worker processes: it cannot be combined with --in-process")
    if args.workers > 256:
        parser.error(f"--workers {args.workers}: at most 256")
    problem = window_problem(args.window, args.hop)
    if problem:
        parser.error(problem)
    try:
        tag_options(args)  # what TagOptions refuses in any front end (the names in --only are checked later)
    except ValueError as error:
        parser.error(str(error))
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
    args.stdin = None  # what "-" reads: stdin, its first bytes replayed after they were sniffed for an archive
    if "-" in args.inputs and not args.raw:
        from ..batch import piped

        args.archive, args.stdin = piped.sniff(sys.stdin.buffer, args.archive)
    batch = batch_mode(args)
    for name in ("max_duration", "timeout"):  # BATCH's, in batch runs only: one file named on its own is tagged whole
        value = getattr(args, name)
        setattr(args, name, (getattr(BATCH, name) if batch else None) if value is None else (value or None))
    if args.resume and args.format == "text":
        parser.error("--resume needs a machine-readable format: jsonl, csv or tsv")


def _check_parquet(parser, args) -> None:
    import importlib.util

    if not args.output:
        parser.error("-f parquet needs -o DIR: the parts of a Parquet output are files, not a stream")
    if args.segments:
        parser.error("--segments needs jsonl or text output: a Parquet row is one input's record")
    if importlib.util.find_spec("pyarrow") is None:  # the package without its extra, or the single-file binary
        from ..batch.parquet import INSTALL_HINT

        parser.error(INSTALL_HINT)


def batch_mode(args) -> bool:
    """Several inputs (or a directory, an archive, or a list): one record per input, each headed by its path."""
    from ..batch import archives  # not at the top: it brings numpy and the decoders, --help needs neither

    return len(args.inputs) > 1 or bool(args.files_from) or bool(getattr(args, "archive", None)) or \
        any(os.path.isdir(p) or archives.is_archive_name(p) for p in args.inputs if p != "-")


def supervised(args) -> bool:
    """Batch inputs go to a watched worker (see supervisor), unless audio comes on stdin: it cannot be read
    twice, so it could not be retried. An archive's members on stdin are read whole and carried to the worker."""
    return batch_mode(args) and not args.in_process and ("-" not in args.inputs or bool(args.archive))


def _is_audio_name(path: str) -> bool:
    from ..batch.inputs import is_audio_name  # not at the top: it brings numpy and the decoders, --help needs neither

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
