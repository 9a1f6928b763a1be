"""1-4 ratings: records per item × arm, summaries with intervals, and the mean's posterior."""

import math

import numpy as np
import pytest
from scipy import stats
from tiny import generation_records

from steerlab.analysis.run_analysis import analyze, write_analysis
from steerlab.evaluation.judges.protocol import Rating
from steerlab.evaluation.judges.verdicts import rate_answers, summarize_ratings
from steerlab.stats import mean_interval


def test_mean_interval_is_the_student_t_posterior():
    values = [1, 2, 2, 3, 4, 4, 4, 3]
    estimate = mean_interval(values, level=0.9)
    n, mean, sd = len(values), np.mean(values), np.std(values, ddof=1)
    low, high = stats.t.interval(0.9, n - 1, loc=mean, scale=sd / math.sqrt(n))
    assert (estimate.n, estimate.mean) == (n, pytest.approx(mean))
    assert (estimate.lower, estimate.upper) == (pytest.approx(low), pytest.approx(high))
    assert estimate.prob_positive == pytest.approx(stats.t.cdf(mean / (sd / math.sqrt(n)), n - 1))
    assert mean_interval([-1, -2, -1]).prob_positive < 0.05


def test_mean_interval_edge_cases():
    single = mean_interval([3])
    assert single.mean == 3 and (single.lower, single.upper) == (-math.inf, math.inf)
    assert math.isnan(single.prob_positive)
    flat = mean_interval([2, 2, 2])
    assert (flat.lower, flat.upper, flat.prob_positive) == (2, 2, 1.0)
    assert mean_interval([0, 0]).prob_positive == 0.5
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])
    with pytest.raises(ValueError, match="level"):
        mean_interval([1, 2], level=1.5)


class TableRater:
    """Rates by a fixed table of answer → score (None: an unreadable reply)."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def rate(self, items):
        return [
            Rating(self.table[answer], {"reply": str(self.table[answer])}) for _, answer in items
        ]


def test_ratings_summaries_pair_items_and_count_unreadable():
    arm = ["a0", "a1", "a2", "a3"]
    base = ["b0", "b1", "b2", "b3"]
    table = {"a0": 4, "a1": 3, "a2": None, "a3": 4, "b0": 1, "b1": 2, "b2": 2, "b3": None}
    rated = rate_answers(generation_records(arm, base), TableRater(table))
    assert len(rated) == 8 and {r["task"] for r in rated} == {"rating"}
    first = rated[0]
    assert (first["arm"], first["item_id"], first["rating"], first["judge"]) == (
        "steered+4",
        "q0",
        4,
        "table",
    )
    assert first["arm_setting"]["multiplier"] == 4.0 and first["details"] == {"reply": "4"}
    summaries = {s.arm: s for s in summarize_ratings(rated)}
    steered, unsteered = summaries["steered+4"], summaries["unsteered"]
    assert (steered.n, steered.unreadable, steered.mean.mean) == (4, 1, pytest.approx(11 / 3))
    assert (unsteered.n, unsteered.unreadable, unsteered.mean.mean) == (4, 1, pytest.approx(5 / 3))
    assert steered.difference.n == 2 and steered.difference.mean == pytest.approx(
        ((4 - 1) + (3 - 2)) / 2
    )
    assert unsteered.difference is None


def test_rate_answers_refuses_duplicates_and_nothing_to_rate():
    records = generation_records(["a"], ["b"])
    with pytest.raises(ValueError, match="two records for item 'q0'"):
        rate_answers(records + records[:1], TableRater({"a": 1, "b": 1}))
    with pytest.raises(ValueError, match=r"no generation records of arms \['other'\]"):
        rate_answers(records, TableRater({}), arms=["other"])


def test_analysis_shows_ratings_from_records_alone(tmp_path):
    table = {"a0": 4, "a1": 3, "b0": 1, "b1": None}
    rated = rate_answers(generation_records(["a0", "a1"], ["b0", "b1"]), TableRater(table))
    found = analyze(rated)
    assert [(r.arm, r.n, r.unreadable) for r in found.ratings] == [
        ("steered+4", 2, 0), ("unsteered", 2, 1)]
    text = write_analysis(tmp_path, rated).read_text()
    assert "## Ratings 1-4" in text and "3.50 [" in text and "+3.000 [-inf, +inf]" in text
