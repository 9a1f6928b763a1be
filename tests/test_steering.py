import pytest
import torch
from tiny import PROMPTS, logits, make_vector, tiny_model

from steerlab.model.generation import generate_tokens
from steerlab.steering.edits import Add
from steerlab.steering.hooks import Edits, PositionError, Steering
from steerlab.steering.setting import SteeringSetting


def test_zero_multiplier_is_bitwise_identical(tiny):
    vector = make_vector(tiny, layers=(0, 2))
    base = logits(tiny)
    with vector.apply(tiny, multiplier=0.0):
        steered = logits(tiny)
    assert torch.equal(base, steered)


def test_steering_changes_logits_and_is_removed(tiny):
    vector = make_vector(tiny)
    base = logits(tiny)
    with vector.apply(tiny, multiplier=1.0) as steering:
        assert steering.active
        assert not torch.allclose(logits(tiny), base)
    assert not steering.active
    assert torch.equal(logits(tiny), base)


def test_hooks_removed_when_body_raises(tiny):
    vector = make_vector(tiny, layers=(0, 1, 2))
    base = logits(tiny)

    def hook_counts():
        return ([len(layer._forward_hooks) for layer in tiny.layers],
                len(tiny.model._forward_pre_hooks), len(tiny.model._forward_hooks))

    before = hook_counts()
    with pytest.raises(RuntimeError, match="boom"):
        with vector.apply(tiny, multiplier=2.0, positions="prompt"):
            assert hook_counts() != before
            raise RuntimeError("boom")
    assert hook_counts() == before
    assert torch.equal(logits(tiny), base)


def test_handle_remove_for_long_lived_use(tiny):
    vector = make_vector(tiny)
    base = logits(tiny)
    handle = vector.apply(tiny, multiplier=1.0)
    assert not torch.allclose(logits(tiny), base)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(logits(tiny), base)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_batched_left_padded_generation_matches_single(family, positions):
    model = tiny_model(family)
    vector = make_vector(model, layers=(1, 2))
    with vector.apply(model, multiplier=1.5, positions=positions):
        batched = generate_tokens(model, PROMPTS, max_new_tokens=12, batch_size=4, progress=False)
        single = [generate_tokens(model, [p], max_new_tokens=12, progress=False)[0]
                  for p in PROMPTS]
    assert batched == single
    unsteered = generate_tokens(model, PROMPTS, max_new_tokens=12, progress=False)
    assert batched != unsteered  # the steering really acted on these generations


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_kv_cache_generation_keeps_steering(positions):
    """The anchor bug: steering lost on tokens generated with a KV cache."""
    model = tiny_model("llama")
    vector = make_vector(model, layers=(1,))
    ids = model.tokenizer(["Tell me about foxes"], return_tensors="pt")
    with vector.apply(model, multiplier=2.0, positions=positions):
        cached = model.model.generate(**ids, max_new_tokens=10, do_sample=False, use_cache=True)
        uncached = model.model.generate(**ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("positions", ["generated", "prompt"])
def test_a_pass_whose_cache_is_out_of_sight_raises_instead_of_being_placed_as_new(positions):
    """transformers 5.24 renamed the cache keyword, and a tracker reading one name took every
    KV-cache step for a new sequence: 'generated' then steered nothing. A pass is placed from
    its cache under any keyword; where the cache cannot be read, or the pass's own positions
    (or the cache it returns) show earlier tokens the tracker did not see, it raises."""
    model = tiny_model("llama")
    vector = make_vector(model)
    prompt = torch.tensor([model.encode_prompt(model.format_prompt("Tell me about foxes"))])
    step, position = torch.tensor([[70]]), torch.tensor([[prompt.shape[1]]])
    keyword = model.cache_keyword
    with vector.apply(model, multiplier=2.0, positions=positions):
        cache = model.model(input_ids=prompt, use_cache=True)[keyword]

        class Holder:  # a cache in a form and under a keyword steerlab does not know
            kv = cache

        with pytest.raises(PositionError, match="continues a sequence through a cache"):
            model.model(input_ids=step, position_ids=position, kv_state=Holder())
        with pytest.raises(PositionError, match="not a transformers Cache"):
            model.model(input_ids=step, position_ids=position,
                        **{keyword: ((torch.zeros(1), torch.zeros(1)),)})
        forward = model.model.forward  # the cache reaches the model past the pass's arguments
        model.model.forward = lambda **kwargs: forward(**kwargs, **{keyword: cache})
        try:
            with pytest.raises(PositionError, match="returned a cache of"):
                model.model(input_ids=step)
        finally:
            del model.model.forward
        # Under its own keyword the cache places the pass right after the prompt.
        model.model(input_ids=step, position_ids=position, **{keyword: cache})


def test_positions_select_prompt_or_generated_tokens(tiny):
    vector = make_vector(tiny)
    prompt = ["Tell me about foxes"]
    base = generate_tokens(tiny, prompt, 10, progress=False)[0]
    base_logits = logits(tiny)
    with vector.apply(tiny, multiplier=3.0, positions="generated"):
        assert torch.equal(logits(tiny), base_logits)  # a prompt pass is left alone
        generated_only = generate_tokens(tiny, prompt, 10, progress=False)[0]
    with vector.apply(tiny, multiplier=3.0, positions="prompt"):
        assert not torch.allclose(logits(tiny), base_logits)
    # The first token depends only on the prompt pass: untouched when steering generated tokens.
    assert generated_only[0] == base[0]
    assert generated_only != base


def test_two_vectors_together_equal_their_sum(tiny):
    a, b = make_vector(tiny, (1, 2), seed=1), make_vector(tiny, (2, 3), seed=2)
    with a.apply(tiny, multiplier=0.7), b.apply(tiny, multiplier=0.7):
        together = logits(tiny)
    with (a + b).apply(tiny, multiplier=0.7):
        summed = logits(tiny)
    torch.testing.assert_close(together, summed, atol=1e-5, rtol=1e-5)


def test_multiplier_scales_linearly(tiny):
    vector = make_vector(tiny)
    with vector.apply(tiny, multiplier=2.0):
        doubled = logits(tiny)
    with (vector * 2).apply(tiny, multiplier=1.0):
        scaled = logits(tiny)
    torch.testing.assert_close(doubled, scaled)


def test_norm_ratio_rescales_to_residual_norm(tiny):
    vector = make_vector(tiny, layers=(1, 2))
    with pytest.raises(ValueError, match="residual norms"):
        vector.additions(norm_ratio=0.5)
    vector.calibrate(tiny, ["Some calibration text.", "And another one, longer than the first."])
    added = vector.additions(multiplier=-2.0, norm_ratio=0.5)
    for layer, delta in added.items():
        expected = 2.0 * 0.5 * vector.meta.residual_norms[layer]
        assert delta.norm().item() == pytest.approx(expected, rel=1e-5)
        cosine = torch.nn.functional.cosine_similarity(delta, vector.directions[layer], dim=0)
        assert cosine.item() == pytest.approx(-1.0, abs=1e-5)


def test_single_layer_vector_can_be_placed_elsewhere(tiny):
    vector = make_vector(tiny, layers=(1,))
    placed = vector.additions(layers=[0, 3])
    assert set(placed) == {0, 3}
    two = make_vector(tiny, layers=(1, 2))
    with pytest.raises(ValueError, match=r"layers \[3\]"):
        two.additions(layers=[3])


def test_bad_positions_and_layers_rejected(tiny):
    with pytest.raises(ValueError, match="positions"):
        Edits({0: [Add(torch.ones(tiny.d_model))]}, positions="middle")
    with pytest.raises(ValueError, match="positions"):
        SteeringSetting(make_vector(tiny), positions="middle")
    with pytest.raises(ValueError, match="out of range"):
        Steering(tiny.model, tiny.layers, [Edits({9: [Add(torch.ones(tiny.d_model))]})])


def test_steering_a_plain_hf_model(tiny):
    vector = make_vector(tiny)
    base = logits(tiny)
    with vector.apply(tiny.model, multiplier=1.0):
        assert not torch.allclose(logits(tiny), base)
