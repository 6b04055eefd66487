"""The import rules of docs/architecture.md, checked on the repository's own code.

- The core (``medimg``) never imports ``pipelines``, ``saliency``, ``uncertainty`` or
  ``continual``; the doors (``medimg/cli.py``, ``medimg/demo.py``) are the exceptions.
- ``saliency``, ``uncertainty`` and ``continual`` never import ``pipelines`` nor each other.
- No module imports another module's private (``_``-prefixed) names.
(Import cycles are checked in ``tests/test_public_api.py``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = {"saliency", "uncertainty", "continual"}
ABOVE_CORE = DOMAIN | {"pipelines"}
DOORS = {"medimg/cli.py", "medimg/demo.py"}
PACKAGES = ("medimg", "pipelines", *sorted(DOMAIN))


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every absolute import, nested ones too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _allowed(owner: str, target: str, rel: str) -> bool:
    if target == owner or target not in ABOVE_CORE:
        return True
    if owner == "medimg":
        return rel in DOORS
    return owner == "pipelines"  # a domain package imports neither pipelines nor its siblings


def layer_violations(root: Path) -> list[str]:
    """One line per import that breaks a rule above, for the packages under ``root``."""
    bad = []
    for owner in PACKAGES:
        for path in sorted((root / owner).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for line, module, names in _imports(ast.parse(path.read_text(encoding="utf-8"))):
                top = module.split(".")[0]
                if not _allowed(owner, top, rel):
                    bad.append(f"{rel}:{line}: {owner} imports {module}")
                if top in PACKAGES:
                    bad += [
                        f"{rel}:{line}: private name {n} from {module}"
                        for n in names
                        if n.startswith("_") and not n.endswith("__")
                    ]
    return bad


def test_the_repository_keeps_the_import_rules() -> None:
    assert layer_violations(ROOT) == []


def test_the_check_catches_each_kind_of_violation(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "medimg" / "models.py").write_text("def f():\n    import pipelines.runner\n")
    (tmp_path / "medimg" / "cli.py").write_text("from pipelines.commands import app\n")
    (tmp_path / "saliency" / "audit.py").write_text("from continual.bn import bn_modules\n")
    (tmp_path / "pipelines" / "runner.py").write_text("from medimg.writers import _tmp_name\nimport saliency\n")
    assert layer_violations(tmp_path) == [
        "medimg/models.py:2: medimg imports pipelines.runner",
        "pipelines/runner.py:1: private name _tmp_name from medimg.writers",
        "saliency/audit.py:1: saliency imports continual.bn",
    ]
