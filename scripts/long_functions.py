"""Functions longer than the developers' guide allows: none over 100 lines in the product code, none
over 80 in ``micalib/tracking/``. Prints each offender (path:line name length) and exits 1 if any.

    python scripts/long_functions.py [ROOT]

A function's length is the lines from its ``def`` (decorators excluded) to its last line, nested
functions included; the product code is every ``.py`` file outside ``tests/``, ``bench/`` and hidden
or virtual-environment folders.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 100
# (folder relative to the root, its stricter limit)
STRICTER = (("micalib/tracking", 80),)
NOT_PRODUCT = ("tests", "bench")


def product_files(root: Path) -> list[Path]:
    """The product code's ``.py`` files under ``root``."""
    out = []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).parts
        if parts[0] in NOT_PRODUCT or any(s.startswith(".") or s in ("venv", "__pycache__") for s in parts[:-1]):
            continue
        out.append(p)
    return out


def limit_for(rel: str) -> int:
    for folder, limit in STRICTER:
        if rel == folder or rel.startswith(folder + "/"):
            return limit
    return LIMIT


def long_functions(root: Path = ROOT) -> list[tuple[str, int, str, int, int]]:
    """(path, line, qualified name, length, limit) of every function over its limit."""
    found = []
    for path in product_files(root):
        rel = path.relative_to(root).as_posix()
        limit = limit_for(rel)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = child.end_lineno - child.lineno + 1
                    name = prefix + child.name
                    if length > limit:
                        found.append((rel, child.lineno, name, length, limit))
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]).resolve() if argv else ROOT
    found = long_functions(root)
    for rel, line, name, length, limit in found:
        print(f"{rel}:{line} {name} {length} lines (limit {limit})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
