"""The standard streams, kept usable whatever the process was started with: closed descriptors, a reader that
quits, C libraries that write to descriptor 2."""

import os
import sys

def make_std_streams_safe() -> None:
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


def quiet_native_stderr() -> None:
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


def silence_stdout(stream=None) -> None:
    """After EPIPE or a write error, point stdout (or ``stream``) at /dev/null so that the interpreter's final
    flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (stream or sys.stdout).fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
