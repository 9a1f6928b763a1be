"""Benchmark: the two floods issue 16's probe found stalling `steerlab serve`, and the wait they
leave for the next well-behaved request.

Starts `steerlab serve` (the default model) as a subprocess on a free loopback port, then:

1. **Abandoned requests**: 40 sampled chat completions (temperature 1, 256 tokens each) whose
   clients give up after 0.5 s, as a client with a short timeout does; then one greedy
   4-token request. Its wait is compared with the same request on the idle server.
   Target: under 2 s (the probe measured 43.5 s, with 0.08 s idle).
2. **A 10 MB body** (one user message of 10 MB) sent while `GET /v1/models` is polled every
   50 ms, and a body just under the server's limit (tokenised, then refused for its length)
   likewise: the slowest poll during each. Target: under 0.5 s (the probe measured 16-22 s).

Loopback only, bounded in count and time. Prints and saves bench/results/serve_hostile.json.
Run: .venv/bin/python bench/serve_hostile.py
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from saving import machine, save

from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.serve.launch import serve_process

ABANDONED, ABANDON_AFTER_S, SAMPLED_TOKENS = 40, 0.5, 256
LIMIT = 2 << 20  # the server's default --max-body-bytes


def post(url: str, payload: dict | bytes, timeout: float) -> tuple[int | None, float]:
    """(status or None when the client gave up, seconds) of one POST."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (TimeoutError, urllib.error.URLError, ConnectionError):
        status = None
    return status, time.perf_counter() - start


def post_body(base: str, payload: bytes) -> tuple[int | None, float]:
    """POST a big body over a plain socket, reading the answer even when the server answers
    (413) and closes before the body is all sent, which a usual client reports as an error."""
    host, port = base.split("//")[1].split("/")[0].split(":")
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        try:
            sock.sendall(head + payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server has answered already
        answer = sock.recv(4096)
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1") else None
    return status, time.perf_counter() - start


def chat(content: str, **fields) -> dict:
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": content}], **fields}


def small_request(base: str) -> float:
    status, seconds = post(base + "/chat/completions",
                           chat("Name a colour.", max_tokens=4, temperature=0), 120)
    assert status == 200, status
    return seconds


def abandoned_flood(base: str) -> dict:
    idle = statistics.median(small_request(base) for _ in range(3))
    sampled = chat("Write a long story about the sea.", max_tokens=SAMPLED_TOKENS, temperature=1)
    with ThreadPoolExecutor(ABANDONED) as pool:
        outcomes = list(pool.map(lambda _: post(base + "/chat/completions", sampled,
                                                ABANDON_AFTER_S)[0], range(ABANDONED)))
    after = small_request(base)
    return {"abandoned": ABANDONED, "gave_up": sum(status is None for status in outcomes),
            "idle_wait_s": round(idle, 3), "wait_after_flood_s": round(after, 3)}


def polled_during(base: str, payload: bytes) -> dict:
    """Send one big body while polling /v1/models; the body's answer and the slowest poll."""
    polls: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            start = time.perf_counter()
            with urllib.request.urlopen(base + "/models", timeout=60) as response:
                response.read()
            polls.append(time.perf_counter() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    status, seconds = post_body(base, payload)
    done.set()
    poller.join()
    return {"bytes": len(payload), "status": status, "answered_in_s": round(seconds, 3),
            "polls": len(polls), "slowest_poll_s": round(max(polls), 3),
            "median_poll_s": round(statistics.median(polls), 4)}


def main() -> dict:
    with serve_process(["--model", DEFAULT_MODEL, "--max-tokens", str(SAMPLED_TOKENS)]) as base:
        flood = abandoned_flood(base)
        huge = json.dumps(chat("x " * (5 << 20))).encode()
        under = json.dumps(chat("word " * ((LIMIT - 200) // 5))).encode()
        bodies = {"10MB": polled_during(base, huge), "under_limit": polled_during(base, under)}
        after = small_request(base)
    return {"model": DEFAULT_MODEL, "abandoned_flood": flood, "big_bodies": bodies,
            "wait_after_everything_s": round(after, 3), "machine": machine()}


if __name__ == "__main__":
    result = main()
    flood = result["abandoned_flood"]
    print(f"abandoned flood: {flood['gave_up']}/{flood['abandoned']} clients gave up; next 4-token "
          f"request waited {flood['wait_after_flood_s']:.2f} s (idle {flood['idle_wait_s']:.2f} s)")
    for name, row in result["big_bodies"].items():
        print(f"{name} body ({row['bytes']:,} bytes): answered {row['status']} in "
              f"{row['answered_in_s']:.2f} s; slowest of {row['polls']} /v1/models polls "
              f"{row['slowest_poll_s']:.3f} s")
    print(f"saved {save('serve_hostile', result)}")
