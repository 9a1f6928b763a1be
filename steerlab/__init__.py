"""steerlab: train, apply and honestly evaluate steering vectors for Hugging Face language models.

The public names below load lazily, so ``import steerlab`` (and ``steerlab --help``) stays fast
until a model or tensor is actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MCItem": "steerlab.data",
    "PreferencePair": "steerlab.data",
    "load_mc": "steerlab.data",
    "load_pairs": "steerlab.data",
    "nested_subsets": "steerlab.data",
    "split": "steerlab.data",
    "DataSpec": "steerlab.datasets",
    "list_datasets": "steerlab.datasets",
    "lettered": "steerlab.datasets",
    "load_dataset": "steerlab.datasets",
    "mc_to_pairs": "steerlab.datasets",
    "ChatSession": "steerlab.chat",
    "Condition": "steerlab.conditions",
    "fit_condition": "steerlab.conditions",
    "search_threshold": "steerlab.conditions",
    "train_condition": "steerlab.conditions",
    "Composition": "steerlab.composition",
    "Part": "steerlab.composition",
    "compose": "steerlab.composition",
    "Sweep": "steerlab.evaluation",
    "composition_grid": "steerlab.evaluation",
    "evaluate_ab": "steerlab.evaluation",
    "evaluate_mc": "steerlab.evaluation",
    "export_blind": "steerlab.blind",
    "import_ratings": "steerlab.blind",
    "generate": "steerlab.generation",
    "inspect_dataset": "steerlab.inspection",
    "ReferenceSimilarityJudge": "steerlab.judges",
    "judge_head_to_head": "steerlab.judges",
    "rate_answers": "steerlab.judges",
    "summarize_head_to_head": "steerlab.judges",
    "summarize_ratings": "steerlab.judges",
    "LLMJudge": "steerlab.llm_judge",
    "train_bipo": "steerlab.methods",
    "train_caa": "steerlab.methods",
    "train_dpo": "steerlab.methods",
    "load_lora": "steerlab.lora",
    "train_lora": "steerlab.lora",
    "ModelHandle": "steerlab.models",
    "load_model": "steerlab.models",
    "wrap_model": "steerlab.models",
    "generate_answers": "steerlab.openended",
    "load_questions": "steerlab.openended",
    "steering_arms": "steerlab.openended",
    "Prompting": "steerlab.prompting",
    "kshot": "steerlab.prompting",
    "max_shots": "steerlab.prompting",
    "prompted": "steerlab.prompting",
    "system_prompt": "steerlab.prompting",
    "detect_refusals": "steerlab.refusal",
    "ServeSettings": "steerlab.serve",
    "create_app": "steerlab.serve",
    "summarize_refusals": "steerlab.refusal",
    "plot_steerability": "steerlab.reliability",
    "steerability": "steerlab.reliability",
    "PairedTable": "steerlab.stats",
    "mean_interval": "steerlab.stats",
    "minimum_detectable_effect": "steerlab.stats",
    "paired_advantage": "steerlab.stats",
    "paired_table_from_records": "steerlab.stats",
    "wilson_interval": "steerlab.stats",
    "win_rate_test": "steerlab.stats",
    "Steering": "steerlab.steering",
    "SteeringVector": "steerlab.vectors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from steerlab.data import MCItem, PreferencePair, load_mc, load_pairs, nested_subsets, split
    from steerlab.datasets import DataSpec, lettered, list_datasets, load_dataset, mc_to_pairs
    from steerlab.chat import ChatSession
    from steerlab.conditions import Condition, fit_condition, search_threshold, train_condition
    from steerlab.composition import Composition, Part, compose
    from steerlab.evaluation import Sweep, composition_grid, evaluate_ab, evaluate_mc
    from steerlab.blind import export_blind, import_ratings
    from steerlab.generation import generate
    from steerlab.inspection import inspect_dataset
    from steerlab.judges import (
        ReferenceSimilarityJudge,
        judge_head_to_head,
        rate_answers,
        summarize_head_to_head,
        summarize_ratings,
    )
    from steerlab.llm_judge import LLMJudge
    from steerlab.lora import load_lora, train_lora
    from steerlab.methods import train_bipo, train_caa, train_dpo
    from steerlab.models import ModelHandle, load_model, wrap_model
    from steerlab.openended import generate_answers, load_questions, steering_arms
    from steerlab.prompting import Prompting, kshot, max_shots, prompted, system_prompt
    from steerlab.refusal import detect_refusals, summarize_refusals
    from steerlab.serve import ServeSettings, create_app
    from steerlab.reliability import plot_steerability, steerability
    from steerlab.stats import (
        PairedTable,
        mean_interval,
        minimum_detectable_effect,
        paired_advantage,
        paired_table_from_records,
        wilson_interval,
        win_rate_test,
    )
    from steerlab.steering import Steering
    from steerlab.vectors import SteeringVector


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'steerlab' has no attribute {name!r}")
