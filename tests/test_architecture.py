"""The house's rules, checked on every test run: the layer and no-circle contracts of
pyproject.toml (import-linter), no private name used across modules, no long module without
its reason, and docs/architecture.md's diagram as `tools/architecture.py` draws it now."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sublearn"
# About a screen of code per concept; past this a module says in its docstring why it is one.
LONG = 500
REASON = "Why one module:"


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def test_the_import_contracts_hold() -> None:
    # lint-imports reads [tool.importlinter] from pyproject.toml: the layers top to bottom,
    # and no circle among the modules of any package.
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def private_uses(name: str, path: Path, known: dict[str, Path]) -> list[str]:
    """`from sublearn.x import _y` and `x._y` where x is another sublearn module."""
    tree = ast.parse(path.read_text())
    found = []
    aliases: dict[str, str] = {}  # local name -> the sublearn module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sublearn"):
            for a in node.names:
                if f"{node.module}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                elif a.name.startswith("_") and not a.name.startswith("__") \
                        and node.module != name:
                    found.append(f"{path.name}:{node.lineno} imports {node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__") and aliases[node.value.id] != name):
            found.append(f"{path.name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_is_used_across_modules() -> None:
    known = modules()
    found = [line for name, p in known.items() for line in private_uses(name, p, known)]
    assert found == []


def test_a_long_module_says_why_it_is_one() -> None:
    long = {name: len(p.read_text().splitlines()) for name, p in modules().items()}
    unexplained = [f"{name} ({n} lines)" for name, n in long.items() if n > LONG
                   and REASON not in (ast.get_docstring(ast.parse(modules()[name].read_text()))
                                      or "")]
    assert unexplained == [], f"over {LONG} lines with no {REASON!r} in the docstring"


def test_the_architecture_page_is_drawn_from_the_code_as_it_is() -> None:
    tool = ROOT / "tools" / "architecture.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
