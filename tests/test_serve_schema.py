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


def test_a_term_made_from_a_setting_names_it_and_a_settings_key_holds_every_field():
    """``SteeringTerm.of`` and ``SteeringSetting.key`` read the setting's fields themselves (no
    list of them by hand): a term made from a setting gives the setting back, and two settings
    have one key exactly when they steer alike."""
    from tiny import random_vector, tiny_model

    model = tiny_model("llama")
    vector, other = random_vector(model, [1, 2], seed=1), random_vector(model, [1], seed=2)
    setting = SteeringSetting(vector, -3.0, [2], None, "generated", "ablate")
    term = SteeringTerm.of(setting, "v")
    assert term.vector == "v" and term.condition is None
    assert term.setting(vector) == setting
    base = SteeringSetting(vector, 4.0)
    assert base.key() == SteeringSetting(vector, 4.0).key()
    hash(base.key())
    variants = [SteeringSetting(other, 4.0), SteeringSetting(vector, 5.0),
                SteeringSetting(vector, 4.0, [1]), SteeringSetting(vector, 4.0, norm_ratio=0.5),
                SteeringSetting(vector, 4.0, positions="prompt"),
                SteeringSetting(vector, 1.0, intervention="angular")]
    keys = {base.key(), *(variant.key() for variant in variants)}
    assert len(keys) == 1 + len(variants)
    assert len(base.key()) == len(dataclasses.fields(SteeringSetting))
