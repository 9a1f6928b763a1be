"""An intervention is one class (:mod:`steerlab.steering.edits`): the transformers hooks and the
vLLM tables apply whatever classes :data:`EDITS` names, so one defined outside steerlab steers
through both, as a plain computation says it should."""

import subprocess
import sys
import typing

from steerlab.steering.edits import EDITS
from steerlab.steering.setting import INTERVENTIONS, STEERED, Intervention

NEW_INTERVENTION = r'''
from dataclasses import dataclass
from typing import ClassVar

import torch

from steerlab.steering import edits


@dataclass(frozen=True, eq=False)
class Scale(edits.Edit):
    """Scale the component along a unit direction by ``amount`` (1 changes nothing)."""

    kind: ClassVar[str] = "scale"
    order: ClassVar[int] = 2
    label: ClassVar[str] = "scaled"
    amount_table: ClassVar[str] = "factor"
    plural: ClassVar[str] = "scalings"
    terms: ClassVar[tuple[int, int]] = (1, 0)

    def acts(self):
        return self.amount != 1

    def apply(self, hidden, direction):
        return hidden + ((self.amount - 1) * (hidden @ direction)).unsqueeze(-1) * direction

    @staticmethod
    def apply_rows(hidden, directions, amounts):
        along = (hidden * directions).sum(dim=-1, keepdim=True)
        return hidden + (amounts.unsqueeze(-1) - 1) * along * directions


edits.EDITS["scale"] = Scale  # what adding the class to edits.py does

import sys

sys.path.insert(0, "tests")
from tiny import random_vector, tiny_model

from steerlab.engine.graph_edits import (SlotPlanner, Span, SteeringTables,
                                         configured_terms)
from steerlab.evaluation.openended import steering_arms
from steerlab.steering.setting import Composition, SteeringSetting

model = tiny_model("llama")
vector = random_vector(model, [1])
unit = vector.directions[1] / vector.directions[1].norm()
ids = model.tokenizer("The quick brown fox", return_tensors="pt")


def reference(module, args, output):
    hidden = output[0] if isinstance(output, tuple) else output
    scaled = hidden + 2 * (hidden @ unit).unsqueeze(-1) * unit
    return (scaled, *output[1:]) if isinstance(output, tuple) else scaled


with torch.no_grad():
    handle = model.layers[1].register_forward_hook(reference)
    expected = model.model(**ids).logits
    handle.remove()
    setting = SteeringSetting(vector, 3.0, intervention="scale")
    with setting.apply(model):
        steered = model.model(**ids).logits
    plain = model.model(**ids).logits
    with setting.at(1.0).apply(model) as idle:  # no hook where it changes nothing
        assert not idle.active
torch.testing.assert_close(steered, expected)
assert not torch.allclose(steered, plain)
assert [arm.label for arm in steering_arms(setting, [3])] == ["unsteered", "scaled+3"]

terms = configured_terms()
assert terms["residual"]["scale"] == 1 and terms["attention"]["scale"] == 0
tables = SteeringTables(model.n_layers, {"residual": model.d_model, "attention": model.d_model},
                        16, torch.device("cpu"), torch.float32, slots=8, terms=terms)
planner = SlotPlanner(tables)
plan = planner.plan("s", Composition((setting,)).edits(), {"s"})
planner.fill([Span(0, 4, 0, 4, plan)])
hidden = torch.randn(6, model.d_model)
edited = tables.edit("residual", 1, hidden)
torch.testing.assert_close(edited[:4], hidden[:4] + 2 * (hidden[:4] @ unit)[:, None] * unit)
assert torch.equal(edited[4:], hidden[4:])  # tokens no request steers: bit for bit
print("ok")
'''


def test_the_interventions_agree_with_the_setting_type():
    assert tuple(typing.get_args(Intervention)) == INTERVENTIONS == tuple(EDITS)
    assert set(STEERED) == set(EDITS)


def test_an_intervention_defined_outside_steerlab_steers_through_both_engines():
    done = subprocess.run([sys.executable, "-c", NEW_INTERVENTION], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
