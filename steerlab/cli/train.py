"""Commands that fit something: steering vectors, conditions, LoRA adapters, k-shot prompts."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from steerlab.cli.app import app, baseline_app, console, lora_app
from steerlab.cli.inputs import (
    fail,
    load_handle,
    load_prompt_texts,
    load_records,
    load_training_pairs,
)
from steerlab.cli.options import (
    BatchOpt,
    LimitOpt,
    ModelOpt,
    NormRatioOpt,
    finite_number,
    parse_ints,
    placement_options,
    positive_number,
)
from steerlab.cli.steering import SteeringChoice, steering_options
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import Placement


def _method_config(method: str, given: dict[str, Any], params: list[str]):
    """The method and its config from the options given (unset ones keep the config's
    defaults) and ``--param key=value``; what the method does not take is an error."""
    import yaml
    from pydantic import ValidationError

    from steerlab.methods import get_method

    try:
        spec = get_method(method)
    except ValueError as err:
        fail(str(err))
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not key:
            fail(f"--param {param!r}: expected key=value")
        given[key.replace("-", "_")] = yaml.safe_load(value)
    fields = spec.config.model_fields
    if "batch_size" not in fields:
        given.pop("batch_size", None)  # then only the forward batch of reading activations
    try:
        return spec, spec.config.model_validate(given)
    except ValidationError as err:
        takes = ", ".join(fields) or "none"
        fail("; ".join(
            f"{'.'.join(map(str, e['loc']))}: "
            + (f"not a hyper-parameter of {method} (it takes: {takes})"
               if e["type"] == "extra_forbidden" else e["msg"])
            for e in err.errors()))


@app.command()
@placement_options
def train(
    data: Annotated[str, typer.Option(
        "--data", "-d",
        help="Pairs: dataset name (`steerlab data list`; name:split works) or .jsonl/.csv file.")],
    layer: Annotated[str, typer.Option(
        "--layer", "-l", help="Layer index (methods that train "
        "several layers at once, like CAA, also take 10,12,14).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Vector file (.safetensors); a directory with --subset-sizes.")],
    method: Annotated[str, typer.Option(
        help="A registered method: caa, bipo, dpo, … (`steerlab methods` lists them with their "
        "hyper-parameters and defaults).")] = "caa",
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(
        help="Use only rows whose 'split' field is this (bundled sets: train/test).")] = None,
    batch_size: BatchOpt = 8,
    beta: Annotated[Optional[float], typer.Option(
        help="BiPO/DPO: inverse temperature of the preference loss.",
        callback=positive_number)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="BiPO/DPO: AdamW learning rate.", callback=positive_number)] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help="BiPO/DPO: passes over the pairs.", min=1)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        help="BiPO/DPO: AdamW weight decay.", callback=finite_number)] = None,
    seed: Annotated[int, typer.Option(
        help="Seed for batches and directions of trained methods.")] = 0,
    val_data: Annotated[Optional[str], typer.Option(
        help="Validation pairs (file or bundled name): BiPO/DPO keep the best epoch.")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Split of --val-data to use.")] = None,
    patience: Annotated[Optional[int], typer.Option(
        help="BiPO/DPO: stop after this many epochs without validation gain.", min=1)] = None,
    norm_ratio: Annotated[Optional[float], typer.Option(
        help="BiPO/DPO: rescale the result to this fraction of the residual norm.",
        callback=positive_number)] = None,
    engine: Annotated[Optional[str], typer.Option(
        help="BiPO/DPO: fast (cached lower layers) or naive.")] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-p", help="Any hyper-parameter of the method "
        "as key=value (e.g. -p epochs=3); repeatable.")] = None,
    subset_sizes: Annotated[Optional[str], typer.Option(
        help="Train one vector per nested subset size, e.g. 1,2,4,8.")] = None,
    seeds: Annotated[int, typer.Option(help="With --subset-sizes: seeds 0..N-1 per size.",
                                       min=1)] = 1,
    placement: Optional[Placement] = None,
) -> None:
    """Train a steering vector from preference pairs and save it.

    Hyper-parameters not given keep the method's defaults (`steerlab methods`). Methods that
    train by epochs rewrite --out after every epoch, so Ctrl-C keeps the last completed one.
    """
    from steerlab.methods import TrainingHistory, TrainingRun
    from steerlab.methods.subsets import train_on_subsets

    options = {"batch_size": batch_size, "beta": beta, "lr": lr, "epochs": epochs,
               "weight_decay": weight_decay, "patience": patience, "norm_ratio": norm_ratio,
               "engine": engine}
    spec, config = _method_config(method, {k: v for k, v in options.items() if v is not None},
                                  param or [])
    layers = parse_ints(layer, "--layer")
    if not spec.multi_layer and len(layers) != 1:
        fail(f"{method} trains one layer at a time; got --layer {layer}")
    pairs = load_training_pairs(data, split)
    val_pairs = load_training_pairs(val_data, val_split) if val_data else None
    handle = load_handle(model, placement)
    outside = [index for index in layers if not 0 <= index < handle.n_layers]
    if outside:
        fail(f"--layer {layer}: layer {outside[0]} is out of range (the model has "
              f"{handle.n_layers} layers, 0..{handle.n_layers - 1})")

    def run(subset: list, run_seed: int, checkpoint: Path | None = None):
        history = TrainingHistory()
        vector = spec.train(handle, subset, layers, config, TrainingRun(
            val_pairs=val_pairs, seed=run_seed, checkpoint=checkpoint, history=history,
            batch_size=batch_size))
        for entry in history.epochs:
            console.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in entry.items()))
        return vector

    try:
        if subset_sizes:
            sizes = parse_ints(subset_sizes, "--subset-sizes")
            paths = train_on_subsets(run, pairs, sizes, range(seeds), out, name=method)
            console.print(f"{len(paths)} vectors in {out}")
            return
        vector = run(pairs, seed, checkpoint=out)
    except KeyboardInterrupt:
        console.print(f"interrupted: the last completed epoch's vector (if any) is in {out}")
        raise typer.Exit(code=130) from None
    vector.save(out)
    console.print(f"saved {vector} to {out}")


@app.command()
@placement_options
def scan(
    data: Annotated[str, typer.Option(
        "--data", "-d", help="Pairs: dataset name (name:split works) or file.")],
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(help="Use only this split of --data.")] = None,
    multiplier: Annotated[float, typer.Option(
        help="Multiplier of each layer's CAA vector for the behaviour shift.",
        callback=finite_number)] = 1.0,
    norm_ratio: NormRatioOpt = None,
    holdout: Annotated[float, typer.Option(
        help="Share of pairs held out: every score is measured on them.", min=0.05, max=0.9)] = 0.2,
    limit: LimitOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split and the --n sample.")] = 0,
    batch_size: BatchOpt = 8,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Folder for scan.json and scan.png.")] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Score every layer for steering: held-out probe accuracy, CAA separation, behaviour shift.

    Every layer is read in one pass; the probe and the CAA direction are fit on the pairs not
    held out, and all three scores are measured on the held-out ones.
    """
    import json

    from steerlab.data.files import split as seeded_split
    from steerlab.methods.scan import plot_scan, scan_layers

    pairs = load_training_pairs(data, split)
    if limit is not None and limit < len(pairs):
        pairs = seeded_split(pairs, [limit], seed)[0]
    handle = load_handle(model, placement)
    result = scan_layers(handle, pairs, multiplier=multiplier, norm_ratio=norm_ratio,
                         holdout=holdout, seed=seed, batch_size=batch_size)
    best = set(result.best(3))
    table = Table("layer", "probe accuracy", "separation", f"shift at ×{multiplier:g}")
    for s in result.scores:
        mark = " ◀" if s.layer in best else ""
        table.add_row(f"{s.layer}{mark}", f"{s.probe_accuracy:.3f}", f"{s.separation:+.2f}",
                      f"{s.shift:+.4f}")
    console.print(table)
    console.print(f"{result.fit_pairs} pairs fit, {result.held_out_pairs} held out; unsteered "
                  f"score {result.unsteered_score:.3f}; ◀ the 3 largest shifts; "
                  f"{result.seconds:.0f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scan.json").write_text(json.dumps(result.to_dict(), indent=1))
        plot_scan(result, out / "scan.png")
        console.print(f"wrote {out / 'scan.json'} and {out / 'scan.png'}")


@app.command("methods")
def list_methods() -> None:
    """List the vector-training methods with their hyper-parameters and defaults."""
    from steerlab.methods import methods

    table = Table("method", "layers per run", "hyper-parameters (defaults)", "what it does")
    for spec in methods().values():
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults().items()) or "none"
        table.add_row(spec.name, "several" if spec.multi_layer else "one", defaults,
                      spec.description)
    console.print(table)


@app.command("condition")
@placement_options
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
        help="Fraction of each set held out for the F1-maximising threshold search.",
        min=0.05, max=0.9)] = 0.3,
    limit: LimitOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the samples and the held-out split.")] = 0,
    batch_size: BatchOpt = 8,
    placement: Optional[Placement] = None,
) -> None:
    """Fit a condition for conditional steering (CAST): a direction between the two prompt sets
    at a layer, and the cosine threshold with the best F1 on held-out prompts."""
    from steerlab.steering.conditions import fit_condition

    positives = load_prompt_texts(positive, limit, seed)
    negatives = load_prompt_texts(negative, limit, seed)
    handle = load_handle(model, placement)
    try:
        with console.status("fitting the condition"):
            fitted = fit_condition(handle, positives, negatives, layer, holdout, seed, batch_size,
                                   progress=False)
    except ValueError as err:
        fail(str(err))
    fitted.save(out)
    search = fitted.meta.extra["threshold_search"]
    console.print(f"condition {fitted.id} → {out}: layer {layer}, cosine {fitted.comparison} "
                  f"than {fitted.threshold:.4f}; on {search['n_positive']} + "
                  f"{search['n_negative']} held-out prompts F1 {search['f1']:.3f}, precision "
                  f"{search['precision']:.3f}, recall {search['recall']:.3f}", highlight=False)


@app.command("finetune")
@placement_options
@steering_options("one", vector_flags=("--steer", "--vector", "-v"), vector_help=(
    "Steer the training steps with this vector (preventative steering: toward a trait the data "
    "would teach; with --ablate, concept-ablation fine-tuning). Validation, the kept adapter's "
    "choice, runs unsteered, as the adapted model is used."))
def finetune(
    data: Annotated[str, typer.Option(
        "--data", "-d",
        help="Pairs: dataset name (`steerlab data list`; name:split works) or .jsonl/.csv file.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o",
        help="Folder for the kept adapter (peft save_pretrained) and lora_training.json.")],
    method: Annotated[str, typer.Option(
        help="How the weights train: lora (peft, on every linear module of every decoder "
        "layer).")] = "lora",
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(
        help="Use only rows whose 'split' field is this (bundled sets: train/test).")] = None,
    val_data: Annotated[Optional[str], typer.Option(
        help="Validation pairs (default: --val-size pairs held out of --data).")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Split of --val-data to use.")] = None,
    val_size: Annotated[Optional[int], typer.Option(
        help="Without --val-data: pairs held out of --data by --seed (default: a fifth).")] = None,
    rank: Annotated[int, typer.Option(
        help="LoRA rank, on every linear module of every decoder layer.")] = 1,
    alpha: Annotated[Optional[float], typer.Option(
        help="LoRA alpha (default: the rank, so the scale is 1).")] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 16,
    eval_every: Annotated[int, typer.Option(
        help="Validate every this many steps (and before the first, after the last).")] = 50,
    steps: Annotated[Optional[int], typer.Option(
        help="Training steps (default: --epochs passes over the pairs).")] = None,
    epochs: Annotated[int, typer.Option(
        help="Passes over the pairs when --steps is not given.", min=1)] = 5,
    objective: Annotated[str, typer.Option(
        help="sft (next-token loss on the chosen answer) or dpo (on the pairs).")] = "sft",
    beta: Annotated[float, typer.Option(
        help="DPO: inverse temperature of the preference loss.")] = 0.1,
    keep: Annotated[str, typer.Option(
        help="best: the adapter of the lowest validation loss; last: the last step's (a fixed "
        "budget, as fine-tuning experiments compare).")] = "best",
    seed: Annotated[int, typer.Option(
        help="Seed of LoRA's initialisation, the batches and the held-out split.")] = 0,
    placement: Optional[Placement] = None,
    steering: Optional[SteeringChoice] = None,
) -> None:
    """Fine-tune on preference pairs (LoRA), optionally steered while it trains.

    `steerlab lora train` is the same command. The adapter of the lowest validation loss (or
    the last, --keep last) is kept in --out, each new one saved at once, so Ctrl-C keeps the
    best so far.
    """
    from steerlab.data.files import split as seeded_split
    from steerlab.methods.lora import TrainingDiverged, train_lora

    if method != "lora":
        raise typer.BadParameter(f"{method!r}: the method is lora", param_hint="--method")
    if keep not in ("best", "last"):
        raise typer.BadParameter(f"{keep!r}: best or last", param_hint="--keep")
    pairs = load_training_pairs(data, split)
    if val_data:
        val = load_training_pairs(val_data, val_split)
    else:
        held = val_size if val_size is not None else max(1, len(pairs) // 5)
        if not 0 < held < len(pairs):
            fail(f"--val-size {held} must leave training pairs out of the {len(pairs)} in {data}")
        val, pairs = seeded_split(pairs, [held, len(pairs) - held], seed)
        console.print(f"validation: {held} pairs held out of {data} (seed {seed})")
    handle = load_handle(model, placement)
    setting = steering.setting(handle.n_layers) if steering and steering.steered else None
    try:
        result = train_lora(
            handle, pairs, val, rank=rank, alpha=alpha, lr=lr, batch_size=batch_size,
            eval_every=eval_every, max_steps=steps, epochs=epochs, objective=objective, beta=beta,
            seed=seed, out_dir=out, steering=setting, keep=keep,  # type: ignore[arg-type]
        )
    except (TrainingDiverged, ValueError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        console.print(f"interrupted: the best adapter so far (if any) is in {out}")
        raise typer.Exit(code=130) from None
    if setting is not None:
        console.print(f"trained under {setting.intervention} of {setting.vector} × "
                      f"{setting.multiplier:g}; validated unsteered", highlight=False)
    console.print(f"{keep} step {result.best_step}: validation loss {result.best_val_loss:.4f}")
    console.print(
        f"trainable parameters {result.trainable_params:,} (rank {rank}) vs a one-layer steering "
        f"vector's {result.d_model} (d_model): {result.ratio_to_vector:,.1f}×"
    )
    console.print(f"adapter in {out}")


lora_app.command("train")(finetune)


@baseline_app.command("shots")
@placement_options
def baseline_shots(
    data: Annotated[str, typer.Option(
        "--data", "-d", help="Pairs the shots come from (dataset name, name:split, or file).")],
    model: ModelOpt = DEFAULT_MODEL,
    ks: Annotated[str, typer.Option(
        help="Comma-separated shot counts to check.")] = "1,4,16,64,256",
    split: Annotated[Optional[str], typer.Option(
        help="Split of --data the shots come from.")] = None,
    eval_data: Annotated[Optional[str], typer.Option(
        help="Items evaluated behind the shots (default: --data).")] = None,
    eval_split: Annotated[Optional[str], typer.Option(help="Split of --eval-data.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the nested shot order.")] = 0,
    reserve: Annotated[int, typer.Option(
        help="Tokens kept free beyond the longest item (e.g. new tokens to generate).",
        min=0)] = 0,
    placement: Optional[Placement] = None,
) -> None:
    """Which k-shot prompts fit the model's context, and where the context cuts the list."""
    from steerlab.methods.prompting import max_shots

    pairs = load_training_pairs(data, split)
    evaluated = load_records(eval_data, eval_split) if eval_data else pairs
    handle = load_handle(model, placement)
    try:
        fit = max_shots(handle, pairs, parse_ints(ks, "--ks"), evaluated, seed=seed,
                        reserve_tokens=reserve)
    except ValueError as err:
        fail(str(err))
    table = Table(title=f"k-shot prompts in {handle.name}'s context of {fit.context} tokens")
    for column in ("k", "tokens", "fits"):
        table.add_column(column, justify="right")
    for k, tokens in fit.tokens.items():
        table.add_row(str(k), str(tokens), "yes" if k in fit.fits else "[red]no[/red]")
    console.print(table)
    console.print(fit.describe())
