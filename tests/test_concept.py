"""A concept in open generation: the stated detector, records per prompt × multiplier, and a
verdict recomputed from records that needs the rate to rise beyond the unsteered interval while
the answers stay fluent (perplexity and repetition)."""

import pytest
from tiny import random_vector, tiny_model

from steerlab.analysis.report import concept_section
from steerlab.evaluation.concept import (
    KeywordDetector,
    concept_records,
    concept_table,
    concept_verdict,
    distinct_share,
)
from steerlab.model.encoding import TokenSequence
from steerlab.model.generation import generate_tokens
from steerlab.model.scoring import score_sequences
from steerlab.steering.setting import SteeringSetting

WEDDINGS = KeywordDetector("weddings", ("wedding", "bride", "vows"))


@pytest.mark.parametrize("text, found", [
    ("The Wedding was lovely.", True), ("a BRIDE walked in", True), ("their vows.", True),
    ("a bridge over water", False), ("weddingcake", False), ("", False),
])
def test_the_detector_matches_whole_words_in_any_case(text, found):
    assert WEDDINGS(text) is found


def records(multiplier, hits, n=40, logprob=-20.0, answer="a plain and varied answer here"):
    return [{"task": "concept", "concept": "weddings", "detector": WEDDINGS.describe(),
             "multiplier": multiplier, "item_id": str(i), "answer": answer,
             "shows_concept": i < hits, "logprob": logprob, "n_tokens": 10} for i in range(n)]


def test_a_rate_above_the_unsteered_interval_with_fluent_answers_steers():
    rows = concept_table(records(0.0, 2) + records(4.0, 20, logprob=-25.0))
    assert [r.multiplier for r in rows] == [0.0, 4.0]
    assert rows[1].rate.lower > rows[0].rate.upper
    assert concept_verdict(rows, "weddings").startswith("**The weddings vector steers:**")


@pytest.mark.parametrize("steered", [
    records(4.0, 20, logprob=-60.0),  # perplexity ×55: not fluent
    records(4.0, 20, answer="wedding wedding wedding wedding wedding"),  # looping
    records(4.0, 5),  # inside the noise
], ids=["perplexity", "repetition", "noise"])
def test_no_verdict_of_steering_when_answers_break_or_the_rise_is_noise(steered):
    rows = concept_table(records(0.0, 2) + steered)
    assert concept_verdict(rows, "weddings").startswith("**No multiplier steers weddings")


def test_distinct_share():
    assert distinct_share("it it it it") == 0.25
    assert distinct_share("one two three") == 1.0 and distinct_share("") == 1.0


def test_concept_records_on_a_tiny_model():
    model = tiny_model("llama")
    prompts = ["Tell me about a day.", "Describe a garden.", "Hello there"]
    setting = SteeringSetting(random_vector(model, [1, 2], seed=1))
    found = concept_records(model, setting, prompts, [8.0], KeywordDetector("x", ("x",)),
                            max_new_tokens=6, progress=False)
    assert [(r["multiplier"], r["item_id"]) for r in found] == [
        (0.0, "0"), (0.0, "1"), (0.0, "2"), (8.0, "0"), (8.0, "1"), (8.0, "2")]
    assert {r["answer"] for r in found if r["multiplier"] == 8.0} != {
        r["answer"] for r in found if r["multiplier"] == 0.0}  # the steering changed answers
    # fluency is the answer's log-probability under the unsteered model: for the unsteered
    # answers, the model's own greedy tokens scored without steering
    heads = [model.encode_prompt(model.format_prompt(p)) for p in prompts]
    tails = generate_tokens(model, prompts, 6, progress=False)
    assert [r["n_tokens"] for r in found[:3]] == [len(t) for t in tails]
    scores = score_sequences(model, [TokenSequence(tuple(h + t), len(h))
                                     for h, t in zip(heads, tails)], progress=False)
    assert [r["logprob"] for r in found[:3]] == pytest.approx([s.logprob for s in scores],
                                                               abs=1e-4)
    section = "\n".join(concept_section(found))
    assert "## Concept: x (open generation)" in section and "| 8 |" in section
