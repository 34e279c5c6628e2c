"""What to tag: command-line operands, directories walked in sorted order, and paths read from a list or a pipe.

Everything is lazy, so tagging starts before a directory walk or a piped list has ended. Problems found on the way
(unreadable directories, symlink loops) become inputs carrying an error, reported like any bad file.
"""

import os
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, TextIO

from ..errors import failure_message
from ..options import Limits
from . import archives

# Extensions a walk picks up, matched case-insensitively: what libsndfile decodes, then what FFmpeg does
# (audio containers, raw codec streams, and video files, whose audio is tagged). The decoder is chosen from the
# bytes, so a wrong extension costs nothing; --all-files takes every name.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".bwf", ".rf64", ".w64", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2", ".mp1",
    ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".voc", ".sd2", ".sf", ".htk", ".pvf", ".xi", ".wve",
    ".m4a", ".m4b", ".m4r", ".m4p", ".mp4", ".m4v", ".aac", ".adts", ".3gp", ".3g2", ".3ga", ".mov", ".qt",
    ".f4a", ".f4v", ".ts", ".mts", ".m2ts", ".flv", ".webm", ".weba", ".mka", ".mkv", ".wma", ".wmv", ".asf",
    ".ac3", ".eac3", ".ec3", ".amr", ".awb", ".spx", ".avi", ".mpg", ".mpeg", ".vob", ".ape", ".wv", ".tta",
    ".mpc", ".dts", ".mlp", ".thd", ".tak", ".ra", ".rm", ".dsf", ".gsm", ".oma", ".loas", ".latm",
})


@dataclass(frozen=True)
class Input:
    """One thing to tag: a path, or "-" for stdin, or an archive's member (``archives``: its name is
    ARCHIVE/MEMBER); ``error`` when it was known to be bad before opening."""

    name: str
    error: Optional[str] = None
    member: Optional[archives.Member] = None  # or a piped.Piped: a member of an archive on stdin

    @property
    def streamed(self) -> bool:
        """A member of an archive on stdin: tagged before the next input is read (``piped``)."""
        return getattr(self.member, "streamed", False)

    @property
    def fields(self) -> Optional[dict]:
        """What its record adds after the path (an archive's member: "archive", "member", "key")."""
        return self.member.fields if self.member is not None else None


@dataclass(frozen=True)
class Opener:
    """Opens an input by name, with the per-input limits (picklable, so a supervised worker opens the same way).
    The decoders are imported on the first opening: a supervisor, which only hands inputs to its workers, never
    loads them (nor numpy)."""

    raw: Optional[str] = None  # headerless samples: their format, rate and channels
    rate: Optional[int] = None
    channels: int = 1
    limits: Limits = Limits()
    stdin: object = None  # what "-" reads (default: sys.stdin's bytes); a hashing.HashingReader with --hash

    def __call__(self, name: str):
        """A ``decode.Stream`` of the input."""
        from .. import decode
        from ..decode import limits

        if name == "-":
            stream = decode.open_stdin(self.stdin or sys.stdin.buffer, self.raw, self.rate, self.channels)
        else:
            stream = decode.open_file(name, self.raw, self.rate, self.channels)
        return limits.apply(stream, self.limits)

    def open_member(self, member: archives.Member):
        """An archive's member, reopened where it lies (any process may: a watched worker after a crash too), or
        a member of an archive on stdin (``piped``), read as it arrives."""
        from ..decode import limits

        return limits.apply(member.open(), self.limits)


def is_audio_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def expand(operands: Iterable[str], all_files: bool = False, open_archives: bool = False,
           stdin_archive: Optional[tuple] = None, carry=None, list_archives: bool = True) -> Iterator:
    """Operands as given: "-" and files are inputs themselves, an archive (by its name: ``archives``) yields its
    audio members, directories yield their audio files (every regular file with ``all_files``; archives in them
    are opened with ``open_archives``, else they are files as any other). ``stdin_archive``: (kind, stream) when
    stdin holds an archive (``piped.sniff``): "-" yields its members, read whole and carried to a watched worker
    within ``carry``, a ``piped.Budget`` (``piped.carried``), else read as they arrive by the decoder in this
    process. ``list_archives`` False: each named archive is an ``Archive``, not its members (counted apart)."""
    items = _sources(operands, all_files, open_archives, stdin_archive, carry)
    return listed(items) if list_archives else items


@dataclass(frozen=True)
class Archive:
    """An archive met in the operands or a walk: its members take its place (``listed``)."""

    path: str
    all_files: bool

    @property
    def cheap_to_list(self) -> bool:
        """Whether its members are found without decompressing it whole: a plain tar's headers, a zip's index."""
        return self.path.lower().endswith((".tar", ".zip"))


def listed(items: Iterable) -> Iterator[Input]:
    """``items`` with each archive among them replaced by its members, in order. (An archive is listed in this
    thread: threads listing several at once were measured slower on a crawl's small records, whose listing is
    mostly Python's work under its lock, not zlib's.)"""
    for item in items:
        yield from archive_members(item.path, item.all_files) if isinstance(item, Archive) else (item,)


def _sources(operands: Iterable[str], all_files: bool, open_archives: bool, stdin_archive: Optional[tuple],
             carry) -> Iterator:
    """``expand``'s inputs, an archive standing for its members (``Archive``)."""
    for operand in operands:
        if operand == "-" and stdin_archive is not None:
            wanted = (lambda name: True) if all_files else is_audio_name
            from . import piped  # here: it loads the decoders, which a supervisor otherwise never needs

            for name, member, error in piped.members(stdin_archive[1], stdin_archive[0], wanted, all_files):
                if carry is not None and isinstance(member, piped.Piped) and error is None:
                    member, error = piped.carried(name, member, carry)
                yield Input(name, error=error, member=member)
        elif operand != "-" and archives.is_archive_name(operand) and os.path.isfile(operand):
            yield Archive(operand, all_files)
        elif operand != "-" and os.path.isdir(operand):
            found = False
            for item in walk(operand, all_files, open_archives):
                found = True
                yield item
            if not found:
                yield Input(operand, error="no audio files in this directory")
        else:
            yield Input(operand)


def archive_members(path: str, all_files: bool = False) -> Iterator[Input]:
    """An archive's audio members (every member with ``all_files``), or its problem as an input with an error."""
    wanted = (lambda name: True) if all_files else is_audio_name
    for name, member, error in archives.members(path, wanted, all_files):
        yield Input(name, error=error, member=member)


def walk(top: str, all_files: bool = False, open_archives: bool = False) -> Iterator:
    """Audio files (``all_files``: every file) below ``top``, sorted by name at every level, as inputs; follows
    symlinks, reports loops; ``open_archives``: an archive as an ``Archive``.

    A link back to a directory above it (a loop) is reported. A directory reached again through another link is
    walked once, under the first name in walk order, as ``du`` counts it: walking every name could tag a tree of
    links exponentially many times. Entries that are not regular files (a FIFO would block the run until
    someone wrote to it) are reported, not opened. The walk keeps its own stack (one sorted listing per level),
    so a tree of any depth is walked: recursion would stop at Python's limit, about 1,000 levels.
    """
    walked = set()
    ancestors = {}  # identities of the directories on the stack, in stack order (a dict: ordered, fast lookup)
    stack = []  # iterators over the sorted entries of each directory being walked
    opened = yield from _enter(top, ancestors, walked)
    if opened is not None:
        stack.append(opened)
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            ancestors.popitem()
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks
            is_file = entry.is_file()
        except OSError as error:
            yield Input(entry.path, error=failure_message(error))
            continue
        if is_dir:
            opened = yield from _enter(entry.path, ancestors, walked)
            if opened is not None:
                stack.append(opened)
        elif open_archives and is_file and archives.is_archive_name(entry.name):
            yield Archive(entry.path, all_files)
        elif all_files or is_audio_name(entry.name):
            if entry.is_symlink() and not os.path.exists(entry.path):
                yield Input(entry.path, error="broken symlink")
            elif not is_file:
                yield Input(entry.path, error="not a regular file (a FIFO, socket or device)")
            else:
                yield Input(entry.path)


def _enter(directory: str, ancestors: dict, walked: set):
    """A generator returning an iterator over the sorted entries of ``directory`` (pushing its identity onto
    ``ancestors``), or None when it is not walked; problems are yielded as inputs with an error."""
    try:
        identity = _identity(directory)
        if identity in ancestors:
            yield Input(directory, error="symlink loop: a link back to a directory above it")
            return None
        if identity in walked:
            return None
        walked.add(identity)
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:
        yield Input(directory, error=f"cannot read directory: {failure_message(error)}")
        return None
    ancestors[identity] = None
    return iter(entries)


def read_list(lines: TextIO, name: str = "-", all_files: bool = False, open_archives: bool = False,
              list_archives: bool = True) -> Iterator:
    """Paths one per line (blank lines skipped); each line is taken as soon as it arrives. A list that cannot be
    read on (an I/O error) ends there, reported as an input that failed, named after the list. ``list_archives``:
    as ``expand``'s."""
    items = _read_paths(lines, name, all_files, open_archives)
    return listed(items) if list_archives else items


def _read_paths(lines: TextIO, name: str, all_files: bool, open_archives: bool) -> Iterator:
    while True:
        try:
            line = lines.readline()
        except OSError as error:
            yield Input(name, error=f"cannot read the list of inputs: {failure_message(error)}")
            return
        if not line:
            return
        path = line.rstrip("\r\n")
        if path.strip():
            yield from _sources([path], all_files, open_archives, None, None)


def _identity(directory: str):
    stat = os.stat(directory)
    return stat.st_dev, stat.st_ino
