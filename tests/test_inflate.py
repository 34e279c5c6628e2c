"""inflate: a compressed stream read as a seekable file, from checkpoints (real recordings, compressed here)."""

import gzip
import random
import sys
import zlib

import pytest

from audiotag.batch import inflate
from conftest import AUDIO


@pytest.fixture
def recording() -> bytes:
    """Three real recordings end to end: 1.9 MB that deflate compresses (not noise)."""
    return b"".join((AUDIO / name).read_bytes() for name in ("music.wav", "speech.wav", "typing.wav"))


@pytest.fixture(autouse=True)
def small_checkpoints(monkeypatch):
    monkeypatch.setattr(inflate, "CHECKPOINT", 100_000)  # 19 checkpoints over the recording, not none


def _reads(window, data: bytes, count: int, seed: int) -> None:
    """Random seeks back and forth, each read compared with the bytes themselves."""
    rng = random.Random(seed)
    for _ in range(count):
        offset, size = rng.randrange(len(data) + 10), rng.randrange(300_000)
        window.seek(offset)
        assert window.read(size) == data[offset:offset + size], (offset, size)


def test_a_gzip_members_bytes_at_any_position(tmp_path, recording):
    """A window from an offset of a gzip file of two gzip members and zero padding (as bgzip and tape blocking
    leave them): every read is the bytes; checkpoints are taken as the reading passes them."""
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(recording[:700_000]) + gzip.compress(recording[700_000:]) + bytes(600))
    inflater = inflate.Inflater(str(path))
    assert inflater.read(12_345) == recording[:12_345]
    window = inflate.Window(inflater, len(recording) - 12_345)
    _reads(window, recording[12_345:], 600, seed=1)
    assert window._marks == [n * 100_000 for n in range(len(window._marks))] and len(window._marks) > 15
    assert window.failure is None
    window.close()


def test_raw_deflate_between_other_bytes(tmp_path, recording):
    """A zip member's data: raw deflate at an offset, other bytes after it."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    path = tmp_path / "member"
    path.write_bytes(b"header" + compressor.compress(recording) + compressor.flush() + b"PK\x01\x02 more")
    window = inflate.Window(inflate.Inflater(str(path), 6, inflate.DEFLATE), len(recording))
    _reads(window, recording, 300, seed=2)
    window.seek(len(recording) - 5)
    assert window.read() == recording[-5:] and window.read() == b"" and window.failure is None


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_failure_ends_the_member_there_and_the_bytes_before_stay_readable(tmp_path, recording, damage):
    """Data cut short, or damaged where zlib notices: reads stop at that point (no exception: a decoder's
    callback would print it as a traceback), ``failure`` says why, and the bytes before it are still read back
    (from the checkpoints) after the failure."""
    compressed = bytearray(gzip.compress(recording))
    if damage == "cut":
        compressed = compressed[:len(compressed) // 2]
    else:
        for index in range(len(compressed) // 2, len(compressed) // 2 + 2000, 31):
            compressed[index] ^= 0x55
    path = tmp_path / "damaged.gz"
    path.write_bytes(compressed)
    window = inflate.Window(inflate.Inflater(str(path)), len(recording))
    whole = window.read()
    assert 100_000 < len(whole) < len(recording)
    if damage == "cut":
        assert window.failure == "the archive ends inside this member (truncated)"
        assert whole == recording[:len(whole)]
    else:  # what zlib made of the damaged bytes before it noticed may differ: not the bytes after the damage
        assert window.failure.startswith("the archive is damaged inside this member (Error -3 while decompressing")
        assert whole[:800_000] == recording[:800_000]
    window.seek(len(recording) - 10)
    assert window.read(10) == b""  # past the failure: the end
    _reads(window, whole, 100, seed=3)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
