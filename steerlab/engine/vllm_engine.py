"""Steerlab's generation through vLLM (imports vLLM): one engine per model, every request with
its own steering, all of them continuously batched together.

:class:`VllmEngine` starts vLLM with steerlab's worker (:mod:`steerlab.engine.vllm_worker`) and
vLLM's defaults: compiled (the steering is part of the compiled graph) and with prefix caching
(each steered request carries a ``cache_salt`` derived from its steering, so it reuses only
blocks computed under the same steering). It loads each vector once into every worker and turns
a :class:`~steerlab.steering.setting.Composition` into the request's steering terms. Prompts are
token ids, encoded as the transformers path encodes them, so both engines read the same tokens.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from steerlab.engine.requests import SALTED, STEERING_KEY, encode_steering, steering_salt
from steerlab.engine.vllm_plugin import FRONT_VECTORS, SteeringCheck
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.encoding import TokenSequence
from steerlab.model.handle import resolve_spec
from steerlab.model.scoring import CompletionScore
from steerlab.steering.setting import Composition, SteeringSetting

WORKER = "steerlab.engine.vllm_worker.SteeringWorker"
"""The worker class vLLM is started with (``--worker-cls`` for ``vllm serve``)."""


@dataclass(frozen=True)
class Generation:
    """One request's new tokens (cut at end of sequence), their text, each chosen token's
    log-probability, why it stopped (``stop`` or ``length``), and how many of its prompt's
    tokens vLLM's prefix cache served."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str
    cached_tokens: int = 0


Steer = Composition | SteeringSetting | None
"""What one request is steered by (nothing, one setting, or several together)."""


def _composition(steer: Steer) -> Composition | None:
    return Composition((steer,)) if isinstance(steer, SteeringSetting) else steer


class VllmEngine:
    """A vLLM engine for ``model`` (a steerlab model name, a model folder or a .gguf file).

    ``kv_cache_bytes`` bounds the cache (vLLM's CPU backend would otherwise take most of the
    machine's memory; None leaves the size to vLLM, as on a GPU); ``max_num_seqs`` is how many
    requests share a forward pass. Other keyword arguments go to :class:`vllm.LLM` unchanged.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, dtype: str = "float32",
                 max_model_len: int | None = None, max_num_seqs: int = 64,
                 kv_cache_bytes: int | None = 1 << 30, seed: int = 0, **engine_args: Any) -> None:
        extra = engine_args.pop("additional_config", None) or {}
        self.llm = LLM(model=str(resolve_spec(model)), dtype=dtype, worker_cls=WORKER,
                       max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                       kv_cache_memory_bytes=kv_cache_bytes, seed=seed,
                       additional_config={**extra, "steerlab": {SALTED: True}}, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self._files = tempfile.TemporaryDirectory(prefix="steerlab-vllm-")
        self._loaded: set[str] = set()

    def load(self, composition: Composition | None) -> None:
        """Load every vector of ``composition`` the workers do not hold yet (once per engine)."""
        for part in composition.parts if composition is not None else ():
            vector = part.vector
            if vector.id in self._loaded:
                continue
            path = Path(self._files.name) / f"{vector.id}.safetensors"
            vector.save(path)
            self.llm.collective_rpc("steerlab_add_vector", args=(str(path),))
            FRONT_VECTORS.add(vector)
            self._loaded.add(vector.id)

    def sampling(self, steer: Steer = None, *, max_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, logprobs: int | None = 0,
                 **params: Any) -> SamplingParams:
        """vLLM's sampling parameters for one request, carrying its steering."""
        composition = _composition(steer)
        self.load(composition)
        text = encode_steering(composition)
        sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed, logprobs=logprobs,
                                  extra_args={STEERING_KEY: text} if text else None, **params)
        SteeringCheck.validate_params(sampling)  # vLLM checks it too, where its plugin is found
        return sampling

    def generate(self, prompts: Sequence[Sequence[int]], steer: Steer | Sequence[Steer] = None,
                 **decoding: Any) -> list[Generation]:
        """Each prompt's continuation (greedy unless ``temperature`` > 0), all submitted at once;
        ``steer`` is one steering for every prompt or one per prompt."""
        params = self._per_request(steer, len(prompts), **decoding)
        requests = [steered_prompt(ids, p) for ids, p in zip(prompts, params)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        return [_generation(output, eos) for output in outputs]

    def score(self, seqs: Sequence[TokenSequence], steer: Steer | Sequence[Steer] = None,
              progress: bool = False) -> list[CompletionScore]:
        """Each sequence's completion log-probability (its tokens after ``prompt_len``) from
        vLLM's prompt log-probabilities, all sequences submitted at once; ``steer`` is one
        steering for every sequence or one per sequence, applied as in the transformers path's
        scoring (the whole sequence counts as prompt)."""
        params = self._per_request(steer, len(seqs), max_tokens=1, logprobs=None,
                                   prompt_logprobs=0)
        scored = [i for i, seq in enumerate(seqs) if seq.n_completion > 0]
        requests = [steered_prompt(seqs[i].ids, params[i]) for i in scored]
        outputs = self.llm.generate(requests, [params[i] for i in scored], use_tqdm=progress)
        scores = [CompletionScore(0.0, 0)] * len(seqs)
        for i, output in zip(scored, outputs):
            seq, found = seqs[i], output.prompt_logprobs
            total = sum(found[t][seq.ids[t]].logprob for t in range(seq.prompt_len, len(seq.ids)))
            scores[i] = CompletionScore(total, seq.n_completion)
        return scores

    def _per_request(self, steer: Steer | Sequence[Steer], count: int,
                     **params: Any) -> list[SamplingParams]:
        """Sampling parameters for ``count`` requests: ``steer`` for all, or one steering per
        request; requests given the same steering object share one set, built (its vectors
        loaded, its steering checked) once."""
        steers = list(steer) if isinstance(steer, (list, tuple)) else [steer] * count
        if len(steers) != count:
            raise ValueError(f"{len(steers)} steerings for {count} requests")
        built: dict[int, SamplingParams] = {}
        for one in steers:
            if id(one) not in built:
                built[id(one)] = self.sampling(one, **params)
        return [built[id(one)] for one in steers]

    def close(self) -> None:
        """Stop the engine and drop its vector files."""
        self.llm.llm_engine.engine_core.shutdown()
        self._files.cleanup()


def steered_prompt(ids: Sequence[int], params: SamplingParams) -> TokensPrompt:
    """A request's prompt with the prefix-cache salt of its steering (in ``params``; see
    :func:`~steerlab.engine.requests.steering_salt`): prefix caching then reuses only blocks
    computed under the same steering."""
    salt = steering_salt((params.extra_args or {}).get(STEERING_KEY), len(ids))
    prompt = TokensPrompt(prompt_token_ids=list(ids))
    if salt is not None:
        prompt["cache_salt"] = salt
    return prompt


def _generation(output: Any, eos: int | None) -> Generation:
    """A vLLM request's output as a :class:`Generation`, its end-of-sequence token left out (as
    the transformers path leaves it out)."""
    completion = output.outputs[0]
    tokens = list(completion.token_ids)
    chosen = [step[token].logprob for token, step in zip(tokens, completion.logprobs or [])]
    if tokens and tokens[-1] == eos and completion.finish_reason == "stop":
        tokens, chosen = tokens[:-1], chosen[:-1]
    return Generation(tokens, completion.text, chosen, completion.finish_reason or "length",
                      output.num_cached_tokens or 0)
