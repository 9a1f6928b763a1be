"""The vLLM engine: each request's steering in a continuously batched pass equals the
transformers path's (tokens and log-probabilities), whatever else shares the pass.

Skipped, with the reason printed, where vLLM is not installed (``pip install -e .[vllm]``;
``make test`` installs it). One engine on a tiny model serves the module, in a process of its
own.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from types import SimpleNamespace

import pytest
import torch

with warnings.catch_warnings():  # vLLM's and torch's own deprecations, met while vLLM imports
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e .[vllm])")
    import vllm.v1.worker.cpu_worker  # noqa: F401

from tiny import COMMON, byte_tokenizer, random_vector  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402

from steerlab.engine.requests import STEERING_KEY  # noqa: E402
from steerlab.engine.vllm_worker import check_config  # noqa: E402
from steerlab.model.handle import load_model  # noqa: E402
from steerlab.steering.setting import Composition, SteeringSetting  # noqa: E402
from steerlab.steering.vectors import SteeringVector, meta_for  # noqa: E402

PROMPTS = ["Hi", "Tell me a long story about a fox", "Why?", "Name three colours please",
           "A prompt long enough to be scheduled in several chunks: " + "lorem ipsum " * 12]
NEW = 10

# Deprecations vLLM and torch raise inside vLLM's own code (the suite turns steerlab's into
# errors): torch.distributed.reduce_op, torch.jit in inductor's import.
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning:vllm"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random llama (head size 64, which vLLM's CPU attention takes) read by both
    engines from one folder."""
    monkey = pytest.MonkeyPatch()
    # The engine in its own process, as `steerlab serve --engine vllm` runs it: vLLM's CPU
    # worker binds its process's threads, which must not be this one's.
    monkey.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkey.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from steerlab.engine.vllm_engine import VllmEngine

    folder = tmp_path_factory.mktemp("tiny-vllm")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=256, **COMMON)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    hf = load_model(str(folder))
    # vLLM's defaults otherwise: compiled, prefix caching
    engine = VllmEngine(str(folder), kv_cache_bytes=KV_BYTES, **ENGINE_SIZES)
    yield hf, engine
    engine.close()
    monkey.undo()


ENGINE_SIZES = dict(max_model_len=512, max_num_seqs=8, max_num_batched_tokens=64)
KV_BYTES = 32 << 20


def encoded(hf) -> list[list[int]]:
    return [hf.encode_prompt(hf.format_prompt(p)) for p in PROMPTS]


def applied(hf, steer: SteeringSetting | Composition | None):
    """``steer``'s hooks on ``hf`` for the length of a ``with`` block (nothing for None)."""
    if steer is None:
        return contextlib.nullcontext()
    return (steer if isinstance(steer, Composition) else Composition((steer,))).apply(hf)


@torch.no_grad()
def transformers_greedy(hf, rows, steer, new: int = NEW) -> list[tuple[list[int], list[float]]]:
    """Each prompt alone through transformers' generate, steered by steerlab's hooks: the new
    tokens and each one's log-probability."""
    out = []
    for row in rows:
        with applied(hf, steer):
            result = hf.model.generate(torch.tensor([row]), max_new_tokens=new, do_sample=False,
                                       output_scores=True, return_dict_in_generate=True,
                                       pad_token_id=hf.tokenizer.pad_token_id, eos_token_id=None)
        tokens = result.sequences[0, len(row):].tolist()
        logprobs = [torch.log_softmax(score[0].float(), -1)[t].item()
                    for score, t in zip(result.scores, tokens)]
        out.append((tokens, logprobs))
    return out


def vllm_greedy(engine, rows, steer) -> list[tuple[list[int], list[float]]]:
    results = engine.generate(rows, steer, max_tokens=NEW, ignore_eos=True)
    return [(r.token_ids, r.logprobs) for r in results]


def attention_vector(hf, layers=(1, 2), seed: int = 5) -> SteeringVector:
    """A vector on the heads' outputs (the site ITI edits), as ITI's method would save one."""
    generator = torch.Generator().manual_seed(seed)
    directions = {layer: 2 * torch.randn(hf.d_model, generator=generator) for layer in layers}
    meta = meta_for(hf, "random").model_copy(update={"site": "attention"})
    return SteeringVector(directions, meta)


def settings(hf) -> dict[str, SteeringSetting | Composition]:
    vector = random_vector(hf, [1, 2], seed=1)
    return {
        "add": SteeringSetting(vector, 8.0),
        "norm-ratio": SteeringSetting(vector, 4.0, norm_ratio=2.0),
        "generated": SteeringSetting(vector, 8.0, positions="generated"),
        "prompt": SteeringSetting(vector, 8.0, positions="prompt"),
        "ablate": SteeringSetting(vector, 1.0, intervention="ablate"),
        "angular": SteeringSetting(vector, 60.0, intervention="angular"),
        "composition": Composition((SteeringSetting(random_vector(hf, [3], seed=3), 1.0,
                                                    intervention="ablate"),
                                    SteeringSetting(random_vector(hf, [0], seed=2), -6.0),
                                    SteeringSetting(vector, 6.0, positions="generated"))),
        "attention": SteeringSetting(attention_vector(hf), 3.0),
    }


@pytest.mark.parametrize("name", ["add", "norm-ratio", "generated", "prompt", "ablate",
                                  "angular", "composition", "attention"])
def test_each_setting_equals_the_transformers_path(models, name):
    hf, engine = models
    steer = settings(hf)[name]
    rows = encoded(hf)
    expected = transformers_greedy(hf, rows, steer)
    got = vllm_greedy(engine, rows, steer)
    for (want_tokens, want_lp), (tokens, lp) in zip(expected, got):
        n = len(want_tokens)  # transformers may end at the end-of-sequence token
        assert tokens[:n] == want_tokens
        assert lp[:n] == pytest.approx(want_lp, abs=1e-4)
    unsteered = vllm_greedy(engine, rows, None)
    assert any(g != u for g, u in zip(got, unsteered))  # the setting did change something


def test_a_mixed_batch_equals_each_request_alone(models):
    hf, engine = models
    rows = encoded(hf)
    steers = [None, *settings(hf).values()]
    batch = [(rows[i % len(rows)], steers[i % len(steers)]) for i in range(12)]
    together = engine.generate([r for r, _ in batch], [s for _, s in batch], max_tokens=NEW,
                               ignore_eos=True)
    for (row, steer), mixed in zip(batch, together):
        (alone,) = engine.generate([row], steer, max_tokens=NEW, ignore_eos=True)
        assert mixed.token_ids == alone.token_ids
        assert mixed.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_multiplier_zero_is_plain_compiled_vllms_own_output(models):
    """×0 and no steering through steerlab's worker give, bit for bit, what vLLM's own worker
    gives with the same (compiled, prefix-caching) settings: the tables leave an unsteered
    token exactly as vLLM's graph computes it. One request at a time: how vLLM batches requests
    that reach its engine process one by one depends on timing, and another batch shape may
    round differently in either engine."""
    from vllm import LLM

    hf, engine = models
    rows = encoded(hf)
    zero = SteeringSetting(random_vector(hf, [1, 2], seed=1), 0.0)
    engine.llm.reset_prefix_cache()
    steered = [vllm_greedy(engine, [row], zero)[0] for row in rows]
    unsteered = [vllm_greedy(engine, [row], None)[0] for row in rows]
    plain = LLM(model=engine.llm.llm_engine.model_config.model, dtype="float32", seed=0,
                kv_cache_memory_bytes=KV_BYTES, **ENGINE_SIZES)
    try:
        assert plain.llm_engine.vllm_config.compilation_config.mode != 0  # compiled, as ours
        sampling = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True, logprobs=0)
        outputs = [plain.generate([{"prompt_token_ids": row}], sampling, use_tqdm=False)[0]
                   for row in rows]
    finally:
        plain.llm_engine.engine_core.shutdown()
    own = [(list(o.outputs[0].token_ids),
            [step[t].logprob for t, step in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)])
           for o in outputs]
    assert steered == own
    assert unsteered == own


LONG = ("You are a patient assistant for a public library. Answer briefly, cite the shelf, "
        "and never invent a title. ") * 3


def test_prefix_caching_reuses_a_prompt_only_under_the_same_steering(models):
    """A long shared prompt with caching on: each steering's answer equals its answer from an
    empty cache whatever ran before; the same steering again is served from the cache (vLLM's
    own count of cached tokens), and steering of every position also on another question after
    the same prompt; steering of the prompt or of generated tokens only shares blocks with
    requests of the same steering whose prompts end at the same token (see the next test)."""
    hf, engine = models
    vector = random_vector(hf, [1, 2], seed=1)
    rows = [hf.encode_prompt(hf.format_prompt(LONG + question))
            for question in ("Where is the atlas?", "Who wrote it?")]
    steers = {"none": None, "add": SteeringSetting(vector, 8.0),
              "other": SteeringSetting(vector, -8.0),
              "ablate": SteeringSetting(vector, 1.0, intervention="ablate"),
              "generated": SteeringSetting(vector, 8.0, positions="generated")}

    def ask(name: str, row: list[int]):
        (out,) = engine.generate([row], steers[name], max_tokens=NEW, ignore_eos=True)
        return out

    uncached = {}
    for name in steers:
        for i, row in enumerate(rows):
            engine.llm.reset_prefix_cache()
            uncached[name, i] = ask(name, row)
            assert uncached[name, i].cached_tokens == 0
    assert len({tuple(g.token_ids) for g in uncached.values()}) > 2  # the steering matters

    engine.llm.reset_prefix_cache()
    hits = {}
    for name, i in [("add", 0), ("other", 0), ("none", 0), ("ablate", 0), ("generated", 0),
                    ("add", 0), ("add", 1), ("none", 1), ("ablate", 1), ("generated", 0),
                    ("generated", 1)]:
        got = ask(name, rows[i])
        want = uncached[name, i]
        assert got.token_ids == want.token_ids, (name, i)
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5), (name, i)
        hits.setdefault(name, []).append(got.cached_tokens)
    assert hits["other"] == [0] and hits["none"][0] == 0 and hits["ablate"][0] == 0
    assert hits["add"][0] == 0 and hits["add"][1] > 0  # the same steering, the same prompt
    assert hits["add"][2] > 0 and hits["none"][1] > 0 and hits["ablate"][1] > 0  # the prefix
    assert hits["generated"] == [0, hits["generated"][1], 0] and hits["generated"][1] > 0


def test_a_follow_up_never_reuses_an_answers_keys_computed_under_other_steering(models):
    """vLLM caches the blocks of generated tokens too, and a follow-up prompt that contains an
    earlier answer finds them: it may reuse them only where its own steering would have computed
    the same keys and values. Each follow-up equals its answer from an empty cache; steering of
    every position shares the earlier answer's blocks."""
    hf, engine = models
    vector = random_vector(hf, [1, 2], seed=1)
    steers = {"none": None, "add": SteeringSetting(vector, 8.0),
              "prompt": SteeringSetting(vector, 8.0, positions="prompt"),
              "generated": SteeringSetting(vector, 8.0, positions="generated")}
    first = hf.encode_prompt(hf.format_prompt(LONG))
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    length = -(-len(first) // block) * block - len(first) + 8  # fills a block with answer tokens
    assert len(first) + length + 16 <= ENGINE_SIZES["max_model_len"]
    for earlier, later in [("generated", "none"), ("generated", "generated"),
                           ("prompt", "prompt"), ("add", "add")]:
        engine.llm.reset_prefix_cache()
        (answer,) = engine.generate([first], steers[earlier], max_tokens=length, ignore_eos=True)
        follow = first + answer.token_ids + hf.encode_prompt(" Thanks, and where is it?")
        engine.llm.reset_prefix_cache()
        (alone,) = engine.generate([follow], steers[later], max_tokens=NEW, ignore_eos=True)
        engine.llm.reset_prefix_cache()
        engine.generate([first], steers[earlier], max_tokens=length, ignore_eos=True)
        (after,) = engine.generate([follow], steers[later], max_tokens=NEW, ignore_eos=True)
        assert after.token_ids == alone.token_ids, (earlier, later)
        assert after.logprobs == pytest.approx(alone.logprobs, abs=1e-5), (earlier, later)
        assert (after.cached_tokens > 0) == (earlier == later == "add"), (earlier, later)


@pytest.mark.parametrize("value, message", [
    ("not json", "steering: not JSON"),
    (json.dumps([{"vector": "no-such-vector"}]), "steering[0].vector: no vector 'no-such-vector'"),
    (json.dumps([{"vector": "V", "layers": [9]}]),
     "steering[0].layers: [9] outside the model's layers 0..3"),
    (json.dumps([{"vector": "V", "multiplier": "x"}]), "steering[0.multiplier]"),
    (json.dumps([{"vector": "V", "condition": "c"}]), "steering[0].condition: conditional"),
    (json.dumps([{"vector": "V", "intervention": "ablate"}] * 3),
     "steering: 3 ablations on one token at the residual site; this engine allows 2"),
])
def test_bad_steering_is_refused_before_it_is_scheduled(models, value, message):
    hf, engine = models
    vector = random_vector(hf, [1], seed=4)
    engine.load(Composition((SteeringSetting(vector),)))
    value = value.replace('"V"', json.dumps(vector.id))
    params = SamplingParams(max_tokens=2, extra_args={STEERING_KEY: value})
    pattern = message.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(VLLMValidationError, match=pattern):  # vLLM's check, through the plugin
        engine.llm.generate([{"prompt_token_ids": encoded(hf)[0]}], params, use_tqdm=False)
    assert len(engine.generate(encoded(hf)[:1], None, max_tokens=2, ignore_eos=True)[0]
               .token_ids) == 2  # the engine still serves


def test_a_vector_file_can_be_named_by_path(models, tmp_path):
    hf, engine = models
    vector = random_vector(hf, [2], seed=7)
    vector.save(tmp_path / "v.safetensors")
    params = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True, logprobs=0,
                            extra_args={STEERING_KEY: json.dumps(
                                [{"vector": str(tmp_path / "v.safetensors"), "multiplier": 8}])})
    (by_path,) = engine.llm.generate([{"prompt_token_ids": encoded(hf)[1]}], params,
                                     use_tqdm=False)
    (by_id,) = engine.generate(encoded(hf)[1:2], SteeringSetting(vector, 8.0), max_tokens=NEW,
                               ignore_eos=True)
    assert list(by_path.outputs[0].token_ids) == by_id.token_ids


@pytest.mark.parametrize("change, message", [
    ({"additional_config": {}}, "cache_salt"),
    ({"speculative_config": object()}, "speculative decoding"),
])
def test_engine_settings_that_would_steer_wrongly_are_refused(models, change, message):
    """Compiled graphs and prefix caching pass (the engine runs both); prefix caching with
    requests that may not be salted, and speculative decoding, do not."""
    _, engine = models
    config = engine.llm.llm_engine.vllm_config
    assert config.cache_config.enable_prefix_caching
    assert config.compilation_config.mode != 0  # compiled
    check_config(config)  # the engine's own settings pass
    fields = {name: getattr(config, name)
              for name in ("cache_config", "compilation_config", "speculative_config",
                           "additional_config")}
    with pytest.raises(ValueError, match=message):
        check_config(SimpleNamespace(**{**fields, **change}))


def test_the_tables_shape_joins_vllms_compile_cache_key(models):
    """The compiled graph follows the tables' terms, which the environment sets: the worker
    writes them into its config's additional_config, which vLLM's compile-cache hash takes, so
    a graph cached for other tables is never loaded."""
    from steerlab.engine.graph_edits import SLOTS, configured_terms

    _, engine = models
    (tables,) = engine.llm.collective_rpc("steerlab_tables")
    assert {k: tables[k] for k in ("slots", "terms")} == {"slots": SLOTS,
                                                         "terms": configured_terms()}
    assert tables["additional_config"]["tables"] == {"slots": SLOTS, "terms": configured_terms()}
    front = engine.llm.llm_engine.vllm_config  # the same settings, without the tables
    assert "tables" not in front.additional_config["steerlab"]
    assert tables["config_hash"] != front.compute_hash()


def test_open_ended_answers_through_vllm_equal_the_transformers_ones(models):
    from steerlab.data.files import OpenQuestion
    from steerlab.evaluation.openended import generate_answers, steering_arms

    hf, engine = models
    questions = [OpenQuestion(p, f"q{i}") for i, p in enumerate(PROMPTS)]
    arms = steering_arms(SteeringSetting(random_vector(hf, [1, 2], seed=1)), [-8.0, 8.0])
    plain = generate_answers(hf, questions, arms, max_new_tokens=8, batch_size=2,
                             progress=False)
    through = generate_answers(hf, questions, arms, max_new_tokens=8, batch_size=2,
                               progress=False, engine=engine)
    key = lambda r: (r["arm"], r["item_id"])  # noqa: E731
    assert ({key(r): r["answer"] for r in through} == {key(r): r["answer"] for r in plain})
    assert len({r["answer"] for r in through}) > len(questions)  # the arms answer differently
    assert all(r["engine"] == "vllm" for r in through)


@pytest.mark.parametrize("name", ["add", "norm-ratio", "prompt", "ablate", "composition",
                                  "attention"])
def test_likelihood_scores_through_vllm_equal_the_transformers_ones(models, name):
    """Multiple-choice and A/B records scored from vLLM's prompt log-probabilities: every
    choice's log-probability equals the transformers path's, at each multiplier."""
    from steerlab.data.files import MCItem, PreferencePair
    from steerlab.evaluation.likelihood import Sweep, evaluate

    hf, engine = models
    steer = settings(hf)[name]
    if isinstance(steer, Composition):  # the last part swept, the others held
        *held, swept = steer.parts
        sweep = Sweep(swept, [0.0, 1.0, 2.0], Composition(tuple(held)))
    else:
        sweep = Sweep(steer, [0.0, 1.0, 2.0])
    mc = [MCItem(p, ("yes", "no, never", "a longer answer of several tokens"), 0, f"m{i}")
          for i, p in enumerate(PROMPTS)]
    ab = [PreferencePair(p, "(A", "(B", f"p{i}") for i, p in enumerate(PROMPTS)]
    for items in (mc, ab):
        plain = evaluate(hf, items, [Sweep(), sweep], progress=False)
        through = evaluate(hf, items, [Sweep(), sweep], progress=False, engine=engine)
        assert [r["item_id"] for r in through] == [r["item_id"] for r in plain]
        for want, got in zip(plain, through):
            assert got["engine"] == "vllm"
            assert got["multiplier"] == want["multiplier"]
            # sums over up to 40 tokens: float32 summation order shows at 1e-7 of the sum
            assert got["logprobs"] == pytest.approx(want["logprobs"], rel=1e-6, abs=1e-4)
            assert got["n_tokens"] == want["n_tokens"]
        steered = [lp for r in through if r["multiplier"] == 2.0 for lp in r["logprobs"]]
        unsteered = [lp for r in through if r["vector_id"] is None for lp in r["logprobs"]]
        assert steered != pytest.approx(unsteered, abs=1e-3)  # the setting changed the scores


def test_the_server_on_vllm_answers_concurrent_mixed_requests_as_the_transformers_one(models):
    """``steerlab serve --engine vllm``: the same API, every request with its own steering in
    one continuous batch; each reply (text, finish reason, usage) equals the transformers
    server's, streamed or not, and a bad term is a 400 naming its field."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from steerlab.serve.app import create_app
    from steerlab.serve.launch import serving
    from steerlab.serve.schema import ServeSettings

    hf, engine = models
    vectors = {"a": random_vector(hf, [1, 2], seed=1), "b": random_vector(hf, [2], seed=2)}
    settings = ServeSettings(max_tokens=12, max_multiplier=8, max_context=512)
    asks = [(prompt, steering) for prompt in PROMPTS[:4] for steering in (
        None, [{"vector": "a", "multiplier": 8}], [{"vector": "b", "multiplier": -8}],
        [{"vector": "a", "multiplier": 1, "intervention": "ablate"},
         {"vector": "b", "multiplier": 6, "positions": "generated"}])]

    def replies(app, parallel: int, stream: bool = False) -> list:
        with serving(app) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)

            def ask(item):
                prompt, steering = item
                reply = client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": prompt}], temperature=0,
                    extra_body={"steering": steering} if steering else None, stream=stream,
                    stop=["\n\n"])
                if stream:
                    return "".join(chunk.choices[0].delta.content or "" for chunk in reply
                                   if chunk.choices)
                choice = reply.choices[0]
                return choice.message.content, choice.finish_reason, reply.usage.completion_tokens

            with ThreadPoolExecutor(parallel) as pool:
                got = list(pool.map(ask, asks))
            if not stream:
                with pytest.raises(openai.BadRequestError, match=r"steering\[0\]\.multiplier"):
                    ask(("Hi", [{"vector": "a", "multiplier": 99}]))
            return got

    settings = settings.model_copy(update={"model_name": "x"})
    plain = replies(create_app(hf, vectors, settings), 1)
    assert replies(create_app(hf, vectors, settings, engine=engine), 8) == plain
    assert (replies(create_app(hf, vectors, settings, engine=engine), 8, stream=True)
            == [text for text, *_ in plain])
    assert len(set(plain)) > len(PROMPTS[:4])  # the steering changed replies


class _Borrowed:
    """The module's engine handed to a command in place of a new one (vLLM's start-up, a
    compilation, is the slow part), with the arguments the command would have started it with;
    the command's close leaves it running."""

    def __init__(self, engine) -> None:
        self.engine, self.started = engine, []

    def __call__(self, model: str, **options):
        self.started.append((model, options))
        return self

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def close(self) -> None:
        pass


@pytest.fixture
def borrowed(models, monkeypatch):
    import steerlab.engine.vllm_engine

    lender = _Borrowed(models[1])
    monkeypatch.setattr(steerlab.engine.vllm_engine, "VllmEngine", lender)
    return lender


def test_steerlab_generate_on_vllm_prints_what_transformers_prints(models, borrowed, tmp_path):
    from tiny import invoke

    hf, engine = models
    folder = engine.llm.llm_engine.model_config.model
    path = random_vector(hf, [1, 2], seed=1).save(tmp_path / "v.safetensors")
    args = ("generate", "Tell me about foxes", "--model", folder, "--vector", str(path),
            "--multiplier", "8", "--max-new-tokens", "8")
    plain, on_vllm = invoke(*args), invoke(*args, "--engine", "vllm")
    assert plain.exit_code == on_vllm.exit_code == 0, on_vllm.output
    assert "unsteered" in plain.output and "steered ×8" in plain.output
    assert on_vllm.output.splitlines()[-4:] == plain.output.splitlines()[-4:]
    assert borrowed.started == [(folder, {"dtype": "float32", "max_model_len": None})]


def test_steerlab_eval_on_vllm_writes_the_transformers_scores(models, borrowed, tmp_path):
    from tiny import invoke

    hf, engine = models
    folder = engine.llm.llm_engine.model_config.model
    path = random_vector(hf, [1, 2], seed=1).save(tmp_path / "v.safetensors")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": " yes", "rejected": " no"}) + "\n"
                            for p in PROMPTS))
    scored = {}
    for engine_name in ("transformers", "vllm"):
        out = tmp_path / f"{engine_name}.jsonl"
        result = invoke("eval", "--data", str(data), "--out", str(out), "--model", folder,
                        "--vector", str(path), "--multipliers", "0,8", "--engine", engine_name)
        assert result.exit_code == 0, result.output
        scored[engine_name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored["vllm"]) == len(scored["transformers"]) == 2 * len(PROMPTS)
    for want, got in zip(scored["transformers"], scored["vllm"]):
        assert (got["item_id"], got["multiplier"]) == (want["item_id"], want["multiplier"])
        assert got["logprobs"] == pytest.approx(want["logprobs"], abs=1e-4)
        assert got.get("engine") == "vllm" and "engine" not in want
    assert [model for model, _ in borrowed.started] == [folder]


@pytest.mark.integration
def test_the_default_model_answers_alike_compiled_eager_and_on_transformers(monkeypatch):
    """The issue's check, on 20 questions no other test asks: greedy answers of the default
    model unsteered, under a CAA vector ×4 at 5% of the residual norm, the same on generated
    tokens only, its ablation, a 30° rotation toward it, a composition (ablate one vector, add
    another) and an ITI vector, from transformers with steerlab's hooks, from vLLM compiled (its
    default) and from vLLM eager: at least 19 of 20 answers identical between each pair, and
    where one differs, the first differing token's log-probability within 1e-3 (numerics, not
    steering)."""
    from steerlab.data.registry import load_dataset
    from steerlab.engine.vllm_engine import VllmEngine
    from steerlab.methods.registry import train_vector
    from steerlab.model.generation import generate_batch

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    hf = load_model("smollm2-135m-instruct")
    pairs = load_dataset("refusal", "train")[:40]
    vector = train_vector(hf, pairs, "caa", [10])
    other = train_vector(hf, pairs, "caa", [14])
    iti = train_vector(hf, pairs, "iti", [8, 9], {"top_k": 8})
    rows = [hf.encode_prompt(hf.format_prompt(q.question))
            for q in load_dataset("truthfulqa-open")[400:420]]
    cases = {"unsteered": None, "x4": SteeringSetting(vector, 4.0, norm_ratio=0.05),
             "generated": SteeringSetting(vector, 4.0, norm_ratio=0.05, positions="generated"),
             "ablate": SteeringSetting(vector, 1.0, intervention="ablate"),
             "angular": SteeringSetting(vector, 30.0, intervention="angular"),
             "composition": Composition((SteeringSetting(vector, 1.0, intervention="ablate"),
                                         SteeringSetting(other, 4.0, norm_ratio=0.05))),
             "iti": SteeringSetting(iti, 8.0)}
    answers: dict[str, dict[str, list]] = {"transformers": {}}
    for name, steer in cases.items():
        with applied(hf, steer):
            answers["transformers"][name] = [(tokens, None)
                                             for tokens in generate_batch(hf, rows, 32)]
    for mode, options in (("compiled", {}), ("eager", {"enforce_eager": True})):
        engine = VllmEngine("smollm2-135m-instruct", max_model_len=1024, max_num_seqs=32,
                            kv_cache_bytes=256 << 20, **options)
        try:
            compiled = engine.llm.llm_engine.vllm_config.compilation_config.mode != 0
            assert compiled == (mode == "compiled")
            answers[mode] = {name: [(g.token_ids, g.logprobs) for g in
                                    engine.generate(rows, steer, max_tokens=32, logprobs=0)]
                             for name, steer in cases.items()}
        finally:
            engine.close()
    for name, steer in cases.items():
        for one, two in (("transformers", "compiled"), ("transformers", "eager"),
                         ("eager", "compiled")):
            pairs_ = list(zip(answers[one][name], answers[two][name]))
            differing = [i for i, ((a, _), (b, _)) in enumerate(pairs_) if a != b]
            assert len(differing) <= 1, (name, one, two, differing)
            for i in differing:
                (a, a_logprobs), (b, b_logprobs) = pairs_[i]
                first = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
                if a_logprobs is None:  # transformers': that token's log-probability
                    ((_, a_logprobs),) = transformers_greedy(hf, [rows[i]], steer, first + 1)
                assert abs(a_logprobs[first] - b_logprobs[first]) < 1e-3, (name, one, two, i)
    changed = [name for name in cases if answers["compiled"][name]
               != answers["compiled"]["unsteered"]]
    assert changed == [name for name in cases if name != "unsteered"]


def test_serve_hands_vllm_options_to_the_engine_and_names_a_refused_one(models, borrowed,
                                                                         monkeypatch):
    """``--vllm-option NAME=VALUE`` reaches vLLM's engine arguments as JSON values; a name vLLM
    does not take ends the command in one line naming the option."""
    from tiny import invoke

    import steerlab.engine.vllm_engine
    import steerlab.serve.launch

    folder = models[1].llm.llm_engine.model_config.model
    served = []
    monkeypatch.setattr(steerlab.serve.launch, "serve",
                        lambda *args, **kwargs: served.append(kwargs["engine"]))
    result = invoke("serve", "--model", folder, "--engine", "vllm", "--vllm-option",
                    "enforce_eager=true", "--vllm-option", "gpu_memory_utilization=0.5")
    assert result.exit_code == 0, result.output
    assert served == [borrowed]
    assert borrowed.started == [(folder, {"dtype": "float32", "max_model_len": None,
                                          "enforce_eager": True, "gpu_memory_utilization": 0.5})]
    monkeypatch.setattr(steerlab.engine.vllm_engine, "VllmEngine", type(models[1]))
    result = invoke("serve", "--model", folder, "--engine", "vllm", "--vllm-option",
                    "no_such_option=1")
    assert result.exit_code == 1
    assert "--vllm-option:" in result.output and "no_such_option" in result.output
    assert "Traceback" not in result.output
