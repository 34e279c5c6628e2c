"""What every front end says when something goes wrong: the exit codes, the typed error for an input that cannot
be tagged, one input's failure as one line, and the one-line warning on stderr. Standard library only: the
command line's --help and a bad flag must not load numpy."""

import sys

EXIT_OK = 0
EXIT_INPUT_FAILED = 1  # at least one input could not be tagged; the others were
EXIT_USAGE = 2  # bad command line (or request options)
EXIT_MODEL = 3  # the model or its assets cannot be loaded (or no worker process can be started)
EXIT_OUTPUT = 4  # the results could not be written (disk full, I/O error)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_BROKEN_PIPE = 141  # stdout was closed by the reader (e.g. `| head -1`), as if killed by SIGPIPE
EXIT_TERMINATED = 143  # SIGTERM


class AudioError(ValueError):
    """An input that cannot be tagged; the message says what is wrong, for one line on stderr."""


def failure_message(error: Exception) -> str:
    """What went wrong with one input, for its record. Anything unforeseen (a decoder or onnxruntime error on one
    strange file) is that input's failure too: a run of weeks must not end on one file."""
    if isinstance(error, ValueError):  # AudioError and the options' own checks
        return str(error)
    if isinstance(error, OSError):  # the system's words: "no such file or directory", "permission denied"
        return _first_lowered(error.strerror or str(error) or "an error of the operating system")
    if isinstance(error, MemoryError):
        return "out of memory"
    # A bug met on this input, not a fault of the input: said so, the error's own text kept as a detail (never
    # its class name, which tells a user nothing).
    detail = str(error).strip()
    return "an internal error of audiotag (please report it, with this input)" + (f": {detail}" if detail else "")


def _first_lowered(text: str) -> str:
    """A sentence's first word in lower case, to follow a colon ("Permission denied"), not an acronym ("CRC") nor
    what was quoted after it (zlib's "Error -3 while decompressing data", a file's name)."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def one_line(text: str) -> str:
    """``text`` on one line, whatever a file name in it holds (a newline is shown as \\n)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def warn(message: str, progress=None) -> None:
    """``audiotag: MESSAGE`` as one line on stderr (through ``progress``'s writer when a bar is shown). A stderr
    that fails (a full disk) must not stop the tagging: the message is lost, the results are not."""
    line = "audiotag: " + one_line(message)
    try:
        if progress is not None:
            progress.write(line, file=sys.stderr)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
