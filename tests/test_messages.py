"""What a user reads about a bad input, over the suite's hostile inputs and a seeded set of damaged real clips:
every error and warning is one of the sentences listed here (a decoder's own text only as a detail after them,
never an exception's class name or a library's internals alone), and a file and the same bytes on stdin get the
same answer (issue 21, items 8 and 9).

The damaged set is made at test time with Debian's ffmpeg from a real clip: 40 damages (truncation, random byte
flips, zeroed blocks, another file's bytes spliced in behind a header) of each of MP3, M4A, MP4, WebM, Ogg
Vorbis, Ogg Opus, WAV and FLAC, from a fixed seed. Everything runs in-process through ``Tagger.tag_file``: a
path opens as ``audiotag FILE`` does, a file object as ``audiotag -`` reads stdin."""

import bz2
import gzip
import io
import lzma
import random
import re
import shutil
import subprocess
import zipfile

import pytest
from backports import zstd

from audiotag import AudioError
from conftest import AUDIO
from test_bad_input import CASES

SOURCE = AUDIO / "extra" / "max-guitar.wav"  # 44.1 kHz stereo music
FORMATS = {"mp3": ["-c:a", "libmp3lame", "-b:a", "96k"], "m4a": ["-c:a", "aac", "-b:a", "96k"],
           "mp4": ["-c:a", "aac", "-movflags", "+faststart"], "webm": ["-c:a", "libopus"],
           "ogg": ["-c:a", "libvorbis"], "opus": ["-c:a", "libopus"], "wav": ["-c:a", "pcm_s16le"],
           "flac": ["-c:a", "flac"]}
DAMAGES = ("cut", "flip", "zero", "splice")
PER_FORMAT = 40
SEED = 21

# What a user may read. The libraries' own words come only inside "(FFmpeg: ...)" or "(libsndfile: ...)".
_FFMPEG = (r"(damaged or not audio|damaged data|damaged data \(it breaks off or contradicts itself\)"
           r"|a damaged frame, or a feature of its codec FFmpeg cannot decode"
           r"|a corrupt index or header \(it asks for more memory than its audio can need\)) \(FFmpeg: [^()]+\)")
_SNDFILE = (r"(damaged [\w ]+ data|a damaged [\w ]+ file"
            r"|a truncated or damaged [\w ]+ file( \(it points past its end\))?|a damaged or unsupported [\w ]+ header"
            r"|a damaged [\w ]+ header, or a variant audiotag does not decode"
            r"|[\w ]+, in an encoding audiotag does not decode"
            r"|no audio data in it|a bad channel count in its header|an unsupported sample rate"
            r"|a corrupt header \(it asks for more memory than its audio can need\)|cannot read it)"
            r" \(libsndfile: .+\)")
_OWN = (r"(not audio, or a format audiotag does not know \(headerless samples: --raw FORMAT --rate HZ on stdin\)"
        r"|it ends before any audio|no audio frames"
        r"|its audio is in a codec audiotag does not decode, or its header is damaged"
        r"|no valid audio stream at its start \(the decoder could not parse its first frames\)"
        r"|the decoder stopped at \d+\.\d s"
        r"|\d+ channels without a channel layout \(PyAV 12 cannot read them\)"
        r"|\d+ channels \(at most 16 through FFmpeg: PyAV 12 misreads the layout of more\)"
        r"|(gzip|bzip2|xz|zstd)-compressed data, not audio: decompress or unpack it first \(the command line opens "
        r"tar, tar.gz, tar.zst, zip and WARC archives itself\)"
        r"|a (zip|tar) archive, not audio \(the command line opens one named \*\.(zip|tar), or on stdin\))")
REASON = f"({_FFMPEG}|{_SNDFILE}|{_OWN})"
ERRORS = [
    rf"cannot decode( [\w.]+)?: {REASON}( \(\d+ bad packets\))?",
    r"no audio stream in this \w+ file( \(it holds [a-z, ]+\))?",
    r"no audio samples",
    r"empty: no data",
    r"unsupported sample rate \d+ Hz \(supported: \d+\.\.\d+\)",
    r"unsupported channel count \d+ \(supported: 1\.\.\d+\)",
    r"no valid samples: every sample is NaN or infinite",
    r"too short: [\d.]+ ms of audio, audiotag needs at least [\d.]+ ms",
    r"no such file or directory", r"is a directory",
]
WARNINGS = [rf"decoded \d+\.\d( of \d+\.\d)? s: {REASON}( \(\d+ bad (spot|packet)s? skipped\))?"]


def _damaged(data: bytes, kind: str, clean: list, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    if kind == "cut":
        return bytes(damaged[:rng.randrange(1, len(damaged))])
    if kind == "flip":  # half of them in the first 4 kB, where the headers are
        for _ in range(rng.choice([1, 4, 16, 64])):
            spot = rng.randrange(len(damaged)) if rng.random() < 0.5 else rng.randrange(min(len(damaged), 4096))
            damaged[spot] = rng.randrange(256)
        return bytes(damaged)
    if kind == "zero":
        size = rng.choice([16, 256, 4096])
        start = rng.randrange(0, len(damaged) - size)
        damaged[start:start + size] = bytes(size)
        return bytes(damaged)
    other = rng.choice(clean)  # a header, then another file (of any of the formats) from its middle on
    return bytes(damaged[:rng.randrange(4, 2048)]) + other[rng.randrange(0, len(other) // 2):]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> list:
    """The damaged set: PER_FORMAT paths of each format, made the same way on every run."""
    if shutil.which("ffmpeg") is None:
        pytest.fail("Debian's ffmpeg makes these fixtures: apt-get install ffmpeg (scripts/build/setup.sh does)")
    folder = tmp_path_factory.mktemp("fuzzed")
    clean = {}
    for extension, options in FORMATS.items():
        path = folder / f"clean.{extension}"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-t", "4", "-i", SOURCE, *options, path],
                       check=True)
        clean[extension] = path.read_bytes()
    rng, paths = random.Random(SEED), []
    for extension, data in clean.items():
        for index in range(PER_FORMAT):
            kind = DAMAGES[index % len(DAMAGES)]
            path = folder / f"{kind}-{index:02d}.{extension}"
            path.write_bytes(_damaged(data, kind, list(clean.values()), rng))
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> list:
    """test_bad_input's inputs (absurd WAV headers, NaNs, links, a directory...) and a few from the other tests."""
    folder = tmp_path_factory.mktemp("hostile")
    for name, (maker, _expected) in CASES.items():
        maker(folder / name)
    (folder / "noise.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)  # test_robustness
    (folder / "random.m4a").write_bytes(random.Random(3).randbytes(50000))  # test_formats
    (folder / "text.webm").write_text("<html>not found</html>\n")
    clip = (AUDIO / "speech.wav").read_bytes()
    (folder / "speech.wav.gz").write_bytes(gzip.compress(clip))  # compressed files audiotag does not open
    (folder / "speech.tar.bz2").write_bytes(bz2.compress(clip))
    (folder / "speech.tar.xz").write_bytes(lzma.compress(clip))
    # zstd keeps this MP3's frames as they are: it was tagged from the frames it found (0.29 s of 5 s, "Music")
    (folder / "babycry.mp3.zst").write_bytes(zstd.compress((AUDIO / "extra" / "esc10-babycry-2-151079-A.mp3")
                                                           .read_bytes()))
    (folder / "clip.zip.bin").write_bytes(_zipped(clip))  # an archive not named as one
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:duration=1",
                    "-c:v", "mpeg4", folder / "video-only.mp4"], check=True)
    return sorted(folder.iterdir())


def _zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("speech.wav", data)
    return buffer.getvalue()


def _answer(tagger, source) -> dict:
    """What a user gets for one input: the error, or what the record says of the audio and its top tags."""
    try:
        outcome = tagger.tag_file(source)
    except AudioError as error:
        return {"error": str(error)}
    return {"tags": [tag.label for tag in outcome.prediction.tags[:3]], "duration": round(outcome.duration, 3),
            "codec": outcome.codec, "warning": outcome.warning}


@pytest.fixture(scope="module")
def answers(tagger, fuzzed, hostile) -> dict:
    """path -> (its answer as a file, its answer on stdin); stdin only for regular files."""
    found = {}
    for path in fuzzed + hostile:
        as_file = _answer(tagger, path)
        piped = _answer(tagger, io.BytesIO(path.read_bytes())) if path.is_file() else None
        found[path] = (as_file, piped)
    return found


def _unworded(answer: dict) -> list:
    """The messages of ``answer`` that are not in the lists above."""
    if answer is None:
        return []
    bad = []
    if "error" in answer and not any(re.fullmatch(pattern, answer["error"]) for pattern in ERRORS):
        bad.append(answer["error"])
    if answer.get("warning") and not any(re.fullmatch(pattern, answer["warning"]) for pattern in WARNINGS):
        bad.append(answer["warning"])
    return bad


def test_every_message_is_one_a_user_can_read(answers, fuzzed):
    unworded = {f"{path.name}: {message}" for path, pair in answers.items() for answer in pair
                for message in _unworded(answer)}
    assert not unworded, "\n".join(sorted(unworded))
    # the set meets the kinds of answer there are
    kinds = {"error" if "error" in a else "warning" if a["warning"] else "clean" for a, _ in answers.values()}
    assert kinds == {"error", "warning", "clean"}
    assert len(fuzzed) == len(FORMATS) * PER_FORMAT


def test_a_compressed_file_is_said_to_be_one_not_an_unknown_format(answers):
    """A .tar.bz2, .tar.xz or gzipped WAV was "not audio, or a format audiotag does not know (headerless samples:
    --raw ...)": nothing a user could act on."""
    named = ("speech.wav.gz", "speech.tar.bz2", "speech.tar.xz", "babycry.mp3.zst", "clip.zip.bin")
    said = {path.name: answers[path][0].get("error", "").partition(",")[0] for path in answers if path.name in named}
    assert said == {"speech.wav.gz": "cannot decode: gzip-compressed data",
                    "speech.tar.bz2": "cannot decode: bzip2-compressed data",
                    "speech.tar.xz": "cannot decode: xz-compressed data",
                    "babycry.mp3.zst": "cannot decode: zstd-compressed data",
                    "clip.zip.bin": "cannot decode: a zip archive"}


def test_a_file_and_its_bytes_on_stdin_get_the_same_answer(answers):
    """Seeded damages of every format (and the hostile inputs): 6 of 320 disagreed before (WebM headers cut
    short: "it ends before any audio" as a file, "not an audio format ... give --raw" on stdin; WAV headers the
    stream parser refused; a damaged FLAC that FFmpeg took for FLAC by its file name only)."""
    compared = [path for path, pair in answers.items() if pair[1] is not None]
    differ = {path.name: answers[path] for path in compared if answers[path][0] != answers[path][1]}
    assert not differ, f"{len(differ)} of {len(compared)} differ: {differ}"
