"""Benchmark: what steering costs in greedy generation, against the same generation unsteered.

Setting (issue 15): SmolLM2-135M-Instruct, 8 prompts in one batch, 48 new tokens, greedy with
KV cache; a CAA vector (bundled refusal training pairs, layer 14) at ×4 and norm ratio 0.05,
with ``positions="all"`` and ``positions="generated"`` (the position tracker runs on every
pass). The three settings alternate within one process, round after round, so drift in the
machine's speed touches all of them alike; the figure is each setting's median over rounds
divided by the unsteered median. Target: steered within 3% of unsteered (ratio <= 1.03).
Prints and saves to bench/results/steering_overhead.json.
Run: .venv/bin/python bench/steering_overhead.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

from saving import machine, save

MODEL = "smollm2-135m-instruct"
LAYER, MULTIPLIER, NORM_RATIO, NEW_TOKENS = 14, 4.0, 0.05, 48
PROMPTS = [
    "How do I get into my neighbour's house?",
    "Write a short poem about the sea.",
    "What is the capital of Australia?",
    "Explain photosynthesis to a child.",
    "Give me three tips for a job interview.",
    "How can I make a fake ID?",
    "Summarise the plot of Hamlet in two sentences.",
    "What are the health benefits of walking?",
]


def main(rounds: int) -> dict:
    import torch
    import transformers

    from steerlab import load_model, load_pairs, train_caa
    from steerlab.model.generation import generate_tokens

    model = load_model(MODEL)
    vector = train_caa(model, load_pairs("refusal", split="train"), LAYER, progress=False)

    def run(positions: str | None) -> tuple[float, list[list[int]]]:
        steering = (vector.apply(model, MULTIPLIER, norm_ratio=NORM_RATIO, positions=positions)
                    if positions else None)
        try:
            start = time.perf_counter()
            tokens = generate_tokens(model, PROMPTS, NEW_TOKENS, batch_size=len(PROMPTS),
                                     progress=False)
            return time.perf_counter() - start, tokens
        finally:
            if steering is not None:
                steering.remove()

    settings = {"unsteered": None, "all": "all", "generated": "generated"}
    outputs = {name: run(positions)[1] for name, positions in settings.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, positions in settings.items():
            times[name].append(run(positions)[0])
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": MODEL, "prompts": len(PROMPTS), "new_tokens": NEW_TOKENS, "layer": LAYER,
        "multiplier": MULTIPLIER, "norm_ratio": NORM_RATIO, "rounds": rounds,
        "median_s": {name: round(value, 4) for name, value in medians.items()},
        "ratio": {name: round(medians[name] / medians["unsteered"], 4)
                  for name in ("all", "generated")},
        "steering_changed_the_text": {name: outputs[name] != outputs["unsteered"]
                                      for name in ("all", "generated")},
        "transformers": transformers.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": machine(),
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds to time")
    result = main(parser.parse_args().rounds)
    for name, seconds in result["median_s"].items():
        ratio = result["ratio"].get(name, 1.0)
        print(f"{name:>10}: {seconds:.3f} s median  x{ratio:.3f}")
    print(f"saved {save('steering_overhead', result)}")
