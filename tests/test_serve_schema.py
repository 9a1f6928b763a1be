"""The server's steering term is the JSON form of the one steering setting: the same fields,
the vector and condition by name, the same defaults."""

import dataclasses

from steerlab.steering.setting import SteeringSetting
from steerlab.steering.terms import SteeringTerm


def test_steering_term_mirrors_the_steering_setting():
    setting = {f.name: f.default for f in dataclasses.fields(SteeringSetting)}
    term = {name: field.default for name, field in SteeringTerm.model_fields.items()}
    assert list(term) == list(setting)
    assert {k: v for k, v in term.items() if k != "vector"} == {
        k: v for k, v in setting.items() if k != "vector"}
