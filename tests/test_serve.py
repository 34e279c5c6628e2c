"""``audiotag serve``: a real server on 127.0.0.1, started as a user starts it (package and frozen binary, through the
``cli`` fixture), talked to over real sockets. Answers are compared with the CLI's records on the same files."""

import http.client
import json
import select
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from conftest import AUDIO, compare_lines  # two processes: scores within 1e-5, all else equal

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
CLIPS = sorted(p for d in (AUDIO, AUDIO / "extra") for p in d.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
START_TIMEOUT = 120  # seconds for the server's start-up line (the binary's first start unpacks it)


class Server:
    """A running ``audiotag serve``; its stderr is read all along (the access log would fill a pipe)."""

    def __init__(self, cli, *args, host="127.0.0.1"):
        self.process = cli.popen("serve", "--port", 0, "--host", host, *args)
        self.process.stdin.close()
        self.lines = []
        self._started = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        assert self._started.wait(START_TIMEOUT), f"no start-up line: {self.lines}"
        first = self.lines[0]
        assert first.startswith("audiotag: serving http://"), self.lines
        self.port = int(first.split("://", 1)[1].split(" ")[0].rsplit(":", 1)[1])

    def _read_stderr(self):
        for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._started.set()
        self._started.set()

    def connection(self, timeout=120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, connection=None):
        """(status, headers, decoded JSON lines or text)."""
        conn = connection or self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read().decode()
        finally:
            if connection is None:
                conn.close()
        kind = response.getheader("Content-Type", "")
        parsed = [json.loads(line) for line in data.splitlines()] if "json" in kind else data
        return response.status, response, parsed

    def post(self, path, body, **kwargs):
        status, _, parsed = self.request("POST", path, body, **kwargs)
        return status, parsed

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        return code

    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def serve(cli):
    servers = []

    def start(*args, **kwargs) -> Server:
        server = Server(cli, *args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        code = server.stop()
        assert code == 0, server.log()
        assert "Traceback" not in server.log(), server.log()


def cli_records(cli, paths, *args) -> dict:
    result = cli(*paths, "-f", "jsonl", *args)
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    return {rec["path"]: rec for rec in records if "start" not in rec}


def test_every_clip_answers_the_cli_record(cli, serve):
    expected = cli_records(cli, CLIPS)
    server = serve("--quiet")
    conn = server.connection()
    for clip in CLIPS:
        status, answer = server.post(f"/tag?name={quote(str(clip))}", clip.read_bytes(), connection=conn)
        assert status == 200 and compare_lines(answer, [expected[str(clip)]]) == [], clip
    for clip in CLIPS:  # chunked: a WAV decoded as it arrives, the rest read whole in place; the same answer
        status, answer = server.post(f"/tag?name={quote(str(clip))}", _chunks(clip.read_bytes(), 3000),
                                     connection=conn)
        assert status == 200 and compare_lines(answer, [expected[str(clip)]]) == [], clip


def test_query_options_match_the_cli(cli, serve, tmp_path):
    clip = AUDIO / "extra" / "max-train.wav"
    expected = cli(clip, "-f", "jsonl", "--top-k", 3, "--segments").stdout.decode().splitlines()
    server = serve()
    status, response, answer = server.request("POST", f"/tag?name={clip}&top_k=3&segments=1", clip.read_bytes())
    assert status == 200 and response.getheader("Content-Type") == "application/x-ndjson"
    assert compare_lines(answer, expected) == []
    cli_args = ("-k", 527, "--threshold", 0.05, "--aggregate", "mean", "--events")
    expected = cli(clip, "-f", "jsonl", *cli_args).stdout.decode().splitlines()
    assert len(expected) > 1 and all("label" in json.loads(line) for line in expected[:-1])  # events, then the clip
    status, answer = server.post(f"/tag?name={clip}&top_k=527&threshold=0.05&aggregate=mean&events=1",
                                 clip.read_bytes())
    assert status == 200 and compare_lines(answer, expected) == []
    assert min(tag["score"] for tag in answer[-1]["tags"]) >= 0.05
    for bad in ("threshold=2", "aggregate=median", "events=maybe", "top_k=0"):
        status, answer = server.post(f"/tag?{bad}", clip.read_bytes())
        assert status == 400 and bad.split("=")[0] in answer[0]["error"], (bad, answer)
    raw = tmp_path / "music.s16"
    import soundfile

    samples, rate = soundfile.read(str(AUDIO / "music.wav"), dtype="int16")
    raw.write_bytes(samples.tobytes())
    expected = json.loads(cli("-", "--raw", "s16le", "--rate", rate, "-f", "jsonl", stdin=raw.read_bytes()).stdout)
    for body in (raw.read_bytes(), _chunks(raw.read_bytes(), 5000)):
        status, answer = server.post(f"/tag?raw=s16le&rate={rate}", body)
        assert status == 200 and compare_lines(answer, [expected]) == []
    assert any('"POST /tag?name=' in line and '" 200 ' in line for line in server.lines), server.log()


def test_a_wav_the_stream_parser_does_not_read_is_decoded_whole(cli, serve, tmp_path):
    """A chunked WAV in an encoding only libsndfile reads (mu-law, IMA ADPCM): the header is replayed into it."""
    import soundfile

    samples, rate = soundfile.read(str(AUDIO / "speech.wav"))
    server = serve()
    for subtype in ("ULAW", "IMA_ADPCM"):
        path = tmp_path / f"speech-{subtype}.wav"
        soundfile.write(str(path), samples, rate, subtype=subtype)
        expected = json.loads(cli(path, "-f", "jsonl").stdout)
        status, answer = server.post(f"/tag?name={quote(str(path))}", _chunks(path.read_bytes(), 4000))
        assert status == 200 and compare_lines(answer, [expected]) == [], subtype


def test_error_codes(serve, tmp_path):
    server = serve("--max-body", "200k", "--idle-timeout", "1")
    music = (AUDIO / "music.wav").read_bytes()
    assert server.post("/tag", b"") == (400, [{"error": "empty body: POST the audio file's bytes "
                                                         "(with a Content-Length, or chunked)"}])
    status, answer = server.post("/tag?colour=blue", music)
    assert status == 400 and "unknown query parameter 'colour'" in answer[0]["error"]
    assert server.post("/tag?top_k=zero", music)[0] == 400
    assert server.post("/tag?raw=s16le", music)[0] == 400  # raw needs rate
    assert server.post("/tag?name=noise.bin", b"not audio at all") == \
        (422, [{"path": "noise.bin", "error": "cannot decode: not audio, or a format audiotag does not know "
                                              "(headerless samples: --raw FORMAT --rate HZ on stdin)"}])
    status, answer = server.post("/tag?name=big.wav", music)  # 640 kB > 200 kB
    assert status == 413 and "--max-body" in answer[0]["error"]
    status, answer = server.post("/tag?name=big.wav", _chunks(music, 10000))  # chunked: no length to check first
    assert status == 413 and "--max-body" in answer[0]["error"]
    flac = (AUDIO / "extra" / "sonicpi-guit_e_fifths.flac").read_bytes()  # 322 kB, read whole: 413 past 200 kB
    status, answer = server.post("/tag?name=big.flac", _chunks(flac, 10000))
    assert status == 413 and "--max-body" in answer[0]["error"]
    assert server.request("GET", "/nowhere")[0] == 404
    assert server.request("GET", "/tag")[0] == 405
    status, response, _ = server.request("DELETE", "/healthz")
    assert status == 405 and response.getheader("Allow") == "GET, HEAD"
    # Malformed chunked framing
    assert _raw_exchange(server.port, b"POST /tag HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"zz\r\nRIFF\r\n0\r\n\r\n")[0] == 400
    # A client that stalls in its body: 408 once --idle-timeout passes
    status, answer = _raw_exchange(server.port, b"POST /tag HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                                                b"RIFF")
    assert status == 408 and "--idle-timeout" in answer["error"]


def test_timeout(serve):
    """504 past --timeout: a trickling upload runs late."""
    # 5 s: the trickle below takes 8 s; the clip posted after it is tagged well within (on a slow machine too)
    server = serve("--max-pending", "1", "--timeout", "5", "--idle-timeout", "60")
    wav = (AUDIO / "music.wav").read_bytes()
    # A chunked WAV stream whose pieces come slower than --timeout allows, until the server answers.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    sock.sendall(b"POST /tag?name=late HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for offset in range(0, len(wav), 16000):
        sock.sendall(b"%x\r\n%s\r\n" % (len(wav[offset:offset + 16000]), wav[offset:offset + 16000]))
        if select.select([sock], [], [], 0.2)[0]:
            break
    status, answer = _read_response(sock)
    assert status == 504 and "--timeout" in answer["error"]
    assert server.post("/tag?name=music", wav)[0] == 200  # and it still serves


@pytest.fixture(scope="module")
def hours_of_silence(tmp_path_factory) -> bytes:
    """The FLAC bomb of issue 21: 10 hours of 8 kHz silence in 0.9 MB, whose tagging takes a worker minutes."""
    import numpy as np
    import soundfile

    path = tmp_path_factory.mktemp("bomb") / "silence-10h.flac"
    with soundfile.SoundFile(str(path), "w", 8000, 1, "PCM_16", format="FLAC") as file:
        block = np.zeros(8000 * 600, np.int16)
        for _ in range(60):
            file.write(block)
    return path.read_bytes()


def test_a_504_cancels_its_work_and_frees_the_worker(serve, hours_of_silence):
    """--timeout counts from a request's headers, also while it waits for the worker; at its 504 its work stops
    at the next decoded block, so the one worker is free for the next request at once, and the metrics count it
    (before: a job that started late ran on for --timeout + 1 s from its start, unseen, and the clip posted after
    its 504 waited for it past its own --timeout)."""
    # 10 s and 3 s: room for a slow machine to see the second request queued, and to free the worker within
    # the 3 s the second has waited when the first's 504 comes
    server = serve("--jobs", "1", "--timeout", "10", "--max-duration", "0", "--idle-timeout", "60")
    answers = {}

    def post(name):
        answers[name] = server.post(f"/tag?name={name}", hours_of_silence)

    first = threading.Thread(target=post, args=("first",))
    first.start()
    _wait_for(lambda: _metric(server, "audiotag_requests_in_work") == 1)
    time.sleep(3)  # the second arrives while the first is tagged: it waits for the worker, its deadline running
    second = threading.Thread(target=post, args=("second",))
    second.start()
    _wait_for(lambda: _metric(server, "audiotag_queue_depth") == 1)
    first.join()
    second.join()
    for name in ("first", "second"):
        status, answer = answers[name]
        assert status == 504 and "--timeout 10 s" in answer[0]["error"], (name, answers[name])
    status, answer = server.post("/tag?name=after", (AUDIO / "speech.wav").read_bytes())
    assert status == 200 and answer[0]["path"] == "after"  # the worker was freed at the 504, not seconds later
    _wait_for(lambda: _metric(server, "audiotag_requests_in_work") == 0)
    values = _parse_metrics(server.request("GET", "/metrics")[2])
    assert values['audiotag_requests_cancelled_total{stage="working"}'] == 2, values
    assert values['audiotag_requests_cancelled_total{stage="queued"}'] == 0
    assert values['audiotag_requests_total{code="504"}'] == 2 and values["audiotag_audio_seconds_total"] == 10.0


def test_sigterm_answers_503_to_work_waiting_for_a_worker(serve, hours_of_silence):
    """At the end of --drain-timeout the request being tagged and the one waiting for the worker are both
    answered 503 (Retry-After), and their work is cancelled."""
    server = serve("--jobs", "1", "--drain-timeout", "0.5", "--max-duration", "0", "--timeout", "600")
    uploads = [_start_upload(server.port, hours_of_silence, len(hours_of_silence), name=f"long{i}") for i in range(2)]
    _wait_for(lambda: _metric(server, "audiotag_queue_depth") == 1 and
              _metric(server, "audiotag_requests_in_work") == 2)
    server.process.send_signal(signal.SIGTERM)
    for upload in uploads:
        response = http.client.HTTPResponse(upload)
        response.begin()
        assert response.status == 503 and response.getheader("Retry-After") == "1"
        assert "--drain-timeout" in json.loads(response.read())["error"]
        upload.close()
    assert server.process.wait(timeout=30) == 0
    _wait_for(lambda: "serve: stopped" in server.log())
    assert "2 requests not finished within --drain-timeout were answered 503, their work cancelled" in server.log()


def test_slow_uploads_do_not_lock_others_out(serve):
    """Bodies still arriving do not hold --max-pending's places (those are for work): as many slow uploads as
    --max-pending leave the service open; one address gets at most --max-uploads-per-client (4) at once."""
    server = serve("--max-pending", "3", "--idle-timeout", "60")
    wav = (AUDIO / "speech.wav").read_bytes()
    held = [_start_upload(server.port, wav, 1000, name=f"slow{i}") for i in range(3)]
    _wait_for(lambda: _metric(server, "audiotag_requests_in_progress") == 3)
    status, answer = server.post("/tag?name=fast", wav)
    assert status == 200 and answer[0]["path"] == "fast"
    held.append(_start_upload(server.port, wav, 1000, name="slow3"))
    _wait_for(lambda: _metric(server, "audiotag_requests_in_progress") == 4)
    status, response, answer = server.request("POST", "/tag?name=fifth", wav)
    assert status == 503 and response.getheader("Retry-After") == "1"
    assert "--max-uploads-per-client" in answer[0]["error"]
    last = held.pop()
    last.sendall(wav[1000:])  # one upload ends and is answered: its place is free again
    assert _read_response(last)[0] == 200
    assert server.post("/tag?name=sixth", wav)[0] == 200
    # Other addresses (127.0.0.2 and .3 are this machine too) fill the 2 x --max-pending upload places.
    held += [_start_upload(server.port, wav, 1000, source="127.0.0.2") for _ in range(3)]
    _wait_for(lambda: _metric(server, "audiotag_uploads_in_progress") == 6)
    status, answer = _read_response(_start_upload(server.port, wav, len(wav), source="127.0.0.3"))
    assert status == 503 and "2 x --max-pending" in answer["error"]
    for sock in held:
        sock.close()


def test_a_request_head_has_a_deadline_and_connections_a_cap(serve):
    """--max-connections open connections: past it the one waiting longest for a request head (a head trickling
    in, an idle keep-alive connection) is closed for the newcomer, a head begun answered 503; only when all are in
    a request is the newcomer answered 503 and closed. A head trickling in a byte at a time (never idle for
    --idle-timeout) is answered 408 at --header-timeout."""
    server = serve("--header-timeout", "60", "--idle-timeout", "60", "--max-connections", "3")
    wav = (AUDIO / "speech.wav").read_bytes()
    uploads = []
    for _ in range(3):  # each in a request: its head taken in ("100 Continue"), its body arriving
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        sock.sendall(b"POST /tag HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(wav))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(wav[:1000])
        uploads.append(sock)
    status, answer = _read_response(socket.create_connection(("127.0.0.1", server.port), timeout=60))
    assert status == 503 and "--max-connections" in answer["error"] and "each in a request" in answer["error"]
    for upload in uploads:
        upload.close()
    _wait_for(lambda: _open_connections(server) == 1)  # the closed ones are gone: only the one asking

    slow = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")  # its head waits longest: it makes room
    idle = [server.connection() for _ in range(2)]
    for connection in idle:
        assert server.request("GET", "/healthz", connection=connection)[0] == 200  # kept alive, idle
    status, _, health = server.request("GET", "/healthz")  # a fourth connection
    assert status == 200 and health[0]["status"] == "ok"
    status, answer = _read_response(slow)
    assert status == 503 and "request head was still arriving" in answer["error"]
    for connection in idle:  # still open and served
        assert server.request("GET", "/healthz", connection=connection)[0] == 200
        connection.close()

    server = serve("--header-timeout", "1", "--idle-timeout", "60")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for _ in range(100):  # 20 s at most
        if select.select([sock], [], [], 0.2)[0]:
            break
        sock.sendall(b"X")
    status, answer = _read_response(sock)
    assert status == 408 and "--header-timeout" in answer["error"]

    # A head begun, then silence: 408 at --idle-timeout, well before --header-timeout; an idle keep-alive
    # connection (no head begun) is closed without an answer.
    server = serve("--header-timeout", "30", "--idle-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    status, answer = _read_response(sock)
    assert status == 408 and "--idle-timeout" in answer["error"] and time.monotonic() - started < 20
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    assert idle.recv(64) == b""


def test_metrics_and_health(serve):
    server = serve()
    status, _, health = server.request("GET", "/healthz")
    assert status == 200 and health[0]["status"] == "ok" and health[0]["model"] == "mn04_as"
    for _ in range(3):
        assert server.post("/tag", (AUDIO / "speech.wav").read_bytes())[0] == 200
    assert server.post("/tag", b"junk")[0] == 422
    # an answer is counted just after it is sent: the last one may still be on its way to the count
    _wait_for(lambda: _metric(server, "audiotag_request_duration_seconds_count") == 4)
    _, response, text = server.request("GET", "/metrics")
    assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    values = _parse_metrics(text)
    assert values['audiotag_requests_total{code="200"}'] >= 4  # the 3 tags and /healthz
    assert values['audiotag_requests_total{code="422"}'] == 1
    assert values["audiotag_audio_seconds_total"] == pytest.approx(30.0)
    assert values["audiotag_model_windows_total"] == 3 and values["audiotag_model_seconds_total"] > 0
    assert values['audiotag_request_duration_seconds_bucket{le="+Inf"}'] == 4
    assert values["audiotag_request_duration_seconds_count"] == 4
    assert values["audiotag_queue_depth"] == 0


def test_load_8_clients_100_requests(cli, serve):
    clips = [AUDIO / "music.wav", AUDIO / "speech.wav", AUDIO / "typing.wav", AUDIO / "extra" / "librosa-robin.ogg",
             AUDIO / "extra" / "esc10-babycry-1-60997-B.mp3", AUDIO / "extra" / "sonicpi-loop_amen.flac"]
    expected = cli_records(cli, clips)
    bodies = [clip.read_bytes() for clip in clips]
    server = serve("--quiet", "--max-uploads-per-client", 8)  # 8 clients on this one address

    def client(number):
        conn = server.connection()
        answers = []
        for i in range(100):
            k = (number + i) % len(clips)
            status, answer = server.post(f"/tag?name={number}-{i}-{k}", bodies[k], connection=conn)
            answers.append((status, answer))
        return answers

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    for number, answers in enumerate(results):
        assert len(answers) == 100
        for i, (status, answer) in enumerate(answers):
            k = (number + i) % len(clips)
            assert status == 200
            assert compare_lines(answer, [dict(expected[str(clips[k])], path=f"{number}-{i}-{k}")]) == []
    # each answer is counted once sent, a /metrics answer too: wait for the last tag's count, then the 800 and
    # the polls' answers counted so far
    polls = []
    _wait_for(lambda: polls.append(1) or _metric(server, "audiotag_request_duration_seconds_count") >= 800)
    values = _parse_metrics(server.request("GET", "/metrics")[2])
    assert values["audiotag_request_duration_seconds_count"] == 800
    assert 800 <= values['audiotag_requests_total{code="200"}'] <= 800 + len(polls)


def test_a_slow_upload_does_not_delay_others(serve):
    """One decode worker, and a client that has sent half its body: everyone else is still answered."""
    server = serve("--jobs", "1", "--idle-timeout", "120")
    wav = (AUDIO / "speech.wav").read_bytes()
    slow = _start_upload(server.port, wav, len(wav) // 2, name="slow")
    _wait_for(lambda: _metric(server, "audiotag_requests_in_progress") == 1)
    for i in range(10):
        assert server.post(f"/tag?name=fast{i}", wav)[0] == 200
    slow.sendall(wav[len(wav) // 2:])
    status, answer = _read_response(slow)
    assert status == 200 and answer["path"] == "slow" and answer["tags"]


def test_sigterm_answers_requests_in_flight(serve):
    server = serve("--idle-timeout", "120", "--drain-timeout", "60")  # a slow machine tags the three in time
    wav = (AUDIO / "typing.wav").read_bytes()
    uploads = [_start_upload(server.port, wav, 1000 * (i + 1), name=f"inflight{i}") for i in range(3)]
    _wait_for(lambda: _metric(server, "audiotag_requests_in_progress") == 3)
    server.process.send_signal(signal.SIGTERM)
    _wait_for(lambda: not _accepts(server.port))  # stops accepting at once...
    for i, upload in enumerate(uploads):  # ...and answers what it had taken in
        upload.sendall(wav[1000 * (i + 1):])
        status, answer = _read_response(upload)
        assert status == 200 and answer["path"] == f"inflight{i}"
    assert server.process.wait(timeout=30) == 0


def test_sigterm_answers_503_what_cannot_finish(serve):
    """Requests still in work when --drain-timeout ends are answered 503 (Retry-After), not dropped."""
    server = serve("--idle-timeout", "60", "--drain-timeout", "0.5")
    wav = (AUDIO / "typing.wav").read_bytes()
    uploads = [_start_upload(server.port, wav, 1000, name=f"stuck{i}") for i in range(3)]
    _wait_for(lambda: _metric(server, "audiotag_requests_in_progress") == 3)
    server.process.send_signal(signal.SIGTERM)
    for upload in uploads:  # their bodies never come
        response = http.client.HTTPResponse(upload)
        response.begin()
        assert response.status == 503 and response.getheader("Retry-After") == "1"
        assert "--drain-timeout" in json.loads(response.read())["error"]
        upload.close()
    assert server.process.wait(timeout=30) == 0
    _wait_for(lambda: "serve: stopped" in server.log())
    assert "3 requests not finished within --drain-timeout were answered 503" in server.log()


def test_token_required_off_loopback(cli, serve, tmp_path):
    result = cli("serve", "--host", "0.0.0.0", "--port", 0)
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and "--token-file" in result.stderr.decode()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = serve("--token-file", token, host="0.0.0.0")  # traffic below goes to 127.0.0.1 only
    wav = (AUDIO / "music.wav").read_bytes()
    status, response, answer = server.request("POST", "/tag", wav)
    assert status == 401 and response.getheader("WWW-Authenticate") == "Bearer"
    assert server.request("POST", "/tag", wav, {"Authorization": "Bearer wrong"})[0] == 401
    assert server.request("GET", "/metrics")[0] == 401
    status, _, answer = server.request("POST", "/tag", wav, {"Authorization": "Bearer s3cret-token"})
    assert status == 200 and answer[0]["tags"][0]["label"] == "Music"


def test_address_in_use_is_refused_at_start(cli, serve):
    server = serve()
    result = cli("serve", "--port", server.port)
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode() == (f"audiotag: serve: cannot listen on 127.0.0.1:{server.port}: "
                                      "address already in use\n")


def test_unix_socket(cli, tmp_path):
    path = tmp_path / "audiotag.sock"
    process = cli.popen("serve", "--socket", path)
    try:
        _wait_for(path.exists, 120)
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(60)
        _wait_for(lambda: sock.connect_ex(str(path)) == 0)
        wav = (AUDIO / "speech.wav").read_bytes()
        sock.sendall(b"POST /tag?name=u HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(wav) + wav)
        status, answer = _read_response(sock)
        assert status == 200 and answer["path"] == "u"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert not path.exists()
    assert b"Traceback" not in process.stderr.read()


def test_bad_http_never_breaks_the_server(serve):
    server = serve()
    assert _raw_exchange(server.port, b"GARBAGE\r\n\r\n")[0] == 400
    assert _raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")[0] == 431
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    assert _raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n")[0] == 431
    assert _raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n")[0] == 200
    for partial in (b"", b"POS", b"POST /tag HTTP/1.1\r\nContent-Le",
                    b"POST /tag HTTP/1.1\r\nContent-Length: 99999\r\n\r\nRIFF\x00\x00"):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(partial)
        sock.close()  # gone mid-request
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /tag HTTP/1.1\r\nHost: x\r\nContent-Length: 640044\r\n\r\n" + b"RIFF" + b"\0" * 5000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # reset while the body arrives
    status, _, health = server.request("GET", "/healthz")
    assert status == 200 and health[0]["status"] == "ok"
    assert "Traceback" not in server.log()


def test_http_edges_a_client_meets(serve, tmp_path):
    """Each answered as HTTP says, not 500 or a silent pass: health checkers send HEAD; rate= alone would be
    ignored; a Unicode digit is not a length; two Transfer-Encodings are not one; a UTF-8 token is its bytes."""
    token = tmp_path / "token"
    token.write_bytes("s3crét-tøken\n".encode())
    server = serve("--token-file", token)
    auth = "Bearer s3crét-tøken".encode()  # the UTF-8 bytes a client sends
    head = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    sock.sendall(head)
    response = http.client.HTTPResponse(sock, method="HEAD")
    response.begin()
    assert response.status == 200 and int(response.getheader("Content-Length")) > 0 and response.read() == b""
    sock.close()
    music = (AUDIO / "music.wav").read_bytes()
    post = b"POST /tag%s HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n%s\r\n"
    status, answer = _raw_exchange(server.port, post % (b"?rate=16000", b"Content-Length: %d\r\n" % len(music))
                                   + music)
    assert status == 400 and "give raw=FORMAT too" in answer["error"]
    for digit in ("²".encode(), b"\xb2"):  # UTF-8, and the Latin-1 byte the header parser reads as "²"
        status, answer = _raw_exchange(server.port, post % (b"", b"Content-Length: %s\r\n" % digit) + b"RIFF")
        assert status == 400 and "malformed Content-Length" in answer["error"]
    twice = b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"
    status, answer = _raw_exchange(server.port, post % (b"", twice) + b"4\r\nRIFF\r\n0\r\n\r\n")
    assert status == 400 and "Transfer-Encoding given 2 times" in answer["error"]
    status, answer = _raw_exchange(server.port, post % (b"?name=m.wav", b"Content-Length: %d\r\n" % len(music))
                                   + music)
    assert status == 200 and answer["tags"][0]["label"] == "Music"


# --- helpers ------------------------------------------------------------------------------------------------------

def _chunks(data: bytes, size: int):
    """An iterable body: http.client sends it chunked."""
    return (data[i:i + size] for i in range(0, len(data), size))


def _start_upload(port: int, body: bytes, sent: int, name="held", source="127.0.0.1") -> socket.socket:
    """A POST whose body has been sent only up to ``sent`` bytes, from the address ``source``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0))
    sock.sendall(b"POST /tag?name=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (name.encode(), len(body))
                 + body[:sent])
    return sock


def _read_response(sock) -> tuple:
    """(status, decoded JSON body) of one response on a raw socket."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    data = response.read()
    sock.close()
    return response.status, json.loads(data)


def _raw_exchange(port: int, request: bytes) -> tuple:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(request)
    return _read_response(sock)


def _open_connections(server):
    """The audiotag_connections gauge; None when the request is refused (--max-connections) or fails."""
    try:
        status, _, text = server.request("GET", "/metrics")
    except (OSError, http.client.HTTPException):
        return None
    return _parse_metrics(text)["audiotag_connections"] if status == 200 else None


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


def _metric(server, name: str) -> float:
    return _parse_metrics(server.request("GET", "/metrics")[2]).get(name)


def _parse_metrics(text: str) -> dict:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _wait_for(condition, seconds: float = 60) -> None:
    """Poll until ``condition()``: a guard against a hang, not a timing assertion."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"condition not met within {seconds} s"
        time.sleep(0.05)


def test_max_duration_cuts_a_long_body_as_the_cli_does(cli, serve, tmp_path):
    import numpy as np
    import soundfile

    samples, rate = soundfile.read(str(AUDIO / "music.wav"), dtype="float32")
    long = tmp_path / "thirty.wav"
    soundfile.write(str(long), np.tile(samples, 3), rate)  # 30 s
    expected = cli("--max-duration", 5, "-f", "jsonl", long).stdout.decode().splitlines()
    server = serve("--quiet", "--max-duration", 5)
    status, answer = server.post(f"/tag?name={quote(str(long))}", long.read_bytes())
    assert status == 200 and compare_lines(answer, expected) == []
    assert answer[0]["duration"] == 5.0 and answer[0]["truncated"] is True and answer[0]["audio_duration"] == 30.0


def test_label_control_in_queries_and_server_wide(cli, serve, tmp_path):
    """only= and exclude= are the CLI's --only and --exclude; an unknown name is a 400 naming the nearest label;
    --labels FILE (a file on the server) and the flags set every request's defaults, checked at start."""
    clip = AUDIO / "music.wav"
    server = serve()
    for query, args in (("only=Music&top_k=20", ("--only", "Music", "-k", 20)),
                        ("exclude=Music", ("--exclude", "Music")),
                        (f"only={quote('Male speech, man speaking,Bass guitar')}",
                         ("--only", "Male speech, man speaking,Bass guitar"))):
        expected = cli(clip, "-f", "jsonl", *args).stdout.decode().splitlines()
        status, answer = server.post(f"/tag?name={clip}&{query}", clip.read_bytes())
        assert status == 200 and compare_lines(answer, expected) == [], query
    assert {t["label"] for t in answer[0]["tags"]} == {"Male speech, man speaking", "Bass guitar"}
    assert server.post("/tag?only=Musik", clip.read_bytes()) == \
        (400, [{"error": "only: unknown label 'Musik'; did you mean 'Music'?"}])
    assert server.post("/tag?exclude=Speach", clip.read_bytes()) == \
        (400, [{"error": "exclude: unknown label 'Speach'; did you mean 'Speech'?"}])
    status, answer = server.post(f"/tag?labels={tmp_path}", clip.read_bytes())  # never a path on the server
    assert status == 400 and "unknown query parameter 'labels'" in answer[0]["error"]

    label_map = tmp_path / "labels.csv"
    label_map.write_text("strings,Guitar\nstrings,Violin, fiddle\nvoice,Human voice\n")
    expected = cli(clip, "-f", "jsonl", "--labels", label_map).stdout.decode().splitlines()
    server = serve("--labels", label_map)
    status, answer = server.post(f"/tag?name={clip}", clip.read_bytes())
    assert status == 200 and compare_lines(answer, expected) == []
    assert [t["label"] for t in answer[0]["tags"]] == ["strings", "voice"]
    result = cli("serve", "--port", 0, "--only", "Musik")
    assert (result.returncode, result.stderr.decode().splitlines()) == (
        2, ["audiotag serve: --only: unknown label 'Musik'; did you mean 'Music'? (audiotag serve --help for usage)"])


def test_hash_is_the_sha256_of_the_body(serve):
    """hash=1 (and --hash, for every request): the sha256 of the body's bytes, a file's or a stream's; the rest of
    the record as without it."""
    import hashlib

    server = serve()
    for clip in (AUDIO / "music.wav", AUDIO / "extra" / "librosa-pibble.ogg"):
        data = clip.read_bytes()
        _, plain = server.post(f"/tag?name={clip.name}", data)
        for body in (data, _chunks(data, 4096)):  # a chunked WAV is decoded as it arrives
            status, answer = server.post(f"/tag?name={clip.name}&hash=1", body)
            assert status == 200 and answer[0].pop("sha256") == hashlib.sha256(data).hexdigest()
            assert compare_lines(answer, plain) == []
    status, answer = serve("--hash").post("/tag?name=x.bin", b"not audio at all")
    assert (status, answer) == (422, [{"path": "x.bin", "sha256": hashlib.sha256(b"not audio at all").hexdigest(),
                                       "error": "cannot decode: not audio, or a format audiotag does not know "
                                                    "(headerless samples: --raw FORMAT --rate HZ on stdin)"}])
