"""The 2-D composition grid of two vectors (BiPO's composition result), read back from the
likelihood records of :func:`steerlab.evaluation.likelihood.composition_grid` alone: cells,
Markdown tables and heat maps."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from steerlab.analysis.tables import markdown_table
from steerlab.records import Record, summarize


@dataclass(frozen=True)
class GridCell:
    """The mean behaviour score of one dataset at one (first, second) multiplier pair."""

    task: str
    dataset: str
    first: str
    """Id of the vector held fixed in each row of the grid (``composed_with``)."""
    second: str
    """Id of the vector swept along each row."""
    first_multiplier: float
    second_multiplier: float
    n: int
    score: float
    score_se: float


def is_grid_record(record: Record) -> bool:
    """Whether a likelihood record belongs to a composition grid: one vector swept on top of
    one other held fixed."""
    return record.get("task") in ("ab", "mc") and len(record.get("composed_with") or ()) == 1


def grid_cells(records: Iterable[Record]) -> list[GridCell]:
    """One cell per dataset × (first, second) multiplier of the composition grids in ``records``."""
    cells = []
    for row in summarize(filter(is_grid_record, records)):
        (first,) = row["composed_with"]
        cells.append(GridCell(row["task"], row["dataset"] or "", first["vector_id"],
                              row["vector_id"], float(first["multiplier"]),
                              float(row["multiplier"]), row["n"], row["score"], row["score_se"]))
    return sorted(cells, key=lambda c: (c.dataset, c.first, c.second, c.first_multiplier,
                                        c.second_multiplier))


def by_grid(cells: Sequence[GridCell]) -> dict[tuple[str, str, str, str], list[GridCell]]:
    """Cells grouped by grid: task, dataset and the two vectors."""
    groups: dict[tuple[str, str, str, str], list[GridCell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.task, cell.dataset, cell.first, cell.second)].append(cell)
    return groups


def grid_matrix(
    cells: Sequence[GridCell],
) -> tuple[list[float], list[float], list[list[GridCell | None]]]:
    """The cells of one grid as (first multipliers, second multipliers, cell per row × column)."""
    rows = sorted({c.first_multiplier for c in cells})
    columns = sorted({c.second_multiplier for c in cells})
    at = {(c.first_multiplier, c.second_multiplier): c for c in cells}
    return rows, columns, [[at.get((r, c)) for c in columns] for r in rows]


def grid_table(cells: Sequence[GridCell]) -> list[str]:
    """Markdown tables, one per grid: mean score ± standard error at each multiplier pair."""
    lines: list[str] = []
    for (task, dataset, first, second), members in by_grid(cells).items():
        rows, columns, matrix = grid_matrix(members)
        lines += [f"**{dataset}** ({task}, n={members[0].n}): first {first}, second {second}", ""]
        lines += markdown_table(
            ["first \\ second", *(f"×{m:g}" for m in columns)],
            [[f"×{r:g}", *(f"{c.score:.3f} ± {c.score_se:.3f}" if c else "-" for c in line)]
             for r, line in zip(rows, matrix)],
        )
    return lines


def plot_grid(
    cells: Sequence[GridCell], path: str | Path, names: Mapping[str, str] | None = None
) -> Path:
    """One heat map per dataset (behaviour): its mean score over the two multipliers; ``names``
    labels the axes by vector id (default: the ids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_grid(cells)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.9), squeeze=False)
    for ax, ((_, dataset, first, second), members) in zip(axes[0], groups.items()):
        rows, columns, matrix = grid_matrix(members)
        scores = [[c.score if c else float("nan") for c in line] for line in matrix]
        image = ax.imshow(scores, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(columns)), [f"{m:g}" for m in columns])
        ax.set_yticks(range(len(rows)), [f"{m:g}" for m in rows])
        for i, line in enumerate(scores):
            for j, value in enumerate(line):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.6 else "black")
        ax.set_xlabel(f"multiplier of {(names or {}).get(second, second)}")
        ax.set_ylabel(f"multiplier of {(names or {}).get(first, first)}")
        ax.set_title(f"{dataset} (n={members[0].n})")
        fig.colorbar(image, ax=ax, shrink=0.8, label="mean score")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
