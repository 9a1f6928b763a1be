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


def test_one_resolver_names_the_term_and_field_for_every_caller(tmp_path):
    """The server, the vLLM engine and steering files resolve terms with ``resolve_terms``: the
    same refusals, each naming the term and field where the caller says (``steering[1]`` or the
    file's ``path[1]``), with the server's error code."""
    import json

    import pytest
    from tiny import random_vector, tiny_model

    from steerlab.engine.requests import SteeringRequestError, resolve_steering
    from steerlab.steering.terms import TermError, load_composition, named, resolve_terms

    model = tiny_model("llama")
    vector = random_vector(model, [1, 2])
    ok = SteeringTerm(vector="v", multiplier=2.0)
    cases = [
        (SteeringTerm(vector="w"), "steering[1].vector", "unknown vector 'w' (loaded: 'v')",
         "unknown_vector"),
        (SteeringTerm(vector="v", multiplier=9.0), "steering[1].multiplier",
         "9 is outside the allowed range [-8, 8]", "multiplier_out_of_range"),
        (SteeringTerm(vector="v", layers=[7]), "steering[1].layers",
         "[7] outside the model's layers 0..3", None),
        (SteeringTerm(vector="v", condition="c"), "steering[1].condition",
         "unknown condition 'c' (loaded: none)", "unknown_condition"),
        (SteeringTerm(vector="v", layers=[1], intervention="ablate", norm_ratio=0.5),
         "steering[1]", "norm_ratio scales an added vector", None),
    ]
    for term, field, message, code in cases:
        with pytest.raises(TermError) as found:
            resolve_terms([ok, term], named({"v": vector}, "vector"), named({}, "condition"),
                          n_layers=model.n_layers, max_multiplier=8)
        assert (found.value.field, found.value.code) == (field, code)
        assert str(found.value).startswith(f"{field}: {message}")
    assert [s.multiplier for s in resolve_terms([ok], named({"v": vector}, "vector"))] == [2.0]
    # an angle is within ±180 whatever the multiplier limit
    resolve_terms([SteeringTerm(vector="v", multiplier=30, intervention="angular")],
                  named({"v": vector}, "vector"), max_multiplier=8)

    with pytest.raises(SteeringRequestError, match=r"^steering\[0\]\.condition: conditional"):
        resolve_steering([SteeringTerm(vector="v", condition="c")], named({"v": vector}, "v"))
    with pytest.raises(SteeringRequestError, match=r"^steering\[0\]\.layers: \[9\] outside"):
        resolve_steering([SteeringTerm(vector="v", layers=[9])], named({"v": vector}, "v"),
                         n_layers=model.n_layers)

    vector.save(tmp_path / "v.safetensors")
    path = tmp_path / "steering.json"
    path.write_text(json.dumps([{"vector": "v.safetensors"},
                                {"vector": "v.safetensors", "layers": [1], "norm_ratio": 0.5,
                                 "intervention": "angular"}]))
    with pytest.raises(TermError, match=rf"^{path}\[1\]: norm_ratio scales an added vector"):
        load_composition(path)
