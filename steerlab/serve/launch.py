"""Running the server: in the foreground (`steerlab serve`), on a background thread
(:func:`serving`, for tests and notebooks), or as a child process (:func:`serve_process`, for
benchmarks and end-to-end tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from fastapi import FastAPI

from steerlab.model.handle import ModelHandle
from steerlab.serve.app import create_app
from steerlab.serve.schema import ServeSettings
from steerlab.steering.conditions import Condition
from steerlab.steering.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.engine.vllm_engine import VllmEngine

DEFAULT_HOST = "127.0.0.1"


def serve(
    model: ModelHandle,
    vectors: Mapping[str, SteeringVector] | None = None,
    settings: ServeSettings | None = None,
    host: str = DEFAULT_HOST,
    port: int = 8000,
    log_level: str = "info",
    conditions: Mapping[str, Condition] | None = None,
    engine: VllmEngine | None = None,
) -> None:
    """Run the server with uvicorn until interrupted (loopback only unless ``host`` says else;
    the Host check answers to ``host``)."""
    import uvicorn

    settings = (settings or ServeSettings()).model_copy(update={"host": host})
    app = create_app(model, vectors, settings, conditions, engine)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def serving(
    app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, timeout: float = 30.0
) -> Iterator[str]:
    """Run ``app`` on a background thread (port 0: a free one); yield its base URL (``…/v1``).

    For tests, benchmarks and notebooks: the server stops when the block ends.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def run() -> None:
        with suppress(SystemExit):  # uvicorn's way to give up (e.g. a port taken); it logged why
            server.run()

    thread = threading.Thread(target=run, name="steerlab-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} (uvicorn logged why)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300.0
) -> Iterator[str]:
    """Run ``steerlab serve ARGS`` in a child process on a free loopback port; yield its base
    URL (``…/v1``) once it answers, and stop it when the block ends.

    For benchmarks and end-to-end tests of the command itself (``args`` must not set
    ``--host`` or ``--port``); its log (stderr) goes to this process's stderr.
    """
    port = free_port()
    command = [sys.executable, "-m", "steerlab.cli", "serve", "--port", str(port), *args]
    process = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL
    )
    base_url = f"http://{DEFAULT_HOST}:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(base_url + "/models"):
            if process.poll() is not None:
                raise RuntimeError(
                    f"steerlab serve exited with code {process.returncode} before it answered"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"steerlab serve did not answer on {base_url} within {timeout:g} s"
                )
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(60)


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status, 401 included)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
