"""Content hashes (``--hash``): the sha256 of an input's bytes, for every front end. Standard library only.

A file is hashed before it is decoded (batch runs do it ahead of the tagging: ``batch.content``); a stream that
cannot be read twice (stdin, an upload, a file object) is hashed as the decoder reads it (``HashingReader``), and
what the decoder leaves unread (past --max-duration, after the last frame) is read to the end for the hash.
"""

from functools import lru_cache

CHUNK = 1 << 20


@lru_cache(maxsize=None)
def _implementation():
    try:  # OpenSSL's: 1.1 GB/s here. The frozen binary leaves OpenSSL out (build.spec) and has CPython's own, 190 MB/s.
        from _hashlib import openssl_sha256
        return openssl_sha256
    except ImportError:  # the binary
        from _sha256 import sha256
        return sha256


def sha256(data: bytes = b""):
    """A new sha256 object (chosen when first needed: a Python without either module fails only on --hash)."""
    return _implementation()(data)


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in 1 MB chunks (memory stays flat)."""
    digest = sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_sha256(data) -> str:
    return sha256(data).hexdigest()


class HashingReader:
    """A binary stream that hashes what is read through it; ``hexdigest()`` first reads what is left."""

    def __init__(self, binary):
        self._binary = binary
        self._digest = sha256()
        self.name = getattr(binary, "name", "-")

    def read(self, size: int = -1) -> bytes:
        return self._seen(self._binary.read(size))

    def read1(self, size: int = -1) -> bytes:
        return self._seen(getattr(self._binary, "read1", self._binary.read)(size))

    def readable(self) -> bool:
        return True

    def _seen(self, data: bytes) -> bytes:
        self._digest.update(data)
        return data

    def hexdigest(self) -> str:
        while self.read(CHUNK):
            pass
        return self._digest.hexdigest()
