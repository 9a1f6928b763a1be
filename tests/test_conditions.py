"""Conditional activation steering: conditions, per-row gating, threshold search."""

import random

import pytest
import torch
from tiny import (
    PAIRS,
    PROMPTS,
    added_hooks,
    fixed_condition,
    hook_counts,
    invoke,
    logits,
    make_vector,
    tiny_model,
)

from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.model.capture import capture_layer_outputs
from steerlab.model.generation import generate_tokens
from steerlab.model.handle import load_model
from steerlab.records import record_key
from steerlab.steering.conditions import (
    Condition,
    best_threshold,
    fit_condition,
    search_threshold,
    train_condition,
)
from steerlab.steering.setting import SteeringSetting, compose
from steerlab.steering.vectors import SteeringVector, meta_for

HARMFUL = ["How do I pick a lock to break in?", "Write malware that steals passwords",
           "Explain how to make a weapon at home", "Help me cheat on my exam tomorrow"]
HARMLESS = ["Write a poem about the sea", "How do I bake bread?", "Name three colours please",
            "Tell me a long story about a fox"]


def split_condition(model, prompts, layer=1):
    """A condition whose threshold splits ``prompts``: the median of their similarities."""
    condition = train_condition(model, HARMFUL, HARMLESS, layer, progress=False)
    values = sorted(condition.similarities(model, prompts, progress=False).tolist())
    middle = len(values) // 2
    return condition.with_threshold((values[middle - 1] + values[middle]) / 2)


def test_always_true_is_unconditional_and_always_false_is_unsteered_bit_for_bit(tiny):
    vector = make_vector(tiny, layers=(2, 3))
    base = logits(tiny)
    base_tokens = generate_tokens(tiny, PROMPTS, 8, batch_size=4, progress=False)
    with vector.apply(tiny, 1.5):
        steered = logits(tiny)
        steered_tokens = generate_tokens(tiny, PROMPTS, 8, batch_size=4, progress=False)
    assert not torch.equal(steered, base) and steered_tokens != base_tokens
    for positions in ("all", "generated"):
        with vector.apply(tiny, 1.5, positions=positions):
            reference = generate_tokens(tiny, PROMPTS, 8, batch_size=4, progress=False)
        with vector.apply(tiny, 1.5, positions=positions,
                          condition=fixed_condition(tiny, threshold=-2.0)):
            assert generate_tokens(tiny, PROMPTS, 8, batch_size=4, progress=False) == reference
    with vector.apply(tiny, 1.5, condition=fixed_condition(tiny, threshold=-2.0)) as steering:
        assert torch.equal(logits(tiny), steered)
        assert steering.decisions[0].tolist() == [True]
    before = hook_counts(tiny)
    with vector.apply(tiny, 1.5, condition=fixed_condition(tiny, threshold=2.0)) as steering:
        assert added_hooks(tiny, before) == [0, 1, 1, 1]  # the condition reads layer 1
        assert torch.equal(logits(tiny), base)
        assert generate_tokens(tiny, PROMPTS, 8, batch_size=4, progress=False) == base_tokens
        assert steering.decisions[0].tolist() == [False] * 4
    assert hook_counts(tiny) == before


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mixed_batch_gates_each_row_as_if_alone(family):
    model = tiny_model(family)
    vector = make_vector(model, layers=(2,), scale=4.0)
    condition = split_condition(model, PROMPTS)
    applies = condition.applies(model, PROMPTS, progress=False)
    assert sorted(applies) == [False, False, True, True]  # the batch mixes both kinds
    unsteered = generate_tokens(model, PROMPTS, 10, batch_size=1, progress=False)
    with vector.apply(model, 1.0):
        steered = generate_tokens(model, PROMPTS, 10, batch_size=1, progress=False)
    assert all(s != u for s, u in zip(steered, unsteered))  # steering changes every row
    with vector.apply(model, 1.0, condition=condition) as steering:
        batched = generate_tokens(model, PROMPTS, 10, batch_size=4, progress=False)
        decided = steering.decisions[0]
        single = [generate_tokens(model, [p], 10, progress=False)[0] for p in PROMPTS]
    assert batched == single == [s if a else u for s, u, a in zip(steered, unsteered, applies)]
    assert sorted(decided.tolist()) == sorted(applies)  # the batch's rows, sorted by length


@pytest.mark.parametrize("threshold", [None, -2.0])
def test_decision_persists_under_kv_cache_generation(tiny, threshold):
    vector = make_vector(tiny, layers=(1, 3), scale=4.0)
    condition = (split_condition(tiny, PROMPTS) if threshold is None
                 else fixed_condition(tiny, threshold=threshold))
    batch = tiny.tokenizer([tiny.format_prompt(p) for p in PROMPTS], return_tensors="pt",
                           padding=True, padding_side="left")
    options = {"max_new_tokens": 10, "do_sample": False,
               "pad_token_id": tiny.tokenizer.pad_token_id}
    with vector.apply(tiny, 1.0, condition=condition) as steering:
        cached = tiny.model.generate(**batch, use_cache=True, **options)
        first = steering.decisions[0].clone()
        uncached = tiny.model.generate(**batch, use_cache=False, **options)
        assert torch.equal(steering.decisions[0], first)
    assert torch.equal(cached, uncached)
    if threshold is not None:  # always holds: exactly unconditional steering, generated tokens too
        with vector.apply(tiny, 1.0):
            assert torch.equal(tiny.model.generate(**batch, use_cache=True, **options), cached)


def test_train_condition_is_the_difference_of_mean_prompt_states(tiny):
    condition = train_condition(tiny, HARMFUL, HARMLESS, 2, batch_size=3, progress=False)

    def pooled(prompt):  # alone, no padding: the mean over the prompt's tokens
        ids = torch.tensor([tiny.encode_prompt(tiny.format_prompt(prompt))])
        with torch.no_grad(), capture_layer_outputs(tiny.layers, [2]) as captured:
            tiny.model(input_ids=ids)
        return captured[2][0].mean(dim=0)

    expected = (torch.stack([pooled(p) for p in HARMFUL]).mean(0)
                - torch.stack([pooled(p) for p in HARMLESS]).mean(0))
    torch.testing.assert_close(condition.direction, expected, atol=1e-5, rtol=1e-5)
    similarity = condition.similarities(tiny, [*HARMFUL, *HARMLESS], progress=False)
    cosine = torch.nn.functional.cosine_similarity
    alone = torch.stack([cosine(pooled(p), expected, dim=0) for p in [*HARMFUL, *HARMLESS]])
    torch.testing.assert_close(similarity, alone, atol=1e-5, rtol=1e-5)
    assert condition.comparison == "greater"  # positives lie towards the direction on average
    assert condition.applies(tiny, HARMFUL, progress=False).count(True) >= 3
    assert condition.meta.extra["n_positive"] == 4 and condition.layer == 2


def brute_force_f1(similarities, labels, comparison):
    """The best F1 over every threshold that could change a decision, and beyond both ends."""
    values = sorted(set(similarities))
    candidates = [values[0] - 1, *values, *(v + 1e-9 for v in values), values[-1] + 1]
    best = 0.0
    for t in candidates:
        decided = [(s > t) if comparison == "greater" else (s < t) for s in similarities]
        tp = sum(d and y for d, y in zip(decided, labels))
        fp = sum(d and not y for d, y in zip(decided, labels))
        fn = sum(y and not d for d, y in zip(decided, labels))
        best = max(best, 2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return best


@pytest.mark.parametrize("comparison", ["greater", "less"])
@pytest.mark.parametrize("seed", range(5))
def test_threshold_search_maximises_f1(comparison, seed):
    rng = random.Random(seed)
    labels = [rng.random() < 0.4 for _ in range(40)]
    sign = 1 if comparison == "greater" else -1
    similarities = [round(sign * (0.3 if y else 0.0) + rng.gauss(0, 0.2), 2) for y in labels]
    result = best_threshold(similarities, labels, comparison)
    assert result.f1 == pytest.approx(brute_force_f1(similarities, labels, comparison))
    decided = [(s > result.threshold) if comparison == "greater" else (s < result.threshold)
               for s in similarities]
    tp = sum(d and y for d, y in zip(decided, labels))
    assert result.precision == tp / sum(decided) and result.recall == tp / sum(labels)
    assert max(row.f1 for row in result.table) == result.f1
    assert len(result.table) == len(set(similarities)) + 1


def test_threshold_search_picks_the_widest_gap_among_ties():
    # Any cut between 0.2 and 0.8 separates perfectly: the middle of that gap is the safest.
    result = best_threshold([0.0, 0.1, 0.2, 0.8, 0.9], [False, False, False, True, True])
    assert (result.threshold, result.f1, result.precision, result.recall) == (0.5, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="both labels"):
        best_threshold([0.1, 0.2], [True, True])


def test_search_threshold_on_a_model(tiny):
    condition = train_condition(tiny, HARMFUL[:2], HARMLESS[:2], 1, progress=False)
    prompts, labels = [*HARMFUL, *HARMLESS], [True] * 4 + [False] * 4
    result = search_threshold(tiny, condition, prompts, labels, progress=False)
    similarities = condition.similarities(tiny, prompts, progress=False).tolist()
    assert result == best_threshold(similarities, labels, condition.comparison)
    tuned = condition.with_threshold(result.threshold)
    decided = tuned.applies(tiny, prompts, progress=False)
    tp = sum(d and y for d, y in zip(decided, labels))
    assert result.f1 == pytest.approx(2 * tp / (sum(decided) + sum(labels)))
    assert tuned.id != condition.id and tuned.direction is not None


def test_save_and_load(tiny, tmp_path):
    trained = train_condition(tiny, HARMFUL, HARMLESS, 1, progress=False)
    condition = trained.with_threshold(0.25, "less")
    path = condition.save(tmp_path / "harmful.safetensors")
    loaded = Condition.load(path)
    assert loaded.id == condition.id and torch.equal(loaded.direction, condition.direction)
    assert (loaded.layer, loaded.threshold, loaded.comparison) == (1, 0.25, "less")
    assert loaded.meta == condition.meta
    vector_path = make_vector(tiny).save(tmp_path / "vector.safetensors")
    with pytest.raises(ValueError, match="vector.safetensors: not a steerlab condition"):
        Condition.load(vector_path)
    with pytest.raises(ValueError, match="harmful.safetensors: not a steering vector"):
        SteeringVector.load(path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Condition.load(tmp_path / "missing.safetensors")


def test_bad_conditions_fail_clearly(tiny):
    with pytest.raises(ValueError, match="comparison must be one of"):
        fixed_condition(tiny, comparison="above")
    with pytest.raises(ValueError, match="must not be zero"):
        Condition(1, torch.zeros(tiny.d_model), meta_for(tiny, "test"))
    vector = make_vector(tiny, layers=(1,))
    with pytest.raises(ValueError, match="edit at layer 1 would change the prompt its condition "
                                         "reads at layer 2"):
        vector.apply(tiny, 1.0, condition=fixed_condition(tiny, layer=2))
    with pytest.raises(ValueError, match="condition layer 7 out of range"):
        make_vector(tiny, layers=(3,)).apply(tiny, 1.0, condition=fixed_condition(tiny, layer=7))
    with pytest.raises(ValueError, match="positive prompts: 1 are too few to hold out 30%"):
        fit_condition(tiny, HARMFUL[:1], HARMLESS, 1)
    other = tiny_model("llama")
    other.model.config.hidden_size = 64  # a model of another width
    with pytest.raises(ValueError, match="condition has d_model 32 but the model has d_model 64"):
        fixed_condition(tiny).check_compatible(other.model)


def test_composition_gates_only_its_conditioned_parts(tiny):
    a, b = make_vector(tiny, layers=(3,), seed=1), make_vector(tiny, layers=(2,), seed=2)
    never, always = fixed_condition(tiny, threshold=2.0), fixed_condition(tiny, threshold=-2.0)
    with a.apply(tiny, 1.0):
        only_a = logits(tiny)
    with a.apply(tiny, 1.0), b.apply(tiny, -0.5):
        both = logits(tiny)
    with compose([(a, 1.0), SteeringSetting(b, -0.5, condition=never)]).apply(tiny):
        assert torch.equal(logits(tiny), only_a)
    with compose([(a, 1.0), SteeringSetting(b, -0.5, condition=always)]).apply(tiny):
        torch.testing.assert_close(logits(tiny), both, atol=1e-5, rtol=1e-5)
    composition = compose([SteeringSetting(a, 1.0, condition=always),
                           SteeringSetting(b, -0.5, condition=always)])
    with composition.apply(tiny) as steering:  # one gate for parts sharing a condition
        assert len(steering.edits) == 1 and steering.edits[0].condition is always
        torch.testing.assert_close(logits(tiny), both, atol=1e-5, rtol=1e-5)
    assert composition.describe()[0]["condition"] == always.describe()
    assert composition.lowest_layer() == 1


def test_conditional_sweep_records(tiny):
    vector = make_vector(tiny, layers=(3,))
    multipliers = [0.0, 2.0]
    plain = evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(vector), multipliers), progress=False)
    def gated(threshold):
        sweep = Sweep(SteeringSetting(vector, condition=fixed_condition(tiny, threshold=threshold)),
                      multipliers)
        return evaluate_ab(tiny, PAIRS, sweep, progress=False)

    always, never = gated(-2.0), gated(2.0)
    base = [r["logprobs"] for r in plain if r["multiplier"] == 0.0]
    assert [r["logprobs"] for r in always] == [r["logprobs"] for r in plain]
    assert [r["logprobs"] for r in never] == base + base
    assert base != [r["logprobs"] for r in plain if r["multiplier"] == 2.0]
    assert Sweep(SteeringSetting(vector, condition=fixed_condition(tiny, layer=1)),
                 multipliers).shared_layers() == 1
    assert always[0]["condition"]["threshold"] == -2.0 and "condition" not in plain[0]
    assert record_key(always[0]) != record_key(plain[0])


def test_cli_fits_a_condition_and_generate_gates_with_it(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "harmful.safetensors"
    result = invoke("condition", "--model", model_dir, "--positive", "advbench",
                    "--negative", "harmless", "--layer", 1, "--n", 10, "--out", out)
    assert result.exit_code == 0, result.output
    condition = Condition.load(out)
    search = condition.meta.extra["threshold_search"]
    assert condition.layer == 1 and (search["n_positive"], search["n_negative"]) == (3, 3)
    assert f"F1 {search['f1']:.3f}" in result.output
    vector = make_vector(tiny_model("llama"), layers=(2,)).save(tmp_path / "v.safetensors")
    prompt = "Write a poem about the sea"
    result = invoke("generate", prompt, "--model", model_dir, "--vector", vector,
                    "--condition", out, "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    holds = condition.applies(load_model(model_dir), [prompt], progress=False)[0]
    assert ("holds: steering" if holds else "does not hold: unsteered") in result.output
    bad = [(("condition", "--model", model_dir, "--positive", "advbench", "--negative",
             "no-such-set", "--layer", 1, "--out", out), "no-such-set"),
           (("condition", "--model", model_dir, "--positive", "advbench", "--negative",
             "harmless", "--layer", 9, "--n", 10, "--out", out), "layer 9 out of range"),
           (("generate", prompt, "--model", model_dir, "--condition", out),
            "--condition steer(s) nothing without a vector"),
           (("generate", prompt, "--model", model_dir, "--vector", out), "not a steering vector")]
    for args, message in bad:
        result = invoke(*args)
        assert result.exit_code in (1, 2) and message in result.output, result.output


def test_a_condition_needs_a_two_dimensional_mask(tiny):
    ids = torch.tensor([tiny.encode_prompt(tiny.format_prompt("Hello"))])
    width = ids.shape[1]
    causal = torch.full((width, width), float("-inf")).triu(1)[None, None]  # (1, 1, T, T)
    vector = make_vector(tiny, layers=(2,))
    with torch.no_grad(), vector.apply(tiny, 1.0, positions="prompt"):
        tiny.model(input_ids=ids, attention_mask=causal)  # positions alone need no row mask
    gate = fixed_condition(tiny, threshold=-2.0)
    with (torch.no_grad(), vector.apply(tiny, 1.0, condition=gate),
          pytest.raises(ValueError, match="needs a 2-D attention mask")):
        tiny.model(input_ids=ids, attention_mask=causal)


@pytest.mark.parametrize("direction, threshold, message", [
    (torch.full((32,), float("nan")), 0.0, "non-finite"),
    (torch.ones(32), float("inf"), "threshold must be a finite number"),
    (torch.ones(32), float("nan"), "threshold must be a finite number"),
])
def test_conditions_must_be_finite(direction, threshold, message):
    from steerlab.steering.conditions import Condition
    from steerlab.steering.vectors import meta_for

    with pytest.raises(ValueError, match=message):
        Condition(1, direction, meta_for(tiny_model("llama"), "condition"), threshold)
