"""steerlab: train, apply and honestly evaluate steering vectors for Hugging Face language models.

The public names below load lazily, so ``import steerlab`` (and ``steerlab --help``) stays fast
until a model or tensor is actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from steerlab.version import __version__

_EXPORTS = {
    "MCItem": "steerlab.data.files",
    "PreferencePair": "steerlab.data.files",
    "load_mc": "steerlab.data.files",
    "load_pairs": "steerlab.data.files",
    "nested_subsets": "steerlab.data.files",
    "split": "steerlab.data.files",
    "DataSpec": "steerlab.data.spec",
    "list_datasets": "steerlab.data.registry",
    "lettered": "steerlab.data.registry",
    "load_dataset": "steerlab.data.registry",
    "mc_to_pairs": "steerlab.data.registry",
    "ChatSession": "steerlab.serve.chat",
    "Condition": "steerlab.steering.conditions",
    "fit_condition": "steerlab.steering.conditions",
    "search_threshold": "steerlab.steering.conditions",
    "train_condition": "steerlab.steering.conditions",
    "Composition": "steerlab.steering.setting",
    "SteeringSetting": "steerlab.steering.setting",
    "compose": "steerlab.steering.setting",
    "Sweep": "steerlab.evaluation.likelihood",
    "composition_grid": "steerlab.evaluation.likelihood",
    "evaluate_ab": "steerlab.evaluation.likelihood",
    "evaluate_mc": "steerlab.evaluation.likelihood",
    "export_blind": "steerlab.evaluation.judges.blind",
    "import_ratings": "steerlab.evaluation.judges.blind",
    "generate": "steerlab.model.generation",
    "inspect_dataset": "steerlab.evaluation.inspection",
    "ReferenceSimilarityJudge": "steerlab.evaluation.judges.verdicts",
    "judge_head_to_head": "steerlab.evaluation.judges.verdicts",
    "rate_answers": "steerlab.evaluation.judges.verdicts",
    "summarize_head_to_head": "steerlab.evaluation.judges.verdicts",
    "summarize_ratings": "steerlab.evaluation.judges.verdicts",
    "LLMJudge": "steerlab.evaluation.judges.llm",
    "train_bipo": "steerlab.methods",
    "train_caa": "steerlab.methods",
    "train_dpo": "steerlab.methods",
    "train_vector": "steerlab.methods",
    "load_lora": "steerlab.methods.lora",
    "train_lora": "steerlab.methods.lora",
    "SteeringCallback": "steerlab.methods.steered_training",
    "feature_vector": "steerlab.methods.sae",
    "load_features": "steerlab.methods.sae",
    "top_features": "steerlab.methods.sae",
    "ModelHandle": "steerlab.model.handle",
    "load_model": "steerlab.model.handle",
    "wrap_model": "steerlab.model.handle",
    "generate_answers": "steerlab.evaluation.openended",
    "load_questions": "steerlab.evaluation.openended",
    "steering_arms": "steerlab.evaluation.openended",
    "Prompting": "steerlab.methods.prompting",
    "kshot": "steerlab.methods.prompting",
    "max_shots": "steerlab.methods.prompting",
    "prompted": "steerlab.methods.prompting",
    "system_prompt": "steerlab.methods.prompting",
    "detect_refusals": "steerlab.evaluation.refusal",
    "ServeSettings": "steerlab.serve.schema",
    "create_app": "steerlab.serve.app",
    "summarize_refusals": "steerlab.evaluation.refusal",
    "plot_steerability": "steerlab.analysis.reliability",
    "steerability": "steerlab.analysis.reliability",
    "PairedTable": "steerlab.stats",
    "mean_interval": "steerlab.stats",
    "minimum_detectable_effect": "steerlab.stats",
    "paired_advantage": "steerlab.stats",
    "paired_table_from_records": "steerlab.stats",
    "wilson_interval": "steerlab.stats",
    "win_rate_test": "steerlab.stats",
    "Steering": "steerlab.steering.hooks",
    "SteeringVector": "steerlab.steering.vectors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from steerlab.analysis.reliability import plot_steerability, steerability
    from steerlab.data.files import (
        MCItem,
        PreferencePair,
        load_mc,
        load_pairs,
        nested_subsets,
        split,
    )
    from steerlab.data.registry import lettered, list_datasets, load_dataset, mc_to_pairs
    from steerlab.data.spec import DataSpec
    from steerlab.evaluation.inspection import inspect_dataset
    from steerlab.evaluation.judges.blind import export_blind, import_ratings
    from steerlab.evaluation.judges.llm import LLMJudge
    from steerlab.evaluation.judges.verdicts import (
        ReferenceSimilarityJudge,
        judge_head_to_head,
        rate_answers,
        summarize_head_to_head,
        summarize_ratings,
    )
    from steerlab.evaluation.likelihood import Sweep, composition_grid, evaluate_ab, evaluate_mc
    from steerlab.evaluation.openended import generate_answers, load_questions, steering_arms
    from steerlab.evaluation.refusal import detect_refusals, summarize_refusals
    from steerlab.methods import train_bipo, train_caa, train_dpo, train_vector
    from steerlab.methods.lora import load_lora, train_lora
    from steerlab.methods.prompting import Prompting, kshot, max_shots, prompted, system_prompt
    from steerlab.methods.sae import feature_vector, load_features, top_features
    from steerlab.methods.steered_training import SteeringCallback
    from steerlab.model.generation import generate
    from steerlab.model.handle import ModelHandle, load_model, wrap_model
    from steerlab.serve.app import create_app
    from steerlab.serve.chat import ChatSession
    from steerlab.serve.schema import ServeSettings
    from steerlab.stats import (
        PairedTable,
        mean_interval,
        minimum_detectable_effect,
        paired_advantage,
        paired_table_from_records,
        wilson_interval,
        win_rate_test,
    )
    from steerlab.steering.conditions import (
        Condition,
        fit_condition,
        search_threshold,
        train_condition,
    )
    from steerlab.steering.hooks import Steering
    from steerlab.steering.setting import Composition, SteeringSetting, compose
    from steerlab.steering.vectors import SteeringVector


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'steerlab' has no attribute {name!r}")
