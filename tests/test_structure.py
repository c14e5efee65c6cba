"""The package's shape: only `helpers.backends` knows how a backend works inside.

A module that reaches into a backend (`backend._call`, `backend.client`, `backend.engine`) or asks
which class it is (`isinstance(backend, OllamaBackend)`, `hasattr(backend, "pull")`) breaks when a backend changes; the
public calls of `Backend` (`complete`, `unload`, `model_size`, `capabilities`) are there instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_server  # reads source files only

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
#: What a backend holds inside: its clients and engine, and every underscore name.
INTERNALS = frozenset({"client", "engine"})
BACKEND_CLASSES = frozenset({"OllamaBackend", "OpenAIBackend", "EmbeddedBackend"})


def _is_backend(node: ast.expr) -> bool:
    """`backend`, `small_backend`, `self.backend`, `tier.backend`, ...: an expression naming a backend."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "backend" in name.lower()


def reach_ins(source: str) -> list[str]:
    """Every use of a backend's internals, and every dispatch on a backend's class, in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and _is_backend(node.value)
            and (node.attr.startswith("_") or node.attr in INTERNALS)
        ):
            found.append((node.lineno, node.col_offset, f"line {node.lineno}: .{node.attr}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            classes = node.args[1] if len(node.args) == 2 else None
            names = {e.id for e in ast.walk(classes) if isinstance(e, ast.Name)} if classes else set()
            if names & BACKEND_CLASSES:
                found.append(
                    (
                        node.lineno,
                        node.col_offset,
                        f"line {node.lineno}: isinstance(..., {', '.join(sorted(names & BACKEND_CLASSES))})",
                    )
                )
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "hasattr"
            and node.args
            and _is_backend(node.args[0])
        ):
            found.append((node.lineno, node.col_offset, f"line {node.lineno}: hasattr(backend, ...)"))
    return [text for _, _, text in sorted(found)]


def test_the_checker_finds_what_it_looks_for():
    source = """
resp = backend._call(backend.client.chat, model=m)
size = self.backend.engine.resolve(m)
if isinstance(large_backend, (OllamaBackend, OpenAIBackend)) or hasattr(backend, "pull"):
    pass
ok = backend.complete(m, messages).text, backend.capabilities, backend.name
"""
    assert reach_ins(source) == [
        "line 2: ._call",
        "line 2: .client",
        "line 3: .engine",
        "line 4: isinstance(..., OllamaBackend, OpenAIBackend)",
        "line 4: hasattr(backend, ...)",
    ]


@pytest.mark.parametrize(
    "path",
    sorted(p for p in HELPERS.rglob("*.py") if p.name != "backends.py"),
    ids=lambda p: str(p.relative_to(HELPERS)),
)
def test_no_module_outside_backends_reaches_into_a_backend(path):
    assert reach_ins(path.read_text(encoding="utf-8")) == [], (
        f"{path.relative_to(HELPERS.parent)} uses a backend's internals: use Backend's public calls"
    )
