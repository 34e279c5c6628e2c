"""Command line: parse, dispatch, format. The work is done by ``Tagger``; results go to stdout, problems to
stderr as one line each (``audiotag: INPUT: what is wrong``)."""

import argparse
import sys

from . import __version__

EXIT_OK = 0
EXIT_INPUT_FAILED = 1  # at least one input could not be tagged; the others were
EXIT_USAGE = 2  # bad command line
EXIT_MODEL = 3  # the model or its assets cannot be loaded
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # stdout was closed by the reader (e.g. `| head -1`): like a process killed by SIGPIPE

EPILOG = """\
input:
  FILE     any file libsndfile decodes: WAV, FLAC, OGG Vorbis/Opus, MP3 (any rate, any channel count)
  -        a WAV/FLAC/OGG stream on stdin; with --raw, headerless samples

output (text): one line per label, "SCORE  LABEL", best first; with several inputs a "== INPUT" line heads each.
output (json): one object per input per line:
  {"path": "a.wav", "duration": 10.0, "sample_rate": 32000, "channels": 1,
   "tags": [{"label": "Music", "mid": "/m/04rlf", "index": 137, "score": 0.598}, ...]}
  or {"path": "b.wav", "error": "..."} for an input that could not be tagged.
scores are per-label sigmoid outputs in 0..1 (labels are not exclusive; scores do not sum to 1).

exit status:
  0    every input was tagged
  1    some input could not be tagged (the others were; see stderr)
  2    bad command line
  3    the model or its assets could not be loaded
  130  interrupted;  141  stdout closed early

environment:
  AUDIOTAG_PROVIDERS   onnxruntime execution providers, comma-separated (e.g. "cuda,cpu"); default: automatic

examples:
  audiotag clip.wav
  audiotag --format json a.mp3 b.flac > tags.jsonl
  arecord -f S16_LE -r 16000 -c 1 | audiotag - --raw s16le --rate 16000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag",
        description="Print the most likely AudioSet labels (527 classes) for audio files or stdin.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="audio file, or - for stdin")
    parser.add_argument("-k", "--top-k", type=_positive_int, default=10, metavar="N", help="labels per input (default 10)")
    parser.add_argument("-f", "--format", choices=("text", "json"), default="text", help="output format (default text)")
    raw = parser.add_argument_group("raw samples on stdin")
    raw.add_argument("--raw", choices=("s16le", "s32le", "f32le"), help="stdin carries headerless little-endian samples")
    raw.add_argument("--rate", type=_positive_int, metavar="HZ", help="sample rate of --raw input (required with --raw)")
    raw.add_argument("--channels", type=_positive_int, default=1, metavar="C", help="interleaved channels of --raw input (default 1)")
    windows = parser.add_argument_group("long recordings")
    windows.add_argument("--window", type=_non_negative_float, default=10.0, metavar="SEC",
                         help="seconds per model pass (default 10); 0 = the whole clip in one pass, as upstream")
    windows.add_argument("--hop", type=_positive_float, default=5.0, metavar="SEC", help="seconds between windows (default 5)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--model", metavar="PATH", help="an audiotag .onnx model (default: the bundled mn04_as)")
    engine.add_argument("--provider", metavar="LIST", help="execution providers, comma-separated (default: $AUDIOTAG_PROVIDERS or automatic)")
    engine.add_argument("--threads", type=_non_negative_int, default=0, metavar="N", help="onnxruntime threads (default 0: all cores)")
    parser.add_argument("--version", action="store_true",
                        help="print versions of audiotag, its model and onnxruntime, and the providers available")
    parser.add_argument("--self-check", action="store_true",
                        help="load every asset and tag a built-in test tone; exit 0 when all is sound")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.inputs or args.version or args.self_check):
        parser.error("no input given (a file, or - for stdin)")
    if args.raw and not args.rate:
        parser.error("--raw needs --rate HZ")
    if args.inputs.count("-") > 1:
        parser.error("stdin (-) can be read only once")
    try:
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _run(args) -> int:
    from . import audio, output
    from .model import ModelError, requested_providers
    from .tagger import TagOptions, Tagger

    try:
        tagger = Tagger(args.model, providers=requested_providers(args.provider), threads=args.threads)
    except (ModelError, FileNotFoundError) as error:
        if args.version:
            print(f"audiotag {__version__}")
        _warn(str(error))
        return EXIT_MODEL
    if args.version:
        _emit(_version_text(tagger))
        return EXIT_OK
    if args.self_check:
        return _self_check(tagger)
    options = TagOptions(top_k=args.top_k, window=args.window, hop=args.hop)
    failed = 0
    for path in args.inputs:
        try:
            clip = _read_input(path, args)
            prediction = tagger.predict(clip, options)
        except (audio.AudioError, OSError) as error:
            failed += 1
            _warn(f"{path}: {_reason(error)}")
            if args.format == "json":
                _emit(output.to_json(output.error_record(path, _reason(error))))
            continue
        rec = output.record(path, clip, prediction)
        _emit(output.to_json(rec) if args.format == "json" else output.to_text(rec, len(args.inputs) > 1))
    return EXIT_INPUT_FAILED if failed else EXIT_OK


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

    from .tagger import TagOptions

    rate = 32000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(3 * rate) / rate)
    labels = [tag.label for tag in tagger.tag(tone.astype(np.float32), rate, TagOptions(top_k=3)).tags]
    if not {"Sine wave", "Beep, bleep"} <= set(labels):
        _warn(f"self-check failed: a 1 kHz tone was tagged {labels}")
        return EXIT_MODEL
    _emit(f"self-check ok: a 1 kHz tone is tagged {', '.join(labels)}")
    return EXIT_OK


def _read_input(path, args):
    from . import audio

    if path == "-":
        data = sys.stdin.buffer.read()
        if args.raw:
            return audio.load_raw(data, args.raw, args.rate, args.channels)
        return audio.load_bytes(data)
    return audio.load(path)


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _warn(message: str) -> None:
    sys.stderr.write(f"audiotag: {message}\n")
    sys.stderr.flush()


def _reason(error) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value
