"""`steerlab sae`: which of a sparse autoencoder's features a behaviour's pairs move most."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from steerlab.cli.app import console, sae_app
from steerlab.cli.inputs import load_handle, load_training_pairs
from steerlab.cli.options import BatchOpt, ModelOpt, placement_options
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import Placement


@sae_app.command("top-features")
@placement_options
def top_features(
    source: Annotated[Path, typer.Argument(
        help="An SAELens folder (cfg.json + sae_weights.safetensors).")],
    data: Annotated[str, typer.Option(
        "--data", "-d", help="Preference pairs: dataset name (name:split works) or file.")],
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(help="Split of --data to use.")] = None,
    layer: Annotated[Optional[int], typer.Option(
        "--layer", "-l", help="The layer the SAE reads (default: from its hook; given, it must "
        "agree).", min=0)] = None,
    top: Annotated[int, typer.Option("--top", "-k", help="How many features to list.",
                                     min=1)] = 20,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Also write the ranking as JSON (a run config's sae method reads "
        "it as features_file).")] = None,
    batch_size: BatchOpt = 8,
    placement: Optional[Placement] = None,
) -> None:
    """List the features whose activations differ most between chosen and rejected answers.

    Each pair's chosen and rejected sequence is encoded at its last token (where CAA reads);
    features are ranked by the mean chosen − rejected difference of their activations.
    """
    from steerlab.methods.sae import load_features, save_top_features
    from steerlab.methods.sae import top_features as rank

    dictionary = load_features(source)
    pairs = load_training_pairs(data, split)
    handle = load_handle(model, placement)
    found = rank(handle, dictionary, pairs, layer, top, batch_size)
    at = dictionary.at_layer(layer)
    table = Table("feature", "chosen", "rejected", "difference", "pairs ↑ / ↓", "paired t",
                  title=f"{source}: layer {at}, {len(pairs)} pairs of {data}")
    for f in found:
        table.add_row(str(f.index), f"{f.chosen:.4g}", f"{f.rejected:.4g}",
                      f"{f.difference:+.4g}", f"{f.higher} / {f.lower}", f"{f.t:+.2f}")
    console.print(table)
    if out is not None:
        save_top_features(found, dictionary, at, out)
        console.print(f"wrote {out}")
