"""Open-ended answers and their judging: generate-eval, judge, refusal, concept (blind rating by
people: ``blind``)."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from steerlab.cli.app import app, console
from steerlab.cli.inputs import (
    fail,
    load_engine,
    load_handle,
    load_records,
    load_training_pairs,
    load_vector,
    other_arms,
    read_record_file,
)
from steerlab.cli.options import (
    ArmsOpt,
    BaseOpt,
    BatchOpt,
    DatasetsOpt,
    EngineOpt,
    LayersOpt,
    ModelOpt,
    NormRatioOpt,
    RecordsArg,
    parse_floats,
    parse_layers,
    placement_options,
)
from steerlab.cli.steering import SteeringChoice, steering_options
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import Placement


@app.command("generate-eval")
@placement_options
@steering_options("one", multipliers="4")
def generate_eval(
    data: Annotated[list[str], typer.Option(
        "--data", "-d", help="Question set (truthfulqa-open, advbench, harmless, another prompts "
        "dataset) or .jsonl/.csv file with a 'question' field; repeatable.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Generation records (.jsonl), appended to as produced.")],
    model: ModelOpt = DEFAULT_MODEL,
    limit: Annotated[Optional[int], typer.Option(
        "--n", help="Questions per set: a seeded sample (default: all).", min=1)] = None,
    sample_seed: Annotated[int, typer.Option(help="Seed of the --n sample.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.", min=1)] = 64,
    sample: Annotated[bool, typer.Option(
        "--sample/--greedy", help="Sample (seeded) or decode greedily.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample).")] = 1.0,
    seed: Annotated[int, typer.Option(
        help="Sampling seed; batch b uses seed + b, the same for every arm.")] = 0,
    batch_size: BatchOpt = 8,
    engine: EngineOpt = "transformers",  # type: ignore[assignment]
    steering: Optional[SteeringChoice] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Answer questions unsteered and steered (one arm per non-zero multiplier), one record each.

    The unsteered arm always runs; without --vector it is the only one. The records feed
    `steerlab judge`, `steerlab blind export` and `steerlab refusal`. With --engine vllm every
    arm of a batch is generated together (the records say so).
    """
    from steerlab.data.files import DataError, split
    from steerlab.data.registry import DatasetUnavailable
    from steerlab.evaluation.openended import generate_answers, load_questions, steering_arms
    from steerlab.records import RecordWriter

    assert steering is not None
    try:
        sets = {spec: load_questions(spec) for spec in data}
    except (DataError, DatasetUnavailable, ValueError, FileNotFoundError) as err:
        fail(str(err))
    if limit is not None:
        sets = {spec: split(qs, [min(limit, len(qs))], sample_seed)[0] for spec, qs in sets.items()}
    handle = load_handle(model, placement)
    setting = steering.setting(handle.n_layers) if steering.steered else None
    try:
        arms = steering_arms(setting, steering.multipliers)
        for arm in arms:
            if arm.setting is not None:
                arm.setting.apply(handle).remove()
    except ValueError as err:
        fail(str(err))
    generator = load_engine(model, engine, placement=placement)
    with RecordWriter(out) as writer:
        for spec, questions in sets.items():
            generate_answers(
                handle, questions, arms, dataset=spec, max_new_tokens=max_new_tokens,
                batch_size=batch_size, seed=seed, do_sample=sample, temperature=temperature,
                writer=writer, engine=generator,
            )
            console.print(f"{spec}: {len(questions)} questions × {len(arms)} arms "
                          f"({', '.join(a.label for a in arms)})")
    console.print(f"records appended to {out}")


def _short(dataset: str) -> str:
    """A dataset for a table: its name, or a file's name without the folders."""
    return Path(dataset).name if "/" in dataset else dataset


def print_head_to_head(rows: list) -> None:
    """One row per judge × dataset × arm: wins/ties/losses, win rate with its interval, z test."""
    table = Table(title="head to head (win rate counts a tie as half)")
    for column in ("judge", "dataset", "arm vs base", "n", "W/T/L", "win rate [credible interval]",
                   "z", "p"):
        table.add_column(column, justify="left" if column in ("judge", "dataset", "arm vs base")
                         else "right")
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
    console.print("p: one-sided z test of win rate > 1/2; "
                  "interval: Bayesian (steerlab.stats.paired_advantage)")


JUDGE_MODES = ("head-to-head", "rating")


@app.command()
def judge(
    records: RecordsArg,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Head-to-head or rating records (.jsonl), appended to.")],
    judge_name: Annotated[str, typer.Option(
        "--judge", help="Judge: reference-similarity (embedding similarity to the "
        "dataset's reference answers; no API) or llm (a chat model over any "
        "OpenAI-compatible endpoint: $STEERLAB_JUDGE_BASE_URL, $STEERLAB_JUDGE_MODEL, "
        "key in $STEERLAB_JUDGE_API_KEY or $OPENAI_API_KEY).")] = "reference-similarity",
    mode: Annotated[str, typer.Option(
        help="head-to-head (each arm against --base, shown order randomised "
        "per item) or rating (every answer rated 1-4 for the criterion, as "
        "in the BiPO paper; llm judge only).")] = "head-to-head",
    criterion: Annotated[Optional[str], typer.Option(
        help="llm judge: what makes an answer better, or what "
        "the rating measures (default: truthfulness).")] = None,
    concurrency: Annotated[int, typer.Option(
        help="llm judge: requests in flight at once.", min=1)] = 1,
    arm: ArmsOpt = None,
    base: BaseOpt = "unsteered",
    dataset: DatasetsOpt = None,
    seed: Annotated[int, typer.Option(
        help="Seed of the per-item answer order the judge sees.")] = 0,
) -> None:
    """Judge each steered answer against the unsteered one, item by item, and print win rates;
    or rate every answer 1-4 (--mode rating) and print mean ratings per arm."""
    from steerlab.evaluation.judges.protocol import JudgeError
    from steerlab.evaluation.judges.verdicts import JUDGES, judge_head_to_head, rate_answers
    from steerlab.records import RecordWriter

    if judge_name not in JUDGES:
        fail(f"unknown judge {judge_name!r}; available: {', '.join(JUDGES)}")
    if mode not in JUDGE_MODES:
        fail(f"--mode must be one of {', '.join(JUDGE_MODES)}, got {mode!r}")
    llm = judge_name == "llm"
    if not llm and (criterion is not None or concurrency != 1):
        fail("--criterion and --concurrency apply to the llm judge only")
    if mode == "rating" and not llm:
        fail("--mode rating needs --judge llm (a rater that reads a criterion)")
    rows = read_record_file(records, dataset)
    arms = arm or other_arms(rows, base)
    if not arms:
        fail(f"no generation records of an arm other than '{base}' in {records}")
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
        fail(str(err))
    if mode == "rating":
        print_ratings(written, base)
    else:
        _print_verdicts(written)
    console.print(f"{len(written)} records appended to {out}")


def _print_verdicts(verdicts: list[dict]) -> None:
    """The head-to-head table, and how many judge replies could not be read (if the judge says)."""
    from steerlab.evaluation.judges.verdicts import summarize_head_to_head

    print_head_to_head(summarize_head_to_head(verdicts))
    if verdicts and "unreadable" in verdicts[0]["details"]:
        unreadable = sum(v["details"]["unreadable"] for v in verdicts)
        console.print(f"{unreadable} unreadable judge replies (counted as ties; raw replies in the "
                      "records)")


def print_ratings(records: list[dict], base: str) -> None:
    """One row per judge × dataset × arm: mean 1-4 rating and the paired difference from base."""
    from steerlab.evaluation.judges.verdicts import summarize_ratings

    rows = summarize_ratings(records, base)
    level = next((r.mean.level for r in rows if r.mean), 0.9)
    table = Table(title=f"ratings 1-4 ({level:.0%} credible intervals; difference paired by item)")
    columns = ("judge", "dataset", "arm", "n", "unreadable", "mean rating", f"arm − {base}",
               "P(> 0)")
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


@app.command()
def refusal(
    records: RecordsArg,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Also append per-answer refusal records (.jsonl) here.")] = None,
    dataset: DatasetsOpt = None,
    level: Annotated[float, typer.Option(help="Confidence level of the Wilson intervals.")] = 0.95,
) -> None:
    """Refusal rate per question set and arm, and attack success on harmful sets.

    Refusals are found by the documented phrase list (steerlab.evaluation.refusal); attack success
    is 1 − refusal rate on harmful prompts (advbench).
    """
    from contextlib import nullcontext

    from steerlab.evaluation.refusal import detect_refusals, summarize_refusals
    from steerlab.records import RecordWriter

    with RecordWriter(out) if out else nullcontext() as writer:
        flagged = detect_refusals(read_record_file(records, dataset), writer=writer)
    if not flagged:
        fail(f"no generation records in {records}")
    table = Table(title=f"refusals ({flagged[0]['detector']} detector; "
                        f"{level:.0%} Wilson intervals)")
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


@app.command()
@placement_options
def concept(
    concept_text: Annotated[str, typer.Option(
        "--concept", help="The concept, in words (e.g. 'weddings and marriage ceremonies').")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run directory: records, vectors, command log.")],
    vector: Annotated[Optional[Path], typer.Option(
        "--vector", "-v", help="Steering vector file (or train one with --train).")] = None,
    train: Annotated[Optional[str], typer.Option(
        help="Pairs to train the concept's vector on (name, name:split or file).")] = None,
    method: Annotated[str, typer.Option(help="Method for --train (`steerlab methods`).")] = "caa",
    layer: Annotated[int, typer.Option(help="Layer for --train.")] = 14,
    model: ModelOpt = DEFAULT_MODEL,
    factors: Annotated[str, typer.Option(
        help="Steering factors (multipliers), comma-separated.")] = "1,2,4,8",
    layers: LayersOpt = None,
    norm_ratio: NormRatioOpt = None,
    instructions: Annotated[str, typer.Option(
        help="Instructions: a dataset's prompts (an HH-RLHF dialogue gives its first human "
        "turn).")] = "hh-rlhf-harmless:test",
    n: Annotated[int, typer.Option("--n", help="Instructions: a seeded sample.", min=2)] = 40,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.", min=1)] = 64,
    concurrency: Annotated[int, typer.Option(help="Judge requests in flight at once.",
                                             min=1)] = 1,
    batch_size: BatchOpt = 8,
    placement: Optional[Placement] = None,
) -> None:
    """AxBench's concept-steering protocol: steered answers at each factor and a prompting
    baseline, rated 0-2 by an LLM judge for concept, instruction and fluency (the harmonic mean
    is the score); the factor is chosen on half the instructions, the other half reported.

    The judge is any OpenAI-compatible endpoint: $STEERLAB_JUDGE_BASE_URL, $STEERLAB_JUDGE_MODEL
    (and $STEERLAB_JUDGE_API_KEY), as `steerlab judge --judge llm`. A 135M judge cannot follow
    the rubric: use a capable model for figures worth reporting. The vector is added at every
    position at each factor, as AxBench steers; other interventions, positions and conditions
    are `steerlab generate-eval`'s options.
    """
    from steerlab.data.files import as_prompts, first_human_turn
    from steerlab.evaluation.concept import concept_result, judged_concept_records
    from steerlab.evaluation.judges.concept import ConceptJudge
    from steerlab.evaluation.judges.protocol import JudgeError
    from steerlab.experiment.runs import RunDir
    from steerlab.steering.setting import SteeringSetting

    if (vector is None) == (train is None):
        fail("give a vector (--vector) or pairs to train one on (--train), not both")
    if not concept_text.strip():
        fail("--concept is empty: say the concept in words (e.g. 'weddings')")
    prompts = [first_human_turn(p) for p in as_prompts(load_records(instructions, None, n))]
    try:
        judge = ConceptJudge(concurrency=concurrency)
    except ValueError as err:
        fail(str(err))
    handle = load_handle(model, placement)
    if vector is not None:
        steering = load_vector(vector)
    else:
        from steerlab.methods import train_vector

        steering = train_vector(handle, load_training_pairs(train, None), method, layer)
    run = RunDir.open(out, "concept", {"concept": concept_text, "vector": str(vector),
                                       "train": train, "method": method, "layer": layer,
                                       "model": model, "factors": factors, "layers": layers,
                                       "norm_ratio": norm_ratio, "instructions": instructions,
                                       "n": n})
    run.keep_vector(steering)
    setting = SteeringSetting(steering, layers=parse_layers(layers, handle.n_layers),
                              norm_ratio=norm_ratio)
    try:
        with run.writer() as writer:
            records = judged_concept_records(handle, concept_text, {"steered": setting}, prompts,
                                             parse_floats(factors, "--factors"), judge,
                                             max_new_tokens=max_new_tokens,
                                             batch_size=batch_size, writer=writer)
    except JudgeError as err:
        fail(str(err))
    for result in concept_result(records):
        chosen = "none" if result.factor is None else f"×{result.factor:g}"
        console.print(f"{result.concept}, {result.arm}: factor chosen on half the "
                      f"instructions: {chosen}; "
                      f"the other half: steered "
                      f"{result.steered.cell('.3f') if result.steered else '-'}, prompting "
                      f"{result.prompting.cell('.3f') if result.prompting else '-'} (score 0-2, "
                      "90% intervals)")
    unreadable = sum(r["score"] is None for r in records)
    console.print(f"{len(records)} records in {run.records_path} ({unreadable} with an "
                  f"unreadable judge reply); `steerlab analyze {out}` shows the factor curve")
