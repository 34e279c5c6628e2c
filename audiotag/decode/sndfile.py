"""libsndfile (through soundfile): WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, CAF... decoded in blocks, with salvage:
a file that fails part-way is tagged from what decodes, and a FLAC or Ogg that loses sync is resynced."""

import os
from typing import Optional

import numpy as np
import soundfile

from ..errors import AudioError
from .stream import Stream, block_frames


# Salvage past a bad frame (a corrupt FLAC frame makes libsndfile report "lost sync" and stop): frames skipped
# per try, growing, and tries per file, so garbage costs a bounded number of reopenings.
RESYNC_SKIPS = (4096, 16384, 65536, 262144)
MAX_RESYNCS = 32
EXACT_LENGTH = ("FLAC", "OGG")  # containers whose announced length is exact: ending short of it is a failure
# ...but an Ogg's last granule position may count samples its last block's overlap does not give (up to half of
# Vorbis's largest block: 4096 frames); ffmpeg's Vorbis files end 1024 frames short of it. Not damage.
END_SLACK = {"OGG": 4096}


class Refused(AudioError):
    """libsndfile would not open the input at all: the second decoder may take it."""


def open_soundfile(file, closer) -> Stream:
    try:
        sound = soundfile.SoundFile(file, closefd=False)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise Refused(f"cannot decode: {_sndfile_reason(error)}") from error
    kind = f"{sound.format} {sound.subtype}"
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
        while True:
            start = current[0].tell() if sound.seekable() else position
            out = np.empty((frames, sound.channels), np.float32)
            failure = got = None
            try:
                block = current[0].read(frames, dtype="float32", always_2d=True, out=out)
            except (soundfile.LibsndfileError, RuntimeError) as error:
                failure = error
                reason = _sndfile_reason(error)
                got = _frames_before_error(current[0], start, frames)
            else:
                announced = (stream.known_frames or 0) - END_SLACK.get(sound.format, 0)
                if len(block) == 0 and sound.format in EXACT_LENGTH and start < announced:
                    reason = f"the decoder stopped at {start / sound.samplerate:.1f} s"  # a hole it cannot cross
                    got = 0
            if got is not None:
                if got:  # the frames decoded before the bad one are good
                    decoded += got
                    yield out[:got]
                skipped = _resync(current, file, start + got) if resyncs < MAX_RESYNCS else None
                if skipped is None:
                    if not decoded:
                        raise AudioError(f"cannot decode {kind}: {reason}") from failure
                    stream.warning = _salvage_warning(decoded, max(stream.known_frames or 0, start + got),
                                                      sound.samplerate, reason, resyncs)
                    return
                resyncs += 1
                for offset in range(0, skipped, frames):  # the frames skipped are silence: times stay right
                    yield np.zeros((min(frames, skipped - offset), sound.channels), np.float32)
                continue
            if len(block) == 0:
                if reason is not None:
                    stream.warning = _salvage_warning(decoded, start, sound.samplerate, reason, resyncs)
                return
            decoded += len(block)
            position = start + len(block)
            yield block

    try:
        stream = Stream(blocks(), sound.samplerate, sound.channels, close)
    except AudioError:
        close()
        raise
    stream.codec = codec
    if sound.seekable() and 0 < sound.frames < 1 << 62:
        stream.known_frames = sound.frames
    return stream


_BIG_ENDIAN = ("AIFF", "AU", "CAF", "SVX", "NIST", "IRCAM", "MAT4", "MAT5", "PVF", "XI")
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
            if isinstance(file, int):
                os.lseek(file, 0, os.SEEK_SET)
            else:
                file.seek(0)
            fresh = soundfile.SoundFile(file, closefd=False)
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


def _sndfile_reason(error) -> str:
    """libsndfile's message without soundfile's "Error opening <repr of the file>:" prefix; one misleading message
    (libsndfile's answer when its MPEG decoder rejects a file's first frames) says what is really wrong."""
    reason = (getattr(error, "error_string", None) or str(error)).strip()
    if reason.startswith("File does not exist or is not a regular file"):
        return "no valid audio stream at its start (the decoder could not parse its first frames)"
    return reason
