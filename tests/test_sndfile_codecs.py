"""Every codec libsndfile reads is tagged, the ones that cannot seek too; and an intact Ogg Vorbis has no warning.

GSM 6.10 (voicemail and telephony recordings), G.721/G.723, NMS ADPCM and XI DPCM decode only forwards: the block
reader asked libsndfile where it was, which such a file refuses ("Seek attempted on unseekable file type"), so
each failed with "unexpected LibsndfileError". ffmpeg's Vorbis files announce a length 1024 frames longer than
what decodes, which was reported as "the decoder stopped at ...".
"""

import json
import subprocess

import pytest
import soundfile
import soxr
from conftest import AUDIO

SPEECH = AUDIO / "speech.wav"
UNSEEKABLE = [("WAV", "GSM610", 8000, "gsm_ms"), ("AIFF", "GSM610", 8000, "gsm_ms"),
              ("W64", "GSM610", 8000, "gsm_ms"), ("WAV", "G721_32", 8000, "adpcm_g726"),
              ("AU", "G721_32", 8000, "adpcm_g726"), ("AU", "G723_24", 8000, "adpcm_g726"),
              ("WAV", "NMS_ADPCM_16", 8000, "nms_adpcm_16"), ("XI", "DPCM_16", 44100, "dpcm_16")]


@pytest.fixture(scope="module")
def unseekable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unseekable")
    samples, rate = soundfile.read(SPEECH, dtype="float32")
    made = {}
    for container, subtype, to_rate, codec in UNSEEKABLE:
        path = folder / f"{subtype.lower()}.{container.lower()}"
        soundfile.write(path, soxr.resample(samples, rate, to_rate), to_rate, format=container, subtype=subtype)
        with soundfile.SoundFile(path) as sound:
            assert not sound.seekable()  # what the fix is about
        made[path] = codec
    return made


def test_codecs_that_cannot_seek_are_tagged(cli, unseekable):
    result = cli("-k", "3", *unseekable)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    for record, (path, codec) in zip(records, unseekable.items()):
        assert record["path"] == str(path) and "warning" not in record
        assert record["codec"] == codec
        assert "Speech" in [tag["label"] for tag in record["tags"]], record


def test_an_intact_ogg_vorbis_from_ffmpeg_has_no_warning(cli, tmp_path):
    path = tmp_path / "trumpet.ogg"  # Debian's ffmpeg makes it (scripts/build/install_test_tools.sh installs it)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-stream_loop", "3", "-i", AUDIO / "extra" / "librosa-trumpet.ogg",
                    "-t", "12", "-ar", "44100", "-c:a", "libvorbis", path], check=True)
    with soundfile.SoundFile(path) as sound:
        decoded = len(sound.read(dtype="float32"))
        assert 0 < sound.frames - decoded <= 4096  # the container announces more than decodes
    [record] = [json.loads(line) for line in cli(path).stdout.decode().splitlines()]
    assert "warning" not in record and record["duration"] == pytest.approx(decoded / 44100, abs=1e-5)


def test_every_pair_soundfile_writes_and_reads_is_tagged(tagger, tmp_path):
    """Every (container, codec) pair libsndfile writes (``soundfile.available_formats``, ``available_subtypes``,
    ``check_format``), made from a real clip at the first rate the pair takes: each file ``soundfile.read`` reads
    back is tagged, whole and with no warning. SD2 keeps its header in a resource fork beside the file ("._NAME"),
    which libsndfile finds by the file's name."""
    samples, rate = soundfile.read(SPEECH, dtype="float32", frames=4 * 32000)
    written, tagged = 0, []
    for container in soundfile.available_formats():
        for subtype in soundfile.available_subtypes(container):
            if not soundfile.check_format(container, subtype):
                continue
            path = tmp_path / f"{container}-{subtype}.{container.lower()}"
            for to_rate in (32000, 16000, 8000, 48000):  # Opus, MPEG, G.72x and VOX take only some rates
                try:
                    soundfile.write(path, soxr.resample(samples, rate, to_rate), to_rate, format=container,
                                    subtype=subtype)
                    break
                except (soundfile.LibsndfileError, RuntimeError, ValueError):
                    path.unlink(missing_ok=True)
            else:
                continue  # libsndfile does not write it (MPEG layers I and II, MP3 in WAV)
            written += 1
            try:
                expected, expected_rate = soundfile.read(path, dtype="float32")  # RAW needs its format given
            except (soundfile.LibsndfileError, RuntimeError, TypeError):
                continue
            outcome = tagger.tag_file(path)  # AudioError here: a pair soundfile reads and audiotag does not
            assert outcome.warning is None, (path.name, outcome.warning)
            assert outcome.duration == pytest.approx(len(expected) / expected_rate, abs=1e-3), path.name
            tagged.append(path.name)
    assert written >= 140 and len(tagged) >= 125, (written, len(tagged))  # the sweep is real
    assert {"SD2-PCM_16.sd2", "WAV-GSM610.wav", "OGG-OPUS.ogg", "MP3-MPEG_LAYER_III.mp3"} <= set(tagged)


@pytest.mark.parametrize("channels", [1, 2, 3, 6])
def test_16_bit_pcm_read_as_integers_gives_libsndfiles_float_samples_downmixed(tmp_path, channels):
    """A 16-bit WAV is read as int16 and downmixed in one pass (decode/sndfile.py): its samples must equal, bit for
    bit, libsndfile's float samples averaged as librosa averages channels (np.mean over the channel axis)."""
    import numpy as np

    from audiotag import decode

    clip = soundfile.read(AUDIO / "music.wav", dtype="int16")[0]  # 32 kHz: no resampling in the way
    loud = np.clip(clip.astype(np.int32) * 8, -32768, 32767).astype(np.int16)  # full-scale samples too
    data = np.stack([np.roll(loud, 997 * c) for c in range(channels)], axis=1)
    path = tmp_path / f"{channels}.wav"
    soundfile.write(path, data, 32000, subtype="PCM_16")
    expected = soundfile.read(path, dtype="float32", always_2d=True)[0].T.mean(axis=0, dtype=np.float32)
    stream = decode.open_file(str(path))
    got = np.concatenate(list(stream.samples()))
    assert stream.channels == channels and len(got) == len(expected)
    assert np.array_equal(got, expected)
