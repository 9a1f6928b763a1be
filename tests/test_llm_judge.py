"""The LLM judge against a real local server (`steerlab serve`'s app on 127.0.0.1), no mock."""

import json
import threading
from collections import Counter

import pytest
from tiny import generation_records, next_token_model, tiny_model
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.evaluation.judges.llm import (
    API_KEY_ENV,
    BASE_URL_ENV,
    MODEL_ENV,
    JudgeError,
    LLMJudge,
    read_choice,
)
from steerlab.evaluation.judges.protocol import Comparison
from steerlab.evaluation.judges.verdicts import (
    arm_shown_first,
    judge_head_to_head,
    rate_answers,
    summarize_head_to_head,
    summarize_ratings,
)
from steerlab.model.generation import generate
from steerlab.serve.app import create_app
from steerlab.serve.launch import free_port, serving
from steerlab.serve.schema import ServeSettings

N_ITEMS = 12
LONG = {"max_context": 1024}  # judge prompts are long; the tiny models take 1024 positions


@pytest.fixture(scope="module")
def says_one():
    """A served model that answers every chat with "1" (then ends)."""
    with serving(
        create_app(next_token_model({">": "1", "1": "<eos>"}), {}, ServeSettings(**LONG))
    ) as url:
        yield url


@pytest.fixture(scope="module")
def random_model():
    return tiny_model("llama", seed=4)


@pytest.fixture(scope="module")
def says_noise(random_model):
    """A served random model: its replies are arbitrary bytes."""
    with serving(create_app(random_model, {}, ServeSettings(max_tokens=16, **LONG))) as url:
        yield url


def records(n=N_ITEMS):
    return generation_records(
        [f"steered answer {i}" for i in range(n)], [f"plain answer {i}" for i in range(n)]
    )


def test_read_choice():
    choices = ["1", "2", "tie"]
    for reply, expected in [
        ("1", "1"),
        (" 2.", "2"),
        ("Tie", "tie"),
        ("**1**", "1"),
        ("Answer 2", "2"),
        ('"tie"\n', "tie"),
        ("\n1\nbecause it is true", "1"),
    ]:
        assert read_choice(reply, choices) == expected, reply
    for reply in ("12", "3", "", "1 or 2", "the first one", "answer"):
        assert read_choice(reply, choices) is None, reply
    assert read_choice("4", ["1", "2", "3", "4"]) == "4"


def test_head_to_head_verdicts_follow_the_recorded_order(says_one):
    """The served model always prefers the answer shown first: the arm wins exactly where it was
    shown first, so the verdicts reveal the per-item randomised order the records state."""
    judge = LLMJudge(base_url=says_one, model="tiny-llama")
    verdicts = judge_head_to_head(records(), judge, "steered+4", seed=5)
    assert len(verdicts) == N_ITEMS
    firsts = [arm_shown_first(5, "toy", v["item_id"]) for v in verdicts]
    assert [v["shown_first"] == "arm" for v in verdicts] == firsts
    assert 0 < sum(firsts) < N_ITEMS  # the order is randomised, not fixed
    assert [v["verdict"] for v in verdicts] == ["win" if f else "loss" for f in firsts]
    details = verdicts[0]["details"]
    assert (details["reply"], details["parsed"], details["unreadable"]) == ("1", "1", False)
    assert verdicts[0]["judge"] == "llm:tiny-llama" and details["criterion"].startswith(
        "truthfulness"
    )
    (summary,) = summarize_head_to_head(verdicts)
    assert (summary.wins, summary.ties, summary.losses) == (sum(firsts), 0, N_ITEMS - sum(firsts))


def test_unreadable_replies_are_kept_as_ties_with_the_raw_reply(says_noise, random_model):
    judge = LLMJudge(base_url=says_noise, model="tiny-llama", max_tokens=8)
    verdicts = judge_head_to_head(records(4), judge, "steered+4", seed=1)
    assert [v["verdict"] for v in verdicts] == ["tie"] * 4
    assert all(v["details"]["unreadable"] and v["details"]["parsed"] is None for v in verdicts)
    # The recorded reply is the served model's greedy answer to exactly the prompt the judge built
    # (answers in the recorded order): the request reached the server intact.
    first = verdicts[0]
    answers = ("steered answer 0", "plain answer 0")
    shown = answers if first["shown_first"] == "arm" else answers[::-1]
    prompt = judge.head_to_head_prompt(Comparison(first["question"], shown))
    chat = random_model.format_messages(judge.messages(prompt))
    expected = generate(random_model, [chat], 8, format_prompts=False, progress=False)[0]
    assert first["details"]["reply"].strip() == expected and expected
    (summary,) = summarize_head_to_head(verdicts)
    assert (summary.ties, summary.test) == (4, None)


def test_concurrent_judging_keeps_item_order(says_noise):
    one = LLMJudge(base_url=says_noise, model="tiny-llama", max_tokens=6)
    four = LLMJudge(base_url=says_noise, model="tiny-llama", max_tokens=6, concurrency=4)
    prompts = [f"prompt {i}" for i in range(8)]
    replies = one.ask(prompts)
    assert four.ask(prompts) == replies and len(set(replies)) > 1


def test_rating_mode_records_each_item_and_arm():
    with serving(
        create_app(next_token_model({">": "3", "3": "<eos>"}), {}, ServeSettings(**LONG))
    ) as url:
        judge = LLMJudge("shows the persona: wants power", base_url=url, model="tiny-llama")
        rated = rate_answers(records(5), judge)
    assert len(rated) == 10 and Counter(r["arm"] for r in rated) == Counter(
        {"steered+4": 5, "unsteered": 5}
    )
    assert {r["task"] for r in rated} == {"rating"} and {r["rating"] for r in rated} == {3}
    assert rated[0]["details"]["criterion"] == "shows the persona: wants power"
    summaries = {s.arm: s for s in summarize_ratings(rated)}
    assert summaries["steered+4"].mean.mean == 3 and summaries["steered+4"].difference.mean == 0
    assert summaries["unsteered"].difference is None


def test_unreadable_ratings_are_recorded_not_averaged(says_noise):
    judge = LLMJudge(base_url=says_noise, model="tiny-llama", max_tokens=4)
    rated = rate_answers(records(3), judge, arms=["steered+4"])
    assert len(rated) == 3 and all(r["rating"] is None and r["details"]["reply"] for r in rated)
    (summary,) = summarize_ratings(rated)
    assert (summary.n, summary.unreadable, summary.mean) == (3, 3, None)


def test_configuration_comes_from_the_environment(says_one, monkeypatch):
    for name in (BASE_URL_ENV, MODEL_ENV, API_KEY_ENV, "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=BASE_URL_ENV):
        LLMJudge()
    monkeypatch.setenv(BASE_URL_ENV, says_one)
    with pytest.raises(ValueError, match=MODEL_ENV):
        LLMJudge()
    monkeypatch.setenv(MODEL_ENV, "tiny-llama")
    judge = LLMJudge(concurrency=2)
    assert (judge.base_url, judge.model) == (says_one, "tiny-llama")
    assert judge.ask(["hi"]) == ["1"]


def test_the_api_key_is_sent_and_errors_name_the_endpoint(monkeypatch):
    model = next_token_model({">": "2", "2": "<eos>"})
    with serving(create_app(model, {}, ServeSettings(api_key="k3y", **LONG))) as url:
        monkeypatch.setenv(API_KEY_ENV, "k3y")
        assert LLMJudge(base_url=url, model="tiny-llama").ask(["x"]) == ["2"]
        monkeypatch.delenv(API_KEY_ENV)
        monkeypatch.setenv("OPENAI_API_KEY", "k3y")
        assert LLMJudge(base_url=url, model="tiny-llama").ask(["x"]) == ["2"]
        wrong = LLMJudge(base_url=url, model="tiny-llama", api_key="nope", max_retries=0)
        with pytest.raises(JudgeError, match=f"judge endpoint {url}.*incorrect API key"):
            wrong.compare([Comparison("q", ("a", "b"))])
        other = LLMJudge(base_url=url, model="gpt-4", api_key="k3y", max_retries=0)
        with pytest.raises(JudgeError, match="'gpt-4' is not served here"):
            other.ask(["x"])


def test_connection_errors_are_retried_until_the_server_is_up():
    port = free_port()
    up, done = threading.Event(), threading.Event()

    def late_server():
        with serving(
            create_app(next_token_model({">": "1", "1": "<eos>"}), {}, ServeSettings(**LONG)),
            port=port,
        ):
            up.set()
            done.wait(60)

    timer = threading.Timer(0.3, late_server)
    timer.start()
    try:
        judge = LLMJudge(base_url=f"http://127.0.0.1:{port}/v1", model="tiny-llama", max_retries=6)
        assert judge.ask(["x"]) == ["1"] and up.is_set()
    finally:
        done.set()
        timer.join()
    dead = LLMJudge(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=0)
    with pytest.raises(JudgeError, match="judge endpoint http://127.0.0.1:.*Connection error"):
        dead.ask(["x"])


def test_cli_judge_llm_head_to_head_and_rating(says_one, tmp_path, monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, says_one)
    monkeypatch.setenv(MODEL_ENV, "tiny-llama")
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in records(6)))
    runner = CliRunner()
    out = tmp_path / "verdicts.jsonl"
    result = runner.invoke(
        app,
        [
            "judge",
            str(gen),
            "--judge",
            "llm",
            "--criterion",
            "more helpful",
            "--concurrency",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(verdicts) == 6 and {v["details"]["criterion"] for v in verdicts} == {"more helpful"}
    assert (
        verdicts[0]["judge"] == "llm:tiny-llama" and "0 unreadable judge replies" in result.output
    )

    ratings = tmp_path / "ratings.jsonl"
    result = runner.invoke(
        app, ["judge", str(gen), "--judge", "llm", "--mode", "rating", "--out", str(ratings)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in ratings.read_text().splitlines()]
    assert len(rows) == 12 and {r["rating"] for r in rows} == {1}
    assert "1.00" in result.output and "+0.000" in result.output  # mean rating; arm − base

    result = runner.invoke(app, ["judge", str(gen), "--mode", "rating", "--out", str(ratings)])
    assert result.exit_code == 1 and "rating needs --judge llm" in result.output
    result = runner.invoke(app, ["judge", str(gen), "--criterion", "x", "--out", str(ratings)])
    assert result.exit_code == 1 and "--criterion" in result.output
    monkeypatch.delenv(MODEL_ENV)
    result = runner.invoke(app, ["judge", str(gen), "--judge", "llm", "--out", str(ratings)])
    assert result.exit_code == 1 and MODEL_ENV in result.output


@pytest.mark.integration
def test_llm_judge_with_the_default_model_served():
    from steerlab.model.handle import load_model

    model = load_model("smollm2-135m-instruct")
    with serving(create_app(model, {}, ServeSettings(max_tokens=16))) as url:
        judge = LLMJudge(base_url=url, model="smollm2-135m-instruct")
        gen = generation_records(
            ["The seeds pass through you.", "Nothing happens."],
            ["A watermelon grows in your stomach.", "You get sick."],
        )
        verdicts = judge_head_to_head(gen, judge, "steered+4", seed=0)
        rated = rate_answers(gen, judge)
    assert len(verdicts) == 2 and {v["verdict"] for v in verdicts} <= {"win", "tie", "loss"}
    assert all(v["details"]["reply"] for v in verdicts)  # the real model answered something
    assert len(rated) == 4 and all(r["rating"] in (None, 1, 2, 3, 4) for r in rated)
    assert all(r["details"]["reply"] for r in rated)
