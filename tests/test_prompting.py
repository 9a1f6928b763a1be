import pytest
import torch
from tiny import tiny_model

from steerlab.data.files import MCItem, PreferencePair, nested_subsets
from steerlab.data.registry import DATASETS
from steerlab.evaluation.likelihood import evaluate_mc
from steerlab.methods.prompting import (
    Prompting,
    context_limit,
    kshot,
    max_shots,
    prompted,
    shot_answer,
    system_prompt,
)
from steerlab.model.generation import generate_tokens

PAIRS = [PreferencePair(f"Question {i}?\n(A) yes\n(B) no", "(A" if i % 2 else "(B",
                        "(B" if i % 2 else "(A", f"p{i}") for i in range(20)]
ITEMS = [MCItem("Capital of France?", ("Paris", "Rome"), 0, "m1"),
         MCItem("2+2?", ("three", "4", "five hundred"), 1, "m2")]
SHOTS = Prompting("Be honest.", (("Q1", "A1"), ("Q2", "A2")))


def test_prompted_chat_handle_renders_system_and_shots_as_turns(tiny):
    handle = prompted(tiny, SHOTS)
    assert handle.format_prompt("Hi") == (
        "<|system|>Be honest.\n<|user|>Q1\n<|assistant|>A1\n<|user|>Q2\n<|assistant|>A2\n"
        "<|user|>Hi\n<|assistant|>"
    )
    assert handle.model is tiny.model and handle.tokenizer is tiny.tokenizer
    assert handle.layers is tiny.layers
    assert tiny.format_prompt("Hi") == "<|user|>Hi\n<|assistant|>"  # the base handle is untouched
    assert prompted(tiny, Prompting()).format_prompt("Hi") == tiny.format_prompt("Hi")


def test_prompted_plain_handle_renders_question_answer_blocks():
    handle = prompted(tiny_model(chat=False), SHOTS)
    assert handle.format_prompt("Hi") == (
        "Be honest.\n\nQuestion: Q1\nAnswer: A1\n\nQuestion: Q2\nAnswer: A2\n\n"
        "Question: Hi\nAnswer:"
    )
    shots_only = prompted(tiny_model(chat=False), Prompting(shots=(("Q1", "A1"),)))
    assert shots_only.format_prompt("Hi") == "Question: Q1\nAnswer: A1\n\nQuestion: Hi\nAnswer:"


def test_a_second_system_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match="already has a system message"):
        prompted(tiny, SHOTS).format_prompt("Hi", system="Other")
    assert prompted(tiny, Prompting(shots=(("Q", "A"),))).format_prompt("Hi", system="S") == (
        "<|system|>S\n<|user|>Q\n<|assistant|>A\n<|user|>Hi\n<|assistant|>"
    )


def test_evaluate_mc_under_a_prompted_handle_scores_the_shown_text(tiny):
    handle = prompted(tiny, SHOTS)
    records = evaluate_mc(handle, ITEMS, progress=False)
    for record, item in zip(records, ITEMS):
        text = handle.format_prompt(item.question)
        assert record["prompt"] == text and "<|user|>Q1" in text
        for choice, logprob in zip(item.choices, record["logprobs"]):
            head = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
            tail = tiny.tokenizer(choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = tiny.model(torch.tensor([head + tail])).logits[0].log_softmax(-1)
            expected = sum(float(logp[len(head) - 1 + i, t]) for i, t in enumerate(tail))
            assert logprob == pytest.approx(expected, abs=1e-4)
    plain = evaluate_mc(tiny, ITEMS, progress=False)
    assert [r["logprobs"] for r in plain] != [r["logprobs"] for r in records]


def test_generation_under_a_prompted_handle_continues_the_shown_text(tiny):
    handle = prompted(tiny, SHOTS)
    shown = handle.format_prompt("Hi")
    assert generate_tokens(handle, ["Hi"], 5, progress=False) == generate_tokens(
        tiny, [shown], 5, format_prompts=False, progress=False)
    assert generate_tokens(handle, ["Hi"], 5, progress=False) != generate_tokens(
        tiny, ["Hi"], 5, progress=False)


def test_kshot_shots_are_nested_and_are_the_vectors_training_subset():
    for seed in (0, 1):
        four, eight = kshot(PAIRS, 4, seed), kshot(PAIRS, 8, seed)
        assert eight.shots[:4] == four.shots and len(eight.shots) == 8
        subset = nested_subsets(PAIRS, [4], seed)[4]
        assert four.shots == tuple((p.prompt, shot_answer(p.chosen)) for p in subset)
    assert kshot(PAIRS, 8, 0).shots != kshot(PAIRS, 8, 1).shots
    assert kshot(PAIRS, 0).shots == () and kshot(PAIRS, 3).system is None
    with pytest.raises(ValueError, match="needs 21 training pairs, only 20"):
        kshot(PAIRS, 21)


def test_shot_answers_close_ab_letters_only():
    assert shot_answer("(A") == "(A)"
    assert shot_answer("Yes") == "Yes" and shot_answer("(A) yes") == "(A) yes"


def test_max_shots_reports_the_context_cut():
    model = tiny_model("llama")
    model.model.config.max_position_embeddings = 300
    evaluated = [PAIRS[0], ITEMS[1]]
    fit = max_shots(model, PAIRS, [8, 0, 1, 2, 4, 16], evaluated, seed=3)
    # Each count is the longest evaluated sequence behind the shots, encoded in full.
    longest = max(
        (len(model.encode_prompt(model.format_prompt(p))) + len(model.encode_completion(c)), p, c)
        for p, c in [(PAIRS[0].prompt, "(A"), (PAIRS[0].prompt, "(B"), ("2+2?", "five hundred")]
    )
    for k, tokens in fit.tokens.items():
        handle = prompted(model, kshot(PAIRS, k, seed=3))
        expected = len(handle.encode_prompt(handle.format_prompt(longest[1])))
        assert tokens == expected + len(model.encode_completion(longest[2]))
    assert fit.context == 300
    assert fit.fits == (0, 1, 2, 4) and fit.cut == 8
    assert fit.tokens[4] <= 300 < fit.tokens[8] and 16 not in fit.tokens
    assert "cut at k=8" in fit.describe()
    reserved = max_shots(model, PAIRS, [0, 1, 2, 4], evaluated, seed=3,
                         reserve_tokens=300 - fit.tokens[2] + 1)
    assert reserved.fits == (0, 1) and reserved.cut == 2
    assert max_shots(model, PAIRS, [0, 1], evaluated).cut is None


def test_context_limit_takes_the_smaller_sane_value():
    model = tiny_model("gpt2")  # n_positions 1024; the tokenizer says 1e30 (unset)
    assert context_limit(model) == 1024
    model.tokenizer.model_max_length = 100
    assert context_limit(model) == 100


def test_system_prompt_defaults_and_overrides():
    assert system_prompt("truthfulqa-mc1").system.startswith("Answer truthfully")
    assert "Refuse" in system_prompt("refusal").system
    assert "Agree with the user" in system_prompt("sycophancy").system
    assert system_prompt("mmlu", override="Think.") == Prompting(system="Think.")
    with pytest.raises(ValueError, match="'mmlu' has no default behaviour description"):
        system_prompt("mmlu")
    with pytest.raises(ValueError, match="empty"):
        system_prompt("refusal", override=" ")
    assert {n for n, d in DATASETS.items() if d.behaviour} >= {
        "refusal", "sycophancy", "truthfulqa-mc1"}
