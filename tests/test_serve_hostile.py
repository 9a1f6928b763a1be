"""The server against hostile and departing clients (issue 16's probe): every bad number, text
or body gets an OpenAI-shaped 4xx, a huge or stalled body cannot hold the server, slow
tokenising does not block other requests, and a client that leaves frees its place."""

import json
import socket
import threading
import time
import urllib.request

import pytest
import torch
from tiny import tiny_model

from steerlab.serve.app import create_app
from steerlab.serve.launch import serving
from steerlab.serve.schema import ServeSettings
from steerlab.serve.worker import Decoding, GenerationJob
from steerlab.steering.vectors import SteeringVector, meta_for

LIMIT = 64 << 10


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def app(model):
    vector = SteeringVector({1: torch.ones(32)}, meta_for(model, "test"))
    vector.meta.residual_norms[1] = 10.0
    settings = ServeSettings(max_tokens=200, max_body_bytes=LIMIT, body_timeout_s=0.5,
                             batch_wait_ms=0)
    return create_app(model, {"v": vector}, settings)


@pytest.fixture(scope="module")
def url(app):
    with serving(app) as base_url:
        yield base_url


def raw(url, body: bytes, path="/chat/completions", headers=None, timeout=30):
    """(status, parsed JSON or text) of a raw POST."""
    request = urllib.request.Request(url + path, body, {"Content-Type": "application/json",
                                                        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def body(**change) -> bytes:
    return json.dumps({"model": "tiny-llama", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}], **change}).encode()


def assert_openai_error(status, reply, expected_status, fragment):
    assert status == expected_status, (status, reply)
    assert isinstance(reply, dict) and set(reply["error"]) == {"message", "type", "param", "code"}
    assert fragment in reply["error"]["message"], reply


@pytest.mark.parametrize("text, fragment", [
    (b'"steering": [{"vector": "v", "multiplier": NaN}]', "steering[0].multiplier"),
    (b'"steering": [{"vector": "v", "multiplier": Infinity}]', "steering[0].multiplier"),
    (b'"steering": [{"vector": "v", "norm_ratio": Infinity}]', "steering[0].norm_ratio"),
    (b'"steering": [{"vector": "v", "norm_ratio": 1e308, "multiplier": 4}]', "overflow"),
    (b'"steering": [{"vector": "v", "multiplier": true}]', "steering[0].multiplier"),
    (b'"steering": [{"vector": "v", "layers": [true]}]', "steering[0].layers[0]"),
    (b'"max_tokens": true', "max_tokens"),
    (b'"max_tokens": 2.5', "max_tokens"),
    (b'"stream": "yes"', "stream"),
    (b'"temperature": NaN', "temperature"),
    (b'"seed": 18446744073709551616', "seed"),
    (b'"seed": -9223372036854775809', "seed"),
    (b'"messages": [{"role": "user", "content": "x\\ud800y"}]', "messages[0].content"),
    (b'"stop": ["\\udfff"]', "stop"),
])
def test_bad_numbers_and_text_get_400(url, text, fragment):
    start = body()[:-1] + b", " + text + b"}"
    status, reply = raw(url, start)
    assert_openai_error(status, reply, 400, fragment)


def test_a_64_bit_seed_is_accepted(url):
    status, reply = raw(url, body(seed=2**64 - 1, temperature=1.0))
    assert status == 200, reply


def test_a_body_over_the_limit_gets_413_declared_or_streamed(url):
    huge = body(messages=[{"role": "user", "content": "x" * (LIMIT + 10)}])
    status, reply = raw(url, huge)
    assert_openai_error(status, reply, 413, f"limit of {LIMIT} bytes")
    # Without a Content-Length (chunked), counted as it arrives.
    with socket.create_connection(("127.0.0.1", int(url.split(":")[2].split("/")[0]))) as sock:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(head)
        for start in range(0, len(huge), 16384):
            piece = huge[start:start + 16384]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                break  # the server answered and closed
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]


def test_a_body_never_sent_gets_408_and_frees_the_connection(url):
    port = int(url.split(":")[2].split("/")[0])
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert time.monotonic() - start < 5
    assert b"request body not received within 0.5 s" in answer


def test_slow_tokenising_does_not_block_other_requests(app, url, monkeypatch):
    service = app.state.service
    prepare = service.prepare

    def slow(request):
        time.sleep(2.0)
        return prepare(request)

    monkeypatch.setattr(service, "prepare", slow)
    chat = threading.Thread(target=raw, args=(url, body()))
    chat.start()
    time.sleep(0.2)
    start = time.monotonic()
    with urllib.request.urlopen(url + "/models", timeout=10) as response:
        assert response.status == 200
    waited = time.monotonic() - start
    chat.join()
    assert waited < 0.5, waited


def test_departed_clients_are_dropped_before_their_batch_runs(app, url, monkeypatch):
    """Requests whose clients closed their connections while the worker was busy never run:
    the next request waits only for the job in progress."""
    worker = app.state.worker
    release, busy = threading.Event(), threading.Event()
    submitted = []
    submit = worker.submit
    monkeypatch.setattr(worker, "submit", lambda job: (submitted.append(job), submit(job)))

    def hold(event):
        busy.set()
        release.wait(10)

    blocker = GenerationJob([1, 2, 3], Decoding(1), hold)
    worker.submit(blocker)
    assert busy.wait(5)
    jobs_before = worker.jobs
    port = int(url.split(":")[2].split("/")[0])
    for _ in range(5):  # sampled requests: each would run alone
        with socket.create_connection(("127.0.0.1", port)) as sock:
            request = body(temperature=1.0, max_tokens=200)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(request), request))
            time.sleep(0.05)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len(submitted) == 6 and all(job.cancelled for job in submitted[1:]):
            break
        time.sleep(0.02)
    assert len(submitted) == 6 and all(job.cancelled for job in submitted[1:])
    release.set()
    status, reply = raw(url, body())
    assert status == 200, reply
    assert worker.jobs == jobs_before + 1  # only the new request ran after the blocker
