"""WARC inputs and archives on stdin (issue 20, item 1): a crawl's audio and video responses are tagged as the same
bytes in files are, with their URL and record id; HTML and other records are skipped; a WARC cut short is one
error; --resume works inside a WARC; a tar, zip or WARC piped in gives the records of the same archive named as a
path. Fixtures are built here with warcio's own writer from ../shared/audio and files ffmpeg makes from them."""

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from compare_records import differences
from conftest import AUDIO, CLI_COMMANDS, Cli

OWN = ("path", "archive", "member", "key", "url", "warc_record_id")  # what differs from the unpacked file's record
TRUNCATED = "the WARC ends inside this record (truncated)"


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(CLI_COMMANDS["python"], tmp_path)


def _records(stdout: bytes) -> list:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def _chunked(data: bytes, size: int = 7000) -> bytes:
    """HTTP/1.1 chunked transfer encoding."""
    pieces = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(pieces) + b"0\r\n\r\n"


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> dict:
    """files/: a WAV, an MP3, a FLAC and an MP4 video (AAC); crawl.warc.gz and crawl.warc: a warcinfo record, then
    per file a request and a response (plain, chunked, gzip-encoded, both), a FLAC resource record, HTML
    responses (one gzip-encoded), and a last WAV response; cut.warc.gz and cut.warc: the same, cut inside that
    last response. Also shard.tar/.tar.gz/.zip of the files. Returns {"top", "urls": url -> file name, "ids":
    {".warc.gz" or ".warc": url -> WARC-Record-ID}, "last": the url of the record cut short}."""
    top = tmp_path_factory.mktemp("warc")
    files = top / "files"
    files.mkdir()
    shutil.copyfile(AUDIO / "speech.wav", files / "speech.wav")
    shutil.copyfile(AUDIO / "extra/esc10-babycry-1-60997-B.mp3", files / "babycry.mp3")
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(AUDIO / "music.wav"), str(files / "music.flac")], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=blue:s=64x48:r=10:d=6", "-i",
                    str(AUDIO / "typing.wav"), "-shortest", "-c:v", "mpeg4", "-c:a", "aac", "-b:a", "96k",
                    str(files / "typing.mp4")], check=True)
    html = b"<!doctype html><html><body>" + b"<p>a crawled page</p>" * 400 + b"</body></html>"
    responses = [  # url, file or body, Content-Type, transfer encodings
        ("http://example.org/index.html", html, "text/html; charset=utf-8", ()),
        ("http://example.org/speech.wav", "speech.wav", "audio/wav", ("chunked",)),
        ("http://example.org/cry", "babycry.mp3", "audio/mpeg", ("gzip",)),
        ("http://example.org/music.bin", "music.flac", "application/octet-stream", ()),  # told by its bytes
        ("http://example.org/page2.html", html, "text/html", ("gzip",)),
        ("http://example.org/typing.mp4", "typing.mp4", "video/mp4", ("gzip", "chunked")),
    ]
    urls, ids = {}, {}
    for compressed in (True, False):
        suffix = ".warc.gz" if compressed else ".warc"
        ids[suffix] = {}
        buffer = io.BytesIO()
        writer = WARCWriter(buffer, gzip=compressed)
        writer.write_record(writer.create_warcinfo_record("crawl.warc", {"software": "test_warc.py"}))

        def response(url, body, content_type, encodings):
            headers = [("Content-Type", content_type)]
            if "gzip" in encodings:
                body, headers = gzip.compress(body), headers + [("Content-Encoding", "gzip")]
            if "chunked" in encodings:
                body, headers = _chunked(body), headers + [("Transfer-Encoding", "chunked")]
            request = writer.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"))
            writer.write_record(request)
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=StatusAndHeaders(
                "200 OK", headers + [("Content-Length", str(len(body)))], protocol="HTTP/1.1"))
            writer.write_record(record)
            return record.rec_headers.get_header("WARC-Record-ID")

        for url, source, content_type, encodings in responses:
            body = source if isinstance(source, bytes) else (files / source).read_bytes()
            identifier = response(url, body, content_type, encodings)
            if not isinstance(source, bytes):
                urls[url], ids[suffix][url] = source, identifier
        resource = writer.create_warc_record("urn:example:recording/music.flac", "resource",
                                             payload=io.BytesIO((files / "music.flac").read_bytes()),
                                             warc_content_type="audio/flac")
        writer.write_record(resource)
        urls[resource.rec_headers.get_header("WARC-Target-URI")] = "music.flac"
        ids[suffix][resource.rec_headers.get_header("WARC-Target-URI")] = \
            resource.rec_headers.get_header("WARC-Record-ID")
        whole = buffer.getvalue()
        last = "http://example.org/last.wav"
        ids[suffix][last] = response(last, (files / "speech.wav").read_bytes(), "audio/x-wav", ())
        (top / f"crawl{suffix}").write_bytes(buffer.getvalue())
        (top / f"cut{suffix}").write_bytes(buffer.getvalue()[:len(whole) + 200_000])
    urls[last] = "speech.wav"
    for name, mode in (("shard.tar", "w"), ("shard.tar.gz", "w:gz")):
        with tarfile.open(top / name, mode) as tar:
            for path in sorted(files.iterdir()):
                tar.add(path, path.name)
    with zipfile.ZipFile(top / "shard.zip", "w") as archive:
        for path in sorted(files.iterdir()):
            archive.write(path, path.name, compress_type=zipfile.ZIP_DEFLATED)
    return {"top": top, "urls": urls, "ids": ids, "last": last}


@pytest.fixture(scope="module")
def unpacked(crawl) -> dict:
    """file name -> the record of the file itself (one run, --hash)."""
    run = subprocess.run([*CLI_COMMANDS["python"], str(crawl["top"] / "files"), "--hash", "-f", "jsonl"],
                         capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return {Path(r["path"]).name: r for r in _records(run.stdout)}


def _same_as_file(rec: dict, theirs: dict) -> list:
    return differences({k: v for k, v in rec.items() if k not in OWN},
                       {k: v for k, v in theirs.items() if k not in OWN}, 1e-6)


@pytest.mark.parametrize("name", ["cut.warc.gz", "cut.warc"])
def test_a_warc_s_audio_and_video_are_tagged_as_the_files(cli, crawl, unpacked, name):
    warc = str(crawl["top"] / name)
    result = cli(warc, "--hash", "-f", "jsonl")
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    records = _records(result.stdout)
    tagged, failed = [r for r in records if "error" not in r], [r for r in records if "error" in r]
    # every audio or video response and resource, in file order; no HTML, request or warcinfo record
    assert [r["url"] for r in records] == [*crawl["urls"]]
    for rec in records:
        assert rec["archive"] == warc and rec["warc_record_id"] == crawl["ids"][name[3:]][rec["url"]]
        assert rec["path"].startswith(warc + "#") and rec["path"][len(warc) + 1:].isdigit()
    assert len({r["path"] for r in records}) == len(records)
    for rec in tagged:  # the scores, sha256 and codec of the same bytes in a file (encodings undone)
        assert _same_as_file(rec, unpacked[crawl["urls"][rec["url"]]]) == [], rec["url"]
    assert {r["codec"] for r in tagged} >= {"pcm_s16le", "mp3", "flac", "aac"}
    # the record the file ends inside: one error record, one line on stderr
    assert [(r["url"], r["error"]) for r in failed] == [(crawl["last"], TRUNCATED)]
    assert [line for line in result.stderr.decode().splitlines() if "truncated" in line] == \
        [f"audiotag: {failed[0]['path']}: {TRUNCATED}"]


@pytest.mark.parametrize("damage, expected", [
    ("not a warc", "not a WARC file (it does not begin with a WARC record)"),
    ("header cut", "a damaged record at offset {offset}: its header cannot be read"),
])
def test_a_damaged_warc_is_one_line_not_a_traceback(cli, crawl, tmp_path, damage, expected):
    data = (crawl["top"] / "crawl.warc").read_bytes()
    first = _records(cli(crawl["top"] / "crawl.warc", "-f", "jsonl", "-k", 1).stdout)
    offset = int(first[1]["path"].rpartition("#")[2])  # the second audio record: cut 100 bytes into its header
    (tmp_path / "bad.warc").write_bytes(b"<html>" * 100 if damage == "not a warc" else data[:offset + 100])
    result = cli(tmp_path / "bad.warc", "-f", "jsonl", "-k", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    records = _records(result.stdout)
    message = f"cannot read the archive: {expected.format(offset=offset)}"
    assert records[-1] == {"path": str(tmp_path / "bad.warc"), "archive": str(tmp_path / "bad.warc"), "error": message}
    if damage == "header cut":  # the record before the damage is tagged
        assert [r["url"] for r in records[:-1]] == [first[0]["url"]] and "error" not in records[0]
    assert result.stderr.decode().count("cannot read the archive") == 1


def test_payloads_told_by_their_bytes(crawl):
    """A payload whose Content-Type says nothing is tagged when its bytes open audio or video, not when they open
    a page or an image (WebP is RIFF, AVIF is ISO-BMFF, as WAV and MP4 are)."""
    from audiotag.batch.warc import is_media

    files = crawl["top"] / "files"
    for name in ("speech.wav", "babycry.mp3", "music.flac", "typing.mp4"):
        assert is_media("application/octet-stream", (files / name).read_bytes()[:8192]), name
    for head in (b"<!doctype html><html>", b"RIFF\x10\0\0\0WEBPVP8 ", b"\0\0\0\x1cftypavif\0\0\0\0",
                 b"\xff\xd8\xff\xe0\0\x10JFIF\0" + bytes(8000), b"\x89PNG\r\n\x1a\n" + bytes(100)):
        assert not is_media("application/octet-stream", head), head[:12]
    assert is_media("audio/mpeg", b"") and not is_media("audio/x-mpegurl", b"#EXTM3U\n")


def test_resume_inside_a_warc_skips_the_records_recorded(cli, crawl):
    warc, out = str(crawl["top"] / "crawl.warc.gz"), crawl["top"] / "resume.jsonl"
    first = _records(cli(warc, "-f", "jsonl", "-k", 1).stdout)
    assert len(first) == 6
    seeded = [dict(r) for r in first[:3]]
    seeded[1]["duration"] = 12345.0  # kept, not tagged again
    out.write_text("".join(json.dumps(r) + "\n" for r in seeded) + '{"path": "cr')
    result = cli(warc, "-f", "jsonl", "-k", 1, "-o", out, "--resume")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [r["path"] for r in first]  # each record once, in order
    assert records[1]["duration"] == 12345.0 and records[3:] == first[3:]
    assert b"3 inputs" in result.stderr


def test_dedup_tags_a_payload_once_across_records_and_files(cli, crawl):
    """speech.wav is in the WARC twice (chunked, then plain) and beside it as a file: tagged once; each copy's
    record keeps its own url and record id, and the file's carries none of the WARC record's fields."""
    warc, out = crawl["top"] / "crawl.warc.gz", crawl["top"] / "dedup.jsonl"
    result = cli(warc, crawl["top"] / "files" / "speech.wav", "--dedup", "-k", 1, "-f", "jsonl", "-o", out)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    first = next(r for r in records if r.get("url") == "http://example.org/speech.wav")
    copies = [r for r in records if r.get("duplicate_of") == first["path"]]
    assert [r["path"] for r in copies] == [records[-2]["path"], str(crawl["top"] / "files" / "speech.wav")]
    assert sum("duplicate_of" in r for r in records) == 3  # and the FLAC resource: the bytes of music.bin
    assert all(r["duplicate_of"] == first["path"] and r["tags"] == first["tags"] for r in copies)
    assert (copies[0]["url"], copies[0]["warc_record_id"]) == (crawl["last"], crawl["ids"][".warc.gz"][crawl["last"]])
    assert not {"archive", "url", "warc_record_id"} & set(copies[1])


def test_parquet_rows_carry_the_url_and_record_id(cli, crawl, tmp_path):
    pytest.importorskip("pyarrow")
    from audiotag.batch import parquet

    warc = crawl["top"] / "crawl.warc.gz"
    lines = _records(cli(warc, "-f", "jsonl", "-k", 2).stdout)
    result = cli(warc, "-f", "parquet", "-o", tmp_path / "tags", "-k", 2)
    assert result.returncode == 0, result.stderr
    rows = parquet.read_records(str(tmp_path / "tags"))
    assert [{k: r[k] for k in OWN if k in r} for r in rows] == [{k: r[k] for k in OWN if k in r} for r in lines]
    assert all(r["url"] and r["warc_record_id"] for r in rows)


def test_a_record_that_crashes_the_decoder_fails_alone(cli, crawl, tmp_path):
    """The watched worker enters the WARC at each record's offset: a crash fails that record only."""
    from test_archives import READ_LIBRARY  # crashes a watched worker reading bytes that hold the marker

    (tmp_path / "crash.c").write_text(READ_LIBRARY)
    library = tmp_path / "libreadcrash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(tmp_path / "crash.c"), "-ldl"],
                   check=True)
    speech = (AUDIO / "speech.wav").read_bytes()
    middle = len(speech) // 2
    poisoned = speech[:middle] + b"CRASHME-MEMBER" + speech[middle + 14:]  # a few samples of noise, as audio
    with open(tmp_path / "crash.warc", "wb") as file:  # plain: the marker is in the bytes a worker reads
        writer = WARCWriter(file, gzip=False)
        for index in range(5):
            record = writer.create_warc_record(
                f"http://example.org/{index}.wav", "response", payload=io.BytesIO(poisoned if index == 2 else speech),
                http_headers=StatusAndHeaders("200 OK", [("Content-Type", "audio/wav")], protocol="HTTP/1.1"))
            writer.write_record(record)
    result = cli(tmp_path / "crash.warc", "--jobs", 2, "-k", 1, "-f", "jsonl",
                 env={"LD_PRELOAD": str(library), "READ_CRASH": "segv"})
    assert result.returncode == 1, result.stderr
    records = _records(result.stdout)
    assert [r["url"] for r in records] == [f"http://example.org/{index}.wav" for index in range(5)]
    assert [(r["url"], r["error"]) for r in records if "error" in r] == \
        [("http://example.org/2.wav", "decoder crashed (SIGSEGV)")]
    assert all(r["tags"][0]["label"] == "Speech" for r in records if "error" not in r)


@pytest.mark.parametrize("name, option", [("shard.tar", ()), ("shard.tar.gz", ("--archive", "tar")), ("shard.zip", ()),
                                          ("crawl.warc.gz", ()), ("crawl.warc", ("--archive", "warc")),
                                          ("cut.warc.gz", ()), ("cut.warc", ())])
def test_an_archive_on_stdin_gives_the_records_of_the_archive_named(cli, crawl, name, option):
    """The same records, hashes included; a WARC cut inside its last record: that record is the same one error
    (on stdin it was tagged from what came, with the hash of those bytes, then the archive was an error)."""
    archive = crawl["top"] / name
    named = _records(cli(archive, "--hash", "-f", "jsonl").stdout)
    piped = cli("-", *option, "--hash", "-f", "jsonl", stdin=archive.read_bytes())
    assert piped.returncode == (1 if name.startswith("cut") else 0) and b"Traceback" not in piped.stderr, piped.stderr
    records = _records(piped.stdout)
    assert len(records) == len(named) >= 4
    if name.startswith("cut"):
        assert (records[-1]["url"], records[-1].get("error")) == (crawl["last"], TRUNCATED)
        assert named[-1] == {**records[-1], "path": named[-1]["path"], "archive": named[-1]["archive"]}
        records, named = records[:-1], named[:-1]
    for mine, theirs in zip(records, named):
        assert mine["archive"] == "-" and "error" not in mine
        assert mine["path"] == theirs["path"].replace(str(archive), "-", 1)
        assert {k: mine[k] for k in OWN[2:] if k in mine} == {k: theirs[k] for k in OWN[2:] if k in theirs}
        assert _same_as_file(mine, theirs) == [], mine["path"]  # scores and the member's sha256 too


@pytest.mark.parametrize("name", ["cut.warc", "cut.warc.gz"])
def test_a_warc_cut_inside_a_records_header_is_said_and_the_other_inputs_kept(cli, crawl, tmp_path, name):
    """Cut inside the last record's header: a few bytes in, warcio's parser raised AttributeError and the whole run
    ended in a traceback, other inputs' records lost; further in, warcio ended without a word and the run exited 0.
    Now the archive's error names the record, named and piped, and the other input is tagged."""
    data = (crawl["top"] / name).read_bytes()
    offset = int(_records(cli(crawl["top"] / name, "-f", "jsonl", "-k", 1).stdout)[-1]["path"].rpartition("#")[2])
    errors = (f"cannot read the archive: it ends inside the record at offset {offset} (truncated)",
              f"cannot read the archive: a damaged record at offset {offset}: its header cannot be read")  # gzip's
    for into in (8, 20, 120, 200, 300):
        cut = tmp_path / f"into{into}{name[3:]}"
        cut.write_bytes(data[:offset + into])
        named = cli(cut, AUDIO / "speech.wav", "-f", "jsonl", "-k", 1)
        piped = cli("-", "-f", "jsonl", "-k", 1, stdin=cut.read_bytes())
        for result in (named, piped):
            assert result.returncode == 1 and b"Traceback" not in result.stderr, (into, result.stderr[-500:])
        records = _records(named.stdout)
        said = [r.get("error") for r in records if r.get("archive") == str(cut) and "url" not in r]
        assert len(said) == 1 and said[0] in errors, (into, said)
        assert records[-1]["path"] == str(AUDIO / "speech.wav") and "error" not in records[-1]
        assert _records(piped.stdout)[-1] == {"path": "-", "archive": "-", "error": said[0]}, into


@pytest.mark.parametrize("name, ending", [("crawl.warc", b"\r\n\r\n"), ("crawl.warc.gz", b"\r\n"),
                                          ("crawl.warc.gz", gzip.compress(b"")),
                                          ("crawl.warc.gz", gzip.compress(b"\r\n\r\n"))])
def test_line_ends_or_empty_gzip_members_after_the_last_record_are_no_cut(cli, crawl, tmp_path, name, ending):
    """Some writers end a WARC with line ends or an empty gzip member: not a record the file ends inside (a review
    found them called "truncated", and two of them a traceback before)."""
    clean = _records(cli(crawl["top"] / name, "-f", "jsonl", "-k", 1).stdout)
    ended = tmp_path / name
    ended.write_bytes((crawl["top"] / name).read_bytes() + ending)
    for source, stdin in ((ended, b""), ("-", ended.read_bytes())):
        result = cli(source, "-f", "jsonl", "-k", 1, stdin=stdin)
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
        assert [(r["url"], r["tags"]) for r in _records(result.stdout)] == [(r["url"], r["tags"]) for r in clean]


def test_empty_gzip_members_before_the_first_record_are_passed_by_on_stdin(cli, crawl, tmp_path):
    """A .warc.gz that begins with empty gzip members (as some writers begin one) was read when named, and on stdin
    refused as "gzip-compressed data, not audio": its first bytes did not decompress to a WARC record. Damaged
    after them, it is read on past the damage, named and piped."""
    clean = _records(cli(crawl["top"] / "crawl.warc.gz", "-f", "jsonl", "-k", 1).stdout)
    begun = tmp_path / "begun.warc.gz"
    begun.write_bytes(gzip.compress(b"") * 2 + (crawl["top"] / "crawl.warc.gz").read_bytes())
    named = cli(begun, "-f", "jsonl", "-k", 1)
    piped = cli("-", "-f", "jsonl", "-k", 1, stdin=begun.read_bytes())
    assert named.returncode == piped.returncode == 0 and b"Traceback" not in piped.stderr, piped.stderr
    assert [(r["url"], r["tags"]) for r in _records(piped.stdout)] == [(r["url"], r["tags"]) for r in clean]
    assert [r["path"].split("#")[1] for r in _records(piped.stdout)] == \
        [r["path"].split("#")[1] for r in _records(named.stdout)]
    # Damaged after them (the speech response's CRC-32): named, it was taken for a WARC gzipped whole (an empty
    # first member ends before its first record) and the records after the damage were lost.
    from warcio.archiveiterator import ArchiveIterator

    iterator, ends = ArchiveIterator(io.BytesIO(begun.read_bytes())), {}
    for record in iterator:
        ends[record.rec_headers.get_header("WARC-Target-URI"), record.rec_type] = iterator.offset
        record.raw_stream.read()
    damaged = bytearray(begun.read_bytes())
    speech = ends["http://example.org/speech.wav", "response"]
    damaged[min(offset for offset in ends.values() if offset > speech) - 8] ^= 0xFF
    begun.write_bytes(damaged)
    for source, stdin in ((begun, b""), ("-", bytes(damaged))):
        records = _records(cli(source, "-f", "jsonl", "-k", 1, stdin=stdin).stdout)
        assert [r.get("url") for r in records] == [r["url"] for r in clean] + [None], records
        assert "error" in records[[r["url"] for r in clean].index("http://example.org/speech.wav")]
        assert "(the records after it were read on from offset" in records[-1]["error"], records[-1]


def test_records_after_a_truncated_record_in_a_warc_gz_are_tagged(cli, crawl, tmp_path):
    """A .warc.gz record whose gzip member ends before its Content-Length does: that record is one error, and the
    records after it are read (they were dropped without a word). With --in-process on stdin it is tagged as far
    as its decoder went, and said: without --hash too (its decoder stops at its WAV data's end, before the cut,
    and nothing read the rest before its record was made: it had no word)."""
    from warcio.archiveiterator import ArchiveIterator

    data = (crawl["top"] / "crawl.warc.gz").read_bytes()
    iterator = ArchiveIterator(io.BytesIO(data))
    offsets = []
    for record in iterator:
        offsets.append((iterator.offset, record.rec_type, record.rec_headers.get_header("WARC-Target-URI")))
        record.raw_stream.read()
    index = next(i for i, (_, kind, url) in enumerate(offsets) if kind == "response" and url.endswith("speech.wav"))
    start, end = offsets[index][0], offsets[index + 1][0]
    raw = gzip.decompress(data[start:end])
    length = re.search(rb"Content-Length: (\d+)", raw)
    raw = raw.replace(length.group(0), b"Content-Length: %d" % (int(length.group(1)) + 1000), 1)
    (tmp_path / "over.warc.gz").write_bytes(data[:start] + gzip.compress(raw) + data[end:])
    data = (tmp_path / "over.warc.gz").read_bytes()
    for source, stdin, mode, hashed in ((tmp_path / "over.warc.gz", b"", (), True), ("-", data, (), True),
                                        ("-", data, ("--in-process",), True), ("-", data, ("--in-process",), False)):
        result = cli(source, "-f", "jsonl", "-k", 1, *(["--hash"] if hashed else []), *mode, stdin=stdin)
        assert b"Traceback" not in result.stderr, result.stderr
        records = _records(result.stdout)
        assert [r["url"] for r in records] == list(crawl["urls"])
        cut = [r for r in records if r["url"] == "http://example.org/speech.wav"]
        assert all(("sha256" in r) == hashed for r in records if r not in cut) and "sha256" not in cut[0]
        if mode:  # streamed to its decoder: tagged as far as it went, known cut then or once read to its end
            assert result.returncode == 0 and TRUNCATED in cut[0]["warning"], cut
        else:
            assert result.returncode == 1 and [r.get("error") for r in records if "error" in r] == [TRUNCATED]


@pytest.mark.parametrize("name", ["crawl.warc.gz", "cut.warc"])
def test_audiotag_rays_rows_of_a_warc_are_the_cli_records(cli, crawl, name):
    """audiotag-ray's rows of a WARC (read as a stream, as an archive on stdin) are the CLI's records of the named
    file; the record the WARC ends inside is the same error (Ray tagged it from what came, with that hash)."""
    from audiotag import TagOptions, distributed

    archive = crawl["top"] / name
    expected = _records(cli(archive, "--hash", "-f", "jsonl").stdout)
    rows = distributed.TagBatch(TagOptions(hash=True)).rows(str(archive), archive.read_bytes())
    found = [distributed.record(row) for row in rows]
    assert [r["path"] for r in found] == [r["path"] for r in expected]
    for mine, theirs in zip(found, expected):
        assert mine.get("error") == theirs.get("error") and mine.get("sha256") == theirs.get("sha256"), mine
        assert differences(mine, theirs, 1e-6) == [], mine["path"]
    assert ("error" in found[-1]) == name.startswith("cut")


def test_a_damaged_archive_on_stdin_is_said_in_words(cli, crawl):
    data = (crawl["top"] / "shard.tar.gz").read_bytes()
    result = cli("-", "-f", "jsonl", "-k", 1, stdin=data[:len(data) // 2])
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    records = _records(result.stdout)
    assert "error" not in records[0]  # the members before the cut are tagged
    assert records[-1] == {"path": "-", "archive": "-",
                           "error": "cannot read the archive: it is cut short (truncated)"}
    assert b"internal error" not in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_csv_rows_carry_the_records_archive_fields_and_resume(cli, crawl, tmp_path):
    """A table of a run that may tag an archive's members has their columns: each row's archive, url and record
    id are its JSON record's (a duplicate's its own, not its first copy's; a file's empty), and --resume carries
    on in them. A table written without them is not resumed with an archive operand (exit 2, one line)."""
    import csv

    from audiotag.records import table_columns

    warc, speech = crawl["top"] / "crawl.warc.gz", crawl["top"] / "files" / "speech.wav"
    options = [warc, speech, "--dedup", "-k", 1]
    assert cli(*options, "-f", "jsonl", "-o", tmp_path / "tags.jsonl").returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    out = tmp_path / "tags.csv"
    result = cli(*options, "-f", "csv", "-o", out)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as table:
        header, *rows = list(csv.reader(table))
    assert tuple(header) == table_columns(hashed=True, archived=True)
    assert [row[0] for row in rows] == [rec["path"] for rec in lines]
    for row, rec in zip(rows, lines):
        cells = dict(zip(header, row))
        assert [cells[k] for k in ("archive", "member", "key", "url", "warc_record_id", "duplicate_of")] == \
            [rec.get(k, "") for k in ("archive", "member", "key", "url", "warc_record_id", "duplicate_of")], rec
    copy = next(dict(zip(header, row)) for row in rows if row[0] == lines[-2]["path"])
    assert copy["duplicate_of"] and copy["url"] == crawl["last"]  # its own url, not the first copy's
    whole = out.read_bytes()
    out.write_bytes(whole[:whole.rindex(b"\n", 0, len(whole) - 1) + 1])  # the last record lost
    resumed = cli(*options, "-f", "csv", "-o", out, "--resume")
    assert resumed.returncode == 0 and b"1 input" in resumed.stderr, resumed.stderr
    assert out.read_bytes() == whole
    plain = tmp_path / "plain.csv"
    assert cli(speech, "-f", "csv", "-k", 1, "-o", plain).returncode == 0
    refused = cli(warc, speech, "-f", "csv", "-k", 1, "-o", plain, "--resume")
    assert refused.returncode == 2 and b"archive columns" in refused.stderr and b"Traceback" not in refused.stderr


@pytest.fixture(scope="module")
def long_crawl(crawl) -> Path:
    """long.warc: a WAV response, then a 40 s WAV response (2.6 MB: over what a listing carries to a worker), then
    a FLAC resource record."""
    top = crawl["top"]
    long_wav = top / "long.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "3", "-i", str(AUDIO / "speech.wav"), "-c", "copy",
                    str(long_wav)], check=True)
    with open(top / "long.warc", "wb") as file:
        writer = WARCWriter(file, gzip=False)
        for url, path in (("http://example.org/a.wav", AUDIO / "music.wav"), ("http://example.org/long.wav", long_wav)):
            writer.write_record(writer.create_warc_record(
                url, "response", payload=io.BytesIO(path.read_bytes()),
                http_headers=StatusAndHeaders("200 OK", [("Content-Type", "audio/wav")], protocol="HTTP/1.1")))
        flac = io.BytesIO((top / "files" / "music.flac").read_bytes())
        writer.write_record(writer.create_warc_record("urn:example:music.flac", "resource", payload=flac,
                                                      warc_content_type="audio/flac"))
    return top / "long.warc"


def _record_offsets(plain: bytes) -> list:
    """Where each record of a plain WARC begins, and its end."""
    from warcio.archiveiterator import ArchiveIterator

    iterator, offsets = ArchiveIterator(io.BytesIO(plain)), []
    for record in iterator:
        offsets.append(iterator.offset)
        record.raw_stream.read()
    return offsets + [len(plain)]


def _compressed(plain: bytes, name: str) -> bytes:
    """A WARC compressed whole as ``name`` says: gzip's one stream; zstd's (``dictionary``: IIPC's .warc.zst, a
    dictionary in a skippable frame, then a frame per record made with it); ``bgzf``: gzip members of 64 kB, as
    bgzip writes them (a record spans several)."""
    from backports import zstd

    if "bgzf" in name:
        return b"".join(gzip.compress(plain[i:i + 65280]) for i in range(0, len(plain), 65280))
    if name.endswith(".gz"):
        return gzip.compress(plain)
    if "dictionary" not in name:
        return subprocess.run(["zstd", "-q", "-c"], input=plain, capture_output=True, check=True).stdout
    offsets = _record_offsets(plain)
    records = [plain[a:b] for a, b in zip(offsets, offsets[1:])]
    dictionary = zstd.train_dict([r[i:i + 2000] for r in records for i in range(0, 40_000, 2000)], 8192)
    return (0x184D2A5D).to_bytes(4, "little") + len(dictionary.dict_content).to_bytes(4, "little") + \
        dictionary.dict_content + b"".join(zstd.compress(r, zstd_dict=dictionary) for r in records)


@pytest.mark.parametrize("name", ["long.warc.gz", "long.warc.zst", "zstd-named.warc", "dictionary.warc.zst",
                                  "bgzf.warc.gz"])
def test_a_warc_compressed_whole_gives_the_plain_warcs_records(cli, long_crawl, tmp_path, name):
    """``gzip crawl.warc`` (one gzip stream, not a member per record) gave its first record, then "a damaged record";
    a zstd-compressed WARC was refused when named, read on stdin; one with a dictionary (IIPC's .warc.zst) refused
    everywhere. Now each gives the plain WARC's records, named by their offsets in the decompressed bytes (the
    plain file's), hashes too: named (the 2.6 MB record entered by a worker decompressing up to it, the others
    carried from the listing), piped, and cut inside its last record."""
    plain = long_crawl.read_bytes()
    packed = _compressed(plain, name)
    (tmp_path / name).write_bytes(packed)
    expected = _records(cli(long_crawl, "--hash", "-f", "jsonl").stdout)
    assert len(expected) == 3 and all("error" not in r for r in expected)
    named = cli(tmp_path / name, "--hash", "-f", "jsonl")
    piped = cli("-", "--hash", "-f", "jsonl", stdin=packed)
    for result, archive in ((named, str(tmp_path / name)), (piped, "-")):
        assert result.returncode == 0, result.stderr
        records = _records(result.stdout)
        assert [r["path"] for r in records] == [r["path"].replace(str(long_crawl), archive) for r in expected]
        for mine, theirs in zip(records, expected):
            assert differences({**mine, "path": "", "archive": ""}, {**theirs, "path": "", "archive": ""}, 1e-6) == []
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(packed[:len(packed) - 200_000])
    records = _records(cli(cut, "--hash", "-f", "jsonl").stdout)
    assert [r.get("error") for r in records] == [None, None, TRUNCATED]


def test_a_warc_gzipped_whole_after_its_first_record_is_one_error_that_says_what_reads_it(cli, crawl, tmp_path):
    """Its first record has a gzip member of its own, the rest one more: the error says so and how to read it,
    and what it says reads it."""
    from warcio.archiveiterator import ArchiveIterator

    data = (crawl["top"] / "crawl.warc.gz").read_bytes()
    iterator = ArchiveIterator(io.BytesIO(data))
    next(iter(iterator)).raw_stream.read()
    second = next(iter(iterator)) and iterator.offset
    mixed = tmp_path / "mixed.warc.gz"
    mixed.write_bytes(data[:second] + gzip.compress(gzip.decompress(data[second:])))
    result = cli(mixed, "-f", "jsonl", "-k", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    assert _records(result.stdout) == [{"path": str(mixed), "archive": str(mixed), "error": (
        f"cannot read the archive: the gzip member at offset {second} holds more than one record (gzipped whole, "
        "not a record at a time): read the WARC decompressed (zcat FILE | audiotag - --archive warc)")}]
    zcat = cli("-", "--archive", "warc", "-f", "jsonl", "-k", 1, stdin=gzip.decompress(mixed.read_bytes()))
    assert zcat.returncode == 0 and [r["url"] for r in _records(zcat.stdout)] == list(crawl["urls"])


@pytest.mark.parametrize("name", ["cut.warc.gz", "cut.warc.zst"])
def test_a_warc_compressed_whole_cut_between_records_is_said(cli, long_crawl, tmp_path, name):
    """Its data end after a whole record, its compressed stream's end lost (a download cut short): the records
    before are tagged, then the archive's error says it is cut; before, the run ended clean, the records after
    the cut lost without a word."""
    plain = long_crawl.read_bytes()
    packed = _compressed(plain[:_record_offsets(plain)[2]], name)[:-8 if name.endswith(".gz") else -4]  # no trailer
    for source, stdin in ((tmp_path / name, b""), ("-", packed)):
        (tmp_path / name).write_bytes(packed)
        result = cli(source, "-f", "jsonl", "-k", 1, stdin=stdin)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        records = _records(result.stdout)
        assert [r["url"] for r in records[:2]] == ["http://example.org/a.wav", "http://example.org/long.wav"]
        assert "error" not in records[0] and "error" not in records[1]
        assert records[2:] == [{"path": str(source), "archive": str(source),
                                "error": "cannot read the archive: it is cut short (truncated)"}]


@pytest.mark.parametrize("layout", ["gzipped whole", "a gzip member per record"])
def test_damage_inside_a_records_gzip_data_is_its_error_named_and_piped(cli, long_crawl, tmp_path, layout):
    """A byte changed inside the second record's compressed data. Gzipped whole: named, the listing lost that
    record (the archive's error alone). A member per record: warcio wrote zlib's error on stderr once per block
    (hundreds of lines), called the record cut and lost the records after it without a word. Now, in both, the
    record has its own error and the archive's error says where, named and piped alike, in a few lines; a member
    per record is read on from the next member (the FLAC record after the damage is tagged)."""
    import zlib

    plain = long_crawl.read_bytes()
    offsets = _record_offsets(plain)
    if layout == "gzipped whole":
        whole, start = gzip.compress(plain, 1), 0
    else:
        members = [gzip.compress(plain[a:b], 1) for a, b in zip(offsets, offsets[1:])]
        whole, start = b"".join(members), len(members[0])

    def damaged_at(position: int):
        """The file with one byte changed there, if zlib then fails inside the second record."""
        packed = bytearray(whole)
        packed[position] ^= 0xFF
        decompressor, given = zlib.decompressobj(31), 0
        try:
            for at in range(start, len(packed), 1024):
                given += len(decompressor.decompress(bytes(packed[at:at + 1024])))
                if decompressor.eof:
                    return None
        except zlib.error:
            return bytes(packed) if start or offsets[1] < given < offsets[2] else None
        return None

    packed = next(p for p in map(damaged_at, range(start + 20_000 if start else len(whole) // 2, len(whole), 997))
                  if p is not None)  # past the payload's first 8 kB (damage there: the archive's error alone, named
    # by the record's offset, as the record is not known to be audio)
    (tmp_path / "damaged.warc.gz").write_bytes(packed)
    named = cli(tmp_path / "damaged.warc.gz", "-f", "jsonl", "-k", 1)
    piped = cli("-", "-f", "jsonl", "-k", 1, stdin=packed)
    assert len(named.stderr.splitlines()) == 3 and b"Traceback" not in named.stderr, named.stderr[:2000]
    records, theirs = _records(named.stdout), _records(piped.stdout)
    read_on = ["urn:example:music.flac"] if start else []
    assert [r.get("url") for r in records] == ["http://example.org/a.wav", "http://example.org/long.wav", *read_on,
                                               None]
    assert records[1]["error"].startswith("the archive is damaged: ")
    assert records[-1]["error"].startswith("cannot read the archive: ") and str(offsets[1] if not start else start) \
        in records[-1]["error"]
    if start:  # read on from the third record's member
        assert "error" not in records[2] and records[2]["tags"][0]["label"] == "Music", records[2]
        assert records[-1]["error"].endswith(f"(the records after it were read on from offset "
                                             f"{len(whole) - len(members[2])})"), records[-1]
    assert [(r.get("url"), r.get("error")) for r in theirs] == [(r.get("url"), r.get("error")) for r in records]


@pytest.mark.parametrize("damage", ["crc", "header", "two", "first", "first crc", "first magic"])
def test_a_damaged_member_of_a_warc_gz_loses_its_record_alone(cli, crawl, tmp_path, damage):
    """A .warc.gz (a gzip member per record) with a member damaged: "crc", the CRC-32 of the speech WAV response's
    member (every byte decodes; zlib fails at the member's end); "header", a byte of its WARC header; "two", both
    that and the MP3 response's header; "first" and "first crc", the same in the first member (the warcinfo
    record's). The WARC ended there: the records after were lost (exit 1, one error; "first crc" was taken for a
    WARC gzipped whole). Now the damaged record alone is lost (its error, or the archive's error naming its
    offset), the records after it are read on from the next member and equal the intact WARC's, named and piped
    (``--archive warc``: a damaged first member is not known for a WARC by its bytes) alike. ("first magic": the
    file's first byte changed, and it was "not a WARC file".)"""
    from warcio.archiveiterator import ArchiveIterator

    intact = (crawl["top"] / "crawl.warc.gz").read_bytes()
    iterator, members = ArchiveIterator(io.BytesIO(intact)), {}
    for record in iterator:
        members[record.rec_headers.get_header("WARC-Target-URI"), record.rec_type] = iterator.offset
        record.raw_stream.read()
    damaged = 0 if damage.startswith("first") else members["http://example.org/speech.wav", "response"]
    after = min(offset for offset in members.values() if offset > damaged)
    packed = bytearray(intact)
    if damage.endswith("crc"):
        packed[after - 8] ^= 0xFF  # the CRC-32 in the member's gzip trailer
    elif damage == "first magic":
        packed[0] ^= 0xFF  # not even gzip's: a WARC by its name only
    else:
        packed[damaged + 12] ^= 0xFF  # the deflate data's first bytes: the WARC header
    if damage == "two":
        packed[members["http://example.org/cry", "response"] + 12] ^= 0xFF
    (tmp_path / "damaged.warc.gz").write_bytes(packed)
    expected = _records(cli(crawl["top"] / "crawl.warc.gz", "-f", "jsonl").stdout)
    lost = set() if damage.startswith("first") else \
        {"http://example.org/speech.wav"} | ({"http://example.org/cry"} if damage == "two" else set())
    for source, stdin in ((tmp_path / "damaged.warc.gz", b""), ("-", bytes(packed))):
        result = cli(source, *(("--archive", "warc") if stdin else ()), "-f", "jsonl", stdin=stdin)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        records = _records(result.stdout)
        kept = [r for r in records if r.get("url") not in lost and r.get("url")]
        assert [r["path"].split("#")[1] for r in kept] == [r["path"].split("#")[1] for r in expected
                                                            if r["url"] not in lost]
        for ours, theirs in zip(kept, (r for r in expected if r["url"] not in lost)):
            assert not differences({k: v for k, v in ours.items() if k not in ("path", "archive")},
                                   {k: v for k, v in theirs.items() if k not in ("path", "archive")}, 1e-6)
        said = records[-1]["error"]
        assert said.startswith(f"cannot read the archive: a damaged record at offset {damaged}: ") and \
            said.endswith(f"(the records after it were read on from offset {after})" +
                          ("; 2 damaged places in all" if damage == "two" else "")), said
        assert [r.get("error", "").startswith("the archive is damaged: ") for r in records[:-1]] == \
            [r.get("url") in lost and damage == "crc" for r in records[:-1]]
        assert not any("could not be read" in r.get("error", "") for r in records)  # the archive-level words of
        # a tar whose check fails: untrue of a record read past


def test_many_damaged_members_are_read_past_in_bounded_memory(cli, tmp_path):
    """600 damaged members (every other one's CRC-32 changed) before a WAV response: each reading on wrapped the
    stream read before in one more layer, and past about 490 the run ended in a RecursionError (--resume met it
    again each time). Now the WAV is tagged and the archive's error counts the damaged places."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    members = []
    for index in range(1200):
        start = buffer.tell()
        writer.write_record(writer.create_warc_record(f"http://example.org/{index}", "request",
                                                      payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
        members.append((start, buffer.tell()))
    writer.write_record(writer.create_warc_record(
        "http://example.org/speech.wav", "response", payload=io.BytesIO((AUDIO / "speech.wav").read_bytes()),
        http_headers=StatusAndHeaders("200 OK", [("Content-Type", "audio/wav")], protocol="HTTP/1.1")))
    packed = bytearray(buffer.getvalue())
    for start, end in members[1::2]:
        packed[end - 8] ^= 0xFF
    (tmp_path / "many.warc.gz").write_bytes(packed)
    result = cli(tmp_path / "many.warc.gz", "-f", "jsonl", "-k", 1)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr[-2000:]
    records = _records(result.stdout)
    assert [r.get("url") for r in records] == ["http://example.org/speech.wav", None]
    assert records[0]["tags"][0]["label"] == "Speech"
    assert records[1]["error"].endswith("; 600 damaged places in all"), records[1]


def test_a_member_whose_crc_fails_is_read_past_at_its_end_not_inside_it(cli, tmp_path):
    """A response whose payload holds a crawled .warc.gz (a gzip member that begins a WARC record, kept as it is
    in the record's deflate data: random bytes around it do not compress), its member's CRC-32 changed: reading
    on looked for the next record from the damaged member's start, found the crawled one inside the payload, and
    tagged it as a record of this WARC. A member whose data inflate whole is read past at its end."""
    import random
    import wave
    import zlib

    def record_bytes(url, body, content_type):
        buffer = io.BytesIO()
        writer = WARCWriter(buffer, gzip=False)
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=
                                                      StatusAndHeaders("200 OK", [("Content-Type", content_type)],
                                                                       protocol="HTTP/1.1")))
        return buffer.getvalue()

    noise = random.Random(3)
    with wave.open(str(AUDIO / "typing.wav")) as source, io.BytesIO() as short:
        with wave.open(short, "wb") as clip:  # a tenth of a second: within one of deflate's stored blocks
            clip.setparams(source.getparams())
            clip.writeframes(source.readframes(source.getframerate() // 10))
        inner = gzip.compress(record_bytes("http://inner.example/typing.wav", short.getvalue(), "audio/wav"),
                              mtime=0)
    for before in range(1000, 60000, 700):
        blob = record_bytes("http://example.org/blob.bin", noise.randbytes(before) + inner + noise.randbytes(50_000),
                            "application/octet-stream")
        member = bytearray(gzip.compress(blob, 6, mtime=0))
        if member.find(inner) >= 0:  # the crawled member lies in the deflate data as it is
            break
    assert member.find(inner) >= 0
    assert zlib.decompress(bytes(inner), 31).startswith(b"WARC/")
    first = gzip.compress(record_bytes("http://example.org/music.wav", (AUDIO / "music.wav").read_bytes(),
                                       "audio/wav"), mtime=0)
    last = gzip.compress(record_bytes("http://example.org/speech.wav", (AUDIO / "speech.wav").read_bytes(),
                                      "audio/wav"), mtime=0)
    member[-8] ^= 0xFF  # its CRC-32
    (tmp_path / "nested.warc.gz").write_bytes(first + member + last)
    for source, stdin in ((tmp_path / "nested.warc.gz", b""), ("-", first + member + last)):
        result = cli(source, "-f", "jsonl", "-k", 1, stdin=stdin)
        records = _records(result.stdout)
        assert [r.get("url") for r in records] == ["http://example.org/music.wav", "http://example.org/speech.wav",
                                                   None], records
        assert records[-1]["error"].endswith(f"(the records after it were read on from offset "
                                             f"{len(first) + len(member)})"), records[-1]


def test_a_warc_gzipped_whole_whose_crc_fails_tags_each_record_and_says_so(cli, long_crawl, tmp_path):
    """Its CRC-32 fails at the end (a byte changed where zlib does not notice): the damaged bytes could be in any
    record, so each is tagged as it came and the archive's error says the check failed; the last record, intact,
    was failed with "the archive is damaged"."""
    plain = long_crawl.read_bytes()
    packed = bytearray(gzip.compress(plain))
    packed[-8] ^= 0xFF  # the CRC-32 in gzip's trailer
    (tmp_path / "crc.warc.gz").write_bytes(packed)
    for source, stdin in ((tmp_path / "crc.warc.gz", b""), ("-", bytes(packed))):
        result = cli(source, "-f", "jsonl", "-k", 1, stdin=stdin)
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
        records = _records(result.stdout)
        assert [r.get("url") for r in records] == ["http://example.org/a.wav", "http://example.org/long.wav",
                                                   "urn:example:music.flac", None]
        assert not any("error" in r for r in records[:3])
        assert records[3]["error"].startswith("cannot read the archive: its compressed data fail their check (CRC "
                                              "check failed"), records[3]
        assert records[3]["error"].endswith("): the records before it may hold damaged bytes (tagged as they "
                                            "decoded), and any after it could not be read"), records[3]


def test_a_record_whose_content_length_falls_short_is_tagged_without_warcios_warning(cli, long_crawl, tmp_path):
    """A Content-Length 2 bytes short of the record's end: warcio wrote a four-line WARNING on stderr, a line
    that is no input's; the record is tagged from what its length says, as before."""
    plain = long_crawl.read_bytes()
    end = _record_offsets(plain)[1]
    header = re.search(rb"Content-Length: (\d+)", plain)
    shorter = plain[:header.start(1)] + str(int(header.group(1)) - 2).encode() + plain[header.end(1):]
    (tmp_path / "short.warc").write_bytes(shorter)
    assert len(shorter) == len(plain) and end > header.end(1)
    result = cli(tmp_path / "short.warc", "-f", "jsonl", "-k", 1)
    assert result.returncode == 0 and b"WARNING" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and len(_records(result.stdout)) == 3


def test_bytes_without_a_line_end_after_a_record_are_read_in_bounded_memory(crawl):
    """20 MB without a line end after the last record (junk, or a hostile header line): warcio read it as one
    line, grown by concatenation (60 MB took 60 s and 420 MB). A line is cut at 1 MB: the header cannot be read,
    said as before, in a few MB."""
    import tracemalloc

    from audiotag.batch import warc

    data = (crawl["top"] / "crawl.warc").read_bytes() + b"x" * 20_000_000
    tracemalloc.start()
    try:
        with pytest.raises(warc.Damaged, match=r"a damaged record at offset \d+: its header cannot be read"):
            for record in warc.records(io.BytesIO(data)):
                record.payload.read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16_000_000, peak


def test_warcs_listed_by_lister_processes_give_the_records_of_one_listing(cli, crawl):
    """On a server of 16 cores or more (here AUDIOTAG_LISTERS=2) WARC files are listed by lister processes ahead
    of their turn (one listing in the watcher keeps only 8-10 cores busy): the records are those of one listing,
    in the same order: .warc.gz and plain, cut short (its error after its records), a file and a tar between."""
    top = crawl["top"]
    operands = [top / "crawl.warc.gz", AUDIO / "speech.wav", top / "cut.warc", top / "shard.tar", top / "crawl.warc",
                top / "cut.warc.gz"]
    runs = {count: cli(*operands, "-f", "jsonl", "-k", 1, "-v", env={"AUDIOTAG_LISTERS": str(count)})
            for count in (0, 2)}
    for count, run in runs.items():
        assert run.returncode == 1 and b"Traceback" not in run.stderr, run.stderr
        assert (b"WARC files listed ahead by up to 2 lister processes" in run.stderr) == (count == 2), run.stderr
    records = _records(runs[2].stdout)
    assert records == _records(runs[0].stdout)
    sources = [record.get("archive", record["path"]) for record in records]
    assert [(source, sources.count(source)) for source in dict.fromkeys(sources)] == \
        [(str(operand), count) for operand, count in zip(operands, (6, 1, 6, 4, 6, 6))]
    assert [record["path"] for record in records if "error" in record] == \
        [records[12]["path"], records[-1]["path"]]  # the last records of the two cut WARC files
    assert records[-1]["error"] == records[12]["error"] == "the WARC ends inside this record (truncated)"


@pytest.mark.parametrize("mode", [(), ("--in-process",)])
def test_an_archive_on_stdin_is_never_read_ahead_for_lister_processes(cli, crawl, mode):
    """Members of stdin's archive are read as they arrive, each tagged before the next is read (in-process), or
    carried to the worker within a budget: reading ahead for WARC files to hand out would have read past members
    not yet tagged. Its records with AUDIOTAG_LISTERS=2 are those without."""
    for name in ("shard.tar", "crawl.warc.gz"):
        data = (crawl["top"] / name).read_bytes()
        runs = [cli("-", "-f", "jsonl", "-k", 1, *mode, stdin=data, env={"AUDIOTAG_LISTERS": count})
                for count in ("0", "2")]
        assert runs[0].returncode == runs[1].returncode == 0, runs[1].stderr
        assert _records(runs[1].stdout) == _records(runs[0].stdout) and len(_records(runs[0].stdout)) >= 4


def test_a_lister_process_that_dies_ends_its_warc_with_an_error_and_the_next_is_listed(crawl):
    """A lister killed (out of memory, say) before it found anything: its WARC is one error record that says so,
    the inputs after it are not lost, and the next WARC is listed whole by a lister started anew."""
    from audiotag.batch import inputs, listers

    path, after = str(crawl["top"] / "crawl.warc.gz"), str(crawl["top"] / "crawl.warc")
    pool = listers._Pool(1)
    try:
        lister = pool._free_lister()
        os.kill(lister.process.pid, signal.SIGSTOP)  # it takes the WARC, and never answers
        threading.Timer(0.5, lister.process.kill).start()
        found = list(pool.listed(iter([inputs.Archive(path, False), inputs.Input(str(AUDIO / "speech.wav")),
                                       inputs.Archive(after, False)])))
    finally:
        pool.close()
    assert [(item.name, item.error) for item in found[:2]] == [
        (path, "cannot read the archive: its listing process ended (SIGKILL: out of memory?)"),
        (str(AUDIO / "speech.wav"), None)]
    assert [item.name for item in found[2:]] == [item.name for item in inputs.archive_members(after)]
    assert len(found) > 2 + 1 and lister not in pool._listers


def test_lister_processes_end_with_the_watcher(cli, tmp_path):
    """A watcher that ends without closing its listers (killed, or os._exit after Ctrl-C or a closed pipe): a
    lister listing a WARC without audio writes nothing for seconds, and so went on to its end (minutes on a real
    crawl's WARC). Each now exits within about half a second of its watcher."""
    record = ("WARC/1.0\r\nWARC-Type: resource\r\nWARC-Target-URI: http://example.org/{0}.txt\r\n"
              "WARC-Record-ID: <urn:uuid:{0:08d}-0000-0000-0000-000000000000>\r\nContent-Type: text/plain\r\n"
              "Content-Length: 5\r\n\r\nhello\r\n\r\n")
    (tmp_path / "text.warc").write_text("".join(record.format(index) for index in range(250_000)))  # 5 s of
    # listing
    process = cli.popen(tmp_path / "text.warc", tmp_path / "text.warc", env={"AUDIOTAG_LISTERS": "2"})

    def listers() -> list:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and b"--_archive-lister" in (entry / "cmdline").read_bytes() and \
                        f"PPid:\t{process.pid}\n" in (entry / "status").read_text():
                    found.append(int(entry.name))
            except OSError:  # ended meanwhile
                pass
        return found

    try:
        deadline = time.monotonic() + 60
        while not (started := listers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started, "no lister started"
        time.sleep(0.5)  # listing
        process.kill()
        process.wait()
        left = started
        deadline = time.monotonic() + 4  # a lister looks for its watcher every 0.5 s (once it has started)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [pid for pid in started if Path(f"/proc/{pid}").exists() and
                    "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()]
        assert not left, f"listers still running 4 s after their watcher was killed: {left}"
    finally:
        process.kill()
        for pid in locals().get("started") or []:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
