"""The README's examples name what exists: every `steerlab` command and option in its shell
examples is one the CLI has, and every `steerlab.<name>` it mentions resolves. (A rename that
leaves the README behind fails here, not in a reader's terminal.)"""

import re
import shlex
from pathlib import Path

import pytest
from tiny import invoke, quiet_import

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
GROUPS = {"vector", "data", "blind", "baseline", "lora", "sae"}
GGUF_KEYS = {"steerlab.meta", "steerlab.export"}
"""Metadata keys of exported GGUF files, written like Python names but not Python names."""


def shell_commands():
    """Each `steerlab ...` command of the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("  #")[0], comments=True)
            while words and "=" in words[0]:
                words.pop(0)  # environment variables
            if words[:1] == ["steerlab"]:
                commands.append(words[1:])
    return commands


COMMANDS = shell_commands()


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_shell_example_uses_existing_command_and_options(words):
    command = words[:2] if words[0] in GROUPS else words[:1]
    result = invoke(*command, "--help")
    assert result.exit_code == 0, (command, result.output)
    help_text = result.output
    for option in (w.split("=")[0] for w in words if w.startswith("--")):
        assert option in help_text, f"steerlab {' '.join(command)} has no {option}"


def test_python_names_in_the_readme_resolve():
    names = set(re.findall(r"\bsteerlab(?:\.[A-Za-z_]\w*)+", README)) - GGUF_KEYS
    names |= {f"{module}.{name.strip()}" for module, names_ in
              re.findall(r"from (steerlab[\w.]*) import ([\w, ]+)", README)
              for name in names_.split(",")}
    assert len(names) > 20
    unresolved = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                target = quiet_import(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                unresolved.append(name)
                break
            target = getattr(target, attribute)
    assert not unresolved
