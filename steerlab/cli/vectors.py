"""`steerlab vector`: inspect saved vectors; export them to llama.cpp and back; make one from
SAE features."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from steerlab.cli.app import console, vector_app
from steerlab.cli.inputs import fail, load_handle, load_training_pairs, load_vector
from steerlab.cli.options import (
    ModelOpt,
    NormRatioOpt,
    finite_number,
    parse_ints,
    placement_options,
)
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import Placement


@vector_app.command("info")
def vector_info(path: Annotated[Path, typer.Argument(
    help="A .safetensors steering vector.")]) -> None:
    """Show a vector's layers, norms and metadata."""
    from steerlab.steering.vectors import SteeringVector

    try:
        vector = SteeringVector.load(path)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    table = Table(title=f"{path} (id {vector.id})")
    table.add_column("layer", justify="right")
    table.add_column("norm", justify="right")
    table.add_column("residual norm", justify="right")
    for layer, norm in vector.norms().items():
        residual = vector.meta.residual_norms.get(layer)
        table.add_row(str(layer), f"{norm:.4g}", f"{residual:.4g}" if residual else "-")
    console.print(table)
    console.print_json(vector.meta.model_dump_json())


@vector_app.command("export")
def vector_export(
    path: Annotated[Path, typer.Argument(help="A .safetensors steering vector.")],
    gguf: Annotated[Path, typer.Option(
        "--gguf", help="The llama.cpp control vector to write (.gguf).")],
    multiplier: Annotated[float, typer.Option(
        help="Baked into the file: llama.cpp's strength 1 steers as this multiplier does.",
        callback=finite_number)] = 1.0,
    layers: Annotated[Optional[str], typer.Option(
        help="Export these layers only, comma-separated "
        "(layer 0 never: llama.cpp has no direction.0).")] = None,
    norm_ratio: NormRatioOpt = None,
    model_hint: Annotated[Optional[str], typer.Option(
        help="controlvector.model_hint (default: the vector's model name).")] = None,
) -> None:
    """Write a vector as a llama.cpp control vector (`--control-vector`): layer L → direction.L."""
    vector = load_vector(path)
    chosen = parse_ints(layers) if layers else None
    try:
        written = vector.to_gguf(gguf, multiplier, chosen, norm_ratio, model_hint)
    except ValueError as err:
        fail(str(err))
    directions = ", ".join(f"direction.{layer}" for layer in sorted(vector.additions(1.0, chosen)))
    console.print(f"wrote {written} ({directions}); use it with llama.cpp's --control-vector")


@vector_app.command("import")
def vector_import(
    gguf: Annotated[Path, typer.Argument(help="A llama.cpp control vector (.gguf).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The steering vector to write (.safetensors).")],
) -> None:
    """Read a llama.cpp control vector (direction.N → layer N) and save it as a steerlab vector."""
    from steerlab.steering.vectors import SteeringVector

    try:
        vector = SteeringVector.from_gguf(gguf)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    vector.save(out)
    console.print(f"saved {vector} to {out}")


@vector_app.command("from-sae")
@placement_options
def vector_from_sae(
    source: Annotated[Path, typer.Argument(
        help="An SAELens folder (cfg.json + sae_weights.safetensors) or a Neuronpedia feature / "
        "vector JSON, JSONL or .jsonl.gz file.")],
    feature: Annotated[list[str], typer.Option(
        "--feature", "-f", help="A feature index, or index:weight; repeat to sum several.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The steering vector to write (.safetensors).")],
    layer: Annotated[Optional[int], typer.Option(
        "--layer", "-l", help="The layer to steer (default: the one the SAE's hook reads; "
        "given, it must agree).", min=0)] = None,
    model: ModelOpt = DEFAULT_MODEL,
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="Preference pairs: with --scale contrast, the gap the vector is "
        "scaled to (and the residual norm norm_ratio uses).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of --data to use.")] = None,
    scale: Annotated[str, typer.Option(
        help="decoder: the rows as saved (×m adds the feature as if active at m); contrast: "
        "signed and scaled to the mean chosen − rejected gap on --data, like CAA's.")
    ] = "decoder",
    placement: Optional[Placement] = None,
) -> None:
    """Make a steering vector from SAE features: the sum of their decoder rows (× weights).

    Multiplier m then adds each feature as an SAE would reconstruct it active at m (Neuronpedia
    steers the same way: strength × row); the vector's metadata says where it came from.
    """
    from steerlab.methods.sae import Feature, feature_vector, load_features

    if scale not in ("decoder", "contrast"):
        raise typer.BadParameter(f"{scale!r}: decoder or contrast", param_hint="--scale")
    if (scale == "contrast") != (data is not None):
        raise typer.BadParameter("--scale contrast needs --data, and --data is read only with "
                                 "--scale contrast", param_hint="--data")
    try:
        features = [Feature.parse(text) for text in feature]
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--feature") from None
    dictionary = load_features(source)
    pairs = load_training_pairs(data, split) if data is not None else []
    handle = load_handle(model, placement)
    vector = feature_vector(handle, dictionary, features, layer, scale=scale,
                            pairs=pairs)
    vector.save(out)
    layer_used = vector.layers[0]
    console.print(f"saved {vector} to {out}: features {', '.join(feature)} of {source} at layer "
                  f"{layer_used} ({dictionary.hook_name or 'layer given'}), norm "
                  f"{float(vector.directions[layer_used].norm()):.4g}", highlight=False)
    for note in dictionary.notes:
        console.print(f"note: {note}", highlight=False)
    suggested = vector.meta.extra.get("suggested_strengths", {})
    if suggested:
        strengths = ", ".join(f"{i}: {s:g}" for i, s in suggested.items())
        console.print(f"Neuronpedia's default strengths (a multiplier): {strengths}",
                      highlight=False)
