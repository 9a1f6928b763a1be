"""Figures of the package's shape: modules, import levels (the longest chain of run-time
imports), import loops, and the largest files. Read with grimp, the graph import-linter checks.

    python tools/import_levels.py [--type-checking]   # also count imports under TYPE_CHECKING
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import grimp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type-checking", action="store_true",
                        help="count imports made only for annotations too")
    args = parser.parse_args()
    graph = grimp.build_graph("steerlab", exclude_type_checking_imports=not args.type_checking,
                              cache_dir=None)
    modules = sorted(graph.modules)

    @cache
    def level(module: str, seen: frozenset = frozenset()) -> int:
        below = [m for m in graph.find_modules_directly_imported_by(module) if m not in seen]
        return 1 + max((level(m, seen | {module}) for m in below), default=0)

    loops = {frozenset([a, b]) for a in modules for b in graph.find_modules_directly_imported_by(a)
             if graph.chain_exists(importer=b, imported=a)}
    root = Path(__file__).resolve().parent.parent
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root)))
                    for p in (root / "steerlab").rglob("*.py")), reverse=True)
    print(f"modules: {len(modules)}")
    print(f"import levels: {max(level(m) for m in modules)}")
    print(f"modules in a loop: {len(set().union(*loops)) if loops else 0}")
    print("largest files: " + ", ".join(f"{path} {lines}" for lines, path in sizes[:6]))


if __name__ == "__main__":
    main()
