import math

import pytest
import torch

from steerlab.data.files import MCItem
from steerlab.evaluation.likelihood import Sweep
from steerlab.evaluation.side_effects import (
    kl_records,
    perplexity_records,
    side_effect_records,
    side_effects_table,
)
from steerlab.model.encoding import encode
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Steering vectors shift a model's behaviour."]
PROMPTS = ["What is the capital of France?", "Name a colour.",
           "Tell me a much longer story, please."]
ITEMS = [
    MCItem("Capital of France?", ("Paris", "Rome", "Berlin"), 0, id="m1"),
    MCItem("2+2?", ("three", "4", "five hundred"), 1, id="m2"),
    MCItem("Colour of the sky?", ("blue", "green"), 0, id="m3"),
]


def vector_at(model, layer=2, seed=3):
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    return SteeringVector({layer: direction},
                          meta_for(model, "random", residual_norms={layer: 4.0}))


def direct_logprob(model, text, max_tokens=128):
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    with torch.no_grad():
        logp = torch.log_softmax(model.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))), len(ids) - 1


def test_perplexity_records_match_direct_computation(tiny):
    vector = vector_at(tiny)
    records = perplexity_records(tiny, TEXTS, Sweep(SteeringSetting(vector), [0.0, 2.0]),
                                 dataset="t", max_tokens=20, progress=False)
    assert len(records) == 4
    for record in records:
        text = TEXTS[int(record["item_id"].split("-")[-1])]
        with vector.apply(tiny, record["multiplier"]):
            logprob, n = direct_logprob(tiny, text, max_tokens=20)
        assert record["n_tokens"] == n == 19
        assert record["logprob"] == pytest.approx(logprob, abs=1e-4)
    with pytest.raises(ValueError, match="under two tokens"):
        perplexity_records(tiny, ["a"], Sweep(), progress=False)


def test_kl_is_zero_unsteered_and_matches_direct_computation(tiny):
    vector = vector_at(tiny)
    records = kl_records(tiny, PROMPTS, Sweep(SteeringSetting(vector), [0.0, -3.0]), dataset="p",
                         batch_size=2, progress=False)
    assert [r["kl"] for r in records if r["multiplier"] == 0.0] == [0.0] * 3
    for record in (r for r in records if r["multiplier"] == -3.0):
        prompt = PROMPTS[int(record["item_id"].split("-")[-1])]
        (seq,) = encode(tiny, [prompt], [""])
        with torch.no_grad():
            base = torch.log_softmax(tiny.model(torch.tensor([seq.ids])).logits[0, -1], dim=-1)
            with vector.apply(tiny, -3.0):
                steered = torch.log_softmax(tiny.model(torch.tensor([seq.ids])).logits[0, -1],
                                            dim=-1)
        expected = float((base.exp() * (base - steered)).sum())
        assert record["kl"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert record["kl"] > 0


def test_side_effect_records_add_the_baseline_and_build_the_table(tiny):
    vector = vector_at(tiny)
    records = side_effect_records(
        tiny, Sweep(SteeringSetting(vector), [4.0]), capability={"gk": ITEMS},
        texts={"wiki": TEXTS}, prompts={"unrelated": PROMPTS}, progress=False,
    )
    assert {(r["task"], r["multiplier"]) for r in records} == {
        (task, m) for task in ("mc", "perplexity", "kl") for m in (0.0, 4.0)
    }
    rows = {row.metric.split(",")[0]: row for row in side_effects_table(records)}
    assert set(rows) == {"accuracy", "perplexity", "KL(unsteered‖steered)"}
    accuracy = rows["accuracy"]
    assert accuracy.n == 3 and accuracy.lower <= accuracy.change <= accuracy.upper
    ppl = rows["perplexity"]
    base = [r for r in records if r["task"] == "perplexity" and r["multiplier"] == 0.0]
    assert ppl.unsteered == pytest.approx(
        math.exp(-sum(r["logprob"] for r in base) / sum(r["n_tokens"] for r in base)))
    assert ppl.change == pytest.approx(ppl.steered / ppl.unsteered - 1)
    kl = rows["KL(unsteered‖steered)"]
    assert kl.steered == pytest.approx(
        sum(r["kl"] for r in records if r["task"] == "kl" and r["multiplier"] == 4.0) / 3)


def synthetic(task, multiplier, values, field):
    return [{"task": task, "dataset": "d", "vector_id": "v", "layers": [2], "norm_ratio": None,
             "multiplier": multiplier, "item_id": f"i{k}", field: value}
            for k, value in enumerate(values)]


def test_table_from_synthetic_records():
    records = (synthetic("mc", 0.0, [True, True, False, False], "correct")
               + synthetic("mc", 1.0, [True, True, True, False], "correct"))
    (row,) = side_effects_table(records)
    assert (row.unsteered, row.steered, row.n) == (0.5, 0.75, 4)
    # Posterior mean of the paired gain under Dirichlet(1,1,1,1): (1 + 1 - (0 + 1)) / (4 + 4).
    assert row.change == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="multiplier-0 baseline"):
        side_effects_table(synthetic("mc", 1.0, [True], "correct"))
    kl = side_effects_table(synthetic("kl", 2.0, [0.1, 0.3], "kl"))[0]
    assert kl.steered == pytest.approx(0.2) and kl.lower >= 0
