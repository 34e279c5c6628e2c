"""``audiotag serve``: how request bodies are framed, over real sockets to a running server (``Expect:
100-continue``, Content-Length and Transfer-Encoding together or twice, chunked trailers, bodies that end early),
and the latency histogram of /metrics against known observations."""

import http.client
import json
import socket
from types import SimpleNamespace

import pytest

from audiotag.serve.metrics import GAUGES, LATENCY_BUCKETS, Metrics
from conftest import AUDIO
from test_serve import _parse_metrics, _read_response, _wait_for, serve  # noqa: F401  (serve: the fixture that starts one)

MUSIC = (AUDIO / "music.wav").read_bytes()
HEAD = b"POST /tag?name=m.wav HTTP/1.1\r\nHost: x\r\n"


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=60)  # a hang fails, not waits


def _status_line(sock) -> bytes:
    """The first line of what the server sends (an interim 100 or the answer's)."""
    line = b""
    while not line.endswith(b"\r\n"):
        byte = sock.recv(1)
        assert byte, f"closed after {line!r}"
        line += byte
    return line


def _chunked(data: bytes, size: int, trailers: bytes = b"") -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size))
    return chunks + b"0\r\n" + trailers + b"\r\n"


@pytest.fixture
def server(serve):  # noqa: F811
    return serve("--quiet", "--max-body", "1M")


def test_expect_100_continue_an_oversize_body_is_refused_before_it_is_sent(server):
    """The client waits for "100 Continue" before sending 2 MB: it gets the 413 at once instead, its body unsent
    (and the connection is closed, since that body may still come)."""
    sock = _connect(server)
    sock.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
    # nothing of the body sent: the server answers without it, and not "100 Continue" first
    assert sock.recv(12, socket.MSG_PEEK | socket.MSG_WAITALL) == b"HTTP/1.1 413"
    status, answer = _read_response(sock)
    assert status == 413 and "over --max-body (1048576 bytes)" in answer["error"]


def test_expect_100_continue_a_body_within_the_limit_is_asked_for(server):
    sock = _connect(server)
    sock.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(MUSIC))
    assert _status_line(sock) == b"HTTP/1.1 100 Continue\r\n"
    assert sock.recv(2, socket.MSG_PEEK | socket.MSG_WAITALL) == b"\r\n"  # an interim answer: no headers
    sock.recv(2)
    sock.sendall(MUSIC)
    status, answer = _read_response(sock)
    assert status == 200 and answer["tags"][0]["label"] == "Music"


def test_two_different_content_lengths_are_refused(server):
    sock = _connect(server)
    sock.sendall(HEAD + b"Content-Length: %d\r\nContent-Length: 10\r\n\r\n" % len(MUSIC) + MUSIC)
    status, answer = _read_response(sock)
    assert status == 400 and "malformed Content-Length" in answer["error"]
    # the same length twice is one length (RFC 9112 6.3 lets a recipient take it)
    sock = _connect(server)
    sock.sendall(HEAD + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(MUSIC), len(MUSIC)) + MUSIC)
    status, answer = _read_response(sock)
    assert status == 200 and answer["tags"][0]["label"] == "Music"


@pytest.mark.parametrize("order", ["te-first", "cl-first"])
def test_transfer_encoding_with_content_length_is_refused(server, order):
    """Both framings at once is how requests are smuggled past proxies: 400, whichever comes first."""
    framing = [b"Transfer-Encoding: chunked\r\n", b"Content-Length: %d\r\n" % len(MUSIC)]
    if order == "cl-first":
        framing.reverse()
    sock = _connect(server)
    sock.sendall(HEAD + b"".join(framing) + b"\r\n" + _chunked(MUSIC, 4096))
    status, answer = _read_response(sock)
    assert status == 400 and "only chunked, without Content-Length" in answer["error"]


def test_chunked_with_trailers_and_extensions_is_the_same_answer(server):
    sock = _connect(server)
    sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(MUSIC) + MUSIC)
    plain = _read_response(sock)
    sock = _connect(server)
    body = _chunked(MUSIC, 7000, trailers=b"X-Checksum: 1234\r\nX-Other: done\r\n").replace(
        b"1b58\r\n", b"1b58;name=value\r\n", 1)  # a chunk extension, ignored as RFC 9112 7.1.1 says
    sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    response = http.client.HTTPResponse(sock)
    response.begin()
    assert (response.status, json.loads(response.read())) == plain and plain[0] == 200
    # the trailers were read with the body: the connection goes on with the next request
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, answer = _read_response(sock)
    assert status == 200 and answer["status"] == "ok"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_ends_early_is_a_400_saying_so(server, framing):
    """The client stops sending (and says so, closing its side) before the body's end: 400, as the README
    documents, with the reason: never a hang or a tag of half a file."""
    sock = _connect(server)
    if framing == "chunked":
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(MUSIC, 4096)[:100_000])
    else:
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(MUSIC) + MUSIC[:100_000])
    sock.shutdown(socket.SHUT_WR)
    status, answer = _read_response(sock)
    assert status == 400 and answer["error"].startswith("the body ends early (closed before")


def test_the_latency_histogram_counts_known_observations():
    """Buckets are cumulative, an observation on a bucket's bound counts in that bucket (le: less or equal), one
    past the last bound only in +Inf; _sum and _count are the observations'; answers without a latency (GET)
    count as requests only."""
    metrics = Metrics()
    observations = [0.001, 0.005, 0.0051, 0.3, 1.0, 1.0, 59.9, 60.0, 60.1, 500.0]
    for seconds in observations:
        metrics.count(200, seconds)
    metrics.count(404)
    metrics.count(503, 0.02)
    observations.append(0.02)
    batcher = SimpleNamespace(model_seconds=1.5, windows=7, batches=3)
    text = metrics.text(batcher, dict.fromkeys(GAUGES, 0))
    parsed = _parse_metrics(text)
    name = "audiotag_request_duration_seconds"
    for bound in LATENCY_BUCKETS:
        assert parsed[f'{name}_bucket{{le="{bound}"}}'] == sum(o <= bound for o in observations), bound
    assert parsed[f'{name}_bucket{{le="+Inf"}}'] == parsed[f"{name}_count"] == len(observations)
    assert parsed[f"{name}_sum"] == pytest.approx(sum(observations), rel=1e-9)
    expected = {0.005: 2, 0.01: 3, 0.025: 4, 0.25: 4, 0.5: 5, 1.0: 7, 30.0: 7, 60.0: 9}
    assert {b: parsed[f'{name}_bucket{{le="{b}"}}'] for b in expected} == expected  # written out, by hand
    assert parsed['audiotag_requests_total{code="200"}'] == 10 and parsed['audiotag_requests_total{code="404"}'] == 1
    assert f"# TYPE {name} histogram" in text.splitlines()


def test_the_histogram_over_http_counts_each_tag_request(server):
    """Through a running server: /tag answers (200 and 4xx) are observed, /healthz and /metrics are not."""
    def scrape():
        sock = _connect(server)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        return _parse_metrics(response.read().decode())

    before = scrape()["audiotag_request_duration_seconds_count"]
    sock = _connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    _read_response(sock)
    for body in (MUSIC, b"RIFFjunk"):
        sock = _connect(server)
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        _read_response(sock)
    # an answer is counted just after it is sent: wait for the two, then nothing more may have been counted
    _wait_for(lambda: scrape()["audiotag_request_duration_seconds_count"] >= before + 2)
    after = scrape()
    assert after["audiotag_request_duration_seconds_count"] == before + 2
    assert after['audiotag_request_duration_seconds_bucket{le="+Inf"}'] == before + 2
    assert after["audiotag_request_duration_seconds_sum"] > 0


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_is_received_into_one_buffer_that_the_decoder_reads_in_place(chunked):
    """Item 5 of the hostile-client issue: 8 uploads took 2x their bytes because the body was joined from its
    pieces (two copies for a moment). ``Body.read_all`` fills one anonymous mapping as the bytes arrive, and that
    buffer is what the server hands ``decode.open_bytes``, which decodes it to the file's samples."""
    import io
    import mmap

    import numpy as np
    import soundfile

    from audiotag import decode
    from audiotag.serve.body import Body

    if chunked:
        wire = b"".join(b"%x\r\n%s\r\n" % (len(MUSIC[i:i + 5000]), MUSIC[i:i + 5000])
                        for i in range(0, len(MUSIC), 5000)) + b"0\r\n\r\n"
    else:
        wire = MUSIC
    rfile = io.BufferedReader(io.BytesIO(wire), 4096)
    body = Body(rfile, None if chunked else len(MUSIC), chunked, 1 << 30, float("inf"), 60.0, lambda _: None,
                lambda: None)
    data = body.read_all()
    assert isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap) and data == MUSIC
    stream = decode.open_bytes(data)
    samples = np.concatenate(list(stream.samples()))
    assert np.array_equal(samples, soundfile.read(AUDIO / "music.wav", dtype="float32")[0])
