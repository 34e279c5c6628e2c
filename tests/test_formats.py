"""Every format a crawler downloads, made at test time from the shared clips with Debian's ffmpeg (a test-time
tool only) and a small AMR encoder compiled here: tagged by the package and the binary through a file list, a
directory walk and stdin, with the codec each record names; lossless streams in other containers give the same
samples; junk before an MP3 is skipped; video files give their audio; bad input in the new formats is one line."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from audiotag import decode
from audiotag.decode import ffmpeg
from conftest import AUDIO, REPO, compare_lines, cpu_while_the_lock_is_held

MUSIC = AUDIO / "extra" / "max-guitar.wav"  # 10 s, 44.1 kHz stereo, 16-bit: the web's usual music format
SPEECH = AUDIO / "speech.wav"  # 10 s, 32 kHz mono
FFMPEG = shutil.which("ffmpeg")
VIDEO = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=10.1"]  # a picture to go with the sound

# name -> (source, ffmpeg options before the output, the codec the record must name). "amr ..." sources go
# through tests/fixtures/amr_encode.c; "video" ones get a picture stream first.
KINDS = {
    # what libsndfile decoded before: it still does
    "pcm16.wav": (MUSIC, ["-c:a", "pcm_s16le"], "pcm_s16le"),
    "pcm24.wav": (MUSIC, ["-c:a", "pcm_s24le"], "pcm_s24le"),
    "float.wav": (MUSIC, ["-c:a", "pcm_f32le"], "pcm_f32le"),
    "mulaw.wav": (SPEECH, ["-c:a", "pcm_mulaw", "-ar", "8000"], "pcm_mulaw"),
    "msadpcm.wav": (MUSIC, ["-c:a", "adpcm_ms"], "adpcm_ms"),
    "mp3-in.wav": (MUSIC, ["-c:a", "libmp3lame"], "mp3"),
    "pcm.aiff": (MUSIC, [], "pcm_s16be"),
    "pcm.caf": (MUSIC, ["-c:a", "pcm_s16be"], "pcm_s16be"),
    "clip.flac": (MUSIC, [], "flac"),
    "vorbis.ogg": (MUSIC, ["-c:a", "libvorbis"], "vorbis"),
    "opus.opus": (MUSIC, ["-c:a", "libopus"], "opus"),
    "mp2.mp2": (MUSIC, [], "mp2"),
    "cbr.mp3": (MUSIC, ["-b:a", "128k"], "mp3"),
    "vbr.mp3": (MUSIC, ["-q:a", "4"], "mp3"),
    "mpeg2.mp3": (SPEECH, ["-ar", "22050"], "mp3"),
    # what FFmpeg decodes now
    "aac.m4a": (MUSIC, ["-c:a", "aac", "-b:a", "128k"], "aac"),
    "aac.mp4": (MUSIC, ["-c:a", "aac"], "aac"),
    "aac-faststart.m4a": (MUSIC, ["-c:a", "aac", "-movflags", "+faststart"], "aac"),
    "aac-fragmented.mp4": (MUSIC, ["-c:a", "aac", "-movflags", "frag_keyframe+empty_moov+default_base_moof"], "aac"),
    "aac.3gp": (SPEECH, ["-c:a", "aac", "-ar", "16000"], "aac"),
    "aac.m4b": (MUSIC, ["-c:a", "aac", "-f", "ipod"], "aac"),
    "adts.aac": (MUSIC, ["-c:a", "aac"], "aac"),
    "aac.ts": (MUSIC, ["-c:a", "aac"], "aac"),
    "aac.flv": (MUSIC, ["-c:a", "aac"], "aac"),
    "aac.mkv": (MUSIC, ["-c:a", "aac"], "aac"),
    "alac.m4a": (MUSIC, ["-c:a", "alac"], "alac"),
    "alac.caf": (MUSIC, ["-c:a", "alac"], "alac"),
    "opus.webm": (MUSIC, ["-c:a", "libopus"], "opus"),
    "opus.mka": (MUSIC, ["-c:a", "libopus"], "opus"),
    "vorbis.webm": (MUSIC, ["-c:a", "libvorbis"], "vorbis"),
    "flac.mkv": (MUSIC, ["-c:a", "flac"], "flac"),
    "flac.oga": (MUSIC, ["-c:a", "flac", "-f", "ogg"], "flac"),
    "wmav2.wma": (MUSIC, ["-c:a", "wmav2"], "wmav2"),
    "wmav1.asf": (MUSIC, ["-c:a", "wmav1"], "wmav1"),
    "ac3.ac3": (MUSIC, [], "ac3"),
    "eac3.eac3": (MUSIC, [], "eac3"),
    "dts.dts": (MUSIC, ["-c:a", "dca", "-strict", "-2"], "dts"),
    "wavpack.wv": (MUSIC, [], "wavpack"),
    "tta.tta": (MUSIC, [], "tta"),
    "amrnb.amr": ("amr nb", [], "amr_nb"),
    "amrnb-dtx.amr": ("amr nb dtx", [], "amr_nb"),
    "amrwb.awb": ("amr wb", [], "amr_wb"),
    "mp3-http-header.mp3": ("http", [], "mp3"),
    "mp3-junk.mp3": ("junk", [], "mp3"),
    "chained.ogg": ("chained vorbis.ogg", [], "vorbis"),
    "chained.opus": ("chained opus.opus", [], "opus"),
    # video files: their audio is tagged
    "h264-aac.mp4": (MUSIC, ["video", "-c:v", "libx264", "-c:a", "aac"], "aac"),
    "h264-aac.mov": (MUSIC, ["video", "-c:v", "libx264", "-c:a", "aac"], "aac"),
    "vp8-vorbis.webm": (MUSIC, ["video", "-c:v", "libvpx", "-c:a", "libvorbis"], "vorbis"),
    "vp9-opus.webm": (MUSIC, ["video", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"], "opus"),
    "h264-mp3.mkv": (MUSIC, ["video", "-c:v", "libx264", "-c:a", "libmp3lame"], "mp3"),
    "mpeg4-mp3.avi": (MUSIC, ["video", "-c:v", "mpeg4", "-c:a", "libmp3lame"], "mp3"),
    "h264-aac.ts": (MUSIC, ["video", "-c:v", "libx264", "-c:a", "aac"], "aac"),
}
NEW_KINDS = [name for name in KINDS if list(KINDS).index(name) >= list(KINDS).index("aac.m4a")]


def _ffmpeg(*args):
    subprocess.run([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def _make(folder, name, source, options, encoder):
    target = folder / name
    if source in (MUSIC, SPEECH):
        if options[:1] == ["video"]:
            _ffmpeg(*VIDEO, "-i", source, "-shortest", *options[1:], target)
        else:
            _ffmpeg("-i", source, *options, target)
    elif source.startswith("amr"):
        kind = source.split()[1:]
        rate = 8000 if kind[0] == "nb" else 16000
        pcm = subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(SPEECH), "-ar", str(rate),
                              "-ac", "1", "-f", "s16le", "-"], check=True, capture_output=True).stdout
        target.write_bytes(subprocess.run([str(encoder), *kind], input=pcm, check=True, capture_output=True).stdout)
    elif source == "http":  # a crawler that saved the response with its header
        header = b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Length: 161167\r\n\r\n"
        target.write_bytes(header + (folder / "cbr.mp3").read_bytes())
    elif source == "junk":
        junk = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes()
        target.write_bytes(junk + (folder / "cbr.mp3").read_bytes())
    elif source.startswith("chained"):  # speech, then music: two logical streams in a row
        suffix = source.split()[1]
        parts = []
        for index, clip in enumerate((SPEECH, AUDIO / "music.wav")):
            part = folder.parent / f"part{index}-{suffix}"
            _ffmpeg("-i", clip, "-c:a", "libvorbis" if suffix.endswith("ogg") else "libopus", part)
            parts.append(part.read_bytes())
        target.write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Every kind in one folder (and nothing else there)."""
    if FFMPEG is None:
        pytest.fail("Debian's ffmpeg makes these fixtures: apt-get install ffmpeg (scripts/build/setup.sh does)")
    work = tmp_path_factory.mktemp("formats")
    encoder = work / "amr_encode"
    subprocess.run(["gcc", "-O2", "-o", str(encoder), str(REPO / "tests" / "fixtures" / "amr_encode.c"),
                    "-lopencore-amrnb", "-lvo-amrwbenc"], check=True)
    folder = work / "kinds"
    folder.mkdir()
    for name, (source, options, _codec) in KINDS.items():
        _make(folder, name, source, options, encoder)
    return folder


@pytest.fixture(scope="module")
def source_tags(tagger):
    """The top label of each source clip, tagged from its WAV."""
    return {source: tagger.predict(decode.load(source)).tags[0].label
            for source in (MUSIC, SPEECH, AUDIO / "music.wav")}


def _source(name):
    source = KINDS[name][0]
    return SPEECH if not isinstance(source, type(MUSIC)) and source.startswith(("amr", "chained")) else \
        MUSIC if not isinstance(source, type(MUSIC)) else source


def _check_record(record, name, source_tags):
    source, _options, codec = KINDS[name]
    assert "error" not in record and "warning" not in record, (name, record)  # intact: no audio lost
    assert record["codec"] == codec, (name, record["codec"])
    expected = 20.0 if name.startswith("chained") else 10.0
    assert abs(record["duration"] - expected) < 0.1, (name, record["duration"])
    top = [tag["label"] for tag in record["tags"][:3]]
    assert source_tags[_source(name)] in top, (name, top)


def test_ffmpeg_is_the_slim_lgpl_build():
    """The second decoder is ours: no encoders, no network protocols, opencore in place of FFmpeg's own AMR-NB
    decoder; FFmpeg's own Opus decoder beside libopus (for Opus outside Ogg)."""
    assert ffmpeg.available()
    import av

    assert av.__version__ == "12.3.0"
    codecs = av.codecs_available
    assert {"aac", "alac", "wmav2", "eac3", "amrwb", "opus", "libopus", "libopencore_amrnb"} <= codecs
    assert not {"amrnb", "h264", "vp9", "libx264"} & codecs
    for name in ("aac", "flac", "libopus"):
        with pytest.raises(Exception):
            av.codec.Codec(name, "w")  # no encoder at all


def test_every_kind_through_a_list(cli, fixtures, source_tags, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{fixtures / name}\n" for name in KINDS))
    result = cli("--files-from", listing, "-f", "jsonl", "-k", 5)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["path"] for r in records] == [str(fixtures / name) for name in KINDS]
    for record, name in zip(records, KINDS):
        _check_record(record, name, source_tags)


def test_a_walk_picks_up_every_kind(cli, fixtures, source_tags):
    result = cli(fixtures, "-f", "jsonl", "-k", 5)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    records = {os.path.basename(r["path"]): r for r in map(json.loads, result.stdout.decode().splitlines())}
    assert sorted(records) == sorted(KINDS)
    for name, record in records.items():
        _check_record(record, name, source_tags)


@pytest.mark.parametrize("name", NEW_KINDS + ["pcm.aiff", "pcm.caf", "mulaw.wav", "msadpcm.wav", "cbr.mp3"])
def test_stdin_gives_the_files_record(cli, fixtures, name):
    """Piped in (curl URL | audiotag -): the record of the file itself, but for the path (scores within 1e-5;
    an MP3 on stdin goes to FFmpeg, the file to libsndfile: samples within 2e-6)."""
    path = fixtures / name
    from_file = cli(path, "-f", "jsonl")
    piped = cli("-", "-f", "jsonl", stdin=path.read_bytes())
    assert from_file.returncode == 0 and piped.returncode == 0, piped.stderr
    expected = json.loads(from_file.stdout)
    expected["path"] = "-"
    problems = compare_lines([json.dumps(expected)], piped.stdout.decode().splitlines())
    assert not problems, (name, problems)


def _samples(path):
    return decode.load(path).samples


def test_lossless_streams_in_other_containers_give_the_same_samples(fixtures):
    flac = _samples(fixtures / "clip.flac")
    for name in ("flac.mkv", "flac.oga"):
        assert np.array_equal(_samples(fixtures / name), flac), name
    wav = _samples(fixtures / "pcm16.wav")
    for name in ("alac.m4a", "alac.caf", "wavpack.wv", "tta.tta"):
        assert np.array_equal(_samples(fixtures / name), wav), name


def test_junk_before_an_mp3_is_skipped_to_the_clean_files_samples(fixtures):
    clean = decode.open_file(fixtures / "cbr.mp3").read()
    for name in ("mp3-http-header.mp3", "mp3-junk.mp3"):
        junk = decode.open_file(fixtures / name).read()
        assert junk.codec == "mp3" and np.array_equal(junk.samples, clean.samples), name


def test_video_files_give_their_audio_stream(fixtures, tmp_path):
    """The same samples as the audio stream copied out of the file (-vn -c:a copy), video never decoded."""
    for name, container in (("h264-aac.mp4", "m4a"), ("h264-aac.mov", "m4a"), ("vp8-vorbis.webm", "webm"),
                            ("vp9-opus.webm", "webm"), ("h264-mp3.mkv", "mka"), ("h264-aac.ts", "ts")):
        extracted = tmp_path / f"{name}.{container}"
        _ffmpeg("-i", fixtures / name, "-vn", "-c:a", "copy", extracted)
        assert np.array_equal(_samples(fixtures / name), _samples(extracted)), name


def test_chained_ogg_is_one_recording(fixtures, tagger):
    """Speech then music, two logical streams: both are decoded, one after the other."""
    for name in ("chained.ogg", "chained.opus"):
        clip = decode.load(fixtures / name)
        assert abs(clip.duration - 20.0) < 0.01, name
        labels = [t.label for t in tagger.predict(clip).tags]
        assert "Speech" in labels and "Music" in labels, (name, labels)


def test_amr_nb_with_dtx_frames_decodes(fixtures, tagger):
    """FFmpeg's own AMR-NB decoder rejects SID (DTX) frames; libopencore-amrnb decodes them."""
    data = (fixtures / "amrnb-dtx.amr").read_bytes()
    assert len(data) < len((fixtures / "amrnb.amr").read_bytes())  # SID frames are shorter than speech frames
    clip = decode.load(fixtures / "amrnb-dtx.amr")
    assert clip.codec == "amr_nb" and abs(clip.duration - 10.0) < 0.05
    assert tagger.predict(clip).tags[0].label == "Speech"


def test_opus_outside_ogg_is_ffmpegs_own_decoder(fixtures):
    """Opus in WebM/Matroska, which libsndfile cannot read, is decoded by FFmpeg's own Opus decoder (the reference
    there, and 2.4x faster than libopus): the samples Debian's ffmpeg (the same FFmpeg 5.1) decodes, bit for bit."""
    for name in ("opus.webm", "opus.mka", "vp9-opus.webm"):
        raw = subprocess.run([FFMPEG, "-nostdin", "-loglevel", "quiet", "-c:a", "opus", "-i", str(fixtures / name),
                              "-vn", "-f", "f32le", "-"], check=True, capture_output=True).stdout
        theirs = decode.from_array(np.frombuffer(raw, np.float32).reshape(-1, 2), 48000).samples
        ours = decode.load(fixtures / name)
        assert ours.codec == "opus" and np.array_equal(ours.samples, theirs), name


def test_ogg_vorbis_is_ffmpegs_own_decoder(fixtures):
    """Ogg Vorbis goes to FFmpeg's Vorbis decoder when FFmpeg decodes in blocks (it holds the parity bar against
    libsndfile, which it differs from by 5e-7: scripts/studies/native_opus_vorbis.py): Debian's ffmpeg's samples,
    bit for bit."""
    raw = subprocess.run([FFMPEG, "-nostdin", "-loglevel", "quiet", "-c:a", "vorbis", "-i",
                          str(fixtures / "vorbis.ogg"), "-f", "f32le", "-"], check=True, capture_output=True).stdout
    theirs = decode.from_array(np.frombuffer(raw, np.float32).reshape(-1, 2), 44100).samples
    ours = decode.load(fixtures / "vorbis.ogg")
    assert ours.codec == "vorbis" and len(ours.samples) == len(theirs)
    assert np.array_equal(ours.samples, theirs) == ffmpeg.native()  # libsndfile's differ (the PyAV fallback's path)


def test_opus_in_ogg_through_ffmpeg_is_libopus_as_libsndfile(fixtures):
    """Ogg Opus is upstream's (libsndfile's, libopus in float): where FFmpeg reads it (a chained Ogg), it keeps
    libopus in float, so the same file gives libsndfile's samples up to float rounding (FFmpeg's own decoder
    differs by about 2e-3)."""
    with open(fixtures / "opus.opus", "rb") as file:
        through_ffmpeg = ffmpeg.open_source(file).read()
    through_libsndfile = decode.load(fixtures / "opus.opus")
    assert through_ffmpeg.codec == through_libsndfile.codec == "opus"
    assert len(through_ffmpeg.samples) == len(through_libsndfile.samples)
    assert np.abs(through_ffmpeg.samples - through_libsndfile.samples).max() < 1e-6


def test_bad_input_in_the_new_formats_is_one_line(cli, fixtures, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    whole = (fixtures / "aac.m4a").read_bytes()
    (bad / "truncated.m4a").write_bytes(whole[:len(whole) // 2])  # index (moov) at the end: cut off
    faststart = (fixtures / "aac-faststart.m4a").read_bytes()
    (bad / "truncated-faststart.m4a").write_bytes(faststart[:len(faststart) // 2])  # index first: half the audio
    _ffmpeg(*VIDEO, "-c:v", "libx264", bad / "video-only.mp4")
    (bad / "random.m4a").write_bytes(np.random.default_rng(3).integers(0, 256, 50000, dtype=np.uint8).tobytes())
    (bad / "good.m4a").write_bytes(whole)
    # Ten channels in Vorbis: FFmpeg names no layout for them, and PyAV 12 reading such a frame crashed.
    _ffmpeg(*_sine_channels(10), "-c:a", "libvorbis", bad / "ten-channels.mka")
    # Seventeen PCM channels: PyAV 12 misreads the layout of more than 16 (another count each run).
    _ffmpeg(*_sine_channels(17), "-c:a", "pcm_s16le", bad / "seventeen-channels.mkv")
    # Doubles far past float32's range: tagged (as silence where they overflow), with no numpy warning.
    huge = tmp_path / "huge.f64"
    np.where(np.arange(44100) % 1000 == 0, 1e300, 0.25).astype("<f8").tofile(huge)
    _ffmpeg("-f", "f64le", "-ar", 44100, "-ac", 1, "-i", huge, "-c:a", "pcm_f64le", bad / "huge-doubles.mkv")
    out = tmp_path / "out.jsonl"
    result = cli(bad, "-o", out)
    assert result.returncode == 1
    records = {os.path.basename(r["path"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == ["good.m4a", "huge-doubles.mkv", "random.m4a", "seventeen-channels.mkv",
                               "ten-channels.mka", "truncated-faststart.m4a", "truncated.m4a", "video-only.mp4"]
    assert "error" not in records["good.m4a"]
    assert "error" not in records["huge-doubles.mkv"] and records["huge-doubles.mkv"]["codec"] == "pcm_f64le"
    if ffmpeg.native():  # our C reads any layout: both many-channel files decode (3 s each)
        for name, channels in (("seventeen-channels.mkv", 17), ("ten-channels.mka", 10)):
            assert "error" not in records[name] and records[name]["channels"] == channels, records[name]
            assert abs(records[name]["duration"] - 3.0) < 0.05, records[name]
    else:
        assert records["seventeen-channels.mkv"]["error"] == ("cannot decode pcm_s16le: 17 channels (at most 16 "
                                                              "through FFmpeg: PyAV 12 misreads the layout of more)")
        assert records["ten-channels.mka"]["error"] == ("cannot decode vorbis: 10 channels without a channel "
                                                        "layout (PyAV 12 cannot read them)")
    assert records["random.m4a"]["error"] == ("cannot decode: not audio, or a format audiotag does not know "
                                              "(headerless samples: --raw FORMAT --rate HZ on stdin)")
    assert records["truncated.m4a"]["error"].startswith("cannot decode: ")
    assert records["video-only.mp4"]["error"] == "no audio stream in this mov file (it holds video)"
    salvaged = records["truncated-faststart.m4a"]
    assert "error" not in salvaged and salvaged["duration"] < 6.0, salvaged
    lines = result.stderr.decode().splitlines()
    assert "Traceback" not in result.stderr.decode()
    failing = ["random.m4a", "truncated.m4a", "video-only.mp4"]
    failing += [] if ffmpeg.native() else ["ten-channels.mka", "seventeen-channels.mkv"]
    for name in failing:
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert "Warning" not in result.stderr.decode()
    alone = cli(bad / "huge-doubles.mkv")
    assert alone.returncode == 0 and alone.stderr == b"", alone.stderr


def _sine_channels(count: int) -> list:
    """ffmpeg input options for 3 s of a sine in ``count`` channels."""
    labels = "".join(f"[a{i}]" for i in range(count))
    return ["-f", "lavfi", "-i", "sine=f=440:d=3", "-filter_complex",
            f"[0]asplit={count}{labels};{labels}amerge=inputs={count}"]


def test_all_files_tries_every_name(cli, fixtures, tmp_path):
    """Crawlers save whatever the URL said: --all-files tries every regular file in a walk."""
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    shutil.copy(fixtures / "aac.m4a", crawl / "index.php?id=1")
    (crawl / "robots.txt").write_text("User-agent: *\n")
    default = cli(crawl, "-f", "jsonl")
    assert default.returncode == 1 and "no audio files in this directory" in default.stderr.decode()
    every = cli(crawl, "--all-files", "-f", "jsonl")
    records = {os.path.basename(r["path"]): r for r in map(json.loads, every.stdout.decode().splitlines())}
    assert every.returncode == 1 and sorted(records) == ["index.php?id=1", "robots.txt"]
    assert records["index.php?id=1"]["codec"] == "aac" and "error" in records["robots.txt"]


def test_the_codec_column_in_tables(cli, fixtures):
    result = cli(fixtures / "aac.m4a", "-f", "csv", "-k", 1)
    header, row = result.stdout.decode().splitlines()
    assert header.split(",")[:5] == ["path", "duration", "sample_rate", "channels", "codec"]
    assert row.split(",")[4] == "aac"


def test_an_mp4_on_stdin_past_the_memory_limit_is_refused(monkeypatch):
    """An MP4 is held in memory to be decoded (its index may come last): past the limit, one clear error."""
    import io

    monkeypatch.setattr(decode, "STDIN_MEMORY_LIMIT", 1 << 16)
    data = b"\0\0\0\x20ftypisom" + bytes(1 << 17)
    with pytest.raises(decode.AudioError, match="over 0 MB: save it to a file"):
        decode.open_stdin(io.BytesIO(data))


def test_a_pipe_streams_into_ffmpeg_as_it_arrives(fixtures):
    """A streamable container on a pipe is decoded before the pipe ends: the first block comes while the writer
    still holds back the rest."""
    import threading

    data = (fixtures / "aac.ts").read_bytes()
    read_end, write_end = os.pipe()
    first_read = threading.Event()

    def write():
        with os.fdopen(write_end, "wb") as writer:
            writer.write(data[:len(data) * 3 // 4])
            writer.flush()
            first_read.wait(60)  # the rest only once a block was decoded from what came so far
            writer.write(data[len(data) * 3 // 4:])

    threading.Thread(target=write, daemon=True).start()
    with os.fdopen(read_end, "rb") as pipe:
        stream = decode.open_stdin(pipe)
        blocks = stream.samples()
        first = next(blocks)
        assert not first_read.is_set() and len(first) > 0 and stream.codec == "aac"
        first_read.set()
        total = len(first) + sum(len(block) for block in blocks)
    assert abs(total / decode.TARGET_RATE - 10.05) < 0.05


def test_a_soundfile_written_wav_is_still_libsndfiles(tmp_path):
    """What libsndfile decodes never reaches FFmpeg (upstream parity stays bit for bit)."""
    path = tmp_path / "clip.wav"
    samples = decode.load(AUDIO / "music.wav").samples
    soundfile.write(path, samples, decode.TARGET_RATE, subtype="FLOAT")
    clip = decode.load(path)
    assert clip.codec == "pcm_f32le" and np.array_equal(clip.samples, samples)


def test_one_sample_packets_decode_to_the_wavs_samples(tmp_path):
    """A crafted Matroska of 132,300 one-sample PCM packets: the WAV's samples (its peak memory against the WAV's
    is measured by ``scripts/bench/bench_memory.py --packets``)."""
    tiny, wav = tmp_path / "tiny.mkv", tmp_path / "cut.wav"
    _ffmpeg("-i", MUSIC, "-t", "3", "-af", "asetnsamples=n=1:p=0", "-c:a", "pcm_s16le", tiny)
    _ffmpeg("-i", MUSIC, "-t", "3", "-c:a", "pcm_s16le", wav)
    assert np.array_equal(_samples(tiny), _samples(wav))


def test_ffmpegs_reasons_are_put_in_words(tmp_path):
    """A damaged M4A's warning or error says what is wrong in words, FFmpeg's own text kept after it: never
    FFmpeg's words alone ("Not yet implemented in FFmpeg, patches welcome", "Operation not permitted")."""
    import random

    clean = tmp_path / "clean.m4a"
    _ffmpeg("-i", MUSIC, "-c:a", "aac", "-b:a", "96k", clean)
    data, rng, said = clean.read_bytes(), random.Random(1), set()
    for _ in range(60):
        damaged = bytearray(data)
        start = rng.randrange(0, len(damaged) - 300)
        for offset in range(rng.choice([8, 64, 256])):
            damaged[start + offset] = rng.randrange(256)
        try:
            stream = decode.open_bytes(bytes(damaged))
            stream.read()
            if stream.warning:
                said.add(stream.warning.split(": ", 1)[1])
        except decode.AudioError as error:
            said.add(str(error).split(": ", 1)[1])
    assert said  # the sweep meets damage
    for text in said:
        assert "(FFmpeg: " in text and not text.startswith(("Not yet", "Operation", "Invalid data", "Error number")), \
            text


def test_ffmpeg_formats_are_decoded_by_our_c_not_pyav(fixtures):
    """The set-up builds audiotag/decode/_avblocks.so and FFmpeg's formats go through it: PyAV is never even
    imported (AUDIOTAG_FFMPEG=pyav, or a checkout without the library, falls back to it)."""
    script = ("import sys; from audiotag import decode; from audiotag.decode import ffmpeg; "
              "clip = decode.load(sys.argv[1]); print(ffmpeg.native(), clip.codec, 'av' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script, str(fixtures / "aac.m4a")], check=True, capture_output=True,
                         cwd=REPO, text=True).stdout.split()
    assert out == ["True", "aac", "False"]


def test_a_block_decodes_while_another_thread_holds_pythons_lock(fixtures):
    """`--jobs` threads scale only if FFmpeg's formats decode without Python's lock. The main thread holds the
    lock here (a busy loop, and no forced switch for 100 s) while a second thread decodes its first block: the
    second thread's CPU time still grows. Through PyAV it stops at the first frame, waiting for the lock."""
    stream = decode.open_file(fixtures / "opus.webm")  # libopus: about 30 ms of CPU for the first 5.5 s block
    blocks = stream.samples()
    grown, block = cpu_while_the_lock_is_held(lambda: next(blocks))
    stream.close()
    assert len(block) > 32000 * 5
    assert grown >= 0.005, f"the decoding thread used {grown * 1000:.2f} ms of CPU while this one held the lock"


def _lets_go_of_pythons_lock(action, times: int = 5) -> bool:
    """Whether ``action()`` lets go of Python's lock, asked ``times`` times: a second thread counts whenever it holds
    the lock, and a switch interval of 1 s gives it the lock in that time only if this thread lets go of it (the
    actions, run once first to load what they load, take milliseconds: a slow machine has room)."""
    import threading
    import time

    counted, stop = [0], threading.Event()

    def count():
        while not stop.is_set():
            counted[0] += 1

    action()
    interval = sys.getswitchinterval()
    thread = threading.Thread(target=count)
    sys.setswitchinterval(1)
    try:
        thread.start()
        time.sleep(0.01)  # the counter runs; this thread takes the lock back after at most 1 s, for 1 s
        before = counted[0]
        for _ in range(times):
            action()
        return counted[0] != before
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()


def test_the_quick_steps_of_a_decode_keep_pythons_lock(fixtures, monkeypatch):
    """Beside busy threads each native call that lets go of Python's lock may wait 5 ms to take it back, however
    short the call: the copies that join a stream's blocks (numpy's concatenate lets go of it for large arrays), and
    avblocks' calls that neither read nor decode (making and freeing a context) keep it. An MP4 or Matroska file
    is no SD2 data fork: no resource fork is looked for beside it (two stat calls, each letting go of the lock)."""
    from audiotag.decode import avblocks, sndfile
    from audiotag.decode.stream import joined

    first, second = np.ones(64, np.float32), np.arange(1 << 22, dtype=np.float32)
    assert _lets_go_of_pythons_lock(lambda: np.concatenate([first, second]), times=20)  # the probe sees a release
    assert not _lets_go_of_pythons_lock(lambda: joined(first, second))
    assert np.array_equal(joined(first, second), np.concatenate([first, second]))
    assert np.array_equal(joined(second[:0], first), first)

    def context():
        lib = avblocks._load()  # noqa: SLF001 -- the library's own calls, without an input to read
        lib.avb_close(lib.avb_new(-1, 0, None, -1, avblocks._READ(), 0))  # noqa: SLF001
    assert not _lets_go_of_pythons_lock(context)

    looked = []
    monkeypatch.setattr(sndfile, "_resource_fork_beside", lambda path: looked.append(path) or False)
    for name in ("aac.m4a", "opus.webm"):
        assert decode.load(fixtures / name).codec in ("aac", "opus")
    assert looked == []
    with pytest.raises(decode.AudioError):
        decode.load(REPO / "README.md")  # not a container: looked for, as libsndfile would
    assert looked == [str(REPO / "README.md")]
    monkeypatch.undo()
    # An SD2 file is raw PCM beside its fork: a first sample of 0x0B77 reads as AC-3's 2-byte magic, still SD2
    sd2 = fixtures.parent / "ac3-like.sd2"
    samples = (np.sin(np.arange(32000) / 10) * 0.3).astype(np.float32)
    samples[0] = 0x0B77 / 32768
    soundfile.write(sd2, samples, 32000, format="SD2", subtype="PCM_16")
    assert decode.load(sd2).codec == "pcm_s16be"


@pytest.mark.skipif(not FFMPEG, reason="needs ffmpeg to make the fixtures (scripts/build/install_test_tools.sh)")
def test_ffmpegs_blocks_are_downmixed_and_checked_in_c_as_the_stream_would(tmp_path):
    """avblocks downmixes and checks a block inside its one native call (each numpy step in the stream handed
    Python's lock over): its samples must be the stream's own, bit for bit, on stereo and 6-channel AAC of a real
    recording; a block holding NaN or huge samples comes back undownmixed, for the stream to repair as before."""
    from audiotag.decode import avblocks
    from audiotag.decode.stream import BLOCK_SAMPLES, SAMPLE_LIMIT, Stream, block_frames

    loud = soundfile.read(MUSIC, dtype="float32")[0][:, 0] * np.float32(3e4)  # NaN, infinity, 3e4: all repaired
    loud[1000:1100], loud[5000] = np.nan, np.inf
    soundfile.write(tmp_path / "loud.wav", loud, 44100, subtype="FLOAT")
    sources = {"stereo.m4a": (MUSIC, ["-c:a", "aac"]), "six.m4a": (MUSIC, ["-c:a", "aac", "-ac", "6"]),
               "loud.mka": (tmp_path / "loud.wav", ["-c:a", "pcm_f32le"])}
    for name, (source, options) in sources.items():
        subprocess.run([FFMPEG, "-v", "error", "-i", str(source), *options, str(tmp_path / name)], check=True)
        with open(tmp_path / name, "rb") as file:
            decoder = avblocks.Decoder(file, 1000)
            rate, channels = decoder.first()
            step, raw, mono = block_frames(channels, rate), [], []
            while (block := decoder.read(step, BLOCK_SAMPLES)) is not None:  # as the stream had them before
                raw.append(block[0])
            decoder.close()
            file.seek(0)
            decoder = avblocks.Decoder(file, 1000)
            while (block := decoder.read(step, BLOCK_SAMPLES, (rate, channels, SAMPLE_LIMIT))) is not None:
                mono.append(block[0])
            decoder.close()
        expected = Stream(iter(raw), rate, channels).read().samples
        got = decode.open_file(tmp_path / name).read().samples
        assert np.array_equal(got, expected), name
        assert [block.ndim for block in mono] == ([2] if name == "loud.mka" else [1] * len(raw)), name
    assert np.isnan(raw[0]).any() and np.isfinite(got).all()  # the NaN was repaired
