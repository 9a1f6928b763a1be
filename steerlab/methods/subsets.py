"""Sample efficiency: one vector per nested training subset and seed, as in the post-mortem."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from steerlab.data.files import PreferencePair, nested_subsets
from steerlab.steering.vectors import SteeringVector

Trainer = Callable[[list[PreferencePair], int], SteeringVector]
"""Trains a vector from (pairs, seed)."""


def train_on_subsets(
    train: Trainer,
    pairs: Sequence[PreferencePair],
    sizes: Sequence[int],
    seeds: Sequence[int],
    out_dir: str | Path,
    name: str = "vector",
) -> list[Path]:
    """Train on nested subsets (each smaller one inside the larger, per seed) and save each.

    Files are ``{name}-n{size}-seed{seed}.safetensors`` with ``subset_size`` and
    ``subset_seed`` in the metadata. Existing files are kept, so a rerun resumes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        for size, subset in nested_subsets(pairs, sizes, seed=seed).items():
            path = out_dir / f"{name}-n{size}-seed{seed}.safetensors"
            if not path.exists():
                vector = train(subset, seed)
                vector.meta.extra.update(subset_size=size, subset_seed=seed, pool_size=len(pairs))
                vector.save(path)
            paths.append(path)
    return paths
