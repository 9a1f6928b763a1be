"""What a judge and a rater take and return: the protocols every judge (the reference-similarity
judge, the LLM judge, blinded human ratings) implements, kept apart so each implementation
depends on them alone, not on the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class JudgeError(RuntimeError):
    """A judge could not give its verdicts (e.g. its endpoint was unreachable after retries)."""


@dataclass(frozen=True)
class Comparison:
    """Two answers to one question in the order the judge sees them, with references if any."""

    question: str
    answers: tuple[str, str]
    correct: tuple[str, ...] = ()
    incorrect: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The shown answer a judge prefers (0 first, 1 second, None a tie) and why, as data."""

    preferred: int | None
    details: dict[str, Any] = field(default_factory=dict)


class Judge(Protocol):
    """What every judge offers: a name for the records and a batched comparison."""

    name: str

    def compare(self, comparisons: Sequence[Comparison]) -> list[Verdict]: ...


RATING_SCALE = (1, 4)


@dataclass(frozen=True)
class Rating:
    """How strongly one answer shows the behaviour (1-4), or None when the rater's reply could
    not be read as a rating (``details`` then keeps the raw reply)."""

    score: int | None
    details: dict[str, Any] = field(default_factory=dict)


class Rater(Protocol):
    """What rates single answers: a name for the records and a batched rating."""

    name: str

    def rate(self, items: Sequence[tuple[str, str]]) -> list[Rating]: ...
