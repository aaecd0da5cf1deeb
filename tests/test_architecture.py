"""The import graph is one-way: hubscout (the science) <- service (shared state) <- app (HTTP), worker (Celery).

Read from the source with ast, every import statement counted wherever it stands (a function-level import is
still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hubscout", "service", "app", "worker")
# What each package must never import.
FORBIDDEN = {
    "hubscout": {"service", "app", "worker"},
    "service": {"app", "worker"},
    "worker": {"app"},
    "app": {"worker"},
}


def _imports(path: Path) -> set[str]:
    """The top-level package of every module that ``path`` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_modules():
    for package in PACKAGES:
        assert _modules(package), package


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    wrong = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package]) for p in _modules(package)}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from app.main import serve\n    import worker.tasks\n")
    assert _imports(f) == {"app", "worker"}
