"""Experiment configs: one YAML file names everything `steerlab run` does, validated up front.

A config says which model, which data (train / validation / test), which methods train
vectors, where and how strongly they are applied, which baselines they must beat, which
evaluations run, and the seeds. :func:`load_config` checks it all before any work starts and
reports problems by file, line and key path (``postmortem.yaml:12: methods.bipo.epochs: ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from steerlab.data.registry import DatasetUnavailable, dataset_info
from steerlab.data.spec import DataSpec
from steerlab.methods.registry import MethodConfig, VectorMethod, get_method, methods
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import ModelChoice
from steerlab.steering.edits import EDITS
from steerlab.steering.setting import Intervention, SteeringSetting
from steerlab.steering.vectors import MAX_ADDITION_NORM, MAX_RESIDUAL_MULTIPLE

if TYPE_CHECKING:
    from steerlab.steering.conditions import Condition
    from steerlab.steering.vectors import SteeringVector


class ConfigError(ValueError):
    """A config that cannot run, with every problem located in the file."""


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must not be silently ignored; numbers must be
    finite (YAML's .nan and .inf are not multipliers)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Data(_Strict):
    """Train pairs for every method and baseline; validation selects; test reports.

    A dataset without a validation split gives ``val_size`` seeded rows of the training split
    instead (held out before ``train.limit`` applies). Multiple-choice data is asked with
    lettered options (``format: letters``, the format :func:`~steerlab.data.registry.mc_to_pairs`
    trains on) or scored by answer text (``choices``).
    """

    train: DataSpec
    val: DataSpec | None = None
    val_size: int | None = Field(default=None, gt=0)
    test: DataSpec
    format: Literal["letters", "choices"] = "letters"

    @model_validator(mode="after")
    def _one_validation_source(self) -> Data:
        if (self.val is None) == (self.val_size is None):
            raise ValueError(
                "give either val (a dataset split) or val_size (rows held out of train)")
        return self


def _entry(spec: VectorMethod) -> type[MethodConfig]:
    """A run config's entry for one registered method: its name, the layers it trains and the
    multipliers it is swept at (default: the steering grid's; ITI's α lives on another scale than
    a residual vector's multiplier), and the method's own config fields (defaults from there)."""
    return create_model(f"{spec.config.__name__}Entry", __base__=spec.config,
                        __doc__=f"{spec.description} (``method: {spec.name}``).",
                        method=(Literal[spec.name], ...), layers=(list[int] | None, None),
                        multipliers=(list[FiniteFloat] | None, Field(default=None, min_length=1)))


Method = Annotated[Union[tuple(_entry(spec) for spec in methods().values())],  # noqa: UP007
                   Field(discriminator="method")]
"""One entry of ``methods:``: any registered method (``steerlab methods``), told apart by its
``method`` key and checked against that method's config."""


def method_config(entry: MethodConfig) -> MethodConfig:
    """The method's own config from a ``methods:`` entry (its name, layers and multipliers taken
    out)."""
    spec = get_method(entry.method)  # type: ignore[attr-defined]
    return spec.config.model_validate(
        entry.model_dump(exclude={"method", "layers", "multipliers"}))


class SteeringGrid(_Strict):
    """Where and how strongly vectors are applied; validation picks layer and multiplier.
    ``layers: scan`` takes the ``scan_top`` layers whose CAA vector moves the behaviour most in
    a layer scan of the training pairs (at the largest multiplier and the norm ratio)."""

    layers: list[Annotated[int, Field(ge=0)]] | Literal["scan"] = Field(min_length=1)
    scan_top: int = Field(default=2, gt=0)
    multipliers: list[float] = Field(min_length=1)
    norm_ratio: float | None = Field(default=None, gt=0)
    positions: Literal["all", "prompt", "generated"] = "all"
    intervention: Intervention = "add"
    """How each vector steers: added (multiplier × the vector), ablated (its direction
    projected out, the multiplier the strength) or angular (turned toward by multiplier
    degrees)."""

    @model_validator(mode="after")
    def _meaningful(self) -> SteeringGrid:
        """Multipliers the library would refuse mid-run are refused here: with a norm ratio,
        an addition over :data:`MAX_RESIDUAL_MULTIPLE` residual norms; without, one over
        :data:`MAX_ADDITION_NORM` times the vector's own norm; an angle outside ±180; a norm
        ratio for an intervention that uses only the direction."""
        if not EDITS[self.intervention].summed:
            if self.layers == "scan":
                raise ValueError(f"layers: scan ranks layers by adding CAA vectors; give the "
                                 f"layers of an {self.intervention} grid as a list")
            if self.norm_ratio is not None:
                raise ValueError(f"norm_ratio scales an added vector; {self.intervention} uses "
                                 "only its direction")
            for multiplier in self.multipliers:
                EDITS[self.intervention].check_amount(multiplier)
            return self
        for multiplier in self.multipliers:
            size = abs(multiplier) * (self.norm_ratio or 1.0)
            limit = MAX_RESIDUAL_MULTIPLE if self.norm_ratio else MAX_ADDITION_NORM
            if size > limit:
                raise ValueError(
                    f"multiplier {multiplier:g} adds {size:.3g} times "
                    + ("the residual norm" if self.norm_ratio else "the vector")
                    + f", over the {limit:g} that still steers (the model would read only the "
                    "vector)")
        return self


    def setting(self, vector: SteeringVector, layers: list[int] | None = None,
                condition: Condition | None = None) -> SteeringSetting:
        """``vector`` at this grid's norm ratio, positions and intervention (each sweep sets the
        multiplier); a vector acting on attention heads is already scaled by its method and
        keeps its size."""
        norm_ratio = self.norm_ratio if vector.meta.site == "residual" else None
        return SteeringSetting(vector, layers=layers, norm_ratio=norm_ratio,
                               positions=self.positions, intervention=self.intervention,
                               condition=condition)


class ConditionSpec(_Strict):
    """How a condition is made: prompts that should meet it (``positive``) and prompts that
    should not (``negative``), the layer it reads, and the fraction of each set held out for the
    F1-maximising threshold search (the rest gives the direction)."""

    positive: DataSpec
    negative: DataSpec
    layer: int = Field(ge=0)
    holdout: float = Field(default=0.3, gt=0, lt=1)


class Conditional(_Strict):
    """Conditional activation steering: a method's vector applied only to the sequences whose
    prompt meets a condition, as the arm ``<method>|cond`` at the method's selected layer and
    multiplier (so the two arms differ only by the condition)."""

    method: str
    condition: ConditionSpec


class KShot(_Strict):
    """k-shot prompting with examples drawn from the training pairs, nested across k."""

    ks: list[int] = Field(min_length=1)
    seed: int = 0

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if any(k <= 0 for k in ks):
            raise ValueError(f"every k must be positive, got {ks}")
        return sorted(set(ks))


class SystemPrompt(_Strict):
    """A behaviour description as the system prompt (default: the dataset's own)."""

    prompt: str | None = None


class SteeredTraining(_Strict):
    """Steering while a second LoRA trains, evaluated unsteered after (the arm ``lora-steered``):
    a method's selected vector added toward the trait (preventative steering) or its direction
    ablated (concept-ablation fine-tuning)."""

    method: str
    """A method of this run: its vector and layer as selected on validation."""
    multiplier: float = Field(allow_inf_nan=False)
    intervention: Literal["add", "ablate"] = "add"


class Lora(_Strict):
    """The post-mortem's LoRA protocol: rank 1 everywhere, lr 1e-4, batch 16, validate every 50."""

    rank: int = Field(default=1, gt=0)
    lr: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=16, gt=0)
    eval_every: int = Field(default=50, gt=0)
    steps: int = Field(default=200, gt=0)
    objective: Literal["sft", "dpo"] = "sft"
    keep: Literal["best", "last"] = "best"
    """Which adapter each LoRA arm keeps: the lowest validation loss, or the last step's (under
    preventative steering the lowest unsteered loss is often the least-trained adapter)."""
    steered: SteeredTraining | None = None


class Baselines(_Strict):
    """What a vector must beat on the same data."""

    kshot: KShot | None = None
    system: SystemPrompt | None = None
    lora: Lora | None = None


class Combinations(_Strict):
    """Vectors with LoRA: trained on and applied to the adapted model, or trained on the base
    model and transferred to it (the BiPO paper's transfer result). Each lists method names."""

    vector_on_lora: list[str] = []
    transfer_to_lora: list[str] = []


class SideEffects(_Strict):
    """Capability, perplexity and KL at each method's selected setting."""

    capability: list[DataSpec] = []
    text: DataSpec | None = None
    n_texts: int = Field(default=50, gt=0)
    prompts: DataSpec | None = None
    n_prompts: int = Field(default=50, gt=0)


class OpenEnded(_Strict):
    """Free answers, unsteered and at each method's selected setting, judged head to head.

    ``test_only`` keeps the questions whose text is a test item's question (e.g. TruthfulQA's
    open questions of the MC1 test split), so no arm is judged on what it was trained or
    selected on; ``limit`` then samples from those.
    """

    questions: DataSpec
    test_only: bool = True
    judge: str = "reference-similarity"
    max_new_tokens: int = Field(default=48, gt=0)


class ConceptEvaluation(_Strict):
    """AxBench's protocol for each method's vector at its selected layers: steered answers to
    instructions at each factor beside a prompting baseline, rated by an LLM judge
    ($STEERLAB_JUDGE_BASE_URL, $STEERLAB_JUDGE_MODEL), the factor chosen on half the
    instructions (see `steerlab concept`)."""

    concept: str = Field(min_length=1)
    instructions: DataSpec = DataSpec(dataset="hh-rlhf-harmless", split="test", limit=40)
    factors: list[float] = Field(default=[1.0, 2.0, 4.0, 8.0], min_length=1)
    max_new_tokens: int = Field(default=64, gt=0)
    concurrency: int = Field(default=1, gt=0)


class SampleEfficiency(_Strict):
    """A method trained on nested subsets of the training pairs, tested at its selection."""

    method: str
    sizes: list[int] = Field(min_length=1)
    seeds: list[int] = [0]


class Evaluations(_Strict):
    """Which evaluations beyond the headline test accuracy run."""

    reliability: bool = True
    side_effects: SideEffects | None = None
    open_ended: OpenEnded | None = None
    concept: ConceptEvaluation | None = None
    sample_efficiency: SampleEfficiency | None = None


class ExperimentConfig(_Strict):
    """One experiment: everything `steerlab run` needs, nothing it has to guess."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")]
    """The run's folder name under ``runs/`` (letters, digits, ``_``, ``-``, ``.``; one
    folder, so a name never writes outside the runs folder)."""
    model: ModelChoice = ModelChoice(name=DEFAULT_MODEL)
    """The model, by name (``model: smollm2-135m-instruct``) or as a block with where it runs
    (``model: {name: ..., device: cuda, dtype: bfloat16}``; ``device_map``, ``quantization``)."""
    seed: int = 0
    batch_size: int = Field(default=8, gt=0)
    data: Data
    methods: dict[str, Method] = {}
    steering: SteeringGrid
    baselines: Baselines = Baselines()
    combinations: Combinations = Combinations()
    conditional: Conditional | None = None
    evaluations: Evaluations = Evaluations()

    @field_validator("model", mode="before")
    @classmethod
    def _model_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _names_refer(self) -> ExperimentConfig:
        """Method names used elsewhere must be defined; arm names must not clash."""
        for field_name in ("vector_on_lora", "transfer_to_lora"):
            for name in getattr(self.combinations, field_name):
                if name not in self.methods:
                    raise ValueError(f"combinations.{field_name}: no method named {name!r} "
                                     f"(methods: {sorted(self.methods)})")
                if self.baselines.lora is None:
                    raise ValueError(f"combinations.{field_name} needs baselines.lora")
        steered = self.baselines.lora.steered if self.baselines.lora else None
        if steered and steered.method not in self.methods:
            raise ValueError(f"baselines.lora.steered.method: no method named "
                             f"{steered.method!r} (methods: {sorted(self.methods)})")
        efficiency = self.evaluations.sample_efficiency
        if efficiency and efficiency.method not in self.methods:
            raise ValueError(f"evaluations.sample_efficiency.method: no method named "
                             f"{efficiency.method!r} (methods: {sorted(self.methods)})")
        conditional = self.conditional
        if conditional is not None:
            if conditional.method not in self.methods:
                raise ValueError(f"conditional.method: no method named {conditional.method!r} "
                                 f"(methods: {sorted(self.methods)})")
            layers = self.methods[conditional.method].layers or self.steering.layers
            if layers != "scan" and conditional.condition.layer > min(layers):
                raise ValueError(
                    f"conditional.condition.layer: {conditional.condition.layer} is above the "
                    f"steered layer {min(layers)}; a condition reads the prompt at or below the "
                    "layers it gates")
        for name, entry in self.methods.items():
            try:
                fixed = method_config(entry).fixed_layers()
            except (ValueError, OSError) as err:  # a source that is not there or not readable
                raise ValueError(f"methods.{name}: {err}") from None
            layers = entry.layers or self.steering.layers  # type: ignore[attr-defined]
            where = (f"methods.{name}.layers" if entry.layers  # type: ignore[attr-defined]
                     else "steering.layers")
            if fixed is not None and (layers == "scan" or set(layers) - set(fixed)):
                asked = "scan" if layers == "scan" else sorted(set(layers) - set(fixed))
                raise ValueError(f"{where}: {name} can only train at layer(s) {fixed} (its "
                                 f"features read there), not {asked}; give methods.{name}.layers: "
                                 f"{fixed}")
        reserved = {"unsteered", "system", "lora", "lora-steered"}
        clash = sorted(set(self.methods) & reserved
                       | {m for m in self.methods if m.startswith("kshot")})
        if clash:
            raise ValueError(f"methods: names {clash} are taken by baseline arms")
        return self

    def check_layers(self, n_layers: int) -> None:
        """Refuse, naming the key, any layer the model (``n_layers`` decoder layers) lacks: the
        grid's, a method's own, the condition's."""
        named: dict[str, Any] = {"steering.layers": self.steering.layers}
        named |= {f"methods.{name}.layers": entry.layers  # type: ignore[attr-defined]
                  for name, entry in self.methods.items()}
        if self.conditional:
            named["conditional.condition.layer"] = [self.conditional.condition.layer]
        for where, layers in named.items():
            beyond = [layer for layer in layers or () if layer >= n_layers] \
                if layers != "scan" else []
            if beyond:
                raise ValueError(f"{where}: layer {beyond[0]} is beyond the model's {n_layers} "
                                 f"layers (0-{n_layers - 1})")

    def datasets(self) -> dict[str, DataSpec]:
        """Every dataset the config names, by key path."""
        found = {f"data.{k}": getattr(self.data, k) for k in ("train", "val", "test")
                 if getattr(self.data, k) is not None}
        side = self.evaluations.side_effects
        if side:
            found |= {f"evaluations.side_effects.capability.{i}": d
                      for i, d in enumerate(side.capability)}
            found |= {f"evaluations.side_effects.{k}": getattr(side, k) for k in ("text", "prompts")
                      if getattr(side, k)}
        if self.evaluations.open_ended:
            found["evaluations.open_ended.questions"] = self.evaluations.open_ended.questions
        if self.evaluations.concept:
            found["evaluations.concept.instructions"] = self.evaluations.concept.instructions
        if self.conditional:
            condition = self.conditional.condition
            found |= {f"conditional.condition.{k}": getattr(condition, k)
                      for k in ("positive", "negative")}
        return found


def _line_of(root: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the key (or list item) at ``path``, or of its nearest existing parent."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in path:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if found is None:
                return line
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _check_datasets(config: ExperimentConfig) -> list[tuple[str, str]]:
    """(key path, problem) for every named dataset or split that is not there, and every
    capability set that is not multiple choice."""
    problems = []
    for path, spec in config.datasets().items():
        try:
            info = dataset_info(spec.dataset)
        except DatasetUnavailable as err:
            problems.append((f"{path}.dataset", str(err)))
            continue
        if spec.split and info.splits is not None and spec.split not in info.splits:
            known = ", ".join(info.splits) or "none: leave split out"
            problems.append((f"{path}.split",
                             f"{spec.dataset} has no split {spec.split!r} (splits: {known})"))
        elif not info.available() and info.root is None:
            problem = (f"{spec.dataset}: its files are not on this machine "
                       "(see `steerlab data list`)")
            problems.append((f"{path}.dataset", problem))
        elif ".capability." in path and info.kind != "mc":
            problems.append((f"{path}.dataset",
                             f"{spec.dataset} is not multiple choice (its kind: {info.kind}); "
                             "capability is scored on multiple-choice items (e.g. "
                             "general-knowledge, mmlu)"))
    return problems


def _without_method_tag(loc: tuple) -> tuple:
    """An error location without the method name pydantic inserts after ``methods.<arm>`` (the
    tag of the entry's type), so it names the key as written: ``methods.bipo.epochs``."""
    if len(loc) > 2 and loc[0] == "methods" and loc[2] in methods():
        return loc[:2] + loc[3:]
    return loc


def parse_config(text: str, source: str | Path = "<config>",
                 check_data: bool = True) -> ExperimentConfig:
    """Validate a YAML config; every problem is reported at once, located by line and key path."""
    source = Path(source)
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{source}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config is a mapping of keys (name, model, data, ...), "
                          f"got {type(raw).__name__}")
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            loc = _without_method_tag(tuple(problem["loc"]))
            path = ".".join(str(part) for part in loc) or "(top level)"
            if problem["type"] == "extra_forbidden":
                lines.append(f"{source}:{_line_of(root, loc)}: {path}: unknown key")
            elif problem["type"] == "missing":
                lines.append(f"{source}:{_line_of(root, loc[:-1])}: {path}: missing (required)")
            else:
                message = problem["msg"].removeprefix("Value error, ")
                lines.append(f"{source}:{_line_of(root, loc)}: {path}: {message}")
        raise ConfigError("\n".join(lines)) from None
    if check_data:
        problems = _check_datasets(config)
        if problems:
            raise ConfigError("\n".join(
                f"{source}:"
                f"{_line_of(root, tuple(int(p) if p.isdigit() else p for p in path.split('.')))}: "
                f"{path}: {message}" for path, message in problems
            ))
    return config


def load_config(path: str | Path, check_data: bool = True) -> ExperimentConfig:
    """Read and validate an experiment config file (see :func:`parse_config`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    return parse_config(path.read_text(encoding="utf-8"), path, check_data)
