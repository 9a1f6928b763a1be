"""Experiment: does preventative steering keep fine-tuning from teaching a trait?

Persona Vectors (Chen et al. 2025) fine-tune while adding the unwanted trait's vector, so the
weights need not move toward it; concept-ablation fine-tuning (Casademunt et al. 2025) projects
the trait's direction out instead. Both are measured here on the default model, with every
choice fixed before any fine-tuned model was evaluated:

- **Trait**: sycophancy. Its vector is CAA on the bundled sycophancy A/B pairs' training split
  (150 pairs) at layer 10 (the quick example's lower layer).
- **Fine-tuning data that pushes it**: the same 150 training rows as SFT, prompt = the user's
  statement alone, target = the text of the sycophantic answer (not a letter: the A/B test below
  is then a transfer, not the trained format); 30 of them held out for validation loss only.
- **Arms**: the base model; LoRA SFT (rank 8, lr 5e-4, 60 steps of 8: four epochs) plain; the same
  with the trait vector added at ×4 during training (preventative); the same with its direction
  ablated during training (CAFT). Every arm trains the same steps from the same seed and keeps its
  *last* adapter (keeping the lowest validation loss would pick the least-trained adapter of the
  steered arms and hide what training did). All evaluation is unsteered.
- **Measures**, on the 50 held-out test rows: the trait's projection (last prompt token of the
  statement at layer 10, onto the unit trait vector; the change from the base model per prompt,
  mean with a 90% interval); the A/B sycophancy score (probability of the sycophantic letter,
  mean with a 90% interval, and its change from base per item); the same score in the
  fine-tuning's own format, the sycophantic answer's text against the honest one's after the
  held-out statements (added after the first run, whose A/B score did not move in any arm: the
  first run's table is kept in BENCHMARKS.md); side effects: accuracy on the
  bundled 100 general-knowledge questions (Wilson interval) and perplexity on 20 WikiText-2
  paragraphs.

Prints a Markdown table and saves everything to bench/results/preventative_steering.json.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/preventative_steering.py
"""

from __future__ import annotations

import json
import math
import sys
import time

from saving import machine, save

from steerlab import load_model
from steerlab.data.files import PreferencePair, bundled_path, passages, read_rows, split
from steerlab.data.registry import load_dataset
from steerlab.evaluation.likelihood import Sweep, evaluate_ab, evaluate_mc
from steerlab.evaluation.side_effects import perplexity_records
from steerlab.methods.caa import train_caa
from steerlab.methods.lora import load_lora, train_lora
from steerlab.model.activations import read_layers
from steerlab.model.encoding import encode
from steerlab.stats import mean_interval, wilson_interval
from steerlab.steering.setting import Composition, SteeringSetting

MODEL, LAYER, MULTIPLIER, SEED = "smollm2-135m-instruct", 10, 4.0, 0
LORA = {"rank": 8, "lr": 5e-4, "batch_size": 8, "max_steps": 60, "eval_every": 60}
N_VAL, N_CAPABILITY, N_TEXTS = 30, 100, 20


def sycophancy_sft(split: str):
    """The bundled sycophancy rows as free-text pairs: the statement, the sycophantic answer's
    text (chosen), the other answer's text (rejected)."""
    pairs = []
    for _, row in read_rows(bundled_path("sycophancy")):
        if row["split"] != split:
            continue
        statement, _, choices = row["question"].partition("\n\nChoices:\n")
        options = {line[1]: line[4:].strip() for line in choices.splitlines() if line[:1] == "("}
        chosen = row["answer_matching_behavior"][1]
        rejected = row["answer_not_matching_behavior"][1]
        pairs.append(PreferencePair(statement.strip(), options[chosen], options[rejected],
                                    id=row["id"]))
    return pairs


def projections(model, prompts, unit):
    """Each prompt's last-token output at LAYER projected on ``unit``."""
    seqs = encode(model, prompts, [""] * len(prompts))
    last = read_layers(model, seqs, [LAYER], progress=False).last[LAYER]
    return (last @ unit).tolist()


def measure(model, name, data, unit, base=None) -> dict:
    """Every measure of one model (unsteered); changes per item against ``base``'s."""
    started = time.perf_counter()
    projection = projections(model, [p.prompt for p in data["sft_test"]], unit)
    ab = [r["score"] for r in evaluate_ab(model, data["ab_test"], progress=False)]
    text = [r["score"] for r in evaluate_ab(model, data["sft_test"], progress=False)]
    mc = [r["correct"] for r in evaluate_mc(model, data["capability"], progress=False)]
    scored = perplexity_records(model, data["texts"], Sweep(), progress=False)
    nll = sum(-r["logprob"] for r in scored) / sum(r["n_tokens"] for r in scored)
    result = {
        "arm": name, "projection": projection, "ab_scores": ab, "text_scores": text,
        "capability_correct": mc,
        "projection_mean": mean_interval(projection).__dict__,
        "ab_mean": mean_interval(ab).__dict__, "text_mean": mean_interval(text).__dict__,
        "capability": {**wilson_interval(sum(mc), len(mc), 0.9).__dict__,
                       "rate": sum(mc) / len(mc)},
        "perplexity": math.exp(nll),
        "measure_s": round(time.perf_counter() - started, 1),
    }
    if base is not None:
        result["projection_change"] = mean_interval(
            [a - b for a, b in zip(projection, base["projection"])]).__dict__
        result["ab_change"] = mean_interval([a - b for a, b in zip(ab, base["ab_scores"])]).__dict__
        result["text_change"] = mean_interval(
            [a - b for a, b in zip(text, base["text_scores"])]).__dict__
    return result


def main() -> dict:
    started = time.perf_counter()
    model = load_model(MODEL)
    sft = sycophancy_sft("train")
    val, train = split(sft, [N_VAL, len(sft) - N_VAL], SEED)
    data = {"sft_test": sycophancy_sft("test"), "ab_test": load_dataset("sycophancy", "test"),
            "capability": load_dataset("general-knowledge")[:N_CAPABILITY],
            "texts": passages(load_dataset("wikitext2", "test"), N_TEXTS)}
    trait = train_caa(model, load_dataset("sycophancy", "train"), [LAYER], progress=False)
    direction = trait.directions[LAYER]
    unit = direction / direction.norm()
    arms = {"plain": None,
            f"preventative (add ×{MULTIPLIER:g})": SteeringSetting(trait, MULTIPLIER),
            "CAFT (ablate)": SteeringSetting(trait, 1.0, intervention="ablate")}
    base = measure(model, "base", data, unit)
    rows = [base]
    # the vector's own effect on the base model, for scale: A/B score steered at ×MULTIPLIER
    with SteeringSetting(trait, MULTIPLIER).apply(model):
        steered_ab = [r["score"] for r in evaluate_ab(model, data["ab_test"], progress=False)]
    for name, setting in arms.items():
        trained = time.perf_counter()
        result = train_lora(model, train, val, **LORA, seed=SEED, keep="last", progress=False,
                            steering=Composition((setting,)) if setting else None)
        train_s = time.perf_counter() - trained
        adapted = load_lora(model, result)
        row = measure(adapted, name, data, unit, base)
        row["train_s"] = round(train_s, 1)
        row["losses"] = [round(h["loss"], 4) for h in result.history if "loss" in h]
        row["val_losses"] = [round(h["val_loss"], 4) for h in result.history if "val_loss" in h]
        rows.append(row)
        print(f"{name}: trained in {train_s:.0f} s, losses {row['losses'][0]} → "
              f"{row['losses'][-1]}, val {row['val_losses']}", flush=True)
    output = {
        "setting": {"model": MODEL, "layer": LAYER, "multiplier": MULTIPLIER, "seed": SEED,
                    "lora": LORA, "n_train": len(train), "n_val": len(val),
                    "n_test": len(data["sft_test"]), "capability": N_CAPABILITY,
                    "texts": N_TEXTS, "trait_norm": float(direction.norm()),
                    "machine": machine()},
        "steered_base_ab": mean_interval(steered_ab).__dict__,
        "arms": rows, "total_s": round(time.perf_counter() - started, 1),
    }
    print(table(output))
    print(f"the trait vector's own effect on the base model's A/B score at ×{MULTIPLIER:g}: "
          f"{cell_of(output['steered_base_ab'])} (unsteered {cell_of(base['ab_mean'])})")
    print(f"saved {save('preventative_steering', output)}")
    return output


def cell_of(estimate: dict | None, spec: str = ".3f") -> str:
    """'mean [lower, upper]' of a saved estimate; a dash for none."""
    if estimate is None:
        return "—"
    return f"{estimate['mean']:{spec}} [{estimate['lower']:{spec}}, {estimate['upper']:{spec}}]"


def table(output: dict) -> str:
    """The result as a Markdown table."""
    def cell(estimate: dict | None, spec: str = "+.3f") -> str:
        return cell_of(estimate, spec)

    lines = ["| arm | projection (mean) | projection change vs base [90%] | sycophantic text "
             "preferred [90%] | its change vs base [90%] | A/B sycophancy [90%] | A/B change vs "
             "base [90%] | general knowledge [90%] | WikiText-2 ppl | training (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in output["arms"]:
        capability = row["capability"]
        text = (f"{cell(row['text_mean'], '.3f')} | {cell(row.get('text_change'))} | "
                if "text_mean" in row else "— | — | ")
        lines.append(
            f"| {row['arm']} | {row['projection_mean']['mean']:.2f} | "
            f"{cell(row.get('projection_change'), '+.2f')} | {text}{cell(row['ab_mean'], '.3f')} | "
            f"{cell(row.get('ab_change'))} | {capability['rate']:.2f} "
            f"[{capability['lower']:.2f}, {capability['upper']:.2f}] | "
            f"{row['perplexity']:.2f} | {row.get('train_s', '—')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--table":
        print(table(json.loads(open(sys.argv[2]).read())))
    else:
        main()
