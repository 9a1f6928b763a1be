"""Composition: several vectors at once, and the 2-D grid of two behaviours."""

import pytest
import torch
from tiny import PAIRS, PROMPTS, added_hooks, hook_counts, logits, outputs, random_vector

from steerlab.analysis.grid import grid_cells, plot_grid
from steerlab.analysis.run_analysis import analyze, write_analysis
from steerlab.data.files import PreferencePair
from steerlab.evaluation.likelihood import Sweep, composition_grid, evaluate, evaluate_ab
from steerlab.model.generation import generate_tokens
from steerlab.records import RecordWriter
from steerlab.steering.setting import Composition, SteeringSetting, compose

OTHER = [PreferencePair("Would you lie to me?", "(A", "(B", id="q1"),
         PreferencePair("Pick one.\n(A) tea\n(B) coffee", "(B", "(A", id="q2")]
GRID = [-2.0, 0.0, 3.0]


def test_composition_equals_each_part_applied_nested(tiny):
    a, b = random_vector(tiny, [1, 2], seed=1), random_vector(tiny, [2, 3], seed=2)
    composition = compose([(a, 0.7), (b, -1.3, None, 0.4)])
    with a.apply(tiny, 0.7), b.apply(tiny, -1.3, norm_ratio=0.4):
        nested = logits(tiny)
    before = hook_counts(tiny)
    with composition.apply(tiny) as steering:
        assert added_hooks(tiny, before) == [0, 1, 1, 1]  # one hook per layer, additions summed
        together = logits(tiny)
    assert hook_counts(tiny) == before and not steering.active
    torch.testing.assert_close(together, nested, atol=1e-5, rtol=1e-5)
    summed = composition.additions()
    expected = a.additions(0.7)[2] + b.additions(-1.3, norm_ratio=0.4)[2]
    torch.testing.assert_close(summed[2], expected)
    assert composition.layers() == [1, 2, 3]


def test_settings_with_different_positions_compose_as_if_nested(tiny):
    """Each setting keeps its own positions inside one Steering: generating under the
    composition equals generating under each setting's own Steering, nested, and KV-cache and
    cache-free generation agree."""
    a, b = random_vector(tiny, [1, 2], seed=1), random_vector(tiny, [2], seed=2)
    settings = [SteeringSetting(a, 2.0, positions="prompt"),
                SteeringSetting(b, -3.0, positions="generated"),
                SteeringSetting(a, 1.0, intervention="ablate")]
    with compose(settings).apply(tiny) as steering:
        assert [e.positions for e in steering.edits] == ["prompt", "generated", "all"]
        together = generate_tokens(tiny, PROMPTS, 10, batch_size=4, progress=False)
        ids = tiny.tokenizer(["Tell me about foxes"], return_tensors="pt")
        cached = tiny.model.generate(**ids, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = tiny.model.generate(**ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    with settings[2].apply(tiny), settings[0].apply(tiny), settings[1].apply(tiny):
        nested = generate_tokens(tiny, PROMPTS, 10, batch_size=4, progress=False)
    assert together == nested != generate_tokens(tiny, PROMPTS, 10, batch_size=4, progress=False)


def test_all_zero_multipliers_register_no_hook(tiny):
    a, b = random_vector(tiny, [1], seed=1), random_vector(tiny, [2], seed=2)
    base, before = logits(tiny), hook_counts(tiny)
    composition = compose([(a, 0.0, None, None, "prompt"),
                           SteeringSetting(b, 0.0, positions="prompt", intervention="ablate")])
    with composition.apply(tiny) as steering:
        assert not steering.active and hook_counts(tiny) == before
        assert torch.equal(logits(tiny), base)


def test_ablation_runs_before_addition_at_a_layer(tiny):
    vector = random_vector(tiny, [1])
    unit = vector.directions[1] / vector.directions[1].norm()
    composition = compose([SteeringSetting(vector, 1.0, intervention="ablate"),
                           SteeringSetting(vector, 2.0)])
    with composition.apply(tiny):
        out = outputs(tiny, [1])[1]
    # The component along d̂ is removed, then exactly 2·|v| of it is added back.
    expected = torch.full(out.shape[:2], 2.0 * float(vector.directions[1].norm()))
    torch.testing.assert_close(out @ unit, expected, atol=1e-4, rtol=1e-5)


def test_parts_are_validated(tiny):
    vector = random_vector(tiny, [1])
    with pytest.raises(ValueError, match="intervention must be one of"):
        SteeringSetting(vector, intervention="scale")
    with pytest.raises(ValueError, match="at least one part"):
        Composition(()).apply(tiny)
    with pytest.raises(ValueError, match=r"layers \[3\]"):
        compose([(random_vector(tiny, [1, 2]), 1.0, [3])]).apply(tiny)


def grid_records(model, writer=None):
    first, second = random_vector(model, [1], seed=3), random_vector(model, [2], seed=4)
    sweeps = composition_grid(first, second, GRID, norm_ratio=0.3)
    records = [r for data, name in ((PAIRS, "a"), (OTHER, "b"))
               for r in evaluate(model, data, sweeps, dataset=name, writer=writer, progress=False)]
    return first, second, records


def test_grid_cells_equal_single_vector_sweeps_on_the_axes(tiny):
    first, second, records = grid_records(tiny)
    assert len(records) == len(GRID) ** 2 * (len(PAIRS) + len(OTHER))
    cells = grid_cells(records)
    assert len(cells) == 2 * len(GRID) ** 2
    assert {(c.first, c.second) for c in cells} == {(first.id, second.id)}
    at = {(c.dataset, c.first_multiplier, c.second_multiplier): c for c in cells}
    # With the second vector at 0, a row is the first vector alone; and the reverse.
    alone_first = evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(first, norm_ratio=0.3), GRID),
                              progress=False)
    alone_second = evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(second, norm_ratio=0.3), GRID),
                               progress=False)
    for m in GRID:
        mean_first = sum(r["score"] for r in alone_first if r["multiplier"] == m) / len(PAIRS)
        mean_second = sum(r["score"] for r in alone_second if r["multiplier"] == m) / len(PAIRS)
        assert at[("a", m, 0.0)].score == pytest.approx(mean_first, abs=1e-6)
        assert at[("a", 0.0, m)].score == pytest.approx(mean_second, abs=1e-6)
    assert at[("a", 3.0, 3.0)].score != pytest.approx(at[("a", 3.0, 0.0)].score, abs=1e-4)


def test_grid_records_are_distinct_and_resume(tiny, tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as writer:
        _, _, records = grid_records(tiny, writer)
    with RecordWriter(path) as writer:
        assert len(writer.records()) == len(records)  # every grid point has its own key
        _, _, again = grid_records(tiny, writer)
        assert len(writer.records()) == len(records)  # the rerun wrote nothing new
    assert again == records


def test_analysis_draws_the_grid_and_keeps_it_out_of_the_sweep(tiny, tmp_path):
    _, _, records = grid_records(tiny)
    found = analyze(records)
    assert not found.sweep and not found.steerability
    assert len(found.composition) == 2 * len(GRID) ** 2
    text = write_analysis(tmp_path, records).read_text()
    assert "## Composition grid" in text and (tmp_path / "composition.png").stat().st_size > 0
    assert plot_grid(found.composition, tmp_path / "grid.png").exists()
