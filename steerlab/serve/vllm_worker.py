"""The server's generation worker on vLLM (``steerlab serve --engine vllm``; imports vLLM).

:class:`VllmGenerationWorker` takes the same :class:`~steerlab.serve.worker.GenerationJob` as the
transformers worker and streams the same events, but does not batch by setting: one thread
drives the engine, adding each job as a request the moment it arrives, whatever its steering,
and stepping vLLM's continuous batch. Every step's new tokens go through the same per-row text
handling (end of sequence, stop strings, held-back partial characters); a row that ends on a
stop string, or whose client has gone, is aborted in vLLM at once.
"""

from __future__ import annotations

from itertools import count
from typing import Any

from vllm.sampling_params import RequestOutputKind

from steerlab.engine.vllm_engine import VllmEngine, steered_prompt
from steerlab.model.handle import ModelHandle
from steerlab.serve.worker import GenerationJob, QueueFull, RowStream, WorkerThread


class VllmGenerationWorker(WorkerThread):
    """One thread stepping ``engine`` with every submitted job; the interface of
    :class:`~steerlab.serve.worker.GenerationWorker` (``batches`` counts engine steps)."""

    thread_name = "steerlab-vllm"

    def __init__(self, engine: VllmEngine, model: ModelHandle, max_pending: int = 256) -> None:
        super().__init__()
        self.engine, self.model, self.max_pending = engine, model, max_pending
        self.batches = 0
        self.jobs = 0
        self._incoming: list[GenerationJob] = []
        self._rows: dict[str, RowStream] = {}
        self._ids = count()

    def _take_unfinished(self) -> list[GenerationJob]:
        taken = [*self._incoming, *(row.job for row in self._rows.values())]
        self._incoming, self._rows = [], {}
        return taken

    def submit(self, job: GenerationJob) -> None:
        with self._ready:
            self._incoming = [j for j in self._incoming if not j.cancelled]
            if len(self._incoming) + len(self._rows) >= self.max_pending:
                raise QueueFull(f"{len(self._incoming) + len(self._rows)} requests are already "
                                "running or waiting; retry later")
            self._incoming.append(job)
            self._ready.notify()

    def _run(self) -> None:
        llm = self.engine.llm.llm_engine
        while True:
            with self._ready:
                while not self._incoming and not self._rows and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                new, self._incoming = self._incoming, []
            for job in new:
                self._add(llm, job)
            self._drop_cancelled(llm)
            if not self._rows:
                continue
            try:
                outputs = llm.step()
            except Exception as err:  # noqa: BLE001 - every client must hear of it
                for request_id, row in list(self._rows.items()):
                    row.job.emit(("error", f"generation failed: {type(err).__name__}: {err}"))
                    self._rows.pop(request_id)
                continue
            self.batches += 1
            for output in outputs:
                self._feed(llm, output)

    def _add(self, llm: Any, job: GenerationJob) -> None:
        if job.cancelled:
            return
        decoding = job.decoding
        try:
            params = self.engine.sampling(job.steering, max_tokens=decoding.max_new_tokens,
                                          temperature=decoding.temperature, top_p=decoding.top_p,
                                          seed=decoding.seed, logprobs=None)
        except ValueError as err:  # checked by the server already; never silently unsteered
            job.emit(("error", f"generation failed: {err}"))
            return
        params.output_kind = RequestOutputKind.DELTA
        request_id = f"steerlab-{next(self._ids)}"
        llm.add_request(request_id, steered_prompt(job.prompt_ids, params), params)
        self._rows[request_id] = RowStream(job, self.model)
        self.jobs += 1

    def _feed(self, llm: Any, output: Any) -> None:
        row = self._rows.get(output.request_id)
        if row is None:
            return
        done = any(row.feed(token) for token in output.outputs[0].token_ids)  # stops at the end
        if output.finished or done:
            if not output.finished:
                llm.abort_request([output.request_id])
            row.close()
            self._rows.pop(output.request_id)

    def _drop_cancelled(self, llm: Any) -> None:
        """Abort the requests whose clients have gone."""
        gone = [request_id for request_id, row in self._rows.items() if row.job.cancelled]
        if gone:
            llm.abort_request(gone)
            for request_id in gone:
                self._rows.pop(request_id)
