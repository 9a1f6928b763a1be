"""The method registry: one config type and one trainer per method, found by folder; the
library, the CLI and the run config dispatch through it."""

import sys
import textwrap

import pytest
import torch
from pydantic import ValidationError
from tiny import PAIRS, invoke, write_jsonl

from steerlab.experiment.config import method_config, parse_config
from steerlab.methods import get_method, methods, train_bipo, train_caa, train_vector
from steerlab.methods.bipo import BiPOConfig


def test_registry_lists_each_method_with_its_config_and_trainer():
    assert {"caa", "bipo", "dpo"} <= set(methods())
    assert get_method("caa").multi_layer and not get_method("bipo").multi_layer
    assert get_method("bipo").defaults()["epochs"] == BiPOConfig().epochs == 5
    with pytest.raises(ValueError, match="unknown method 'ica'; available: .*bipo, caa"):
        get_method("ica")


def test_dispatch_equals_calling_the_trainer(tiny):
    caa = train_vector(tiny, PAIRS, "caa", [1, 2])
    expected = train_caa(tiny, PAIRS, [1, 2], progress=False)
    for layer in (1, 2):
        assert torch.equal(caa.directions[layer], expected.directions[layer])
    bipo = train_vector(tiny, PAIRS, "dpo", 1, {"epochs": 1, "batch_size": 2})
    direct = train_bipo(tiny, PAIRS, 1, epochs=1, batch_size=2, direction="forward",
                        progress=False)
    assert torch.equal(bipo.directions[1], direct.directions[1]) and bipo.meta.method == "dpo"
    with pytest.raises(ValueError, match="bipo trains one layer at a time"):
        train_vector(tiny, PAIRS, "bipo", [1, 2])
    with pytest.raises(ValidationError, match="epochz"):
        train_vector(tiny, PAIRS, "bipo", 1, {"epochz": 2})


def test_a_method_is_a_folder_found_without_touching_anything_else(tmp_path, monkeypatch):
    """A new method needs only its own folder: the registry finds it by its METHODS."""
    folder = tmp_path / "mean_chosen"
    folder.mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent('''
        from steerlab.methods.caa import train_caa
        from steerlab.methods.registry import MethodConfig, VectorMethod

        class Config(MethodConfig):
            scale: float = 2.0

        def train(model, pairs, layers, config, run):
            return config.scale * train_caa(model, pairs, layers, progress=False)

        METHODS = (VectorMethod("doubled-caa", "CAA, scaled", Config, train, multi_layer=True),)
    '''))
    package = sys.modules["steerlab.methods"]
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    methods.cache_clear()
    try:
        assert get_method("doubled-caa").defaults() == {"scale": 2.0}
    finally:
        monkeypatch.undo()
        methods.cache_clear()
        sys.modules.pop("steerlab.methods.mean_chosen", None)
    assert "doubled-caa" not in methods()


def test_a_method_from_another_installed_package_is_found_by_its_entry_point(
        tiny, tmp_path, monkeypatch):
    """A package outside steerlab's tree declares a method in the ``steerlab.methods``
    entry-point group (here an installed distribution's metadata on the path, as pip leaves
    it): the registry, train_vector and ``steerlab methods`` all see it, built from steerlab's
    shared helpers only."""
    (tmp_path / "gap_method.py").write_text(textwrap.dedent('''
        from steerlab.methods.contrast import contrast_meta, read_contrast
        from steerlab.methods.registry import MethodConfig, VectorMethod
        from steerlab.steering.vectors import SteeringVector

        class Config(MethodConfig):
            scale: float = 1.0

        def train(model, pairs, layers, config, run):
            seen = read_contrast(model, pairs, layers, progress=False)
            directions = {layer: config.scale * (seen.chosen[layer] - seen.rejected[layer])
                          .mean(dim=0) for layer in layers}
            return SteeringVector(directions, contrast_meta(model, "gap", pairs, seen))

        METHODS = (VectorMethod("gap", "mean last-token gap, from outside steerlab", Config,
                                train, multi_layer=True),)
    '''))
    info = tmp_path / "gap_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gap-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[steerlab.methods]\ngap = gap_method\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    methods.cache_clear()
    try:
        assert get_method("gap").defaults() == {"scale": 1.0}
        vector = train_vector(tiny, PAIRS, "gap", [1, 2], {"scale": 2.0})
        caa = train_caa(tiny, PAIRS, [1, 2], progress=False)  # the same gap, by CAA
        for layer in (1, 2):
            torch.testing.assert_close(vector.directions[layer], 2 * caa.directions[layer])
        listed = invoke("methods")
        assert listed.exit_code == 0 and "gap" in listed.output
    finally:
        monkeypatch.undo()
        methods.cache_clear()
        sys.modules.pop("gap_method", None)
    assert "gap" not in methods()


def test_every_method_folder_is_in_the_independence_contract():
    """pyproject.toml's import-linter contract lists each method folder, so a new folder that
    imported another would fail ``make test``."""
    import pkgutil
    from pathlib import Path

    import tomllib

    import steerlab.methods

    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"]
                   if c["type"] == "independence"]
    folders = {f"steerlab.methods.{m.name}" for m in pkgutil.iter_modules(
        steerlab.methods.__path__) if m.ispkg}
    assert set(contract["modules"]) == folders


def test_run_config_entries_are_checked_against_the_methods_config(tmp_path):
    text = textwrap.dedent("""\
        name: t
        model: tiny
        data: {train: {dataset: refusal, split: train}, val_size: 4,
               test: {dataset: refusal, split: test}}
        methods:
          caa: {method: caa}
          slow: {method: bipo, lr: 0.001}
        steering: {layers: [1], multipliers: [1]}
    """)
    config = parse_config(text, check_data=False)
    assert method_config(config.methods["slow"]) == BiPOConfig(lr=0.001)  # epochs: its default, 5
    bad = text.replace("{method: caa}", "{method: caa, beta: 0.2}").replace(
        "{method: bipo, lr: 0.001}", "{method: ica}")
    with pytest.raises(Exception) as raised:
        parse_config(bad, check_data=False)
    message = str(raised.value)
    assert ":6: methods.caa.beta: unknown key" in message
    assert "methods.slow" in message and "'ica'" in message


def test_cli_train_validates_options_against_the_method(model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [p.__dict__ for p in PAIRS])
    base = ["train", "--model", model_dir, "--data", data, "--layer", "1",
            "--out", tmp_path / "v.safetensors"]
    result = invoke(*base, "--beta", "0.2")
    assert (result.exit_code == 1
            and "beta: not a hyper-parameter of caa (it takes: none)" in result.output)
    result = invoke(*base, "--method", "bipo", "-p", "epochs=0")
    assert result.exit_code == 1 and "epochs: Input should be greater than 0" in result.output
    result = invoke(*base, "--method", "ica")
    assert result.exit_code == 1 and "unknown method 'ica'" in result.output
    result = invoke(*base, "--method", "dpo", "-p", "epochs=1", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    listed = invoke("methods")
    assert listed.exit_code == 0 and "epochs=5" in listed.output and "doubled" not in listed.output
