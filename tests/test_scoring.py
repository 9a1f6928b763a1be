from contextlib import nullcontext

import pytest
import torch
from tiny import tiny_model

from steerlab.model.activations import read_layers
from steerlab.model.encoding import encode
from steerlab.model.scoring import score_completions

PROMPTS = ["What is 2+2?", "Say something long and winding about the sea", "Hi"]
COMPLETIONS = ["4", " The sea is wide and deep.", "Hello there"]


def manual_logprob(model, prompt, completion):
    """Straightforward reference: one unpadded sequence, full logits."""
    (seq,) = encode(model, [prompt], [completion])
    ids = torch.tensor([seq.ids])
    with torch.no_grad():
        logp = torch.log_softmax(model.model(ids).logits[0].float(), -1)
    return sum(float(logp[t - 1, seq.ids[t]]) for t in range(seq.prompt_len, len(seq.ids)))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_batched_scores_equal_unpadded_reference(family):
    model = tiny_model(family)
    scores = score_completions(model, PROMPTS, COMPLETIONS, batch_size=3, progress=False)
    for score, prompt, completion in zip(scores, PROMPTS, COMPLETIONS):
        assert score.logprob == pytest.approx(manual_logprob(model, prompt, completion), abs=1e-4)
        assert score.n_tokens == len(completion.encode())  # byte tokenizer: one token per byte


def test_plain_template_separates_completion_with_space():
    model = tiny_model("llama", chat=False)
    assert model.format_prompt("Why?") == "Question: Why?\nAnswer:"
    (seq,) = encode(model, ["Why?"], ["Because"])
    assert model.tokenizer.decode(seq.ids[seq.prompt_len:]) == " Because"


def test_read_layers_last_token_matches_hidden_states(tiny):
    seqs = encode(tiny, PROMPTS, COMPLETIONS)
    readout = read_layers(tiny, seqs, [0, 2], batch_size=2, progress=False)
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            hidden = tiny.model(torch.tensor([seq.ids]), output_hidden_states=True).hidden_states
        for layer in (0, 2):  # hidden_states[L + 1] is the output of layer L (not the last one)
            torch.testing.assert_close(readout.last[layer][i], hidden[layer + 1][0, -1],
                                       atol=1e-4, rtol=1e-4)


def test_choices_differing_in_last_token_share_a_pass_with_same_scores(tiny):
    prompts = ["Pick one: (A) cats (B) dogs", "Pick one: (A) cats (B) dogs", "Other?", "Other?"]
    completions = ["(A", "(B", "(A", "Yes"]
    shared = score_completions(tiny, prompts, completions, batch_size=2, progress=False)
    for score, prompt, completion in zip(shared, prompts, completions):
        assert score.logprob == pytest.approx(manual_logprob(tiny, prompt, completion), abs=1e-4)


def test_empty_completion_scores_zero(tiny):
    (score,) = score_completions(tiny, ["Hi"], [""], progress=False)
    assert (score.logprob, score.n_tokens) == (0.0, 0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma"])
def test_a_long_shared_preamble_runs_once_with_the_same_scores(family):
    from steerlab.model.scoring import PREFIX_MIN, common_prefix, score_settings

    model = tiny_model(family)
    preamble = "You answer carefully. " * 6
    prompts = [f"{preamble}Question {i}: which?" + " more words" * (i % 3) for i in range(7)]
    seqs = encode(model, prompts, [" yes", " no", " maybe not", " yes", " no", " y", " perhaps"])
    assert common_prefix(seqs) >= PREFIX_MIN
    full = score_settings(model, seqs, [nullcontext], batch_size=3, progress=False)[0]
    calls = []
    handle = model.model.register_forward_pre_hook(
        lambda m, a, k: calls.append(k["input_ids"].shape), with_kwargs=True)
    try:
        shared = score_settings(model, seqs, [nullcontext], batch_size=3, progress=False,
                                share_prefix=True)[0]
    finally:
        handle.remove()
    assert [s.logprob for s in shared] == pytest.approx([s.logprob for s in full], abs=1e-4)
    assert calls[0][0] == 1 and calls[0][1] >= PREFIX_MIN  # the preamble, once
    assert all(shape[1] < min(len(s.ids) for s in seqs) - PREFIX_MIN + 20 for shape in calls[1:])
