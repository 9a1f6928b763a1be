"""The steering tables vLLM's compiled graph reads (no vLLM needed): every token of a flat,
continuously batched pass gets exactly its own request's edits, as a plain row-by-row
computation with steerlab's reference functions gives them; a token no request steers is left
bit for bit; the edits trace into one graph; the tables refuse what they cannot hold."""

from __future__ import annotations

import pytest
import torch

from steerlab.engine.graph_edits import (
    SlotPlanner,
    Span,
    SteeringCapacityError,
    SteeringTables,
    check_capacity,
    configured_terms,
)
from steerlab.steering.edits import Ablate, Add, Rotate, project_out, rotate_toward
from steerlab.steering.hooks import Edits

D, LAYERS = 16, 3


def unit(seed: int) -> torch.Tensor:
    vector = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def vector(seed: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(D, generator=torch.Generator().manual_seed(seed))


# Requests' steering, each a list of edit groups as Composition.edits() gives them.
STEERING = {
    "add": [Edits({1: [Add(vector(1))]})],
    "generated": [Edits({1: [Add(vector(2))], 2: [Add(vector(3))]}, positions="generated")],
    "prompt": [Edits({0: [Add(vector(4))]}, positions="prompt")],
    "ablate": [Edits({1: [Ablate(unit(5), 1.0)], 2: [Ablate(unit(6), 2.0)]})],
    "two ablations": [Edits({1: [Ablate(unit(7), 1.0), Ablate(unit(8), 0.5)]})],
    "angular": [Edits({1: [Rotate(unit(9), 60.0)]})],
    "composition": [Edits({1: [Ablate(unit(10), 1.0)]}),
                    Edits({1: [Add(vector(11))]}),
                    Edits({1: [Rotate(unit(12), -30.0)]}, positions="generated")],
    "heads": [Edits({1: [Add(vector(13))], 2: [Add(vector(14))]}, site="attention"),
              Edits({2: [Add(vector(15))]})],
}


def reference(groups: list[Edits], site: str, layer: int, row: torch.Tensor,
              prompt: bool) -> torch.Tensor:
    """One token's edits at one site and layer, as :class:`~steerlab.steering.hooks.Steering`
    orders them: every group's ablations, then rotations, then additions, each where its
    positions hold."""
    acts = [g for g in groups if g.site == site
            and (g.positions == "all" or (g.positions == "prompt") == prompt)]
    steps = {Ablate: lambda h, e: project_out(h, e.direction, e.amount),
             Rotate: lambda h, e: rotate_toward(h, e.direction, e.amount),
             Add: lambda h, e: h + e.direction}
    for kind, step in steps.items():
        for group in acts:
            for edit in group.edits.get(layer, []):
                if type(edit) is kind:
                    row = step(row, edit)
    return row


def tables(slots: int = 16, terms: dict | None = None, max_tokens: int = 64) -> SteeringTables:
    return SteeringTables(LAYERS, {"residual": D, "attention": D}, max_tokens,
                          torch.device("cpu"), torch.float32, slots=slots, terms=terms)


def batch(planner: SlotPlanner, requests: list[tuple[str | None, int, int, int]]) -> list[Span]:
    """Spans of a flat pass: (steering name or None, tokens this pass, first position, prompt
    length) per request, laid end to end."""
    busy = {name for name, *_ in requests if name}
    spans, start = [], 0
    for name, count, first, prompt_len in requests:
        if name is not None:
            spans.append(Span(start, start + count, first, prompt_len,
                              planner.plan(name, STEERING[name], busy)))
        start += count
    return spans


# A prefill chunk, a prompt ending inside the pass, decoding steps, an unsteered request.
REQUESTS = [("add", 5, 0, 9), ("generated", 4, 7, 9), ("prompt", 3, 8, 9), (None, 4, 0, 4),
            ("ablate", 2, 3, 4), ("two ablations", 3, 0, 3), ("angular", 1, 12, 6),
            ("composition", 6, 2, 5), ("composition", 1, 30, 5), (None, 1, 10, 2),
            ("heads", 3, 0, 3)]


def test_each_token_gets_its_own_requests_edits_and_unsteered_tokens_are_untouched():
    steering = tables()
    planner = SlotPlanner(steering)
    spans = batch(planner, REQUESTS)
    planner.fill(spans)
    total = sum(count for _, count, *_ in REQUESTS)
    hidden = 3 * torch.randn(total, D, generator=torch.Generator().manual_seed(0))
    for site in ("residual", "attention"):
        for layer in range(LAYERS):
            edited = steering.edit(site, layer, hidden)
            start = 0
            for name, count, first, prompt_len in REQUESTS:
                for k in range(count):
                    row, got = hidden[start + k], edited[start + k]
                    if name is None:
                        assert torch.equal(got, row)  # bit for bit
                    else:
                        want = reference(STEERING[name], site, layer, row,
                                         first + k < prompt_len)
                        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                start += count
            assert not torch.equal(edited, hidden) or (site, layer) == ("attention", 0)


def test_the_residual_in_two_parts_is_edited_as_their_sum():
    """vLLM's layers return ``(hidden, residual)``: the edited sum equals the edit of the sum,
    and a token nothing reshapes keeps its residual as it was."""
    steering = tables()
    planner = SlotPlanner(steering)
    planner.fill(batch(planner, REQUESTS))
    total = sum(count for _, count, *_ in REQUESTS)
    generator = torch.Generator().manual_seed(1)
    hidden, residual = torch.randn(total, D, generator=generator), torch.randn(total, D,
                                                                                generator=generator)
    for layer in range(LAYERS):
        out, rest = steering.edit_pair(layer, hidden, residual)
        torch.testing.assert_close(out + rest,
                                   steering.edit("residual", layer, hidden + residual))
        # additions only (or nothing): the residual part is passed on untouched
        assert torch.equal(rest[:5], residual[:5])


def test_a_later_pass_overwrites_the_previous_passs_token_slots():
    steering = tables()
    planner = SlotPlanner(steering)
    planner.fill(batch(planner, [("add", 8, 0, 8)]))
    planner.fill(batch(planner, [(None, 2, 0, 2), ("add", 1, 8, 8)]))
    hidden = torch.randn(9, D)
    edited = steering.edit("residual", 1, hidden)
    assert torch.equal(edited[:2], hidden[:2]) and torch.equal(edited[3:], hidden[3:])
    torch.testing.assert_close(edited[2], hidden[2] + STEERING["add"][0].edits[1][0].direction)


def test_the_edits_trace_into_one_graph():
    """What vLLM's torch.compile needs: no graph break (``fullgraph``), and the compiled edits
    equal the eager ones for another pass's slots (the tables are inputs, not constants)."""
    steering = tables()
    planner = SlotPlanner(steering)
    compiled = torch.compile(lambda h: steering.edit("residual", 1, h), fullgraph=True,
                             backend="eager", dynamic=True)
    for requests in (REQUESTS[:4], REQUESTS[4:]):
        planner.fill(batch(planner, requests))
        hidden = torch.randn(sum(count for _, count, *_ in requests), D)
        assert torch.equal(compiled(hidden), steering.edit("residual", 1, hidden))


def test_slots_are_reused_least_recently_used_first_never_one_the_pass_needs():
    steering = tables(slots=4)  # three usable slots
    planner = SlotPlanner(steering)
    first = planner.plan("add", STEERING["add"], {"add"})
    planner.plan("ablate", STEERING["ablate"], {"ablate"})
    planner.plan("two ablations", STEERING["two ablations"], {"two ablations"})  # evicts "add"
    assert planner.plan("add", STEERING["add"], {"add"}) is not first  # written again
    with pytest.raises(SteeringCapacityError, match="more than 3 table slots"):
        planner.plan("composition", STEERING["composition"], {"composition", "add"})
    many = [Edits({1: [Add(vector(s))]}) for s in range(4)]
    with pytest.raises(SteeringCapacityError, match="needs 4 table slots; the engine has 3"):
        planner.plan("big", many, set())


def test_steering_beyond_the_engines_terms_is_refused_naming_the_variable(monkeypatch):
    """Checked when a request arrives (vLLM's plugin), and again when a pass plans it."""
    three = [Edits({1: [Ablate(unit(s), 1.0) for s in range(3)]})]
    with pytest.raises(SteeringCapacityError, match=r"3 ablations on one token at the residual "
                       r"site; this engine allows 2 \(\$STEERLAB_VLLM_TERMS"):
        check_capacity(three)
    check_capacity(three[:0] + [Edits({1: [Ablate(unit(1), 1.0)]}, positions="prompt"),
                                Edits({1: [Ablate(unit(2), 1.0)]}, positions="generated"),
                                Edits({1: [Ablate(unit(3), 1.0)]})])  # two per token
    heads = [Edits({1: [Ablate(unit(1), 1.0)]}, site="attention")]
    with pytest.raises(SteeringCapacityError, match=r"STEERLAB_VLLM_HEAD_TERMS"):
        SlotPlanner(tables()).plan("heads", heads, set())
    monkeypatch.setenv("STEERLAB_VLLM_HEAD_TERMS", "4,1,0")
    assert configured_terms()["attention"] == {"add": 4, "ablate": 1, "rotate": 0}
    check_capacity(heads)
    monkeypatch.setenv("STEERLAB_VLLM_TERMS", "4,x")
    with pytest.raises(ValueError, match=r"\$STEERLAB_VLLM_TERMS='4,x': give 3 counts, "
                       "additions,ablations,rotations"):
        configured_terms()


def test_a_site_without_terms_has_no_tables_and_leaves_its_input_alone():
    steering = tables(terms={"residual": {"add": 1, "ablate": 0, "rotate": 0},
                             "attention": {"add": 0, "ablate": 0, "rotate": 0}})
    assert not steering.edits("attention") and not hasattr(steering, "attention_add")
    planner = SlotPlanner(steering)
    planner.fill(batch(planner, [("add", 2, 0, 2)]))
    hidden, residual = torch.randn(2, D), torch.randn(2, D)
    out, rest = steering.edit_pair(1, hidden, residual)
    torch.testing.assert_close(out, hidden + STEERING["add"][0].edits[1][0].direction)
    assert rest is residual
