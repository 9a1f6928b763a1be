"""Results that mislead are said to mislead (issue 28): a verdict against an arm that answers one
way says so on either side, a best baseline picked from a validation tie says so, a vector that
pushes one answer token is named where steerability is shown, PCA's sign is never the SVD's coin
flip, and ITI's spread says which standard deviation it is."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny import tiny_model

from steerlab.analysis.comparison import ArmResult, Selection, verdict
from steerlab.analysis.reliability import steerability
from steerlab.analysis.run_analysis import write_analysis
from steerlab.data.files import PreferencePair
from steerlab.methods import train_vector
from steerlab.methods.contrast import Contrast, oriented
from steerlab.records import AnswerBias
from steerlab.stats import PairedTable, paired_advantage, wilson_interval


def arm(name: str, bias: AnswerBias | None) -> ArmResult:
    selection = Selection(name, [1], 1.0, None, 0.5, 20, 1)
    return ArmResult(name, "method", selection, wilson_interval(10, 20, 0.9), None, None, bias)


@pytest.mark.parametrize("lopsided", ["steered", "unsteered"])
def test_a_verdict_against_a_one_answer_arm_says_so_on_either_side(lopsided):
    one = AnswerBias(" No", 1.0, 0.55)
    fair = AnswerBias(" No", 0.5, 0.6)
    steered = arm("caa", one if lopsided == "steered" else fair)
    unsteered = arm("unsteered", one if lopsided == "unsteered" else fair)
    advantage = paired_advantage(PairedTable(5, 6, 2, 7), draws=2000)
    text = verdict(steered, unsteered, advantage, 20)
    name = "caa" if lopsided == "steered" else "unsteered"
    assert f"But {name} predicts one answer on ≥ 90% of the test items ('No' 100% ⚠)" in text
    assert "treat it as uninformative" in text and "debiased accuracies caa 0." in text
    plain = verdict(arm("caa", fair), arm("unsteered", fair), advantage, 20)
    assert "But" not in plain


def ab(item: str, multiplier: float, chosen: str, margin: float) -> dict:
    choices = [chosen, " No" if chosen == " Yes" else " Yes"]
    return {"task": "ab", "dataset": "persona", "vector_id": "v", "layers": [1],
            "norm_ratio": None, "item_id": item, "multiplier": multiplier, "choices": choices,
            "logprobs": [margin, 0.0], "prediction": 0, "answer": 0, "correct": margin > 0,
            "score": 0.5}


def test_a_vector_that_pushes_one_answer_token_is_named_where_steerability_is_shown(tmp_path):
    """Half the items need " Yes", half " No"; the vector raises " Yes" everywhere: exactly
    the " No" half is anti-steerable, which says answer token, not behaviour."""
    records = []
    for i in range(10):
        chosen = " Yes" if i % 2 else " No"
        slope = 1.0 if chosen == " Yes" else -1.0
        records += [ab(f"q{i}", m, chosen, 0.1 * i + slope * m) for m in (-2.0, 0.0, 2.0)]
    (report,) = steerability(records)
    assert report.anti_steerable == pytest.approx(0.5) and report.pushes_answer == "Yes"
    assert "the vector raises 'Yes' whatever the behaviour needs" in str(report)
    page = write_analysis(tmp_path, records).read_text()
    assert "an answer token, not the behaviour" in page
    honest = [dict(r, logprobs=[r["multiplier"] + 0.1, 0.0]) for r in records]
    (plain,) = steerability(honest)
    assert plain.pushes_answer is None and plain.note() == ""


def test_pcas_sign_is_decided_by_the_mean_gap_when_the_vote_ties_and_kept_in_the_metadata(tiny):
    chosen = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-0.2, 0.0], [-0.2, 0.0]])
    rejected = torch.zeros(4, 2)
    contrast = Contrast({0: chosen}, {0: rejected}, {0: 1.0})
    for start in (torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])):  # either SVD sign
        vector, vote = oriented(start, contrast, 0)
        assert vector[0] > 0  # the mean gap (+0.4) decides the tied 2-2 vote
        assert (vote.higher, vote.lower) == (2, 2) and vote.decided_by.startswith("mean gap")
        assert vote.close()
    pairs = [PreferencePair(f"Is item {i} so?", " Yes" if i % 2 else " No",
                            " No" if i % 2 else " Yes", id=f"p{i}") for i in range(8)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vector = train_vector(tiny, pairs, "pca", [1])
    votes = vector.meta.extra["sign_vote"]["1"]
    assert votes["higher"] + votes["lower"] <= 8 and votes["decided_by"] in (
        "vote", "mean gap (the vote tied)")
    close = abs(votes["higher"] - votes["lower"]) <= 1
    assert close == any("nearly a coin flip" in str(w.message) for w in caught)


def test_iti_states_which_standard_deviation_its_spread_is():
    model = tiny_model("llama")
    pairs = [PreferencePair(f"Question {i}?", " yes", " no", id=f"p{i}") for i in range(8)]
    vector = train_vector(model, pairs, "iti", [1, 2], {"top_k": 2})
    assert vector.meta.hyperparams["spread"].startswith("sample standard deviation (n - 1)")
    for head in vector.meta.extra["iti"]["heads"]:
        assert head["sigma"] > 0


def test_a_best_baseline_picked_from_a_validation_tie_says_so():
    from steerlab.analysis.comparison import headline

    def rows(arm: str, dataset: str, right: list[bool]) -> list[dict]:
        return [{"task": "ab", "dataset": dataset, "arm": arm, "item_id": f"i{i}",
                 "multiplier": 0.0, "layers": None, "vector_id": None, "correct": ok,
                 "choices": [" A", " B"], "logprobs": [0.0, -1.0], "prediction": 0,
                 "answer": 0}
                for i, ok in enumerate(right)]

    kinds = {"unsteered": "reference", "kshot1": "prompting", "kshot4": "prompting",
             "system": "prompting"}
    records = [{"task": "experiment", "val": "val", "test": "test"}]
    records += [{"task": "arm", "arm": a, "kind": k} for a, k in kinds.items()]
    for a in kinds:
        records += rows(a, "val", ([True, True, False, False] if a != "unsteered"
                                   else [True, False, False, False]) * 10)
        records += rows(a, "test", [True, False, True, False] * 10)
    head = headline(records)
    assert head.best_baseline == "kshot1" and set(head.best_tied_with) == {"kshot4", "system"}
