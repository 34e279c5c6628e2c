"""Command line: parse, dispatch, format. The work is done by ``Tagger`` and ``batch``; results go to stdout
(or ``-o``), problems to stderr as one line each (``audiotag: INPUT: what is wrong``).

``args`` declares and checks the command line, ``tag`` runs it, ``streams`` keeps stdin/stdout/stderr usable;
``audiotag serve`` is dispatched to ``audiotag.serve``.
"""

import os
import signal
import sys

# Before numpy loads (the imports below load it): audiotag runs its own workers and its matrix products are small,
# so OpenBLAS's thread pool would only compete with them, and it spins for a tenth of a second of CPU at every start.
# A worker process inherits it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ..batch.supervisor import LISTER_FLAG, WORKER_FLAG  # standard library only, as --help needs
from ..errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, EXIT_TERMINATED
from .args import build_parser, check_arguments, supervised
from .streams import make_std_streams_safe, quiet_native_stderr, silence_stdout
from .tag import run

__all__ = ["main", "build_parser"]


def main(argv=None) -> int:
    keep_freed_memory()
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == [WORKER_FLAG]:
        from ..batch import supervisor

        return _finish(supervisor.worker_main())
    if arguments[:1] == [LISTER_FLAG]:
        from ..batch import listers

        return _finish(listers.lister_main(int(arguments[1])))
    make_std_streams_safe()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the HTTP front end (a file named "serve" is ./serve)
        return _serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    check_arguments(parser, args)
    signal.signal(signal.SIGTERM, _terminate)
    if not args.verbose:
        quiet_native_stderr()
    try:
        if supervised(args) and not (args.version or args.self_check):
            from ..batch import supervisor

            try:
                args.worker = supervisor.spawn()  # first thing: it starts up while this process does
            except supervisor.WorkerError:
                pass  # tried again, and reported, where the worker is needed
        code = run(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except _Terminated:
        code = EXIT_TERMINATED
    except BrokenPipeError:
        silence_stdout()
        code = EXIT_BROKEN_PIPE
    return _finish(code)


# glibc hands large blocks back to the system as soon as they are freed (its thresholds start at 128 kB and adapt
# up to 32 and 64 MB), so each input's decoded blocks, resampled samples and spectra (a few MB each) came back as
# fresh pages: 700 page faults per 10 s clip, a tenth of a batch's CPU (scripts/bench/bench.py counts them). Blocks up
# to 8 MB come from the heap, and up to 32 MB of it stays free for the next input: within glibc's own limits, and
# the peak memory is unchanged. Not where the user chose: $MALLOC_MMAP_THRESHOLD_, $MALLOC_TRIM_THRESHOLD_, tunables.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


def keep_freed_memory() -> None:
    """Set glibc's malloc to reuse freed memory for the next input (nothing where it is not glibc)."""
    if {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 8 << 20)
    mallopt(_M_TRIM_THRESHOLD, 32 << 20)


def _serve(argv) -> int:
    from .. import serve

    if not {"-v", "--verbose", "-h", "--help"} & set(argv):
        quiet_native_stderr()
    return _finish(serve.main(argv))


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
            silence_stdout(stream)
            if stream is sys.stdout and code == EXIT_OK:  # a failing stderr never fails the run; stdout does
                code = EXIT_BROKEN_PIPE if isinstance(error, BrokenPipeError) else EXIT_OUTPUT
    if threading.active_count() > 1:
        os._exit(code)
    return code


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread: like KeyboardInterrupt, not an error that one input's handling may
    catch."""


def _terminate(signum, frame):
    raise _Terminated()
