"""`steerlab serve` against the official openai client: a real server on 127.0.0.1, tiny model."""

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import openai
import pytest
import torch
from tiny import fixed_condition, tiny_model
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.model.generation import generate_tokens
from steerlab.serve.app import create_app
from steerlab.serve.launch import serve_process, serving
from steerlab.serve.schema import ServeSettings
from steerlab.serve.worker import (
    Decoding,
    GenerationJob,
    GenerationWorker,
    sendable_length,
    take_batch,
)
from steerlab.steering.setting import Composition, SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vectors(model):
    torch.manual_seed(3)
    meta = meta_for(model, "random")
    return {
        "a": SteeringVector({1: torch.randn(32) * 3}, meta),
        "b": SteeringVector({2: torch.randn(32) * 3, 3: torch.randn(32) * 3}, meta),
    }


@pytest.fixture(scope="module")
def conditions(model):
    """Conditions at layer 1 that always hold and never hold (thresholds beyond ±1)."""
    return {"always": fixed_condition(model, threshold=-2.0),
            "never": fixed_condition(model, threshold=2.0)}


@pytest.fixture(scope="module")
def url(model, vectors, conditions):
    app = create_app(model, vectors, ServeSettings(max_tokens=MAX_TOKENS, max_multiplier=8,
                                                   max_context=256), conditions)
    with serving(app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def ask(client, prompt="Tell me a story.", steering=None, **kwargs):
    """A greedy chat completion of one user message, steering in the extra body field."""
    kwargs = {"max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    extra = {"steering": steering} if steering is not None else None
    return client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": prompt}],
        extra_body=extra,
        **kwargs,
    )


def library_reply(model, prompt, steering=(), max_tokens=MAX_TOKENS):
    """The same generation through the library (each setting, or (vector, multiplier), applied
    with its own Steering + generate_tokens), no server."""
    text = model.format_messages([{"role": "user", "content": prompt}])
    with ExitStack() as stack:
        for setting in steering:
            setting = setting if isinstance(setting, SteeringSetting) else SteeringSetting(*setting)
            stack.enter_context(setting.apply(model))
        tokens = generate_tokens(model, [text], max_tokens, format_prompts=False, progress=False)[0]
    return model.tokenizer.decode(tokens, skip_special_tokens=True), len(model.encode_prompt(text))


def test_models_lists_the_model_its_vectors_and_the_range(client, vectors):
    (entry,) = client.models.list().data
    assert entry.id == "tiny-llama"
    steering = entry.model_extra["steering"]
    assert steering["multiplier_range"] == [-8, 8]
    assert (
        steering["vectors"]["b"]["layers"] == [2, 3]
        and steering["vectors"]["a"]["id"] == vectors["a"].id
    )


def test_completion_equals_library_generation_with_and_without_steering(client, model, vectors):
    plain = ask(client)
    expected, prompt_tokens = library_reply(model, "Tell me a story.")
    assert plain.choices[0].message.content == expected and expected
    assert plain.choices[0].finish_reason == "length"  # the random model rarely ends on its own
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (prompt_tokens, MAX_TOKENS)

    steered = ask(
        client, steering=[{"vector": "a", "multiplier": 4}, {"vector": "b", "multiplier": -2}]
    )
    expected_steered, _ = library_reply(
        model, "Tell me a story.", [(vectors["a"], 4), (vectors["b"], -2)]
    )
    assert steered.choices[0].message.content == expected_steered != expected
    applied = steered.model_extra["steering"]
    assert [(s["vector"], s["multiplier"], s["layers"]) for s in applied] == [
        ("a", 4, [1]),
        ("b", -2, [2, 3]),
    ]


def test_multiplier_zero_is_unsteered_and_layers_choose_placement(client, model, vectors):
    plain = ask(client).choices[0].message.content
    assert (
        ask(client, steering=[{"vector": "a", "multiplier": 0}]).choices[0].message.content == plain
    )
    moved = ask(client, steering=[{"vector": "a", "multiplier": 4, "layers": [3]}])
    assert moved.model_extra["steering"][0]["layers"] == [3]
    with vectors["a"].apply(model, 4, layers=[3]):
        expected = library_reply(model, "Tell me a story.")[0]
    assert moved.choices[0].message.content == expected != plain


def test_a_request_can_ablate_as_the_library_does(client, model, vectors):
    prompt = "Tell me a story."
    ablated = ask(client, prompt, [{"vector": "b", "multiplier": 1, "intervention": "ablate"}])
    expected = library_reply(model, prompt,
                             [SteeringSetting(vectors["b"], intervention="ablate")])[0]
    assert ablated.choices[0].message.content == expected != library_reply(model, prompt)[0]
    assert ablated.model_extra["steering"][0]["intervention"] == "ablate"
    mixed = ask(client, prompt, [{"vector": "a", "multiplier": 4, "positions": "generated"},
                                 {"vector": "b", "multiplier": 1, "intervention": "ablate"}])
    expected = library_reply(model, prompt,
                             [SteeringSetting(vectors["a"], 4, positions="generated"),
                              SteeringSetting(vectors["b"], intervention="ablate")])[0]
    assert mixed.choices[0].message.content == expected
    rotated = ask(client, prompt, [{"vector": "a", "multiplier": 60, "intervention": "angular"}])
    expected = library_reply(model, prompt,
                             [SteeringSetting(vectors["a"], 60, intervention="angular")])[0]
    assert rotated.choices[0].message.content == expected


def test_a_request_can_gate_its_steering_on_a_condition(client, model, vectors, conditions):
    prompt = "Tell me a story."
    steered = ask(client, prompt, [{"vector": "a", "multiplier": 4}]).choices[0].message.content
    plain = ask(client, prompt).choices[0].message.content
    held = ask(client, prompt, [{"vector": "a", "multiplier": 4, "condition": "always"}])
    assert held.choices[0].message.content == steered != plain
    assert held.model_extra["steering"][0]["condition"] == "always"
    not_held = ask(client, prompt, [{"vector": "a", "multiplier": 4, "condition": "never"}])
    assert not_held.choices[0].message.content == plain
    gated = SteeringSetting(vectors["a"], 4, condition=conditions["always"])
    assert library_reply(model, prompt, [gated])[0] == held.choices[0].message.content
    (entry,) = client.models.list().data
    assert entry.model_extra["steering"]["conditions"]["always"]["layer"] == 1


@pytest.mark.parametrize("steering", [None, [{"vector": "a", "multiplier": 3}]])
def test_stream_concatenates_to_the_non_streamed_reply(client, steering):
    whole = ask(client, steering=steering)
    chunks = list(
        ask(client, steering=steering, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_ends_with_done_in_sse_format(url):
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    status, raw = post(url + "/chat/completions", json.dumps(body).encode())
    events = [line for line in raw.split("\n\n") if line]
    assert status == 200 and events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_stop_strings_cut_the_reply_streamed_or_not(client):
    full = ask(client).choices[0].message.content
    start = next(i for i in range(3, len(full) - 2) if "\ufffd" not in full[i : i + 2])
    stop = full[start : start + 2]
    cut = full[: full.find(stop)]
    reply = ask(client, stop=[stop, "never-appears"])
    assert reply.choices[0].message.content == cut and reply.choices[0].finish_reason == "stop"
    streamed = list(ask(client, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut


def test_sampling_is_seeded(client):
    def sample(seed):
        return ask(client, temperature=1.5, seed=seed).choices[0].message.content

    assert sample(1) == sample(1) != sample(2)


def post(url, data: bytes, headers=None):
    """A raw POST (for bodies the openai client would never send); (status, body text)."""
    request = urllib.request.Request(
        url, data, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


BAD_REQUESTS = [
    (
        {"steering": [{"vector": "nope"}]},
        "steering[0].vector",
        "unknown vector 'nope' (loaded: 'a', 'b')",
    ),
    (
        {"steering": [{"vector": "a", "multiplier": 8.5}]},
        "steering[0].multiplier",
        "8.5 is outside the allowed range [-8, 8]",
    ),
    (
        {"steering": [{"vector": "a", "multiplier": 1}, {"vector": "a", "multiplier": -9}]},
        "steering[1].multiplier",
        "-9 is outside",
    ),
    (
        {"steering": [{"vector": "a", "layers": [4]}]},
        "steering[0].layers",
        "[4] outside the model's layers 0..3",
    ),
    ({"steering": [{"vector": "b", "layers": [1]}]}, "steering[0]", "no direction for layers [1]"),
    (
        {"steering": [{"vector": "a", "norm_ratio": 0.1}]},
        "steering[0]",
        "norm_ratio needs residual norms",
    ),
    ({"steering": [{"vector": "a", "multiplier": "lots"}]}, "steering[0].multiplier", "'lots'"),
    (
        {"steering": [{"vector": "a", "condition": "sometimes"}]},
        "steering[0].condition",
        "unknown condition 'sometimes' (loaded: 'always', 'never')",
    ),
    (
        {"steering": [{"vector": "a", "intervention": "remove"}]},
        "steering[0].intervention",
        "'remove'",
    ),
    (
        {"steering": [{"vector": "a", "intervention": "ablate", "norm_ratio": 0.5}]},
        "steering[0]",
        "norm_ratio scales an added vector",
    ),
    (
        {"steering": [{"vector": "a", "multiplier": 190, "intervention": "angular"}]},
        "steering[0]",
        "an angle in degrees within [-180, 180], got 190",
    ),
    (
        {"steering": [{"vector": "a", "layers": [0], "condition": "always"}]},
        "steering[0]",
        "would change the prompt its condition reads at layer 1",
    ),
    (
        {"max_tokens": MAX_TOKENS + 1},
        "max_tokens",
        f"{MAX_TOKENS + 1} is over this server's limit of {MAX_TOKENS}",
    ),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens", "disagree"),
    (
        {"messages": [{"role": "user", "content": "x" * 220}], "max_tokens": 20},
        "max_tokens",
        "over the context of 256",
    ),
    (
        {"messages": [{"role": "user", "content": "x" * 300}]},
        "messages",
        "leaves no room to answer",
    ),
    (
        {"messages": [{"role": "assistant", "content": "hi"}]},
        "messages",
        "must end on a user message",
    ),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "'robot'"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"n": 2}, "n", "Input should be 1"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"tools": []}, "tools", "unsupported field"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
]


@pytest.mark.parametrize(("change", "param", "message"), BAD_REQUESTS)
def test_bad_requests_get_400_naming_field_and_value(url, change, param, message):
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], **change}
    status, raw = post(url + "/chat/completions", json.dumps(body).encode())
    error = json.loads(raw)["error"]
    assert status == 400, raw
    assert (
        set(error) == {"message", "type", "param", "code"}
        and error["type"] == "invalid_request_error"
    )
    assert error["param"] == param and message in error["message"], error


def test_malformed_json_missing_fields_and_other_model(url, client):
    status, raw = post(url + "/chat/completions", b'{"model": "tiny-llama", "messages": [')
    assert status == 400 and "malformed JSON body" in json.loads(raw)["error"]["message"]
    status, raw = post(
        url + "/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}'
    )
    assert status == 400 and json.loads(raw)["error"]["message"] == "model: required field missing"
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="unknown vector"):  # the client raises on 400
        ask(client, steering=[{"vector": "zz"}])


def test_api_key_is_required_when_configured(model):
    with serving(create_app(model, {}, ServeSettings(api_key="s3cret", max_tokens=4))) as url:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            status, raw = post(url + "/chat/completions", b"not even json", headers)
            assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert ask(good, max_tokens=4).choices[0].finish_reason == "length"


def test_concurrent_requests_equal_sequential_ones(client):
    """Requests with different multipliers (some sharing one, so they batch) sent at once get
    exactly the replies they get one at a time."""
    settings = [None, -4, -2, 2, 4, 2, 2, None, -4, 0]
    requests = [
        (f"Question number {i}?", [{"vector": "a", "multiplier": m}] if m is not None else None)
        for i, m in enumerate(settings)
    ]

    def reply(request):
        return ask(client, request[0], request[1]).choices[0].message.content

    sequential = [reply(r) for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(reply, requests))
    assert concurrent == sequential
    assert len(set(sequential)) == len(sequential)  # the prompts and settings do differ


def test_worker_batches_identical_settings_and_keeps_others_apart(model, vectors):
    """Jobs queued before the worker starts: same-setting ones share one batch, each job's
    text equals its solo generation, and another steering runs in its own batch."""
    prompts = [model.format_prompt(f"Prompt {i}") for i in range(5)]
    composition = Composition((SteeringSetting(vectors["a"], 4.0),))
    replies = {i: [] for i in range(5)}
    ends = {}

    def job(i, steered):
        def emit(event):
            if event[0] == "delta":
                replies[i].append(event[1])
            else:
                ends[i] = event

        steering = composition if steered else None
        return GenerationJob(
            model.encode_prompt(prompts[i]),
            Decoding(12),
            emit,
            steering,
            ("a", 4.0) if steered else (),
        )

    worker = GenerationWorker(model, max_batch_size=8)
    for i in range(5):
        worker.submit(job(i, steered=(i == 2)))
    worker.start()
    deadline = time.monotonic() + 60
    while len(ends) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert (worker.batches, worker.jobs) == (2, 5)  # jobs 0, 1, 3, 4 together; job 2 alone
    for i in range(5):
        with vectors["a"].apply(model, 4.0 if i == 2 else 0.0):
            tokens = generate_tokens(model, [prompts[i]], 12, format_prompts=False, progress=False)[
                0
            ]
        assert "".join(replies[i]) == model.tokenizer.decode(tokens, skip_special_tokens=True)
        ended_early = len(tokens) < 12  # an end-of-sequence token, counted as generated
        assert ends[i][:2] == ("end", "stop" if ended_early else "length")
        assert ends[i][2]["completion_tokens"] == len(tokens) + ended_early


def test_worker_waits_briefly_for_jobs_that_can_share_the_batch(model):
    """A job arriving 0.1 s after another with the same setting joins its batch."""
    ends = []
    prompt = model.encode_prompt(model.format_prompt("hi"))
    worker = GenerationWorker(model, max_batch_size=2, gather_s=5.0).start()
    try:
        worker.submit(GenerationJob(prompt, Decoding(3), ends.append))
        time.sleep(0.1)
        worker.submit(GenerationJob(prompt, Decoding(3), ends.append))
        deadline = time.monotonic() + 60
        while sum(e[0] == "end" for e in ends) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert (worker.batches, worker.jobs) == (1, 2)


def test_take_batch_keeps_queue_order_and_size_limit():
    def job(key, greedy=True):
        return GenerationJob([1], Decoding(4, 0.0 if greedy else 1.0), lambda e: None, (), key)

    a1, b, a2, c, a3 = job("a"), job("b"), job("a"), job("c"), job("a")
    pending = [a1, b, a2, c, a3]
    assert take_batch(pending, 2) == [a1, a2] and pending == [b, c, a3]
    s1, s2 = job("s", greedy=False), job("s", greedy=False)
    pending = [s1, s2]
    assert take_batch(pending, 8) == [s1] and pending == [s2]  # sampled jobs never share a batch


def test_sendable_length_holds_back_partial_characters_and_stop_prefixes():
    assert sendable_length("abc\ufffd", ()) == 3
    assert sendable_length("hello EN", ("END",)) == 6
    assert sendable_length("hello E", ("END", "Ex")) == 6
    assert sendable_length("hello", ("END",)) == 5


def test_cli_serve_runs_the_server_with_vectors_conditions_and_key(
    model, vectors, conditions, tmp_path
):
    model_dir = tmp_path / "model"
    model.model.save_pretrained(model_dir)
    model.tokenizer.save_pretrained(model_dir)
    vectors["a"].save(tmp_path / "a.safetensors")
    conditions["never"].save(tmp_path / "never.safetensors")
    args = [
        "--model",
        str(model_dir),
        "--vector",
        f"refusal={tmp_path / 'a.safetensors'}",
        "--condition",
        f"never={tmp_path / 'never.safetensors'}",
        "--api-key-env",
        "MY_KEY",
        "--max-tokens",
        "8",
    ]
    with serve_process(args, {"MY_KEY": "k1", "OMP_NUM_THREADS": "1"}) as base_url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url, api_key="k2", max_retries=0).models.list()
        client = openai.OpenAI(base_url=base_url, api_key="k1", max_retries=0)
        (entry,) = client.models.list().data
        assert list(entry.model_extra["steering"]["vectors"]) == ["refusal"]
        # A local model is named by its directory, never by its path.
        assert entry.id == "model" and str(tmp_path) not in json.dumps(entry.model_dump())
        reply = client.chat.completions.create(
            model="model",
            messages=[{"role": "user", "content": "hi"}],
            temperature=0,
            extra_body={"steering": [{"vector": "refusal", "multiplier": 2}]},
        )
        assert (
            reply.usage.completion_tokens == 8
            and reply.model_extra["steering"][0]["vector"] == "refusal"
        )
        def answer(steering):
            return client.chat.completions.create(
                model="model", messages=[{"role": "user", "content": "hi"}], temperature=0,
                extra_body={"steering": steering}).choices[0].message.content

        gated = [{"vector": "refusal", "multiplier": 2, "condition": "never"}]
        assert answer(gated) == answer([]) != reply.choices[0].message.content


def test_serving_reports_a_server_that_cannot_start(model, url):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with (
        pytest.raises(RuntimeError, match=f"did not start on 127.0.0.1:{port}"),
        serving(create_app(model), port=port),
    ):
        pass


def test_cli_serve_help_and_vector_option_errors(tmp_path, vectors):
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--help"])
    assert (
        result.exit_code == 0 and "--api-key-env" in result.output and "127.0.0.1" in result.output
    )
    vectors["a"].save(tmp_path / "a.safetensors")
    result = runner.invoke(app, ["serve", "--vector", f"={tmp_path / 'a.safetensors'}"])
    assert result.exit_code == 1 and "expected name=path.safetensors" in result.output
    path = str(tmp_path / "a.safetensors")
    result = runner.invoke(
        app, ["serve", "--vector", f"y={path}", "--vector", path.replace("a.s", "x.s")]
    )
    assert result.exit_code == 1 and "not found" in result.output
    result = runner.invoke(app, ["serve", "--vector", f"a={path}", "--vector", path])
    assert result.exit_code == 1 and "the name 'a' is already taken" in result.output
    result = runner.invoke(app, ["serve", "--condition", f"c={path}"])
    assert result.exit_code == 1 and "not a steerlab condition (a steering vector?" in result.output
