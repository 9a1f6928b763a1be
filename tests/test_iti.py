"""Inference-time intervention: vectors on the attention site (the heads' outputs entering the
attention output projection), checked against a hand-written per-head hook, and ITI's head
choice checked against probes fit here."""

import numpy as np
import pytest
import torch
from tiny import PAIRS, logits, tiny_model

from steerlab.data.files import PreferencePair, split
from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.methods import train_vector
from steerlab.methods.probes import fit_logistic
from steerlab.model.encoding import encode
from steerlab.model.heads import attention_projections
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

MORE = [PreferencePair(f"Is {i} odd?\n(A) yes\n(B) no", "(A" if i % 2 else "(B",
                       "(B" if i % 2 else "(A", id=f"o{i}") for i in range(12)]


def head_vector(model, layer, head, seed=0):
    """A vector on the attention site shifting one head of one layer."""
    projection = attention_projections(model.layers)[layer]
    width = next(p for p in projection.parameters()).shape
    width = projection.in_features if hasattr(projection, "in_features") else width[0]
    size = width // model.model.config.num_attention_heads
    direction = torch.zeros(width)
    direction[head * size:(head + 1) * size] = torch.randn(size, generator=torch.Generator()
                                                           .manual_seed(seed))
    return SteeringVector({layer: direction}, meta_for(model, "test", site="attention"))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_attention_site_equals_a_hand_written_head_hook(family):
    model = tiny_model(family)
    vector = head_vector(model, 1, 2)
    projection = attention_projections(model.layers)[1]
    shift = 3.0 * vector.directions[1]
    handle = projection.register_forward_pre_hook(lambda m, args: (args[0] + shift, *args[1:]))
    try:
        expected = logits(model)
    finally:
        handle.remove()
    with SteeringSetting(vector, 3.0).apply(model):
        assert torch.equal(logits(model), expected)
    assert not torch.equal(logits(model), expected)
    before = len(projection._forward_pre_hooks)
    with SteeringSetting(vector, 0.0).apply(model) as steering:  # α = 0: no hook at all
        assert not steering.active and len(projection._forward_pre_hooks) == before


def test_attention_vectors_refuse_norm_ratio_and_llama_cpp_export(tiny, tmp_path):
    vector = head_vector(tiny, 1, 0)
    with pytest.raises(ValueError, match="norm_ratio scales to the residual norm"):
        SteeringSetting(vector, 1.0, norm_ratio=0.1)
    with pytest.raises(ValueError, match="norm_ratio scales to the residual norm"):
        vector.apply(tiny, 1.0, norm_ratio=0.1)  # the vector's own check, not the setting's
    with pytest.raises(ValueError, match="cannot be exported"):
        vector.to_gguf(tmp_path / "v.gguf")
    records = evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(vector), [0.0, 2.0]), progress=False)
    assert {r["vector_id"] for r in records} == {vector.id}


def test_iti_keeps_the_heads_whose_probes_read_best_and_shifts_them_by_their_spread(tiny):
    pairs = [*PAIRS, *MORE]
    vector = train_vector(tiny, pairs, "iti", [1, 2], {"top_k": 3, "holdout": 0.25})
    heads = vector.meta.extra["iti"]["heads"]
    assert vector.meta.site == "attention" and len(heads) == 3
    n_heads, size = tiny.model.config.num_attention_heads, vector.meta.extra["iti"]["head_dim"]
    held, fit = split(range(len(pairs)), [4, len(pairs) - 4], 0)
    projections = attention_projections(tiny.layers)

    def read(completions):
        rows = {1: [], 2: []}
        for seq in encode(tiny, [p.prompt for p in pairs], completions):
            seen = {}
            handles = [projections[layer].register_forward_pre_hook(
                lambda m, args, layer=layer: seen.__setitem__(layer, args[0][0, -1].float()))
                for layer in rows]
            with torch.no_grad():
                tiny.model(torch.tensor([seq.ids]))
            for handle in handles:
                handle.remove()
            for layer in rows:
                rows[layer].append(seen[layer])
        return {layer: torch.stack(r) for layer, r in rows.items()}

    chosen, rejected = read([p.chosen for p in pairs]), read([p.rejected for p in pairs])
    accuracy = {}
    for layer in (1, 2):
        for head in range(n_heads):
            part = slice(head * size, (head + 1) * size)
            c, r = chosen[layer][:, part], rejected[layer][:, part]
            w, b = fit_logistic(torch.cat([c[fit], r[fit]]).numpy(),
                                np.r_[np.ones(len(fit)), np.zeros(len(fit))], 1e-2)
            x = torch.cat([c[held], r[held]]).double().numpy()
            accuracy[(layer, head)] = float(np.mean((x @ w + b > 0) == np.r_[[True] * 4,
                                                                            [False] * 4]))
    best = sorted(accuracy, key=lambda k: (-accuracy[k], k))[:3]
    assert [(h["layer"], h["head"]) for h in heads] == best
    for h in heads:
        part = slice(h["head"] * size, (h["head"] + 1) * size)
        c, r = chosen[h["layer"]][:, part], rejected[h["layer"]][:, part]
        unit = (c.mean(0) - r.mean(0)) / (c.mean(0) - r.mean(0)).norm()
        sigma = float((torch.cat([c, r]) @ unit).std())
        torch.testing.assert_close(vector.directions[h["layer"]][part], sigma * unit,
                                   atol=1e-4, rtol=1e-4)


def test_iti_trains_from_the_cli_and_in_a_run_as_one_whole_vector(model_dir, tmp_path, tiny):
    from tiny import invoke, write_jsonl

    from steerlab.experiment.config import parse_config
    from steerlab.experiment.runner import Runner
    from steerlab.records import read_records

    data = write_jsonl(tmp_path / "p.jsonl", [p.__dict__ for p in [*PAIRS, *MORE]])
    out = tmp_path / "iti.safetensors"
    result = invoke("train", "--model", model_dir, "--data", data, "--method", "iti",
                    "--layer", "1,2,3", "-p", "top_k=2", "--out", out)
    assert result.exit_code == 0, result.output
    assert SteeringVector.load(out).meta.site == "attention"
    text = f"""name: t
model: tiny
data: {{train: {{dataset: {data}}}, val_size: 4, test: {{dataset: {data}}}}}
methods: {{iti: {{method: iti, top_k: 3}}}}
steering: {{layers: [1, 2, 3], multipliers: [-2, 2]}}
"""
    runner = Runner(parse_config(text, check_data=False), tmp_path / "run", progress=False,
                    log=lambda _: None, model=tiny)
    with runner.run.writer() as writer:
        runner.methods(writer)
    vector = runner.selected["iti"]
    assert (tmp_path / "run" / "vectors" / "iti.safetensors").exists()
    assert len(vector.meta.extra["iti"]["heads"]) == 3
    swept = [r for r in read_records(tmp_path / "run" / "records.jsonl")
             if r.get("arm") == "iti" and r.get("task") == "ab"]
    assert {tuple(r["layers"]) for r in swept} == {tuple(vector.layers)}
    assert {r["multiplier"] for r in swept} == {-2.0, 2.0}


def test_a_served_request_steers_with_an_attention_site_vector(tiny):
    import openai

    from steerlab.model.generation import generate_tokens
    from steerlab.serve.app import create_app
    from steerlab.serve.launch import serving
    from steerlab.serve.schema import ServeSettings

    vector = head_vector(tiny, 2, 1, seed=4)
    app = create_app(tiny, {"heads": vector}, ServeSettings(max_tokens=6, max_multiplier=20))
    with serving(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=6, temperature=0, extra_body={"steering": [{"vector": "heads",
                                                                  "multiplier": 15}]})
    text = tiny.format_messages([{"role": "user", "content": "Tell me a story."}])
    with SteeringSetting(vector, 15.0).apply(tiny):
        tokens = generate_tokens(tiny, [text], 6, format_prompts=False, progress=False)[0]
    assert reply.choices[0].message.content == tiny.tokenizer.decode(tokens,
                                                                     skip_special_tokens=True)
