"""Prompting baselines on a vector's own training data: k-shot examples and a system prompt.

A :class:`Prompting` becomes a :class:`~steerlab.model.handle.ModelHandle` whose every prompt comes
after the system text and the shots, rendered as earlier user/assistant turns (:func:`prompted`).
Every evaluator (multiple choice, A/B, generation, side effects) then runs unchanged under the
baseline, and its records hold the exact prompt text the model saw.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from steerlab.data.files import MCItem, PreferencePair, nested_subsets
from steerlab.data.registry import DATASETS
from steerlab.model.encoding import encode
from steerlab.model.handle import ModelHandle

__all__ = [
    "Prompting", "ShotFit", "context_limit", "kshot", "max_shots", "prompted", "shot_answer",
    "system_prompt",
]

_OPEN_LETTER = re.compile(r"^\([A-Z]$")


@dataclass(frozen=True)
class Prompting:
    """A prompting baseline: an optional system text, then (prompt, answer) shots, shown before
    every evaluated prompt."""

    system: str | None = None
    shots: tuple[tuple[str, str], ...] = ()

    def messages(self) -> tuple[dict[str, str], ...]:
        """The conversation before the evaluated prompt: system, then a user/assistant exchange
        per shot."""
        head = ({"role": "system", "content": self.system},) if self.system else ()
        turns = tuple(
            message
            for prompt, answer in self.shots
            for message in ({"role": "user", "content": prompt},
                            {"role": "assistant", "content": answer})
        )
        return head + turns


def prompted(model: ModelHandle, prompting: Prompting) -> ModelHandle:
    """A handle sharing ``model``'s weights, tokenizer and layers whose prompts all come after
    ``prompting`` (it replaces any preamble ``model`` had); ``model`` itself is unchanged."""
    return replace(model, preamble=prompting.messages())


def shot_answer(completion: str) -> str:
    """A pair's chosen completion as a shown answer: A/B letter completions (``"(A"``, open so
    that scoring ends on the letter) get their closing parenthesis back; others stay as they are."""
    return f"{completion})" if _OPEN_LETTER.match(completion) else completion


def kshot(pairs: Sequence[PreferencePair], k: int, seed: int = 0) -> Prompting:
    """``k`` shots (pair prompt, chosen answer) drawn from the training pairs like
    :func:`steerlab.data.files.nested_subsets`: for one seed, the k shots are the first k of any
    larger k's, and the same pairs as the vector's training subset of size k."""
    if k < 0:
        raise ValueError(f"k must be 0 or more, got {k}")
    if k > len(pairs):
        raise ValueError(f"{k}-shot prompting needs {k} training pairs, only {len(pairs)} given")
    chosen = nested_subsets(pairs, [k], seed)[k] if k else []
    return Prompting(shots=tuple((pair.prompt, shot_answer(pair.chosen)) for pair in chosen))


def system_prompt(dataset: str, override: str | None = None) -> Prompting:
    """The system-prompt baseline: ``override`` when given, else the dataset's default behaviour
    description (:attr:`steerlab.data.registry.DatasetInfo.behaviour`)."""
    if override is not None:
        if not override.strip():
            raise ValueError("the system prompt is empty")
        return Prompting(system=override)
    info = DATASETS.get(dataset)
    if info is None or info.behaviour is None:
        known = ", ".join(name for name, entry in DATASETS.items() if entry.behaviour)
        raise ValueError(
            f"dataset '{dataset}' has no default behaviour description: pass the system prompt "
            f"to use (override=...). Datasets with a default: {known}"
        )
    return Prompting(system=info.behaviour)


def context_limit(model: ModelHandle) -> int:
    """Tokens the model takes at most (:attr:`ModelHandle.context`); an error when unknown."""
    if model.context is None:
        raise ValueError(
            f"{model.name}: neither its config nor its tokenizer gives a context length")
    return model.context


Evaluated = MCItem | PreferencePair | str
"""An evaluated item: multiple choice, an A/B or free-text pair, or a prompt to answer freely."""


def _texts(item: Evaluated) -> list[tuple[str, str]]:
    """The (prompt, completion) sequences an item is scored on; a bare prompt has none yet."""
    if isinstance(item, MCItem):
        return [(item.question, choice) for choice in item.choices]
    if isinstance(item, PreferencePair):
        return [(item.prompt, item.chosen), (item.prompt, item.rejected)]
    return [(item, "")]


@dataclass(frozen=True)
class ShotFit:
    """Which k-shot prompts fit the model's context, and where the context cut the list."""

    context: int
    """Tokens the model takes (:func:`context_limit`)."""
    tokens: dict[int, int]
    """Tokens the longest evaluated sequence needs behind k shots (plus the reserve), for every
    k checked: those that fit and the first that did not."""
    fits: tuple[int, ...]
    cut: int | None
    """The smallest k that did not fit (every larger k does not either); None: all fit."""

    def describe(self) -> str:
        """One line: the ks that fit, and the cut with its token count."""
        fit = ", ".join(f"{k} ({self.tokens[k]})" for k in self.fits) or "none"
        text = f"context {self.context} tokens; fit: {fit}"
        if self.cut is not None:
            text += f"; cut at k={self.cut}: needs {self.tokens[self.cut]} tokens"
        return text


def max_shots(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    ks: Sequence[int],
    evaluated: Sequence[Evaluated],
    *,
    seed: int = 0,
    reserve_tokens: int = 0,
) -> ShotFit:
    """Which ``ks`` fit the context: the longest evaluated prompt + completion (by its zero-shot
    length) behind the :func:`kshot` shots, plus ``reserve_tokens`` (e.g. the new tokens of
    open-ended generation). Shots are nested, so checking stops at the first k that is cut."""
    texts = [text for item in evaluated for text in _texts(item)]
    if not texts:
        raise ValueError("max_shots needs the evaluated items, to know the longest one")
    plain = replace(model, preamble=())
    lengths = [len(seq.ids) for seq in encode(plain, *zip(*texts))]
    prompt, completion = texts[max(range(len(texts)), key=lengths.__getitem__)]
    limit = context_limit(model)
    tokens: dict[int, int] = {}
    fits: list[int] = []
    for k in sorted(set(ks)):
        shots = prompted(model, kshot(pairs, k, seed))
        tokens[k] = len(encode(shots, [prompt], [completion])[0].ids) + reserve_tokens
        if tokens[k] > limit:
            return ShotFit(limit, tokens, tuple(fits), k)
        fits.append(k)
    return ShotFit(limit, tokens, tuple(fits), None)
