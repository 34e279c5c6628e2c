"""Embedding files (``--embeddings DIR``): each clip's embedding as DIR/<input path>.npy, written atomically before
its record, so a recorded input always has its file."""

import contextlib
import itertools
import os

from ..errors import failure_message
from .writer import name_digest

_PART_NUMBERS = itertools.count()  # names of embedding files being written


def save_embedding(outcome, directory):
    """DIR/<input path>.npy, written atomically before the record, so a recorded input always has its file. A
    path the file system cannot take as a name (too long, too deep) goes to its hashed name instead."""
    target = embedding_path(directory, outcome.name)
    try:
        try:
            _write_embedding(target, outcome.prediction.embedding)
        except (OSError, RecursionError):
            target = hashed_embedding_path(directory, outcome.name)
            _write_embedding(target, outcome.prediction.embedding)
    except OSError as error:
        outcome.error = f"cannot save embedding {target}: {failure_message(error)}"
    return outcome


def _write_embedding(target: str, embedding) -> None:
    import numpy as np

    os.makedirs(os.path.dirname(target), exist_ok=True)
    # A short temporary name: the input's own name may already be as long as the file system allows.
    partial = os.path.join(os.path.dirname(target), f".audiotag-{os.getpid()}-{next(_PART_NUMBERS)}.part")
    try:
        with open(partial, "xb") as file:  # created with the umask's permissions, as the results are
            np.save(file, embedding, allow_pickle=False)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def embedding_path(directory: str, name: str) -> str:
    """Where an input's embedding goes: DIR/<its path>.npy, the path's components kept apart from each other
    and from DIR ("%" written %25, a ".." component %2E%2E, stdin as %stdin), so two inputs never share a file.
    The one exception: a leading "/" is dropped, so /a/b.wav and a/b.wav (given in one run) would."""
    if name == "-":
        return os.path.join(directory, "%stdin.npy")
    parts = [part.replace("%", "%25") for part in name.split(os.sep) if part not in ("", ".")]
    parts = ["%2E%2E" if part == ".." else part for part in parts]
    return os.path.join(directory, *parts[:-1], parts[-1] + ".npy")


def hashed_embedding_path(directory: str, name: str) -> str:
    """Where an input's embedding goes when its own path cannot be a file name: DIR/%hash/<32 hex digits>.npy,
    the BLAKE2b-128 digest of the path's bytes (``hashlib.blake2b(os.fsencode(path), digest_size=16)``)."""
    return os.path.join(directory, "%hash", name_digest(name).hex() + ".npy")
