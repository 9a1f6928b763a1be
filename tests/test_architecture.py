"""docs/ARCHITECTURE.md is drawn from the code: every module and folder its tables name exists,
every module of steerlab is named (itself or its folder), and the layer diagram lists every
top-level package and module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "steerlab"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def named_in_tables(headings: bool = True) -> set[str]:
    """The paths the module tables' first column names (``methods/probes``, ``serve/web/``),
    with or without the bold rows that head a folder's modules."""
    named = set()
    for line in DOC.splitlines():
        if line.startswith("| `") or (headings and line.startswith("| **`")):
            named.update(m.rstrip("/") for m in re.findall(r"`([a-z_]+(?:/[a-z_]+)*/?)`",
                                                           line.split("|")[1]))
    return named


def modules() -> set[str]:
    """Every module of steerlab as a path below the package (a package by its folder)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1]
        if parts:
            found.add("/".join(parts))
    return found


def test_every_module_the_document_names_exists():
    ghosts = sorted(name for name in named_in_tables()
                    if not (PACKAGE / name).is_dir() and not (PACKAGE / f"{name}.py").is_file())
    assert not ghosts, f"docs/ARCHITECTURE.md names modules that do not exist: {ghosts}"


def heading_mentions() -> dict[str, set[str]]:
    """Per folder whose bold row describes its modules (``cli/``'s), the names it mentions."""
    mentions: dict[str, set[str]] = {}
    for line in DOC.splitlines():
        if heading := re.match(r"\| \*\*`([a-z_/]+)/`\*\* \|(.*)", line):
            mentions[heading[1]] = set(re.findall(r"`([a-z_]+)`", heading[2]))
    return mentions


def test_every_module_is_named_in_the_document():
    """A module has a row of its own, or its folder's bold row names it (``cli/``'s)."""
    named, mentions = named_in_tables(headings=False), heading_mentions()

    def covered(module: str) -> bool:
        folder, _, name = module.rpartition("/")
        return (module in named or any(module.startswith(f"{n}/") for n in named)
                or name in mentions.get(folder, set()) or (PACKAGE / module).is_dir())

    missing = sorted(m for m in modules() if not covered(m))
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"


def test_the_layer_diagram_lists_every_top_level_package():
    diagram = DOC.split("```")[1]
    listed = {word for line in diagram.splitlines()
              for word in re.findall(r"^[a-z_ |:]+?(?=\s{2,}|$)", line)
              for word in re.split(r"\s*[|:]\s*", word.strip()) if word}
    top = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
           if (path.suffix == ".py" and path.stem != "__init__")
           or (path.is_dir() and (path / "__init__.py").exists())}
    assert top <= listed, f"the layer diagram lacks: {sorted(top - listed)}"
