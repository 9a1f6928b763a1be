"""The `steerlab` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import json
import math
import signal
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from steerlab.catalog import BUILTIN_MODELS, DEFAULT_MODEL

class _ErrorBoundary(TyperGroup):
    """Every command under one error boundary: an error that escapes a command ends it with one
    line on stderr (its message, and its type where it is not a plain input error) and exit
    status 1, never a traceback; ``steerlab --debug COMMAND`` shows the traceback instead."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exits and usage errors
            raise
        except Exception as err:  # the boundary: anything a command did not turn into a message
            if ctx.params.get("debug"):
                raise
            detail = " ".join(str(err).split()) or "(no message)"
            kind = "" if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: "
            typer.echo(f"error: {kind}{detail} (steerlab --debug ... shows the traceback)",
                       err=True)
            raise typer.Exit(code=1) from None


USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError, UnicodeError)
"""Errors whose message says what is wrong with the input: shown without their type."""

app = typer.Typer(
    cls=_ErrorBoundary,
    help="Train, apply and honestly evaluate steering vectors for Hugging Face language models.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _interruptible(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error instead "
                                                          "of its one-line message.")] = False,
) -> None:
    """Make SIGTERM (``kill``, a scheduler, a closing session) and SIGINT — which a shell's
    background job ignores — raise KeyboardInterrupt, so every command's Ctrl-C path keeps
    what it has written."""
    if threading.current_thread() is threading.main_thread():  # (an embedding app's thread may call us)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)


vector_app = typer.Typer(help="Inspect saved steering vectors; export them to llama.cpp and back.", no_args_is_help=True)
app.add_typer(vector_app, name="vector")
console = Console()

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help=f"Built-in name ({', '.join(BUILTIN_MODELS)}), model directory, .gguf file or hub id.",
    ),
]
def _finite(value: float | None) -> float | None:
    """Option callback: a number option must be finite (NaN or inf steer nothing meaningful)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _positive(value: float | None) -> float | None:
    """Option callback: a finite number above 0 (a norm ratio, a learning rate)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number above 0, got {value}")
    return value


BatchOpt = Annotated[int, typer.Option(help="Sequences per forward pass.", min=1)]
LayersOpt = Annotated[Optional[str], typer.Option(help="Apply at these layers, comma-separated, or 'all' (default: the vector's).")]
NormRatioOpt = Annotated[Optional[float], typer.Option(help="Scale to this fraction of the residual norm.",
                                                       callback=_positive)]
AblateOpt = Annotated[bool, typer.Option(
    "--ablate", help="Project the vector's direction out instead of adding it; the multiplier is the strength (1 removes the component).")]
LimitOpt = Annotated[Optional[int], typer.Option("--n", help="Items per dataset: a seeded sample (default: all).")]


def parse_floats(text: str) -> list[float]:
    """'-2,-1,0,1,2' → [-2.0, -1.0, 0.0, 1.0, 2.0], with a clear error for bad input."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise typer.BadParameter(f"expected finite numbers, got {text!r}")
    return values


def parse_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def parse_layers(text: Optional[str], n_layers: int) -> Optional[list[int]]:
    """'all' → every layer of the model; '1,2' → [1, 2]; None → None (the vector's own)."""
    if text is None:
        return None
    return list(range(n_layers)) if text.strip() == "all" else parse_ints(text)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def _load(model: str):
    from steerlab.models import ModelLoadError, load_model

    try:
        with console.status(f"loading {model}"):
            return load_model(model)
    except ModelLoadError as err:
        _fail(str(err))


METHODS = ("caa", "bipo", "dpo")


@app.command()
def train(
    data: Annotated[str, typer.Option("--data", "-d", help="Pairs: dataset name (`steerlab data list`; name:split works) or .jsonl/.csv file.")],
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer index (CAA also takes several: 10,12,14).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Vector file (.safetensors); a directory with --subset-sizes.")],
    method: Annotated[str, typer.Option(help="caa, bipo or dpo (BiPO with the direction fixed to +1).")] = "caa",
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(help="Use only rows whose 'split' field is this (bundled sets: train/test).")] = None,
    batch_size: BatchOpt = 8,
    beta: Annotated[float, typer.Option(help="BiPO/DPO: inverse temperature of the preference loss.")] = 0.1,
    lr: Annotated[float, typer.Option(help="BiPO/DPO: AdamW learning rate.")] = 5e-4,
    epochs: Annotated[int, typer.Option(help="BiPO/DPO: passes over the pairs.", min=1)] = 5,
    weight_decay: Annotated[float, typer.Option(help="BiPO/DPO: AdamW weight decay.")] = 0.0,
    seed: Annotated[int, typer.Option(help="BiPO/DPO: seed for batches and directions.")] = 0,
    val_data: Annotated[Optional[str], typer.Option(help="BiPO/DPO: validation pairs (file or bundled name).")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Split of --val-data to use.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="BiPO/DPO: stop after this many epochs without validation gain.")] = None,
    norm_ratio: Annotated[Optional[float], typer.Option(help="BiPO/DPO: rescale the result to this fraction of the residual norm.", callback=_positive)] = None,
    engine: Annotated[str, typer.Option(help="BiPO/DPO: fast (cached lower layers) or naive.")] = "fast",
    subset_sizes: Annotated[Optional[str], typer.Option(help="Train one vector per nested subset size, e.g. 1,2,4,8.")] = None,
    seeds: Annotated[int, typer.Option(help="With --subset-sizes: seeds 0..N-1 per size.")] = 1,
) -> None:
    """Train a steering vector from preference pairs and save it.

    BiPO/DPO rewrite --out after every epoch, so Ctrl-C keeps the last completed epoch's vector.
    """
    from steerlab.methods import TrainingHistory, train_bipo, train_caa
    from steerlab.methods.subsets import train_on_subsets

    if method not in METHODS:
        _fail(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    layers = parse_ints(layer)
    if method != "caa" and len(layers) != 1:
        _fail(f"{method} trains one layer at a time; got --layer {layer}")
    pairs = _pairs(data, split)
    val_pairs = _pairs(val_data, val_split) if val_data else None
    handle = _load(model)
    outside = [index for index in layers if not 0 <= index < handle.n_layers]
    if outside:
        _fail(f"--layer {layer}: layer {outside[0]} is out of range (the model has "
              f"{handle.n_layers} layers, 0..{handle.n_layers - 1})")

    def run(subset: list, run_seed: int, checkpoint: Path | None = None):
        if method == "caa":
            return train_caa(handle, subset, layers, batch_size=batch_size)
        history = TrainingHistory()
        vector = train_bipo(
            handle, subset, layers[0], beta=beta, lr=lr, batch_size=batch_size, epochs=epochs,
            weight_decay=weight_decay, direction="bi" if method == "bipo" else "forward",
            seed=run_seed, val_pairs=val_pairs, patience=patience, norm_ratio=norm_ratio,
            engine=engine, checkpoint=checkpoint, history=history,
        )
        for entry in history.epochs:
            console.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
        return vector

    try:
        if subset_sizes:
            paths = train_on_subsets(run, pairs, parse_ints(subset_sizes), range(seeds), out, name=method)
            console.print(f"{len(paths)} vectors in {out}")
            return
        vector = run(pairs, seed, checkpoint=out)
    except KeyboardInterrupt:
        console.print(f"interrupted: the last completed epoch's vector (if any) is in {out}")
        raise typer.Exit(code=130) from None
    vector.save(out)
    console.print(f"saved {vector} to {out}")


@app.command("eval")
def evaluate(
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset name (`steerlab data list`; name:split works) or MC / pairs file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records file (.jsonl), appended to; a rerun resumes.")],
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[Path], typer.Option("--vector", "-v", help="Steering vector file.")] = None,
    multipliers: Annotated[str, typer.Option(help="Comma-separated multipliers.")] = "0",
    layers: LayersOpt = None,
    norm_ratio: NormRatioOpt = None,
    ablate: AblateOpt = False,
    split: Annotated[Optional[str], typer.Option(help="Use only this split (bundled sets: train/test).")] = None,
    batch_size: BatchOpt = 8,
) -> None:
    """Score multiple-choice or A/B items by likelihood, per multiplier; print a table.

    Rerun on the same --out, it resumes: items whose records are there are not scored again.
    """
    from steerlab.evaluation import Sweep, evaluate
    from steerlab.records import RecordWriter, summarize
    from steerlab.vectors import SteeringVector

    items = _scored_items(data, split)
    steering = SteeringVector.load(vector) if vector else None
    handle = _load(model)
    try:
        sweep = Sweep(steering, parse_floats(multipliers), parse_layers(layers, handle.n_layers), norm_ratio,
                      intervention="ablate" if ablate else "add")
        sweep.check()
    except ValueError as err:
        _fail(str(err))
    with RecordWriter(out) as writer:
        records = evaluate(handle, items, [sweep], dataset=str(data), writer=writer, batch_size=batch_size)
    print_summary(summarize(records))
    console.print(f"{len(records)} records in {out}")


def _dataset(spec: str, split: Optional[str], limit: Optional[int] = None, seed: int = 0) -> list:
    """Records of a registered dataset or file (``name:split`` also names the split), or exit
    with the loader's message; ``limit`` takes a seeded sample."""
    from steerlab.data import DataError
    from steerlab.data import split as sample
    from steerlab.datasets import DatasetUnavailable, load_dataset

    if split is None and ":" in spec and not Path(spec).exists():
        spec, split = spec.rsplit(":", 1)
    try:
        items = load_dataset(spec, split)
    except (DataError, DatasetUnavailable, FileNotFoundError, KeyError, ValueError) as err:
        _fail(str(err))
    if not items:
        _fail(f"no rows in {spec}" + (f" with split '{split}'" if split else ""))
    return sample(items, [min(limit, len(items))], seed)[0] if limit else items


def _prompt_set(spec: str, limit: Optional[int], seed: int) -> list[str]:
    """Prompts of a question set, prompts dataset or any dataset (``name:split`` names the
    split), or exit with the loader's message; ``limit`` takes a seeded sample."""
    from steerlab.data import DataError
    from steerlab.data import split as sample
    from steerlab.datasets import DatasetUnavailable
    from steerlab.openended import load_prompts

    name, split = spec.rsplit(":", 1) if ":" in spec and not Path(spec).exists() else (spec, None)
    try:
        prompts = load_prompts(name, split)
    except (DataError, DatasetUnavailable, FileNotFoundError, KeyError, ValueError) as err:
        _fail(str(err))
    if not prompts:
        _fail(f"no prompts in {spec}")
    return sample(prompts, [min(limit, len(prompts))], seed)[0] if limit else prompts


def _pairs(spec: str, split: Optional[str]) -> list:
    """Preference pairs (free text or A/B) for training."""
    from steerlab.data import PreferencePair

    pairs = _dataset(spec, split)
    if not isinstance(pairs[0], PreferencePair):
        _fail(f"{spec} holds {type(pairs[0]).__name__} records, not preference pairs "
              "(multiple choice converts with steerlab.mc_to_pairs)")
    return pairs


def _scored_items(spec: str, split: Optional[str], limit: Optional[int] = None) -> list:
    """Multiple-choice items or A/B pairs: what likelihood evaluation takes."""
    from steerlab.data import MCItem, PreferencePair

    items = _dataset(spec, split, limit)
    if not isinstance(items[0], (MCItem, PreferencePair)):
        _fail(f"{spec} holds prompts or text, not multiple-choice items or pairs")
    return items


def print_summary(rows: list[dict]) -> None:
    """A table with one row per setting: n, score ± standard error, accuracy."""
    table = Table()
    for column in ("task", "dataset", "layers", "multiplier", "n", "score", "accuracy"):
        table.add_column(column, justify="right" if column in ("multiplier", "n") else "left")
    for row in rows:
        table.add_row(
            row["task"], str(row["dataset"]), str(row["layers"] or "-"), f"{row['multiplier']:g}",
            str(row["n"]), f"{row['score']:.3f} ± {row['score_se']:.3f}", f"{row['correct']:.3f}",
        )
    console.print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user prompt (the chat template is applied).")],
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[Path], typer.Option("--vector", "-v", help="Steering vector file.")] = None,
    multiplier: Annotated[float, typer.Option(help="Steering multiplier.", callback=_finite)] = 1.0,
    positions: Annotated[str, typer.Option(help="all, prompt or generated.")] = "all",
    norm_ratio: NormRatioOpt = None,
    layers: LayersOpt = None,
    ablate: AblateOpt = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.", min=1)] = 80,
    compare: Annotated[bool, typer.Option(help="Also print the unsteered reply.")] = True,
    condition: Annotated[Optional[Path], typer.Option(
        help="Steer only if the prompt meets this condition (from `steerlab condition`).")] = None,
) -> None:
    """Generate a reply (greedy), steered when a vector is given."""
    from contextlib import AbstractContextManager, nullcontext

    from steerlab.composition import Part, compose
    from steerlab.generation import generate as run_generate

    steering = _vector(vector) if vector else None
    gate = _condition(condition) if condition else None
    if gate is not None and steering is None:
        _fail("--condition gates a vector: give --vector too")
    handle = _load(model)
    if gate is not None:
        holds = gate.applies(handle, [prompt], progress=False)[0]
        verdict = "holds: steering" if holds else "does not hold: unsteered"
        console.print(f"condition {gate.id} {verdict}", highlight=False)
    if steering is not None and compare:
        console.print("[bold]unsteered[/bold]")
        console.print(run_generate(handle, [prompt], max_new_tokens, progress=False)[0])
    context: AbstractContextManager = nullcontext()
    if steering is not None:
        try:
            part = Part(steering, multiplier, parse_layers(layers, handle.n_layers), norm_ratio,
                        "ablate" if ablate else "add", gate)
            context = compose([part]).apply(handle, positions)  # type: ignore[arg-type]
        except ValueError as err:
            _fail(str(err))
        if compare:
            console.print(f"[bold]{'ablated' if ablate else 'steered'} ×{multiplier:g}[/bold]")
    with context:
        console.print(run_generate(handle, [prompt], max_new_tokens, progress=False)[0])


@vector_app.command("info")
def vector_info(path: Annotated[Path, typer.Argument(help="A .safetensors steering vector.")]) -> None:
    """Show a vector's layers, norms and metadata."""
    from steerlab.vectors import SteeringVector

    try:
        vector = SteeringVector.load(path)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
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
    gguf: Annotated[Path, typer.Option("--gguf", help="The llama.cpp control vector to write (.gguf).")],
    multiplier: Annotated[float, typer.Option(help="Baked into the file: llama.cpp's strength 1 steers as this multiplier does.", callback=_finite)] = 1.0,
    layers: Annotated[Optional[str], typer.Option(help="Export these layers only, comma-separated (layer 0 never: llama.cpp has no direction.0).")] = None,
    norm_ratio: NormRatioOpt = None,
    model_hint: Annotated[Optional[str], typer.Option(help="controlvector.model_hint (default: the vector's model name).")] = None,
) -> None:
    """Write a vector as a llama.cpp control vector (`--control-vector`): layer L → direction.L."""
    vector = _vector(path)
    chosen = parse_ints(layers) if layers else None
    try:
        written = vector.to_gguf(gguf, multiplier, chosen, norm_ratio, model_hint)
    except ValueError as err:
        _fail(str(err))
    directions = ", ".join(f"direction.{layer}" for layer in sorted(vector.additions(1.0, chosen)))
    console.print(f"wrote {written} ({directions}); use it with llama.cpp's --control-vector")


@vector_app.command("import")
def vector_import(
    gguf: Annotated[Path, typer.Argument(help="A llama.cpp control vector (.gguf).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The steering vector to write (.safetensors).")],
) -> None:
    """Read a llama.cpp control vector (direction.N → layer N) and save it as a steerlab vector."""
    from steerlab.vectors import SteeringVector

    try:
        vector = SteeringVector.from_gguf(gguf)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    vector.save(out)
    console.print(f"saved {vector} to {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for records, vector and report.")] = Path("demo_out"),
    model: ModelOpt = DEFAULT_MODEL,
    behaviour: Annotated[str, typer.Option(help="Bundled behaviour: sycophancy or refusal.")] = "refusal",
    layer: Annotated[Optional[int], typer.Option(help="Layer to steer (default: the demo's choice).")] = None,
    multipliers: Annotated[Optional[str], typer.Option(help="Comma-separated multipliers.")] = None,
) -> None:
    """Train a CAA vector on a bundled behaviour, sweep multipliers, compare generations, report."""
    from steerlab.demo import DemoConfig, run_demo

    config = DemoConfig(model=model, behaviour=behaviour, out_dir=out)
    if layer is not None:
        config.layer = layer
    if multipliers:
        config.multipliers = parse_floats(multipliers)
    run_demo(config, console)


# ---- sweeps, side effects, analysis ------------------------------------------------------------

RunOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory: records, vectors, command log; a rerun resumes.")]


@app.command()
def sweep(
    data: Annotated[list[str], typer.Option("--data", "-d", help="Dataset (name, name:split or file); repeatable.")],
    vector: Annotated[list[Path], typer.Option("--vector", "-v", help="Steering vector file; repeatable.")],
    out: RunOpt,
    model: ModelOpt = DEFAULT_MODEL,
    multipliers: Annotated[str, typer.Option(help="Comma-separated multipliers.")] = "-2,-1,0,1,2",
    layers: Annotated[Optional[str], typer.Option(help="Layers to try, each on its own (default: the vector's own).")] = None,
    norm_ratio: NormRatioOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
) -> None:
    """Evaluate every vector × layer × multiplier on each dataset, into a run directory.

    At each layer the layers below run once per batch and only those above once per multiplier.
    """
    from steerlab.evaluation import evaluate, grid
    from steerlab.records import summarize
    from steerlab.runs import RunDir

    sets = {spec: _scored_items(spec, None, limit) for spec in data}
    vectors = [_vector(path) for path in vector]
    sweeps = grid(vectors, parse_floats(multipliers), parse_ints(layers) if layers else None, norm_ratio)
    handle = _load(model)
    run = RunDir.open(out, "sweep", {"data": data, "vectors": [str(v) for v in vector], "model": model,
                                     "multipliers": multipliers, "layers": layers, "norm_ratio": norm_ratio,
                                     "n": limit})
    records = []
    with run.writer() as writer:
        for steering in vectors:
            run.keep_vector(steering)
        for spec, items in sets.items():
            records += evaluate(handle, items, sweeps, dataset=spec, writer=writer, batch_size=batch_size)
    print_summary(summarize(records))
    console.print(f"{len(records)} records in {run.records_path}; `steerlab analyze {out}` builds the tables")


@app.command("compose")
def compose_grid(
    vector: Annotated[list[Path], typer.Option("--vector", "-v", help="Steering vector file: give two, first then second.")],
    data_a: Annotated[str, typer.Option("--data-a", help="The first vector's behaviour: A/B pairs or MC items (name, name:split or file).")],
    data_b: Annotated[str, typer.Option("--data-b", help="The second vector's behaviour, likewise.")],
    out: RunOpt,
    grid: Annotated[str, typer.Option(help="Multipliers tried for each vector, comma-separated (both axes of the grid).")] = "-2,0,2",
    model: ModelOpt = DEFAULT_MODEL,
    layers: LayersOpt = None,
    norm_ratio: NormRatioOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
) -> None:
    """Steer with two vectors at once over a grid of both multipliers; score both behaviours.

    Every grid point is scored on both datasets; `steerlab analyze` draws one heat map each.
    """
    from steerlab.composition import grid_cells
    from steerlab.evaluation import composition_grid, evaluate
    from steerlab.runs import RunDir

    if len(vector) != 2:
        _fail(f"compose takes exactly two --vector options, got {len(vector)}")
    first, second = (_vector(path) for path in vector)
    sets = {spec: _scored_items(spec, None, limit) for spec in (data_a, data_b)}
    handle = _load(model)
    try:
        sweeps = composition_grid(first, second, parse_floats(grid), None, parse_layers(layers, handle.n_layers),
                                  norm_ratio)
        for sweep in sweeps:
            sweep.check()
    except ValueError as err:
        _fail(str(err))
    run = RunDir.open(out, "compose", {"vectors": [str(v) for v in vector], "data": [data_a, data_b],
                                       "model": model, "grid": grid, "layers": layers,
                                       "norm_ratio": norm_ratio, "n": limit})
    records = []
    with run.writer() as writer:
        for steering in (first, second):
            run.keep_vector(steering)
        for spec, items in sets.items():
            records += evaluate(handle, items, sweeps, dataset=spec, writer=writer, batch_size=batch_size)
    print_grid(grid_cells(records), {first.id: str(vector[0]), second.id: str(vector[1])})
    console.print(f"{len(records)} records in {run.records_path}; `steerlab analyze {out}` draws the heat maps")


def print_grid(cells: list, names: dict[str, str]) -> None:
    """One table per grid: the mean score at each (first, second) multiplier pair."""
    from steerlab.composition import by_grid, grid_matrix

    for (_, dataset, first, second), members in by_grid(cells).items():
        rows, columns, matrix = grid_matrix(members)
        table = Table(title=f"{dataset}: mean score (rows: ×{names.get(first, first)}, "
                            f"columns: ×{names.get(second, second)})")
        table.add_column("×", justify="right")
        for column in columns:
            table.add_column(f"{column:g}", justify="right")
        for row, line in zip(rows, matrix):
            table.add_row(f"{row:g}", *(f"{c.score:.3f}" if c else "-" for c in line))
        console.print(table)


def _condition(path: Path):
    from steerlab.conditions import Condition

    try:
        return Condition.load(path)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))


def _vector(path: Path):
    from steerlab.vectors import SteeringVector

    try:
        return SteeringVector.load(path)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))


@app.command("side-effects")
def side_effects(
    vector: Annotated[Path, typer.Option("--vector", "-v", help="Steering vector file.")],
    out: RunOpt,
    model: ModelOpt = DEFAULT_MODEL,
    multipliers: Annotated[str, typer.Option(help="Steered multipliers, comma-separated (0, the baseline, is added).")] = "4",
    layers: LayersOpt = None,
    norm_ratio: NormRatioOpt = None,
    capability: Annotated[Optional[list[str]], typer.Option(help="Multiple-choice capability set (name or name:split); repeatable. Default: general-knowledge.")] = None,
    text: Annotated[Optional[list[str]], typer.Option(help="Text set for perplexity (name or name:split); repeatable. Default: wikitext2:test.")] = None,
    kl_prompts: Annotated[Optional[list[str]], typer.Option(help="Unrelated prompts for KL: a prompts set, or the questions of an MC / pairs set; repeatable. Default: general-knowledge.")] = None,
    limit: Annotated[int, typer.Option("--n", help="Items, texts or prompts per set: a seeded sample.")] = 100,
    max_tokens: Annotated[int, typer.Option(help="Tokens per perplexity text.")] = 128,
    batch_size: BatchOpt = 8,
) -> None:
    """Capability accuracy, perplexity and KL to the unsteered model: steered against unsteered."""
    from steerlab.evaluation import Sweep
    from steerlab.runs import RunDir
    from steerlab.side_effects import as_prompts, passages, side_effect_records, side_effects_table

    capability, text = capability or ["general-knowledge"], text or ["wikitext2:test"]
    kl_prompts = kl_prompts or ["general-knowledge"]
    steering = _vector(vector)
    capability_sets = {spec: _scored_items(spec, None, limit) for spec in capability}
    texts = {spec: passages(_texts(spec), limit) for spec in text}
    prompts = {spec: as_prompts(_dataset(spec, None, limit)) for spec in kl_prompts}
    handle = _load(model)
    run = RunDir.open(out, "side-effects", {"vector": str(vector), "model": model, "multipliers": multipliers,
                                            "layers": layers, "norm_ratio": norm_ratio, "capability": capability,
                                            "text": text, "kl_prompts": kl_prompts, "n": limit})
    run.keep_vector(steering)
    sweep = Sweep(steering, parse_floats(multipliers), parse_ints(layers) if layers else None, norm_ratio)
    with run.writer() as writer:
        records = side_effect_records(handle, sweep, capability=capability_sets, texts=texts, prompts=prompts,
                                      max_tokens=max_tokens, writer=writer, batch_size=batch_size)
    print_side_effects(side_effects_table(records))
    console.print(f"records in {run.records_path}")


def _texts(spec: str) -> list[str]:
    """Lines of a text dataset (e.g. wikitext2:test)."""
    lines = _dataset(spec, None)
    if not isinstance(lines[0], str):
        _fail(f"{spec} holds {type(lines[0]).__name__} records, not text")
    return lines


def print_side_effects(rows: list) -> None:
    """The side-effects table: unsteered, steered, change and its 90% interval."""
    table = Table(title="side effects (steered vs unsteered; 90% intervals)")
    for column in ("metric", "dataset", "multiplier", "n", "unsteered", "steered", "change", "interval"):
        table.add_column(column, justify="left" if column in ("metric", "dataset") else "right")
    for row in rows:
        table.add_row(row.metric, row.dataset, f"{row.multiplier:g}", str(row.n), f"{row.unsteered:.4g}",
                      f"{row.steered:.4g}", f"{row.change:+.4g}", f"[{row.lower:+.4g}, {row.upper:+.4g}]")
    console.print(table)


@app.command()
def analyze(run_dir: Annotated[Path, typer.Argument(help="A run directory (from sweep, side-effects, ...).")]) -> None:
    """Recompute every table and plot of a run from its records alone; write analysis.md."""
    from rich.markdown import Markdown

    from steerlab.analysis import write_analysis
    from steerlab.runs import RunDir

    run = RunDir(run_dir)
    records = run.records()
    if not records:
        _fail(f"no records in {run.records_path}")
    path = write_analysis(run.path, records)
    if any(r.get("task") == "experiment" for r in records):
        from steerlab.report import experiment_report

        path, page = experiment_report(run.path, records)
        console.print(f"report: {page}")
    console.print(Markdown(path.read_text(encoding="utf-8")))
    console.print(f"analysis: {path}")


@app.command("run")
def run_config(
    config: Annotated[Path, typer.Argument(help="An experiment config (YAML); see examples/.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run directory (default: runs/<name>); a rerun on it resumes.")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Validate the config and its data, print what would run, and stop.")] = False,
) -> None:
    """Run an experiment: every arm on validation and test into a run directory (stage one),
    then the report from its records (stage two, as `steerlab analyze`)."""
    from steerlab.experiment import ConfigError, load_config

    try:
        experiment = load_config(config)
    except ConfigError as err:
        _fail(str(err))
    from steerlab.runner import data_summary, run_experiment

    sizes = data_summary(experiment)
    console.print(f"{experiment.name}: model {experiment.model}; " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    if check:
        console.print("config is valid")
        return
    run_dir = out or Path("runs") / experiment.name
    try:
        run = run_experiment(experiment, run_dir, log=console.print)
    except KeyboardInterrupt:
        _fail(f"interrupted: the records so far are in {run_dir}; run the same command to resume")
    except (ValueError, FileNotFoundError) as err:
        _fail(f"{config}: {err}")
    analyze(run.path)


# ---- data: list, inspect -------------------------------------------------------------------

data_app = typer.Typer(help="List and inspect datasets: bundled and public benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="table (readable) or json (for scripts).")]
SHOWN = 10
"""Findings of each sort printed in table format (json has them all)."""


@data_app.command("list")
def data_list(output: FormatOpt = OutputFormat.table) -> None:
    """Every known dataset: kind, size and splits, source, licence, and whether it is here."""
    from steerlab.datasets import list_datasets

    rows = [
        {"name": i.name, "kind": i.kind, "size": i.size, "splits": dict(i.splits or {}),
         "source": i.source, "licence": i.licence, "available": i.available(), "description": i.description}
        for i in list_datasets()
    ]
    if output is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="datasets (pairs: free-text pairs · ab: A/B or Yes/No · mc: multiple choice)")
    for column in ("name", "kind", "size", "source", "licence", "here"):
        table.add_column(column, no_wrap=column in ("name", "kind", "here"))
    for info, row in zip(list_datasets(), rows):
        table.add_row(info.name, info.kind, info.size_text(), info.source, info.licence,
                      "yes" if row["available"] else "[red]no[/red]")
    console.print(table)


@data_app.command("inspect")
def data_inspect(
    name: Annotated[str, typer.Argument(help="Dataset name (see `steerlab data list`) or a .jsonl/.csv/.json file.")],
    split: Annotated[Optional[str], typer.Option(help="Only this split (e.g. train, validation, test); default: all rows.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    label_check: Annotated[bool, typer.Option("--label-check/--no-label-check", help="Score a sample with --model and compare its preferred answers with the labels.")] = True,
    label_sample: Annotated[int, typer.Option(help="Items the label check scores (a seeded sample).")] = 200,
    examples: Annotated[int, typer.Option(help="Items shown as a readable sample.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the sample and of the label-check subset.")] = 0,
    source: Annotated[Optional[str], typer.Option(help="Read from this folder (shared-data layout), file or Hugging Face id.")] = None,
    batch_size: BatchOpt = 8,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Show what is in a dataset: a sample, counts, answer balance, duplicates, bad rows (with
    file and line) and a label check that flags agreement far below chance (flipped labels)."""
    from steerlab.datasets import dataset_info
    from steerlab.inspection import inspect_dataset

    try:
        kind = dataset_info(name).kind
        handle = _load(model) if label_check and kind in ("mc", "ab", "pairs") else None
        report = inspect_dataset(
            name, split, source=source, model=handle, examples=examples,
            label_sample=label_sample, seed=seed, batch_size=batch_size,
        )
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if output is OutputFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    print_report(report)


def print_report(report) -> None:
    """The inspection report, readably: header, sample, balance, label check, problems."""
    from rich.markup import escape

    def say(text: str = "") -> None:  # data text may hold [brackets] or :emoji_names:
        console.print(text, highlight=False, emoji=False)

    splits = ", ".join(f"{k} {v}" for k, v in report.splits.items())
    say(f"[bold]{escape(report.name)}[/bold] ({report.kind}) {escape(report.description)}")
    line = f"rows {report.rows} · items {report.items} · splits: {splits}"
    if report.choice_counts:
        line += " · choices per item: " + ", ".join(f"{k}×{v}" for k, v in report.choice_counts.items())
    say(line)
    for example in report.examples:
        where = f"{example.id}  {example.where}  [{example.split or 'no split'}]"
        say(f"\n[dim]{escape(where)}[/dim]")
        say(escape(example.question))
        for index, choice in enumerate(example.choices):
            mark = " [green]✓ marked[/green]" if index == example.marked else ""
            label = ("chosen", "rejected")[index] if report.kind in ("ab", "pairs") else f"({chr(65 + index)})"
            say(f"  {label} {escape(choice)}{mark}")
    if report.balance is not None:
        balance = report.balance
        counts = "  ".join(f"{k} {v} (exp {balance.expected[k]:.0f})" for k, v in balance.counts.items())
        say(f"\nmarked answers: {escape(counts)}  chi-square p = {balance.p_value:.2g}")
    if report.label_check is not None:
        say(f"\nlabel check on {escape(report.label_check.model)}: {escape(report.label_check.message)}")
    for title, findings in (("bad rows", report.bad_rows), ("same answers", report.same_answers),
                            ("repeated choices", report.repeated_choices)):
        if findings:
            say(f"\n[bold]{title}[/bold] ({len(findings)}, first {min(len(findings), SHOWN)})")
            for finding in findings[:SHOWN]:
                text = finding.message if finding.message.startswith(finding.where) else f"{finding.where}: {finding.message}"
                say(f"  {escape(text)}")
    if report.duplicates:
        say(f"\n[bold]duplicated items[/bold] ({len(report.duplicates)}, first {min(len(report.duplicates), SHOWN)})")
        for group in report.duplicates[:SHOWN]:
            flag = " [red]different answers marked[/red]" if group.conflicting else ""
            say(f"  {escape(repr(group.question))}{flag}")
            for where, split in zip(group.where, group.splits):
                say(f"    {escape(f'{where} [{split}]')}")
    say()
    for warning in report.warnings:
        say(f"[yellow]warning:[/yellow] {escape(warning)}")
    if not report.warnings:
        say("[green]no problems found[/green]")

# ---- open-ended generation, judges, blind rating, refusal -------------------------------------

blind_app = typer.Typer(help="Blinded human rating of steered vs unsteered answers.", no_args_is_help=True)
app.add_typer(blind_app, name="blind")
RecordsArg = Annotated[Path, typer.Argument(help="Generation records (.jsonl) from `steerlab generate-eval`.")]
BaseOpt = Annotated[str, typer.Option(help="The arm compared against.")]
ArmsOpt = Annotated[Optional[list[str]], typer.Option("--arm", help="Arm to compare with --base (repeatable; default: every other arm).")]
DatasetsOpt = Annotated[Optional[list[str]], typer.Option("--dataset", help="Only records of this question set (repeatable; default: all in the file).")]


def _read(path: Path, datasets: list[str] | None = None) -> list[dict]:
    """The records of a file, only those of ``datasets`` when given."""
    from steerlab.records import read_records

    if not path.is_file():
        _fail(f"records file not found: {path}")
    return [r for r in read_records(path) if not datasets or r.get("dataset") in datasets]


def _other_arms(records: list[dict], base: str) -> list[str]:
    """The arms of generation records other than ``base``, in order of appearance."""
    from steerlab.openended import TASK

    return list(dict.fromkeys(r["arm"] for r in records if r.get("task") == TASK and r["arm"] != base))


@app.command("generate-eval")
def generate_eval(
    data: Annotated[list[str], typer.Option("--data", "-d", help="Question set (truthfulqa-open, advbench, harmless, another prompts dataset) or .jsonl/.csv file with a 'question' field; repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Generation records (.jsonl), appended to as produced.")],
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[Path], typer.Option("--vector", "-v", help="Steering vector file; without it only the unsteered arm runs.")] = None,
    multipliers: Annotated[str, typer.Option(help="Steered arms' multipliers, comma-separated (e.g. -4,4); the unsteered arm always runs.")] = "4",
    layers: LayersOpt = None,
    norm_ratio: NormRatioOpt = None,
    positions: Annotated[str, typer.Option(help="Steer all, prompt or generated positions.")] = "all",
    ablate: AblateOpt = False,
    limit: Annotated[Optional[int], typer.Option("--n", help="Questions per set: a seeded sample (default: all).")] = None,
    sample_seed: Annotated[int, typer.Option(help="Seed of the --n sample.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.", min=1)] = 64,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample (seeded) or decode greedily.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed; batch b uses seed + b, the same for every arm.")] = 0,
    batch_size: BatchOpt = 8,
) -> None:
    """Answer questions unsteered and steered (one arm per multiplier), one record each.

    The records feed `steerlab judge`, `steerlab blind export` and `steerlab refusal`.
    """
    from steerlab.data import DataError, split
    from steerlab.datasets import DatasetUnavailable
    from steerlab.openended import generate_answers, load_questions, steering_arms
    from steerlab.records import RecordWriter
    from steerlab.steering import POSITIONS
    from steerlab.vectors import SteeringVector

    if positions not in POSITIONS:
        _fail(f"--positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    try:
        sets = {spec: load_questions(spec) for spec in data}
        steering = SteeringVector.load(vector) if vector else None
    except (DataError, DatasetUnavailable, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if limit is not None:
        sets = {spec: split(qs, [min(limit, len(qs))], sample_seed)[0] for spec, qs in sets.items()}
    handle = _load(model)
    try:
        arms = steering_arms(steering, parse_floats(multipliers), parse_layers(layers, handle.n_layers),
                             norm_ratio, positions, "ablate" if ablate else "add")  # type: ignore[arg-type]
    except ValueError as err:
        _fail(str(err))
    with RecordWriter(out) as writer:
        for spec, questions in sets.items():
            generate_answers(
                handle, questions, arms, dataset=spec, max_new_tokens=max_new_tokens,
                batch_size=batch_size, seed=seed, do_sample=sample, temperature=temperature, writer=writer,
            )
            console.print(f"{spec}: {len(questions)} questions × {len(arms)} arms ({', '.join(a.label for a in arms)})")
    console.print(f"records appended to {out}")


def _short(dataset: str) -> str:
    """A dataset for a table: its name, or a file's name without the folders."""
    return Path(dataset).name if "/" in dataset else dataset


def print_head_to_head(rows: list) -> None:
    """One row per judge × dataset × arm: wins/ties/losses, win rate with its interval, z test."""
    table = Table(title="head to head (win rate counts a tie as half)")
    for column in ("judge", "dataset", "arm vs base", "n", "W/T/L", "win rate [credible interval]", "z", "p"):
        table.add_column(column, justify="left" if column in ("judge", "dataset", "arm vs base") else "right")
    for row in rows:
        low, high = row.interval
        test = row.test
        table.add_row(
            row.judge, _short(row.dataset), f"{row.arm} vs {row.base}", str(row.n),
            f"{row.wins}/{row.ties}/{row.losses}",
            f"{row.win_rate:.3f} [{low:.3f}, {high:.3f}] ({row.advantage.level:.0%})",
            f"{test.z:.2f}" if test else "-", f"{test.p_value:.3f}" if test else "-",
        )
    console.print(table)
    console.print("p: one-sided z test of win rate > 1/2; interval: Bayesian (steerlab.stats.paired_advantage)")


JUDGE_MODES = ("head-to-head", "rating")


@app.command()
def judge(
    records: RecordsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Head-to-head or rating records (.jsonl), appended to.")],
    judge_name: Annotated[str, typer.Option("--judge", help="Judge: reference-similarity (embedding similarity to the dataset's reference answers; no API) or llm (a chat model over any OpenAI-compatible endpoint: $STEERLAB_JUDGE_BASE_URL, $STEERLAB_JUDGE_MODEL, key in $STEERLAB_JUDGE_API_KEY or $OPENAI_API_KEY).")] = "reference-similarity",
    mode: Annotated[str, typer.Option(help="head-to-head (each arm against --base, shown order randomised per item) or rating (every answer rated 1-4 for the criterion, as in the BiPO paper; llm judge only).")] = "head-to-head",
    criterion: Annotated[Optional[str], typer.Option(help="llm judge: what makes an answer better, or what the rating measures (default: truthfulness).")] = None,
    concurrency: Annotated[int, typer.Option(help="llm judge: requests in flight at once.", min=1)] = 1,
    arm: ArmsOpt = None,
    base: BaseOpt = "unsteered",
    dataset: DatasetsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the per-item answer order the judge sees.")] = 0,
) -> None:
    """Judge each steered answer against the unsteered one, item by item, and print win rates;
    or rate every answer 1-4 (--mode rating) and print mean ratings per arm."""
    from steerlab.judges import JUDGES, JudgeError, judge_head_to_head, rate_answers
    from steerlab.records import RecordWriter

    if judge_name not in JUDGES:
        _fail(f"unknown judge {judge_name!r}; available: {', '.join(JUDGES)}")
    if mode not in JUDGE_MODES:
        _fail(f"--mode must be one of {', '.join(JUDGE_MODES)}, got {mode!r}")
    llm = judge_name == "llm"
    if not llm and (criterion is not None or concurrency != 1):
        _fail("--criterion and --concurrency apply to the llm judge only")
    if mode == "rating" and not llm:
        _fail("--mode rating needs --judge llm (a rater that reads a criterion)")
    rows = _read(records, dataset)
    arms = arm or _other_arms(rows, base)
    if not arms:
        _fail(f"no generation records of an arm other than '{base}' in {records}")
    options = {"criterion": criterion, "concurrency": concurrency} if llm else {}
    try:
        with console.status(f"loading the {judge_name} judge"):
            chosen = JUDGES[judge_name](**options)
        with RecordWriter(out) as writer:
            if mode == "rating":
                written = rate_answers(rows, chosen, [base, *arms], writer=writer)
            else:
                written = [
                    v for a in arms
                    for v in judge_head_to_head(rows, chosen, a, base, seed=seed, writer=writer)
                ]
    except (ValueError, ModuleNotFoundError, JudgeError) as err:
        _fail(str(err))
    if mode == "rating":
        print_ratings(written, base)
    else:
        _print_verdicts(written)
    console.print(f"{len(written)} records appended to {out}")


def _print_verdicts(verdicts: list[dict]) -> None:
    """The head-to-head table, and how many judge replies could not be read (if the judge says)."""
    from steerlab.judges import summarize_head_to_head

    print_head_to_head(summarize_head_to_head(verdicts))
    if verdicts and "unreadable" in verdicts[0]["details"]:
        unreadable = sum(v["details"]["unreadable"] for v in verdicts)
        console.print(f"{unreadable} unreadable judge replies (counted as ties; raw replies in the "
                      "records)")


def print_ratings(records: list[dict], base: str) -> None:
    """One row per judge × dataset × arm: mean 1-4 rating and the paired difference from base."""
    from steerlab.judges import summarize_ratings

    rows = summarize_ratings(records, base)
    level = next((r.mean.level for r in rows if r.mean), 0.9)
    table = Table(title=f"ratings 1-4 ({level:.0%} credible intervals; difference paired by item)")
    columns = ("judge", "dataset", "arm", "n", "unreadable", "mean rating", f"arm − {base}", "P(> 0)")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in rows:
        mean, diff = row.mean, row.difference
        table.add_row(
            row.judge, _short(row.dataset), row.arm, str(row.n), str(row.unreadable),
            mean.cell() if mean else "-", diff.cell("+.3f") if diff else "-",
            f"{diff.prob_positive:.3f}" if diff else "-",
        )
    console.print(table)


@blind_app.command("export")
def blind_export(
    records: RecordsArg,
    arm: Annotated[str, typer.Option(help="The steered arm to rate against --base (e.g. steered+4).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Rating sheet to fill in: .csv or .jsonl.")],
    key: Annotated[Path, typer.Option(help="Key file (.json) saying which arm wrote which answer; keep it from the rater.")],
    base: BaseOpt = "unsteered",
    dataset: DatasetsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the row order and the per-item answer order.")] = 0,
) -> None:
    """Write a blinded rating sheet (answers shuffled, arms hidden) and its key."""
    from steerlab.blind import export_blind

    try:
        count = export_blind(_read(records, dataset), arm, out, key, base, seed)
    except ValueError as err:
        _fail(str(err))
    console.print(f"{count} pairs in {out}: fill 'preferred' with 1, 2 or tie; key in {key}")


@blind_app.command("import")
def blind_import(
    sheet: Annotated[Path, typer.Argument(help="The filled rating sheet (.csv or .jsonl).")],
    key: Annotated[Path, typer.Option(help="The key file written by `steerlab blind export`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Head-to-head records (.jsonl), appended to.")],
    rater: Annotated[str, typer.Option(help="Who rated; records name the judge human:<rater>.")] = "human",
) -> None:
    """Check and unblind filled ratings into head-to-head records; print win rates."""
    from steerlab.blind import import_ratings
    from steerlab.judges import summarize_head_to_head
    from steerlab.records import RecordWriter

    if not key.is_file():
        _fail(f"key file not found: {key}")
    try:
        with RecordWriter(out) as writer:
            verdicts = import_ratings(sheet, key, rater, writer)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    print_head_to_head(summarize_head_to_head(verdicts))
    console.print(f"{len(verdicts)} verdicts appended to {out}")


@app.command()
def refusal(
    records: RecordsArg,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also append per-answer refusal records (.jsonl) here.")] = None,
    dataset: DatasetsOpt = None,
    level: Annotated[float, typer.Option(help="Confidence level of the Wilson intervals.")] = 0.95,
) -> None:
    """Refusal rate per question set and arm, and attack success on harmful sets.

    Refusals are found by the documented phrase list (steerlab.refusal); attack success is
    1 − refusal rate on harmful prompts (advbench).
    """
    from contextlib import nullcontext

    from steerlab.records import RecordWriter
    from steerlab.refusal import detect_refusals, summarize_refusals

    with RecordWriter(out) if out else nullcontext() as writer:
        flagged = detect_refusals(_read(records, dataset), writer=writer)
    if not flagged:
        _fail(f"no generation records in {records}")
    table = Table(title=f"refusals ({flagged[0]['detector']} detector; {level:.0%} Wilson intervals)")
    for column in ("dataset", "arm", "multiplier", "n", "refusal rate", "attack success"):
        table.add_column(column, justify="left" if column in ("dataset", "arm") else "right")
    for row in summarize_refusals(flagged, level):
        rate = row.refusals
        attack = row.attack_success_interval
        table.add_row(
            _short(row.dataset), row.arm, f"{row.multiplier:g}", str(rate.n),
            f"{rate.estimate:.3f} [{rate.lower:.3f}, {rate.upper:.3f}]",
            f"{row.attack_success:.3f} [{attack[0]:.3f}, {attack[1]:.3f}]" if attack else "-",
        )
    console.print(table)


# ---- serving -----------------------------------------------------------------------------------


def _named_vectors(specs: list[str]) -> dict:
    """'name=path' (or a bare path, named by its file stem) → loaded vectors by name."""
    vectors = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).stem, "", spec)
        if not name:
            _fail(f"--vector {spec!r}: expected name=path.safetensors")
        if name in vectors:
            _fail(f"--vector {spec!r}: the name {name!r} is already taken")
        vectors[name] = _vector(Path(path))
    return vectors


@app.command()
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[list[str]], typer.Option("--vector", "-v", help="A vector clients may apply, as name=path.safetensors (a bare path is named by its file stem); repeatable.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; the default accepts connections from this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    max_multiplier: Annotated[float, typer.Option(help="Requests may use multipliers in [-this, this].", min=0)] = 8.0,
    max_tokens: Annotated[int, typer.Option(help="Most tokens one request may generate (and the default).", min=1)] = 512,
    max_context: Annotated[Optional[int], typer.Option(help="Prompt + answer tokens allowed (default: the model's maximum positions).", min=1)] = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests with identical settings generated together, at most.", min=1)] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="Milliseconds a request waits for others with its settings to join its batch.", min=0)] = 20.0,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key clients must send as a bearer token; unset or empty: no key. (Never on the command line, where other users can read it.)")] = "STEERLAB_API_KEY",
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted; larger ones get 413.", min=1024)] = 2 << 20,
    body_timeout_s: Annotated[float, typer.Option(help="Seconds a client may take to send its request body; slower ones get 408.", min=0.001)] = 30.0,
    served_model_name: Annotated[Optional[str], typer.Option(help="Model id clients send and /v1/models lists (default: a built-in or hub name as given, a local model by its directory or file name, never its path).")] = None,
) -> None:
    """Serve the model over an OpenAI-compatible API (chat completions, streaming) with steering.

    Each request picks vectors and multipliers with an extra body field, e.g. with the openai
    client: extra_body={"steering": [{"vector": "refusal", "multiplier": 4}]}; none by default.
    """
    import os

    from steerlab.serve import ServeSettings, served_name
    from steerlab.serve import serve as run_server

    vectors = _named_vectors(vector or [])
    key = os.environ.get(api_key_env) or None
    settings = ServeSettings(
        model_name=served_model_name, max_multiplier=max_multiplier, max_tokens=max_tokens,
        max_context=max_context, api_key=key, max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s,
    )
    if key is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] listening on {host} without an API key (set ${api_key_env})")
    handle = _load(model)
    console.print(f"serving {settings.model_name or served_name(model)} on http://{host}:{port}/v1 with vectors: "
                  f"{', '.join(vectors) or 'none'}; API key {'required' if key else 'not required'}")
    try:
        run_server(handle, vectors, settings, host=host, port=port)
    except ValueError as err:
        _fail(str(err))


@app.command("condition")
def condition_fit(
    positive: Annotated[str, typer.Option(
        help="Prompts the condition should hold for: a dataset (advbench, harmless, name:split) "
        "or file.")],
    negative: Annotated[str, typer.Option(help="Prompts it should not hold for (same forms).")],
    layer: Annotated[int, typer.Option(
        "--layer", "-l", help="The layer whose prompt states it reads.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Condition file to write (.safetensors).")],
    model: ModelOpt = DEFAULT_MODEL,
    holdout: Annotated[float, typer.Option(
        help="Fraction of each set held out for the F1-maximising threshold search.")] = 0.3,
    limit: LimitOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the samples and the held-out split.")] = 0,
    batch_size: BatchOpt = 8,
) -> None:
    """Fit a condition for conditional steering (CAST): a direction between the two prompt sets
    at a layer, and the cosine threshold with the best F1 on held-out prompts."""
    from steerlab.conditions import fit_condition

    positives = _prompt_set(positive, limit, seed)
    negatives = _prompt_set(negative, limit, seed)
    handle = _load(model)
    try:
        with console.status("fitting the condition"):
            fitted = fit_condition(handle, positives, negatives, layer, holdout, seed, batch_size,
                                   progress=False)
    except ValueError as err:
        _fail(str(err))
    fitted.save(out)
    search = fitted.meta.extra["threshold_search"]
    console.print(f"condition {fitted.id} → {out}: layer {layer}, cosine {fitted.comparison} "
                  f"than {fitted.threshold:.4f}; on {search['n_positive']} + "
                  f"{search['n_negative']} held-out prompts F1 {search['f1']:.3f}, precision "
                  f"{search['precision']:.3f}, recall {search['recall']:.3f}", highlight=False)


@app.command()
def chat(
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[list[str]], typer.Option(
        "--vector", "-v", help="A vector to steer with, as name=path.safetensors (a bare path is "
        "named by its file stem); repeatable, switch with /vector NAME.")] = None,
    multiplier: Annotated[float, typer.Option(
        help="Steering multiplier (change it with /multiplier X).")] = 1.0,
    layers: LayersOpt = None,
    norm_ratio: NormRatioOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per reply.", min=1)] = 128,
    side: Annotated[bool, typer.Option(
        "--side/--no-side",
        help="Show the unsteered reply beside the steered one (toggle with /side).")] = True,
) -> None:
    """Chat with the model in the terminal, steered; change the vector, multiplier and layers
    between turns (/help lists the commands) and compare with the unsteered reply side by side."""
    from steerlab.chat import ChatError, ChatSession

    vectors = _named_vectors(vector or [])
    handle = _load(model)
    try:
        session = ChatSession(handle, vectors, multiplier=multiplier,
                              layers=parse_layers(layers, handle.n_layers), norm_ratio=norm_ratio,
                              side_by_side=side, max_new_tokens=max_new_tokens)
    except ChatError as err:
        _fail(str(err))
    console.print(f"chatting with {handle.name}: {session.describe()}. /help lists the commands, "
                  "/quit leaves.", highlight=False)
    while not session.done:
        try:
            line = console.input("[bold]you>[/bold] ")
        except (EOFError, KeyboardInterrupt):
            break
        try:
            if line.strip().startswith("/"):
                console.print(session.command(line), highlight=False)
                continue
            with console.status("generating"):
                replies = session.send(line)
        except ChatError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False)
            continue
        table = Table(show_lines=False, expand=True)
        for reply in replies:
            table.add_column(reply.label, ratio=1, overflow="fold")
        table.add_row(*(reply.text for reply in replies))
        console.print(table)


# ---- baselines: LoRA, k-shot ----------------------------------------------------------------

lora_app = typer.Typer(help="The LoRA baseline (peft), trained on the same pairs as a vector.", no_args_is_help=True)
app.add_typer(lora_app, name="lora")
baseline_app = typer.Typer(help="Prompting baselines: k-shot examples and system prompts.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")


@lora_app.command("train")
def lora_train(
    data: Annotated[str, typer.Option("--data", "-d", help="Pairs: dataset name (`steerlab data list`; name:split works) or .jsonl/.csv file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the kept adapter (peft save_pretrained) and lora_training.json.")],
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(help="Use only rows whose 'split' field is this (bundled sets: train/test).")] = None,
    val_data: Annotated[Optional[str], typer.Option(help="Validation pairs (default: --val-size pairs held out of --data).")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Split of --val-data to use.")] = None,
    val_size: Annotated[Optional[int], typer.Option(help="Without --val-data: pairs held out of --data by --seed (default: a fifth).")] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank, on every linear module of every decoder layer.")] = 1,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (default: the rank, so the scale is 1).")] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 16,
    eval_every: Annotated[int, typer.Option(help="Validate every this many steps (and before the first, after the last).")] = 50,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: --epochs passes over the pairs).")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the pairs when --steps is not given.", min=1)] = 5,
    objective: Annotated[str, typer.Option(help="sft (next-token loss on the chosen answer) or dpo (on the pairs).")] = "sft",
    beta: Annotated[float, typer.Option(help="DPO: inverse temperature of the preference loss.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of LoRA's initialisation, the batches and the held-out split.")] = 0,
) -> None:
    """Train a LoRA adapter on preference pairs and keep the lowest-validation-loss one in --out.

    Each new best adapter is saved at once, so Ctrl-C keeps the best so far.
    """
    from steerlab.data import split as seeded_split
    from steerlab.lora import TrainingDiverged, train_lora

    pairs = _pairs(data, split)
    if val_data:
        val = _pairs(val_data, val_split)
    else:
        held = val_size if val_size is not None else max(1, len(pairs) // 5)
        if not 0 < held < len(pairs):
            _fail(f"--val-size {held} must leave training pairs out of the {len(pairs)} in {data}")
        val, pairs = seeded_split(pairs, [held, len(pairs) - held], seed)
        console.print(f"validation: {held} pairs held out of {data} (seed {seed})")
    handle = _load(model)
    try:
        result = train_lora(
            handle, pairs, val, rank=rank, alpha=alpha, lr=lr, batch_size=batch_size,
            eval_every=eval_every, max_steps=steps, epochs=epochs, objective=objective, beta=beta,
            seed=seed, out_dir=out,
        )
    except (TrainingDiverged, ValueError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        console.print(f"interrupted: the best adapter so far (if any) is in {out}")
        raise typer.Exit(code=130) from None
    console.print(f"best step {result.best_step}: validation loss {result.best_val_loss:.4f}")
    console.print(
        f"trainable parameters {result.trainable_params:,} (rank {rank}) vs a one-layer steering "
        f"vector's {result.d_model} (d_model): {result.ratio_to_vector:,.1f}×"
    )
    console.print(f"adapter in {out}")


@baseline_app.command("shots")
def baseline_shots(
    data: Annotated[str, typer.Option("--data", "-d", help="Pairs the shots come from (dataset name, name:split, or file).")],
    model: ModelOpt = DEFAULT_MODEL,
    ks: Annotated[str, typer.Option(help="Comma-separated shot counts to check.")] = "1,4,16,64,256",
    split: Annotated[Optional[str], typer.Option(help="Split of --data the shots come from.")] = None,
    eval_data: Annotated[Optional[str], typer.Option(help="Items evaluated behind the shots (default: --data).")] = None,
    eval_split: Annotated[Optional[str], typer.Option(help="Split of --eval-data.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the nested shot order.")] = 0,
    reserve: Annotated[int, typer.Option(help="Tokens kept free beyond the longest item (e.g. new tokens to generate).")] = 0,
) -> None:
    """Which k-shot prompts fit the model's context, and where the context cuts the list."""
    from steerlab.prompting import max_shots

    pairs = _pairs(data, split)
    evaluated = _dataset(eval_data, eval_split) if eval_data else pairs
    handle = _load(model)
    try:
        fit = max_shots(handle, pairs, parse_ints(ks), evaluated, seed=seed, reserve_tokens=reserve)
    except ValueError as err:
        _fail(str(err))
    table = Table(title=f"k-shot prompts in {handle.name}'s context of {fit.context} tokens")
    for column in ("k", "tokens", "fits"):
        table.add_column(column, justify="right")
    for k, tokens in fit.tokens.items():
        table.add_row(str(k), str(tokens), "yes" if k in fit.fits else "[red]no[/red]")
    console.print(table)
    console.print(fit.describe())


if __name__ == "__main__":
    app()
