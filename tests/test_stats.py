import numpy as np
import pytest
from scipy import stats

from steerlab.stats import (
    PairedTable,
    minimum_detectable_effect,
    paired_advantage,
    paired_table_from_records,
    wilson_interval,
    win_rate_test,
)

TABLE = PairedTable(both_right=100, arm_only=40, base_only=25, both_wrong=91)


def test_table_counts_the_four_cells():
    arm = [True, True, False, False, True]
    base = [True, False, True, False, False]
    table = PairedTable.from_outcomes(arm, base)
    assert table.cells == (1, 2, 1, 1)
    assert table.n == 5 and table.discordance == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="length"):
        PairedTable.from_outcomes(arm, base[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        PairedTable(1, -1, 0, 0)


def records(outcomes: dict[str, bool]) -> list[dict]:
    return [{"item_id": i, "multiplier": 1.0, "correct": c} for i, c in outcomes.items()]


def test_table_from_records_pairs_by_item_id():
    arm = records({"a": True, "b": True, "c": False, "d": True})
    base = records({"d": True, "c": True, "b": False, "a": False})  # other order
    assert paired_table_from_records(arm, base).cells == (1, 2, 1, 0)
    with pytest.raises(ValueError, match=r"1 only in arm \['d'\], 1 only in base \['e'\]"):
        paired_table_from_records(arm, base[1:] + records({"e": True}))
    with pytest.raises(ValueError, match="base arm has more than one record for item 'a'"):
        paired_table_from_records(arm, base + records({"a": True}))
    with pytest.raises(TypeError, match="not a boolean"):
        paired_table_from_records(arm, base[:-1] + records({"a": None}))


def test_posterior_matches_dirichlet_closed_forms():
    result = paired_advantage(TABLE)
    alpha = np.array(TABLE.cells) + 1.0
    assert result.mean == pytest.approx((alpha[1] - alpha[2]) / alpha.sum(), abs=1e-12)
    # An independent Monte Carlo check of the interval and of the exact P(advantage > 0).
    samples = np.random.default_rng(123).dirichlet(alpha, size=400_000)
    advantage = samples[:, 1] - samples[:, 2]
    assert result.prob_positive == pytest.approx(np.mean(advantage > 0), abs=3e-3)
    expected = np.quantile(advantage, [0.05, 0.95])
    assert [result.lower, result.upper] == pytest.approx(expected, abs=3e-3)
    # Dirichlet variance of θ1 − θ2, and the interval is about ±1.645 sd wide at n = 256.
    a0 = alpha.sum()
    var = (alpha[1] * (a0 - alpha[1]) + alpha[2] * (a0 - alpha[2]) + 2 * alpha[1] * alpha[2]) / (
        a0**2 * (a0 + 1)
    )
    assert result.upper - result.lower == pytest.approx(2 * 1.6449 * np.sqrt(var), rel=0.02)
    assert paired_advantage(TABLE) == result  # seeded: reproducible
    assert "+0.058" in str(result) and "Dirichlet(1,1,1,1)" in str(result)


def test_prior_alone_is_symmetric_and_prior_is_validated():
    empty = paired_advantage(PairedTable(0, 0, 0, 0))
    assert empty.mean == 0 and empty.prob_positive == pytest.approx(0.5)
    assert empty.lower == pytest.approx(-empty.upper, abs=0.01)
    informed = paired_advantage(PairedTable(0, 0, 0, 0), prior=(1, 3, 1, 1))
    assert informed.mean == pytest.approx(2 / 6) and informed.prob_positive > 0.5
    with pytest.raises(ValueError, match="four positive"):
        paired_advantage(TABLE, prior=(1, 0, 1, 1))


def test_credible_interval_and_probability_are_calibrated():
    """Tables drawn from the prior: the 90% interval covers the truth 90% of the time, and
    P(advantage > 0) is right as often as it says."""
    rng = np.random.default_rng(7)
    covered, probs, positive = [], [], []
    for _ in range(1000):
        theta = rng.dirichlet(np.ones(4))
        truth = theta[1] - theta[2]
        result = paired_advantage(PairedTable(*rng.multinomial(30, theta)), draws=4000)
        covered.append(result.lower <= truth <= result.upper)
        probs.append(result.prob_positive)
        positive.append(truth > 0)
    assert np.mean(covered) == pytest.approx(0.90, abs=0.03)
    probs, positive = np.array(probs), np.array(positive)
    for band in (probs < 0.5, probs >= 0.5):
        assert np.mean(positive[band]) == pytest.approx(np.mean(probs[band]), abs=0.05)


def wilson_closed_form(k, n, level):
    z = stats.norm.isf((1 - level) / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize(
    "k,n,level", [(0, 10, 0.95), (3, 10, 0.9), (144, 256, 0.95), (256, 256, 0.99)]
)
def test_wilson_interval_matches_closed_form(k, n, level):
    result = wilson_interval(k, n, level)
    assert (result.lower, result.upper) == pytest.approx(wilson_closed_form(k, n, level), abs=1e-12)
    assert result.estimate == k / n and result.lower <= result.estimate <= result.upper
    assert f"{k}/{n}" in str(result)


def test_wilson_interval_rejects_no_observations():
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)


def test_win_rate_counts_ties_half_and_z_matches_normal():
    result = win_rate_test(wins=58, ties=20, losses=22)
    assert result.rate == pytest.approx((58 + 10) / 100)
    # The win rate over its null standard error given the tie share.
    null_se = np.sqrt((1 - 20 / 100) / (4 * 100))
    assert result.z == pytest.approx((result.rate - 0.5) / null_se)
    assert result.p_value == pytest.approx(stats.norm.sf(result.z))
    # The normal approximation of the exact sign test.
    exact = stats.binomtest(58, 80, alternative="greater").pvalue
    assert result.p_value == pytest.approx(exact, abs=2e-4)
    assert win_rate_test(10, 0, 30).p_value > 0.99  # one-sided: losing is no evidence
    with pytest.raises(ValueError, match="every item is a tie"):
        win_rate_test(0, 5, 0)


def test_win_rate_test_holds_its_level_under_the_null():
    rng = np.random.default_rng(3)
    counts = rng.multinomial(200, [0.3, 0.4, 0.3], size=4000)
    rejected = [win_rate_test(*c).p_value < 0.05 for c in counts]
    assert np.mean(rejected) == pytest.approx(0.05, abs=0.012)


def test_256_items_need_about_a_ten_point_gain():
    mde = minimum_detectable_effect(256)
    assert 0.09 < mde.effect < 0.12
    assert "10.9 points" in str(mde)
    # Two-sided at discordance 0.5 is the two-independent-proportions textbook figure.
    two_sided = minimum_detectable_effect(256, alternative="two-sided").effect
    textbook = (stats.norm.isf(0.025) + stats.norm.ppf(0.8)) * np.sqrt(2 * 0.25 / 256)
    assert two_sided == pytest.approx(textbook, abs=0.002)
    # Correlated arms disagree less and detect smaller gains; 4× the items halve the effect.
    assert minimum_detectable_effect(256, discordance=0.2).effect < 0.075
    assert minimum_detectable_effect(1024).effect == pytest.approx(mde.effect / 2, rel=0.03)
    with pytest.raises(ValueError, match="cannot reach"):
        minimum_detectable_effect(4)


def test_simulated_power_at_the_mde_is_the_target():
    """At δ = MDE, McNemar's z test (win_rate_test with concordant items as ties) and the
    Bayesian rule P(advantage > 0) > 0.95 both detect the gain about 80% of the time."""
    mde = minimum_detectable_effect(256)
    d, delta = mde.discordance, mde.effect
    cells = [(1 - d) / 2, (d + delta) / 2, (d - delta) / 2, (1 - d) / 2]
    tables = np.random.default_rng(11).multinomial(256, cells, size=3000)
    z_power = np.mean([win_rate_test(t[1], t[0] + t[3], t[2]).p_value < 0.05 for t in tables])
    assert z_power == pytest.approx(0.8, abs=0.03)
    bayes = [paired_advantage(PairedTable(*t), draws=10).prob_positive > 0.95
             for t in tables[:1000]]
    assert np.mean(bayes) == pytest.approx(0.8, abs=0.05)
