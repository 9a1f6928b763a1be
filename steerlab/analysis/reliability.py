"""Per-input steerability (Tan et al. 2024): does each input move the way the vector says?

An A/B record's behaviour score is the logit difference of the matching over the non-matching
answer, ``logprobs[0] − logprobs[1]``. An input's steerability is the least-squares slope of
that score against the multiplier over a sweep; a negative slope marks an anti-steerable
input. A good mean can hide a wide spread and many anti-steerable inputs: this reports both.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from steerlab.records import GROUP_KEYS, Record

SETTING_KEYS = tuple(k for k in GROUP_KEYS if k != "multiplier")
"""What identifies one sweep: every record grouping key except the multiplier."""

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class Steerability:
    """Steerability of every input of one sweep setting, in logit difference per unit multiplier."""

    setting: dict[str, Any]
    slopes: dict[str, float]
    """item_id → least-squares slope of the behaviour score against the multiplier."""
    mean: float
    std: float
    """Standard deviation of the slopes across these inputs (ddof = 0)."""
    quantiles: dict[float, float]
    anti_steerable: float
    """Fraction of inputs whose slope is negative."""
    pushes_answer: str | None = None
    """The answer the vector raises whatever the behaviour needs, when the inputs split that
    way (see :func:`answer_pushed`): then it steers an answer token, not the behaviour."""

    @property
    def n_inputs(self) -> int:
        return len(self.slopes)

    def __str__(self) -> str:
        s = self.setting
        spread = ", ".join(f"q{100 * q:g} {v:+.3g}" for q, v in self.quantiles.items())
        return (
            f"steerability of {self.n_inputs} inputs ({s['dataset']}, vector {s['vector_id']}, "
            f"layers {s['layers']}, norm ratio {s['norm_ratio']}): mean {self.mean:+.3g}, "
            f"sd {self.std:.3g} per unit multiplier; {spread}; "
            f"anti-steerable {self.anti_steerable:.0%}" + (f"; {self.note()}" if self.note()
                                                          else "")
        )

    def note(self) -> str:
        """What the anti-steerable share means when the vector pushes one answer ("")."""
        if self.pushes_answer is None:
            return ""
        return (f"the anti-steerable inputs are the ones whose behaviour answer is not "
                f"{self.pushes_answer!r}: the vector raises {self.pushes_answer!r} whatever the "
                "behaviour needs (an answer token, not the behaviour)")


SPLIT = 0.9
"""How cleanly the inputs must split by their behaviour answer for :func:`answer_pushed`."""


def answer_pushed(slopes: dict[str, float], answers: dict[str, str]) -> str | None:
    """The answer a vector pushes regardless of the behaviour: when the inputs' behaviour
    answers are two labels (e.g. " Yes" / " No") and at least :data:`SPLIT` of the inputs of
    one label are steerable while that share of the other's are anti-steerable, the vector
    raises the first label everywhere. None otherwise."""
    labels = sorted(set(answers.values()))
    if len(labels) != 2:
        return None
    steerable = {label: [slopes[i] > 0 for i in slopes if answers.get(i) == label]
                 for label in labels}
    for label, other in (labels, labels[::-1]):
        if steerable[label] and steerable[other] and \
                np.mean(steerable[label]) >= SPLIT and np.mean(steerable[other]) <= 1 - SPLIT:
            return label
    return None



def behaviour_score(record: Record) -> float:
    """Logit difference of the behaviour-matching answer over the non-matching one."""
    return record["logprobs"][0] - record["logprobs"][1]


def _item_slope(item_id: str, points: list[tuple[float, float]], setting: dict[str, Any]) -> float:
    multipliers = [m for m, _ in points]
    if len(set(multipliers)) < 2:
        raise ValueError(
            f"item {item_id!r} in setting {setting} has records at {len(set(multipliers))} "
            f"distinct multiplier(s) {sorted(set(multipliers))}: a slope needs at least 2"
        )
    if len(set(multipliers)) < len(multipliers):
        raise ValueError(
            f"item {item_id!r} in setting {setting} has several records at one multiplier "
            f"{sorted(multipliers)}: pass each sweep once (split records by model and positions)"
        )
    return float(stats.linregress(multipliers, [score for _, score in points]).slope)


def steerability(
    records: Iterable[Record], quantiles: Sequence[float] = QUANTILES
) -> list[Steerability]:
    """Steerability summaries of A/B records (as written by ``evaluate_ab``), one per setting.

    Records are grouped by :data:`SETTING_KEYS` (task, dataset, vector, layers, norm ratio),
    then by ``item_id``. Records of other tasks and unsteered records (no vector, so no sweep)
    are skipped. Every item needs at least two distinct multipliers.
    """
    sweeps: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    settings: dict[str, dict[str, Any]] = {}
    answers: dict[str, str] = {}  # item_id → its behaviour-matching answer
    for record in records:
        if record.get("task") != "ab" or record.get("vector_id") is None:
            continue
        setting = {k: record.get(k) for k in SETTING_KEYS}
        key = json.dumps(setting, sort_keys=True)
        settings[key] = setting
        point = (float(record["multiplier"]), behaviour_score(record))
        sweeps[key][record["item_id"]].append(point)
        if record.get("choices"):
            answers[record["item_id"]] = str(record["choices"][0]).strip()
    if not sweeps:
        raise ValueError("no steered A/B records: steerability needs evaluate_ab over a sweep")
    reports = []
    for key in sorted(sweeps):
        setting = settings[key]
        slopes = {item: _item_slope(item, points, setting) for item, points in sweeps[key].items()}
        values = np.array(list(slopes.values()))
        reports.append(
            Steerability(
                setting=setting,
                slopes=slopes,
                mean=float(values.mean()),
                std=float(values.std()),
                quantiles=dict(zip(quantiles, np.quantile(values, quantiles).tolist())),
                anti_steerable=float(np.mean(values < 0)),
                pushes_answer=answer_pushed(slopes, answers),
            )
        )
    return reports


def plot_steerability(report: Steerability, path: str | Path, bins: int = 30) -> Path:
    """Write a PNG histogram of the per-input slopes, marking zero and the mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.hist(list(report.slopes.values()), bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(0, color="grey", lw=1, ls=":", label="0 (anti-steerable to the left)")
    ax.axvline(report.mean, color="tab:red", lw=1.5, label=f"mean {report.mean:+.3g}")
    ax.set_xlabel("steerability (logit difference per unit multiplier)")
    ax.set_ylabel("inputs")
    ax.set_title(
        f"{report.setting['dataset']} (n={report.n_inputs}, "
        f"{report.anti_steerable:.0%} anti-steerable)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
