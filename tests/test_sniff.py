"""decode/sniff.py: MPEG audio found behind junk for every MPEG version and layer, the search limit, containers
that hold MPEG audio (MPEG-TS) or look like it (ADTS AAC). Inputs are made from a real clip with ffmpeg; layer I,
which ffmpeg cannot encode, from frame headers built by hand."""

import io
import re
import subprocess

import numpy as np
import pytest

from audiotag import decode
from audiotag.decode import sniff
from conftest import AUDIO

# name -> (ffmpeg output options, the codec decoded, MPEG version bits of the frame header, layer)
ENCODED = {
    "mpeg1-layer3.mp3": (["-ar", "44100", "-c:a", "libmp3lame"], "mp3", 3, 3),
    "mpeg2-layer3.mp3": (["-ar", "22050", "-c:a", "libmp3lame"], "mp3", 2, 3),
    "mpeg25-layer3.mp3": (["-ar", "11025", "-c:a", "libmp3lame"], "mp3", 0, 3),
    "mpeg1-layer2.mp2": (["-ar", "48000", "-c:a", "mp2"], "mp2", 3, 2),
    "mpeg2-layer2.mp2": (["-ar", "24000", "-c:a", "mp2"], "mp2", 2, 2),
}
# No ID3 tag, no Xing frame: the file's first byte is its first audio frame.
BARE = ["-id3v2_version", "0", "-write_xing", "0"]


def _ffmpeg(target, *options, seconds=3):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(AUDIO / "music.wav"), "-t",
                    str(seconds), *map(str, options), str(target)], check=True)
    return target.read_bytes()


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sniff")
    made = {name: _ffmpeg(folder / name, *options, *(BARE if name.endswith(".mp3") else []))
            for name, (options, *_) in ENCODED.items()}
    made["tagged.mp3"] = _ffmpeg(folder / "tagged.mp3", "-ar", "44100", "-c:a", "libmp3lame", "-write_xing", "0",
                                 "-metadata", "title=" + "x" * 3000, "-metadata", "artist=sniff")
    made["audio.ts"] = _ffmpeg(folder / "audio.ts", "-ar", "44100", "-c:a", "mp2", "-f", "mpegts")
    made["audio.aac"] = _ffmpeg(folder / "audio.aac", "-ar", "44100", "-c:a", "aac", "-f", "adts")
    return made


def _junk(size: int, seed: int = 0, syncs: bool = True) -> bytes:
    """Random bytes, with sync bytes (0xFF) among them none of which starts a run of frames, or with none."""
    junk = bytearray(np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes())
    if syncs:
        junk[::97] = b"\xff" * len(junk[::97])  # sync candidates aplenty
    assert sniff.mpeg_audio_start(bytes(junk) + bytes(4096)) is None  # (no frame is longer than 4 kB)
    return bytes(junk)


@pytest.mark.parametrize("name", ENCODED)
def test_every_mpeg_version_and_layer_is_found_behind_junk(encoded, name):
    data = encoded[name]
    _, codec, version, layer = ENCODED[name]
    assert (data[1] >> 3) & 3 == version and 4 - ((data[1] >> 1) & 3) == layer  # ffmpeg made what we asked
    assert sniff.mpeg_audio_start(data) == 0
    for size in (1, 3000, 50_000):
        junk = _junk(size, seed=size)
        assert sniff.mpeg_audio_start(junk + data) == size, size
    clean = decode.open_bytes(data).read()
    behind = decode.open_bytes(_junk(3000) + data).read()
    assert (behind.codec, clean.codec) == (codec, codec)
    np.testing.assert_array_equal(behind.samples, clean.samples)  # libsndfile from the first frame: bit for bit


def test_an_id3_tag_and_junk_before_it(encoded):
    data = encoded["tagged.mp3"]
    assert data[:3] == b"ID3"
    tag = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(data[6:10]))  # syncsafe size
    assert tag > 3000 and sniff.mpeg_audio_start(data) == tag
    assert sniff.mpeg_audio_start(_junk(5000) + data) == 5000 + tag
    clean = decode.open_bytes(data).read()
    np.testing.assert_array_equal(decode.open_bytes(_junk(5000) + data).read().samples, clean.samples)


def _layer1_frames(mpeg1: bool, count: int) -> bytes:
    """Layer I frames (128 kbit/s at 44.1 kHz, or 64 kbit/s at 22.05 kHz): headers and silent payload, 136 bytes
    each by the standard's (12 * bitrate / rate) * 4."""
    header = bytes([0xFF, 0xFF if mpeg1 else 0xF7, 0x40, 0x00])
    return (header + bytes(132)) * count


@pytest.mark.parametrize("mpeg1", [True, False], ids=["mpeg1", "mpeg2"])
def test_layer_1_frames_behind_junk(mpeg1):
    junk = _junk(777)
    assert sniff.mpeg_audio_start(junk + _layer1_frames(mpeg1, 8)) == 777
    # a run shorter than four frames, with more junk after it, is not MPEG audio; one reaching the end of what
    # was read is
    assert sniff.mpeg_audio_start(junk + _layer1_frames(mpeg1, 3) + _junk(500, 1)) is None
    assert sniff.mpeg_audio_start(junk + _layer1_frames(mpeg1, 2)) == 777
    # the second frame a byte short: no run starts at the first two, the third starts one of six
    frames = bytearray(_layer1_frames(mpeg1, 8))
    del frames[200]
    assert sniff.mpeg_audio_start(junk + bytes(frames)) == 777 + 136 + 135


def test_the_search_stops_at_its_limit(encoded):
    """Frames are looked for in the first SEARCHED bytes: a first frame whose header lies within them is found
    (and decoded from there); past them the file is refused, never searched to its end."""
    data = encoded["mpeg1-layer3.mp3"]
    clean = decode.open_bytes(data).read().samples
    for start, found in ((sniff.SEARCHED - 1000, True), (sniff.SEARCHED - 5, True), (sniff.SEARCHED - 3, False),
                         (sniff.SEARCHED, False), (sniff.SEARCHED + 1000, False)):
        whole = _junk(start, seed=start, syncs=False) + data  # (a header in junk near the end could pass)
        assert sniff.mpeg_audio_start(whole[:sniff.SEARCHED + sniff.AHEAD]) == (start if found else None), start
    # 256 kB: junk seen in crawls is a few kB, and a file of noise is not read on to its end
    behind = decode.open_bytes(_junk(250_000, syncs=False) + data).read()
    np.testing.assert_array_equal(behind.samples, clean)
    with pytest.raises(decode.AudioError):
        decode.open_bytes(_junk(270_000, syncs=False) + data).read()


def test_headerless_samples_are_not_taken_for_mpeg_audio():
    """Real recordings without their WAV header: a sync word near the end of the bytes searched, whose frame
    ran past them, passed for a run of frames, and 0.1 s of "MP1" was tagged. Now AHEAD more bytes are read, so
    the run is checked whole, and each is one "not audio" error, named and on stdin."""
    clips = sorted((AUDIO / "extra").glob("*.wav")) + [AUDIO / "typing.wav"]
    for clip in clips:
        samples = clip.read_bytes()[1000:]  # past the header: PCM samples only
        assert sniff.mpeg_audio_start(samples[:sniff.SEARCHED + sniff.AHEAD]) is None, clip.name
        for opened in (lambda: decode.open_bytes(samples), lambda: decode.open_stdin(io.BytesIO(samples))):
            with pytest.raises(decode.AudioError, match="not audio"):
                opened().read()


def test_headerless_samples_that_open_with_a_frame_header_are_not_mpeg_audio():
    """PCM whose first bytes pass libsndfile's loose test for an MPEG frame header (ff ff 02 00: a sample of -1,
    then a small one): libsndfile decoded 0.02-0.08 s of it as MP1, and the named file was tagged. Now a run of
    frames from the start is asked of such a file, named and on stdin."""
    starts = []
    for clip in sorted((AUDIO / "extra").glob("*.wav")) + [AUDIO / "speech.wav", AUDIO / "typing.wav"]:
        data = clip.read_bytes()
        found = (m.start() for m in re.finditer(rb"\xff[\xe0-\xff]", data) if 1000 < m.start() < len(data) - 12)
        starts += [(clip, i) for i in found if sniff._identify_mpeg(data[i:i + 4])][:2]
    assert len(starts) >= 20
    for clip, start in starts:
        samples = clip.read_bytes()[start:start + 200_000]
        for opened in (lambda: decode.open_bytes(samples), lambda: decode.open_stdin(io.BytesIO(samples))):
            with pytest.raises(decode.AudioError, match="not audio"):
                opened().read()


def test_a_run_that_reaches_the_end_counts_only_where_it_ends_there():
    frames = _layer1_frames(True, 2)
    assert sniff.mpeg_audio_start(frames) == 0  # a file of two frames
    assert sniff.mpeg_audio_start(frames[:-1]) is None  # one frame, then one that runs past the end


def test_mpeg_ts_is_a_container_not_an_mp3(encoded):
    """An MPEG-TS of MP2 audio: sync bytes every 188 bytes mark the container, so FFmpeg decodes the transport
    stream (as it decodes the same audio from the bare .mp2 file)."""
    data = encoded["audio.ts"]
    assert data[0] == data[188] == data[376] == 0x47
    assert sniff.is_container(data) and sniff.is_container(data[:189])
    assert not sniff.is_container(b"G" + data[1:188] + b"x" + data[189:])  # a "G" alone is not a transport stream
    stream = decode.open_bytes(data)
    clip = stream.read()
    assert stream.codec == "mp2" and abs(clip.duration - 3.0) < 0.1


def test_adts_aac_is_not_taken_for_mpeg_audio(encoded):
    """ADTS frames start with the same 12 sync bits (layer bits 00): they are AAC for FFmpeg, not MPEG audio."""
    data = encoded["audio.aac"]
    assert data[0] == 0xFF and data[1] & 0xF6 == 0xF0
    assert sniff.mpeg_audio_start(data) is None and sniff.mpeg_audio_start(_junk(3000) + data) is None
    stream = decode.open_bytes(data)
    assert stream.codec == "aac" and abs(stream.read().duration - 3.0) < 0.1
