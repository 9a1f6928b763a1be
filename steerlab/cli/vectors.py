"""`steerlab vector`: inspect saved vectors; export them to llama.cpp and back."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from steerlab.cli.app import console, vector_app
from steerlab.cli.inputs import fail, load_vector
from steerlab.cli.options import NormRatioOpt, finite_number, parse_ints


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
