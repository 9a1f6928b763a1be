"""The scripts beside the package (benchmarks, tools) import only names the package has: a
rename inside steerlab must not leave a benchmark that fails only when someone runs it."""

import ast
import importlib
from pathlib import Path

import pytest
from tiny import quiet_import

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*ROOT.glob("bench/*.py"), *ROOT.glob("tools/*.py"), *ROOT.glob("docs/*.py")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_imports_resolve(script):
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("steerlab"):
            if node.module.startswith("steerlab.engine.vllm_"):
                pytest.importorskip("vllm", reason="vLLM is not installed")
            module = quiet_import(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)
                       and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            assert not missing, f"{script.name}:{node.lineno}: {node.module} has no {missing}"
