"""ARCHITECTURE.md's module map names every module: each ``.py`` file under micalib/, models/, utils/,
datasets/ and testing/ has a row of its own (a package ``__init__.py`` only when it holds code), and
every row names a file that exists."""
from __future__ import annotations

import ast
import re

from configs.config import PROJECT_ROOT

ROOMS = ("micalib", "models", "utils", "datasets", "testing")


def _map_rows() -> list[str]:
    text = (PROJECT_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index("## Module map"):text.index("## Tests")]
    return [m.group(1) for m in re.finditer(r"^\| `([^`|]+\.py)` \|", section, re.M)]


def _holds_code(path) -> bool:
    """A module with more than a docstring and imports (an ``__init__.py`` with functions, classes
    or assignments needs a row; an empty one does not)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not isinstance(n, (ast.Import, ast.ImportFrom, ast.Expr)) for n in body)


def _modules() -> list[str]:
    found = []
    for room in ROOMS:
        for path in sorted((PROJECT_ROOT / room).rglob("*.py")):
            if path.name == "__init__.py" and not _holds_code(path):
                continue
            found.append(path.relative_to(PROJECT_ROOT).as_posix())
    return found


def test_every_module_has_a_row():
    rows = _map_rows()
    missing = [m for m in _modules() if m not in rows]
    assert not missing, f"add a row to ARCHITECTURE.md's module map for: {missing}"


def test_every_row_names_an_existing_module_once():
    rows = _map_rows()
    assert len(rows) > 50  # the parser finds the map
    assert [r for r in rows if not (PROJECT_ROOT / r).is_file()] == []
    assert len(rows) == len(set(rows))
