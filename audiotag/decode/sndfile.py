"""libsndfile (through soundfile): WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, CAF... decoded in blocks, with salvage:
a file that fails part-way is tagged from what decodes, and a FLAC or Ogg that loses sync is resynced."""

import io
import os
import stat
from typing import Optional

import numpy as np
import soundfile

from ..errors import AudioError
from . import sniff
from .stream import Stream, block_frames


# Salvage past a bad frame (a corrupt FLAC frame makes libsndfile report "lost sync" and stop): frames skipped
# per try, growing, and tries per file, so garbage costs a bounded number of reopenings.
RESYNC_SKIPS = (4096, 16384, 65536, 262144)
MAX_RESYNCS = 32
SALVAGE_FRAMES = 4096  # a failed block decoded again this many frames at a time (0.1 s at 44.1 kHz)
EXACT_LENGTH = ("FLAC", "OGG")  # containers whose announced length is exact: ending short of it is a failure
# ...but an Ogg's last granule position may count samples its last block's overlap does not give (up to half of
# Vorbis's largest block: 4096 frames); ffmpeg's Vorbis files end 1024 frames short of it. Not damage.
END_SLACK = {"OGG": 4096}


# Neither decoder knows its bytes: the same words for a file and for stdin (where headerless samples may come).
NOT_AUDIO = ("cannot decode: not audio, or a format audiotag does not know (headerless samples: --raw FORMAT "
             "--rate HZ on stdin)")


def not_audio(head: bytes) -> str:
    """NOT_AUDIO, or, for a compressed file or an archive, what it is and what to do."""
    what = sniff.packed(head)
    if what is None:
        return NOT_AUDIO
    if what.endswith("compressed data") or what in ("a 7-Zip archive", "a RAR archive"):
        return (f"cannot decode: {what}, not audio: decompress or unpack it first (the command line opens tar, "
                f"tar.gz, tar.zst, zip and WARC archives itself)")
    suffix = {"a zip archive": ".zip", "a tar archive": ".tar"}[what]
    return f"cannot decode: {what}, not audio (the command line opens one named *{suffix}, or on stdin)"


class Refused(AudioError):
    """libsndfile would not open the input at all: the second decoder may take it. ``known``: libsndfile knew
    the format (its reason then says what is wrong with the file)."""

    def __init__(self, message: str, known: bool = True):
        super().__init__(message)
        self.known = known


def open_soundfile(file, closer, path=None) -> Stream:
    """Decode ``file`` (a seekable binary file; an open regular file is read through its descriptor; ``path``:
    its name, when it has one) with libsndfile. Refused: libsndfile does not take it."""
    source, name = _sndfile_source(file, path)
    try:
        sound = soundfile.SoundFile(source, closefd=False)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        known = getattr(error, "code", None) != 1  # SF_ERR_UNRECOGNISED_FORMAT
        raise Refused(f"cannot decode: {_sndfile_reason(error, name)}" if known else NOT_AUDIO, known) from error
    name = _FORMAT_NAMES.get(sound.format, sound.format)
    codec = _sndfile_codec(sound.format, sound.subtype)
    current = [sound]  # a resync reopens the file: the decoder that is open now

    def close():
        current[0].close()
        if closer:
            closer()

    def blocks():
        frames = block_frames(sound.channels, sound.samplerate)
        decoded = resyncs = 0
        reason = None  # the last decoding error passed
        # GSM 6.10, G.721/G.723, NMS ADPCM and XI DPCM cannot seek, not even to ask where they are: count instead.
        position = 0
        as_int16 = sound.subtype == "PCM_16" and sound.format != "FLAC" and sound.channels <= _INT16_MAX_CHANNELS
        while True:
            start = current[0].tell() if sound.seekable() else position
            out = np.empty((frames, sound.channels), np.int16 if as_int16 else np.float32)
            failure = got = None
            try:
                block = current[0].read(frames, dtype="int16" if as_int16 else "float32", always_2d=True, out=out)
            except (soundfile.LibsndfileError, RuntimeError) as error:
                failure = error
                reason = _sndfile_reason(error, name)
                got = _frames_before_error(current[0], start, frames)
                if got == 0 and sound.seekable():  # libsndfile lost its place: the block decoded again, in pieces
                    got = _decoded_before_error(source, start, out)
            else:
                announced = (stream.known_frames or 0) - END_SLACK.get(sound.format, 0)
                if len(block) == 0 and sound.format in EXACT_LENGTH and start < announced:
                    reason = f"the decoder stopped at {start / sound.samplerate:.1f} s"  # a hole it cannot cross
                    got = 0
            if got is not None:
                if got:  # the frames decoded before the bad one are good
                    decoded += got
                    yield _int16_mono(out[:got]) if as_int16 else out[:got]
                skipped = _resync(current, source, start + got) if resyncs < MAX_RESYNCS else None
                if skipped is None:
                    if not decoded:
                        raise AudioError(f"cannot decode {codec}: {reason}") from failure
                    stream.warning = _salvage_warning(decoded, max(stream.known_frames or 0, start + got),
                                                      sound.samplerate, reason, resyncs)
                    return
                resyncs += 1
                for offset in range(0, skipped, frames):  # the frames skipped are silence: times stay right
                    yield np.zeros(min(frames, skipped - offset) if as_int16 else
                                   (min(frames, skipped - offset), sound.channels), np.float32)
                continue
            if len(block) == 0:
                if reason is not None:
                    stream.warning = _salvage_warning(decoded, start, sound.samplerate, reason, resyncs)
                return
            decoded += len(block)
            position = start + len(block)
            yield _int16_mono(block) if as_int16 else block

    try:
        stream = Stream(blocks(), sound.samplerate, sound.channels, close)
    except AudioError:
        close()
        raise
    stream.codec = codec
    if sound.seekable() and 0 < sound.frames < 1 << 62:
        stream.known_frames = sound.frames
    return stream


# 16-bit PCM (most WAV and AIFF; not FLAC, whose int16 read libsndfile makes slower) is read as int16 and downmixed
# here in one pass, instead of libsndfile converting every sample to float and the stream downmixing them after:
# half the decoder's CPU for a WAV, and the same samples bit for bit (see _int16_mono).
_INT16_MAX_CHANNELS = 256


def _int16_mono(block: np.ndarray) -> np.ndarray:
    """(frames, channels) int16 -> (frames,) float32: exactly libsndfile's float samples (x / 32768) averaged as
    the stream's downmix averages them, since a sum of up to 256 int16 samples is exact in float32 and the
    scaling by 2**-15 is too: only the division by the channel count rounds, once, as there. One-dimensional:
    the stream takes it as downmixed and checked (every sample lies within +-1)."""
    mono = block[:, 0].astype(np.float32)
    for channel in range(1, block.shape[1]):
        mono += block[:, channel]
    mono *= np.float32(1 / 32768)
    if block.shape[1] > 1:
        mono /= np.float32(block.shape[1])
    return mono


_BIG_ENDIAN = ("AIFF", "AU", "CAF", "SVX", "NIST", "IRCAM", "MAT4", "MAT5", "PVF", "XI", "SD2")
_SNDFILE_CODECS = {"ULAW": "pcm_mulaw", "ALAW": "pcm_alaw", "IMA_ADPCM": "adpcm_ima_wav", "MS_ADPCM": "adpcm_ms",
                   "GSM610": "gsm_ms", "VORBIS": "vorbis", "OPUS": "opus", "MPEG_LAYER_I": "mp1",
                   "MPEG_LAYER_II": "mp2", "MPEG_LAYER_III": "mp3", "PCM_S8": "pcm_s8", "PCM_U8": "pcm_u8",
                   "G721_32": "adpcm_g726", "G723_24": "adpcm_g726", "G723_40": "adpcm_g726"}

_PCM_CODECS = {"PCM_16": "pcm_s16", "PCM_24": "pcm_s24", "PCM_32": "pcm_s32", "FLOAT": "pcm_f32",
               "DOUBLE": "pcm_f64"}


def _sndfile_codec(fmt: str, subtype: str) -> str:
    """libsndfile's format and subtype in FFmpeg's codec names (one vocabulary for the ``codec`` field)."""
    if fmt == "FLAC" or subtype == "FLAC":
        return "flac"
    if subtype.startswith("ALAC"):
        return "alac"
    if subtype in _PCM_CODECS:
        return _PCM_CODECS[subtype] + ("be" if fmt in _BIG_ENDIAN else "le")
    return _SNDFILE_CODECS.get(subtype, subtype.lower())


def _salvage_warning(decoded: int, whole: int, rate: int, reason: str, resyncs: int) -> str:
    """E.g. "decoded 16.2 of 30.0 s: flac decoder lost sync (2 bad spots skipped)"."""
    text = f"decoded {decoded / rate:.1f} of {whole / rate:.1f} s: {reason.removeprefix('Error : ').rstrip('.')}"
    return text + (f" ({resyncs} bad spot{'s' if resyncs > 1 else ''} skipped)" if resyncs else "")


def _frames_before_error(sound, start: int, frames: int) -> int:
    """How many frames a read that failed had decoded into its buffer (libsndfile's position moved on)."""
    try:
        return max(0, min(frames, sound.tell() - start))
    except (soundfile.LibsndfileError, RuntimeError):
        return 0


def _reopened(file):
    """A fresh libsndfile decoder on ``file`` (a descriptor, a name, or a seekable file object)."""
    if isinstance(file, int):
        os.lseek(file, 0, os.SEEK_SET)
    elif not isinstance(file, str):  # a name: libsndfile opens it afresh
        file.seek(0)
    return soundfile.SoundFile(file, closefd=False)


def _decoded_before_error(file, start: int, out: np.ndarray) -> int:
    """The frames from ``start`` a fresh decoder gives, SALVAGE_FRAMES at a time, into ``out`` up to the read that
    fails: a read that fails midway may leave libsndfile unable to say where it is (a FLAC member an archive is
    cut inside: its decoder asks past the end of the data), and its whole block, up to 10 s, was lost."""
    got = 0
    try:
        fresh = _reopened(file)
    except (soundfile.LibsndfileError, RuntimeError, OSError):
        return 0
    try:
        fresh.seek(start)
        while got < len(out):
            count = min(SALVAGE_FRAMES, len(out) - got)
            piece = fresh.read(count, dtype=out.dtype.name, always_2d=True, out=out[got:got + count])
            if not len(piece):
                break
            got += len(piece)
    except (soundfile.LibsndfileError, RuntimeError):
        pass
    finally:
        fresh.close()
    return got


def _resync(current: list, file, position: int) -> Optional[int]:
    """Past a bad frame: reopen the file and seek a little further each try (a seek finds the next frame that
    parses). Returns the frames skipped, or None when no later position decodes; ``current[0]`` is then the new
    decoder."""
    old = current[0]
    if not old.seekable():
        return None
    for skip in RESYNC_SKIPS:
        if old.frames and position + skip >= old.frames:
            return None
        try:
            fresh = _reopened(file)
        except (soundfile.LibsndfileError, RuntimeError, OSError):
            return None
        try:
            fresh.seek(position + skip)
            fresh.read(1, dtype="float32", always_2d=True)  # the next frame must decode, too
            fresh.seek(position + skip)
        except (soundfile.LibsndfileError, RuntimeError):
            fresh.close()
            continue
        old.close()
        current[0] = fresh
        return skip
    return None


def _sndfile_source(file, path) -> tuple:
    """(what to hand libsndfile for ``file``, the format's name as its first bytes say). Refused, without asking
    libsndfile, what it would search a resource fork for and then refuse (``sniff.sndfile_guess``), unless
    ``path`` has one beside it (an SD2 file: libsndfile then opens it by its name, and finds it)."""
    def read_at(offset: int, count: int) -> bytes:
        if isinstance(file, io.BufferedReader):
            return os.pread(file.fileno(), count, offset)
        where = file.tell()
        file.seek(offset)
        data = file.read(count)
        file.seek(where)
        return data

    where = file.tell()
    size = file.seek(0, os.SEEK_END)
    file.seek(where)
    guess, name = sniff.sndfile_guess(read_at, size)
    if guess == "unknown":
        # An MP4 or Matroska file (4 bytes of magic; a 2-byte one could be raw PCM) is no SD2 data fork: no search
        # (two failed stat calls, each letting go of Python's lock, for every such file).
        if path is not None and not _iso_or_matroska(read_at(0, 12)) and _resource_fork_beside(os.fspath(path)):
            return os.fspath(path), "SD2"
        raise Refused(NOT_AUDIO, known=False)
    if guess == "bare mpeg":  # libsndfile's test passes one header's worth of bytes, common in quiet PCM: a run
        # of frames from the start is asked (headerless PCM was tagged as 0.02-0.08 s of MP1)
        if sniff.mpeg_audio_start(read_at(0, sniff.AHEAD)) != 0:
            raise Refused(NOT_AUDIO, known=False)
        return sniff.Prefixed(file), "MPEG"
    # A regular file is read through its descriptor: a Python file object would call back into Python (and take
    # the GIL) for every 4 kB read.
    return (file.fileno() if isinstance(file, io.BufferedReader) else file), _FORMAT_NAMES.get(name, name)


def _iso_or_matroska(head: bytes) -> bool:
    return head[4:8] == b"ftyp" or head.startswith(b"\x1a\x45\xdf\xa3")


def _resource_fork_beside(path: str) -> bool:
    """Whether a regular file where libsndfile looks for ``path``'s resource fork ("._NAME" or
    ".AppleDouble/NAME" beside it, as macOS copies one to other filesystems) is there: a FIFO there would hang
    libsndfile, and no other kind of file holds a fork."""
    folder, name = os.path.split(path)
    for fork in (os.path.join(folder, "._" + name), os.path.join(folder, ".AppleDouble", name)):
        try:
            if stat.S_ISREG(os.stat(fork).st_mode):
                return True
        except (OSError, ValueError):
            continue
    return False


_FORMAT_NAMES = {"OGG": "Ogg", "MPEG": "MPEG audio", "WAVEX": "WAV", "W64": "Wave64"}

# libsndfile's error numbers (sf_error_number) in words that say what is wrong with the input; its own text is
# kept after them. Those not named here are errors in a header of the format (61-183), or worded below.
_SNDFILE_WORDS = {
    2: "cannot read it",
    3: "a damaged {} file",
    4: "{}, in an encoding audiotag does not decode",
    8: "no audio data in it",
    17: "a corrupt header (it asks for more memory than its audio can need)",
    18: "a damaged {} header, or a variant audiotag does not decode",
    19: "a bad channel count in its header", 32: "a bad channel count in its header",
    33: "a bad channel count in its header", 34: "a bad channel count in its header",
    29: "damaged {} data",
    37: "damaged {} data", 38: "damaged {} data",
    39: "a truncated or damaged {} file (it points past its end)", 40: "a truncated or damaged {} file",
    42: "a truncated or damaged {} file (it points past its end)", 43: "a truncated or damaged {} file",
    156: "damaged FLAC data", 157: "damaged FLAC data", 158: "damaged FLAC data", 160: "damaged FLAC data",
    161: "damaged FLAC data",
    159: "an unsupported sample rate", 176: "an unsupported sample rate", 183: "an unsupported sample rate",
}


def _sndfile_reason(error, name: str) -> str:
    """What is wrong with the input in words, libsndfile's own message kept after them (without soundfile's
    "Error opening <repr of the file>:" prefix): "damaged FLAC data (libsndfile: flac decoder lost sync)".
    libsndfile's words alone name its internals ("Internal psf_fseek() failed", "MP3 MPEG_LAYER_I: Unspecified
    internal error" for a damaged FLAC). ``name``: the format, as far as it is known."""
    code = getattr(error, "code", None)
    text = (getattr(error, "error_string", None) or str(error)).strip()
    if code == 7:  # "File does not exist or is not a regular file": its MPEG decoder rejected the first frames
        return "no valid audio stream at its start (the decoder could not parse its first frames)"
    text = text.removeprefix("Error : ").removeprefix("Error. ").rstrip(".")
    name = name or "audio"
    plain = _SNDFILE_WORDS.get(code)
    if plain is None:
        plain = "a damaged or unsupported {} header" if code and 61 <= code <= 183 else "a damaged {} file"
    return f"{plain.format(name)} (libsndfile: {text})"
