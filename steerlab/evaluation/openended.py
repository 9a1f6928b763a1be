"""Open-ended generation: free answers to questions, per arm (unsteered or steered).

Generation and judging are separate stages. This module writes one record per question × arm
as soon as its batch is done, holding the exact prompt, the answer, the steering setting, the
decoding settings and the question's reference answers, so judges, human raters and refusal
detectors work from the records alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from steerlab.data.files import (
    DataError,
    OpenQuestion,
    as_prompts,
    question_from_row,
    repeated_ids,
    split_rows,
)
from steerlab.data.registry import DATASETS, DatasetUnavailable, load_dataset
from steerlab.evaluation.likelihood import Sweep
from steerlab.model.generation import generate
from steerlab.model.handle import ModelHandle
from steerlab.progress import track
from steerlab.records import Record, RecordWriter, record_key
from steerlab.steering.setting import STEERED, SteeringSetting

if TYPE_CHECKING:
    from steerlab.engine.vllm_engine import VllmEngine

TASK = "generation"
BASE_ARM = "unsteered"


def load_questions(
    spec: str | Path,
    split: str | None = None,
    *,
    source: str | Path | None = None,
    question: str = "question",
) -> list[OpenQuestion]:
    """Questions to answer freely, by name or file.

    Names: any registered ``prompts`` dataset (``steerlab data list``: ``truthfulqa-open`` with
    its reference answers, the bundled ``harmless`` requests, ``advbench``, …), with ids
    ``<name>:<row>`` unless the rows carry their own. A JSONL or CSV file gives its
    ``question`` field and, when present, ``correct_answers`` / ``incorrect_answers``; other
    fields go to ``meta``. A bad row raises :class:`DataError` naming file, line and field.
    """
    name = str(spec)
    info = DATASETS.get(name)
    if info is None:
        path = Path(spec)
        if not path.is_file():
            raise DatasetUnavailable(f"'{spec}' is neither a registered prompts dataset (see "
                                     "`steerlab data list`) nor a file")
        rows = list(split_rows(path, split))
        present = rows[0][2] if rows else {}
        convert = partial(
            question_from_row, question=question,
            correct=[k for k in ("correct_answers",) if k in present],
            incorrect=[k for k in ("incorrect_answers",) if k in present],
        )
        return [convert(row, row_id, where) for where, row_id, row in rows]
    if info.kind != "prompts":
        raise ValueError(f"{name} is a '{info.kind}' dataset, not questions to answer freely")
    questions = []
    for index, row in enumerate(info.rows_of(split, source)):
        if row.error is not None:
            raise DataError(row.error)
        record = row.record
        questions.append(record if isinstance(record, OpenQuestion)
                         else OpenQuestion(record, f"{name}:{index}"))
    return questions


def load_prompts(spec: str | Path, split: str | None = None) -> list[str]:
    """Prompt texts of any dataset or file (see :func:`~steerlab.data.files.as_prompts`)."""
    return as_prompts(load_dataset(spec, split))


@dataclass(frozen=True)
class Arm:
    """One generation setting: a label and the steering it applies (none for the base arm)."""

    label: str
    setting: SteeringSetting | None = None

    def steering(self, model: ModelHandle) -> AbstractContextManager:
        """The context that applies this arm's steering to ``model`` (nothing for the base)."""
        if self.setting is None:
            return nullcontext()
        return self.setting.apply(model)

    def describe(self) -> Record:
        """The fields every record carries about this arm's setting."""
        multiplier = self.setting.multiplier if self.setting else 0.0
        sweep = Sweep(self.setting, [multiplier])
        return {"arm": self.label, "multiplier": float(multiplier), **sweep.describe()}


def steering_arms(setting: SteeringSetting | None, multipliers: Sequence[float]) -> list[Arm]:
    """The unsteered arm, then ``setting`` at each non-zero multiplier, labelled ``steered+4``
    etc. (``ablated+1`` for an ablation of strength 1, ``rotated+30`` for a 30° turn)."""
    arms = [Arm(BASE_ARM)]
    if setting is not None:
        name = STEERED[setting.intervention]
        arms += [Arm(f"{name}{m:+g}", setting.at(m)) for m in dict.fromkeys(multipliers) if m != 0]
    return arms


def generate_answers(
    model: ModelHandle,
    questions: Sequence[OpenQuestion],
    arms: Sequence[Arm],
    *,
    dataset: str = "",
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    writer: RecordWriter | None = None,
    progress: bool = True,
    engine: VllmEngine | None = None,
) -> list[Record]:
    """Answer every question under every arm; one record per question × arm.

    Within each batch of ``batch_size`` questions every arm runs before the next batch starts,
    so an interrupted run leaves whole question pairs behind. Sampling seeds torch with
    ``seed`` + the batch number (both recorded), the same for every arm: arms then differ only
    by their steering. Greedy decoding ignores the seed. With a ``writer`` on a file that holds
    some of these records already, a batch whose records are all there is not generated again
    (the run resumes); the records it returns are then those on file. With a vLLM ``engine``
    (the records say ``"engine": "vllm"``) a batch's arms are generated together, each request
    with its arm's steering; a sampled request is seeded with the same number.
    """
    labels = [arm.label for arm in arms]
    if not arms or len(set(labels)) != len(labels):
        raise ValueError(f"arms need distinct labels, got {labels}")
    if not questions:
        raise ValueError("nothing to generate: no questions")
    repeated = repeated_ids([q.id for q in questions])
    if repeated:
        raise ValueError(f"question ids must be unique (records are paired by them); repeated "
                         f"in {dataset or 'the questions'}: {repeated[:5]}")
    common = {
        "task": TASK,
        "dataset": dataset,
        "model": model.name, **model.placement,
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature if do_sample else None,
        "seed": seed,
        "batch_size": batch_size,
        **({"engine": "vllm"} if engine is not None else {}),
    }
    prompts = [model.format_prompt(q.question) for q in questions]
    records: list[Record] = []
    starts = range(0, len(questions), batch_size)
    for batch, start in enumerate(track(starts, len(starts), f"generating {len(arms)} arm(s)",
                                        progress)):
        chunk = slice(start, start + batch_size)
        pending = []
        for arm in arms:
            setting = {**common, **arm.describe(), "batch": batch}
            done = [
                writer.get(record_key({**setting, "item_id": q.id})) if writer is not None else None
                for q in questions[chunk]
            ]
            if all(r is not None for r in done):  # resumed: this batch of this arm is on file
                records.extend(r for r in done if r is not None)
            else:
                pending.append((arm, setting, done))
        decoding = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, seed=seed + batch)
        if engine is not None:
            answers = iter(_engine_answers(engine, model, prompts[chunk],
                                           [a for a, *_ in pending], **decoding))
        else:  # one arm at a time, each written before the next starts
            answers = (_answers(model, prompts[chunk], arm, batch_size, **decoding)
                       for arm, *_ in pending)
        for (arm, setting, done), arm_answers in zip(pending, answers):
            for question, prompt, answer, previous in zip(questions[chunk], prompts[chunk],
                                                          arm_answers, done):
                record = {
                    **setting,
                    "item_id": question.id,
                    "question": question.question,
                    "prompt": prompt,
                    "answer": answer,
                    "correct_answers": list(question.correct),
                    "incorrect_answers": list(question.incorrect),
                    "meta": question.meta,
                }
                records.append(record)
                if writer is not None and previous is None:
                    writer.write(record)
    return records


def _answers(model: ModelHandle, prompts: list[str], arm: Arm, batch_size: int, *,
             max_new_tokens: int, do_sample: bool, temperature: float, seed: int) -> list[str]:
    """One arm's answers to formatted prompts through transformers (the whole batch under the
    arm's steering, so its answers are an uninterrupted run's)."""
    with arm.steering(model):
        return generate(model, prompts, max_new_tokens, batch_size=batch_size,
                        do_sample=do_sample, temperature=temperature, seed=seed,
                        format_prompts=False, progress=False)


def _engine_answers(engine: VllmEngine, model: ModelHandle, prompts: list[str],
                    arms: Sequence[Arm], *, max_new_tokens: int, do_sample: bool,
                    temperature: float, seed: int) -> list[list[str]]:
    """Every arm's answers to formatted prompts, all submitted to the vLLM engine at once."""
    if not arms:
        return []
    rows = [model.encode_prompt(p) for p in prompts]
    results = engine.generate(rows * len(arms), [a.setting for a in arms for _ in rows],
                              max_tokens=max_new_tokens,
                              temperature=temperature if do_sample else 0.0,
                              seed=seed if do_sample else None)
    texts = [model.tokenizer.decode(r.token_ids, skip_special_tokens=True).strip()
             for r in results]
    return [texts[i * len(rows):(i + 1) * len(rows)] for i in range(len(arms))]
