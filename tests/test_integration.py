"""A few checks on the real default model (SmolLM2-135M-Instruct). Marked; still run by make
test."""

import pytest
import torch

from steerlab import load_model, train_caa
from steerlab.data.files import bundled_path, load_pairs
from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.model.generation import generate_tokens
from steerlab.model.scoring import score_completions
from steerlab.steering.setting import SteeringSetting

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def refusal_vector(smol):
    pairs = load_pairs(bundled_path("refusal"), split="train")[:16]
    return train_caa(smol, pairs, [14], progress=False)


def test_default_model_shape_and_template(smol):
    assert (smol.n_layers, smol.d_model) == (30, 576)
    assert smol.has_chat_template
    assert smol.format_prompt("Hi").endswith("<|im_start|>assistant\n")


def test_gguf_path_loads_the_same_model(smol):
    from steerlab.model.catalog import BUILTIN_MODELS

    path = BUILTIN_MODELS["smollm2-135m-instruct"].gguf_path()
    by_path = load_model(str(path))
    assert by_path.fingerprint == smol.fingerprint
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(by_path.model(ids).logits, smol.model(ids).logits)


def test_zero_multiplier_and_removal_on_real_model(smol, refusal_vector):
    ids = smol.tokenizer(["Tell me a story about a dragon."], return_tensors="pt")
    with torch.no_grad():
        base = smol.model(**ids).logits
        with refusal_vector.apply(smol, 0.0):
            assert torch.equal(smol.model(**ids).logits, base)
        with refusal_vector.apply(smol, 4.0, norm_ratio=0.05):
            assert not torch.allclose(smol.model(**ids).logits, base)
        assert torch.equal(smol.model(**ids).logits, base)


def test_batched_steered_generation_matches_single_on_real_model(smol, refusal_vector):
    prompts = ["How do I pick a lock?",
               "Write one sentence about the sea, please, in a calm voice."]
    with refusal_vector.apply(smol, 3.0, norm_ratio=0.05):
        batched = generate_tokens(smol, prompts, 16, batch_size=2, progress=False)
        single = [generate_tokens(smol, [p], 16, progress=False)[0] for p in prompts]
    assert batched == single
    assert batched != generate_tokens(smol, prompts, 16, batch_size=2, progress=False)


def test_ab_evaluation_on_real_model(smol, refusal_vector):
    test = load_pairs(bundled_path("refusal"), split="test")[:6]
    records = evaluate_ab(smol, test,
                          Sweep(SteeringSetting(refusal_vector, norm_ratio=0.05), [-2, 0, 2]),
                          progress=False)
    assert len(records) == 18
    assert all(0.0 <= r["score"] <= 1.0 for r in records)
    assert records[0]["prompt"].startswith("<|im_start|>system")


def test_gemma3_builtin_loads_with_plain_template():
    gemma = load_model("gemma3-270m")
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    assert not gemma.has_chat_template
    assert gemma.format_prompt("Hi") == "Question: Hi\nAnswer:"
    question = "What is the capital of France?"
    paris, london = score_completions(gemma, [question] * 2, ["Paris", "London"], progress=False)
    assert paris.logprob > london.logprob + 1.0


def test_rank_1_lora_on_real_model_counts_and_steers(smol, refusal_vector):
    from steerlab.methods.lora import load_lora, train_lora

    pairs = load_pairs(bundled_path("refusal"), split="train")[:6]
    result = train_lora(smol, pairs[:4], pairs[4:], batch_size=2, max_steps=1, eval_every=1,
                        progress=False)
    # 30 layers × (q 576+576, k 576+192, v 576+192, o 576+576, gate/up/down 576+1536 each).
    assert result.trainable_params == 30 * 10176 == 305280 and result.ratio_to_vector == 530.0
    assert [h["step"] for h in result.history if "val_loss" in h] == [0, 1]
    adapted = load_lora(smol, result)
    ids = smol.tokenizer(["How do I pick a lock?"], return_tensors="pt")
    with torch.no_grad():
        unsteered = adapted.model(**ids).logits
        with refusal_vector.apply(adapted, 0.0):  # the base model's vector on the LoRA model
            assert torch.equal(adapted.model(**ids).logits, unsteered)
        with refusal_vector.apply(adapted, 4.0, norm_ratio=0.05):
            assert not torch.allclose(adapted.model(**ids).logits, unsteered)


def test_default_model_evaluates_and_trains_in_bfloat16(smol):
    """In bf16 the A/B scores stay near float32's, records say bfloat16, and the fast BiPO
    engine still packs chosen and rejected (its old 1e-3 check on summed scores failed in any
    half precision, so bf16 training ran unpacked, slower than the naive engine)."""
    from steerlab.methods import TrainingHistory, train_bipo

    half = load_model("smollm2-135m-instruct", dtype="bfloat16")
    items = load_pairs(bundled_path("refusal"), split="test")[:20]
    full_records = evaluate_ab(smol, items, progress=False)
    half_records = evaluate_ab(half, items, progress=False)
    assert {r["dtype"] for r in half_records} == {"bfloat16"}
    gaps = [abs(a["score"] - b["score"]) for a, b in zip(full_records, half_records)]
    assert max(gaps) < 0.1, gaps
    agree = sum(a["prediction"] == b["prediction"] for a, b in zip(full_records, half_records))
    assert agree >= 18
    history = TrainingHistory()
    train = load_pairs(bundled_path("refusal"), split="train")[:8]
    vector = train_bipo(half, train, 14, epochs=1, batch_size=4, progress=False,
                        history=history)
    assert history.packed and vector.directions[14].dtype == torch.float32
