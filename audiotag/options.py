"""Tag options, declared once for every front end: ``TagOptions`` (what one input's tagging may choose) and the
engine options (model, providers, threads, jobs, limits). The command line, ``audiotag serve`` (its flags and
its query parameters) and ``audiotag-ray`` all build their flags from the tables here and turn them into
``TagOptions`` here, so a new option reaches all three and they refuse the same values alike.

Standard library only: ``audiotag --help`` and a bad flag must not load numpy.
"""

import argparse
import csv
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Mapping, Optional

from .errors import EXIT_USAGE, one_line

SAMPLE_RATE = 32000  # the model's rate (infer.frontend.SAMPLE_RATE, not imported: that would load numpy)
MAX_SECONDS = 86400.0  # --window and --hop: a day is already far past anything useful
AGGREGATES = ("max", "mean")  # how window scores become a clip score; scripts/studies/aggregate_study.py chose max
RAW_FORMATS = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4"}  # --raw: headerless little-endian samples (numpy dtypes)


def usable_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The cores this process may use: its CPU affinity (taskset, a container's cpuset), capped by a cgroup CPU
    quota (docker --cpus, a Kubernetes CPU limit) when one is set. os.cpu_count() counts every core of the host,
    and a pod limited to 2 CPUs on a 64-core server would run 64 threads queueing for 2 cores and one GIL."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root, _own_cgroup())
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _own_cgroup() -> str:
    """This process's cgroup v2 path ("/" or "" inside a container, whose root is its own)."""
    try:
        with open("/proc/self/cgroup", errors="surrogateescape") as lines:
            return next((line.rstrip("\n").split(":", 2)[2] for line in lines if line.startswith("0::")), "")
    except (OSError, IndexError):
        return ""


def _cgroup_quota(root: str, own: str) -> Optional[float]:
    """CPUs the cgroup quotas allow a process of cgroup ``own`` (v2's cpu.max, v1's cfs files, of the root and
    each cgroup down to its own); None without one."""
    folders, parts = [root], [part for part in own.split("/") if part and part != ".."]
    folders += [os.path.join(root, *parts[:depth]) for depth in range(1, len(parts) + 1)]  # and its ancestors'
    found = []
    for folder in folders:  # the smallest quota on the way down to this process's cgroup holds
        for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
            try:
                with open(os.path.join(folder, quota_file)) as file:
                    words = file.read().split()
                if period_file:
                    with open(os.path.join(folder, period_file)) as file:
                        words.append(file.read().strip())
                quota, period = float(words[0]), float(words[1])
            except (OSError, ValueError, IndexError):  # "max": no quota; a file absent: not this version
                continue
            if 0 < quota < math.inf and period > 0:
                found.append(quota / period)
    return min(found, default=None)


def number(kind, minimum, maximum=None):
    """An argparse type: a number of ``kind`` within [minimum, maximum], with a message that says so."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= minimum:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        if maximum is not None and not value <= maximum:  # also refuses inf
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value

    return parse


def read_label_map(path) -> tuple:
    """A label map file (``--labels FILE``): CSV rows ``user_label,audioset_label_or_mid_or_node``, one member per
    row (a user label's rows add up); a name's commas may stay unquoted ("dog,Bow-wow" and "man,Male speech, man
    speaking" both read). Blank lines, ``#`` comments and a ``user_label,...`` header are skipped. Returns the
    (user label, name) pairs in file order; raises ValueError naming the file and line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(enumerate(csv.reader(file), 1))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    pairs = []
    for line, row in rows:
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#") or (line == 1 and cells[0].lower() == "user_label"):
            continue
        user, name = cells[0], ",".join(row[1:]).strip()
        if not user or not name:
            raise ValueError(f"{path} line {line}: expected user_label,audioset_label (got {','.join(row)!r})")
        pairs.append((user, name))
    if not pairs:
        raise ValueError(f"{path}: no user_label,audioset_label rows")
    return tuple(pairs)


def _label_map_argument(path):
    try:
        return read_label_map(path)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr, as every other error is (exit 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)} ({self.prog} --help for usage)\n")


def _option(default, *flags, kind=None, per_request=True, **argument):
    """A TagOptions field and its flag: ``flags`` and ``argument`` go to argparse's add_argument; ``kind`` parses
    it from text (a query string); ``per_request``: ``audiotag serve`` takes it as a query parameter."""
    kind = kind or type(default)
    return field(default=default, metadata={"flags": flags, "kind": kind, "per_request": per_request,
                                            "argument": argument})


@dataclass(frozen=True)
class TagOptions:
    """Everything one input's tagging may choose: how a clip is cut into model passes, how window scores become
    the clip's, and what is returned. Checked when made (ValueError naming the field), so every front end refuses
    the same values.

    Args:
        top_k: at most this many labels per result, best first.
        threshold: ... and only those scoring at least this (0..1).
        window: seconds per model pass (the length the model was trained on); 0 = the whole clip in one pass.
        hop: seconds between window starts for clips longer than a window; None = half the window (5 s for 0).
        aggregate: a label's clip score from its window scores: "max" (best window) or "mean".
        segments: keep each window's top-k as well.
        events: find the stretches where each label is present (``infer.events``), from short windows.
        only: keep these labels only: comma-separated display names or MIDs (or a sequence of them), each meaning
            its ontology subtree ("Music": every label under Music). Checked against the model when tagging
            (``infer.labels``): an unknown name is a ValueError that suggests the nearest.
        exclude: ... and never these (same names).
        hash: give the sha256 of the input's bytes (``Outcome.sha256``, the record's "sha256").
        labels: the user's own labels, each scoring as the best of its members: a label map file's path (rows
            ``user_label,audioset_label``: ``read_label_map``) or (user label, name) pairs. Results then hold the
            user labels; top_k and threshold apply to them.
    """

    top_k: int = _option(10, "-k", "--top-k", type=number(int, 1), metavar="N",
                         help="labels per input (default 10)")
    threshold: float = _option(0.0, "-t", "--threshold", type=number(float, 0, 1), metavar="T",
                               help="only labels scoring at least T, within --top-k (-k 527 -t 0.2: every label "
                                    "above 0.2)")
    window: float = _option(10.0, "--window", type=number(float, 0, MAX_SECONDS), metavar="SEC", per_request=False,
                            help="seconds per model pass (default 10); 0 = the whole file in one pass, as upstream")
    hop: Optional[float] = _option(None, "--hop", kind=float, type=number(float, 0.01, MAX_SECONDS), metavar="SEC",
                                   per_request=False, help="seconds between windows (default: half the window, 5)")
    aggregate: str = _option("max", "--aggregate", choices=AGGREGATES,
                             help="a label's score in a long file: its best window's (max, default) or the mean")
    segments: bool = _option(False, "--segments", help="also give each window's tags, as soon as it is done")
    events: bool = _option(False, "--events",
                           help="also give the stretches where each label is present (start, end, peak score), "
                                "found on 2 s windows every 1 s")
    only: str = _option("", "--only", metavar="LABEL,...",
                        help="keep only these labels: AudioSet display names or MIDs, comma-separated; a label with "
                             "labels under it in the ontology means them all (--only Music: every kind of music)")
    exclude: str = _option("", "--exclude", metavar="LABEL,...",
                           help="never give these labels (names as --only; --exclude Speech drops Speech and the "
                                "kinds of speech under it)")
    hash: bool = _option(False, "--hash", help="add the sha256 of each input's bytes to its record (a column in "
                                               "CSV/TSV)")
    labels: tuple = _option((), "--labels", kind=str, per_request=False, type=_label_map_argument, metavar="FILE",
                            help="your own labels: a CSV of user_label,audioset_label rows (the AudioSet label "
                                 "by name, MID or ontology node); a user label scores as the best of its "
                                 "members, and results hold your labels (top-k and threshold apply to them)")

    def __post_init__(self):
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k must be a whole number of at least 1, got {self.top_k!r}")
        if not 0.0 <= self.threshold <= 1.0:  # also refuses NaN
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold!r}")
        if not (self.window == 0 or 1.0 <= self.window <= MAX_SECONDS):
            raise ValueError(f"window must be 0 (the whole clip in one pass) or 1 to 86400 s, got {self.window!r}")
        if self.hop is None:
            object.__setattr__(self, "hop", self.window / 2 if self.window else 5.0)
        if not 0.01 <= self.hop <= MAX_SECONDS or (self.window and self.hop > self.window):
            raise ValueError(f"hop must be 0.01 s to the window's length, got {self.hop!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        for name in ("only", "exclude"):  # a sequence of names is kept as the text a flag would give
            value = getattr(self, name)
            if not isinstance(value, str):
                object.__setattr__(self, name, ",".join(value))
        if isinstance(self.labels, (str, os.PathLike)):
            object.__setattr__(self, "labels", read_label_map(self.labels) if self.labels else ())
        elif isinstance(self.labels, Mapping):  # {"dog": ["Bark", "Yip"], "vehicle": "Vehicle"}
            object.__setattr__(self, "labels", tuple((user, name) for user, names in self.labels.items()
                                                     for name in ([names] if isinstance(names, str) else names)))
        else:
            object.__setattr__(self, "labels", tuple((str(user), str(name)) for user, name in self.labels))
        if self.labels and (self.only or self.exclude):
            raise ValueError("labels already chooses the labels: --only and --exclude cannot be combined with it "
                             "(leave the unwanted members out of the map)")

    @classmethod
    def from_strings(cls, values: Mapping[str, str], base: Optional["TagOptions"] = None) -> "TagOptions":
        """Options from text (a query string, a form): {"top_k": "5", "threshold": "0.2", "events": "1"}; a
        field left out keeps ``base``'s value (default: its default). Raises ValueError naming an unknown field
        or a bad value."""
        cls = type(base) if base is not None else cls
        kinds = {f.name: f.metadata["kind"] for f in fields(cls)}
        parsed = {}
        for name, text in values.items():
            if name not in kinds:
                raise ValueError(f"unknown option {name!r} (known: {', '.join(kinds)})")
            kind = kinds[name]
            try:
                if kind is bool:
                    if text.lower() not in ("1", "0", "true", "false", "yes", "no", ""):
                        raise ValueError
                    parsed[name] = text.lower() in ("1", "true", "yes", "")
                else:
                    parsed[name] = kind(text)
            except ValueError:
                raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}") from None
            if kind is float and not math.isfinite(parsed[name]):
                raise ValueError(f"{name}: expected a finite number, got {text!r}")
        return replace(base, **parsed) if base is not None else cls(**parsed)

    @property
    def window_samples(self) -> int:
        return int(round(self.window * SAMPLE_RATE))

    @property
    def hop_samples(self) -> int:
        return max(1, int(round(self.hop * SAMPLE_RATE)))


def per_request_options() -> tuple:
    """The TagOptions a single request may set (``audiotag serve``'s query parameters)."""
    return tuple(f.name for f in fields(TagOptions) if f.metadata["per_request"])


def add_tag_arguments(group, exclude=()) -> None:
    """Add a flag for every TagOptions field (less ``exclude``) to an argparse parser or group."""
    for option in fields(TagOptions):
        if option.name in exclude:
            continue
        argument = dict(option.metadata["argument"], dest=option.name)
        if option.metadata["kind"] is bool:
            argument["action"] = "store_true"
        else:
            argument["default"] = option.default
        group.add_argument(*option.metadata["flags"], **argument)


def tag_options(args, base: Optional[TagOptions] = None) -> TagOptions:
    """The TagOptions an argparse namespace asks for (fields it lacks keep ``base``'s value or the default).
    Raises ValueError as TagOptions does."""
    chosen = {f.name: getattr(args, f.name) for f in fields(TagOptions) if hasattr(args, f.name)}
    return replace(base, **chosen) if base is not None else TagOptions(**chosen)


# The engine and limit options shared by the front ends: name -> (flags, add_argument's keywords). A front end
# may give its own default (and say so in its help) where its use differs: serve answers within 60 s, say.
ENGINE_OPTIONS = {
    "model": (("--model",), dict(metavar="PATH", help="an audiotag .onnx model (default: the bundled mn04_as)")),
    "provider": (("--provider",), dict(metavar="LIST", help="execution providers, comma-separated (default: "
                                                            "$AUDIOTAG_PROVIDERS or automatic)")),
    "jobs": (("--jobs",), dict(type=number(int, 1), default=usable_cores(), metavar="N",
                               help="inputs decoded in parallel (default: the cores this process may use: its "
                                    "CPU affinity and cgroup quota, as a container sets them)")),
    "threads": (("--threads",), dict(type=number(int, 0), metavar="N",
                                     help="onnxruntime intra-op threads (default: 1 when tagging several inputs, "
                                          "as --jobs already keeps every core busy; else 0, all cores)")),
    "max_duration": (("--max-duration",), dict(type=number(float, 0), metavar="SEC",
                                               help="tag only the first SEC seconds of each input; the record says "
                                                    "it was cut (default 7200 in batch runs, else no limit; 0 = no "
                                                    "limit)")),
    "dedup": (("--dedup",), dict(action="store_true",
                                 help="tag each distinct content once: a later input with the same bytes (sha256) "
                                      "is not decoded, its record is the first copy's with \"duplicate_of\": the "
                                      "first path (implies --hash; with -o FILE, and across --resume)")),
    "open_archives": (("--open-archives",), dict(action="store_true",
                                                 help="in directories, also open archives (.tar, .tar.gz, "
                                                      ".tgz, .tar.zst, .zip, .warc, .warc.gz, .warc.zst) and tag "
                                                      "their audio members (an archive named as an input or in a "
                                                      "list is always opened)")),
    "timeout": (("--timeout",), dict(type=number(float, 0), metavar="SEC",
                                     help="give up on an input after SEC seconds: its record is an error, the run "
                                          "goes on (default 300 in batch runs, else no limit; 0 = no limit)")),
}


@dataclass(frozen=True)
class Limits:
    """Per input (``decode.limits`` applies them to a stream's blocks)."""

    max_duration: Optional[float] = None  # seconds of audio tagged from the start; the rest is not decoded
    timeout: Optional[float] = None  # seconds an input may take from its opening


# Batch runs (directories, lists, several inputs) over audio nobody vetted: 2 hours of audio is about 10 s of one
# core's work, and 300 s is thirty times that, so neither limit touches an honest recording on a busy server.
BATCH = Limits(max_duration=7200.0, timeout=300.0)

PROVIDERS_ENV = "AUDIOTAG_PROVIDERS"


def requested_providers(cli_value: Optional[str] = None) -> Optional[list]:
    """Provider names from the command line, else from the environment, else None (automatic)."""
    value = cli_value or os.environ.get(PROVIDERS_ENV, "")
    names = [name.strip() for name in value.split(",") if name.strip()]
    return names or None


def add_engine_arguments(group, *names, **overrides) -> None:
    """Add the named ENGINE_OPTIONS to an argparse parser or group; ``overrides``: {name: {keyword: value}}."""
    for name in names:
        flags, argument = ENGINE_OPTIONS[name]
        group.add_argument(*flags, **{**argument, **overrides.get(name, {})})


def window_problem(window: float, hop: Optional[float]) -> Optional[str]:
    """What is wrong with --window and --hop, worded for the command line (None when nothing is)."""
    if 0 < window < 1:
        return f"--window must be 0 (the whole file in one pass) or at least 1 s, got {window:g}"
    if hop is not None and window and hop > window:
        return f"--hop {hop:g} s is longer than --window {window:g} s: audio between windows would never be tagged"
    return None
