"""Statistics that say when a steering gain is real, computed from plain counts or outcomes.

- :func:`paired_advantage`: posterior of a paired accuracy gain (same items, two arms) under a
  Dirichlet prior over the paired 2×2 table, with a credible interval and P(gain > 0).
- :func:`wilson_interval`: the Wilson score interval of one proportion.
- :func:`win_rate_test`: head-to-head win rate with ties and its one-sided z test.
- :func:`minimum_detectable_effect`: the smallest paired gain a dataset of n items detects.
- :func:`mean_interval`: a mean (e.g. of 1-4 ratings, or of paired differences) with its
  Student-t credible interval and P(mean > 0).

The gain and the z test both live on the discordant items: an item both arms get right (or
both wrong) says nothing about which arm is better.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

from steerlab.records import Record

Alternative = Literal["greater", "two-sided"]


@dataclass(frozen=True)
class PairedTable:
    """Paired correctness of two arms (e.g. steered and unsteered) on the same items.

    The four cells of the 2×2 table, in the order the Dirichlet prior uses: both right, arm
    right and base wrong, arm wrong and base right, both wrong.
    """

    both_right: int
    arm_only: int
    base_only: int
    both_wrong: int

    def __post_init__(self) -> None:
        if min(self.cells) < 0:
            raise ValueError(f"cell counts must be non-negative, got {self.cells}")

    @classmethod
    def from_outcomes(cls, arm: Sequence[bool], base: Sequence[bool]) -> PairedTable:
        """Count the cells from per-item correctness, ``arm[i]`` and ``base[i]`` on item i."""
        if len(arm) != len(base):
            raise ValueError(f"paired outcomes differ in length: {len(arm)} arm, {len(base)} base")
        pairs = list(zip(map(bool, arm), map(bool, base)))
        return cls(
            both_right=pairs.count((True, True)),
            arm_only=pairs.count((True, False)),
            base_only=pairs.count((False, True)),
            both_wrong=pairs.count((False, False)),
        )

    @property
    def cells(self) -> tuple[int, int, int, int]:
        return (self.both_right, self.arm_only, self.base_only, self.both_wrong)

    @property
    def n(self) -> int:
        return sum(self.cells)

    @property
    def discordance(self) -> float:
        """Share of items on which the arms disagree (see :func:`minimum_detectable_effect`)."""
        return (self.arm_only + self.base_only) / self.n

    def __str__(self) -> str:
        return (
            f"n = {self.n}: both right {self.both_right}, arm only {self.arm_only}, "
            f"base only {self.base_only}, both wrong {self.both_wrong}"
        )


def _index_outcomes(records: Iterable[Record], label: str, field: str) -> dict[str, bool]:
    """``item_id`` → the boolean ``field`` of one arm's records; each item exactly once."""
    outcomes: dict[str, bool] = {}
    for record in records:
        item_id = record["item_id"]
        if item_id in outcomes:
            raise ValueError(
                f"{label} arm has more than one record for item {item_id!r}: pass the records of "
                "one setting (one vector, layer set, norm ratio and multiplier) per arm"
            )
        value = record[field]
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{label} arm, item {item_id!r}: {field!r} is {value!r}, not a boolean")
        outcomes[item_id] = bool(value)
    return outcomes


def paired_table_from_records(
    arm: Iterable[Record], base: Iterable[Record], field: str = "correct"
) -> PairedTable:
    """The paired table of two arms' records (as written by evaluation), paired by ``item_id``.

    Every item must appear exactly once in each arm; unmatched or repeated ids are an error,
    because silently dropping items would bias the contrast.
    """
    arm_by_id = _index_outcomes(arm, "arm", field)
    base_by_id = _index_outcomes(base, "base", field)
    only_arm = sorted(arm_by_id.keys() - base_by_id.keys())
    only_base = sorted(base_by_id.keys() - arm_by_id.keys())
    if only_arm or only_base:
        raise ValueError(
            f"arms do not cover the same items: {len(only_arm)} only in arm {only_arm[:5]}, "
            f"{len(only_base)} only in base {only_base[:5]}"
        )
    ids = sorted(arm_by_id)
    return PairedTable.from_outcomes([arm_by_id[i] for i in ids], [base_by_id[i] for i in ids])


@dataclass(frozen=True)
class PairedAdvantage:
    """Posterior of the advantage P(arm right, base wrong) − P(arm wrong, base right)."""

    table: PairedTable
    prior: tuple[float, float, float, float]
    level: float
    mean: float
    lower: float
    upper: float
    prob_positive: float
    draws: int
    seed: int

    def __str__(self) -> str:
        prior = ",".join(f"{a:g}" for a in self.prior)
        return (
            f"advantage {self.mean:+.3f} ({self.level:.0%} credible interval {self.lower:+.3f} to "
            f"{self.upper:+.3f}), P(advantage > 0) = {self.prob_positive:.3f}; {self.table}; "
            f"Dirichlet({prior}) prior"
        )


def paired_advantage(
    table: PairedTable,
    *,
    prior: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    level: float = 0.9,
    draws: int = 100_000,
    seed: int = 0,
) -> PairedAdvantage:
    """Posterior of the paired accuracy gain of ``arm`` over ``base``.

    The cell probabilities of the table get a Dirichlet ``prior`` (cells in
    :class:`PairedTable` order); the default Dirichlet(1,1,1,1) is uniform over all tables,
    worth four pseudo-items. The posterior is Dirichlet(prior + counts), so the mean is exact:
    (α_arm_only − α_base_only) / Σα. P(advantage > 0) is exact too: θ_arm_only / (θ_arm_only +
    θ_base_only) is Beta(α_arm_only, α_base_only), and the advantage is positive when it
    exceeds 1/2. The equal-tailed ``level`` interval is read off ``draws`` posterior samples of
    a numpy generator seeded with ``seed``.
    """
    if len(prior) != 4 or min(prior) <= 0:
        raise ValueError(f"prior must be four positive concentrations, got {prior}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    alpha = np.asarray(table.cells, dtype=float) + np.asarray(prior, dtype=float)
    samples = np.random.default_rng(seed).dirichlet(alpha, size=draws)
    advantage = samples[:, 1] - samples[:, 2]
    lower, upper = np.quantile(advantage, [(1 - level) / 2, (1 + level) / 2])
    return PairedAdvantage(
        table=table,
        prior=tuple(float(a) for a in prior),
        level=level,
        mean=float((alpha[1] - alpha[2]) / alpha.sum()),
        lower=float(lower),
        upper=float(upper),
        prob_positive=float(stats.beta(alpha[1], alpha[2]).sf(0.5)),
        draws=draws,
        seed=seed,
    )


@dataclass(frozen=True)
class Proportion:
    """A proportion with its Wilson score interval."""

    successes: int
    n: int
    level: float
    lower: float
    upper: float

    @property
    def estimate(self) -> float:
        return self.successes / self.n

    def __str__(self) -> str:
        return (
            f"{self.estimate:.3f} ({self.successes}/{self.n}; {self.level:.0%} Wilson interval "
            f"{self.lower:.3f} to {self.upper:.3f})"
        )


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Proportion:
    """The Wilson score interval (no continuity correction) of ``successes`` out of ``n``.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1.
    """
    if n <= 0:
        raise ValueError(f"a proportion needs at least one observation, got n = {n}")
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return Proportion(successes, n, level, float(ci.low), float(ci.high))


def tie_half_rate(wins: int, ties: int, losses: int) -> float:
    """(wins + ties / 2) / n: the head-to-head win rate, a tie counting as half a win."""
    return (wins + ties / 2) / (wins + ties + losses)


@dataclass(frozen=True)
class WinRate:
    """Head-to-head result of arm against base: the win rate with ties and a one-sided z test."""

    wins: int
    ties: int
    losses: int
    z: float
    p_value: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        """See :func:`tie_half_rate`."""
        return tie_half_rate(self.wins, self.ties, self.losses)

    def __str__(self) -> str:
        return (
            f"win rate {self.rate:.3f} ({self.wins} wins, {self.ties} ties, {self.losses} losses; "
            f"ties count half), one-sided z = {self.z:.2f}, p = {self.p_value:.4f}"
        )


def win_rate_test(wins: int, ties: int, losses: int) -> WinRate:
    """Is the arm preferred more often than not? One-sided z test of the win rate against 1/2.

    The reported rate counts a tie as half a win. The test is the normal approximation of the
    sign test, z = (wins − losses) / √(wins + losses): the win rate's distance from 1/2 over
    its null standard error given the observed ties. Ties therefore move neither the rate
    away from 1/2 nor the evidence. (For paired correctness, with concordant items as ties,
    this is McNemar's test, the one :func:`minimum_detectable_effect` plans for.)
    """
    if min(wins, ties, losses) < 0:
        raise ValueError(f"counts must be non-negative, got {wins}, {ties}, {losses}")
    decided = wins + losses
    if decided == 0:
        raise ValueError("no decided comparisons (every item is a tie): nothing to test")
    z = (wins - losses) / np.sqrt(decided)
    return WinRate(wins, ties, losses, float(z), float(stats.norm.sf(z)))


@dataclass(frozen=True)
class MeanEstimate:
    """A mean with its credible interval and the posterior probability that it is positive."""

    n: int
    mean: float
    sd: float
    level: float
    lower: float
    upper: float
    prob_positive: float

    def __str__(self) -> str:
        return (
            f"{self.mean:.3f} ({self.level:.0%} credible interval {self.lower:.3f} to "
            f"{self.upper:.3f}; n = {self.n}, sd = {self.sd:.3f})"
        )

    def cell(self, spec: str = ".2f") -> str:
        """'mean [lower, upper]' in the format ``spec``, for tables."""
        return f"{self.mean:{spec}} [{self.lower:{spec}}, {self.upper:{spec}}]"


def mean_interval(values: Sequence[float], level: float = 0.9) -> MeanEstimate:
    """Posterior of the mean of ``values`` under a normal model with the reference prior
    p(μ, σ) ∝ 1/σ: (μ − mean) / (sd / √n) is Student t with n − 1 degrees of freedom.

    The equal-tailed interval is then the classical t interval. One value says nothing about
    the spread: the interval is unbounded and P(mean > 0) undefined (nan). Values without
    spread give a point interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("a mean needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return MeanEstimate(1, mean, float("nan"), level, -np.inf, np.inf, float("nan"))
    sd = float(x.std(ddof=1))
    if sd == 0:
        return MeanEstimate(n, mean, 0.0, level, mean, mean, float(np.sign(mean) + 1) / 2)
    posterior = stats.t(df=n - 1, loc=mean, scale=sd / np.sqrt(n))
    lower, upper = posterior.ppf([(1 - level) / 2, (1 + level) / 2])
    return MeanEstimate(n, mean, sd, level, float(lower), float(upper), float(posterior.sf(0)))


@dataclass(frozen=True)
class DetectableEffect:
    """The smallest paired accuracy gain that ``n`` items detect with the given power."""

    n: int
    effect: float
    power: float
    alpha: float
    alternative: Alternative
    discordance: float

    def __str__(self) -> str:
        sided = "one-sided" if self.alternative == "greater" else "two-sided"
        return (
            f"{self.n} paired items detect a gain of {self.effect:.3f} ({100 * self.effect:.1f} "
            f"points) with {self.power:.0%} power ({sided} α = {self.alpha:g}, discordance "
            f"{self.discordance:.2f})"
        )


def minimum_detectable_effect(
    n: int,
    *,
    power: float = 0.8,
    alpha: float = 0.05,
    alternative: Alternative = "greater",
    discordance: float = 0.5,
) -> DetectableEffect:
    """The gain δ = P(arm only) − P(base only) that McNemar's z test detects with ``power``.

    Solves Connor's (1987) sample-size equation for the paired design,
    √n·δ = z_α·√d + z_power·√(d − δ²), where d is the ``discordance`` (share of items on
    which the arms disagree). Defaults: one-sided α = 0.05 (the question is "did steering
    help?", and a 90% credible interval excluding 0 is the same bar), power 0.8, and d = 0.5:
    two arms at 50% accuracy whose errors are independent, the worst case — it equals the
    two-independent-proportions calculation, and correlated arms (the usual case) disagree
    less and detect smaller gains. Pass a pilot's :attr:`PairedTable.discordance` for a sharper
    figure. At n = 256 the defaults give ≈ 0.11, the post-mortem's "≈10 points".
    """
    if not 0 < discordance <= 1:
        raise ValueError(f"discordance must be in (0, 1], got {discordance}")
    if not (0 < alpha < 0.5 and 0.5 <= power < 1):
        raise ValueError(f"need 0 < alpha < 0.5 and 0.5 <= power < 1, got {alpha}, {power}")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    z_alpha = stats.norm.isf(alpha if alternative == "greater" else alpha / 2)
    z_power = stats.norm.ppf(power)

    def shortfall(delta: float) -> float:
        return np.sqrt(n) * delta - z_alpha * np.sqrt(discordance) - z_power * np.sqrt(
            discordance - delta**2
        )

    if shortfall(discordance) < 0:
        raise ValueError(
            f"{n} items cannot reach {power:.0%} power at discordance {discordance}: even a gain "
            "equal to the discordance is not detected"
        )
    effect = optimize.brentq(shortfall, 0.0, discordance)
    return DetectableEffect(n, float(effect), power, alpha, alternative, discordance)
