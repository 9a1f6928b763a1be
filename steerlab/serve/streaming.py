"""A completion's events as the OpenAI API sends them: collected into one reply, or streamed
as server-sent chunks ending with ``data: [DONE]``; a client that leaves stops its row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

from fastapi import Request

from steerlab.serve.worker import Event, GenerationJob


def emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Any:
    """An ``emit`` for the worker thread that puts events on ``queue`` inside ``loop``."""

    def emit(event: Event) -> None:
        with suppress(RuntimeError):  # a closed loop: the server is gone, nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return emit


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n"


def chunk(head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})


async def collect(events: asyncio.Queue) -> tuple[list[str], Event]:
    """A non-streamed completion's text deltas and its last event (an end or an error)."""
    parts: list[str] = []
    while (event := await events.get())[0] == "delta":
        parts.append(event[1])
    return parts, event


async def disconnected(connection: Request) -> None:
    """Return when the client has gone (its request body was already read)."""
    while (await connection.receive())["type"] != "http.disconnect":
        pass


async def stream(
    job: GenerationJob, events: asyncio.Queue, head: dict[str, Any], usage: bool
) -> AsyncIterator[str]:
    """The SSE chunks of one streamed completion, ending with ``data: [DONE]``."""
    try:
        yield chunk(head, {"role": "assistant", "content": ""})
        while (event := await events.get())[0] == "delta":
            yield chunk(head, {"content": event[1]})
        if event[0] == "error":
            error = {"message": event[1], "type": "server_error", "param": None, "code": None}
            yield sse({"error": error})
            return
        yield chunk(head, {}, event[1])
        if usage:
            yield sse(
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": event[2]}
            )
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a client that left stops its row at the next token
