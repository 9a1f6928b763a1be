"""Stage one of `steerlab run`: every arm of an experiment evaluated into one run directory.

The runner trains what the config asks for, evaluates each arm on validation, picks each arm's
setting from those records (:func:`steerlab.analysis.comparison.select`), evaluates it on test,
and runs the extra evaluations. It writes records only; every table comes later from the records
(`steerlab analyze`). Everything it makes is kept in the run directory (vectors, adapters), and
a rerun on the same directory skips whatever is already there, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from steerlab.analysis.comparison import (
    ARM_TASK,
    BASE,
    COMPUTE_TASK,
    EXPERIMENT_TASK,
    TRAINING_TASK,
    Selection,
    select,
)
from steerlab.data.files import (
    MCItem,
    PreferencePair,
    as_prompts,
    first_human_turn,
    nested_subsets,
    passages,
)
from steerlab.data.files import split as seeded_split
from steerlab.data.registry import dataset_info, lettered, load_dataset, mc_to_pairs
from steerlab.evaluation.concept import JUDGED_TASK, concept_answers, judged_concept_records
from steerlab.evaluation.judges.concept import ConceptJudge
from steerlab.evaluation.judges.verdicts import JUDGES, VERDICT_TASK, judge_head_to_head
from steerlab.evaluation.likelihood import Sweep, evaluate
from steerlab.evaluation.openended import Arm, generate_answers, load_prompts, load_questions
from steerlab.evaluation.side_effects import side_effect_records
from steerlab.experiment.compute import TokenLayerCounter, peak_memory
from steerlab.experiment.config import ExperimentConfig, Lora, Method, method_config
from steerlab.experiment.runs import RunDir
from steerlab.methods import TrainingRun, get_method
from steerlab.methods.lora import SUMMARY_FILE, load_lora, train_lora
from steerlab.methods.prompting import kshot, max_shots, prompted, system_prompt
from steerlab.methods.scan import SCAN_TASK, scan_layers
from steerlab.model.handle import ModelHandle, load_model
from steerlab.progress import duration
from steerlab.records import Record, RecordWriter, record_key
from steerlab.steering.conditions import Condition, fit_condition
from steerlab.steering.edits import EDITS
from steerlab.steering.setting import Composition, SteeringSetting
from steerlab.steering.vectors import SteeringVector

Items = list[MCItem] | list[PreferencePair]

if TYPE_CHECKING:
    from steerlab.engine.vllm_engine import VllmEngine


@dataclass(frozen=True)
class ExperimentData:
    """Training pairs and the evaluated items, with the names records give the two sets."""

    train: list[PreferencePair]
    val: Items
    test: Items
    val_label: str
    test_label: str
    val_pairs: list[PreferencePair]
    test_pairs: list[PreferencePair]
    """The sets as preference pairs (for LoRA validation and steerability)."""
    test_questions: frozenset[str]
    """The test items' questions as asked in the source data (before any lettering)."""


def load_experiment_data(config: ExperimentConfig) -> ExperimentData:
    """Load and shape the config's data: MC items become lettered items and letter pairs."""
    data, seed = config.data, config.seed
    train = load_dataset(data.train.dataset, data.train.split)
    if data.val is None:
        val, train = seeded_split(train, [data.val_size, len(train) - data.val_size], seed)
        val_label = f"{data.train.label()}-holdout{data.val_size}"
    else:
        val, val_label = data.val.load(seed), data.val.label()
    if data.train.limit and data.train.limit < len(train):
        train = seeded_split(train, [data.train.limit], seed)[0]
    test = data.test.load(seed)
    kinds = {type(rows[0]) for rows in (train, val, test)}
    if len(kinds) != 1 or not kinds <= {MCItem, PreferencePair}:
        raise ValueError(f"train, validation and test must all be multiple choice or all pairs; "
                         f"got {sorted(k.__name__ for k in kinds)}")
    if kinds == {MCItem}:
        shape = (lambda rows: lettered(rows, seed)) if data.format == "letters" else list
        return ExperimentData(mc_to_pairs(train, seed=seed), shape(val), shape(test), val_label,
                              data.test.label(), mc_to_pairs(val, seed=seed),
                              mc_to_pairs(test, seed=seed),
                              frozenset(item.question.strip() for item in test))
    return ExperimentData(train, val, test, val_label, data.test.label(), val, test,
                          frozenset(pair.prompt.strip() for pair in test))


class Runner:
    """Runs one config into one run directory (see the module docstring)."""

    def __init__(self, config: ExperimentConfig, run_dir: str | Path, *, progress: bool = True,
                 log: Callable[[str], None] = print, model: ModelHandle | None = None,
                 engine: VllmEngine | None = None, judging: bool = True,
                 plan: Record | None = None) -> None:
        self.config = config
        self.engine = engine
        """Where the open-ended stage generates: vLLM, or (None) transformers."""
        self.judging = judging
        """False: answers are generated but not judged (the run plan's count of the work)."""
        self.plan = plan
        """The run plan's record (:mod:`steerlab.experiment.plan`), kept with the records; its
        estimates say what is left as the run goes."""
        self.estimates: dict[str, float] = plan["estimates"] if plan else {}
        check_same_config(Path(run_dir), config)
        self.run = RunDir.open(run_dir, "run", config.model_dump())
        self.progress = progress
        self.log = log
        self._model = model
        self.data = load_experiment_data(config)
        self.vectors: dict[str, dict[int, SteeringVector]] = {}
        self.selected: dict[str, SteeringVector] = {}
        self.choices: dict[str, Selection] = {}
        self.conditions: dict[str, Condition] = {}
        """The condition of each conditional arm (its vector is in :attr:`selected`)."""
        self.counter = TokenLayerCounter()
        self.adapted: ModelHandle | None = None
        self.invocation = datetime.now(timezone.utc).isoformat()

    @property
    def model(self) -> ModelHandle:
        if self._model is None:
            choice = self.config.model
            self.log(f"loading {choice.name}")
            self._model = load_model(choice.name, **choice.options())
            self.config.check_layers(self._model.n_layers)  # before any work
        self.counter.watch(self._model.layers, self._model.model.get_output_embeddings())
        return self._model

    # ---- records ----------------------------------------------------------------------------

    def candidate_layers(self, writer: RecordWriter) -> list[int]:
        """The steering grid's layers; with ``layers: scan``, the best of a layer scan of the
        training pairs, scanned once and kept as a record (a rerun reads it back)."""
        steering = self.config.steering
        if steering.layers != "scan":
            return steering.layers
        known = writer.get(record_key({"task": SCAN_TASK}))
        if known is None:
            self.log("scanning every layer of the training pairs")
            scan = scan_layers(self.model, self.data.train,
                               multiplier=max(steering.multipliers, key=lambda m: (abs(m), m)),
                               norm_ratio=steering.norm_ratio, seed=self.config.seed,
                               batch_size=self.config.batch_size, progress=self.progress)
            known = {"task": SCAN_TASK, "chosen_layers": scan.best(steering.scan_top),
                     "scan": scan.to_dict()}
            writer.write(known)
        self.log(f"layers from the scan: {known['chosen_layers']}")
        return known["chosen_layers"]

    def _note(self, writer: RecordWriter, record: Record) -> None:
        """Write a descriptive record (experiment, arm) once; a rerun keeps the first."""
        if writer.get(record_key(record)) is None:
            writer.write(record)

    def _evaluate(self, writer: RecordWriter, model: ModelHandle, arm: str, sweeps: Sequence[Sweep],
                  which: str) -> list[Record]:
        items, label = ((self.data.val, self.data.val_label) if which == "val"
                        else (self.data.test, self.data.test_label))
        return evaluate(model, items, sweeps, dataset=label, writer=writer,
                        batch_size=self.config.batch_size, progress=self.progress, arm=arm)

    def _choice(self, writer: RecordWriter, arm: str) -> Selection:
        """The arm's setting chosen on validation, selected once from the records and kept."""
        if arm not in self.choices:
            self.choices[arm] = select(writer.records(), arm, self.data.val_label)
        return self.choices[arm]

    def _multipliers(self, name: str) -> list[float]:
        """The multipliers the vectors of the method entry ``name`` are swept at: the entry's
        own, else the grid's."""
        return self.config.methods[name].multipliers or self.config.steering.multipliers

    def _sweeps(self, vectors: dict[int, SteeringVector], multipliers: list[float]) -> list[Sweep]:
        steering = self.config.steering
        return [Sweep(steering.setting(vector, vector.layers), multipliers)
                for _, vector in sorted(vectors.items())]

    def _select_and_test(self, writer: RecordWriter, model: ModelHandle, arm: str,
                         vectors: dict[int, SteeringVector], grid: list[float]) -> SteeringVector:
        """Validation sweep over layers × multipliers, then test at the chosen setting; returns
        the chosen layer's vector. A/B test sets are swept at every multiplier of the chosen
        layer (steerability needs the slope), multiple-choice ones only at the chosen one."""
        val = self._evaluate(writer, model, arm, self._sweeps(vectors, grid), "val")
        choice = self.choices[arm] = select(val, arm, self.data.val_label)
        vector = next((v for v in vectors.values() if v.layers == choice.layers),
                      vectors[min(vectors)])
        steering = self.config.steering
        multipliers = (grid if isinstance(self.data.test[0], PreferencePair)
                       else [choice.multiplier])
        self._evaluate(writer, model, arm,
                       [Sweep(steering.setting(vector, vector.layers), multipliers)], "test")
        where = ", ".join(map(str, vector.layers))
        self.log(f"{arm}: layer{'s' * (len(vector.layers) > 1)} {where}, multiplier "
                 f"{choice.multiplier:g} chosen on validation (accuracy {choice.accuracy:.3f} "
                 f"of {choice.tried} settings)")
        return vector

    # ---- vectors ----------------------------------------------------------------------------

    def _train(self, name: str, method: Method, model: ModelHandle, layers: Sequence[int],
               pairs: Sequence[PreferencePair], tag: str = "") -> dict[int, SteeringVector]:
        """The method's vector at each layer, trained once and kept under ``vectors/``; a method
        that picks where to act among the layers (ITI) gives one whole vector, under the lowest
        layer it acts on."""
        folder = self.run.path / "vectors"
        spec, config = get_method(method.method), method_config(method)
        if spec.picks_layers:
            path = folder / f"{name}{tag}.safetensors"
            if not path.exists():
                self.log(f"training {name}{tag} ({method.method}) among layers "
                         f"{', '.join(map(str, layers))}")
                run = TrainingRun(seed=self.config.seed, batch_size=self.config.batch_size,
                                  progress=self.progress)
                spec.train(model, pairs, list(layers), config, run).save(path)
            vector = SteeringVector.load(path)
            return {min(vector.layers): vector}
        paths = {layer: folder / f"{name}{tag}-L{layer}.safetensors" for layer in layers}
        missing = [layer for layer, path in paths.items() if not path.exists()]
        # Validation pairs are for early stopping: handed over only with a patience to use.
        val_pairs = self.data.val_pairs if getattr(config, "patience", None) else None
        for group in [missing] if spec.multi_layer and missing else [[layer] for layer in missing]:
            self.log(f"training {name}{tag} ({method.method}) at layer{'s' * (len(group) > 1)} "
                     f"{', '.join(map(str, group))}")
            checkpoint = paths[group[0]].with_suffix(".partial")
            run = TrainingRun(val_pairs=val_pairs, seed=self.config.seed, checkpoint=checkpoint,
                              batch_size=self.config.batch_size, progress=self.progress)
            vector = spec.train(model, pairs, group, config, run)
            for layer in group:  # a multi-layer method's vector is kept one file per layer
                (vector.restricted([layer]) if spec.multi_layer else vector).save(paths[layer])
            checkpoint.unlink(missing_ok=True)
        return {layer: SteeringVector.load(path) for layer, path in paths.items()}

    # ---- arms -------------------------------------------------------------------------------

    def unsteered(self, writer: RecordWriter) -> None:
        self._note(writer, {"task": ARM_TASK, "arm": BASE, "kind": "reference"})
        for which in ("val", "test"):
            self._evaluate(writer, self.model, BASE, [Sweep()], which)

    def methods(self, writer: RecordWriter) -> None:
        for name, method in self.config.methods.items():
            layers = method.layers or self.candidate_layers(writer)
            self._note(writer, {"task": ARM_TASK, "arm": name, "kind": "method",
                                "method": method.model_dump(),
                                "trainable_parameters": self.model.d_model})
            count, started = self.counter.count, time.perf_counter()
            self.vectors[name] = self._train(name, method, self.model, layers, self.data.train)
            if writer.get(record_key({"task": TRAINING_TASK, "arm": name})) is None:
                # the first invocation trains; a resumed one loads the kept vectors
                writer.write({"task": TRAINING_TASK, "arm": name, "method": method.method,
                              "trained_layers": list(layers),
                              "seconds": time.perf_counter() - started,
                              "token_layers": self.counter.count - count})
            self.selected[name] = self._select_and_test(writer, self.model, name,
                                                        self.vectors[name], self._multipliers(name))

    def conditional(self, writer: RecordWriter) -> None:
        """The arm ``<method>|cond``: the method's selected vector and multiplier, applied only
        where a condition made from the config's prompts holds (:func:`fit_condition`); the
        condition is kept under ``vectors/``."""
        spec = self.config.conditional
        if spec is None:
            return

        arm, vector = f"{spec.method}|cond", self.selected[spec.method]
        path = self.run.path / "vectors" / f"{spec.method}-cond.condition.safetensors"
        if not path.exists():
            made, seed = spec.condition, self.config.seed
            self.log(f"training the condition at layer {made.layer}")
            fit_condition(self.model, made.positive.load(seed, load_prompts),
                          made.negative.load(seed, load_prompts), made.layer, made.holdout, seed,
                          batch_size=self.config.batch_size, progress=self.progress).save(path)
        condition = Condition.load(path)
        search = condition.meta.extra["threshold_search"]
        self.log(f"{arm}: threshold {condition.threshold:.4f} (F1 {search['f1']:.3f} on held-out "
                 "prompts)")
        self._note(writer, {"task": ARM_TASK, "arm": arm, "kind": "conditional",
                            "method": spec.method, "condition": condition.describe(),
                            **condition.meta.extra})
        choice = self._choice(writer, spec.method)
        steering = self.config.steering
        sweep = Sweep(steering.setting(vector, vector.layers, condition), [choice.multiplier])
        for which in ("val", "test"):
            self._evaluate(writer, self.model, arm, [sweep], which)
        self.selected[arm], self.conditions[arm] = vector, condition

    def prompting(self, writer: RecordWriter) -> None:
        baselines = self.config.baselines
        if baselines.kshot is None and baselines.system is None:
            return

        if baselines.kshot:
            ks = [k for k in baselines.kshot.ks if k <= len(self.data.train)]
            if len(ks) < len(baselines.kshot.ks):
                self.log(f"k-shot: only {len(self.data.train)} training pairs, so k > "
                         f"{len(self.data.train)} is not run")
            fits = max_shots(self.model, self.data.train, ks, [*self.data.val, *self.data.test],
                             seed=baselines.kshot.seed)
            if fits.cut is not None:
                self.log(f"k-shot: k = {fits.cut} and above do not fit the context "
                         f"({fits.describe()})")
            for k in fits.fits:
                arm = f"kshot-{k}"
                self._note(writer, {"task": ARM_TASK, "arm": arm, "kind": "prompting", "shots": k,
                                    "context_cut": fits.cut})
                handle = prompted(self.model, kshot(self.data.train, k, baselines.kshot.seed))
                for which in ("val", "test"):
                    self._evaluate(writer, handle, arm, [Sweep()], which)
        if baselines.system:
            prompting = system_prompt(self.config.data.train.dataset, baselines.system.prompt)
            self._note(writer, {"task": ARM_TASK, "arm": "system", "kind": "prompting",
                                "system": prompting.system})
            for which in ("val", "test"):
                self._evaluate(writer, prompted(self.model, prompting), "system", [Sweep()], which)

    def lora(self, writer: RecordWriter) -> None:
        """Train (or reload) the LoRA baseline, evaluate it, and keep the adapted model; then the
        LoRA trained under steering, if asked (evaluated unsteered)."""
        spec = self.config.baselines.lora
        if spec is None:
            return
        self.adapted = self._lora_arm(writer, spec, "lora", None)
        if spec.steered is not None:
            vector = self.selected[spec.steered.method]
            setting = self.config.steering.setting(vector, vector.layers).at(
                spec.steered.multiplier)
            setting = replace(setting, intervention=spec.steered.intervention,
                              positions="all",  # a training pass reads its whole text at once
                              norm_ratio=setting.norm_ratio  # only an addition is rescaled
                              if EDITS[spec.steered.intervention].summed else None)
            self._lora_arm(writer, spec, "lora-steered", setting)

    def _lora_arm(self, writer: RecordWriter, spec: Lora, arm: str,
                  steering: SteeringSetting | None) -> ModelHandle:
        """One LoRA arm: trained into its folder (``steering`` on for its training steps only),
        noted, evaluated on validation and test; the adapted model."""
        folder = self.run.path / arm
        if not (folder / SUMMARY_FILE).exists():  # written when training finished
            under = f", steered: {steering.describe()}" if steering else ""
            self.log(f"training {arm} (rank {spec.rank}, {spec.steps} steps, "
                     f"{spec.objective}{under})")
            train_lora(self.model, self.data.train, self.data.val_pairs, rank=spec.rank, lr=spec.lr,
                       batch_size=spec.batch_size, eval_every=spec.eval_every, max_steps=spec.steps,
                       objective=spec.objective, seed=self.config.seed, out_dir=folder,
                       progress=self.progress, keep=spec.keep,
                       steering=Composition((steering,)) if steering else None)
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        self._note(writer, {"task": ARM_TASK, "arm": arm, "kind": "lora",
                            "trainable_parameters": summary["trainable_params"], **summary})
        adapted = load_lora(self.model, folder)
        self.counter.watch(adapted.layers, adapted.model.get_output_embeddings())
        for which in ("val", "test"):
            self._evaluate(writer, adapted, arm, [Sweep()], which)
        return adapted

    def combinations(self, writer: RecordWriter) -> None:
        adapted = self.adapted
        if adapted is None:
            return
        combos = self.config.combinations
        for name in combos.vector_on_lora:
            arm, layers = f"{name}+lora", self.selected[name].layers
            self._note(writer, {"task": ARM_TASK, "arm": arm, "kind": "combination",
                                "method": name, "trained_on": "lora"})
            vectors = self._train(name, self.config.methods[name], adapted, layers,
                                  self.data.train, tag="-on-lora")
            self._select_and_test(writer, adapted, arm, vectors, self._multipliers(name))
        for name in combos.transfer_to_lora:
            arm, vector = f"{name}-transfer-lora", self.selected[name]
            self._note(writer, {"task": ARM_TASK, "arm": arm, "kind": "combination",
                                "method": name, "trained_on": "base"})
            self._select_and_test(writer, adapted, arm, {vector.layers[0]: vector},
                                  self._multipliers(name))

    def sample_efficiency(self, writer: RecordWriter) -> None:
        spec = self.config.evaluations.sample_efficiency
        if spec is None:
            return
        method = self.config.methods[spec.method]
        choice = self._choice(writer, spec.method)
        layers = choice.layers
        steering = self.config.steering
        for seed in spec.seeds:
            for size, subset in nested_subsets(self.data.train,
                                               [s for s in spec.sizes
                                                if s <= len(self.data.train)], seed).items():
                arm = f"{spec.method}-n{size}-seed{seed}"
                self._note(writer, {"task": ARM_TASK, "arm": arm, "kind": "subset",
                                    "method": spec.method, "size": size, "seed": seed})
                (vector,) = self._train(spec.method, method, self.model, layers, subset,
                                        tag=f"-n{size}-seed{seed}").values()
                self._evaluate(writer, self.model, arm,
                               [Sweep(steering.setting(vector, vector.layers),
                                      [choice.multiplier])], "test")

    def reliability(self, writer: RecordWriter) -> None:
        """Steerability needs A/B records over the multipliers: multiple-choice test sets are
        also swept as letter pairs (A/B test sets were swept already)."""
        if not self.config.evaluations.reliability or isinstance(self.data.test[0], PreferencePair):
            return
        steering = self.config.steering
        for name, vector in self.selected.items():
            if name in self.conditions:
                continue
            evaluate(self.model, self.data.test_pairs,
                     [Sweep(steering.setting(vector, vector.layers), self._multipliers(name))],
                     dataset=f"{self.data.test_label}:pairs", writer=writer,
                     batch_size=self.config.batch_size, progress=self.progress, arm=name)

    def side_effects(self, writer: RecordWriter) -> None:
        spec = self.config.evaluations.side_effects
        if spec is None:
            return
        capability = {d.label(): d.load(self.config.seed) for d in spec.capability}
        texts = ({spec.text.label(): passages(load_dataset(spec.text.dataset, spec.text.split),
                                              spec.n_texts)}
                 if spec.text else None)
        prompts = None
        if spec.prompts:
            prompts = {spec.prompts.label():
                       spec.prompts.load(self.config.seed, load_prompts)[: spec.n_prompts]}
        steering = self.config.steering
        for name, vector in self.selected.items():
            choice = self._choice(writer, name)
            side_effect_records(self.model,
                                Sweep(steering.setting(vector, vector.layers,
                                                       self.conditions.get(name)),
                                      [choice.multiplier]),
                                capability=capability, texts=texts, prompts=prompts, writer=writer,
                                batch_size=self.config.batch_size, progress=self.progress)

    def open_ended(self, writer: RecordWriter) -> None:
        spec = self.config.evaluations.open_ended
        if spec is None or not self.selected:
            return
        questions = load_questions(spec.questions.dataset, spec.questions.split)
        if spec.test_only:
            questions = [q for q in questions if q.question.strip() in self.data.test_questions]
            if not questions:
                raise ValueError("evaluations.open_ended: no question of "
                                 f"{spec.questions.label()} is a test question of "
                                 f"{self.data.test_label} (set test_only: false to use them all)")
        if spec.questions.limit and spec.questions.limit < len(questions):
            questions = seeded_split(questions, [spec.questions.limit], self.config.seed)[0]
        steering = self.config.steering
        arms = [Arm(BASE)] + [
            Arm(name, steering.setting(vector, vector.layers, self.conditions.get(name))
                .at(self._choice(writer, name).multiplier))
            for name, vector in self.selected.items()
        ]
        label = spec.questions.label()
        answers = generate_answers(self.model, questions, arms, dataset=label,
                                   max_new_tokens=spec.max_new_tokens,
                                   batch_size=self.config.batch_size, seed=self.config.seed,
                                   writer=writer, progress=self.progress, engine=self.engine)
        if not self.judging:
            return
        judged = {(r["arm"], r["judge"]) for r in writer.records()
                  if r.get("task") == VERDICT_TASK and r.get("dataset") == label}
        judge = JUDGES[spec.judge]()
        for arm in arms[1:]:
            if (arm.label, judge.name) not in judged:
                judge_head_to_head(answers, judge, arm.label, BASE, seed=self.config.seed,
                                   writer=writer)

    def concept(self, writer: RecordWriter) -> None:
        spec = self.config.evaluations.concept
        if spec is None or not self.selected:
            return
        if any(r.get("task") == JUDGED_TASK and r.get("concept") == spec.concept
               for r in writer.records()):
            return  # judged in an earlier invocation: records are written once all are judged
        instructions = [first_human_turn(p) for p in as_prompts(
            spec.instructions.load(self.config.seed))]
        steering = self.config.steering
        arms = {name: steering.setting(vector, vector.layers, self.conditions.get(name))
                for name, vector in self.selected.items()}
        if not self.judging:
            concept_answers(self.model, spec.concept, arms, instructions, spec.factors,
                            max_new_tokens=spec.max_new_tokens,
                            batch_size=self.config.batch_size, progress=self.progress)
            return
        judged_concept_records(self.model, spec.concept, arms, instructions, spec.factors,
                               ConceptJudge(concurrency=spec.concurrency, progress=self.progress),
                               max_new_tokens=spec.max_new_tokens,
                               batch_size=self.config.batch_size, writer=writer,
                               progress=self.progress)

    # ---- the whole run ----------------------------------------------------------------------

    def __call__(self) -> RunDir:
        """Run every stage; return the run directory."""
        started = time.perf_counter()
        with self.run.writer() as writer:
            self._note(writer, {"task": EXPERIMENT_TASK, "name": self.config.name,
                                "model": self.config.model.name, "val": self.data.val_label,
                                "test": self.data.test_label,
                                "val_n": len(self.data.val), "test_n": len(self.data.test),
                                "train_n": len(self.data.train), "n_layers": self.model.n_layers,
                                "config": self.config.model_dump(), "versions": versions()})
            if self.plan is not None:
                self._note(writer, self.plan)
            stages: list[tuple[str, Callable[[RecordWriter], None]]] = [
                ("unsteered", self.unsteered), ("methods", self.methods),
                ("conditional", self.conditional), ("prompting", self.prompting),
                ("lora", self.lora), ("combinations", self.combinations),
                ("sample efficiency", self.sample_efficiency), ("reliability", self.reliability),
                ("side effects", self.side_effects), ("open-ended", self.open_ended),
                ("concept", self.concept),
            ]
            for number, (stage, work) in enumerate(stages):
                self._say_left(stage, [name for name, _ in stages[number:]],
                               time.perf_counter() - started)
                self._timed(writer, stage, work)
        self.counter.close()
        self.log(f"stage one done in {time.perf_counter() - started:.0f} s: "
                 f"{self.run.records_path}")
        return self.run

    def _say_left(self, stage: str, remaining: Sequence[str], elapsed: float) -> None:
        """Log the stage about to run with its estimate and the time left in all: the remaining
        stages' estimates, scaled by how the finished ones compared with theirs."""
        if not self.estimates.get(stage):
            return
        done = sum(seconds for name, seconds in self.estimates.items() if name not in remaining)
        pace = elapsed / done if done > 30 else 1.0
        left = sum(self.estimates.get(name, 0.0) for name in remaining) * pace
        self.log(f"{stage}: ≈ {duration(self.estimates[stage] * pace)}; "
                 f"≈ {duration(left)} left in all")

    def _timed(self, writer: RecordWriter, stage: str,
               work: Callable[[RecordWriter], None]) -> None:
        """Run one stage and record its wall time and token-layers (one record per invocation,
        so a resumed run's totals add up every invocation's work; an interrupted stage's record
        says so and keeps the time it had spent)."""
        before = self.counter.snapshot()
        started, finished = time.perf_counter(), False
        try:
            work(writer)
            finished = True
        finally:
            writer.write({"task": COMPUTE_TASK, "stage": stage,
                          "seconds": time.perf_counter() - started,
                          **self.counter.since(before), "invocation": self.invocation,
                          "peak_bytes": peak_memory(self.model.device)[0],
                          **({} if finished else {"interrupted": True})})


def check_same_config(run_dir: Path, config: ExperimentConfig) -> None:
    """Refuse to resume a run directory started with another config: its records would be
    mixed with the new config's, and the report would show the old config as the one run."""
    records = RunDir(run_dir).records() if run_dir.is_dir() else []
    started = next((r["config"] for r in records if r.get("task") == EXPERIMENT_TASK), None)
    if started is None:
        return
    try:  # a config kept by an earlier version gets the defaults of keys added since
        started = json.loads(json.dumps(ExperimentConfig.model_validate(started).model_dump()))
    except ValidationError:
        pass  # a key this version no longer knows: compared as it was kept
    changed = _changed_keys(started, json.loads(json.dumps(config.model_dump())))
    if changed:
        raise ValueError(f"{run_dir} holds a run of a different config "
                         f"(changed: {', '.join(changed)}); "
                         "rerun it with the config it was started with, or give a new --out")


def _changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted key paths where two JSON-like values differ (a whole value where a type differs)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [found for key in sorted({*old, *new}, key=str)
                for found in _changed_keys(old.get(key), new.get(key),
                                           f"{path}.{key}" if path else str(key))]
    return [] if old == new else [path or "(the whole config)"]


def versions() -> dict[str, str]:
    """Versions of what the numbers depend on: Python and the libraries that compute them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("steerlab", "torch", "transformers", "peft", "numpy", "scipy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_experiment(config: ExperimentConfig, run_dir: str | Path, **options: Any) -> RunDir:
    """Stage one: evaluate every arm of ``config`` into ``run_dir`` (resumes if it exists)."""
    return Runner(config, run_dir, **options)()


def data_summary(config: ExperimentConfig) -> dict[str, Any]:
    """Sizes of the data the config uses (for `steerlab run --dry-run`)."""
    data = load_experiment_data(config)
    return {"train pairs": len(data.train), data.val_label: len(data.val),
            data.test_label: len(data.test),
            "kind": dataset_info(config.data.train.dataset).kind}
