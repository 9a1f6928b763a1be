"""Benchmark: SAE features on the method leaderboard, with an SAE trained here by sae-lens.

No public SAE of SmolLM2-135M-Instruct is available offline, so this trains one: sae-lens's
top-k SAE (4,096 features, k = 32) on layer 10's outputs over WikiText-2 test paragraphs and the
bundled refusal and harmless prompts (every token), saved with sae-lens's own
``save_inference_model``. It then runs `steerlab sae top-features` on the refusal training pairs
and a run config with CAA and the ``sae`` method (the top 1 and the top 8 features of the
training pairs) at layer 10, multipliers ±2 at norm ratio 0.05 (quick.yaml's grid, so every
vector is the same size and only its direction differs), selected on validation and tested.
Prints and saves to bench/results/sae_leaderboard.json: the SAE's training time and the share
of variance it explains on held-out tokens, the top features, and the leaderboard.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/sae_leaderboard.py
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch
from saving import machine, save

from steerlab import load_model
from steerlab.analysis.comparison import headline
from steerlab.data.files import as_prompts, passages
from steerlab.data.registry import load_dataset
from steerlab.experiment.config import parse_config
from steerlab.experiment.runner import Runner
from steerlab.methods.sae import load_features, top_features
from steerlab.model.capture import forward_until
from steerlab.records import read_records

MODEL, LAYER, FEATURES, K, SEED = "smollm2-135m-instruct", 10, 4096, 32, 0
STEPS, BATCH, LR = 600, 1024, 3e-4


def activations(model) -> torch.Tensor:
    """Every token's layer-10 output over the training texts, (tokens, d_model), shuffled."""
    texts = passages(load_dataset("wikitext2", "test"), 600)
    texts += [model.format_prompt(p)
              for p in as_prompts(load_dataset("advbench") + load_dataset("harmless"))]
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"][:, :128]
            rows.append(forward_until(model.model, model.layers, [LAYER], input_ids=ids)[LAYER][0])
    tokens = torch.cat(rows).float()
    return tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(SEED))]


def train_sae(tokens: torch.Tensor, folder: Path) -> dict:
    """sae-lens's top-k SAE trained on ``tokens`` (the last 10% held out), saved in ``folder``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import SAEMetadata, TrainStepInput
    held = len(tokens) // 10
    train, test = tokens[held:], tokens[:held]
    torch.manual_seed(SEED)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=tokens.shape[1], d_sae=FEATURES, k=K,
        metadata=SAEMetadata(hook_name=f"blocks.{LAYER}.hook_resid_post", model_name=MODEL)))
    optimiser = torch.optim.Adam(sae.parameters(), lr=LR)
    started = time.perf_counter()
    for step in range(STEPS):
        start = (step * BATCH) % (len(train) - BATCH)
        batch = train[start:start + BATCH]
        output = sae.training_forward_pass(TrainStepInput(
            sae_in=batch, coefficients={}, dead_neuron_mask=None, n_training_steps=step,
            is_logging_step=False))
        optimiser.zero_grad()
        output.loss.backward()
        optimiser.step()
    seconds = time.perf_counter() - started
    sae.save_inference_model(folder)
    loaded = load_features(folder)
    with torch.no_grad():
        features = loaded.encode(test)
        rebuilt = features @ torch.stack([loaded.row(i) for i in range(FEATURES)])
        rebuilt += sae.b_dec.detach()
    explained = 1 - float(((test - rebuilt) ** 2).sum() / ((test - test.mean(0)) ** 2).sum())
    return {"train_s": round(seconds, 1), "tokens": len(train), "held_out_tokens": held,
            "variance_explained": round(explained, 4),
            "alive_features": int((features > 0).any(dim=0).sum())}


def main() -> dict:
    started = time.perf_counter()
    model = load_model(MODEL)
    with tempfile.TemporaryDirectory(prefix="steerlab-sae-") as scratch:
        folder = Path(scratch) / "sae"
        tokens = activations(model)
        trained = train_sae(tokens, folder)
        print(f"SAE: {trained}", flush=True)
        ranked_at = time.perf_counter()
        pairs = load_dataset("refusal", "train")[:64]
        ranked = top_features(model, load_features(folder), pairs, k=8, progress=False)
        rank_s = time.perf_counter() - ranked_at
        config = parse_config(f"""
name: sae-leaderboard
model: {MODEL}
seed: {SEED}
data:
  train: {{dataset: refusal, split: train, limit: 64}}
  val_size: 30
  test: {{dataset: refusal, split: test}}
methods:
  caa: {{method: caa}}
  sae-top1: {{method: sae, sae: {folder}, top_k: 1}}
  sae-top8: {{method: sae, sae: {folder}, top_k: 8}}
steering: {{layers: [{LAYER}], multipliers: [-2, 2], norm_ratio: 0.05}}
""")
        run_at = time.perf_counter()
        Runner(config, Path(scratch) / "run", progress=False, log=print, model=model)()
        run_s = time.perf_counter() - run_at
        records = read_records(Path(scratch) / "run" / "records.jsonl")
    head = headline(records)
    board = [{"arm": row.arm, "layers": row.selection.layers,
              "multiplier": row.selection.multiplier, "test_accuracy": row.test.estimate,
              "interval": [row.test.lower, row.test.upper],
              "vs_unsteered": str(row.versus_base) if row.versus_base else None}
             for row in head.rows]
    result = {
        "setting": {"model": MODEL, "layer": LAYER, "features": FEATURES, "k": K,
                    "steps": STEPS, "batch": BATCH, "lr": LR, "machine": machine()},
        "sae": trained,
        "top_features": [{"index": f.index, "difference": f.difference, "higher": f.higher,
                          "lower": f.lower, "t": f.t} for f in ranked],
        "top_features_s": round(rank_s, 1), "run_s": round(run_s, 1), "leaderboard": board,
        "total_s": round(time.perf_counter() - started, 1),
    }
    for row in board:
        print(row)
    print(f"saved {save('sae_leaderboard', result)}")
    return result


if __name__ == "__main__":
    main()
