"""AxBench's three ratings of a steered answer, asked of an LLM judge (any OpenAI-compatible
endpoint, as :class:`~steerlab.evaluation.judges.llm.LLMJudge`): does the answer show the
concept, does it address the instruction, is it fluent — each 0, 1 or 2 — and their harmonic
mean as the answer's score (0 when any rating is 0, as in AxBench).

The prompts are steerlab's own wording of AxBench's intent. A reply is read as the judge's other
replies are (its first line, one of ``0``/``1``/``2``); an unreadable one leaves that rating
and the answer's score out (recorded with the raw reply and counted, never dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from steerlab.evaluation.judges.llm import LLMJudge, read_choice

CONCEPT_PROMPT = """Concept: {concept}

Text:
{answer}

Does the text incorporate the concept? Judge only whether the concept is there, not the \
text's quality. 0 = the concept is absent, 1 = it is mentioned in passing or only loosely \
related, 2 = the concept is clearly and substantially present. Reply with the number only."""
INSTRUCTION_PROMPT = """Instruction:
{instruction}

Response:
{answer}

Does the response address the instruction? Judge only relevance, not quality or correctness. \
0 = unrelated to the instruction, 1 = partly related, 2 = clearly addresses it. Reply with the \
number only."""
FLUENCY_PROMPT = """Text:
{answer}

Is the text fluent: grammatical, coherent and free of repetition loops? Judge only fluency, \
not content. 0 = not fluent, 1 = somewhat fluent, 2 = fluent. Reply with the number only."""
SCALE = ("0", "1", "2")
ASPECTS = ("concept", "instruction", "fluency")


def harmonic_mean(ratings: Sequence[int]) -> float:
    """AxBench's score: the harmonic mean of the three ratings, 0 when any is 0."""
    if any(r == 0 for r in ratings):
        return 0.0
    return len(ratings) / sum(1 / r for r in ratings)


@dataclass(frozen=True)
class ConceptScores:
    """The three ratings of one answer (None: unreadable), the judge's replies, and the score
    (None when any rating is unreadable)."""

    ratings: dict[str, int | None]
    replies: dict[str, str]

    @property
    def score(self) -> float | None:
        values = list(self.ratings.values())
        if any(v is None for v in values):
            return None
        return harmonic_mean([v for v in values if v is not None])


class ConceptJudge(LLMJudge):
    """Rates answers for a concept, the instruction and fluency on AxBench's 0-2 scale."""

    def prompts(self, concept: str, instruction: str, answer: str) -> dict[str, str]:
        """The three questions asked about one answer."""
        return {"concept": CONCEPT_PROMPT.format(concept=concept, answer=answer),
                "instruction": INSTRUCTION_PROMPT.format(instruction=instruction, answer=answer),
                "fluency": FLUENCY_PROMPT.format(answer=answer)}

    def score(self, concept: str, items: Sequence[tuple[str, str]]) -> list[ConceptScores]:
        """The ratings of each (instruction, answer) for ``concept``, three requests each."""
        asked = [self.prompts(concept, instruction, answer) for instruction, answer in items]
        replies = self.ask([prompt for three in asked for prompt in three.values()])
        scores = []
        for index in range(len(items)):
            mine = dict(zip(ASPECTS, replies[3 * index: 3 * index + 3]))
            ratings = {aspect: None if (choice := read_choice(reply, SCALE)) is None
                       else int(choice) for aspect, reply in mine.items()}
            scores.append(ConceptScores(ratings, mine))
        return scores
